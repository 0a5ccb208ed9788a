"""The coalitional game's math: the Shapley value (exact and sampled), the core check and
the least core (a persistent Pyomo/HiGHS LP, then a QP stage). See `cosim.markets.shapley`
for the game these value."""

from __future__ import annotations

import math
from dataclasses import dataclass

import highspy
import numpy as np
import pyomo.environ as pyo
from scipy.stats import norm

from cosim.markets.highs import attach_highs

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
