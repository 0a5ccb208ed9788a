"""Pyomo model blocks the pool, the community and the bilateral models share (PyPSA style).

Each `define_*` adds named components to a model with index sets ``m.N`` (participants)
and ``m.K`` (network-cut slots). The values a block is built with only matter until the
first round writes its own data into HiGHS, except the cut coefficients: they start at 1
so that every (cut, participant) entry exists in the HiGHS matrix.
"""

from __future__ import annotations

import highspy
import numpy as np
import pyomo.environ as pyo

from cosim.markets.base import MarketContext
from cosim.markets.highs import INACTIVE_RHS

#: Values a model is built with, before the first round writes its own [currency/kWh].
VOLL_PER_KWH_AS_BUILT = 10.0
CURTAIL_COST_PER_KWH_AS_BUILT = 0.1
#: Cut coefficient as built: non-zero, so that HiGHS keeps every entry [-].
CUT_COEF_AS_BUILT = 1.0

#: Variables of each participant, in HiGHS column order.
PARTICIPANT_VARIABLES = (
    "bought_kwh", "sold_kwh", "imported_kwh", "exported_kwh", "shed_kwh", "curtailed_kwh", "injection_kwh",
)


def define_round_parameters(m: pyo.ConcreteModel) -> None:
    """Each participant's demand and supply [kWh], the outside party's caps [kWh], the
    values of lost load and of curtailment [currency/kWh], and the network-cut slots."""
    m.demand_kwh = pyo.Param(m.N, mutable=True, initialize=0.0)
    m.supply_kwh = pyo.Param(m.N, mutable=True, initialize=0.0)
    m.import_cap_kwh = pyo.Param(mutable=True, initialize=INACTIVE_RHS)
    m.export_cap_kwh = pyo.Param(mutable=True, initialize=INACTIVE_RHS)
    m.voll_per_kwh = pyo.Param(mutable=True, initialize=VOLL_PER_KWH_AS_BUILT)
    m.curtail_cost_per_kwh = pyo.Param(mutable=True, initialize=CURTAIL_COST_PER_KWH_AS_BUILT)
    m.cut_coef = pyo.Param(m.K, m.N, mutable=True, initialize=CUT_COEF_AS_BUILT)
    m.cut_rhs = pyo.Param(m.K, mutable=True, initialize=INACTIVE_RHS)


def define_participant_variables(m: pyo.ConcreteModel) -> None:
    """What each participant buys and sells in the pool, trades with the outside party,
    sheds and curtails [kWh, >= 0], and its net injection [kWh, free]."""
    for name in PARTICIPANT_VARIABLES[:-1]:
        setattr(m, name, pyo.Var(m.N, domain=pyo.NonNegativeReals))
    m.injection_kwh = pyo.Var(m.N, domain=pyo.Reals)


def define_participant_balances(m: pyo.ConcreteModel) -> None:
    """Demand is bought, imported or shed; supply is sold, exported or curtailed; the
    injection is what is sold and exported less what is bought and imported."""
    m.buyer_balance = pyo.Constraint(
        m.N, rule=lambda m, n: m.bought_kwh[n] + m.imported_kwh[n] + m.shed_kwh[n] == m.demand_kwh[n]
    )
    m.seller_balance = pyo.Constraint(
        m.N, rule=lambda m, n: m.sold_kwh[n] + m.exported_kwh[n] + m.curtailed_kwh[n] == m.supply_kwh[n]
    )
    m.injection_definition = pyo.Constraint(
        m.N,
        rule=lambda m, n: m.injection_kwh[n]
        == m.sold_kwh[n] + m.exported_kwh[n] - m.bought_kwh[n] - m.imported_kwh[n],
    )


def define_network_cuts(m: pyo.ConcreteModel) -> None:
    """sum_n cut_coef[k, n] injection[n] <= cut_rhs[k] for every cut slot k."""
    m.network_cut = pyo.Constraint(
        m.K, rule=lambda m, k: sum(m.cut_coef[k, n] * m.injection_kwh[n] for n in m.N) <= m.cut_rhs[k]
    )


def write_participant_rows(h: highspy.Highs, row: dict, demand: np.ndarray, supply: np.ndarray,
                           ctx: MarketContext) -> None:
    """Write a round's demand and supply [kWh] into the balances `define_participant_balances`
    built, and the outside party's caps [kWh] into the model's import and export limits."""
    n, inf = len(demand), highspy.kHighsInf
    h.changeRowsBounds(n, row["buyer_balance"], demand, demand)
    h.changeRowsBounds(n, row["seller_balance"], supply, supply)
    h.changeRowsBounds(1, row["import_limit"], np.array([-inf]), np.array([min(ctx.import_cap_kwh, INACTIVE_RHS)]))
    h.changeRowsBounds(1, row["export_limit"], np.array([-inf]), np.array([min(ctx.export_cap_kwh, INACTIVE_RHS)]))
