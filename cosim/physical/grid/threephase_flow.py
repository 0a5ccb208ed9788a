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

from cosim.physical.grid.powerflow import GridState
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
    line_i_ka: np.ndarray | None = None
    """Phase currents of each line [lines x phase], the larger of its two ends [kA]."""
    line_in_ka: np.ndarray | None = None
    """Neutral (return) current of each line, |I_a + I_b + I_c| = 3 |I_0|, the larger end [kA]."""
    line_loading_pct: np.ndarray | None = None
    """Phase current per rated current of each line [lines x phase] [%]."""
    trafo_loading_pct: np.ndarray | None = None
    """Phase current per rated current of each transformer, the larger side [trafos x phase] [%]."""
    slack_p_kw: float = float("nan")
    """Active power the source supplies, all phases [kW]."""
    slack_q_kvar: float = float("nan")
    """Reactive power the source supplies, all phases [kvar]."""


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
        from pandapower.pypower.idx_bus import BASE_KV, VA, VM

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
            _, _, _, y0, y1, y2, y0f, y1f, y2f, y0t, y1t, y2t = _get_y_bus(ppci0, ppci1, ppci2, None)
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
        self.lines = net.line.index.to_numpy()
        self.trafos = net.trafo.index.to_numpy()
        self.Yf012 = tuple(y.tocsr() for y in (y0f, y1f, y2f))
        self.Yt012 = tuple(y.tocsr() for y in (y0t, y1t, y2t))
        self._branch_maps(net, ppci1, ppci1["bus"][:, BASE_KV].real)

    def _branch_maps(self, net: pp.pandapowerNet, ppci: dict, base_kv: np.ndarray) -> None:
        """Rows of the branch admittances of each line and transformer, and the factors that
        turn a phase current [pu] into kA and into % of the rated current.

        A per-phase power in pandapower's three-phase pu is on the three-phase base, so a
        phase current of 1 pu is ``base_mva * sqrt(3) / base_kv`` kA (pandapower's
        ``I_from_SV_elementwise`` with the line-to-neutral voltage)."""
        from pandapower.pypower.idx_brch import F_BUS, T_BUS

        branch_is = np.asarray(ppci["internal"]["branch_is"], bool)
        ppci_row = np.cumsum(branch_is) - 1
        ranges = net._pd2ppc_lookups["branch"]
        f_bus = ppci["branch"][:, F_BUS].real.astype(int)
        t_bus = ppci["branch"][:, T_BUS].real.astype(int)
        ka_per_pu = self.base_mva * np.sqrt(3.0) / base_kv

        def rows_of(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
            if kind not in ranges or n == 0:
                return np.zeros(n, int), np.zeros(n, bool)
            start, end = ranges[kind]
            rows = np.arange(start, end)
            return np.where(branch_is[rows], ppci_row[rows], 0), branch_is[rows]

        self._line_rows, self._line_active = rows_of("line", len(self.lines))
        line = net.line.loc[self.lines]
        self._line_max_i_ka = (line.max_i_ka.to_numpy(float) * line.df.to_numpy(float)
                               * line.parallel.to_numpy(float))
        r = self._line_rows
        self._line_ka = np.c_[ka_per_pu[f_bus[r]], ka_per_pu[t_bus[r]]] if len(r) else np.zeros((0, 2))
        self._trafo_rows, self._trafo_active = rows_of("trafo", len(self.trafos))
        tr = net.trafo.loc[self.trafos]
        sn = tr.sn_mva.to_numpy(float) * tr.parallel.to_numpy(float)
        r = self._trafo_rows
        rated_hv_ka = sn / (np.sqrt(3.0) * tr.vn_hv_kv.to_numpy(float))
        rated_lv_ka = sn / (np.sqrt(3.0) * tr.vn_lv_kv.to_numpy(float))
        self._trafo_pct = (np.c_[ka_per_pu[f_bus[r]] / rated_hv_ka, ka_per_pu[t_bus[r]] / rated_lv_ka] * 100.0
                           if len(r) else np.zeros((0, 2)))

    def get_state(self) -> np.ndarray:
        """The warm-start sequence voltages (the last solution), for a checkpoint."""
        return self._V012.copy()

    def set_state(self, v012: np.ndarray) -> None:
        self._V012 = np.array(v012, dtype=complex)

    def branch_currents(self, V012: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Phase currents [pu] at the from and to ends of every internal branch, each
        [phase x branch], from sequence voltages [3 x internal buses]."""
        i_f = SEQ_TO_PHASE @ np.stack([Y @ v for Y, v in zip(self.Yf012, V012, strict=True)])
        i_t = SEQ_TO_PHASE @ np.stack([Y @ v for Y, v in zip(self.Yt012, V012, strict=True)])
        return i_f, i_t

    def source_power_pu(self, V012: np.ndarray) -> complex:
        """Complex power the source supplies, all phases [pu of ``base_mva``]: what the
        network equations draw at the reference bus (no load sits there)."""
        ref = self.ref
        i012 = np.stack([(Y @ v)[ref] for Y, v in zip(self.Y012, V012, strict=True)])
        return complex(np.sum((SEQ_TO_PHASE @ V012[:, ref]) * np.conj(SEQ_TO_PHASE @ i012)))

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
            nan = np.full((len(self.lines), 3), np.nan)
            return PhaseState(False, iterations, np.full(v.shape, np.nan), np.full(v.shape, np.nan),
                              np.full(len(self.buses), np.nan), V012, nan, nan[:, 0], nan,
                              np.full((len(self.trafos), 3), np.nan))
        i_f, i_t = self.branch_currents(V012)
        lr, tr = self._line_rows, self._trafo_rows
        ka_f, ka_t = np.abs(i_f[:, lr]).T * self._line_ka[:, :1], np.abs(i_t[:, lr]).T * self._line_ka[:, 1:]
        line_i = np.where(self._line_active[:, None], np.maximum(ka_f, ka_t), 0.0)
        neutral = np.maximum(np.abs(i_f[:, lr].sum(axis=0)) * self._line_ka[:, 0],
                             np.abs(i_t[:, lr].sum(axis=0)) * self._line_ka[:, 1])
        neutral = np.where(self._line_active, neutral, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            line_pct = line_i / self._line_max_i_ka[:, None] * 100.0
        trafo_pct = np.maximum(np.abs(i_f[:, tr]).T * self._trafo_pct[:, :1], np.abs(i_t[:, tr]).T * self._trafo_pct[:, 1:])
        trafo_pct = np.where(self._trafo_active[:, None], trafo_pct, 0.0)
        s_src = self.source_power_pu(V012) * self.base_mva * 1000.0
        return PhaseState(converged, iterations, np.abs(v), np.rad2deg(np.angle(v)), vuf, V012, line_i, neutral,
                          line_pct, trafo_pct, s_src.real, s_src.imag)

    def run_grid(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> GridState:
        """`run`, as the round's grid check reads a power flow: a `GridState` whose
        ``phases`` holds the per-phase outcome; ``vm_pu`` is each bus's positive-sequence
        voltage, the loadings are the largest over the phases, the losses are the source's
        power less the net load of all phases [kW]."""
        st = self.run(p_kw, q_kvar)
        if not st.converged:
            nan = np.full(len(self.buses), np.nan)
            return GridState(False, "failed", nan, nan, np.full(len(self.lines), np.nan),
                             np.full(len(self.trafos), np.nan), float("nan"), float("nan"), None, float("nan"), st)
        v1 = st.V012[1, self.bus_internal]
        vm = np.where(self.in_service, np.abs(v1), np.nan)
        va = np.where(self.in_service, np.angle(v1), np.nan)
        net_kw = float(np.asarray(p_kw, float)[self.in_service].sum())
        return GridState(True, "three-phase", vm, va, st.line_loading_pct.max(axis=1, initial=0.0),
                         st.trafo_loading_pct.max(axis=1, initial=0.0), st.slack_p_kw, st.slack_p_kw - net_kw,
                         None, st.slack_q_kvar, st)

    def mismatch_pu(self, p_kw: np.ndarray, q_kvar: np.ndarray, V012: np.ndarray) -> float:
        """Largest per-phase power mismatch of a solution at the load buses [pu]: the power
        the network equations draw at each bus and phase less the injection asked."""
        i012 = np.stack([Y @ V for Y, V in zip(self.Y012, V012, strict=True)])
        s = (SEQ_TO_PHASE @ V012) * np.conj(SEQ_TO_PHASE @ i012)
        want = self._s_abc_pu(np.asarray(p_kw, float), np.asarray(q_kvar, float))
        return float(np.max(np.abs(s - want)[:, self.pq]))


#: T^-1 D conj(T) couples sequence s with s' through phase p by this factor [3 x 3 x 3].
_K_COEF = np.einsum("sp,pt->stp", PHASE_TO_SEQ, np.conj(SEQ_TO_PHASE))


def _linearisation_pattern(flow: ThreePhasePowerFlow) -> dict:
    """What the linearisation's matrix keeps from one operating point to the next (made
    once per prepared flow): the constant admittance part of its real 2N form, in COO,
    and where the operating-point part (diagonal blocks D of each sequence pair) lands."""
    import scipy.sparse as sp

    n = flow.n_internal
    keep = np.ones(3 * n, bool)
    keep[n + flow.ref] = False  # V1 at the source is fixed
    new = np.full(3 * n, -1)
    new[keep] = np.arange(keep.sum())
    m = keep.sum()
    M = sp.block_diag(flow.Y012, format="coo")
    ok = keep[M.row] & keep[M.col]
    r, c, v = new[M.row[ok]], new[M.col[ok]], M.data[ok]
    # [[Re M, -Im M], [Im M, Re M]]
    rows_m = np.concatenate([r, r, r + m, r + m])
    cols_m = np.concatenate([c, c + m, c, c + m])
    vals_m = np.concatenate([v.real, -v.imag, v.imag, v.real])
    # K's entries: (s n + i, t n + i) for every pair of sequences (s, t) and bus i
    s_idx, t_idx, bus = np.meshgrid(np.arange(3), np.arange(3), np.arange(n), indexing="ij")
    kr, kc = (s_idx * n + bus).ravel(), (t_idx * n + bus).ravel()
    ok_k = keep[kr] & keep[kc]
    kr, kc = new[kr[ok_k]], new[kc[ok_k]]
    return {"keep": keep, "m": m, "ok_k": ok_k, "rows": np.concatenate([rows_m, kr, kr, kr + m, kr + m]),
            "cols": np.concatenate([cols_m, kc, kc + m, kc, kc + m]), "vals_m": vals_m}


def _linearisation(flow: ThreePhasePowerFlow, state: PhaseState):
    """The real 2N form of the power flow's linearisation at `state` (see
    `sequence_sensitivities`): the matrix A (CSC), which sequence unknowns it keeps (V1 at
    the source is fixed) and the phase voltages [phase x bus]."""
    import scipy.sparse as sp

    pat = getattr(flow, "_lin_pattern", None)
    if pat is None:
        pat = flow._lin_pattern = _linearisation_pattern(flow)
    W = state.V012
    V = SEQ_TO_PHASE @ W  # [phase x bus]
    i012 = np.stack([Y @ w for Y, w in zip(flow.Y012, W, strict=True)])
    s = V * np.conj(SEQ_TO_PHASE @ i012)  # the state's injections, recovered from the network equations
    D = -np.conj(s) / np.conj(V) ** 2
    K = np.einsum("stp,pi->sti", _K_COEF, D).ravel()[pat["ok_k"]]  # K's value at (s n + i, t n + i)
    # minus [[Re K, Im K], [Im K, -Re K]]
    vals = np.concatenate([pat["vals_m"], -K.real, -K.imag, -K.imag, K.real])
    m = pat["m"]
    A = sp.csc_matrix((vals, (pat["rows"], pat["cols"])), shape=(2 * m, 2 * m))
    return A, pat["keep"], V


def _load_rhs(flow: ThreePhasePowerFlow, V: np.ndarray, keep: np.ndarray, load_columns: np.ndarray,
              reactive: bool = False) -> np.ndarray:
    """Right-hand sides [2 * kept x k] (real, then imaginary parts) of a net load per unit of
    each column (`sequence_sensitivities`): T^-1 conj(dS) / conj(V) at each bus."""
    n = flow.n_internal
    cols = np.asarray(load_columns, float)
    k = cols.shape[2]
    unit = (1j if reactive else 1.0) * -1.0 / (1000.0 * flow.base_mva)  # +1 kW of load, pandapower's pu
    bus, col = np.nonzero(np.abs(cols).sum(axis=1) * flow.in_service[:, None])
    b = flow.bus_internal[bus]
    phase_val = cols[bus, :, col] * (np.conj(unit) / np.conj(V[:, b])).T  # [entries x phase]
    seq_val = phase_val @ PHASE_TO_SEQ.T  # [entries x sequence]
    rhs = np.zeros((3 * n, k), complex)
    for s_ in range(3):
        np.add.at(rhs, (s_ * n + b, col), seq_val[:, s_])
    rhs = rhs[keep]
    return np.vstack([rhs.real, rhs.imag])


def sequence_sensitivities(flow: ThreePhasePowerFlow, state: PhaseState, load_columns: np.ndarray,
                           reactive: bool = False) -> np.ndarray:
    """Change of the sequence voltages per kW (kvar) of net load at chosen buses and
    phases, from the power flow's own linearisation (no extra power flows).

    With V = T W (phase from sequence voltages) and the constant-power currents
    I_abc = conj(S) / conj(V), a change dS moves the sequence voltages by the solution of

        Y dW - T^-1 D conj(T dW) = T^-1 conj(dS) / conj(V),  D = -conj(S) / conj(V)^2,

    a real-linear system (it holds conj(dW)), solved as its real 2N form with one LU
    factorisation; the source's positive-sequence voltage stays fixed.

    Parameters
    ----------
    flow, state : the prepared power flow and a converged state of it.
    load_columns : array [buses x 3 x k]: the net load added at each bus and phase per unit
        of each of the k columns [kW/unit] (one column per perturbation; a column may spread
        over several buses and phases, e.g. a three-phase system's thirds).
    reactive : the perturbation is reactive power [kvar] instead of active [kW].

    Returns
    -------
    array [3 x internal buses x k]: dW per unit of each column [pu].
    """
    n = flow.n_internal
    A, keep, V = _linearisation(flow, state)
    sol = splu(A).solve(_load_rhs(flow, V, keep, load_columns, reactive))
    k = sol.shape[1]
    dW = np.zeros((3 * n, k), complex)
    dW[keep] = sol[: keep.sum()] + 1j * sol[keep.sum():]
    return dW.reshape(3, n, k)


def _magnitude_change(x: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """d|x| for a change dx of complex x (broadcast over a trailing column axis)."""
    ax = np.abs(x)
    return (np.conj(x)[..., None] * dx).real / np.where(ax > 0, ax, 1.0)[..., None]


def _unbalance_change(W: np.ndarray, dW: np.ndarray) -> np.ndarray:
    """d VUF [%] of every internal bus per column, VUF = 100 |V2| / |V1|."""
    v1, v2 = W[1], W[2]
    d1, d2 = _magnitude_change(v1, dW[1]), _magnitude_change(v2, dW[2])
    a1 = np.abs(v1)[:, None]
    return 100.0 * (d2 / a1 - np.abs(v2)[:, None] * d1 / a1**2)


def voltage_sensitivities(flow: ThreePhasePowerFlow, state: PhaseState, columns: np.ndarray,
                          reactive: bool = False, unbalance: bool = False) -> np.ndarray:
    """Sensitivities of every bus's phase voltage magnitudes to a net load at chosen buses
    and phases (`sequence_sensitivities`).

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
    cols = np.asarray(columns, int).reshape(-1, 2)
    load = np.zeros((len(flow.buses), 3, len(cols)))
    load[cols[:, 0], cols[:, 1], np.arange(len(cols))] = 1.0
    dW = sequence_sensitivities(flow, state, load, reactive)
    if unbalance:
        return _unbalance_change(state.V012, dW)[flow.bus_internal, :].T
    V = SEQ_TO_PHASE @ state.V012
    dV = np.einsum("ps,sbk->pbk", SEQ_TO_PHASE, dW)
    dvm = _magnitude_change(V, dV)  # [phase x internal bus x col]
    return np.transpose(dvm[:, flow.bus_internal, :], (2, 1, 0))


class PhaseSensitivities:
    """Sensitivities of every per-phase limit to each participant's injection at a solved
    three-phase state, in the shape the feedback reads (`cosim.sim.feedback.gradient`): a
    row per monitored quantity, a column per participant, per kW the participant *injects*
    (generator convention).

    A participant's injection changes on the phases of ``split`` (its row sums to 1): the
    feedback changes an injection by curtailing PV or shedding load, so ``split`` is the
    connection of the system that gives way (`marginal_split`).

    The linearisation of `sequence_sensitivities` is factorised once; each row is the
    gradient g of one quantity (a real-linear form in the sequence-voltage change) turned
    into sensitivities to every participant by one transposed solve, A^T y = g (the
    adjoint method, as `cosim.physical.grid.sensitivities.AdjointSensitivities`): the
    feedback needs only the few violated rows.

    Rows: ``dvm_dp[3 * bus + phase]`` [pu/kW], ``dvuf_dp[bus]`` [%/kW],
    ``dline_dp[3 * line + phase]`` and ``dtrafo_dp[3 * trafo + phase]`` [%/kW] (phase
    current per rated current, at the branch's more loaded end); ``dslack_dp`` and
    ``dloss_dp`` [kW/kW] per participant.
    """

    def __init__(self, flow: ThreePhasePowerFlow, state: PhaseState, participant_pos: np.ndarray,
                 split: np.ndarray):
        from cosim.physical.grid.sensitivities import _AdjointRows

        if state.V012 is None or not state.converged:
            raise ValueError("sensitivities need a converged three-phase state")
        self.flow, self.W = flow, state.V012
        n_bus, n_part = len(flow.buses), len(participant_pos)
        A, self._keep, self.V = _linearisation(flow, state)
        self._lu = splu(A.T.tocsc())
        load = np.zeros((n_bus, 3, n_part))
        load[np.asarray(participant_pos, int), :, np.arange(n_part)] = -np.asarray(split, float)  # +1 kW injected
        self._rhs = _load_rhs(flow, self.V, self._keep, load)
        self.dvm_dp = _AdjointRows(self, "vm", 3 * n_bus)
        self.dvuf_dp = _AdjointRows(self, "vuf", n_bus)
        self.dline_dp = _AdjointRows(self, "line", 3 * len(flow.lines))
        self.dtrafo_dp = _AdjointRows(self, "trafo", 3 * len(flow.trafos))
        self.dslack_dp = self._solve(self._slack_form())
        self.dloss_dp = self.dslack_dp + 1.0

    def _solve(self, c: np.ndarray) -> np.ndarray:
        """Sensitivities to every participant of q = Re(sum c * dW), c [3 x internal buses]."""
        c = c.reshape(-1)[self._keep]
        y = self._lu.solve(np.r_[c.real, -c.imag])
        return y @ self._rhs

    def _slack_form(self) -> np.ndarray:
        """The source's active power, sum over phases of Re(conj(I) dV + conj(V) dI) at the
        reference bus (V1 fixed there), as a form in dW."""
        flow, W, ref = self.flow, self.W, self.flow.ref
        i_ref = SEQ_TO_PHASE @ np.stack([(Y @ w)[ref] for Y, w in zip(flow.Y012, W, strict=True)])
        v_ref = SEQ_TO_PHASE @ W[:, ref]
        c = np.zeros((3, flow.n_internal), complex)
        for s, Y in enumerate(flow.Y012):
            for r_i, r in enumerate(ref):
                # dV_p = T[p, s] dW_s[r]; dI_p = T[p, s] (Y_s dW_s)[r]
                c[s, r] += np.sum(np.conj(i_ref[:, r_i]) * SEQ_TO_PHASE[:, s])
                row = Y.getrow(r)
                c[s, row.indices] += np.sum(np.conj(v_ref[:, r_i]) * SEQ_TO_PHASE[:, s]) * row.data
        return c * self.flow.base_mva * 1000.0

    def _row(self, kind: str, position: int) -> np.ndarray:
        flow, W = self.flow, self.W
        c = np.zeros((3, flow.n_internal), complex)
        if kind in ("vm", "vuf"):
            bus = position // 3 if kind == "vm" else position
            if not flow.in_service[bus]:
                return np.zeros(self._rhs.shape[1])
            b = flow.bus_internal[bus]
            if kind == "vm":  # d|V_p| = Re(conj(V_p) / |V_p| sum_s T[p, s] dW_s)
                ph = position % 3
                c[:, b] = np.conj(self.V[ph, b]) / abs(self.V[ph, b]) * SEQ_TO_PHASE[ph]
            else:  # VUF = 100 |V2| / |V1|
                v1, v2 = W[1, b], W[2, b]
                if abs(v2) > 0:
                    c[2, b] = 100.0 * np.conj(v2) / abs(v2) / abs(v1)
                c[1, b] = -100.0 * abs(v2) * np.conj(v1) / abs(v1) ** 3
            return self._solve(c)
        branch, ph = divmod(position, 3)
        if kind == "line":
            rows, active = flow._line_rows, flow._line_active
            scale = flow._line_ka / flow._line_max_i_ka[:, None] * 100.0
        else:
            rows, active = flow._trafo_rows, flow._trafo_active
            scale = flow._trafo_pct
        if not active[branch]:
            return np.zeros(self._rhs.shape[1])
        r = rows[branch]
        ends = []
        for side, Y in enumerate((flow.Yf012, flow.Yt012)):
            yrows = [Yk.getrow(r) for Yk in Y]
            i = sum(SEQ_TO_PHASE[ph, s] * (yr.data @ W[s, yr.indices]) for s, yr in enumerate(yrows))
            ends.append((abs(i) * scale[branch, side], i, yrows, scale[branch, side]))
        _, i, yrows, sc = max(ends, key=lambda e: e[0])
        if abs(i) == 0:
            return np.zeros(self._rhs.shape[1])
        for s, yr in enumerate(yrows):  # d|I_p| = Re(conj(I_p) / |I_p| sum_s T[p, s] (Y_s dW_s)[r])
            c[s, yr.indices] += np.conj(i) / abs(i) * SEQ_TO_PHASE[ph, s] * yr.data * sc
        return self._solve(c)


def marginal_split(connection_pv: np.ndarray, connection_load: np.ndarray, exporting: np.ndarray) -> np.ndarray:
    """Phase shares [participants x 3] of the system that gives way when the feedback changes
    a participant's injection: its PV when it exports (curtailment), its load otherwise
    (shedding). Connections as `cosim.physical.grid.threephase.phase_split`; None: none.

    >>> marginal_split(np.array(["a", None]), np.array(["b", "c"]), np.array([True, True])).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    from cosim.physical.grid.threephase import phase_split

    pv = np.array([phase_split(c) if c else np.full(3, np.nan) for c in connection_pv]).reshape(-1, 3)
    load = np.array([phase_split(c) for c in connection_load]).reshape(-1, 3)
    use_pv = np.asarray(exporting, bool) & ~np.isnan(pv[:, 0])
    return np.where(use_pv[:, None], np.nan_to_num(pv), load)
