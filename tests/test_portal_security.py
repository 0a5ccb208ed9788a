"""The portal's security list (issue 15), with FastAPI's test client on a real SQLite
database and a real run of the smoke scenario: sessions, roles, CSRF, path traversal,
the login rate limit, password storage, SQL metacharacters, oversized and malformed
input; and what a run launched from the portal leaves (the same folder as ``cosim run``,
on which ``cosim report`` and ``cosim ledger verify`` work)."""

from __future__ import annotations

import html
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from portal_support import (
    ALICE,
    BOB,
    OPERATOR,
    launch_and_wait,
    login,
    portal,
    post,
    register,
    settings_form,
    wait,
)

from cosim.portal import auth, operator, prosumer, studies
from cosim.portal.app import create_app
from cosim.portal.security import MAX_BODY_BYTES, MAX_FAILED_LOGINS
from cosim.portal.serve import create_operator

PUBLIC = {"/login", "/register"}
PATH_VALUES = {"uid": "1", "run_id": "1", "study_id": "1", "name": "report.html", "table": "settlement"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A portal with an operator, Alice (bus 2) and Bob (bus 3), and one finished run."""
    tmp = tmp_path_factory.mktemp("portal")
    client, ids = portal(tmp)
    run_id, status = launch_and_wait(client)
    assert status == "finished", client.get(f"/operator/runs/{run_id}").text
    yield {"client": client, "ids": ids, "run": run_id, "tmp": tmp, "app": client.app}
    client.__exit__(None, None, None)


def fresh(site) -> TestClient:
    return TestClient(site["app"], raise_server_exceptions=False)


def routes(app):
    """Every route of the portal's routers but the public ones, path parameters filled in."""
    for r in (r for router in (auth.router, operator.router, studies.router, prosumer.router) for r in router.routes):
        if isinstance(r, APIRoute) and r.path not in PUBLIC:
            path = r.path
            for k, v in PATH_VALUES.items():
                path = re.sub(r"\{" + k + r"(:path)?\}", v, path)
            for method in r.methods:
                yield method, path


def test_every_page_and_endpoint_without_a_session_is_redirected_or_refused(site):
    c = fresh(site)
    checked = 0
    for method, path in routes(site["app"]):
        r = c.request(method, path, follow_redirects=False)
        if method == "GET":
            assert r.status_code == 303 and r.headers["location"] == "/login", (method, path, r.status_code)
        else:
            assert r.status_code in (401, 403), (method, path, r.status_code)
        checked += 1
        # with a CSRF token but no log-in, a POST is still refused
        if method == "POST":
            r = post(c, path, follow_redirects=False)
            if path == "/logout":  # logging out without a session: back to the log-in page
                assert r.status_code == 303 and r.headers["location"] == "/login"
            else:
                assert r.status_code == 401, (path, r.status_code)
    assert checked >= 15


def test_session_cookie_is_signed_http_only_and_same_site(site):
    c = fresh(site)
    r = post(c, "/login", {"email": ALICE[0], "password": ALICE[1]}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("cosim_portal=")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    # a cookie not signed with the portal's key is no session
    forged = TestClient(site["app"], raise_server_exceptions=False, cookies={"cosim_portal": "eyJ1aWQiOiAxfQ==.x.y"})
    assert forged.get("/operator", follow_redirects=False).status_code == 303


def test_a_prosumer_cannot_read_another_prosumers_rows_by_changing_an_id(site):
    c = fresh(site)
    login(c, ALICE)
    alice, bob, run = site["ids"][ALICE[0]], site["ids"][BOB[0]], site["run"]
    own = c.get(f"/prosumers/{alice}/runs/{run}/settlement.csv")
    assert own.status_code == 200
    rows = pd.read_csv(io.StringIO(own.text))
    assert set(rows.party) == {"P000"} and len(rows) == 8  # the household at bus 2, 8 rounds
    trades = pd.read_csv(io.StringIO(c.get(f"/prosumers/{alice}/runs/{run}/trades.csv").text))
    assert ((trades.buyer == "P000") | (trades.seller == "P000")).all()
    for url in (f"/prosumers/{bob}/runs/{run}/settlement.csv", f"/prosumers/{bob}/runs/{run}/trades.csv",
                f"/prosumers/{bob + 100}/runs/{run}/settlement.csv", f"/prosumers/{alice}/runs/{run + 1}/settlement.csv",
                f"/me/runs/{run + 1}"):
        r = c.get(url)
        assert r.status_code == 404 and "P001" not in r.text, url
    page = c.get(f"/me/runs/{run}").text
    assert "household P000" in page
    trades_table = page.split('id="my-trades"')[1].split("</table>")[0]
    pairs = re.findall(r"<tr><td>\d+</td><td>(\w+)</td><td>(\w+)</td>", trades_table)
    assert pairs and all("P000" in pair for pair in pairs)  # her trades only (counterparties named)
    assert len(re.findall(r"<tr><td>\d+</td>", page.split('id="my-settlement"')[1])) == 8  # her bills only
    # the operator may read any prosumer's rows
    op = fresh(site)
    login(op, OPERATOR)
    assert set(pd.read_csv(io.StringIO(op.get(f"/prosumers/{bob}/runs/{run}/settlement.csv").text)).party) == {"P001"}


def test_a_prosumer_cannot_reach_an_operator_endpoint(site):
    c = fresh(site)
    login(c, ALICE)
    n = 0
    for method, path in routes(site["app"]):
        if not path.startswith("/operator"):
            continue
        r = c.get(path) if method == "GET" else post(c, path, {"bus": "4"}, page="/me")
        assert r.status_code == 403, (method, path, r.status_code)
        n += 1
    assert n >= 10
    assert c.get("/operator/audit").text.count("<tr>") == 0


def test_a_post_without_a_valid_csrf_token_is_refused(site):
    c = site["client"]
    before = settings_form(c)
    for method, path in routes(site["app"]):
        if method != "POST":
            continue
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
            r = c.post(path, data={**data, "bus": "4", "market.k": "0.9"}, follow_redirects=False)
            assert r.status_code == 403 and "CSRF" in r.text, (path, data, r.status_code)
    assert settings_form(c) == before
    # a token sent by a page of another session does not work either
    other = fresh(site)
    login(other, ALICE)
    theirs = re.search(r'name="csrf_token" value="([^"]+)"', other.get("/me").text).group(1)
    assert c.post("/operator/runs", data={"csrf_token": theirs}).status_code == 403


@pytest.mark.parametrize("name", [
    "../../portal.db", "..%2f..%2fportal.db", "%2e%2e/%2e%2e/portal.db", "/etc/passwd", "figures/../../run-1.log",
    "....//....//portal.db", "scenario.yaml", "ledger.jsonl", "figures", "..\\..\\portal.db", "%00report.html",
])
def test_report_files_are_served_only_from_inside_the_results_folder(site, name):
    c = site["client"]
    r = c.get(f"/operator/runs/{site['run']}/files/{name}")
    assert 400 <= r.status_code < 500, (name, r.status_code)  # 404, or 422 where the client resolved the ..
    assert "SQLite" not in r.text and "root:" not in r.text


def test_the_report_and_its_figures_are_served(site):
    c = site["client"]
    report = c.get(f"/operator/runs/{site['run']}/files/report.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    figures = re.findall(r"src='(figures/[^']+\.png)'", report.text)
    assert figures
    img = c.get(f"/operator/runs/{site['run']}/files/{figures[0]}")
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"


def test_login_attempts_are_rate_limited(site):
    c = fresh(site)
    register(c, ("carol@example.org", "carol-pass-99"))
    for _ in range(MAX_FAILED_LOGINS):
        assert login(c, ("carol@example.org", "wrong-password")).status_code == 401
    r = login(c, ("carol@example.org", "carol-pass-99"))  # right password, too late
    assert r.status_code == 429 and "too many" in r.text


def test_passwords_are_never_stored_or_logged_in_clear(site, caplog):
    caplog.set_level(logging.DEBUG)
    c = fresh(site)
    secret = "Clear-Text-Pass-42"
    register(c, ("dave@example.org", secret), "Dave")
    login(c, ("dave@example.org", secret))
    login(c, ("dave@example.org", secret + "x"))
    folder = site["tmp"] / "results" / "portal"
    stored = b"".join(p.read_bytes() for p in folder.glob("portal.db*"))
    assert secret.encode() not in stored
    assert b"$argon2id$" in stored
    assert secret not in caplog.text
    for log in (folder / "runs").glob("*.log"):
        assert secret not in log.read_text(errors="replace")


SQL_TEXTS = ["Robert'); DROP TABLE users;--", "x\" OR \"1\"=\"1", "1; DELETE FROM runs", "<b>bold</b> & %s %% ?"]


def test_sql_metacharacters_are_stored_and_shown_literally(site):
    c = fresh(site)
    for i, text in enumerate(SQL_TEXTS):
        assert register(c, (f"o'brien{i}@example.org", "some-pass-123"), text, pv_kwp="1").status_code == 200
    op = site["client"]
    page = op.get("/operator/prosumers").text
    names = [html.unescape(n) for n in re.findall(r'<td class="name">(.*?)</td>', page)]
    for i, text in enumerate(SQL_TEXTS):
        assert text in names
        assert f"o&#39;brien{i}@example.org" in page
    assert "<b>bold</b>" not in page  # shown as text, never as markup
    form = settings_form(op)
    form["market.currency"] = "EUR'; DROP TABLE runs;--"
    assert post(op, "/operator/settings", form, page="/operator/settings").status_code == 200
    assert html.unescape(settings_form(op)["market.currency"]) == "EUR'; DROP TABLE runs;--"
    assert "EUR&#39;; DROP TABLE runs;--" in op.get("/operator/audit").text
    assert op.get("/operator/runs").status_code == 200  # the tables are all still there
    form["market.currency"] = "EUR"
    post(op, "/operator/settings", form, page="/operator/settings")


def test_oversized_or_malformed_input_gives_a_4xx_with_a_message(site):
    c = fresh(site)
    big = post(c, "/register", {"email": "e@example.org", "password": "x" * 20, "name": "n" * (MAX_BODY_BYTES + 10)},
               page="/register")
    assert big.status_code == 413 and "too large" in big.text
    for field, value in (("pv_kwp", "abc"), ("pv_kwp", "1e999"), ("battery_kwh", "-5"), ("battery_kw", "nan"),
                         ("email", "not-an-address"), ("password", "short"), ("name", "n" * 300)):
        data = {"email": "frank@example.org", "password": "frank-pass-1", "name": "F", field: value}
        r = post(c, "/register", data, page="/register")
        assert r.status_code == 400 and f"{field}: expected" in html.unescape(r.text), (field, value)
    r = c.post("/register", content=b"\x00\xff" * 100, headers={"content-type": "multipart/form-data"})
    assert 400 <= r.status_code < 500 and r.text
    op = site["client"]
    for url, data in (("/operator/prosumers/1/admit", {"bus": "999"}), ("/operator/prosumers/1/admit", {"bus": "-1; --"}),
                      ("/operator/prosumers/99999/admit", {"bus": "4"}), ("/operator/runs/99999/cancel", {})):
        r = post(op, url, data, page="/operator/prosumers")
        assert 400 <= r.status_code < 500 and r.text, (url, data, r.status_code)
    for url in ("/operator/runs/abc", "/operator/runs/1e9", f"/prosumers/x/runs/{site['run']}/settlement.csv",
                f"/prosumers/1/runs/{site['run']}/passwords.csv", "/operator/runs/99999"):
        r = op.get(url)
        assert 400 <= r.status_code < 500 and r.text, (url, r.status_code)
    form = settings_form(op)
    form["market.options"] = "x" * 5000
    r = post(op, "/operator/settings", form, page="/operator/settings")
    assert r.status_code == 400 and "expected at most" in r.text


def test_settings_show_the_same_field_errors_as_the_command_line(site, tmp_path):
    op = site["client"]
    form = settings_form(op)
    form.update({"market.k": "abc", "feedback.v_max_pu": "0.95", "market.mechanism": "uniform"})
    r = post(op, "/operator/settings", form, page="/operator/settings")
    assert r.status_code == 400
    shown = {html.unescape(m[1]) for m in re.findall(r'data-field="([^"]+)">([^<]*)<', r.text)}
    bad = tmp_path / "bad.yaml"
    smoke = (site["app"].state.scenarios / "smoke.yaml").read_text()
    bad.write_text(smoke + "market:\n  k: abc\nfeedback:\n  v_max_pu: 0.95\n")
    cli = subprocess.run([sys.executable, "-m", "cosim", "validate", str(bad)], capture_output=True, text=True)
    assert cli.returncode == 2
    problems = {line.strip()[2:] for line in cli.stderr.splitlines() if line.strip().startswith("- ")}
    assert problems and problems == shown
    assert settings_form(op)["market.k"] != "abc"  # nothing was saved


def test_a_portal_run_is_a_cosim_run_folder(site):
    folder = site["tmp"] / "results" / "portal" / "runs" / f"run-{site['run']}"
    for name in ("scenario.yaml", "rounds.parquet", "trades.parquet", "settlement.parquet", "ledger.jsonl",
                 "summary.json", "report.html"):
        assert (folder / name).is_file(), name
    for cmd in (["ledger", "verify"], ["report"]):
        done = subprocess.run([sys.executable, "-m", "cosim", *cmd, str(folder)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert "intact" in site["client"].get("/operator/runs").text
    # the admitted prosumers' declared PV (5 kWp each, no battery) is in the run
    fleet = pd.read_parquet(folder / "prosumers.parquet").set_index("id")
    assert fleet.loc[["P000", "P001"], ["pv_kwp", "battery_kwh", "battery_kw"]].to_numpy().tolist() == [[5, 0, 0]] * 2
    audit = site["client"].get("/operator/audit").text
    assert "launch run" in audit and "admit prosumer" in audit and "change setting" in audit


def test_a_run_can_be_cancelled_and_leaves_no_folder(site):
    op = site["client"]
    form = settings_form(op)
    form["duration"] = "3d"
    post(op, "/operator/settings", form, page="/operator/settings")
    r = post(op, "/operator/runs", page="/operator/runs")
    run_id = int(str(r.url).rsplit("/", 1)[1])
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', op.get("/operator/runs").text).group(1)
    r = op.post(f"/operator/runs/{run_id}/cancel", headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert wait(op, run_id) == "cancelled"
    runs = site["tmp"] / "results" / "portal" / "runs"
    assert not (runs / f"run-{run_id}").exists()
    assert not [p for p in runs.iterdir() if p.name.startswith(f".run-{run_id}.")]
    form["duration"] = "2h"
    post(op, "/operator/settings", form, page="/operator/settings")


@pytest.mark.parametrize("args, stdin, message", [
    (["create-operator", "not-an-address", "--password-stdin"], "long-enough-1\n", "email: expected an e-mail address"),
    (["create-operator", "x@example.org", "--password-stdin"], "short\n", "password: expected 8 to 1024 characters"),
    (["create-operator", ALICE[0], "--password-stdin"], "long-enough-1\n", "is a prosumer's account"),
    (["--scenarios", "/nonexistent"], "", "--scenarios: expected a folder of scenario files"),
    (["--port", "eighty"], "", "invalid int value"),
])
def test_portal_command_line_bad_input_exits_2_without_a_traceback(site, args, stdin, message):
    results = site["tmp"] / "results"
    done = subprocess.run([sys.executable, "-m", "cosim", "portal", *args, "--results", str(results)], input=stdin,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_broken_base_scenario_is_a_400_naming_the_file(tmp_path):
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    smoke = Path(__file__).resolve().parents[1] / "scenarios" / "smoke.yaml"
    (scenarios / "smoke.yaml").write_text(smoke.read_text())
    (scenarios / "broken.yaml").write_text("name: broken\nnetwork: feeder\nmarket: {k: 7}\n")
    create_operator(*OPERATOR, results=tmp_path / "results")
    with TestClient(create_app(results=tmp_path / "results", scenarios=scenarios), raise_server_exceptions=False) as c:
        login(c, OPERATOR)
        form = {**settings_form(c), "base_scenario": "broken", "reload_base": "on"}
        r = post(c, "/operator/settings", form, page="/operator/settings")
        assert r.status_code == 400 and "broken.yaml" in r.text and "market.k" in r.text
        form = {**settings_form(c), "base_scenario": "../smoke"}
        r = post(c, "/operator/settings", form, page="/operator/settings")
        assert r.status_code == 400 and "base_scenario: expected one of ['broken', 'smoke']" in html.unescape(r.text)


def test_create_operator_takes_its_options_before_or_after_the_subcommand(tmp_path):
    for i, args in enumerate((["--results", str(tmp_path / "a"), "create-operator", "o@example.org"],
                              ["create-operator", "o@example.org", "--results", str(tmp_path / "b")])):
        done = subprocess.run([sys.executable, "-m", "cosim", "portal", *args, "--password-stdin"],
                              input="long-enough-1\n", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "created" in done.stdout, done.stderr
        assert (tmp_path / "ab"[i] / "portal" / "portal.db").is_file()
