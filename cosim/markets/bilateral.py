"""Multi-bilateral peer-to-peer trading with product differentiation (full P2P).

Source: Sorin, Bobo and Pinson, 2019, "Consensus-based approach to peer-to-peer
electricity markets with product differentiation", IEEE Trans. Power Systems 34(2):994-1004
-- the multi-bilateral economic dispatch: one trade variable per pair of agents, a
reciprocity constraint per pair whose dual is that pair's price, and a product
differentiation price c_ij on each trade that encodes the agents' preferences for whom
they trade with. Sorin et al. solve it with their relaxed consensus+innovation algorithm;
the decentralised mode here uses the consensus ADMM on the same pair structure (each
agent proposes its trades, each pair's price moves by rho/2 times the pair's mismatch:
Baroche, Pinson, Le Goff Latimier and Ben Ahmed, 2019, "Exogenous cost allocation in
peer-to-peer electricity markets", IEEE Trans. Power Systems 34(4); general form consensus
ADMM: Boyd, Parikh, Chu, Peleato and Eckstein, 2011, "Distributed optimization and
statistical learning via the alternating direction method of multipliers", Found. Trends
Mach. Learn. 3(1), sec. 7.2).

Pair slots. A directed slot s = (i -> j) carries energy from seller i to buyer j. Slots
are made once per run, never per round: each participant's `max_partners` cheapest
partners (by the preference cost below, so by distance when distances are known), in
both directions, plus every preferred pair. At most ``2 n max_partners`` slots (plus two
per preferred pair), never n^2. A slot is active in a round when i sells and j buys; an
inactive slot's trade is bounded to 0.

Preference (product differentiation) cost of slot s = (i -> j) [currency/kWh]:

    c_ij = distance_rate * distance_km[i, j]
         + green_premium          if seller i has no PV
         + same_feeder_premium    if i and j are on different LV feeders
         + partner_premium        if {i, j} is not a preferred pair

A premium is written as the discount a buyer demands for the less preferred product, so
every c_ij >= 0 and a bid is the buyer's price for its most preferred product. c_ij is
the buyer's valuation, not a payment: nobody collects it.

Clearing (quantities per round [kWh]; eff_bid = bid - charge_buy, eff_ask = ask + charge_sell,
with bids above the retail tariff counted as the tariff while the outside party can sell,
and asks below the feed-in tariff counted as the tariff while it can buy):

    maximise  sum_s (eff_bid[j] - c_s - eff_ask[i]) t_s - voll sum shed - curtail_cost sum curtailed
              - epsilon sum (imported + exported)
    sum_{s -> j} t_s + imported[j] + shed[j]      = demand[j]   (buyer balance)
    sum_{i -> s} t_s + exported[i] + curtailed[i] = supply[i]   (seller balance)
    sum imported <= import_cap, sum exported <= export_cap       (outside party)
    injection[n] = supply[n] - demand[n] - curtailed[n] + shed[n]
                 (= sold + exported - bought - imported, by the balances)
    sum_n cut_coef[k, n] injection[n] <= cut_rhs[k]             (network cuts)
    t_s >= 0, t_s = 0 for an inactive slot

as in the pool model (`cosim.markets.pool`), the outside party is the participants'
fallback at the tariffs, chosen only where no P2P trade adds welfare (epsilon breaks ties).

Prices. Writing each trade twice, as the seller's sale x_s and the buyer's purchase y_s,
with the reciprocity constraint x_s = y_s, the trade's price lambda_s is that
constraint's dual. In the central LP above (one variable per trade) it is read off the
seller's balance: ``lambda_s = eff_ask[i] + nu_i``, nu_i the dual of seller i's balance
(its rent per kWh); equivalently ``eff_bid[j] - c_s - mu_j``, mu_j the buyer's rent.
The buyer pays lambda_s per kWh (plus its charge), the seller receives lambda_s (minus
its charge): every trade is budget-balanced (``price_per_kwh == seller_price_per_kwh``),
and individually rational -- ``lambda_s + charge_buy[j] + c_s <= bid[j]`` and
``lambda_s - charge_sell[i] >= ask[i]``, so also ``lambda_s + charge_buy[j] <= retail`` and
``lambda_s - charge_sell[i] >= feed_in`` while the outside party trades -- whenever the
outside party's caps or the network cuts do not force a trade at a loss. A seller gets
one price from all its buyers; a buyer pays less for energy it values less (farther, not
green). Where the equilibrium prices are not unique (a trade's surplus is not pinned down
by a competing order) the central mode returns the solver's vertex and the ADMM the point
it converged to; welfare is the same, and so are the quantities where the optimum is
unique (on a radial feeder, with distances that add up through the transformer, it often
is not: several trade patterns then reach the same welfare).

Decentralised mode (``solve: admm``). Each prosumer solves its own small problem (its
balances, its proposals for its active slots, its outside, shed and curtail options)
with a proximal term (rho/2)(x - z)^2 on each proposal, z being the average of the two
sides' last proposals, and only proposals and prices are exchanged:

    x, y  <- each seller's / buyer's best response to lambda and z   (in parallel)
    z_s   <- (x_s + y_s) / 2
    lambda_s <- lambda_s + rho/2 (y_s - x_s)

Two more peers hold the round's shared limits: the outside party (when its caps are
finite and positive) keeps its own copy of each participant's import and export and
projects them onto its caps; the DSO (when there are network cuts) keeps its own copy of
each participant's curtailment and shedding -- the only terms of the injection not fixed
by the orders -- and projects them onto the cuts. Neither sees bids, asks or trades.
Each prosumer's problem is solved either in closed form, vectorised over all prosumers
(a separable quadratic over one balance: water-filling, `waterfill`), or as its own
persistent Pyomo model solved by HiGHS (``admm_local_solver: pyomo``, the same problem,
much slower; the tests check that both give the same steps).

Stopping rule: every pair's two proposals (and both copies of a shared option) agree to
within ``admm_tolerance_kwh`` (primal residual, max over pairs) and no price moved by more
than ``admm_price_tolerance_per_kwh`` in the last iteration (dual residual). rho is
balanced between the two residuals, each scaled by its tolerance, every 10 iterations
during the first 1,000 (Boyd et al. 2011, sec. 3.4.1); then it stays fixed, so the
ADMM's convergence guarantee holds. A negotiation that reaches
``admm_max_iterations`` without agreement is a failed clearing (status ``admm: no
agreement ...``; the loop then trades everyone with the outside party, as for a solver
failure). The result's trades are ``min(x_s, y_s)``; what a participant proposed beyond
that goes to the outside party while its caps allow, else it is curtailed or shed, so
balances and outside caps hold exactly; network cuts hold to within the tolerance.

How close to the central optimum: the allocation differs from the agents' own proposals
by at most the primal residual per slot, which costs at most that much times the dearest
option it falls back to (VOLL where the outside party is capped); the audit
(``admm_audit``, on by default) clears the same round centrally and reports the welfare gap
in ``info["admm_gap"]`` [currency] with ``info["admm_iterations"]``. The tests bound the gap
on random books by ``(active slots + 2 n) * admm_tolerance_kwh * max(voll, 1) +
(total quantity) * admm_price_tolerance_per_kwh``, and check the trades against the
central ones wherever the central optimum is unique. On the benchmark's books
(`cosim.bench.bilateral`, default tolerances) the relative welfare gap stayed below
3e-4 from 100 to 1,000 prosumers.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import highspy
import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import Field
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import nnls

from cosim.markets.base import (
    QTY_TOL,
    TRADE_COLUMNS,
    Charges,
    ClearingResult,
    MarketContext,
    Mechanism,
    MechanismOptions,
    NetworkCuts,
    OrderArrays,
    Participants,
    outside_trades,
)
from cosim.markets.pool import INACTIVE_RHS, OUTSIDE_EPSILON, attach_highs

logging.getLogger("pyomo.contrib.appsi").setLevel(logging.ERROR)
logging.getLogger("pyomo.contrib.solver").setLevel(logging.ERROR)

#: Trades below this are solver noise and set to zero [kWh].
TRADE_ZERO_KWH = 1e-9
#: Caps above this count as unlimited [kWh].
UNLIMITED_KWH = 1e8
#: Over-relaxation of the ADMM's averaging step (Boyd et al. 2011, sec. 3.4.3); 1 is
#: plain ADMM (1.5-1.6 took more iterations on random books, as did Nesterov momentum) [-].
ADMM_RELAXATION = 1.0
#: Iterations between adaptations of rho, and the residual ratio that triggers one
#: (Boyd et al. 2011, sec. 3.4.1) [-].
ADMM_RHO_PERIOD = 10
ADMM_RHO_BALANCE = 10.0
#: rho is adapted only during the first iterations, so that the ADMM converges [-].
ADMM_RHO_ADAPT_UNTIL = 1000
#: rho stays within this factor of its initial value `admm_rho` [-].
ADMM_RHO_RANGE = 1e4


class BilateralOptions(MechanismOptions):
    """Settings of the multi-bilateral market (``market.options`` in a scenario)."""

    distance_rate_per_kwh_km: float = Field(0.01, ge=0.0)
    """Preference cost per kWh and km of line path between seller and buyer [currency/(kWh km)]."""
    green_premium_per_kwh: float = Field(0.01, ge=0.0)
    """What buyers give up per kWh bought from a seller without PV [currency/kWh]."""
    same_feeder_premium_per_kwh: float = Field(0.005, ge=0.0)
    """What buyers give up per kWh bought from another LV feeder [currency/kWh]."""
    preferred_pairs: tuple[tuple[str, str], ...] = ()
    """Pairs of participant ids that prefer to trade with each other (either direction)."""
    preferred_partner_premium_per_kwh: float = Field(0.0, ge=0.0)
    """What buyers give up per kWh bought outside their preferred pairs [currency/kWh]."""
    max_partners: int = Field(12, ge=1)
    """Partners each participant gets pair slots with (its cheapest; dense if >= n - 1) [-]."""
    solve: Literal["central", "admm"] = "central"
    """central: one LP (persistent HiGHS); admm: decentralised consensus ADMM."""
    admm_rho: float = Field(0.05, gt=0.0)
    """Initial ADMM penalty [currency/kWh^2]."""
    admm_adaptive_rho: bool = True
    """Balance primal and dual residuals by doubling/halving rho during the first 1,000 iterations (Boyd et al. 2011, 3.4.1)."""
    admm_tolerance_kwh: float = Field(1e-4, gt=0.0)
    """Stop when every pair's two proposals agree to within this (the primal residual) [kWh]."""
    admm_price_tolerance_per_kwh: float = Field(1e-4, gt=0.0)
    """Stop only when no price moves by more than this in an iteration (the dual residual) [currency/kWh]."""
    admm_max_iterations: int = Field(10000, ge=1)
    """Iteration limit of the ADMM; a round that reaches it without agreement is a failed clearing."""
    admm_warm_start: bool = True
    """Open each negotiation at the prices and averages the last one ended with (see AdmmNegotiation)."""
    admm_local_solver: Literal["vectorised", "pyomo"] = "vectorised"
    """How each prosumer's ADMM step is solved: closed form for all at once, or one Pyomo/HiGHS model each."""
    admm_audit: bool = True
    """Also clear centrally and report the welfare gap of the ADMM in info["admm_gap"]."""


