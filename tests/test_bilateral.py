"""Tests of the multi-bilateral P2P market (cosim.markets.bilateral).

The formulation is Sorin, Bobo and Pinson, 2019, "Consensus-based approach to
peer-to-peer electricity markets with product differentiation", IEEE Trans. Power Syst.
34(2):994-1004: one trade variable per buyer-seller pair, a reciprocity constraint per
pair whose dual is the pair's price, and product-differentiation prices c_ij in the
objective. The decentralised mode is the consensus ADMM of Boyd, Parikh, Chu, Peleato
and Eckstein, 2011, "Distributed optimization and statistical learning via the
alternating direction method of multipliers", Found. Trends Mach. Learn. 3(1), sec. 7.

A hand-worked 2-seller-2-buyer book checks quantities, prices and bills of both modes;
Hypothesis checks on random books the invariants every clearing must satisfy (balances,
reciprocity, outside caps, network cuts, charges, individual rationality, bills summing
to zero) and that the ADMM reaches the central optimum; the closed-form best response of
the ADMM is checked against each prosumer's own Pyomo/HiGHS problem.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cosim.markets import MECHANISMS, Charges, MarketContext, NetworkCuts, OrderArrays, Participants
from cosim.markets.bilateral import (
    BilateralOptions,
    MultiBilateral,
    ProsumerModels,
    RoundData,
    Side,
    partner_slots,
    preference_costs,
    vectorised_best_response,
    waterfill,
)
from cosim.markets.pool import OUTSIDE_EPSILON
from cosim.sim.settlement import DSO, MARKET_OPERATOR, settle

#: Tolerance on quantities of the central LP [kWh] (HiGHS's feasibility tolerance is 1e-7).
QTY_ABS = 1e-6
#: Tolerance on prices read off the LP's duals [currency/kWh].
PRICE_ABS = 1e-6
#: Tolerance on money [currency].
MONEY_ABS = 1e-9
#: ADMM settings of the random-book comparisons: tighter than the defaults, so the
#: comparison checks convergence, not the default's accuracy.
ADMM_TEST = {"admm_tolerance_kwh": 1e-5, "admm_price_tolerance_per_kwh": 1e-6, "admm_max_iterations": 20000}
#: A central optimum counts as unique when every non-basic column and active inequality
#: has a reduced cost at least this far from zero [currency/kWh].
UNIQUE_MARGIN = 1e-3
RETAIL, FEED_IN = 0.30, 0.08
GRID = "grid"

HYPOTHESIS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


# -- helpers ----------------------------------------------------------------------------
def orders_of(*rows: tuple[str, float, float]) -> OrderArrays:
    """An order book from (side, quantity [kWh], price [currency/kWh]) per participant."""
    side = np.array([r[0] for r in rows])
    q = np.array([r[1] for r in rows], float)
    p = np.array([r[2] for r in rows], float)
    buy = side == "buy"
    return OrderArrays(np.where(buy, q, 0.0), np.where(buy, 0.0, q), np.where(buy, p, 0.0), np.where(buy, 0.0, p))


def random_case(seed: int, n: int, caps: bool, cut: bool, charges: bool, zero_share: float = 0.15):
    """Participants at random points of a unit square (Euclidean distances, so the
    central optimum is unique almost surely), a random book, and optionally finite
    outside caps (islanded), one feasible network cut and network charges."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.0, 1.0, (n, 2))
    dist = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    participants = Participants([f"p{i}" for i in range(n)], np.arange(n), rng.integers(0, 2, n),
                                rng.random(n) < 0.5, dist)
    sell = rng.random(n) < 0.5
    q = rng.uniform(0.05, 2.0, n) * (rng.random(n) >= zero_share)
    price = rng.uniform(0.05, 0.35, n)  # some beyond the tariffs on purpose
    orders = OrderArrays(np.where(sell, 0.0, q), np.where(sell, q, 0.0), np.where(sell, 0.0, price),
                         np.where(sell, price, 0.0))
    ctx = MarketContext(RETAIL, FEED_IN)
    if caps:
        ctx = MarketContext(RETAIL, FEED_IN, import_cap_kwh=float(rng.uniform(0.0, 2.0)),
                            export_cap_kwh=float(rng.uniform(0.0, 2.0)))
    cuts = NetworkCuts.empty(n)
    if cut:  # limit a weighted injection below its uncurtailed value, feasible by curtailment
        coef = rng.uniform(0.0, 1.0, (1, n)) * (orders.supply_kwh > 0)
        inj = orders.supply_kwh - orders.demand_kwh
        rhs = coef[0] @ inj - rng.uniform(0.0, 1.0) * (coef[0] @ orders.supply_kwh)
        cuts = NetworkCuts(coef, np.array([rhs]), ("random cut",))
    ch = Charges(rng.uniform(-0.01, 0.04, n), rng.uniform(-0.01, 0.04, n)) if charges else Charges.none(n)
    return participants, orders, ctx, cuts, ch


def p2p_rows(r) -> pd.DataFrame:
    return r.trades[(r.trades.seller != GRID) & (r.trades.buyer != GRID)]


