"""Tests of cosim.sim.feedback: violations, linear cuts, forced curtailment, attribution, charges.

Violations are checked on hand-made grid states; cuts, forced reduction and charges on real
operating points of the small feeder and SimBench rural3, and re-checked with a real AC
power flow after the injections are moved as the feedback says.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.config.scenario import Feedback
from cosim.markets import Charges, ClearingResult
from cosim.physical.grid.powerflow import GridState, PowerFlow
from cosim.physical.grid.sensitivities import Sensitivities, compute_sensitivities
from cosim.physical.networks import lv_busbar, set_islanded
from cosim.sim.feedback import (
    ATTRIBUTION_COLUMNS,
    BEHIND_REL_TOL,
    CUTS_PER_ITERATION,
    FORCED_OVERSHOOT,
    Limits,
    Violation,
    attribute,
    find_violations,
    forced_reduction,
    gradient,
    linearise,
    margin_for,
)
from cosim.sim.tariff import NetworkTariff

#: Length of a round [h].
DT_H = 0.25
#: After moving injections onto a cut's boundary, the real quantity lands this close to the
#: cut's target, as a fraction of the violation's excess [-] (first-order accuracy).
LINEAR_ACCURACY = 0.10
#: Injection step of the finite-difference check of loss charges [kWh per round].
TRADE_STEP_KWH = 0.05

BAND = Limits(v_min_pu=0.90, v_max_pu=1.10, max_loading_pct=100.0)
BUSES = np.array([10, 11, 12, 13])
LINES = np.array([20, 21, 22])
TRAFOS = np.array([30])


# -- find_violations on hand-made states ----------------------------------------------------


def hand_state(vm=(1.0, 1.0, 1.0, 1.0), line=(50.0, 50.0, 50.0), trafo=(50.0,), slack_kw=0.0,
               converged=True) -> GridState:
    vm = np.asarray(vm, float)
    return GridState(
        converged, "newton" if converged else "failed", vm, np.zeros_like(vm),
        np.asarray(line, float), np.asarray(trafo, float), float(slack_kw), 0.0,
    )


@pytest.mark.parametrize(
    ("state_kwargs", "limits", "kind", "element", "position", "value", "limit", "sign"),
    [
        ({"vm": (1.0, 1.0, 1.13, 1.0)}, BAND, "vm_max", 12, 2, 1.13, 1.10, +1),
        ({"vm": (1.0, 0.87, 1.0, 1.0)}, BAND, "vm_min", 11, 1, 0.87, 0.90, -1),
        ({"line": (50.0, 50.0, 112.0)}, BAND, "line", 22, 2, 112.0, 100.0, +1),
        ({"trafo": (140.0,)}, BAND, "trafo", 30, 0, 140.0, 100.0, +1),
        ({"slack_kw": 65.0}, Limits(0.9, 1.1, 100.0, 50.0), "slack_max", -1, 0, 65.0, 50.0, +1),
        ({"slack_kw": -58.0}, Limits(0.9, 1.1, 100.0, 50.0), "slack_min", -1, 0, -58.0, -50.0, -1),
    ],
)
def test_each_kind_is_detected_with_sign_and_excess(state_kwargs, limits, kind, element, position,
                                                     value, limit, sign):
    found = find_violations(hand_state(**state_kwargs), limits, BUSES, LINES, TRAFOS)
    assert len(found) == 1
    v = found[0]
    assert (v.kind, v.element, v.position, v.sign) == (kind, element, position, sign)
    assert v.value == pytest.approx(value)
    assert v.limit == pytest.approx(limit)
    assert v.excess == pytest.approx(abs(value - limit))
    assert v.excess > 0


def test_nothing_inside_the_band():
    state = hand_state(vm=(0.90, 1.10, 1.0, 0.95), line=(100.0, 99.9, 0.0), trafo=(100.0,), slack_kw=50.0)
    assert find_violations(state, Limits(0.9, 1.1, 100.0, 50.0), BUSES, LINES, TRAFOS) == []
    state = hand_state(slack_kw=-50.0)
    assert find_violations(state, Limits(0.9, 1.1, 100.0, 50.0), BUSES, LINES, TRAFOS) == []


def test_slack_power_is_unlimited_when_grid_connected():
    state = hand_state(slack_kw=1e6)
    assert find_violations(state, BAND, BUSES, LINES, TRAFOS) == []


def test_nan_entries_are_not_violations():
    """Isolated buses and de-energised branches (NaN) raise nothing."""
    state = hand_state(vm=(np.nan, 1.0, 1.0, 1.0), line=(np.nan, 50.0, 50.0), trafo=(np.nan,))
    assert find_violations(state, BAND, BUSES, LINES, TRAFOS) == []


def test_non_converged_state_reports_nothing():
    state = hand_state(vm=(0.5, 2.0, 1.0, 1.0), line=(500.0, 50.0, 50.0), converged=False)
    assert find_violations(state, BAND, BUSES, LINES, TRAFOS) == []


def test_violations_are_sorted_worst_first():
    # severities on the common scale (0.01 pu ~ 1 % ~ 10 kW): 3, 5, 12, 0.5, 2, 8
    state = hand_state(vm=(1.13, 0.85, 1.0, 1.0), line=(112.0, 100.5, 50.0), trafo=(102.0,), slack_kw=130.0)
    found = find_violations(state, Limits(0.9, 1.1, 100.0, 50.0), BUSES, LINES, TRAFOS)
    assert [v.kind for v in found] == ["line", "slack_max", "vm_min", "vm_max", "trafo", "line"]
    assert [v.element for v in found] == [20, -1, 11, 10, 30, 21]
    severities = [v.severity for v in found]
    assert severities == sorted(severities, reverse=True)
    assert severities == pytest.approx([12.0, 8.0, 5.0, 3.0, 2.0, 0.5])


@settings(max_examples=60, deadline=None)
@given(
    vm=st.lists(st.floats(0.8, 1.2), min_size=4, max_size=4),
    line=st.lists(st.floats(0.0, 200.0), min_size=3, max_size=3),
    trafo=st.floats(0.0, 200.0),
    slack_kw=st.floats(-100.0, 100.0),
)
def test_violations_are_exactly_the_quantities_outside_their_limits(vm, line, trafo, slack_kw):
    limits = Limits(0.9, 1.1, 100.0, 50.0)
    found = find_violations(hand_state(vm, line, (trafo,), slack_kw), limits, BUSES, LINES, TRAFOS)
    expected = {("vm_max", int(b)) for b, x in zip(BUSES, vm, strict=True) if x > 1.1 + 1e-6}
    expected |= {("vm_min", int(b)) for b, x in zip(BUSES, vm, strict=True) if x < 0.9 - 1e-6}
    expected |= {("line", int(e)) for e, x in zip(LINES, line, strict=True) if x > 100.0 + 1e-4}
    expected |= {("trafo", 30)} if trafo > 100.0 + 1e-4 else set()
    expected |= {("slack_max", -1)} if slack_kw > 50.0 + 1e-3 else set()
    expected |= {("slack_min", -1)} if slack_kw < -50.0 - 1e-3 else set()
    assert {(v.kind, v.element) for v in found} == expected
    assert all(v.excess > 0 for v in found)
    severities = [v.severity for v in found]
    assert severities == sorted(severities, reverse=True)


# -- real operating points -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rural3(grid_rural3_net):
    net = copy.deepcopy(grid_rural3_net)
    return net, PowerFlow(net)


@pytest.fixture(scope="module")
def rural3_islanded(grid_rural3_net):
    net = copy.deepcopy(grid_rural3_net)
    set_islanded(net, lv_busbar(net))
    return net, PowerFlow(net)


@pytest.fixture(scope="module")
def feeder(grid_feeder_net):
    net = copy.deepcopy(grid_feeder_net)
    return net, PowerFlow(net)


def participants_at_loads(net, pf: PowerFlow) -> np.ndarray:
    """One participant per load; its position in the PowerFlow's bus arrays."""
    pos = np.searchsorted(pf.buses, net.load.bus.to_numpy())
    assert np.array_equal(pf.buses[pos], net.load.bus.to_numpy())
    return pos


