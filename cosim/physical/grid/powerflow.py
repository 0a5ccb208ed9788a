"""AC power flow of one round's dispatch on the pandapower net.

Fast path: pandapower builds its internal model (Ybus, Yf, Yt, bus types) once; each
round solves Newton-Raphson on that cached model, from the last solution (warm start),
with lightsim2grid's compiled solver (KLU), about 0.2 ms on rural3 against 60 ms for
``pandapower.runpp``. The result agrees with ``pandapower.runpp`` to 1e-9 pu (checked in
tests/test_powerflow.py). If it does not converge, the same Newton-Raphson in scipy is
tried from a flat start, then a full ``pandapower.runpp``; if that fails too, the round is
recorded as not converged.

Injections follow the load convention: ``p_kw`` and ``q_kvar`` per bus are positive when
the bus consumes. kW inside cosim, MW only at the pandapower boundary.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import pandapower as pp
import scipy.sparse as sp
from scipy.sparse.linalg import splu

try:  # compiled Newton-Raphson; the scipy one below is the fallback
    from lightsim2grid.pandapower_compat.newtonpf._newtonpf import (
        KLU_solver_available,
        NRSing_KLU,
        NRSing_SparseLU,
    )
except ImportError:  # pragma: no cover - lightsim2grid is a dependency
    NRSing_KLU = NRSing_SparseLU = None
    KLU_solver_available = False

#: Newton-Raphson mismatch tolerance [pu power].
NR_TOL = 1e-9
NR_MAX_IT = 20


@dataclass(frozen=True)
class GridState:
    """One power flow's outcome, arrays aligned with `PowerFlow.buses`, `.lines`, `.trafos`."""

    converged: bool
    method: str
    """``newton`` (fast path), ``runpp`` (fallback) or ``failed``."""
    vm_pu: np.ndarray
    va_rad: np.ndarray
    line_loading_pct: np.ndarray
    trafo_loading_pct: np.ndarray
    slack_p_kw: float
    """Power the slack (external grid or grid-forming unit) supplies [kW]."""
    losses_kw: float
    V: np.ndarray | None = None
    """Internal complex voltages (fast path only), for sensitivities."""
    slack_q_kvar: float = 0.0
    """Reactive power the slack supplies [kvar]."""
    phases: object | None = None
    """A three-phase power flow's own outcome (`cosim.physical.grid.threephase_flow.PhaseState`,
    per bus and phase); None for a balanced one. With it, ``vm_pu`` is each bus's
    positive-sequence voltage and the loadings are the largest over the phases."""