def check_invariants(mech: MultiBilateral, r, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts,
                     charges: Charges, cut_tol: float = QTY_ABS, qty_tol: float = QTY_ABS) -> None:
    """What every bilateral clearing must satisfy."""
    assert r.ok, r.status
    ids = mech.ids
    # energy balance of every participant, and of the market as a whole
    np.testing.assert_allclose(r.bought_kwh + r.import_kwh + r.shed_kwh, orders.demand_kwh, atol=qty_tol)
    np.testing.assert_allclose(r.sold_kwh + r.export_kwh + r.curtailed_kwh, orders.supply_kwh, atol=qty_tol)
    assert r.bought_kwh.sum() == pytest.approx(r.sold_kwh.sum(), abs=qty_tol)
    for name in ("bought_kwh", "sold_kwh", "import_kwh", "export_kwh", "curtailed_kwh", "shed_kwh"):
        assert (getattr(r, name) >= -QTY_ABS).all(), name
    # outside caps and network cuts
    assert r.import_kwh.sum() <= ctx.import_cap_kwh + QTY_ABS
    assert r.export_kwh.sum() <= ctx.export_cap_kwh + QTY_ABS
    if len(cuts):
        assert (cuts.coef @ r.injection_kwh <= cuts.rhs + cut_tol).all()
    # reciprocity: each P2P trade is one row that both sides book, at one price, on a pair slot
    p2p = p2p_rows(r)
    pos = {p: k for k, p in enumerate(ids)}
    s_idx = p2p.seller.map(pos).to_numpy(int)
    b_idx = p2p.buyer.map(pos).to_numpy(int)
    assert (s_idx != b_idx).all()
    slots = set(zip(mech.slot_seller.tolist(), mech.slot_buyer.tolist(), strict=True))
    assert all((i, j) in slots for i, j in zip(s_idx, b_idx, strict=True))
    assert not p2p.duplicated(["seller", "buyer"]).any()
    np.testing.assert_allclose(np.bincount(b_idx, weights=p2p.energy_kwh, minlength=len(ids)), r.bought_kwh,
                               atol=1e-12)
    np.testing.assert_allclose(np.bincount(s_idx, weights=p2p.energy_kwh, minlength=len(ids)), r.sold_kwh,
                               atol=1e-12)
    assert (p2p.price_per_kwh == p2p.seller_price_per_kwh).all()
    np.testing.assert_allclose(p2p.network_charge_per_kwh, charges.sell[s_idx] + charges.buy[b_idx], atol=1e-15)
    # what each participant pays for its P2P energy is what its trades add up to
    paid = np.bincount(b_idx, weights=p2p.energy_kwh * p2p.price_per_kwh, minlength=len(ids))
    np.testing.assert_allclose(np.nan_to_num(r.buy_price_per_kwh) * r.bought_kwh, paid, atol=1e-12)
    # outside rows at the tariffs
    outside = r.trades[(r.trades.seller == GRID) | (r.trades.buyer == GRID)]
    assert (outside[outside.seller == GRID].price_per_kwh == ctx.retail_price_per_kwh).all()
    assert (outside[outside.buyer == GRID].price_per_kwh == ctx.feed_in_price_per_kwh).all()
    # settlement: bills of all parties sum to zero; budget balance leaves the operator nothing
    table = settle(0, ids, np.arange(len(ids)), r, ctx)
    assert abs(table.bill.sum()) <= MONEY_ABS
    bill = table.set_index("party").bill
    assert abs(bill[MARKET_OPERATOR]) <= MONEY_ABS
    assert bill[DSO] == pytest.approx(-(charges.buy @ r.bought_kwh + charges.sell @ r.sold_kwh), abs=MONEY_ABS)


def check_individually_rational(mech: MultiBilateral, r, orders: OrderArrays, charges: Charges,
                                tol: float = PRICE_ABS) -> None:
    """With an uncapped outside party: no trader does worse than its own order or the tariffs."""
    p2p = p2p_rows(r)
    pos = {p: k for k, p in enumerate(mech.ids)}
    i = p2p.seller.map(pos).to_numpy(int)
    j = p2p.buyer.map(pos).to_numpy(int)
    price = p2p.price_per_kwh.to_numpy()
    c = preference_costs(mech.participants, mech.options)[i, j]
    assert (price + charges.buy[j] + c <= orders.bid_per_kwh[j] + tol).all()  # the buyer's own bid
    assert (price - charges.sell[i] >= orders.ask_per_kwh[i] - tol).all()  # the seller's own ask
    assert (price + charges.buy[j] <= RETAIL + tol).all()  # no dearer than the grid
    assert (price - charges.sell[i] >= FEED_IN - tol).all()  # no cheaper than the feed-in tariff
    # nobody's bill is higher than trading what it consumes and produces with the grid alone
    n = len(mech.ids)
    table = settle(0, mech.ids, np.arange(n), r, MarketContext(RETAIL, FEED_IN)).iloc[:n]
    alone = RETAIL * (orders.demand_kwh - r.shed_kwh) - FEED_IN * (orders.supply_kwh - r.curtailed_kwh)
    assert (table.bill.to_numpy() <= alone + 1e-9).all()


def unique_optimum_margin(mech: MultiBilateral) -> float:
    """Smallest reduced cost of the central LP's non-basic columns (not fixed by their
    bounds) and active inequalities: positive means the optimum is unique."""
    import highspy

    h = mech.central.highs
    basis, sol, lp = h.getBasis(), h.getSolution(), h.getLp()
    basic = highspy.HighsBasisStatus.kBasic
    lo, hi = np.asarray(lp.col_lower_), np.asarray(lp.col_upper_)
    col_nonbasic = np.array([s != basic for s in basis.col_status]) & (hi > lo)
    row_lo, row_hi = np.asarray(lp.row_lower_), np.asarray(lp.row_upper_)
    row_nonbasic = np.array([s != basic for s in basis.row_status]) & (row_hi > row_lo)
    reduced = np.r_[np.abs(np.asarray(sol.col_dual))[col_nonbasic], np.abs(np.asarray(sol.row_dual))[row_nonbasic]]
    return float(reduced.min(initial=np.inf))


