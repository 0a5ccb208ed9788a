"""Tests of the community-based markets (cosim.markets.community).

Hand-worked books check the pricing rules against their sources; Hypothesis checks on
random books and tariffs that the manager breaks even where the theory says so, that
members are no worse off than alone with the grid where the rule promises it, and the
invariants every clearing must satisfy (balances, caps, network cuts, trade table).

Sources of the rules checked here:

- supply-demand ratio (SDR): Liu, Yu, Wang, Li, Ma and Lei, 2017, "Energy-sharing model
  with price-based demand response for microgrids of peer-to-peer prosumers", IEEE Trans.
  Power Syst. 32(5):3569-3583 (Sect. II, internal prices for SDR <= 1 and SDR > 1); the
  same prices in Liu, Yu, Wang and Wang, 2017, "Energy sharing management for microgrids
  with PV prosumers: a Stackelberg game approach", IEEE Trans. Ind. Informatics
  13(3):1088-1098;
- mid-market rate (MMR) and bill sharing (BS): Long, Wu, Zhang, Thomas, Cheng and
  Jenkins, 2017, "Peer-to-peer energy trading in a community microgrid", IEEE PES
  General Meeting (Sect. III); also Zhou, Wu, Long, Cheng and Zhang, 2018, "Evaluation
  of peer-to-peer energy sharing mechanisms based on a multiagent simulation
  framework", Applied Energy 222:993-1022 (Sect. 2);
- fixed-price pool with a membership fee: the community-based market of Sousa, Soares,
  Pinson, Moret, Baroche and Sorin, 2019, "Peer-to-peer and community-based markets: a
  comprehensive review", Renew. Sustain. Energy Rev. 104 (Sect. 3.2), with the flat
  price and subscription of the sonnenCommunity scheme reviewed by Zhang, Wu, Long and
  Cheng, 2017, "Review of existing peer-to-peer energy trading projects", Energy
  Procedia 105:2563-2568.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cosim.markets import MECHANISMS, Charges, MarketContext, NetworkCuts, OrderArrays
from cosim.markets import community as community_module
from cosim.markets.community import (
    MANAGER,
    BillSharing,
    CommunityMechanism,
    FixedPricePool,
    MidMarketRate,
    SupplyDemandRatio,
    bill_sharing_prices,
    membership_fees,
    mmr_prices,
    sdr_prices,
)
from cosim.sim.settlement import MARKET_OPERATOR, settle

#: Tolerance on quantities [kWh] (the solver's feasibility tolerance is 1e-7).
QTY_ABS = 1e-6
#: Tolerance on prices computed in closed form [currency/kWh] (floating point only).
PRICE_REL = 1e-12
#: Tolerance on money [currency].
MONEY_ABS = 1e-9
#: Tolerance on a network cut [kWh-weighted], as the contract allows.
CUT_ABS = 1e-6
#: Largest random community, in members.
N_MAX = 20
IDS = [f"m{i:02d}" for i in range(N_MAX)]
GRID = "grid"
#: The rules whose manager breaks even without a battery.
BREAK_EVEN = [SupplyDemandRatio, MidMarketRate, BillSharing]

HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclasses.dataclass(frozen=True)
class RoundContext(MarketContext):
    """A market context carrying the round length and number (what the community battery
    reads when the context has them)."""

    dt_h: float = 1.0
    round_no: int | None = None


# -- helpers ------------------------------------------------------------------------------
def books(*orders: tuple[str, float, float]) -> OrderArrays:
    """Orders from (side, quantity_kwh, price_per_kwh) tuples, one per member in order."""
    n = len(orders)
    demand, supply, bid, ask = (np.zeros(n) for _ in range(4))
    for i, (side, q, p) in enumerate(orders):
        if side == "buy":
            demand[i], bid[i] = q, p
        else:
            supply[i], ask[i] = q, p
    return OrderArrays(demand, supply, bid, ask)


def ids_for(orders: OrderArrays) -> list[str]:
    return IDS[: len(orders.demand_kwh)]


def clear(mechanism: type[CommunityMechanism], orders: OrderArrays, ctx: MarketContext, cuts=None,
          charges=None, options=None):
    ids = ids_for(orders)
    r = mechanism(ids, max_cuts=3, options=options).clear(orders, ctx, cuts, charges)
    assert r.ok, r.status
    check_invariants(r, orders, ctx, cuts, ids)
    return r


def check_invariants(r, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None, ids: list[str]):
    """The contract's invariants, with the community battery in the pool balance."""
    np.testing.assert_allclose(r.bought_kwh + r.import_kwh + r.shed_kwh, orders.demand_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(r.sold_kwh + r.export_kwh + r.curtailed_kwh, orders.supply_kwh, atol=QTY_ABS)
    for name in ("bought_kwh", "sold_kwh", "import_kwh", "export_kwh", "shed_kwh", "curtailed_kwh"):
        assert np.all(getattr(r, name) >= 0), name
    charge, discharge = r.info["battery_charge_kwh"], r.info["battery_discharge_kwh"]
    assert r.bought_kwh.sum() + r.operator_export_kwh + charge == pytest.approx(
        r.sold_kwh.sum() + r.operator_import_kwh + discharge, abs=QTY_ABS
    )
    assert min(r.operator_import_kwh, r.operator_export_kwh) <= QTY_ABS  # never both
    assert r.import_kwh.sum() + r.operator_import_kwh <= ctx.import_cap_kwh + QTY_ABS
    assert r.export_kwh.sum() + r.operator_export_kwh <= ctx.export_cap_kwh + QTY_ABS
    if cuts is not None and len(cuts):
        assert np.all(cuts.coef @ r.injection_kwh <= cuts.rhs + CUT_ABS)
    check_trade_table(r, ids, ctx)


def check_trade_table(r, ids: list[str], ctx: MarketContext) -> None:
    """Members trade with the manager at the community prices; the manager and members
    trade with the outside party at the tariffs; rows add up to the result."""
    t = r.trades
    seller, buyer = t.seller.to_numpy(object), t.buyer.to_numpy(object)
    energy, price = t.energy_kwh.to_numpy(float), t.price_per_kwh.to_numpy(float)
    outside = ctx.outside_party
    pos = {p: i for i, p in enumerate(ids)}

    def total(mask, party):
        """Energy of the rows in `mask`, summed per member named in `party`."""
        at = np.array([pos[p] for p in party[mask]], dtype=int)
        return np.bincount(at, weights=energy[mask], minlength=len(ids))

    np.testing.assert_allclose(total((seller == MANAGER) & (buyer != outside), buyer), r.bought_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(total((buyer == MANAGER) & (seller != outside), seller), r.sold_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(total((seller == outside) & (buyer != MANAGER), buyer), r.import_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(total((buyer == outside) & (seller != MANAGER), seller), r.export_kwh, atol=QTY_ABS)
    op_in = energy[(seller == outside) & (buyer == MANAGER)].sum()
    op_out = energy[(seller == MANAGER) & (buyer == outside)].sum()
    assert op_in == pytest.approx(r.operator_import_kwh, abs=QTY_ABS)
    assert op_out == pytest.approx(r.operator_export_kwh, abs=QTY_ABS)
    np.testing.assert_allclose(price[(seller == MANAGER) & (buyer != outside)], r.info["community_buy_price_per_kwh"])
    np.testing.assert_allclose(price[(buyer == MANAGER) & (seller != outside)], r.info["community_sell_price_per_kwh"])
    np.testing.assert_allclose(price[seller == outside], ctx.retail_price_per_kwh)
    np.testing.assert_allclose(price[buyer == outside], ctx.feed_in_price_per_kwh)
    np.testing.assert_allclose(t.seller_price_per_kwh.to_numpy(float), price)  # one price per trade
    assert list(r.trades.columns) == ["seller", "buyer", "energy_kwh", "price_per_kwh",
                                      "seller_price_per_kwh", "network_charge_per_kwh"]


def operator_bill(r, ctx: MarketContext) -> float:
    table = settle(0, ids_for_result(r), np.arange(len(r.bought_kwh)), r, ctx)
    assert abs(table.bill.sum()) < MONEY_ABS, "bills must sum to zero"
    return float(table.set_index("party").loc[MARKET_OPERATOR, "bill"])


def ids_for_result(r) -> list[str]:
    return IDS[: len(r.bought_kwh)]


#: The hand-worked community of most tests: A and B buy 2 kWh each, C sells 1 and D 0.5;
#: retail 0.30, feed-in 0.10. Supply 1.5 < demand 4: SDR = 0.375, deficit 2.5 kWh.
HAND_BOOK = books(("buy", 2.0, 0.30), ("buy", 2.0, 0.25), ("sell", 1.0, 0.10), ("sell", 0.5, 0.12))
HAND_CTX = MarketContext(0.30, 0.10)


# -- registry -------------------------------------------------------------------------------
def test_registered_under_their_names():
    for cls in (SupplyDemandRatio, MidMarketRate, BillSharing, FixedPricePool):
        assert MECHANISMS[cls.name] is cls
    assert {"community_sdr", "community_mmr", "bill_sharing", "fixed_price"} <= set(MECHANISMS)
    assert MANAGER == MARKET_OPERATOR  # the manager's trades settle on the operator's bill


# -- pricing rules ----------------------------------------------------------------------------
def test_sdr_prices_by_hand():
    """Liu et al. 2017: SDR = 1.5 / 4 = 0.375 < 1, so
    sell = 0.10 x 0.30 / ((0.30 - 0.10) 0.375 + 0.10) = 0.03 / 0.175 = 6/35,
    buy = 6/35 x 0.375 + 0.30 x 0.625 = 9/140 + 0.1875 = 0.2517857...
    With supply >= demand both prices are the feed-in tariff."""
    buy, sell = sdr_prices(1.5, 4.0, 0.30, 0.10)
    assert sell == pytest.approx(6 / 35, rel=PRICE_REL)
    assert buy == pytest.approx(9 / 140 + 0.1875, rel=PRICE_REL)
    assert sdr_prices(4.0, 4.0, 0.30, 0.10) == (0.10, 0.10)
    assert sdr_prices(5.0, 0.0, 0.30, 0.10) == (0.10, 0.10)
    assert sdr_prices(0.0, 2.0, 0.30, 0.10) == pytest.approx((0.30, 0.30))  # SDR 0: nobody sells


@given(
    supply=st.floats(0.0, 100.0), demand=st.floats(1e-3, 100.0),
    retail=st.floats(0.05, 1.0), feed_in_share=st.floats(0.0, 1.0),
)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_sdr_budget_identity(supply, demand, retail, feed_in_share):
    """Liu et al. 2017: when supply < demand, buyers pay for sellers' energy plus the
    deficit at retail -- buy demand = sell supply + retail (demand - supply) -- and both
    prices lie in [feed_in, retail]."""
    feed_in = feed_in_share * retail
    buy, sell = sdr_prices(supply, demand, retail, feed_in)
    assert feed_in - 1e-15 <= sell <= buy + 1e-15 <= retail + 2e-15
    if supply < demand:
        assert buy * demand == pytest.approx(sell * supply + retail * (demand - supply), rel=PRICE_REL, abs=1e-15)
    else:
        assert buy == sell == feed_in


@pytest.mark.parametrize(
    "sdr, sell, buy",
    [
        pytest.param(0.0, 0.30, 0.30, id="no supply"),
        pytest.param(0.25, 6 / 35, 0.25 * 6 / 35 + 0.225, id="quarter"),
        pytest.param(0.5, 0.12, 0.21, id="half"),
        pytest.param(0.8, 3 / 34, 0.8 * 3 / 34 + 0.06, id="four fifths"),
        pytest.param(1.0, 0.075, 0.075, id="balanced"),
        pytest.param(2.0, 0.075, 0.075, id="surplus"),
    ],
)
def test_sdr_prices_liu_worked(sdr, sell, buy):
    """Liu, Yu, Wang, Li, Ma and Lei, 2017, "Energy-sharing model with price-based demand
    response for microgrids of peer-to-peer prosumers", IEEE Trans. Power Syst.
    32(5):3569-3583, Sect. II (internal prices of the energy-sharing zone against the
    grid's buying price lambda_b and selling price lambda_s):

        P_s = lambda_b lambda_s / ((lambda_b - lambda_s) SDR + lambda_s),
        P_b = P_s SDR + lambda_b (1 - SDR)                     for 0 <= SDR <= 1,
        P_s = P_b = lambda_s                                   for SDR > 1.

    Worked by hand for lambda_b = 0.30, lambda_s = 0.075 (demand 4 kWh):
    SDR 0.25: P_s = 0.0225 / (0.225 x 0.25 + 0.075) = 0.0225 / 0.13125 = 6/35,
              P_b = 0.25 x 6/35 + 0.30 x 0.75 = 0.2678...;
    SDR 0.5:  P_s = 0.0225 / 0.1875 = 0.12, P_b = 0.06 + 0.15 = 0.21;
    SDR 0.8:  P_s = 0.0225 / 0.255 = 3/34, P_b = 0.8 x 3/34 + 0.06 = 0.1305...
    The ends meet the tariffs: SDR 0 gives lambda_b to both, SDR 1 lambda_s to both, so
    the prices are continuous in SDR. P_s is the SDR-weighted harmonic mean of the
    tariffs, 1 / P_s = SDR / lambda_s + (1 - SDR) / lambda_b."""
    demand = 4.0
    got_buy, got_sell = sdr_prices(sdr * demand, demand, 0.30, 0.075)
    assert got_sell == pytest.approx(sell, rel=PRICE_REL)
    assert got_buy == pytest.approx(buy, rel=PRICE_REL)
    if sdr <= 1.0:
        assert 1.0 / got_sell == pytest.approx(sdr / 0.075 + (1.0 - sdr) / 0.30, rel=PRICE_REL)


def test_sdr_prices_fall_as_supply_grows():
    """Liu et al. 2017: both internal prices fall monotonically from lambda_b to lambda_s
    as SDR goes from 0 to 1, and the buying price never falls below the selling price."""
    ratios = np.linspace(0.0, 1.0, 101)
    prices = np.array([sdr_prices(r * 10.0, 10.0, 0.30, 0.075) for r in ratios])
    assert np.all(np.diff(prices[:, 0]) <= 1e-15) and np.all(np.diff(prices[:, 1]) <= 1e-15)
    assert np.all(prices[:, 0] >= prices[:, 1] - 1e-15)


def test_mmr_prices_by_hand():
    """Long et al. 2017 with retail 0.30, feed-in 0.10: mmr = 0.20.
    Supply 1.5 < demand 4: sellers 0.20, buyers (0.20 x 1.5 + 0.30 x 2.5) / 4 = 0.2625.
    Supply 4 > demand 2: buyers 0.20, sellers (0.20 x 2 + 0.10 x 2) / 4 = 0.15.
    Balanced: both 0.20."""
    assert mmr_prices(1.5, 4.0, 0.30, 0.10) == pytest.approx((0.2625, 0.20), rel=PRICE_REL)
    assert mmr_prices(4.0, 2.0, 0.30, 0.10) == pytest.approx((0.20, 0.15), rel=PRICE_REL)
    assert mmr_prices(3.0, 3.0, 0.30, 0.10) == pytest.approx((0.20, 0.20), rel=PRICE_REL)
    assert mmr_prices(2.0, 0.0, 0.30, 0.10) == pytest.approx((0.20, 0.10), rel=PRICE_REL)


@given(supply=st.floats(0.0, 100.0), demand=st.floats(0.0, 100.0), retail=st.floats(0.05, 1.0),
       feed_in_share=st.floats(0.0, 1.0))
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_mmr_budget_identity(supply, demand, retail, feed_in_share):
    """Long et al. 2017: the excess side trades its surplus or deficit at the tariff, so
    buy demand - sell supply = retail (demand - supply)+ - feed_in (supply - demand)+."""
    feed_in = feed_in_share * retail
    buy, sell = mmr_prices(supply, demand, retail, feed_in)
    net = buy * demand - sell * supply
    want = retail * max(demand - supply, 0.0) - feed_in * max(supply - demand, 0.0)
    assert net == pytest.approx(want, rel=PRICE_REL, abs=1e-13)
    assert feed_in - 1e-15 <= sell <= 0.5 * (retail + feed_in) + 1e-15 <= buy + 2e-15 <= retail + 3e-15


def test_bill_sharing_prices_by_hand():
    """Long et al. 2017, bill sharing: deficit 2.5 kWh at 0.30 = 0.75 shared over 4 kWh of
    demand -> buyers 0.1875; nothing exported -> sellers 0. Surplus 4 kWh at 0.10 = 0.40
    shared over 5 kWh of supply -> sellers 0.08; buyers 0 (internal energy is free)."""
    assert bill_sharing_prices(1.5, 4.0, 2.5, 0.0, 0.30, 0.10) == pytest.approx((0.1875, 0.0), rel=PRICE_REL)
    assert bill_sharing_prices(5.0, 1.0, 0.0, 4.0, 0.30, 0.10) == pytest.approx((0.0, 0.08), rel=PRICE_REL)


# -- clearing the hand-worked community -----------------------------------------------------------
@pytest.mark.parametrize(
    "mechanism, buy, sell",
    [
        pytest.param(SupplyDemandRatio, 9 / 140 + 0.1875, 6 / 35, id="sdr"),
        pytest.param(MidMarketRate, 0.2625, 0.20, id="mmr"),
        pytest.param(BillSharing, 0.1875, 0.0, id="bill-sharing"),
        pytest.param(FixedPricePool, 0.20, 0.20, id="fixed-price-default-mid"),
    ],
)
def test_hand_worked_community(mechanism, buy, sell):
    """HAND_BOOK: every member trades its whole order with the community (members neither
    import nor export), the manager imports the 2.5 kWh deficit; prices as worked out in
    test_sdr_prices_by_hand, test_mmr_prices_by_hand and test_bill_sharing_prices_by_hand
    (fixed price: its default, the mid-market rate (0.30 + 0.10) / 2)."""
    r = clear(mechanism, HAND_BOOK, HAND_CTX)
    np.testing.assert_allclose(r.bought_kwh, [2, 2, 0, 0], atol=QTY_ABS)
    np.testing.assert_allclose(r.sold_kwh, [0, 0, 1, 0.5], atol=QTY_ABS)
    np.testing.assert_allclose(r.import_kwh + r.export_kwh + r.shed_kwh + r.curtailed_kwh, 0.0, atol=QTY_ABS)
    assert r.operator_import_kwh == pytest.approx(2.5, abs=QTY_ABS)
    assert r.operator_export_kwh == 0.0
    np.testing.assert_allclose(r.buy_price_per_kwh, buy, rtol=1e-9)
    np.testing.assert_allclose(r.sell_price_per_kwh, sell, rtol=1e-9, atol=1e-12)
    bill = operator_bill(r, HAND_CTX)
    if mechanism is FixedPricePool:  # the pool buys 2.5 kWh at 0.30 and resells it at 0.20
        assert bill == pytest.approx(2.5 * (0.30 - 0.20), abs=MONEY_ABS)
    else:
        assert bill == pytest.approx(0.0, abs=MONEY_ABS)


def test_surplus_community_sdr_and_mmr():
    """Supply 5 > demand 1 (retail 0.30, feed-in 0.10): SDR >= 1 gives feed-in to all
    (Liu et al. 2017); MMR gives buyers 0.20 and sellers (0.20 + 0.10 x 4) / 5 = 0.12
    (Long et al. 2017). The manager exports 4 kWh and breaks even."""
    orders = books(("buy", 1.0, 0.3), ("sell", 2.0, 0.1), ("sell", 3.0, 0.1))
    sdr = clear(SupplyDemandRatio, orders, HAND_CTX)
    mmr = clear(MidMarketRate, orders, HAND_CTX)
    for r in (sdr, mmr):
        assert r.operator_export_kwh == pytest.approx(4.0, abs=QTY_ABS)
        assert operator_bill(r, HAND_CTX) == pytest.approx(0.0, abs=MONEY_ABS)
    assert sdr.price_per_kwh == pytest.approx(0.10)
    assert sdr.info["sdr"] == pytest.approx(5.0)
    np.testing.assert_allclose(mmr.buy_price_per_kwh, 0.20)
    np.testing.assert_allclose(mmr.sell_price_per_kwh, 0.12)
    assert np.isnan(mmr.price_per_kwh)  # buyers and sellers pay different prices


def test_bill_sharing_sums_and_seller_loss():
    """Bill sharing (Long et al. 2017): members' bills add up to the community's bill as one
    customer, retail x import - feed_in x export; a seller in a net-importing round
    gets nothing for its kWh (the known weakness of the rule: not individually rational
    for sellers), while every buyer pays at most retail."""
    r = clear(BillSharing, HAND_BOOK, HAND_CTX)
    table = settle(0, ids_for(HAND_BOOK), np.arange(4), r, HAND_CTX).set_index("party")
    members = table.loc[ids_for(HAND_BOOK), "bill"]
    assert members.sum() == pytest.approx(0.30 * 2.5, abs=MONEY_ABS)
    assert members.iloc[0] == pytest.approx(2 * 0.1875, abs=MONEY_ABS)
    assert members.iloc[2] == pytest.approx(0.0, abs=MONEY_ABS)  # alone it would earn 0.10
    assert np.all(r.buy_price_per_kwh <= HAND_CTX.retail_price_per_kwh)


# -- random communities --------------------------------------------------------------------------
@st.composite
def communities(draw, caps: bool = False):
    """(orders, ctx): up to N_MAX members buying or selling 0..5 kWh on Wh resolution,
    tariffs with feed-in <= retail, optionally an islanded outside party with caps."""
    n = draw(st.integers(1, N_MAX))
    qty = st.integers(0, 5000).map(lambda i: i / 1000)
    rows = draw(st.lists(st.tuples(st.booleans(), qty, st.integers(0, 500).map(lambda i: i / 1000)),
                         min_size=n, max_size=n))
    orders = books(*[("buy" if b else "sell", q, p) for b, q, p in rows])
    retail = draw(st.integers(50, 500).map(lambda i: i / 1000))
    feed_in = draw(st.integers(0, 1000).map(lambda i: i / 1000 * retail))
    ctx = MarketContext(retail, feed_in)
    if caps and draw(st.booleans()):
        ctx = dataclasses.replace(ctx, outside_party="grid_forming",
                                  import_cap_kwh=draw(st.floats(0.0, 20.0)),
                                  export_cap_kwh=draw(st.floats(0.0, 20.0)))
    return orders, ctx


@pytest.fixture(scope="module")
def persistent():
    """One object per rule, cleared on every random book (padded to N_MAX with zeros), and
    one SDR community with a battery (key "battery")."""
    objects = {cls: cls(IDS, max_cuts=3) for cls in (*BREAK_EVEN, FixedPricePool)}
    objects["battery"] = SupplyDemandRatio(IDS, max_cuts=3, options=BATTERY)
    return objects


def pad(orders: OrderArrays) -> OrderArrays:
    k = N_MAX - len(orders.demand_kwh)
    return OrderArrays(*(np.r_[a, np.zeros(k)] for a in (orders.demand_kwh, orders.supply_kwh,
                                                          orders.bid_per_kwh, orders.ask_per_kwh)))


@HYPOTHESIS
@given(case=communities(caps=True))
def test_manager_breaks_even_and_bills_sum_to_zero(persistent, case):
    """SDR, MMR and bill sharing: the manager's bill (what members pay it minus what it
    pays them, plus its outside trades at retail and feed-in) is zero in every round,
    caps binding or not (Liu et al. 2017 budget identity; Long et al. 2017)."""
    orders, ctx = case
    orders = pad(orders)
    for cls in BREAK_EVEN:
        r = persistent[cls].clear(orders, ctx)
        assert r.ok, r.status
        check_invariants(r, orders, ctx, None, IDS)
        assert operator_bill(r, ctx) == pytest.approx(0.0, abs=MONEY_ABS)


@HYPOTHESIS
@given(case=communities(caps=True))
def test_fixed_price_operator_bill(persistent, case):
    """The pool operator buys the deficit at retail and sells it at the fixed price p, or
    buys the surplus at p and sells it at feed-in: bill = (retail - p) import + (p -
    feed_in) export, with p the mid-market rate by default."""
    orders, ctx = case
    orders = pad(orders)
    r = persistent[FixedPricePool].clear(orders, ctx)
    assert r.ok, r.status
    check_invariants(r, orders, ctx, None, IDS)
    p = 0.5 * (ctx.retail_price_per_kwh + ctx.feed_in_price_per_kwh)
    want = (ctx.retail_price_per_kwh - p) * r.operator_import_kwh + (p - ctx.feed_in_price_per_kwh) * r.operator_export_kwh
    assert operator_bill(r, ctx) == pytest.approx(want, abs=MONEY_ABS)


@HYPOTHESIS
@given(case=communities())
def test_individual_rationality_against_the_tariffs(persistent, case):
    """Grid-connected, no network charges: under SDR, MMR and a fixed price within the
    tariffs no member pays more than alone with the grid (retail per kWh bought, feed-in
    per kWh sold); under bill sharing buyers never do, and sellers get at most feed-in."""
    orders, ctx = case
    orders = pad(orders)
    ids = IDS
    alone = ctx.retail_price_per_kwh * orders.demand_kwh - ctx.feed_in_price_per_kwh * orders.supply_kwh
    for cls in (SupplyDemandRatio, MidMarketRate, FixedPricePool, BillSharing):
        r = persistent[cls].clear(orders, ctx)
        assert r.ok, r.status
        bills = settle(0, ids, np.arange(N_MAX), r, ctx).set_index("party").loc[ids, "bill"].to_numpy()
        buyers = orders.demand_kwh > 0
        assert np.all(bills[buyers] <= alone[buyers] + MONEY_ABS), cls.name
        if cls is BillSharing:
            assert np.all(r.sell_price_per_kwh <= ctx.feed_in_price_per_kwh + 1e-12)
        else:
            assert np.all(bills <= alone + MONEY_ABS), cls.name


@HYPOTHESIS
@given(case=communities(caps=True), seed=st.integers(0, 2**16))
def test_invariants_with_cuts_and_charges(persistent, case, seed):
    """Random network cuts (random coefficients, right-hand sides >= 0 so that
    curtailing and shedding everything is always feasible) and random network charges:
    every cut holds on the injections, the balances and the caps hold, charges are
    passed to settlement, and bills still sum to zero. A community battery (each example
    a new round of 1 h) keeps its power and energy bounds under cuts and caps too."""
    orders, ctx = case
    orders, n = pad(orders), N_MAX
    rng = np.random.default_rng(seed)
    k = 1 + seed % 3  # 1 to 3 cuts: slots fall in and out of use between examples
    cuts = NetworkCuts(rng.normal(size=(k, n)), rng.uniform(0.0, 2.0, size=k))
    charges = Charges(rng.uniform(-0.02, 0.05, n), rng.uniform(-0.02, 0.05, n))
    battery = persistent["battery"]
    stored = battery.battery.soc_kwh if battery.clock.round_no < 0 else battery.battery._proposed_kwh
    r = battery.clear(orders, RoundContext(**{**dataclasses.asdict(ctx), "dt_h": 1.0}), cuts, charges)
    assert r.ok, r.status
    c, d = r.info["battery_charge_kwh"], r.info["battery_discharge_kwh"]
    assert c <= 2.0 + QTY_ABS and d <= 2.0 + QTY_ABS
    assert r.info["battery_soc_kwh"] == pytest.approx(stored + 0.9 * c - d / 0.9, abs=QTY_ABS)
    assert -QTY_ABS <= r.info["battery_soc_kwh"] <= 10.0 + QTY_ABS
    check_invariants(r, orders, ctx, cuts, IDS)
    for cls in (*BREAK_EVEN, FixedPricePool):
        r = persistent[cls].clear(orders, ctx, cuts, charges)
        assert r.ok, r.status
        check_invariants(r, orders, ctx, cuts, IDS)
        table = settle(0, IDS, np.arange(n), r, ctx).set_index("party")
        assert table.bill.sum() == pytest.approx(0.0, abs=MONEY_ABS)
        assert table.loc["dso", "bill"] == pytest.approx(
            -(charges.buy @ r.bought_kwh + charges.sell @ r.sold_kwh), abs=MONEY_ABS
        )
        if cls is not FixedPricePool:
            assert table.loc[MARKET_OPERATOR, "bill"] == pytest.approx(0.0, abs=MONEY_ABS)


def test_persistent_model_matches_fresh_one(persistent):
    """A model that cleared other books before (and a cut) allocates as a fresh one: the
    allocation is unique (members served in full)."""
    rng = np.random.default_rng(1)
    obj = SupplyDemandRatio(IDS, max_cuts=3)
    cut = NetworkCuts(np.eye(N_MAX)[:1], np.array([0.1]))
    for _ in range(5):
        demand = rng.uniform(0, 3, N_MAX) * (rng.random(N_MAX) < 0.5)
        supply = np.where(demand > 0, 0.0, rng.uniform(0, 3, N_MAX))
        orders = OrderArrays(demand, supply, np.full(N_MAX, 0.3), np.full(N_MAX, 0.1))
        obj.clear(orders, HAND_CTX, cut)
        got = obj.clear(orders, HAND_CTX)
        want = SupplyDemandRatio(IDS, max_cuts=3).clear(orders, HAND_CTX)
        np.testing.assert_allclose(got.bought_kwh, want.bought_kwh, atol=QTY_ABS)
        np.testing.assert_allclose(got.sold_kwh, want.sold_kwh, atol=QTY_ABS)
        assert got.info["community_buy_price_per_kwh"] == pytest.approx(want.info["community_buy_price_per_kwh"])


# -- physics: caps and cuts ------------------------------------------------------------------------
def test_import_cap_binds_islanded():
    """Islanded, the grid-forming unit can deliver 1 kWh: of the 2.5 kWh deficit 1.5 kWh
    is shed. SDR prices then use the served demand 2.5 kWh: SDR = 1.5 / 2.5 = 0.6,
    sell = 0.03 / (0.2 x 0.6 + 0.1) = 0.03 / 0.22, buy = sell x 0.6 + 0.30 x 0.4; the
    manager still breaks even (Liu et al. 2017 identity on served quantities)."""
    ctx = MarketContext(0.30, 0.10, outside_party="grid_forming", import_cap_kwh=1.0, export_cap_kwh=0.0)
    r = clear(SupplyDemandRatio, HAND_BOOK, ctx)
    assert r.shed_kwh.sum() == pytest.approx(1.5, abs=QTY_ABS)
    assert r.operator_import_kwh == pytest.approx(1.0, abs=QTY_ABS)
    assert r.bought_kwh.sum() == pytest.approx(2.5, abs=QTY_ABS)
    assert r.info["sdr"] == pytest.approx(0.6, abs=1e-9)
    assert r.info["community_sell_price_per_kwh"] == pytest.approx(0.03 / 0.22, rel=1e-9)
    assert r.info["community_buy_price_per_kwh"] == pytest.approx(0.03 / 0.22 * 0.6 + 0.12, rel=1e-9)
    assert operator_bill(r, ctx) == pytest.approx(0.0, abs=MONEY_ABS)
    assert set(r.trades.seller) | set(r.trades.buyer) >= {"grid_forming", MANAGER}


def test_export_cap_binds_islanded():
    """Islanded with no room to export: the 4 kWh surplus of a 5 kWh supply / 1 kWh demand
    community is curtailed, members' import and export stay zero."""
    orders = books(("buy", 1.0, 0.3), ("sell", 2.0, 0.1), ("sell", 3.0, 0.1))
    ctx = MarketContext(0.30, 0.10, outside_party="grid_forming", import_cap_kwh=5.0, export_cap_kwh=0.0)
    r = clear(MidMarketRate, orders, ctx)
    assert r.curtailed_kwh.sum() == pytest.approx(4.0, abs=QTY_ABS)
    assert r.sold_kwh.sum() == pytest.approx(1.0, abs=QTY_ABS)
    assert r.operator_export_kwh == pytest.approx(0.0, abs=QTY_ABS)
    np.testing.assert_allclose(r.import_kwh + r.export_kwh, 0.0, atol=QTY_ABS)
    assert operator_bill(r, ctx) == pytest.approx(0.0, abs=MONEY_ABS)


def test_network_cut_curtails_the_seller_it_names():
    """A cut capping C's injection (sold + export - bought - import) at 0.3 kWh curtails
    0.7 of its 1 kWh; the rest of the community is served as before, and SDR is
    computed on the supply actually sold (0.8 kWh over 4 kWh demand)."""
    cut = NetworkCuts(np.array([[0.0, 0.0, 1.0, 0.0]]), np.array([0.3]))
    r = clear(SupplyDemandRatio, HAND_BOOK, HAND_CTX, cut)
    np.testing.assert_allclose(r.curtailed_kwh, [0, 0, 0.7, 0], atol=QTY_ABS)
    np.testing.assert_allclose(r.bought_kwh, [2, 2, 0, 0], atol=QTY_ABS)
    assert r.info["sdr"] == pytest.approx(0.8 / 4.0, abs=1e-6)
    assert r.injection_kwh[2] == pytest.approx(0.3, abs=QTY_ABS)


def test_cut_on_a_buyer_sheds():
    """An undervoltage-type cut -injection(A) <= 1.5 (A may draw at most 1.5 kWh) sheds
    0.5 kWh of A's 2 kWh demand."""
    cut = NetworkCuts(np.array([[-1.0, 0.0, 0.0, 0.0]]), np.array([1.5]))
    r = clear(MidMarketRate, HAND_BOOK, HAND_CTX, cut)
    np.testing.assert_allclose(r.shed_kwh, [0.5, 0, 0, 0], atol=QTY_ABS)


def test_without_p2p_members_trade_alone():
    """With ctx.p2p false (the no-P2P baseline) every member trades alone with the grid."""
    r = clear(SupplyDemandRatio, HAND_BOOK, dataclasses.replace(HAND_CTX, p2p=False))
    np.testing.assert_allclose(r.import_kwh, HAND_BOOK.demand_kwh, atol=QTY_ABS)
    np.testing.assert_allclose(r.export_kwh, HAND_BOOK.supply_kwh, atol=QTY_ABS)
    assert r.bought_kwh.sum() == pytest.approx(0.0, abs=QTY_ABS)
    assert r.operator_import_kwh == 0.0


# -- the community battery --------------------------------------------------------------------------
BATTERY = {"battery_kwh": 10.0, "battery_kw": 2.0, "efficiency": 0.9, "initial_soc": 0.5}


def surplus(kwh: float) -> OrderArrays:
    return books(("buy", 1.0, 0.3), ("sell", 1.0 + kwh, 0.1))


def deficit(kwh: float) -> OrderArrays:
    return books(("buy", 1.0 + kwh, 0.3), ("sell", 1.0, 0.1))


def test_battery_rounds_by_hand():
    """10 kWh / 2 kW battery, one-way efficiency 0.9, 1 h rounds, starting at 5 kWh.
    Round 0: surplus 4 -> charges 2 (power), exports 2; stored 5 + 0.9 x 2 = 6.8.
    Round 1: deficit 3 -> discharges 2, imports 1; stored 6.8 - 2 / 0.9.
    Rounds 2-4: deficit 10 -> 2, 2, then what is left (stored x 0.9); stored ends at 0.
    Every round: sum bought + op_export + charge = sum sold + op_import + discharge, and
    the SDR manager's bill is feed_in x charge - retail x discharge (it keeps the
    battery's value; members pay as without the battery)."""
    sdr = SupplyDemandRatio(IDS[:2], max_cuts=1, options=BATTERY)
    plan = [(surplus(4.0), 2.0, 0.0), (deficit(3.0), 0.0, 2.0), (deficit(10.0), 0.0, 2.0),
            (deficit(10.0), 0.0, 2.0)]
    stored = 5.0
    for t, (orders, charge, discharge) in enumerate(plan):
        ctx = RoundContext(0.30, 0.10, dt_h=1.0, round_no=t)
        r = sdr.clear(orders, ctx)
        check_invariants(r, orders, ctx, None, IDS[:2])
        assert r.info["battery_charge_kwh"] == pytest.approx(charge, abs=QTY_ABS)
        assert r.info["battery_discharge_kwh"] == pytest.approx(discharge, abs=QTY_ABS)
        stored += 0.9 * charge - discharge / 0.9
        assert r.info["battery_soc_kwh"] == pytest.approx(stored, abs=QTY_ABS)
        assert operator_bill(r, ctx) == pytest.approx(0.10 * charge - 0.30 * discharge, abs=MONEY_ABS)
        alone = SupplyDemandRatio(IDS[:2], max_cuts=1).clear(orders, ctx)
        np.testing.assert_allclose(r.buy_price_per_kwh, alone.buy_price_per_kwh)
    last = sdr.clear(deficit(10.0), RoundContext(0.30, 0.10, dt_h=1.0, round_no=4))
    assert last.info["battery_discharge_kwh"] == pytest.approx(stored * 0.9, abs=QTY_ABS)
    assert last.info["battery_soc_kwh"] == pytest.approx(0.0, abs=QTY_ABS)
    assert last.operator_import_kwh == pytest.approx(10.0 - stored * 0.9, abs=QTY_ABS)


def test_battery_reclear_in_the_same_round_does_not_add_up():
    """The loop re-clears a round under network feedback with the same context: only the
    round's last clearing moves the battery. Without round numbers the context object
    itself marks the round."""
    sdr = SupplyDemandRatio(IDS[:2], max_cuts=1, options=BATTERY)
    ctx0 = MarketContext(0.30, 0.10)  # no dt_h: DEFAULT_ROUND_H = 0.25 h -> 0.5 kWh a round
    for _ in range(3):
        r = sdr.clear(surplus(4.0), ctx0)
        assert r.info["battery_charge_kwh"] == pytest.approx(0.5, abs=QTY_ABS)
    assert sdr.battery.soc_kwh == pytest.approx(5.0)  # not committed until the next round
    ctx1 = MarketContext(0.30, 0.10)
    r = sdr.clear(surplus(4.0), ctx1)
    assert sdr.battery.soc_kwh == pytest.approx(5.0 + 0.9 * 0.5)
    assert r.info["battery_soc_kwh"] == pytest.approx(5.0 + 2 * 0.9 * 0.5)


def test_battery_under_bill_sharing_benefits_members():
    """Bill sharing shares the manager's actual outside trades, so the battery's
    discharge lowers the buyers' price and the manager still breaks even:
    deficit 3 kWh, 2 kWh from the battery, 1 kWh imported -> buy = 0.30 x 1 / 4."""
    bs = BillSharing(IDS[:2], max_cuts=1, options={**BATTERY, "initial_soc": 1.0})
    ctx = RoundContext(0.30, 0.10, dt_h=1.0, round_no=0)
    r = bs.clear(deficit(3.0), ctx)
    check_invariants(r, deficit(3.0), ctx, None, IDS[:2])
    assert r.info["community_buy_price_per_kwh"] == pytest.approx(0.30 * 1.0 / 4.0)
    assert operator_bill(r, ctx) == pytest.approx(0.0, abs=MONEY_ABS)


def test_battery_absorbs_surplus_islanded_before_curtailment():
    """Islanded with no export room: the battery takes 2 kWh of a 4 kWh surplus, the rest
    is curtailed."""
    sdr = SupplyDemandRatio(IDS[:2], max_cuts=1, options=BATTERY)
    ctx = RoundContext(0.30, 0.10, outside_party="grid_forming", import_cap_kwh=0.0, export_cap_kwh=0.0,
                       dt_h=1.0, round_no=0)
    r = sdr.clear(surplus(4.0), ctx)
    check_invariants(r, surplus(4.0), ctx, None, IDS[:2])
    assert r.info["battery_charge_kwh"] == pytest.approx(2.0, abs=QTY_ABS)
    assert r.curtailed_kwh.sum() == pytest.approx(2.0, abs=QTY_ABS)


@settings(HYPOTHESIS, max_examples=15)
@given(rounds=st.lists(st.tuples(st.floats(0.0, 6.0), st.floats(0.0, 6.0), st.booleans()), min_size=1,
                       max_size=12))
def test_battery_energy_conservation(rounds):
    """Over any sequence of rounds the stored energy follows charge x efficiency minus
    discharge / efficiency, stays within [0, capacity], and never moves more than the
    power limit a round; the pool balance with the battery holds every round."""
    sdr = SupplyDemandRatio(IDS[:2], max_cuts=1, options=BATTERY)
    shared = BillSharing(IDS[:2], max_cuts=1, options=BATTERY)
    stored = 5.0
    for t, (demand, supply, islanded) in enumerate(rounds):
        orders = books(("buy", demand, 0.3), ("sell", supply, 0.1))
        ctx = RoundContext(0.30, 0.10, dt_h=1.0, round_no=t)
        if islanded:
            ctx = dataclasses.replace(ctx, import_cap_kwh=1.0, export_cap_kwh=1.0)
        r = sdr.clear(orders, ctx)
        assert r.ok
        check_invariants(r, orders, ctx, None, IDS[:2])
        c, d = r.info["battery_charge_kwh"], r.info["battery_discharge_kwh"]
        assert c <= 2.0 + QTY_ABS and d <= 2.0 + QTY_ABS and min(c, d) <= QTY_ABS
        assert c <= max(supply - demand, 0.0) + QTY_ABS  # only from the community's surplus
        assert d <= max(demand - supply, 0.0) + QTY_ABS  # only into its deficit
        stored += 0.9 * c - d / 0.9
        assert -QTY_ABS <= stored <= 10.0 + QTY_ABS
        assert r.info["battery_soc_kwh"] == pytest.approx(stored, abs=1e-6)
        # the SDR manager keeps the battery's value; bill sharing passes it to members
        assert operator_bill(r, ctx) == pytest.approx(0.10 * c - 0.30 * d, abs=MONEY_ABS)
        r_shared = shared.clear(orders, ctx)
        check_invariants(r_shared, orders, ctx, None, IDS[:2])
        assert operator_bill(r_shared, ctx) == pytest.approx(0.0, abs=MONEY_ABS)


# -- fixed price and options ---------------------------------------------------------------------------
FEE_OPTIONS = {"price_per_kwh": 0.18, "fee_per_period": 5.0, "period_rounds": 96}


def test_fixed_price_options_and_fee():
    """A fixed 0.18 /kWh pool with a 5.0 fee per 96 rounds: every member buys and sells at
    0.18, whatever the community's balance; the fee is due in rounds 0, 96, 192, ..."""
    r = clear(FixedPricePool, HAND_BOOK, HAND_CTX, options=FEE_OPTIONS)
    np.testing.assert_allclose(r.buy_price_per_kwh, 0.18)
    np.testing.assert_allclose(r.sell_price_per_kwh, 0.18)
    assert r.price_per_kwh == pytest.approx(0.18)
    assert r.info["membership_fee_per_period"] == 5.0 and r.info["fee_period_rounds"] == 96
    fees = [membership_fees(t, 4, 5.0, 96).sum() for t in range(0, 200)]
    assert sum(fees) == pytest.approx(3 * 4 * 5.0)  # rounds 0, 96 and 192
    assert fees[0] == fees[96] == 20.0 and fees[1] == 0.0
    surplus_round = clear(FixedPricePool, books(("buy", 1.0, 0.3), ("sell", 4.0, 0.1)), HAND_CTX, options=FEE_OPTIONS)
    np.testing.assert_allclose(surplus_round.buy_price_per_kwh, 0.18)
    np.testing.assert_allclose(surplus_round.sell_price_per_kwh, 0.18)


def test_fee_due_by_round_with_and_without_round_numbers():
    """The fee per member is in info['membership_fee'] in the first round of each period.
    The round is ctx.round_no when given; the loop's plain contexts are counted instead,
    one per round, a re-clearing with the same context staying in its round."""
    pool = FixedPricePool(IDS[:4], max_cuts=1, options=FEE_OPTIONS)
    due = {}
    for t in (0, 1, 95, 96, 97):
        due[t] = pool.clear(HAND_BOOK, RoundContext(0.30, 0.10, round_no=t)).info["membership_fee"]
    np.testing.assert_allclose(due[0], 5.0)
    np.testing.assert_allclose(due[96], 5.0)
    for t in (1, 95, 97):
        np.testing.assert_allclose(due[t], 0.0)
    counted = FixedPricePool(IDS[:4], max_cuts=1, options={**FEE_OPTIONS, "period_rounds": 2})
    seen = []
    for _ in range(5):
        ctx = MarketContext(0.30, 0.10)  # a new context object each round, as the loop builds
        first = counted.clear(HAND_BOOK, ctx).info
        again = counted.clear(HAND_BOOK, ctx).info  # network feedback re-clears the round
        assert first["round_no"] == again["round_no"]
        np.testing.assert_allclose(first["membership_fee"], again["membership_fee"])
        seen.append((first["round_no"], float(first["membership_fee"].sum())))
    assert seen == [(0, 20.0), (1, 0.0), (2, 20.0), (3, 0.0), (4, 20.0)]


def test_membership_fee_in_settlement():
    """The round's membership fee is on each member's bill and off the operator's, so
    bills still sum to zero: round 0 of a 5.0 fee, four members -> each pays 5.0 on top
    of its energy bill, the operator receives 20.0 on top of its (0.30 - 0.18) x 2.5.
    In round 1 no fee is due."""
    pool = FixedPricePool(IDS[:4], max_cuts=1, options=FEE_OPTIONS)
    energy = 0.18 * (HAND_BOOK.demand_kwh - HAND_BOOK.supply_kwh)
    for t, fee in ((0, 5.0), (1, 0.0)):
        ctx = RoundContext(0.30, 0.10, round_no=t)
        r = pool.clear(HAND_BOOK, ctx)
        table = settle(t, IDS[:4], np.arange(4), r, ctx).set_index("party")
        assert table.bill.sum() == pytest.approx(0.0, abs=MONEY_ABS)
        np.testing.assert_allclose(table.loc[IDS[:4], "membership_fees"], fee, atol=MONEY_ABS)
        assert table.loc[MARKET_OPERATOR, "membership_fees"] == pytest.approx(-4 * fee, abs=MONEY_ABS)
        np.testing.assert_allclose(table.loc[IDS[:4], "bill"], energy + fee, atol=MONEY_ABS)
        assert table.loc[MARKET_OPERATOR, "bill"] == pytest.approx((0.30 - 0.18) * 2.5 - 4 * fee, abs=MONEY_ABS)


@pytest.mark.parametrize(
    "cls, options",
    [
        (FixedPricePool, {"price_per_kwh": -0.1}),
        (FixedPricePool, {"period_rounds": 0}),
        (FixedPricePool, {"fee_per_period": -1}),
        (SupplyDemandRatio, {"battery_kwh": 10.0}),  # a battery needs a power limit too
        (SupplyDemandRatio, {"efficiency": 1.5}),
        (MidMarketRate, {"batery_kwh": 10.0}),  # a typo is an error, never ignored
        (BillSharing, {"price_per_kwh": 0.2}),
    ],
)
def test_bad_options_are_rejected(cls, options):
    with pytest.raises(ValidationError):
        cls.Options.model_validate(options)


def test_welfare_counts_served_value_and_outside_trades():
    """Welfare = sum bid x bought - sum ask x sold - retail x op_import + feed_in x op_export
    (minus shedding and curtailment): HAND_BOOK gives 2 x 0.30 + 2 x 0.25 - 0.10 - 0.06
    - 0.30 x 2.5 = 0.19."""
    r = clear(MidMarketRate, HAND_BOOK, HAND_CTX)
    assert r.welfare == pytest.approx(0.60 + 0.50 - 0.10 - 0.06 - 0.75, abs=1e-6)


def test_trade_table_lists_manager_and_grid():
    r = clear(SupplyDemandRatio, HAND_BOOK, HAND_CTX)
    t = r.trades
    assert isinstance(t, pd.DataFrame)
    assert ((t.seller == GRID) & (t.buyer == MANAGER)).sum() == 1
    assert len(t) == 5  # 2 sellers -> manager, manager -> 2 buyers, grid -> manager


# -- edge cases, persistence, checkpoints ---------------------------------------------------------------
EDGE_BOOKS = {
    "empty": books(*[("buy", 0.0, 0.0)] * 3),
    "buyers only": books(("buy", 1.0, 0.2), ("buy", 0.0, 0.3), ("buy", 2.0, 0.25)),
    "sellers only": books(("sell", 1.0, 0.1), ("sell", 2.0, 0.05), ("sell", 0.0, 0.2)),
    "zero quantities at prices": books(("buy", 0.0, 0.3), ("sell", 0.0, 0.0), ("buy", 0.0, 0.2)),
    "balanced": books(("buy", 1.5, 0.2), ("sell", 1.0, 0.2), ("sell", 0.5, 0.2)),
}


@pytest.mark.parametrize("cls", [*BREAK_EVEN, FixedPricePool])
@pytest.mark.parametrize("name", list(EDGE_BOOKS))
@pytest.mark.parametrize("battery", [False, True], ids=["no-battery", "battery"])
def test_edge_cases_do_not_crash(cls, name, battery):
    """Empty books, one side empty, zero quantities and a balanced community clear under
    every rule, grid-connected and islanded with no room, with and without a battery;
    the invariants hold and the bills sum to zero."""
    orders = EDGE_BOOKS[name]
    ids = ids_for(orders)
    mech = cls(ids, max_cuts=1, options=BATTERY if battery else None)
    contexts = [RoundContext(0.30, 0.10, round_no=0),
                RoundContext(0.30, 0.10, outside_party="grid_forming", import_cap_kwh=0.0, export_cap_kwh=0.0,
                             round_no=1)]
    for ctx in contexts:
        r = mech.clear(orders, ctx)
        assert r.ok, r.status
        check_invariants(r, orders, ctx, None, ids)
        table = settle(0, ids, np.arange(len(ids)), r, ctx)
        assert table.bill.sum() == pytest.approx(0.0, abs=MONEY_ABS)
        assert np.isfinite(table.bill).all()


def test_models_are_built_once_and_updated(monkeypatch):
    """The Pyomo model is built in the constructor; clearing rounds (with cuts coming and
    going, and after a warm-start reset) builds none and updates it in place."""
    mech = SupplyDemandRatio(IDS, max_cuts=3, options=BATTERY)

    def no_new_models(*args, **kwargs):
        raise AssertionError("a community model was built during clearing")

    monkeypatch.setattr(community_module.CommunityModel, "__init__", no_new_models)
    rng = np.random.default_rng(5)
    for t in range(4):
        demand = rng.uniform(0, 3, N_MAX) * (rng.random(N_MAX) < 0.5)
        supply = np.where(demand > 0, 0.0, rng.uniform(0, 3, N_MAX))
        orders = OrderArrays(demand, supply, np.full(N_MAX, 0.3), np.full(N_MAX, 0.1))
        cuts = NetworkCuts(rng.normal(size=(t % 3, N_MAX)), np.full(t % 3, 1.0))
        ctx = RoundContext(0.30, 0.10, round_no=t)
        assert mech.clear(orders, ctx, cuts).ok
        mech.reset_warm_start()
        again = mech.clear(orders, ctx, cuts)
        check_invariants(again, orders, ctx, cuts, IDS)


def test_checkpoint_state_resumes_the_battery():
    """get_state after round 1 and set_state on a fresh mechanism: round 2 clears exactly
    as it does in an uninterrupted run (same battery move and stored energy), with or
    without round numbers in the context."""
    plan = [surplus(4.0), deficit(1.0), deficit(3.0)]
    whole = SupplyDemandRatio(IDS[:2], max_cuts=1, options=BATTERY)
    results = [whole.clear(o, RoundContext(0.30, 0.10, dt_h=1.0)) for o in plan]
    first = SupplyDemandRatio(IDS[:2], max_cuts=1, options=BATTERY)
    for o in plan[:2]:
        first.clear(o, RoundContext(0.30, 0.10, dt_h=1.0))
    resumed = SupplyDemandRatio(IDS[:2], max_cuts=1, options=BATTERY)
    resumed.set_state(first.get_state())
    last = resumed.clear(plan[2], RoundContext(0.30, 0.10, dt_h=1.0))
    for key in ("battery_discharge_kwh", "battery_soc_kwh", "round_no"):
        assert last.info[key] == pytest.approx(results[2].info[key], abs=QTY_ABS), key
    assert last.info["round_no"] == 2


def test_battery_power_and_room_bounds():
    """A nearly full battery (9.5 of 10 kWh, efficiency 0.9) takes only its room, 0.5 / 0.9
    kWh at the busbar, though its power would allow 2 kWh; the rest of the surplus is
    exported. Nearly empty (0.5 kWh) it gives only 0.5 x 0.9 kWh."""
    full = SupplyDemandRatio(IDS[:2], max_cuts=1, options={**BATTERY, "initial_soc": 0.95})
    r = full.clear(surplus(4.0), RoundContext(0.30, 0.10, dt_h=1.0, round_no=0))
    assert r.info["battery_charge_kwh"] == pytest.approx(0.5 / 0.9, abs=QTY_ABS)
    assert r.info["battery_soc_kwh"] == pytest.approx(10.0, abs=QTY_ABS)
    assert r.operator_export_kwh == pytest.approx(4.0 - 0.5 / 0.9, abs=QTY_ABS)
    empty = SupplyDemandRatio(IDS[:2], max_cuts=1, options={**BATTERY, "initial_soc": 0.05})
    r = empty.clear(deficit(4.0), RoundContext(0.30, 0.10, dt_h=1.0, round_no=0))
    assert r.info["battery_discharge_kwh"] == pytest.approx(0.45, abs=QTY_ABS)
    assert r.info["battery_soc_kwh"] == pytest.approx(0.0, abs=QTY_ABS)
    assert r.operator_import_kwh == pytest.approx(4.0 - 0.45, abs=QTY_ABS)
