"""Tests of the continuous double auction (cosim.markets.continuous, mechanism ``continuous``).

- The limit order book on hand-worked books (price-time priority, fills at the standing
  order's price), after Friedman (1991) and GSY-e's two-sided pay-as-bid market.
- Arrival order changes prices but never individual rationality; the seed makes the
  arrivals reproducible; a call auction (``uniform``) on the same orders reaches at least
  the continuous market's welfare (Hypothesis on random books).
- Network cuts cap what a participant trades; an islanded outside party at its caps;
  bills of all parties sum to zero; a short run under the network feedback.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import (
    MARKET_FEED_IN,
    MARKET_HYPOTHESIS,
    MARKET_RETAIL,
    market_books,
    market_check_balances,
    market_check_zero_sum,
    market_mechanism,
    market_order_books,
)
from hypothesis import given
from hypothesis import strategies as st

from cosim.markets import MECHANISMS, MarketContext, NetworkCuts
from cosim.markets.continuous import ContinuousDoubleAuction, Fill, LimitOrderBook
from cosim.markets.uniform import UniformDoubleAuction
from cosim.sim import loop

#: Tolerance on quantities [kWh] (the pool LP's primal feasibility tolerance is 1e-7).
QTY_ABS = 1e-6
#: Tolerance on welfare [currency]: the call auction's pool breaks ties with 1e-6/kWh.
WELFARE_ABS = 1e-5
CTX = MarketContext(MARKET_RETAIL, MARKET_FEED_IN)

#: The hand-worked book: two buyers, two sellers, 1 kWh each.
HAND_IDS = ["b1", "b2", "s1", "s2"]
HAND = market_books(("buy", 1.0, 0.25), ("buy", 1.0, 0.12), ("sell", 1.0, 0.10), ("sell", 1.0, 0.20))


def _submit_all(sequence):
    book, fills = LimitOrderBook(), []
    for owner, side, price, q in sequence:
        fills += book.submit(owner, side, price, q)
    return book, fills


def test_registered():
    assert MECHANISMS["continuous"] is ContinuousDoubleAuction


def test_hand_worked_arrival_orders():
    """The hand-worked book (b1 bids 0.25, b2 bids 0.12, s1 asks 0.10, s2 asks 0.20; 1 kWh
    each) in two arrival orders. In a continuous double auction an arriving order trades
    with the best standing counter-order while prices cross, at the standing order's price
    (Friedman 1991, "The double auction market institution: a survey", Sect. 2; GSY-e's
    two-sided pay-as-bid market matches the same way, the offer's price being paid).

    Sellers first (s1, s2, b1, b2): b1 takes s1's ask at 0.10; b2 (0.12) cannot meet s2
    (0.20). One trade, welfare 0.25 - 0.10 = 0.15, the call auction's.

    s1, b2, b1, s2: b2 arrives to s1's standing ask and buys at 0.10; b1 finds no ask and
    stands at 0.25; s2 arrives and sells to b1 at b1's 0.25. Two trades, welfare (0.12 -
    0.10) + (0.25 - 0.20) = 0.07 < 0.15: the arrival order moved prices and welfare, and
    every trade still lies between its seller's ask and its buyer's bid."""
    _, first = _submit_all([(2, "sell", 0.10, 1.0), (3, "sell", 0.20, 1.0), (0, "buy", 0.25, 1.0),
                            (1, "buy", 0.12, 1.0)])
    assert first == [Fill(seller=2, buyer=0, quantity_kwh=1.0, price_per_kwh=0.10)]
    _, second = _submit_all([(2, "sell", 0.10, 1.0), (1, "buy", 0.12, 1.0), (0, "buy", 0.25, 1.0),
                             (3, "sell", 0.20, 1.0)])
    assert second == [Fill(seller=2, buyer=1, quantity_kwh=1.0, price_per_kwh=0.10),
                      Fill(seller=3, buyer=0, quantity_kwh=1.0, price_per_kwh=0.25)]


def test_price_time_priority_and_partial_fills():
    """Equal asks fill in order of arrival; a large bid walks up the book and rests with
    what is left; an order never trades with its owner's own standing order."""
    book, fills = _submit_all([(0, "sell", 0.15, 1.0), (1, "sell", 0.15, 1.0), (2, "sell", 0.18, 1.0),
                               (3, "buy", 0.16, 3.0)])
    assert [(f.seller, f.quantity_kwh, f.price_per_kwh) for f in fills] == [(0, 1.0, 0.15), (1, 1.0, 0.15)]
    assert book.best_bid() == 0.16 and book.best_ask() == 0.18
    assert book.submit(3, "sell", 0.10, 1.0) == []  # its own bid stands at 0.16
    assert book.submit(4, "sell", 0.10, 0.5) == [Fill(4, 3, 0.5, 0.16)]


