"""The welfare-maximising pool model every double auction here is built on.

Built once per run from small named Pyomo pieces (PyPSA style) and handed once to a
persistent HiGHS instance (Pyomo's appsi interface). The structure never changes, so
the model is never rebuilt: each round only the data change -- quantities, prices, the
outside option's caps, network charges, and the coefficients and right-hand sides of a
fixed number of network-cut slots (an unused slot has zero coefficients and a large
right-hand side, so it never binds).

Those changes go straight into the persistent HiGHS model as vectorised
``changeColsBounds`` / ``changeColsCost`` / ``changeRowsBounds`` calls, through the
column and row maps appsi built. appsi's own parameter sync pushes every mutable
coefficient one by one on every solve (measured 83 ms a round at 118 participants with
24 cut slots, against about 3 ms this way), so it is switched off.

For participant n (all quantities per round [kWh]):

    bought[n] + imported[n] + shed[n]      = demand[n]        (buyer balance)
    sold[n]   + exported[n] + curtailed[n] = supply[n]        (seller balance)
    injection[n] = sold[n] + exported[n] - bought[n] - imported[n]
    sum_n bought[n] = sum_n sold[n]                           (P2P pool balance)
    sum_n imported[n] <= import_cap, sum_n exported[n] <= export_cap
    sum_n cut_coef[k, n] injection[n] <= cut_rhs[k]           (network cuts)
    0 <= bought[n] <= demand[n] (0 without P2P), 0 <= sold[n] <= supply[n] (idem)

    maximise  sum_n (bid[n] - charge_buy[n]) bought[n] - (ask[n] + charge_sell[n]) sold[n]
              - voll * sum shed - curtail_cost * sum curtailed
              - epsilon * sum (imported + exported)

The epsilon term (1e-6 /kWh) only breaks ties in favour of trading locally.
"""

from __future__ import annotations

import highspy
import numpy as np
import pyomo.environ as pyo

from cosim.markets.base import Charges, MarketContext, NetworkCuts, OrderArrays
from cosim.markets.blocks import (
    PARTICIPANT_VARIABLES,
    define_network_cuts,
    define_participant_balances,
    define_participant_variables,
    define_round_parameters,
    write_participant_rows,
)
from cosim.markets.highs import INACTIVE_RHS, attach_highs, solve_highs

#: Tie-breaking cost of trading with the outside party [currency/kWh].
OUTSIDE_EPSILON = 1e-6

VARIABLES = PARTICIPANT_VARIABLES