def bus_load(pf: PowerFlow, pos: np.ndarray, participant_kw: np.ndarray) -> np.ndarray:
    """Per-bus net load [kW] from per-participant net load [kW]."""
    return np.bincount(pos, weights=participant_kw, minlength=len(pf.buses))


def make_operating_point(name: str, nets: dict) -> dict:
    """A real operating point with a violation of the named kind.

    Net load per participant is uniform: PV backfeed (negative) or load (positive). Where
    the default band has no violation of that kind at a sensible dispatch, the limit is
    set just inside the reached value (a stricter band is an ordinary input).
    """
    net_key, participant_kw, limits = {
        "vm_max": ("rural3", -8.5, BAND),
        "line": ("rural3", -8.5, BAND),
        "trafo": ("feeder", -40.0, BAND),
        "vm_min": ("rural3", 5.0, None),
        "slack_max": ("rural3_islanded", 1.0, Limits(0.9, 1.1, 100.0, 100.0)),
        "slack_min": ("rural3_islanded", -1.0, Limits(0.9, 1.1, 100.0, 100.0)),
    }[name]
    net, pf = nets[net_key]
    pos = participants_at_loads(net, pf)
    p_kw = bus_load(pf, pos, np.full(len(pos), participant_kw))
    q_kvar = 0.2 * np.maximum(p_kw, 0.0)  # loads at power factor 0.98, PV at unity
    state = pf.run(p_kw, q_kvar)
    assert state.converged
    if limits is None:  # 0.01 pu above the lowest voltage reached
        limits = Limits(float(np.nanmin(state.vm_pu)) + 0.01, 1.10, 1000.0)
    violations = [v for v in find_violations(state, limits, pf.buses, pf.lines, pf.trafos) if v.kind == name]
    assert violations, f"the operating point should violate {name}"
    return {
        "net": net, "pf": pf, "pos": pos, "p_kw": p_kw, "q_kvar": q_kvar, "state": state,
        "limits": limits, "violation": violations[0], "sens": compute_sensitivities(pf, state),
        "injection_kwh": -np.full(len(pos), participant_kw) * DT_H,
    }


