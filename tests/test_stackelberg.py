"""Tests of the Stackelberg pricing game (cosim.markets.stackelberg).

Hand-worked leader-follower cases with known equilibria; the exact best response against
a brute-force search; the closed-form follower response against the buyers' QPs; the
equilibrium as a Nash equilibrium of the sellers on random books (Hypothesis), checked
with deviations the mechanism did not try and followers solved by the QP; individual
rationality; bills that sum to zero once settled; edge cases; one persistent model.

Sources:

- game structure (sellers lead with unit prices and play a Nash game; each buyer buys from
  every seller): Maharjan, Zhu, Zhang, Gjessing and Basar, 2013, "Dependable demand
  response management in the smart grid: a Stackelberg game approach", IEEE Trans. Smart
  Grid 4(1):120-132;
- the follower's quadratic utility omega x - (a/2) x^2: Samadi, Mohsenian-Rad, Schober,
  Wong and Jatskevich, 2010, "Optimal real-time pricing algorithm based on utility
  maximization for smart grid", IEEE SmartGridComm, pp. 415-420;
- a leader facing linear demand (alpha - p) / w prices at (alpha + c) / 2 (monopoly
  against a price-taking follower): von Stackelberg, 1934, "Marktform und Gleichgewicht";
  Basar and Olsder, 1999, "Dynamic Noncooperative Game Theory", 2nd ed., SIAM, ch. 4;
  Tirole, 1988, "The Theory of Industrial Organization", MIT Press, ch. 1.
"""

from __future__ import annotations

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
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cosim.markets.stackelberg as stackelberg_module
from cosim.markets import MECHANISMS, MarketContext, NetworkCuts, OrderArrays
from cosim.markets.stackelberg import FollowerModel, StackelbergPricing
from cosim.markets.stackelberg_game import (
    Followers,
    best_response,
    follower_response,
    leaders_equilibrium,
    nash_gains,
    seller_payoffs,
)
from cosim.sim.settlement import settle

#: Tolerance on quantities from the QPs [kWh].
QTY_ABS = 1e-5
#: Tolerance on prices at an equilibrium [currency/kWh] (price_tol_per_kwh is 1e-9).
PRICE_ABS = 1e-7
#: Tolerance on money [currency].
MONEY_ABS = 1e-6
#: Largest gain a seller may find by deviating [currency] (the mechanism's default).
NE_TOL = 1e-6
RETAIL, FEED_IN = MARKET_RETAIL, MARKET_FEED_IN
SPREAD = RETAIL - FEED_IN
TRUTHFUL = MarketContext(RETAIL, FEED_IN)
IDS = [f"p{i:02d}" for i in range(12)]


# -- helpers (books, strategies and the shared checks: conftest.py) -------------------------------
def mechanism(n: int, options: dict | None = None) -> StackelbergPricing:
    """One mechanism per size and options, kept across tests and examples as a run keeps it."""
    return market_mechanism(StackelbergPricing, IDS[:n], 2, options)


def clear(orders: OrderArrays, ctx: MarketContext = TRUTHFUL, cuts=None, charges=None, options=None):
    n = len(orders.demand_kwh)
    r = mechanism(n, options).clear(orders, ctx, cuts, charges)
    assert r.ok, r.status
    check_invariants(r, orders, ctx, cuts, IDS[:n])
    return r


def check_invariants(r, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None, ids: list[str]):
    """Balances, caps, cuts, trade table, budget balance and a zero-sum settlement in which
    the market operator breaks even."""
    market_check_balances(r, orders, QTY_ABS)
    assert r.bought_kwh.sum() == pytest.approx(r.sold_kwh.sum(), abs=QTY_ABS)
    assert r.import_kwh.sum() <= ctx.import_cap_kwh + QTY_ABS
    assert r.export_kwh.sum() <= ctx.export_cap_kwh + QTY_ABS
    if cuts is not None and len(cuts) and r.info["cap_shed_kwh"] == 0 and r.info["cap_curtailed_kwh"] == 0:
        assert np.all(cuts.coef @ r.injection_kwh <= cuts.rhs + QTY_ABS)
    t = r.trades
    p2p = t[(t.seller != ctx.outside_party) & (t.buyer != ctx.outside_party)]
    np.testing.assert_allclose(p2p.price_per_kwh.to_numpy(float), p2p.seller_price_per_kwh.to_numpy(float))  # budget-balanced
    for i, pid in enumerate(ids):
        assert p2p.energy_kwh[p2p.buyer == pid].sum() == pytest.approx(r.bought_kwh[i], abs=QTY_ABS)
        assert p2p.energy_kwh[p2p.seller == pid].sum() == pytest.approx(r.sold_kwh[i], abs=QTY_ABS)
        assert t.energy_kwh[t.seller == ctx.outside_party][t.buyer == pid].sum() == pytest.approx(
            r.import_kwh[i], abs=QTY_ABS)
    return market_check_zero_sum(r, ids, ctx)