class PowerFlow:
    """A pandapower net prepared for repeated power flows with changing bus injections.

    Parameters
    ----------
    net : the configured net (grid-connected or islanded). Its loads and generators are
        ignored: each call supplies the injections of every bus.
    """

    def get_state(self) -> np.ndarray:
        """The warm-start voltages (the last solution), for a checkpoint."""
        return self._V.copy()

    def set_state(self, v: np.ndarray) -> None:
        self._V = np.array(v, dtype=complex)

    def __init__(self, net: pp.pandapowerNet):
        self.net = net = copy.deepcopy(net)
        net.load.drop(net.load.index, inplace=True)
        net.sgen.drop(net.sgen.index, inplace=True)
        self.buses = net.bus.index.to_numpy()
        self.lines = net.line.index.to_numpy()
        self.trafos = net.trafo.index.to_numpy()
        # one injection load per bus; runpp (fallback and tests) sets its p and q
        pp.create_loads(net, self.buses.astype(int), p_mw=0.0, q_mvar=0.0,
                        name=[f"cosim injection {b}" for b in self.buses])
        self._load_at_bus = net.load.index.to_numpy()
        self._runpp()
        internal = net._ppc["internal"]
        self.baseMVA = float(internal["baseMVA"])
        self.Ybus = internal["Ybus"].tocsr()
        self.Yf = internal["Yf"].tocsr()
        self.Yt = internal["Yt"].tocsr()
        self.ref = np.asarray(internal["ref"], int)
        self.pv = np.asarray(internal["pv"], int)
        self.pq = np.asarray(internal["pq"], int)
        self.pvpq = np.r_[self.pv, self.pq]
        self.n_internal = self.Ybus.shape[0]
        lookup = net._pd2ppc_lookups["bus"][self.buses]
        self.in_service = lookup < self.n_internal
        self.bus_internal = np.where(self.in_service, lookup, 0)
        self.V0 = internal["V"].copy()
        self._V = self.V0.copy()
        self._branch_maps(internal)
        self._jacobian_structure()
        self._Ycsc = sp.csc_matrix(self.Ybus)
        self._Ycsc.sum_duplicates()
        self._slack_weights = np.zeros(self.n_internal)
        self._slack_weights[self.ref] = 1.0
        self._compiled = None
        self._lu_at = None  # (V, LU factors of the Jacobian at V): `jacobian_lu`
        self._state_positions = None  # `state_positions`
        self._bus_columns = None
        self._slack_rows_cache = None  # `sensitivities.loss_factors`
        self._at_ref = self.in_service & np.isin(self.bus_internal, self.ref)  # buses at the slack
        if NRSing_KLU is not None and len(self.ref) == 1:
            self._compiled = NRSing_KLU() if KLU_solver_available else NRSing_SparseLU()

    def _runpp(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(self.net, numba=False, init="dc" if not hasattr(self, "V0") else "auto")

    def _branch_maps(self, internal: dict) -> None:
        """Rows of Yf/Yt for each line and trafo, and the base currents to turn pu into %."""
        net = self.net
        branch_is = np.asarray(internal["branch_is"], bool)
        ppci_row = np.cumsum(branch_is) - 1
        ranges = net._pd2ppc_lookups["branch"]
        vn_kv = net.bus.vn_kv
        self._line_rows = self._trafo_rows = np.zeros(0, int)
        self._line_scale = np.zeros((0, 2))
        self._trafo_scale = np.zeros((0, 2))
        if "line" in ranges and len(self.lines):
            start, end = ranges["line"]
            rows = np.arange(start, end)
            active = branch_is[rows]
            self._line_active = active
            self._line_rows = np.where(active, ppci_row[rows], 0)
            line = net.line.loc[self.lines]
            i_max_ka = line.max_i_ka.to_numpy(float) * line.df.to_numpy(float) * line.parallel.to_numpy(float)
            base_f = self.baseMVA / (np.sqrt(3) * vn_kv.loc[line.from_bus].to_numpy(float))
            base_t = self.baseMVA / (np.sqrt(3) * vn_kv.loc[line.to_bus].to_numpy(float))
            self._line_scale = np.c_[base_f / i_max_ka, base_t / i_max_ka] * 100.0
        if "trafo" in ranges and len(self.trafos):
            start, end = ranges["trafo"]
            rows = np.arange(start, end)
            active = branch_is[rows]
            self._trafo_active = active
            self._trafo_rows = np.where(active, ppci_row[rows], 0)
            tr = net.trafo.loc[self.trafos]
            sn = tr.sn_mva.to_numpy(float) * tr.parallel.to_numpy(float) * tr.df.to_numpy(float)
            hv = tr.vn_hv_kv.to_numpy(float) / vn_kv.loc[tr.hv_bus].to_numpy(float)
            lv = tr.vn_lv_kv.to_numpy(float) / vn_kv.loc[tr.lv_bus].to_numpy(float)
            self._trafo_scale = np.c_[hv * self.baseMVA / sn, lv * self.baseMVA / sn] * 100.0

    # -- the fast path ------------------------------------------------------------------
    def _sbus(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> np.ndarray:
        """Internal complex injections [pu] (generator convention) from per-bus loads [kW]."""
        s = np.zeros(self.n_internal, complex)
        np.add.at(
            s,
            self.bus_internal[self.in_service],
            -(p_kw[self.in_service] + 1j * q_kvar[self.in_service]) / (1000.0 * self.baseMVA),
        )
        return s

    def _jacobian_structure(self) -> None:
        """Where each entry of Ybus (plus its diagonal) lands in the Newton-Raphson Jacobian.

        J = [[Re dS/dVa[pvpq, pvpq], Re dS/dVm[pvpq, pq]], [Im dS/dVa[pq, pvpq], Im dS/dVm[pq, pq]]];
        every block lives on Ybus's sparsity pattern, so J's structure is fixed and only
        its values change: they are filled by index arrays, with no sparse slicing.
        """
        Y = (self.Ybus + sp.identity(self.n_internal, format="csr") * 0).tocoo()
        pattern = sp.coo_matrix((np.ones(Y.nnz), (Y.row, Y.col)), shape=Y.shape).tocsr()
        pattern = (pattern + sp.identity(self.n_internal, format="csr")).tocoo()
        rows, cols = pattern.row, pattern.col
        npvpq = len(self.pvpq)
        p_row = np.full(self.n_internal, -1)
        p_row[self.pvpq] = np.arange(npvpq)
        q_row = np.full(self.n_internal, -1)
        q_row[self.pq] = npvpq + np.arange(len(self.pq))
        pieces = []  # (entry mask, J row, J col, which derivative, real or imag)
        for deriv, col_of in (("va", p_row), ("vm", q_row)):
            for part, row_of in (("re", p_row), ("im", q_row)):
                keep = (row_of[rows] >= 0) & (col_of[cols] >= 0)
                pieces.append((np.flatnonzero(keep), row_of[rows][keep], col_of[cols][keep], deriv, part))
        n = npvpq + len(self.pq)
        all_rows = np.concatenate([p[1] for p in pieces])
        all_cols = np.concatenate([p[2] for p in pieces])
        J = sp.csc_matrix((np.arange(1, len(all_rows) + 1, dtype=float), (all_rows, all_cols)), shape=(n, n))
        self._jac_order = J.data.astype(int) - 1  # position in the concatenation of each csc entry
        self._jac_indices, self._jac_indptr, self._jac_shape = J.indices, J.indptr, J.shape
        self._jac_pieces = pieces
        self._jac_entries = (rows, cols)
        self._jac_ydata = np.asarray(self.Ybus[rows, cols]).ravel()

    def jacobian(self, V: np.ndarray) -> sp.csc_matrix:
        """The Newton-Raphson Jacobian at V (same as pypower's, assembled by index arrays)."""
        rows, cols = self._jac_entries
        y = self._jac_ydata
        Ibus = self.Ybus @ V
        diag = (rows == cols).astype(float)
        Vi, Vj = V[rows], V[cols]
        dS_dVm = Vi * np.conj(y * Vj / np.abs(Vj)) + diag * np.conj(Ibus[rows]) * Vi / np.abs(Vi)
        dS_dVa = 1j * Vi * np.conj(diag * Ibus[rows] - y * Vj)
        values = []
        for entries, _, _, deriv, part in self._jac_pieces:
            d = (dS_dVa if deriv == "va" else dS_dVm)[entries]
            values.append(d.real if part == "re" else d.imag)
        data = np.concatenate(values)[self._jac_order]
        return sp.csc_matrix((data, self._jac_indices, self._jac_indptr), shape=self._jac_shape)

    def jacobian_lu(self, V: np.ndarray):
        """The sparse LU factors of the Jacobian at V (scipy's SuperLU; ``solve(g, trans="T")``
        solves with its transpose). The factors of the last V asked for are kept: a round
        asks for them at its own operating point for the feedback's sensitivities and again
        for the loss factors."""
        if self._lu_at is not None and self._lu_at[0] is V:
            return self._lu_at[1]
        lu = splu(self.jacobian(V), permc_spec="MMD_AT_PLUS_A")
        self._lu_at = (V, lu)
        return lu

    @property
    def state_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Per internal bus, where its angle and its magnitude stand in the Newton-Raphson
        state vector (angles of the pv/pq buses first, then magnitudes of the pq buses);
        -1 where the bus has none (the slack's angle, fixed magnitudes)."""
        if self._state_positions is None:
            npvpq = len(self.pvpq)
            va = np.full(self.n_internal, -1)
            va[self.pvpq] = np.arange(npvpq)
            vm = np.full(self.n_internal, -1)
            vm[self.pq] = npvpq + np.arange(len(self.pq))
            self._state_positions = (va, vm)
        return self._state_positions

    @property
    def bus_columns(self) -> np.ndarray:
        """Per bus (aligned with `buses`), its position among the pv/pq buses' angles in
        the state vector; -1 for the slack bus and buses out of service."""
        if self._bus_columns is None:
            self._bus_columns = np.where(self.in_service, self.state_positions[0][self.bus_internal], -1)
        return self._bus_columns

    def _newton(self, Sbus: np.ndarray, V0: np.ndarray) -> tuple[bool, np.ndarray]:
        V = V0.copy()
        Vm, Va = np.abs(V), np.angle(V)
        pvpq, pq = self.pvpq, self.pq
        npvpq = len(pvpq)
        for _ in range(NR_MAX_IT + 1):
            mis = V * np.conj(self.Ybus @ V) - Sbus
            F = np.r_[mis[pvpq].real, mis[pq].imag]
            if not np.all(np.isfinite(F)):
                return False, V
            if np.max(np.abs(F), initial=0.0) < NR_TOL:
                return True, V
            try:
                dx = splu(self.jacobian(V)).solve(-F)
            except RuntimeError:
                return False, V
            Va[pvpq] += dx[:npvpq]
            Vm[pq] += dx[npvpq:]
            V = Vm * np.exp(1j * Va)
        return False, V

    def run(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> GridState:
        """Power flow for per-bus net load `p_kw` [kW] and `q_kvar` [kvar] (aligned with `buses`)."""
        p_kw = np.asarray(p_kw, float)
        q_kvar = np.asarray(q_kvar, float)
        Sbus = self._sbus(p_kw, q_kvar)
        ok = False
        if self._compiled is not None:
            self._compiled.solve(self._Ycsc, self._V.copy(), Sbus, self.ref, self._slack_weights,
                                 self.pv, self.pq, NR_MAX_IT, NR_TOL)
            ok = bool(self._compiled.converged())
            V = self._compiled.get_V() if ok else None
        if not ok:  # scipy Newton-Raphson from a flat start before giving up on the fast path
            ok, V = self._newton(Sbus, self.V0)
        if ok:
            self._V = V
            return self._state_from_V(V, p_kw, q_kvar)
        return self.run_pandapower(p_kw, q_kvar)

    def _state_from_V(self, V: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray | None = None) -> GridState:
        vm = np.where(self.in_service, np.abs(V[self.bus_internal]), np.nan)
        va = np.where(self.in_service, np.angle(V[self.bus_internal]), np.nan)
        If = np.abs(self.Yf @ V)
        It = np.abs(self.Yt @ V)
        line = np.maximum(If[self._line_rows] * self._line_scale[:, 0], It[self._line_rows] * self._line_scale[:, 1])
        trafo = np.maximum(
            If[self._trafo_rows] * self._trafo_scale[:, 0], It[self._trafo_rows] * self._trafo_scale[:, 1]
        )
        if len(line):
            line = np.where(self._line_active, line, 0.0)
        if len(trafo):
            trafo = np.where(self._trafo_active, trafo, 0.0)
        S = V * np.conj(self.Ybus @ V)
        # the slack's own output is the net injection at its bus plus the load there
        at_ref = self._at_ref
        slack_kw = float(S[self.ref].real.sum() * self.baseMVA * 1000.0 + p_kw[at_ref].sum())
        # slack supplies the net load of in-service buses plus the losses
        losses_kw = slack_kw - float(p_kw[self.in_service].sum())
        slack_kvar = float(S[self.ref].imag.sum() * self.baseMVA * 1000.0)
        if q_kvar is not None:
            slack_kvar += float(np.asarray(q_kvar, float)[at_ref].sum())
        return GridState(True, "newton", vm, va, line, trafo, slack_kw, losses_kw, V, slack_kvar)

    # -- the fallback -------------------------------------------------------------------
    def run_pandapower(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> GridState:
        """A full pandapower.runpp of the same injections."""
        net = self.net
        net.load.loc[self._load_at_bus, "p_mw"] = np.asarray(p_kw, float) / 1000.0
        net.load.loc[self._load_at_bus, "q_mvar"] = np.asarray(q_kvar, float) / 1000.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pp.runpp(net, numba=False, max_iteration=30)
        except Exception:
            nan = np.full(len(self.buses), np.nan)
            return GridState(
                False, "failed", nan, nan, np.full(len(self.lines), np.nan), np.full(len(self.trafos), np.nan),
                float("nan"), float("nan"),
            )
        slack = float(net.res_ext_grid.p_mw.sum() * 1000.0)
        return GridState(
            True,
            "runpp",
            net.res_bus.vm_pu.loc[self.buses].to_numpy(float),
            np.deg2rad(net.res_bus.va_degree.loc[self.buses].to_numpy(float)),
            net.res_line.loading_percent.loc[self.lines].to_numpy(float) if len(self.lines) else np.zeros(0),
            net.res_trafo.loading_percent.loc[self.trafos].to_numpy(float) if len(self.trafos) else np.zeros(0),
            slack,
            slack - float(np.nansum(np.asarray(p_kw, float)[self.in_service])),
            net._ppc["internal"]["V"].copy() if net._ppc is not None else None,
            float(net.res_ext_grid.q_mvar.sum() * 1000.0),
        )
