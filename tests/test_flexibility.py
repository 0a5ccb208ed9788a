"""Tests of the DSO flexibility market (cosim.markets.flexibility, mechanism ``flexibility``):
the procurement LP on hand-worked books under pay-as-bid and uniform pricing, the reserve
price capping a provider without competition, seeded markups, the cuts held, zero-sum
settlement with the DSO paying, and a run under the network feedback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import (
    MARKET_FEED_IN,
    MARKET_RETAIL,
    market_books,
    market_check_balances,
    market_check_zero_sum,
)

from cosim.markets import MECHANISMS, MarketContext, NetworkCuts
from cosim.markets.base import ASSET_CHARGE
from cosim.markets.flexibility import FLEXIBILITY_PAYMENT, FlexibilityMarket
from cosim.sim import loop
from cosim.sim.settlement import settle

QTY_ABS = 1e-6
MONEY_ABS = 1e-9
CTX = MarketContext(MARKET_RETAIL, MARKET_FEED_IN)
IDS = ["b1", "b2", "s1", "s2"]
#: Two buyers of 1 kWh (bids 0.25, 0.20), two sellers of 1 kWh (asks 0.10, 0.15).
BOOK = market_books(("buy", 1.0, 0.25), ("buy", 1.0, 0.20), ("sell", 1.0, 0.10), ("sell", 1.0, 0.15))
#: Both sellers' injections share one line: at most 0.5 kWh may leave through it.
SHARED = NetworkCuts(np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([0.5]), ("line",))


def test_registered():
    assert MECHANISMS["flexibility"] is FlexibilityMarket


@pytest.mark.parametrize("pricing, paid", [("pay_as_bid", {"s1": 0.10, "s2": 0.075}), ("uniform", {"s1": 0.15, "s2": 0.075})])
def test_hand_worked_procurement(pricing, paid):
    """The line needs 1.5 kWh less injection. Offers to curtail export are the sellers'
    asks (0.10 and 0.15 EUR/kWh; reserve raised to 0.5 so that neither is capped): the DSO
    buys all of s1's 1 kWh and 0.5 kWh of s2's. Pay as bid: s1 gets 0.10, s2 0.5 x 0.15 =
    0.075; uniform: both at the marginal ask 0.15 (s1 1.0 x 0.15). The local flexibility
    market of Schittekatte and Meeus (2020, Utilities Policy 63) with a merit order of
    offers; the DSO's cost is the sum of the payments."""
    mech = FlexibilityMarket(IDS, max_cuts=2, options={"pricing": pricing, "reserve_price_per_kwh": 0.5})
    r = mech.clear(BOOK, CTX, SHARED)
    assert r.ok
    np.testing.assert_allclose(r.curtailed_kwh, [0.0, 0.0, 1.0, 0.5], atol=QTY_ABS)
    assert (SHARED.coef @ r.injection_kwh <= SHARED.rhs + QTY_ABS).all()
    pay = dict(zip(IDS, r.info[FLEXIBILITY_PAYMENT], strict=True))
    for who, amount in paid.items():
        assert pay[who] == pytest.approx(amount, abs=MONEY_ABS)
    market_check_balances(r, BOOK, QTY_ABS)
    s = market_check_zero_sum(r, IDS, CTX)
    assert float(s.loc[s.party == "dso", "flexibility_payments"].iloc[0]) == pytest.approx(sum(paid.values()))


def test_reserve_price_caps_a_provider_without_competition():
    """Only s1 sits at the congested bus; its offers carry seeded markups of up to 300 %.
    The DSO pays no more than its reserve price, the curtailment alternative (feed-in plus
    the curtailment premium, 0.09 EUR/kWh here), whatever the markup."""
    cut = NetworkCuts(np.array([[0.0, 0.0, 1.0, 0.0]]), np.array([0.2]), ("bus",))
    for seed in range(5):
        mech = FlexibilityMarket(IDS, max_cuts=2, options={"max_markup": 3.0, "seed": seed})
        asks = mech.offers(BOOK, CTX).curtail_export
        r = mech.clear(BOOK, CTX, cut)
        assert r.curtailed_kwh[2] == pytest.approx(0.8, abs=QTY_ABS)
        assert r.info[FLEXIBILITY_PAYMENT][2] == pytest.approx(0.8 * CTX.curtail_cost, abs=MONEY_ABS)
        assert asks[2] == pytest.approx(CTX.curtail_cost)


