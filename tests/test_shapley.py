"""Tests of the coalitional game (cosim.markets.shapley): Shapley value, core and least core.

Reference values come from the glove game and from hand-worked energy games; Hypothesis
checks the Shapley axioms (efficiency, symmetry, null player) on random games and random
order books, the Monte-Carlo estimate against the exact value, the core and least-core
LPs, and the contract every clearing keeps (balances, caps, network cuts, bills that sum
to zero once settled). A last group checks that every coalition value is one solve of the
one persistent pool model.

Sources:

- Shapley value: Shapley, 1953, "A value for n-person games", in Contributions to the
  Theory of Games II, Ann. Math. Studies 28:307-317; Maschler, Solan and Zamir, 2013,
  "Game Theory", Cambridge University Press, ch. 18;
- core and least core: Maschler, Solan and Zamir, 2013, ch. 17; Maschler, Peleg and
  Shapley, 1979, "Geometric properties of the kernel, nucleolus and related solution
  concepts", Math. Oper. Res. 4(4):303-338;
- glove game: Maschler, Solan and Zamir, 2013, ch. 17-18; Osborne and Rubinstein, 1994,
  "A Course in Game Theory", MIT Press, Example 260.1 (core) and ch. 14.4 (Shapley value);
- non-empty core of linear production games (the pool game without caps or cuts): Owen,
  1975, "On the core of linear production games", Math. Programming 9:358-370;
- permutation sampling: Castro, Gomez and Tejada, 2009, "Polynomial calculation of the
  Shapley value based on sampling", Computers & Operations Research 36(5):1726-1730.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import (
    MARKET_FEED_IN,
    MARKET_HYPOTHESIS,
    MARKET_RETAIL,
    market_books,
    market_check_balances,
    market_check_zero_sum,
    market_count_builds,
    market_draw_limits,
    market_edge_books,
    market_mechanism,
    market_order_books,
)
from hypothesis import given
from hypothesis import strategies as st

import cosim.markets.shapley as shapley_module
from cosim.markets import MECHANISMS, Charges, MarketContext, NetworkCuts, OrderArrays, Participants
from cosim.markets.coalition import (
    LeastCoreModel,
    max_excess,
    shapley_exact,
    shapley_sampled,
    subset_matrix,
)
from cosim.markets.shapley import (
    MANAGER,
    ShapleyCoalition,
    share_prices,
)
from cosim.sim.settlement import MARKET_OPERATOR, settle

#: Tolerance on quantities [kWh] (HiGHS's feasibility tolerance is 1e-7).
QTY_ABS = 1e-6
#: Tolerance on money from LP solves [currency].
MONEY_ABS = 1e-7
#: Tolerance on closed-form arithmetic [currency].
EXACT_ABS = 1e-12
RETAIL, FEED_IN = MARKET_RETAIL, MARKET_FEED_IN
SPREAD = RETAIL - FEED_IN
TRUTHFUL = MarketContext(RETAIL, FEED_IN)
IDS = [f"p{i:02d}" for i in range(16)]


# -- helpers (books, strategies and the shared checks: conftest.py) -------------------------------
def mechanism(n: int, options: dict | None = None, participants=None) -> ShapleyCoalition:
    """One mechanism per size and options, kept across tests and examples as a run keeps it
    (with `participants`: a new one)."""
    if participants is not None:
        return ShapleyCoalition(participants, max_cuts=3, options=options)
    return market_mechanism(ShapleyCoalition, IDS[:n], 3, options)


def clear(orders: OrderArrays, ctx: MarketContext = TRUTHFUL, cuts=None, charges=None, options=None,
          participants=None):
    mech = mechanism(len(orders.demand_kwh), options, participants)
    r = mech.clear(orders, ctx, cuts, charges)
    assert r.ok, r.status
    check_invariants(r, orders, ctx, cuts, mech.ids)
    return r


def check_invariants(r, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None, ids: list[str]):
    """Balances, caps, cuts, the trade table and a zero-sum settlement in which the manager,
    which passes the shares through, breaks even."""
    market_check_balances(r, orders, QTY_ABS)
    # the coalition's pool: what members buy comes from members or through the manager
    assert r.bought_kwh.sum() + r.operator_export_kwh == pytest.approx(
        r.sold_kwh.sum() + r.operator_import_kwh, abs=QTY_ABS)
    assert r.import_kwh.sum() + r.operator_import_kwh <= ctx.import_cap_kwh + QTY_ABS
    assert r.export_kwh.sum() + r.operator_export_kwh <= ctx.export_cap_kwh + QTY_ABS
    if cuts is not None and len(cuts):
        assert np.all(cuts.coef @ r.injection_kwh <= cuts.rhs + QTY_ABS)
    # trade table: each participant's rows add up to its quantities
    t = r.trades
    as_buyer = t[t.seller != ctx.outside_party].groupby("buyer").energy_kwh.sum()
    as_seller = t[t.buyer != ctx.outside_party].groupby("seller").energy_kwh.sum()
    from_outside = t[t.seller == ctx.outside_party].groupby("buyer").energy_kwh.sum()
    to_outside = t[t.buyer == ctx.outside_party].groupby("seller").energy_kwh.sum()
    for i, pid in enumerate(ids):
        assert as_buyer.get(pid, 0.0) == pytest.approx(r.bought_kwh[i], abs=QTY_ABS)
        assert as_seller.get(pid, 0.0) == pytest.approx(r.sold_kwh[i], abs=QTY_ABS)
        assert from_outside.get(pid, 0.0) == pytest.approx(r.import_kwh[i], abs=QTY_ABS)
        assert to_outside.get(pid, 0.0) == pytest.approx(r.export_kwh[i], abs=QTY_ABS)
    assert from_outside.get(MANAGER, 0.0) == pytest.approx(r.operator_import_kwh, abs=QTY_ABS)
    assert to_outside.get(MANAGER, 0.0) == pytest.approx(r.operator_export_kwh, abs=QTY_ABS)
    return market_check_zero_sum(r, ids, ctx)


def standalone_bill(orders: OrderArrays) -> np.ndarray:
    """Each participant's bill trading alone with the grid at the tariffs [currency]."""
    return RETAIL * orders.demand_kwh - FEED_IN * orders.supply_kwh


