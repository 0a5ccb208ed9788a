"""Report of a finished run: figures and one self-contained HTML page.

The report reads only the files of a run folder (see "Results of a run" in the design)
and never imports the market or the grid stages. It writes ``figures/<name>.png`` and
``report.html`` into the run folder; calling it again redraws both.

Time series stay readable for long runs: up to ``MAX_POINTS`` rounds are drawn round by
round, longer runs are aggregated into hourly, daily or weekly buckets (totals for
energies, minimum/maximum envelopes for voltages and loadings). Quantities over many
buses are always drawn as envelopes, never one line per bus.
"""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cosim.config.errors import InputError

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

__all__ = ["write_report", "FIGURES", "STORAGE_FIGURES", "MAX_POINTS"]

#: Figures in the order they appear in the report; ``grid_forming`` only when islanded.
FIGURES = (
    "price_volume",
    "grid_exchange",
    "voltage_envelope",
    "loading",
    "curtailment_shedding",
    "bills",
    "trade_matrix",
    "network_map",
    "network_charges",
    "grid_forming",
)

#: Figures of the flexible assets, after `FIGURES`, only when the run has storage.parquet;
#: ``schedule_dispatch`` only when the assets followed a day-ahead schedule.
STORAGE_FIGURES = ("storage_soc", "ev_charging", "schedule_dispatch")
#: Columns the report needs from storage.parquet.
STORAGE_COLUMNS = ("round", "asset", "power_kw", "scheduled_kw", "energy_kwh", "soc", "plugged")

#: Longest time series [points] drawn round by round; longer runs are aggregated.
MAX_POINTS = 1500

#: Candidate aggregation buckets for long runs: (pandas frequency, unit in labels).
_BUCKETS = (("1h", "hour"), ("1D", "day"), ("7D", "week"))

_DPI = 110
_FIG_WIDTH_IN = 10.0

#: Parties that are not prosumers.
_GRID_PARTIES = frozenset({"grid", "grid_forming"})
_NON_PROSUMERS = _GRID_PARTIES | {"dso", "market_operator"}

#: Variants: key in summary.json "variants", subfolder (None = the run folder), label.
_VARIANTS = (
    ("market", None, "P2P + feedback"),
    ("market_no_feedback", "no_feedback", "P2P, no feedback"),
    ("baseline", "baseline", "No P2P (baseline)"),
    ("baseline_no_feedback", "baseline_no_feedback", "No P2P, no feedback"),
)

#: Physical key figures two variants must share to have "the same physics", with the
#: tolerance within which they count as equal (relative; absolute for voltages [pu]).
_PHYSICS_KPIS = (
    ("losses_kwh", "losses", 1e-6),
    ("peak_trafo_loading_pct", "peak transformer loading", 1e-6),
    ("max_line_loading_pct", "peak line loading", 1e-6),
    ("vm_max_pu", "highest voltage", 1e-9),
    ("vm_min_pu", "lowest voltage", 1e-9),
    ("curtailed_kwh", "curtailment", 1e-6),
    ("shed_kwh", "shedding", 1e-6),
    ("grid_import_kwh", "import", 1e-6),
    ("grid_export_kwh", "export", 1e-6),
)

#: Columns the report needs from each table (more columns are welcome).
ROUNDS_COLUMNS = (
    "round",
    "time",
    "cleared_kwh",
    "price_per_kwh",
    "grid_import_kwh",
    "grid_export_kwh",
    "curtailed_kwh",
    "shed_kwh",
    "vm_min_pu",
    "vm_max_pu",
    "max_line_loading_pct",
    "max_trafo_loading_pct",
)
ROUNDS_OPTIONAL_COLUMNS = ("network_charges", "status", "violations", "gfu_soc", "gfu_p_kw")
TRADES_COLUMNS = ("seller", "buyer", "energy_kwh")
SETTLEMENT_COLUMNS = ("round", "party", "bus", "bill")
BUSES_COLUMNS = ("bus", "vm_pu")
BRANCHES_COLUMNS = ("branch", "kind", "loading_pct")
GRID_BUSES_COLUMNS = ("bus", "x", "y")
GRID_BRANCHES_COLUMNS = ("branch", "kind", "from_bus", "to_bus")

#: Rows of the key-figures table: (KPI key, label, unit; "{cur}" is the currency, format).
_KPI_ROWS = (
    ("prosumer_bills_total", "Prosumer bills, total", "{cur}", "money"),
    ("prosumer_bill_mean", "Prosumer bill, mean", "{cur}", "money"),
    ("self_sufficiency", "Self-sufficiency", "%", "fraction"),
    ("pv_self_consumption", "PV self-consumption", "%", "fraction"),
    ("p2p_traded_kwh", "P2P traded energy", "kWh", "energy"),
    ("grid_import_kwh", "Import from the {grid}", "kWh", "energy"),
    ("grid_export_kwh", "Export to the {grid}", "kWh", "energy"),
    ("mean_price_per_kwh", "Mean P2P price", "{cur}/kWh", "price"),
    ("peak_trafo_loading_pct", "Peak transformer loading", "%", "pct"),
    ("max_line_loading_pct", "Peak line loading", "%", "pct"),
    ("vm_min_pu", "Lowest bus voltage", "pu", "pu"),
    ("vm_max_pu", "Highest bus voltage", "pu", "pu"),
    ("losses_kwh", "Network losses", "kWh", "energy"),
    ("violation_rounds", "Rounds with a violation", "rounds", "count"),
    ("violations", "Violations", "count", "count"),
    ("curtailed_kwh", "Curtailed energy", "kWh", "energy"),
    ("shed_kwh", "Shed load", "kWh", "energy"),
    ("network_charges", "Network charges", "{cur}", "money"),
    ("failed_rounds", "Failed rounds", "rounds", "count"),
)

_FORMATS: dict[str, Callable[[float], str]] = {
    "money": lambda v: f"{v:,.2f}",
    "fraction": lambda v: f"{100.0 * v:.1f}",
    "energy": lambda v: f"{v:,.1f}",
    "price": lambda v: f"{v:.4f}",
    "pct": lambda v: f"{v:.1f}",
    "pu": lambda v: f"{v:.4f}",
    "count": lambda v: f"{int(round(v)):,d}",
    "plain": lambda v: f"{v:,.4g}",
}

_MISSING = "–"

_COLOURS = {
    "market": "tab:blue",
    "market_no_feedback": "tab:orange",
    "baseline": "tab:grey",
    "baseline_no_feedback": "tab:brown",
    "limit": "tab:red",
}


# ----------------------------------------------------------------------------- loading


@dataclass
class _Variant:
    """Tables of one variant, reduced to what the report draws."""

    key: str
    label: str
    rounds: pd.DataFrame | None = None
    #: per party: ``bus`` and total ``bill`` [currency]
    bills: pd.DataFrame | None = None
    #: per round: network charges collected by the dso [currency] (from settlement)
    dso_charges: pd.Series | None = None
    #: per bus: voltage furthest from 1.0 pu over the run [pu]
    worst_vm_pu: pd.Series | None = None
    #: per (kind, branch): highest loading over the run [%]
    max_loading_pct: pd.Series | None = None
    #: per (seller, buyer): energy over the run [kWh]
    pair_kwh: pd.DataFrame | None = None


@dataclass(frozen=True)
class _TimeBase:
    """How time series are drawn: round by round (``freq`` None) or per bucket."""

    freq: str | None
    unit: str


@dataclass
class _Run:
    run_dir: pathlib.Path
    summary: dict
    variants: dict[str, _Variant]
    grid_buses: pd.DataFrame | None
    grid_branches: pd.DataFrame | None
    timebase: _TimeBase
    notes: list[str] = field(default_factory=list)
    #: per round of the main variant: flexible assets aggregated (`_reduce_storage`)
    storage: pd.DataFrame | None = None

    @property
    def currency(self) -> str:
        return str(self.summary.get("currency") or "currency")

    @property
    def islanded(self) -> bool:
        return str(self.summary.get("mode", "")).lower() == "islanded"

    @property
    def grid_name(self) -> str:
        return "grid-forming unit" if self.islanded else "grid"

    @property
    def market(self) -> _Variant:
        return self.variants["market"]

    def variant(self, key: str) -> _Variant | None:
        """The variant if its rounds table was recorded, else None."""
        v = self.variants.get(key)
        return v if v is not None and v.rounds is not None else None

    @property
    def resolution_min(self) -> float:
        res = _as_float(self.summary.get("resolution_min"))
        if res is not None and res > 0:
            return res
        t = self.market.rounds["time"]
        if len(t) > 1:
            return float(t.diff().median() / pd.Timedelta(minutes=1))
        return float("nan")

    def energy_unit(self) -> str:
        """Unit of per-round energies as drawn, e.g. 'kWh per 15-min round'."""
        if self.timebase.freq is None:
            res = self.resolution_min
            return f"kWh per {res:g}-min round" if math.isfinite(res) else "kWh per round"
        return f"kWh per {self.timebase.unit}"


