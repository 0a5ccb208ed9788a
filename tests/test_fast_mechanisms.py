"""The fast paths of issue 18 against the reference paths they replaced (kept in
tests/reference_mechanisms.py), on random books (Hypothesis).

- Stackelberg: each seller's exact best response, one at a time (`best_response`) and all
  at once (`best_responses`), equals the reference loop over buyers to 1e-9; the Nash
  check equals the reference's; Gauss-Seidel sweeps reach the reference's equilibrium;
  Jacobi sweeps reach an equilibrium that passes the reference's Nash check and that a
  reference Gauss-Seidel sweep leaves in place (within the price tolerance); the
  mechanism's closed-form followers buy what the buyers' QPs buy, to the QP's tolerance.
- Shapley: every coalition's value from the members' double auction (a sorted cumulative
  sum) equals the pool LP's to 1e-9, and so does a whole clearing, exact and sampled.
- McAfee and Huang: the dispatch after a trade reduction written down equals the re-solve.
- VCG: each trader's welfare-without from the book's double auction equals the n + 1 pool
  solves, and so do the payments.

The equilibrium and the Nash check are those of Maharjan, Zhu, Zhang, Gjessing and Basar,
2013, "Dependable demand response management in the smart grid: a Stackelberg game
approach", IEEE Trans. Smart Grid 4(1):120-132 (see cosim.markets.stackelberg).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference_mechanisms as ref
from conftest import MARKET_HYPOTHESIS, market_mechanism, market_order_books
from hypothesis import given
from hypothesis import strategies as st

from cosim.markets import MECHANISMS, Charges, MarketContext, NetworkCuts, OrderArrays
from cosim.markets.auctions import VCGDoubleAuction, _Book
from cosim.markets.coalition import PoolGame, subset_matrix
from cosim.markets.shapley import ShapleyCoalition
from cosim.markets.stackelberg import StackelbergPricing
from cosim.markets.stackelberg_game import (
    Followers,
    best_response,
    best_responses,
    leaders_equilibrium,
    nash_gains,
)

#: Fast and reference paths agree to this on prices [currency/kWh] and payoffs [currency].
SAME = 1e-9
#: The buyers' QPs agree with their closed form to this [kWh] (HiGHS's tolerance).
QP_KWH = 1e-6
RETAIL, FEED_IN = 0.30, 0.08


@st.composite
def games(draw, b_max: int = 5, s_max: int = 7):
    """Buyers (value, curvature, need), sellers (cost, offer -- some tiny, some zero) and
    their current prices, between the tariffs; some on a coarse grid, so that ties occur."""
    b = draw(st.integers(1, b_max))
    s = draw(st.integers(1, s_max))
    coarse = draw(st.booleans())

    def prices(n: int) -> np.ndarray:
        x = np.array(draw(st.lists(st.floats(FEED_IN, RETAIL), min_size=n, max_size=n)))
        return np.round(x, 2) if coarse else x

    need = np.array(draw(st.lists(st.floats(0.01, 2.0), min_size=b, max_size=b)))
    curvature = np.array(draw(st.lists(st.floats(0.2, 3.0), min_size=b, max_size=b)))
    f = Followers(prices(b), curvature * (RETAIL - FEED_IN) / need, need)
    cost = prices(s)
    offer = np.array(draw(st.lists(st.sampled_from([0.0, 1e-9, 0.05, 0.3, 1.0, 2.5]), min_size=s, max_size=s)))
    current = np.maximum(cost, prices(s))
    return f, cost, offer, current, float(f.value.max())


@MARKET_HYPOTHESIS
@given(games())
def test_best_responses_equal_the_reference(game):
    """Every seller's best response and payoff, one at a time and all at once, equal the
    reference's (a loop over the buyers on all of their breakpoints) to 1e-9."""
    f, cost, offer, prices, ceiling = game
    together = best_responses(np.arange(len(cost)), prices, cost, offer, f, ceiling)
    for m in range(len(cost)):
        expected = ref.best_response(m, prices, cost, offer, f, ceiling)
        assert best_response(m, prices, cost, offer, f, ceiling) == pytest.approx(expected, abs=SAME)
        assert (together[0][m], together[1][m]) == pytest.approx(expected, abs=SAME)


