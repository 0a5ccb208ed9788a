"""The ``distributed`` day-ahead schedule: the central problem by dual decomposition.

The central problem by dual decomposition in its Dantzig-Wolfe form
(Dantzig and Wolfe, 1960, "Decomposition principle for linear programs", Operations
Research 8(1); see Conejo, Castillo, Minguez and Garcia-Bertrand, 2006, "Decomposition
Techniques in Mathematical Programming", Springer, ch. 2 and 4). The coupling row
(community_balance) is priced: the community unit holds only the grid cost and the
transformer limit, and a master LP over the schedules the meters have proposed so
far, whose duals are the prices mu_t of the community's net load [currency/kW per
period]. Each smart meter, given mu, solves its own assets for its cost plus mu . net
and proposes that schedule -- its load, PV and assets never leave it, only net
profiles do (the privacy of Atzeni, Ordonez, Scutari, Palomar and Fonollosa, 2013,
"Demand-side management via distributed energy generation and storage optimization",
IEEE Trans. Smart Grid 4(2)). The master's cost is an upper bound on the central
optimum (its schedules are convex combinations of each meter's proposals, hence
feasible) and the master cost plus every meter's most negative reduced cost is a
lower bound (Lagrangian duality). Stopping rule: (upper - lower) <= tolerance x
|upper| (``storage.distributed.tolerance``), or the iteration cap. Each schedule
records its iterations, the certified gap, and its gap to the central optimum
(solved alongside as the reference). The meters' pricing problems share no variable
or constraint, so they are solved as one block-diagonal LP -- exactly what the
meters would compute in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from cosim.flex.dayahead_model import FlexModel, Horizon, Prices
from cosim.markets.highs import one_highs_thread

#: Relative gaps are taken against at least this magnitude, so a zero cost divides by
#: something [currency].
REL_GAP_FLOOR = 1e-9
#: A proposal whose reduced cost is below minus this enters the master [currency].
REDUCED_COST_TOL = 1e-9
#: Master weights at or below this are zero [-].
WEIGHT_TOL = 1e-12
#: HiGHS ``simplex_strategy`` for the master: 4 is primal simplex, which restarts from a
#: basis that new columns leave primal feasible.
PRIMAL_SIMPLEX = 4
_INF = highspy.kHighsInf


@dataclass(frozen=True)
class Decomposition:
    """What `decompose` found.

    Attributes
    ----------
    status : ``ok`` or why it failed
    x : the meters' schedules in the columns of the local model (None if it failed)
    upper, lower : the master's cost and the best lower bound on the central optimum [currency]
    iterations : master solves
    central_objective : the central optimum, for the record (NaN if it failed) [currency]
    """

    status: str
    x: np.ndarray | None
    upper: float = float("nan")
    lower: float = float("nan")
    iterations: int = 0
    central_objective: float = float("nan")


def decompose(central: FlexModel, local: FlexModel, hz: Horizon, prices: Prices, cfg) -> Decomposition:
    """The central schedule of one horizon by dual decomposition (see the module docstring).

    Master (the community unit), over the proposals k of each meter a with net
    profile n_ak [kW] and own cost c_ak [currency], weights w_ak >= 0:

        min  sum_t dt (buy I_t - sell X_t + penalty over_t) + sum_a,k c_ak w_ak
        s.t. I_t - X_t - sum_a,k n_ak,t w_ak = fixed_t           (price mu_t)
             I_t <= L + over_t,  X_t <= L + over_t
             sum_k w_ak = 1                                     (price sigma_a)

    Pricing (each meter): min over its own schedules x of c_a(x) + mu . net_a(x);
    a proposal with c_a + mu . net_a < sigma_a enters the master. The master is grown
    column by column in HiGHS directly (`MasterProblem`); the meters' problem is the
    uncoupled `FlexModel` ``local``.

    Parameters
    ----------
    central : the coupled model (solved once, as the reference the tolerance is judged by)
    local : the uncoupled model of the same agents
    hz : the horizon's data
    prices : what the objective charges
    cfg : ``storage.distributed``: ``tolerance`` [-] and ``max_iterations``
    """
    n_t, dt = local.n_t, local.dt_h
    central.update(hz)
    central.set_prices("central", prices)
    _, xc = central.solve()
    central_obj = central.objective() if xc is not None else float("nan")
    local.update(hz)
    # first proposals: each meter's private optimum
    local.set_prices("private", prices)
    status, x = local.solve()
    if x is None:
        return Decomposition(status, None)
    local.set_prices("local", prices)
    master = MasterProblem(len(local.data.agents), n_t, dt, hz.fixed_kw, prices)
    proposals = [x]
    master.add(local.local_costs(x), local.net_kw(x), 0)
    upper, lower, iterations = np.inf, -np.inf, 0
    for k in range(1, cfg.max_iterations + 1):
        iterations = k
        status, upper, mu, sigma = master.solve()
        if status != "ok":
            return Decomposition(f"decomposition iteration {k}: {status}", None)
        local.set_net_price(mu)
        status, x = local.solve()
        if x is None:
            return Decomposition(f"decomposition iteration {k}: {status}", None)
        cost = local.local_costs(x)
        net = local.net_kw(x)
        reduced = cost + net @ mu - sigma
        lower = max(lower, upper + float(np.minimum(reduced, 0.0).sum()))
        if upper - lower <= cfg.tolerance * max(abs(upper), REL_GAP_FLOOR):
            break
        enter = np.flatnonzero(reduced < -REDUCED_COST_TOL)
        if not len(enter):
            break
        proposals.append(x)
        master.add(cost[enter], net[enter], len(proposals) - 1, agents=enter)
    # each meter's schedule: its proposals weighted by the master
    x_final = np.zeros(local.n_col)
    own = local.col_agent
    for (agent, proposal), w in master.weights().items():
        cols = own == agent
        x_final[cols] += w * proposals[proposal][cols]
    return Decomposition("ok", x_final, upper, lower, iterations, central_obj)


class MasterProblem:
    """The community unit's restricted master LP of the decomposition (HiGHS directly)."""

    def __init__(self, n_agents: int, n_t: int, dt_h: float, fixed_kw: np.ndarray, prices: Prices):
        self.n_agents, self.n_t = n_agents, n_t
        one_highs_thread()  # the process's thread scheduler, before its first HiGHS
        h = self.highs = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        # new columns keep the basis primal feasible: primal simplex from it, no presolve
        h.setOptionValue("presolve", "off")
        h.setOptionValue("simplex_strategy", PRIMAL_SIMPLEX)
        limit = prices.limit_kw if prices.limit_kw is not None else _INF
        fixed = np.asarray(fixed_kw, float)
        # rows: community balance (n_t), transformer import (n_t), export (n_t), convexity (agents)
        lo = np.r_[fixed, np.full(2 * n_t, -_INF), np.ones(n_agents)]
        up = np.r_[fixed, np.full(2 * n_t, limit), np.ones(n_agents)]
        h.addRows(len(lo), lo, up, 0, np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0))
        t = np.arange(n_t, dtype=np.int32)
        over_pen = prices.overload_per_kwh * dt_h if prices.limit_kw is not None else 0.0
        for j in range(n_t):  # community import I_t, export X_t, overload over_t
            h.addCol(prices.buy_per_kwh * dt_h, 0.0, _INF, 2, np.array([t[j], n_t + t[j]], np.int32),
                     np.array([1.0, 1.0]))
            h.addCol(-prices.sell_per_kwh * dt_h, 0.0, _INF, 2, np.array([t[j], 2 * n_t + t[j]], np.int32),
                     np.array([-1.0, 1.0]))
            h.addCol(over_pen, 0.0, _INF, 2, np.array([n_t + t[j], 2 * n_t + t[j]], np.int32),
                     np.array([-1.0, -1.0]))
        self.columns: list[tuple[int, int]] = []
        self.first = h.getNumCol()

    def add(self, cost: np.ndarray, net: np.ndarray, proposal: int, agents: np.ndarray | None = None) -> None:
        """Add proposals: one column per agent (its cost and net profile)."""
        agents = np.arange(self.n_agents) if agents is None else agents
        rows = np.r_[np.arange(self.n_t), 0].astype(np.int32)
        for a, c, profile in zip(agents, cost, net, strict=True):
            rows[-1] = 3 * self.n_t + a
            self.highs.addCol(float(c), 0.0, _INF, self.n_t + 1, rows, np.r_[-profile, 1.0])
            self.columns.append((int(a), proposal))

    def solve(self) -> tuple[str, float, np.ndarray, np.ndarray]:
        """(status, objective, mu per period, sigma per agent)."""
        h = self.highs
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return f"master {h.modelStatusToString(h.getModelStatus())}", np.nan, None, None
        y = np.asarray(h.getSolution().row_dual)
        return "ok", float(h.getInfo().objective_function_value), y[: self.n_t], y[3 * self.n_t :]

    def weights(self) -> dict[tuple[int, int], float]:
        x = np.asarray(self.highs.getSolution().col_value)[self.first :]
        return {key: float(w) for key, w in zip(self.columns, x, strict=True) if w > WEIGHT_TOL}