def coalition_values(p: int, v) -> np.ndarray:
    """values[mask] = v(members of mask) for a set function v on frozensets."""
    return np.array([v(frozenset(i for i in range(p) if mask >> i & 1)) for mask in range(2**p)], float)


def shapley_by_permutations(values: np.ndarray, p: int) -> np.ndarray:
    """The Shapley value by its definition: mean marginal contribution over all p! orders."""
    phi = np.zeros(p)
    for order in itertools.permutations(range(p)):
        mask = 0
        for i in order:
            phi[i] += values[mask | 1 << i] - values[mask]
            mask |= 1 << i
    return phi / math.factorial(p)


# -- reference games ------------------------------------------------------------------------------
def test_glove_game_shapley_value_and_core():
    """Glove game with one left glove (player 0) and two right gloves, v(S) = min(#left,
    #right): Shapley value (2/3, 1/6, 1/6); core = {(1, 0, 0)}, so the Shapley value is
    not in the core and {left, right_1} is short by 1/6. Maschler, Solan and Zamir, 2013,
    "Game Theory", Cambridge UP, ch. 17-18; Osborne and Rubinstein, 1994, "A Course in Game
    Theory", MIT Press, Example 260.1."""
    v = coalition_values(3, lambda s: min(len(s & {0}), len(s & {1, 2})))
    phi = shapley_exact(v)
    np.testing.assert_allclose(phi, [2 / 3, 1 / 6, 1 / 6], atol=EXACT_ABS)
    assert max_excess(v, subset_matrix(3), phi) == pytest.approx(1 / 6, abs=EXACT_ABS)
    lc = LeastCoreModel(3)
    status, excess = lc.max_excess(v, phi)  # the core check LP
    assert status == "ok" and excess == pytest.approx(1 / 6, abs=1e-9)
    status, eps, point = lc.solve(v, phi)  # the least core is the core {(1, 0, 0)}
    assert status == "ok"
    assert eps == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(point, [1.0, 0.0, 0.0], atol=1e-6)
    status, excess = lc.max_excess(v, point)
    assert excess <= 1e-7


def test_larger_glove_game():
    """Glove game with two left gloves (players 0, 1) and three right gloves (2, 3, 4):
    the core gives everything to the scarce side, (1, 1, 0, 0, 0) (Osborne and Rubinstein,
    1994, Example 260.1); the Shapley value is checked against its definition (the mean
    marginal contribution over all 5! orders; Shapley, 1953) and favours the left gloves."""
    v = coalition_values(5, lambda s: min(len(s & {0, 1}), len(s & {2, 3, 4})))
    phi = shapley_exact(v)
    np.testing.assert_allclose(phi, shapley_by_permutations(v, 5), atol=EXACT_ABS)
    assert phi.sum() == pytest.approx(2.0, abs=EXACT_ABS)
    assert phi[0] == pytest.approx(phi[1]) and phi[2] == pytest.approx(phi[3]) == pytest.approx(phi[4])
    assert phi[0] > phi[2] > 0
    lc = LeastCoreModel(5)
    status, eps, point = lc.solve(v, phi)
    assert status == "ok" and eps == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(point, [1, 1, 0, 0, 0], atol=1e-6)
    assert lc.max_excess(v, phi)[1] > 0.1  # the Shapley value is outside the core


