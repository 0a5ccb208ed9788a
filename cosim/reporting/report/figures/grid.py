"""Figures of the network: exchange with the grid, voltages, loadings, curtailment and
shedding, the network map and the islanded grid-forming unit.

Each ``_fig_<name>`` draws ``figures/<name>.png`` and returns its caption; `DRAW` names them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from cosim.reporting.report.aggregate import TimeBase, envelope, totals
from cosim.reporting.report.figures.common import (
    COLOURS,
    FIG_WIDTH_IN,
    finite,
    legend_below,
    placeholder,
    save,
    subplots,
    time_axis,
)
from cosim.reporting.report.load import Run
from cosim.reporting.report.numbers import as_float, fmt

__all__ = ["DRAW"]


def _fig_grid_exchange(run: Run, path: pathlib.Path) -> str:
    tb = run.timebase
    fig, (ax_i, ax_e) = subplots(2, 6.0)
    shown = [v for v in (run.variant("market"), run.variant("baseline")) if v is not None]
    for v in shown:
        data = totals(v.rounds, ["grid_import_kwh", "grid_export_kwh"], tb)
        style = dict(
            color=COLOURS[v.key],
            lw=1.0 if v.key == "market" else 0.9,
            ls="-" if v.key == "market" else "--",
            label=v.label,
        )
        ax_i.plot(data.index, data["grid_import_kwh"].to_numpy(float), **style)
        ax_e.plot(data.index, data["grid_export_kwh"].to_numpy(float), **style)
    g = run.grid_name
    ax_i.set_ylabel(f"import [{run.energy_unit()}]")
    ax_e.set_ylabel(f"export [{run.energy_unit()}]")
    ax_i.set_title(f"Energy imported from (top) and exported to (bottom) the {g}")
    for ax in (ax_i, ax_e):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    time_axis(ax_e, run)
    legend_below(fig, [ax_i, ax_e])
    save(fig, path)

    parts = []
    for v in shown:
        imp = float(np.nansum(v.rounds["grid_import_kwh"]))
        exp = float(np.nansum(v.rounds["grid_export_kwh"]))
        parts.append(f"{v.label}: {imp:,.1f} kWh imported, {exp:,.1f} kWh exported")
    return f"Energy exchanged with the {g} over the run — " + "; ".join(parts) + "."


def _fig_voltage_envelope(run: Run, path: pathlib.Path) -> str:
    tb = run.timebase
    v_min = as_float(run.summary.get("v_min_pu"))
    v_max = as_float(run.summary.get("v_max_pu"))
    fig, (ax,) = subplots(1, 4.5)
    what = "per round" if tb.freq is None else f"per {tb.unit}"
    for v in (run.variant("market"), run.variant("market_no_feedback")):
        if v is None:
            continue
        lo, hi = envelope(v.rounds, "vm_min_pu", "vm_max_pu", tb)
        colour = COLOURS[v.key]
        if v.key == "market":
            ax.fill_between(
                lo.index,
                lo.to_numpy(float),
                hi.to_numpy(float),
                color=colour,
                alpha=0.25,
                lw=0,
                label=f"{v.label}: lowest–highest bus {what}",
            )
            ax.plot(lo.index, lo.to_numpy(float), color=colour, lw=0.8)
            ax.plot(hi.index, hi.to_numpy(float), color=colour, lw=0.8)
        else:
            ax.plot(
                lo.index,
                lo.to_numpy(float),
                color=colour,
                lw=0.9,
                ls="--",
                label=f"{v.label}: lowest and highest bus {what}",
            )
            ax.plot(hi.index, hi.to_numpy(float), color=colour, lw=0.9, ls="--")
    for limit in (v_min, v_max):
        if limit is not None:
            ax.axhline(limit, color=COLOURS["limit"], ls="--", lw=1.0)
    if v_min is not None or v_max is not None:
        ax.plot(
            [],
            [],
            color=COLOURS["limit"],
            ls="--",
            lw=1.0,
            label=f"voltage band {fmt(v_min, 'plain')}–{fmt(v_max, 'plain')} pu",
        )
    ax.set_ylabel("bus voltage [pu]")
    ax.set_title("Envelope of bus voltages (minimum and maximum over all buses)")
    ax.grid(alpha=0.3)
    time_axis(ax, run)
    legend_below(fig, [ax])
    save(fig, path)

    parts = []
    for v in (run.variant("market"), run.variant("market_no_feedback")):
        if v is None:
            continue
        lo, hi = finite(v.rounds["vm_min_pu"]), finite(v.rounds["vm_max_pu"])
        if lo.size and hi.size:
            parts.append(f"{v.label} {lo.min():.3f}–{hi.max():.3f} pu")
    band = f"the band {fmt(v_min)}–{fmt(v_max)} pu" if v_min or v_max else "the band"
    return (
        "The shaded area spans the lowest to the highest bus voltage of each "
        f"{'round' if tb.freq is None else tb.unit} against {band} (dashed red); "
        f"range over the run: {'; '.join(parts) or 'not recorded'}."
    )


def _fig_loading(run: Run, path: pathlib.Path) -> str:
    tb = run.timebase
    limit = as_float(run.summary.get("max_loading_pct"))
    fig, axes = subplots(2, 6.0)
    what = "" if tb.freq is None else f" (maximum per {tb.unit})"
    for ax, col, name in (
        (axes[0], "max_line_loading_pct", "most loaded line"),
        (axes[1], "max_trafo_loading_pct", "transformer"),
    ):
        for v in (run.variant("market"), run.variant("market_no_feedback")):
            if v is None:
                continue
            _, hi = envelope(v.rounds, col, col, tb)
            ax.plot(
                hi.index,
                hi.to_numpy(float),
                color=COLOURS[v.key],
                ls="-" if v.key == "market" else "--",
                lw=0.9,
                label=v.label,
            )
        if limit is not None:
            ax.axhline(limit, color=COLOURS["limit"], ls="--", lw=1.0, label=f"limit {limit:g} %")
        ax.set_ylabel(f"{name} loading [%]")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_title(
        f"Loading of the most loaded line (top) and of the transformer (bottom){what}"
    )
    time_axis(axes[1], run)
    legend_below(fig, axes)
    save(fig, path)

    m = run.market.rounds
    line, trafo = finite(m["max_line_loading_pct"]), finite(m["max_trafo_loading_pct"])
    parts = []
    if line.size:
        parts.append(f"lines peak at {line.max():.1f} %")
    if trafo.size:
        parts.append(f"the transformer at {trafo.max():.1f} %")
    lim = f" against a limit of {limit:g} %" if limit is not None else ""
    nf = run.variant("market_no_feedback")
    tail = (
        "the dashed lines show the same market without network feedback"
        if nf is not None
        else "the market without feedback was not recorded"
    )
    return f"With feedback the {' and '.join(parts) or 'loadings are not recorded'}{lim}; {tail}."


def _fig_curtailment_shedding(run: Run, path: pathlib.Path) -> str:
    rounds, tb = run.market.rounds, run.timebase
    fig, (ax,) = subplots(1, 4.0)
    data = totals(rounds, ["curtailed_kwh", "shed_kwh"], tb)
    step = "post" if tb.freq is None else None
    ax.fill_between(
        data.index,
        data["curtailed_kwh"].to_numpy(float),
        0.0,
        color="tab:orange",
        alpha=0.6,
        lw=0,
        step=step,
        label="PV curtailed",
    )
    ax.fill_between(
        data.index,
        -data["shed_kwh"].to_numpy(float),
        0.0,
        color="tab:purple",
        alpha=0.6,
        lw=0,
        step=step,
        label="load shed (drawn downwards)",
    )
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel(f"curtailed (+) / shed (−) [{run.energy_unit()}]")
    ax.set_title("Curtailed generation and shed load (P2P + feedback)")
    ax.grid(alpha=0.3)
    time_axis(ax, run)
    legend_below(fig, [ax])
    save(fig, path)
    curt = float(np.nansum(rounds["curtailed_kwh"]))
    shed = float(np.nansum(rounds["shed_kwh"]))
    return (
        f"Over the run {curt:,.1f} kWh of generation was curtailed and {shed:,.1f} kWh "
        "of load was shed."
    )


def _fig_network_map(run: Run, path: pathlib.Path) -> str:
    gb, gbr = run.grid_buses, run.grid_branches
    if gb is None or gbr is None:
        placeholder(
            path, "Network map", "network geometry (grid_buses / grid_branches) was not recorded"
        )
        return "The network geometry was not recorded, so the network cannot be drawn."
    xy = gb.drop_duplicates("bus").set_index("bus")[["x", "y"]].astype(float).dropna()
    if xy.empty:
        placeholder(path, "Network map", "no bus coordinates recorded")
        return "The buses have no coordinates, so the network cannot be drawn."

    panels = [
        v
        for v in (run.variants.get("market"), run.variants.get("market_no_feedback"))
        if v is not None and v.worst_vm_pu is not None
    ]
    if not panels:
        panels = [run.market]
    worst_all = finite(
        np.concatenate(
            [p.worst_vm_pu.to_numpy(float) for p in panels if p.worst_vm_pu is not None]
            or [np.array([])]
        )
    )
    v_min = as_float(run.summary.get("v_min_pu"))
    v_max = as_float(run.summary.get("v_max_pu"))
    limit = as_float(run.summary.get("max_loading_pct"))
    half = float(np.max(np.abs(worst_all - 1.0))) if worst_all.size else 0.05
    half = max(half * 1.05, 0.005)
    norm = Normalize(vmin=1.0 - half, vmax=1.0 + half)
    cmap = matplotlib.colormaps["RdBu_r"]

    branches = gbr.assign(kind=gbr["kind"].astype(str))
    branches = branches[branches["from_bus"].isin(xy.index) & branches["to_bus"].isin(xy.index)]
    f_xy = xy.loc[branches["from_bus"]].to_numpy()
    t_xy = xy.loc[branches["to_bus"]].to_numpy()
    segs = np.stack([f_xy, t_xy], axis=1)
    is_trafo = (branches["kind"] == "trafo").to_numpy()

    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(FIG_WIDTH_IN, 5.5 if len(panels) > 1 else 7.0),
        layout="constrained",
        squeeze=False,
    )
    axes = list(axes[0])
    n_out_parts = []
    for ax, v in zip(axes, panels, strict=True):
        ax.add_collection(
            LineCollection(segs[~is_trafo], colors="#9a9a9a", linewidths=0.9, zorder=1)
        )
        over = np.zeros(len(branches), dtype=bool)
        if v.max_loading_pct is not None and limit is not None:
            keys = pd.MultiIndex.from_arrays([branches["kind"], branches["branch"]])
            peak = v.max_loading_pct.reindex(keys).to_numpy(float)
            over = np.nan_to_num(peak, nan=0.0) > limit
        if over.any():
            ax.add_collection(
                LineCollection(
                    segs[over & ~is_trafo], colors=COLOURS["limit"], linewidths=3.5, zorder=2
                )
            )
        if is_trafo.any():
            ax.add_collection(
                LineCollection(segs[is_trafo], colors="black", linewidths=2.5, zorder=2)
            )
            mid = segs[is_trafo].mean(axis=1)
            ax.scatter(
                mid[:, 0],
                mid[:, 1],
                marker="s",
                s=110,
                facecolor="white",
                edgecolor="black",
                linewidths=1.5,
                zorder=4,
            )
        worst = v.worst_vm_pu if v.worst_vm_pu is not None else pd.Series(dtype=float)
        worst = worst.reindex(xy.index)
        has = worst.notna().to_numpy()
        ax.scatter(xy["x"][~has], xy["y"][~has], s=8, color="#cccccc", zorder=3)
        outside = np.zeros(len(xy), dtype=bool)
        if v_min is not None:
            outside |= (worst < v_min).to_numpy()
        if v_max is not None:
            outside |= (worst > v_max).to_numpy()
        size = 26 if len(xy) <= 200 else 12
        ax.scatter(
            xy["x"][has],
            xy["y"][has],
            c=worst[has].to_numpy(float),
            cmap=cmap,
            norm=norm,
            s=size,
            edgecolors=np.where(outside[has], "black", "none"),
            linewidths=1.2,
            zorder=3,
        )
        ax.set_title(v.label, fontsize="medium")
        ax.set_aspect("equal", adjustable="datalim")
        ax.autoscale_view()
        ax.set_axis_off()
        n_out_parts.append(f"{v.label}: {int(outside.sum())}")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(sm, ax=axes, shrink=0.8, label="worst bus voltage over the run [pu]")
    for lim in (v_min, v_max):
        if lim is not None and norm.vmin <= lim <= norm.vmax:
            cbar.ax.axhline(lim, color="black", ls="--", lw=1.0)
    handles = [
        Line2D(
            [], [], marker="s", ls="none", mfc="white", mec="black", ms=9, label="MV/LV transformer"
        ),
        Line2D(
            [],
            [],
            marker="o",
            ls="none",
            mfc="white",
            mec="black",
            ms=6,
            label="bus outside the band (ringed)",
        ),
    ]
    if limit is not None:
        handles.append(
            Line2D(
                [],
                [],
                color=COLOURS["limit"],
                lw=3.5,
                label=f"line over {limit:g} % at least once",
            )
        )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=len(handles),
        fontsize="small",
        frameon=False,
    )
    save(fig, path)

    m = run.market.worst_vm_pu
    extra = ""
    if m is not None and not m.dropna().empty:
        m = m.dropna()
        far = (m - 1.0).abs().idxmax()
        extra = f"; with feedback the bus furthest from 1.0 pu is bus {far} at {m[far]:.3f} pu"
    return (
        "Each bus is coloured by its voltage furthest from 1.0 pu over the run (red high, "
        "blue low); buses ringed in black left the band ("
        + ", ".join(n_out_parts)
        + ")"
        + extra
        + "."
    )


def _line_or_band(ax, rounds: pd.DataFrame, col: str, tb: TimeBase, colour: str) -> None:
    """``col`` round by round as a line, or per bucket as a band from its minimum to its
    maximum."""
    lo, hi = envelope(rounds, col, col, tb)
    if tb.freq is None:
        ax.plot(lo.index, lo.to_numpy(float), color=colour, lw=1.0)
    else:
        ax.fill_between(
            lo.index,
            lo.to_numpy(float),
            hi.to_numpy(float),
            color=colour,
            alpha=0.4,
            lw=0,
            label=f"min–max per {tb.unit}",
        )


def _fig_grid_forming(run: Run, path: pathlib.Path) -> str:
    rounds, tb = run.market.rounds, run.timebase
    fig, (ax_s, ax_p) = subplots(2, 5.5)
    soc = rounds.assign(soc_pct=100.0 * rounds["gfu_soc"])
    _line_or_band(ax_s, soc, "soc_pct", tb, "tab:green")
    ax_s.set_ylim(0, 100)
    ax_s.set_ylabel("state of charge [%]")
    ax_s.set_title("Grid-forming unit: state of charge (top) and power (bottom)")
    ax_s.grid(alpha=0.3)
    if "gfu_p_kw" in rounds.columns:
        _line_or_band(ax_p, rounds, "gfu_p_kw", tb, "tab:blue")
        ax_p.axhline(0.0, color="black", lw=0.6)
    else:
        ax_p.text(
            0.5, 0.5, "power not recorded", ha="center", va="center", transform=ax_p.transAxes
        )
    ax_p.set_ylabel("power [kW]")
    ax_p.grid(alpha=0.3)
    time_axis(ax_p, run)
    legend_below(fig, [ax_s, ax_p])
    save(fig, path)
    s = finite(100.0 * rounds["gfu_soc"])
    soc_text = (
        f"its state of charge stayed between {s.min():.0f} % and {s.max():.0f} %"
        if s.size
        else "its state of charge was not recorded"
    )
    p_text = ""
    if "gfu_p_kw" in rounds.columns:
        p = finite(rounds["gfu_p_kw"])
        if p.size:
            p_text = (
                f" and its power between {p.min():,.1f} kW and {p.max():,.1f} kW "
                "(gfu_p_kw as recorded)"
            )
    return f"The grid-forming unit is the slack of the islanded network; {soc_text}{p_text}."


#: The grid figures by name.
DRAW: dict[str, Callable[[Run, pathlib.Path], str]] = {
    "grid_exchange": _fig_grid_exchange,
    "voltage_envelope": _fig_voltage_envelope,
    "loading": _fig_loading,
    "curtailment_shedding": _fig_curtailment_shedding,
    "network_map": _fig_network_map,
    "grid_forming": _fig_grid_forming,
}
