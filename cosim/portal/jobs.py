"""Runs launched from the portal: each is a ``cosim run SCENARIO --out DIR`` process, the
same command and code as on the command line, so it writes the same results folder
(`cosim report` and `cosim ledger verify` work on it).

A monitor thread per run reads the progress bars the run writes to its log (one bar per
variant, ``name [variant]: 37%|...| 18/48``), stores the progress in the database,
and when the process ends records the outcome: the key figures of ``summary.json`` and
the verdict of `cosim.virtual.ledger.verify`. Cancelling sends SIGTERM, which `cosim run`
takes like Ctrl-C (no results folder is left). When the portal starts, runs still marked
``queued`` or ``running`` belong to a portal that stopped: they are marked failed and
their process, if it still runs, is stopped.

Studies go the same way (`StudyJobs`): ``cosim study STUDY --out DIR``, the same folder
as on the command line, its progress bar (``study: 37%|...| 3/8``) parsed from its log;
on success the figures of ``study.json``. A cancelled study leaves no results folder;
its hidden partial folder, which `cosim study --resume` would carry on from, is removed,
since the portal does not resume studies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select

from cosim.portal.db import ACTIVE_STATES, Run, Study, utcnow

#: Seconds between two looks at a running run's log [s].
POLL_S = 0.5
#: Seconds a cancelled run has to stop after SIGTERM before it is killed [s].
CANCEL_GRACE_S = 30.0
#: The last bar of a tqdm line: ``[variant]: NN%|...| done/total``.
_BAR = re.compile(r"\[([A-Za-z0-9_]+)\]:\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")
#: The bar of `cosim study`: ``study: NN%|...| done/total [..., done=D, failed=F, left=L]``.
_STUDY_BAR = re.compile(r"study:\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)([^\r\n]*)")
logger = logging.getLogger("cosim.portal")
RESTART_MESSAGE = "the portal stopped while this run was running; its process was stopped"


def parse_progress(log_text: str, variants: list[str]) -> tuple[float, str]:
    r"""Share of the run done [0..1] and a line saying where it is, from the end of its
    log; `variants` are the run's variants in the order it runs them.

    >>> parse_progress("s [market]: 100%|###| 8/8\rs [baseline]: 50%|#  | 4/8 [00:01]", ["market", "baseline"])
    (0.75, 'baseline: round 4 of 8 (variant 2 of 2)')
    """
    bars = [b for b in _BAR.findall(log_text) if b[0] in variants]
    if not bars:
        return 0.0, "starting"
    name, done, total = bars[-1]
    k, n = variants.index(name), len(variants)
    share = (k + int(done) / max(int(total), 1)) / n
    return min(share, 1.0), f"{name}: round {done} of {total} (variant {k + 1} of {n})"


def parse_study_progress(log_text: str) -> tuple[float, str]:
    r"""Share of a study's runs done [0..1] and a line saying where it is, from the end of
    its log (for a hosting-capacity study the total is the most runs the searches may need).

    >>> parse_study_progress("study:  25%|##   | 1/4 [00:03<00:09, done=1, failed=0, left=3]\rstudy:  50%|#  | 2/4 [00:05<00:05, done=1, failed=1, left=2]")
    (0.5, 'runs: 2 of 4 done (1 failed)')
    """
    bars = _STUDY_BAR.findall(log_text)
    if not bars:
        return 0.0, "starting"
    done, total, rest = bars[-1]
    failed = re.search(r"failed=(\d+)", rest)
    text = f"runs: {done} of {total} done" + (f" ({failed.group(1)} failed)" if failed else "")
    return min(int(done) / max(int(total), 1), 1.0), text


def key_figures(out: Path) -> dict:
    """The figures the run list shows, from ``summary.json``."""
    summary = json.loads((out / "summary.json").read_text())
    market = summary["variants"]["market"]
    bills = summary.get("prosumer_bills", {})
    base = sum(b.get("baseline", 0.0) for b in bills.values())
    paid = sum(b.get("market", 0.0) for b in bills.values())
    return {
        "rounds": summary["rounds"],
        "currency": summary["currency"],
        "mechanism": summary["mechanism"],
        "p2p_traded_kwh": market.get("p2p_traded_kwh"),
        "violation_rounds": market.get("violation_rounds"),
        "peak_trafo_loading_pct": market.get("peak_trafo_loading_pct"),
        "curtailed_kwh": market.get("curtailed_kwh"),
        "prosumer_savings": base - paid,
        "wall_s": summary["timing"].get("wall_s"),
    }


class Jobs:
    """Launches, watches and cancels the portal's runs (`model` rows, ``cosim KIND``
    processes writing `folder`)."""

    model, kind = Run, "run"

    def __init__(self, sessions, results: Path):
        self.sessions = sessions
        self.results = Path(results)
        self.procs: dict[int, subprocess.Popen] = {}
        self.cancelled: set[int] = set()
        self.lock = threading.Lock()

    def folder(self, run_id: int) -> Path:
        return self.results / "portal" / f"{self.kind}s" / f"{self.kind}-{run_id}"

    def launch(self, run_id: int, scenario_file: Path, variants: list[str]) -> None:
        self.start(run_id, scenario_file, lambda text: parse_progress(text, variants))

    def start(self, run_id: int, input_file: Path, progress) -> None:
        """Start ``cosim KIND INPUT_FILE --out FOLDER``; `progress` reads its log's tail."""
        out = self.folder(run_id)
        log = out.parent / f"{self.kind}-{run_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cosim", self.kind, str(input_file), "--out", str(out)]
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        with self.lock:
            self.procs[run_id] = proc
        with self.sessions.begin() as db:
            run = db.get(self.model, run_id)
            run.status, run.pid, run.out_dir = "running", proc.pid, str(out)
        threading.Thread(target=self._watch, args=(run_id, proc, log, out, progress), daemon=True,
                         name=f"portal-{self.kind}-{run_id}").start()

    def cancel(self, run_id: int) -> bool:
        """Ask a running run to stop; False if it is not running here."""
        with self.lock:
            proc = self.procs.get(run_id)
            if proc is None or proc.poll() is not None:
                return False
            self.cancelled.add(run_id)
        proc.send_signal(signal.SIGTERM)
        threading.Thread(target=_kill_after, args=(proc, CANCEL_GRACE_S), daemon=True).start()
        return True

    def _watch(self, run_id: int, proc: subprocess.Popen, log: Path, out: Path, progress) -> None:
        last = None
        while proc.poll() is None:
            time.sleep(POLL_S)
            share, text = progress(_tail(log))
            if (share, text) != last:
                try:
                    with self.sessions.begin() as db:
                        run = db.get(self.model, run_id)
                        run.progress, run.progress_text = share, text
                    last = (share, text)
                except Exception as err:  # noqa: BLE001 - e.g. the database busy: try again next time
                    logger.warning("%s %d: progress not stored: %s", self.kind, run_id, err)
        self._finish(run_id, proc.returncode, log, out)

    def _finish(self, run_id: int, code: int, log: Path, out: Path) -> None:
        with self.lock:
            self.procs.pop(run_id, None)
            cancelled = run_id in self.cancelled
        fields, problem = {}, ""
        if code == 0:
            try:
                fields = self.outcome(out)
            except Exception as err:  # noqa: BLE001 - a finished run whose folder cannot be read
                code, problem = 1, f"the {self.kind} finished but its folder could not be read: {err}"
        elif cancelled:
            self.discard(out)
        with self.sessions.begin() as db:
            run = db.get(self.model, run_id)
            run.finished_at, run.pid = utcnow(), None
            if code == 0:
                run.status, run.progress, run.progress_text = "finished", 1.0, "finished"
                for name, value in fields.items():
                    setattr(run, name, value)
            elif cancelled:
                run.status, run.message = "cancelled", "cancelled by the operator; no results folder was kept"
            else:
                run.status, run.message = "failed", problem or _last_lines(log)

    def outcome(self, out: Path) -> dict:
        """The columns of a finished run's row: its key figures and ledger verdict."""
        from cosim.virtual.ledger import verify

        figures = json.dumps(key_figures(out))
        ledger_ok, ledger_message = verify(out)
        return {"figures": figures, "ledger_ok": bool(ledger_ok), "ledger_message": ledger_message}

    def discard(self, out: Path) -> None:
        """What a cancelled run leaves: `cosim run` keeps its checkpoint (nothing to do)."""

    def recover(self) -> int:
        """Mark the runs a stopped portal left active as failed; returns how many."""
        with self.sessions.begin() as db:
            stale = db.scalars(select(self.model).where(self.model.status.in_(ACTIVE_STATES))).all()
            for run in stale:
                if run.pid:
                    _stop_stale(run.pid, run.out_dir)
                run.status, run.message, run.pid, run.finished_at = "failed", RESTART_MESSAGE, None, utcnow()
            return len(stale)

    def stop_all(self) -> None:
        """Cancel every run of this portal (on shutdown)."""
        for run_id in list(self.procs):
            self.cancel(run_id)