# -- preferences and pair slots ---------------------------------------------------------
def preference_costs(participants: Participants, options: BilateralOptions) -> np.ndarray:
    """[n x n] preference cost c[i, j] of a kWh from seller i to buyer j [currency/kWh].

    Unreachable pairs (infinite line distance) and i == j are +inf.

    >>> p = Participants(["a", "b", "c"], np.array([1, 2, 3]), np.array([0, 0, 1]),
    ...                  np.array([True, False, True]), np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0.0]]))
    >>> opts = BilateralOptions(distance_rate_per_kwh_km=0.01, green_premium_per_kwh=0.02,
    ...                         same_feeder_premium_per_kwh=0.005)
    >>> preference_costs(p, opts).round(3).tolist()
    [[inf, 0.01, 0.025], [0.03, inf, 0.055], [0.025, 0.035, inf]]
    """
    n = len(participants)
    cost = np.zeros((n, n))
    if participants.distance_km is not None:
        dist = np.asarray(participants.distance_km, dtype=float)
        cost += options.distance_rate_per_kwh_km * np.where(np.isfinite(dist), dist, 0.0)
        cost[~np.isfinite(dist)] = np.inf
    cost += options.green_premium_per_kwh * ~np.asarray(participants.has_pv, dtype=bool)[:, None]
    feeder = np.asarray(participants.feeder)
    cost += options.same_feeder_premium_per_kwh * (feeder[:, None] != feeder[None, :])
    if options.preferred_partner_premium_per_kwh > 0:
        preferred = preferred_matrix(participants.ids, options.preferred_pairs)
        cost += options.preferred_partner_premium_per_kwh * ~preferred
    np.fill_diagonal(cost, np.inf)
    return cost


def preferred_matrix(ids: list[str], pairs: tuple[tuple[str, str], ...]) -> np.ndarray:
    """[n x n] True where the two participants form a preferred pair (symmetric)."""
    pos = {p: k for k, p in enumerate(ids)}
    unknown = sorted({p for pair in pairs for p in pair if p not in pos})
    if unknown:
        raise ValueError(f"preferred_pairs: expected participant ids, found unknown {unknown}")
    mat = np.zeros((len(ids), len(ids)), dtype=bool)
    for a, b in pairs:
        mat[pos[a], pos[b]] = mat[pos[b], pos[a]] = True
    return mat


