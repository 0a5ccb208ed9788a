"""Sensitivities of voltages, branch loadings, slack power and losses to bus injections.

Taken from the Newton-Raphson Jacobian at the current operating point: one sparse LU
factorisation of J, then one solve per injection bus (all at once), instead of one
perturbed power flow per bus. tests/test_sensitivities.py checks them against finite
differences of the AC power flow.

All sensitivities are per kW of active power *injected* at a bus (generator convention;
a load increase is a negative injection). Reactive injections are held constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import splu

from cosim.grid.powerflow import GridState, PowerFlow


@dataclass(frozen=True)
class Sensitivities:
    """Columns are aligned with `PowerFlow.buses`; rows with the monitored quantity."""

    dvm_dp: np.ndarray
    """[buses x buses] voltage magnitude per injected kW [pu/kW]."""
    dline_dp: np.ndarray
    """[lines x buses] line loading per injected kW [%/kW]."""
    dtrafo_dp: np.ndarray
    """[trafos x buses] transformer loading per injected kW [%/kW]."""
    dslack_dp: np.ndarray
    """[buses] slack active power per injected kW [kW/kW]."""
    dloss_dp: np.ndarray
    """[buses] network losses per injected kW [kW/kW] (marginal loss factors)."""


def _branch_current_sensitivity(Y, rows, V, dV, scale_side):
    """d(loading)/dP for the larger end of each branch, given dV [internal x cols]."""
    current = Y @ V
    dI = Y @ dV
    absI = np.abs(current)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(absI[:, None] > 1e-12, np.real(np.conj(current)[:, None] * dI) / absI[:, None], 0.0)
    return absI[rows] * scale_side, d[rows] * scale_side[:, None]


def compute_sensitivities(pf: PowerFlow, state: GridState) -> Sensitivities:
    """Sensitivities at `state`, which must come from the fast path (it carries V)."""
    if state.V is None:
        raise ValueError("sensitivities need the internal voltages of a fast-path power flow")
    V = state.V
    n_int = pf.n_internal
    npvpq = len(pf.pvpq)
    J = pf.jacobian(V)
    rhs = np.zeros((J.shape[0], npvpq))
    rhs[np.arange(npvpq), np.arange(npvpq)] = 1.0  # unit P injection at each pv/pq bus
    X = splu(J).solve(rhs)
    dVa = np.zeros((n_int, npvpq))
    dVm = np.zeros((n_int, npvpq))
    dVa[pf.pvpq] = X[:npvpq]
    dVm[pf.pq] = X[npvpq:]
    Vm = np.abs(V)
    dV = V[:, None] * (1j * dVa + dVm / Vm[:, None])  # [internal x pvpq] per pu injection
    per_kw = 1.0 / (1000.0 * pf.baseMVA)

    # map columns (pv/pq internal buses) to pandapower buses; the slack bus has none
    col_of_internal = np.full(n_int, -1)
    col_of_internal[pf.pvpq] = np.arange(npvpq)
    cols = np.where(pf.in_service, col_of_internal[pf.bus_internal], -1)
    has_col = cols >= 0

    def to_buses(mat: np.ndarray) -> np.ndarray:
        out = np.zeros((mat.shape[0], len(pf.buses)))
        out[:, has_col] = mat[:, cols[has_col]]
        return out * per_kw

    dvm = to_buses(dVm[pf.bus_internal])
    dvm[~pf.in_service] = 0.0

    def loading(Yf_rows, scale, active, kind_len):
        if kind_len == 0:
            return np.zeros((0, len(pf.buses)))
        lf, df = _branch_current_sensitivity(pf.Yf, Yf_rows, V, dV, scale[:, 0])
        lt, dt = _branch_current_sensitivity(pf.Yt, Yf_rows, V, dV, scale[:, 1])
        d = np.where((lf >= lt)[:, None], df, dt)
        d[~active] = 0.0
        return to_buses(d)

    dline = loading(pf._line_rows, pf._line_scale, getattr(pf, "_line_active", None), len(pf.lines))
    dtrafo = loading(pf._trafo_rows, pf._trafo_scale, getattr(pf, "_trafo_active", None), len(pf.trafos))

    # slack: S_ref = V_ref conj(Y_ref V); V_ref fixed
    Yref = pf.Ybus[pf.ref]
    dS_ref = (V[pf.ref][:, None] * np.conj(Yref @ dV)).real.sum(axis=0)  # per pu injection
    dslack = to_buses(dS_ref[None, :])[0] * 1000.0 * pf.baseMVA  # kW per kW
    dslack[~has_col & pf.in_service] = -1.0  # injection at the slack bus itself displaces the slack 1:1
    dloss = dslack + 1.0
    dloss[~pf.in_service] = 0.0
    return Sensitivities(dvm, dline, dtrafo, dslack, dloss)