@pytest.fixture(scope="module")
def nets(rural3, rural3_islanded, feeder):
    return {"rural3": rural3, "rural3_islanded": rural3_islanded, "feeder": feeder}


@pytest.fixture(scope="module")
def operating_points(nets):
    """Operating points by violation kind, each built once per module (treat as read-only)."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = make_operating_point(name, nets)
        return cache[name]

    return get


def quantity(state: GridState, v: Violation) -> float:
    """The value of `v`'s quantity in `state`."""
    if v.kind in ("vm_max", "vm_min"):
        return float(state.vm_pu[v.position])
    if v.kind == "line":
        return float(state.line_loading_pct[v.position])
    if v.kind == "trafo":
        return float(state.trafo_loading_pct[v.position])
    return float(state.slack_p_kw)


def rerun(op: dict, new_injection_kwh: np.ndarray) -> GridState:
    """Real power flow with the participants' injections changed to `new_injection_kwh`."""
    delta_kw = (new_injection_kwh - op["injection_kwh"]) / DT_H
    state = op["pf"].run(op["p_kw"] - bus_load(op["pf"], op["pos"], delta_kw), op["q_kvar"])
    assert state.converged
    return state


KINDS = ["vm_max", "vm_min", "line", "trafo", "slack_max", "slack_min"]


