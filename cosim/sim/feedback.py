"""Network feedback: violations -> linear cuts, forced curtailment, attribution, charges.

The loop runs these as an explicit fixed point (pandapower's control loop, PyPSA's
iterative optimisation): clear, run the power flow, find violations; while any remain
and fewer than ``max_iterations`` clearings were made, linearise each violation at the
current operating point into a cut on the participants' injections and clear again.
After the last clearing, remaining violations are removed by curtailing PV or shedding
load, shared among the participants by the scenario's ``feedback.curtailment_rule``
(`forced_reduction`), checked by a fresh power flow each time.

A participant's injection here is its delivered energy minus its consumed energy over
the round [kWh]; its bus sees injection / dt_h [kW].
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cosim.config.scenario import Feedback
from cosim.markets import ClearingResult, NetworkCuts, OrderArrays
from cosim.physical.grid.powerflow import GridState
from cosim.physical.grid.sensitivities import Sensitivities

#: Forced curtailment/shedding steps after the last clearing.
MAX_FORCED_STEPS = 4
#: Overshoot on the linear estimate of what forced curtailment must remove [-]. Small: a
#: power flow checks each step and the next step removes what the estimate missed (with
#: 1.25, a quarter of all forced curtailment on the default week was overshoot).
FORCED_OVERSHOOT = 1.05
#: Violations linearised into cuts per iteration (worst first).
CUTS_PER_ITERATION = 8
#: Rules that share forced curtailment and shedding (scenario ``feedback.curtailment_rule``).
CURTAILMENT_RULES = ("sensitivity", "pro_rata", "equal_share")
#: Under ``pro_rata`` and ``equal_share``, a participant is *behind* a violated element when
#: one kWh of its curtailment (or shedding) helps by more than this fraction of a kWh at the
#: most helpful participant [-]. It keeps out couplings through the shared transformer
#: only: on rural3 a feeder-end overvoltage sees the other feeders at 1-2 % (load: 6-7 %)
#: of the most sensitive bus, its own feeder at 20 % and more; a line's upstream buses at
#: about 0. Every participant counts behind a transformer overload (89-100 %).
BEHIND_REL_TOL = 0.10
#: Shares of energies below this are no shares [kWh] (keeps k = room / weight finite).
WEIGHT_TOL_KWH = 1e-12
#: Tolerances under which a limit counts as kept (pu, %, kW).
VM_TOL, LOADING_TOL, SLACK_TOL = 1e-6, 1e-4, 1e-3
#: Tolerance under which the unbalance limit counts as kept [%].
VUF_TOL = 1e-6
#: Unbalance margin the linearised constraints aim below ``feedback.max_vuf_pct`` [%]:
#: what about 2 kW of single-phase injection moves the unbalance at a rural3 feeder end
#: (up to 0.03 %/kW, measured with `PhaseSensitivities`), so that a cut lands inside the
#: limit despite the linearisation error.
VUF_MARGIN_PCT = 0.05
#: Excess on the common scale of `Violation.severity`: 0.2 % of unbalance counts as much
#: as 0.01 pu of voltage (per kW of single-phase injection at a rural3 feeder end, a bus's
#: VUF moves about 20-25 times as much, in %, as its phase voltage, in pu).
VUF_SEVERITY_PCT = 0.2
ATTRIBUTION_COLUMNS = [
    "round", "iteration", "violation", "kind", "element", "value", "limit",
    "seller", "buyer", "energy_kwh", "sensitivity", "contribution",
]


@dataclass(frozen=True)
class Violation:
    """A quantity outside its limit. `sign` is +1 for an upper limit, -1 for a lower."""

    kind: str
    """vm_max, vm_min, vuf, line, trafo, slack_max, slack_min"""
    element: int
    """pandapower index of the bus, line or transformer (-1 for the slack)."""
    position: int
    """Row of the quantity in the grid state's arrays."""
    value: float
    limit: float
    sign: int
    phase: str = ""
    """The phase (``a``, ``b``, ``c``) of a three-phase power flow's voltage or current
    limit; empty for a balanced one and for the unbalance factor."""

    @property
    def excess(self) -> float:
        return self.sign * (self.value - self.limit)

    @property
    def label(self) -> str:
        where = {"vm_max": "bus", "vm_min": "bus", "vuf": "bus", "line": "line", "trafo": "trafo"}.get(self.kind)
        label = f"{self.kind} {where} {self.element}" if where else self.kind
        return f"{label} {self.phase}" if self.phase else label

    @property
    def severity(self) -> float:
        """Excess on a common scale: 0.01 pu ~ 1 % loading ~ 10 kW ~ 0.2 % unbalance."""
        scale = {"vm_max": 0.01, "vm_min": 0.01, "vuf": VUF_SEVERITY_PCT, "line": 1.0, "trafo": 1.0}.get(self.kind, 10.0)
        return self.excess / scale


