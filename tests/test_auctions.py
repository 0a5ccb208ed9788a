"""Tests of the double auctions of cosim.markets.auctions: ``pay_as_bid``, ``mcafee``,
``huang`` and ``vcg``, alone, through ``cosim clear`` and against their theory.

- Hand-worked books from the published rules (sources in each test's docstring), and
  reference CSVs under tests/data/auctions_* (checked by hand, see `test_clear_reference_books`).
- Hypothesis on random books: every result equals an independent plain-Python oracle of
  the same rule (`oracle_*` below: merit-order crossing, McAfee's test, equal rationing,
  Clarke pivot by re-solving the crossing without each trader); individual rationality;
  bills of all parties (``market_operator`` and the outside party included) sum to zero in
  `cosim.sim.settlement.settle` with the operator's bill exactly minus the auction's surplus;
  efficiency (``vcg`` and ``pay_as_bid`` reach ``uniform``'s welfare, ``mcafee`` loses at
  most the marginal trade); truthfulness of ``mcafee`` and ``vcg`` for single-unit traders
  (no sampled misreport of the price raises a trader's utility), and of ``huang`` and
  ``mcafee`` with ``k_counts: orders`` for any order sizes.
- Edge cases (ties, equal prices, one side empty, zero quantities, no crossing, an empty
  book), network cuts and charges, an islanded outside party at its caps, one model per
  mechanism kept across rounds, and ``cosim clear`` with good and bad input.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cosim.markets.pool as pool_module
from cosim.cli import EXIT_BAD_INPUT, EXIT_OK, main
from cosim.config.load import load_scenario
from cosim.markets import (
    MECHANISMS,
    Charges,
    MarketContext,
    NetworkCuts,
    OrderArrays,
    get_mechanism,
)
from cosim.markets.auction_rules import (
    PRICE_SLACK,
    equal_reduction,
    fill_in_merit_order,
    merit_order,
    rank_mcafee,
    trade_reduction,
)
from cosim.markets.uniform import UniformDoubleAuction
from cosim.sim.settlement import MARKET_OPERATOR, settle

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
AUCTIONS = ["pay_as_bid", "mcafee", "huang", "vcg"]

#: Tolerance on quantities [kWh] (HiGHS's primal feasibility tolerance is 1e-7).
QTY_ABS = 1e-6
#: Tolerance on prices [currency/kWh] against hand-worked values and the oracles.
PRICE_ABS = 1e-6
#: Tolerance on amounts of money [currency]: bills, surpluses, welfare, utilities. The
#: pool breaks ties with terms of 1e-6 per kWh, so welfare may differ by that much per kWh.
MONEY_ABS = 1e-5
#: Tolerance on the zero sum of a round's bills [currency] (pure arithmetic).
ZERO_SUM_ABS = 1e-9
#: Tolerance on printed prices and quantities (``cosim clear`` writes 6 significant digits).
PRINT_ABS = 1e-6
#: Participants of every random book (the same mechanism objects clear them all).
N = 8
#: Prices of random books lie on a coarse grid so that ties are frequent [currency/kWh].
PRICE_GRID = tuple(np.round(np.arange(0.04, 0.42, 0.04), 2))
#: Quantities of random books [kWh] (zero included: an order that trades nothing).
QTY_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
CLEAR_COLUMNS = ["buyer", "seller", "quantity_kwh", "price_per_kwh", "seller_price_per_kwh"]
HEADER = "id,side,quantity_kwh,price_per_kwh\n"

#: Derandomised so that every run draws the same books; no example database.
HYPOTHESIS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: For the tests that clear every mechanism several times per example.
HYPOTHESIS_HEAVY = settings(HYPOTHESIS, max_examples=20)


# -- contexts, books, results -------------------------------------------------------------
def no_grid() -> MarketContext:
    """No outside party (``cosim clear`` without tariffs): what is not traded stays unmatched."""
    return MarketContext(1.0, 0.0, import_cap_kwh=0.0, export_cap_kwh=0.0, voll_per_kwh=0.0,
                         curtail_cost_per_kwh=0.0)


def with_grid(retail: float = 0.45, feed_in: float = 0.02) -> MarketContext:
    """A grid-connected round: the outside party buys and sells without limit."""
    return MarketContext(retail, feed_in)


def book(*rows: tuple[str, str, float, float]) -> tuple[OrderArrays, list[str]]:
    """Orders ``(id, side, quantity_kwh, price_per_kwh)`` laid out on their participants."""
    frame = pd.DataFrame(rows, columns=["id", "side", "quantity_kwh", "price_per_kwh"])
    ids = frame.id.tolist()
    return OrderArrays.from_book(frame, ids), ids


def clear(name: str, orders: OrderArrays, ids: list[str], ctx: MarketContext | None = None,
          cuts: NetworkCuts | None = None, charges: Charges | None = None, options=None):
    mech = get_mechanism(name)(ids, max_cuts=max(1, len(cuts) if cuts is not None else 1), options=options)
    r = mech.clear(orders, ctx or no_grid(), cuts, charges)
    assert r.ok, r.status
    return r


def per(ids: list[str], values: np.ndarray) -> dict[str, float]:
    return {i: pytest.approx(float(v), abs=QTY_ABS) for i, v in zip(ids, values, strict=True)}


def bills(r, ctx: MarketContext, ids: list[str]) -> pd.DataFrame:
    return settle(0, ids, np.arange(len(ids)), r, ctx).set_index("party")


def p2p_trades(r) -> pd.DataFrame:
    t = r.trades
    return t[(t.buyer != "grid") & (t.seller != "grid") & (t.buyer != "grid_forming") & (t.seller != "grid_forming")]


def trade_table_surplus(r) -> float:
    """What buyers pay minus what sellers get, from the trade table alone [currency]."""
    t = p2p_trades(r)
    return float((t.energy_kwh * (t.price_per_kwh - t.seller_price_per_kwh)).sum())


def utilities(r, bid: np.ndarray, ask: np.ndarray, charges: Charges | None = None) -> np.ndarray:
    """Each participant's P2P utility at its (true) bid or ask, network charges paid."""
    cb = np.zeros(len(bid)) if charges is None else charges.buy
    cs = np.zeros(len(bid)) if charges is None else charges.sell
    buy = (bid - cb - np.nan_to_num(r.buy_price_per_kwh)) * r.bought_kwh
    sell = (np.nan_to_num(r.sell_price_per_kwh) - cs - ask) * r.sold_kwh
    return buy + sell


def book_welfare(r, orders: OrderArrays, ctx: MarketContext, charges: Charges | None = None) -> float:
    """The pool's welfare of a result, from its quantities [currency]."""
    cb = np.zeros(len(r.bought_kwh)) if charges is None else charges.buy
    cs = np.zeros(len(r.bought_kwh)) if charges is None else charges.sell
    return float((orders.bid_per_kwh - cb) @ r.bought_kwh - (orders.ask_per_kwh + cs) @ r.sold_kwh
                 - ctx.voll_per_kwh * r.shed_kwh.sum() - ctx.curtail_cost * r.curtailed_kwh.sum())


# -- independent oracles (plain Python, no solver) ------------------------------------------
def oracle_order(price, qty, descending: bool) -> list[int]:
    """Orders with a positive quantity, best price first, ties by participant order."""
    idx = [i for i in range(len(price)) if qty[i] > QTY_ABS]
    return sorted(idx, key=lambda i: (-price[i] if descending else price[i], i))


