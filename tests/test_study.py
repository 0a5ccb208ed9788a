"""`cosim study` (issue 12): the study schema and its errors, the hosting-capacity bisection
against a brute-force sweep and its monotonicity, resume, a failing run recorded without
stopping the study, and the same study on a real Dask scheduler with two workers started
here as separate processes, with results equal to the embedded cluster's.

Small and short on purpose: SimBench's rural1 (13 households), a few hourly rounds at noon."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cosim.cli import main
from cosim.study.engine import execute, partial_folder
from cosim.study.expand import base_data, hosting_groups, hosting_run
from cosim.study.runner import run_study
from cosim.study.spec import load_study

BIN = Path(sys.executable).parent
#: Figures of a run that depend on nothing but its scenario (not on where or when it ran).
DETERMINISTIC = ["vm_min_pu", "vm_max_pu", "losses_kwh", "curtailed_kwh", "p2p_traded_kwh", "trafo_loading_max_pct",
                 "line_loading_max_pct", "minutes_outside_band_mean", "trafo_hot_spot_max_c", "trafo_ageing_rate",
                 "prosumer_bills_total"]
#: Equal to this relative tolerance: the same scenario, solved in another process [-].
REL = 1e-9

BASE = {
    "name": "tiny", "network": "rural1", "start": "2016-07-21 11:00", "duration": "3h", "resolution": "1h",
    "prosumers": {"pv_share": 0.5, "pv_kwp": 30.0, "battery_share": 0.0},
}


def _write(folder: Path, study: dict, base: dict | None = None) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    path = folder / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **study}, sort_keys=False))
    return path


SWEEP = {"name": "sweep", "seeds": [1], "axes": {"prosumers.pv_kwp": [5.0, 10.0, 15.0, 20.0]}}
HOSTING = {"name": "hc", "seeds": [1, 2], "hosting_capacity": {
    "penetration": "prosumers.pv_share", "low": 0.0, "high": 1.0, "step": 0.2, "settings": ["passive"],
    "limits": {"v_max_pu": 1.03}}}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """The sweep on the embedded LocalCluster with two workers."""
    folder = tmp_path_factory.mktemp("embedded")
    return run_study(_write(folder, SWEEP), out=folder / "out", workers=2, progress=False, report=False)


@pytest.mark.parametrize("study, found", [
    ({"name": "s", "sedes": 3}, "sedes: unknown field (typo?), found 3"),
    ({"name": "s", "axes": {"prosumers.pv_shar": [0.1]}},
     "axes.prosumers.pv_shar: expected a scalar field of the scenario, found no field 'pv_shar' in prosumers"),
    ({"name": "s", "axes": {"prosumers.pv_share": [0.5, 1.5]}},
     "axes.prosumers.pv_share[1]: expected less than or equal to 1, found 1.5 (scenario field prosumers.pv_share)"),
    ({"name": "s", "axes": {"market.mechanism": ["uniform", "auction"]}},
     "axes.market.mechanism[1]: expected one of"),
    ({"name": "s", "axes": {"seed": [1, 2]}}, "axes.seed: expected a field other than"),
    ({"name": "s", "hosting_capacity": {"low": 0.5, "high": 0.2}}, "hosting_capacity: expected high > low, found 0.2 <= 0.5"),
    ({"name": "s", "base": "nowhere.yaml"}, "base: expected a scenario file (relative to the study file), found no such file"),
    ({"name": "s", "hosting_capacity": {"settings": ["passive", "flex"]}}, "hosting_capacity.settings.1: expected 'passive', 'curtailment', 'p2p' or 'flexibility', found 'flex'"),
    ({"name": "s", "hosting_capacity": {"settings": ["flexibility"], "flexibility": {"pricing": "auction"}}},
     "hosting_capacity.flexibility.pricing: expected 'pay_as_bid' or 'uniform', found 'auction'"),
    ({"name": "s", "hosting_capacity": {"settings": ["flexibility"], "flexibility": {"energy_market": "vcg"}}},
     "hosting_capacity.flexibility.energy_market: expected 'uniform' or 'continuous', found 'vcg'"),
    ({"name": "s", "hosting_capacity": {"flexibility": {"max_markups": 0.2}}},
     "hosting_capacity.flexibility.max_markups: unknown field (typo?), found 0.2"),
])
def test_bad_study_file_exits_2_naming_file_field_expected_found(tmp_path, capsys, study, found):
    path = _write(tmp_path, study)
    if "base" in study:
        path.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and found in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_flexibility_setting_runs_the_flexibility_market_with_the_study_options(tmp_path):
    """The fourth setting is the scenario's market variant with mechanism ``flexibility``
    and the study's options for it (the markup seed is the run's seed unless set); the
    other settings keep the scenario's mechanism; the default settings are the first three."""
    from cosim.config.scenario import Scenario

    hc = {"settings": ["p2p", "flexibility"], "flexibility": {"pricing": "uniform", "max_markup": 0.2}}
    path = _write(tmp_path, {"name": "s", "seeds": [7], "hosting_capacity": hc})
    study = load_study(path)
    base = base_data(study, path)
    (values, period), = hosting_groups(study, base)
    flex = hosting_run(base, study, values, period, "flexibility", 0.4).scenario
    p2p = hosting_run(base, study, values, period, "p2p", 0.4).scenario
    assert flex["variants"] == ["market"] and flex["feedback"]["enabled"] is True
    assert flex["market"]["mechanism"] == "flexibility" and p2p.get("market", {}).get("mechanism", "uniform") == "uniform"
    assert flex["market"]["options"]["pricing"] == "uniform" and flex["market"]["options"]["max_markup"] == 0.2
    assert flex["market"]["options"]["seed"] == 7
    Scenario.model_validate(flex)
    assert load_study(_write(tmp_path, {"name": "d", "hosting_capacity": {}})).hosting_capacity.settings == [
        "passive", "curtailment", "p2p"]