class StudyJobs(Jobs):
    """Launches, watches and cancels the portal's studies (``cosim study``)."""

    model, kind = Study, "study"

    def folder(self, run_id: int) -> Path:
        return self.results / "portal" / "studies" / f"study-{run_id}"

    def launch_study(self, study_id: int, study_file: Path) -> None:
        self.start(study_id, study_file, parse_study_progress)

    def outcome(self, out: Path) -> dict:
        info = json.loads((out / "study.json").read_text())
        if not (out / "report.html").is_file():
            raise FileNotFoundError(f"{out / 'report.html'} is missing")
        return {"figures": json.dumps(info)}

    def discard(self, out: Path) -> None:
        from cosim.study.engine import partial_folder

        shutil.rmtree(partial_folder(out), ignore_errors=True)


def _kill_after(proc: subprocess.Popen, grace_s: float) -> None:
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _stop_stale(pid: int, out_dir: str) -> None:
    """Stop a run's process left by a stopped portal, if `pid` is still that run."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if out_dir and out_dir.encode() in cmdline:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _tail(log: Path, size: int = 4096) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(max(fh.seek(0, 2) - size, 0))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_lines(log: Path, n: int = 6) -> str:
    lines = [ln for ln in _tail(log, 16384).replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    return "\n".join(lines[-n:]) or "the run stopped without a message"
