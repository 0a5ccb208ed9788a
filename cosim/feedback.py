"""Network feedback: violations -> linear cuts, forced curtailment, attribution, charges.

The loop runs these as an explicit fixed point (pandapower's control loop, PyPSA's
iterative optimisation): clear, run the power flow, find violations; while any remain
and fewer than ``max_iterations`` clearings were made, linearise each violation at the
current operating point into a cut on the participants' injections and clear again.
After the last clearing, remaining violations are removed by curtailing PV or shedding
load at the most sensitive participants, checked by a fresh power flow each time.

A participant's injection here is its delivered energy minus its consumed energy over
the round [kWh]; its bus sees injection / dt_h [kW].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cosim.grid.powerflow import GridState
from cosim.grid.sensitivities import Sensitivities
from cosim.markets import Charges, ClearingResult, NetworkCuts, OrderArrays
from cosim.scenario import Feedback

#: Forced curtailment/shedding steps after the last clearing.
MAX_FORCED_STEPS = 4
#: Overshoot on the linear estimate of what forced curtailment must remove [-].
FORCED_OVERSHOOT = 1.25
#: Violations linearised into cuts per iteration (worst first).
CUTS_PER_ITERATION = 8
#: Tolerances under which a limit counts as kept (pu, %, kW).
VM_TOL, LOADING_TOL, SLACK_TOL = 1e-6, 1e-4, 1e-3
ATTRIBUTION_COLUMNS = [
    "round", "iteration", "violation", "kind", "element", "value", "limit",
    "seller", "buyer", "energy_kwh", "sensitivity", "contribution",
]


@dataclass(frozen=True)
class Violation:
    """A quantity outside its limit. `sign` is +1 for an upper limit, -1 for a lower."""

    kind: str
    """vm_max, vm_min, line, trafo, slack_max, slack_min"""
    element: int
    """pandapower index of the bus, line or transformer (-1 for the slack)."""
    position: int
    """Row of the quantity in the grid state's arrays."""
    value: float
    limit: float
    sign: int

    @property
    def excess(self) -> float:
        return self.sign * (self.value - self.limit)

    @property
    def label(self) -> str:
        where = {"vm_max": "bus", "vm_min": "bus", "line": "line", "trafo": "trafo"}.get(self.kind)
        return f"{self.kind} {where} {self.element}" if where else self.kind

    @property
    def severity(self) -> float:
        """Excess on a common scale: 0.01 pu ~ 1 % loading ~ 10 kW."""
        scale = {"vm_max": 0.01, "vm_min": 0.01, "line": 1.0, "trafo": 1.0}.get(self.kind, 10.0)
        return self.excess / scale


@dataclass(frozen=True)
class Limits:
    """The limits a round is checked against."""

    v_min_pu: float
    v_max_pu: float
    max_loading_pct: float
    slack_p_kw: float | None = None
    """Power limit of an islanded grid-forming unit [kW]; None when grid-connected."""

    @classmethod
    def from_feedback(cls, fb: Feedback, slack_p_kw: float | None = None) -> Limits:
        return cls(fb.v_min_pu, fb.v_max_pu, fb.max_loading_pct, slack_p_kw)