def oracle_efficient(bid, ask, demand, supply):
    """Walk down the demand and up the supply curve while the bid covers the ask.

    Returns (bought, sold, welfare, buyer order, seller order)."""
    bo, so = oracle_order(bid, demand, True), oracle_order(ask, supply, False)
    bought, sold = np.zeros(len(bid)), np.zeros(len(bid))
    i = j = 0
    welfare = 0.0
    while i < len(bo) and j < len(so) and bid[bo[i]] >= ask[so[j]]:
        b, s = bo[i], so[j]
        q = min(demand[b] - bought[b], supply[s] - sold[s])
        bought[b] += q
        sold[s] += q
        welfare += q * (bid[b] - ask[s])
        if bought[b] >= demand[b] - 1e-12:
            i += 1
        if sold[s] >= supply[s] - 1e-12:
            j += 1
    return bought, sold, welfare, bo, so


def oracle_ration(qty: np.ndarray, total: float) -> np.ndarray:
    """Cut every quantity by one amount d (none below zero) so they sum to `total`: bisection on d."""
    if qty.sum() <= total + 1e-12:
        return qty.copy()
    lo, hi = 0.0, float(qty.max())
    for _ in range(200):
        d = 0.5 * (lo + hi)
        if np.maximum(qty - d, 0.0).sum() > total:
            lo = d
        else:
            hi = d
    return np.maximum(qty - hi, 0.0)


def oracle_keep(keep_b, keep_s, bought, sold):
    """The kept orders at their efficient quantities, the long side rationed equally."""
    nb, ns = np.zeros(len(bought)), np.zeros(len(sold))
    vol = min(bought[keep_b].sum(), sold[keep_s].sum())
    nb[keep_b] = oracle_ration(bought[keep_b], vol)
    ns[keep_s] = oracle_ration(sold[keep_s], vol)
    return nb, ns


def oracle_trade_reduction(bid, ask, demand, supply, mcafee: bool):
    """(bought, sold, buyer price, seller price) of McAfee's (kwh) or Huang's rule."""
    bought, sold, _, bo, so = oracle_efficient(bid, ask, demand, supply)
    acc_b = [i for i in bo if bought[i] > 0]
    acc_s = [j for j in so if sold[j] > 0]
    n = len(bid)
    if not acc_b:
        return np.zeros(n), np.zeros(n), np.nan, np.nan
    k, l_ = acc_b[-1], acc_s[-1]
    if mcafee:
        nxt_b, nxt_s = bo[bo.index(k) + 1:], so[so.index(l_) + 1:]
        if nxt_b and nxt_s:
            p0 = 0.5 * (bid[nxt_b[0]] + ask[nxt_s[0]])
            if ask[l_] - PRICE_SLACK <= p0 <= bid[k] + PRICE_SLACK:
                return bought, sold, p0, p0
    nb, ns = oracle_keep(acc_b[:-1], acc_s[:-1], bought, sold)
    return nb, ns, bid[k], ask[l_]


def oracle_mcafee_orders(bid, ask, demand, supply):
    """McAfee's rule on the r-th bid and r-th ask, each order one trader of its quantity."""
    bo, so = oracle_order(bid, demand, True), oracle_order(ask, supply, False)
    k = 0
    while k < min(len(bo), len(so)) and bid[bo[k]] >= ask[so[k]]:
        k += 1
    n = len(bid)
    if k == 0:
        return np.zeros(n), np.zeros(n), np.nan, np.nan
    if k < len(bo) and k < len(so):
        p0 = 0.5 * (bid[bo[k]] + ask[so[k]])
        if ask[so[k - 1]] - PRICE_SLACK <= p0 <= bid[bo[k - 1]] + PRICE_SLACK:
            nb, ns = oracle_keep(bo[:k], so[:k], np.asarray(demand, float), np.asarray(supply, float))
            return nb, ns, p0, p0
    nb, ns = oracle_keep(bo[:k - 1], so[:k - 1], np.asarray(demand, float), np.asarray(supply, float))
    return nb, ns, bid[bo[k - 1]], ask[so[k - 1]]


def oracle_vcg_utilities(bid, ask, demand, supply) -> np.ndarray:
    """Clarke-pivot utility of every participant: W* - W with its orders removed."""
    *_, best, _, _ = oracle_efficient(bid, ask, demand, supply)
    out = np.zeros(len(bid))
    for i in range(len(bid)):
        d, s = np.array(demand, float), np.array(supply, float)
        d[i] = s[i] = 0.0
        out[i] = best - oracle_efficient(bid, ask, d, s)[2]
    return out


# -- random books ---------------------------------------------------------------------------
@st.composite
def random_books(draw, unit: bool = False):
    """A book on N participants: each buys, sells or stays out, prices on a coarse grid."""
    sides = draw(st.lists(st.sampled_from(["buy", "sell", "out"]), min_size=N, max_size=N))
    prices = np.array(draw(st.lists(st.sampled_from(PRICE_GRID), min_size=N, max_size=N)))
    if unit:
        qty = np.ones(N)
    else:
        qty = np.array(draw(st.lists(st.sampled_from(QTY_GRID), min_size=N, max_size=N)))
    side = np.array(sides)
    demand = np.where(side == "buy", qty, 0.0)
    supply = np.where(side == "sell", qty, 0.0)
    return OrderArrays(demand, supply, prices.copy(), prices.copy())


IDS = [f"P{i}" for i in range(N)]


@pytest.fixture(scope="module")
def mechanisms():
    """One object per mechanism, built once and reused for every random book."""
    mechs = {name: get_mechanism(name)(IDS, max_cuts=2) for name in AUCTIONS}
    mechs["mcafee_orders"] = get_mechanism("mcafee")(IDS, max_cuts=2, options={"k_counts": "orders"})
    mechs["uniform"] = UniformDoubleAuction(IDS, max_cuts=2)
    return mechs


def flat_charges(draw_buy: float, draw_sell: float) -> Charges:
    return Charges(np.full(N, draw_buy), np.full(N, draw_sell))


# -- pure functions -------------------------------------------------------------------------
def test_merit_order_ties_by_index_and_skips_empty_orders():
    price = np.array([0.2, 0.3, 0.2, 0.1, 0.3])
    qty = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    assert merit_order(price, qty, descending=True).tolist() == [1, 0, 2, 3]
    assert merit_order(price, qty, descending=False).tolist() == [3, 0, 2, 1]


def test_fill_in_merit_order_serves_earlier_orders_first():
    out = fill_in_merit_order(np.array([1, 0, 2]), np.array([2.0, 1.0, 4.0]), 2.5)
    np.testing.assert_allclose(out, [1.5, 1.0, 0.0])


@given(qty=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8), share=st.floats(0.0, 1.2))
@HYPOTHESIS
def test_equal_reduction_is_an_equal_cut(qty, share):
    """Huang, Scheller-Wolf and Sycara (2002, Computational Intelligence 18(4)): the long
    side's traders each give up the same amount, none below zero; checked against a
    bisection on the cut."""
    q = np.array(qty)
    total = share * q.sum()
    out = equal_reduction(q, total)
    assert np.all(out >= -1e-12) and np.all(out <= q + 1e-12)
    assert out.sum() == pytest.approx(min(total, q.sum()), abs=1e-9)
    np.testing.assert_allclose(out, oracle_ration(q, total), atol=1e-7)
    cut = (q - out)[out > 1e-9]
    if len(cut):
        assert np.ptp(cut) <= 1e-9


# -- McAfee, hand-worked from the published rule -----------------------------------------
UNIT_BIDS = [17.0, 14.0, 13.0, 9.0, 6.0]


def unit_book(asks: list[float]) -> tuple[OrderArrays, list[str]]:
    rows = [(f"B{i + 1}", "buy", 1.0, b) for i, b in enumerate(UNIT_BIDS)]
    rows += [(f"S{j + 1}", "sell", 1.0, s) for j, s in enumerate(asks)]
    return book(*rows)