# -- hand-worked equilibria -------------------------------------------------------------------
def test_one_seller_one_buyer_monopoly_price():
    """One seller (3 kWh, ask = feed-in 0.08) leads against one buyer (2 kWh, bid = retail
    0.30). With curvature 1 the buyer's utility is (0.30 - p) x - (w/2) x^2 with
    w = 0.22 / 2 = 0.11, so it buys x(p) = (0.30 - p) / 0.11; the seller maximises
    (p - 0.08) x(p): p* = (0.30 + 0.08) / 2 = 0.19, x* = 1 kWh (von Stackelberg 1934;
    Tirole 1988, ch. 1). Bills: buyer 0.19 x 1 + 0.30 x 1 = 0.49; seller -0.19 - 0.08 x 2
    = -0.35; grid 0.16 - 0.30 = -0.14."""
    orders = market_books(("buy", 2.0, RETAIL), ("sell", 3.0, FEED_IN))
    r = clear(orders)
    assert r.sell_price_per_kwh[1] == pytest.approx(0.19, abs=PRICE_ABS)
    assert r.price_per_kwh == pytest.approx(0.19, abs=PRICE_ABS)
    assert r.bought_kwh[0] == pytest.approx(1.0, abs=QTY_ABS)
    assert r.info["leaders_profit"] == pytest.approx(0.11, abs=MONEY_ABS)
    assert r.info["is_nash"] and r.info["ne_max_gain"] <= NE_TOL
    bills = settle(0, IDS[:2], np.full(2, -1), r, TRUTHFUL).set_index("party").bill
    assert bills[IDS[0]] == pytest.approx(0.49, abs=MONEY_ABS)
    assert bills[IDS[1]] == pytest.approx(-0.35, abs=MONEY_ABS)
    assert bills["grid"] == pytest.approx(-0.14, abs=MONEY_ABS)


def test_one_seller_one_buyer_with_binding_offer():
    """Same buyer, seller with only 0.5 kWh: the monopoly quantity 1 kWh exceeds the
    offer, so the seller raises its price until the buyer wants exactly 0.5 kWh:
    p* = 0.30 - 0.11 x 0.5 = 0.245 (Maharjan et al. 2013: a seller prices so that demand
    meets the energy it has)."""
    orders = market_books(("buy", 2.0, RETAIL), ("sell", 0.5, FEED_IN))
    r = clear(orders)
    assert r.sell_price_per_kwh[1] == pytest.approx(0.245, abs=PRICE_ABS)
    assert r.sold_kwh[1] == pytest.approx(0.5, abs=QTY_ABS)
    assert r.export_kwh[1] == pytest.approx(0.0, abs=QTY_ABS)


def test_duopoly_with_a_binding_need():
    """Two sellers (cost 0.08) and one buyer of 1 kWh, curvature 0.4 (w = 0.088). If the
    buyer's need binds with both sellers active, its level is L = (w D + p1 + p2) / 2 and
    x1 = (w D + p2 - p1) / (2 w), so seller 1's best response is p1 = (w D + p2 + c) / 2
    and the equilibrium is p1 = p2 = c + w D = 0.168, each selling 0.5 kWh; the level
    1.5 w D + c = 0.212 < 0.30 confirms that the need binds (hand-worked, in the game of
    Maharjan et al. 2013 with the utility of Samadi et al. 2010)."""
    orders = market_books(("buy", 1.0, RETAIL), ("sell", 2.0, FEED_IN), ("sell", 2.0, FEED_IN))
    r = clear(orders, options={"curvature": 0.4})
    np.testing.assert_allclose(r.sell_price_per_kwh[1:], [0.168, 0.168], atol=PRICE_ABS)
    np.testing.assert_allclose(r.sold_kwh[1:], [0.5, 0.5], atol=QTY_ABS)
    assert r.import_kwh[0] == pytest.approx(0.0, abs=QTY_ABS)
    assert r.info["is_nash"] and r.info["ne_max_gain"] <= NE_TOL