def test_energy_glove_game_in_the_mechanism():
    """One buyer of 1 kWh, two sellers of 1 kWh each, truthful tariff bids: v(S) = (retail -
    feed_in) min(D(S), S(S)) is the glove game scaled by the tariff spread, so the shares
    are 0.22 x (2/3, 1/6, 1/6) and the core check finds them outside the core, short by
    0.22/6 (Maschler, Solan and Zamir, 2013, ch. 17-18). The least core is the core: the
    buyer takes the whole saving."""
    orders = market_books(("buy", 1.0, RETAIL), ("sell", 1.0, FEED_IN), ("sell", 1.0, FEED_IN))
    r = clear(orders)
    np.testing.assert_allclose(r.info["player_shares"], SPREAD * np.array([2 / 3, 1 / 6, 1 / 6]), atol=MONEY_ABS)
    assert r.info["core_check"] == "lp"
    assert not r.info["in_core"]
    assert r.info["max_excess"] == pytest.approx(SPREAD / 6, abs=MONEY_ABS)
    assert r.info["core_nonempty"]
    assert r.info["least_core_epsilon"] == pytest.approx(0.0, abs=MONEY_ABS)
    lc = clear(orders, options={"allocation": "least_core"})
    np.testing.assert_allclose(lc.info["player_shares"], [SPREAD, 0.0, 0.0], atol=1e-6)
    assert lc.info["in_core"]
    assert lc.info["max_excess"] <= 1e-7


def test_hand_worked_three_player_energy_game():
    """Hand-worked game: buyer a needs 2 kWh, sellers b and c offer 1 and 1.5 kWh, truthful
    bids (retail 0.30, feed-in 0.08). v(S) = 0.22 min(D(S), S(S)): v(ab) = 0.22,
    v(ac) = 0.33, v(abc) = 0.44, every other coalition 0. Marginal contributions over the
    six orders (Shapley, 1953): a gets (0 + 0 + 0.22 + 0.44 + 0.33 + 0.44) / 6 = 0.238333,
    b gets (0.22 + 0.11 + 0 + 0 + 0.11 + 0) / 6 = 0.073333, c gets (0.22 + 0.33 + 0.22 +
    0 + 0 + 0) / 6 = 0.128333. Bills are the stand-alone grid bills minus the shares:
    a 0.6 - 0.238333 = 0.361667, b -0.08 - 0.073333, c -0.12 - 0.128333. The Shapley value
    is in the core here (every pair and single gets at least its value)."""
    orders = market_books(("buy", 2.0, RETAIL), ("sell", 1.0, FEED_IN), ("sell", 1.5, FEED_IN))
    r = clear(orders)
    expected = np.array([1.43, 0.44, 0.77]) / 6
    np.testing.assert_allclose(r.info["shares"], expected, atol=MONEY_ABS)
    assert r.info["coalition_value"] == pytest.approx(0.44, abs=MONEY_ABS)
    assert r.info["shapley_method"] == "exact"
    assert r.info["in_core"] and r.info["max_excess"] <= 1e-7
    s = settle(0, IDS[:3], np.full(3, -1), r, TRUTHFUL)
    bills = s.set_index("party").bill
    np.testing.assert_allclose(bills[IDS[:3]].to_numpy(), standalone_bill(orders) - expected, atol=MONEY_ABS)
    # a is fully served by b and c; c's last 0.5 kWh goes to the grid through the manager
    assert r.bought_kwh[0] == pytest.approx(2.0, abs=QTY_ABS)
    assert r.operator_export_kwh == pytest.approx(0.5, abs=QTY_ABS)
    assert bills["grid"] == pytest.approx(FEED_IN * 0.5, abs=MONEY_ABS)  # the grid pays for it


# -- the Shapley axioms on random games ----------------------------------------------------------
@st.composite
def games(draw, p_min: int = 2, p_max: int = 6):
    p = draw(st.integers(p_min, p_max))
    raw = draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2**p, max_size=2**p))
    values = np.array(raw)
    values[0] = 0.0
    return p, values


@MARKET_HYPOTHESIS
@given(games())
def test_shapley_axioms_on_random_games(game):
    """Efficiency, symmetry, null player and the definition (mean marginal contribution
    over all orders) on random TU games (Shapley, 1953; Maschler, Solan and Zamir, 2013,
    ch. 18)."""
    p, values = game
    phi = shapley_exact(values)
    assert phi.sum() == pytest.approx(values[-1], abs=1e-9)  # efficiency
    if p <= 5:
        np.testing.assert_allclose(phi, shapley_by_permutations(values, p), atol=1e-9)
    # symmetry: make players 0 and 1 interchangeable
    swap = np.array([m ^ 0b11 if (m & 1) != (m >> 1 & 1) else m for m in range(2**p)])
    sym = 0.5 * (values + values[swap])
    phi_sym = shapley_exact(sym)
    assert phi_sym[0] == pytest.approx(phi_sym[1], abs=1e-9)
    # null player: player p (a new one) adds nothing to any coalition
    extended = np.concatenate([values, values])
    phi_ext = shapley_exact(extended)
    assert phi_ext[p] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(phi_ext[:p], phi, atol=1e-9)