def test_markups_are_seeded():
    """The same seed and round give the same offers; other rounds other markups."""
    opts = {"max_markup": 0.5, "seed": 3, "reserve_price_per_kwh": 10.0}
    a = FlexibilityMarket(IDS, options=opts).offers(BOOK, MarketContext(0.3, 0.08, round_no=4))
    b = FlexibilityMarket(IDS, options=opts).offers(BOOK, MarketContext(0.3, 0.08, round_no=4))
    c = FlexibilityMarket(IDS, options=opts).offers(BOOK, MarketContext(0.3, 0.08, round_no=5))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_import_reduction_relieves_an_import_limit():
    """A cut on the buyers' withdrawal (injection >= -1.5 kWh over both): reducing import
    is the only relief; the DSO buys 0.5 kWh at the reduce-import ask."""
    cut = NetworkCuts(np.array([[-1.0, -1.0, 0.0, 0.0]]), np.array([1.5]), ("import",))
    orders = market_books(("buy", 1.0, 0.25), ("buy", 1.0, 0.20), ("idle", 0, 0), ("idle", 0, 0))
    r = FlexibilityMarket(IDS, max_cuts=2, options={"reduce_import_ask_per_kwh": 0.4}).clear(orders, CTX, cut)
    assert r.shed_kwh.sum() == pytest.approx(0.5, abs=QTY_ABS)
    assert r.info["flexibility_cost"] == pytest.approx(0.2, abs=MONEY_ABS)
    assert settle(0, IDS, np.full(4, -1), r, CTX).bill.sum() == pytest.approx(0.0, abs=MONEY_ABS)


@pytest.mark.parametrize("pricing", ["pay_as_bid", "uniform"])
def test_battery_charging_is_cheaper_than_curtailment(pricing):
    """The line of s1 and s2 lets 0.5 kWh leave; the energy market sends 2 kWh (1.5 kWh
    too much). s2's battery can draw 0.8 kWh more than its dispatch at the increase-import
    ask 0.02 EUR/kWh; b1's EV has 1 kWh of headroom but sits off the line (no relief).
    Curtailment asks are 0.10 (s1) and 0.15 (s2), reserve raised to 0.5. Cheapest relief,
    by hand: s2's battery takes 0.8 kWh of its own export (0.8 x 0.02 = 0.016 EUR), then
    s1 curtails 0.7 kWh (0.7 x 0.10 = 0.07 EUR): 0.086 EUR in all, against 0.175 EUR
    (1.0 x 0.10 + 0.5 x 0.15) by curtailment alone. One accepted offer per product, so
    uniform pricing pays the same. s2 now sells 0.2 kWh, s1 0.3 kWh: 0.5 kWh on the line."""
    ctx = MarketContext(MARKET_RETAIL, MARKET_FEED_IN, charge_headroom_kwh=np.array([1.0, 0.0, 0.0, 0.8]))
    mech = FlexibilityMarket(IDS, max_cuts=2, options={"pricing": pricing, "reserve_price_per_kwh": 0.5,
                                                       "increase_import_ask_per_kwh": 0.02})
    r = mech.clear(BOOK, ctx, SHARED)
    assert r.ok
    np.testing.assert_allclose(r.info[ASSET_CHARGE], [0.0, 0.0, 0.0, 0.8], atol=QTY_ABS)
    np.testing.assert_allclose(r.curtailed_kwh, [0.0, 0.0, 0.7, 0.0], atol=QTY_ABS)
    np.testing.assert_allclose((r.sold_kwh + r.export_kwh)[2:], [0.3, 0.2], atol=QTY_ABS)
    assert (SHARED.coef @ r.injection_kwh <= SHARED.rhs + QTY_ABS).all()
    np.testing.assert_allclose(r.info[FLEXIBILITY_PAYMENT], [0.0, 0.0, 0.07, 0.016], atol=MONEY_ABS)
    assert r.info["flexibility_cost"] == pytest.approx(0.086, abs=MONEY_ABS)
    assert r.info["flex_increased_import_kwh"] == pytest.approx(0.8, abs=QTY_ABS)
    s = market_check_zero_sum(r, IDS, ctx)
    assert float(s.loc[s.party == "dso", "flexibility_payments"].iloc[0]) == pytest.approx(0.086)