def test_arrival_order_moves_prices_never_rationality():
    """Over seeds, the hand-worked book clears at more than one set of prices (and
    volumes), and no fill ever leaves a buyer above its bid or a seller below its ask."""
    outcomes = set()
    for seed in range(24):
        mech = ContinuousDoubleAuction(HAND_IDS, options={"seed": seed})
        r = mech.clear(HAND, CTX)
        p2p = r.trades[(r.trades.seller != "grid") & (r.trades.buyer != "grid")]
        outcomes.add(tuple(sorted(zip(p2p.seller, p2p.buyer, p2p.price_per_kwh.round(6), strict=True))))
        _check_rational(r, HAND, HAND_IDS)
        market_check_balances(r, HAND, QTY_ABS)
        market_check_zero_sum(r, HAND_IDS, CTX)
    assert len(outcomes) >= 2


def test_seed_reproduces_and_ticks_split_orders():
    """The same seed and round give the same trades; another round draws other arrivals.
    With ticks, each order arrives in that many parts."""
    opts = {"seed": 7, "ticks": 4}
    a = ContinuousDoubleAuction(HAND_IDS, options=opts).clear(HAND, MarketContext(0.3, 0.08, round_no=5))
    b = ContinuousDoubleAuction(HAND_IDS, options=opts).clear(HAND, MarketContext(0.3, 0.08, round_no=5))
    pd.testing.assert_frame_equal(a.trades, b.trades)
    assert a.info["fills"] >= 2
    rounds = {ContinuousDoubleAuction(HAND_IDS, options=opts).clear(
        HAND, MarketContext(0.3, 0.08, round_no=t)).trades.to_csv() for t in range(12)}
    assert len(rounds) >= 2


def _check_rational(r, orders, ids):
    pos = {p: i for i, p in enumerate(ids)}
    p2p = r.trades[(r.trades.seller != "grid") & (r.trades.buyer != "grid")]
    for t in p2p.itertuples():
        assert t.price_per_kwh <= orders.bid_per_kwh[pos[t.buyer]] + 1e-12
        assert t.price_per_kwh >= orders.ask_per_kwh[pos[t.seller]] - 1e-12


@MARKET_HYPOTHESIS
@given(orders=market_order_books(n_min=2, n_max=8), seed=st.integers(0, 1000))
def test_call_auction_welfare_at_least_continuous(orders, seed):
    """The same orders cleared by the call auction (``uniform``, which maximises welfare)
    reach at least the continuous market's welfare ``sum bid bought - sum ask sold``; the
    continuous market is individually rational, balanced and budget-balanced."""
    ids = [f"p{i}" for i in range(len(orders.demand_kwh))]
    cda = ContinuousDoubleAuction(ids, options={"seed": seed}).clear(orders, CTX)
    call = market_mechanism(UniformDoubleAuction, ids, 2).clear(orders, CTX)
    assert cda.ok and call.ok
    welfare = [float(orders.bid_per_kwh @ r.bought_kwh - orders.ask_per_kwh @ r.sold_kwh) for r in (cda, call)]
    assert welfare[1] >= welfare[0] - WELFARE_ABS
    assert cda.welfare == pytest.approx(welfare[0])
    _check_rational(cda, orders, ids)
    market_check_balances(cda, orders, QTY_ABS)
    market_check_zero_sum(cda, ids, CTX)


