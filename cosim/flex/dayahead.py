"""Day-ahead scheduling of batteries, EVs and shiftable loads (private, central, distributed).

Every ``storage.reschedule_every`` (default 24 h) the planner schedules every flexible
asset for the next 24 h at the run's resolution, against the forecast net load of each
prosumer (``storage.forecast``: perfect foresight, or naive persistence -- the same
rounds of the day before). The real-time rounds then follow the schedule; what the
forecast got wrong is traded in the real-time market.


The pieces: `cosim.flex.dayahead_model` is the linear program (variables, balances,
objectives per mode) kept in a persistent HiGHS instance; `cosim.flex.decomposition`
solves the central problem by dual decomposition (the ``distributed`` mode); this
module is the planner that feeds them each horizon's data, caches the schedules for the
run's variants and records each solve (`PLAN_COLUMNS`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from cosim.flex.dayahead_model import FlexModel, Horizon, ModelData, Prices
from cosim.flex.decomposition import REL_GAP_FLOOR, decompose
from cosim.flex.spec import AssetSpec

#: Columns of the day-ahead log (dayahead.parquet): ``round`` the first round of the
#: horizon; ``objective`` the mode's own objective [currency]; ``community_cost`` what the
#: community would pay the outside grid for the scheduled profile (overload penalty
#: included) and ``private_cost`` the sum of the flexible prosumers' own bills at the
#: tariffs, both on the forecast [currency]; ``unserved_kwh`` energy EVs and shiftable
#: loads miss in the schedule; ``overload_kwh`` scheduled energy beyond the transformer
#: limit; ``iterations``/``converged``/``bound_gap`` (certified relative gap between the
#: schedule's cost and the lower bound on the optimum) of the decomposition (1/True/0
#: otherwise);
#: ``central_objective`` and ``gap`` (relative) of a distributed schedule to the central
#: optimum; ``solve_s`` wall time [s].
PLAN_COLUMNS = [
    "round", "mode", "forecast", "status", "objective", "community_cost", "private_cost", "unserved_kwh",
    "overload_kwh", "iterations", "converged", "bound_gap", "central_objective", "gap", "solve_s",
]
#: Schedules kept for the run's later variants (the oldest are dropped beyond this).
CACHE_SIZE = 400


# ------------------------------------------------------------------------- the schedule


@dataclass(kw_only=True)
class Schedule:
    """A day-ahead schedule for rounds [t0, t0 + n_t): power per asset [kW], + charging."""

    t0: int
    n_t: int
    mode: str
    forecast: str
    status: str
    battery_kw: np.ndarray
    """[batteries x n_t], batteries in `AssetSpec.battery_pos` order."""
    ev_kw: np.ndarray
    shiftable_kw: np.ndarray
    net_kw: np.ndarray
    """[agents x n_t] each agent's scheduled net load."""
    community_kw: np.ndarray
    """[n_t] the community's scheduled net load (all prosumers)."""
    objective: float = float("nan")
    community_cost: float = float("nan")
    private_cost: float = float("nan")
    unserved_kwh: float = 0.0
    overload_kwh: float = 0.0
    iterations: int = 1
    bound_gap: float = 0.0
    converged: bool = True
    """The decomposition stopped by its tolerance, not by its iteration cap (a schedule
    that did not converge is still feasible for every asset; only its cost is off)."""
    central_objective: float = float("nan")
    solve_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def gap(self) -> float:
        """Relative gap of the objective to the central optimum (distributed only)."""
        if not np.isfinite(self.central_objective):
            return float("nan")
        return (self.objective - self.central_objective) / max(abs(self.central_objective), REL_GAP_FLOOR)

    def info(self) -> dict:
        return {
            "round": self.t0, "mode": self.mode, "forecast": self.forecast, "status": self.status,
            "objective": self.objective, "community_cost": self.community_cost, "private_cost": self.private_cost,
            "unserved_kwh": self.unserved_kwh, "overload_kwh": self.overload_kwh, "iterations": self.iterations,
            "converged": self.converged, "bound_gap": self.bound_gap, "central_objective": self.central_objective, "gap": self.gap,
            "solve_s": self.solve_s,
        }