@MARKET_HYPOTHESIS
@given(games(), st.booleans())
def test_nash_check_equals_the_reference(game, at_equilibrium):
    """Each seller's largest gain from a deviation equals the reference's (every seller,
    every buyer, every deviation recomputed) to 1e-9, at an equilibrium and elsewhere."""
    f, cost, offer, prices, ceiling = game
    if at_equilibrium:
        prices = leaders_equilibrium(cost, offer, f, ceiling).prices
    np.testing.assert_allclose(nash_gains(prices, cost, offer, f, ceiling, 11),
                               ref.nash_gains(prices, cost, offer, f, ceiling, 11), atol=SAME, rtol=0)


@MARKET_HYPOTHESIS
@given(games())
def test_gauss_seidel_sweeps_reach_the_reference_equilibrium(game):
    """Gauss-Seidel sweeps of the fast best responses follow the reference's path: the same
    verdict and, where they converge, the same sweeps and prices. (Where no pure
    equilibrium exists the sweeps run to their cap on a path that amplifies round-off, so
    only the verdict is compared.)"""
    f, cost, offer, _, ceiling = game
    fast = leaders_equilibrium(cost, offer, f, ceiling, 1e-9, 60, 5, sweep="gauss_seidel")
    slow = ref.leaders_equilibrium(cost, offer, f, ceiling, 1e-9, 60, 5)
    assert fast.converged == slow.converged
    if fast.converged:
        assert fast.sweeps == slow.sweeps
        np.testing.assert_allclose(fast.prices, slow.prices, atol=1e-8, rtol=0)


@MARKET_HYPOTHESIS
@given(games())
def test_jacobi_sweeps_reach_a_certified_equilibrium(game):
    """Jacobi sweeps stop only at prices that pass the reference's Nash check (51 deviations
    per seller). Where the reference's Gauss-Seidel sweeps, started from the Jacobi
    equilibrium, do not move it, that is the equilibrium both paths certify, within the
    price tolerance; the game may have others (a continuum where sellers with equal costs
    share a buyer), which the two paths from the floors can each settle on."""
    f, cost, offer, _, ceiling = game
    tol = 1e-9
    fast = leaders_equilibrium(cost, offer, f, ceiling, tol, 200, 5)
    slow = ref.leaders_equilibrium(cost, offer, f, ceiling, tol, 200, 5)
    if not fast.converged:
        assert not slow.converged  # no pure equilibrium found by either path (Edgeworth cycles)
        return
    assert ref.nash_gains(fast.prices, cost, offer, f, ceiling, 51).max() <= 1e-7
    again = ref.best_response_sweep(fast.prices, cost, offer, f, ceiling)
    np.testing.assert_allclose(again, fast.prices, atol=10 * tol, rtol=0)


def _mechanism(n: int, options: dict) -> StackelbergPricing:
    return market_mechanism(StackelbergPricing, [f"p{i:02d}" for i in range(n)], 2, options)


@MARKET_HYPOTHESIS
@given(market_order_books(n_max=7, q_max=2.0), st.sampled_from([0.3, 1.0]))
def test_closed_form_followers_buy_what_their_qps_buy(orders, curvature):
    """The mechanism with closed-form followers (default) and with each buyer's QP solved
    by HiGHS (the path before issue 18), Gauss-Seidel sweeps from the floors in both: the
    same prices to 1e-9 and the same purchases to the QP's tolerance."""
    n = len(orders.demand_kwh)
    ctx = MarketContext(RETAIL, FEED_IN)
    common = {"curvature": curvature, "warm_start": False, "sweeps": "gauss_seidel"}
    fast = _mechanism(n, common).clear(orders, ctx)
    slow = _mechanism(n, {**common, "followers": "qp"}).clear(orders, ctx)
    assert fast.ok and slow.ok
    assert slow.info["follower_gap_kwh"] <= QP_KWH and fast.info["follower_gap_kwh"] == 0.0
    np.testing.assert_allclose(fast.info["seller_prices"], slow.info["seller_prices"], atol=SAME, rtol=0)
    for a, b in ((fast.bought_kwh, slow.bought_kwh), (fast.sold_kwh, slow.sold_kwh),
                 (fast.import_kwh, slow.import_kwh), (fast.export_kwh, slow.export_kwh)):
        np.testing.assert_allclose(a, b, atol=QP_KWH, rtol=0)


