"""The study's report, ``results/studies/<name>/report.html``: one self-contained page
(figures embedded as PNG) drawn from ``runs.parquet`` and ``hosting.parquet``.

Figures: the hosting-capacity curve (share of seeds within the limits against the
penetration, one line per setting), the first limit to break and a map of the feeder
coloured by where it breaks, heatmaps over two axes of a sweep, voltage envelopes per
setting, and the trade-off between the fairness and the energy of curtailment; a table
a DSO can paste into a planning document (P5/P50/P95 of the hosting capacity).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from cosim.study.spec import PENETRATIONS  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0, classes="data")


def hosting_curve(searches: pd.DataFrame, penetration: str):
    """Share of seeds within the limits against the penetration, one line per setting: a
    search with capacity C is within the limits at every level <= C."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ok = searches[searches.status == "ok"]
    lo, hi = float(ok.level_low.min()), float(ok.level_high.max())
    grid = np.linspace(lo, hi, 201)
    for setting, g in ok.groupby("setting", sort=False):
        cap = g.hosting_capacity.fillna(lo - 1.0).to_numpy(float)
        ax.step(grid, [(cap >= x).mean() for x in grid], where="post", label=setting)
    ax.set_xlabel(f"penetration: {PENETRATIONS[penetration]}")
    ax.set_ylabel("seeds within the limits [share 0..1]")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(title="setting")
    return fig