@MARKET_HYPOTHESIS
@given(market_order_books())
def test_shapley_axioms_in_the_mechanism(orders):
    """On random books: shares add up to v(N) (efficiency), a copy of a trader gets what
    the original gets (symmetry), and a seller whose ask exceeds every bid, like an idle
    participant, gets nothing (null player) -- Shapley, 1953."""
    n = len(orders.demand_kwh)
    # append a copy of participant 0 and a seller no buyer would take
    dup = OrderArrays(
        np.r_[orders.demand_kwh, orders.demand_kwh[0], 0.0],
        np.r_[orders.supply_kwh, orders.supply_kwh[0], 1.0],
        np.r_[orders.bid_per_kwh, orders.bid_per_kwh[0], 0.0],
        np.r_[orders.ask_per_kwh, orders.ask_per_kwh[0], RETAIL + 0.05],
    )
    r = clear(dup)
    shares = r.info["shares"]
    assert r.info["share_scale"] == 1.0
    assert shares.sum() == pytest.approx(r.info["coalition_value"], abs=MONEY_ABS)
    assert shares[0] == pytest.approx(shares[n], abs=MONEY_ABS)
    assert shares[n + 1] == pytest.approx(0.0, abs=MONEY_ABS)
    idle = (dup.demand_kwh <= 0) & (dup.supply_kwh <= 0)
    np.testing.assert_allclose(shares[idle], 0.0, atol=MONEY_ABS)
    assert np.all(shares >= -MONEY_ABS)  # monotone game


@MARKET_HYPOTHESIS
@given(market_order_books(truthful=True))
def test_truthful_values_have_the_closed_form(orders):
    """With tariff bids and no limits, v(S) = (retail - feed_in) min(D(S), S(S)) and
    every bill is the stand-alone grid bill minus the share."""
    r = clear(orders)
    v_grand = SPREAD * min(orders.demand_kwh.sum(), orders.supply_kwh.sum())
    assert r.info["coalition_value"] == pytest.approx(v_grand, abs=MONEY_ABS)
    s = settle(0, IDS[: len(orders.demand_kwh)], np.full(len(orders.demand_kwh), -1), r, TRUTHFUL)
    bills = s.bill.to_numpy()[: len(orders.demand_kwh)]
    np.testing.assert_allclose(bills, standalone_bill(orders) - r.info["shares"], atol=MONEY_ABS)


# -- Monte-Carlo against exact ------------------------------------------------------------------
def test_monte_carlo_estimate_within_its_interval_of_the_exact_value():
    """A 10-player round solved exactly (1024 coalitions) and by permutation sampling
    (Castro, Gomez and Tejada, 2009): every player's estimate lies within its reported
    99.9 % interval of the exact value, and both allocations add up to v(N)."""
    rng = np.random.default_rng(7)
    n = 10
    is_buyer = np.arange(n) % 2 == 0
    q = rng.uniform(0.2, 2.0, n)
    orders = OrderArrays(np.where(is_buyer, q, 0.0), np.where(is_buyer, 0.0, q),
                         np.where(is_buyer, rng.uniform(0.15, RETAIL, n), 0.0),
                         np.where(is_buyer, 0.0, rng.uniform(FEED_IN, 0.2, n)))
    exact = clear(orders)
    assert exact.info["shapley_method"] == "exact" and exact.info["shapley_n_players"] == n
    mc = clear(orders, options={"exact_max_members": 9, "mc_permutations": 400, "mc_confidence": 0.999})
    assert mc.info["shapley_method"] == "monte_carlo"
    assert mc.info["shapley_permutations"] == 400
    hw = mc.info["shapley_ci_halfwidths"]
    assert np.all(hw > 0) and mc.info["shapley_ci_halfwidth"] == pytest.approx(hw.max())
    err = np.abs(mc.info["player_shares"] - exact.info["player_shares"])
    assert np.all(err <= hw), (err, hw)
    assert mc.info["player_shares"].sum() == pytest.approx(exact.info["coalition_value"], abs=MONEY_ABS)
    # far fewer solves than 2^10, thanks to the cache and the exact shortcuts
    assert mc.info["coalition_solves"] < 1024


def test_sampled_shapley_on_the_glove_game():
    """Permutation sampling converges on the glove game's (2/3, 1/6, 1/6) and each sample
    is efficient (Castro, Gomez and Tejada, 2009)."""
    v = coalition_values(3, lambda s: min(len(s & {0}), len(s & {1, 2})))

    def value(order, k):
        return float(v[sum(1 << int(i) for i in order[:k])])

    est = shapley_sampled(value, 3, 1.0, 2000, np.random.default_rng(3), confidence=0.999)
    assert np.all(np.abs(est.phi - [2 / 3, 1 / 6, 1 / 6]) <= est.halfwidth)
    assert est.phi.sum() == pytest.approx(1.0, abs=EXACT_ABS)


