"""The portal as a real server process (``cosim portal`` on a free port): concurrent
log-ins and registrations and two runs launched at once from threads keep the SQLite
database consistent; a portal killed during a run marks that run failed when it starts
again, and stops the run's orphaned process."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from portal_support import (
    OPERATOR,
    RUN_TIMEOUT_S,
    LivePortal,
    http_client,
    http_post,
)

from cosim.portal.jobs import RESTART_MESSAGE

pytest_plugins = ["portal_support"]  # its fixture `live`
#: Prosumers registering and logging in at once, each from its own thread and session.
N_THREADS = 6



def _status(client, run_id: int) -> str:
    return re.search(r'id="run-status">(\w+)', client.get(f"/operator/runs/{run_id}/progress").text).group(1)


def _set_duration(client, duration: str) -> None:
    from portal_support import settings_form

    form = settings_form(client)
    form["duration"] = duration
    assert http_post(client, "/operator/settings", form, page="/operator/settings").status_code == 200


def _launch(client) -> int:
    r = http_post(client, "/operator/runs", page="/operator/runs")
    assert r.status_code == 200, r.text[:500]
    return int(str(r.url).rstrip("/").rsplit("/", 1)[1])


def test_concurrent_logins_and_two_runs_at_once_keep_the_database_whole(live):
    people = [(f"p{i}@example.org", f"password-{i:04d}") for i in range(N_THREADS)]

    def register_and_login(who):
        c = http_client(live.url)
        r = http_post(c, "/register", {"email": who[0], "password": who[1], "name": who[0], "pv_kwp": "4"},
                      page="/register")
        assert r.status_code == 200, r.text[:300]
        logins = [http_post(c, "/login", {"email": who[0], "password": who[1]}).status_code for _ in range(2)]
        me = c.get("/me").text
        c.close()
        return logins, who[0] in me

    with ThreadPoolExecutor(N_THREADS) as pool:
        outcomes = list(pool.map(register_and_login, people))
    assert all(logins == [200, 200] and seen for logins, seen in outcomes)

    operators = [http_client(live.url, OPERATOR) for _ in range(2)]
    _set_duration(operators[0], "2h")
    with ThreadPoolExecutor(2) as pool:
        run_ids = list(pool.map(_launch, operators))
    assert len(set(run_ids)) == 2
    end = time.monotonic() + 2 * RUN_TIMEOUT_S
    while time.monotonic() < end and any(_status(operators[0], r) in ("queued", "running") for r in run_ids):
        time.sleep(0.5)
    assert [_status(operators[0], r) for r in run_ids] == ["finished", "finished"]
    page = operators[1].get("/operator/prosumers").text
    assert all(who[0] in page for who in people)
    for c in operators:
        c.close()
    with sqlite3.connect(live.results / "portal" / "portal.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM users WHERE role = 'prosumer'").fetchone() == (N_THREADS,)
        assert db.execute("SELECT count(*) FROM runs WHERE status = 'finished' AND ledger_ok").fetchone() == (2,)
        assert db.execute("SELECT count(*) FROM audit WHERE action = 'launch run'").fetchone() == (2,)


def test_a_portal_killed_during_a_run_marks_it_failed_when_it_starts_again(live):
    op = http_client(live.url, OPERATOR)
    _set_duration(op, "3d")
    run_id = _launch(op)
    end = time.monotonic() + RUN_TIMEOUT_S
    pid = None
    while time.monotonic() < end and pid is None:
        with sqlite3.connect(live.results / "portal" / "portal.db") as db:
            pid = db.execute("SELECT pid FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        time.sleep(0.2)
    assert pid is not None and _status(op, run_id) == "running"
    op.close()
    live.stop(kill=True)  # no shutdown: the run's process is orphaned, its row says running
    with sqlite3.connect(live.results / "portal" / "portal.db") as db:
        assert db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone() == ("running",)
    again = LivePortal(live.results)
    try:
        op = http_client(again.url, OPERATOR)
        assert _status(op, run_id) == "failed"
        assert RESTART_MESSAGE in op.get(f"/operator/runs/{run_id}").text
        end = time.monotonic() + 30
        while time.monotonic() < end and _alive(pid):
            time.sleep(0.2)
        assert not _alive(pid), "the orphaned run process is still running"
        op.close()
    finally:
        again.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] if os.path.exists(f"/proc/{pid}/stat") else "X"
    return state not in ("Z", "X")