def grid_cost(community_kw: np.ndarray, dt_h: float, prices: Prices) -> float:
    """What the community pays the outside grid for a net load profile, transformer
    overload penalty included [currency].

    >>> grid_cost(np.array([2.0, -4.0]), 0.5, Prices(0.3, 0.1, 5.0, 1.0, None))
    0.1
    """
    w = np.asarray(community_kw, float)
    cost = prices.buy_per_kwh * np.maximum(w, 0.0) - prices.sell_per_kwh * np.maximum(-w, 0.0)
    if prices.limit_kw is not None:
        cost = cost + prices.overload_per_kwh * np.maximum(np.abs(w) - prices.limit_kw, 0.0)
    return round(float(cost.sum() * dt_h), 12)


def private_costs(net_kw: np.ndarray, dt_h: float, prices: Prices) -> float:
    """Sum of every prosumer's own bill at the tariffs for its net load profile [currency]."""
    w = np.asarray(net_kw, float)
    return float((prices.buy_per_kwh * np.maximum(w, 0.0) - prices.sell_per_kwh * np.maximum(-w, 0.0)).sum() * dt_h)


class DayAheadPlanner:
    """Day-ahead schedules of a run's flexible assets; one per run, shared by its variants.

    Models are built once (on the first solve) and re-solved for each horizon. Schedules
    are cached by start round and state, so every variant that reaches a round in the
    same state gets the same schedule without a second solve.
    """

    def __init__(self, spec: AssetSpec):
        self.spec = spec
        sc = spec.scenario
        st = sc.storage
        self.mode = st.strategy
        self.forecast = st.forecast
        self.dt_h = sc.dt_h
        self.n_t = int(round(24.0 / sc.dt_h))
        self.data = ModelData.from_spec(spec)
        self.terminal = st.terminal_energy
        self.prices = Prices(sc.market.retail_price_per_kwh, sc.market.feed_in_price_per_kwh,
                             st.ev.shortfall_penalty_per_kwh, st.overload_penalty_per_kwh,
                             spec.transformer_limit_kw)
        self.decomposition = st.distributed
        self.others = np.setdiff1d(np.arange(spec.fleet.n), self.data.agents)
        self._central: FlexModel | None = None
        self._local: FlexModel | None = None
        self._cache: dict = {}
        self.solves = 0
        """Schedules actually solved (not taken from the cache)."""

    # -- models -------------------------------------------------------------------------
    @property
    def central_model(self) -> FlexModel:
        if self._central is None:
            self._central = FlexModel(self.data, self.n_t, self.dt_h, coupled=True)
        return self._central

    @property
    def local_model(self) -> FlexModel:
        if self._local is None:
            self._local = FlexModel(self.data, self.n_t, self.dt_h, coupled=False)
        return self._local

    # -- data ---------------------------------------------------------------------------
    def horizon(self, t0: int, state: dict[str, np.ndarray]) -> Horizon:
        """The data of a solve starting at round t0 from the assets' present state.

        ``state``: ``battery_kwh`` (batteries in `AssetSpec.battery_pos` order),
        ``ev_kwh`` and ``shiftable_kwh`` (per slot) at the start of round t0; optional
        ``battery_end_min_kwh``, the least energy each battery must end the horizon with
        (default: ``storage.terminal_energy``).
        """
        spec, n_t = self.spec, self.n_t
        f = spec.forecast_kw[t0 : t0 + n_t]
        if len(f) < n_t:  # past the precomputed range: repeat its last day
            f = np.vstack([f, np.resize(spec.forecast_kw[-n_t:], (n_t - len(f), f.shape[1]))])
        start = np.asarray(state["battery_kwh"], float)
        end_min = start.copy() if self.terminal == "start" else np.zeros_like(start)
        if "battery_end_min_kwh" in state:  # a caller's own terminal condition
            end_min = np.asarray(state["battery_end_min_kwh"], float)
        ses = {}
        parts = [(spec.evs, state.get("ev_kwh")), (spec.shiftables, state.get("shiftable_kwh"))]
        hs = [tb.horizon(t0, n_t, np.asarray(e, float), self.dt_h) for tb, e in parts if tb is not None]
        if hs:
            ses = {k: np.vstack([h[k] for h in hs]) for k in hs[0]}
        return Horizon(
            base_kw=f[:, self.data.agents].T.copy(),
            fixed_kw=f[:, self.others].sum(axis=1) if len(self.others) else np.zeros(n_t),
            bat_start_kwh=start, bat_end_min_kwh=end_min, ses=ses,
        )

    # -- solves -------------------------------------------------------------------------
    def plan(self, t0: int, state: dict[str, np.ndarray]) -> Schedule:
        """The schedule for rounds [t0, t0 + 24 h) from the assets' state at t0."""
        key = (t0, *(np.round(np.asarray(v, float), 9).tobytes() for _, v in sorted(state.items())))
        if key in self._cache:
            return self._cache[key]
        t_start = time.perf_counter()
        hz = self.horizon(t0, state)
        if not len(self.data.agents):
            sched = self._empty(t0, hz)
        elif self.mode == "distributed":
            sched = self.solve_distributed(t0, hz)
        else:
            sched = self.solve_lp(t0, hz, self.mode)
        sched.solve_s = time.perf_counter() - t_start
        if not sched.ok:
            logging.getLogger(__name__).warning("day-ahead schedule at round %d failed (%s); the rule runs "
                                                "until the next schedule", t0, sched.status)
        self.solves += 1
        if len(self._cache) >= CACHE_SIZE:  # forget the oldest
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = sched
        return sched

    def _empty(self, t0: int, hz: Horizon) -> Schedule:
        z = np.zeros((0, self.n_t))
        return Schedule(t0=t0, n_t=self.n_t, mode=self.mode, forecast=self.forecast, status="ok", battery_kw=z,
                        ev_kw=z, shiftable_kw=z, net_kw=z, community_kw=hz.fixed_kw.copy(),
                        objective=grid_cost(hz.fixed_kw, self.dt_h, self.prices))

    def _schedule(self, t0: int, model: FlexModel, x: np.ndarray, hz: Horizon) -> Schedule:
        d = self.data
        n_t = self.n_t
        bat = (x[model.col["bat_charge_kw"]] - x[model.col["bat_discharge_kw"]]).reshape(-1, n_t)
        ses = (x[model.col["ses_charge_kw"]] - x[model.col["ses_discharge_kw"]]).reshape(-1, n_t)
        net = model.net_kw(x)
        community = net.sum(axis=0) + hz.fixed_kw
        unserved = float(x[model.col["ses_unserved_kwh"]].sum()) if len(model.col["ses_unserved_kwh"]) else 0.0
        limit = self.prices.limit_kw
        over = float(np.maximum(np.abs(community) - limit, 0.0).sum() * self.dt_h) if limit is not None else 0.0
        return Schedule(
            t0=t0, n_t=n_t, mode=self.mode, forecast=self.forecast, status="ok", battery_kw=bat,
            ev_kw=ses[: d.n_ev], shiftable_kw=ses[d.n_ev :], net_kw=net, community_kw=community,
            community_cost=grid_cost(community, self.dt_h, self.prices),
            private_cost=private_costs(net, self.dt_h, self.prices),
            unserved_kwh=unserved, overload_kwh=over,
        )

    def _failed(self, t0: int, status: str) -> Schedule:
        z = np.zeros((0, self.n_t))
        return Schedule(t0=t0, n_t=self.n_t, mode=self.mode, forecast=self.forecast, status=status, battery_kw=z,
                        ev_kw=z, shiftable_kw=z, net_kw=z, community_kw=np.zeros(self.n_t))

    def solve_lp(self, t0: int, hz: Horizon, mode: str) -> Schedule:
        """The private or central schedule (one linear program)."""
        model = self.central_model
        model.update(hz)
        model.set_prices(mode, self.prices)
        status, x = model.solve()
        if x is None:
            return self._failed(t0, status)
        sched = self._schedule(t0, model, x, hz)
        sched.mode = mode
        sched.objective = model.objective()
        return sched

    def solve_distributed(self, t0: int, hz: Horizon) -> Schedule:
        """The central schedule by dual decomposition (`cosim.flex.decomposition.decompose`),
        with the central optimum solved alongside as its reference."""
        central, local = self.central_model, self.local_model
        result = decompose(central, local, hz, self.prices, self.decomposition)
        if result.x is None:
            return self._failed(t0, result.status)
        cfg = self.decomposition
        sched = self._schedule(t0, local, result.x, hz)
        sched.objective = result.upper
        sched.iterations = result.iterations
        sched.bound_gap = (result.upper - result.lower) / max(abs(result.upper), REL_GAP_FLOOR)
        sched.converged = bool(sched.bound_gap <= cfg.tolerance)
        sched.central_objective = result.central_objective
        return sched
