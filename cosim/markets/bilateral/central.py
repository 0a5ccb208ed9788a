"""The round's data on the pair slots, and the central solution: one LP on a persistent HiGHS."""

from __future__ import annotations

from typing import TYPE_CHECKING

import highspy
import numpy as np
import pyomo.environ as pyo

from cosim.markets.base import (
    QTY_TOL,
    Charges,
    MarketContext,
    NetworkCuts,
    OrderArrays,
)
from cosim.markets.blocks import define_network_cuts, define_round_parameters
from cosim.markets.highs import INACTIVE_RHS, attach_highs, solve_highs
from cosim.markets.pool import OUTSIDE_EPSILON

if TYPE_CHECKING:
    from cosim.markets.bilateral.mechanism import MultiBilateral


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
        define_network_cuts(m)
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
        define_round_parameters(m)
        m.trade_gain = pyo.Param(m.S, mutable=True, initialize=0.0)
        """eff_bid[j] - c_s - eff_ask[i] of each slot [currency/kWh]."""

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
        status = solve_highs(h)
        if status != "ok":
            return status, {}, np.zeros(0), float("nan")
        sol = h.getSolution()
        x = np.asarray(sol.col_value)
        values = {name: x[self.col[name]] for name in self.VARIABLES}
        for name in self.VARIABLES[:-1]:
            values[name] = np.maximum(values[name], 0.0)
        return "ok", values, np.asarray(sol.row_dual), float(h.getInfo().objective_function_value)

    def seller_rent(self, row_dual: np.ndarray) -> np.ndarray:
        """nu_i: dual of seller i's balance, its rent per kWh sold P2P [currency/kWh]."""
        return row_dual[self.row["seller_balance"]]


# -- decentralised solution: consensus ADMM --------------------------------------------
