"""Tests of cosim.physical.grid.powerflow: the fast Newton-Raphson path against pandapower.

The reference is an independent pandapower power flow: a fresh copy of the configured net
with the same per-bus injections placed as ordinary loads (`pp.create_load`) and solved by
`pp.runpp` to a tight tolerance. It shares nothing with `PowerFlow` but the input net.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandapower as pp
import pytest

from cosim.physical.grid.powerflow import PowerFlow
from cosim.physical.networks import lv_busbar, set_islanded

#: Agreement with the pandapower reference: voltage [pu], angle [rad], loading [%], power [kW].
VM_TOL_PU = 1e-6
VA_TOL_RAD = 1e-6
LOADING_TOL_PCT = 1e-4
POWER_TOL_KW = 1e-3
#: Warm and cold starts both stop once the mismatch is below NR_TOL (1e-9 pu power), from
#: different iterates; with |inv(J)| of order 1-10 on LV nets their voltages may differ by a
#: few 1e-9 pu, still far below the reference tolerances above.
WARM_COLD_TOL_PU = 1e-8
#: Mismatch tolerance of the reference runpp [MVA] (pandapower's default is 1e-8).
REFERENCE_TOL_MVA = 1e-10
#: Net load per bus that no LV feeder can carry [kW] (10 MW).
ABSURD_KW = 10_000.0

NETS = {"feeder": "grid_feeder_net", "rural3": "grid_rural3_net", "cigre_lv": "grid_cigre_lv_net"}
CASES = [(name, islanded) for name in NETS for islanded in (False, True)]
#: Seeded random injections compared against the reference; both are net PV backfeed.
PATTERNS = ["mixed-0", "mixed-1"]


def configured(base_net, islanded: bool):
    """A copy of `base_net`, islanded at its LV busbar if asked."""
    net = copy.deepcopy(base_net)
    if islanded:
        set_islanded(net, lv_busbar(net))
    return net


def injections(n_bus: int, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-bus net load [kW] and [kvar], load convention, seeded.

    ``mixed-<seed>``: household load 0-4 kW everywhere and PV backfeed of 5-15 kW on about
    60 % of the buses (the net exports). ``backfeed``: 12 kW of PV surplus at every bus
    (rural3's transformer runs far above its rating in reverse).
    """
    if pattern == "backfeed":
        return np.full(n_bus, -12.0), np.full(n_bus, -0.5)
    rng = np.random.default_rng(int(pattern.split("-")[1]))
    p_kw = rng.uniform(0.0, 4.0, n_bus)
    pv = rng.random(n_bus) < 0.6
    p_kw[pv] -= rng.uniform(5.0, 15.0, pv.sum())
    q_kvar = rng.uniform(-1.0, 1.5, n_bus)
    return p_kw, q_kvar