class PoolModel:
    """A persistent Pyomo/HiGHS pool for `n` participants and `max_cuts` network cuts."""

    def __init__(self, n: int, max_cuts: int = 24):
        self.n = n
        self.max_cuts = max_cuts
        self._cuts_in_use = 0
        self.model = m = pyo.ConcreteModel(name="pool")
        m.N = pyo.RangeSet(0, n - 1)
        m.K = pyo.RangeSet(0, max_cuts - 1)
        self._define_parameters(m)
        define_participant_variables(m)
        self._define_balances(m)
        define_network_cuts(m)
        self._define_objective(m)
        self.solver, self.highs, self.col, self.row = attach_highs(
            m, VARIABLES, ("buyer_balance", "seller_balance", "network_cut", "import_limit", "export_limit"),
            presolve="off",
        )
        self.highs.changeObjectiveSense(highspy.ObjSense.kMaximize)

    # -- model pieces -------------------------------------------------------------------
    @staticmethod
    def _define_parameters(m: pyo.ConcreteModel) -> None:
        define_round_parameters(m)
        m.bid_value = pyo.Param(m.N, mutable=True, initialize=0.0)
        m.ask_cost = pyo.Param(m.N, mutable=True, initialize=0.0)

    @staticmethod
    def _define_balances(m: pyo.ConcreteModel) -> None:
        define_participant_balances(m)
        m.pool_balance = pyo.Constraint(expr=sum(m.bought_kwh[n] for n in m.N) == sum(m.sold_kwh[n] for n in m.N))
        m.import_limit = pyo.Constraint(expr=sum(m.imported_kwh[n] for n in m.N) <= m.import_cap_kwh)
        m.export_limit = pyo.Constraint(expr=sum(m.exported_kwh[n] for n in m.N) <= m.export_cap_kwh)

    @staticmethod
    def _define_objective(m: pyo.ConcreteModel) -> None:
        m.welfare = pyo.Objective(
            expr=sum(
                m.bid_value[n] * m.bought_kwh[n]
                - m.ask_cost[n] * m.sold_kwh[n]
                - m.voll_per_kwh * m.shed_kwh[n]
                - m.curtail_cost_per_kwh * m.curtailed_kwh[n]
                - OUTSIDE_EPSILON * (m.imported_kwh[n] + m.exported_kwh[n])
                for n in m.N
            ),
            sense=pyo.maximize,
        )

    # -- each round -----------------------------------------------------------------------
    def update(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts, charges: Charges) -> None:
        """Write this round's data into the persistent HiGHS model."""
        h, col, row, n = self.highs, self.col, self.row, self.n
        if len(cuts) > self.max_cuts:
            raise ValueError(f"{len(cuts)} network cuts exceed the model's {self.max_cuts} slots")
        demand = np.asarray(orders.demand_kwh, float)
        supply = np.asarray(orders.supply_kwh, float)
        zeros = np.zeros(n)
        p2p = 1.0 if ctx.p2p else 0.0
        bounds = {
            "bought_kwh": demand * p2p,
            "sold_kwh": supply * p2p,
            "imported_kwh": demand,
            "exported_kwh": supply,
            "shed_kwh": demand,
            "curtailed_kwh": supply,
        }
        for name, upper in bounds.items():
            h.changeColsBounds(n, col[name], zeros, upper)
        costs = {
            "bought_kwh": orders.bid_per_kwh - charges.buy,
            "sold_kwh": -(orders.ask_per_kwh + charges.sell),
            "imported_kwh": np.full(n, -OUTSIDE_EPSILON),
            "exported_kwh": np.full(n, -OUTSIDE_EPSILON),
            "shed_kwh": np.full(n, -ctx.voll_per_kwh),
            "curtailed_kwh": np.full(n, -ctx.curtail_cost),
        }
        for name, cost in costs.items():
            h.changeColsCost(n, col[name], np.asarray(cost, float))
        write_participant_rows(h, row, demand, supply, ctx)
        self._update_cuts(cuts)

    def _update_cuts(self, cuts: NetworkCuts) -> None:
        h, inj, rows = self.highs, self.col["injection_kwh"], self.row["network_cut"]
        used = len(cuts)
        for k in range(max(used, self._cuts_in_use)):
            coef = cuts.coef[k] if k < used else np.zeros(self.n)
            for j in range(self.n):
                h.changeCoeff(int(rows[k]), int(inj[j]), float(coef[j]))
        if max(used, self._cuts_in_use):
            k_all = np.arange(max(used, self._cuts_in_use))
            rhs = np.array([cuts.rhs[k] if k < used else INACTIVE_RHS for k in k_all], float)
            h.changeRowsBounds(len(k_all), rows[k_all], np.full(len(k_all), -highspy.kHighsInf), rhs)
        self._cuts_in_use = used

    def trivial_solution(self, orders: OrderArrays, ctx: MarketContext,
                         cuts: NetworkCuts) -> tuple[str, dict[str, np.ndarray], float] | None:
        """The optimum without a solve when nothing can trade P2P and nothing binds: no
        network cuts, the outside party can take every order, and one side of the book is
        empty (or P2P is off). Everyone then trades with the outside party, which beats
        shedding (VoLL) and curtailing. None when these conditions do not hold. Half the
        rounds of a year (the nights) are like this."""
        demand = np.asarray(orders.demand_kwh, float)
        supply = np.asarray(orders.supply_kwh, float)
        d, s = demand.sum(), supply.sum()
        if len(cuts) or d > ctx.import_cap_kwh or s > ctx.export_cap_kwh:
            return None
        if ctx.p2p and d > 0 and s > 0:
            return None
        zeros = np.zeros(self.n)
        values = {
            "bought_kwh": zeros, "sold_kwh": zeros, "imported_kwh": demand.copy(), "exported_kwh": supply.copy(),
            "shed_kwh": zeros, "curtailed_kwh": zeros, "injection_kwh": supply - demand,
        }
        return "ok", values, float(-OUTSIDE_EPSILON * (d + s))

    def reset_warm_start(self) -> None:
        """Drop the basis kept from earlier solves; the next solve starts cold."""
        self.highs.clearSolver()

    def solve(self) -> tuple[str, dict[str, np.ndarray], float]:
        """Solve; returns (status, variable arrays, welfare). Never raises for solver trouble."""
        h = self.highs
        status = solve_highs(h)
        if status != "ok":
            return status, {}, float("nan")
        x = np.asarray(h.getSolution().col_value)
        values = {name: x[self.col[name]] for name in VARIABLES}
        for name in VARIABLES[:-1]:
            values[name] = np.maximum(values[name], 0.0)
        return "ok", values, float(h.getInfo().objective_function_value)