# -- core and least core ---------------------------------------------------------------------
@MARKET_HYPOTHESIS
@given(market_order_books(n_min=3, n_max=7))
def test_least_core_is_in_the_core_when_the_core_is_not_empty(orders):
    """The pool game without caps or cuts is a linear production game, whose core is never
    empty (Owen, 1975); the least-core allocation then lies in the core (Maschler, Peleg
    and Shapley, 1979), and the LP core check agrees with enumerating every coalition."""
    r = clear(orders, options={"allocation": "least_core"})
    if r.info["shapley_method"] != "exact":
        return  # nothing to share (no buyer or no seller, or v(N) = 0)
    assert r.info["core_nonempty"]
    assert r.info["least_core_epsilon"] <= 1e-7
    assert r.info["in_core"], r.info["max_excess"]
    assert r.info["player_shares"].sum() == pytest.approx(r.info["coalition_value"], abs=1e-6)


def test_least_core_of_a_tiny_game_does_not_stall():
    """A game worth 7.5e-5 in which only {0, 2} (and N) has a value: its core is
    {x0 + x2 = 7.5e-5, x1 = 0, x >= 0}, which contains the target (v/2, 0, v/2). Solved
    unnormalised, HiGHS's QP stage cycled on it without end (found by Hypothesis); the
    least core is now solved for the game divided by its largest value, and the QP stage
    has an iteration limit."""
    a = 7.5e-5
    v = np.array([0, 0, 0, 0, 0, a, 0, a])
    status, eps, point = LeastCoreModel(3).solve(v, np.array([a / 2, 0.0, a / 2]))
    assert status == "ok"
    assert eps == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(point, [a / 2, 0.0, a / 2], atol=1e-12)


_LEAST_CORE_6 = LeastCoreModel(6)


@MARKET_HYPOTHESIS
@given(games(p_min=2, p_max=6), st.lists(st.floats(-3, 3), min_size=6, max_size=6))
def test_core_check_lp_matches_enumeration(game, x):
    """The core-membership LP returns the largest excess max_S v(S) - x(S) over every
    coalition (grand coalition included), as enumeration does (Maschler, Solan and Zamir,
    2013, ch. 17)."""
    p, values = game
    x = np.array(x[:p])
    lc = _LEAST_CORE_6
    status, lp = lc.max_excess(values, x)
    assert status == "ok"
    assert lp == pytest.approx(max_excess(values[1:], subset_matrix(p)[1:], x), abs=1e-7)  # non-empty S


def test_core_check_in_monte_carlo_mode_reports_sampled_coalitions():
    """Above exact_max_members the core check covers the coalitions the sampling visited."""
    orders = market_books(("buy", 1.0, RETAIL), ("sell", 1.0, FEED_IN), ("sell", 1.0, FEED_IN), ("buy", 0.5, 0.25))
    r = clear(orders, options={"exact_max_members": 3, "mc_permutations": 50})
    assert r.info["shapley_method"] == "monte_carlo"
    assert r.info["core_check"] == "sampled coalitions"
    assert r.info["core_nonempty"] is None
    assert 1 <= r.info["core_coalitions_checked"] <= 16
    assert r.info["player_shares"].sum() == pytest.approx(r.info["coalition_value"], abs=MONEY_ABS)


# -- the contract on random books, with charges, cuts and caps -------------------------------------
@MARKET_HYPOTHESIS
@given(market_order_books(), st.data())
def test_bills_sum_to_zero_with_charges_cuts_and_caps(orders, data):
    """Random books, network charges (credits included), one network cut and, half the
    time, islanded caps: balances, caps, cuts and the trade table hold, and the settled
    bills of all parties sum to zero with the manager breaking even."""
    ctx, cuts, charges = market_draw_limits(data, len(orders.demand_kwh))
    r = clear(orders, ctx, cuts, charges)
    shares = r.info["shares"]
    if r.info["shapley_method"] == "exact":
        # the shares have the sign of the money the P2P trades create: negative where the
        # caps or the cut make the coalition trade at a loss to avoid shedding or curtailment
        assert np.all(shares * np.sign(r.info["share_scale"]) >= -MONEY_ABS)
        scaled = r.info["player_shares"].sum() * r.info["share_scale"]
        assert shares.sum() == pytest.approx(scaled, abs=1e-6)


ISLANDED = MarketContext(RETAIL, FEED_IN, outside_party="grid_forming", import_cap_kwh=0.0, export_cap_kwh=0.0)


