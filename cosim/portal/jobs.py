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
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select

from cosim.portal.db import ACTIVE_STATES, Run, utcnow

#: Seconds between two looks at a running run's log [s].
POLL_S = 0.5
#: Seconds a cancelled run has to stop after SIGTERM before it is killed [s].
CANCEL_GRACE_S = 30.0
#: The last bar of a tqdm line: ``[variant]: NN%|...| done/total``.
_BAR = re.compile(r"\[([A-Za-z0-9_]+)\]:\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")
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
    """Launches, watches and cancels the portal's runs."""

    def __init__(self, sessions, results: Path):
        self.sessions = sessions
        self.results = Path(results)
        self.procs: dict[int, subprocess.Popen] = {}
        self.cancelled: set[int] = set()
        self.lock = threading.Lock()

    def folder(self, run_id: int) -> Path:
        return self.results / "portal" / "runs" / f"run-{run_id}"

    def launch(self, run_id: int, scenario_file: Path, variants: list[str]) -> None:
        out = self.folder(run_id)
        log = out.parent / f"run-{run_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cosim", "run", str(scenario_file), "--out", str(out)]
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        with self.lock:
            self.procs[run_id] = proc
        with self.sessions.begin() as db:
            run = db.get(Run, run_id)
            run.status, run.pid, run.out_dir = "running", proc.pid, str(out)
        threading.Thread(target=self._watch, args=(run_id, proc, log, out, variants), daemon=True,
                         name=f"portal-run-{run_id}").start()

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

    def _watch(self, run_id: int, proc: subprocess.Popen, log: Path, out: Path, variants: list[str]) -> None:
        last = None
        while proc.poll() is None:
            time.sleep(POLL_S)
            share, text = parse_progress(_tail(log), variants)
            if (share, text) != last:
                try:
                    with self.sessions.begin() as db:
                        run = db.get(Run, run_id)
                        run.progress, run.progress_text = share, text
                    last = (share, text)
                except Exception as err:  # noqa: BLE001 - e.g. the database busy: try again next time
                    logger.warning("run %d: progress not stored: %s", run_id, err)
        self._finish(run_id, proc.returncode, log, out)

    def _finish(self, run_id: int, code: int, log: Path, out: Path) -> None:
        with self.lock:
            self.procs.pop(run_id, None)
            cancelled = run_id in self.cancelled
        figures, ledger_ok, ledger_message, problem = "{}", None, "", ""
        if code == 0:
            from cosim.virtual.ledger import verify

            try:
                figures = json.dumps(key_figures(out))
                ledger_ok, ledger_message = verify(out)
            except Exception as err:  # noqa: BLE001 - a finished run whose folder cannot be read
                code, problem = 1, f"the run finished but its folder could not be read: {err}"
        with self.sessions.begin() as db:
            run = db.get(Run, run_id)
            run.finished_at, run.pid = utcnow(), None
            if code == 0:
                run.status, run.progress, run.progress_text = "finished", 1.0, "finished"
                run.figures, run.ledger_ok, run.ledger_message = figures, bool(ledger_ok), ledger_message
            elif cancelled:
                run.status, run.message = "cancelled", "cancelled by the operator; no results folder was kept"
            else:
                run.status, run.message = "failed", problem or _last_lines(log)

    def recover(self) -> int:
        """Mark the runs a stopped portal left active as failed; returns how many."""
        with self.sessions.begin() as db:
            stale = db.scalars(select(Run).where(Run.status.in_(ACTIVE_STATES))).all()
            for run in stale:
                if run.pid:
                    _stop_stale(run.pid, run.out_dir)
                run.status, run.message, run.pid, run.finished_at = "failed", RESTART_MESSAGE, None, utcnow()
            return len(stale)

    def stop_all(self) -> None:
        """Cancel every run of this portal (on shutdown)."""
        for run_id in list(self.procs):
            self.cancel(run_id)


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