def admm_gap_bound(mech: MultiBilateral, orders: OrderArrays, ctx: MarketContext, charges: Charges,
                   cuts: NetworkCuts) -> float:
    """The welfare gap the ADMM may leave at its tolerances (module docstring) [currency]."""
    opts = mech.options
    d = RoundData(mech, orders, ctx, cuts, charges)
    n = len(mech.ids)
    return ((d.active.sum() + 2 * n) * opts.admm_tolerance_kwh * max(ctx.voll_per_kwh, 1.0)
            + (orders.demand_kwh.sum() + orders.supply_kwh.sum()) * opts.admm_price_tolerance_per_kwh)


# -- registry and options ----------------------------------------------------------------
def test_registered_with_options():
    assert MECHANISMS["bilateral"] is MultiBilateral
    with pytest.raises(ValidationError):
        MultiBilateral(["a", "b"], options={"max_partner": 3})  # typo: unknown option
    with pytest.raises(ValidationError):
        MultiBilateral(["a", "b"], options={"max_partners": 0})
    with pytest.raises(ValueError, match="unknown"):
        MultiBilateral(["a", "b"], options={"preferred_pairs": [["a", "zz"]]})


# -- preferences and sparse pairs ----------------------------------------------------------
def test_sparse_pairs_stay_linear_in_participants():
    """1,000 prosumers get at most 2 n max_partners trade variables (not n^2), each one its
    `max_partners` cheapest partners by preference cost."""
    rng = np.random.default_rng(3)
    n, k = 1000, 8
    pos = rng.uniform(0.0, 0.6, n)
    feeder = rng.integers(0, 6, n)
    dist = np.where(feeder[:, None] == feeder[None, :], np.abs(pos[:, None] - pos[None, :]), pos[:, None] + pos[None, :])
    participants = Participants([f"p{i}" for i in range(n)], np.arange(n), feeder, rng.random(n) < 0.6, dist)
    opts = BilateralOptions(max_partners=k)
    cost = preference_costs(participants, opts)
    seller, buyer = partner_slots(cost, k)
    assert len(seller) <= 2 * n * k
    assert len(set(zip(seller.tolist(), buyer.tolist(), strict=True))) == len(seller)
    # both directions of every pair; everyone reaches its k cheapest partners
    pairs = set(zip(seller.tolist(), buyer.tolist(), strict=True))
    assert all((b, s) in pairs for s, b in pairs)
    closeness = 0.5 * (cost + cost.T)
    for a in rng.choice(n, 20, replace=False):
        partners = buyer[seller == a]
        assert len(partners) >= k
        kth = np.sort(closeness[a])[k - 1]
        assert set(np.flatnonzero(closeness[a] < kth)) <= set(partners.tolist())


def test_dense_pairs_when_partners_cover_everyone():
    participants = Participants.plain(["a", "b", "c", "d"])
    mech = MultiBilateral(participants, options={"max_partners": 3})
    assert mech.n_slots == 12  # every ordered pair, no self-trade
    assert (mech.slot_seller != mech.slot_buyer).all()


def two_sellers_one_buyer(has_pv, dist, options):
    participants = Participants(["s1", "s2", "b"], np.arange(3), np.zeros(3, dtype=int), np.array(has_pv),
                                np.asarray(dist, float))
    mech = MultiBilateral(participants, options=options)
    orders = orders_of(("sell", 1.0, 0.10), ("sell", 1.0, 0.10), ("buy", 1.0, 0.25))
    return mech, mech.clear(orders, MarketContext(RETAIL, FEED_IN))


def sellers_of(r) -> list[str]:
    return p2p_rows(r).seller.tolist()


def test_buyer_prefers_the_green_seller():
    """Equal asks and distances: the buyer's premium for PV makes the green seller win."""
    dist = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]
    _, r = two_sellers_one_buyer([False, True, False], dist, {"green_premium_per_kwh": 0.02})
    assert sellers_of(r) == ["s2"]
    assert p2p_rows(r).energy_kwh.sum() == pytest.approx(1.0)


def test_buyer_prefers_the_nearby_seller():
    """Equal asks, both green: the electrically nearer seller (Participants.distance_km) wins."""
    dist = [[0, 1, 0.3], [1, 0, 0.9], [0.3, 0.9, 0]]
    _, r = two_sellers_one_buyer([True, True, False], dist, {"distance_rate_per_kwh_km": 0.01})
    assert sellers_of(r) == ["s1"]


def test_buyer_prefers_its_chosen_partner():
    """A preferred pair beats a nearer, equally green seller when its premium is larger."""
    dist = [[0, 1, 0.3], [1, 0, 0.9], [0.3, 0.9, 0]]
    options = {"distance_rate_per_kwh_km": 0.01, "preferred_pairs": [["s2", "b"]],
               "preferred_partner_premium_per_kwh": 0.02}
    _, r = two_sellers_one_buyer([True, True, False], dist, options)
    assert sellers_of(r) == ["s2"]


def test_buyer_prefers_its_own_feeder():
    participants = Participants(["s1", "s2", "b"], np.arange(3), np.array([0, 1, 1]), np.ones(3, dtype=bool), None)
    mech = MultiBilateral(participants, options={"same_feeder_premium_per_kwh": 0.01})
    r = mech.clear(orders_of(("sell", 1.0, 0.10), ("sell", 1.0, 0.10), ("buy", 1.0, 0.25)),
                   MarketContext(RETAIL, FEED_IN))
    assert sellers_of(r) == ["s2"]