def test_members_cover_a_loss_making_trade_forced_by_the_caps():
    """Islanded (no import, no export): a buyer of 1 kWh bidding 0.25 and a seller of 1 kWh
    asking 0.28 trade at a loss of 0.03 rather than shed (VoLL 10/kWh) and curtail. Alone
    each is worth 0, so v(N) = 10 + curtail_cost - 0.03 and the Shapley value splits it in
    half (Shapley, 1953); the money the trade creates is G = 0.25 - 0.28 = -0.03, so the
    shares are scaled by G / v(N) to -0.015 each: the buyer pays 0.265, the seller gets
    0.265 and the manager, which pays out the shares, breaks even (found by Hypothesis in
    test_bills_sum_to_zero_with_charges_cuts_and_caps: the manager was left 0.03 short)."""
    orders = market_books(("buy", 1.0, 0.25), ("sell", 1.0, 0.28))
    r = clear(orders, ISLANDED)  # the contract, manager break-even included
    v_grand = ISLANDED.voll_per_kwh + ISLANDED.curtail_cost - 0.03
    assert r.bought_kwh[0] == pytest.approx(1.0, abs=QTY_ABS) and r.shed_kwh.sum() == pytest.approx(0.0)
    assert r.info["coalition_value"] == pytest.approx(v_grand, abs=MONEY_ABS)
    np.testing.assert_allclose(r.info["player_shares"], [v_grand / 2, v_grand / 2], atol=MONEY_ABS)
    assert r.info["share_scale"] == pytest.approx(-0.03 / v_grand, rel=1e-9)
    np.testing.assert_allclose(r.info["shares"], [-0.015, -0.015], atol=EXACT_ABS)
    bills = settle(0, IDS[:2], np.full(2, -1), r, ISLANDED).set_index("party").bill
    np.testing.assert_allclose(bills[IDS[:2]].to_numpy(), [0.265, -0.265], atol=EXACT_ABS)
    assert bills[MARKET_OPERATOR] == pytest.approx(0.0, abs=EXACT_ABS)


def test_share_of_a_member_with_nothing_traded_goes_to_the_members_that_trade():
    """Islanded: one buyer of 1 kWh (bid 0.25), two sellers of 1 kWh (ask 0.10). The game
    is the glove game scaled by v(N) = 10.15 + curtail_cost, so the Shapley value is
    v(N) (2/3, 1/6, 1/6), and G = 0.15 scales it to (0.10, 0.025, 0.025). One seller
    sells, the other is curtailed and has no kWh whose price could carry its 0.025: that
    goes to the two who trade, pro rata to their shares (0.10 : 0.025), so the buyer's
    share is 0.12, the selling seller's 0.03, and the manager breaks even (before, it kept
    the 0.025)."""
    orders = market_books(("buy", 1.0, 0.25), ("sell", 1.0, 0.10), ("sell", 1.0, 0.10))
    r = clear(orders, ISLANDED)
    v_grand = 10.15 + ISLANDED.curtail_cost
    np.testing.assert_allclose(r.info["player_shares"], v_grand * np.array([2 / 3, 1 / 6, 1 / 6]), atol=MONEY_ABS)
    seller = 1 + int(np.argmax(r.sold_kwh[1:]))
    idle = 3 - seller
    assert r.sold_kwh[seller] == pytest.approx(1.0, abs=QTY_ABS)
    assert r.curtailed_kwh[idle] == pytest.approx(1.0, abs=QTY_ABS)
    assert r.info["stranded_share"] == pytest.approx(0.025, abs=MONEY_ABS)
    expected = np.zeros(3)
    expected[[0, seller]] = [0.12, 0.03]
    np.testing.assert_allclose(r.info["shares"], expected, atol=MONEY_ABS)
    bills = settle(0, IDS[:3], np.full(3, -1), r, ISLANDED).set_index("party").bill
    np.testing.assert_allclose(bills[[IDS[0], IDS[seller], IDS[idle]]].to_numpy(), [0.13, -0.13, 0.0], atol=MONEY_ABS)
    assert bills[MARKET_OPERATOR] == pytest.approx(0.0, abs=EXACT_ABS)


def test_money_the_tie_break_moves_is_carried_by_the_traders():
    """Bid 0.25 against ask 0.25 plus a sell charge of 1e-7: trading loses 1e-7 of declared
    welfare, but the pool's 1e-6 /kWh tie-break against outside trades still takes the P2P
    trade, so v(N) = -1e-7 (nothing to share) while the trade moves G = -1e-7: the two
    traders carry it pro rata to their P2P kWh (-5e-8 each) and the manager breaks even
    (found by Hypothesis: the manager was left 1e-7 short)."""
    orders = market_books(("buy", 1.0, 0.25), ("sell", 1.0, 0.25))
    charges = Charges(np.zeros(2), np.array([0.0, 1e-7]))
    r = clear(orders, charges=charges)  # the contract, manager break-even included
    assert r.bought_kwh[0] == pytest.approx(1.0, abs=QTY_ABS)
    assert r.info["coalition_value"] <= 0.0 and r.info["shapley_method"] == "trivial"
    np.testing.assert_allclose(r.info["shares"], [-5e-8, -5e-8], atol=EXACT_ABS)


