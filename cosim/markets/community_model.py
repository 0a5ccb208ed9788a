"""The community's allocation model (a persistent Pyomo/HiGHS LP), its round clock and its
shared battery. See `cosim.markets.community` for the formulation and the pricing rules."""

from __future__ import annotations

import logging

import highspy
import numpy as np
import pyomo.environ as pyo

from cosim.markets.base import (
    MarketContext,
    NetworkCuts,
    OrderArrays,
)
from cosim.markets.blocks import (
    PARTICIPANT_VARIABLES,
    define_network_cuts,
    define_participant_balances,
    define_participant_variables,
    define_round_parameters,
    write_participant_rows,
)
from cosim.markets.highs import INACTIVE_RHS, attach_highs, solve_highs

log = logging.getLogger(__name__)


#: Tie-breaking cost of a kWh traded with the outside party [currency/kWh].
OUTSIDE_COST = 1e-5
#: Tie-breaking cost of a kWh through the community battery [currency/kWh] (below
#: OUTSIDE_COST, so the battery is used before the outside party).
BATTERY_COST = 1e-6

#: Variables of each member, in HiGHS column order.
MEMBER_VARIABLES = PARTICIPANT_VARIABLES
MANAGER_VARIABLES = ("operator_import_kwh", "operator_export_kwh", "battery_charge_kwh", "battery_discharge_kwh")


# -- the allocation model -----------------------------------------------------------------
class CommunityModel:
    """A persistent Pyomo/HiGHS model of a community of `n` members (see `cosim.markets.community`)."""

    def __init__(self, n: int, max_cuts: int = 24):
        self.n = n
        self.max_cuts = max_cuts
        self.model = m = pyo.ConcreteModel(name="community")
        m.N = pyo.RangeSet(0, n - 1)
        m.K = pyo.RangeSet(0, max_cuts - 1)
        define_round_parameters(m)
        self._define_variables(m)
        self._define_balances(m)
        define_network_cuts(m)
        self._define_objective(m)
        self.solver, self.highs, self.col, self.row = attach_highs(
            m, MEMBER_VARIABLES + MANAGER_VARIABLES,
            ("buyer_balance", "seller_balance", "network_cut", "import_limit", "export_limit"), presolve="off",
        )
        self._coef = np.ones((max_cuts, n))  # cut coefficients now in HiGHS
        self._cuts_in_use = max_cuts  # every slot starts with coefficient 1: reset on first update
        self.highs.changeObjectiveSense(highspy.ObjSense.kMaximize)

    # -- model pieces -------------------------------------------------------------------
    @staticmethod
    def _define_variables(m: pyo.ConcreteModel) -> None:
        define_participant_variables(m)
        for name in MANAGER_VARIABLES:
            setattr(m, name, pyo.Var(domain=pyo.NonNegativeReals))

    @staticmethod
    def _define_balances(m: pyo.ConcreteModel) -> None:
        define_participant_balances(m)
        m.community_balance = pyo.Constraint(
            expr=sum(m.bought_kwh[n] for n in m.N) + m.operator_export_kwh + m.battery_charge_kwh
            == sum(m.sold_kwh[n] for n in m.N) + m.operator_import_kwh + m.battery_discharge_kwh
        )
        m.import_limit = pyo.Constraint(
            expr=sum(m.imported_kwh[n] for n in m.N) + m.operator_import_kwh <= m.import_cap_kwh
        )
        m.export_limit = pyo.Constraint(
            expr=sum(m.exported_kwh[n] for n in m.N) + m.operator_export_kwh <= m.export_cap_kwh
        )

    @staticmethod
    def _define_objective(m: pyo.ConcreteModel) -> None:
        m.welfare = pyo.Objective(
            expr=-sum(
                m.voll_per_kwh * m.shed_kwh[n]
                + m.curtail_cost_per_kwh * m.curtailed_kwh[n]
                + OUTSIDE_COST * (m.imported_kwh[n] + m.exported_kwh[n])
                for n in m.N
            )
            - OUTSIDE_COST * (m.operator_import_kwh + m.operator_export_kwh)
            - BATTERY_COST * (m.battery_charge_kwh + m.battery_discharge_kwh),
            sense=pyo.maximize,
        )

    # -- each round -----------------------------------------------------------------------
    def update(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts,
               charge_max_kwh: float = 0.0, discharge_max_kwh: float = 0.0) -> None:
        """Write this round's data into the persistent HiGHS model."""
        h, col, row, n = self.highs, self.col, self.row, self.n
        if len(cuts) > self.max_cuts:
            raise ValueError(f"{len(cuts)} network cuts exceed the model's {self.max_cuts} slots")
        demand = np.asarray(orders.demand_kwh, float)
        supply = np.asarray(orders.supply_kwh, float)
        zeros = np.zeros(n)
        member = 1.0 if ctx.p2p else 0.0  # without P2P members trade alone with the outside party
        upper = {
            "bought_kwh": demand * member,
            "sold_kwh": supply * member,
            "imported_kwh": demand * (1.0 - member),
            "exported_kwh": supply * (1.0 - member),
            "shed_kwh": demand,
            "curtailed_kwh": supply,
        }
        for name, ub in upper.items():
            h.changeColsBounds(n, col[name], zeros, ub)
        costs = {
            "shed_kwh": -ctx.voll_per_kwh,
            "curtailed_kwh": -ctx.curtail_cost,
            "imported_kwh": -OUTSIDE_COST,
            "exported_kwh": -OUTSIDE_COST,
        }
        for name, cost in costs.items():
            h.changeColsCost(n, col[name], np.full(n, cost))
        manager = [
            ("operator_import_kwh", min(ctx.import_cap_kwh, INACTIVE_RHS) * member),
            ("operator_export_kwh", min(ctx.export_cap_kwh, INACTIVE_RHS) * member),
            ("battery_charge_kwh", charge_max_kwh * member),
            ("battery_discharge_kwh", discharge_max_kwh * member),
        ]
        idx = np.concatenate([col[name] for name, _ in manager])
        h.changeColsBounds(len(idx), idx, np.zeros(len(idx)), np.array([ub for _, ub in manager], float))
        write_participant_rows(h, row, demand, supply, ctx)
        self._update_cuts(cuts)

    def _update_cuts(self, cuts: NetworkCuts) -> None:
        """Change only the cut coefficients that differ from those already in HiGHS."""
        h, inj, rows = self.highs, self.col["injection_kwh"], self.row["network_cut"]
        used = len(cuts)
        span = max(used, self._cuts_in_use)
        if span == 0:
            return
        coef = np.zeros((span, self.n))
        coef[:used] = cuts.coef
        for k, j in np.argwhere(coef != self._coef[:span]):
            h.changeCoeff(int(rows[k]), int(inj[j]), float(coef[k, j]))
        self._coef[:span] = coef
        rhs = np.full(span, INACTIVE_RHS)
        rhs[:used] = cuts.rhs
        h.changeRowsBounds(span, rows[:span], np.full(span, -highspy.kHighsInf), rhs)
        self._cuts_in_use = used

    def reset_warm_start(self) -> None:
        """Drop the basis kept from earlier solves; the next solve starts cold."""
        self.highs.clearSolver()

    def solve(self) -> tuple[str, dict[str, np.ndarray]]:
        """Solve; returns (status, variable values). Never raises for solver trouble."""
        h = self.highs
        status = solve_highs(h)
        if status != "ok":
            return status, {}
        x = np.asarray(h.getSolution().col_value)
        values = {name: x[self.col[name]] for name in MEMBER_VARIABLES + MANAGER_VARIABLES}
        for name in MEMBER_VARIABLES[:-1] + MANAGER_VARIABLES:
            values[name] = np.maximum(values[name], 0.0)
        return "ok", values