def test_mcafee_p0_case_all_efficient_trades_at_p0():
    """McAfee, 1992, "A dominant strategy double auction", J. Econ. Theory 56(2):434-450,
    section 2 (the rule), worked by hand: bids 17, 14, 13, 9, 6, asks 1, 4, 5, 8, 11.
    k = 4 (9 >= 8, 6 < 11); p0 = (b5 + s5) / 2 = (6 + 11) / 2 = 8.5 lies in
    [s4, b4] = [8, 9], so all four efficient pairs trade at 8.5 and the budget balances."""
    orders, ids = unit_book([1, 4, 5, 8, 11])
    r = clear("mcafee", orders, ids)
    assert r.info["rule"] == "p0"
    assert per(ids, r.bought_kwh) == {**dict.fromkeys(ids, 0), "B1": 1, "B2": 1, "B3": 1, "B4": 1}
    assert per(ids, r.sold_kwh) == {**dict.fromkeys(ids, 0), "S1": 1, "S2": 1, "S3": 1, "S4": 1}
    assert r.price_per_kwh == pytest.approx(8.5, abs=PRICE_ABS)
    assert r.info["operator_surplus"] == pytest.approx(0.0, abs=MONEY_ABS)
    assert r.info["welfare_loss"] == pytest.approx(0.0, abs=MONEY_ABS)


def test_mcafee_reduction_case_excludes_the_kth_pair():
    """McAfee (1992), J. Econ. Theory 56(2):434-450, section 2, worked by hand: bids 17,
    14, 13, 9, 6, asks 1, 4, 5, 8, 13. k = 4; p0 = (6 + 13) / 2 = 9.5 > b4 = 9, so the
    4th pair (B4, S4) is excluded: B1-B3 pay b4 = 9, S1-S3 receive s4 = 8, the operator
    keeps 3 x (9 - 8) = 3 and the welfare lost is the marginal trade's b4 - s4 = 1."""
    orders, ids = unit_book([1, 4, 5, 8, 13])
    r = clear("mcafee", orders, ids)
    assert r.info["rule"] == "reduction"
    assert r.bought_kwh[ids.index("B4")] == pytest.approx(0, abs=QTY_ABS)
    assert r.sold_kwh[ids.index("S4")] == pytest.approx(0, abs=QTY_ABS)
    assert r.cleared_kwh == pytest.approx(3, abs=QTY_ABS)
    np.testing.assert_allclose(r.buy_price_per_kwh[:3], 9.0, atol=PRICE_ABS)
    np.testing.assert_allclose(r.sell_price_per_kwh[5:8], 8.0, atol=PRICE_ABS)
    assert np.isnan(r.price_per_kwh)  # two prices
    assert r.info["operator_surplus"] == pytest.approx(3.0, abs=MONEY_ABS)
    assert r.info["welfare_loss"] == pytest.approx(1.0, abs=MONEY_ABS)
    table = bills(r, no_grid(), ids)
    assert table.loc[MARKET_OPERATOR, "bill"] == pytest.approx(-3.0, abs=MONEY_ABS)
    assert abs(table.bill.sum()) < ZERO_SUM_ABS


@pytest.mark.parametrize("bids, asks, traded, buy_price, sell_price", [
    # k = 2 and no third pair: no p0, the 2nd pair is excluded; 9 pays b2 = 8, 3 gets s2 = 4
    ([9.0, 8.0], [3.0, 4.0], 1, 8.0, 4.0),
    # k = 1, p0 = (4 + 8) / 2 = 6 in [3, 9]: the pair trades at 6
    ([9.0, 4.0], [3.0, 8.0], 1, 6.0, 6.0),
    # a lone pair never trades: there is no p0, and reducing leaves nothing
    ([9.0], [4.0], 0, None, None),
    # k = 1, two buyers but one seller: no (k+1)-th ask, so no p0 and no trade
    ([9.0, 8.0], [4.0], 0, None, None),
])
def test_mcafee_small_markets(bids, asks, traded, buy_price, sell_price):
    """McAfee (1992), J. Econ. Theory 56(2):434-450, section 2, worked by hand for the
    smallest markets. Where the (k+1)-th bid or ask is missing there is no p0 and the
    k-th pair is excluded."""
    rows = [(f"B{i}", "buy", 1.0, b) for i, b in enumerate(bids)]
    rows += [(f"S{j}", "sell", 1.0, s) for j, s in enumerate(asks)]
    orders, ids = book(*rows)
    r = clear("mcafee", orders, ids)
    assert r.cleared_kwh == pytest.approx(traded, abs=QTY_ABS)
    if traded:
        assert r.buy_price_per_kwh[0] == pytest.approx(buy_price, abs=PRICE_ABS)
        assert r.sell_price_per_kwh[len(bids)] == pytest.approx(sell_price, abs=PRICE_ABS)


def test_mcafee_kwh_unequal_sizes_is_not_truthful():
    """Why ``k_counts: kwh`` is truthful only for equal-size orders (worked by hand on
    McAfee's 1992 rule applied along the kWh curves).

    Buyers C 2 kWh at 1.0, A 3 kWh at 0.8, B 1 kWh at 0.1; sellers E 2 at 0.1, F 2 at 0.3,
    D 2 at 0.6, G 3 at 0.6. Truthful: the curves cross in A (K) and D (L); p0 = (0.1 +
    0.6) / 2 = 0.35 < s_L = 0.6, so A and D are excluded and A's utility is 0. A bidding
    0.4 instead moves the crossing into its own order against F: now p0 = (0.1 + 0.6) / 2
    = 0.35 lies in [s_L, b_K] = [0.3, 0.4], A buys 2 kWh at 0.35 and gains
    2 x (0.8 - 0.35) = 0.9. With ``k_counts: orders`` and in ``huang`` the lie gains nothing.
    """
    rows = [("C", "buy", 2, 1.0), ("A", "buy", 3, 0.8), ("B", "buy", 1, 0.1),
            ("E", "sell", 2, 0.1), ("F", "sell", 2, 0.3), ("D", "sell", 2, 0.6), ("G", "sell", 3, 0.6)]
    orders, ids = book(*rows)
    lie = OrderArrays(orders.demand_kwh, orders.supply_kwh, np.r_[1.0, 0.4, orders.bid_per_kwh[2:]],
                      orders.ask_per_kwh)
    a = ids.index("A")
    value = orders.bid_per_kwh
    truthful = clear("mcafee", orders, ids)
    lying = clear("mcafee", lie, ids)
    assert utilities(truthful, value, value)[a] == pytest.approx(0.0, abs=MONEY_ABS)
    assert lying.bought_kwh[a] == pytest.approx(2.0, abs=QTY_ABS)
    assert utilities(lying, value, value)[a] == pytest.approx(0.9, abs=MONEY_ABS)
    for name, options in (("mcafee", {"k_counts": "orders"}), ("huang", None)):
        u_true = utilities(clear(name, orders, ids, options=options), value, value)[a]
        u_lie = utilities(clear(name, lie, ids, options=options), value, value)[a]
        assert u_lie <= u_true + MONEY_ABS, name


