"""Day-ahead scheduling of batteries, EVs and shiftable loads (private, central, distributed).

Every ``storage.reschedule_every`` (default 24 h) the planner schedules every flexible
asset for the next 24 h at the run's resolution, against the forecast net load of each
prosumer (``storage.forecast``: perfect foresight, or naive persistence -- the same
rounds of the day before). The real-time rounds then follow the schedule; what the
forecast got wrong is traded in the real-time market.

One linear program, built once per run from small named Pyomo pieces and handed once
to a persistent HiGHS instance; each solve only writes the day's data into HiGHS
(``changeColsBounds`` / ``changeRowsBounds`` / ``changeCoeff`` / ``changeColsCost``), as
`cosim.markets.pool.PoolModel` does. The hand-over goes through Pyomo's linear
standard-form compiler and ``passModel`` (about 4x faster than appsi's ``set_instance``
for the tens of thousands of rows of a day at 15 min). For agent a (a prosumer with a
flexible asset), battery b, session asset s (EV or shiftable load), period t of length
dt [h]:

    e_b[t] = e_b[t-1] + eta_c dt ch_b[t] - dt / eta_d dis_b[t]              (battery_balance)
    e_s[t] = link_s[t] e_s[t-1] + start_s[t] + eta_c dt ch_s[t] - dt / eta_d dis_s[t]
             + unserved_s[t]                                                 (session_balance)
    net_a[t] = import_a[t] - export_a[t]
             = base_a[t] + sum_{b of a} (ch_b - dis_b) + sum_{s of a} (ch_s - dis_s)
                                                                              (net_definition)
    I[t] - X[t] = sum_a net_a[t] + fixed[t]                              (community_balance)
    I[t] <= L + over[t],  X[t] <= L + over[t]                 (transformer_import / _export)

with bounds 0 <= ch, dis <= p_kw (sessions: only while plugged in; discharge only with
v2g), soc_min E <= e_b <= soc_max E, 0 <= e_s <= capacity (0 while away), e_b at the
horizon's end >= its start (``storage.terminal_energy: start``). ``link`` is 1 while a
session continues and 0 when one starts (``start`` then holds its arrival energy), so
sessions are data, not structure. In a session's last round e_s >= the energy due at
departure (for a session running past the horizon: what full power could not add after
it); ``unserved`` >= 0, allowed only in that round and penalised, tops up what cannot be
reached, so an impossible request never makes the schedule infeasible.

Objectives (dt-weighted, currency):

- *private* (each prosumer for itself): sum_a,t buy import_a - sell export_a. The agents'
  problems share no constraint, so one solve of their sum is every agent's own optimum;
  each shares only its schedule.
- *central* (a community unit for the community's cost, Atzeni et al. 2013's central
  unit): sum_t buy I - sell X + penalty over, within the transformer limit L.
- *distributed*: the central problem by dual decomposition in its Dantzig-Wolfe form
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

All objectives add THROUGHPUT_EPSILON per kWh of charging and discharging, the
community ones SPLIT_EPSILON per kWh of each prosumer's import and export (tie-breakers),
and
``storage.ev.shortfall_penalty_per_kwh`` per kWh an EV or shiftable load misses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler

from cosim.flex.assets import AssetSpec

#: Tie-breaking cost of battery and charger throughput [currency/kWh].
THROUGHPUT_EPSILON = 1e-5
#: Tie-breaking cost of each prosumer's import and export in the community modes [currency/kWh].
SPLIT_EPSILON = 1e-7
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
_INF = highspy.kHighsInf


# ---------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelData:
    """Static data of the scheduled assets, in model order."""

    agents: np.ndarray
    """Fleet position of each agent (prosumer with a flexible asset)."""
    bat_agent: np.ndarray
    bat_e_kwh: np.ndarray
    bat_p_kw: np.ndarray
    eta_c: float
    eta_d: float
    soc_min: float
    soc_max: float
    ses_agent: np.ndarray
    ses_cap_kwh: np.ndarray
    ses_p_kw: np.ndarray
    ses_eta_c: np.ndarray
    ses_eta_d: np.ndarray
    ses_v2g: np.ndarray
    n_ev: int
    """Sessions [0, n_ev) are EVs, the rest shiftable loads."""

    @classmethod
    def from_spec(cls, spec: AssetSpec) -> ModelData:
        sc = spec.scenario
        st = sc.storage
        owners = [spec.battery_pos]
        tables = [t for t in (spec.evs, spec.shiftables) if t is not None]
        owners += [t.owner for t in tables]
        agents = np.unique(np.concatenate(owners)) if owners else np.zeros(0, int)
        index = {p: i for i, p in enumerate(agents)}
        fleet = spec.fleet.table
        pos = spec.battery_pos
        eff = sc.prosumers.battery_efficiency

        def cat(attr, dtype=float):
            return np.concatenate([np.asarray(getattr(t, attr), dtype) for t in tables]) if tables else np.zeros(0, dtype)

        ses_owner = cat("owner", int)
        return cls(
            agents=agents,
            bat_agent=np.array([index[p] for p in pos], dtype=int),
            bat_e_kwh=fleet.battery_kwh.to_numpy(float)[pos],
            bat_p_kw=fleet.battery_kw.to_numpy(float)[pos],
            eta_c=st.battery_charge_efficiency or eff,
            eta_d=st.battery_discharge_efficiency or eff,
            soc_min=st.battery_soc_min,
            soc_max=st.battery_soc_max,
            ses_agent=np.array([index[p] for p in ses_owner], dtype=int),
            ses_cap_kwh=cat("cap_kwh"),
            ses_p_kw=cat("p_kw"),
            ses_eta_c=cat("eta_c"),
            ses_eta_d=cat("eta_d"),
            ses_v2g=cat("v2g", bool),
            n_ev=spec.evs.n if spec.evs is not None else 0,
        )

    def subset(self, agents: np.ndarray) -> ModelData:
        """The same data for some agents only (by agent index), renumbered."""
        keep = np.asarray(agents, int)
        new = {a: i for i, a in enumerate(keep)}
        b = np.isin(self.bat_agent, keep)
        s = np.isin(self.ses_agent, keep)
        return ModelData(
            self.agents[keep], np.array([new[a] for a in self.bat_agent[b]], dtype=int), self.bat_e_kwh[b],
            self.bat_p_kw[b], self.eta_c, self.eta_d, self.soc_min, self.soc_max,
            np.array([new[a] for a in self.ses_agent[s]], dtype=int), self.ses_cap_kwh[s], self.ses_p_kw[s],
            self.ses_eta_c[s], self.ses_eta_d[s], self.ses_v2g[s], int(s[: self.n_ev].sum()),
        )


@dataclass
class Horizon:
    """One solve's data: forecast, initial state and sessions over n_t periods."""

    base_kw: np.ndarray
    """[agents x n_t] forecast net load before flexible assets."""
    fixed_kw: np.ndarray
    """[n_t] forecast net load of all prosumers without a flexible asset."""
    bat_start_kwh: np.ndarray
    bat_end_min_kwh: np.ndarray
    ses: dict[str, np.ndarray]
    """plugged, link, start_kwh, required_kwh: [sessions x n_t] (see `SessionTable.horizon`)."""


