"""Figures of the flexible assets (storage.parquet): states of charge, power, and the
day-ahead schedule against the realised dispatch.

Each ``_fig_<name>`` draws ``figures/<name>.png`` and returns its caption; `DRAW` names them.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable

import numpy as np

from cosim.reporting.report.aggregate import storage_series
from cosim.reporting.report.figures.common import (
    legend_below,
    save,
    subplots,
    time_axis,
)
from cosim.reporting.report.load import Run

__all__ = ["DRAW"]


def _fig_storage_soc(run: Run, path: pathlib.Path) -> str:
    st = run.storage
    has_bat, has_ev = "bat_soc_mean" in st.columns, "ev_plugged" in st.columns
    fig, axes = subplots(2 if (has_bat and has_ev) else 1, 6.0 if (has_bat and has_ev) else 3.4)
    base_axes = list(axes)
    parts = []
    ax = axes[0]
    if has_bat:
        lo = storage_series(run.storage, run.timebase, ["bat_soc_min"], "min")["bat_soc_min"] * 100.0
        hi = storage_series(run.storage, run.timebase, ["bat_soc_max"], "max")["bat_soc_max"] * 100.0
        mean = storage_series(run.storage, run.timebase, ["bat_soc_mean"])["bat_soc_mean"] * 100.0
        ax.fill_between(lo.index, lo.to_numpy(float), hi.to_numpy(float), color="tab:green", alpha=0.25, lw=0,
                        label="home batteries, lowest to highest")
        ax.plot(mean.index, mean.to_numpy(float), color="tab:green", lw=1.2, label="home batteries, mean")
        ax.set_ylim(0, 100)
        ax.set_ylabel("state of charge [%]")
        ax.set_title("State of charge of the home batteries" + (" (top) and of the EVs at home (bottom)" if has_ev
                                                                 else ""))
        ax.grid(alpha=0.3)
        parts.append(f"home batteries between {np.nanmin(st.bat_soc_min) * 100:.0f} % and "
                     f"{np.nanmax(st.bat_soc_max) * 100:.0f} % (mean {np.nanmean(st.bat_soc_mean) * 100:.0f} %)")
        ax = axes[-1]
    if has_ev:
        soc = storage_series(run.storage, run.timebase, ["ev_soc_mean"])["ev_soc_mean"] * 100.0
        plugged = storage_series(run.storage, run.timebase, ["ev_plugged"])["ev_plugged"]
        ax.plot(soc.index, soc.to_numpy(float), color="tab:purple", lw=1.2, label="EVs at home, mean state of charge")
        ax.set_ylim(0, 100)
        ax.set_ylabel("state of charge [%]")
        twin = ax.twinx()
        twin.step(plugged.index, plugged.to_numpy(float), where="post", color="tab:gray", lw=0.9,
                  label="EVs plugged in [count]")
        twin.set_ylabel("EVs plugged in [count]")
        twin.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        axes = [*axes, twin]
        parts.append(f"up to {int(np.nanmax(st.ev_plugged))} EVs plugged in at once")
    time_axis(base_axes[-1], run)
    legend_below(fig, axes)
    save(fig, path)
    return "State of charge over the run: " + "; ".join(parts) + " (storage.parquet)."


def _fig_ev_charging(run: Run, path: pathlib.Path) -> str:
    st = run.storage
    cols = [c for c in ("ev_kw", "sh_kw", "bat_kw") if c in st.columns]
    data = storage_series(run.storage, run.timebase, cols)
    fig, (ax,) = subplots(1, 3.8)
    labels = {"ev_kw": ("EV chargers", "tab:purple"), "sh_kw": ("shiftable loads", "tab:orange"),
              "bat_kw": ("home batteries", "tab:green")}
    for c in cols:
        label, colour = labels[c]
        ax.plot(data.index, data[c].to_numpy(float), color=colour, lw=1.1, label=label)
    ax.axhline(0.0, color="black", lw=0.6)
    unit = "kW" if run.timebase.freq is None else f"kW, mean per {run.timebase.unit}"
    ax.set_ylabel(f"power, + charging [{unit}]")
    ax.set_title("Power of the flexible assets, all prosumers together")
    ax.grid(alpha=0.3)
    time_axis(ax, run)
    legend_below(fig, [ax])
    save(fig, path)
    dt_h = run.resolution_min / 60.0 if math.isfinite(run.resolution_min) else float("nan")
    texts = []
    for c in cols:
        charged = float(np.nansum(np.maximum(st[c], 0.0)) * dt_h)
        texts.append(f"{labels[c][0]} drew {charged:,.1f} kWh")
    return "Charging is positive, discharging (home batteries, EVs with vehicle-to-grid) negative; " + \
        ", ".join(texts) + "."


def _fig_schedule_dispatch(run: Run, path: pathlib.Path) -> str:
    st = run.storage
    pairs = [(a, b, lab) for a, b, lab in (("bat_scheduled_kw", "bat_kw", "home batteries"),
                                            ("ev_scheduled_kw", "ev_kw", "EV chargers"),
                                            ("sh_scheduled_kw", "sh_kw", "shiftable loads"))
             if a in st.columns and st[a].notna().any()]
    fig, axes = subplots(len(pairs), 2.6 * len(pairs) + 0.8)
    texts = []
    for ax, (sched, real, label) in zip(axes, pairs, strict=True):
        data = storage_series(run.storage, run.timebase, [sched, real])
        ax.plot(data.index, data[sched].to_numpy(float), color="tab:blue", lw=1.0, ls="--", label="day-ahead schedule")
        ax.plot(data.index, data[real].to_numpy(float), color="tab:red", lw=1.0, label="realised")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_ylabel(f"{label} [kW]")
        ax.grid(alpha=0.3)
        dev = np.abs(st[real] - st[sched])
        texts.append(f"{label}: largest deviation {np.nanmax(dev):,.2f} kW")
    axes[0].set_title("Day-ahead schedule against realised dispatch (all prosumers together)")
    time_axis(axes[-1], run)
    legend_below(fig, axes)
    save(fig, path)
    strategy = (run.summary.get("storage") or {}).get("strategy") if isinstance(run.summary.get("storage"), dict) \
        else None
    head = f"The assets follow the {strategy} schedule" if strategy else "The assets follow the day-ahead schedule"
    return (f"{head} as far as they physically can; the market trades what the forecast got wrong. "
            + "; ".join(texts) + ".")


#: The storage figures by name.
DRAW: dict[str, Callable[[Run, pathlib.Path], str]] = {
    "storage_soc": _fig_storage_soc,
    "ev_charging": _fig_ev_charging,
    "schedule_dispatch": _fig_schedule_dispatch,
}
