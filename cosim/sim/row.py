"""One round's row of rounds.parquet (`round_row`): what the round did, its physics,
its timings; the columns are listed in docs/results.md."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cosim.physical.islanded import GridFormingUnit
from cosim.sim.round import RoundOutcome


def round_row(t: int, time_: pd.Timestamp, o: RoundOutcome, dt_h: float, gfu: GridFormingUnit | None,
              round_s: float, lv: np.ndarray | None = None) -> dict:
    r, s = o.result, o.state
    vm = s.vm_pu if s.phases is None else s.phases.vm_pu  # three-phase: every phase of every bus
    vm_lv = vm if lv is None else vm[lv]
    row = {
        "round": t,
        "time": time_,
        "iterations": o.iterations,
        "pf_converged": bool(s.converged),
        "cleared_kwh": r.cleared_kwh,
        "p2p_paid": float(np.nan_to_num(r.buy_price_per_kwh) @ r.bought_kwh),
        "price_per_kwh": r.price_per_kwh,
        "grid_import_kwh": float(r.import_kwh.sum()) + r.operator_import_kwh,
        "grid_export_kwh": float(r.export_kwh.sum()) + r.operator_export_kwh,
        "curtailed_kwh": float(r.curtailed_kwh.sum()),
        "shed_kwh": float(r.shed_kwh.sum()),
        "losses_kwh": s.losses_kw * dt_h,
        "vm_min_pu": float(np.nanmin(vm_lv)) if s.converged else np.nan,
        "vm_max_pu": float(np.nanmax(vm_lv)) if s.converged else np.nan,
        "max_line_loading_pct": float(np.nanmax(s.line_loading_pct, initial=0.0)) if s.converged else np.nan,
        "max_trafo_loading_pct": float(np.nanmax(s.trafo_loading_pct, initial=0.0)) if s.converged else np.nan,
        "violations": len(o.violations),
        "violations_initial": o.violations_initial,
        "violation_kinds": ",".join(sorted({v.kind for v in o.violations})),
        "network_charges": 0.0 if o.network_charges is None else float(o.network_charges.sum()),
        "slack_p_kw": s.slack_p_kw,
        "status": o.status,
        "pf_method": s.method,
        "round_ms": round_s * 1000.0,
        "orders_ms": o.timings["orders"] * 1000.0,
        "clear_ms": o.timings["clear"] * 1000.0,
        "pf_ms": o.timings["pf"] * 1000.0,
        "sens_ms": o.timings["sens"] * 1000.0,
        "settle_ms": o.timings.get("settle", 0.0) * 1000.0,
        "ledger_ms": o.timings.get("ledger", 0.0) * 1000.0,
        "ledger_cpu_ms": o.timings.get("ledger_cpu", 0.0) * 1000.0,
        "orders_submitted": len(o.gate.submitted) if o.gate is not None and o.gate.submitted is not None else 0,
        "orders_rejected": len(o.gate.rejections) if o.gate is not None and o.gate.rejections is not None else 0,
    }
    for key, value in (r.info or {}).items():  # the mechanism's own figures (VCG deficit, Nash gain, ...)
        if isinstance(value, bool | int | float | np.number) and not isinstance(value, str):
            row[f"info_{key}"] = float(value)
    if s.phases is not None:  # three-phase: each phase's extremes, the worst unbalance and neutral current
        st = s.phases
        ok = s.converged
        for k, ph in enumerate("abc"):
            row[f"vm_{ph}_min_pu"] = float(np.nanmin(vm_lv[:, k])) if ok else np.nan
            row[f"vm_{ph}_max_pu"] = float(np.nanmax(vm_lv[:, k])) if ok else np.nan
        row["vuf_max_pct"] = float(np.nanmax(st.vuf_pct if lv is None else st.vuf_pct[lv])) if ok else np.nan
        row["max_neutral_current_ka"] = float(np.nanmax(st.line_in_ka, initial=0.0)) if ok else np.nan
        b = o.balanced
        ok_b = b is not None and b.converged
        b_lv = (b.vm_pu if lv is None else b.vm_pu[lv]) if ok_b else None
        row["vm_min_balanced_pu"] = float(np.nanmin(b_lv)) if ok_b else np.nan
        row["vm_max_balanced_pu"] = float(np.nanmax(b_lv)) if ok_b else np.nan
        row["max_line_loading_balanced_pct"] = float(np.nanmax(b.line_loading_pct, initial=0.0)) if ok_b else np.nan
    if gfu is not None:
        row["gfu_p_kw"] = s.slack_p_kw
        row["gfu_q_kvar"] = s.slack_q_kvar
        row["gfu_s_kva"] = float(np.hypot(s.slack_p_kw, s.slack_q_kvar))
        row["gfu_soc"] = gfu.soc
    return row