@dataclass(frozen=True)
class Prices:
    """What the objective charges."""

    buy_per_kwh: float
    sell_per_kwh: float
    shortfall_per_kwh: float
    overload_per_kwh: float
    limit_kw: float | None


class FlexModel:
    """A persistent Pyomo/HiGHS model of some agents' flexible assets over n_t periods.

    ``coupled``: with the community rows (import, export, transformer limit); without
    them the model is the agents' local problems side by side (the meters' pricing problems).
    """

    def __init__(self, data: ModelData, n_t: int, dt_h: float, coupled: bool = True):
        self.data, self.n_t, self.dt_h, self.coupled = data, n_t, dt_h, coupled
        self.model = m = pyo.ConcreteModel(name="dayahead")
        m.A = pyo.Set(initialize=range(len(data.agents)))
        m.B = pyo.Set(initialize=range(len(data.bat_agent)))
        m.S = pyo.Set(initialize=range(len(data.ses_agent)))
        m.T = pyo.Set(initialize=range(n_t))
        self._define_parameters(m)
        self._define_variables(m)
        self._define_batteries(m)
        self._define_sessions(m)
        self._define_balances(m)
        self._define_objective(m)
        self.highs = self._hand_over(m)
        self.n_col = self.highs.getNumCol()
        self._link = np.ones((len(data.ses_agent), n_t))
        self._split_cost = (0.0, 0.0)
        self.col_agent = np.full(self.n_col, -1, dtype=np.int64)
        for name, owner in (("bat_", data.bat_agent), ("ses_", data.ses_agent), ("import_kw", None),
                            ("export_kw", None)):
            for var, cols in self.col.items():
                if var.startswith(name):
                    own = owner if owner is not None else np.arange(len(data.agents))
                    self.col_agent[cols] = np.repeat(own, n_t)
        self.local_cost = np.zeros(self.n_col)

    def _hand_over(self, m) -> highspy.Highs:
        """Compile the model to matrix form once and pass it to a HiGHS instance; keep
        the maps from Pyomo components to HiGHS columns and rows."""
        form = LinearStandardFormCompiler().write(m, mixed_form=True, set_sense=None)
        col_of = {id(v): j for j, v in enumerate(form.columns)}
        row_of = {}
        for i, (con, _) in enumerate(form.rows):
            if con in row_of:
                raise ValueError(f"constraint {con.name} became two rows; expected one")
            row_of[con] = i
        lp = highspy.HighsLp()
        n_col, n_row = len(form.columns), len(form.rows)
        lp.num_col_, lp.num_row_ = n_col, n_row
        lp.col_cost_ = np.asarray(form.c.toarray()).ravel() if form.c.shape[0] else np.zeros(n_col)
        lp.col_lower_ = np.array([-_INF if v.lb is None else v.lb for v in form.columns], float)
        lp.col_upper_ = np.array([_INF if v.ub is None else v.ub for v in form.columns], float)
        sense = np.array([b for _, b in form.rows])
        rhs = np.asarray(form.rhs, float)
        lp.row_lower_ = np.where(sense <= 0, rhs, -_INF)
        lp.row_upper_ = np.where(sense >= 0, rhs, _INF)
        a = form.A.tocsc()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr.astype(np.int32)
        lp.a_matrix_.index_ = a.indices.astype(np.int32)
        lp.a_matrix_.value_ = a.data.astype(float)
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n_col, n_row
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.passModel(lp)
        h.changeObjectiveSense(highspy.ObjSense.kMinimize)
        self.col, self.row = {}, {}
        for v in m.component_objects(pyo.Var, descend_into=False):
            self.col[v.name] = np.array([col_of[id(v[i])] for i in v.index_set()], dtype=np.int32)
        for c in m.component_objects(pyo.Constraint, descend_into=False):
            self.row[c.name] = np.array([row_of[c[i]] for i in c.index_set()], dtype=np.int32)
        return h

    # -- model pieces -------------------------------------------------------------------
    def _define_parameters(self, m) -> None:
        m.bat_start_kwh = pyo.Param(m.B, m.T, mutable=True, initialize=0.0)
        m.ses_link = pyo.Param(m.S, m.T, mutable=True, initialize=1.0)  # 1 so every entry exists in HiGHS
        m.ses_start_kwh = pyo.Param(m.S, m.T, mutable=True, initialize=0.0)
        m.base_kw = pyo.Param(m.A, m.T, mutable=True, initialize=0.0)
        m.fixed_kw = pyo.Param(m.T, mutable=True, initialize=0.0)
        m.limit_kw = pyo.Param(mutable=True, initialize=1e9)
        m.buy_per_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.sell_per_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.shortfall_per_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.overload_per_kwh = pyo.Param(mutable=True, initialize=0.0)

    def _define_variables(self, m) -> None:
        nonneg = pyo.NonNegativeReals
        m.bat_charge_kw = pyo.Var(m.B, m.T, domain=nonneg)
        m.bat_discharge_kw = pyo.Var(m.B, m.T, domain=nonneg)
        m.bat_energy_kwh = pyo.Var(m.B, m.T, domain=nonneg)
        m.ses_charge_kw = pyo.Var(m.S, m.T, domain=nonneg)
        m.ses_discharge_kw = pyo.Var(m.S, m.T, domain=nonneg)
        m.ses_energy_kwh = pyo.Var(m.S, m.T, domain=nonneg)
        m.ses_unserved_kwh = pyo.Var(m.S, m.T, domain=nonneg)
        m.import_kw = pyo.Var(m.A, m.T, domain=nonneg)
        m.export_kw = pyo.Var(m.A, m.T, domain=nonneg)
        if self.coupled:
            m.community_import_kw = pyo.Var(m.T, domain=nonneg)
            m.community_export_kw = pyo.Var(m.T, domain=nonneg)
            m.overload_kw = pyo.Var(m.T, domain=nonneg)

    def _define_batteries(self, m) -> None:
        d, dt = self.data, self.dt_h

        def balance(m, b, t):
            prev = m.bat_energy_kwh[b, t - 1] if t > 0 else 0.0
            return (m.bat_energy_kwh[b, t] - prev - d.eta_c * dt * m.bat_charge_kw[b, t]
                    + dt / d.eta_d * m.bat_discharge_kw[b, t] == m.bat_start_kwh[b, t])

        m.battery_balance = pyo.Constraint(m.B, m.T, rule=balance)

    def _define_sessions(self, m) -> None:
        d, dt = self.data, self.dt_h

        def balance(m, s, t):
            prev = m.ses_link[s, t] * m.ses_energy_kwh[s, t - 1] if t > 0 else 0.0
            return (m.ses_energy_kwh[s, t] - prev - float(d.ses_eta_c[s]) * dt * m.ses_charge_kw[s, t]
                    + dt / float(d.ses_eta_d[s]) * m.ses_discharge_kw[s, t] - m.ses_unserved_kwh[s, t]
                    == m.ses_start_kwh[s, t])

        m.session_balance = pyo.Constraint(m.S, m.T, rule=balance)

    def _define_balances(self, m) -> None:
        d = self.data
        bats = {a: [] for a in m.A}
        for b, a in enumerate(d.bat_agent):
            bats[int(a)].append(b)
        sess = {a: [] for a in m.A}
        for s, a in enumerate(d.ses_agent):
            sess[int(a)].append(s)

        def net(m, a, t):
            flex = pyo.quicksum(m.bat_charge_kw[b, t] - m.bat_discharge_kw[b, t] for b in bats[a])
            flex += pyo.quicksum(m.ses_charge_kw[s, t] - m.ses_discharge_kw[s, t] for s in sess[a])
            return m.import_kw[a, t] - m.export_kw[a, t] - flex == m.base_kw[a, t]

        m.net_definition = pyo.Constraint(m.A, m.T, rule=net)
        if self.coupled:
            m.community_balance = pyo.Constraint(
                m.T, rule=lambda m, t: m.community_import_kw[t] - m.community_export_kw[t]
                - pyo.quicksum(m.import_kw[a, t] - m.export_kw[a, t] for a in m.A) == m.fixed_kw[t])
            m.transformer_import = pyo.Constraint(
                m.T, rule=lambda m, t: m.community_import_kw[t] - m.overload_kw[t] <= m.limit_kw)
            m.transformer_export = pyo.Constraint(
                m.T, rule=lambda m, t: m.community_export_kw[t] - m.overload_kw[t] <= m.limit_kw)

    def _define_objective(self, m) -> None:
        # the community form; `set_prices` rewrites the costs for each mode
        dt = self.dt_h
        throughput = pyo.quicksum(m.bat_charge_kw[k] + m.bat_discharge_kw[k] for k in m.bat_charge_kw)
        throughput += pyo.quicksum(m.ses_charge_kw[k] + m.ses_discharge_kw[k] for k in m.ses_charge_kw)
        cost = THROUGHPUT_EPSILON * dt * throughput
        cost += m.shortfall_per_kwh * pyo.quicksum(m.ses_unserved_kwh[k] for k in m.ses_unserved_kwh)
        cost += SPLIT_EPSILON * dt * pyo.quicksum(m.import_kw[k] + m.export_kw[k] for k in m.import_kw)
        if self.coupled:
            cost += dt * pyo.quicksum(m.buy_per_kwh * m.community_import_kw[t] - m.sell_per_kwh
                                      * m.community_export_kw[t] + m.overload_per_kwh * m.overload_kw[t]
                                      for t in m.T)
        m.cost = pyo.Objective(expr=cost, sense=pyo.minimize)

    # -- each solve -----------------------------------------------------------------------
    @staticmethod
    def _flat(value, n: int) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(np.asarray(value, float), (n,)) if np.ndim(value) == 0
                                    else np.ravel(value), dtype=float)

    def _bounds(self, name: str, lower, upper) -> None:
        cols = self.col.get(name)
        if cols is not None and len(cols):
            n = len(cols)
            self.highs.changeColsBounds(n, cols, self._flat(lower, n), self._flat(upper, n))

    def _rows(self, name: str, lower, upper) -> None:
        rows = self.row.get(name)
        if rows is not None and len(rows):
            n = len(rows)
            self.highs.changeRowsBounds(n, rows, self._flat(lower, n), self._flat(upper, n))

    def _costs(self, name: str, cost) -> None:
        cols = self.col.get(name)
        if cols is not None and len(cols):
            self.highs.changeColsCost(len(cols), cols, self._flat(cost, len(cols)))

    def update(self, hz: Horizon) -> None:
        """Write one horizon's data into HiGHS."""
        d, n_t = self.data, self.n_t
        nb, ns = len(d.bat_agent), len(d.ses_agent)
        # batteries
        e_lo = np.repeat((d.soc_min * d.bat_e_kwh)[:, None], n_t, axis=1)
        e_hi = np.repeat((d.soc_max * d.bat_e_kwh)[:, None], n_t, axis=1)
        if nb:
            e_lo[:, -1] = np.clip(hz.bat_end_min_kwh, e_lo[:, -1], e_hi[:, -1])
        self._bounds("bat_energy_kwh", e_lo, e_hi)
        p = np.repeat(d.bat_p_kw[:, None], n_t, axis=1)
        self._bounds("bat_charge_kw", 0.0, p)
        self._bounds("bat_discharge_kw", 0.0, p)
        start = np.zeros((nb, n_t))
        if nb:
            start[:, 0] = hz.bat_start_kwh
        self._rows("battery_balance", start, start)
        # sessions
        if ns:
            sh = hz.ses
            plugged = sh["plugged"]
            p = d.ses_p_kw[:, None] * plugged
            cap = d.ses_cap_kwh[:, None] * plugged
            due = np.isfinite(sh["required_kwh"])
            self._bounds("ses_charge_kw", 0.0, p)
            self._bounds("ses_discharge_kw", 0.0, p * d.ses_v2g[:, None])
            self._bounds("ses_energy_kwh", np.where(due, np.minimum(sh["required_kwh"], cap), 0.0), cap)
            self._bounds("ses_unserved_kwh", 0.0, np.where(due, _INF, 0.0))
            self._rows("session_balance", sh["start_kwh"], sh["start_kwh"])
            self._set_links(sh["link"])
        # prosumers and community
        self._rows("net_definition", hz.base_kw, hz.base_kw)
        if self.coupled:
            self._rows("community_balance", hz.fixed_kw, hz.fixed_kw)

    def _set_links(self, link: np.ndarray) -> None:
        changed = np.argwhere(link[:, 1:] != self._link[:, 1:])
        if not len(changed):
            return
        rows = self.row["session_balance"].reshape(link.shape)
        e = self.col["ses_energy_kwh"].reshape(link.shape)
        for s, k in changed:
            t = k + 1
            self.highs.changeCoeff(int(rows[s, t]), int(e[s, t - 1]), -float(link[s, t]))
        self._link = link.copy()

    def set_prices(self, mode: str, prices: Prices) -> None:
        """Objective of ``private`` or ``central`` (``local``: the meters' own problems,
        whose grid cost the community unit holds)."""
        dt = self.dt_h
        self._costs("ses_unserved_kwh", prices.shortfall_per_kwh)
        if mode == "private":
            self._split_cost = (prices.buy_per_kwh * dt, -prices.sell_per_kwh * dt)
        else:
            self._split_cost = (SPLIT_EPSILON * dt, SPLIT_EPSILON * dt)
        self._costs("import_kw", self._split_cost[0])
        self._costs("export_kw", self._split_cost[1])
        if mode == "local":
            self.local_cost = np.asarray(self.highs.getLp().col_cost_, float)
        if self.coupled:
            central = mode == "central"
            self._costs("community_import_kw", prices.buy_per_kwh * dt if central else 0.0)
            self._costs("community_export_kw", -prices.sell_per_kwh * dt if central else 0.0)
            self._costs("overload_kw", prices.overload_per_kwh * dt if central else 0.0)
            limit = prices.limit_kw if (central and prices.limit_kw is not None) else _INF
            self._rows("transformer_import", -_INF, limit)
            self._rows("transformer_export", -_INF, limit)

    def set_net_price(self, price: np.ndarray) -> None:
        """Price each agent's net load at ``price`` [currency/kW per period, n_t] on top of
        the local costs (a meter's pricing problem in the decomposition)."""
        self._costs("import_kw", self._split_cost[0] + np.tile(price, len(self.data.agents)))
        self._costs("export_kw", self._split_cost[1] - np.tile(price, len(self.data.agents)))

    def local_costs(self, x: np.ndarray) -> np.ndarray:
        """Each agent's own cost in a solution under the ``local`` prices [currency]."""
        return np.bincount(self.col_agent, weights=self.local_cost * x, minlength=len(self.data.agents))

    def net_kw(self, x: np.ndarray) -> np.ndarray:
        """Each agent's net load in a solution [agents x n_t]."""
        return (x[self.col["import_kw"]] - x[self.col["export_kw"]]).reshape(-1, self.n_t)

    def solve(self) -> tuple[str, np.ndarray | None]:
        """Solve; returns (status, column values). Never raises for solver trouble."""
        h = self.highs
        try:
            h.run()
            status = h.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal:
                h.clearSolver()
                h.run()
                status = h.getModelStatus()
        except Exception as err:  # recorded by the caller, never raised into the loop
            return f"solver error: {err}", None
        if status != highspy.HighsModelStatus.kOptimal:
            return f"day-ahead {h.modelStatusToString(status)}", None
        return "ok", np.asarray(h.getSolution().col_value)

    def objective(self) -> float:
        return float(self.highs.getInfo().objective_function_value)