def find_violations(state: GridState, limits: Limits, buses: np.ndarray, lines: np.ndarray,
                    trafos: np.ndarray) -> list[Violation]:
    """Every violated limit, worst first. A non-converged power flow has none to report."""
    if not state.converged:
        return []
    found: list[Violation] = []
    vm = np.nan_to_num(state.vm_pu, nan=1.0)
    for i in np.flatnonzero(vm > limits.v_max_pu + VM_TOL):
        found.append(Violation("vm_max", int(buses[i]), int(i), float(vm[i]), limits.v_max_pu, +1))
    for i in np.flatnonzero(vm < limits.v_min_pu - VM_TOL):
        found.append(Violation("vm_min", int(buses[i]), int(i), float(vm[i]), limits.v_min_pu, -1))
    for kind, arr, idx in (("line", state.line_loading_pct, lines), ("trafo", state.trafo_loading_pct, trafos)):
        for i in np.flatnonzero(np.nan_to_num(arr) > limits.max_loading_pct + LOADING_TOL):
            found.append(Violation(kind, int(idx[i]), int(i), float(arr[i]), limits.max_loading_pct, +1))
    if limits.slack_p_kw is not None:
        if state.slack_p_kw > limits.slack_p_kw + SLACK_TOL:
            found.append(Violation("slack_max", -1, 0, state.slack_p_kw, limits.slack_p_kw, +1))
        if state.slack_p_kw < -limits.slack_p_kw - SLACK_TOL:
            found.append(Violation("slack_min", -1, 0, state.slack_p_kw, -limits.slack_p_kw, -1))
    return sorted(found, key=lambda v: -v.severity)


def gradient(v: Violation, sens: Sensitivities) -> np.ndarray:
    """d(quantity)/d(injection) per bus [unit per kW]."""
    if v.kind in ("vm_max", "vm_min"):
        return sens.dvm_dp[v.position]
    if v.kind == "line":
        return sens.dline_dp[v.position]
    if v.kind == "trafo":
        return sens.dtrafo_dp[v.position]
    return sens.dslack_dp


def margin_for(v: Violation, fb: Feedback) -> float:
    if v.kind in ("vm_max", "vm_min"):
        return fb.margin_pu
    if v.kind in ("line", "trafo"):
        return fb.margin_pct
    return 0.01 * abs(v.limit)


def linearise(
    violations: list[Violation], sens: Sensitivities, participant_pos: np.ndarray,
    injection_kwh: np.ndarray, dt_h: float, fb: Feedback,
) -> NetworkCuts:
    """Cuts that keep each violated quantity inside its limit, to first order.

    With q(inj) ~ q0 + g (inj - inj0) and an upper limit L (lower: signs flip):
    ``g inj <= L - margin - q0 + g inj0``. `participant_pos` maps each participant to its
    bus position in the sensitivity columns.
    """
    rows, rhs, labels = [], [], []
    for v in violations[:CUTS_PER_ITERATION]:
        g = gradient(v, sens)[participant_pos] / dt_h  # per kWh of the round
        target = v.limit - v.sign * margin_for(v, fb)
        s = v.sign
        rows.append(s * g)
        rhs.append(s * (target - v.value) + s * float(g @ injection_kwh))
        labels.append(v.label)
    if not rows:
        return NetworkCuts.empty(len(participant_pos))
    return NetworkCuts(np.array(rows), np.array(rhs), tuple(labels))


def forced_reduction(
    violations: list[Violation], sens: Sensitivities, participant_pos: np.ndarray,
    result: ClearingResult, dt_h: float, fb: Feedback,
) -> tuple[np.ndarray, np.ndarray]:
    """Curtailment and shedding [kWh] at the most sensitive participants that, to first
    order, bring every violation back inside its limit (with the feedback margin).

    For each violation, participants are taken in order of how much one kWh of change
    helps: curtailing where more injection makes it worse, shedding where less does.
    """
    n = len(participant_pos)
    curtail, shed = np.zeros(n), np.zeros(n)
    can_curtail = result.sold_kwh + result.export_kwh
    can_shed = result.bought_kwh + result.import_kwh
    for v in violations:
        g = gradient(v, sens)[participant_pos] / dt_h
        need = (v.excess + margin_for(v, fb)) * FORCED_OVERSHOOT
        # effect of one kWh: curtailing lowers injection (-g), shedding raises it (+g); we
        # need sign * change <= -need, i.e. help = -sign * change
        help_curtail = v.sign * g
        help_shed = -v.sign * g
        options = [(help_curtail[i], i, "c") for i in range(n) if help_curtail[i] > 0 and can_curtail[i] - curtail[i] > 0]
        options += [(help_shed[i], i, "s") for i in range(n) if help_shed[i] > 0 and can_shed[i] - shed[i] > 0]
        for gain, i, what in sorted(options, reverse=True):
            if need <= 0:
                break
            room = (can_curtail[i] - curtail[i]) if what == "c" else (can_shed[i] - shed[i])
            take = min(room, need / gain)
            if what == "c":
                curtail[i] += take
            else:
                shed[i] += take
            need -= take * gain
    return curtail, shed


