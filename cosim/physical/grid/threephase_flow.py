"""A three-phase power flow prepared once and re-solved each round (the round loop's).

``pandapower.runpp_3ph`` costs about 0.6 s a call (docs/three-phase.md): each call
rebuilds the three sequence networks and runs a full Newton-Raphson of the positive
sequence in every one of its outer iterations. `ThreePhasePowerFlow` takes pandapower's
own sequence admittance matrices (Y0, Y1, Y2, built once by pandapower from the net, the
transformer's vector group, the external grid's short-circuit data) and solves the same
equations as ``runpp_3ph`` by fixed-point current injection on factorisations made once:

    I_abc = conj(S_abc / V_abc) at every bus (constant-power wye loads, per phase);
    I_012 = Fortescue(I_abc);
    Y1[pq, pq] V1[pq] = I1[pq] - Y1[pq, ref] V1[ref]  (the source holds V1 at its set-point);
    Y0 V0 = I0, Y2 V2 = I2  (the source is its sequence impedance, part of Y0 and Y2);

until the voltages change by less than `FP_TOL`. On LV feeders it converges in a few
iterations; it agrees with ``runpp_3ph`` to 1e-8 pu (tests/test_threephase.py).
Injections per bus and phase follow the load convention [kW, kvar].
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import pandapower as pp
from scipy.sparse.linalg import splu

from cosim.physical.grid.threephase import add_zero_sequence_data

#: Convergence: largest change of any sequence voltage between two iterations [pu].
FP_TOL = 1e-11
FP_MAX_IT = 100
_A = np.exp(2j * np.pi / 3)
#: Sequence (0, 1, 2) to phase (a, b, c) voltages, and back (Fortescue).
SEQ_TO_PHASE = np.array([[1, 1, 1], [1, _A * _A, _A], [1, _A, _A * _A]])
PHASE_TO_SEQ = np.linalg.inv(SEQ_TO_PHASE)


@dataclass(frozen=True)
class PhaseState:
    """One three-phase power flow's outcome; arrays [bus x phase] aligned with `buses`."""

    converged: bool
    iterations: int
    vm_pu: np.ndarray
    """Line-to-neutral voltage magnitudes [pu of the nominal voltage / sqrt 3]."""
    va_degree: np.ndarray
    vuf_pct: np.ndarray
    """Voltage unbalance factor |V2| / |V1| per bus [%]."""
    V012: np.ndarray | None = None
    """Internal sequence voltages [3 x internal buses] (for sensitivities and checks)."""


