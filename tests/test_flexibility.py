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
        asks, _ = mech.offers(BOOK, CTX)
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
prosumers: {pv_share: 0.6, pv_kwp: 15, battery_share: 0.3}
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