def reduce_orders(orders: OrderArrays, curtail: np.ndarray, shed: np.ndarray) -> OrderArrays:
    """The order book with forced curtailment and shedding taken out of it."""
    return OrderArrays(
        np.maximum(orders.demand_kwh - shed, 0.0),
        np.maximum(orders.supply_kwh - curtail, 0.0),
        orders.bid_per_kwh,
        orders.ask_per_kwh,
    )


def network_charges(
    method: str, rate_per_kwh: float, loss_factors: np.ndarray | None, participant_pos: np.ndarray
) -> Charges:
    """Per-kWh charges on P2P trades, split into buyer and seller parts.

    none: nothing. flat: the buyer pays `rate` per kWh of every P2P trade.
    sensitivity: a trade from seller i to buyer j pays ``rate * (lambda_i - lambda_j)``,
    lambda being the marginal loss factor (d losses / d injection) at each bus: a trade
    that raises network losses pays for them, one in the opposite direction (against the
    flow) earns a credit. `loss_factors` are per bus [kW/kW]. The seller part is ``rate lambda_i``, the buyer part
    ``-rate lambda_j``.
    """
    n = len(participant_pos)
    if method == "flat":
        return Charges(np.full(n, rate_per_kwh), np.zeros(n))
    if method == "sensitivity" and loss_factors is not None:
        lam = loss_factors[participant_pos]
        return Charges(-rate_per_kwh * lam, rate_per_kwh * lam)
    return Charges.none(n)


def attribute(
    round_no: int, iteration: int, violations: list[Violation], sens: Sensitivities,
    bus_pos_of: dict[str, int], trades: pd.DataFrame, dt_h: float,
) -> pd.DataFrame:
    """Share of each violation caused by each trade: sensitivity x traded energy.

    A trade of e kWh from seller s to buyer b moves e/dt_h kW of injection from b's bus to
    s's bus, so it changes the quantity by ``(g[s] - g[b]) e / dt_h``. The outside party
    sits at the slack bus, where g = 0. The contributions of all trades add up to the
    linear estimate of the quantity's deviation caused by the round's dispatch.
    """
    if not violations or trades.empty:
        return pd.DataFrame(columns=ATTRIBUTION_COLUMNS)
    seller_pos = trades.seller.map(bus_pos_of).to_numpy(float)
    buyer_pos = trades.buyer.map(bus_pos_of).to_numpy(float)
    energy = trades.energy_kwh.to_numpy(float)
    frames = []
    for v in violations[:CUTS_PER_ITERATION]:
        g = gradient(v, sens)
        gs = np.where(np.isnan(seller_pos), 0.0, g[np.nan_to_num(seller_pos).astype(int)])
        gb = np.where(np.isnan(buyer_pos), 0.0, g[np.nan_to_num(buyer_pos).astype(int)])
        sensitivity = gs - gb
        frames.append(
            pd.DataFrame(
                {
                    "round": round_no,
                    "iteration": iteration,
                    "violation": v.label,
                    "kind": v.kind,
                    "element": v.element,
                    "value": v.value,
                    "limit": v.limit,
                    "seller": trades.seller.to_numpy(),
                    "buyer": trades.buyer.to_numpy(),
                    "energy_kwh": energy,
                    "sensitivity": sensitivity,
                    "contribution": sensitivity * energy / dt_h,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