# -- Shapley: coalition values in closed form against the pool LPs ---------------------------------
@st.composite
def charged_books(draw):
    """Random books with random network charges (either sign), some participants both
    buying and selling, grid-connected or with an outside party that can take everything."""
    orders = draw(market_order_books(n_min=2, n_max=7, q_max=2.0))
    n = len(orders.demand_kwh)
    if draw(st.booleans()):  # a few prosumers on both sides of the book
        both = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        orders = OrderArrays(orders.demand_kwh + both * 0.3, orders.supply_kwh + both * 0.2,
                             np.where(orders.bid_per_kwh > 0, orders.bid_per_kwh, 0.25),
                             np.where(orders.ask_per_kwh > 0, orders.ask_per_kwh, 0.12))
    charge = np.array(draw(st.lists(st.floats(-0.03, 0.05), min_size=2 * n, max_size=2 * n)))
    charges = Charges(np.round(charge[:n], 4), np.round(charge[n:], 4)) if draw(st.booleans()) else Charges.none(n)
    caps = draw(st.sampled_from([np.inf, 100.0]))
    return orders, charges, MarketContext(RETAIL, FEED_IN, import_cap_kwh=caps, export_cap_kwh=caps)


def _shapley(n: int, options: dict | None = None) -> ShapleyCoalition:
    return market_mechanism(ShapleyCoalition, [f"p{i:02d}" for i in range(n)], 2, options)


@MARKET_HYPOTHESIS
@given(charged_books())
def test_closed_form_coalition_values_equal_the_pool_lps(book):
    """Every coalition's value from the members' double auction equals the pool LP's (the
    path before issue 18, still taken when a cut or cap may bind) to 1e-9."""
    orders, charges, ctx = book
    n = len(orders.demand_kwh)
    mech = _shapley(n)
    mech.pool.update(orders, ctx, NetworkCuts.empty(n), charges)
    players = [np.array([i]) for i in range(n)]
    game = PoolGame(mech.pool, orders, ctx, charges, players)
    assert game.closed_form
    membership = subset_matrix(n)
    fast = game.values(membership)
    lp = PoolGame(mech.pool, orders, ctx, charges, players)
    lp.closed_form = False
    lp.baseline = lp.solve(np.zeros(n, dtype=bool))[0]
    np.testing.assert_allclose(fast, lp.values(membership), atol=SAME, rtol=0)


@MARKET_HYPOTHESIS
@given(charged_books(), st.sampled_from(["auto", "prosumers"]), st.sampled_from([3, 12]))
def test_shapley_clearing_equals_the_lp_path(book, players, exact_max):
    """A whole clearing with coalition values in closed form equals the one through the
    LPs (forced by a network cut that never binds): quantities, prices, shares and the core
    check to 1e-9, exact (up to 12 players) and sampled (above 3 players: the same
    permutations, so the same estimate)."""
    orders, charges, ctx = book
    n = len(orders.demand_kwh)
    options = {"players": players, "exact_max_members": exact_max, "mc_permutations": 30}
    mech = _shapley(n, options)
    fast = mech.clear(orders, ctx, None, charges)
    slow = mech.clear(orders, ctx, NetworkCuts(np.zeros((1, n)), np.array([1.0])), charges)
    assert fast.ok and slow.ok
    assert slow.info["coalition_values_closed_form"] == 0
    for key in ("bought_kwh", "sold_kwh", "import_kwh", "export_kwh", "buy_price_per_kwh", "sell_price_per_kwh"):
        np.testing.assert_allclose(getattr(fast, key), getattr(slow, key), atol=SAME, rtol=0, err_msg=key)
    np.testing.assert_allclose(fast.info["shares"], slow.info["shares"], atol=SAME, rtol=0)
    assert fast.info["shapley_method"] == slow.info["shapley_method"]
    assert fast.info["in_core"] == slow.info["in_core"]
    assert fast.info["max_excess"] == pytest.approx(slow.info["max_excess"], abs=SAME)