@dataclass(frozen=True)
class Limits:
    """The limits a round is checked against."""

    v_min_pu: float
    v_max_pu: float
    max_loading_pct: float
    slack_p_kw: float | None = None
    """Power limit of an islanded grid-forming unit [kW]; None when grid-connected."""
    max_vuf_pct: float | None = None
    """Limit of the voltage unbalance factor [%], checked on a three-phase power flow."""

    @classmethod
    def from_feedback(cls, fb: Feedback, slack_p_kw: float | None = None) -> Limits:
        return cls(fb.v_min_pu, fb.v_max_pu, fb.max_loading_pct, slack_p_kw, fb.max_vuf_pct)


def find_violations(state: GridState, limits: Limits, buses: np.ndarray, lines: np.ndarray,
                    trafos: np.ndarray) -> list[Violation]:
    """Every violated limit, worst first. A non-converged power flow has none to report.
    A three-phase power flow (``state.phases``) is checked per phase (`phase_violations`)."""
    if not state.converged:
        return []
    if state.phases is not None:
        return phase_violations(state.phases, limits, buses, lines, trafos)
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


def phase_violations(st, limits: Limits, buses: np.ndarray, lines: np.ndarray,
                     trafos: np.ndarray) -> list[Violation]:
    """Every violated limit of a three-phase power flow (`PhaseState`), worst first: each
    phase's voltage against the band, each bus's unbalance factor against
    ``limits.max_vuf_pct``, each phase current of a line or transformer against the
    loading limit. A phase quantity's position is ``3 * row + phase`` (the rows of
    `cosim.physical.grid.threephase_flow.PhaseSensitivities`)."""
    from cosim.physical.grid.threephase import PHASES

    found: list[Violation] = []
    vm = np.nan_to_num(st.vm_pu, nan=1.0)
    for kind, bad, limit, sign in (("vm_max", vm > limits.v_max_pu + VM_TOL, limits.v_max_pu, +1),
                                   ("vm_min", vm < limits.v_min_pu - VM_TOL, limits.v_min_pu, -1)):
        for i, ph in zip(*np.nonzero(bad), strict=True):
            found.append(Violation(kind, int(buses[i]), int(3 * i + ph), float(vm[i, ph]), limit, sign, PHASES[ph]))
    if limits.max_vuf_pct is not None:
        vuf = np.nan_to_num(st.vuf_pct)
        for i in np.flatnonzero(vuf > limits.max_vuf_pct + VUF_TOL):
            found.append(Violation("vuf", int(buses[i]), int(i), float(vuf[i]), limits.max_vuf_pct, +1))
    for kind, arr, idx in (("line", st.line_loading_pct, lines), ("trafo", st.trafo_loading_pct, trafos)):
        arr = np.nan_to_num(arr)
        for i, ph in zip(*np.nonzero(arr > limits.max_loading_pct + LOADING_TOL), strict=True):
            found.append(Violation(kind, int(idx[i]), int(3 * i + ph), float(arr[i, ph]), limits.max_loading_pct, +1,
                                   PHASES[ph]))
    return sorted(found, key=lambda v: -v.severity)


def gradient(v: Violation, sens: Sensitivities) -> np.ndarray:
    """d(quantity)/d(injection) per sensitivity column (bus; participant for a
    three-phase power flow) [unit per kW]."""
    if v.kind in ("vm_max", "vm_min"):
        return sens.dvm_dp[v.position]
    if v.kind == "vuf":
        return sens.dvuf_dp[v.position]
    if v.kind == "line":
        return sens.dline_dp[v.position]
    if v.kind == "trafo":
        return sens.dtrafo_dp[v.position]
    return sens.dslack_dp


