"""The study's runs on Dask (`dask.distributed`).

By default an embedded `LocalCluster` with one single-threaded worker process per core;
``scheduler="tcp://host:port"`` sends the same runs to an existing cluster (its workers
need cosim installed and the same file system, see docs/studies.md). Each run is one task
(`execute`) that simulates its scenario with `cosim.sim.loop.run_scenario` into its own
folder ``runs/<run id>/`` (written atomically, as `cosim run` does) and then writes the
run's figures to ``runs/<run id>/metrics.json`` (atomically, last): a run is finished
exactly when that file exists. ``resume`` skips finished runs. A worker that dies
mid-run loses no finished run, and the scheduler runs its task again elsewhere; a run
that fails is recorded with its error and the study goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import yaml
from tqdm import tqdm

from cosim.config.errors import InputError
from cosim.study.expand import Run
from cosim.study.metrics import run_metrics

#: The file whose presence marks a finished run.
METRICS = "metrics.json"
#: The marker of a study's folder (a copy of the study file): only such a folder is replaced.
STUDY_FILE = "study.yaml"
#: Times the scheduler may lose a run's worker before the run counts as failed.
ALLOWED_FAILURES = 3


def execute(run_id: str, scenario: dict, values: dict, runs_dir: str, limits: dict, transformer: dict,
            check: bool, reference_dir: str | None = None) -> dict:
    """One run, on a worker: simulate, measure, write ``metrics.json``; never raises.

    Returns the run's row for ``runs.parquet``: ``run_id``, ``status`` (``ok`` or
    ``failed``), ``error``, ``path`` (the run's folder, relative to the study's), the sweep's `values`, the figures
    of `cosim.study.metrics.run_metrics` and, with `check`, those of
    `cosim.study.hosting.check_limits`.
    """
    from cosim.sim.loop import run_scenario
    from cosim.study.hosting import check_limits

    runs = Path(runs_dir)
    run_dir = runs / run_id
    row = {"run_id": run_id, "status": "ok", "error": None, "path": f"runs/{run_id}", **values}
    done = finished_row(run_dir)
    if done is not None:  # finished before its worker died, or by an earlier study
        return checked(done, runs, limits, reference_dir) if check else done
    scenario_file = runs / ".scenarios" / f"{run_id}.yaml"
    try:
        scenario_file.parent.mkdir(parents=True, exist_ok=True)
        scenario_file.write_text(yaml.safe_dump(scenario, sort_keys=False))
        # one process per run, its ledger included: a worker keeps one core busy
        run_scenario(scenario_file, out=run_dir, progress=False, report=False, ledger_process=False)
        row.update(run_metrics(run_dir, limits, transformer["ambient_c"], transformer["insulation"]))
        if check:
            row.update(check_limits(run_dir, limits, reference_dir))
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - a failed run is recorded, the study goes on
        detail = err.format() if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
        tail = "" if isinstance(err, InputError) else " | " + traceback.format_exc(limit=-2).strip().splitlines()[-3]
        return {**row, "status": "failed", "error": (detail + tail)[:2000], "path": None}
    tmp = run_dir / f".{METRICS}.tmp"
    tmp.write_text(json.dumps(row, default=_json_default))
    os.replace(tmp, run_dir / METRICS)
    return row


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def checked(row: dict, runs_dir: Path, limits: dict, reference_dir: str | None) -> dict:
    """A finished run's row with the limits checked: a run made first as a reference,
    without the check (the search's lowest level is the run without PV that the
    voltage-rise limit compares against), gets it now."""
    from cosim.study.hosting import check_limits

    if row.get("status") != "ok" or "within_limits" in row:
        return row
    return {**row, **check_limits(Path(runs_dir) / row["run_id"], limits, reference_dir)}


def finished_row(run_dir: Path) -> dict | None:
    """The row of a finished run (its metrics.json), None if it has not finished."""
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.is_file() else None


def make_client(scheduler: str | None, workers: int | None):
    """A Dask client: to `scheduler`, or to a new embedded LocalCluster of `workers`
    single-threaded processes (default: one per core). Workers must not be daemonic
    processes, since a run starts its ledger's process (`cosim.virtual.ledger_process`)."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.worker.daemon": False,
                     "distributed.scheduler.allowed-failures": ALLOWED_FAILURES})
    if scheduler is not None:
        try:
            return Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise InputError("--scheduler", [f"expected a Dask scheduler listening at {scheduler!r}, "
                                             f"found none ({err})"]) from None
    n = workers or os.cpu_count() or 1
    warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return Client(cluster)


