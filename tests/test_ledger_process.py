"""The ledger's own process (`cosim.virtual.ledger_process`): the loop hands each round's rows to
a child that signs the controllers' orders, seals and writes the block. Its file must be
byte for byte the one a writer in the loop makes with orders the controllers signed
themselves, and a failure in the child must reach the loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cosim.config.load import load_scenario
from cosim.sim.loop import (
    OrderGate,
    open_ledger,
    prepare,
    run_scenario,
    simulate_variant,
    variants_for,
)
from cosim.virtual.admission import PENDING
from cosim.virtual.ledger import verify
from cosim.virtual.ledger_process import LedgerProcess, LedgerProcessError
from cosim.virtual.signing import SIGNATURE_BYTES

SCENARIO = """
name: ledger-process
network: feeder
start: 2016-06-14 10:00
duration: 3h
seed: 21
prosumers: {pv_share: 0.6, pv_kwp: 8, battery_share: 0.3}
market: {bidding: zero-intelligence}
feedback: {v_max_pu: 1.03, max_loading_pct: 40}
"""


@pytest.fixture(scope="module")
def scenario_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lp") / "s.yaml"
    path.write_text(SCENARIO)
    return path


def _ledger(scenario_path: Path, folder: Path, process: bool, defer: bool) -> bytes:
    sc = load_scenario(scenario_path)
    setup = prepare(sc, scenario_path)
    gate = OrderGate(sc, setup.fleet)
    gate.defer = defer
    folder.mkdir()
    ledger = open_ledger(setup, folder / "ledger.jsonl", gate, process=process)
    try:
        simulate_variant(setup, variants_for(sc)[0], folder, progress=False, ledger=ledger, gate=gate)
    finally:
        height, head = ledger.close()
    assert height == sc.n_rounds + 1
    data = (folder / "ledger.jsonl").read_bytes()
    assert data.splitlines()[-1].decode().count(head) == 1
    return data


def test_process_writes_what_the_loop_would(scenario_path, tmp_path):
    """Deferred signing in the child gives the same bytes as signatures made by the
    controllers in the loop and written in the loop (Ed25519 is deterministic, RFC 8032)."""
    in_loop = _ledger(scenario_path, tmp_path / "loop", process=False, defer=False)
    child = _ledger(scenario_path, tmp_path / "child", process=True, defer=True)
    assert child == in_loop
    orders = [o for line in child.splitlines()[1:] for o in json.loads(line)["orders"]]
    # an order committed with PENDING has no signature yet: every one was signed in the child
    assert orders and all(len(bytes.fromhex(o[6])) == SIGNATURE_BYTES != len(PENDING) for o in orders)


def test_a_run_with_the_process_verifies(scenario_path, tmp_path):
    run = run_scenario(scenario_path, out=tmp_path / "run", progress=False, report=False)
    ok, message = verify(run)
    assert ok, message


def test_a_failure_in_the_child_reaches_the_loop(tmp_path):
    """A block the child cannot write (a settlement with the wrong number of parties) is
    reported by the loop's next call, with the child's traceback, not lost."""
    ledger = LedgerProcess.new(tmp_path / "ledger.jsonl", 1, ["dso", "a", "b"], {}, "2016-01-01T00:00:00",
                               ["grid", "dso", "market_operator"], [-1, -1, -1])
    ledger.append_round(0, "2016-01-01T00:00:00", [], [], None, np.zeros((3, 10)))
    assert ledger.flush()[0] == 2
    ledger.append_round(1, "2016-01-01T00:15:00", [], [], None, np.zeros((2, 10)))
    with pytest.raises(LedgerProcessError, match="expected 3 party rows, found 2"):
        ledger.flush()
    ledger.close()  # after a failure: returns, does not hang
    assert len((tmp_path / "ledger.jsonl").read_text().splitlines()) == 2
