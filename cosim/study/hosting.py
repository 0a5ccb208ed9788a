"""Stochastic hosting capacity: for each seed and setting, the largest penetration at
which the limits hold over the whole period, found by bisection on the study's grid of
penetrations (not a blind grid: about log2(levels) runs per search).

The limits (`cosim.study.spec.Limits`): every LV bus inside the voltage band, every line
and the transformer within the loading limit, every round's power flow converged,
optionally the voltage rise against the same seed's run without PV (VDE-AR-N 4105), and,
for the settings with feedback, the curtailed energy within a share of the PV energy and
the shed energy within a share of the load.
The search assumes that a run within the limits at one penetration is within them at
every lower one (the fleet's draws are nested: `cosim.physical.fleet.build_fleet` picks
the PV households as the first of one seeded permutation); the tests check that
assumption against a brute-force sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.study.metrics import LV_MAX_KV, variant_folder

#: Figures of the run at the hosting capacity that hosting.parquet carries per search, as
#: ``<figure>_at_capacity`` [kWh; currency]: what holding the limits cost there.
AT_CAPACITY = ("curtailed_kwh", "dso_flexibility_cost")


def check_limits(run_dir: str | Path, limits: dict, reference_dir: str | Path | None = None) -> dict:
    """Whether a finished run kept the limits, and which limit broke first and where.

    Returns ``within_limits`` (bool), and for a run that broke one: ``first_limit``
    (``voltage_high``, ``voltage_low``, ``line_loading``, ``trafo_loading``,
    ``power_flow``, ``voltage_rise``, or ``curtailment`` / ``shedding`` when only the
    period's total broke), ``first_element`` (the bus or branch name) and ``first_time`` (the round's
    start, local time).
    """
    import json

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    variant = next(iter(summary["variants"]))
    folder = variant_folder(run_dir, variant)
    buses = pd.read_parquet(folder / "buses.parquet", columns=["round", "bus", "vm_pu"])
    branches = pd.read_parquet(folder / "branches.parquet", columns=["round", "branch", "kind", "loading_pct"])
    rounds = pd.read_parquet(folder / "rounds.parquet", columns=["round", "time", "pf_converged"])
    grid_buses = pd.read_parquet(run_dir / "grid_buses.parquet")
    grid_branches = pd.read_parquet(run_dir / "grid_branches.parquet", columns=["branch", "kind", "name"])
    bus_name = grid_buses.set_index("bus").name
    lv = set(grid_buses.bus[grid_buses.vn_kv < LV_MAX_KV])
    buses = buses[buses.bus.isin(lv)]
    breaches = []  # (round, limit, element)
    for mask, kind in ((buses.vm_pu > limits["v_max_pu"], "voltage_high"),
                       (buses.vm_pu < limits["v_min_pu"], "voltage_low")):
        hit = buses[mask]
        if len(hit):
            first = hit.iloc[0]
            breaches.append((int(first["round"]), kind, str(bus_name.loc[int(first.bus)])))
    over = branches[branches.loading_pct > limits["max_loading_pct"]]
    for kind in ("line", "trafo"):
        hit = over[over.kind == kind]
        if len(hit):
            first = hit.iloc[0]
            name = grid_branches.name[(grid_branches.kind == kind) & (grid_branches.branch == int(first.branch))]
            breaches.append((int(first["round"]), f"{kind}_loading", str(name.iloc[0])))
    failed = rounds[~rounds.pf_converged.astype(bool)]
    if len(failed):
        breaches.append((int(failed["round"].iloc[0]), "power_flow", "feeder"))
    rise_pct = limits.get("voltage_rise_pct")
    if rise_pct is not None and reference_dir is not None:
        ref = pd.read_parquet(variant_folder(Path(reference_dir), "baseline_no_feedback") / "buses.parquet",
                              columns=["round", "bus", "vm_pu"])
        joined = buses.merge(ref, on=["round", "bus"], suffixes=("", "_ref"))
        hit = joined[(joined.vm_pu - joined.vm_pu_ref) * 100.0 > rise_pct]
        if len(hit):
            first = hit.iloc[0]
            breaches.append((int(first["round"]), "voltage_rise", str(bus_name.loc[int(first.bus)])))
    if breaches:
        r, kind, element = min(breaches)
        time = pd.Timestamp(rounds.time[rounds["round"] == r].iloc[0]).isoformat()
        return {"within_limits": False, "first_limit": kind, "first_element": element, "first_time": time}
    k = summary["variants"][variant]
    pv_kwh = summary["pv_kwh"]
    if pv_kwh > 0 and k["curtailed_kwh"] > limits["max_curtailment_share"] * pv_kwh + 1e-9:
        return {"within_limits": False, "first_limit": "curtailment", "first_element": "feeder", "first_time": None}
    if k["shed_kwh"] > limits["max_shed_share"] * summary["load_kwh"] + 1e-9:
        return {"within_limits": False, "first_limit": "shedding", "first_element": "feeder", "first_time": None}
    return {"within_limits": True, "first_limit": None, "first_element": None, "first_time": None}


@dataclass
class Search:
    """Bisection for the largest level within the limits on a grid of `levels`.

    The invariant: every level at or below ``lo`` is within the limits (``lo = -1``: none
    known), every level at or above ``hi`` breaks them (``hi = len(levels)``: none known).

    >>> s = Search(levels=[0.0, 0.25, 0.5, 0.75, 1.0])
    >>> while (i := s.next_index()) is not None:
    ...     s.record(i, s.levels[i] <= 0.6, {"first_limit": "voltage_high"}, f"run{i}")
    >>> s.hosting_capacity, s.censored, s.first_limit, len(s.tried)
    (0.5, False, 'voltage_high', 2)
    """

    levels: list[float]
    lo: int = -1
    hi: int = -1
    tried: dict[int, tuple[bool, dict, str]] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        if self.hi < 0:
            self.hi = len(self.levels)

    def next_index(self) -> int | None:
        """The level to try next; None when the search is done (or failed)."""
        if self.error is not None or self.hi - self.lo <= 1:
            return None
        return (self.lo + self.hi) // 2

    def record(self, index: int, within: bool, check: dict, run_id: str) -> None:
        self.tried[index] = (within, check, run_id)
        if within:
            self.lo = max(self.lo, index)
        else:
            self.hi = min(self.hi, index)

    @property
    def hosting_capacity(self) -> float | None:
        """The largest level within the limits (None: even the lowest breaks them)."""
        return self.levels[self.lo] if self.lo >= 0 else None

    @property
    def censored(self) -> bool:
        """True when the highest level searched is within the limits (the capacity is at least that)."""
        return self.lo == len(self.levels) - 1

    @property
    def first_limit(self) -> str | None:
        return self.tried[self.hi][1].get("first_limit") if self.hi in self.tried else None

    @property
    def first_element(self) -> str | None:
        return self.tried[self.hi][1].get("first_element") if self.hi in self.tried else None

    def at_capacity(self, figure: str) -> float:
        """A figure of the run at the hosting capacity (NaN when no level was within the limits)."""
        value = self.tried[self.lo][1].get(figure) if self.lo in self.tried else None
        return float(value) if value is not None else np.nan


def quantiles(values: pd.Series) -> dict:
    """P5, P50, P95 of the capacities over seeds (linear interpolation); searches where even
    the lowest level broke the limits count as the lowest level."""
    v = values.dropna().to_numpy(float)
    if not len(v):
        return {"p5": np.nan, "p50": np.nan, "p95": np.nan}
    return {f"p{q}": float(np.percentile(v, q)) for q in (5, 50, 95)}


def summarize(searches: pd.DataFrame, group_columns: list[str]) -> pd.DataFrame:
    """The table a DSO pastes into a planning document: per setting (and axis values) the
    number of seeds, P5/P50/P95 of the hosting capacity, the share of censored searches,
    the limit that broke first most often with its share, and the medians over seeds of
    the curtailed energy and of the DSO's flexibility cost at the hosting capacity."""
    rows = []
    for key, g in searches.groupby(group_columns, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[g.status == "ok"]
        limit = ok.first_limit.dropna()
        top = limit.value_counts()
        element = ok.first_element[ok.first_limit == (top.index[0] if len(top) else None)].value_counts()
        ok = ok.rename(columns={f"{c}_at_capacity": c for c in AT_CAPACITY})
        rows.append({
            **dict(zip(group_columns, key, strict=True)),
            "seeds": int(len(ok)),
            "failed": int((g.status != "ok").sum()),
            **quantiles(ok.hosting_capacity.fillna(ok.level_low)),
            "censored_share": float(ok.censored.mean()) if len(ok) else np.nan,
            "first_limit": top.index[0] if len(top) else None,
            "first_limit_share": float(top.iloc[0] / len(ok)) if len(top) else np.nan,
            "first_element": element.index[0] if len(element) else None,
            **{f"{c}_p50": float(ok[c].median()) if c in ok and ok[c].notna().any() else np.nan
               for c in AT_CAPACITY},
        })
    return pd.DataFrame(rows)
