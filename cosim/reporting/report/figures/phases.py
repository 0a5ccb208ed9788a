"""Figures of a three-phase run (``physics: three-phase``): the voltage envelope of each
phase with the unbalance factor, and the three-phase against the balanced power flow of
the same dispatch.

Each ``_fig_<name>`` draws ``figures/<name>.png`` and returns its caption; `DRAW` names them.
They read only rounds.parquet: per round ``vm_<phase>_min_pu``, ``vm_<phase>_max_pu``,
``vuf_max_pct`` and ``vm_min_balanced_pu``, ``vm_max_balanced_pu`` (docs/results.md).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np

from cosim.reporting.report.aggregate import envelope
from cosim.reporting.report.figures.common import (
    COLOURS,
    finite,
    legend_below,
    save,
    subplots,
    time_axis,
)
from cosim.reporting.report.load import Run
from cosim.reporting.report.numbers import as_float, fmt

__all__ = ["DRAW", "PHASE_COLUMNS"]

#: Colours of the phases (the IEC 60445 order brown, black, grey would hide black on grey).
PHASE_COLOURS = {"a": "tab:brown", "b": "black", "c": "tab:grey"}
#: The rounds.parquet columns these figures need.
PHASE_COLUMNS = tuple(f"vm_{ph}_{end}_pu" for ph in "abc" for end in ("min", "max")) + (
    "vuf_max_pct", "vm_min_balanced_pu", "vm_max_balanced_pu")


def _what(run: Run) -> str:
    tb = run.timebase
    return "per round" if tb.freq is None else f"per {tb.unit}"


def _fig_phase_voltages(run: Run, path: pathlib.Path) -> str:
    tb = run.timebase
    v_min, v_max = as_float(run.summary.get("v_min_pu")), as_float(run.summary.get("v_max_pu"))
    vuf_limit = as_float(run.summary.get("max_vuf_pct"))
    fig, (ax_v, ax_u) = subplots(2, 6.5)
    market = run.market
    for ph, colour in PHASE_COLOURS.items():
        lo, hi = envelope(market.rounds, f"vm_{ph}_min_pu", f"vm_{ph}_max_pu", tb)
        ax_v.fill_between(lo.index, lo.to_numpy(float), hi.to_numpy(float), color=colour, alpha=0.15, lw=0)
        ax_v.plot(lo.index, lo.to_numpy(float), color=colour, lw=0.8, label=f"phase {ph} (lowest, highest bus)")
        ax_v.plot(hi.index, hi.to_numpy(float), color=colour, lw=0.8)
    for limit in (v_min, v_max):
        if limit is not None:
            ax_v.axhline(limit, color=COLOURS["limit"], ls="--", lw=1.0)
    ax_v.plot([], [], color=COLOURS["limit"], ls="--", lw=1.0, label=f"limits ({fmt(v_min)}–{fmt(v_max)} pu, "
              f"unbalance {fmt(vuf_limit)} %)")
    ax_v.set_ylabel("phase-to-neutral voltage [pu]")
    ax_v.set_title(f"{market.label}: voltage envelope of each phase over the LV buses ({_what(run)})")
    for v in (run.variant("market"), run.variant("market_no_feedback")):
        if v is None or "vuf_max_pct" not in v.rounds.columns:
            continue
        _, hi = envelope(v.rounds, "vuf_max_pct", "vuf_max_pct", tb)
        ax_u.plot(hi.index, hi.to_numpy(float), color=COLOURS[v.key], lw=0.9,
                  ls="-" if v.key == "market" else "--", label=f"{v.label}: highest VUF")
    if vuf_limit is not None:
        ax_u.axhline(vuf_limit, color=COLOURS["limit"], ls="--", lw=1.0)
    ax_u.set_ylabel("voltage unbalance |V2|/|V1| [%]")
    ax_u.set_ylim(bottom=0)
    for ax in (ax_v, ax_u):
        ax.grid(alpha=0.3)
    time_axis(ax_u, run)
    legend_below(fig, [ax_v, ax_u])
    save(fig, path)

    parts = []
    for ph in PHASE_COLOURS:
        lo, hi = finite(market.rounds[f"vm_{ph}_min_pu"]), finite(market.rounds[f"vm_{ph}_max_pu"])
        if lo.size and hi.size:
            parts.append(f"phase {ph} {lo.min():.3f}–{hi.max():.3f} pu")
    vufs = []
    for v in (run.variant("market"), run.variant("market_no_feedback")):
        if v is not None and "vuf_max_pct" in v.rounds.columns and finite(v.rounds["vuf_max_pct"]).size:
            vufs.append(f"{v.label} {finite(v.rounds['vuf_max_pct']).max():.2f} %")
    return (f"Top: the lowest and highest phase-to-neutral voltage of each phase over the LV buses "
            f"({_what(run)}), {market.label}: {'; '.join(parts) or 'not recorded'}. Bottom: the highest voltage "
            f"unbalance factor of any LV bus against the limit {fmt(vuf_limit)} % (dashed red); highest over the "
            f"run: {'; '.join(vufs) or 'not recorded'}.")


def _fig_physics_comparison(run: Run, path: pathlib.Path) -> str:
    tb = run.timebase
    v_min, v_max = as_float(run.summary.get("v_min_pu")), as_float(run.summary.get("v_max_pu"))
    v = run.variant("market_no_feedback") or run.market
    fig, (ax,) = subplots(1, 4.5)
    lo3, hi3 = envelope(v.rounds, "vm_min_pu", "vm_max_pu", tb)
    lo1, hi1 = envelope(v.rounds, "vm_min_balanced_pu", "vm_max_balanced_pu", tb)
    ax.plot(hi3.index, hi3.to_numpy(float), color="tab:purple", lw=1.0, label="three-phase: highest phase voltage")
    ax.plot(lo3.index, lo3.to_numpy(float), color="tab:purple", lw=1.0, ls=":", label="three-phase: lowest")
    ax.plot(hi1.index, hi1.to_numpy(float), color="tab:green", lw=1.0, label="balanced: highest bus voltage")
    ax.plot(lo1.index, lo1.to_numpy(float), color="tab:green", lw=1.0, ls=":", label="balanced: lowest")
    for limit in (v_min, v_max):
        if limit is not None:
            ax.axhline(limit, color=COLOURS["limit"], ls="--", lw=1.0)
    ax.set_ylabel("bus voltage [pu]")
    ax.set_title(f"{v.label}: three-phase against balanced power flow of the same dispatch ({_what(run)})")
    ax.grid(alpha=0.3)
    time_axis(ax, run)
    legend_below(fig, [ax])
    save(fig, path)

    gap = v.rounds["vm_max_pu"].to_numpy(float) - v.rounds["vm_max_balanced_pu"].to_numpy(float)
    gap = gap[np.isfinite(gap)]
    over3 = int((v.rounds["vm_max_pu"] > (v_max or np.inf) + 1e-6).sum())
    over1 = int((v.rounds["vm_max_balanced_pu"] > (v_max or np.inf) + 1e-6).sum())
    worst = f"up to {gap.max():.4f} pu higher" if gap.size else "not recorded"
    return (f"Each round's dispatch ({v.label}) through the three-phase power flow (each system on its phases) "
            f"and through the balanced one (each bus's power spread over the phases): the highest phase voltage "
            f"is {worst} than the balanced power flow shows; rounds above {fmt(v_max)} pu: {over3} in three "
            f"phases against {over1} balanced. For whole runs side by side (feedback included): "
            f"make compare-physics.")


#: The function that draws each figure into a PNG file and returns its caption.
DRAW: dict[str, Callable[[Run, pathlib.Path], str]] = {
    "phase_voltages": _fig_phase_voltages,
    "physics_comparison": _fig_physics_comparison,
}