def test_hosting_search_with_the_flexibility_market_records_the_dsos_cost(tmp_path):
    """A tiny search in the curtailment and flexibility settings finishes; each run's
    ``dso_flexibility_cost`` is the DSO's flexibility payments in its settlement (what the
    providers received), zero under curtailment by feedback and positive where the
    flexibility market curtailed; hosting.parquet and the summary carry it at the capacity."""
    study = {"name": "flex", "seeds": [1], "hosting_capacity": {
        "penetration": "prosumers.pv_share", "low": 0.0, "high": 1.0, "step": 0.25,
        "settings": ["curtailment", "flexibility"], "limits": {"v_max_pu": 1.03, "max_curtailment_share": 0.5}}}
    out = run_study(_write(tmp_path, study), out=tmp_path / "out", workers=1, progress=False, report=False)
    searches = pd.read_parquet(out / "hosting.parquet").set_index("setting")
    assert (searches.status == "ok").all() and searches.runs.max() <= 3
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs.status) == {"ok"}
    assert (runs.dso_flexibility_cost[runs.setting == "curtailment"] == 0.0).all()
    flex = runs[runs.setting == "flexibility"]
    assert (flex.dso_flexibility_cost > 0).any()  # the market bought curtailment: the test can fail
    for _, r in flex.iterrows():
        settlement = pd.read_parquet(out / r.path / "settlement.parquet")
        providers = settlement.flexibility_payments[settlement.party.str.startswith("P")]
        assert r.dso_flexibility_cost == pytest.approx(-providers.sum(), abs=1e-9)
        assert r.dso_flexibility_cost == 0 or r.curtailed_kwh + r.shed_kwh > 0  # paid for relief given
    at = searches.loc["flexibility"]
    if not pd.isna(at.hosting_capacity):
        row = flex[flex["prosumers.pv_share"] == at.hosting_capacity].iloc[0]
        assert at.dso_flexibility_cost_at_capacity == pytest.approx(row.dso_flexibility_cost)
        assert at.curtailed_kwh_at_capacity == pytest.approx(row.curtailed_kwh)
    summary = pd.read_csv(out / "hosting_summary.csv").set_index("setting")
    assert {"curtailed_kwh_p50", "dso_flexibility_cost_p50"} <= set(summary.columns)
    assert summary.loc["curtailment", "dso_flexibility_cost_p50"] == 0.0