class ThreePhasePowerFlow:
    """A net prepared for repeated three-phase power flows with changing per-phase injections.

    Parameters
    ----------
    net : the net; its loads and generators are ignored (each call supplies every bus's
        injections). Zero-sequence data it lacks are filled in (`add_zero_sequence_data`).
    """

    def __init__(self, net: pp.pandapowerNet):
        from pandapower.build_bus import _add_ext_grid_sc_impedance
        from pandapower.pd2ppc import _pd2ppc_recycle
        from pandapower.pf.runpp_3ph import _get_pf_variables_from_ppci, _get_y_bus, runpp_3ph
        from pandapower.pypower.idx_bus import VA, VM

        net = copy.deepcopy(net)
        add_zero_sequence_data(net)
        for table in ("load", "sgen", "asymmetric_load", "asymmetric_sgen"):
            if table in net and len(net[table]):
                net[table] = net[table].iloc[0:0]
        self.buses = net.bus.index.to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runpp_3ph(net, numba=False)  # sets pandapower's options; the no-load state
            _, ppci1 = _pd2ppc_recycle(net, 1, recycle=None)
            _, ppci2 = _pd2ppc_recycle(net, 2, recycle=None)
            _add_ext_grid_sc_impedance(net, ppci2)
            _, ppci0 = _pd2ppc_recycle(net, 0, recycle=None)
            base_mva, _, _, _, ref, _, pq = _get_pf_variables_from_ppci(ppci1)
            _, _, _, y0, y1, y2, *_ = _get_y_bus(ppci0, ppci1, ppci2, None)
        self.base_mva = float(base_mva)
        self.ref, self.pq = np.asarray(ref, int), np.asarray(pq, int)
        self.n_internal = y1.shape[0]
        lookup = net._pd2ppc_lookups["bus"][self.buses]
        self.in_service = lookup < self.n_internal
        self.bus_internal = np.where(self.in_service, lookup, 0)
        self.Y012 = (y0.tocsr(), y1.tocsr(), y2.tocsr())
        y1 = y1.tocsr()
        self._y1_pq_ref = y1[self.pq][:, self.ref]
        self._lu1 = splu(y1[self.pq][:, self.pq].tocsc())
        self._lu0 = splu(y0.tocsc())
        self._lu2 = splu(y2.tocsc())
        self.v1_ref = (ppci1["bus"][self.ref, VM] * np.exp(1j * np.deg2rad(ppci1["bus"][self.ref, VA]))).astype(complex)
        self._V012 = np.zeros((3, self.n_internal), complex)
        self._V012[1] = self.v1_ref[0] if len(self.ref) else 1.0

    def _s_abc_pu(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> np.ndarray:
        """Per-phase injections [3 x internal buses], pandapower's pu (generator convention)."""
        s = np.zeros((3, self.n_internal), complex)
        keep = self.in_service
        for ph in range(3):
            np.add.at(s[ph], self.bus_internal[keep], -(p_kw[keep, ph] + 1j * q_kvar[keep, ph]) / 1000.0)
        return s / self.base_mva

    def run(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> PhaseState:
        """Power flow for per-bus, per-phase net load `p_kw` [kW] and `q_kvar` [kvar]
        (arrays [bus x phase] aligned with `buses`; load convention)."""
        s_abc = self._s_abc_pu(np.asarray(p_kw, float), np.asarray(q_kvar, float))
        V012 = self._V012.copy()
        V012[1, self.ref] = self.v1_ref
        converged, it = False, 0
        for it in range(1, FP_MAX_IT + 1):  # noqa: B007 (the count is reported)
            v_abc = SEQ_TO_PHASE @ V012
            if not np.all(np.isfinite(v_abc)) or np.any(v_abc == 0):
                break
            i012 = PHASE_TO_SEQ @ np.conj(s_abc / v_abc)
            new = np.empty_like(V012)
            new[0] = self._lu0.solve(i012[0])
            new[2] = self._lu2.solve(i012[2])
            new[1, self.ref] = self.v1_ref
            new[1, self.pq] = self._lu1.solve(i012[1, self.pq] - self._y1_pq_ref @ self.v1_ref)
            step = float(np.max(np.abs(new - V012)))
            V012 = new
            if step < FP_TOL:
                converged = True
                break
        if converged:
            self._V012 = V012
        return self._state(V012, converged, it)

    def _state(self, V012: np.ndarray, converged: bool, iterations: int) -> PhaseState:
        v = (SEQ_TO_PHASE @ V012)[:, self.bus_internal].T
        v = np.where(self.in_service[:, None], v, np.nan)
        seq = V012[:, self.bus_internal]
        with np.errstate(invalid="ignore", divide="ignore"):
            vuf = np.where(self.in_service, np.abs(seq[2]) / np.abs(seq[1]) * 100.0, np.nan)
        if not converged:
            v = np.full_like(v, np.nan)
            vuf = np.full(len(self.buses), np.nan)
        return PhaseState(converged, iterations, np.abs(v), np.rad2deg(np.angle(v)), vuf, V012)

    def mismatch_pu(self, p_kw: np.ndarray, q_kvar: np.ndarray, V012: np.ndarray) -> float:
        """Largest per-phase power mismatch of a solution at the load buses [pu]: the power
        the network equations draw at each bus and phase less the injection asked."""
        i012 = np.stack([Y @ V for Y, V in zip(self.Y012, V012, strict=True)])
        s = (SEQ_TO_PHASE @ V012) * np.conj(SEQ_TO_PHASE @ i012)
        want = self._s_abc_pu(np.asarray(p_kw, float), np.asarray(q_kvar, float))
        return float(np.max(np.abs(s - want)[:, self.pq]))


def voltage_sensitivities(flow: ThreePhasePowerFlow, state: PhaseState, columns: np.ndarray,
                          reactive: bool = False, unbalance: bool = False) -> np.ndarray:
    """Sensitivities of every bus's phase voltage magnitudes to a net load at chosen buses
    and phases, from the power flow's own linearisation (no extra power flows).

    With V = T W (phase from sequence voltages) and the constant-power currents
    I_abc = conj(S) / conj(V), a change dS moves the sequence voltages by the solution of

        Y dW - T^-1 D conj(T dW) = T^-1 conj(dS) / conj(V),  D = -conj(S) / conj(V)^2,

    a real-linear system (it holds conj(dW)), solved as its real 2N form with one LU
    factorisation; the source's positive-sequence voltage stays fixed.

    Parameters
    ----------
    flow, state : the prepared power flow and a converged state of it.
    columns : pairs (position in ``flow.buses``, phase 0..2) of the perturbed net loads.
    reactive : the perturbation is reactive power [kvar] instead of active [kW].
    unbalance : return the sensitivities of each bus's voltage unbalance factor instead.

    Returns
    -------
    array [len(columns) x buses x 3]: d|V| of each bus and phase per kW (kvar) of net load
    at each column [pu/kW]; negative where more load lowers the voltage. With
    ``unbalance``, array [len(columns) x buses]: d VUF per kW (kvar) [%/kW].
    """
    import scipy.sparse as sp

    n = flow.n_internal
    W = state.V012
    V = SEQ_TO_PHASE @ W  # [phase x bus]
    s = np.zeros((3, n), complex)  # the state's injections, recovered from the network equations
    i012 = np.stack([Y @ w for Y, w in zip(flow.Y012, W, strict=True)])
    s[:] = V * np.conj(SEQ_TO_PHASE @ i012)
    D = -np.conj(s) / np.conj(V) ** 2
    eye = sp.identity(n, format="csr")
    t_inv, t_conj = sp.kron(PHASE_TO_SEQ, eye, format="csr"), sp.kron(np.conj(SEQ_TO_PHASE), eye, format="csr")
    K = t_inv @ sp.diags(D.ravel()) @ t_conj
    M = sp.block_diag(flow.Y012, format="csr")
    keep = np.ones(3 * n, bool)
    keep[n + flow.ref] = False  # V1 at the source is fixed
    M, K = M[keep][:, keep], K[keep][:, keep]
    A = sp.bmat([[M.real - K.real, -M.imag - K.imag], [M.imag - K.imag, M.real + K.real]], format="csc")
    lu = splu(A)
    cols = np.asarray(columns, int).reshape(-1, 2)
    unit = (1j if reactive else 1.0) * -1.0 / (1000.0 * flow.base_mva)  # +1 kW of load, pandapower's pu
    rhs_phase = np.zeros((3, n, len(cols)), complex)
    for k, (pos, ph) in enumerate(cols):
        b = flow.bus_internal[pos]
        rhs_phase[ph, b, k] = np.conj(unit) / np.conj(V[ph, b])
    rhs = (t_inv @ rhs_phase.reshape(3 * n, -1))[keep]
    sol = lu.solve(np.vstack([rhs.real, rhs.imag]))
    dW = np.zeros((3 * n, len(cols)), complex)
    dW[keep] = sol[: keep.sum()] + 1j * sol[keep.sum():]
    dW = dW.reshape(3, n, -1)
    if unbalance:  # VUF = 100 |V2| / |V1|
        v1, v2 = W[1][:, None], W[2][:, None]
        d_abs = [(np.conj(v) * dW[k]).real / np.where(np.abs(v) > 0, np.abs(v), 1.0) for k, v in ((1, v1), (2, v2))]
        dvuf = 100.0 * (d_abs[1] / np.abs(v1) - np.abs(v2) * d_abs[0] / np.abs(v1) ** 2)
        return dvuf[flow.bus_internal, :].T
    dV = np.einsum("ps,sbk->pbk", SEQ_TO_PHASE, dW)
    dvm = (np.conj(V)[:, :, None] * dV).real / np.abs(V)[:, :, None]  # [phase x internal bus x col]
    return np.transpose(dvm[:, flow.bus_internal, :], (2, 1, 0))