def test_premium_shows_in_the_price():
    """Two sellers, one buyer wanting both: the marginal (far) seller's ask sets its price,
    and the near seller earns the distance premium on top (Sorin et al. 2019: product
    differentiation prices differ by the preference)."""
    dist = [[0, 1, 0.5], [1, 0, 2.5], [0.5, 2.5, 0]]
    participants = Participants(["s1", "s2", "b"], np.arange(3), np.zeros(3, dtype=int), np.ones(3, dtype=bool),
                                np.asarray(dist, float))
    mech = MultiBilateral(participants, options={"distance_rate_per_kwh_km": 0.01})
    r = mech.clear(orders_of(("sell", 1.0, 0.10), ("sell", 2.0, 0.10), ("buy", 2.0, 0.25)),
                   MarketContext(RETAIL, FEED_IN))
    p2p = p2p_rows(r).set_index("seller")
    assert p2p.energy_kwh.to_dict() == pytest.approx({"s1": 1.0, "s2": 1.0})
    # s2 exports its second kWh: its price is its ask; s1's is higher by c(s2,b) - c(s1,b) = 0.02
    assert p2p.price_per_kwh["s2"] == pytest.approx(0.10, abs=2 * OUTSIDE_EPSILON)
    assert p2p.price_per_kwh["s1"] == pytest.approx(0.12, abs=2 * OUTSIDE_EPSILON)


# -- the hand-worked book --------------------------------------------------------------------
#: Two sellers, two buyers. s1 has PV, s2 none (green premium 0.02); distance rate 0.01 per km.
HAND_IDS = ["s1", "s2", "b1", "b2"]
HAND_DIST = np.array([[0.0, 2.0, 1.0, 3.0],
                      [2.0, 0.0, 2.0, 0.5],
                      [1.0, 2.0, 0.0, 2.0],
                      [3.0, 0.5, 2.0, 0.0]])
HAND_OPTIONS = {"distance_rate_per_kwh_km": 0.01, "green_premium_per_kwh": 0.02,
                "same_feeder_premium_per_kwh": 0.0, "max_partners": 3}
HAND_BOOK = orders_of(("sell", 2.0, 0.10), ("sell", 2.0, 0.12), ("buy", 1.5, 0.25), ("buy", 1.5, 0.20))
#: By hand. c = 0.01, 0.03 (s1 -> b1, b2), 0.04, 0.025 (s2 -> b1, b2); gains bid - c - ask:
#: s1->b1 0.14, s1->b2 0.07, s2->b1 0.09, s2->b2 0.055. Supply 4 > demand 3. The
#: transportation optimum: b1 takes 1.5 from s1, b2 takes s1's last 0.5 and 1.0 from s2,
#: s2 exports 1.0 (welfare 1.5*0.14 + 0.5*0.07 + 1.0*0.055 = 0.30; the other patterns give
#: 0.2925 and 0.265). Duals: s2 exports, so its rent is 0 and its price is its ask 0.12;
#: b2 is indifferent between s2 (value 0.175, price 0.12) and s1 (value 0.17), so s1's
#: price is 0.115, which b1 pays too. Each figure is lowered by the tie-break epsilon 1e-6
#: that exporting costs, except s2's price, which stays at its ask (a seller never gets less).
HAND_TRADES = {("s1", "b1"): 1.5, ("s1", "b2"): 0.5, ("s2", "b2"): 1.0}
P1, P2 = 0.115 - OUTSIDE_EPSILON, 0.12
HAND_PRICES = {("s1", "b1"): P1, ("s1", "b2"): P1, ("s2", "b2"): P2}
HAND_WELFARE = 0.30 - OUTSIDE_EPSILON * 1.0
HAND_BILLS = {"s1": -2.0 * P1, "s2": -(1.0 * P2 + 1.0 * FEED_IN), "b1": 1.5 * P1, "b2": 0.5 * P1 + 1.0 * P2,
              GRID: FEED_IN * 1.0}


def hand_mechanism(**options) -> MultiBilateral:
    participants = Participants(HAND_IDS, np.arange(4), np.zeros(4, dtype=int),
                                np.array([True, False, False, False]), HAND_DIST)
    return MultiBilateral(participants, options={**HAND_OPTIONS, **options})


def check_hand_result(r, qty_tol: float, price_tol: float) -> None:
    p2p = p2p_rows(r)
    trades = {(s, b): q for s, b, q in zip(p2p.seller, p2p.buyer, p2p.energy_kwh, strict=True) if q > qty_tol}
    assert trades.keys() == HAND_TRADES.keys()
    for key, q in HAND_TRADES.items():
        assert trades[key] == pytest.approx(q, abs=qty_tol)
    prices = dict(zip(zip(p2p.seller, p2p.buyer, strict=True), p2p.price_per_kwh, strict=True))
    for key, p in HAND_PRICES.items():
        assert prices[key] == pytest.approx(p, abs=price_tol)
    assert r.export_kwh == pytest.approx([0.0, 1.0, 0.0, 0.0], abs=qty_tol)
    assert r.import_kwh.sum() == pytest.approx(0.0, abs=qty_tol)
    bills = settle(0, HAND_IDS, np.arange(4), r, MarketContext(RETAIL, FEED_IN)).set_index("party").bill
    for party, bill in HAND_BILLS.items():
        assert bills[party] == pytest.approx(bill, abs=price_tol * 4 + qty_tol)
    assert abs(bills.sum()) <= MONEY_ABS


