"""Tests of cosim.physical.grid.sensitivities against finite differences of the AC power flow.

The voltage sensitivities come from the inverse of the Newton-Raphson power-flow Jacobian
at the operating point (one LU factorisation, one solve per injection bus), the standard
method of e.g. K. Christakou, J.-Y. Le Boudec, M. Paolone, D.-C. Tomozei, "Efficient
computation of sensitivity coefficients of node voltages and line currents in unbalanced
radial electrical distribution networks", IEEE Trans. Smart Grid 4(2):741-750, 2013.
Branch-current, slack and loss sensitivities follow from them by the chain rule. Each is
checked here against central finite differences of the full AC power flow (`PowerFlow.run`
with +-h kW injected at one bus), on SimBench rural3 grid-connected and islanded, at an
operating point with strong PV backfeed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cosim.physical.grid.powerflow import PowerFlow
from cosim.physical.grid.sensitivities import (
    AdjointSensitivities,
    compute_sensitivities,
    loss_factors,
)
from cosim.physical.networks import lv_busbar, set_islanded

#: Finite-difference step [kW injected].
FD_STEP_KW = 0.2
#: Relative tolerance of analytic vs finite-difference sensitivities [-]. The central
#: difference has truncation error h^2/6 |f'''|. The most curved quantity is the loading of
#: a service cable, |I| ~ |S|/|V|, whose flow |S| is a few kVA here (every line is kept
#: above 1 % loading, ~2.7 kVA on a 270 A cable), so the relative error is about
#: (h/|S|)^2/6 = (0.2/2.7)^2/6 ~ 1e-3 at worst; measured it is ~3e-5.
FD_RTOL = 1e-3
#: Absolute floor, as a fraction of the largest entry of each matrix [-]: Newton-Raphson
#: stops at a mismatch of 1e-9 pu (1e-6 kW), which the central difference divides by
#: 2h = 0.4 kW, i.e. noise of a few 1e-6 kW/kW on a slack sensitivity of order 1.
FD_ATOL_FRACTION = 1e-5
#: Smallest line loading at the operating point [%]: below it |I| is too close to its kink
#: at zero current for a central difference of step FD_STEP_KW to be meaningful.
MIN_LINE_LOADING_PCT = 1.0

#: Injection buses checked by finite differences: every COLUMN_STRIDE-th bus plus the slack
#: bus (all columns come out of the same sparse solve; a sample keeps the suite fast).
COLUMN_STRIDE = 3

MODES = ["grid", "islanded"]


def backfeed_point(net, buses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bus net load [kW], [kvar]: small load everywhere, 5-12 kW PV surplus at every load bus."""
    rng = np.random.default_rng(7)
    p_kw = rng.uniform(0.0, 3.0, len(buses))
    has_load = np.isin(buses, net.load.bus.to_numpy())
    p_kw[has_load] -= rng.uniform(5.0, 12.0, has_load.sum())
    return p_kw, 0.1 * np.abs(p_kw)


def finite_differences(
    pf: PowerFlow, p_kw: np.ndarray, q_kvar: np.ndarray, h_kw: float, columns: np.ndarray
) -> dict:
    """Central differences of every monitored quantity per kW injected at each bus of `columns`."""
    cols = {"vm": [], "line": [], "trafo": [], "slack": [], "loss": []}
    for k in columns:
        more, less = p_kw.copy(), p_kw.copy()
        more[k] -= h_kw  # load convention: a lower net load is a higher injection
        less[k] += h_kw
        a, b = pf.run(more, q_kvar), pf.run(less, q_kvar)
        assert a.converged and b.converged
        cols["vm"].append((a.vm_pu - b.vm_pu) / (2 * h_kw))
        cols["line"].append((a.line_loading_pct - b.line_loading_pct) / (2 * h_kw))
        cols["trafo"].append((a.trafo_loading_pct - b.trafo_loading_pct) / (2 * h_kw))
        cols["slack"].append((a.slack_p_kw - b.slack_p_kw) / (2 * h_kw))
        cols["loss"].append((a.losses_kw - b.losses_kw) / (2 * h_kw))
    return {
        "vm": np.array(cols["vm"]).T,
        "line": np.array(cols["line"]).T,
        "trafo": np.array(cols["trafo"]).reshape(len(columns), -1).T,
        "slack": np.array(cols["slack"]),
        "loss": np.array(cols["loss"]),
    }