def _as_float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _read_table(
    path: pathlib.Path,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    problems: list[str],
    name: str | None = None,
) -> pd.DataFrame | None:
    """Read the needed columns of a parquet file; None and a problem if columns miss.

    ``name`` is how problems refer to the file (default: its file name).
    """
    name = name or path.name
    try:
        names = set(pq.read_schema(path).names)
    except Exception as exc:  # unreadable file: one problem line, keep collecting
        problems.append(f"{name}: expected a parquet file, found an unreadable file ({exc})")
        return None
    missing = [c for c in required if c not in names]
    if missing:
        problems.append(
            f"{name}: expected columns {', '.join(required)}; missing {', '.join(missing)}"
        )
        return None
    columns = list(required) + [c for c in optional if c in names]
    return pd.read_parquet(path, columns=columns)


def _prepare_rounds(rounds: pd.DataFrame) -> pd.DataFrame:
    rounds = rounds.sort_values("round", kind="stable").reset_index(drop=True)
    rounds["time"] = pd.to_datetime(rounds["time"])
    for col in rounds.columns:
        if col not in ("round", "time", "status") and not pd.api.types.is_numeric_dtype(
            rounds[col]
        ):
            rounds[col] = pd.to_numeric(rounds[col], errors="coerce")
    return rounds


def _reduce_settlement(settlement: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Total bill per party [currency] and what the dso collects per round [currency]."""
    settlement = settlement.assign(party=settlement["party"].astype(str))
    bills = settlement.groupby("party", sort=False).agg(bus=("bus", "first"), bill=("bill", "sum"))
    dso = settlement[settlement["party"] == "dso"]
    dso_charges = -dso.groupby("round")["bill"].sum()  # bill positive = pays
    return bills, dso_charges


def _reduce_buses(buses: pd.DataFrame) -> pd.Series:
    """Per bus, the voltage furthest from 1.0 pu over the run [pu]."""
    g = buses.groupby("bus")["vm_pu"].agg(["min", "max"])
    return g["min"].where((1.0 - g["min"]) >= (g["max"] - 1.0), g["max"]).rename("vm_pu")


def _reduce_branches(branches: pd.DataFrame) -> pd.Series:
    """Per (kind, branch), the highest loading over the run [%]."""
    branches = branches.assign(kind=branches["kind"].astype(str))
    return branches.groupby(["kind", "branch"])["loading_pct"].max()


def _reduce_trades(trades: pd.DataFrame) -> pd.DataFrame:
    """Energy per (seller, buyer) over the run [kWh]."""
    trades = trades.assign(seller=trades["seller"].astype(str), buyer=trades["buyer"].astype(str))
    return trades.groupby(["seller", "buyer"], as_index=False, sort=False)["energy_kwh"].sum()


def _load_variant(
    folder: pathlib.Path,
    prefix: str,
    key: str,
    label: str,
    with_trades: bool,
    problems: list[str],
) -> tuple[_Variant, list[str]]:
    """Read a variant's tables, reduced; returns the variant and its missing files.

    ``prefix`` is the variant's folder as problems name it (``""`` or ``"baseline/"``).
    Problems with files that exist go to ``problems``.
    """
    v = _Variant(key=key, label=label)
    missing: list[str] = []

    def read(name: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
        path = folder / name
        if not path.is_file():
            missing.append(prefix + name)
            return None
        return _read_table(path, required, optional, problems, name=prefix + name)

    if (rounds := read("rounds.parquet", ROUNDS_COLUMNS, ROUNDS_OPTIONAL_COLUMNS)) is not None:
        v.rounds = _prepare_rounds(rounds)
    if (settlement := read("settlement.parquet", SETTLEMENT_COLUMNS)) is not None:
        v.bills, v.dso_charges = _reduce_settlement(settlement)
    if (buses := read("buses.parquet", BUSES_COLUMNS)) is not None:
        v.worst_vm_pu = _reduce_buses(buses)
    if (branches := read("branches.parquet", BRANCHES_COLUMNS)) is not None:
        v.max_loading_pct = _reduce_branches(branches)
    if with_trades and (trades := read("trades.parquet", TRADES_COLUMNS)) is not None:
        v.pair_kwh = _reduce_trades(trades)
    return v, missing


def _time_base(time: pd.Series) -> _TimeBase:
    """Round by round up to MAX_POINTS rounds, else the finest bucket that fits."""
    if len(time) <= MAX_POINTS:
        return _TimeBase(None, "round")
    for freq, unit in _BUCKETS:
        if time.dt.floor(freq).nunique() <= MAX_POINTS:
            return _TimeBase(freq, unit)
    return _TimeBase(*_BUCKETS[-1])


def _load_run(run_dir: pathlib.Path) -> _Run:
    """Read and check the run folder; raise one InputError listing every problem."""
    problems: list[str] = []
    summary_path = run_dir / "summary.json"
    if not run_dir.is_dir():
        raise InputError(run_dir, ["run folder: expected a folder, found nothing"])
    if not summary_path.is_file():
        problems.append("summary.json: expected the run summary, found nothing")
        summary: dict = {}
    else:
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"summary.json: expected JSON, found a syntax error ({exc})")
            summary = {}
        if not isinstance(summary, dict):
            problems.append(f"summary.json: expected an object, found {type(summary).__name__}")
            summary = {}

    notes: list[str] = []
    variants: dict[str, _Variant] = {}
    for key, sub, label in _VARIANTS:
        folder = run_dir if sub is None else run_dir / sub
        if sub is not None and not folder.is_dir():
            notes.append(
                f"Variant “{label}” was not recorded (no {sub}/ folder); "
                "its comparisons are left out."
            )
            continue
        prefix = "" if sub is None else f"{sub}/"
        v, missing = _load_variant(
            folder, prefix, key, label, with_trades=sub is None, problems=problems
        )
        if key == "market" and "rounds.parquet" in missing:
            problems.append("rounds.parquet: expected one row per round, found nothing")
        elif missing:
            notes.append(
                f"Variant “{label}”: {', '.join(missing)} missing; "
                "the parts that need it are left out."
            )
        variants[key] = v

    grid_buses = grid_branches = None
    geometry_missing = []
    for name, cols in (
        ("grid_buses.parquet", GRID_BUSES_COLUMNS),
        ("grid_branches.parquet", GRID_BRANCHES_COLUMNS),
    ):
        path = run_dir / name
        if not path.is_file():
            geometry_missing.append(name)
            continue
        table = _read_table(path, cols, ("name", "vn_kv"), problems)
        if name == "grid_buses.parquet":
            grid_buses = table
        else:
            grid_branches = table
    if geometry_missing:
        notes.append(f"{', '.join(geometry_missing)} missing: the network map is left out.")

    if problems:
        raise InputError(run_dir, problems)

    rounds = variants["market"].rounds
    if rounds.empty:
        raise InputError(
            run_dir / "rounds.parquet", ["rounds: expected at least one round, found none"]
        )
    storage = None
    if (run_dir / "storage.parquet").is_file():
        table = _read_table(run_dir / "storage.parquet", STORAGE_COLUMNS, (), problems)
        if problems:
            raise InputError(run_dir, problems)
        storage = _reduce_storage(table, rounds)
    return _Run(
        run_dir=run_dir,
        summary=summary,
        variants=variants,
        grid_buses=grid_buses,
        grid_branches=grid_branches,
        timebase=_time_base(rounds["time"]),
        notes=notes,
        storage=storage,
    )


def _reduce_storage(table: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    """Per round: battery state of charge (min, mean, max) [0..1] and power [kW]; EVs
    plugged in [count], their mean state of charge and power; shiftable loads' power;
    the scheduled powers (NaN under the rule) [kW]. Indexed like rounds, with ``time``."""
    out = pd.DataFrame({"round": rounds["round"].to_numpy(), "time": rounds["time"].to_numpy()})
    out = out.set_index("round")
    for asset, prefix in (("battery", "bat"), ("ev", "ev"), ("shiftable", "sh")):
        part = table[table["asset"].astype(str) == asset]
        if part.empty:
            continue
        g = part.groupby("round")
        out[f"{prefix}_kw"] = g["power_kw"].sum()
        out[f"{prefix}_scheduled_kw"] = g["scheduled_kw"].sum(min_count=1)
        if asset == "battery":
            out["bat_soc_min"] = g["soc"].min()
            out["bat_soc_mean"] = g["soc"].mean()
            out["bat_soc_max"] = g["soc"].max()
            out["bat_energy_kwh"] = g["energy_kwh"].sum()
        elif asset == "ev":
            out["ev_plugged"] = g["plugged"].sum()
            out["ev_soc_mean"] = g["soc"].mean()  # NaN rows (cars away) are left out
    return out.reset_index()


# ------------------------------------------------------------------------- aggregation


def _bucket(rounds: pd.DataFrame, tb: _TimeBase) -> pd.Series:
    return rounds["time"].dt.floor(tb.freq)


def _totals(rounds: pd.DataFrame, cols: list[str], tb: _TimeBase) -> pd.DataFrame:
    """Per-round energies, or their totals per bucket [kWh per bucket], indexed by time."""
    if tb.freq is None:
        return rounds.set_index("time")[cols]
    return rounds.groupby(_bucket(rounds, tb))[cols].sum(min_count=1)


def _envelope(
    rounds: pd.DataFrame, lo_col: str, hi_col: str, tb: _TimeBase
) -> tuple[pd.Series, pd.Series]:
    """Per-round (lo, hi), or the bucket's minimum of ``lo_col`` and maximum of ``hi_col``."""
    if tb.freq is None:
        r = rounds.set_index("time")
        return r[lo_col], r[hi_col]
    g = rounds.groupby(_bucket(rounds, tb))
    return g[lo_col].min(), g[hi_col].max()


def _price_series(rounds: pd.DataFrame, tb: _TimeBase) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Clearing price per round, or per bucket its volume-weighted mean, min and max."""
    price = rounds["price_per_kwh"].where(rounds["cleared_kwh"].fillna(0) > 0)
    if tb.freq is None:
        s = pd.Series(price.to_numpy(), index=rounds["time"])
        return s, s, s
    frame = pd.DataFrame(
        {
            "value_x_kwh": (price * rounds["cleared_kwh"]).fillna(0.0),
            "kwh": rounds["cleared_kwh"].where(price.notna(), 0.0),
            "price": price,
        }
    )
    g = frame.groupby(_bucket(rounds, tb))
    sums = g[["value_x_kwh", "kwh"]].sum()
    mean = (sums["value_x_kwh"] / sums["kwh"]).where(sums["kwh"] > 0)
    return mean, g["price"].min(), g["price"].max()


# ---------------------------------------------------------------------------- plotting


def _subplots(nrows: int, height_in: float, sharex: bool = True):
    fig, axes = plt.subplots(
        nrows,
        1,
        figsize=(_FIG_WIDTH_IN, height_in),
        sharex=sharex,
        squeeze=False,
        layout="constrained",
    )
    return fig, list(axes[:, 0])


def _time_axis(ax, run: _Run) -> None:
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    tb = run.timebase
    ax.set_xlabel("time [date]" if tb.freq is None else f"time [date; one point per {tb.unit}]")


def _legend_below(fig, axes) -> None:
    """One legend for all axes of a figure, outside the plots so it hides no data."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen.keys()),
            loc="outside lower center",
            ncol=min(4, len(seen)),
            fontsize="small",
            frameon=False,
        )