def test_hand_worked_two_sellers_two_buyers_central():
    """Hand-worked multi-bilateral book (formulation of Sorin, Bobo and Pinson, 2019,
    "Consensus-based approach to peer-to-peer electricity markets with product
    differentiation", IEEE Trans. Power Syst. 34(2)): quantities, pair prices (the
    reciprocity duals), welfare and bills."""
    mech = hand_mechanism()
    r = mech.clear(HAND_BOOK, MarketContext(RETAIL, FEED_IN))
    check_hand_result(r, QTY_ABS, PRICE_ABS)
    assert r.welfare == pytest.approx(HAND_WELFARE, abs=1e-9)
    assert unique_optimum_margin(mech) > UNIQUE_MARGIN  # the hand-worked optimum is the only one


def test_hand_worked_two_sellers_two_buyers_admm():
    """The same hand-worked book (Sorin, Bobo and Pinson, 2019, IEEE Trans. Power Syst.
    34(2)) negotiated by consensus ADMM (Boyd et al. 2011, Found. Trends Mach. Learn. 3(1)):
    it agrees with the central optimum within its tolerances, prices included (unique
    here), and reports its iterations."""
    mech = hand_mechanism(solve="admm")
    r = mech.clear(HAND_BOOK, MarketContext(RETAIL, FEED_IN))
    tol = mech.options.admm_tolerance_kwh
    check_hand_result(r, qty_tol=5 * tol, price_tol=1e-3)
    assert r.info["admm_converged"] and 1 < r.info["admm_iterations"] < mech.options.admm_max_iterations
    assert r.info["admm_residual_kwh"] <= tol
    assert abs(r.info["admm_gap"]) <= admm_gap_bound(mech, HAND_BOOK, MarketContext(RETAIL, FEED_IN),
                                                     Charges.none(4), NetworkCuts.empty(4))
    assert r.welfare == pytest.approx(HAND_WELFARE, abs=1e-3)


def test_hand_worked_admm_with_each_prosumers_pyomo_model():
    """The ADMM with one persistent Pyomo/HiGHS model per prosumer takes the same steps as
    the closed form, so it ends at the same point of the hand-worked book (Sorin, Bobo and
    Pinson, 2019, IEEE Trans. Power Syst. 34(2))."""
    closed = hand_mechanism(solve="admm", admm_audit=False)
    pyomo = hand_mechanism(solve="admm", admm_audit=False, admm_local_solver="pyomo")
    a = closed.clear(HAND_BOOK, MarketContext(RETAIL, FEED_IN))
    b = pyomo.clear(HAND_BOOK, MarketContext(RETAIL, FEED_IN))
    assert b.info["admm_iterations"] == pytest.approx(a.info["admm_iterations"], rel=0.05)
    np.testing.assert_allclose(b.bought_kwh, a.bought_kwh, atol=1e-5)
    np.testing.assert_allclose(b.sold_kwh, a.sold_kwh, atol=1e-5)
    np.testing.assert_allclose(b.buy_price_per_kwh, a.buy_price_per_kwh, atol=1e-5)
    check_hand_result(b, qty_tol=5 * pyomo.options.admm_tolerance_kwh, price_tol=1e-3)


# -- the closed-form best response against each prosumer's Pyomo problem --------------------
def test_waterfill_solves_the_balance():
    """Each agent's items are max(0, (nu - breakpoint) / rho) and fill its quantity, or nu
    is capped by its linear option, which takes the rest."""
    rng = np.random.default_rng(0)
    group = rng.integers(0, 30, 300)
    b = rng.normal(0.0, 0.1, 300)
    q = rng.uniform(0.0, 2.0, 30) * (rng.random(30) < 0.9)
    cap = np.where(rng.random(30) < 0.5, rng.normal(0.0, 0.1, 30), np.inf)
    rho = 0.3
    v, w = waterfill(group, b, q, cap, rho)
    assert np.bincount(group, minlength=30).min() > 0  # every agent has items
    assert (v >= 0).all() and (w >= 0).all()
    np.testing.assert_allclose(np.bincount(group, weights=v, minlength=30) + w, q, atol=1e-12)
    # stationarity: b + rho v is one multiplier nu per agent on its positive items, the
    # others have b >= nu, and nu never exceeds the linear option's cost (equal when it is used)
    level = b + rho * v
    positive = v > 1e-12
    for g in np.flatnonzero(q > 0):
        mine = group == g
        nu = level[mine & positive]
        if len(nu):
            assert np.ptp(nu) <= 1e-12
            assert (b[mine & ~positive] >= nu[0] - 1e-12).all()
            assert nu[0] <= cap[g] + 1e-12
        if w[g] > 1e-12:
            assert len(nu) == 0 or nu[0] == pytest.approx(cap[g], abs=1e-12)


@HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1), shared=st.sampled_from(["none", "outside", "dso", "both"]),
       rho=st.floats(0.01, 5.0))