def reference_runpp(net, buses: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray):
    """An independent pandapower power flow of the same injections, placed as loads."""
    ref = copy.deepcopy(net)
    ref.load.drop(ref.load.index, inplace=True)
    ref.sgen.drop(ref.sgen.index, inplace=True)
    for bus, p, q in zip(buses, p_kw, q_kvar, strict=True):
        pp.create_load(ref, int(bus), p_mw=p / 1000.0, q_mvar=q / 1000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(ref, numba=False, tolerance_mva=REFERENCE_TOL_MVA)
    return ref


def dead_as_zero(loading_pct) -> np.ndarray:
    """pandapower's branch loadings [%] with NaN (de-energised branch) as 0."""
    return np.nan_to_num(np.asarray(loading_pct, float), nan=0.0)


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{'islanded' if i else 'grid'}" for n, i in CASES])
def case(request):
    """(configured net, PowerFlow) per network and mode, built once per module."""
    name, islanded = request.param
    net = configured(request.getfixturevalue(NETS[name]), islanded)
    return net, PowerFlow(net)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_fast_path_agrees_with_independent_runpp(case, pattern):
    net, pf = case
    p_kw, q_kvar = injections(len(pf.buses), pattern)
    state = pf.run(p_kw, q_kvar)
    ref = reference_runpp(net, pf.buses, p_kw, q_kvar)

    assert state.converged and state.method == "newton"
    ref_vm = ref.res_bus.vm_pu.loc[pf.buses].to_numpy(float)
    # isolated buses (the MV side of an islanded net) are NaN in both
    np.testing.assert_array_equal(np.isnan(state.vm_pu), np.isnan(ref_vm))
    np.testing.assert_allclose(state.vm_pu, ref_vm, rtol=0, atol=VM_TOL_PU)
    ref_va = np.deg2rad(ref.res_bus.va_degree.loc[pf.buses].to_numpy(float))
    np.testing.assert_allclose(state.va_rad, ref_va, rtol=0, atol=VA_TOL_RAD)
    # pandapower reports NaN for a de-energised branch (an open transformer, a line between
    # isolated buses); the fast path reports 0 % for it
    np.testing.assert_allclose(
        state.line_loading_pct, dead_as_zero(ref.res_line.loading_percent.loc[pf.lines]),
        rtol=0, atol=LOADING_TOL_PCT,
    )
    np.testing.assert_allclose(
        state.trafo_loading_pct, dead_as_zero(ref.res_trafo.loading_percent.loc[pf.trafos]),
        rtol=0, atol=LOADING_TOL_PCT,
    )

    ref_slack_kw = float(ref.res_ext_grid.p_mw.sum()) * 1000.0
    assert state.slack_p_kw == pytest.approx(ref_slack_kw, abs=POWER_TOL_KW)
    # losses: slack minus the net load actually served, and the sum of branch losses
    served_kw = float(np.nansum(ref.res_load.p_mw.to_numpy(float))) * 1000.0
    branch_losses_kw = float(np.nansum(ref.res_line.pl_mw) + np.nansum(ref.res_trafo.pl_mw)) * 1000.0
    assert state.losses_kw == pytest.approx(ref_slack_kw - served_kw, abs=POWER_TOL_KW)
    assert state.losses_kw == pytest.approx(branch_losses_kw, abs=POWER_TOL_KW)
    assert state.losses_kw == pytest.approx(state.slack_p_kw - np.sum(p_kw[pf.in_service]), abs=1e-9)
    assert state.losses_kw > 0.0


@pytest.mark.parametrize("pattern", [*PATTERNS, "backfeed"])
def test_patterns_are_strong_pv_backfeed(case, pattern):
    """The injections are what they claim: the net exports through the slack, and the uniform
    backfeed overloads rural3's transformer (the only net here with over 100 buses)."""
    net, pf = case
    state = pf.run(*injections(len(pf.buses), pattern))
    assert state.converged
    assert state.slack_p_kw < 0.0
    if pattern == "backfeed" and len(pf.buses) > 100 and net.trafo.in_service.all():
        assert state.trafo_loading_pct.max() > 100.0


def test_islanded_net_has_isolated_mv_side_and_a_grid_forming_slack(grid_cigre_lv_net):
    net = configured(grid_cigre_lv_net, islanded=True)
    pf = PowerFlow(net)
    state = pf.run(*injections(len(pf.buses), "mixed-0"))
    slack_bus = lv_busbar(net)
    pos = int(np.flatnonzero(pf.buses == slack_bus)[0])
    assert state.vm_pu[pos] == pytest.approx(1.0, abs=1e-12)
    # only the feeder behind the first transformer stays energised in CIGRE LV
    assert np.isnan(state.vm_pu).sum() == len(pf.buses) - pf.in_service.sum() > 0
    np.testing.assert_array_equal(state.trafo_loading_pct, 0.0)


@pytest.mark.parametrize(
    ("islanded", "sign"), [(False, +1.0), (False, -1.0), (True, +1.0)],
    ids=["grid-load", "grid-generation", "islanded-load"],
)
def test_absurd_injections_do_not_converge_and_do_not_raise(grid_feeder_net, islanded, sign):
    """10 MW per bus: no convergence on the fast path nor in the runpp fallback, NaN results,
    no exception; the next ordinary round still gets the right answer."""
    net = configured(grid_feeder_net, islanded)
    pf = PowerFlow(net)
    n = len(pf.buses)
    state = pf.run(np.full(n, sign * ABSURD_KW), np.zeros(n))
    assert not state.converged
    assert state.method == "failed"
    assert np.isnan(state.vm_pu).all()
    assert np.isnan(state.va_rad).all()
    assert np.isnan(state.line_loading_pct).all()
    assert np.isnan(state.trafo_loading_pct).all()
    assert np.isnan(state.slack_p_kw) and np.isnan(state.losses_kw)
    assert state.V is None

    p_kw, q_kvar = injections(n, "mixed-1")
    after = pf.run(p_kw, q_kvar)
    cold = PowerFlow(net).run(p_kw, q_kvar)
    assert after.converged and after.method == "newton"
    np.testing.assert_allclose(after.vm_pu, cold.vm_pu, rtol=0, atol=WARM_COLD_TOL_PU)
    np.testing.assert_allclose(after.line_loading_pct, cold.line_loading_pct, rtol=0, atol=LOADING_TOL_PCT)
    assert after.slack_p_kw == pytest.approx(cold.slack_p_kw, abs=POWER_TOL_KW)


def test_warm_start_gives_the_cold_start_answer(case):
    """After any history of rounds, a run equals the first (cold) run of a fresh PowerFlow,
    and repeating a round reproduces it."""
    net, pf = case
    n = len(pf.buses)
    target = injections(n, "mixed-0")
    cold = PowerFlow(net).run(*target)
    history = [injections(n, "backfeed"), injections(n, "mixed-1"), target, injections(n, "backfeed")]
    first_pass = [pf.run(p, q) for p, q in history]
    warm = pf.run(*target)
    for got, expected in [(warm, cold), (first_pass[2], cold), (pf.run(*history[0]), first_pass[0])]:
        assert got.converged and got.method == "newton"
        np.testing.assert_allclose(got.vm_pu, expected.vm_pu, rtol=0, atol=WARM_COLD_TOL_PU)
        np.testing.assert_allclose(got.va_rad, expected.va_rad, rtol=0, atol=WARM_COLD_TOL_PU)
        for name in ("line_loading_pct", "trafo_loading_pct"):
            np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=0, atol=LOADING_TOL_PCT)
        assert got.slack_p_kw == pytest.approx(expected.slack_p_kw, abs=POWER_TOL_KW)
        assert got.losses_kw == pytest.approx(expected.losses_kw, abs=POWER_TOL_KW)


