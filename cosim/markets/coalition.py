"""The coalitional game's math: coalition values (the members' double auction in closed
form, or the pool LP), the Shapley value (exact and sampled), the core check and the
least core (a persistent Pyomo/HiGHS LP, then a QP stage). See `cosim.markets.shapley`
for the game these value."""

from __future__ import annotations

import math
from dataclasses import dataclass

import highspy
import numpy as np
import pyomo.environ as pyo
from scipy.stats import norm

from cosim.markets.base import QTY_TOL, Charges, MarketContext, NetworkCuts, OrderArrays
from cosim.markets.highs import attach_highs
from cosim.markets.pool import OUTSIDE_EPSILON, PoolModel

#: Values and shares below this count as zero [currency].
VALUE_TOL = 1e-9
#: An allocation is in the core when no coalition's excess exceeds this [currency].
CORE_TOL = 1e-7
#: Slack on eps* when the least-core LP's second stage holds eps at its optimum (in units
#: of the game's largest coalition value: the least core is solved normalised).
LEAST_CORE_SLACK = 1e-10
#: Most iterations of the least-core QP stage. It takes a dozen on 6 players; on a game
#: worth ~1e-4 solved unnormalised, HiGHS's QP solver was seen cycling without end.
QP_ITERATION_LIMIT = 10_000


# -- the game (pure functions) ----------------------------------------------------------------
def subset_matrix(p: int) -> np.ndarray:
    """[2^p x p] membership of player i (column) in coalition `mask` (row): bit i of mask.

    >>> subset_matrix(2).astype(int).tolist()
    [[0, 0], [1, 0], [0, 1], [1, 1]]
    """
    masks = np.arange(2**p)
    return ((masks[:, None] >> np.arange(p)[None, :]) & 1).astype(bool)