def test_vectorised_best_response_equals_each_prosumers_pyomo_problem(seed, shared, rho):
    """The documented closed form (`vectorised_best_response`, water-filling over each
    prosumer's balance) returns the optimum of the per-prosumer Pyomo/HiGHS QP."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    participants = Participants.plain([f"p{i}" for i in range(n)])
    mech = MultiBilateral(participants, options={"max_partners": n})
    seller, buyer = mech.slot_seller, mech.slot_buyer
    supply = rng.uniform(0.0, 2.0, n) * (rng.random(n) < 0.6)
    demand = rng.uniform(0.0, 2.0, n) * (rng.random(n) < 0.6)
    active = np.flatnonzero((supply[seller] > 0) & (demand[buyer] > 0))
    si, bj = seller[active], buyer[active]
    quad = {"exported": shared in ("outside", "both"), "imported": shared in ("outside", "both"),
            "curtailed": shared in ("dso", "both"), "shed": shared in ("dso", "both")}
    available = {"exported": (supply > 0) & (rng.random(n) < 0.8), "curtailed": supply > 0,
                 "imported": (demand > 0) & (rng.random(n) < 0.8), "shed": demand > 0}

    def coef(name):
        return rng.normal(0.0, 0.2, n) if quad[name] else np.full(n, abs(rng.normal(0.0, 0.2)))

    options = {name: (available[name], quad[name], coef(name)) for name in available}
    sellers = Side(supply, si, rng.normal(0.0, 0.2, len(active)), {k: options[k] for k in ("exported", "curtailed")})
    buyers = Side(demand, bj, rng.normal(0.0, 0.2, len(active)), {k: options[k] for k in ("imported", "shed")})
    x, out_s = vectorised_best_response(sellers, rho)
    y, out_b = vectorised_best_response(buyers, rho)
    models = ProsumerModels(n, *mech_sales_purchases(mech))
    adm = mech_admm_indices(mech)
    x2, out_s2, y2, out_b2 = models.best_response(sellers, buyers, adm[0], adm[1], active, rho)
    np.testing.assert_allclose(x, x2, atol=1e-6)
    np.testing.assert_allclose(y, y2, atol=1e-6)
    for name in out_s:
        np.testing.assert_allclose(out_s[name], out_s2[name], atol=1e-6, err_msg=name)
    for name in out_b:
        np.testing.assert_allclose(out_b[name], out_b2[name], atol=1e-6, err_msg=name)


def mech_sales_purchases(mech: MultiBilateral) -> tuple[list[list[int]], list[list[int]]]:
    n = len(mech.ids)
    sales, purchases = [[] for _ in range(n)], [[] for _ in range(n)]
    for s, (i, j) in enumerate(zip(mech.slot_seller.tolist(), mech.slot_buyer.tolist(), strict=True)):
        sales[i].append(s)
        purchases[j].append(s)
    return sales, purchases


def mech_admm_indices(mech: MultiBilateral) -> tuple[np.ndarray, np.ndarray]:
    sales, purchases = mech_sales_purchases(mech)
    seller_index = np.zeros(mech.n_slots, dtype=np.int64)
    buyer_index = np.zeros(mech.n_slots, dtype=np.int64)
    for lst, index in ((sales, seller_index), (purchases, buyer_index)):
        for slots in lst:
            for k, s in enumerate(slots):
                index[s] = k
    return seller_index, buyer_index


# -- random books: invariants of the central clearing ------------------------------------
@HYPOTHESIS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), caps=st.booleans(), cut=st.booleans(),
       charges=st.booleans(), partners=st.integers(1, 8))
def test_central_invariants_on_random_books(seed, n, caps, cut, charges, partners):
    participants, orders, ctx, cuts, ch = random_case(seed, n, caps, cut, charges)
    mech = MultiBilateral(participants, max_cuts=2, options={"max_partners": partners})
    r = mech.clear(orders, ctx, cuts, ch)
    check_invariants(mech, r, orders, ctx, cuts, ch)
    if not caps:
        check_individually_rational(mech, r, orders, ch)
    # welfare is the LP's objective, and sparse pairs never beat dense ones
    dense = MultiBilateral(participants, max_cuts=2, options={"max_partners": max(n - 1, 1)})
    assert dense.clear(orders, ctx, cuts, ch).welfare >= r.welfare - 1e-9


# -- random books: the ADMM reaches the central optimum ----------------------------------
@settings(HYPOTHESIS, max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 6), caps=st.booleans(), cut=st.booleans(),
       charges=st.booleans())
def test_admm_reaches_the_central_optimum_on_random_books(seed, n, caps, cut, charges):
    participants, orders, ctx, cuts, ch = random_case(seed, n, caps, cut, charges)
    central = MultiBilateral(participants, max_cuts=2)
    admm = MultiBilateral(participants, max_cuts=2, options={"solve": "admm", "admm_audit": False, **ADMM_TEST})
    rc = central.clear(orders, ctx, cuts, ch)
    ra = admm.clear(orders, ctx, cuts, ch)
    assert ra.ok, ra.status
    assert ra.info["admm_converged"] and ra.info["admm_iterations"] >= 1
    tol = admm.options.admm_tolerance_kwh
    slots = int(RoundData(admm, orders, ctx, cuts, ch).active.sum())
    check_invariants(admm, ra, orders, ctx, cuts, ch, cut_tol=(slots + 2 * n) * tol * np.abs(cuts.coef).max(initial=0))
    if not caps:
        check_individually_rational(admm, ra, orders, ch, tol=1e-3)
    gap = rc.welfare - ra.welfare
    bound = admm_gap_bound(admm, orders, ctx, ch, cuts)
    assert -bound <= gap <= bound
    margin = unique_optimum_margin(central)
    if margin >= UNIQUE_MARGIN:  # a unique optimum: the ADMM's trades are that one
        trade_tol = max(10 * tol, 2 * bound / margin)
        for name in ("bought_kwh", "sold_kwh", "import_kwh", "export_kwh", "curtailed_kwh", "shed_kwh"):
            np.testing.assert_allclose(getattr(ra, name), getattr(rc, name), atol=trade_tol, err_msg=name)
        key = ["seller", "buyer"]
        both = p2p_rows(rc).merge(p2p_rows(ra), on=key, how="outer", suffixes=("_c", "_a")).fillna(0.0)
        np.testing.assert_allclose(both.energy_kwh_a, both.energy_kwh_c, atol=trade_tol)


def test_admm_audit_reports_the_gap_and_iterations():
    participants, orders, ctx, cuts, ch = random_case(11, 6, caps=False, cut=False, charges=True, zero_share=0.0)
    mech = MultiBilateral(participants, options={"solve": "admm"})
    r = mech.clear(orders, ctx, cuts, ch)
    info = r.info
    assert info["solve"] == "admm" and info["admm_converged"]
    assert info["central_welfare"] == pytest.approx(MultiBilateral(participants).clear(orders, ctx, cuts, ch).welfare)
    assert info["admm_gap"] == pytest.approx(info["central_welfare"] - r.welfare)
    assert abs(info["admm_gap"]) <= admm_gap_bound(mech, orders, ctx, ch, cuts)


def test_admm_warm_start_reclears_in_few_iterations():
    """Re-clearing the same book (as the network feedback does) opens where the last
    negotiation ended and agrees almost at once, at the same allocation."""
    participants, orders, ctx, cuts, ch = random_case(5, 8, caps=False, cut=False, charges=False, zero_share=0.0)
    mech = MultiBilateral(participants, options={"solve": "admm", "admm_audit": False})
    first = mech.clear(orders, ctx)
    second = mech.clear(orders, ctx)
    assert second.info["admm_iterations"] <= max(10, first.info["admm_iterations"] // 4)
    np.testing.assert_allclose(second.bought_kwh, first.bought_kwh, atol=10 * mech.options.admm_tolerance_kwh)
    cold = MultiBilateral(participants, options={"solve": "admm", "admm_audit": False, "admm_warm_start": False})
    cold.clear(orders, ctx)
    assert cold.clear(orders, ctx).info["admm_iterations"] == first.info["admm_iterations"]


def test_admm_without_agreement_is_a_failed_clearing():
    participants, orders, ctx, cuts, ch = random_case(5, 8, caps=False, cut=False, charges=False, zero_share=0.0)
    mech = MultiBilateral(participants, options={"solve": "admm", "admm_max_iterations": 3})
    r = mech.clear(orders, ctx)
    assert not r.ok and r.status.startswith("admm: no agreement within 3 iterations")
    assert r.info["admm_iterations"] == 3 and not r.info["admm_converged"]


# -- network cuts and charges ----------------------------------------------------------------
@pytest.mark.parametrize("solve", ["central", "admm"])
def test_network_cut_curtails_the_seller_it_names(solve):
    """A cut on one seller's injection curtails that seller; the buyer imports the rest."""
    mech = MultiBilateral(Participants.plain(["s", "t", "b"]), max_cuts=2, options={"solve": solve})
    orders = orders_of(("sell", 2.0, 0.10), ("sell", 0.5, 0.15), ("buy", 3.0, 0.25))
    cuts = NetworkCuts(np.array([[1.0, 0.0, 0.0]]), np.array([1.2]), ("s export",))
    r = mech.clear(orders, MarketContext(RETAIL, FEED_IN), cuts)
    tol = 10 * mech.options.admm_tolerance_kwh if solve == "admm" else QTY_ABS
    check_invariants(mech, r, orders, MarketContext(RETAIL, FEED_IN), cuts, Charges.none(3), cut_tol=tol, qty_tol=tol)
    assert r.injection_kwh[0] == pytest.approx(1.2, abs=tol)
    assert r.curtailed_kwh == pytest.approx([0.8, 0.0, 0.0], abs=tol)
    assert r.bought_kwh[2] == pytest.approx(1.7, abs=tol)