class Driver:
    """Submits runs once each (by run id), calls back when each finishes, keeps the rows,
    and shows the progress bar (runs done, failed, left)."""

    def __init__(self, client, runs_dir: Path, limits: dict, transformer: dict, resume: bool,
                 total: int, progress: bool):
        from distributed import as_completed

        self.client, self.runs_dir, self.limits, self.transformer = client, runs_dir, limits, transformer
        self.resume = resume
        self.rows: dict[str, dict] = {}
        self.waiting: dict[str, list[Callable[[dict], None]]] = {}
        self.futures: dict[str, str] = {}
        self.completed = as_completed()
        self.bar = tqdm(total=total, desc="study", unit="run", disable=not progress)
        self.failed = 0

    def request(self, run: Run, callback: Callable[[dict], None] | None = None, check: bool = False,
                reference_dir: str | None = None) -> None:
        rid = run.run_id
        if rid in self.rows:
            if check:
                self.rows[rid] = checked(self.rows[rid], self.runs_dir, self.limits, reference_dir)
            if callback is not None:
                callback(self.rows[rid])
            return
        if callback is not None:
            self.waiting.setdefault(rid, []).append(callback)
        if rid in self.futures.values():
            return
        done = finished_row(self.runs_dir / rid) if self.resume else None
        if done is not None and check:
            done = checked(done, self.runs_dir, self.limits, reference_dir)
        if done is not None:
            self.futures[rid] = rid
            self._complete(rid, done)
            return
        future = self.client.submit(execute, rid, run.scenario, run.values, str(self.runs_dir), self.limits,
                                    self.transformer, check, reference_dir, key=f"cosim-run-{rid}", pure=False)
        self.futures[future.key] = rid
        self.completed.add(future)

    def _complete(self, rid: str, row: dict) -> None:
        self.rows[rid] = row
        self.failed += row["status"] != "ok"
        self.bar.update(1)
        self.bar.set_postfix(done=len(self.rows) - self.failed, failed=self.failed,
                             left=max(self.bar.total - len(self.rows), 0), refresh=False)
        for callback in self.waiting.pop(rid, []):
            callback(row)

    def run(self) -> dict[str, dict]:
        """Wait for every run, including those requested by the callbacks on the way."""
        for future in self.completed:
            rid = self.futures[future.key]
            try:
                row = future.result()
            except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: the run's workers kept dying
                row = {"run_id": rid, "status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                       "path": None}
            self._complete(rid, row)
            future.release()
        self.bar.close()
        return self.rows


def check_out(out: Path, resume: bool) -> None:
    """Refuse an output folder that holds anything but an earlier study (unless resuming)."""
    if out.exists() and not resume and not (out / STUDY_FILE).is_file() and any(out.iterdir()):
        raise InputError("--out", [f"expected a new folder, an empty one or an earlier study's, found "
                                   f"{str(out)!r} with other files in it"])


def partial_folder(out: Path) -> Path:
    """The hidden folder beside `out` a study writes into (``.<name>.partial``, as `cosim run`)."""
    return out.parent / f".{out.name}.partial"


def prepare_out(out: Path, study_text: str, resume: bool) -> Path:
    """The folder the study writes into: the hidden partial folder beside `out`, moved into
    place by `commit_out` when the study is complete, so that an interrupted study leaves no
    half-written `out`. An interruption keeps the partial folder with its finished runs;
    `resume` carries on in it (or in a finished study's `out`, moved back to partial).
    Without `resume` a partial folder left before is emptied; `out` is replaced only at the
    end, and only if it is an earlier study's folder or empty (`check_out`)."""
    check_out(out, resume)
    work = partial_folder(out)
    if resume and not work.is_dir() and out.is_dir():
        os.replace(out, work)
    if work.exists() and not resume:
        shutil.rmtree(work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    (work / STUDY_FILE).write_text(study_text)
    return work


def commit_out(work: Path, out: Path) -> Path:
    """Move the complete study folder `work` into place as `out` (replacing an earlier study's)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)
    return out
