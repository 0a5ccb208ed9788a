"""`cosim study`: a study file end to end, from its runs on Dask to ``runs.parquet``,
``hosting.parquet``, ``hosting_summary.csv`` and ``report.html`` in ``results/studies/<name>/``."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pandas as pd

from cosim.study.engine import Driver, check_out, commit_out, make_client, prepare_out
from cosim.study.expand import base_data, check_axes, hosting_groups, hosting_run, sweep_runs
from cosim.study.hosting import AT_CAPACITY, Search, summarize
from cosim.study.spec import Study, load_study

#: Columns of hosting.parquet, one row per search (seed, setting and axis values).
SEARCH_COLUMNS = ["setting", "hosting_capacity", "censored", "level_low", "level_high", "first_limit",
                  "first_element", "runs", "status", "error",
                  *(f"{c}_at_capacity" for c in AT_CAPACITY)]


def run_study(study_path: str | Path, out: str | Path | None = None, scheduler: str | None = None,
              workers: int | None = None, resume: bool = False, progress: bool = True,
              report: bool = True) -> Path:
    """Run a study file; returns its results folder (default ``results/studies/<name>``).

    The study writes into a hidden partial folder beside it, moved into place when complete
    (`cosim.study.engine.prepare_out`): an interrupted study (Ctrl-C, SIGTERM) leaves no
    half-written results folder, and ``resume=True`` carries on from its finished runs."""
    study_path = Path(study_path)
    study = load_study(study_path)
    base = base_data(study, study_path)
    if study.hosting_capacity is not None:
        check_axes(study, study_path, base)
        runs = None
    else:
        runs = sweep_runs(study, study_path, base)
    out = Path(out) if out is not None else Path("results") / "studies" / study.name
    limits = (study.hosting_capacity.limits.model_dump() if study.hosting_capacity is not None
              else {"v_min_pu": 0.90, "v_max_pu": 1.10, "max_loading_pct": 100.0})
    wall0 = time.perf_counter()
    check_out(out, resume)
    client = make_client(scheduler, workers)  # no scheduler at that address: nothing written
    try:
        work = prepare_out(out, study_path.read_text(), resume)
        runs_dir = work / "runs"
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        if runs is not None:
            driver = Driver(client, runs_dir.resolve(), limits, study.transformer.model_dump(), resume,
                            len(runs), progress)
            for run in runs:
                driver.request(run)
            rows = driver.run()
            searches = None
        else:
            rows, searches = _hosting(client, study, base, runs_dir.resolve(), limits, resume, progress)
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None and scheduler is None:
            cluster.close()
    wall_s = time.perf_counter() - wall0
    table = pd.DataFrame(list(rows.values()))
    order = [c for c in table.columns if c not in ("run_id", "status", "error", "path")]
    table = table.sort_values(["run_id"]).reset_index(drop=True)
    table = table[["run_id", "status", "error", "path", *order]]
    _write_parquet(table, work / "runs.parquet")
    info = {"study": study.name, "runs": len(table), "failed": int((table.status != "ok").sum()),
            "workers": n_workers, "wall_s": wall_s}
    if searches is not None:
        _write_parquet(searches, work / "hosting.parquet")
        group = ["setting", *study.axes, "period"]
        summarize(searches, group).to_csv(work / "hosting_summary.csv", index=False, float_format="%.6g")
    import json

    (work / "study.json").write_text(json.dumps(info, indent=2))
    if report:
        from cosim.study.report import write_study_report

        write_study_report(work)
    return commit_out(work, out)


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _hosting(client, study: Study, base: dict, runs_dir: Path, limits: dict, resume: bool,
             progress: bool) -> tuple[dict, pd.DataFrame]:
    """Every search (seed x setting x axis values x period) by bisection, the searches side
    by side on the cluster; returns the runs' rows and one row per search."""
    hc = study.hosting_capacity
    levels = hc.levels
    groups = hosting_groups(study, base)
    rise = hc.limits.voltage_rise_pct is not None
    per_search = math.ceil(math.log2(len(levels) + 1))
    total = len(groups) * (len(hc.settings) * per_search + rise)
    driver = Driver(client, runs_dir, limits, study.transformer.model_dump(), resume, total, progress)
    searches: list[tuple[dict, str, Search]] = []

    def advance(values: dict, period: dict, setting: str, search: Search, reference: str | None) -> None:
        i = search.next_index()
        if i is None:
            return
        run = hosting_run(base, study, values, period, setting, levels[i])

        def done(row: dict, i=i, run_id=run.run_id) -> None:
            if row["status"] != "ok":
                search.error = f"run {run_id} failed: {row['error']}"
                return
            search.record(i, bool(row["within_limits"]), row, run_id)
            advance(values, period, setting, search, reference)

        driver.request(run, done, check=True, reference_dir=reference)

    for values, period in groups:
        mine = [(values, period, s, Search(list(levels))) for s in hc.settings]
        searches += [(v, s, search) for v, _, s, search in mine]

        def start(ref_row: dict | None, mine=mine) -> None:
            reference = None
            if ref_row is not None:
                if ref_row["status"] != "ok":
                    for *_, search in mine:
                        search.error = f"reference run without PV failed: {ref_row['error']}"
                    return
                reference = str(runs_dir / ref_row["run_id"])
            for v, p, s, search in mine:
                advance(v, p, s, search, reference)

        if rise:
            driver.request(hosting_run(base, study, values, period, "passive", None), start)
        else:
            start(None)
    rows = driver.run()
    table = pd.DataFrame([{
        **values, "setting": setting, "hosting_capacity": s.hosting_capacity, "censored": s.censored,
        "level_low": levels[0], "level_high": levels[-1], "first_limit": s.first_limit,
        "first_element": s.first_element, "runs": len(s.tried), "status": "failed" if s.error else "ok",
        "error": s.error, **{f"{c}_at_capacity": s.at_capacity(c) for c in AT_CAPACITY}}
        for values, setting, s in searches])
    return rows, table