# -- rounds and the community battery --------------------------------------------------------
class RoundClock:
    """Which round a clearing belongs to.

    ``ctx.round_no`` when the context carries one; otherwise the context object itself
    marks the round (the loop builds one per round and re-clears a round under network
    feedback with the same object), and rounds are counted from 0 in order of arrival.

    >>> clock, a, b = RoundClock(), MarketContext(0.3, 0.1), MarketContext(0.3, 0.1)
    >>> [clock.tick(c) for c in (a, a, b)], clock.round_no
    ([True, False, True], 1)
    """

    def __init__(self):
        self.round_no = -1
        """Number of the current round (-1 before the first clearing)."""
        self._key: object = None
        self._context: object = None

    def tick(self, ctx: MarketContext) -> bool:
        """Register a clearing for `ctx`; True if it is the first of a new round."""
        explicit = getattr(ctx, "round_no", None)
        key = ("round", explicit) if explicit is not None else ("context", id(ctx))
        if key == self._key:
            return False
        self._key = key
        self._context = ctx  # keeps the object alive, so its id is not reused by a later round
        self.round_no = int(explicit) if explicit is not None else self.round_no + 1
        return True


class CommunityBattery:
    """The manager's battery: stored energy, committed once per round.

    Each clearing proposes a move for its round; the proposal of the round's last
    successful clearing is committed when the next round's first clearing begins.
    """

    def __init__(self, capacity_kwh: float, power_kw: float, efficiency: float, initial_soc: float):
        self.capacity_kwh = capacity_kwh
        self.power_kw = power_kw
        self.efficiency = efficiency
        self.soc_kwh = initial_soc * capacity_kwh
        """Stored energy at the start of the current round [kWh]."""
        self._proposed_kwh = self.soc_kwh

    def begin(self, new_round: bool) -> None:
        """Start a clearing: on a new round, commit the last round's move first."""
        if new_round:
            self.soc_kwh = self._proposed_kwh

    def limits_kwh(self, dt_h: float) -> tuple[float, float]:
        """(most it can take in, most it can give out) this round at the busbar [kWh]."""
        if self.capacity_kwh <= 0:
            return 0.0, 0.0
        step = self.power_kw * dt_h
        room = max(self.capacity_kwh - self.soc_kwh, 0.0) / self.efficiency
        stored = max(self.soc_kwh, 0.0) * self.efficiency
        return min(step, room), min(step, stored)

    def propose(self, charge_kwh: float, discharge_kwh: float) -> float:
        """The stored energy after this round's move [kWh] (committed at the next round)."""
        soc = self.soc_kwh + self.efficiency * charge_kwh - discharge_kwh / self.efficiency
        self._proposed_kwh = float(np.clip(soc, 0.0, self.capacity_kwh))
        return self._proposed_kwh