def _save(fig, path: pathlib.Path) -> None:
    try:
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)


def _placeholder(path: pathlib.Path, title: str, message: str) -> None:
    fig, (ax,) = _subplots(1, 2.2)
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(
        0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes, wrap=True
    )
    _save(fig, path)


def _finite(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def _fmt(value: float | None, kind: str = "plain") -> str:
    if value is None or not math.isfinite(value):
        return _MISSING
    return _FORMATS[kind](value)


# ----------------------------------------------------------------------------- figures


def _fig_price_volume(run: _Run, path: pathlib.Path) -> str:
    rounds, tb, cur = run.market.rounds, run.timebase, run.currency
    fig, (ax_p, ax_v) = _subplots(2, 6.0)
    mean, lo, hi = _price_series(rounds, tb)
    colour = _COLOURS["market"]
    if _finite(mean).size:
        if tb.freq is not None:
            ax_p.fill_between(
                lo.index,
                lo.to_numpy(float),
                hi.to_numpy(float),
                color=colour,
                alpha=0.2,
                lw=0,
                label=f"range of round prices in the {tb.unit}",
            )
            label = f"volume-weighted mean price per {tb.unit}"
        else:
            label = "clearing price"
        ax_p.plot(
            mean.index, mean.to_numpy(float), color=colour, lw=1, marker=".", ms=2.5, label=label
        )
    else:
        ax_p.text(
            0.5,
            0.5,
            "no clearing price: nothing was cleared in this run",
            ha="center",
            va="center",
            transform=ax_p.transAxes,
        )
    ax_p.set_ylabel(f"P2P price [{cur}/kWh]")
    ax_p.set_title("P2P clearing price and traded volume (P2P + feedback)")
    ax_p.grid(alpha=0.3)

    vol = _totals(rounds, ["cleared_kwh"], tb)["cleared_kwh"]
    ax_v.fill_between(
        vol.index,
        vol.to_numpy(float),
        0.0,
        color="tab:green",
        alpha=0.5,
        lw=0.6,
        step="post" if tb.freq is None else None,
    )
    ax_v.set_ylabel(f"P2P traded [{run.energy_unit()}]")
    ax_v.set_ylim(bottom=0)
    ax_v.grid(alpha=0.3)
    _time_axis(ax_v, run)
    _legend_below(fig, [ax_p, ax_v])
    _save(fig, path)

    total = float(np.nansum(rounds["cleared_kwh"]))
    n_cleared = int((rounds["cleared_kwh"].fillna(0) > 0).sum())
    prices = _finite(rounds["price_per_kwh"].where(rounds["cleared_kwh"].fillna(0) > 0))
    price_text = (
        f"prices ranged from {prices.min():.4f} to {prices.max():.4f} {cur}/kWh"
        if prices.size
        else "no price was set"
    )
    return (
        f"The market cleared {total:,.1f} kWh in {n_cleared:,d} of {len(rounds):,d} "
        f"rounds; {price_text}."
    )


def _fig_grid_exchange(run: _Run, path: pathlib.Path) -> str:
    tb = run.timebase
    fig, (ax_i, ax_e) = _subplots(2, 6.0)
    shown = [v for v in (run.variant("market"), run.variant("baseline")) if v is not None]
    for v in shown:
        data = _totals(v.rounds, ["grid_import_kwh", "grid_export_kwh"], tb)
        style = dict(
            color=_COLOURS[v.key],
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
    _time_axis(ax_e, run)
    _legend_below(fig, [ax_i, ax_e])
    _save(fig, path)

    parts = []
    for v in shown:
        imp = float(np.nansum(v.rounds["grid_import_kwh"]))
        exp = float(np.nansum(v.rounds["grid_export_kwh"]))
        parts.append(f"{v.label}: {imp:,.1f} kWh imported, {exp:,.1f} kWh exported")
    return f"Energy exchanged with the {g} over the run — " + "; ".join(parts) + "."


def _fig_voltage_envelope(run: _Run, path: pathlib.Path) -> str:
    tb = run.timebase
    v_min = _as_float(run.summary.get("v_min_pu"))
    v_max = _as_float(run.summary.get("v_max_pu"))
    fig, (ax,) = _subplots(1, 4.5)
    what = "per round" if tb.freq is None else f"per {tb.unit}"
    for v in (run.variant("market"), run.variant("market_no_feedback")):
        if v is None:
            continue
        lo, hi = _envelope(v.rounds, "vm_min_pu", "vm_max_pu", tb)
        colour = _COLOURS[v.key]
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
            ax.axhline(limit, color=_COLOURS["limit"], ls="--", lw=1.0)
    if v_min is not None or v_max is not None:
        ax.plot(
            [],
            [],
            color=_COLOURS["limit"],
            ls="--",
            lw=1.0,
            label=f"voltage band {_fmt(v_min, 'plain')}–{_fmt(v_max, 'plain')} pu",
        )
    ax.set_ylabel("bus voltage [pu]")
    ax.set_title("Envelope of bus voltages (minimum and maximum over all buses)")
    ax.grid(alpha=0.3)
    _time_axis(ax, run)
    _legend_below(fig, [ax])
    _save(fig, path)

    parts = []
    for v in (run.variant("market"), run.variant("market_no_feedback")):
        if v is None:
            continue
        lo, hi = _finite(v.rounds["vm_min_pu"]), _finite(v.rounds["vm_max_pu"])
        if lo.size and hi.size:
            parts.append(f"{v.label} {lo.min():.3f}–{hi.max():.3f} pu")
    band = f"the band {_fmt(v_min)}–{_fmt(v_max)} pu" if v_min or v_max else "the band"
    return (
        "The shaded area spans the lowest to the highest bus voltage of each "
        f"{'round' if tb.freq is None else tb.unit} against {band} (dashed red); "
        f"range over the run: {'; '.join(parts) or 'not recorded'}."
    )


def _fig_loading(run: _Run, path: pathlib.Path) -> str:
    tb = run.timebase
    limit = _as_float(run.summary.get("max_loading_pct"))
    fig, axes = _subplots(2, 6.0)
    what = "" if tb.freq is None else f" (maximum per {tb.unit})"
    for ax, col, name in (
        (axes[0], "max_line_loading_pct", "most loaded line"),
        (axes[1], "max_trafo_loading_pct", "transformer"),
    ):
        for v in (run.variant("market"), run.variant("market_no_feedback")):
            if v is None:
                continue
            _, hi = _envelope(v.rounds, col, col, tb)
            ax.plot(
                hi.index,
                hi.to_numpy(float),
                color=_COLOURS[v.key],
                ls="-" if v.key == "market" else "--",
                lw=0.9,
                label=v.label,
            )
        if limit is not None:
            ax.axhline(limit, color=_COLOURS["limit"], ls="--", lw=1.0, label=f"limit {limit:g} %")
        ax.set_ylabel(f"{name} loading [%]")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_title(
        f"Loading of the most loaded line (top) and of the transformer (bottom){what}"
    )
    _time_axis(axes[1], run)
    _legend_below(fig, axes)
    _save(fig, path)

    m = run.market.rounds
    line, trafo = _finite(m["max_line_loading_pct"]), _finite(m["max_trafo_loading_pct"])
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


def _fig_curtailment_shedding(run: _Run, path: pathlib.Path) -> str:
    rounds, tb = run.market.rounds, run.timebase
    fig, (ax,) = _subplots(1, 4.0)
    data = _totals(rounds, ["curtailed_kwh", "shed_kwh"], tb)
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
    _time_axis(ax, run)
    _legend_below(fig, [ax])
    _save(fig, path)
    curt = float(np.nansum(rounds["curtailed_kwh"]))
    shed = float(np.nansum(rounds["shed_kwh"]))
    return (
        f"Over the run {curt:,.1f} kWh of generation was curtailed and {shed:,.1f} kWh "
        "of load was shed."
    )


def _prosumer_bills(v: _Variant | None) -> pd.Series | None:
    if v is None or v.bills is None:
        return None
    b = v.bills
    keep = (b["bus"] >= 0) & ~b.index.isin(list(_NON_PROSUMERS))
    return b.loc[keep, "bill"]


def _fig_bills(run: _Run, path: pathlib.Path) -> str:
    cur = run.currency
    market = _prosumer_bills(run.variants.get("market"))
    base = _prosumer_bills(run.variants.get("baseline"))
    if market is None or market.empty:
        _placeholder(path, "Prosumer bills", "no prosumer settlement recorded")
        return "No prosumer settlement was recorded, so no bills can be shown."
    if base is None or base.empty:
        fig, (ax,) = _subplots(1, 4.0)
        s = market.sort_values()
        x = np.arange(len(s))
        ax.bar(x, s.to_numpy(float), color=np.where(s < 0, "tab:green", "tab:blue"), width=0.85)
        _bar_ticks(ax, s.index)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xlabel("prosumers, sorted by bill [–]")
        ax.set_ylabel(f"bill over the run [{cur}]")
        ax.set_title("Each prosumer's bill with P2P + feedback (positive = pays)")
        ax.grid(alpha=0.3, axis="y")
        _save(fig, path)
        return (
            f"Bills of the {len(s)} prosumers over the run, sorted; no baseline was "
            "recorded to compare with."
        )

    both = pd.DataFrame({"market": market, "baseline": base}).dropna()
    fig, (ax_s, ax_d) = plt.subplots(
        1,
        2,
        figsize=(_FIG_WIDTH_IN, 4.6),
        layout="constrained",
        gridspec_kw={"width_ratios": [1, 1.6]},
    )
    ax_s.scatter(
        both["baseline"],
        both["market"],
        s=14,
        color=_COLOURS["market"],
        alpha=0.8,
        edgecolors="none",
    )
    vals = _finite(both.to_numpy().ravel())
    if vals.size:
        lo, hi = vals.min(), vals.max()
        pad = 0.05 * (hi - lo or 1.0)
        ax_s.plot(
            [lo - pad, hi + pad],
            [lo - pad, hi + pad],
            color="black",
            ls="--",
            lw=0.8,
            label="same bill (y = x)",
        )
        ax_s.legend(loc="upper left", fontsize="small")
    ax_s.set_xlabel(f"bill without P2P (baseline) [{cur}]")
    ax_s.set_ylabel(f"bill with P2P + feedback [{cur}]")
    ax_s.set_title("Bill per prosumer (below the line: saves)", fontsize="medium")
    ax_s.grid(alpha=0.3)

    diff = (both["market"] - both["baseline"]).sort_values()
    x = np.arange(len(diff))
    ax_d.bar(x, diff.to_numpy(float), width=0.85, color=np.where(diff < 0, "tab:green", "tab:red"))
    _bar_ticks(ax_d, diff.index)
    ax_d.axhline(0.0, color="black", lw=0.6)
    ax_d.set_xlabel("prosumers, sorted by change [–]")
    ax_d.set_ylabel(f"bill change, P2P − baseline [{cur}]")
    ax_d.set_title("Change of bill (green: pays less with P2P)", fontsize="medium")
    ax_d.grid(alpha=0.3, axis="y")
    _save(fig, path)
    n_save = int((diff < 0).sum())
    return (
        f"{n_save} of {len(diff)} prosumers pay less with P2P + feedback than without P2P; "
        f"together their bills change by {diff.sum():+,.2f} {cur} "
        f"(median {diff.median():+,.2f} {cur} per prosumer)."
    )


def _sparse_ticks(n: int, max_labels: int = 30) -> np.ndarray:
    step = max(1, math.ceil(n / max_labels))
    return np.arange(0, n, step)


def _bar_ticks(ax, names: pd.Index) -> None:
    if len(names) <= 30:
        ax.set_xticks(
            np.arange(len(names)), [str(n) for n in names], rotation=90, fontsize="x-small"
        )
    else:
        ax.set_xticks([])
    ax.set_xlim(-0.6, len(names) - 0.4)


def _fig_trade_matrix(run: _Run, path: pathlib.Path) -> str:
    m = run.market
    pairs = m.pair_kwh
    if pairs is None:
        _placeholder(path, "Who sold to whom", "trades.parquet was not recorded")
        return "The trades of the run were not recorded."
    pairs = pairs[pairs["energy_kwh"].fillna(0) > 0]
    from_grid = float(pairs.loc[pairs["seller"].isin(list(_GRID_PARTIES)), "energy_kwh"].sum())
    to_grid = float(pairs.loc[pairs["buyer"].isin(list(_GRID_PARTIES)), "energy_kwh"].sum())
    grid_text = (
        f"In trades with the {run.grid_name}, prosumers bought {from_grid:,.1f} kWh "
        f"and sold {to_grid:,.1f} kWh (not in the matrix)."
    )
    p2p = pairs[
        ~pairs["seller"].isin(list(_NON_PROSUMERS)) & ~pairs["buyer"].isin(list(_NON_PROSUMERS))
    ]
    if p2p.empty:
        _placeholder(
            path,
            "Who sold to whom (P2P + feedback)",
            "no energy was traded between prosumers in this run",
        )
        return f"No energy was traded between prosumers in this run. {grid_text}"

    # order the prosumers by bus, so that neighbours in the network are neighbours here
    bills = m.bills
    known = (
        bills.loc[(bills["bus"] >= 0) & ~bills.index.isin(list(_NON_PROSUMERS)), "bus"]
        if bills is not None
        else pd.Series(dtype=float)
    )
    names = set(known.index) | set(p2p["seller"]) | set(p2p["buyer"])
    order = sorted(names, key=lambda n: (known.get(n, np.inf), n))
    matrix = p2p.pivot_table(
        index="seller", columns="buyer", values="energy_kwh", aggfunc="sum", fill_value=0.0
    ).reindex(index=order, columns=order, fill_value=0.0)
    n = len(order)
    side = min(9.0, max(5.0, 3.0 + 0.05 * n))
    fig, ax = plt.subplots(figsize=(side + 1.5, side), layout="constrained")
    data = np.ma.masked_less_equal(matrix.to_numpy(float), 0.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#f2f2f2")
    im = ax.imshow(data, cmap=cmap, interpolation="nearest", aspect="equal")
    ticks = _sparse_ticks(n)
    labels = [order[i] for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90, fontsize="x-small")
    ax.set_yticks(ticks, labels, fontsize="x-small")
    ax.set_xlabel("buyer (prosumer id, ordered by bus) [–]")
    ax.set_ylabel("seller (prosumer id, ordered by bus) [–]")
    ax.set_title(
        "Who sold to whom over the run (P2P + feedback; grey: no trade)", fontsize="medium"
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="energy sold over the run [kWh]")
    _save(fig, path)
    total = float(p2p["energy_kwh"].sum())
    top = p2p.sort_values("energy_kwh").iloc[-1]
    return (
        f"{total:,.1f} kWh were traded between {p2p['seller'].nunique()} selling and "
        f"{p2p['buyer'].nunique()} buying prosumers, the largest pair being "
        f"{top['seller']} → {top['buyer']} "
        f"({top['energy_kwh']:,.1f} kWh). {grid_text}"
    )


def _fig_network_map(run: _Run, path: pathlib.Path) -> str:
    gb, gbr = run.grid_buses, run.grid_branches
    if gb is None or gbr is None:
        _placeholder(
            path, "Network map", "network geometry (grid_buses / grid_branches) was not recorded"
        )
        return "The network geometry was not recorded, so the network cannot be drawn."
    xy = gb.drop_duplicates("bus").set_index("bus")[["x", "y"]].astype(float).dropna()
    if xy.empty:
        _placeholder(path, "Network map", "no bus coordinates recorded")
        return "The buses have no coordinates, so the network cannot be drawn."

    panels = [
        v
        for v in (run.variants.get("market"), run.variants.get("market_no_feedback"))
        if v is not None and v.worst_vm_pu is not None
    ]
    if not panels:
        panels = [run.market]
    worst_all = _finite(
        np.concatenate(
            [p.worst_vm_pu.to_numpy(float) for p in panels if p.worst_vm_pu is not None]
            or [np.array([])]
        )
    )
    v_min = _as_float(run.summary.get("v_min_pu"))
    v_max = _as_float(run.summary.get("v_max_pu"))
    limit = _as_float(run.summary.get("max_loading_pct"))
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
        figsize=(_FIG_WIDTH_IN, 5.5 if len(panels) > 1 else 7.0),
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
                    segs[over & ~is_trafo], colors=_COLOURS["limit"], linewidths=3.5, zorder=2
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
                color=_COLOURS["limit"],
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
    _save(fig, path)

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


def _dso_per_round(run: _Run) -> pd.Series | None:
    """Network charges collected per round [currency], indexed by time."""
    rounds = run.market.rounds
    if "network_charges" in rounds.columns:
        return pd.Series(rounds["network_charges"].to_numpy(float), index=rounds["time"])
    dso = run.market.dso_charges
    if dso is None:
        return None
    per_round = dso.reindex(rounds["round"]).fillna(0.0).to_numpy(float)
    return pd.Series(per_round, index=rounds["time"])


def _fig_network_charges(run: _Run, path: pathlib.Path) -> str:
    cur = run.currency
    charges = _dso_per_round(run)
    if charges is None:
        _placeholder(path, "Network charges", "network charges were not recorded")
        return "Network charges were not recorded in this run."
    span = charges.index.max() - charges.index.min()
    fig, (ax,) = _subplots(1, 4.0)
    if span >= pd.Timedelta(days=2):
        daily = charges.groupby(charges.index.floor("1D")).sum(min_count=1)
        if len(daily) <= 60:
            ax.bar(
                daily.index,
                daily.to_numpy(float),
                width=0.8,
                align="edge",
                color="tab:purple",
                alpha=0.7,
                label="collected per day",
            )
        else:  # bars would merge: draw the daily values as a filled step line
            edges = daily.index.append(pd.DatetimeIndex([daily.index[-1] + pd.Timedelta(days=1)]))
            values = np.r_[daily.to_numpy(float), daily.to_numpy(float)[-1:]]
            ax.fill_between(
                edges,
                values,
                0.0,
                step="post",
                color="tab:purple",
                alpha=0.7,
                lw=0,
                label="collected per day",
            )
        ax.set_ylabel(f"network charges [{cur} per day]")
        per = "day"
    else:
        ax.plot(
            charges.index,
            charges.to_numpy(float),
            color="tab:purple",
            lw=1.0,
            label="collected per round",
        )
        ax.set_ylabel(f"network charges [{cur} per round]")
        per = "round"
    ax.set_ylim(bottom=min(0.0, float(np.nanmin(charges.to_numpy(float)) if len(charges) else 0.0)))
    ax2 = ax.twinx()
    ax2.plot(
        charges.index,
        np.nancumsum(charges.to_numpy(float)),
        color="black",
        lw=1.2,
        label="cumulative",
    )
    ax2.set_ylabel(f"cumulative network charges [{cur}]")
    ax2.set_ylim(bottom=0)
    ax.set_title("Network charges collected by the DSO (P2P + feedback)")
    ax.grid(alpha=0.3)
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel(f"time [date; one value per {per}]")
    _legend_below(fig, [ax, ax2])
    _save(fig, path)
    total = float(np.nansum(charges.to_numpy(float)))
    n = int((charges.fillna(0) != 0).sum())
    return (
        f"The DSO collected {total:,.2f} {cur} of network charges, in {n:,d} of "
        f"{len(charges):,d} rounds."
    )


def _fig_grid_forming(run: _Run, path: pathlib.Path) -> str:
    rounds, tb = run.market.rounds, run.timebase
    fig, (ax_s, ax_p) = _subplots(2, 5.5)
    soc = rounds.assign(soc_pct=100.0 * rounds["gfu_soc"])
    lo, hi = _envelope(soc, "soc_pct", "soc_pct", tb)
    if tb.freq is None:
        ax_s.plot(lo.index, lo.to_numpy(float), color="tab:green", lw=1.0)
    else:
        ax_s.fill_between(
            lo.index,
            lo.to_numpy(float),
            hi.to_numpy(float),
            color="tab:green",
            alpha=0.4,
            lw=0,
            label=f"min–max per {tb.unit}",
        )
    ax_s.set_ylim(0, 100)
    ax_s.set_ylabel("state of charge [%]")
    ax_s.set_title("Grid-forming unit: state of charge (top) and power (bottom)")
    ax_s.grid(alpha=0.3)
    if "gfu_p_kw" in rounds.columns:
        lo, hi = _envelope(rounds, "gfu_p_kw", "gfu_p_kw", tb)
        if tb.freq is None:
            ax_p.plot(lo.index, lo.to_numpy(float), color="tab:blue", lw=1.0)
        else:
            ax_p.fill_between(
                lo.index,
                lo.to_numpy(float),
                hi.to_numpy(float),
                color="tab:blue",
                alpha=0.4,
                lw=0,
                label=f"min–max per {tb.unit}",
            )
        ax_p.axhline(0.0, color="black", lw=0.6)
    else:
        ax_p.text(
            0.5, 0.5, "power not recorded", ha="center", va="center", transform=ax_p.transAxes
        )
    ax_p.set_ylabel("power [kW]")
    ax_p.grid(alpha=0.3)
    _time_axis(ax_p, run)
    _legend_below(fig, [ax_s, ax_p])
    _save(fig, path)
    s = _finite(100.0 * rounds["gfu_soc"])
    soc_text = (
        f"its state of charge stayed between {s.min():.0f} % and {s.max():.0f} %"
        if s.size
        else "its state of charge was not recorded"
    )
    p_text = ""
    if "gfu_p_kw" in rounds.columns:
        p = _finite(rounds["gfu_p_kw"])
        if p.size:
            p_text = (
                f" and its power between {p.min():,.1f} kW and {p.max():,.1f} kW "
                "(gfu_p_kw as recorded)"
            )
    return f"The grid-forming unit is the slack of the islanded network; {soc_text}{p_text}."


def _storage_series(run: _Run, cols: list[str], how: str = "mean") -> pd.DataFrame:
    """Storage columns per round, or per bucket (mean or min/max) on long runs."""
    st, tb = run.storage, run.timebase
    cols = [c for c in cols if c in st.columns]
    if tb.freq is None:
        return st.set_index("time")[cols]
    return st.groupby(st["time"].dt.floor(tb.freq))[cols].agg(how)


def _fig_storage_soc(run: _Run, path: pathlib.Path) -> str:
    st = run.storage
    has_bat, has_ev = "bat_soc_mean" in st.columns, "ev_plugged" in st.columns
    fig, axes = _subplots(2 if (has_bat and has_ev) else 1, 6.0 if (has_bat and has_ev) else 3.4)
    base_axes = list(axes)
    parts = []
    ax = axes[0]
    if has_bat:
        lo = _storage_series(run, ["bat_soc_min"], "min")["bat_soc_min"] * 100.0
        hi = _storage_series(run, ["bat_soc_max"], "max")["bat_soc_max"] * 100.0
        mean = _storage_series(run, ["bat_soc_mean"])["bat_soc_mean"] * 100.0
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
        soc = _storage_series(run, ["ev_soc_mean"])["ev_soc_mean"] * 100.0
        plugged = _storage_series(run, ["ev_plugged"])["ev_plugged"]
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
    _time_axis(base_axes[-1], run)
    _legend_below(fig, axes)
    _save(fig, path)
    return "State of charge over the run: " + "; ".join(parts) + " (storage.parquet)."


def _fig_ev_charging(run: _Run, path: pathlib.Path) -> str:
    st = run.storage
    cols = [c for c in ("ev_kw", "sh_kw", "bat_kw") if c in st.columns]
    data = _storage_series(run, cols)
    fig, (ax,) = _subplots(1, 3.8)
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
    _time_axis(ax, run)
    _legend_below(fig, [ax])
    _save(fig, path)
    dt_h = run.resolution_min / 60.0 if math.isfinite(run.resolution_min) else float("nan")
    texts = []
    for c in cols:
        charged = float(np.nansum(np.maximum(st[c], 0.0)) * dt_h)
        texts.append(f"{labels[c][0]} drew {charged:,.1f} kWh")
    return "Charging is positive, discharging (home batteries, EVs with vehicle-to-grid) negative; " + \
        ", ".join(texts) + "."


def _fig_schedule_dispatch(run: _Run, path: pathlib.Path) -> str:
    st = run.storage
    pairs = [(a, b, lab) for a, b, lab in (("bat_scheduled_kw", "bat_kw", "home batteries"),
                                            ("ev_scheduled_kw", "ev_kw", "EV chargers"),
                                            ("sh_scheduled_kw", "sh_kw", "shiftable loads"))
             if a in st.columns and st[a].notna().any()]
    fig, axes = _subplots(len(pairs), 2.6 * len(pairs) + 0.8)
    texts = []
    for ax, (sched, real, label) in zip(axes, pairs, strict=True):
        data = _storage_series(run, [sched, real])
        ax.plot(data.index, data[sched].to_numpy(float), color="tab:blue", lw=1.0, ls="--", label="day-ahead schedule")
        ax.plot(data.index, data[real].to_numpy(float), color="tab:red", lw=1.0, label="realised")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_ylabel(f"{label} [kW]")
        ax.grid(alpha=0.3)
        dev = np.abs(st[real] - st[sched])
        texts.append(f"{label}: largest deviation {np.nanmax(dev):,.2f} kW")
    axes[0].set_title("Day-ahead schedule against realised dispatch (all prosumers together)")
    _time_axis(axes[-1], run)
    _legend_below(fig, axes)
    _save(fig, path)
    strategy = (run.summary.get("storage") or {}).get("strategy") if isinstance(run.summary.get("storage"), dict) \
        else None
    head = f"The assets follow the {strategy} schedule" if strategy else "The assets follow the day-ahead schedule"
    return (f"{head} as far as they physically can; the market trades what the forecast got wrong. "
            + "; ".join(texts) + ".")


_FIGURE_FUNCS: dict[str, Callable[[_Run, pathlib.Path], str]] = {
    "price_volume": _fig_price_volume,
    "grid_exchange": _fig_grid_exchange,
    "voltage_envelope": _fig_voltage_envelope,
    "loading": _fig_loading,
    "curtailment_shedding": _fig_curtailment_shedding,
    "bills": _fig_bills,
    "trade_matrix": _fig_trade_matrix,
    "network_map": _fig_network_map,
    "network_charges": _fig_network_charges,
    "grid_forming": _fig_grid_forming,
    "storage_soc": _fig_storage_soc,
    "ev_charging": _fig_ev_charging,
    "schedule_dispatch": _fig_schedule_dispatch,
}

_FIGURE_TITLES = {
    "price_volume": "P2P price and traded volume",
    "grid_exchange": "Exchange with the {grid}",
    "voltage_envelope": "Bus voltages",
    "loading": "Line and transformer loading",
    "curtailment_shedding": "Curtailment and load shedding",
    "bills": "Prosumer bills: P2P against no P2P",
    "trade_matrix": "Who sold to whom",
    "network_map": "Network map: worst voltage per bus",
    "network_charges": "Network charges",
    "grid_forming": "Grid-forming unit",
    "storage_soc": "State of charge of batteries and EVs",
    "ev_charging": "EV charging and flexible loads",
    "schedule_dispatch": "Day-ahead schedule against realised dispatch",
}


def _figures_for(run: _Run) -> list[str]:
    names = [n for n in FIGURES if n != "grid_forming"]
    if "gfu_soc" in run.market.rounds.columns:
        names.append("grid_forming")
    st = run.storage
    if st is not None and len(st.columns) > 2:
        names += ["storage_soc", "ev_charging"]
        if any(c.endswith("_scheduled_kw") and st[c].notna().any() for c in st.columns):
            names.append("schedule_dispatch")
    return names


# -------------------------------------------------------------------------------- html


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1120px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.facts { color: #444; margin: 0.2em 0 1em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { background: #fde2e1; font-weight: bold; }
figure { margin: 1.2em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #333; font-size: 0.95em; margin-top: 0.3em; }
.notes { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; }
.small { color: #666; font-size: 0.85em; }
"""


def _kpi_breach(key: str, value: float, summary: dict) -> bool:
    """True if a KPI value lies beyond a limit of the run (highlighted in the table)."""
    v_min = _as_float(summary.get("v_min_pu"))
    v_max = _as_float(summary.get("v_max_pu"))
    limit = _as_float(summary.get("max_loading_pct"))
    if key == "vm_min_pu" and v_min is not None:
        return value < v_min
    if key == "vm_max_pu" and v_max is not None:
        return value > v_max
    if key in ("peak_trafo_loading_pct", "max_line_loading_pct") and limit is not None:
        return value > limit
    if key in ("violation_rounds", "violations", "shed_kwh", "failed_rounds"):
        return value > 0
    return False


def same_physics(a: dict, b: dict) -> list[str]:
    """The physical key figures (`_PHYSICS_KPIS`) on which two variants' summaries differ;
    empty when their physics is the same.

    >>> same_physics({"losses_kwh": 5.0, "vm_max_pu": 1.05}, {"losses_kwh": 5.0, "vm_max_pu": 1.05})
    []
    >>> same_physics({"losses_kwh": 5.0}, {"losses_kwh": 5.2})
    ['losses']
    """
    differ = []
    for key, label, tol in _PHYSICS_KPIS:
        x, y = _as_float(a.get(key)), _as_float(b.get(key))
        if x is None or y is None:
            continue
        scale = 1.0 if key.startswith("vm_") else max(abs(x), abs(y), 1.0)
        if abs(x - y) > tol * scale:
            differ.append(label)
    return differ


def _market_effect_html(run: _Run) -> str:
    """In words: does the P2P market change what happens on the feeder, with and without
    feedback? (Identical physics means the market only moved money.)"""
    variants = run.summary.get("variants") if isinstance(run.summary.get("variants"), dict) else {}
    lines = []
    for p2p, base, what in (("market", "baseline", "with network feedback"),
                            ("market_no_feedback", "baseline_no_feedback", "without network feedback")):
        a, b = variants.get(p2p), variants.get(base)
        if not isinstance(a, dict) or not isinstance(b, dict):
            continue
        differ = same_physics(a, b)
        if not differ:
            lines.append(f"{what.capitalize()}, the physics of the runs with and without P2P is identical "
                         "(losses, loadings, voltages, curtailment, shedding, import and export): the market "
                         "only moves money between the parties.")
        else:
            la, lb = _as_float(a.get("losses_kwh")), _as_float(b.get("losses_kwh"))
            pa, pb = _as_float(a.get("peak_trafo_loading_pct")), _as_float(b.get("peak_trafo_loading_pct"))
            detail = ""
            if None not in (la, lb, pa, pb):
                detail = (f" Losses {_fmt(la)} kWh with P2P against {_fmt(lb)} kWh without; peak transformer "
                          f"loading {_fmt(pa)} % against {_fmt(pb)} %.")
            lines.append(f"{what.capitalize()}, P2P trading changes the dispatch: the runs differ in "
                         f"{', '.join(differ)}.{detail}")
    nf = variants.get("baseline_no_feedback")
    if isinstance(nf, dict) and _as_float(nf.get("violation_rounds")):
        lines.append(f"Without P2P and without feedback, {int(nf['violation_rounds']):,d} rounds violate a limit: "
                     "these come from the PV and the loads, not from the market.")
    if not lines:
        return ""
    return "<p>" + " ".join(html.escape(x) for x in lines) + "</p>"


def _kpi_table(run: _Run) -> str:
    summary = run.summary
    variants = summary.get("variants") if isinstance(summary.get("variants"), dict) else {}
    kpis = [
        variants.get(key) if isinstance(variants.get(key), dict) else {} for key, _, _ in _VARIANTS
    ]
    known = {row[0] for row in _KPI_ROWS}
    extra = sorted({k for d in kpis for k in d if k not in known})
    rows = list(_KPI_ROWS) + [(k, k, "as recorded", "plain") for k in extra]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, _, label in _VARIANTS)
    out = [f"<table class='kpi'><thead><tr><th>Key figure [unit]</th>{head}</tr></thead><tbody>"]
    for key, label, unit, kind in rows:
        label = label.format(grid=run.grid_name)
        unit = unit.format(cur=run.currency)
        cells = []
        for d in kpis:
            value = d.get(key)
            number = _as_float(value) if not isinstance(value, bool) else float(value)
            if number is None:
                text = (
                    _MISSING
                    if value is None or isinstance(value, (int, float))
                    else html.escape(str(value))
                )
                cells.append(f"<td class='num'>{text}</td>")
                continue
            cls = "num bad" if _kpi_breach(key, number, summary) else "num"
            cells.append(f"<td class='{cls}'>{_fmt(number, kind)}</td>")
        out.append(f"<tr><th>{html.escape(label)} [{html.escape(unit)}]</th>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _period_text(run: _Run) -> str:
    s = run.summary
    rounds = run.market.rounds
    start = pd.Timestamp(s["start"]) if s.get("start") else rounds["time"].iloc[0]
    end = pd.Timestamp(s["end"]) if s.get("end") else None
    n = int(s.get("rounds") or len(rounds))
    res = run.resolution_min
    res_text = f" of {res:g} min" if math.isfinite(res) else ""
    end_text = f" to {end:%Y-%m-%d %H:%M}" if end is not None else ""
    days = f", {(end - start) / pd.Timedelta(days=1):g} days" if end is not None else ""
    return f"{start:%Y-%m-%d %H:%M}{end_text} ({n:,d} rounds{res_text}{days})"


def _facts_html(run: _Run) -> str:
    s = run.summary
    esc = html.escape
    items = [
        ("Network", esc(str(s.get("network", _MISSING)))),
        ("Mode", esc(str(s.get("mode", _MISSING)))),
        ("Period", esc(_period_text(run))),
        ("Market mechanism", esc(str(s.get("mechanism", _MISSING)))),
        ("Prosumers", esc(str(s.get("n_prosumers", _MISSING)))),
        (
            "Limits",
            esc(
                f"voltage {_fmt(_as_float(s.get('v_min_pu')))}–"
                f"{_fmt(_as_float(s.get('v_max_pu')))} pu, branch loading "
                f"{_fmt(_as_float(s.get('max_loading_pct')))} %"
            ),
        ),
        ("Currency", esc(run.currency)),
    ]
    rounds = run.market.rounds
    if "status" in rounds.columns:
        bad = rounds.loc[rounds["status"].astype(str) != "ok", "status"].astype(str)
        if bad.empty:
            items.append(("Round status", "all rounds ok"))
        else:
            counts = bad.value_counts()
            reasons = ", ".join(f"{esc(r)}: {c:,d}" for r, c in counts.head(5).items())
            items.append(
                (
                    "Round status",
                    f"<b>{len(bad):,d} {'round' if len(bad) == 1 else 'rounds'} not ok</b> ({reasons})",
                )
            )
    timing = s.get("timing") if isinstance(s.get("timing"), dict) else {}
    if timing:
        items.append(
            (
                "Timing",
                esc(
                    f"median round {_fmt(_as_float(timing.get('median_round_ms')))} ms "
                    f"(clearing {_fmt(_as_float(timing.get('median_clear_ms')))} ms, power flow "
                    f"{_fmt(_as_float(timing.get('median_pf_ms')))} ms), wall time "
                    f"{_fmt(_as_float(timing.get('wall_s')))} s"
                ),
            )
        )
    if s.get("ledger_head"):
        items.append(("Ledger head", f"<code>{esc(str(s['ledger_head']))}</code>"))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
    return f"<table class='facts'>{rows}</table>"


def _how_to_read(run: _Run) -> str:
    s = run.summary
    grid = run.grid_name
    mech = html.escape(str(s.get("mechanism", "")))
    mech_text = f" (mechanism: {mech})" if mech else ""
    tb = run.timebase
    if tb.freq is None:
        agg = "Time series show every round."
    else:
        agg = (
            f"The run has {len(run.market.rounds):,d} rounds, too many to draw one by one: "
            f"time series show one point per {tb.unit} — energies as totals over the "
            f"{tb.unit}, voltages and loadings as the lowest and highest value in it."
        )
    return (
        "<p>This report compares four simulations of the same scenario over the same period: "
        "P2P trading or not, crossed with network feedback or not. "
        f"<b>P2P + feedback</b> is the main run: prosumers trade energy with each other in a "
        f"local market{mech_text}; after every round an AC power flow checks bus voltages and "
        "line and transformer loadings, and any violation is fed back into the market as limits "
        "and network charges until the round is feasible — what still violates is curtailed. "
        "<b>P2P, no feedback</b> is the same market without that feedback: it shows what the "
        "market alone would do to the network. "
        f"<b>No P2P (baseline)</b> has every prosumer trade only with the {grid}, with the same "
        "feedback; <b>No P2P, no feedback</b> shows what the PV and the loads alone do to the "
        "network. Comparing the columns with and without P2P separates the effect of the "
        "market from that of the PV.</p>"
        "<p>Bills are positive when a prosumer pays. Voltages are per unit (pu) of the nominal "
        "voltage; loadings are in % of the rating. Cells shaded red in the table mark a "
        "limit exceeded, a violation, shed load or failed rounds. "
        f"{agg} A dash (–) means the value was not recorded.</p>"
    )


#: Rows of the flexible-assets table: (summary.json storage key, label, unit, format).
_STORAGE_ROWS = (
    ("battery_charged_kwh", "Home batteries charged", "kWh", "energy"),
    ("battery_discharged_kwh", "Home batteries discharged", "kWh", "energy"),
    ("ev_charged_kwh", "EVs charged", "kWh", "energy"),
    ("ev_discharged_kwh", "EVs discharged (vehicle-to-grid)", "kWh", "energy"),
    ("shiftable_kwh", "Shiftable loads", "kWh", "energy"),
    ("storage_losses_kwh", "Conversion losses", "kWh", "energy"),
    ("ev_sessions_ended", "EV sessions ended in the run", "count", "count"),
    ("ev_sessions_served", "EV sessions served by departure", "count", "count"),
    ("ev_infeasible_requests", "EV requests no charger could meet", "count", "count"),
    ("ev_shortfall_kwh", "Energy EVs missed at departure", "kWh", "energy"),
    ("dayahead_solves", "Day-ahead schedules solved", "count", "count"),
    ("dayahead_failed", "Day-ahead schedules failed", "count", "count"),
    ("dayahead_iterations_max", "Most decomposition iterations in a day", "count", "count"),
    ("dayahead_bound_gap_max", "Largest certified gap to the central optimum", "share", "plain"),
)


def _storage_html(run: _Run) -> str:
    """The flexible assets' key figures (summary.json ``storage``), if the run has any."""
    data = run.summary.get("storage")
    if not isinstance(data, dict) or not data:
        return ""
    rows = []
    for key, label, unit, kind in _STORAGE_ROWS:
        value = _as_float(data.get(key))
        if value is None:
            continue
        bad = key in ("ev_infeasible_requests", "ev_shortfall_kwh", "dayahead_failed") and value > 0
        cls = "num bad" if bad else "num"
        rows.append(f"<tr><th>{html.escape(label)} [{unit}]</th><td class='{cls}'>{_fmt(value, kind)}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Flexible assets</h2><p>Main run (P2P + feedback); EVs still plugged in when the run ends "
            "are counted with what they had received by then.</p><table class='kpi'><tbody>"
            + "".join(rows) + "</tbody></table>")


def _battery_auction_html(run: _Run) -> str:
    """The battery auction's days (battery_auction.parquet, `cosim.flex.battery_auction.AUCTION_COLUMNS`),
    if the run has them: per day, who shared and who won how much capacity, at what price,
    for what rent; and the biggest winners of the run."""
    path = run.run_dir / "battery_auction.parquet"
    if not path.is_file():
        return ""
    days = pd.read_parquet(path)
    if days.empty:
        return ""
    esc = html.escape
    cur = esc(run.currency)
    rows = []
    for day, d in days.groupby("day", sort=True):
        owners, facilities = d[d.role == "owner"], d[d.role == "facility"]
        sharing, winners = owners[owners.quantity_kwh > 0], facilities[facilities.quantity_kwh > 0]
        price = d.price_per_kwh.iloc[0]
        rows.append(
            f"<tr><td>{int(day)}</td><td>{esc(str(pd.Timestamp(d.time.iloc[0])))}</td>"
            f"<td class='num'>{d.hours.iloc[0]:g}</td>"
            f"<td class='num'>{len(sharing)} of {len(owners)}</td><td class='num'>{len(winners)} of {len(facilities)}</td>"
            f"<td class='num'>{owners.offered_kwh.sum():,.1f}</td><td class='num'>{facilities.offered_kwh.sum():,.1f}</td>"
            f"<td class='num'>{sharing.quantity_kwh.sum():,.2f}</td>"
            f"<td class='num'>{'–' if pd.isna(price) else f'{price:.4f}'}</td>"
            f"<td class='num'>{winners.payment.sum():,.2f}</td></tr>"
        )
    won = days[(days.role == "facility") & (days.quantity_kwh > 0)].groupby("id").agg(
        kwh=("quantity_kwh", "sum"), rent=("payment", "sum")).sort_values("kwh", ascending=False).head(5)
    top = ", ".join(f"{esc(str(i))} {r.kwh:.2f} kWh for {r.rent:.2f}" for i, r in won.iterrows())
    return (
        "<h2>Battery auction</h2><p>Main run (P2P + feedback). Each day the households with a battery offer "
        "the empty part of it and the PV owners without one bid for slices of it (cosim.flex.battery_auction, "
        f"after Tushar et al. 2016); winners pay the rent [{cur}] in the day's first round. Capacities in kWh, "
        f"prices in {cur}/kWh of capacity for the day.</p>"
        "<table class='kpi'><thead><tr><th>Day</th><th>Start</th><th>Hours</th><th>Owners sharing</th>"
        "<th>Winners</th><th>Offered</th><th>Asked</th><th>Shared</th><th>Price</th><th>Rent</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
        + (f"<p>Largest winners of the run: {top}. Every party's row is in battery_auction.parquet.</p>" if top else "")
    )


# ----------------------------------------------------------------------------- fairness

#: The fairness section's figure (figures/<name>.png), drawn when a variant curtailed or shed.
FAIRNESS_FIGURE = "fairness"
#: Rows of the fairness table: (key of `cosim.reporting.fairness.fairness_figures`, label, unit, format);
#: "{u}" is the unit of the normalised values.
_FAIRNESS_ROWS = (
    ("total_kwh", "Energy", "kWh", "energy"),
    ("affected", "Prosumers affected, of {n}", "count", "count"),
    ("mean", "Mean per prosumer", "{u}", "3f"),
    ("max", "Largest per prosumer", "{u}", "3f"),
    ("jain_index", "Jain's index (1 = equal)", "-", "3f"),
    ("gini", "Gini coefficient (0 = equal)", "-", "3f"),
    ("largest_share", "Largest share of the energy", "%", "fraction"),
)


def _fairness_tables(run: _Run, problems: list[str]) -> dict[str, pd.DataFrame]:
    """Per variant with a settlement that has the needed columns: `cosim.reporting.fairness.per_prosumer`.
    Tables without them go to ``problems``; none at all without prosumers.parquet."""
    from cosim.reporting.fairness import (
        FAIRNESS_PROSUMER_COLUMNS,
        FAIRNESS_SETTLEMENT_COLUMNS,
        per_prosumer,
    )

    path = run.run_dir / "prosumers.parquet"
    if not path.is_file():
        return {}
    prosumers = _read_table(path, FAIRNESS_PROSUMER_COLUMNS, (), problems)
    out: dict[str, pd.DataFrame] = {}
    for key, sub, _ in _VARIANTS:
        if key not in run.variants:
            continue
        folder = run.run_dir if sub is None else run.run_dir / sub
        settlement_path = folder / "settlement.parquet"
        if prosumers is None or not settlement_path.is_file():
            continue
        settlement = _read_table(settlement_path, FAIRNESS_SETTLEMENT_COLUMNS, (), problems)
        if settlement is not None:
            out[key] = per_prosumer(settlement, prosumers)
    return out


def _curtailment_rule(run: _Run) -> str | None:
    """The scenario's feedback.curtailment_rule, from the resolved scenario.yaml if any."""
    path = run.run_dir / "scenario.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return str(data["feedback"]["curtailment_rule"])
    except Exception:  # noqa: BLE001 - an older or hand-made run: the rule is just not named
        return None


def _fig_fairness(tables: dict[str, pd.DataFrame], labels: dict[str, str], path: pathlib.Path,
                  shed: bool) -> None:
    """Curtailment per kWp of each PV owner, sorted (one line per variant), and the same
    for shedding per kWh of load when a variant shed."""
    with plt.rc_context({"font.size": 9.5, "axes.titlesize": "medium"}):
        fig, axes = _subplots(2 if shed else 1, 6.0 if shed else 3.6, sharex=False)
        panels = [("curtailed_kwh_per_kwp", 1.0, "curtailed energy per kWp [kWh/kWp]",
                   "PV owners, most curtailed first [rank]", "Curtailment per kWp of PV, per PV owner")]
        if shed:
            panels.append(("shed_kwh_per_kwh_load", 100.0, "shed energy per load [% of kWh]",
                           "prosumers, most shed first [rank]", "Load shed per kWh of load, per prosumer"))
        for ax, (col, scale, ylabel, xlabel, title) in zip(axes, panels, strict=True):
            for key, table in tables.items():
                values = np.sort(table[col].dropna().to_numpy(float))[::-1] * scale
                if not len(values) or not values.any():
                    continue
                rank = np.arange(1, len(values) + 1)
                if key == "market":
                    ax.bar(rank, values, width=1.0, color=_COLOURS.get(key, "tab:blue"), alpha=0.55,
                           label=labels[key])
                else:
                    ax.step(rank, values, where="mid", color=_COLOURS.get(key, "tab:grey"), lw=1.3,
                            label=labels[key])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.set_xlim(0.5, None)
            ax.grid(alpha=0.3)
        _legend_below(fig, axes)
        _save(fig, path)


def _fairness_section(run: _Run) -> str:
    """Who carried the curtailment and the shedding: a table of `cosim.reporting.fairness` figures per
    variant and a figure (figures/fairness.png, drawn here). Empty when the run folder
    lacks prosumers.parquet or the settlement's load column; a sentence when nothing was
    curtailed or shed."""
    from cosim.reporting.fairness import fairness_figures

    problems: list[str] = []
    tables = _fairness_tables(run, problems)
    fig_path = run.run_dir / "figures" / f"{FAIRNESS_FIGURE}.png"
    if not tables:
        fig_path.unlink(missing_ok=True)
        if problems:
            return ("<h2>Fairness of curtailment and shedding</h2><p>Left out: "
                    + html.escape("; ".join(problems)) + ".</p>")
        return ""
    labels = {key: label for key, _, label in _VARIANTS}
    figures = {
        key: {
            "curtailment": fairness_figures(t["curtailed_kwh"], t["curtailed_kwh_per_kwp"].dropna()),
            "shedding": fairness_figures(t["shed_kwh"], t["shed_kwh_per_kwh_load"].dropna()),
        }
        for key, t in tables.items()
    }
    rule = _curtailment_rule(run)
    rule_text = f" under the curtailment rule <code>{html.escape(rule)}</code>" if rule else ""
    head = (
        "<h2>Fairness of curtailment and shedding</h2>"
        f"<p>Who carried the curtailed PV and the shed load{rule_text}. Curtailment is compared "
        "per kWp of PV over every PV owner, shedding per kWh of load over every prosumer with load, "
        "curtailed (shed) or not. Jain's index (Jain, Chiu and Hawe 1984) is 1 when all carry the "
        "same and 1/n when one carries everything; the Gini coefficient is 0 when all carry the "
        "same and 1 − 1/n when one does; the largest share is the largest single prosumer's part of "
        "the energy.</p>"
    )
    parts = [head]
    drew_any = False
    for part, unit in (("curtailment", "kWh/kWp"), ("shedding", "kWh/kWh of load")):
        keys = [k for k in figures if figures[k][part]["total_kwh"] > 0]
        if not keys:
            parts.append(f"<p>No variant had any {part}.</p>")
            continue
        drew_any = True
        title = "Curtailed PV" if part == "curtailment" else "Shed load"
        cols = "".join(f"<th>{html.escape(labels[k])}</th>" for k in keys)
        rows = [f"<table class='kpi'><thead><tr><th>{title} [unit]</th>{cols}</tr></thead><tbody>"]
        for key, label, row_unit, kind in _FAIRNESS_ROWS:
            n = figures[keys[0]][part]["population"]
            cells = []
            for k in keys:
                value = figures[k][part][key]
                if value is None:
                    text = _MISSING
                else:
                    text = f"{float(value):.3f}" if kind == "3f" else _fmt(float(value), kind)
                if key == "largest_share" and figures[k][part]["largest_party"]:
                    text += f" ({html.escape(figures[k][part]['largest_party'])})"
                cells.append(f"<td class='num'>{text}</td>")
            name = html.escape(label.format(n=n))
            rows.append(f"<tr><th>{name} [{html.escape(row_unit.format(u=unit))}]</th>{''.join(cells)}</tr>")
        rows.append("</tbody></table>")
        parts.append("".join(rows))
    if not drew_any:
        fig_path.unlink(missing_ok=True)
        return "".join(parts)
    shed = any(figures[k]["shedding"]["total_kwh"] > 0 for k in figures)
    _fig_fairness(tables, labels, fig_path, shed)
    parts.append(
        f"<figure id='{FAIRNESS_FIGURE}'><img src='figures/{FAIRNESS_FIGURE}.png' "
        "alt='Curtailment per kWp per PV owner, sorted'><figcaption><b>Curtailment per kWp of PV "
        "per PV owner, most curtailed first.</b> Bars: the main run; lines: the other variants that "
        "curtailed. A flat profile is an equal share; a few tall bars mean a few owners carry it."
        + (" The lower panel shows the shed load per kWh of each prosumer's load." if shed else "")
        + "</figcaption></figure>"
    )
    return "".join(parts)


def _html(run: _Run, captions: dict[str, str]) -> str:
    s = run.summary
    esc = html.escape
    scenario = esc(str(s.get("scenario") or run.run_dir.name))
    title = (
        f"{scenario} — {esc(str(s.get('network', '')))}, {esc(str(s.get('mode', '')))}, "
        f"{esc(_period_text(run))}"
    )
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>P2P co-simulation report: {scenario}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>P2P energy trading on the network: {scenario}</h1>",
        f"<p class='facts'>{title}</p>",
        "<h2>How to read this report</h2>",
        _how_to_read(run),
        "<h2>The run</h2>",
        _facts_html(run),
    ]
    if run.notes:
        parts.append(
            "<div class='notes'><b>Notes</b><ul>"
            + "".join(f"<li>{esc(n)}</li>" for n in run.notes)
            + "</ul></div>"
        )
    parts += ["<h2>Key figures</h2>", _market_effect_html(run), _kpi_table(run), _storage_html(run),
              _battery_auction_html(run), _fairness_section(run), "<h2>Figures</h2>"]
    for i, (name, caption) in enumerate(captions.items(), start=1):
        heading = _FIGURE_TITLES[name].format(grid=run.grid_name)
        parts.append(
            f"<figure id='{name}'><img src='figures/{name}.png' alt='{esc(heading)}'>"
            f"<figcaption><b>Figure {i}. {esc(heading)}.</b> {esc(caption)}</figcaption></figure>"
        )
    parts.append(
        f"<p class='small'>Drawn by cosim.reporting.report from the files in "
        f"{esc(run.run_dir.name)}/.</p></body></html>"
    )
    return "\n".join(parts)


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ public


def write_report(run_dir: str | pathlib.Path) -> pathlib.Path:
    """(Re)draw the report of a finished run.

    Reads only the files of the run folder, writes ``run_dir/figures/<name>.png`` (see
    ``FIGURES``; ``grid_forming`` only in islanded runs; ``STORAGE_FIGURES`` only when
    the run has ``storage.parquet``) and ``run_dir/report.html``, a single page that
    references the figures by relative path.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        Folder of a finished run: ``summary.json``, ``rounds.parquet``, ``trades.parquet``,
        ``settlement.parquet``, ``buses.parquet``, ``branches.parquet``,
        ``grid_buses.parquet``, ``grid_branches.parquet`` and optionally the variant
        folders ``no_feedback/`` and ``baseline/``. Missing optional files and folders
        leave out the parts that need them and are listed in the report's notes.

    Returns
    -------
    pathlib.Path
        Path of the written ``report.html``.

    Raises
    ------
    cosim.config.errors.InputError
        If ``summary.json`` or ``rounds.parquet`` is missing or unreadable, or a table lacks
        a column the report needs; lists every problem found. Nothing is written.

    Examples
    --------
    >>> from cosim.reporting.report import write_report
    >>> write_report("results/rural3-summer-pv")  # doctest: +SKIP
    PosixPath('results/rural3-summer-pv/report.html')
    """
    run_dir = pathlib.Path(run_dir)
    run = _load_run(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    captions: dict[str, str] = {}
    with plt.rc_context({"font.size": 9.5, "axes.titlesize": "medium"}):
        for name in _figures_for(run):
            captions[name] = _FIGURE_FUNCS[name](run, fig_dir / f"{name}.png")
    out = run_dir / "report.html"
    _write_text_atomic(out, _html(run, captions))
    return out