def matching_values(members: np.ndarray, demand: np.ndarray, supply: np.ndarray, value: np.ndarray,
                    cost: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The declared welfare of a double auction among each coalition's members alone, for
    many coalitions at once [currency]: row c of `members` [coalitions x participants]
    says who may trade. The members' bids (`value`, net of their charges) sorted from the
    highest and their asks (`cost`) from the lowest, the market trades every kWh whose bid
    beats its ask by more than -`margin` (the pool's tie-break: ``2 * OUTSIDE_EPSILON``):
    up to Q = max_i min(D_i, S_J(i)), with D_i the members' demand of the i highest bids and
    S_J(i) their supply of the asks that bid i beats; the welfare is what the bids of the
    first Q kWh are worth less what their asks cost. This is the pool's optimum when no
    network cut, outside cap, shedding or curtailment binds (`PoolGame.closed_form`).

    Two buyers (1 kWh at 0.30, 1 kWh at 0.20), one seller (1.5 kWh at 0.10): together they
    trade 1.5 kWh worth 0.30 + 0.5 x 0.20 - 1.5 x 0.10 = 0.25; without the first buyer,
    1 kWh worth 0.10.

    >>> members = np.array([[True, True, True], [False, True, True]])
    >>> matching_values(members, np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.5]),
    ...                 np.array([0.30, 0.20, 0.0]), np.array([0.0, 0.0, 0.10])).round(12).tolist()
    [0.25, 0.1]
    """
    buyers, sellers = np.flatnonzero(demand > 0.0), np.flatnonzero(supply > 0.0)
    out = np.zeros(len(members))
    if len(buyers) == 0 or len(sellers) == 0:
        return out
    buyers = buyers[np.argsort(-value[buyers], kind="stable")]
    sellers = sellers[np.argsort(cost[sellers], kind="stable")]
    bid, ask = value[buyers], cost[sellers]
    beaten = np.searchsorted(ask, bid + margin, side="left")  # asks each bid beats by more than -margin
    d = members[:, buyers] * demand[buyers]  # [c x buyers]
    s = members[:, sellers] * supply[sellers]
    cd, cs = np.cumsum(d, axis=1), np.cumsum(s, axis=1)
    cs0 = np.concatenate([np.zeros((len(members), 1)), cs], axis=1)  # supply of the first j asks
    q = np.minimum(cd, cs0[:, beaten]).max(axis=1)  # [c]
    cd0 = np.concatenate([np.zeros((len(members), 1)), cd[:, :-1]], axis=1)
    bought = np.clip(q[:, None] - cd0, 0.0, d)
    sold = np.clip(q[:, None] - cs0[:, :-1], 0.0, s)
    return bought @ bid - sold @ ask


def shapley_exact(values: np.ndarray) -> np.ndarray:
    """Shapley value of the game given by `values[mask]` over all 2^p coalitions.

    ``phi_i = sum_{S not containing i} |S|! (p - |S| - 1)! / p! (v(S + i) - v(S))``.
    The glove game with one left glove (player 0) and two right gloves, whose Shapley
    value is (2/3, 1/6, 1/6) (Maschler, Solan and Zamir 2013, "Game Theory", ch. 18):

    >>> v = np.array([0, 0, 0, 1, 0, 1, 0, 1], float)  # v(S) = min(#left, #right)
    >>> np.round(shapley_exact(v), 6).tolist()
    [0.666667, 0.166667, 0.166667]
    """
    n_masks = len(values)
    p = n_masks.bit_length() - 1
    if 2**p != n_masks:
        raise ValueError(f"expected 2^p coalition values, found {n_masks}")
    masks = np.arange(n_masks)
    size = subset_matrix(p).sum(axis=1) if p else np.zeros(1, dtype=int)
    weight = np.array([math.factorial(s) * math.factorial(p - s - 1) / math.factorial(p) for s in range(p)])
    phi = np.empty(p)
    for i in range(p):
        without = masks[((masks >> i) & 1) == 0]
        phi[i] = float(weight[size[without]] @ (values[without | (1 << i)] - values[without]))
    return phi


def max_excess(values: np.ndarray, membership: np.ndarray, x: np.ndarray) -> float:
    """Largest excess ``v(S) - x(S)`` over the coalitions given (rows of `membership`).

    The allocation is in the core when it is <= 0 over all coalitions. Glove game: the
    Shapley value leaves {left, right_1} 1/6 short; (1, 0, 0) leaves no one short.

    >>> v = np.array([0, 0, 0, 1, 0, 1, 0, 1], float)
    >>> round(max_excess(v, subset_matrix(3), np.array([2/3, 1/6, 1/6])), 6)
    0.166667
    >>> max_excess(v, subset_matrix(3), np.array([1.0, 0.0, 0.0]))
    0.0
    """
    return float(np.max(values - membership @ x)) if len(values) else 0.0


@dataclass
class SampledShapley:
    """A Monte-Carlo Shapley estimate."""

    phi: np.ndarray
    halfwidth: np.ndarray
    """Half-width of each share's confidence interval [currency]."""
    permutations: int


def shapley_sampled(value, p: int, v_grand: float, n_permutations: int, rng: np.random.Generator,
                    confidence: float = 0.95, max_evaluations: int | None = None,
                    evaluations=None) -> SampledShapley:
    """Castro, Gomez and Tejada (2009) permutation sampling of the Shapley value.

    `value(order, k)` is v of the coalition formed by the first k players of `order`
    (called with k = 1, 2, ... in turn for each order, never for the grand coalition);
    every permutation's marginal contributions add up to `v_grand`. A monotone game is
    assumed: once a prefix is worth `v_grand` (within VALUE_TOL) the rest contribute 0.
    Sampling stops after `n_permutations`, or after the permutation in which
    `evaluations()` (the number of costly value computations so far) reaches
    `max_evaluations` (at least two permutations are drawn).

    >>> v = lambda order, k: float(min(0 in order[:k], len({1, 2} & set(order[:k].tolist())) > 0))
    >>> est = shapley_sampled(v, 3, 1.0, 4000, np.random.default_rng(1))
    >>> bool(np.all(np.abs(est.phi - [2/3, 1/6, 1/6]) < 0.03)), bool(abs(est.phi.sum() - 1.0) < 1e-12)
    (True, True)
    """
    contributions = np.zeros((n_permutations, p))
    done = 0
    for k in range(n_permutations):
        order = rng.permutation(p)
        previous = 0.0
        for t in range(p):
            current = v_grand if t == p - 1 else value(order, t + 1)
            if current >= v_grand - VALUE_TOL:
                contributions[k, order[t]] = v_grand - previous  # the rest contribute 0
                break
            contributions[k, order[t]] = current - previous
            previous = current
        done = k + 1
        if max_evaluations is not None and evaluations is not None and done >= 2 and evaluations() >= max_evaluations:
            break
    c = contributions[:done]
    phi = c.mean(axis=0)
    z = float(norm.ppf(0.5 + confidence / 2.0))
    sd = c.std(axis=0, ddof=1) if done > 1 else np.full(p, np.inf)
    return SampledShapley(phi, z * sd / math.sqrt(done), done)