@pytest.fixture(scope="module", params=MODES)
def point(request, grid_rural3_net):
    """rural3 at a PV-backfeed operating point: PowerFlow, state, sensitivities, FD."""
    net = copy.deepcopy(grid_rural3_net)
    if request.param == "islanded":
        set_islanded(net, lv_busbar(net))
    pf = PowerFlow(net)
    p_kw, q_kvar = backfeed_point(net, pf.buses)
    state = pf.run(p_kw, q_kvar)
    assert state.converged and state.method == "newton"
    assert state.slack_p_kw < 0.0, "the operating point should export through the slack"
    assert state.line_loading_pct.min() > MIN_LINE_LOADING_PCT
    sens = compute_sensitivities(pf, state)
    slack = int(np.flatnonzero(pf.buses == int(net.ext_grid.bus.iloc[0]))[0])
    columns = np.union1d(np.arange(0, len(pf.buses), COLUMN_STRIDE), [slack])
    fd = finite_differences(pf, p_kw, q_kvar, FD_STEP_KW, columns)
    pf.run(p_kw, q_kvar)  # leave the warm start at the operating point
    return {
        "net": net, "pf": pf, "p_kw": p_kw, "q_kvar": q_kvar, "state": state, "sens": sens,
        "fd": fd, "columns": columns, "slack": slack,
    }


def assert_matches_fd(analytic: np.ndarray, fd: np.ndarray) -> None:
    assert analytic.shape == fd.shape
    scale = np.abs(fd).max(initial=0.0)
    np.testing.assert_allclose(analytic, fd, rtol=FD_RTOL, atol=FD_ATOL_FRACTION * scale)


def test_voltage_sensitivities_match_finite_differences(point):
    pf, sens, fd, cols = point["pf"], point["sens"], point["fd"], point["columns"]
    live, live_cols = pf.in_service, pf.in_service[cols]
    assert_matches_fd(sens.dvm_dp[np.ix_(live, cols[live_cols])], fd["vm"][np.ix_(live, live_cols)])
    # injections raise voltages under backfeed, and somewhere noticeably
    assert sens.dvm_dp[np.ix_(live, live)].min() >= -1e-12
    assert sens.dvm_dp.max() > 1e-4


def test_line_sensitivities_match_finite_differences(point):
    pf, sens, fd, cols = point["pf"], point["sens"], point["fd"], point["columns"]
    live_cols = pf.in_service[cols]
    assert_matches_fd(sens.dline_dp[:, cols[live_cols]], fd["line"][:, live_cols])


def test_trafo_sensitivities_match_finite_differences(point):
    pf, sens, fd, cols = point["pf"], point["sens"], point["fd"], point["columns"]
    live_cols = pf.in_service[cols]
    assert_matches_fd(sens.dtrafo_dp[:, cols[live_cols]], fd["trafo"][:, live_cols])
    if point["net"].trafo.in_service.all():
        # backfeed: more injection anywhere on the LV side pushes more power up through the
        # transformer; an injection at the slack (MV) bus does not pass through it
        lv_side = pf.in_service.copy()
        lv_side[point["slack"]] = False
        assert (sens.dtrafo_dp[:, lv_side] > 0).all()
        np.testing.assert_array_equal(sens.dtrafo_dp[:, point["slack"]], 0.0)
    else:
        # islanded: the open transformer stays at 0 % whatever the injections
        np.testing.assert_array_equal(sens.dtrafo_dp, 0.0)


def test_slack_sensitivities_match_finite_differences(point):
    pf, sens, fd, cols = point["pf"], point["sens"], point["fd"], point["columns"]
    live, live_cols = pf.in_service, pf.in_service[cols]
    assert_matches_fd(sens.dslack_dp[cols[live_cols]], fd["slack"][live_cols])
    # one more kW injected displaces about one kW of slack power (less the marginal losses)
    assert np.all((sens.dslack_dp[live] <= -0.5) & (sens.dslack_dp[live] >= -1.5))


def test_loss_sensitivities_match_finite_differences(point):
    pf, sens, fd, cols = point["pf"], point["sens"], point["fd"], point["columns"]
    live, live_cols = pf.in_service, pf.in_service[cols]
    assert_matches_fd(sens.dloss_dp[cols[live_cols]], fd["loss"][live_cols])
    np.testing.assert_allclose(sens.dloss_dp[live], 1.0 + sens.dslack_dp[live], rtol=0, atol=1e-12)
    # under backfeed, more injection at a load bus means more losses
    has_load = np.isin(pf.buses, point["net"].load.bus.to_numpy())
    assert (sens.dloss_dp[has_load & live] > 0).all()


ADJOINT_ATOL = 1e-9


def test_adjoint_loss_factors_equal_the_full_sensitivities(point):
    """One transposed solve J^T y = dP_ref/dx gives every bus's marginal loss factor."""
    lam = loss_factors(point["pf"], point["state"])
    # two different LU solves (J^T once vs J for every bus): agreement to rounding, which
    # on the islanded Jacobian is ~3e-10
    np.testing.assert_allclose(lam, point["sens"].dloss_dp, rtol=0, atol=ADJOINT_ATOL)


