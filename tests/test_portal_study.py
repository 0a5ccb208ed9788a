"""Studies launched from the operator's portal (issue 15 with issue 12): a small study file
runs as a background ``cosim study`` process to the end, writes the folder `cosim study`
writes (``study.json``, ``runs.parquet``, ``report.html``) and its report is served; a
cancelled study stops its process and leaves no results folder, partial or not; both
actions are in the audit log. Who may reach the study endpoints and the CSRF check are
covered with every other endpoint in test_portal_security.py.

Small on purpose: the `feeder` network, two runs of two hourly rounds."""

from __future__ import annotations

import os
import re
import time

import pandas as pd
import pytest
import yaml
from portal_support import RUN_TIMEOUT_S, portal, post

BASE = {"name": "tiny", "network": "feeder", "start": "2016-07-21 11:00", "duration": "2h", "resolution": "1h",
        "prosumers": {"pv_share": 0.5, "pv_kwp": 10.0, "battery_share": 0.0}}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A portal whose studies folder holds a tiny study and a long one (two days at 15 min)."""
    tmp = tmp_path_factory.mktemp("portal-study")
    folder = tmp / "studies"
    (folder / "base").mkdir(parents=True)
    (folder / "base" / "tiny.yaml").write_text(yaml.safe_dump(BASE))
    (folder / "base" / "long.yaml").write_text(yaml.safe_dump({**BASE, "duration": "2d", "resolution": "15min"}))
    for name in ("tiny", "long"):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(
            {"name": f"{name}-study", "base": f"base/{name}.yaml", "seeds": [1],
             "axes": {"prosumers.pv_kwp": [5.0, 10.0]}}, sort_keys=False))
    client, _ = portal(tmp)
    client.app.state.studies = folder
    yield client, tmp / "results" / "portal" / "studies"
    client.__exit__(None, None, None)


def launch(client, name: str) -> int:
    r = post(client, "/operator/studies", {"study": name}, page="/operator/studies")
    assert r.status_code == 200, r.text
    return int(str(r.url).rstrip("/").rsplit("/", 1)[1])


def status(client, study_id: int) -> str:
    return re.search(r'id="study-status">(\w+)', client.get(f"/operator/studies/{study_id}/progress").text).group(1)


def wait(client, study_id: int, until=lambda s: s not in ("queued", "running")) -> str:
    end = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < end:
        if until(s := status(client, study_id)):
            return s
        time.sleep(0.3)
    raise AssertionError(f"study {study_id} still {s} after {RUN_TIMEOUT_S} s")


def test_a_study_launched_from_the_portal_finishes_and_its_report_is_served(site):
    client, studies = site
    assert "tiny.yaml" in client.get("/operator/studies").text
    study_id = launch(client, "tiny.yaml")
    assert wait(client, study_id) == "finished", client.get(f"/operator/studies/{study_id}").text
    out = studies / f"study-{study_id}"
    assert {p.name for p in out.iterdir()} == {"study.yaml", "study.json", "runs.parquet", "report.html", "runs"}
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs["prosumers.pv_kwp"]) == [5.0, 10.0] and set(runs.status) == {"ok"}
    page = client.get(f"/operator/studies/{study_id}/progress").text
    assert "100 %" in page and f'href="/operator/studies/{study_id}/files/report.html"' in page
    report = client.get(f"/operator/studies/{study_id}/files/report.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert report.text == (out / "report.html").read_text()
    row = re.search(rf'<tr id="study-{study_id}">(.*?)</tr>', client.get("/operator/studies").text, re.S).group(1)
    assert "finished" in row and "tiny-study" in row and "report.html" in row
    for name in ("runs.parquet", "..%2f..%2fportal.db"):  # only report files, only from inside the folder
        assert client.get(f"/operator/studies/{study_id}/files/{name}").status_code == 404
    audit = client.get("/operator/audit").text
    assert "launch study" in audit and "tiny-study (tiny.yaml)" in audit


def test_a_bad_choice_of_study_file_is_a_400_naming_the_field(site):
    client, _ = site
    r = post(client, "/operator/studies", {"study": "../base/tiny.yaml"}, page="/operator/studies")
    assert r.status_code == 400 and "study: expected one of the study files" in r.text


def test_a_cancelled_study_stops_its_process_and_leaves_no_folder(site):
    client, studies = site
    study_id = launch(client, "long.yaml")
    partial = studies / f".study-{study_id}.partial"
    end = time.monotonic() + RUN_TIMEOUT_S
    # the study has started writing, and its progress bar is read from its log
    while not ((partial / "runs").is_dir() and "runs: 0 of 2 done" in client.get(f"/operator/studies/{study_id}").text):
        assert time.monotonic() < end and status(client, study_id) == "running"
        time.sleep(0.2)
    pid = client.app.state.study_jobs.procs[study_id].pid
    r = post(client, f"/operator/studies/{study_id}/cancel", page="/operator/studies")
    assert r.status_code == 200, r.text
    assert wait(client, study_id) == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (studies / f"study-{study_id}").exists() and not partial.exists()
    assert "no results folder was kept" in client.get(f"/operator/studies/{study_id}").text
    audit = client.get("/operator/audit").text
    assert "cancel study" in audit and f"study {study_id}" in audit
    # nothing to cancel any more
    assert post(client, f"/operator/studies/{study_id}/cancel", page="/operator/studies").status_code == 409