def margin_for(v: Violation, fb: Feedback) -> float:
    if v.kind in ("vm_max", "vm_min"):
        return fb.margin_pu
    if v.kind == "vuf":
        return VUF_MARGIN_PCT
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

    Under a sharing ``fb.curtailment_rule`` (``pro_rata``, ``equal_share``) there are no
    cuts: a participant's injection is its order less what it is curtailed or shed, so
    the market can meet a cut only by curtailing or shedding, and it does so at least
    cost, i.e. at the most sensitive participants (the ``sensitivity`` rule). The
    violation is left to `forced_reduction`, which shares it by the rule.
    """
    rows, rhs, labels = [], [], []
    if fb.curtailment_rule != "sensitivity":
        violations = []
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
    result: ClearingResult, dt_h: float, fb: Feedback, *,
    pv_kwh: np.ndarray | None = None, load_kwh: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Curtailment and shedding [kWh] that, to first order, bring every violation back
    inside its limit (with the feedback margin), shared by ``fb.curtailment_rule``.

    For violation v with gradient g [unit/kWh] and sign s (+1 upper limit, -1 lower), one
    kWh curtailed at participant i helps by ``h_i = s g_i`` and one kWh shed by ``-s g_i``
    (curtailing lowers the injection, shedding raises it). The reductions must deliver

        need_v = (excess_v + margin_v) * FORCED_OVERSHOOT - sum_i h_i x_i,

    the last term being what the reductions made for the violations before v in the list
    already do (to first order, so a reduction is not counted twice). Participant i can
    give at most its room ``u_i``: its available export (sold + exported) for curtailment,
    its available import (bought + imported) for shedding, less what is already taken.

    - ``sensitivity`` (least energy): participants in order of help per kWh, each taken
      up to its room until the need is met.
    - ``pro_rata``: every participant behind the violation gives the same fraction k of
      its available export A_i (import B_i for shedding) of the round, before any forced
      reduction: ``x_i = min(k A_i, u_i)``, k solving ``sum_i h_i x_i = need_v``. So the
      curtailment is in proportion to the available export.
    - ``equal_share``: as pro_rata, but the fraction is of each participant's PV energy
      in the round (``pv_kwh``; load energy ``load_kwh`` for shedding): the same fraction
      of PV energy, i.e. the same kWh per kWp under one irradiance. Without ``pv_kwh`` /
      ``load_kwh`` the available export / import stands in, and the rule equals pro_rata.

    A participant is *behind* the violation when it helps by more than
    ``BEHIND_REL_TOL`` of the most helpful participant (see there). Whatever the shared
    rules cannot deliver because participants hit their room is then taken most
    sensitive first, so that every rule removes the violation to first order whenever
    the room allows. The loop re-checks with a power flow and calls this again with the
    reduced dispatch; the fractions then add up over the calls.

    Parameters
    ----------
    pv_kwh, load_kwh : per participant, PV generation and load in the round [kWh]
        (optional; used by ``equal_share``).
    """
    n = len(participant_pos)
    curtail, shed = np.zeros(n), np.zeros(n)
    can_curtail = result.sold_kwh + result.export_kwh
    can_shed = result.bought_kwh + result.import_kwh
    rule = fb.curtailment_rule
    if rule not in CURTAILMENT_RULES:
        raise ValueError(f"curtailment_rule: expected one of {', '.join(CURTAILMENT_RULES)}, found {rule!r}")
    if rule != "sensitivity":
        # the round's available export / import before any forced reduction (earlier calls
        # of this round's loop are in result.curtailed_kwh / shed_kwh)
        base_c = can_curtail + np.asarray(result.curtailed_kwh, float)
        base_s = can_shed + np.asarray(result.shed_kwh, float)
        if rule == "equal_share":
            if pv_kwh is None or load_kwh is None:
                warnings.warn("equal_share without pv_kwh/load_kwh: shares by available export/import "
                              "(as pro_rata)", stacklevel=2)
            base_c = np.asarray(pv_kwh, float) if pv_kwh is not None else base_c
            base_s = np.asarray(load_kwh, float) if load_kwh is not None else base_s
        weight = np.concatenate([base_c, base_s])
    for v in violations:
        g = gradient(v, sens)[participant_pos] / dt_h
        # effect of one kWh: curtailing lowers injection (-g), shedding raises it (+g); we
        # need sign * change <= -need, i.e. help = -sign * change
        help_both = np.concatenate([v.sign * g, -v.sign * g])
        taken = np.concatenate([curtail, shed])
        need = (v.excess + margin_for(v, fb)) * FORCED_OVERSHOOT - float(help_both @ taken)
        if need <= 0:
            continue
        room = np.maximum(np.concatenate([can_curtail, can_shed]) - taken, 0.0)
        if rule != "sensitivity":
            behind = help_both > BEHIND_REL_TOL * max(float(help_both.max()), 0.0)
            x, need = shared_reduction(need, np.where(behind, help_both, 0.0), weight, room)
            taken = taken + x
            room = np.maximum(room - x, 0.0)
        x, need = most_sensitive_first(need, help_both, room)
        taken = taken + x
        curtail, shed = taken[:n], taken[n:]
    return curtail, shed