def test_adjoint_rows_equal_the_full_sensitivities(point):
    """Row by row (one transposed solve each), the adjoint sensitivities are the full ones."""
    pf, sens = point["pf"], point["sens"]
    adj = AdjointSensitivities(pf, point["state"])
    for i in range(len(pf.buses)):
        np.testing.assert_allclose(adj.dvm_dp[i], sens.dvm_dp[i], rtol=0, atol=ADJOINT_ATOL)
    for i in range(len(pf.lines)):
        np.testing.assert_allclose(adj.dline_dp[i], sens.dline_dp[i], rtol=0, atol=ADJOINT_ATOL * 100)
    for i in range(len(pf.trafos)):
        np.testing.assert_allclose(adj.dtrafo_dp[i], sens.dtrafo_dp[i], rtol=0, atol=ADJOINT_ATOL * 100)
    np.testing.assert_allclose(adj.dslack_dp[pf.in_service], sens.dslack_dp[pf.in_service], rtol=0, atol=ADJOINT_ATOL)


def test_injection_at_the_slack_bus_displaces_the_slack_one_to_one(point):
    pf, sens, fd = point["pf"], point["sens"], point["fd"]
    k = point["slack"]
    j = int(np.flatnonzero(point["columns"] == k)[0])  # its finite-difference column
    assert sens.dslack_dp[k] == -1.0
    assert sens.dloss_dp[k] == 0.0
    np.testing.assert_array_equal(sens.dvm_dp[:, k], 0.0)  # the slack holds its voltage
    assert fd["slack"][j] == pytest.approx(-1.0, abs=1e-6)
    assert fd["loss"][j] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(fd["vm"][pf.in_service, j], 0.0, atol=1e-9)


def test_isolated_buses_have_no_sensitivity(point):
    pf, sens = point["pf"], point["sens"]
    dead = ~pf.in_service
    if point["net"].trafo.in_service.all():
        assert not dead.any()  # grid-connected: every bus is energised
        return
    assert dead.sum() == 1  # islanded: the MV bus is cut off
    for arr in (sens.dvm_dp, sens.dline_dp, sens.dtrafo_dp):
        np.testing.assert_array_equal(arr[:, dead], 0.0)
    np.testing.assert_array_equal(sens.dvm_dp[dead], 0.0)
    np.testing.assert_array_equal(sens.dslack_dp[dead], 0.0)
    np.testing.assert_array_equal(sens.dloss_dp[dead], 0.0)


def test_sensitivities_from_runpp_fallback_state_are_the_same(point):
    """The loop computes sensitivities from whichever state carries V, the fallback's too."""
    pf = point["pf"]
    slow = pf.run_pandapower(point["p_kw"], point["q_kvar"])
    assert slow.method == "runpp" and slow.V is not None
    fast_sens, slow_sens = point["sens"], compute_sensitivities(pf, slow)
    for name in ("dvm_dp", "dline_dp", "dtrafo_dp", "dslack_dp", "dloss_dp"):
        fast, other = getattr(fast_sens, name), getattr(slow_sens, name)
        np.testing.assert_allclose(other, fast, rtol=1e-5, atol=1e-5 * np.abs(fast).max(initial=0.0))


def test_failed_state_is_rejected(grid_feeder_net):
    pf = PowerFlow(grid_feeder_net)
    n = len(pf.buses)
    failed = pf.run(np.full(n, 10_000.0), np.zeros(n))
    assert failed.V is None
    with pytest.raises(ValueError, match="internal voltages"):
        compute_sensitivities(pf, failed)


def test_buses_merged_with_the_slack_by_switches_all_displace_it(grid_cigre_lv_net):
    """CIGRE LV joins its MV bus to the transformers' HV buses by closed bus-bus switches:
    an injection at any of them is an injection at the slack."""
    net = grid_cigre_lv_net
    pf = PowerFlow(net)
    p_kw = np.where(np.isin(pf.buses, net.load.bus.to_numpy()), -8.0, 1.0)
    q_kvar = np.zeros_like(p_kw)
    state = pf.run(p_kw, q_kvar)
    sens = compute_sensitivities(pf, state)
    slack_bus = int(net.ext_grid.bus.iloc[0])
    sw = net.switch[(net.switch.et == "b") & net.switch.closed.astype(bool) & (net.switch.bus == slack_bus)]
    merged = np.isin(pf.buses, [slack_bus, *sw.element.astype(int)])
    assert merged.sum() == 4
    np.testing.assert_array_equal(sens.dslack_dp[merged], -1.0)
    np.testing.assert_array_equal(sens.dloss_dp[merged], 0.0)
    for k in np.flatnonzero(merged):
        more = p_kw.copy()
        more[k] -= 1.0
        assert pf.run(more, q_kvar).slack_p_kw - state.slack_p_kw == pytest.approx(-1.0, abs=1e-6)
