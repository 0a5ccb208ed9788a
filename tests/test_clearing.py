"""Tests of the uniform-price double auction (cosim.markets.uniform) and its pool model.

Hand-worked order books check quantities, prices and trade tables against the textbook
rules; Hypothesis checks the invariants of the clearing on random books, with the
welfare compared against an independent LP solved by `scipy.optimize.linprog`.

Sources for the rules checked here:

- supply/demand crossing of a call market with divisible orders: Friedman and Rust (eds.),
  1993, "The Double Auction Market: Institutions, Theories, and Evidence", Addison-Wesley,
  ch. 1 (the market-clearing quantity is where the stepped demand and supply curves
  cross; any price in the interval between the marginal orders clears the market);
- k-pricing: Satterthwaite and Williams, 1989, "Bilateral trade with the sealed bid
  k-double auction: existence and efficiency", J. Econ. Theory 48:107-133 (the price is
  ``low + k (high - low)`` over the interval of market-clearing prices).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from cosim.markets import MECHANISMS, Charges, MarketContext, NetworkCuts, OrderArrays
from cosim.markets.uniform import (
    NoP2P,
    UniformDoubleAuction,
    clearing_price_interval,
    merit_order_matching,
)

#: Tolerance on quantities compared between results [kWh].
QTY_ABS = 1e-6
#: Tolerance on prices [currency/kWh].
PRICE_ABS = 1e-9
#: Tolerance on welfare against the independent LP [currency].
WELFARE_ABS = 1e-6
#: Largest random order book, in participants.
N_MAX = 30
#: The outside party's name.
GRID = "grid"
#: Numeric columns of the trade table (an empty table holds them as object).
NUMERIC_COLUMNS = ["energy_kwh", "price_per_kwh", "seller_price_per_kwh", "network_charge_per_kwh"]

#: Random books are drawn on the resolution real orders have: 1 Wh and 0.001 per kWh.
#: (Finer draws only find prices that differ by less than HiGHS's optimality tolerance.)
QTY_STEP_KWH, PRICE_STEP = 0.001, 0.001

#: Derandomised so that the suite gives the same answer on every run; no example database.
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- helpers ------------------------------------------------------------------------------
def no_grid(k: float = 0.5) -> MarketContext:
    """A context with no outside party: unmatched orders stay unmatched at no cost.

    The tariffs (0 and 1 per kWh) lie outside every order used here, so the interval of
    clearing prices is closed by the orders alone.
    """
    return MarketContext(
        retail_price_per_kwh=1.0,
        feed_in_price_per_kwh=0.0,
        k=k,
        import_cap_kwh=0.0,
        export_cap_kwh=0.0,
        voll_per_kwh=0.0,
        curtail_cost_per_kwh=0.0,
    )


def with_grid(retail: float = 0.30, feed_in: float = 0.05, k: float = 0.5) -> MarketContext:
    """Grid-connected: the outside grid sells at retail and buys at feed-in, without caps."""
    return MarketContext(retail_price_per_kwh=retail, feed_in_price_per_kwh=feed_in, k=k)


def book(*orders: tuple[str, str, float, float]) -> pd.DataFrame:
    """An order table from (id, side, quantity_kwh, price_per_kwh) tuples."""
    return pd.DataFrame(list(orders), columns=["id", "side", "quantity_kwh", "price_per_kwh"])


def clear_book(
    orders: pd.DataFrame,
    ctx: MarketContext,
    cuts=None,
    charges=None,
    mechanism=UniformDoubleAuction,
):
    """Clear a book on a fresh mechanism whose participants are the book's ids in order."""
    participants = orders.id.tolist()
    arrays = OrderArrays.from_book(orders, participants)
    result = mechanism(participants, max_cuts=2).clear(arrays, ctx, cuts, charges)
    assert result.ok, result.status
    check_trade_table(result, participants, arrays, ctx)
    return result, participants


def per(participants: list[str], values: np.ndarray) -> dict[str, float]:
    return {
        p: pytest.approx(float(v), abs=QTY_ABS) for p, v in zip(participants, values, strict=True)
    }


def p2p_rows(result) -> pd.DataFrame:
    t = result.trades
    return t[(t.buyer != GRID) & (t.seller != GRID)]


