"""`cosim compare RUN_DIR...`: several finished runs side by side in one HTML report.

Meant for comparing market designs on the same feeder and week: a table of key figures
(bills, welfare, the operator's surplus or deficit, self-sufficiency, violations,
curtailment and who carries it (`cosim.reporting.fairness`), network charges, time per round),
who gains and who loses against no P2P and why (`cosim.reporting.gains`), and
figures of prices, bills per prosumer, the operator's balance, the grid's limits and the
curtailment per kWp of each PV owner. Reads only the runs' result files.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cosim.config.errors import InputError  # noqa: E402
from cosim.reporting.gains import gains, gains_section  # noqa: E402
from cosim.reporting.report.figures.common import save  # noqa: E402
from cosim.reporting.report.load import curtailment_rule  # noqa: E402
from cosim.reporting.report.numbers import MISSING  # noqa: E402

#: Amounts below this are rounding noise [currency].
MONEY_EPS = 1e-6
#: Limits drawn when a run's summary.json names none: branch loading [%], voltage [pu].
DEFAULT_MAX_LOADING_PCT = 100
DEFAULT_V_MAX_PU = 1.1
#: Room below the lowest and above the highest bar of the voltage panel [pu].
_VOLTAGE_MARGIN_BELOW_PU = 0.02
_VOLTAGE_MARGIN_ABOVE_PU = 0.01
#: Width of one of the two bars (no feedback, with feedback) of a run [x units, 1 per run].
_BAR_WIDTH = 0.4
#: Rows of the comparison table: (label with unit, how to compute it from a run).
TABLE_ROWS = [
    ("mechanism", lambda r: r.summary["mechanism"]),
    ("mode", lambda r: r.summary["mode"]),
    ("prosumer bills, total [{cur}]", lambda r: r.kpi("prosumer_bills_total")),
    ("saving against no P2P [{cur}]", lambda r: r.baseline("prosumer_bills_total") - r.kpi("prosumer_bills_total")),
    ("prosumers worse off than without P2P [-]", lambda r: r.worse_off()),
    ("welfare of P2P trades [{cur}]", lambda r: r.welfare()),
    ("market operator surplus (+) / deficit (-) [{cur}]", lambda r: r.operator_surplus()),
    ("P2P traded [kWh]", lambda r: r.kpi("p2p_traded_kwh")),
    ("mean P2P price [{cur}/kWh]", lambda r: r.kpi("mean_price_per_kwh")),
    ("self-sufficiency [%]", lambda r: 100 * r.kpi("self_sufficiency")),
    ("grid import [kWh]", lambda r: r.kpi("grid_import_kwh")),
    ("grid export [kWh]", lambda r: r.kpi("grid_export_kwh")),
    ("peak transformer loading [%]", lambda r: r.kpi("peak_trafo_loading_pct")),
    ("rounds with violations, with feedback [-]", lambda r: r.kpi("violation_rounds")),
    ("rounds with violations, no feedback [-]", lambda r: r.variant("market_no_feedback", "violation_rounds")),
    ("curtailment rule", lambda r: r.curtailment_rule()),
    ("curtailed [kWh]", lambda r: r.kpi("curtailed_kwh")),
    ("PV owners curtailed [-]", lambda r: r.fairness("curtailment", "affected")),
    ("curtailment per kWp, largest [kWh/kWp]", lambda r: r.fairness("curtailment", "max")),
    ("curtailment per kWp, Jain's index [-]", lambda r: r.fairness("curtailment", "jain_index")),
    ("curtailment per kWp, Gini coefficient [-]", lambda r: r.fairness("curtailment", "gini")),
    ("largest share of the curtailment [%]", lambda r: 100 * r.fairness("curtailment", "largest_share")),
    ("shed [kWh]", lambda r: r.kpi("shed_kwh")),
    ("shedding per kWh of load, Jain's index [-]", lambda r: r.fairness("shedding", "jain_index")),
    ("largest share of the shedding [%]", lambda r: 100 * r.fairness("shedding", "largest_share")),
    ("DSO: flexibility bought [{cur}]", lambda r: r.flexibility_bought()),
    ("DSO cost: losses + flexibility - network charges [{cur}]", lambda r: r.dso_cost()),
    ("prosumer revenue: energy sold + flexibility sold [{cur}]", lambda r: r.prosumer_revenue()),
    ("network charges [{cur}]", lambda r: r.kpi("network_charges")),
    ("network charges, no P2P [{cur}]", lambda r: r.baseline("network_charges")),
    ("batteries charged [kWh]", lambda r: r.battery_charged_kwh()),
    ("failed rounds [-]", lambda r: r.kpi("failed_rounds")),
    ("median time per round [ms]", lambda r: r.summary.get("timing", {}).get("median_round_ms", np.nan)),
]


class Run:
    """One finished run's files, read lazily."""

    def __init__(self, path: Path):
        self.path = Path(path)
        problems = [f"{name}: missing" for name in ("summary.json", "rounds.parquet", "settlement.parquet")
                    if not (self.path / name).exists()]
        if problems:
            raise InputError(self.path, problems + ["expected the folder of a finished `cosim run`"])
        self.summary = json.loads((self.path / "summary.json").read_text())
        self.label = f"{self.summary['scenario']} ({self.summary['mechanism']})"
        self._rounds = self._settlement = None
        self._fairness: dict | None = None
        self._gains: pd.DataFrame | None | bool = False

    @property
    def rounds(self) -> pd.DataFrame:
        if self._rounds is None:
            self._rounds = pd.read_parquet(self.path / "rounds.parquet")
        return self._rounds

    @property
    def settlement(self) -> pd.DataFrame:
        if self._settlement is None:
            self._settlement = pd.read_parquet(self.path / "settlement.parquet")
        return self._settlement

    def variant(self, name: str, key: str) -> float:
        value = self.summary["variants"].get(name, {}).get(key)
        return np.nan if value is None else value

    def kpi(self, key: str) -> float:
        return self.variant("market", key)

    def baseline(self, key: str) -> float:
        return self.variant("baseline", key)

    def bills(self) -> pd.Series:
        st = self.settlement
        return st[st.bus >= 0].groupby("party").bill.sum()

    def worse_off(self) -> float:
        bills = self.summary.get("prosumer_bills", {})
        diffs = [v.get("market", np.nan) - v.get("baseline", np.nan) for v in bills.values()]
        return float(np.sum(np.array(diffs) > MONEY_EPS)) if diffs else np.nan

    def gains(self) -> pd.DataFrame | None:
        """Each prosumer's gain against the baseline by part of its bill (`cosim.reporting.gains`)."""
        if self._gains is False:
            self._gains = gains(self.path)
        return self._gains

    def fairness(self, part: str, key: str) -> float:
        """A figure of `cosim.reporting.fairness.fairness_summary` (part ``curtailment`` or ``shedding``)
        of the main variant; NaN if undefined or the run has no prosumers.parquet."""
        if self._fairness is None:
            from cosim.reporting.fairness import fairness_summary

            path = self.path / "prosumers.parquet"
            self._fairness = fairness_summary(self.settlement, pd.read_parquet(path)) if path.is_file() else {}
        value = self._fairness.get(part, {}).get(key)
        return np.nan if value is None else value

    def per_kwp(self) -> np.ndarray:
        """Curtailment per kWp of each PV owner, largest first [kWh/kWp] (empty without prosumers.parquet)."""
        from cosim.reporting.fairness import per_prosumer

        path = self.path / "prosumers.parquet"
        if not path.is_file():
            return np.zeros(0)
        table = per_prosumer(self.settlement, pd.read_parquet(path))
        return np.sort(table["curtailed_kwh_per_kwp"].dropna().to_numpy(float))[::-1]

    def battery_charged_kwh(self) -> float:
        """Energy the prosumers' batteries, EVs and shiftable loads drew over the run [kWh]."""
        st = self.settlement
        if "battery_kwh" not in st.columns:
            return np.nan
        return float(st.loc[st.bus >= 0, "battery_kwh"].clip(lower=0.0).sum())

    def curtailment_rule(self) -> str:
        """feedback.curtailment_rule of the run's resolved scenario.yaml ("–" if not there)."""
        rule = curtailment_rule(self.path)
        return MISSING if rule is None else rule

    def operator_surplus(self) -> float:
        st = self.settlement
        surplus = float(-st[st.party == "market_operator"].bill.sum())
        return 0.0 if abs(surplus) < MONEY_EPS else surplus

    def dso_cost(self) -> float:
        """What the DSO pays over the run, net: the network's losses it buys at retail less
        the network charges it collects, plus the flexibility it buys (its settlement bill)
        [currency]."""
        st = self.settlement
        return float(st.loc[st.party == "dso", "bill"].sum())

    def flexibility_bought(self) -> float:
        """What the DSO paid providers for flexibility over the run [currency]."""
        st = self.settlement
        if "flexibility_payments" not in st.columns:
            return 0.0
        return float(st.loc[st.party == "dso", "flexibility_payments"].sum())

    def prosumer_revenue(self) -> float:
        """What the prosumers received over the run for energy they sold (P2P and to the
        outside party, at the seller's price) and for flexibility sold to the DSO
        [currency]."""
        st = self.settlement
        prosumers = st.loc[st.bus >= 0]
        path = self.path / "trades.parquet"
        sales = 0.0
        if path.is_file():
            trades = pd.read_parquet(path)
            price = trades["seller_price_per_kwh"] if "seller_price_per_kwh" in trades else trades["price_per_kwh"]
            sold = trades.seller.isin(set(prosumers.party))
            sales = float((trades.energy_kwh * price)[sold].sum())
        flex = -float(prosumers["flexibility_payments"].sum()) if "flexibility_payments" in st.columns else 0.0
        return sales + flex

    def welfare(self) -> float:
        """Gains from P2P trade: what the prosumers save against the no-P2P baseline plus
        what the operator keeps, minus network charges paid (a transfer to the DSO)."""
        return self.baseline("prosumer_bills_total") - self.kpi("prosumer_bills_total") + self.operator_surplus()


