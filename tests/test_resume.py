"""Long runs: results stream to disk in chunks, and an interrupted run resumes from its
last checkpoint (``cosim run --resume``) with results identical to an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import interrupt_round

from cosim.cli import main
from cosim.sim import loop
from cosim.virtual.ledger import verify

# feedback binds (tight voltage and loading limits), zero-intelligence bids use the
# random generator, batteries carry state: everything a checkpoint must restore
SCENARIO = """
name: resume
network: feeder
start: 2016-07-21 08:00
duration: 6h
seed: 3
prosumers: {pv_share: 0.9, pv_kwp: 10, battery_share: 0.3}
market: {bidding: zero-intelligence}
feedback:
  v_max_pu: 1.02
  max_loading_pct: 12
  charge_method: sensitivity
  charge_rate_per_kwh: 0.3
"""
CHUNK = 5
#: Columns that measure the machine, not the simulation.
TIMING = {"round_ms", "orders_ms", "clear_ms", "pf_ms", "sens_ms", "settle_ms", "ledger_ms", "ledger_cpu_ms",
          "record_ms", "round_cpu_ms", "info_update_ms", "info_solve_ms"}


def _files(run: Path) -> list[Path]:
    return sorted(p.relative_to(run) for p in run.rglob("*.parquet"))


def _same_results(a: Path, b: Path) -> None:
    assert _files(a) == _files(b)
    for rel in _files(a):
        ta, tb = pd.read_parquet(a / rel), pd.read_parquet(b / rel)
        ta = ta.drop(columns=[c for c in ta.columns if c in TIMING])
        tb = tb.drop(columns=[c for c in tb.columns if c in TIMING])
        pd.testing.assert_frame_equal(ta, tb, check_exact=True, obj=str(rel))
    assert (a / "ledger.jsonl").read_bytes() == (b / "ledger.jsonl").read_bytes()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    sa.pop("timing"), sb.pop("timing")
    assert sa == sb


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("resume")
    path = folder / "s.yaml"
    path.write_text(SCENARIO)
    return path, loop.run_scenario(path, out=folder / "ref", progress=False, report=False, chunk_rounds=CHUNK)


def test_chunks_cover_every_round_once(reference):
    _, ref = reference
    rounds = pd.read_parquet(ref / "rounds.parquet")
    assert rounds["round"].tolist() == list(range(24))
    buses = pd.read_parquet(ref / "buses.parquet")
    assert sorted(buses["round"].unique()) == list(range(24))
    st = pd.read_parquet(ref / "settlement.parquet")
    assert st.groupby("round").bill.sum().abs().max() < 1e-9
    assert not (ref / ".parts").exists() and not list(ref.parent.glob(".ref.partial"))
    assert (rounds.iterations > 1).any(), "the scenario should exercise the feedback"


@pytest.mark.parametrize("interrupt_at", [13, 24 + 7, 48 + 11], ids=["market", "no_feedback", "baseline"])
def test_resume_gives_identical_results(reference, tmp_path, monkeypatch, interrupt_at):
    """Interrupt at the `interrupt_at`-th round simulated (over the three variants, 24
    rounds each), then resume: the results equal the uninterrupted run's, byte for byte
    in the ledger, and the ledger verifies."""
    path, ref = reference
    out = tmp_path / "out"
    interrupt_round(monkeypatch, interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        loop.run_scenario(path, out=out, progress=False, report=False, chunk_rounds=CHUNK)
    monkeypatch.undo()
    assert not out.exists(), "an interrupted run must not leave a results folder"
    partial = tmp_path / ".out.partial"
    assert (partial / loop.CHECKPOINT).exists()
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-report", "--resume"]) == 0
    assert not partial.exists()
    _same_results(ref, out)
    ok, message = verify(out)
    assert ok, message


def test_resume_without_checkpoint_is_bad_input(reference, tmp_path, capsys):
    path, _ = reference
    assert main(["run", str(path), "--out", str(tmp_path / "none"), "--no-progress", "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_resume_refuses_a_changed_scenario(reference, tmp_path, monkeypatch, capsys):
    path, _ = reference
    out = tmp_path / "out"
    interrupt_round(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        loop.run_scenario(path, out=out, progress=False, report=False, chunk_rounds=CHUNK)
    monkeypatch.undo()
    changed = tmp_path / "changed.yaml"
    changed.write_text(SCENARIO.replace("seed: 3", "seed: 12"))
    assert main(["run", str(changed), "--out", str(out), "--no-progress", "--resume"]) == 2
    assert "changed" in capsys.readouterr().err


def test_merge_parts_takes_the_union_of_columns(tmp_path):
    """A figure a mechanism reports only in some rounds becomes a column with nulls elsewhere."""
    from cosim.io.results import merge_parts

    a, b, c = tmp_path / "0.parquet", tmp_path / "1.parquet", tmp_path / "2.parquet"
    pd.DataFrame({"round": [0, 1], "x": [1.0, 2.0]}).to_parquet(a, index=False)
    pd.DataFrame({"round": pd.Series([], dtype="int64"), "x": pd.Series([], dtype=float)}).to_parquet(b, index=False)
    pd.DataFrame({"round": [2], "x": [3.0], "info_gain": [0.5]}).to_parquet(c, index=False)
    merge_parts([a, b, c], tmp_path / "all.parquet")
    merged = pd.read_parquet(tmp_path / "all.parquet")
    assert merged["round"].tolist() == [0, 1, 2]
    assert merged.x.tolist() == [1.0, 2.0, 3.0]
    assert merged.info_gain.isna().tolist() == [True, True, False] and merged.info_gain.iloc[2] == 0.5


def test_mechanism_figures_reach_rounds_parquet(tmp_path):
    """ClearingResult.info's numbers (here VCG's deficit and solve count) are columns
    info_<key> of rounds.parquet."""
    path = tmp_path / "vcg.yaml"
    path.write_text(SCENARIO.replace("name: resume", "name: vcg").replace("duration: 6h", "duration: 2h")
                    .replace("market: {bidding: zero-intelligence}", "market: {mechanism: vcg, bidding: zero-intelligence}"))
    run = loop.run_scenario(path, out=tmp_path / "out", progress=False, report=False, chunk_rounds=3)
    rounds = pd.read_parquet(run / "rounds.parquet")
    assert {"info_vcg_deficit", "info_operator_surplus"} <= set(rounds.columns)
    assert (rounds.info_vcg_deficit.dropna() >= -1e-9).all()


LONG = SCENARIO.replace("duration: 6h", "duration: 2d").replace("name: resume", "name: resume-long")


def test_sigterm_keeps_the_checkpoint_and_resume_finishes(tmp_path):
    """`cosim run` killed with SIGTERM (its whole process group, the ledger's process
    included) exits 130 and keeps the partial folder with its checkpoint; `--resume`
    then finishes the run with the results of an uninterrupted one, and the ledger
    verifies."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "long.yaml"
    path.write_text(LONG)
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    cmd = [sys.executable, "-m", "cosim", "run", str(path), "--out", str(out), "--no-progress", "--no-report",
           "--chunk-rounds", "8"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (partial / loop.CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert not out.exists() and (partial / loop.CHECKPOINT).exists()
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not partial.exists()
    ok, message = verify(out)
    assert ok, message
    ref = loop.run_scenario(path, out=tmp_path / "ref", progress=False, report=False, chunk_rounds=8)
    _same_results(ref, out)