def first_limit_figure(searches: pd.DataFrame):
    counts = searches[searches.status == "ok"].groupby(["first_limit", "setting"]).size().unstack(fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if len(counts):
        counts.plot.bar(ax=ax, rot=0)
    ax.set_xlabel("first limit to break")
    ax.set_ylabel("searches [count]")
    ax.grid(alpha=0.3, axis="y")
    return fig


def feeder_map(searches: pd.DataFrame, run_dir: Path):
    """The feeder, with each bus and branch where a search's first limit broke marked in
    red, sized and labelled by the number of searches."""
    buses = pd.read_parquet(run_dir / "grid_buses.parquet")
    branches = pd.read_parquet(run_dir / "grid_branches.parquet")
    counts = searches.first_element.value_counts()
    xy = buses.set_index("bus")[["x", "y"]]
    fig, ax = plt.subplots(figsize=(7, 5))
    for _, b in branches.iterrows():
        if b.from_bus in xy.index and b.to_bus in xy.index:
            ax.plot(*zip(xy.loc[b.from_bus], xy.loc[b.to_bus], strict=True), color="0.6", lw=1, zorder=1)
    ax.scatter(buses.x, buses.y, s=8, color="0.4", zorder=2)
    top = max(int(counts.max()), 1) if len(counts) else 1
    marked = []
    for _, b in branches.iterrows():
        n = int(counts.get(b["name"], 0))
        if n and b.from_bus in xy.index and b.to_bus in xy.index:
            x, y = (xy.loc[b.from_bus] + xy.loc[b.to_bus]) / 2.0
            marked.append((x, y, f"{b['name']} ({b.kind} loading): {n}", n, "s"))
    for _, b in buses.iterrows():
        n = int(counts.get(b["name"], 0))
        if n:
            marked.append((b.x, b.y, f"{b['name']} (voltage): {n}", n, "o"))
    for x, y, label, n, marker in marked:
        ax.scatter([x], [y], s=60 + 300 * n / top, color="C3", marker=marker, zorder=3, alpha=0.8)
        ax.annotate(label, (x, y), xytext=(8, 8), textcoords="offset points", fontsize=8, color="C3")
    ax.set_xlabel("schematic x [-]")
    ax.set_ylabel("schematic y [-]")
    ax.set_title("where the first limit breaks (red: element, number of searches)")
    return fig


def heatmap(runs: pd.DataFrame, x: str, y: str, value: str, unit: str):
    pivot = runs.pivot_table(index=y, columns=x, values=value, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(pivot.to_numpy(float), aspect="auto", origin="lower", cmap="magma")
    ax.set_xticks(range(len(pivot.columns)), [str(c) for c in pivot.columns], rotation=30)
    ax.set_yticks(range(len(pivot.index)), [str(i) for i in pivot.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.colorbar(im, ax=ax, label=f"{value} (mean over seeds) [{unit}]")
    return fig


def voltage_envelope(runs: pd.DataFrame, by: str, penetration: str | None):
    """Lowest and highest LV voltage of the runs against the penetration (or per value of `by`)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ok = runs[runs.status == "ok"]
    if penetration is not None and penetration in ok:
        for i, (name, g) in enumerate(ok.groupby(by, sort=False)):
            env = g.groupby(penetration).agg(lo=("vm_min_pu", "min"), hi=("vm_max_pu", "max"))
            ax.fill_between(env.index, env.lo, env.hi, alpha=0.25, color=f"C{i}", label=str(name))
        ax.set_xlabel(f"penetration: {PENETRATIONS[penetration]}")
    else:
        env = ok.groupby(by).agg(lo=("vm_min_pu", "min"), hi=("vm_max_pu", "max"))
        ax.vlines(range(len(env)), env.lo, env.hi, lw=8)
        ax.set_xticks(range(len(env)), [str(i) for i in env.index], rotation=30)
        ax.set_xlabel(by)
    ax.set_ylabel("LV voltage, lowest to highest over the runs [pu]")
    ax.grid(alpha=0.3)
    ax.legend(title=by) if penetration is not None else None
    return fig


def fairness_tradeoff(runs: pd.DataFrame, by: str):
    ok = runs[(runs.status == "ok") & runs.curtailment_jain.notna()] if "curtailment_jain" in runs else runs[:0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, g) in enumerate(ok.groupby(by, sort=False)):
        ax.scatter(g.curtailed_kwh, g.curtailment_jain, s=14, color=f"C{i}", label=str(name))
    ax.set_xlabel("curtailed energy [kWh]")
    ax.set_ylabel("Jain index of curtailment per kWp [0..1]")
    ax.grid(alpha=0.3)
    if len(ok):
        ax.legend(title=by)
    return fig


def write_study_report(out: str | Path) -> Path:
    """Draw ``report.html`` of a finished study folder; returns its path."""
    out = Path(out)
    study = yaml.safe_load((out / "study.yaml").read_text())
    info = json.loads((out / "study.json").read_text())
    runs = pd.read_parquet(out / "runs.parquet")
    axes = list(study.get("axes") or {})
    parts = [f"<h1>Study {html.escape(info['study'])}</h1>",
             f"<p>{html.escape(study.get('description', ''))}</p>",
             f"<p>{info['runs']} runs, {info['failed']} failed, on {info['workers']} Dask workers, "
             f"wall time {info['wall_s']:.0f} s.</p>"]
    hosting = out / "hosting.parquet"
    penetration = None
    if hosting.is_file():
        searches = pd.read_parquet(hosting)
        penetration = study["hosting_capacity"].get("penetration", "prosumers.pv_share")
        summary = pd.read_csv(out / "hosting_summary.csv")
        unit = "kWp" if penetration.endswith("_kwp") else "0..1"
        summary = summary.rename(columns={"seeds": "seeds [count]", "failed": "failed [count]",
                                          "p5": f"P5 [{unit}]", "p50": f"P50 [{unit}]", "p95": f"P95 [{unit}]",
                                          "censored_share": "censored [0..1]",
                                          "first_limit_share": "first limit's share [0..1]"})
        parts += ["<h2>Hosting capacity for the planning document</h2>",
                  f"<p>Penetration: {html.escape(PENETRATIONS[penetration])}. P5/P50/P95 over seeds; "
                  "censored_share: searches within the limits at the highest level searched.</p>",
                  _table(summary),
                  "<h2>Hosting-capacity curve</h2>", _png(hosting_curve(searches, penetration)),
                  "<h2>First limit to break</h2>", _png(first_limit_figure(searches))]
        for i, x in enumerate(axes):  # the capacity over each pair of axes, per setting
            for y in axes[i + 1:]:
                for setting, g in searches[searches.status == "ok"].groupby("setting", sort=False):
                    parts += [f"<h2>Hosting capacity ({html.escape(setting)}) over {html.escape(x)} and "
                              f"{html.escape(y)}</h2>", _png(heatmap(g, x, y, "hosting_capacity", unit))]
        sample = runs[runs.status == "ok"].path.dropna()
        if len(sample):
            parts += ["<h2>Where it breaks</h2>", _png(feeder_map(searches[searches.status == "ok"],
                                                                  out / sample.iloc[0]))]
    by = "setting" if "setting" in runs else (axes[0] if axes else "seed")
    if "setting" in runs:  # the reference runs without PV (voltage rise) are no setting
        runs = runs[runs.setting != "reference"]
    ok = runs[runs.status == "ok"]
    if len(ok):
        parts += ["<h2>Voltage envelopes</h2>", _png(voltage_envelope(runs, by, penetration)),
                  "<h2>Curtailment: fairness against energy</h2>", _png(fairness_tradeoff(runs, by))]
    for i, x in enumerate(axes):
        for y in axes[i + 1:]:
            for value, unit in (("vm_max_pu", "pu"), ("trafo_loading_max_pct", "%"), ("curtailed_kwh", "kWh")):
                parts += [f"<h2>{html.escape(value)} over {html.escape(x)} and {html.escape(y)}</h2>",
                          _png(heatmap(ok, x, y, value, unit))]
    failed = runs[runs.status != "ok"]
    if len(failed):
        parts += ["<h2>Failed runs</h2>", _table(failed[["run_id", "error"]])]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>cosim study "
            f"{html.escape(info['study'])}</title><style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}"
            "table.data{border-collapse:collapse}table.data td,table.data th{padding:2px 8px;"
            "border-bottom:1px solid #ddd}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