def test_ev_charging_relieves_reverse_flow():
    """Reverse flow through the transformer: the sum of all injections may be at most
    0.5 kWh. s1 offers 2 kWh at 0.10, b1 bids for 1 kWh at 0.25: 1 kWh leaves the feeder,
    0.5 kWh too much. b1's EV can draw 2 kWh more at 0.02 EUR/kWh, curtailing s1 costs
    0.10 (reserve 0.5): the DSO buys 0.5 kWh of extra import from b1 (0.01 EUR), b1 now
    buys 1.5 kWh, all of it from s1, who still sells its 2 kWh (1.5 to b1, 0.5 exported)."""
    ids = ["b1", "s1"]
    orders = market_books(("buy", 1.0, 0.25), ("sell", 2.0, 0.10))
    cut = NetworkCuts(np.array([[1.0, 1.0]]), np.array([0.5]), ("trafo reverse",))
    ctx = MarketContext(MARKET_RETAIL, MARKET_FEED_IN, charge_headroom_kwh=np.array([2.0, 0.0]))
    r = FlexibilityMarket(ids, max_cuts=2, options={"reserve_price_per_kwh": 0.5}).clear(orders, ctx, cut)
    np.testing.assert_allclose(r.info[ASSET_CHARGE], [0.5, 0.0], atol=QTY_ABS)
    assert r.curtailed_kwh.sum() == pytest.approx(0.0, abs=QTY_ABS)
    assert r.bought_kwh[0] == pytest.approx(1.5, abs=QTY_ABS)
    assert r.injection_kwh.sum() == pytest.approx(0.5, abs=QTY_ABS)
    assert r.info[FLEXIBILITY_PAYMENT][0] == pytest.approx(0.01, abs=MONEY_ABS)
    market_check_zero_sum(r, ids, ctx)


def test_no_headroom_means_curtailment():
    """Without headroom (the default) the DSO curtails: the hand-worked procurement above."""
    ctx = MarketContext(MARKET_RETAIL, MARKET_FEED_IN, charge_headroom_kwh=np.zeros(4))
    r = FlexibilityMarket(IDS, max_cuts=2, options={"reserve_price_per_kwh": 0.5}).clear(BOOK, ctx, SHARED)
    np.testing.assert_allclose(r.curtailed_kwh, [0.0, 0.0, 1.0, 0.5], atol=QTY_ABS)
    assert ASSET_CHARGE not in r.info


def test_no_cuts_is_the_energy_market():
    r = FlexibilityMarket(IDS).clear(BOOK, CTX)
    assert r.info["flexibility_cost"] == 0.0 and r.curtailed_kwh.sum() == 0.0
    assert r.cleared_kwh == pytest.approx(2.0)


def test_runs_under_feedback(tmp_path):
    """Four summer hours on the hand-made feeder with tight limits: the DSO buys
    flexibility where the feedback finds violations, pays for it in the settlement (its
    bill carries the payments), and the bills of every round sum to zero."""
    path = tmp_path / "flex.yaml"
    path.write_text("""
name: flex
network: feeder
start: 2016-07-21 10:00
duration: 4h
seed: 3
prosumers: {pv_share: 0.6, pv_kwp: 15, battery_share: 0.5}
market: {mechanism: flexibility, bidding: zero-intelligence, options: {max_markup: 0.2}}
feedback: {v_max_pu: 1.01, max_loading_pct: 5}
""")
    run = loop.run_scenario(path, out=tmp_path / "out", progress=False, report=False)
    st = pd.read_parquet(run / "settlement.parquet")
    assert st.groupby("round").bill.sum().abs().max() < MONEY_ABS
    dso = st[st.party == "dso"].flexibility_payments.sum()
    assert dso > 0
    assert st[st.bus >= 0].flexibility_payments.sum() == pytest.approx(-dso)
    rounds = pd.read_parquet(run / "rounds.parquet")
    assert rounds.info_flexibility_cost.sum() == pytest.approx(dso)
    # batteries sold extra import: what they drew is in their state of charge and in the
    # prosumers' physical net load, which matches what they traded
    assert rounds.info_flex_increased_import_kwh.sum() > 0
    pro = st[st.bus >= 0]
    np.testing.assert_allclose(pro.net_load_kwh, pro.bought_kwh + pro.grid_import_kwh - pro.sold_kwh
                               - pro.grid_export_kwh, atol=1e-6)
    storage = pd.read_parquet(run / "storage.parquet")
    bat = storage[storage.asset == "battery"].sort_values(["id", "round"])
    stored = bat.groupby("id").energy_kwh.diff().dropna()
    drawn = (bat.power_kw * 0.25 - bat.loss_kwh).loc[stored.index]
    np.testing.assert_allclose(stored, drawn, atol=1e-6)
