"""The day-ahead linear program of the flexible assets (`FlexModel`) and its data.

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
- *local*: each meter's own problem in the decomposition of the central one
  (`cosim.flex.decomposition`): the tie-breakers only, its grid cost priced by the
  community unit.

All objectives add THROUGHPUT_EPSILON per kWh of charging and discharging, the
community ones SPLIT_EPSILON per kWh of each prosumer's import and export (tie-breakers),
and
``storage.ev.shortfall_penalty_per_kwh`` per kWh an EV or shiftable load misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler

from cosim.flex.batteries import battery_efficiencies
from cosim.flex.spec import AssetSpec
from cosim.markets.highs import one_highs_thread, solve_highs

#: Tie-breaking cost of battery and charger throughput [currency/kWh].
THROUGHPUT_EPSILON = 1e-5
#: Tie-breaking cost of each prosumer's import and export in the community modes [currency/kWh].
SPLIT_EPSILON = 1e-7
#: Transformer limit the model is built with, before a horizon's own is written [kW]:
#: large enough never to bind.
UNBOUNDED_LIMIT_KW = 1e9
_INF = highspy.kHighsInf


@dataclass(frozen=True, kw_only=True)
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

        def cat(attr, dtype=float):
            return np.concatenate([np.asarray(getattr(t, attr), dtype) for t in tables]) if tables else np.zeros(0, dtype)

        ses_owner = cat("owner", int)
        eta_c, eta_d = battery_efficiencies(sc)
        return cls(
            agents=agents,
            bat_agent=np.array([index[p] for p in pos], dtype=int),
            bat_e_kwh=fleet.battery_kwh.to_numpy(float)[pos],
            bat_p_kw=fleet.battery_kw.to_numpy(float)[pos],
            eta_c=eta_c,
            eta_d=eta_d,
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
    """plugged, link, start_kwh, required_kwh: [sessions x n_t] (see `cosim.flex.sessions.SessionTable.horizon`)."""


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
        one_highs_thread()  # the process's thread scheduler, before its first HiGHS
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
        m.limit_kw = pyo.Param(mutable=True, initialize=UNBOUNDED_LIMIT_KW)
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
        status = solve_highs(self.highs, "day-ahead")
        if status != "ok":
            return status, None
        return status, np.asarray(self.highs.getSolution().col_value)

    def objective(self) -> float:
        return float(self.highs.getInfo().objective_function_value)