# -- VCG: welfare without each trader from the book against the n + 1 solves -----------------------
def _vcg(n: int) -> VCGDoubleAuction:
    return market_mechanism(VCGDoubleAuction, [f"p{i:02d}" for i in range(n)], 2)


@MARKET_HYPOTHESIS
@given(charged_books())
def test_vcg_payments_from_the_book_equal_the_n_plus_1_solves(book):
    """W_-i of every trader from the book's double auction without it equals the pool
    re-solved with its P2P columns at zero (the path before issue 18, still taken when a
    cut or cap may bind) to 1e-9; so do the clearing's prices and utilities, which a
    network cut that never binds sends down the solves' path."""
    orders, charges, ctx = book
    n = len(orders.demand_kwh)
    mech = _vcg(n)
    fast = mech.clear(orders, ctx, None, charges)
    assert fast.ok
    traders = np.flatnonzero((fast.bought_kwh > 1e-7) | (fast.sold_kwh > 1e-7))
    b = _Book.of(orders, ctx, charges)
    mech.pool.update(orders, ctx, NetworkCuts.empty(n), charges)
    mech._prefer_p2p(b)
    assert mech.closed_form(b, NetworkCuts.empty(n))
    np.testing.assert_allclose(mech.welfare_without(b, traders, True), mech.welfare_without(b, traders, False),
                               atol=SAME, rtol=0)
    slow = mech.clear(orders, ctx, NetworkCuts(np.zeros((1, n)), np.array([1.0])), charges)
    trivial = mech.pool.trivial_solution(orders, ctx, NetworkCuts.empty(n)) is not None  # no solve at all
    assert slow.ok and slow.info["vcg_solves"] == 1 + len(traders) and fast.info["vcg_solves"] == int(not trivial)
    if np.allclose(fast.bought_kwh, slow.bought_kwh, atol=SAME) and np.allclose(fast.sold_kwh, slow.sold_kwh, atol=SAME):
        for key in ("buy_price_per_kwh", "sell_price_per_kwh"):
            np.testing.assert_allclose(getattr(fast, key), getattr(slow, key), atol=SAME, rtol=0, err_msg=key)
    assert fast.info["vcg_utility_total"] == pytest.approx(slow.info["vcg_utility_total"], abs=SAME)


@MARKET_HYPOTHESIS
@given(charged_books(), st.sampled_from(["mcafee", "huang"]))
def test_trade_reduction_dispatch_without_a_solve_equals_the_re_solve(book, name):
    """Where a trade reduction changes the P2P quantities and nothing but the outside party
    can take the rest, the dispatch is written down (no re-solve); it equals the pool
    re-solved with the P2P quantities fixed (the path before issue 18, still taken with
    network cuts) to 1e-9."""
    orders, charges, ctx = book
    n = len(orders.demand_kwh)
    mech = market_mechanism(MECHANISMS[name], [f"p{i:02d}" for i in range(n)], 2)
    assert mech.clear(orders, ctx, None, charges).ok  # the round's context, as a clearing leaves it
    b = _Book.of(orders, ctx, charges)
    none = NetworkCuts.empty(n)
    mech.pool.update(orders, ctx, none, charges)
    mech._prefer_p2p(b)
    status, x, _ = mech.pool.solve()
    assert status == "ok"
    alloc = mech.allocate(b, x, none)
    fast = mech._dispatch(x, alloc, none)
    slow = mech._dispatch(x, alloc, NetworkCuts(np.zeros((1, n)), np.array([1.0])))  # a cut: the re-solve
    for key in ("bought_kwh", "sold_kwh", "imported_kwh", "exported_kwh", "shed_kwh", "curtailed_kwh", "injection_kwh"):
        np.testing.assert_allclose(fast[key], slow[key], atol=SAME, rtol=0, err_msg=key)