@pytest.mark.parametrize("solve", ["central", "admm"])
def test_charges_stop_trades_that_lose_against_the_tariffs(solve):
    """Charges larger than the spread between bid and ask leave the trade to the grid;
    smaller ones are paid to the DSO and stay within each side's limit."""
    ids = ["s", "b"]
    orders = orders_of(("sell", 1.0, 0.10), ("buy", 1.0, 0.25))
    ctx = MarketContext(RETAIL, FEED_IN)
    mech = MultiBilateral(Participants.plain(ids), options={"solve": solve, "green_premium_per_kwh": 0.0})
    high = Charges(np.array([0.0, 0.10]), np.array([0.06, 0.0]))
    r = mech.clear(orders, ctx, charges=high)
    assert r.bought_kwh.sum() == pytest.approx(0.0, abs=1e-6)
    low = Charges(np.array([0.0, 0.03]), np.array([0.02, 0.0]))
    r = mech.clear(orders, ctx, charges=low)
    tol = 1e-4 if solve == "admm" else QTY_ABS
    check_invariants(mech, r, orders, ctx, NetworkCuts.empty(2), low, qty_tol=tol)
    check_individually_rational(mech, r, orders, low, tol=1e-3 if solve == "admm" else PRICE_ABS)
    assert r.bought_kwh[1] == pytest.approx(1.0, abs=tol)
    bills = settle(0, ids, np.arange(2), r, ctx).set_index("party").bill
    assert bills[DSO] == pytest.approx(-0.05 * r.bought_kwh[1], abs=MONEY_ABS)


def test_too_many_cuts_is_a_failed_clearing():
    mech = MultiBilateral(Participants.plain(["s", "b"]), max_cuts=1)
    cuts = NetworkCuts(np.ones((2, 2)), np.array([5.0, 5.0]))
    r = mech.clear(orders_of(("sell", 1.0, 0.1), ("buy", 1.0, 0.2)), MarketContext(RETAIL, FEED_IN), cuts)
    assert not r.ok and "exceed" in r.status