def _fmt(value) -> str:
    if isinstance(value, str):
        return html.escape(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    if isinstance(value, int | np.integer) or float(value).is_integer() and abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _figure_prices(runs: list[Run], path: Path, cur: str) -> None:
    fig, ax = plt.subplots(figsize=(11, 4))
    for r in runs:
        daily = r.rounds.set_index("time").price_per_kwh.resample("1h").mean()
        ax.plot(daily.index, daily.values, label=r.label, lw=1.2)
    ax.set_ylabel(f"P2P price [{cur}/kWh]")
    ax.set_xlabel("time")
    ax.set_title("Hourly mean P2P price")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    fig.tight_layout()
    save(fig, path)


def _figure_bills(runs: list[Run], path: Path, cur: str) -> None:
    fig, ax = plt.subplots(figsize=(11, 4))
    for r in runs:
        bills = r.summary.get("prosumer_bills", {})
        saving = np.sort([v.get("baseline", np.nan) - v.get("market", np.nan) for v in bills.values()])[::-1]
        ax.plot(np.arange(len(saving)), saving, label=r.label, lw=1.5)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("prosumers, sorted by saving [-]")
    ax.set_ylabel(f"saving against no P2P [{cur}]")
    ax.set_title("Who gains: each prosumer's saving over the run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def short_labels(runs: list[Run]) -> list[str]:
    """One short tick label per run.

    Parameters
    ----------
    runs : list of Run
        The runs compared.

    Returns
    -------
    list of str
        The mechanism when every run has its own, else the scenario name without the
        prefix all runs share (e.g. ``rural3-``).
    """
    mechanisms = [r.summary["mechanism"] for r in runs]
    if len(set(mechanisms)) == len(runs):
        return mechanisms
    names = [r.summary["scenario"] for r in runs]
    prefix = os.path.commonprefix(names) if len(runs) > 1 else ""
    prefix = prefix[: prefix.rfind("-") + 1] if "-" in prefix else ""
    return [n[len(prefix):] or n for n in names]


def _width(runs: list[Run], base_in: float) -> float:
    """Figure width [in] that leaves each run's bars room beyond five runs."""
    return min(base_in + max(len(runs) - 5, 0) * 1.2, 32.0)


def _figure_bars(runs: list[Run], path: Path, cur: str) -> None:
    metrics = [
        ("welfare of P2P trades", f"[{cur}]", lambda r: r.welfare()),
        ("operator surplus / deficit", f"[{cur}]", lambda r: r.operator_surplus()),
        ("curtailed", "[kWh]", lambda r: r.kpi("curtailed_kwh")),
        ("network charges", f"[{cur}]", lambda r: r.kpi("network_charges")),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(_width(runs, 13.0), 4.5))
    labels = short_labels(runs)
    for ax, (title, unit, fn) in zip(axes, metrics, strict=True):
        values = [fn(r) for r in runs]
        ax.bar(range(len(runs)), values, color="tab:blue")
        ax.set_xticks(range(len(runs)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.axhline(0, color="k", lw=0.6)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save(fig, path)


def _figure_grid(runs: list[Run], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(_width(runs, 13.0), 4.5))
    labels = short_labels(runs)
    x = np.arange(len(runs))

    def with_and_without_feedback(ax, key: str, limit: float, limit_label: str) -> list[float]:
        with_fb = [r.kpi(key) for r in runs]
        without = [r.variant("market_no_feedback", key) for r in runs]
        ax.bar(x - _BAR_WIDTH / 2, without, _BAR_WIDTH, label="no feedback", color="tab:orange")
        ax.bar(x + _BAR_WIDTH / 2, with_fb, _BAR_WIDTH, label="with feedback", color="tab:blue")
        ax.axhline(limit, color="r", ls="--", lw=1, label=limit_label)
        return with_fb + without

    loading_limit = runs[0].summary.get("max_loading_pct", DEFAULT_MAX_LOADING_PCT)
    with_and_without_feedback(axes[0], "peak_trafo_loading_pct", loading_limit, "limit")
    axes[0].set_ylabel("peak transformer loading [%]")
    v_max = runs[0].summary.get("v_max_pu", DEFAULT_V_MAX_PU)
    vmax = with_and_without_feedback(axes[1], "vm_max_pu", v_max, "band")
    axes[1].set_ylabel("highest bus voltage [pu]")
    axes[1].set_ylim(min(vmax) - _VOLTAGE_MARGIN_BELOW_PU, max(vmax + [v_max]) + _VOLTAGE_MARGIN_ABOVE_PU)
    for ax in axes:
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def _figure_fairness(runs: list[Run], path: Path) -> None:
    """Who carries the curtailment: per-kWp curtailment per PV owner, sorted, per run; and
    the energy curtailed against Jain's index of it."""
    fig, axes = plt.subplots(1, 2, figsize=(_width(runs, 13.0), 4.5), width_ratios=(2, 1))
    labels = short_labels(runs)
    for i, (r, label) in enumerate(zip(runs, labels, strict=True)):
        values = r.per_kwp()
        axes[0].step(np.arange(1, len(values) + 1), values, where="mid", label=label, lw=1.4)
        axes[1].scatter(r.fairness("curtailment", "jain_index"), r.kpi("curtailed_kwh"), s=40)
        axes[1].annotate(label, (r.fairness("curtailment", "jain_index"), r.kpi("curtailed_kwh")),
                         textcoords="offset points", xytext=(-60, 6 - 12 * (i % 3)), fontsize=8)
    axes[0].set_xlabel("PV owners, most curtailed first [rank]")
    axes[0].set_ylabel("curtailed energy per kWp [kWh/kWp]")
    axes[0].set_title("Curtailment per kWp of PV, per PV owner", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("Jain's index of curtailment per kWp [-] (1 = equal)")
    axes[1].set_ylabel("curtailed [kWh]")
    axes[1].set_xlim(0.0, 1.05)
    top = max([r.kpi("curtailed_kwh") for r in runs if np.isfinite(r.kpi("curtailed_kwh"))], default=1.0)
    axes[1].set_ylim(0.0, 1.15 * top if top > 0 else 1.0)
    axes[1].set_title("Energy against fairness", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def write_comparison(run_dirs: list[str | Path], out: str | Path = "results/compare") -> Path:
    """Draw several finished runs side by side.

    Parameters
    ----------
    run_dirs : list of str or pathlib.Path
        Folders of finished runs (``summary.json``, ``rounds.parquet``,
        ``settlement.parquet``; ``prosumers.parquet`` and ``scenario.yaml`` for the
        fairness rows). Money is shown in the first run's currency.
    out : str or pathlib.Path
        Folder for ``compare.html`` and ``figures/*.png``; created if missing.

    Returns
    -------
    pathlib.Path
        Path of the written ``compare.html``.

    Raises
    ------
    cosim.config.errors.InputError
        If no folder is given or a folder lacks a file every run has.
    """
    if len(run_dirs) < 1:
        raise InputError("compare", ["expected at least one run folder, found none"])
    runs = [Run(Path(d)) for d in run_dirs]
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    cur = runs[0].summary.get("currency", "EUR")
    _figure_prices(runs, out / "figures" / "prices.png", cur)
    _figure_bills(runs, out / "figures" / "bills.png", cur)
    _figure_bars(runs, out / "figures" / "economics.png", cur)
    _figure_grid(runs, out / "figures" / "grid.png")
    _figure_fairness(runs, out / "figures" / "fairness.png")
    header = "".join(f"<th>{html.escape(r.label)}</th>" for r in runs)
    rows = "".join(
        f"<tr><td>{html.escape(label.format(cur=cur))}</td>" + "".join(f"<td>{_fmt(fn(r))}</td>" for r in runs) + "</tr>"
        for label, fn in TABLE_ROWS
    )
    nets = sorted({r.summary["network"] for r in runs})
    periods = sorted({f"{r.summary['start']} – {r.summary['end']}" for r in runs})
    figures = [
        ("economics.png", "Welfare of the P2P trades, the market operator's surplus (positive) or deficit "
         "(negative), curtailment and network charges per mechanism."),
        ("bills.png", "Each prosumer's saving against trading only with the grid, sorted; below zero means worse off."),
        ("prices.png", "Hourly mean P2P price; mechanisms without a uniform price show none."),
        ("grid.png", "What each market would do to the feeder without feedback, and what it does with feedback."),
        ("fairness.png", "Who carries the curtailment: each PV owner's curtailed energy per kWp, sorted (a flat "
         "line is an equal share), and the energy curtailed against Jain's index of it (1 = all equal)."),
    ]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cosim comparison</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%}}</style></head><body>
<h1>Market designs side by side</h1>
<p>Network: {html.escape(", ".join(nets))}. Period: {html.escape("; ".join(periods))}. {len(runs)} runs.
Each column is one run of <code>cosim run</code>; every figure is the run with network feedback unless
marked otherwise. Welfare is what the prosumers save against the no-P2P baseline plus what the market
operator keeps.</p>
<table><tr><th>key figure</th>{header}</tr>{rows}</table>
{gains_section([r.label for r in runs], [r.gains() for r in runs], cur)}
{"".join(f'<h2>{html.escape(cap.split(".")[0].split(",")[0])}</h2><img src="figures/{name}"><p>{html.escape(cap)}</p>' for name, cap in figures)}
<p>Runs: {"; ".join(html.escape(str(r.path)) for r in runs)}</p></body></html>"""
    path = out / "compare.html"
    path.write_text(page)
    return path