# ------------------------------------------------------------------------- the schedule


@dataclass
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
        return (self.objective - self.central_objective) / max(abs(self.central_objective), 1e-9)

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
        return Schedule(t0, self.n_t, self.mode, self.forecast, "ok", z, z, z, z, hz.fixed_kw.copy(),
                        objective=grid_cost(hz.fixed_kw, self.dt_h, self.prices))

    def _schedule(self, t0: int, model: FlexModel, x: np.ndarray, hz: Horizon, status: str = "ok") -> Schedule:
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
            t0, n_t, self.mode, self.forecast, status, bat, ses[: d.n_ev], ses[d.n_ev :], net, community,
            community_cost=grid_cost(community, self.dt_h, self.prices),
            private_cost=private_costs(net, self.dt_h, self.prices),
            unserved_kwh=unserved, overload_kwh=over,
        )

    def _failed(self, t0: int, status: str) -> Schedule:
        z = np.zeros((0, self.n_t))
        return Schedule(t0, self.n_t, self.mode, self.forecast, status, z, z, z, z, np.zeros(self.n_t))

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
        """The central schedule by dual decomposition (see the module docstring).

        Master (the community unit), over the proposals k of each meter a with net
        profile n_ak [kW] and own cost c_ak [currency], weights w_ak >= 0:

            min  sum_t dt (buy I_t - sell X_t + penalty over_t) + sum_a,k c_ak w_ak
            s.t. I_t - X_t - sum_a,k n_ak,t w_ak = fixed_t           (price mu_t)
                 I_t <= L + over_t,  X_t <= L + over_t
                 sum_k w_ak = 1                                     (price sigma_a)

        Pricing (each meter): min over its own schedules x of c_a(x) + mu . net_a(x);
        a proposal with c_a + mu . net_a < sigma_a enters the master. The master is grown
        column by column in HiGHS directly; the meters' problem is the Pyomo model.
        """
        d, n_t, dt = self.data, self.n_t, self.dt_h
        n = len(d.agents)
        cfg = self.decomposition
        prices = self.prices
        # the central optimum, for the record only (the reference the tolerance is judged by)
        central = self.central_model
        central.update(hz)
        central.set_prices("central", prices)
        _, xc = central.solve()
        central_obj = central.objective() if xc is not None else float("nan")
        local = self.local_model
        local.update(hz)
        # first proposals: each meter's private optimum
        local.set_prices("private", prices)
        status, x = local.solve()
        if x is None:
            return self._failed(t0, status)
        local.set_prices("local", prices)
        master = _Master(n, n_t, dt, hz.fixed_kw, prices)
        proposals = [x]
        master.add(local.local_costs(x), local.net_kw(x), 0)
        upper, lower, iterations = np.inf, -np.inf, 0
        for k in range(1, cfg.max_iterations + 1):
            iterations = k
            status, upper, mu, sigma = master.solve()
            if status != "ok":
                return self._failed(t0, f"decomposition iteration {k}: {status}")
            local.set_net_price(mu)
            status, x = local.solve()
            if x is None:
                return self._failed(t0, f"decomposition iteration {k}: {status}")
            cost = local.local_costs(x)
            net = local.net_kw(x)
            reduced = cost + net @ mu - sigma
            lower = max(lower, upper + float(np.minimum(reduced, 0.0).sum()))
            if upper - lower <= cfg.tolerance * max(abs(upper), 1e-9):
                break
            enter = np.flatnonzero(reduced < -1e-9)
            if not len(enter):
                break
            proposals.append(x)
            master.add(cost[enter], net[enter], len(proposals) - 1, agents=enter)
        weights = master.weights()
        # each meter's schedule: its proposals weighted by the master
        x_final = np.zeros(local.n_col)
        own = local.col_agent
        for (agent, proposal), w in weights.items():
            cols = own == agent
            x_final[cols] += w * proposals[proposal][cols]
        sched = self._schedule(t0, local, x_final, hz)
        sched.objective = upper
        sched.iterations = iterations
        sched.bound_gap = (upper - lower) / max(abs(upper), 1e-9)
        sched.converged = bool(sched.bound_gap <= cfg.tolerance)
        sched.central_objective = central_obj
        return sched


class _Master:
    """The community unit's restricted master LP of the decomposition (HiGHS directly)."""

    def __init__(self, n_agents: int, n_t: int, dt_h: float, fixed_kw: np.ndarray, prices: Prices):
        self.n_agents, self.n_t = n_agents, n_t
        h = self.highs = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        # new columns keep the basis primal feasible: primal simplex from it, no presolve
        h.setOptionValue("presolve", "off")
        h.setOptionValue("simplex_strategy", 4)
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
        return {key: float(w) for key, w in zip(self.columns, x, strict=True) if w > 1e-12}