def test_inputs_are_not_modified(case):
    _, pf = case
    p_kw, q_kvar = injections(len(pf.buses), "mixed-0")
    p_copy, q_copy = p_kw.copy(), q_kvar.copy()
    pf.run(p_kw, q_kvar)
    np.testing.assert_array_equal(p_kw, p_copy)
    np.testing.assert_array_equal(q_kvar, q_copy)


def test_runpp_fallback_agrees_with_fast_path(case):
    """`run_pandapower` (the fallback) gives the fast path's answer, V included."""
    net, pf = case
    p_kw, q_kvar = injections(len(pf.buses), "mixed-1")
    fast = pf.run(p_kw, q_kvar)
    slow = pf.run_pandapower(p_kw, q_kvar)
    assert slow.converged and slow.method == "runpp"
    np.testing.assert_allclose(slow.vm_pu, fast.vm_pu, rtol=0, atol=VM_TOL_PU)
    # the fallback passes pandapower's NaN for de-energised branches through; the fast path has 0
    np.testing.assert_allclose(
        dead_as_zero(slow.line_loading_pct), fast.line_loading_pct, rtol=0, atol=LOADING_TOL_PCT
    )
    np.testing.assert_allclose(
        dead_as_zero(slow.trafo_loading_pct), fast.trafo_loading_pct, rtol=0, atol=LOADING_TOL_PCT
    )
    assert slow.slack_p_kw == pytest.approx(fast.slack_p_kw, abs=POWER_TOL_KW)
    assert slow.losses_kw == pytest.approx(fast.losses_kw, abs=POWER_TOL_KW)
    assert slow.V is not None and slow.V.shape == fast.V.shape
    np.testing.assert_allclose(slow.V, fast.V, rtol=0, atol=VM_TOL_PU)


def test_trafo_loading_honours_derating_factor(grid_feeder_net):
    net = copy.deepcopy(grid_feeder_net)
    net.trafo["df"] = 0.8
    pf = PowerFlow(net)
    n = len(pf.buses)
    p_kw, q_kvar = np.full(n, 20.0), np.zeros(n)
    state = pf.run(p_kw, q_kvar)
    ref = reference_runpp(net, pf.buses, p_kw, q_kvar)
    np.testing.assert_allclose(
        state.trafo_loading_pct, ref.res_trafo.loading_percent.loc[pf.trafos].to_numpy(float),
        rtol=0, atol=LOADING_TOL_PCT,
    )


def test_line_loading_honours_derating_factor(grid_feeder_net):
    """The line derating factor (df) is honoured, as in pandapower."""
    net = copy.deepcopy(grid_feeder_net)
    net.line["df"] = 0.8
    pf = PowerFlow(net)
    n = len(pf.buses)
    p_kw, q_kvar = np.full(n, 20.0), np.zeros(n)
    state = pf.run(p_kw, q_kvar)
    ref = reference_runpp(net, pf.buses, p_kw, q_kvar)
    np.testing.assert_allclose(
        state.line_loading_pct, ref.res_line.loading_percent.loc[pf.lines].to_numpy(float),
        rtol=0, atol=LOADING_TOL_PCT,
    )