def partner_slots(cost: np.ndarray, max_partners: int, preferred: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Directed pair slots (seller, buyer): each participant's cheapest partners, both ways.

    Partners are ranked by ``(c[a, b] + c[b, a]) / 2`` (ties by index); every preferred
    pair is added; unreachable pairs are left out. Returns at most ``2 n max_partners``
    (plus two per preferred pair) slots, sorted by buyer then seller.

    >>> c = np.array([[np.inf, 1, 2, 3], [1, np.inf, 1, 2], [2, 1, np.inf, 1], [3, 2, 1, np.inf]])
    >>> s, b = partner_slots(c, 1)
    >>> sorted(zip(s.tolist(), b.tolist()))
    [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    """
    n = cost.shape[0]
    closeness = 0.5 * (cost + cost.T)
    k = min(max_partners, n - 1)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    nearest = np.argsort(closeness, axis=1, kind="stable")[:, :k]
    a = np.repeat(np.arange(n), k)
    b = nearest.ravel()
    keep = np.isfinite(closeness[a, b]) & (a != b)
    a, b = a[keep], b[keep]
    if preferred is not None:
        pa, pb = np.nonzero(np.triu(preferred, 1) & np.isfinite(closeness))
        a, b = np.r_[a, pa], np.r_[b, pb]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.unique(lo.astype(np.int64) * n + hi)
    lo, hi = key // n, key % n
    seller, buyer = np.r_[lo, hi], np.r_[hi, lo]
    order = np.lexsort((seller, buyer))
    return seller[order], buyer[order]


# -- the round's data, shared by both solution methods ----------------------------------
class RoundData:
    """One round's orders laid out on the pair slots (everything a clearing needs).

    While the outside party can sell, no buyer pays more than the retail tariff for a P2P
    kWh (bids above it count as the tariff); while it can buy, no seller takes less than
    the feed-in tariff (asks below it count as the tariff). Network charges then come off
    the bid and on top of the ask, so every trade is individually rational against the
    outside tariffs, charges included.
    """

    def __init__(self, mech: MultiBilateral, orders: OrderArrays, ctx: MarketContext,
                 cuts: NetworkCuts, charges: Charges):
        self.orders, self.ctx, self.cuts, self.charges = orders, ctx, cuts, charges
        self.demand = np.asarray(orders.demand_kwh, float)
        self.supply = np.asarray(orders.supply_kwh, float)
        bid = np.asarray(orders.bid_per_kwh, float)
        ask = np.asarray(orders.ask_per_kwh, float)
        if ctx.import_cap_kwh > QTY_TOL:
            bid = np.minimum(bid, ctx.retail_price_per_kwh)
        if ctx.export_cap_kwh > QTY_TOL:
            ask = np.maximum(ask, ctx.feed_in_price_per_kwh)
        self.eff_bid = bid - charges.buy
        self.eff_ask = ask + charges.sell
        seller, buyer = mech.slot_seller, mech.slot_buyer
        self.active = (self.supply[seller] > QTY_TOL) & (self.demand[buyer] > QTY_TOL) & bool(ctx.p2p)
        #: what buyer j's kWh from seller i is worth to it, and what it costs i [currency/kWh]
        self.value = self.eff_bid[buyer] - mech.slot_cost
        self.cost = self.eff_ask[seller]
        self.import_cap = float(ctx.import_cap_kwh)
        self.export_cap = float(ctx.export_cap_kwh)


# -- central solution: one LP, persistent HiGHS -----------------------------------------
class CentralModel:
    """The multi-bilateral LP for fixed pair slots and `max_cuts` network-cut slots.

    Built once as a Pyomo model and handed once to a persistent HiGHS instance; each
    round writes its data into HiGHS with vectorised change* calls (see
    `cosim.markets.pool` for why appsi's own parameter sync is bypassed).
    """

    VARIABLES = ("trade_kwh", "imported_kwh", "exported_kwh", "shed_kwh", "curtailed_kwh", "injection_kwh")

    def __init__(self, n: int, seller: np.ndarray, buyer: np.ndarray, max_cuts: int):
        self.n, self.max_cuts = n, max_cuts
        self.n_slots = len(seller)
        self.model = m = pyo.ConcreteModel(name="bilateral")
        m.N = pyo.RangeSet(0, n - 1)
        m.S = pyo.RangeSet(0, self.n_slots - 1)
        m.K = pyo.RangeSet(0, max_cuts - 1)
        sales = [[] for _ in range(n)]
        purchases = [[] for _ in range(n)]
        for s, (i, j) in enumerate(zip(seller.tolist(), buyer.tolist(), strict=True)):
            sales[i].append(s)
            purchases[j].append(s)
        self._define_parameters(m)
        self._define_variables(m)
        self._define_balances(m, sales, purchases)
        self._define_network_cuts(m)
        self._define_objective(m)
        self.solver, self.highs, self.col, self.row = attach_highs(
            m, self.VARIABLES,
            ("buyer_balance", "seller_balance", "injection_definition", "network_cut", "import_limit", "export_limit"),
            presolve="off",
        )
        self.highs.changeObjectiveSense(highspy.ObjSense.kMaximize)
        #: cut coefficients now in HiGHS (all 1 as built); rows beyond `_cuts_in_use` are relaxed
        self._cut_coef = np.ones((max_cuts, n))
        self._cuts_in_use = 0

    # -- model pieces -------------------------------------------------------------------
    @staticmethod
    def _define_parameters(m: pyo.ConcreteModel) -> None:
        m.demand_kwh = pyo.Param(m.N, mutable=True, initialize=0.0)
        m.supply_kwh = pyo.Param(m.N, mutable=True, initialize=0.0)
        m.trade_gain = pyo.Param(m.S, mutable=True, initialize=0.0)
        """eff_bid[j] - c_s - eff_ask[i] of each slot [currency/kWh]."""
        m.import_cap_kwh = pyo.Param(mutable=True, initialize=INACTIVE_RHS)
        m.export_cap_kwh = pyo.Param(mutable=True, initialize=INACTIVE_RHS)
        m.voll_per_kwh = pyo.Param(mutable=True, initialize=10.0)
        m.curtail_cost_per_kwh = pyo.Param(mutable=True, initialize=0.1)
        m.cut_coef = pyo.Param(m.K, m.N, mutable=True, initialize=1.0)
        m.cut_rhs = pyo.Param(m.K, mutable=True, initialize=INACTIVE_RHS)

    @staticmethod
    def _define_variables(m: pyo.ConcreteModel) -> None:
        nonneg = pyo.NonNegativeReals
        m.trade_kwh = pyo.Var(m.S, domain=nonneg)
        m.imported_kwh = pyo.Var(m.N, domain=nonneg)
        m.exported_kwh = pyo.Var(m.N, domain=nonneg)
        m.shed_kwh = pyo.Var(m.N, domain=nonneg)
        m.curtailed_kwh = pyo.Var(m.N, domain=nonneg)
        m.injection_kwh = pyo.Var(m.N, domain=pyo.Reals)

    @staticmethod
    def _define_balances(m: pyo.ConcreteModel, sales: list[list[int]], purchases: list[list[int]]) -> None:
        m.buyer_balance = pyo.Constraint(
            m.N, rule=lambda m, n: sum(m.trade_kwh[s] for s in purchases[n]) + m.imported_kwh[n] + m.shed_kwh[n]
            == m.demand_kwh[n]
        )
        m.seller_balance = pyo.Constraint(
            m.N, rule=lambda m, n: sum(m.trade_kwh[s] for s in sales[n]) + m.exported_kwh[n] + m.curtailed_kwh[n]
            == m.supply_kwh[n]
        )
        # = sold + exported - bought - imported, given the two balances
        m.injection_definition = pyo.Constraint(
            m.N, rule=lambda m, n: m.injection_kwh[n] + m.curtailed_kwh[n] - m.shed_kwh[n]
            == m.supply_kwh[n] - m.demand_kwh[n]
        )
        m.import_limit = pyo.Constraint(expr=sum(m.imported_kwh[n] for n in m.N) <= m.import_cap_kwh)
        m.export_limit = pyo.Constraint(expr=sum(m.exported_kwh[n] for n in m.N) <= m.export_cap_kwh)

    @staticmethod
    def _define_network_cuts(m: pyo.ConcreteModel) -> None:
        # coefficients start at 1 so every (cut, participant) entry exists in HiGHS
        m.network_cut = pyo.Constraint(
            m.K, rule=lambda m, k: sum(m.cut_coef[k, n] * m.injection_kwh[n] for n in m.N) <= m.cut_rhs[k]
        )

    @staticmethod
    def _define_objective(m: pyo.ConcreteModel) -> None:
        m.welfare = pyo.Objective(
            expr=sum(m.trade_gain[s] * m.trade_kwh[s] for s in m.S)
            - sum(
                m.voll_per_kwh * m.shed_kwh[n]
                + m.curtail_cost_per_kwh * m.curtailed_kwh[n]
                + OUTSIDE_EPSILON * (m.imported_kwh[n] + m.exported_kwh[n])
                for n in m.N
            ),
            sense=pyo.maximize,
        )

    # -- each round -----------------------------------------------------------------------
    def update(self, d: RoundData, gain: np.ndarray) -> None:
        """Write this round's data into the persistent HiGHS model."""
        h, col, row, n = self.highs, self.col, self.row, self.n
        if len(d.cuts) > self.max_cuts:
            raise ValueError(f"{len(d.cuts)} network cuts exceed the model's {self.max_cuts} slots")
        inf = highspy.kHighsInf
        ns = self.n_slots
        if ns:
            h.changeColsBounds(ns, col["trade_kwh"], np.zeros(ns), np.where(d.active, inf, 0.0))
            h.changeColsCost(ns, col["trade_kwh"], np.where(d.active, gain, 0.0))
        zeros = np.zeros(n)
        for name, upper in (("imported_kwh", d.demand), ("exported_kwh", d.supply), ("shed_kwh", d.demand),
                            ("curtailed_kwh", d.supply)):
            h.changeColsBounds(n, col[name], zeros, upper)
        for name, cost in (("imported_kwh", -OUTSIDE_EPSILON), ("exported_kwh", -OUTSIDE_EPSILON),
                           ("shed_kwh", -d.ctx.voll_per_kwh), ("curtailed_kwh", -d.ctx.curtail_cost)):
            h.changeColsCost(n, col[name], np.full(n, float(cost)))
        h.changeRowsBounds(n, row["buyer_balance"], d.demand, d.demand)
        h.changeRowsBounds(n, row["seller_balance"], d.supply, d.supply)
        h.changeRowsBounds(n, row["injection_definition"], d.supply - d.demand, d.supply - d.demand)
        h.changeRowsBounds(1, row["import_limit"], np.array([-inf]), np.array([min(d.import_cap, INACTIVE_RHS)]))
        h.changeRowsBounds(1, row["export_limit"], np.array([-inf]), np.array([min(d.export_cap, INACTIVE_RHS)]))
        self._update_cuts(d.cuts)

    def _update_cuts(self, cuts: NetworkCuts) -> None:
        """Write the cuts into the first slots; only changed coefficients are sent."""
        h, inj, rows = self.highs, self.col["injection_kwh"], self.row["network_cut"]
        used = len(cuts)
        for k in range(used):
            coef = np.asarray(cuts.coef[k], float)
            for j in np.flatnonzero(coef != self._cut_coef[k]):
                h.changeCoeff(int(rows[k]), int(inj[j]), float(coef[j]))
            self._cut_coef[k] = coef
        touched = max(used, self._cuts_in_use)
        if touched:
            rhs = np.full(touched, INACTIVE_RHS)
            rhs[:used] = cuts.rhs
            h.changeRowsBounds(touched, rows[:touched], np.full(touched, -highspy.kHighsInf), rhs)
        self._cuts_in_use = used

    def solve(self) -> tuple[str, dict[str, np.ndarray], np.ndarray, float]:
        """Solve; returns (status, variable arrays, row duals, welfare). Never raises."""
        h = self.highs
        try:
            h.run()
            status = h.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal:
                # a basis kept from an earlier round can stall HiGHS; retry from scratch
                h.clearSolver()
                h.run()
                status = h.getModelStatus()
        except Exception as err:  # recorded by the caller, never raised into the loop
            return f"solver error: {err}", {}, np.zeros(0), float("nan")
        if status != highspy.HighsModelStatus.kOptimal:
            return f"clearing {h.modelStatusToString(status)}", {}, np.zeros(0), float("nan")
        sol = h.getSolution()
        x = np.asarray(sol.col_value)
        values = {name: x[self.col[name]] for name in self.VARIABLES}
        for name in self.VARIABLES[:-1]:
            values[name] = np.maximum(values[name], 0.0)
        return "ok", values, np.asarray(sol.row_dual), float(h.getInfo().objective_function_value)

    def seller_rent(self, row_dual: np.ndarray) -> np.ndarray:
        """nu_i: dual of seller i's balance, its rent per kWh sold P2P [currency/kWh]."""
        return row_dual[self.row["seller_balance"]]

    def buyer_rent(self, row_dual: np.ndarray) -> np.ndarray:
        """mu_j: dual of buyer j's balance, its rent per kWh bought P2P [currency/kWh]."""
        return row_dual[self.row["buyer_balance"]]


# -- decentralised solution: consensus ADMM --------------------------------------------


class WaterfillLayout:
    """The items of a `waterfill` grouped by agent, and the order that sorts them.

    Built once per negotiation (an agent's items do not change between its iterations).
    Each call sorts the items by (agent, breakpoint) with a stable sort that starts from
    the order of the previous call: breakpoints move little from one ADMM iteration to
    the next, so the sort runs on nearly sorted data.
    """

    def __init__(self, group: np.ndarray, n_groups: int):
        group = np.asarray(group, dtype=np.int64)
        count = np.bincount(group, minlength=n_groups)
        self.n_groups = n_groups
        self.group = group
        self.agents = np.flatnonzero(count > 0)
        """The agents with items, one row each, in agent order."""
        rank = np.cumsum(count > 0) - 1
        self.row = rank[group]
        """Row (rank among the agents with items) of each item."""
        size = count[self.agents]
        self.row_start = np.cumsum(size) - size
        """Position of each row's first item once sorted."""
        self.row_of_position = np.repeat(np.arange(len(self.agents)), size)
        self.position_in_row = (np.arange(len(group)) - self.row_start[self.row_of_position]).astype(float)
        self.order = np.argsort(self.row, kind="stable")
        """Item at each sorted position (rows contiguous); updated by every call."""
        self._same_row = np.diff(self.row_of_position) == 0

    def __len__(self) -> int:
        return len(self.group)

    def sort(self, breakpoint: np.ndarray) -> np.ndarray:
        """Order of the items by (row, breakpoint); remembers it for the next call."""
        lo, hi = float(breakpoint.min()), float(breakpoint.max())
        span = (hi - lo) * 2.0 + 1.0
        key = self.row * span + (breakpoint - lo)
        order = self.order[np.argsort(key[self.order], kind="stable")]
        b = breakpoint[order]
        # the combined key loses ties finer than its rounding: check, and sort exactly if so
        if np.any((b[1:] < b[:-1]) & self._same_row):
            order = np.lexsort((breakpoint, self.row))
        self.order = order
        return order


def waterfill(group: np.ndarray, breakpoint: np.ndarray, quantity: np.ndarray, nu_cap: np.ndarray,
              rho: float, layout: WaterfillLayout | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form best response of many agents at once, one balance each.

    Agent g solves ``min sum_v [g_v v + rho/2 (v - z_v)^2] + nu_cap[g] w`` subject to
    ``sum_v v + w = quantity[g]``, ``v, w >= 0``, where the items v of agent g are those with
    ``group == g``, ``breakpoint = g_v - rho z_v``, and w is the agent's cheapest option with
    a linear cost (``nu_cap = inf`` when it has none). Stationarity gives
    ``v = max(0, (nu - breakpoint) / rho)`` with nu the balance's multiplier, the root of
    the increasing piecewise-linear ``sum_v max(0, nu - breakpoint_v) = rho quantity``,
    capped by nu_cap. The root is found exactly by sorting each agent's breakpoints
    (`WaterfillLayout`, built from `group` unless given). Returns (v per item, w per agent).

    >>> v, w = waterfill(np.array([0, 0, 1]), np.array([-1.0, 0.0, 0.0]), np.array([1.5, 5.0]),
    ...                  np.array([np.inf, 1.0]), 1.0)
    >>> v.tolist(), w.tolist()
    ([1.25, 0.25, 1.0], [0.0, 4.0])
    """
    if layout is None:
        layout = WaterfillLayout(group, len(quantity))
    quantity = np.asarray(quantity, float)
    nu_solve = np.full(len(quantity), np.inf)
    v = np.zeros(len(layout))
    if len(layout):
        b = breakpoint[layout.sort(breakpoint)]
        q = quantity[layout.agents]
        row, start = layout.row_of_position, layout.row_start
        cum = np.cumsum(b)
        base = cum[start] - b[start]  # sum of the rows before
        below = cum - b - base[row]  # sum of the smaller breakpoints of the row
        # the balance's left side when nu is this breakpoint: sum_{l<k} (b_k - b_l)
        level = layout.position_in_row * b - below
        m = np.add.reduceat((level < rho * q[row]).astype(np.int64), start)
        total = cum[start + np.maximum(m - 1, 0)] - base
        nu_solve[layout.agents] = np.where(m > 0, (rho * q + total) / np.maximum(m, 1), np.inf)
    nu_solve[quantity <= 0] = -np.inf
    nu = np.minimum(nu_solve, nu_cap)
    taken = np.zeros(len(quantity))
    if len(layout):
        v = np.maximum(0.0, (nu[layout.group] - breakpoint) / rho)
        v[~np.isfinite(v)] = 0.0
        taken = np.bincount(layout.group, weights=v, minlength=len(quantity))
    w = np.where(nu_solve > nu_cap, np.maximum(quantity - taken, 0.0), 0.0)
    return v, w


def project_capped(a: np.ndarray, cap: float) -> np.ndarray:
    """Euclidean projection of `a` onto ``{o >= 0, sum o <= cap}``.

    >>> project_capped(np.array([3.0, 1.0, -1.0]), 2.0).tolist()
    [2.0, 0.0, 0.0]
    """
    o = np.maximum(a, 0.0)
    if o.sum() <= cap:
        return o
    desc = np.sort(o)[::-1]
    theta = (np.cumsum(desc) - cap) / np.arange(1, len(desc) + 1)
    k = np.flatnonzero(desc - theta > 0)[-1]
    return np.maximum(o - theta[k], 0.0)


class CutProjection:
    """The DSO's step: project its copies of curtailment and shedding onto the network cuts.

    Copies o = (curtailed at the sellers, shed at the buyers) must satisfy
    ``coef (supply - demand - curtailed + shed) <= rhs``, i.e. ``A o <= b``. The projection
    ``argmin ||o - a||^2, A o <= b`` is ``a - A' pi`` with pi >= 0 the solution of the small
    dual ``min 1/2 pi' A A' pi - pi' (A a - b)`` (one entry per cut), solved as a
    non-negative least-squares problem.
    """

    def __init__(self, cuts: NetworkCuts, supply: np.ndarray, demand: np.ndarray,
                 sellers: np.ndarray, buyers: np.ndarray):
        coef = np.asarray(cuts.coef, float)
        self.A = np.hstack([-coef[:, sellers], coef[:, buyers]])
        self.b = np.asarray(cuts.rhs, float) - coef @ (supply - demand)
        gram = self.A @ self.A.T
        ridge = 1e-12 * (np.trace(gram) / max(len(gram), 1) + 1.0)
        self.R = cholesky(gram + ridge * np.eye(len(gram)), lower=False)

    def project(self, a: np.ndarray) -> np.ndarray:
        h = self.A @ a - self.b
        if np.all(h <= 0):
            return a
        pi, _ = nnls(self.R, solve_triangular(self.R, h, trans="T"), maxiter=50 * len(h) + 100)
        return a - self.A.T @ pi


class Side:
    """One side (sellers or buyers) of every prosumer's ADMM step.

    Each prosumer with a positive `quantity` on this side balances it over its pair
    proposals (items with `pair_owner`, `pair_breakpoint`) and its options (export and
    curtail for a seller, import and shed for a buyer). An option is either absent,
    linear (``coef`` = cost per kWh) or quadratic (shared with another peer: ``coef`` =
    its breakpoint ``g - rho z``). `layout` (the water-filling table of the pair items
    and the quadratic options) depends only on that structure; pass the one of an
    earlier `Side` of the same negotiation to reuse it.
    """

    def __init__(self, quantity: np.ndarray, pair_owner: np.ndarray, pair_breakpoint: np.ndarray,
                 options: dict[str, tuple[np.ndarray, bool, np.ndarray]], layout: WaterfillLayout | None = None):
        self.quantity = quantity
        self.pair_owner = pair_owner
        self.pair_breakpoint = pair_breakpoint
        self.options = options
        """name -> (available per prosumer, quadratic?, coef per prosumer)."""
        self.quadratic = [(name, np.flatnonzero(available)) for name, (available, quad, _) in options.items() if quad]
        self.linear = [name for name, (_, quad, _) in options.items() if not quad]
        if layout is None:
            group = np.concatenate([pair_owner, *[idx for _, idx in self.quadratic]]).astype(np.int64)
            layout = WaterfillLayout(group, len(quantity))
        self.layout = layout


def vectorised_best_response(side: Side, rho: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every prosumer's step on one side at once (closed form, `waterfill`)."""
    n = len(side.quantity)
    cap = np.full(n, np.inf)
    cheapest = np.full(n, -1)
    for k, name in enumerate(side.linear):
        available, _, coef = side.options[name]
        c = np.where(available, coef, np.inf)
        better = c < cap
        cap = np.where(better, c, cap)
        cheapest = np.where(better, k, cheapest)
    breakpoints = [side.pair_breakpoint, *[side.options[name][2][idx] for name, idx in side.quadratic]]
    v, w = waterfill(side.layout.group, np.concatenate(breakpoints), side.quantity, cap, rho, side.layout)
    n_pairs = len(side.pair_owner)
    out = {name: np.zeros(n) for name in side.options}
    offset = n_pairs
    for name, idx in side.quadratic:
        out[name][idx] = v[offset:offset + len(idx)]
        offset += len(idx)
    for k, name in enumerate(side.linear):
        out[name] += np.where(cheapest == k, w, 0.0)
    return v[:n_pairs], out


class ProsumerModels:
    """One persistent Pyomo model per prosumer for its ADMM step, solved by HiGHS (QP).

    The same problem `vectorised_best_response` solves in closed form: for prosumer n,

        minimise  sum_v coef_v v + rho/2 sum_{quadratic v} v^2
        sum sales + exported + curtailed = supply[n],  sum purchases + imported + shed = demand[n]

    over its slots (inactive slots and absent options bounded to 0); ``coef = g - rho z``
    for a shared quantity (the proximal term without its constant), the cost for an
    option with a linear cost. Built once per run (Pyomo, then HiGHS through Pyomo's
    persistent interface); each step only writes costs, bounds and, when rho or the
    pattern of shared options changes, the diagonal Hessian.
    """

    OPTION_VARS = {"exported": "exported_kwh", "curtailed": "curtailed_kwh",
                   "imported": "imported_kwh", "shed": "shed_kwh"}

    def __init__(self, n: int, sales: list[list[int]], purchases: list[list[int]]):
        from pyomo.contrib.solver.solvers.highs import Highs as PersistentHighs

        self.n, self.sales, self.purchases = n, sales, purchases
        self.highs: list[highspy.Highs] = []
        self.cols: list[dict[str, np.ndarray]] = []
        self.rows: list[np.ndarray] = []
        self._hessian_key: list[tuple | None] = [None] * n
        for k in range(n):
            m = self._build(len(sales[k]), len(purchases[k]))
            solver = PersistentHighs()
            solver.set_instance(m)
            h = solver._solver_model
            h.setOptionValue("output_flag", False)
            h.setOptionValue("log_to_console", False)
            vmap, cmap = solver._pyomo_var_to_solver_var_map, solver._pyomo_con_to_solver_con_map
            cols = {name: np.array([vmap[id(v)] for v in getattr(m, name).values()], dtype=np.int32)
                    for name in ("sale_kwh", "purchase_kwh", *self.OPTION_VARS.values())}
            self.highs.append(h)
            self.cols.append(cols)
            self.rows.append(np.array([cmap[m.seller_balance], cmap[m.buyer_balance]], dtype=np.int32))

    @staticmethod
    def _build(n_sales: int, n_purchases: int) -> pyo.ConcreteModel:
        m = pyo.ConcreteModel(name="prosumer")
        m.SALES = pyo.RangeSet(0, n_sales - 1)
        m.PURCHASES = pyo.RangeSet(0, n_purchases - 1)
        nonneg = pyo.NonNegativeReals
        m.sale_kwh = pyo.Var(m.SALES, domain=nonneg)
        m.purchase_kwh = pyo.Var(m.PURCHASES, domain=nonneg)
        m.exported_kwh = pyo.Var(domain=nonneg)
        m.curtailed_kwh = pyo.Var(domain=nonneg)
        m.imported_kwh = pyo.Var(domain=nonneg)
        m.shed_kwh = pyo.Var(domain=nonneg)
        m.supply_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.demand_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.rho = pyo.Param(mutable=True, initialize=1.0)
        m.sale_coef = pyo.Param(m.SALES, mutable=True, initialize=0.0)
        m.purchase_coef = pyo.Param(m.PURCHASES, mutable=True, initialize=0.0)
        m.option_coef = pyo.Param(["exported", "curtailed", "imported", "shed"], mutable=True, initialize=0.0)
        m.seller_balance = pyo.Constraint(
            expr=sum(m.sale_kwh[s] for s in m.SALES) + m.exported_kwh + m.curtailed_kwh == m.supply_kwh
        )
        m.buyer_balance = pyo.Constraint(
            expr=sum(m.purchase_kwh[s] for s in m.PURCHASES) + m.imported_kwh + m.shed_kwh == m.demand_kwh
        )
        options = {"exported": m.exported_kwh, "curtailed": m.curtailed_kwh, "imported": m.imported_kwh,
                   "shed": m.shed_kwh}
        m.proposal_cost = pyo.Objective(
            expr=sum(m.sale_coef[s] * m.sale_kwh[s] + m.rho / 2 * m.sale_kwh[s] ** 2 for s in m.SALES)
            + sum(m.purchase_coef[s] * m.purchase_kwh[s] + m.rho / 2 * m.purchase_kwh[s] ** 2 for s in m.PURCHASES)
            + sum(m.option_coef[name] * var + m.rho / 2 * var**2 for name, var in options.items()),
            sense=pyo.minimize,
        )
        return m

    def best_response(self, sellers: Side, buyers: Side, slot_seller_index: np.ndarray,
                      slot_buyer_index: np.ndarray, active: np.ndarray, rho: float
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """Solve every prosumer's model; same returns as two `vectorised_best_response` calls.

        `active` lists the active slots in the order of the sides' pair items;
        ``slot_seller_index[s]`` / ``slot_buyer_index[s]`` is slot s's position in its
        seller's sales / its buyer's purchases.
        """
        n = self.n
        sell_coef = [np.zeros(len(s)) for s in self.sales]
        sell_on = [np.zeros(len(s), dtype=bool) for s in self.sales]
        buy_coef = [np.zeros(len(p)) for p in self.purchases]
        buy_on = [np.zeros(len(p), dtype=bool) for p in self.purchases]
        for k, s in enumerate(active.tolist()):
            i, j = int(sellers.pair_owner[k]), int(buyers.pair_owner[k])
            sell_coef[i][slot_seller_index[s]] = sellers.pair_breakpoint[k]
            sell_on[i][slot_seller_index[s]] = True
            buy_coef[j][slot_buyer_index[s]] = buyers.pair_breakpoint[k]
            buy_on[j][slot_buyer_index[s]] = True
        out_s = {name: np.zeros(n) for name in sellers.options}
        out_b = {name: np.zeros(n) for name in buyers.options}
        x_by = [np.zeros(len(s)) for s in self.sales]
        y_by = [np.zeros(len(p)) for p in self.purchases]
        inf = highspy.kHighsInf
        for k in np.flatnonzero((sellers.quantity > 0) | (buyers.quantity > 0)):
            h, cols = self.highs[k], self.cols[k]
            opt_cost, opt_upper, opt_quad = {}, {}, {}
            for side in (sellers, buyers):
                for name, (available, quad, coef) in side.options.items():
                    opt_cost[name] = float(coef[k]) if available[k] else 0.0
                    opt_upper[name] = inf if available[k] and side.quantity[k] > 0 else 0.0
                    opt_quad[name] = bool(quad and available[k] and side.quantity[k] > 0)
            names = list(self.OPTION_VARS)
            idx = np.concatenate([cols["sale_kwh"], cols["purchase_kwh"],
                                  *[cols[self.OPTION_VARS[name]] for name in names]]).astype(np.int32)
            cost = np.concatenate([sell_coef[k], buy_coef[k], [opt_cost[name] for name in names]])
            upper = np.concatenate([np.where(sell_on[k], inf, 0.0), np.where(buy_on[k], inf, 0.0),
                                    [opt_upper[name] for name in names]])
            quad = np.concatenate([sell_on[k], buy_on[k], [opt_quad[name] for name in names]])
            h.changeColsCost(len(idx), idx, cost)
            h.changeColsBounds(len(idx), idx, np.zeros(len(idx)), upper)
            q = np.array([sellers.quantity[k], buyers.quantity[k]])
            h.changeRowsBounds(2, self.rows[k], q, q)
            self._set_hessian(k, idx[quad], rho)
            h.run()
            x = np.asarray(h.getSolution().col_value)
            x_by[k] = np.maximum(x[cols["sale_kwh"]], 0.0)
            y_by[k] = np.maximum(x[cols["purchase_kwh"]], 0.0)
            for name in names:
                value = max(float(x[cols[self.OPTION_VARS[name]][0]]), 0.0)
                (out_s if name in out_s else out_b)[name][k] = value
        x = np.array([x_by[int(sellers.pair_owner[k])][slot_seller_index[s]] for k, s in enumerate(active.tolist())])
        y = np.array([y_by[int(buyers.pair_owner[k])][slot_buyer_index[s]] for k, s in enumerate(active.tolist())])
        return x.reshape(-1), out_s, y.reshape(-1), out_b

    def _set_hessian(self, k: int, quad_cols: np.ndarray, rho: float) -> None:
        key = (tuple(quad_cols.tolist()), rho)
        if key == self._hessian_key[k]:
            return
        h = self.highs[k]
        dim = h.getNumCol()
        diag = np.zeros(dim)
        diag[quad_cols] = rho
        nz = np.flatnonzero(diag)
        start = np.searchsorted(nz, np.arange(dim)).astype(np.int32)
        h.passHessian(dim, len(nz), int(highspy.HessianFormat.kTriangular), start, nz.astype(np.int32),
                      diag[nz])
        self._hessian_key[k] = key


class AdmmNegotiation:
    """Consensus ADMM between the prosumers (and the outside party and DSO when they bind).

    Exchanged each iteration: each prosumer's proposals for its active slots (and its
    import/export or curtail/shed proposals when those are shared), the pair prices
    lambda and the averages z. No agent sees another's bid, ask or quantity.

    With ``admm_warm_start`` a negotiation opens at the prices and averages the last one
    ended with on the slots active in both (the feedback's re-clearing of a round, and
    the next round, start close to the answer); other slots open at the middle of the
    pair's bid and ask, with nothing proposed.
    """

    def __init__(self, n: int, seller: np.ndarray, buyer: np.ndarray, options: BilateralOptions):
        self.n, self.seller, self.buyer, self.options = n, seller, buyer, options
        sales = [[] for _ in range(n)]
        purchases = [[] for _ in range(n)]
        self.slot_seller_index = np.zeros(len(seller), dtype=np.int64)
        self.slot_buyer_index = np.zeros(len(seller), dtype=np.int64)
        for s, (i, j) in enumerate(zip(seller.tolist(), buyer.tolist(), strict=True)):
            self.slot_seller_index[s] = len(sales[i])
            self.slot_buyer_index[s] = len(purchases[j])
            sales[i].append(s)
            purchases[j].append(s)
        self.models = ProsumerModels(n, sales, purchases) if options.admm_local_solver == "pyomo" else None
        self.history: list[tuple[float, float, float]] = []
        """(residual, move [kWh], rho) of each iteration of the last negotiation."""
        self._last_price = np.full(len(seller), np.nan)
        self._last_average = np.zeros(len(seller))
        self._last_option_price: dict[str, np.ndarray] = {}
        self._last_rho = 0.0

    def reset(self) -> None:
        """Forget the last negotiation (the next one opens cold)."""
        self._last_price[:] = np.nan
        self._last_average[:] = 0.0
        self._last_option_price = {}
        self._last_rho = 0.0

    def _best_response(self, sellers: Side, buyers: Side, active: np.ndarray, rho: float):
        if self.models is not None:
            return self.models.best_response(sellers, buyers, self.slot_seller_index, self.slot_buyer_index,
                                             active, rho)
        x, out_s = vectorised_best_response(sellers, rho)
        y, out_b = vectorised_best_response(buyers, rho)
        return x, out_s, y, out_b

    def negotiate(self, d: RoundData) -> dict:
        """Run the ADMM for one round; returns the allocation, prices and convergence figures.

        Stopping rule: every pair's (and shared option's) two proposals agree to within
        ``admm_tolerance_kwh`` (primal residual) and no price moved by more than
        ``admm_price_tolerance_per_kwh`` in the last iteration (dual residual, rho times the
        move of the averages); or ``admm_max_iterations``.
        """
        opts, n, ctx = self.options, self.n, d.ctx
        active = np.flatnonzero(d.active)
        si, bj = self.seller[active], self.buyer[active]
        cost, value = d.cost[active], d.value[active]
        is_seller, is_buyer = d.supply > QTY_TOL, d.demand > QTY_TOL
        supply, demand = np.where(is_seller, d.supply, 0.0), np.where(is_buyer, d.demand, 0.0)

        def mode(cap: float) -> str:
            return "absent" if cap <= QTY_TOL else ("linear" if cap >= UNLIMITED_KWH else "shared")

        import_mode, export_mode = mode(d.import_cap), mode(d.export_cap)
        sellers_idx, buyers_idx = np.flatnonzero(is_seller), np.flatnonzero(is_buyer)
        dso = CutProjection(d.cuts, supply, demand, sellers_idx, buyers_idx) if len(d.cuts) else None
        # options shared with another peer (outside party, DSO); the others have a linear cost
        shared = [name for name, on in (("exported", export_mode == "shared"), ("imported", import_mode == "shared"),
                                        ("curtailed", dso is not None), ("shed", dso is not None)) if on]
        base_cost = {"exported": OUTSIDE_EPSILON, "imported": OUTSIDE_EPSILON, "curtailed": ctx.curtail_cost,
                     "shed": ctx.voll_per_kwh}
        available = {"exported": is_seller & (export_mode != "absent"), "curtailed": is_seller,
                     "imported": is_buyer & (import_mode != "absent"), "shed": is_buyer}

        # consensus state, flat: averages z and prices of the pair slots, then of each shared
        # option per prosumer (the prosumer pays its option's price to the other peer)
        part = {"pairs": slice(0, len(active))}
        for k, name in enumerate(shared):
            part[name] = slice(len(active) + k * n, len(active) + (k + 1) * n)
        z = np.zeros(len(active) + len(shared) * n)
        price = np.zeros_like(z)
        price[part["pairs"]] = 0.5 * (cost + value)  # opening offer: the middle of bid and ask
        rho = opts.admm_rho
        if opts.admm_warm_start and self._last_rho > 0:  # or where the last negotiation ended
            last = self._last_price[active]
            warm = np.isfinite(last)
            price[part["pairs"]][warm] = last[warm]
            cap = np.minimum(supply[si], demand[bj])
            z[part["pairs"]][warm] = np.minimum(self._last_average[active][warm], cap[warm])
            for name in shared:
                if name in self._last_option_price:
                    price[part[name]] = self._last_option_price[name]
            rho = self._last_rho

        tol, price_tol = opts.admm_tolerance_kwh, opts.admm_price_tolerance_per_kwh
        layouts: dict[str, WaterfillLayout | None] = {"sellers": None, "buyers": None}
        converged, residual, move = False, np.inf, np.inf
        self.history = history = []
        for iterations in range(1, opts.admm_max_iterations + 1):
            lam, zp = price[part["pairs"]], z[part["pairs"]]
            # an option's cost per kWh; a shared one's proximal breakpoint g - rho z, g = cost + price
            options = {
                name: (available[name], True, base_cost[name] + price[part[name]] - rho * z[part[name]])
                if name in shared else (available[name], False, np.full(n, base_cost[name]))
                for name in base_cost
            }
            # every prosumer's step (in parallel): its proposals, given the prices and averages
            sellers = Side(supply, si, (cost - lam) - rho * zp, {k: options[k] for k in ("exported", "curtailed")},
                           layouts["sellers"])
            buyers = Side(demand, bj, (lam - value) - rho * zp, {k: options[k] for k in ("imported", "shed")},
                          layouts["buyers"])
            layouts["sellers"], layouts["buyers"] = sellers.layout, buyers.layout
            x, out_s, y, out_b = self._best_response(sellers, buyers, active, rho)
            mine = {**out_s, **out_b}
            # the other peers' copies of the shared options: projections onto their limits
            other = {}
            for name, cap, idx in (("exported", d.export_cap, sellers_idx), ("imported", d.import_cap, buyers_idx)):
                if name in shared:
                    other[name] = np.zeros(n)
                    a = z[part[name]] + price[part[name]] / rho
                    other[name][idx] = project_capped(a[idx], cap)
            if dso is not None:
                a = np.r_[(z[part["curtailed"]] + price[part["curtailed"]] / rho)[sellers_idx],
                          (z[part["shed"]] + price[part["shed"]] / rho)[buyers_idx]]
                o = dso.project(a)
                other["curtailed"], other["shed"] = np.zeros(n), np.zeros(n)
                other["curtailed"][sellers_idx] = o[:len(sellers_idx)]
                other["shed"][buyers_idx] = o[len(sellers_idx):]
            # averages and prices: the payer's copy (buyer, prosumer) against the payee's
            # (seller, outside party or DSO); over-relaxed (Boyd et al. 2011, sec. 3.4.3)
            payer = np.concatenate([y, *[mine[k] for k in shared]])
            payee = np.concatenate([x, *[other[k] for k in shared]])
            z_new = ADMM_RELAXATION * 0.5 * (payer + payee) + (1 - ADMM_RELAXATION) * z
            price = price + ADMM_RELAXATION * 0.5 * rho * (payer - payee)
            residual = float(np.max(np.abs(payer - payee), initial=0.0))
            move = float(np.max(np.abs(z_new - z), initial=0.0))
            z = z_new
            history.append((residual, move, rho))
            primal, dual = residual / tol, rho * move / price_tol
            if primal <= 1.0 and dual <= 1.0:
                converged = True
                break
            # residual balancing (Boyd et al. 2011, sec. 3.4.1), on the residuals scaled by their tolerances
            if opts.admm_adaptive_rho and iterations % ADMM_RHO_PERIOD == 0 and iterations <= ADMM_RHO_ADAPT_UNTIL:
                if primal > ADMM_RHO_BALANCE * dual:
                    rho = min(2 * rho, ADMM_RHO_RANGE * opts.admm_rho)
                elif dual > ADMM_RHO_BALANCE * primal:
                    rho = max(rho / 2, opts.admm_rho / ADMM_RHO_RANGE)

        lam = price[part["pairs"]]
        self._last_price[:] = np.nan
        self._last_price[active] = lam
        self._last_average[:] = 0.0
        self._last_average[active] = z[part["pairs"]]
        self._last_option_price = {name: price[part[name]].copy() for name in shared}
        self._last_rho = rho

        # the trades both sides agree on; what either proposed beyond them falls back
        t = np.minimum(x, y)
        t[t < TRADE_ZERO_KWH] = 0.0
        sold = np.bincount(si, weights=t, minlength=n)
        bought = np.bincount(bj, weights=t, minlength=n)
        alloc = {name: mine.get(name, np.zeros(n)).copy() for name in ("exported", "curtailed", "imported", "shed")}
        for name in ("exported", "imported"):
            if name in shared:  # never more than the outside party agreed to
                alloc[name] = np.maximum(np.minimum(mine[name], other[name]), 0.0)
        # (quantities below QTY_TOL take no part in the negotiation: they fall back too)
        rest_s = np.maximum(d.supply - sold - alloc["exported"] - alloc["curtailed"], 0.0)
        rest_b = np.maximum(d.demand - bought - alloc["imported"] - alloc["shed"], 0.0)
        # to the outside party while it has room, then curtailed or shed
        for rest, outside, last, room in ((rest_s, "exported", "curtailed", d.export_cap),
                                          (rest_b, "imported", "shed", d.import_cap)):
            room = max(min(room, INACTIVE_RHS) - alloc[outside].sum(), 0.0)
            share = min(1.0, room / rest.sum()) if rest.sum() > 0 else 0.0
            alloc[outside] += share * rest
            alloc[last] += (1.0 - share) * rest
        # a prosumer whose own proposals overshoot (by the tolerance) gives up its fallback first
        for q, traded, names in ((d.supply, sold, ("exported", "curtailed")), (d.demand, bought, ("imported", "shed"))):
            over = np.maximum(traded + alloc[names[0]] + alloc[names[1]] - q, 0.0)
            for name in names:
                cut = np.minimum(over, alloc[name])
                alloc[name] -= cut
                over -= cut
        trade = np.zeros(len(self.seller))
        trade[active] = t
        slot_price = np.full(len(self.seller), np.nan)
        slot_price[active] = lam
        return {
            "trade_kwh": trade, "imported_kwh": alloc["imported"], "exported_kwh": alloc["exported"],
            "shed_kwh": alloc["shed"], "curtailed_kwh": alloc["curtailed"], "price": slot_price,
            "converged": converged, "iterations": iterations, "residual_kwh": residual, "move_kwh": move,
            "rho": rho,
        }


# -- the mechanism ----------------------------------------------------------------------
class MultiBilateral(Mechanism):
    """Multi-bilateral P2P market with product differentiation (Sorin, Bobo and Pinson 2019).

    See the module docstring for the formulation, prices and the two solution methods.
    """

    name = "bilateral"
    Options = BilateralOptions

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        opts: BilateralOptions = self.options
        n = len(self.ids)
        cost = preference_costs(self.participants, opts)
        preferred = preferred_matrix(self.ids, opts.preferred_pairs) if opts.preferred_pairs else None
        self.slot_seller, self.slot_buyer = partner_slots(cost, opts.max_partners, preferred)
        self.slot_cost = cost[self.slot_seller, self.slot_buyer]
        """Preference cost c_s of each slot [currency/kWh]."""
        need_central = opts.solve == "central" or opts.admm_audit
        self.central = CentralModel(n, self.slot_seller, self.slot_buyer, max_cuts) if need_central else None
        self.admm = AdmmNegotiation(n, self.slot_seller, self.slot_buyer, opts) if opts.solve == "admm" else None

    @property
    def n_slots(self) -> int:
        """Number of pair (trade) variables."""
        return len(self.slot_seller)

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        if len(cuts) > self.max_cuts:
            return failed_result(f"{len(cuts)} network cuts exceed the model's {self.max_cuts} slots", n, charges)
        d = RoundData(self, orders, ctx, cuts, charges)
        if n == 0:  # nobody to clear
            empty = {name: np.zeros(0) for name in ("imported_kwh", "exported_kwh", "shed_kwh", "curtailed_kwh")}
            return self._result(d, {"trade_kwh": np.zeros(0), **empty}, np.zeros(0), 0.0, {"solve": "none"})
        if self.options.solve == "admm":
            return self._clear_admm(d)
        return self._clear_central(d)

    # -- central ------------------------------------------------------------------------
    def _solve_central(self, d: RoundData) -> tuple[str, dict, np.ndarray, float]:
        self.central.update(d, d.value - d.cost)
        status, x, duals, welfare = self.central.solve()
        if status != "ok":
            return status, x, np.zeros(0), welfare
        # the reciprocity dual of each pair, read off its seller's balance
        price = d.cost + self.central.seller_rent(duals)[self.slot_seller]
        return status, x, price, welfare

    def _clear_central(self, d: RoundData) -> ClearingResult:
        t0 = time.perf_counter()
        status, x, price, welfare = self._solve_central(d)
        if status != "ok":
            return failed_result(status, len(self.ids), d.charges)
        info = {"solve": "central", "clear_ms": 1e3 * (time.perf_counter() - t0)}
        return self._result(d, x, price, welfare, info)

    # -- decentralised ------------------------------------------------------------------
    def _clear_admm(self, d: RoundData) -> ClearingResult:
        t0 = time.perf_counter()
        out = self.admm.negotiate(d)
        admm_ms = 1e3 * (time.perf_counter() - t0)
        welfare = self.welfare(d, out)
        info = {
            "solve": "admm",
            "admm_iterations": out["iterations"],
            "admm_converged": out["converged"],
            "admm_residual_kwh": out["residual_kwh"],
            "admm_rho": out["rho"],
            "admm_ms": admm_ms,
            "admm_gap": float("nan"),
        }
        if self.central is not None:  # the audit: how far the negotiation is from the optimum
            status, _, _, best = self._solve_central(d)
            if status == "ok":
                info["admm_gap"] = best - welfare
                info["admm_gap_rel"] = (best - welfare) / max(abs(best), 1e-9)
                info["central_welfare"] = best
        if not out["converged"]:  # no agreement: recorded as a failed clearing, like a solver failure
            result = failed_result(
                f"admm: no agreement within {out['iterations']} iterations (residual "
                f"{out['residual_kwh']:.2e} kWh)", len(self.ids), d.charges,
            )
            result.info = info
            return result
        return self._result(d, out, out["price"], welfare, info)

    def welfare(self, d: RoundData, x: dict) -> float:
        """The clearing objective of an allocation [currency]."""
        ctx = d.ctx
        return float(
            np.where(d.active, d.value - d.cost, 0.0) @ x["trade_kwh"]
            - ctx.voll_per_kwh * x["shed_kwh"].sum() - ctx.curtail_cost * x["curtailed_kwh"].sum()
            - OUTSIDE_EPSILON * (x["imported_kwh"].sum() + x["exported_kwh"].sum())
        )

    # -- result -------------------------------------------------------------------------
    def _result(self, d: RoundData, x: dict, price: np.ndarray, welfare: float, info: dict) -> ClearingResult:
        n = len(self.ids)
        t = np.where(d.active, x["trade_kwh"], 0.0)
        t[t < TRADE_ZERO_KWH] = 0.0
        # prices: the pair dual, kept inside the trade's individually rational interval
        lo, hi = d.cost, d.value
        ir = np.where(lo <= hi, np.clip(price, lo, hi), 0.5 * (lo + hi))
        price = np.where(np.isfinite(price), ir, 0.5 * (lo + hi))
        seller, buyer = self.slot_seller, self.slot_buyer
        bought = np.bincount(buyer, weights=t, minlength=n)
        sold = np.bincount(seller, weights=t, minlength=n)
        paid = np.bincount(buyer, weights=t * price, minlength=n)
        received = np.bincount(seller, weights=t * price, minlength=n)
        with np.errstate(divide="ignore", invalid="ignore"):
            buy_price = np.where(bought > 0, paid / bought, np.nan)
            sell_price = np.where(sold > 0, received / sold, np.nan)
        traded = np.flatnonzero(t > 0)
        info["p2p_trades"] = len(traded)
        info["mean_price_per_kwh"] = float(paid.sum() / bought.sum()) if bought.sum() > 0 else float("nan")
        info["slots_active"] = int(d.active.sum())
        result = ClearingResult(
            status="ok",
            bought_kwh=bought,
            sold_kwh=sold,
            import_kwh=x["imported_kwh"],
            export_kwh=x["exported_kwh"],
            curtailed_kwh=x["curtailed_kwh"],
            shed_kwh=x["shed_kwh"],
            buy_price_per_kwh=buy_price,
            sell_price_per_kwh=sell_price,
            charges=d.charges,
            price_per_kwh=float("nan"),
            welfare=welfare,
            info=info,
        )
        ids = np.asarray(self.ids, dtype=object)
        p2p = pd.DataFrame({
            "seller": ids[seller[traded]],
            "buyer": ids[buyer[traded]],
            "energy_kwh": t[traded],
            "price_per_kwh": price[traded],
            "seller_price_per_kwh": price[traded],
            "network_charge_per_kwh": d.charges.sell[seller[traded]] + d.charges.buy[buyer[traded]],
        }, columns=TRADE_COLUMNS)
        outside = pd.DataFrame(outside_trades(result, self.ids, d.ctx), columns=TRADE_COLUMNS)
        parts = [table for table in (p2p, outside) if len(table)]
        result.trades = pd.concat(parts, ignore_index=True) if parts else p2p
        return result


def failed_result(status: str, n: int, charges: Charges) -> ClearingResult:
    zeros = np.zeros(n)
    return ClearingResult(
        status, zeros, zeros, zeros, zeros, zeros, zeros, np.full(n, np.nan), np.full(n, np.nan),
        charges, float("nan"),
    )


MECHANISMS = [MultiBilateral]