@pytest.mark.parametrize("solve", ["central", "admm"])
def test_islanded_caps_shed_and_curtail(solve):
    """Islanded: the grid-forming unit sells and buys at most its caps; the rest of the
    deficit is shed and the rest of the surplus curtailed."""
    mech = MultiBilateral(Participants.plain(["s", "b1", "b2"]), options={"solve": solve})
    orders = orders_of(("sell", 1.0, 0.10), ("buy", 2.0, 0.25), ("buy", 1.5, 0.20))
    ctx = MarketContext(RETAIL, FEED_IN, outside_party="grid_forming", import_cap_kwh=1.0, export_cap_kwh=0.5)
    r = mech.clear(orders, ctx)
    tol = 1e-3 if solve == "admm" else QTY_ABS
    assert r.ok
    assert r.import_kwh.sum() == pytest.approx(1.0, abs=tol)
    assert r.shed_kwh.sum() == pytest.approx(1.5, abs=tol)
    assert r.bought_kwh.sum() == pytest.approx(1.0, abs=tol)
    assert r.export_kwh.sum() + r.curtailed_kwh.sum() == pytest.approx(0.0, abs=tol)
    table = settle(0, mech.ids, np.arange(3), r, ctx)
    assert abs(table.bill.sum()) <= MONEY_ABS
    assert "grid_forming" in set(r.trades.seller)


# -- edge cases ----------------------------------------------------------------------------
EDGE_BOOKS = {
    "only buyers": orders_of(("buy", 1.0, 0.2), ("buy", 2.0, 0.25), ("buy", 0.5, 0.3)),
    "only sellers": orders_of(("sell", 1.0, 0.1), ("sell", 2.0, 0.15), ("sell", 0.5, 0.12)),
    "zero quantities": orders_of(("sell", 0.0, 0.1), ("buy", 0.0, 0.2), ("buy", 1.0, 0.25)),
    "all zero": orders_of(("sell", 0.0, 0.1), ("buy", 0.0, 0.2), ("buy", 0.0, 0.25)),
    "all prices equal": orders_of(("sell", 1.0, 0.2), ("sell", 1.0, 0.2), ("buy", 1.5, 0.2)),
    "tiny quantities": orders_of(("sell", 1e-9, 0.1), ("buy", 1e-8, 0.2), ("buy", 1.0, 0.25)),
    "no orders priced": orders_of(("sell", 1.0, 0.0), ("buy", 1.0, 0.0), ("buy", 1.0, 0.0)),
}


@pytest.mark.parametrize("solve", ["central", "admm"])
@pytest.mark.parametrize("case", list(EDGE_BOOKS))
def test_edge_cases_do_not_crash(solve, case):
    orders = EDGE_BOOKS[case]
    mech = MultiBilateral(Participants.plain(["a", "b", "c"]), options={"solve": solve})
    for ctx in (MarketContext(RETAIL, FEED_IN), MarketContext(RETAIL, FEED_IN, import_cap_kwh=0.5, export_cap_kwh=0.5),
                MarketContext(RETAIL, FEED_IN, p2p=False)):
        r = mech.clear(orders, ctx)
        tol = 10 * mech.options.admm_tolerance_kwh if solve == "admm" else QTY_ABS
        check_invariants(mech, r, orders, ctx, NetworkCuts.empty(3), Charges.none(3), qty_tol=tol)
        if not ctx.p2p:
            assert r.bought_kwh.sum() == 0.0


def test_all_prices_equal_trade_without_surplus_or_loss():
    """Bids equal to asks: trading adds nothing, so any trade there is is priced at that
    one price and nobody gains or loses against its order."""
    mech = MultiBilateral(Participants.plain(["a", "b", "c"]), options={"green_premium_per_kwh": 0.0})
    orders = EDGE_BOOKS["all prices equal"]
    r = mech.clear(orders, MarketContext(RETAIL, FEED_IN))
    np.testing.assert_allclose(p2p_rows(r).price_per_kwh, 0.2, atol=1e-5)
    assert r.welfare == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("solve", ["central", "admm"])
def test_no_participants_and_one(solve):
    empty = MultiBilateral([], options={"solve": solve})
    r = empty.clear(OrderArrays(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)), MarketContext(RETAIL, FEED_IN))
    assert r.ok and r.trades.empty
    one = MultiBilateral(["a"], options={"solve": solve})
    r = one.clear(orders_of(("buy", 1.0, 0.2)), MarketContext(RETAIL, FEED_IN))
    assert r.ok and r.import_kwh == pytest.approx([1.0])


def test_no_p2p_trades_everything_with_the_grid():
    participants, orders, ctx, cuts, ch = random_case(2, 6, caps=False, cut=False, charges=False, zero_share=0.0)
    r = MultiBilateral(participants).clear(orders, MarketContext(RETAIL, FEED_IN, p2p=False))
    assert r.bought_kwh.sum() == 0.0
    np.testing.assert_allclose(r.import_kwh, orders.demand_kwh)
    np.testing.assert_allclose(r.export_kwh, orders.supply_kwh)


def test_model_is_built_once_and_reused():
    """Clearing updates the persistent HiGHS model: a second book on the same mechanism
    gives what a fresh mechanism gives."""
    participants, o1, ctx, cuts, ch = random_case(7, 7, caps=False, cut=True, charges=True, zero_share=0.0)
    _, o2, _, _, ch2 = random_case(8, 7, caps=False, cut=False, charges=True, zero_share=0.0)
    mech = MultiBilateral(participants, max_cuts=2)
    model = mech.central.model
    mech.clear(o1, ctx, cuts, ch)
    r = mech.clear(o2, ctx, NetworkCuts.empty(7), ch2)
    assert mech.central.model is model
    fresh = MultiBilateral(participants, max_cuts=2).clear(o2, ctx, NetworkCuts.empty(7), ch2)
    assert r.welfare == pytest.approx(fresh.welfare, abs=1e-9)
    np.testing.assert_allclose(r.bought_kwh, fresh.bought_kwh, atol=QTY_ABS)
