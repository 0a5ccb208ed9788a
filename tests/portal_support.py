"""Helpers of the portal's tests (test_portal*.py): a portal on a fresh SQLite database
with an operator and two admitted prosumers, form posting with the page's CSRF token,
and waiting for a run."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cosim.portal.app import create_app
from cosim.portal.serve import create_operator
from cosim.portal.settings import FIELD_PATHS

OPERATOR = ("op@example.org", "operator-pass-1")
ALICE = ("alice@example.org", "alice-pass-123")
BOB = ("bob@example.org", "bob-pass-4567")
#: Rounds of the runs the tests launch: 2 h of the smoke scenario at 15 min.
SHORT_RUN = "2h"
#: Longest a short run may take before a test gives up [s].
RUN_TIMEOUT_S = 120.0

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def token(client: TestClient, page: str = "/login") -> str:
    return _TOKEN.search(client.get(page).text).group(1)


def post(client: TestClient, url: str, data: dict | None = None, page: str = "/login", **kw):
    """POST a form with the CSRF token of `page` (the session's token)."""
    return client.post(url, data={**(data or {}), "csrf_token": token(client, page)}, **kw)


def login(client: TestClient, who: tuple[str, str]):
    return post(client, "/login", {"email": who[0], "password": who[1]})


def register(client: TestClient, who: tuple[str, str], name: str = "", **assets):
    return post(client, "/register", {"email": who[0], "password": who[1], "name": name, **assets}, page="/register")


def settings_form(client: TestClient) -> dict:
    """The settings page's current values, as the form would post them."""
    html = client.get("/operator/settings").text
    values = dict(re.findall(r'<input type="text" name="([^"]+)" id="[^"]+" value="([^"]*)"', html))
    for path in FIELD_PATHS:
        if path not in values:  # selects and textareas
            sel = re.search(rf'name="{re.escape(path)}" id="[^"]+"[^>]*>(.*?)</(select|textarea)>', html, re.S)
            chosen = re.search(r"<option selected>([^<]*)</option>", sel.group(1)) if sel.group(2) == "select" else None
            values[path] = chosen.group(1) if chosen else (sel.group(1) if sel.group(2) == "textarea" else "")
    values["base_scenario"] = "smoke"
    return values


def portal(tmp: Path) -> tuple[TestClient, dict]:
    """A portal under `tmp` with an operator and the prosumers Alice (bus 2) and Bob (bus 3)
    admitted, settings of a short smoke run; returns a client logged in as the operator
    and the users' ids."""
    results = tmp / "results"
    create_operator(*OPERATOR, results=results)
    app = create_app(results=results)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    ids = {}
    for who, name in ((ALICE, "Alice"), (BOB, "Bob")):
        assert register(client, who, name, pv_kwp="5").status_code == 200
    login(client, OPERATOR)
    form = settings_form(client)
    form["duration"] = SHORT_RUN
    assert post(client, "/operator/settings", form, page="/operator/settings").status_code == 200
    page = client.get("/operator/prosumers").text
    for who, bus in ((ALICE, 2), (BOB, 3)):
        uid = int(re.search(rf"<tr id=\"prosumer-(\d+)\">\s*<td>{re.escape(who[0])}</td>", page).group(1))
        ids[who[0]] = uid
        r = post(client, f"/operator/prosumers/{uid}/admit", {"bus": str(bus)}, page="/operator/prosumers")
        assert r.status_code == 200, r.text
    return client, ids


def launch_and_wait(client: TestClient, timeout_s: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    """Launch a run of the current settings and wait until it ends: (run id, status)."""
    r = post(client, "/operator/runs", page="/operator/runs")
    assert r.status_code == 200, r.text
    run_id = int(str(r.url).rstrip("/").rsplit("/", 1)[1])
    return run_id, wait(client, run_id, timeout_s)


def wait(client: TestClient, run_id: int, timeout_s: float = RUN_TIMEOUT_S) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        status = re.search(r'id="run-status">(\w+)', client.get(f"/operator/runs/{run_id}/progress").text).group(1)
        if status not in ("queued", "running"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {status} after {timeout_s} s")


# ---------------------------------------------------------------- a live portal process

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LivePortal:
    """``cosim portal`` as a real process on a free port, on the database under
    ``results``; `stop` ends it (SIGTERM, or SIGKILL with ``kill=True``)."""

    def __init__(self, results: Path, port: int | None = None):
        import os
        import subprocess
        import sys

        self.results, self.port = Path(results), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (self.results / f"portal-{self.port}.log")
        self.results.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cosim", "portal", "--port", str(self.port), "--results", str(self.results)],
                stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_up()

    def _wait_up(self, timeout_s: float = 60.0) -> None:
        import httpx

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the portal exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/login", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the portal did not answer within {timeout_s} s")

    def stop(self, kill: bool = False) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def http_client(base_url: str, who: tuple[str, str] | None = None):
    """An httpx client with its own session cookie, logged in as `who`."""
    import httpx

    client = httpx.Client(base_url=base_url, timeout=60.0, follow_redirects=True)
    if who is not None:
        r = http_post(client, "/login", {"email": who[0], "password": who[1]})
        assert r.status_code == 200, (who, r.status_code, r.text[:300])
    return client


def http_post(client, url: str, data: dict | None = None, page: str = "/login"):
    csrf = _TOKEN.search(client.get(page).text).group(1)
    return client.post(url, data={**(data or {}), "csrf_token": csrf})


@pytest.fixture()
def live(tmp_path):
    """A live portal with an operator made by the command line (import it as a fixture)."""
    results = tmp_path / "results"
    create_operator_cli(results)
    server = LivePortal(results)
    yield server
    server.stop()


def create_operator_cli(results: Path, who: tuple[str, str] = OPERATOR) -> None:
    """``cosim portal create-operator EMAIL --password-stdin``, as an operator would."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cosim", "portal", "create-operator", who[0], "--password-stdin",
                           "--results", str(results)], input=who[1] + "\n", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