def test_competition_lowers_prices():
    """A second seller for the same buyer lowers the price the buyer pays (strategic
    substitutes in quantity, complements in price): more competition, lower prices."""
    mono = clear(market_books(("buy", 1.0, RETAIL), ("sell", 2.0, FEED_IN), ("idle", 0, 0)), options={"curvature": 0.4})
    duo = clear(market_books(("buy", 1.0, RETAIL), ("sell", 2.0, FEED_IN), ("sell", 2.0, FEED_IN)), options={"curvature": 0.4})
    assert duo.buy_price_per_kwh[0] < mono.buy_price_per_kwh[0] - 0.01


# -- the pieces -----------------------------------------------------------------------------------
@st.composite
def followers(draw, b_max: int = 4):
    b = draw(st.integers(1, b_max))
    value = np.array(draw(st.lists(st.floats(0.05, 0.30), min_size=b, max_size=b)))
    need = np.array(draw(st.lists(st.floats(0.05, 3.0), min_size=b, max_size=b)))
    curv = draw(st.floats(0.1, 3.0))
    return Followers(value, curv * SPREAD / need, need)


@MARKET_HYPOTHESIS
@given(followers(), st.data())
def test_best_response_beats_a_brute_force_search(f, data):
    """The exact best response is at least as good as any of 2001 evenly spaced prices
    and as a few random ones, the others' prices held fixed."""
    s = data.draw(st.integers(1, 4))
    cost = np.array(data.draw(st.lists(st.floats(0.0, 0.2), min_size=s, max_size=s)))
    offer = np.array(data.draw(st.lists(st.floats(0.01, 3.0), min_size=s, max_size=s)))
    prices = np.array(data.draw(st.lists(st.floats(0.0, 0.35), min_size=s, max_size=s)))
    ceiling = float(f.value.max())
    m = data.draw(st.integers(0, s - 1))
    p_best, v_best = best_response(m, prices, cost, offer, f, ceiling)
    if cost[m] >= ceiling:
        assert p_best == cost[m] and v_best == 0.0
        return
    assert cost[m] <= p_best <= ceiling
    trial = np.r_[np.linspace(cost[m], ceiling, 2001), data.draw(
        st.lists(st.floats(float(cost[m]), ceiling), min_size=3, max_size=3))]
    batch = np.repeat(prices[None, :], len(trial), axis=0)
    batch[:, m] = trial
    brute = seller_payoffs(batch, cost, offer, f)[:, m]
    batch[0, m] = p_best
    at_best = seller_payoffs(batch[:1], cost, offer, f)[0, m]
    assert at_best == pytest.approx(v_best, abs=1e-12)
    assert v_best >= brute.max() - 1e-12


@MARKET_HYPOTHESIS
@given(followers(), st.lists(st.floats(0.0, 0.35), min_size=1, max_size=5))
def test_closed_form_response_matches_the_buyer_qp(f, prices):
    """Each buyer's closed-form response equals the optimum of its Pyomo/HiGHS QP."""
    prices = np.array(prices)
    x = follower_response(prices, f)
    model = _FOLLOWER_QP
    for b in range(len(f.need)):
        upper = np.zeros(model.n)
        upper[: len(prices)] = np.where(prices < f.value[b], 10.0, 0.0)
        price = np.zeros(model.n)
        price[: len(prices)] = prices
        status, qp = model.solve(price, f.value[b], f.weight[b], f.need[b], upper)
        assert status == "ok"
        np.testing.assert_allclose(qp[: len(prices)], x[b], atol=1e-6)
        assert x[b].sum() <= f.need[b] + 1e-9


_FOLLOWER_QP = FollowerModel(6)


# -- the equilibrium on random books -----------------------------------------------------------
def order_books():
    """Random books of 2 to 6 participants, at most 2 kWh each."""
    return market_order_books(n_max=6, q_max=2.0)


#: A book without a pure-strategy equilibrium (found by Hypothesis): one buyer, two sellers
#: at cost 0.125, one of them offering only 0.125 kWh (see test_edgeworth_cycle_...).
EDGEWORTH_BOOK = OrderArrays(np.array([0.0, 0.0, 0.25, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0, 0.125]),
                             np.array([0.25, 0.25, 0.25, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.125, 0.125]))


