"""Loading a run folder for the report: read only the columns it draws, check every file
first and report all problems at once, then reduce the tables to what the figures need.

The report reads only the files of a run folder (see "Results of a run" in the design)
and never imports the market or the grid stages.
"""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cosim.config.errors import InputError
from cosim.reporting.report.aggregate import TimeBase, time_base
from cosim.reporting.report.numbers import as_float

__all__ = [
    "GRID_PARTIES",
    "NON_PROSUMERS",
    "VARIANTS",
    "Variant",
    "Run",
    "read_table",
    "load_run",
    "curtailment_rule",
]

#: Parties that stand for the outside grid (or the islanded grid-forming unit).
GRID_PARTIES = frozenset({"grid", "grid_forming"})
#: Parties that are not prosumers.
NON_PROSUMERS = GRID_PARTIES | {"dso", "market_operator"}

#: Variants: key in summary.json "variants", subfolder (None = the run folder), label.
VARIANTS = (
    ("market", None, "P2P + feedback"),
    ("market_no_feedback", "no_feedback", "P2P, no feedback"),
    ("baseline", "baseline", "No P2P (baseline)"),
    ("baseline_no_feedback", "baseline_no_feedback", "No P2P, no feedback"),
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
ROUNDS_OPTIONAL_COLUMNS = ("network_charges", "status", "violations", "gfu_soc", "gfu_p_kw",
                           # a three-phase run's (cosim.reporting.report.figures.phases.PHASE_COLUMNS)
                           *(f"vm_{ph}_{end}_pu" for ph in "abc" for end in ("min", "max")), "vuf_max_pct",
                           "vm_min_balanced_pu", "vm_max_balanced_pu")
TRADES_COLUMNS = ("seller", "buyer", "energy_kwh")
SETTLEMENT_COLUMNS = ("round", "party", "bus", "bill")
BUSES_COLUMNS = ("bus", "vm_pu")
BRANCHES_COLUMNS = ("branch", "kind", "loading_pct")
GRID_BUSES_COLUMNS = ("bus", "x", "y")
GRID_BRANCHES_COLUMNS = ("branch", "kind", "from_bus", "to_bus")
#: Columns the report needs from storage.parquet.
STORAGE_COLUMNS = ("round", "asset", "power_kw", "scheduled_kw", "energy_kwh", "soc", "plugged")


@dataclass
class Variant:
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


@dataclass
class Run:
    """A run folder as the report sees it: its summary, its variants reduced, the network
    geometry, the time base of its series and the notes on what was not recorded."""

    run_dir: pathlib.Path
    summary: dict
    variants: dict[str, Variant]
    grid_buses: pd.DataFrame | None
    grid_branches: pd.DataFrame | None
    timebase: TimeBase
    notes: list[str] = field(default_factory=list)
    #: per round of the main variant: flexible assets aggregated (`_reduce_storage`)
    storage: pd.DataFrame | None = None

    @property
    def currency(self) -> str:
        """Currency of bills and prices, as summary.json names it."""
        return str(self.summary.get("currency") or "currency")

    @property
    def islanded(self) -> bool:
        """True when a grid-forming unit, not the outside grid, balanced the network."""
        return str(self.summary.get("mode", "")).lower() == "islanded"

    @property
    def grid_name(self) -> str:
        """How the report names the party at the slack bus."""
        return "grid-forming unit" if self.islanded else "grid"

    @property
    def market(self) -> Variant:
        """The main variant, P2P + feedback (always recorded)."""
        return self.variants["market"]

    def variant(self, key: str) -> Variant | None:
        """The variant if its rounds table was recorded, else None."""
        v = self.variants.get(key)
        return v if v is not None and v.rounds is not None else None

    @property
    def resolution_min(self) -> float:
        """Length of a round [min]: from summary.json, else the median step of the rounds'
        times; NaN for a single round without it."""
        res = as_float(self.summary.get("resolution_min"))
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


def read_table(
    path: pathlib.Path,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    problems: list[str],
    name: str | None = None,
) -> pd.DataFrame | None:
    """Read the needed columns of a parquet file, or record why it cannot be read.

    Parameters
    ----------
    path : pathlib.Path
        The parquet file.
    required : tuple of str
        Columns that must be there.
    optional : tuple of str
        Columns read when they are there.
    problems : list of str
        Where a problem is appended (unreadable file, missing columns); the caller raises
        them together.
    name : str, optional
        How problems refer to the file (default: its file name).

    Returns
    -------
    pandas.DataFrame or None
        The required and the present optional columns; None after a problem.
    """
    name = name or path.name
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as exc:  # one problem line, keep collecting
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
) -> tuple[Variant, list[str]]:
    """Read a variant's tables, reduced; returns the variant and its missing files.

    ``prefix`` is the variant's folder as problems name it (``""`` or ``"baseline/"``).
    Problems with files that exist go to ``problems``.
    """
    v = Variant(key=key, label=label)
    missing: list[str] = []

    def read(name: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
        path = folder / name
        if not path.is_file():
            missing.append(prefix + name)
            return None
        return read_table(path, required, optional, problems, name=prefix + name)

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


def load_run(run_dir: pathlib.Path) -> Run:
    """Read and check a run folder.

    Parameters
    ----------
    run_dir : pathlib.Path
        Folder of a finished run (see `cosim.reporting.report.write_report`).

    Returns
    -------
    Run
        The run, its variants reduced; ``notes`` name the optional files and variant
        folders that were not recorded.

    Raises
    ------
    cosim.config.errors.InputError
        If the folder, ``summary.json`` or ``rounds.parquet`` is missing or unreadable,
        or a table lacks a column the report needs; lists every problem found.
    """
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
    variants: dict[str, Variant] = {}
    for key, sub, label in VARIANTS:
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
        table = read_table(path, cols, ("name", "vn_kv"), problems)
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
        table = read_table(run_dir / "storage.parquet", STORAGE_COLUMNS, (), problems)
        if problems:
            raise InputError(run_dir, problems)
        storage = _reduce_storage(table, rounds)
    return Run(
        run_dir=run_dir,
        summary=summary,
        variants=variants,
        grid_buses=grid_buses,
        grid_branches=grid_branches,
        timebase=time_base(rounds["time"]),
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



def curtailment_rule(run_dir: pathlib.Path) -> str | None:
    """The run's feedback.curtailment_rule, from its resolved scenario.yaml.

    Parameters
    ----------
    run_dir : pathlib.Path
        Folder of a finished run.

    Returns
    -------
    str or None
        The rule's name; None when the folder has no scenario.yaml or it names no rule
        (an older or hand-made run).
    """
    try:
        data = yaml.safe_load((run_dir / "scenario.yaml").read_text(encoding="utf-8"))
        return str(data["feedback"]["curtailment_rule"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