@pytest.mark.parametrize("kind", KINDS)
def test_cut_is_the_linearisation_at_the_current_injection(operating_points, kind):
    op = operating_points(kind)
    v, fb = op["violation"], Feedback()
    inj0 = op["injection_kwh"]
    cuts = linearise([v], op["sens"], op["pos"], inj0, DT_H, fb)
    assert cuts.coef.shape == (1, len(op["pos"])) and cuts.rhs.shape == (1,)
    assert cuts.labels == (v.label,)
    g = gradient(v, op["sens"])[op["pos"]] / DT_H  # quantity per kWh injected by each participant
    np.testing.assert_allclose(cuts.coef[0], v.sign * g, rtol=1e-12, atol=0)
    # q(inj) = q0 + g (inj - inj0) predicts q0 at inj0, so the cut is violated there by
    # exactly the excess plus the margin it aims inside the limit
    target = v.limit - v.sign * margin_for(v, fb)
    assert cuts.coef[0] @ inj0 - cuts.rhs[0] == pytest.approx(v.sign * (v.value - target), rel=1e-9)
    assert v.sign * (v.value - target) == pytest.approx(v.excess + margin_for(v, fb), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_moving_onto_the_cut_brings_the_real_quantity_to_its_target(operating_points, kind):
    """Project the injections onto the cut's boundary (the smallest change that satisfies
    it); a real power flow then puts the quantity at the target within LINEAR_ACCURACY of
    the excess."""
    op = operating_points(kind)
    v, fb = op["violation"], Feedback()
    inj0 = op["injection_kwh"]
    cuts = linearise([v], op["sens"], op["pos"], inj0, DT_H, fb)
    a, b = cuts.coef[0], cuts.rhs[0]
    moved = inj0 - (a @ inj0 - b) * a / (a @ a)
    assert a @ moved == pytest.approx(b, rel=1e-9)
    target = v.limit - v.sign * margin_for(v, fb)
    after = quantity(rerun(op, moved), v)
    assert abs(after - target) <= LINEAR_ACCURACY * v.excess
    assert v.sign * (after - v.limit) < 0  # back inside the limit


def test_cuts_are_capped_per_iteration_worst_first(operating_points):
    op = operating_points("line")
    found = find_violations(op["state"], op["limits"], op["pf"].buses, op["pf"].lines, op["pf"].trafos)
    assert len(found) > CUTS_PER_ITERATION
    cuts = linearise(found, op["sens"], op["pos"], op["injection_kwh"], DT_H, Feedback())
    assert len(cuts) == CUTS_PER_ITERATION
    assert cuts.labels == tuple(v.label for v in found[:CUTS_PER_ITERATION])
    empty = linearise([], op["sens"], op["pos"], op["injection_kwh"], DT_H, Feedback())
    assert len(empty) == 0 and empty.coef.shape == (0, len(op["pos"]))


def clearing(injection_kwh: np.ndarray) -> ClearingResult:
    """A clearing in which each participant trades its net position with the outside grid."""
    n = len(injection_kwh)
    zero = np.zeros(n)
    return ClearingResult(
        "ok", zero, zero, np.maximum(-injection_kwh, 0.0), np.maximum(injection_kwh, 0.0),
        zero, zero, zero, zero, Charges.none(n), float("nan"),
    )


@pytest.mark.parametrize(("kind", "action"), [("vm_max", "curtail"), ("vm_min", "shed"), ("line", "curtail")])
def test_forced_reduction_takes_most_sensitive_first_and_removes_the_violation(
    operating_points, kind, action
):
    op = operating_points(kind)
    v, fb = op["violation"], Feedback()
    result = clearing(op["injection_kwh"])
    curtail, shed = forced_reduction([v], op["sens"], op["pos"], result, DT_H, fb)
    used, unused = (curtail, shed) if action == "curtail" else (shed, curtail)
    room = result.export_kwh if action == "curtail" else result.import_kwh
    np.testing.assert_array_equal(unused, 0.0)
    assert (used >= 0).all() and (used <= room + 1e-12).all()
    # how much one kWh helps: curtailing lowers the injection, shedding raises it
    g = gradient(v, op["sens"])[op["pos"]] / DT_H
    help_per_kwh = v.sign * g if action == "curtail" else -v.sign * g
    order = np.argsort(-help_per_kwh, kind="stable")
    taken = np.flatnonzero(used[order] > 0)
    assert len(taken) >= 2, "the case should need more than one participant"
    # a prefix of the most helpful participants, all but the last one taken in full
    np.testing.assert_array_equal(taken, np.arange(len(taken)))
    np.testing.assert_allclose(used[order][: len(taken) - 1], room[order][: len(taken) - 1])
    # first order: exactly the excess plus margin, with the overshoot
    need = (v.excess + margin_for(v, fb)) * FORCED_OVERSHOOT
    assert help_per_kwh @ used == pytest.approx(need, rel=1e-9)
    # the real power flow after the reduction keeps the limit
    after = rerun(op, op["injection_kwh"] - curtail + shed)
    assert v.sign * (quantity(after, v) - v.limit) < 0
    left = find_violations(after, op["limits"], op["pf"].buses, op["pf"].lines, op["pf"].trafos)
    assert (v.kind, v.element) not in {(w.kind, w.element) for w in left}


def test_forced_reduction_without_room_does_nothing(operating_points):
    op = operating_points("vm_max")
    n = len(op["pos"])
    curtail, shed = forced_reduction([op["violation"]], op["sens"], op["pos"], clearing(np.zeros(n)), DT_H,
                                     Feedback())
    np.testing.assert_array_equal(curtail, 0.0)
    np.testing.assert_array_equal(shed, 0.0)


# -- attribution ----------------------------------------------------------------------------


def test_contributions_add_up_to_the_linear_effect_of_the_dispatch(operating_points):
    op = operating_points("trafo")  # feeder, loads at bus positions 2..8
    sens, pos = op["sens"], op["pos"]
    ids = ["a", "b", "c", "d", "e"]
    bus_pos_of = {"a": int(pos[0]), "b": int(pos[3]), "c": int(pos[6]), "d": int(pos[6]), "e": int(pos[2])}
    trades = pd.DataFrame(
        {
            "seller": ["a", "a", "c", "grid", "grid", "d", "e", "c"],
            "buyer": ["b", "grid", "b", "d", "e", "a", "grid", "d"],
            "energy_kwh": [1.0, 0.5, 0.25, 0.75, 2.0, 0.4, 1.5, 0.3],
        }
    )
    injection = {p: trades.energy_kwh[trades.seller == p].sum() - trades.energy_kwh[trades.buyer == p].sum()
                 for p in ids}
    found = find_violations(op["state"], op["limits"], op["pf"].buses, op["pf"].lines, op["pf"].trafos)
    # add a voltage violation on a stricter band, so there are several violations of several kinds
    strict = Limits(0.9, float(np.nanmax(op["state"].vm_pu)) - 0.001, 1000.0)
    found += find_violations(op["state"], strict, op["pf"].buses, op["pf"].lines, op["pf"].trafos)
    assert {v.kind for v in found} >= {"trafo", "vm_max"}

    table = attribute(7, 2, found, sens, bus_pos_of, trades, DT_H)
    assert list(table.columns) == ATTRIBUTION_COLUMNS
    assert len(table) == len(trades) * min(len(found), CUTS_PER_ITERATION)
    assert (table["round"] == 7).all() and (table["iteration"] == 2).all()
    for v in found[:CUTS_PER_ITERATION]:
        rows = table[table.violation == v.label]
        assert len(rows) == len(trades)
        g = gradient(v, sens)
        linear_effect = sum(g[bus_pos_of[p]] * injection[p] / DT_H for p in ids)
        assert rows.contribution.sum() == pytest.approx(linear_effect, rel=1e-12, abs=1e-15)
        # the outside party sits where g = 0: its side of a trade contributes nothing
        for (_, row), (_, trade) in zip(rows.iterrows(), trades.iterrows(), strict=True):
            g_seller = 0.0 if trade.seller == "grid" else g[bus_pos_of[trade.seller]]
            g_buyer = 0.0 if trade.buyer == "grid" else g[bus_pos_of[trade.buyer]]
            assert row.sensitivity == pytest.approx(g_seller - g_buyer, rel=1e-12, abs=0)
            assert row.contribution == pytest.approx(row.sensitivity * trade.energy_kwh / DT_H, rel=1e-12)
        # c and d share a bus: a trade between them moves no power through the network
        assert rows.sensitivity.iloc[-1] == 0.0 and rows.contribution.iloc[-1] == 0.0
        assert (rows.value == v.value).all() and (rows.limit == v.limit).all()


def test_attribution_is_empty_without_violations_or_trades(operating_points):
    op = operating_points("trafo")
    trades = pd.DataFrame({"seller": ["a"], "buyer": ["grid"], "energy_kwh": [1.0]})
    empty = attribute(1, 1, [], op["sens"], {"a": 2}, trades, DT_H)
    assert empty.empty and list(empty.columns) == ATTRIBUTION_COLUMNS
    no_trades = attribute(1, 1, [op["violation"]], op["sens"], {"a": 2}, trades.iloc[0:0], DT_H)
    assert no_trades.empty and list(no_trades.columns) == ATTRIBUTION_COLUMNS


# -- network charges ------------------------------------------------------------------------


def test_flat_charge_is_paid_on_locally_supplied_withdrawals(operating_points):
    """The flat charge (a local use-of-system charge): each net withdrawal pays the rate on
    the share the feeder's own injections supplied; injections pay nothing."""
    op = operating_points("vm_max")
    inj = op["injection_kwh"] * np.where(np.arange(len(op["pos"])) % 3 == 0, -4.0, 1.0)  # some withdraw
    tariff = NetworkTariff.of("flat", 0.03, op["sens"].dloss_dp, op["pos"])
    charges = tariff.charges(inj)
    supplied, withdrawn = np.maximum(inj, 0).sum(), np.maximum(-inj, 0).sum()
    assert supplied > 0 and withdrawn > 0, "the case should have both"
    np.testing.assert_allclose(charges, 0.03 * np.maximum(-inj, 0) * min(1.0, supplied / withdrawn), rtol=1e-12)
    assert charges.sum() == pytest.approx(0.03 * min(supplied, withdrawn), rel=1e-12)
    # no sensitivities needed
    np.testing.assert_array_equal(NetworkTariff.of("flat", 0.03, None, op["pos"]).charges(inj), charges)


def test_no_charge_method_or_missing_sensitivities_charge_nothing(operating_points):
    op = operating_points("vm_max")
    for method, sens in [("none", op["sens"].dloss_dp), ("sensitivity", None)]:
        tariff = NetworkTariff.of(method, 0.03, sens, op["pos"])
        np.testing.assert_array_equal(tariff.charges(op["injection_kwh"]), 0.0)


def test_sensitivity_charge_is_rate_times_loss_factor_times_injection(operating_points):
    op = operating_points("vm_max")  # rural3 under PV backfeed
    rate, pos = 0.2, op["pos"]
    lam = op["sens"].dloss_dp[pos]
    tariff = NetworkTariff.of("sensitivity", rate, op["sens"].dloss_dp, pos)
    np.testing.assert_allclose(tariff.charges(op["injection_kwh"]), rate * lam * op["injection_kwh"], rtol=1e-12)
    inject, withdraw = tariff.rates_per_kwh(op["injection_kwh"])
    # the two ends of a trade from seller i to buyer j pay inject[i] + withdraw[j] =
    # rate (lambda_i - lambda_j) per kWh, the reverse trade the opposite
    i, j = int(np.argmax(lam)), int(np.argmin(lam))
    assert lam[i] - lam[j] > 0.01, "the case should have distinct loss factors"
    forward = inject[i] + withdraw[j]
    backward = inject[j] + withdraw[i]
    assert forward == pytest.approx(rate * (lam[i] - lam[j]), rel=1e-12)
    assert backward == pytest.approx(-forward, rel=1e-12)
    assert forward > 0 > backward
    # and it prices the losses the trade really causes (central finite difference)
    delta_losses = []
    for e in (TRADE_STEP_KWH, -TRADE_STEP_KWH):
        moved = op["injection_kwh"].copy()
        moved[i] += e
        moved[j] -= e
        delta_losses.append(rerun(op, moved).losses_kw * DT_H)
    marginal_loss_per_kwh = (delta_losses[0] - delta_losses[1]) / (2 * TRADE_STEP_KWH)
    assert forward == pytest.approx(rate * marginal_loss_per_kwh, rel=1e-3)


# -- curtailment rules (feedback.curtailment_rule) --------------------------------------------
#
# A hand-made linearisation: four participants at bus positions 0..3 and one violated voltage
# at position 0. dV/dP per kW injected: 0.0025, 0.00125, 0.0005, 0 pu/kW, i.e. per kWh of a
# 15-min round (x 1/DT_H) 0.01, 0.005, 0.002, 0 pu/kWh. Participant 3 is not behind the bus.
# The excess is chosen so that with the default margin (0.002 pu) and the overshoot the
# reductions must deliver need = (excess + 0.002) * FORCED_OVERSHOOT = 0.0115 pu.

HAND_G_PER_KW = np.array([0.0025, 0.00125, 0.0005, 0.0])
HAND_HELP_PER_KWH = HAND_G_PER_KW / DT_H  # 0.01, 0.005, 0.002, 0
HAND_NEED_PU = 0.0115
HAND_ROOM_KWH = np.array([0.5, 2.0, 4.0, 3.0])  # available export (or import) per participant


def hand_sens(g_per_kw: np.ndarray = HAND_G_PER_KW) -> Sensitivities:
    n = len(g_per_kw)
    dvm = np.zeros((n, n))
    dvm[0] = g_per_kw
    return Sensitivities(dvm, np.zeros((0, n)), np.zeros((0, n)), np.zeros(n), np.zeros(n))


def hand_violation(kind: str) -> Violation:
    excess = HAND_NEED_PU / FORCED_OVERSHOOT - 0.002
    if kind == "vm_max":
        return Violation("vm_max", 100, 0, 1.10 + excess, 1.10, +1)
    return Violation("vm_min", 100, 0, 0.90 - excess, 0.90, -1)


def hand_result(kind: str, room_kwh: np.ndarray = HAND_ROOM_KWH) -> ClearingResult:
    """Exporters (vm_max) or importers (vm_min) with `room_kwh`, half of it in P2P trades."""
    injection = room_kwh if kind == "vm_max" else -room_kwh
    r = clearing(injection / 2)
    return dataclasses.replace(r, bought_kwh=r.import_kwh, sold_kwh=r.export_kwh)


def hand_reduction(kind: str, rule: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(reduction that fixes the hand case, the other one), by `rule`."""
    fb = Feedback(curtailment_rule=rule)
    assert (hand_violation(kind).excess + margin_for(hand_violation(kind), fb)) * FORCED_OVERSHOOT == pytest.approx(
        HAND_NEED_PU)
    curtail, shed = forced_reduction([hand_violation(kind)], hand_sens(), np.arange(4), hand_result(kind), DT_H,
                                     fb, **kwargs)
    return (curtail, shed) if kind == "vm_max" else (shed, curtail)


@pytest.mark.parametrize("kind", ["vm_max", "vm_min"])
def test_sensitivity_rule_on_the_hand_case(kind):
    """Most helpful first: participant 0 gives all of its 0.5 kWh (0.005 pu), participant 1
    the remaining 0.0065 pu at 0.005 pu/kWh = 1.3 kWh; 1.8 kWh in all."""
    used, other = hand_reduction(kind, "sensitivity")
    np.testing.assert_allclose(used, [0.5, 1.3, 0.0, 0.0], rtol=1e-12)
    np.testing.assert_array_equal(other, 0.0)


@pytest.mark.parametrize("kind", ["vm_max", "vm_min"])
def test_pro_rata_rule_on_the_hand_case(kind):
    """The same fraction k of every available export (import) behind the bus: k (0.01 * 0.5 +
    0.005 * 2 + 0.002 * 4) = k 0.023 = 0.0115 gives k = 0.5, so 0.25, 1, 2 kWh (3.25 kWh);
    participant 3 (no sensitivity) gives nothing."""
    used, other = hand_reduction(kind, "pro_rata")
    np.testing.assert_allclose(used, [0.25, 1.0, 2.0, 0.0], rtol=1e-12)
    np.testing.assert_array_equal(other, 0.0)


@pytest.mark.parametrize("kind", ["vm_max", "vm_min"])
def test_equal_share_rule_on_the_hand_case(kind):
    """The same fraction f of every PV energy (load, for shedding) behind the bus. Energies
    1.6, 3.2, 7, 6 kWh: f (0.01 * 1.6 + 0.005 * 3.2 + 0.002 * 7) = f 0.046 = 0.0115 gives
    f = 0.25, so 0.4, 0.8, 1.75 kWh (2.95 kWh), each a quarter of its energy."""
    energy = np.array([1.6, 3.2, 7.0, 6.0])
    used, other = hand_reduction(kind, "equal_share", pv_kwh=energy, load_kwh=energy)
    np.testing.assert_allclose(used, [0.4, 0.8, 1.75, 0.0], rtol=1e-12)
    np.testing.assert_allclose(used[:3] / energy[:3], 0.25, rtol=1e-12)
    np.testing.assert_array_equal(other, 0.0)


def test_equal_share_caps_at_the_room_and_raises_the_fraction_of_the_others():
    """PV 4, 3.2, 5 kWh but participant 0 exports only 0.5 kWh. Water-filling: at
    f = 0.5 / 4 = 0.125 participant 0 is capped and gives 0.005 pu; the others give
    0.0065 pu at f (0.005 * 3.2 + 0.002 * 5) = f 0.026, f = 0.25: 0.8 and 1.25 kWh."""
    used, _ = hand_reduction("vm_max", "equal_share", pv_kwh=np.array([4.0, 3.2, 5.0, 6.0]),
                             load_kwh=np.zeros(4))
    np.testing.assert_allclose(used, [0.5, 0.8, 1.25, 0.0], rtol=1e-12)


def test_equal_share_without_energies_shares_by_available_export_and_says_so():
    with pytest.warns(UserWarning, match="equal_share without pv_kwh"):
        used, _ = hand_reduction("vm_max", "equal_share")
    np.testing.assert_allclose(used, hand_reduction("vm_max", "pro_rata")[0], rtol=1e-12)


def test_sharing_rules_keep_out_what_is_not_behind_the_violation():
    """Participant 2 helps by 0.0005 / 0.0025 = 20 % of participant 0 and is behind; at 5 %
    (below BEHIND_REL_TOL) it is not, and pro_rata shares among 0 and 1 only:
    k (0.01 * 0.5 + 0.005 * 2) = k 0.015 = 0.0115, k = 0.7667."""
    g = HAND_G_PER_KW.copy()
    g[2] = 0.05 * g[0]
    assert 0.05 < BEHIND_REL_TOL < 0.2
    curtail, _ = forced_reduction([hand_violation("vm_max")], hand_sens(g), np.arange(4), hand_result("vm_max"),
                                  DT_H, Feedback(curtailment_rule="pro_rata"))
    k = HAND_NEED_PU / 0.015
    np.testing.assert_allclose(curtail, [0.5 * k, 2.0 * k, 0.0, 0.0], rtol=1e-12)


def test_sharing_rules_take_the_rest_most_sensitive_first_when_the_room_runs_out():
    """Behind the bus there is only 0.01 * 0.5 + 0.005 * 2 + 0.002 * 4 = 0.023 pu of room; a
    need of 0.0115 pu fits, one of 0.0246 pu does not: everything behind is taken, and the
    remaining 0.0016 pu comes from a participant below the threshold (most sensitive first):
    0.0016 / 0.0008 = 2 kWh of its 3."""
    g = np.array([0.0025, 0.00125, 0.0005, 0.0002])  # participant 3: 8 % of participant 0
    v = Violation("vm_max", 100, 0, 1.10 + 0.0246 / FORCED_OVERSHOOT - 0.002, 1.10, +1)
    curtail, _ = forced_reduction([v], hand_sens(g), np.arange(4), hand_result("vm_max"), DT_H,
                                  Feedback(curtailment_rule="pro_rata"))
    np.testing.assert_allclose(curtail[:3], HAND_ROOM_KWH[:3], rtol=1e-12)
    assert curtail[3] == pytest.approx(2.0, rel=1e-9)
    assert (g / DT_H) @ curtail == pytest.approx(0.0246, rel=1e-9)


@pytest.mark.parametrize("rule", ["sensitivity", "pro_rata", "equal_share"])
def test_reductions_for_an_earlier_violation_count_for_a_later_one(rule):
    """Two violations with the same gradient and excess: the reductions for the first
    already fix the second to first order, so nothing is added for it."""
    one = hand_reduction("vm_max", rule, pv_kwh=np.array([1.6, 3.2, 7.0, 6.0]), load_kwh=np.zeros(4))[0]
    v = hand_violation("vm_max")
    curtail, _ = forced_reduction([v, dataclasses.replace(v, element=101)], hand_sens(), np.arange(4),
                                  hand_result("vm_max"), DT_H, Feedback(curtailment_rule=rule),
                                  pv_kwh=np.array([1.6, 3.2, 7.0, 6.0]), load_kwh=np.zeros(4))
    np.testing.assert_allclose(curtail, one, rtol=1e-12)


def test_later_calls_add_to_the_same_fractions():
    """The loop calls forced_reduction again with the reduced dispatch (curtailment so far in
    result.curtailed_kwh): pro_rata's fractions are of the round's available export before
    any forced curtailment, so two steps of k = 0.5 and 0.2 make 0.7 of it."""
    fb = Feedback(curtailment_rule="pro_rata")
    r0 = hand_result("vm_max")
    first, _ = forced_reduction([hand_violation("vm_max")], hand_sens(), np.arange(4), r0, DT_H, fb)
    r1 = dataclasses.replace(r0, export_kwh=r0.export_kwh - first / 2, sold_kwh=r0.sold_kwh - first / 2,
                             curtailed_kwh=first)
    v2 = Violation("vm_max", 100, 0, 1.10 + 0.2 * 0.023 / FORCED_OVERSHOOT - 0.002, 1.10, +1)
    second, _ = forced_reduction([v2], hand_sens(), np.arange(4), r1, DT_H, fb)
    np.testing.assert_allclose(first + second, 0.7 * np.array([0.5, 2.0, 4.0, 0.0]), rtol=1e-9)


def test_an_unknown_rule_is_an_error():
    fb = Feedback.model_construct(**{**Feedback().model_dump(), "curtailment_rule": "lottery"})
    with pytest.raises(ValueError, match="curtailment_rule"):
        forced_reduction([hand_violation("vm_max")], hand_sens(), np.arange(4), hand_result("vm_max"), DT_H, fb)


@settings(max_examples=80, deadline=None)
@given(
    rule=st.sampled_from(["sensitivity", "pro_rata", "equal_share"]),
    g=st.lists(st.floats(-1e-3, 1e-3), min_size=5, max_size=5),
    room=st.lists(st.floats(0.0, 3.0), min_size=5, max_size=5),
    pv=st.lists(st.floats(0.0, 5.0), min_size=5, max_size=5),
    excess=st.floats(1e-4, 0.05),
)
def test_every_rule_removes_a_linear_violation_when_the_room_allows(rule, g, room, pv, excess):
    """On random linearisations: reductions within the room, and to first order exactly the
    need (excess plus margin, with the overshoot), or all the room where that is less."""
    g, room = np.array(g), np.array(room)
    v = Violation("vm_max", 100, 0, 1.10 + excess, 1.10, +1)
    r = clearing(room)
    fb = Feedback(curtailment_rule=rule)
    curtail, shed = forced_reduction([v], hand_sens(g), np.arange(5), r, DT_H, fb, pv_kwh=np.array(pv),
                                     load_kwh=np.ones(5))
    assert (curtail >= 0).all() and (curtail <= room + 1e-12).all()
    np.testing.assert_array_equal(shed, 0.0)  # nobody imports
    help_ = g / DT_H
    need = (excess + margin_for(v, fb)) * FORCED_OVERSHOOT
    available = float(np.clip(help_, 0, None) @ room)
    assert help_ @ curtail == pytest.approx(min(need, available), rel=1e-9, abs=1e-12)
    assert curtail[help_ <= 0].sum() == 0.0  # nobody whose curtailment would not help


def test_linearise_leaves_violations_to_forced_reduction_under_a_sharing_rule(operating_points):
    op = operating_points("trafo")
    for rule in ("pro_rata", "equal_share"):
        cuts = linearise([op["violation"]], op["sens"], op["pos"], op["injection_kwh"], DT_H,
                         Feedback(curtailment_rule=rule))
        assert len(cuts) == 0 and cuts.coef.shape == (0, len(op["pos"]))
    assert len(linearise([op["violation"]], op["sens"], op["pos"], op["injection_kwh"], DT_H, Feedback())) == 1


@pytest.mark.parametrize("rule", ["sensitivity", "pro_rata", "equal_share"])
@pytest.mark.parametrize(("kind", "action"), [("vm_max", "curtail"), ("vm_min", "shed"), ("line", "curtail"),
                                              ("trafo", "curtail")])
def test_every_rule_removes_the_violation_on_a_real_operating_point(operating_points, rule, kind, action):
    """To first order exactly the need, and a real AC power flow keeps the limit after it."""
    op = operating_points(kind)
    v, fb = op["violation"], Feedback(curtailment_rule=rule)
    result = clearing(op["injection_kwh"])
    n = len(op["pos"])
    energy = np.linspace(4.0, 9.0, n)  # PV (or load) energy of the round, distinct per participant
    curtail, shed = forced_reduction([v], op["sens"], op["pos"], result, DT_H, fb, pv_kwh=energy, load_kwh=energy)
    used, unused = (curtail, shed) if action == "curtail" else (shed, curtail)
    room = result.export_kwh if action == "curtail" else result.import_kwh
    np.testing.assert_array_equal(unused, 0.0)
    assert (used >= 0).all() and (used <= room + 1e-12).all()
    g = gradient(v, op["sens"])[op["pos"]] / DT_H
    help_per_kwh = v.sign * g if action == "curtail" else -v.sign * g
    need = (v.excess + margin_for(v, fb)) * FORCED_OVERSHOOT
    assert help_per_kwh @ used == pytest.approx(need, rel=1e-9)
    after = rerun(op, op["injection_kwh"] - curtail + shed)
    assert v.sign * (quantity(after, v) - v.limit) < 0
    behind = help_per_kwh > BEHIND_REL_TOL * help_per_kwh.max()
    if rule == "pro_rata":  # proportional to the available export (import): one fraction
        assert behind.sum() >= 2 and (used[behind] > 0).all() and (used[~behind] == 0).all()
        fraction = used[behind] / room[behind]
        np.testing.assert_allclose(fraction, fraction[0], rtol=1e-9)
        assert 0 < fraction[0] < 1
    elif rule == "equal_share":  # one fraction of the energy, for everyone behind
        assert (used[~behind] == 0).all()
        fraction = used[behind] / energy[behind]
        uncapped = used[behind] < room[behind] - 1e-12
        assert uncapped.sum() >= 2
        np.testing.assert_allclose(fraction[uncapped], fraction[uncapped][0], rtol=1e-9)
        assert (fraction[~uncapped] <= fraction[uncapped][0] + 1e-12).all()  # capped ones give all they have


def test_sharing_rules_cost_energy_and_spread_it(operating_points):
    """On the rural3 overvoltage: the sensitivity rule uses the least energy and takes it from
    few; pro_rata and equal_share take more energy from everyone behind the bus."""
    op = operating_points("vm_max")
    result = clearing(op["injection_kwh"])
    n = len(op["pos"])
    out = {rule: forced_reduction([op["violation"]], op["sens"], op["pos"], result, DT_H,
                                  Feedback(curtailment_rule=rule), pv_kwh=np.full(n, 9.0),
                                  load_kwh=np.ones(n))[0]
           for rule in ("sensitivity", "pro_rata", "equal_share")}
    assert out["sensitivity"].sum() < out["pro_rata"].sum()
    assert out["sensitivity"].sum() < out["equal_share"].sum()
    assert (out["sensitivity"] > 0).sum() < (out["pro_rata"] > 0).sum()