def test_share_prices_pay_every_kwh_and_each_share_once():
    """The manager's net position is exactly G - sum of shares: a member that buys a few
    1e-8 kWh is still priced (not left at NaN, i.e. unpaid), and a member that both buys
    and sells gets its share once, on the side with more kWh; every member's bill is its
    reference bill minus its share."""
    x = {"bought_kwh": np.array([5e-8, 0.0, 1.0]), "sold_kwh": np.array([0.0, 1.0, 0.5]),
         "imported_kwh": np.array([0.0, 0.0, 0.2]), "exported_kwh": np.array([0.0, 0.3, 0.0])}
    shares = np.array([0.0, 0.05, 0.1])
    eff_bid, eff_ask = np.array([0.3, 0.0, 0.25]), np.array([0.0, 0.1, 0.12])
    b = share_prices(x, shares, eff_bid, eff_ask, TRUTHFUL)
    paid = np.nan_to_num(b.buy_price_per_kwh) * b.bought_kwh
    received = np.nan_to_num(b.sell_price_per_kwh) * b.sold_kwh
    bills = paid - received + RETAIL * b.import_kwh - FEED_IN * b.export_kwh
    reference = (eff_bid * x["bought_kwh"] - eff_ask * x["sold_kwh"]
                 + RETAIL * x["imported_kwh"] - FEED_IN * x["exported_kwh"])
    np.testing.assert_allclose(bills, reference - shares, atol=EXACT_ABS)
    manager = -(paid.sum() - received.sum()) + RETAIL * b.operator_import_kwh - FEED_IN * b.operator_export_kwh
    money = eff_bid @ x["bought_kwh"] - eff_ask @ x["sold_kwh"]
    assert manager == pytest.approx(shares.sum() - money, abs=EXACT_ABS)
    assert b.unpaid_share == 0.0


def test_no_member_pays_more_than_its_reference_bill():
    """With charges, each member's bill is its reference bill (P2P kWh at its own price net
    of its charge, the rest at the tariffs) minus a non-negative share."""
    orders = market_books(("buy", 1.5, 0.28), ("buy", 0.7, 0.22), ("sell", 1.0, 0.10), ("sell", 2.0, 0.12))
    charges = Charges(np.array([0.01, 0.02, 0.0, 0.0]), np.array([0.0, 0.0, 0.01, -0.005]))
    r = clear(orders, charges=charges)
    s = settle(0, IDS[:4], np.full(4, -1), r, TRUTHFUL).set_index("party")
    assert np.all(r.info["shares"] >= -MONEY_ABS)
    assert r.info["shares"].sum() > 0.0
    # buyers pay at most their bid per P2P kWh (charge included); sellers get at least their ask
    p2p_b = r.trades[(r.trades.seller.isin(IDS[:4])) & (r.trades.buyer.isin(IDS[:4]))]
    for _, t in p2p_b.iterrows():
        i, j = IDS.index(t.buyer), IDS.index(t.seller)
        assert t.price_per_kwh <= orders.bid_per_kwh[i] + 1e-9  # includes the routed import credit
        assert t.seller_price_per_kwh + 1e-9 >= orders.ask_per_kwh[j] + charges.sell[j]
    assert s.bill.sum() == pytest.approx(0.0, abs=1e-9)


# -- players by feeder -------------------------------------------------------------------------
def test_feeder_players_share_within_the_feeder():
    """players='feeders': each feeder is one player; a feeder's share is split among its
    members pro rata to the energy each trades in the grand coalition."""
    ids = IDS[:5]
    parts = Participants(ids, np.arange(5), np.array([0, 0, 1, 1, 2]), np.zeros(5, dtype=bool))
    orders = market_books(("buy", 1.0, RETAIL), ("sell", 0.5, FEED_IN), ("sell", 1.0, FEED_IN),
                   ("buy", 1.0, RETAIL), ("idle", 0.0, 0.0))
    r = clear(orders, participants=parts, options={"players": "feeders"})
    assert r.info["shapley_players"] == "feeders"
    assert r.info["shapley_n_players"] == 2  # feeder 2 has no active trader
    # feeder game: each feeder holds 1 kWh of demand and 0.5 / 1.0 kWh of supply
    v = {0b01: SPREAD * 0.5, 0b10: SPREAD * 1.0, 0b11: SPREAD * 1.5}
    phi0 = 0.5 * v[0b01] + 0.5 * (v[0b11] - v[0b10])
    phi1 = 0.5 * v[0b10] + 0.5 * (v[0b11] - v[0b01])
    np.testing.assert_allclose(r.info["player_shares"], [phi0, phi1], atol=MONEY_ABS)
    shares = r.info["shares"]
    assert shares[:2].sum() == pytest.approx(phi0, abs=MONEY_ABS)
    assert shares[2:4].sum() == pytest.approx(phi1, abs=MONEY_ABS)
    assert shares[4] == 0.0
    # within a feeder, pro rata to the P2P energy each member trades in the grand coalition
    # (shares are paid through the manager, so take the P2P kWh from the trade table)
    t = r.trades[r.trades.seller.isin(IDS) & r.trades.buyer.isin(IDS)]
    traded = np.array([t.energy_kwh[(t.buyer == i) | (t.seller == i)].sum() for i in ids])
    assert traded[:4].sum() > 0
    for members, phi in (([0, 1], phi0), ([2, 3], phi1)):
        np.testing.assert_allclose(shares[members], phi * traded[members] / traded[members].sum(), atol=MONEY_ABS)


