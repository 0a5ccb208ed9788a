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

from cosim.physical.grid.powerflow import GridState, PowerFlow


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
    cols = pf.bus_columns
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


def loss_factors(pf: PowerFlow, state: GridState) -> np.ndarray:
    """Marginal loss factors d(losses)/d(injection) per bus [kW/kW], by the adjoint method.

    The slack's power P_ref depends on the state x = (Va_pvpq, Vm_pq); with J dx = dF,
    ``dP_ref/dF = g^T J^-1`` where g = dP_ref/dx. So one transposed solve
    ``J^T y = g`` gives the slack sensitivity to every injection at once (instead of one
    solve per bus), and losses = P_ref + sum of injections gives ``lambda = 1 + y``.
    Equal to `compute_sensitivities(...).dloss_dp`. The factorised Jacobian is shared
    with the feedback's sensitivities at the same operating point (`PowerFlow.jacobian_lu`).
    """
    if state.V is None:
        raise ValueError("loss factors need the internal voltages of a fast-path power flow")
    V = state.V
    # dP_ref/dx from the slack buses' rows of Ybus: d/dVa_j and d/dVm_j of Re(V_r conj(I_r))
    r, j, y, va_at, va_j, vm_at, vm_j = _slack_rows(pf)
    Vr, Vj = V[r], V[j]
    d_va = (1j * Vr * np.conj(-y * Vj)).real
    d_vm = (Vr * np.conj(y * Vj / np.abs(Vj))).real
    n = len(pf.pvpq) + len(pf.pq)
    g = np.bincount(va_at, weights=d_va[va_j], minlength=n) + np.bincount(vm_at, weights=d_vm[vm_j], minlength=n)
    y_adj = pf.jacobian_lu(V).solve(g, trans="T")
    cols = pf.bus_columns
    lam = np.where(cols >= 0, y_adj[np.maximum(cols, 0)], -1.0) + 1.0
    lam[~pf.in_service] = 0.0
    return lam


def _slack_rows(pf: PowerFlow) -> tuple:
    """The off-diagonal entries of the slack buses' rows of Ybus and where their
    derivatives go in the state vector (Va of pv/pq buses first, then Vm of pq buses);
    computed once per power flow."""
    cached = pf._slack_rows_cache
    if cached is not None:
        return cached
    pos_va, pos_vm = pf.state_positions
    rs, js, ys = [], [], []
    for r in pf.ref:
        row = pf.Ybus.getrow(r)
        off = row.indices != r
        rs.append(np.full(off.sum(), r))
        js.append(row.indices[off])
        ys.append(row.data[off])
    r, j, y = np.concatenate(rs), np.concatenate(js), np.concatenate(ys)
    va_j, vm_j = np.flatnonzero(pos_va[j] >= 0), np.flatnonzero(pos_vm[j] >= 0)
    pf._slack_rows_cache = (r, j, y, pos_va[j][va_j], va_j, pos_vm[j][vm_j], vm_j)
    return pf._slack_rows_cache


class _AdjointRows:
    """Rows of a sensitivity matrix, each computed on demand by one transposed solve."""

    def __init__(self, owner: AdjointSensitivities, kind: str, n_rows: int):
        self._owner, self._kind, self._n = owner, kind, n_rows
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, position: int) -> np.ndarray:
        position = int(position)
        if position not in self._cache:
            self._cache[position] = self._owner._row(self._kind, position)
        return self._cache[position]

    def __len__(self) -> int:
        return self._n


class AdjointSensitivities:
    """The same sensitivities as `compute_sensitivities`, row by row, by the adjoint method.

    The feedback needs the gradient of only the few violated quantities, so instead of
    solving J X = I for every bus (a dense [2n x n] solve, slow on the 907-bus IEEE
    feeder) each gradient g = dq/dx is turned into sensitivities to every injection by one
    solve with the factorised transposed Jacobian: J^T y = g. Indexing ``dvm_dp[i]``,
    ``dline_dp[i]`` or ``dtrafo_dp[i]`` gives the row of position i [per kW injected].
    """

    def __init__(self, pf: PowerFlow, state: GridState):
        if state.V is None:
            raise ValueError("sensitivities need the internal voltages of a fast-path power flow")
        self.pf, self.V = pf, state.V
        self._lu = pf.jacobian_lu(state.V)
        self._npvpq = len(pf.pvpq)
        self._va_pos, self._vm_pos = pf.state_positions
        self._bus_cols = pf.bus_columns
        self._per_kw = 1.0 / (1000.0 * pf.baseMVA)
        self.dvm_dp = _AdjointRows(self, "vm", len(pf.buses))
        self.dline_dp = _AdjointRows(self, "line", len(pf.lines))
        self.dtrafo_dp = _AdjointRows(self, "trafo", len(pf.trafos))
        self.dloss_dp = loss_factors(pf, state)
        self.dslack_dp = self.dloss_dp - 1.0
        self.dslack_dp[~pf.in_service] = 0.0

    def _to_buses(self, y: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.pf.buses))
        has = self._bus_cols >= 0
        out[has] = y[self._bus_cols[has]]
        return out * self._per_kw

    def _branch_gradient(self, Y, row: int, scale: float) -> tuple[float, np.ndarray]:
        V = self.V
        yrow = Y.getrow(row)
        k, y = yrow.indices, yrow.data
        current = (y * V[k]).sum()
        g = np.zeros(self._npvpq + len(self.pf.pq))
        if abs(current) < 1e-12:
            return 0.0, g
        u = np.conj(current) / abs(current)
        d_va = (u * y * 1j * V[k]).real * scale
        d_vm = (u * y * V[k] / np.abs(V[k])).real * scale
        va, vm = self._va_pos[k], self._vm_pos[k]
        np.add.at(g, va[va >= 0], d_va[va >= 0])
        np.add.at(g, vm[vm >= 0], d_vm[vm >= 0])
        return abs(current) * scale, g

    def _row(self, kind: str, position: int) -> np.ndarray:
        pf = self.pf
        if kind == "vm":
            if not pf.in_service[position]:
                return np.zeros(len(pf.buses))
            i = pf.bus_internal[position]
            if self._vm_pos[i] < 0:  # slack (or pv) bus: its magnitude is fixed
                return np.zeros(len(pf.buses))
            g = np.zeros(self._npvpq + len(pf.pq))
            g[self._vm_pos[i]] = 1.0
        else:
            rows, scale = (pf._line_rows, pf._line_scale) if kind == "line" else (pf._trafo_rows, pf._trafo_scale)
            active = pf._line_active if kind == "line" else pf._trafo_active
            if not active[position]:
                return np.zeros(len(pf.buses))
            lf, gf = self._branch_gradient(pf.Yf, rows[position], scale[position, 0])
            lt, gt = self._branch_gradient(pf.Yt, rows[position], scale[position, 1])
            g = gf if lf >= lt else gt
        return self._to_buses(self._lu.solve(g, trans="T"))