# -- coalition values on the persistent pool ---------------------------------------------------
class CoalitionSolveError(RuntimeError):
    """A coalition's LP did not solve (the round then fails and the loop falls back)."""


class PoolGame:
    """Coalition values of one round: the pool solved with P2P open to the members only."""

    def __init__(self, pool: PoolModel, orders: OrderArrays, ctx: MarketContext, charges: Charges,
                 players: list[np.ndarray], cuts: NetworkCuts | None = None):
        self.pool = pool
        self.n = pool.n
        self.demand = np.asarray(orders.demand_kwh, float)
        self.supply = np.asarray(orders.supply_kwh, float)
        self.eff_bid = np.asarray(orders.bid_per_kwh, float) - charges.buy
        self.eff_ask = np.asarray(orders.ask_per_kwh, float) + charges.sell
        self.voll, self.curtail_cost = ctx.voll_per_kwh, ctx.curtail_cost
        self.players = players
        self.player_matrix = np.zeros((len(players), self.n), dtype=bool)
        for k, members in enumerate(players):
            self.player_matrix[k, members] = True
        self.buyer_players = np.array([bool((self.demand[m] > QTY_TOL).any()) for m in players], dtype=bool)
        self.seller_players = np.array([bool((self.supply[m] > QTY_TOL).any()) for m in players], dtype=bool)
        self.cache: dict[int, float] = {}
        self.solves = 0
        """Coalition LPs solved this round."""
        self.closed_form_values = 0
        """Coalition values computed in closed form this round (`closed_form`)."""
        self.baseline = 0.0
        self.closed_form = bool(
            (cuts is None or len(cuts) == 0) and ctx.p2p
            and self.demand.sum() <= ctx.import_cap_kwh and self.supply.sum() <= ctx.export_cap_kwh
            and ctx.voll_per_kwh > OUTSIDE_EPSILON and ctx.curtail_cost > OUTSIDE_EPSILON
        )
        """True when no network cut, outside cap, shedding or curtailment can bind in any
        coalition: every value is then the members' double auction (`matching_values`), no LP."""

    def welfare(self, x: dict[str, np.ndarray]) -> float:
        """Declared welfare of a pool solution, without the pool's tie-break [currency]."""
        return float(
            self.eff_bid @ x["bought_kwh"] - self.eff_ask @ x["sold_kwh"]
            - self.voll * x["shed_kwh"].sum() - self.curtail_cost * x["curtailed_kwh"].sum()
        )

    def solve(self, member: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Welfare and solution with P2P open to `member` participants only."""
        h, col, zeros = self.pool.highs, self.pool.col, np.zeros(self.n)
        h.changeColsBounds(self.n, col["bought_kwh"], zeros, self.demand * member)
        h.changeColsBounds(self.n, col["sold_kwh"], zeros, self.supply * member)
        status, x, _ = self.pool.solve()
        self.solves += 1
        if status != "ok":
            raise CoalitionSolveError(f"coalition value: {status}")
        return self.welfare(x), x

    def value(self, mask: int, member: np.ndarray) -> float:
        """v of the coalition `mask` (bit k: player k), whose participants are `member`."""
        v = self.cache.get(mask)
        if v is not None:
            return v
        if not ((self.demand[member] > QTY_TOL).any() and (self.supply[member] > QTY_TOL).any()):
            v = 0.0  # no buyer or no seller: nothing to trade
        elif self.closed_form:
            self.closed_form_values += 1
            v = float(self.matching(member[None, :])[0]) - self.baseline
        else:
            w, _ = self.solve(member)
            v = w - self.baseline
        self.cache[mask] = v
        return v

    def matching(self, members: np.ndarray) -> np.ndarray:
        """The pool's welfare with P2P open to each row of `members` only, in closed form."""
        return matching_values(members, self.demand, self.supply, self.eff_bid, self.eff_ask, 2 * OUTSIDE_EPSILON)

    def values(self, membership: np.ndarray) -> np.ndarray:
        """v of every coalition of players (rows of `membership` [coalitions x players], in
        mask order): all at once in closed form where it holds, else one LP each."""
        if not self.closed_form:
            return np.array([self.value(mask, (row.astype(float) @ self.player_matrix) > 0)
                             for mask, row in enumerate(membership)])
        members = (membership.astype(float) @ self.player_matrix) > 0
        values = self.matching(members) - self.baseline
        trades = (members & (self.demand > QTY_TOL)).any(axis=1) & (members & (self.supply > QTY_TOL)).any(axis=1)
        values = np.where(trades, values, 0.0)  # no buyer or no seller: nothing to trade
        for mask, v in self.cache.items():  # the grand coalition's value from its LP, as cached
            values[mask] = v
        self.closed_form_values += int(trades.sum()) - sum(1 for mask in self.cache if trades[mask])
        self.cache.update(enumerate(values.tolist()))
        return values


# -- least core (persistent Pyomo/HiGHS LP, then a QP stage) -------------------------------------
class LeastCoreModel:
    """min eps s.t. x(S) + eps >= v(S) for proper coalitions S, x(N) = v(N); then the
    least-core point nearest a target (the Shapley value): min ||x - phi||^2, eps <= eps*.

    Built once for `slots` players (2^slots - 2 coalition rows); a game with p < slots
    players leaves the other slots fixed at 0 and their rows free.
    """

    def __init__(self, slots: int):
        self.slots = slots
        self.model = m = pyo.ConcreteModel(name="least_core")
        m.I = pyo.RangeSet(0, slots - 1)
        m.S = pyo.RangeSet(1, 2**slots - 2)
        m.share = pyo.Var(m.I, domain=pyo.Reals)
        m.epsilon = pyo.Var(domain=pyo.Reals)
        m.coalition_value = pyo.Param(m.S, mutable=True, initialize=0.0)
        m.grand_value = pyo.Param(mutable=True, initialize=0.0)
        bits = subset_matrix(slots)
        m.coalition_excess = pyo.Constraint(
            m.S, rule=lambda m, s: sum(m.share[i] for i in np.flatnonzero(bits[s])) + m.epsilon >= m.coalition_value[s]
        )
        m.efficiency = pyo.Constraint(expr=sum(m.share[i] for i in m.I) == m.grand_value)
        m.least_excess = pyo.Objective(expr=m.epsilon, sense=pyo.minimize)
        self.solver, self.highs, col, row = attach_highs(m, ("share", "epsilon"), ("coalition_excess", "efficiency"))
        self.share_col, self.eps_col = col["share"], col["epsilon"]
        self.rows, self.eff_row = row["coalition_excess"], row["efficiency"]
        self.n_col = self.highs.getNumCol()
        self.highs.setOptionValue("qp_iteration_limit", QP_ITERATION_LIMIT)

    def _set_hessian(self, on: bool) -> None:
        h, n = self.highs, self.n_col
        if on:
            cols = np.sort(self.share_col)
            start = np.zeros(n + 1, dtype=np.int32)
            start[1:] = np.cumsum(np.isin(np.arange(n), cols))
            h.passHessian(n, len(cols), 1, start, cols, np.full(len(cols), 2.0))
        elif h.getHessianNumNz():
            h.passHessian(n, 0, 1, np.zeros(n + 1, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0))

    def solve(self, values: np.ndarray, target: np.ndarray) -> tuple[str, float, np.ndarray]:
        """(status, eps*, least-core point nearest `target`) of the game `values[mask]`.

        Solved for the game divided by its largest |value| (the least core scales with the
        game), so that HiGHS's absolute tolerances (1e-7) mean the same on a game worth 1e-4
        as on one worth 10."""
        p = len(target)
        if p > self.slots:
            raise ValueError(f"{p} players exceed the least-core model's {self.slots} slots")
        values, target = np.asarray(values, float), np.asarray(target, float)
        unit = float(max(np.abs(values).max(initial=0.0), np.abs(target).max(initial=0.0)))
        if not unit > 0.0:
            unit = 1.0
        status, eps, x = self._solve(values / unit, target / unit)
        return status, eps * unit, x * unit

    def _solve(self, values: np.ndarray, target: np.ndarray) -> tuple[str, float, np.ndarray]:
        h, inf = self.highs, highspy.kHighsInf
        p = len(target)
        masks = np.arange(1, 2**self.slots - 1)
        used = ((masks >> p) == 0) & (masks != 2**p - 1)  # proper coalitions of the p players
        lower = np.where(used, values[np.where(used, masks, 0)], -inf)
        h.changeRowsBounds(len(self.rows), self.rows, lower, np.full(len(self.rows), inf))
        v_grand = float(values[-1])
        h.changeRowsBounds(1, self.eff_row, np.array([v_grand]), np.array([v_grand]))
        share_lo = np.where(np.arange(self.slots) < p, -inf, 0.0)
        share_hi = np.where(np.arange(self.slots) < p, inf, 0.0)
        h.changeColsBounds(self.slots, self.share_col, share_lo, share_hi)
        h.changeColsBounds(1, self.eps_col, np.array([-inf]), np.array([inf]))
        cost = np.zeros(self.n_col)
        cost[self.eps_col] = 1.0
        self._set_hessian(False)
        h.changeColsCost(self.n_col, np.arange(self.n_col, dtype=np.int32), cost)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return f"least core {h.modelStatusToString(h.getModelStatus())}", float("nan"), np.full(p, np.nan)
        eps = float(np.asarray(h.getSolution().col_value)[self.eps_col[0]])
        # stage 2: nearest point to the target within the least core
        h.changeColsBounds(1, self.eps_col, np.array([-inf]), np.array([eps + LEAST_CORE_SLACK]))
        cost = np.zeros(self.n_col)
        cost[self.share_col[:p]] = -2.0 * np.asarray(target, float)
        h.changeColsCost(self.n_col, np.arange(self.n_col, dtype=np.int32), cost)
        self._set_hessian(True)
        h.run()
        status = h.getModelStatus()
        self._set_hessian(False)
        if status != highspy.HighsModelStatus.kOptimal:
            return f"least core {h.modelStatusToString(status)}", eps, np.full(p, np.nan)
        x = np.asarray(h.getSolution().col_value)[self.share_col[:p]]
        return "ok", eps, x

    def max_excess(self, values: np.ndarray, x: np.ndarray) -> tuple[str, float]:
        """Core membership as a linear program: min eps s.t. x(S) + eps >= v(S) for every
        proper coalition S, with the shares fixed at `x`; the allocation is in the core iff
        eps* <= 0 and x(N) = v(N). Returns (status, max(eps*, v(N) - x(N))) [currency]."""
        h, inf = self.highs, highspy.kHighsInf
        p = len(x)
        if p > self.slots:
            raise ValueError(f"{p} players exceed the least-core model's {self.slots} slots")
        masks = np.arange(1, 2**self.slots - 1)
        used = ((masks >> p) == 0) & (masks != 2**p - 1)
        lower = np.where(used, values[np.where(used, masks, 0)], -inf)
        h.changeRowsBounds(len(self.rows), self.rows, lower, np.full(len(self.rows), inf))
        h.changeRowsBounds(1, self.eff_row, np.array([-inf]), np.array([inf]))
        fixed = np.zeros(self.slots)
        fixed[:p] = x
        h.changeColsBounds(self.slots, self.share_col, fixed, fixed)
        h.changeColsBounds(1, self.eps_col, np.array([-inf]), np.array([inf]))
        cost = np.zeros(self.n_col)
        cost[self.eps_col] = 1.0
        self._set_hessian(False)
        h.changeColsCost(self.n_col, np.arange(self.n_col, dtype=np.int32), cost)
        h.run()
        status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            return f"core check {h.modelStatusToString(status)}", float("nan")
        eps = float(np.asarray(h.getSolution().col_value)[self.eps_col[0]])
        return "ok", max(eps, float(values[-1]) - float(np.sum(x)))