def test_no_scheduler_at_the_address_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    address = f"tcp://127.0.0.1:{_free_port()}"
    assert main(["study", str(_write(tmp_path, SWEEP)), "--scheduler", address, "--out", str(out),
                 "--no-progress"]) == 2
    assert f"--scheduler: expected a Dask scheduler listening at '{address}'" in capsys.readouterr().err
    assert not out.exists()


def test_out_folder_of_other_files_is_not_replaced(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    assert main(["study", str(_write(tmp_path, SWEEP)), "--out", str(other), "--no-progress"]) == 2
    assert "--out: expected a new folder" in capsys.readouterr().err
    assert (other / "precious.txt").read_text() == "keep"


def test_sweep_runs_each_combination_once_with_its_values_and_figures(embedded):
    runs = pd.read_parquet(embedded / "runs.parquet")
    assert sorted(runs["prosumers.pv_kwp"]) == [5.0, 10.0, 15.0, 20.0] and set(runs.status) == {"ok"}
    assert (runs.variant == "market").all()
    for _, r in runs.iterrows():  # the full results of each run stay available by path
        assert (embedded / r.path / "rounds.parquet").is_file() and (embedded / r.path / "baseline").is_dir()
    big, small = (runs.set_index("prosumers.pv_kwp").loc[k] for k in (20.0, 5.0))
    assert big.vm_max_pu > small.vm_max_pu and big.reverse_power_kwh > small.reverse_power_kwh
    assert big.trafo_hot_spot_max_c > small.trafo_hot_spot_max_c > 0
    assert 0 < small.trafo_ageing_rate < big.trafo_ageing_rate
    assert (embedded / "study.yaml").is_file()


def test_resume_skips_finished_runs_and_redoes_the_missing_one(tmp_path, embedded):
    path = _write(tmp_path, SWEEP)
    out = tmp_path / "out"
    shutil.copytree(embedded, out)  # a study folder keeps working where it is moved
    first = pd.read_parquet(out / "runs.parquet")
    kept, lost = (out / p for p in first.path[:2])
    stamp = (kept / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(lost)  # as if the study had been interrupted before this run finished
    run_study(path, out=out, workers=1, resume=True, progress=False, report=False)
    again = pd.read_parquet(out / "runs.parquet")
    assert (kept / "metrics.json").stat().st_mtime_ns == stamp  # not run again
    assert (lost / "metrics.json").is_file()
    pd.testing.assert_frame_equal(first[DETERMINISTIC], again[DETERMINISTIC], rtol=REL)


def test_sigterm_leaves_no_results_folder_and_resume_carries_on_from_the_partial_one(tmp_path, embedded):
    """SIGTERM stops `cosim study` like Ctrl-C (exit 130): no `--out` folder, the finished
    runs kept in the hidden partial folder, from which ``--resume`` finishes the study."""
    path, out = _write(tmp_path, {**SWEEP, "axes": {"prosumers.pv_kwp": [5.0, 10.0]}}), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cosim", "study", str(path), "--out", str(out), "--workers", "1",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((partial_folder(out) / "runs").glob("*/metrics.json")):  # one run has finished
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130 and "no results folder was written" in proc.stderr.read()
    assert not out.exists() and list((partial_folder(out) / "runs").glob("*/metrics.json"))
    run_study(path, out=out, workers=1, resume=True, progress=False, report=False)
    assert not partial_folder(out).exists()
    again = pd.read_parquet(out / "runs.parquet").set_index("prosumers.pv_kwp").sort_index()
    first = pd.read_parquet(embedded / "runs.parquet").set_index("prosumers.pv_kwp").loc[[5.0, 10.0]]
    pd.testing.assert_frame_equal(again[DETERMINISTIC], first[DETERMINISTIC], rtol=REL)


def test_a_failing_run_is_recorded_and_the_study_goes_on(tmp_path):
    study = {"name": "fails", "seeds": [1], "axes": {"mode": ["grid-connected", "islanded"]},
             "set": {"islanded.grid_forming_bus": 9999}}
    out = run_study(_write(tmp_path, study), out=tmp_path / "out", workers=1, progress=False)
    runs = pd.read_parquet(out / "runs.parquet").set_index("mode")
    assert runs.loc["grid-connected", "status"] == "ok"
    assert runs.loc["islanded", "status"] == "failed"
    assert "islanded.grid_forming_bus: expected a bus of network" in runs.loc["islanded", "error"]
    assert "Failed runs" in (out / "report.html").read_text()


def test_bisection_equals_a_brute_force_sweep_and_the_limits_are_monotone(tmp_path):
    """The search's answer for each seed is the largest level of a brute-force sweep over
    every level within the limits; within_limits is true up to it and false above, and the
    highest voltage rises with the PV share (the fleets are nested)."""
    path = _write(tmp_path, HOSTING)
    out = run_study(path, out=tmp_path / "out", workers=2, progress=False)
    searches = pd.read_parquet(out / "hosting.parquet").set_index("seed")
    assert (searches.status == "ok").all()
    assert (searches.runs <= 3).all()  # bisection over 6 levels: at most ceil(log2(7)) runs
    study = load_study(path)
    base = base_data(study, path)
    limits = study.hosting_capacity.limits.model_dump()
    runs_dir = (out / "runs").resolve()
    for values, period in hosting_groups(study, base):
        rows = []
        for level in study.hosting_capacity.levels:
            run = hosting_run(base, study, values, period, "passive", level)
            rows.append(execute(run.run_id, run.scenario, run.values, str(runs_dir), limits,
                                study.transformer.model_dump(), True))
        sweep = pd.DataFrame(rows)
        assert (sweep.status == "ok").all()
        within = sweep.within_limits.astype(bool).tolist()
        assert within == sorted(within, reverse=True), within  # monotone: true, then false
        assert sweep.vm_max_pu.is_monotonic_increasing
        brute = sweep["prosumers.pv_share"][sweep.within_limits.astype(bool)].max()
        assert 0.0 < brute < 1.0  # the limits break inside the range searched: the test can fail
        assert searches.loc[values["seed"], "hosting_capacity"] == pytest.approx(brute)
        assert searches.loc[values["seed"], "first_limit"] == "voltage_high"
    summary = pd.read_csv(out / "hosting_summary.csv")
    assert summary.setting.tolist() == ["passive"] and summary.seeds.iloc[0] == 2
    assert summary.p5.iloc[0] <= summary.p50.iloc[0] <= summary.p95.iloc[0]
    assert "Hosting-capacity curve" in (out / "report.html").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    """A dask process in its own session, so that it and its children can be stopped together."""
    return subprocess.Popen([str(BIN / "dask"), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_external_scheduler_and_two_workers_give_the_embedded_results(tmp_path, embedded):
    """A real scheduler and two workers on 127.0.0.1, started here; one worker is killed
    while runs are in progress: its run is run again on the other one and no run is lost.
    The figures equal the embedded cluster's; nothing is left running afterwards."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    worker = ["worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"]
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env)]
    result: dict = {}
    try:
        procs += [_start(worker, env) for _ in range(2)]
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        out = tmp_path / "out"
        path = _write(tmp_path, SWEEP)
        thread = threading.Thread(target=lambda: result.update(out=run_study(
            path, out=out, scheduler=address, progress=False, report=False)))
        thread.start()
        deadline = time.monotonic() + 60
        runs = partial_folder(out) / "runs"  # the study writes there until it is complete
        while time.monotonic() < deadline and not list(runs.glob(".*.partial")):
            time.sleep(0.05)
        in_progress = list(runs.glob(".*.partial"))
        _stop(procs[2], signal.SIGKILL)  # a worker dies mid-study
        thread.join(timeout=120)
    finally:
        for p in procs[::-1]:
            _stop(p)
    assert in_progress  # the worker was killed while a run was being written
    assert all(p.poll() is not None for p in procs)  # nothing left running
    out = result["out"]
    external = pd.read_parquet(out / "runs.parquet")
    local = pd.read_parquet(embedded / "runs.parquet")
    assert set(external.status) == {"ok"}  # no run lost
    assert external.run_id.tolist() == local.run_id.tolist()  # the same scenarios
    pd.testing.assert_frame_equal(external[DETERMINISTIC], local[DETERMINISTIC], rtol=REL)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "scenarios" / "studies").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_studies_are_valid_and_expand(path):
    from cosim.study.expand import check_axes, sweep_runs

    study = load_study(path)
    base = base_data(study, path)
    if study.hosting_capacity is None:
        runs = sweep_runs(study, path, base)
        assert len({r.run_id for r in runs}) == len(runs) > 1
    else:
        check_axes(study, path, base)
        assert len(study.seed_list) >= 20 and len(study.hosting_capacity.levels) == 21


def test_voltage_rise_limit_breaks_before_the_band_and_names_the_bus(tmp_path):
    """VDE-AR-N 4105 (2018), 5.3.2: generation may raise the voltage at any point of the LV
    network by at most 3 % against the network without it. With the band wide open
    (1.10 pu) and a rise limit of 0.8 %, the search stops at the rise limit. Checked by
    hand from the runs' buses.parquet against the reference run without PV: each run is
    within the limits exactly when its rise stays within 0.8 % at every LV bus in every
    round, a run that breaks names the bus where the rise first exceeds it, and the
    capacity is the largest PV share found within."""
    study = {"name": "rise", "seeds": [1], "hosting_capacity": {
        "penetration": "prosumers.pv_share", "low": 0.0, "high": 1.0, "step": 0.1, "settings": ["passive"],
        "limits": {"v_max_pu": 1.10, "voltage_rise_pct": 0.8}}}
    path = _write(tmp_path, study)
    out = run_study(path, out=tmp_path / "out", workers=1, progress=False, report=False)
    search = pd.read_parquet(out / "hosting.parquet").iloc[0]
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs.status == "ok").all()
    reference, tried = runs[runs.setting == "reference"], runs[runs.setting == "passive"]
    assert len(reference) == 1 and len(tried) >= 2
    ref_dir = out / reference.path.iloc[0]
    grid = pd.read_parquet(ref_dir / "grid_buses.parquet")
    lv = set(grid.bus[grid.vn_kv < 1.0])
    ref = pd.read_parquet(ref_dir / "baseline_no_feedback" / "buses.parquet")
    largest_rise = {}
    for _, run in tried.iterrows():
        buses = pd.read_parquet(out / run.path / "baseline_no_feedback" / "buses.parquet")
        joined = buses[buses.bus.isin(lv)].merge(ref, on=["round", "bus"], suffixes=("", "_ref"))
        rise_pct = (joined.vm_pu - joined.vm_pu_ref) * 100.0
        largest_rise[run["prosumers.pv_share"]] = rise_pct.max()
        assert run.vm_max_pu < 1.10  # the band holds: only the rise can break
        assert bool(run.within_limits) == bool((rise_pct <= 0.8).all())
        if not run.within_limits:
            first = joined[rise_pct > 0.8].iloc[0]
            assert run.first_limit == "voltage_rise"
            assert run.first_element == grid.set_index("bus").name.loc[int(first.bus)]
    within = tried[tried.within_limits.astype(bool)]
    assert len(within) and not tried.within_limits.astype(bool).all(), largest_rise  # the limit breaks inside
    assert search.status == "ok" and search.first_limit == "voltage_rise"
    assert search.hosting_capacity == pytest.approx(within["prosumers.pv_share"].max())