def most_sensitive_first(need: float, help_per_kwh: np.ndarray, room_kwh: np.ndarray) -> tuple[np.ndarray, float]:
    """Take ``x_i <= room_i`` [kWh] in order of decreasing help per kWh until
    ``sum_i help_i x_i = need`` (ties: the later option first). Returns x and what is
    still needed (0 when the room sufficed).

    >>> x, left = most_sensitive_first(3.0, np.array([1.0, 2.0, 0.5]), np.array([5.0, 1.0, 5.0]))
    >>> x.tolist(), left
    ([1.0, 1.0, 0.0], 0.0)
    """
    x = np.zeros_like(room_kwh, dtype=float)
    options = [(help_per_kwh[i], i) for i in range(len(x)) if help_per_kwh[i] > 0 and room_kwh[i] > 0]
    for gain, i in sorted(options, reverse=True):
        if need <= 0:
            break
        take = room_kwh[i] if need >= gain * room_kwh[i] else need / gain
        x[i] += take
        need -= take * gain
    return x, float(max(need, 0.0))


def shared_reduction(need: float, help_per_kwh: np.ndarray, weight: np.ndarray,
                     room_kwh: np.ndarray) -> tuple[np.ndarray, float]:
    """The same fraction k of every weight: ``x_i = min(k w_i, room_i)`` [kWh] over the
    participants with positive help, weight (> WEIGHT_TOL_KWH) and room, with k the smallest that makes
    ``sum_i help_i x_i = need`` (a water-filling: those that hit their room give all of
    it and k rises for the rest). Returns x and what is still needed (> 0 only when
    every participant gave all of its room).

    Two participants with help 1 and 2 per kWh and weights 4 and 2 kWh: k (4 + 2*2) = 4
    gives k = 0.5, so x = (2, 1) kWh. With the second one's room 0.5 kWh, it gives 0.5
    and the first k' 4 = 4 - 2*0.5, x = (3, 0.5):

    >>> shared_reduction(4.0, np.array([1.0, 2.0]), np.array([4.0, 2.0]), np.array([9.0, 9.0]))[0].tolist()
    [2.0, 1.0]
    >>> shared_reduction(4.0, np.array([1.0, 2.0]), np.array([4.0, 2.0]), np.array([9.0, 0.5]))[0].tolist()
    [3.0, 0.5]
    """
    x = np.zeros_like(room_kwh, dtype=float)
    idx = np.flatnonzero((help_per_kwh > 0) & (weight > WEIGHT_TOL_KWH) & (room_kwh > 0))
    if need <= 0 or idx.size == 0:
        return x, float(max(need, 0.0))
    idx = idx[np.argsort(room_kwh[idx] / weight[idx], kind="stable")]  # k at which each is capped
    h, w, u = help_per_kwh[idx], weight[idx], room_kwh[idx]
    capped_help = 0.0  # help of those already at their room
    # help per unit of k of participants j, j+1, ... (not yet capped at k <= u_j / w_j)
    slope = np.append(np.cumsum((h * w)[::-1])[::-1], 0.0)
    for j in range(len(idx)):
        if capped_help + h[j] * u[j] + slope[j + 1] * (u[j] / w[j]) >= need:  # help at k = u_j / w_j
            k = (need - capped_help) / slope[j]
            x[idx[:j]] = u[:j]
            x[idx[j:]] = np.minimum(k * w[j:], u[j:])
            return x, 0.0
        capped_help += h[j] * u[j]
    x[idx] = u
    return x, float(max(need - capped_help, 0.0))


def reduce_orders(orders: OrderArrays, curtail: np.ndarray, shed: np.ndarray) -> OrderArrays:
    """The order book with forced curtailment and shedding taken out of it."""
    return OrderArrays(
        np.maximum(orders.demand_kwh - shed, 0.0),
        np.maximum(orders.supply_kwh - curtail, 0.0),
        orders.bid_per_kwh,
        orders.ask_per_kwh,
    )


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