@settings(MARKET_HYPOTHESIS, max_examples=20)
@given(order_books(), st.sampled_from([0.3, 1.0, 2.5]))
@example(EDGEWORTH_BOOK, 0.3)
def test_equilibrium_is_a_nash_equilibrium(orders, curvature):
    """On random books no seller gains more than the tolerance by a unilateral deviation:
    neither on the mechanism's own grid (info) nor on a different grid checked here with
    every buyer's response solved by its QP (each seller's offer capping what a buyer takes
    from it). Where no pure equilibrium exists (binding offers, Edgeworth cycles), the
    mechanism must say so: not converged, not Nash, and the gain it reports is real --
    found again here with the QPs."""
    r = clear(orders, options={"curvature": curvature})
    assert r.info["follower_gap_kwh"] <= 1e-6
    price = np.nan_to_num(r.info["seller_prices"])
    sellers = np.flatnonzero(np.isfinite(r.info["seller_prices"]))
    buyers = np.flatnonzero(orders.demand_kwh > 1e-7)
    if len(sellers) == 0 or len(buyers) == 0:
        assert r.info["converged"] and r.info["is_nash"]
        return
    n = len(orders.demand_kwh)
    value = np.minimum(orders.bid_per_kwh, RETAIL)
    weight = np.ones(n)
    weight[buyers] = curvature * SPREAD / orders.demand_kwh[buyers]
    cost = np.maximum(orders.ask_per_kwh, FEED_IN)

    def payoff(p: np.ndarray, m: int) -> float:
        sold = 0.0
        for b in buyers:
            upper = np.zeros(_FOLLOWER_QP.n)
            upper[sellers] = np.where(p[sellers] < value[b], orders.supply_kwh[sellers], 0.0)
            pad = np.zeros(_FOLLOWER_QP.n)
            pad[:n] = p
            status, x = _FOLLOWER_QP.solve(pad, value[b], weight[b], orders.demand_kwh[b], upper)
            assert status == "ok"
            sold += x[m]
        return (p[m] - cost[m]) * min(sold, orders.supply_kwh[m])

    ceiling = float(value[buyers].max())
    if not (r.info["converged"] and r.info["is_nash"]):
        assert not r.info["is_nash"] and r.info["ne_max_gain"] > NE_TOL
        m = IDS.index(r.info["ne_max_gain_seller"])
        base = payoff(price, m)
        gains = []
        for alt in np.linspace(cost[m], ceiling, 201):
            dev = price.copy()
            dev[m] = alt
            gains.append(payoff(dev, m) - base)
        assert max(gains) > NE_TOL
        return
    for m in sellers:
        base = payoff(price, m)
        for alt in np.linspace(cost[m], ceiling, 9)[1:-1] + 0.0013:  # off the mechanism's grid
            dev = price.copy()
            dev[m] = alt
            assert payoff(dev, m) <= base + NE_TOL + 1e-6  # QP tolerance