def test_auto_players_switch_to_feeders_above_the_exact_limit():
    """players='auto' uses prosumers up to exact_max_members active traders, feeders above."""
    n = 6
    parts = Participants(IDS[:n], np.arange(n), np.array([0, 0, 0, 1, 1, 1]), np.zeros(n, dtype=bool))
    orders = market_books(*[("buy", 1.0, RETAIL) if i % 2 else ("sell", 1.0, FEED_IN) for i in range(n)])
    few = clear(orders, participants=parts)
    assert few.info["shapley_players"] == "prosumers"
    many = clear(orders, participants=parts, options={"exact_max_members": 4})
    assert many.info["shapley_players"] == "feeders" and many.info["shapley_n_players"] == 2
    assert many.info["shapley_method"] == "exact"


# -- one persistent model, one solve per coalition -------------------------------------------------
class CountingHighs:
    """Forwards to a highspy.Highs and counts its solves."""

    def __init__(self, highs):
        self._highs = highs
        self.runs = 0

    def run(self):
        self.runs += 1
        return self._highs.run()

    def __getattr__(self, name):
        return getattr(self._highs, name)


@pytest.mark.parametrize("with_cut", [True, False])
def test_each_coalition_value_is_one_solve_of_one_persistent_model(monkeypatch, with_cut):
    """The pool model is built once per mechanism (not per coalition, not per round). With
    a network cut (here one that never binds), a round costs one solve for the grand
    coalition, one for the empty one (the stand-alone baseline) and one per proper
    coalition that has both a buyer and a seller. Without cuts and caps, only the grand
    coalition is solved; the other values are computed in closed form."""
    built = market_count_builds(monkeypatch, shapley_module, "PoolModel")
    ids = IDS[:6]
    mech = ShapleyCoalition(ids, max_cuts=2)
    counter = CountingHighs(mech.pool.highs)
    mech.pool.highs = counter
    rng = np.random.default_rng(11)
    cuts = NetworkCuts(np.ones((1, 6)), np.array([100.0])) if with_cut else None
    for round_no in range(3):
        is_buyer = np.array([1, 1, 1, 0, 0, 0], bool)
        if round_no == 1:
            is_buyer = ~is_buyer
        q = rng.uniform(0.5, 1.5, 6)
        orders = OrderArrays(np.where(is_buyer, q, 0), np.where(is_buyer, 0, q),
                             np.where(is_buyer, rng.uniform(0.2, RETAIL, 6), 0),
                             np.where(is_buyer, 0, rng.uniform(FEED_IN, 0.15, 6)))
        before = counter.runs
        r = mech.clear(orders, TRUTHFUL, cuts)
        assert r.ok
        mixed = sum(1 for mask in range(1, 2**6 - 1)
                    if any(is_buyer[i] for i in range(6) if mask >> i & 1)
                    and any(not is_buyer[i] for i in range(6) if mask >> i & 1))
        if with_cut:
            assert r.info["coalition_solves"] == mixed + 1  # + the empty coalition
            assert counter.runs - before == mixed + 2  # + the grand coalition
        else:
            assert r.info["coalition_solves"] == 0 and r.info["coalition_values_closed_form"] == mixed
            assert counter.runs - before == 1  # the grand coalition
    assert len(built) == 1
    assert mech.pool.highs is counter  # the same HiGHS instance throughout


# -- edge cases ----------------------------------------------------------------------------------
@pytest.mark.parametrize("orders", market_edge_books())
def test_edge_cases_trade_with_the_outside_party_only(orders):
    """Nothing to share: no P2P trade, zero shares, bills at the tariffs."""
    r = clear(orders)
    assert r.cleared_kwh == pytest.approx(0.0, abs=QTY_ABS)
    np.testing.assert_allclose(r.info["shares"], 0.0)
    assert r.info["coalition_value"] == pytest.approx(0.0, abs=MONEY_ABS)
    s = settle(0, IDS[:2], np.full(2, -1), r, TRUTHFUL)
    np.testing.assert_allclose(s.bill.to_numpy()[:2], standalone_bill(orders), atol=MONEY_ABS)


def test_no_p2p_baseline_context():
    """With P2P switched off in the context, everyone trades with the grid and shares are 0."""
    orders = market_books(("buy", 1.0, RETAIL), ("sell", 1.0, FEED_IN))
    ctx = MarketContext(RETAIL, FEED_IN, p2p=False)
    r = clear(orders, ctx)
    assert r.cleared_kwh == 0.0 and r.info["shares"].sum() == 0.0


def test_registered_and_options_validated():
    assert MECHANISMS["shapley"] is ShapleyCoalition
    with pytest.raises(ValueError):
        ShapleyCoalition(IDS[:2], options={"exact_max_members": 20})
    with pytest.raises(ValueError):
        ShapleyCoalition(IDS[:2], options={"players": "households"})