def test_rank_mcafee_rations_the_long_side():
    """McAfee's (1992) rule on ranks (``k_counts: orders``), worked by hand on the
    divisible book of tests/data/auctions_divisible.csv: bids 0.30, 0.25, 0.20, 0.12
    (3, 2, 2, 1 kWh), asks 0.05, 0.10, 0.15, 0.22 (2, 1, 3, 2 kWh). k = 3, p0 = (0.12 +
    0.22) / 2 = 0.17 in [0.15, 0.20]: the first three buyers (7 kWh) and sellers (6 kWh)
    trade at 0.17; the buyers are long by 1 kWh and each gives up 1/3 kWh."""
    bid = np.array([0.30, 0.25, 0.20, 0.12, 0, 0, 0, 0])
    ask = np.array([0, 0, 0, 0, 0.05, 0.10, 0.15, 0.22])
    demand = np.array([3.0, 2, 2, 1, 0, 0, 0, 0])
    supply = np.array([0.0, 0, 0, 0, 2, 1, 3, 2])
    a = rank_mcafee(bid, ask, demand, supply)
    assert a.rule == "p0"
    np.testing.assert_allclose(a.bought_kwh, [3 - 1 / 3, 2 - 1 / 3, 2 - 1 / 3, 0, 0, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(a.sold_kwh, [0, 0, 0, 0, 2, 1, 3, 0], atol=1e-12)
    assert a.buy_price_per_kwh[0] == pytest.approx(0.17)


def test_trade_reduction_without_any_trade():
    zeros = np.zeros(4)
    a = trade_reduction(np.array([0.1, 0, 0, 0]), np.array([0, 0.2, 0, 0]), np.r_[1.0, 0, 0, 0],
                        np.r_[0, 1.0, 0, 0], zeros, zeros, mcafee_price=True)
    assert a.rule == "none" and a.bought_kwh.sum() == 0


# -- Huang, pay-as-bid and VCG, hand-worked ---------------------------------------------------
def divisible_book() -> tuple[OrderArrays, list[str]]:
    frame = pd.read_csv(DATA / "auctions_divisible.csv")
    ids = frame.id.tolist()
    return OrderArrays.from_book(frame, ids), ids


def test_huang_divisible_book():
    """Huang, Scheller-Wolf and Sycara, 2002, "Design of a multi-unit double auction
    e-market", Computational Intelligence 18(4):596-617, section 3 (the rule), worked by
    hand on tests/data/auctions_divisible.csv. Demand: B1 3 kWh at 0.30, B2 2 at 0.25,
    B3 2 at 0.20, B4 1 at 0.12; supply: S1 2 at 0.05, S2 1 at 0.10, S3 3 at 0.15, S4 2 at
    0.22. The curves cross at 6 kWh, in B3 (K, bid 0.20) and S3 (L, ask 0.15). B1, B2
    (5 kWh) pay b_K = 0.20, S1, S2 (3 kWh) receive s_L = 0.15; the buyers are long by
    2 kWh and each gives up 1 kWh: B1 buys 2, B2 1. The operator keeps 3 x 0.05 = 0.15;
    the welfare lost is 0.95 - (2 x 0.30 + 0.25 - 0.10 - 0.10) = 0.30."""
    orders, ids = divisible_book()
    r = clear("huang", orders, ids)
    assert per(ids, r.bought_kwh) == {**dict.fromkeys(ids, 0), "B1": 2, "B2": 1}
    assert per(ids, r.sold_kwh) == {**dict.fromkeys(ids, 0), "S1": 2, "S2": 1}
    np.testing.assert_allclose(r.buy_price_per_kwh[:2], 0.20, atol=PRICE_ABS)
    np.testing.assert_allclose(r.sell_price_per_kwh[4:6], 0.15, atol=PRICE_ABS)
    assert r.info["operator_surplus"] == pytest.approx(0.15, abs=MONEY_ABS)
    assert r.info["efficient_kwh"] == pytest.approx(6.0, abs=QTY_ABS)
    assert r.info["reduced_kwh"] == pytest.approx(3.0, abs=QTY_ABS)
    assert r.info["welfare_loss"] == pytest.approx(0.30, abs=MONEY_ABS)


def test_huang_unit_book_equals_mcafee_reduction():
    """With single-unit orders Huang et al.'s (2002) rule is McAfee's (1992) reduction
    branch: bids 17, 14, 13, 9, 6 and asks 1, 4, 5, 8, 11 give three trades at 9 / 8
    (while McAfee trades all four at p0 = 8.5)."""
    orders, ids = unit_book([1, 4, 5, 8, 11])
    r = clear("huang", orders, ids)
    assert r.cleared_kwh == pytest.approx(3, abs=QTY_ABS)
    np.testing.assert_allclose(r.buy_price_per_kwh[:3], 9.0, atol=PRICE_ABS)
    np.testing.assert_allclose(r.sell_price_per_kwh[5:8], 8.0, atol=PRICE_ABS)


def test_pay_as_bid_divisible_book():
    """Discriminatory pricing (Sandholm and Suri, 2002, "Optimal clearing of supply/demand
    curves", ISAAC, LNCS 2518), worked by hand on tests/data/auctions_divisible.csv: the
    efficient 6 kWh trade, each buyer at its bid, each seller at its ask; the operator
    keeps the gains from trade, 3 x 0.30 + 2 x 0.25 + 0.20 - (2 x 0.05 + 0.10 + 3 x 0.15)
    = 0.95."""
    orders, ids = divisible_book()
    r = clear("pay_as_bid", orders, ids)
    assert per(ids, r.bought_kwh) == {**dict.fromkeys(ids, 0), "B1": 3, "B2": 2, "B3": 1}
    assert per(ids, r.sold_kwh) == {**dict.fromkeys(ids, 0), "S1": 2, "S2": 1, "S3": 3}
    np.testing.assert_allclose(r.buy_price_per_kwh[:3], [0.30, 0.25, 0.20], atol=PRICE_ABS)
    np.testing.assert_allclose(r.sell_price_per_kwh[4:7], [0.05, 0.10, 0.15], atol=PRICE_ABS)
    assert r.info["operator_surplus"] == pytest.approx(0.95, abs=MONEY_ABS)
    assert bills(r, no_grid(), ids).loc[MARKET_OPERATOR, "bill"] == pytest.approx(-0.95, abs=MONEY_ABS)


def test_vcg_bilateral_trade():
    """The textbook VCG case of bilateral trade (Krishna, 2010, "Auction Theory", 2nd ed.,
    Academic Press, ch. 5, the VCG mechanism and the Myerson-Satterthwaite theorem): one
    buyer valuing the good at 0.30, one seller at 0.10. Trade is efficient; the buyer pays
    the seller's value 0.10, the seller receives the buyer's value 0.30, each keeps the
    whole gain 0.20, and the mechanism runs a deficit of 0.20."""
    orders, ids = book(("B", "buy", 1.0, 0.30), ("S", "sell", 1.0, 0.10))
    r = clear("vcg", orders, ids)
    assert r.cleared_kwh == pytest.approx(1.0, abs=QTY_ABS)
    assert r.buy_price_per_kwh[0] == pytest.approx(0.10, abs=PRICE_ABS)
    assert r.sell_price_per_kwh[1] == pytest.approx(0.30, abs=PRICE_ABS)
    assert r.info["vcg_deficit"] == pytest.approx(0.20, abs=MONEY_ABS)
    assert r.info["operator_surplus"] == pytest.approx(-0.20, abs=MONEY_ABS)
    table = bills(r, no_grid(), ids)
    assert table.loc[MARKET_OPERATOR, "bill"] == pytest.approx(0.20, abs=MONEY_ABS)
    assert abs(table.bill.sum()) < ZERO_SUM_ABS


def test_vcg_single_unit_prices():
    """VCG with single-unit traders (Clarke pivot, Nisan et al. (eds.), 2007, "Algorithmic
    Game Theory", ch. 9), worked by hand on bids 17, 14, 13, 9, 6 and asks 1, 4, 5, 8, 13:
    k = 4; every trading buyer pays max(s_4, b_5) = max(8, 6) = 8, every trading seller
    receives min(b_4, s_5) = min(9, 13) = 9; deficit 4 x (9 - 8) = 4. E.g. without B1 the
    best welfare is (14-1) + (13-4) + (9-5) = 26, with B1 it is 35, so B1 pays
    26 - (35 - 17) = 8."""
    orders, ids = unit_book([1, 4, 5, 8, 13])
    r = clear("vcg", orders, ids)
    assert r.cleared_kwh == pytest.approx(4, abs=QTY_ABS)
    np.testing.assert_allclose(r.buy_price_per_kwh[:4], 8.0, atol=PRICE_ABS)
    np.testing.assert_allclose(r.sell_price_per_kwh[5:9], 9.0, atol=PRICE_ABS)
    assert r.info["vcg_deficit"] == pytest.approx(4.0, abs=MONEY_ABS)
    assert r.info["vcg_solves"] == 1 + 8
    assert r.welfare == pytest.approx(35.0, abs=MONEY_ABS)


def test_vcg_divisible_book():
    """Clarke-pivot payments (Nisan et al. (eds.), 2007, "Algorithmic Game Theory", ch. 9)
    worked by hand on tests/data/auctions_divisible.csv, where W* = 0.95. Without B1 the
    curves cross at 4 kWh, W = 0.55, so B1 pays 0.55 - (0.95 - 0.90) = 0.50 for 3 kWh;
    without B2 W = 0.80, B2 pays 0.35 for 2 kWh; without B3 W = 0.90, B3 pays 0.15. Without
    S1 W = 0.63, S1 receives 0.95 + 0.10 - 0.63 = 0.42 for 2 kWh; without S2 W = 0.85, S2
    receives 0.20; without S3 W = 0.76, S3 receives 0.64 for 3 kWh. Deficit 1.26 - 1.00."""
    orders, ids = divisible_book()
    r = clear("vcg", orders, ids)
    np.testing.assert_allclose(r.buy_price_per_kwh[:3], [0.50 / 3, 0.35 / 2, 0.15], atol=PRICE_ABS)
    np.testing.assert_allclose(r.sell_price_per_kwh[4:7], [0.42 / 2, 0.20, 0.64 / 3], atol=PRICE_ABS)
    assert r.info["vcg_deficit"] == pytest.approx(0.26, abs=MONEY_ABS)
    assert r.welfare == pytest.approx(0.95, abs=MONEY_ABS)


# -- random books: each mechanism equals its oracle ----------------------------------------
def _check_common(r, orders: OrderArrays, ctx: MarketContext, charges: Charges | None = None) -> pd.DataFrame:
    """Balance, individual rationality, exact and zero-sum settlement of one result;
    returns the settlement table, indexed by party."""
    assert r.ok, r.status
    assert r.bought_kwh.sum() == pytest.approx(r.sold_kwh.sum(), abs=QTY_ABS)
    np.testing.assert_allclose(r.bought_kwh + r.import_kwh + r.shed_kwh, orders.demand_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(r.sold_kwh + r.export_kwh + r.curtailed_kwh, orders.supply_kwh, atol=QTY_ABS)
    u = utilities(r, orders.bid_per_kwh, orders.ask_per_kwh, charges)
    assert np.all(u >= -MONEY_ABS), "a trader is charged more than its bid or paid less than its ask"
    buyers, sellers = r.bought_kwh > QTY_ABS, r.sold_kwh > QTY_ABS
    assert np.isfinite(r.buy_price_per_kwh[buyers]).all() and np.isfinite(r.sell_price_per_kwh[sellers]).all()
    table = settle(0, IDS, np.arange(N), r, ctx).set_index("party")
    assert abs(table.bill.sum()) < ZERO_SUM_ABS
    operator_bill = table.loc[MARKET_OPERATOR, "bill"]
    assert operator_bill == pytest.approx(-r.info["operator_surplus"], abs=MONEY_ABS)
    assert operator_bill == pytest.approx(-trade_table_surplus(r), abs=MONEY_ABS)
    p2p = p2p_trades(r)
    assert p2p.energy_kwh.sum() == pytest.approx(r.cleared_kwh, abs=QTY_ABS)
    return table


@given(orders=random_books(), grid=st.booleans())
@HYPOTHESIS
def test_mcafee_and_huang_equal_their_oracles(mechanisms, orders, grid):
    """McAfee's (1992) and Huang et al.'s (2002) rules along the kWh curves, and McAfee's
    rule on ranks, against plain-Python oracles (ties broken by participant order)."""
    ctx = with_grid() if grid else no_grid()
    args = (orders.bid_per_kwh, orders.ask_per_kwh, orders.demand_kwh, orders.supply_kwh)
    cases = {
        "mcafee": oracle_trade_reduction(*args, mcafee=True),
        "huang": oracle_trade_reduction(*args, mcafee=False),
        "mcafee_orders": oracle_mcafee_orders(*args),
    }
    for name, (bought, sold, pb, ps) in cases.items():
        r = mechanisms[name].clear(orders, ctx)
        _check_common(r, orders, ctx)
        np.testing.assert_allclose(r.bought_kwh, bought, atol=QTY_ABS, err_msg=name)
        np.testing.assert_allclose(r.sold_kwh, sold, atol=QTY_ABS, err_msg=name)
        np.testing.assert_allclose(r.buy_price_per_kwh[bought > QTY_ABS], pb, atol=PRICE_ABS, err_msg=name)
        np.testing.assert_allclose(r.sell_price_per_kwh[sold > QTY_ABS], ps, atol=PRICE_ABS, err_msg=name)
        # weakly budget-balanced: the operator never pays
        assert r.info["operator_surplus"] >= -MONEY_ABS


@given(orders=random_books(), grid=st.booleans())
@HYPOTHESIS
def test_vcg_and_pay_as_bid_equal_their_oracles(mechanisms, orders, grid):
    """VCG: every trader's utility is its Clarke-pivot value W* - W_-i (oracle: the crossing
    re-walked without it), the allocation is efficient (``uniform``'s welfare), and the
    operator's deficit is exactly what traders get beyond the bids. Pay-as-bid: efficient,
    every trader at its own price, the operator keeping the whole gain from trade."""
    ctx = with_grid() if grid else no_grid()
    bid, ask = orders.bid_per_kwh, orders.ask_per_kwh
    _, _, best, _, _ = oracle_efficient(bid, ask, orders.demand_kwh, orders.supply_kwh)
    uniform = mechanisms["uniform"].clear(orders, ctx)
    assert book_welfare(uniform, orders, ctx) == pytest.approx(best, abs=MONEY_ABS)

    r = mechanisms["vcg"].clear(orders, ctx)
    _check_common(r, orders, ctx)
    assert book_welfare(r, orders, ctx) == pytest.approx(best, abs=MONEY_ABS)
    assert r.welfare == pytest.approx(best, abs=MONEY_ABS)
    np.testing.assert_allclose(utilities(r, bid, ask),
                               oracle_vcg_utilities(bid, ask, orders.demand_kwh, orders.supply_kwh), atol=MONEY_ABS)
    assert r.info["vcg_deficit"] == pytest.approx(-r.info["operator_surplus"], abs=MONEY_ABS)
    assert r.info["vcg_deficit"] >= -MONEY_ABS

    r = mechanisms["pay_as_bid"].clear(orders, ctx)
    _check_common(r, orders, ctx)
    assert book_welfare(r, orders, ctx) == pytest.approx(best, abs=MONEY_ABS)
    assert r.info["operator_surplus"] == pytest.approx(best, abs=MONEY_ABS)
    np.testing.assert_allclose(utilities(r, bid, ask), 0.0, atol=MONEY_ABS)


@given(orders=random_books(unit=True), grid=st.booleans())
@HYPOTHESIS
def test_mcafee_loses_at_most_the_marginal_trade(mechanisms, orders, grid):
    """McAfee (1992), J. Econ. Theory 56(2):434-450: with single-unit traders and k
    efficient trades, at most the k-th (least valuable) trade is lost, so the welfare is
    at least W* - (b_k - s_k)."""
    ctx = with_grid() if grid else no_grid()
    bid, ask = orders.bid_per_kwh, orders.ask_per_kwh
    bought, sold, best, bo, so = oracle_efficient(bid, ask, orders.demand_kwh, orders.supply_kwh)
    r = mechanisms["mcafee"].clear(orders, ctx)
    k = int(round(bought.sum()))
    marginal = bid[bo[k - 1]] - ask[so[k - 1]] if k else 0.0
    welfare = book_welfare(r, orders, ctx)
    assert welfare >= best - marginal - MONEY_ABS
    assert r.cleared_kwh >= k - 1 - QTY_ABS
    assert r.info["welfare_loss"] == pytest.approx(best - welfare, abs=MONEY_ABS)


@given(orders=random_books(), grid=st.booleans())
@HYPOTHESIS
def test_trade_reduction_removes_only_the_marginal_orders_volume(mechanisms, orders, grid):
    """Divisible orders: excluding the marginal buyer K and seller L (McAfee's reduction
    branch, Huang et al.'s rule) removes max(K's, L's efficient kWh) and no more."""
    ctx = with_grid() if grid else no_grid()
    bought, sold, _, bo, so = oracle_efficient(orders.bid_per_kwh, orders.ask_per_kwh,
                                               orders.demand_kwh, orders.supply_kwh)
    assume(bought.sum() > 0)
    k = [i for i in bo if bought[i] > 0][-1]
    l_ = [j for j in so if sold[j] > 0][-1]
    bound = max(bought[k], sold[l_])
    for name in ("mcafee", "huang"):
        r = mechanisms[name].clear(orders, ctx)
        lost = bought.sum() - r.cleared_kwh
        assert lost <= bound + QTY_ABS, name
        if r.info["rule"] == "reduction":
            assert lost == pytest.approx(bound, abs=QTY_ABS)
        else:
            assert r.info["rule"] == "p0" and name == "mcafee"
            assert lost == pytest.approx(0.0, abs=QTY_ABS)


def _misreport(orders: OrderArrays, i: int, price: float) -> OrderArrays:
    bid, ask = orders.bid_per_kwh.copy(), orders.ask_per_kwh.copy()
    bid[i] = ask[i] = price
    return OrderArrays(orders.demand_kwh, orders.supply_kwh, bid, ask)


def _assert_no_gain(mech, orders, ctx, i, lies):
    value = orders.bid_per_kwh
    truthful = utilities(mech.clear(orders, ctx), value, value)[i]
    for lie in lies:
        gain = utilities(mech.clear(_misreport(orders, i, lie), ctx), value, value)[i] - truthful
        assert gain <= MONEY_ABS, f"{mech.name}: participant {i} gains {gain} by reporting {lie}"


@given(orders=random_books(unit=True), i=st.integers(0, N - 1),
       lies=st.lists(st.sampled_from(PRICE_GRID + (0.0, 0.5)), min_size=1, max_size=3), grid=st.booleans())
@HYPOTHESIS
def test_mcafee_and_vcg_truthful_for_single_unit_traders(mechanisms, orders, i, lies, grid):
    """McAfee (1992) and VCG (Groves 1973): reporting the true price is a dominant
    strategy; no sampled misreport raises a single-unit trader's utility."""
    assume(orders.demand_kwh[i] + orders.supply_kwh[i] > 0)
    ctx = with_grid() if grid else no_grid()
    for name in ("mcafee", "vcg"):
        _assert_no_gain(mechanisms[name], orders, ctx, i, lies)


@given(orders=random_books(), i=st.integers(0, N - 1),
       lies=st.lists(st.sampled_from(PRICE_GRID + (0.0, 0.5)), min_size=1, max_size=3))
@HYPOTHESIS_HEAVY
def test_truthful_in_price_for_any_order_sizes(mechanisms, orders, i, lies):
    """Huang, Scheller-Wolf and Sycara (2002): strategy-proof in the price for the
    reported quantities; McAfee's rule on ranks and VCG likewise for divisible orders."""
    assume(orders.demand_kwh[i] + orders.supply_kwh[i] > 0)
    for name in ("huang", "mcafee_orders", "vcg"):
        _assert_no_gain(mechanisms[name], orders, no_grid(), i, lies)


@given(orders=random_books(), charge=st.tuples(st.sampled_from([0.0, 0.02, 0.05]), st.sampled_from([0.0, 0.01])),
       grid=st.booleans())
@HYPOTHESIS_HEAVY
def test_charges_enter_as_effective_prices(mechanisms, orders, charge, grid):
    """Network charges lower every bid and raise every ask (Charges): each mechanism then
    clears the effective book exactly as its oracle, nobody pays above its bid or gets
    below its ask charges included, the DSO collects the charges and the bills sum to zero."""
    ctx = with_grid() if grid else no_grid()
    charges = flat_charges(*charge)
    eff_bid, eff_ask = orders.bid_per_kwh - charges.buy, orders.ask_per_kwh + charges.sell
    for name in AUCTIONS:
        r = mechanisms[name].clear(orders, ctx, charges=charges)
        table = _check_common(r, orders, ctx, charges)
        assert table.loc["dso", "bill"] == pytest.approx(-(charge[0] + charge[1]) * r.cleared_kwh, abs=MONEY_ABS)
        np.testing.assert_allclose(p2p_trades(r).network_charge_per_kwh, charge[0] + charge[1], atol=1e-12)
        if name == "huang":
            bought, _, pb, _ = oracle_trade_reduction(eff_bid, eff_ask, orders.demand_kwh, orders.supply_kwh, False)
            np.testing.assert_allclose(r.bought_kwh, bought, atol=QTY_ABS)
            np.testing.assert_allclose(r.buy_price_per_kwh[bought > QTY_ABS], pb, atol=PRICE_ABS)


@given(orders=random_books(), caps=st.tuples(st.sampled_from([0.0, 0.5, 2.0]), st.sampled_from([0.0, 1.0, 5.0])))
@HYPOTHESIS_HEAVY
def test_islanded_outside_party_at_its_caps(mechanisms, orders, caps):
    """Islanded: the grid-forming unit sells at most caps[0] and buys at most caps[1] kWh,
    what it cannot take is shed (VOLL 10/kWh) or curtailed. Every mechanism keeps the
    balances and the caps, and the operator's surplus or deficit is settled exactly."""
    ctx = MarketContext(0.30, 0.08, outside_party="grid_forming", import_cap_kwh=caps[0], export_cap_kwh=caps[1])
    for name in AUCTIONS:
        r = mechanisms[name].clear(orders, ctx)
        assert r.ok, r.status
        assert r.import_kwh.sum() <= caps[0] + QTY_ABS and r.export_kwh.sum() <= caps[1] + QTY_ABS
        np.testing.assert_allclose(r.bought_kwh + r.import_kwh + r.shed_kwh, orders.demand_kwh, atol=QTY_ABS)
        np.testing.assert_allclose(r.sold_kwh + r.export_kwh + r.curtailed_kwh, orders.supply_kwh, atol=QTY_ABS)
        table = settle(0, IDS, np.arange(N), r, ctx).set_index("party")
        assert abs(table.bill.sum()) < ZERO_SUM_ABS
        assert table.loc[MARKET_OPERATOR, "bill"] == pytest.approx(-r.info["operator_surplus"], abs=MONEY_ABS)
        assert table.loc[MARKET_OPERATOR, "bill"] == pytest.approx(-trade_table_surplus(r), abs=MONEY_ABS)
    # VCG stays efficient under the caps
    best = book_welfare(mechanisms["uniform"].clear(orders, ctx), orders, ctx)
    assert book_welfare(mechanisms["vcg"].clear(orders, ctx), orders, ctx) == pytest.approx(best, abs=MONEY_ABS)


# -- edge cases ------------------------------------------------------------------------------
EDGE_BOOKS = {
    "empty-book": [],
    "only-buyers": [("A", "buy", 1, 0.3), ("B", "buy", 2, 0.2)],
    "only-sellers": [("C", "sell", 1, 0.1), ("D", "sell", 2, 0.2)],
    "zero-quantities": [("A", "buy", 0, 0.3), ("C", "sell", 0, 0.1), ("B", "buy", 1, 0.3), ("D", "sell", 1, 0.1)],
    "no-crossing": [("A", "buy", 2, 0.10), ("C", "sell", 2, 0.20)],
    "bid-equals-ask": [("A", "buy", 1, 0.20), ("C", "sell", 1, 0.20), ("B", "buy", 1, 0.20), ("D", "sell", 1, 0.20)],
    "all-equal-prices": [(f"B{i}", "buy", 1 + i, 0.15) for i in range(3)] + [(f"S{i}", "sell", 2, 0.15) for i in range(3)],
    "tied-bids-and-asks": [("A", "buy", 1, 0.3), ("B", "buy", 1, 0.3), ("C", "sell", 1, 0.1), ("D", "sell", 1, 0.1),
                           ("E", "buy", 1, 0.2), ("F", "sell", 1, 0.25)],
    "negative-prices": [("A", "buy", 1, -0.01), ("C", "sell", 1, -0.05), ("D", "sell", 1, 0.02)],
    "one-of-each": [("A", "buy", 1, 0.3), ("C", "sell", 1, 0.1)],
}


@pytest.mark.parametrize("grid", [False, True], ids=["no-grid", "grid"])
@pytest.mark.parametrize("case", list(EDGE_BOOKS))
@pytest.mark.parametrize("name", AUCTIONS)
def test_edge_cases_clear_without_crash(name, case, grid):
    """Ties, equal prices, one side empty, zero quantities, no crossing: each clears with
    status ok, balances, keeps every trader individually rational and settles to zero."""
    rows = EDGE_BOOKS[case]
    ids = [r[0] for r in rows] or ["nobody"]
    frame = pd.DataFrame(rows, columns=["id", "side", "quantity_kwh", "price_per_kwh"])
    orders = OrderArrays.from_book(frame, ids)
    ctx = with_grid() if grid else no_grid()
    r = clear(name, orders, ids, ctx)
    assert r.bought_kwh.sum() == pytest.approx(r.sold_kwh.sum(), abs=QTY_ABS)
    assert np.all(utilities(r, orders.bid_per_kwh, orders.ask_per_kwh) >= -MONEY_ABS)
    table = bills(r, ctx, ids)
    assert abs(table.bill.sum()) < ZERO_SUM_ABS
    assert table.loc[MARKET_OPERATOR, "bill"] == pytest.approx(-r.info["operator_surplus"], abs=MONEY_ABS)
    if case in ("empty-book", "only-buyers", "only-sellers", "no-crossing", "one-of-each"):
        assert r.cleared_kwh == pytest.approx(0.0, abs=QTY_ABS) or name in ("pay_as_bid", "vcg")
        if case != "one-of-each":
            assert r.cleared_kwh == pytest.approx(0.0, abs=QTY_ABS)
    if grid:  # whatever the auction leaves goes to the grid
        np.testing.assert_allclose(r.shed_kwh + r.curtailed_kwh, 0.0, atol=QTY_ABS)


def test_lone_pair_at_equal_prices_trades_in_efficient_mechanisms():
    """A buyer and a seller at the same price 0.20: the trade adds no welfare but goes
    ahead in ``pay_as_bid`` and ``vcg`` (at 0.20 for both), and not in the trade
    reductions (a lone pair is always the marginal one)."""
    orders, ids = book(("A", "buy", 1.0, 0.20), ("C", "sell", 1.0, 0.20))
    for name in ("pay_as_bid", "vcg"):
        r = clear(name, orders, ids)
        assert r.cleared_kwh == pytest.approx(1.0, abs=QTY_ABS), name
        assert r.buy_price_per_kwh[0] == pytest.approx(0.20, abs=PRICE_ABS)
        assert r.sell_price_per_kwh[1] == pytest.approx(0.20, abs=PRICE_ABS)
    for name in ("mcafee", "huang"):
        assert clear(name, orders, ids).cleared_kwh == pytest.approx(0.0, abs=QTY_ABS), name


# -- network cuts ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", AUCTIONS)
def test_cut_on_one_sellers_injection(name):
    """A NetworkCuts row ``injection[S1] <= 1`` on the divisible book (S1 offers 2 kWh at
    0.05): S1's injection (sold + exported) stays within 1 kWh in every mechanism, the
    rest of its supply is curtailed, every trader stays individually rational, the bills
    sum to zero, and the efficient mechanisms reach the welfare of the book with S1's
    offer capped at 1 kWh (oracle), less the cost of the curtailment."""
    orders, ids = divisible_book()
    s1 = ids.index("S1")
    coef = np.zeros((1, len(ids)))
    coef[0, s1] = 1.0
    cuts = NetworkCuts(coef, np.array([1.0]), ("S1 export",))
    for ctx in (no_grid(), with_grid(0.30, 0.02)):
        r = clear(name, orders, ids, ctx, cuts=cuts)
        assert r.injection_kwh[s1] <= 1.0 + QTY_ABS
        assert r.sold_kwh[s1] + r.export_kwh[s1] <= 1.0 + QTY_ABS
        assert r.curtailed_kwh[s1] >= 1.0 - QTY_ABS
        assert np.all(utilities(r, orders.bid_per_kwh, orders.ask_per_kwh) >= -MONEY_ABS)
        assert abs(bills(r, ctx, ids).bill.sum()) < ZERO_SUM_ABS
        if name in ("pay_as_bid", "vcg"):
            capped = np.array(orders.supply_kwh, float)
            capped[s1] = 1.0
            best = oracle_efficient(orders.bid_per_kwh, orders.ask_per_kwh, orders.demand_kwh, capped)[2]
            assert r.welfare == pytest.approx(best - ctx.curtail_cost * r.curtailed_kwh.sum(), abs=MONEY_ABS)


def test_cut_and_charge_together_in_one_round():
    """A cut on one seller and a buyer charge in the same round (as the feedback loop sends
    them): VCG stays efficient on the effective, capped book and nobody pays above its bid
    charges included."""
    orders, ids = divisible_book()
    s3 = ids.index("S3")
    coef = np.zeros((1, len(ids)))
    coef[0, s3] = 1.0
    cuts = NetworkCuts(coef, np.array([0.5]))
    charges = Charges(np.full(len(ids), 0.03), np.zeros(len(ids)))
    r = clear("vcg", orders, ids, no_grid(), cuts=cuts, charges=charges)
    assert r.injection_kwh[s3] <= 0.5 + QTY_ABS
    capped = np.array(orders.supply_kwh, float)
    capped[s3] = 0.5
    best = oracle_efficient(orders.bid_per_kwh - 0.03, orders.ask_per_kwh, orders.demand_kwh, capped)[2]
    assert book_welfare(r, orders, no_grid(), charges) == pytest.approx(best, abs=MONEY_ABS)
    assert np.all(utilities(r, orders.bid_per_kwh, orders.ask_per_kwh, charges) >= -MONEY_ABS)


# -- one model per mechanism ------------------------------------------------------------------
@pytest.mark.parametrize("name", AUCTIONS)
def test_model_built_once_and_rounds_do_not_leak(name, monkeypatch):
    """The Pyomo model and its HiGHS instance are built in the constructor and only
    updated afterwards (no PoolModel is built during a clear), and a sequence of rounds on
    one object (with VCG's and the trade reductions' temporary bounds in between) gives
    what fresh objects give."""
    rng = np.random.default_rng(7)
    mech = get_mechanism(name)(IDS, max_cuts=2)
    model, highs = mech.pool.model, mech.pool.highs

    def no_build(*args, **kwargs):
        raise AssertionError("a PoolModel was built during clear")

    rounds = []
    for _ in range(6):
        side = rng.integers(0, 3, N)
        qty = rng.choice(QTY_GRID[1:], N)
        price = rng.choice(PRICE_GRID, N)
        rounds.append(OrderArrays(np.where(side == 0, qty, 0.0), np.where(side == 1, qty, 0.0), price, price))
    ctx = with_grid()
    fresh = [get_mechanism(name)(IDS, max_cuts=2).clear(o, ctx) for o in rounds]
    monkeypatch.setattr(pool_module.PoolModel, "__init__", no_build)
    for o, want in zip(rounds, fresh, strict=True):
        got = mech.clear(o, ctx)
        assert got.welfare == pytest.approx(want.welfare, abs=MONEY_ABS)
        assert got.info["operator_surplus"] == pytest.approx(want.info["operator_surplus"], abs=MONEY_ABS)
        np.testing.assert_allclose(utilities(got, o.bid_per_kwh, o.ask_per_kwh),
                                   utilities(want, o.bid_per_kwh, o.ask_per_kwh), atol=MONEY_ABS)
    assert mech.pool.model is model and mech.pool.highs is highs


# -- cosim clear ------------------------------------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_trades(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"buyer": str, "seller": str})


@pytest.mark.parametrize("name", AUCTIONS)
@pytest.mark.parametrize("stem", ["auctions_units", "auctions_divisible"])
def test_clear_reference_books(capsys, name, stem):
    """``cosim clear`` on the reference books, against trades worked by hand:
    auctions_units (McAfee 1992's rule on bids 17, 14, 13, 9, 6 and asks 1, 4, 5, 8, 13:
    see the McAfee and VCG single-unit tests above; pay-as-bid pairs the four efficient
    trades in merit order, each at its own bid and ask) and auctions_divisible (see the
    Huang, pay-as-bid and VCG divisible tests above and `test_rank_mcafee_rations_the_long_side`;
    McAfee along the kWh curves: p0 = (0.12 + 0.22) / 2 = 0.17 in [0.15, 0.20], so all
    6 kWh trade at 0.17)."""
    code, out, err = run_cli(capsys, "clear", "--mechanism", name, DATA / f"{stem}.csv")
    assert code == EXIT_OK, err
    assert out.splitlines()[0] == ",".join(CLEAR_COLUMNS)
    want = pd.read_csv(DATA / f"{stem}_{name}_trades.csv", dtype={"buyer": str, "seller": str})
    pd.testing.assert_frame_equal(read_trades(out), want, check_dtype=False, check_exact=False, atol=PRINT_ABS)


@pytest.mark.parametrize("name", AUCTIONS)
def test_clear_with_grid_sends_the_rest_to_the_grid(capsys, name):
    """With --retail 0.30 --feed-in 0.02 the P2P trades stay as without a grid, and every
    kWh the auction leaves is bought from or sold to ``grid`` at the tariffs."""
    path = DATA / "auctions_divisible.csv"
    _, plain, _ = run_cli(capsys, "clear", "--mechanism", name, path)
    code, out, err = run_cli(capsys, "clear", "--mechanism", name, "--retail", "0.30", "--feed-in", "0.02", path)
    assert code == EXIT_OK, err
    trades = read_trades(out)
    p2p = trades[(trades.buyer != "grid") & (trades.seller != "grid")]
    pd.testing.assert_frame_equal(p2p.reset_index(drop=True), read_trades(plain), check_dtype=False,
                                  check_exact=False, atol=PRINT_ABS)
    orders = pd.read_csv(path)
    bought = trades.groupby("buyer").quantity_kwh.sum()
    sold = trades.groupby("seller").quantity_kwh.sum()
    for row in orders.itertuples():
        got = bought.get(row.id, 0.0) if row.side == "buy" else sold.get(row.id, 0.0)
        assert got == pytest.approx(row.quantity_kwh, abs=PRINT_ABS)
    from_grid = trades[trades.seller == "grid"]
    to_grid = trades[trades.buyer == "grid"]
    assert (from_grid.price_per_kwh == 0.30).all() and (to_grid.seller_price_per_kwh == 0.02).all()


@pytest.mark.parametrize("name", AUCTIONS)
def test_clear_empty_book_writes_only_the_header(capsys, tmp_path, name):
    bids = tmp_path / "bids.csv"
    bids.write_text(HEADER)
    code, out, err = run_cli(capsys, "clear", "--mechanism", name, bids)
    assert code == EXIT_OK, err
    assert out.strip() == ",".join(CLEAR_COLUMNS)


BAD_BOOKS = {
    "missing-column": ("id,side,quantity_kwh\nA,buy,1\n", ["price_per_kwh", "missing"]),
    "negative-quantity": (HEADER + "A,buy,-1,0.30\nC,sell,1,0.1\n", ["row 2, quantity_kwh", "-1"]),
    "nan-price": (HEADER + "A,buy,1,nan\nC,sell,1,0.1\n", ["row 2, price_per_kwh", "nan"]),
    "empty-price": (HEADER + "A,buy,1,\nC,sell,1,0.1\n", ["row 2, price_per_kwh"]),
    "infinite-price": (HEADER + "A,buy,1,inf\nC,sell,1,0.1\n", ["row 2, price_per_kwh", "inf"]),
    "bad-side": (HEADER + "A,bid,1,0.3\nC,sell,1,0.1\n", ["row 2, side", "'bid'"]),
    "empty-id": (HEADER + ",buy,1,0.3\nC,sell,1,0.1\n", ["row 2, id", "empty"]),
    "grid-as-id": (HEADER + "grid,buy,1,0.3\nC,sell,1,0.1\n", ["row 2, id", "'grid'"]),
    "duplicate-id": (HEADER + "A,buy,1,0.3\nA,sell,1,0.1\n", ["row 3, id", "'A'"]),
}


@pytest.mark.parametrize("text, expected", list(BAD_BOOKS.values()), ids=list(BAD_BOOKS))
@pytest.mark.parametrize("name", AUCTIONS)
def test_clear_bad_input_exits_2(capsys, tmp_path, name, text, expected):
    """Bad input: exit 2, nothing on stdout, no traceback, and the problem on one line that
    names the file's field and says what was expected and what was found."""
    bids = tmp_path / "bids.csv"
    bids.write_text(text)
    code, out, err = run_cli(capsys, "clear", "--mechanism", name, bids)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert str(bids) in err
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if expected[0] in ln)
    for text_ in expected:
        assert text_ in line, f"{text_!r} not in {line!r}"
    assert "expected" in line and "found" in line


@pytest.mark.parametrize("argv, expected", [
    (["--mechanism", "mcafe"], ["--mechanism", "'mcafe'", "mcafee", "expected one of"]),
    (["--mechanism", "vcg", "--retail", "0.3"], ["--retail and --feed-in", "expected both"]),
    (["--mechanism", "huang", "--retail", "0.1", "--feed-in", "0.2"], ["--feed-in", "at most --retail"]),
], ids=["unknown-mechanism", "missing-tariff", "feed-in-above-retail"])
def test_clear_bad_options_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, "clear", *argv, DATA / "auctions_units.csv")
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if expected[0] in ln)
    for text_ in expected:
        assert text_ in line


# -- scenarios ------------------------------------------------------------------------------
@pytest.mark.parametrize("stem, name", [("pay-as-bid", "pay_as_bid"), ("mcafee", "mcafee"), ("huang", "huang"),
                                        ("vcg", "vcg")])
def test_scenario_per_auction(stem, name):
    """scenarios/rural3-<auction>.yaml: rural3-summer-pv's feeder, fleet and feedback for
    one day, cleared by the auction."""
    s = load_scenario(REPO / "scenarios" / f"rural3-{stem}.yaml")
    base = load_scenario(REPO / "scenarios" / "rural3-summer-pv.yaml")
    assert s.market.mechanism == name and name in MECHANISMS
    assert s.n_rounds == 96
    assert s.network == base.network and s.prosumers == base.prosumers and s.feedback == base.feedback