def test_edgeworth_cycle_when_a_rivals_offer_binds():
    """EDGEWORTH_BOOK, curvature 0.3: one buyer (D = 0.25 kWh, alpha = 0.25,
    w = 0.3 x 0.22 / 0.25 = 0.264, w D = 0.066), sellers A (1 kWh) and B (0.125 kWh), both
    at cost c = 0.125. Hand-worked:

    - at p = (0.191, 0.191) the buyer's level is (w D + 0.382) / 2 = 0.224 and it takes
      0.125 kWh from each (B's offer and the need both bind); A earns 0.066 x 0.125 =
      0.00825. If A raises its price to 0.2044 the buyer still cannot get more than
      0.125 kWh from B, so A still sells 0.125 kWh and earns 0.0794 x 0.125 = 0.009925: a profitable deviation
      (the old best response and Nash check, blind to B's cap, accepted (0.191, 0.191));
    - A's best response to p_B <= 0.2148 is the residual-demand kink p_A = alpha - w x 0.125
      = 0.217 (it sells the residual 0.125 kWh: payoff 0.0115); undercutting instead, with
      both sellers active and the need binding, x_A = (w D + p_B - p_A) / (2 w), pays at
      most (p_B + w D - c)^2 / (8 w), which beats 0.0115 only when p_B > 0.2148;
    - B's best response to p_A in [0.195, 0.217] is p_A itself (the highest price at which
      the buyer takes all of B's 0.125 kWh), and never above 0.217;
    - so B never prices above 0.2148 while A prices at 0.217, nor A at 0.217 while B prices
      above 0.2148: no pure-strategy equilibrium (an Edgeworth cycle: Edgeworth, 1925
      [1897], "The pure theory of monopoly", Papers Relating to Political Economy, vol. 1;
      Vives, 1999, "Oligopoly Pricing", MIT Press, ch. 5), in the game of Maharjan et al.
      2013 with the utility of Samadi et al. 2010.

    The mechanism must report that (not converged, not Nash, a real gain)."""
    f = Followers(np.array([0.25]), np.array([0.264]), np.array([0.25]))
    cost, offer = np.array([0.125, 0.125]), np.array([1.0, 0.125])
    ceiling = 0.25
    at = seller_payoffs(np.array([[0.191, 0.191], [0.2044, 0.191]]), cost, offer, f)[:, 0]
    np.testing.assert_allclose(at, [0.00825, 0.009925], atol=1e-12)
    p, v = best_response(0, np.array([0.0, 0.191]), cost, offer, f, ceiling)
    assert p == pytest.approx(0.217, abs=1e-12) and v == pytest.approx(0.0115, abs=1e-12)
    assert nash_gains(np.array([0.191, 0.191]), cost, offer, f, ceiling)[0] >= 0.009925 - 0.00825
    # A's undercutting payoff (p_B + w D - c)^2 / (8 w) equals the kink's 0.0115 at p_B = threshold
    threshold = 0.125 - 0.066 + np.sqrt(8 * 0.264 * 0.0115)
    assert threshold == pytest.approx(0.2148, abs=1e-4)
    for p_b in np.linspace(0.125, ceiling, 126):
        br_a = best_response(0, np.array([0.0, p_b]), cost, offer, f, ceiling)[0]
        br_b = best_response(1, np.array([br_a, 0.0]), cost, offer, f, ceiling)[0]
        if p_b < threshold - 1e-6:
            assert br_a == pytest.approx(0.217, abs=1e-9)
        elif p_b > threshold + 1e-6:
            assert br_a < 0.2148
        assert br_b <= 0.217 + 1e-9
        assert abs(br_b - p_b) > 1e-3  # no fixed point of B's response to A's response
    r = clear(EDGEWORTH_BOOK, options={"curvature": 0.3})
    assert not r.info["converged"] and not r.info["is_nash"] and r.info["ne_max_gain"] > NE_TOL
    assert r.sold_kwh[4] <= 0.125 + QTY_ABS


def test_anderson_acceleration_reaches_an_equilibrium_of_the_plain_iteration():
    """With and without Anderson mixing the iteration ends at a Nash equilibrium; here
    (one buyer per seller pair, a unique symmetric equilibrium) at the same prices."""
    rng = np.random.default_rng(5)
    need = rng.uniform(0.2, 2.0, 5)
    f = Followers(rng.uniform(0.2, 0.3, 5), 0.5 * SPREAD / need, need)
    cost = rng.uniform(0.08, 0.15, 6)
    offer = rng.uniform(0.2, 2.0, 6)
    ceiling = float(f.value.max())
    plain = leaders_equilibrium(cost, offer, f, ceiling, 1e-10, 500, memory=0)
    fast = leaders_equilibrium(cost, offer, f, ceiling, 1e-10, 500, memory=5)
    assert plain.converged and fast.converged
    assert fast.sweeps <= plain.sweeps
    for eq in (plain, fast):
        assert nash_gains(eq.prices, cost, offer, f, ceiling, 51).max() <= 1e-9
    np.testing.assert_allclose(fast.prices, plain.prices, atol=1e-7)