def test_cut_caps_a_sellers_quantity():
    """A cut on s1's injection (at most 0.4 kWh) curtails 0.6 kWh of it: s1 trades only
    what is left, and every injection meets the cut."""
    cuts = NetworkCuts(np.array([[0.0, 0.0, 1.0, 0.0]]), np.array([0.4]), ("s1",))
    mech = ContinuousDoubleAuction(HAND_IDS, max_cuts=2)
    r = mech.clear(HAND, CTX, cuts)
    assert r.ok
    assert r.curtailed_kwh[2] == pytest.approx(0.6, abs=QTY_ABS)
    assert r.sold_kwh[2] + r.export_kwh[2] == pytest.approx(0.4, abs=QTY_ABS)
    assert (cuts.coef @ r.injection_kwh <= cuts.rhs + QTY_ABS).all()
    market_check_balances(r, HAND, QTY_ABS)
    market_check_zero_sum(r, HAND_IDS, CTX)


def test_islanded_caps_shed_what_the_outside_party_cannot_take():
    """Islanded with 0.5 kWh of import and no export room: what the book leaves beyond
    the grid-forming unit's caps is shed or curtailed; nothing exceeds the caps."""
    ctx = MarketContext(MARKET_RETAIL, MARKET_FEED_IN, outside_party="grid_forming", import_cap_kwh=0.5,
                        export_cap_kwh=0.0)
    orders = market_books(("buy", 2.0, 0.25), ("buy", 1.0, 0.12), ("sell", 1.0, 0.10), ("sell", 0.5, 0.20))
    r = ContinuousDoubleAuction(HAND_IDS, max_cuts=2).clear(orders, ctx)
    assert r.ok
    assert r.import_kwh.sum() <= 0.5 + QTY_ABS and r.export_kwh.sum() <= QTY_ABS
    market_check_balances(r, orders, QTY_ABS)
    market_check_zero_sum(r, HAND_IDS, ctx)


def test_nrgcoin_tokens_per_kwh_injected():
    """NRGCoin mints a token per kWh of green energy injected (Mihaylov et al. 2014): with
    2 tokens/kWh and 2 kWh sold or exported, 4 tokens."""
    r = ContinuousDoubleAuction(HAND_IDS, options={"token_per_kwh_injected": 2.0}).clear(HAND, CTX)
    assert r.info["tokens_minted"] == pytest.approx(4.0)


def test_runs_under_feedback(tmp_path):
    """Four summer hours on the hand-made feeder with tight limits: the continuous market
    runs inside the feedback loop, trades P2P, and the bills of every round sum to zero."""
    path = tmp_path / "cda.yaml"
    path.write_text("""
name: cda
network: feeder
start: 2016-07-21 10:00
duration: 4h
seed: 3
prosumers: {pv_share: 0.6, pv_kwp: 15, battery_share: 0.3}
market: {mechanism: continuous, bidding: zero-intelligence, options: {ticks: 3, seed: 1}}
feedback: {v_max_pu: 1.01, max_loading_pct: 5}
""")
    run = loop.run_scenario(path, out=tmp_path / "out", progress=False, report=False)
    rounds = pd.read_parquet(run / "rounds.parquet")
    assert rounds.cleared_kwh.sum() > 0
    assert (rounds.iterations > 1).any(), "the limits should make the feedback re-clear"
    assert (rounds.violations == 0).all()
    bills = pd.read_parquet(run / "settlement.parquet")
    assert bills.groupby("round").bill.sum().abs().max() < 1e-9