def check_trade_table(
    result, participants: list[str], orders: OrderArrays, ctx: MarketContext
) -> None:
    """The trade table adds up to the allocation, is in merit order and is priced uniformly."""
    trades = result.trades.astype({c: float for c in NUMERIC_COLUMNS})
    p2p = trades[(trades.buyer != GRID) & (trades.seller != GRID)]
    bought = p2p.groupby("buyer").energy_kwh.sum().reindex(participants, fill_value=0.0)
    sold = p2p.groupby("seller").energy_kwh.sum().reindex(participants, fill_value=0.0)
    np.testing.assert_allclose(bought.to_numpy(), result.bought_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(sold.to_numpy(), result.sold_kwh, atol=QTY_ABS)
    # merit order: highest (effective) bid first, lowest (effective) ask first
    pos = {p: i for i, p in enumerate(participants)}
    eff_bid = orders.bid_per_kwh - result.charges.buy
    eff_ask = orders.ask_per_kwh + result.charges.sell
    bids = [eff_bid[pos[b]] for b in p2p.buyer]
    asks = [eff_ask[pos[s]] for s in p2p.seller]
    assert all(np.diff(bids) <= PRICE_ABS), f"buyers not in merit order: {bids}"
    assert all(np.diff(asks) >= -PRICE_ABS), f"sellers not in merit order: {asks}"
    if len(p2p):
        np.testing.assert_allclose(p2p.price_per_kwh, result.price_per_kwh, atol=PRICE_ABS)
        np.testing.assert_allclose(p2p.seller_price_per_kwh, result.price_per_kwh, atol=PRICE_ABS)
    # trades with the outside party are exactly the imports and exports, at the tariffs
    imports = trades[trades.seller == GRID]
    exports = trades[trades.buyer == GRID]
    imp = imports.groupby("buyer").energy_kwh.sum().reindex(participants, fill_value=0.0)
    exp = exports.groupby("seller").energy_kwh.sum().reindex(participants, fill_value=0.0)
    np.testing.assert_allclose(imp.to_numpy(), result.import_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(exp.to_numpy(), result.export_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(imports.price_per_kwh, ctx.retail_price_per_kwh)
    np.testing.assert_allclose(exports.price_per_kwh, ctx.feed_in_price_per_kwh)


def p2p_trades(result):
    """P2P trades as (seller, buyer, kWh) tuples in table order."""
    return [
        (r.seller, r.buyer, pytest.approx(r.energy_kwh, abs=QTY_ABS))
        for r in p2p_rows(result).itertuples()
    ]


# -- hand-worked order books --------------------------------------------------------------
def test_overlap_marginal_buyer_partly_filled():
    """Supply and demand cross inside the marginal buyer's order (Friedman & Rust 1993, ch. 1).

    Demand: A 2 kWh at 0.30, B 2 kWh at 0.20.  Supply: C 3 kWh at 0.10, D 2 kWh at 0.25.
    Merit order: A-C trade 2 kWh (0.30 >= 0.10), B-C trade 1 kWh (0.20 >= 0.10), then C is
    exhausted and B's next kWh meets D at 0.25 > 0.20: stop at 3 kWh.  B is the marginal
    order, filled 1 of 2 kWh.
    Interval: low = max(accepted asks {0.10}, unserved bids {0.20}) = 0.20;
    high = min(accepted bids {0.30, 0.20}, unsold asks {0.25}) = 0.20.  Price 0.20 for any k.
    """
    r, ids = clear_book(
        book(
            ("A", "buy", 2, 0.30),
            ("B", "buy", 2, 0.20),
            ("C", "sell", 3, 0.10),
            ("D", "sell", 2, 0.25),
        ),
        no_grid(),
    )
    assert per(ids, r.bought_kwh) == {"A": 2, "B": 1, "C": 0, "D": 0}
    assert per(ids, r.sold_kwh) == {"A": 0, "B": 0, "C": 3, "D": 0}
    assert r.price_per_kwh == pytest.approx(0.20, abs=PRICE_ABS)
    assert p2p_trades(r) == [("C", "A", 2), ("C", "B", 1)]
    assert r.cleared_kwh == pytest.approx(3, abs=QTY_ABS)


def test_overlap_marginal_seller_partly_filled():
    """The curves cross inside the marginal seller's order (Friedman & Rust 1993, ch. 1).

    Demand: A 3 kWh at 0.40, B 2 kWh at 0.15.  Supply: C 2 kWh at 0.10, D 3 kWh at 0.20.
    A takes C's 2 kWh, then 1 kWh of D (0.40 >= 0.20); B at 0.15 < D's 0.20 gets nothing.
    Interval: low = max({0.10, 0.20}, unserved {0.15}) = 0.20; high = min({0.40}, unsold
    {0.20}) = 0.20.  Price 0.20 (D's ask), welfare 2 (0.40 - 0.10) + 1 (0.40 - 0.20) = 0.80.
    """
    r, ids = clear_book(
        book(
            ("A", "buy", 3, 0.40),
            ("B", "buy", 2, 0.15),
            ("C", "sell", 2, 0.10),
            ("D", "sell", 3, 0.20),
        ),
        no_grid(),
    )
    assert per(ids, r.bought_kwh) == {"A": 3, "B": 0, "C": 0, "D": 0}
    assert per(ids, r.sold_kwh) == {"A": 0, "B": 0, "C": 2, "D": 1}
    assert r.price_per_kwh == pytest.approx(0.20, abs=PRICE_ABS)
    assert r.welfare == pytest.approx(0.80, abs=WELFARE_ABS)
    assert p2p_trades(r) == [("C", "A", 2), ("D", "A", 1)]


def test_no_overlap_nothing_trades():
    """Highest bid below lowest ask: the curves do not cross, nothing trades (Friedman & Rust 1993).

    Bids 0.10 and 0.05, asks 0.20 and 0.30: every pair loses welfare, so the quantity is 0
    and there is no clearing price (NaN).
    """
    r, ids = clear_book(
        book(
            ("A", "buy", 2, 0.10),
            ("B", "buy", 1, 0.05),
            ("C", "sell", 2, 0.20),
            ("D", "sell", 3, 0.30),
        ),
        no_grid(),
    )
    assert r.cleared_kwh == pytest.approx(0, abs=QTY_ABS)
    assert np.all(r.sold_kwh < QTY_ABS)
    assert np.isnan(r.price_per_kwh)
    assert r.trades.empty


def test_tied_asks_share_the_quantity_at_the_tie_price():
    """Two sellers ask the same price; which one sells is arbitrary, total and price are not.

    Demand: A 3 kWh at 0.30.  Supply: C 2 kWh and D 2 kWh, both at 0.10.  3 kWh trade; one
    of the tied sellers is partly unsold, so low = high = 0.10 (Friedman & Rust 1993: at a
    tie the price is the tied order's price).
    """
    r, ids = clear_book(
        book(("A", "buy", 3, 0.30), ("C", "sell", 2, 0.10), ("D", "sell", 2, 0.10)), no_grid()
    )
    sold = per(ids, r.sold_kwh)
    assert r.cleared_kwh == pytest.approx(3, abs=QTY_ABS)
    assert sold["A"] == 0
    assert r.sold_kwh.sum() == pytest.approx(3, abs=QTY_ABS)
    assert r.sold_kwh.max() <= 2 + QTY_ABS
    assert r.price_per_kwh == pytest.approx(0.10, abs=PRICE_ABS)


def test_tied_bids_share_the_quantity_at_the_tie_price():
    """Two buyers bid the same price for more than is offered.

    Demand: A 2 kWh and B 2 kWh, both at 0.30.  Supply: C 3 kWh at 0.10.  3 kWh trade; one
    tied buyer is partly unserved, so low = max(0.10, 0.30) = 0.30 = high.  Price 0.30.
    """
    r, ids = clear_book(
        book(("A", "buy", 2, 0.30), ("B", "buy", 2, 0.30), ("C", "sell", 3, 0.10)), no_grid()
    )
    assert r.cleared_kwh == pytest.approx(3, abs=QTY_ABS)
    assert r.bought_kwh.max() <= 2 + QTY_ABS
    assert per(ids, r.sold_kwh)["C"] == 3
    assert r.price_per_kwh == pytest.approx(0.30, abs=PRICE_ABS)


def test_marginal_bid_equal_to_marginal_ask():
    """The marginal bid equals the marginal ask: the quantity is indeterminate, the price is not.

    Demand: A 2 kWh at 0.30, B 2 kWh at 0.20.  Supply: C 2 kWh at 0.10, D 2 kWh at 0.20.
    A-C trade 2 kWh; B-D trade anything in [0, 2] kWh at zero gain.  Whatever B-D trade,
    the interval is [0.20, 0.20] (unserved or accepted B at 0.20, unsold or accepted D at
    0.20), so the price is the tie price 0.20 and the welfare 2 (0.30 - 0.10) = 0.40.
    """
    r, ids = clear_book(
        book(
            ("A", "buy", 2, 0.30),
            ("B", "buy", 2, 0.20),
            ("C", "sell", 2, 0.10),
            ("D", "sell", 2, 0.20),
        ),
        no_grid(),
    )
    assert 2 - QTY_ABS <= r.cleared_kwh <= 4 + QTY_ABS
    assert per(ids, r.bought_kwh)["A"] == 2
    assert per(ids, r.sold_kwh)["C"] == 2
    assert r.price_per_kwh == pytest.approx(0.20, abs=PRICE_ABS)
    assert r.welfare == pytest.approx(0.40, abs=WELFARE_ABS)


@pytest.mark.parametrize(
    "orders",
    [
        pytest.param([("A", "buy", 2, 0.30), ("B", "buy", 1, 0.20)], id="only-buyers"),
        pytest.param([("C", "sell", 2, 0.10), ("D", "sell", 1, 0.20)], id="only-sellers"),
    ],
)
def test_one_side_empty_nothing_trades(orders):
    """With only buyers or only sellers there is no crossing, so nothing trades and the price is NaN."""
    r, ids = clear_book(book(*orders), no_grid())
    assert r.cleared_kwh == pytest.approx(0, abs=QTY_ABS)
    assert np.all(r.sold_kwh < QTY_ABS)
    assert np.isnan(r.price_per_kwh)
    assert r.trades.empty


@pytest.mark.parametrize("k, price", [(0.0, 0.10), (0.5, 0.25), (1.0, 0.40)])
def test_k_pricing_picks_low_mid_high_of_the_interval(k, price):
    """k-double auction price ``low + k (high - low)`` (Satterthwaite & Williams 1989).

    Demand: A 2 kWh at 0.40, B 1 kWh at 0.05.  Supply: C 2 kWh at 0.10, D 1 kWh at 0.50.
    A-C trade 2 kWh; B (0.05) and D (0.50) are extra-marginal.
    low = max(accepted ask 0.10, unserved bid 0.05) = 0.10;
    high = min(accepted bid 0.40, unsold ask 0.50) = 0.40.
    k = 0 -> 0.10, k = 0.5 -> 0.25, k = 1 -> 0.40.
    """
    r, ids = clear_book(
        book(
            ("A", "buy", 2, 0.40),
            ("B", "buy", 1, 0.05),
            ("C", "sell", 2, 0.10),
            ("D", "sell", 1, 0.50),
        ),
        no_grid(k),
    )
    assert per(ids, r.bought_kwh) == {"A": 2, "B": 0, "C": 0, "D": 0}
    assert per(ids, r.sold_kwh) == {"A": 0, "B": 0, "C": 2, "D": 0}
    assert r.price_per_kwh == pytest.approx(price, abs=PRICE_ABS)
    np.testing.assert_allclose(r.buy_price_per_kwh, price, atol=PRICE_ABS)
    np.testing.assert_allclose(r.sell_price_per_kwh, price, atol=PRICE_ABS)
    assert p2p_trades(r) == [("C", "A", 2)]


def test_clearing_price_interval_by_hand():
    """The interval of the marginal-buyer book, straight from the pure function."""
    low, high = clearing_price_interval(
        bid=np.array([0.30, 0.20, 0.0, 0.0]),
        ask=np.array([0.0, 0.0, 0.10, 0.25]),
        demand=np.array([2.0, 2.0, 0.0, 0.0]),
        supply=np.array([0.0, 0.0, 3.0, 2.0]),
        bought=np.array([2.0, 1.0, 0.0, 0.0]),
        sold=np.array([0.0, 0.0, 3.0, 0.0]),
        floor=0.0,
        ceiling=1.0,
    )
    assert (low, high) == pytest.approx((0.20, 0.20))


def test_merit_order_matching_adds_up():
    """Highest bid meets lowest ask first; the trades add up to the allocation."""
    trades = merit_order_matching(
        np.arange(4),
        np.array([1.0, 2.0, 0.0, 0.0]),
        np.array([0.2, 0.3, 0.0, 0.0]),
        np.arange(4),
        np.array([0.0, 0.0, 1.5, 1.5]),
        np.array([0.0, 0.0, 0.25, 0.1]),
    )
    assert trades == [(3, 1, 1.5), (2, 1, 0.5), (2, 0, 1.0)]


# -- the outside grid ---------------------------------------------------------------------
def test_grid_imports_unmatched_demand_and_exports_unmatched_supply():
    """The marginal-buyer book again, now with the grid at retail 0.30 and feed-in 0.05.

    P2P is as without the grid (A 2, B 1 from C; price 0.20 in [0.05, 0.30]).  B's unmatched
    1 kWh is imported, D's unmatched 2 kWh exported; nothing is shed or curtailed.
    """
    r, ids = clear_book(
        book(
            ("A", "buy", 2, 0.30),
            ("B", "buy", 2, 0.20),
            ("C", "sell", 3, 0.10),
            ("D", "sell", 2, 0.25),
        ),
        with_grid(0.30, 0.05),
    )
    assert per(ids, r.bought_kwh) == {"A": 2, "B": 1, "C": 0, "D": 0}
    assert per(ids, r.sold_kwh) == {"A": 0, "B": 0, "C": 3, "D": 0}
    assert per(ids, r.import_kwh) == {"A": 0, "B": 1, "C": 0, "D": 0}
    assert per(ids, r.export_kwh) == {"A": 0, "B": 0, "C": 0, "D": 2}
    assert r.shed_kwh.sum() == pytest.approx(0, abs=QTY_ABS)
    assert r.curtailed_kwh.sum() == pytest.approx(0, abs=QTY_ABS)
    assert 0.05 <= r.price_per_kwh <= 0.30
    assert r.price_per_kwh == pytest.approx(0.20, abs=PRICE_ABS)
    grid_rows = r.trades[(r.trades.buyer == GRID) | (r.trades.seller == GRID)]
    assert [(t.seller, t.buyer, t.energy_kwh, t.price_per_kwh) for t in grid_rows.itertuples()] == [
        (GRID, "B", pytest.approx(1), pytest.approx(0.30)),
        ("D", GRID, pytest.approx(2), pytest.approx(0.05)),
    ]


@pytest.mark.parametrize("k, price", [(0.0, 0.05), (0.5, 0.175), (1.0, 0.30)])
def test_grid_tariffs_close_an_open_interval(k, price):
    """Where the orders leave the interval open, feed-in and retail close it (k-pricing, S&W 1989).

    A bids 0.40 for 2 kWh, C asks 0.02 for 2 kWh: they trade exactly.  The orders alone
    give [0.02, 0.40]; the grid's tariffs narrow it to [max(0.05, 0.02), min(0.30, 0.40)]
    = [0.05, 0.30], since nobody would trade P2P outside the grid's prices.
    """
    r, ids = clear_book(
        book(("A", "buy", 2, 0.40), ("C", "sell", 2, 0.02)), with_grid(0.30, 0.05, k)
    )
    assert per(ids, r.bought_kwh) == {"A": 2, "C": 0}
    assert r.price_per_kwh == pytest.approx(price, abs=PRICE_ABS)
    assert r.import_kwh.sum() + r.export_kwh.sum() == pytest.approx(0, abs=QTY_ABS)


@pytest.mark.parametrize(
    "orders",
    [
        pytest.param([("A", "buy", 2, 0.30)], id="only-buyers"),
        pytest.param([("C", "sell", 2, 0.10)], id="only-sellers"),
    ],
)
def test_grid_one_side_empty_everything_with_the_grid(orders):
    """With one side empty nothing trades P2P; all demand is imported, all supply exported."""
    r, ids = clear_book(book(*orders), with_grid())
    orders_arr = OrderArrays.from_book(book(*orders), ids)
    np.testing.assert_allclose(r.import_kwh, orders_arr.demand_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(r.export_kwh, orders_arr.supply_kwh, atol=QTY_ABS)
    assert np.isnan(r.price_per_kwh)
    assert len(p2p_rows(r)) == 0
    assert len(r.trades) == 1


@pytest.mark.parametrize(
    "orders",
    [
        pytest.param([("A", "buy", 2, 0.40), ("S", "sell", 1, 0.20)], id="bid-above-retail"),
        pytest.param([("A", "buy", 1, 0.25), ("S", "sell", 2, 0.05)], id="ask-below-feed-in"),
    ],
)
def test_grid_price_stays_within_tariffs_for_orders_outside_them(orders):
    """With the grid at retail 0.30 and feed-in 0.10 the P2P price lies in [0.10, 0.30].

    A bids 0.40 for 2 kWh, S asks 0.20 for 1 kWh: 1 kWh trades P2P and A imports the other
    1 kWh at 0.30.  The grid is an unlimited seller at 0.30, so the competitive price is at
    most 0.30 (a buyer would never pay more P2P than the grid asks).
    Mirror case: A bids 0.25 for 1 kWh, S asks 0.05 for 2 kWh and exports 1 kWh at 0.10,
    so the price is at least 0.10.
    """
    r, _ = clear_book(book(*orders), with_grid(0.30, 0.10))
    assert r.cleared_kwh == pytest.approx(1, abs=QTY_ABS)
    assert 0.10 - PRICE_ABS <= r.price_per_kwh <= 0.30 + PRICE_ABS


# -- network cuts and charges -------------------------------------------------------------
def test_cut_on_one_seller_curtails_exactly_the_excess():
    """A cut ``injection[C] <= 1.5`` on a seller with 3 kWh curtails exactly 1.5 kWh.

    Without the cut: A buys 2 kWh from C (0.30 >= 0.10), C exports 1 kWh; injection 3.
    With the cut C may inject 1.5 kWh: its P2P sale (worth 0.20/kWh) beats export (worth
    nothing in the welfare), so C sells 1.5 P2P, curtails 1.5; A imports the missing 0.5.
    """
    orders = book(("A", "buy", 2, 0.30), ("C", "sell", 3, 0.10))
    ctx = with_grid(0.30, 0.05)
    free, ids = clear_book(orders, ctx)
    assert free.injection_kwh[ids.index("C")] == pytest.approx(3, abs=QTY_ABS)
    assert free.curtailed_kwh.sum() == pytest.approx(0, abs=QTY_ABS)
    cut = NetworkCuts(np.array([[0.0, 1.0]]), np.array([1.5]), ("C export",))
    r, ids = clear_book(orders, ctx, cuts=cut)
    assert per(ids, r.curtailed_kwh) == {"A": 0, "C": 1.5}
    assert r.injection_kwh[ids.index("C")] == pytest.approx(1.5, abs=QTY_ABS)
    assert per(ids, r.sold_kwh) == {"A": 0, "C": 1.5}
    assert per(ids, r.import_kwh) == {"A": 0.5, "C": 0}
    assert r.shed_kwh.sum() == pytest.approx(0, abs=QTY_ABS)
    # whatever the price, nobody trades against its own order
    assert r.price_per_kwh <= 0.30 + PRICE_ABS
    assert r.price_per_kwh >= 0.10 - PRICE_ABS


def test_cut_without_grid_shifts_sales_to_the_next_seller():
    """No grid; C (0.10) is capped at 1 kWh, so D (0.20) supplies the rest of A's 4 kWh.

    Unconstrained: C 3, D 1.  Cut ``injection[C] <= 1``: C 1 (curtailed 2 = its excess),
    D 3, A still 4.
    """
    orders = book(("A", "buy", 4, 0.30), ("C", "sell", 3, 0.10), ("D", "sell", 3, 0.20))
    cut = NetworkCuts(np.array([[0.0, 1.0, 0.0]]), np.array([1.0]))
    r, ids = clear_book(orders, no_grid(), cuts=cut)
    assert per(ids, r.sold_kwh) == {"A": 0, "C": 1, "D": 3}
    assert per(ids, r.curtailed_kwh) == {"A": 0, "C": 2, "D": 0}
    assert per(ids, r.bought_kwh) == {"A": 4, "C": 0, "D": 0}


def test_too_many_cuts_is_an_error():
    auction = UniformDoubleAuction(["A", "C"], max_cuts=1)
    orders = OrderArrays.from_book(book(("A", "buy", 1, 0.3), ("C", "sell", 1, 0.1)), ["A", "C"])
    cuts = NetworkCuts(np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="exceed"):
        auction.clear(orders, no_grid(), cuts)


def test_flat_buyer_charge_excludes_a_buyer_and_nobody_pays_above_its_bid():
    """A flat buyer charge of 0.10/kWh lowers every effective bid by 0.10.

    Demand: A 2 kWh at 0.40, B 2 kWh at 0.15.  Supply: C 3 kWh at 0.10, D 2 kWh at 0.20.
    No charge: A 2 and B 1 from C; price 0.15 (B is marginal and unserved).
    Charge 0.10: effective bids A 0.30, B 0.05 < C's 0.10, so only A trades (2 kWh).
    Interval: low = max(0.10, unserved 0.05) = 0.10, high = min(0.30, unsold C 0.10) = 0.10.
    A pays 0.10 + 0.10 = 0.20 <= 0.40.
    """
    orders = book(
        ("A", "buy", 2, 0.40), ("B", "buy", 2, 0.15), ("C", "sell", 3, 0.10), ("D", "sell", 2, 0.20)
    )
    plain, ids = clear_book(orders, no_grid())
    assert per(ids, plain.bought_kwh) == {"A": 2, "B": 1, "C": 0, "D": 0}
    assert plain.price_per_kwh == pytest.approx(0.15, abs=PRICE_ABS)
    charges = Charges(buy=np.full(4, 0.10), sell=np.zeros(4))
    r, ids = clear_book(orders, no_grid(), charges=charges)
    assert per(ids, r.bought_kwh) == {"A": 2, "B": 0, "C": 0, "D": 0}
    assert per(ids, r.sold_kwh) == {"A": 0, "B": 0, "C": 2, "D": 0}
    assert r.price_per_kwh == pytest.approx(0.10, abs=PRICE_ABS)
    arrays = OrderArrays.from_book(orders, ids)
    buyers = r.bought_kwh > QTY_ABS
    assert np.all(
        r.buy_price_per_kwh[buyers] + charges.buy[buyers] <= arrays.bid_per_kwh[buyers] + PRICE_ABS
    )
    sellers = r.sold_kwh > QTY_ABS
    assert np.all(
        r.sell_price_per_kwh[sellers] - charges.sell[sellers]
        >= arrays.ask_per_kwh[sellers] - PRICE_ABS
    )
    np.testing.assert_allclose(p2p_rows(r).network_charge_per_kwh, 0.10)


def test_flat_seller_charge_keeps_sellers_above_their_ask():
    """A seller charge of 0.05/kWh raises every effective ask by 0.05.

    Demand: A 2 kWh at 0.30.  Supply: C 3 kWh at 0.10 (effective 0.15), D 2 kWh at 0.20
    (effective 0.25).  A buys 2 kWh from C.  Interval on effective prices:
    low = max(accepted ask 0.15) = 0.15, high = min(accepted bid 0.30, unsold asks C 0.15,
    D 0.25) = 0.15.  C receives 0.15, pays the 0.05 charge, keeps 0.10 >= its ask 0.10.
    """
    orders = book(("A", "buy", 2, 0.30), ("C", "sell", 3, 0.10), ("D", "sell", 2, 0.20))
    charges = Charges(buy=np.zeros(3), sell=np.full(3, 0.05))
    r, ids = clear_book(orders, no_grid(), charges=charges)
    assert per(ids, r.sold_kwh) == {"A": 0, "C": 2, "D": 0}
    assert r.price_per_kwh == pytest.approx(0.15, abs=PRICE_ABS)
    assert r.price_per_kwh - 0.05 >= 0.10 - PRICE_ABS


# -- persistence: one model, many rounds --------------------------------------------------
PARTICIPANTS = ["A", "B", "C", "D", "E"]


def _arrays(demand, supply, bid, ask) -> OrderArrays:
    return OrderArrays(*(np.array(v, float) for v in (demand, supply, bid, ask)))


ROUNDS = [
    # (orders, ctx, cuts, charges): every book has a unique optimal allocation
    (
        _arrays([2, 2, 0, 0, 1], [0, 0, 3, 2, 0], [0.30, 0.20, 0, 0, 0.27], [0, 0, 0.10, 0.25, 0]),
        with_grid(0.30, 0.05),
        NetworkCuts(np.array([[0, 0, 1.0, 0, 0]]), np.array([1.0])),
        None,
    ),
    (
        _arrays([2, 2, 0, 0, 1], [0, 0, 3, 2, 0], [0.30, 0.20, 0, 0, 0.27], [0, 0, 0.10, 0.25, 0]),
        with_grid(0.30, 0.05),
        None,
        None,
    ),
    (
        _arrays([0, 3, 1, 0, 0], [2, 0, 0, 4, 1], [0, 0.35, 0.22, 0, 0], [0.12, 0, 0, 0.18, 0.40]),
        no_grid(0.3),
        NetworkCuts(np.array([[0, 0, 0, 1.0, 0], [-1.0, 0, 0, 0, 0]]), np.array([1.5, 1e9])),
        None,
    ),
    (
        _arrays([0, 3, 1, 0, 0], [2, 0, 0, 4, 1], [0, 0.35, 0.22, 0, 0], [0.12, 0, 0, 0.18, 0.40]),
        no_grid(0.3),
        None,
        Charges(np.array([0, 0.02, 0.05, 0, 0]), np.array([0.01, 0, 0, 0.03, 0])),
    ),
    (
        _arrays([1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0.4, 0, 0, 0, 0], [0, 0.1, 0, 0, 0]),
        with_grid(0.30, 0.08, k=1.0),
        None,
        None,
    ),
    (
        _arrays([0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
        with_grid(),
        None,
        None,
    ),
]


def assert_same_result(got, want) -> None:
    assert got.status == want.status
    for name in ("bought_kwh", "sold_kwh", "import_kwh", "export_kwh", "curtailed_kwh", "shed_kwh"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), atol=QTY_ABS, err_msg=name
        )
    np.testing.assert_allclose(
        got.price_per_kwh, want.price_per_kwh, atol=PRICE_ABS, equal_nan=True
    )
    np.testing.assert_allclose(got.welfare, want.welfare, atol=WELFARE_ABS)
    pd.testing.assert_frame_equal(
        got.trades.reset_index(drop=True),
        want.trades.reset_index(drop=True),
        check_exact=False,
        atol=QTY_ABS,
        check_dtype=False,
    )


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(list(range(len(ROUNDS))), id="forward"),
        pytest.param(list(reversed(range(len(ROUNDS)))), id="reversed"),
    ],
)
def test_one_auction_many_rounds_equals_fresh_auctions(order):
    """No state leaks between rounds: cuts set in one round and absent in the next, charges,
    contexts and books all change, and every round matches a freshly built auction."""
    persistent = UniformDoubleAuction(PARTICIPANTS, max_cuts=3)
    for i in order + order:  # twice through, so every round follows a different one
        orders, ctx, cuts, charges = ROUNDS[i]
        got = persistent.clear(orders, ctx, cuts, charges)
        want = UniformDoubleAuction(PARTICIPANTS, max_cuts=3).clear(orders, ctx, cuts, charges)
        assert got.ok and want.ok
        assert_same_result(got, want)


def _padded(demand, supply, bid, ask, n: int = 8) -> OrderArrays:
    return _arrays(*(list(v) + [0.0] * (n - len(v)) for v in (demand, supply, bid, ask)))


#: Found by Hypothesis, then shrunk: after these rounds the persistent HiGHS model reports
#: "Unknown" (0 simplex iterations, primal infeasible point) on the last book, which a
#: freshly built auction clears at once (p2 buys 0.2 kWh from p1 at 0.00).
WARM_START_ROUNDS = [
    _padded([0, 0.5, 3.7, 5.0], [0, 0, 0, 0], [0, 0.4, 0, 0], [0, 0, 0, 0]),
    _padded([2.4], [0], [0], [0]),
    _padded([0, 0, 0], [0.9, 0.8, 4.9], [0, 0, 0], [0.2, 0.3, 0.1]),
    _padded([0, 0, 0.2, 2.4], [0, 3.2, 0, 0], [0, 0, 0, 0.2], [0, 0.2, 0, 0]),
    _padded([0, 0, 0.2, 0.2], [0, 3.2, 0, 0], [0, 0, 0.5, 0], [0, 0, 0, 0]),
]


def test_warm_start_rounds_clear_on_a_fresh_auction():
    """Each of the rounds below clears on its own (the control for the xfail that follows)."""
    participants = [f"p{i}" for i in range(8)]
    for orders in WARM_START_ROUNDS:
        r = UniformDoubleAuction(participants, max_cuts=2).clear(orders, no_grid())
        assert r.ok, r.status
    assert r.bought_kwh[2] == pytest.approx(0.2, abs=QTY_ABS)
    assert r.sold_kwh[1] == pytest.approx(0.2, abs=QTY_ABS)


def test_persistent_auction_clears_what_a_fresh_one_clears():
    participants = [f"p{i}" for i in range(8)]
    persistent = UniformDoubleAuction(participants, max_cuts=2)
    statuses = [persistent.clear(orders, no_grid()).status for orders in WARM_START_ROUNDS]
    assert statuses == ["ok"] * len(WARM_START_ROUNDS)


def test_cut_removed_next_round_no_longer_binds():
    """Round 1 caps C's injection at 1 kWh; round 2 has no cut and C sells its full 3 kWh."""
    orders, ctx, cuts, _ = ROUNDS[0]
    auction = UniformDoubleAuction(PARTICIPANTS, max_cuts=3)
    first = auction.clear(orders, ctx, cuts)
    assert first.injection_kwh[2] == pytest.approx(1, abs=QTY_ABS)
    assert first.curtailed_kwh[2] == pytest.approx(2, abs=QTY_ABS)
    second = auction.clear(orders, ctx)
    assert second.injection_kwh[2] == pytest.approx(3, abs=QTY_ABS)
    assert second.curtailed_kwh.sum() == pytest.approx(0, abs=QTY_ABS)


# -- the no-P2P baseline ------------------------------------------------------------------
def test_no_p2p_clears_no_p2p_trades():
    """NoP2P: every order goes to the grid, however much the bids and asks overlap."""
    assert MECHANISMS["none"] is NoP2P
    orders = book(
        ("A", "buy", 2, 0.30), ("B", "buy", 2, 0.20), ("C", "sell", 3, 0.10), ("D", "sell", 2, 0.25)
    )
    r, ids = clear_book(orders, with_grid(), mechanism=NoP2P)
    assert r.cleared_kwh == pytest.approx(0, abs=QTY_ABS)
    assert r.sold_kwh.sum() == pytest.approx(0, abs=QTY_ABS)
    assert per(ids, r.import_kwh) == {"A": 2, "B": 2, "C": 0, "D": 0}
    assert per(ids, r.export_kwh) == {"A": 0, "B": 0, "C": 3, "D": 2}
    assert np.isnan(r.price_per_kwh)
    assert len(p2p_rows(r)) == 0
    assert set(r.trades.buyer[r.trades.seller != GRID]) == {GRID}


def test_no_p2p_without_grid_trades_nothing():
    orders = book(("A", "buy", 2, 0.30), ("C", "sell", 3, 0.10))
    r, _ = clear_book(orders, no_grid(), mechanism=NoP2P)
    assert r.cleared_kwh == pytest.approx(0, abs=QTY_ABS)
    assert r.trades.empty


# -- properties on random order books -----------------------------------------------------
@pytest.fixture(scope="module")
def auction() -> UniformDoubleAuction:
    """One auction for every random book: sized for the largest, smaller books padded with zeros."""
    return UniformDoubleAuction([f"p{i:02d}" for i in range(N_MAX)], max_cuts=2)


@st.composite
def order_books(draw, price_min: float = 0.0, price_max: float = 0.5) -> OrderArrays:
    """Up to N_MAX participants, each a buyer or a seller of 0..5 kWh at a price in range."""
    n = draw(st.integers(0, N_MAX))
    qty = st.integers(0, round(5.0 / QTY_STEP_KWH)).map(lambda i: i * QTY_STEP_KWH)
    price = st.integers(round(price_min / PRICE_STEP), round(price_max / PRICE_STEP)).map(
        lambda i: i * PRICE_STEP
    )
    orders = draw(st.lists(st.tuples(st.booleans(), qty, price), min_size=n, max_size=n))
    demand, supply, bid, ask = (np.zeros(N_MAX) for _ in range(4))
    for i, (is_buyer, q, p) in enumerate(orders):
        if is_buyer:
            demand[i], bid[i] = q, p
        else:
            supply[i], ask[i] = q, p
    return OrderArrays(demand, supply, bid, ask)


def optimal_welfare(orders: OrderArrays) -> float:
    """Independent LP: max sum bid*b - ask*s, 0 <= b <= demand, 0 <= s <= supply, sum b = sum s."""
    n = len(orders.demand_kwh)
    cost = -np.concatenate([orders.bid_per_kwh, -orders.ask_per_kwh])
    a_eq = np.concatenate([np.ones(n), -np.ones(n)])[None, :]
    bounds = [(0.0, q) for q in np.concatenate([orders.demand_kwh, orders.supply_kwh])]
    res = linprog(cost, A_eq=a_eq, b_eq=[0.0], bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return -res.fun


def trade_welfare(result, orders: OrderArrays, participants: list[str]) -> float:
    """Sum over the P2P trades of (bid - ask) x quantity."""
    pos = {p: i for i, p in enumerate(participants)}
    p2p = p2p_rows(result)
    return float(
        sum(
            (orders.bid_per_kwh[pos[t.buyer]] - orders.ask_per_kwh[pos[t.seller]]) * t.energy_kwh
            for t in p2p.itertuples()
        )
    )


@HYPOTHESIS
@given(orders=order_books())
def test_welfare_equals_independent_lp(auction, orders):
    r = auction.clear(orders, no_grid())
    assert r.ok, r.status
    welfare = float(orders.bid_per_kwh @ r.bought_kwh - orders.ask_per_kwh @ r.sold_kwh)
    best = optimal_welfare(orders)
    assert welfare == pytest.approx(best, abs=WELFARE_ABS)
    assert trade_welfare(r, orders, auction.ids) == pytest.approx(best, abs=WELFARE_ABS)
    assert r.welfare == pytest.approx(best, abs=WELFARE_ABS)


@HYPOTHESIS
@given(orders=order_books(), k=st.floats(0.0, 1.0))
def test_individual_rationality_and_balance(auction, orders, k):
    ctx = no_grid(k)
    r = auction.clear(orders, ctx)
    assert r.ok, r.status
    buyers = r.bought_kwh > QTY_ABS
    sellers = r.sold_kwh > QTY_ABS
    assert np.all(r.buy_price_per_kwh[buyers] <= orders.bid_per_kwh[buyers] + PRICE_ABS)
    assert np.all(r.sell_price_per_kwh[sellers] >= orders.ask_per_kwh[sellers] - PRICE_ABS)
    # P2P bought == sold, within each order's quantity
    assert r.bought_kwh.sum() == pytest.approx(r.sold_kwh.sum(), abs=QTY_ABS)
    assert np.all(r.bought_kwh <= orders.demand_kwh + QTY_ABS)
    assert np.all(r.sold_kwh <= orders.supply_kwh + QTY_ABS)
    if buyers.any():
        assert np.isfinite(r.price_per_kwh)
    check_trade_table(r, auction.ids, orders, ctx)


@HYPOTHESIS
@given(orders=order_books(), retail=st.floats(0.25, 0.5), feed_in=st.floats(0.0, 0.25))
def test_grid_balances_every_participant(auction, orders, retail, feed_in):
    ctx = with_grid(retail, feed_in)
    r = auction.clear(orders, ctx)
    assert r.ok, r.status
    np.testing.assert_allclose(
        r.bought_kwh + r.import_kwh + r.shed_kwh, orders.demand_kwh, atol=QTY_ABS
    )
    np.testing.assert_allclose(
        r.sold_kwh + r.export_kwh + r.curtailed_kwh, orders.supply_kwh, atol=QTY_ABS
    )
    # the grid is unlimited: nothing is shed or curtailed
    np.testing.assert_allclose(r.shed_kwh, 0.0, atol=QTY_ABS)
    np.testing.assert_allclose(r.curtailed_kwh, 0.0, atol=QTY_ABS)
    assert r.bought_kwh.sum() == pytest.approx(r.sold_kwh.sum(), abs=QTY_ABS)
    check_trade_table(r, auction.ids, orders, ctx)


@HYPOTHESIS
@given(orders=order_books(0.10, 0.40), k=st.floats(0.0, 1.0))
def test_grid_price_within_tariffs_for_orders_within_them(auction, orders, k):
    """Orders priced inside [feed-in, retail] = [0.10, 0.40]: the P2P price stays inside too."""
    r = auction.clear(orders, with_grid(0.40, 0.10, k))
    assert r.ok, r.status
    if r.cleared_kwh > QTY_ABS:
        assert 0.10 - PRICE_ABS <= r.price_per_kwh <= 0.40 + PRICE_ABS
        buyers, sellers = r.bought_kwh > QTY_ABS, r.sold_kwh > QTY_ABS
        assert np.all(r.price_per_kwh <= orders.bid_per_kwh[buyers] + PRICE_ABS)
        assert np.all(r.price_per_kwh >= orders.ask_per_kwh[sellers] - PRICE_ABS)


@HYPOTHESIS
@given(orders=order_books(), k=st.floats(0.0, 1.0), grid=st.booleans())
def test_persistent_auction_matches_fresh_one(auction, orders, k, grid):
    """The module's auction has cleared many books before this one; a fresh one has not.

    Allocations may differ where the optimum is not unique, but welfare and the clearing
    price (the LP's dual) may not.
    """
    ctx = with_grid(0.5, 0.0, k) if grid else no_grid(k)
    got = auction.clear(orders, ctx)
    want = UniformDoubleAuction(auction.ids, max_cuts=1).clear(orders, ctx)
    assert got.ok and want.ok
    assert got.welfare == pytest.approx(want.welfare, abs=WELFARE_ABS)
    if got.cleared_kwh > QTY_ABS and want.cleared_kwh > QTY_ABS:
        assert got.price_per_kwh == pytest.approx(want.price_per_kwh, abs=PRICE_ABS)


@pytest.fixture(scope="module")
def baseline() -> NoP2P:
    return NoP2P([f"p{i:02d}" for i in range(N_MAX)], max_cuts=1)


@HYPOTHESIS
@given(orders=order_books())
def test_no_p2p_random_books(baseline, orders):
    """The baseline never trades P2P: all demand imported, all supply exported."""
    r = baseline.clear(orders, with_grid(0.5, 0.0))
    assert r.ok, r.status
    np.testing.assert_allclose(r.bought_kwh, 0.0, atol=QTY_ABS)
    np.testing.assert_allclose(r.sold_kwh, 0.0, atol=QTY_ABS)
    np.testing.assert_allclose(r.import_kwh, orders.demand_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(r.export_kwh, orders.supply_kwh, atol=QTY_ABS)
    assert np.isnan(r.price_per_kwh)
    assert len(p2p_rows(r)) == 0


def test_from_book_pads_missing_participants_with_zeros():
    orders = OrderArrays.from_book(
        book(("A", "buy", 2, 0.3), ("C", "sell", 1, 0.1)), ["A", "B", "C"]
    )
    np.testing.assert_array_equal(orders.demand_kwh, [2, 0, 0])
    np.testing.assert_array_equal(orders.supply_kwh, [0, 0, 1])


def test_context_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        no_grid().k = 0.7  # type: ignore[misc]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    qty=st.lists(st.floats(0.0, 5.0), min_size=4, max_size=4),
    price=st.lists(st.floats(0.0, 0.5), min_size=4, max_size=4),
    side=st.sampled_from(["buy", "sell", "mixed-no-p2p"]),
)
def test_trivial_rounds_skip_the_solver_with_the_solvers_answer(qty, price, side):
    """A round where nothing can trade P2P (one side empty, or P2P off) and nothing binds is
    answered without HiGHS; the answer equals HiGHS's on the same model."""
    from cosim.markets.pool import PoolModel

    n = 4
    demand = np.array(qty) if side == "buy" else (np.array(qty) * [1, 0, 1, 0] if side == "mixed-no-p2p" else np.zeros(n))
    supply = np.array(qty) if side == "sell" else (np.array(qty) * [0, 1, 0, 1] if side == "mixed-no-p2p" else np.zeros(n))
    orders = OrderArrays(demand, supply, np.array(price), np.array(price))
    ctx = MarketContext(0.30, 0.08, p2p=side != "mixed-no-p2p")
    pool = PoolModel(n, 4)
    cuts = NetworkCuts.empty(n)
    status, x, welfare = pool.trivial_solution(orders, ctx, cuts)
    pool.update(orders, ctx, cuts, Charges.none(n))
    status_lp, x_lp, welfare_lp = pool.solve()
    assert status == status_lp == "ok"
    for name in x:  # HiGHS is exact to its feasibility tolerance, the package's QTY_TOL
        np.testing.assert_allclose(x[name], x_lp[name], atol=1e-7, err_msg=name)
    assert welfare == pytest.approx(welfare_lp, abs=1e-7)
    # a cut, a capped outside party or a two-sided book with P2P are left to the solver
    one_cut = NetworkCuts(np.ones((1, n)), np.array([1.0]))
    assert pool.trivial_solution(orders, ctx, one_cut) is None
    both = OrderArrays(np.ones(n), np.ones(n), np.array(price), np.array(price))
    assert pool.trivial_solution(both, MarketContext(0.30, 0.08), cuts) is None
    if demand.sum() > 0:
        assert pool.trivial_solution(orders, dataclasses.replace(ctx, import_cap_kwh=demand.sum() / 2), cuts) is None