# -- rationality and the contract ------------------------------------------------------------
@MARKET_HYPOTHESIS
@given(order_books(), st.data())
def test_individually_rational_and_zero_sum_with_charges_cuts_and_caps(orders, data):
    """Random books, network charges, one network cut and, half the time, islanded caps:
    buyers pay at most their bid per P2P kWh (charge included), sellers receive at least
    their ask (net of charge), no prosumer's bill exceeds trading alone at the tariffs,
    and all bills sum to zero."""
    n = len(orders.demand_kwh)
    ctx, cuts, charges = market_draw_limits(data, n)
    r = clear(orders, ctx, cuts, charges)
    assert r.info["is_nash"]
    t = r.trades
    p2p = t[(t.seller != ctx.outside_party) & (t.buyer != ctx.outside_party)]
    for _, row in p2p.iterrows():
        b, s = IDS.index(row.buyer), IDS.index(row.seller)
        assert row.price_per_kwh + charges.buy[b] <= orders.bid_per_kwh[b] + 1e-9
        assert row.seller_price_per_kwh - charges.sell[s] >= orders.ask_per_kwh[s] - 1e-9
        assert row.network_charge_per_kwh == pytest.approx(charges.buy[b] + charges.sell[s])
    s = settle(0, IDS[:n], np.full(n, -1), r, ctx)
    bills = s.bill.to_numpy()[:n]
    # against the same physical outcome (shedding, curtailment) traded at the tariffs
    served = orders.demand_kwh - r.shed_kwh
    delivered = orders.supply_kwh - r.curtailed_kwh
    alone = RETAIL * served - FEED_IN * delivered
    assert np.all(bills <= alone + 1e-9)


# -- edge cases ------------------------------------------------------------------------------------
@pytest.mark.parametrize("orders", market_edge_books())
def test_edge_cases_trade_with_the_outside_party_only(orders):
    r = clear(orders)
    assert r.cleared_kwh == pytest.approx(0.0, abs=QTY_ABS)
    assert np.isnan(r.price_per_kwh)
    assert r.info["is_nash"]
    s = settle(0, IDS[:2], np.full(2, -1), r, TRUTHFUL)
    alone = RETAIL * orders.demand_kwh - FEED_IN * orders.supply_kwh
    np.testing.assert_allclose(s.bill.to_numpy()[:2], alone, atol=MONEY_ABS)


def test_no_p2p_context():
    r = clear(market_books(("buy", 1.0, RETAIL), ("sell", 1.0, FEED_IN)), MarketContext(RETAIL, FEED_IN, p2p=False))
    assert r.cleared_kwh == 0.0


def test_without_an_outside_grid():
    """As in ``cosim clear`` without tariffs: no outside party, what is not traded stays
    unmatched (shed or curtailed at zero cost)."""
    ctx = MarketContext(0.3, 0.1, import_cap_kwh=0.0, export_cap_kwh=0.0, voll_per_kwh=0.0,
                        curtail_cost_per_kwh=0.0)
    orders = market_books(("buy", 1.0, 0.3), ("sell", 2.0, 0.1))
    r = clear(orders, ctx)
    assert 0.1 < r.sell_price_per_kwh[1] < 0.3
    assert r.import_kwh.sum() == 0.0 and r.export_kwh.sum() == 0.0


# -- one persistent model ----------------------------------------------------------------------------
def test_models_are_built_once_and_each_buyer_solved_once_per_clearing(monkeypatch):
    """With ``followers: qp``, the pool and the follower QP are built once per mechanism; a
    clearing solves the pool once and the follower QP once per buyer. With the default
    closed-form followers no follower QP is built."""
    built = market_count_builds(monkeypatch, stackelberg_module, "FollowerModel")
    assert StackelbergPricing(IDS[:5], max_cuts=2).followers is None and not built
    mech = StackelbergPricing(IDS[:5], max_cuts=2, options={"followers": "qp"})
    solves = []
    real_solve = mech.followers.solve

    def counted_solve(*args, **kwargs):
        solves.append(1)
        return real_solve(*args, **kwargs)

    mech.followers.solve = counted_solve
    follower_model = mech.followers
    rng = np.random.default_rng(2)
    for _ in range(3):
        buyer = rng.random(5) < 0.5
        q = rng.uniform(0.2, 1.5, 5)
        orders = OrderArrays(np.where(buyer, q, 0), np.where(buyer, 0, q), np.full(5, RETAIL), np.full(5, FEED_IN))
        before = len(solves)
        r = mech.clear(orders, TRUTHFUL)
        assert r.ok
        assert len(solves) - before == int(buyer.sum())
    assert len(built) == 1 and mech.followers is follower_model


def test_registered_and_options_validated():
    assert MECHANISMS["stackelberg"] is StackelbergPricing
    with pytest.raises(ValueError):
        StackelbergPricing(IDS[:2], options={"curvature": 0.0})
    with pytest.raises(ValueError):
        StackelbergPricing(IDS[:2], options={"tolerance": 1.0})
