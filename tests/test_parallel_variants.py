"""The fast paths give the plain path's results: variants run in parallel processes
(`cosim.sim.parallel`) write the same parquet files, summary and ledger, bit for bit, as
the same run made one variant after another, and an interrupted parallel run resumes to
the same results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import interrupt_round

from cosim.cli import main
from cosim.sim import loop
from cosim.virtual.ledger import verify

# two days on the small feeder: feedback binds (tight limits), batteries and an EV carry
# state from round to round, zero-intelligence bids draw from the random generator
SCENARIO = """
name: parallel
network: feeder
start: 2016-07-20 00:00
duration: 2d
seed: 11
prosumers: {pv_share: 0.9, pv_kwp: 10, battery_share: 0.4}
market: {bidding: zero-intelligence}
feedback:
  v_max_pu: 1.004
  max_loading_pct: 8
  charge_method: sensitivity
  charge_rate_per_kwh: 0.3
storage: {strategy: price, ev: {share: 0.3}}
"""
#: Columns that measure the machine, not the simulation.
TIMING = {"round_ms", "orders_ms", "clear_ms", "pf_ms", "sens_ms", "settle_ms", "ledger_ms", "ledger_cpu_ms",
          "record_ms", "round_cpu_ms", "info_update_ms", "info_solve_ms"}


def same_results(a: Path, b: Path, rtol: float = 0.0, parallel: bool = True) -> None:
    """Every parquet file equal to the last bit (timing columns aside; within `rtol`
    where given), the same ledger bytes and the same summary (its timing aside)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    for rel in files:
        ta, tb = pd.read_parquet(a / rel), pd.read_parquet(b / rel)
        ta = ta.drop(columns=[c for c in ta.columns if c in TIMING])
        tb = tb.drop(columns=[c for c in tb.columns if c in TIMING])
        pd.testing.assert_frame_equal(ta, tb, check_exact=not rtol, rtol=rtol, atol=rtol, obj=str(rel))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa.pop("timing")["variant_processes"] == 1
    assert (sb.pop("timing")["variant_processes"] > 1) == parallel
    if rtol:  # the ledger holds the last-bit differences, so its hashes differ
        sa.pop("ledger_head"), sb.pop("ledger_head")
        pd.testing.assert_frame_equal(pd.json_normalize(sa), pd.json_normalize(sb), rtol=rtol, atol=rtol)
        return
    assert (a / "ledger.jsonl").read_bytes() == (b / "ledger.jsonl").read_bytes()
    assert json.dumps(sa) == json.dumps(sb)  # the same keys in the same order too


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "s.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def plain(scenario) -> Path:
    return loop.run_scenario(scenario, out=scenario.parent / "plain", progress=False, report=False, workers=1)


@pytest.mark.parametrize("workers", [2, 4])
def test_parallel_variants_equal_one_after_another(scenario, plain, tmp_path, workers):
    """2 workers: the main variant here, the other three in one child (the two baselines
    in one pass, `PairedBaselines`); 4: the market without feedback and the paired
    baselines in a child each. The baseline's feedback binds in some rounds, so the
    paired pass has rounds where the two baselines part and join again."""
    rounds = pd.read_parquet(plain / "rounds.parquet")
    assert (rounds.iterations > 1).any(), "the scenario should exercise the feedback"
    baseline = pd.read_parquet(plain / "baseline" / "rounds.parquet")
    assert (baseline.iterations > 1).sum() >= 3
    fast = loop.run_scenario(scenario, out=tmp_path / "fast", progress=False, report=False, workers=workers)
    same_results(plain, fast)
    processes = json.loads((fast / "summary.json").read_text())["timing"]["variant_processes"]
    assert processes == min(workers, 3)


def test_a_failing_side_variant_fails_the_run_and_leaves_no_folder(scenario, tmp_path, monkeypatch):
    """A comparison variant that raises in its process fails the run with its traceback;
    no results folder and no partial folder are left, and no child process keeps running."""
    real = loop.VariantRunner.controllers

    def broken(self, t):
        if self.variant.name == "baseline" and t == 5:
            raise ValueError("broken on purpose")
        return real(self, t)

    monkeypatch.setattr(loop.VariantRunner, "controllers", broken)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        loop.run_scenario(scenario, out=tmp_path / "out", progress=False, report=False, workers=2)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    import multiprocessing as mp

    assert not [p for p in mp.active_children() if p.name.startswith("cosim-variants")]


def test_an_interrupted_parallel_run_resumes_to_the_same_results(scenario, plain, tmp_path, monkeypatch):
    """Ctrl-C in the main variant's 100th round (each process counts its own rounds): the
    partial folder keeps the main variant's checkpoint; ``cosim run --resume`` carries on
    the main variant and simulates the comparison variants again, with the plain results.

    To 1e-9, not to the last bit: with EVs, a resumed clearing can differ from the
    uninterrupted one in the last bit (1.8e-15 kW here), one after another as well as in
    parallel, where HiGHS starts a chunk from a fresh solver."""
    interrupt_round(monkeypatch, 100, only_pid=os.getpid())
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        loop.run_scenario(scenario, out=out, progress=False, report=False, chunk_rounds=24, workers=2)
    monkeypatch.undo()
    assert not out.exists() and (tmp_path / ".out.partial" / loop.CHECKPOINT).exists()
    assert main(["run", str(scenario), "--out", str(out), "--no-progress", "--no-report", "--resume",
                 "--workers", "2"]) == 0
    same_results(plain, out, rtol=1e-9)
    ok, message = verify(out)
    assert ok, message


def test_the_ledger_written_in_the_run_s_process_is_the_same(scenario, plain, tmp_path):
    """A study's run writes its ledger in its own process (``ledger_process=False``), so that
    one Dask worker keeps one core busy: the same ledger, byte for byte, and the same results."""
    same = loop.run_scenario(scenario, out=tmp_path / "inline", progress=False, report=False, ledger_process=False)
    same_results(plain, same, parallel=False)
    assert "ledger_process_cpu_s" not in json.loads((same / "summary.json").read_text())["timing"]


def test_workers_below_one_is_bad_input(scenario, tmp_path, capsys):
    """`--workers 0` exits 2, says what was expected and found, and writes nothing."""
    with pytest.raises(SystemExit) as stop:
        main(["run", str(scenario), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert stop.value.code == 2
    assert "--workers: expected a whole number of processes, at least 1, found '0'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
