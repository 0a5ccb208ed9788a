"""The ledger (`cosim.virtual.ledger`): `cosim ledger verify` passes an intact run and catches any
tampering with the chain, its blocks or the run's files; a false block needs a quorum of
colluding validators; `cosim ledger show` prints a block."""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import cosim.virtual.admission
from cosim.cli import main
from cosim.sim.loop import run_scenario
from cosim.virtual.admission import ADMITTED, SignedOrder
from cosim.virtual.ledger import (
    SETTLEMENT_FIELDS,
    TRADE_FIELDS,
    LedgerWriter,
    WorkerPoolError,
    canonical_json,
    quorum,
    seal,
    show,
    validator_keys,
    verify,
)
from cosim.virtual.signing import derive_key, public_bytes

ATTACK_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "rural3-ledger-attack.yaml"
SEED = 9
#: Tolerance of the settlement totals [kWh, currency].
TOTAL_TOL = 1e-9
N_RANDOM_EDITS = 210
SCENARIO = """
name: ledger-e2e
network: feeder
start: 2016-06-14 12:00
duration: 2h
seed: {seed}
prosumers: {{pv_share: 0.4, pv_kwp: 10, battery_share: 0.3}}
market: {{bidding: zero-intelligence}}
"""


@pytest.fixture(scope="module")
def attack_ledger() -> dict:
    """The ledger section (validators, adversary) of scenarios/rural3-ledger-attack.yaml."""
    return yaml.safe_load(ATTACK_SCENARIO.read_text())["ledger"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, attack_ledger) -> Path:
    """A short run on the small feeder with the attack scenario's validators and
    adversary (stronger shares, so that a few rounds see every attack)."""
    base = tmp_path_factory.mktemp("ledger")
    section = {"validators": attack_ledger["validators"],
               "adversary": {k: min(1.0, 6 * v) for k, v in attack_ledger["adversary"].items()}}
    path = base / "s.yaml"
    path.write_text(SCENARIO.format(seed=SEED) + "ledger: " + json.dumps(section) + "\n")
    return run_scenario(path, out=base / "run", progress=False, report=False)


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A copy of the run to tamper with."""
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _lines(run: Path) -> list[str]:
    return (run / "ledger.jsonl").read_text().splitlines()


def _write_lines(run: Path, lines: list[str]) -> None:
    (run / "ledger.jsonl").write_text("".join(line + "\n" for line in lines))


def _blocks(run: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(run)]


def _bad(run: Path, *fragments: str) -> str:
    ok, message = verify(run)
    assert not ok, "tampering went unnoticed"
    for f in fragments:
        assert f in message, message
    return message


# -- intact ---------------------------------------------------------------------------
def test_intact_run_verifies(run, attack_ledger, capsys):
    ok, message = verify(run)
    assert ok, message
    n = len(attack_ledger["validators"])
    assert f"{n} validators (quorum {quorum(n)})" in message
    assert main(["ledger", "verify", str(run)]) == 0
    assert "ledger intact" in capsys.readouterr().out
    # the run saw every attack of the scenario, so the chain holds rejections to replay
    reasons = set(pd.read_parquet(run / "rejections.parquet").reason)
    assert reasons == {"bad_signature", "wrong_round", "reused_nonce", "exceeds_physical_limit"}


def test_quorum_is_more_than_two_thirds():
    for n in range(1, 40):
        q = quorum(n)
        assert 3 * q > 2 * n and 3 * (q - 1) <= 2 * n


def test_writer_reproduces_the_ledger_byte_for_byte(run, tmp_path):
    """Writing the recorded blocks' contents again gives the same file: the format is
    canonical and the signatures deterministic (Ed25519, RFC 8032)."""
    blocks = _blocks(run)
    genesis = blocks[0]
    prosumers = {name: bytes.fromhex(key) for role, name, key in genesis["keys"] if role == "prosumer"}
    validators = [name for role, name, _ in genesis["keys"] if role == "validator"]
    writer = LedgerWriter(tmp_path / "ledger.jsonl", SEED, validators, prosumers, genesis["time"])
    for b in blocks[1:]:
        orders = [SignedOrder(o[0], o[1], *[float(v) for v in o[2:4]], o[4], o[5], bytes.fromhex(o[6]))
                  for o in b["orders"]]
        writer.append(b["round"], b["time"], orders, [o[7] for o in b["orders"]],
                      pd.DataFrame(b["trades"], columns=TRADE_FIELDS),
                      pd.DataFrame(b["settlement"], columns=SETTLEMENT_FIELDS))
    writer.close()
    assert (tmp_path / "ledger.jsonl").read_bytes() == (run / "ledger.jsonl").read_bytes()
    assert writer.head == json.loads((run / "summary.json").read_text())["ledger_head"]


def test_settlement_totals_equal_settlement_parquet(run):
    rows = [[b["round"], *s] for b in _blocks(run)[1:] for s in b["settlement"]]
    ledger = pd.DataFrame(rows, columns=["round", *SETTLEMENT_FIELDS])
    files = pd.read_parquet(run / "settlement.parquet")
    numbers = SETTLEMENT_FIELDS[2:]
    np.testing.assert_allclose(ledger.groupby("round")[numbers].sum(), files.groupby("round")[numbers].sum(),
                               rtol=0, atol=TOTAL_TOL)
    np.testing.assert_allclose(ledger[numbers].sum(), files[numbers].sum(), rtol=0, atol=TOTAL_TOL)
    assert ledger.groupby("round").bill.sum().abs().max() < TOTAL_TOL
    trades = pd.DataFrame([[b["round"], *t] for b in _blocks(run)[1:] for t in b["trades"]],
                          columns=["round", *TRADE_FIELDS])
    np.testing.assert_allclose(trades.groupby("round").energy_kwh.sum(),
                               pd.read_parquet(run / "trades.parquet").groupby("round").energy_kwh.sum(), atol=TOTAL_TOL)


# -- one character --------------------------------------------------------------------
def test_random_one_character_edits_are_all_detected(run, copy):
    """210 seeded edits, each replacing, inserting or deleting one character anywhere in
    ledger.jsonl: every one is caught."""
    text = (run / "ledger.jsonl").read_text()
    rnd = random.Random(20240614)
    alphabet = string.printable + "é"
    missed = []
    for k in range(N_RANDOM_EDITS):
        i = rnd.randrange(len(text))
        kind = ("replace", "replace", "insert", "delete")[k % 4]
        if kind == "replace":
            c = rnd.choice([ch for ch in alphabet if ch != text[i]])
            edited = text[:i] + c + text[i + 1:]
        elif kind == "insert":
            edited = text[:i] + rnd.choice(alphabet) + text[i:]
        else:
            edited = text[:i] + text[i + 1:]
        (copy / "ledger.jsonl").write_bytes(edited.encode())
        ok, message = verify(copy)
        if ok:
            missed.append((kind, i, text[max(0, i - 20):i + 20]))
    assert not missed, f"{len(missed)} of {N_RANDOM_EDITS} edits went unnoticed: {missed[:5]}"


def test_targeted_one_character_edits(run, copy):
    """Edits a random position is unlikely to hit: the case of a hex digit in a seal, an
    order signature, a key or a hash; the last digit of a number; a space."""
    text = (run / "ledger.jsonl").read_text()
    blocks = _blocks(run)
    targets = [
        blocks[2]["signatures"][0][1], blocks[1]["orders"][0][6], blocks[0]["keys"][0][2],
        blocks[3]["prev_hash"], blocks[2]["roots"]["settlement"], blocks[4]["hash"],
    ]
    for hex_text in targets:
        at = text.index(hex_text)
        j = next(k for k, ch in enumerate(hex_text) if ch in "abcdef")
        edited = text[:at + j] + hex_text[j].upper() + text[at + j + 1:]
        (copy / "ledger.jsonl").write_text(edited)
        _bad(copy)
    for needle in ('"time"', ',"prev_hash"', '],"signatures":', '"orders":[['):
        at = text.index(needle, len(text) // 2) + 1
        (copy / "ledger.jsonl").write_text(text[:at] + " " + text[at:])
        _bad(copy)
    lines = _lines(run)
    row = next(r for r in blocks[2]["settlement"] if 0 <= r[1] % 10 < 9)
    before = json.dumps(row, separators=(",", ":"))
    after = json.dumps([row[0], row[1] + 1, *row[2:]], separators=(",", ":"))  # bus 3 -> 4: one digit
    assert lines[2].count(before) == 1 and len(after) == len(before)
    _write_lines(copy, [*lines[:2], lines[2].replace(before, after), *lines[3:]])
    _bad(copy, "line 3", "Merkle root of settlement")


# -- whole blocks ---------------------------------------------------------------------
def test_deleted_block(run, copy):
    lines = _lines(run)
    _write_lines(copy, lines[:3] + lines[4:])
    _bad(copy, "block 3 (round 2) at line 4", "height 4 out of sequence")
    _write_lines(copy, lines[1:])
    _bad(copy, "genesis block at line 1", "expected a genesis block")


def test_reordered_blocks(run, copy):
    lines = _lines(run)
    lines[2], lines[3] = lines[3], lines[2]
    _write_lines(copy, lines)
    _bad(copy, "block 2 (round 1) at line 3", "out of sequence")


def test_inserted_block(run, copy):
    """A block copied in from elsewhere in the chain, or a freshly made one that fits the
    chain but bears no validator's signature."""
    lines = _lines(run)
    _write_lines(copy, lines[:5] + [lines[2]] + lines[5:])
    _bad(copy, "line 6", "out of sequence")
    blocks = _blocks(run)
    forged = dict(blocks[-1], height=blocks[-1]["height"] + 1, round=blocks[-1]["round"] + 1,
                  prev_hash=blocks[-1]["hash"], time="2030-01-01T00:00:00+01:00")
    seal(forged, {}, [])
    _write_lines(copy, lines + [canonical_json(forged)])
    _bad(copy, f"line {len(lines) + 1}", "signed by 0 of 5 validators")
    naive = dict(forged, time="2030-01-01T00:00:00")  # the run's times carry their UTC offset
    seal(naive, {}, [])
    _write_lines(copy, lines + [canonical_json(naive)])
    _bad(copy, f"line {len(lines) + 1}", "UTC offset")


def test_duplicated_block(run, copy):
    lines = _lines(run)
    _write_lines(copy, lines[:4] + [lines[3]] + lines[4:])
    _bad(copy, "block 4 (round 3) at line 5", "height 3 out of sequence")
    _write_lines(copy, lines + [lines[-1]])
    _bad(copy, f"line {len(lines) + 1}")


def test_truncated_chain(run, copy):
    """Blocks cut from the end leave a valid chain; its head is not summary.json's."""
    lines = _lines(run)
    for keep in (len(lines) - 1, 3, 1):
        _write_lines(copy, lines[:keep])
        _bad(copy, "truncated", "ledger_head")
    (copy / "ledger.jsonl").write_text("\n".join(lines)[:-40])  # cut inside the last block
    _bad(copy, "cut short")
    (copy / "ledger.jsonl").write_text("")
    _bad(copy, "cut short")
    (copy / "ledger.jsonl").unlink()
    _bad(copy, "no ledger")


def test_truncated_chain_with_a_rewritten_summary(run, copy):
    """Whoever cuts the chain and fixes summary.json is still caught by the settlement."""
    lines = _lines(run)
    _write_lines(copy, lines[:-2])
    summary = json.loads((copy / "summary.json").read_text())
    summary["ledger_head"] = json.loads(lines[-3])["hash"]
    summary["rounds"] = len(lines) - 3
    (copy / "summary.json").write_text(json.dumps(summary))
    _bad(copy, f"block {len(lines) - 2} (round {len(lines) - 3})", "only in settlement.parquet")


# -- the run's files ------------------------------------------------------------------
def test_files_must_agree_with_the_ledger(run, copy):
    st = pd.read_parquet(run / "settlement.parquet")
    st.loc[st.index[st["round"] == 2][0], "bill"] += 0.01
    st.to_parquet(copy / "settlement.parquet", index=False)
    _bad(copy, "block 3 (round 2)", "differs from settlement.parquet")
    shutil.copy(run / "settlement.parquet", copy / "settlement.parquet")

    tr = pd.read_parquet(run / "trades.parquet")
    tr.loc[tr.index[-1], "price_per_kwh"] *= 1.5
    tr.to_parquet(copy / "trades.parquet", index=False)
    _bad(copy, "differs from trades.parquet")
    shutil.copy(run / "trades.parquet", copy / "trades.parquet")

    rj = pd.read_parquet(run / "rejections.parquet")
    rj.iloc[1:].to_parquet(copy / "rejections.parquet", index=False)
    _bad(copy, "rejections")
    rj.assign(reason=rj.reason.where(rj.index != 0, "unknown_key")).to_parquet(copy / "rejections.parquet", index=False)
    _bad(copy, "differs from rejections.parquet")
    shutil.copy(run / "rejections.parquet", copy / "rejections.parquet")

    for name in ("trades.parquet", "summary.json"):
        (copy / name).unlink()
        _bad(copy, "missing")
        shutil.copy(run / name, copy / name)
    ok, message = verify(copy)
    assert ok, message


# -- validators: minority, quorum, and what no quorum can do -----------------------------
def _collude(copy: Path, validators: list[str], signers: list[str], edit, round_no: int) -> None:
    """Colluding `signers` change the block of `round_no` with `edit`, re-seal it and every
    later block, and publish files that agree with their chain."""
    blocks = _blocks(copy)
    keys = validator_keys(SEED, validators)
    start = round_no + 1
    edit(blocks[start])
    prev = blocks[start - 1]["hash"]
    for b in blocks[start:]:
        b["prev_hash"] = prev
        seal(b, keys, signers)
        prev = b["hash"]
    _write_lines(copy, [canonical_json(b) for b in blocks])
    rows = [[b["round"], *s] for b in blocks[1:] for s in b["settlement"]]
    st = pd.read_parquet(copy / "settlement.parquet")
    st[SETTLEMENT_FIELDS] = pd.DataFrame(rows, columns=["round", *SETTLEMENT_FIELDS])[SETTLEMENT_FIELDS].to_numpy()
    st = st.astype({"bus": "int64", **{c: float for c in SETTLEMENT_FIELDS[2:]}})
    st.to_parquet(copy / "settlement.parquet", index=False)
    summary = json.loads((copy / "summary.json").read_text())
    summary["ledger_head"] = prev
    (copy / "summary.json").write_text(json.dumps(summary))


def _shift_money(block: dict) -> None:
    """A false settlement that still balances: one prosumer pays 5 of another's bill."""
    rows = [r for r in block["settlement"] if r[0].startswith("P")]
    rows[0][10] += 5.0
    rows[1][10] -= 5.0


def test_minority_rejected_quorum_accepted(run, tmp_path, attack_ledger):
    """The documented limit of proof of authority: a false block signed by 1, 2 or 3 of
    the 5 validators (3 is a simple majority) is rejected; signed by 4, the quorum, it is
    accepted, as is everything a quorum signs."""
    validators = attack_ledger["validators"]
    need = quorum(len(validators))
    assert need == 4
    for k in range(1, len(validators) + 1):
        copy = Path(shutil.copytree(run, tmp_path / f"k{k}"))
        colluders = validators[:k]
        _collude(copy, validators, colluders, _shift_money, round_no=3)
        ok, message = verify(copy)
        if k < need:
            assert not ok and "block 4 (round 3)" in message, message
            assert f"signed by {k} of 5 validators, a block needs more than two thirds (4)" in message
        else:
            assert ok, message
    # a colluder cannot borrow an honest validator's name: its signature does not verify
    copy = Path(shutil.copytree(run, tmp_path / "borrowed"))
    keys = validator_keys(SEED, validators)
    keys[validators[3]] = derive_key(SEED, "validator", "impostor")
    blocks = _blocks(copy)
    seal(blocks[4], keys, validators[:4])
    _write_lines(copy, [canonical_json(b) for b in blocks])
    _bad(copy, "block 4 (round 3)", f"signature of validator {validators[3]} is not valid")


def test_a_quorum_cannot_forge_orders_or_balances(run, tmp_path, attack_ledger):
    """Even with every validator's key: an admitted order changed, a replayed or forged
    order recorded as admitted, a rejection dropped, a settlement that does not balance or
    a prosumer's key swapped in the genesis block is caught."""
    validators = attack_ledger["validators"]
    blocks = _blocks(run)
    r = next(b["round"] for b in blocks[1:] if any(o[7] == "wrong_round" for o in b["orders"]))

    def more_energy(block):
        o = next(o for o in block["orders"] if o[7] == ADMITTED)
        o[2] = o[2] + 1.0

    def admit_replay(block):
        next(o for o in block["orders"] if o[7] == "wrong_round")[7] = ADMITTED

    def drop_rejection(block):
        block["orders"] = [o for o in block["orders"] if o[7] != "wrong_round"]

    def unbalanced(block):
        block["settlement"][0][10] += 5.0

    cases = [
        (more_energy, "is recorded as 'admitted', but admission gives 'bad_signature'"),
        (admit_replay, "is recorded as 'admitted', but admission gives 'wrong_round'"),
        (unbalanced, "settlement does not balance"),
    ]
    for k, (edit, expected) in enumerate(cases):
        copy = Path(shutil.copytree(run, tmp_path / f"c{k}"))
        _collude(copy, validators, validators, edit, round_no=r)
        _bad(copy, f"block {r + 1} (round {r})", expected)
    copy = Path(shutil.copytree(run, tmp_path / "dropped"))
    _collude(copy, validators, validators, drop_rejection, round_no=r)
    _bad(copy, "rejections")

    copy = Path(shutil.copytree(run, tmp_path / "rekeyed"))
    blocks = _blocks(copy)
    thief = derive_key(SEED, "adversary", "thief")
    row = next(row for row in blocks[0]["keys"] if row[0] == "prosumer")
    row[2] = public_bytes(thief).hex()
    keys = validator_keys(SEED, validators)
    prev = "0" * 64
    for b in blocks:
        b["prev_hash"] = prev
        seal(b, keys, validators)
        prev = b["hash"]
    _write_lines(copy, [canonical_json(b) for b in blocks])
    summary = json.loads((copy / "summary.json").read_text())
    summary["ledger_head"] = prev
    (copy / "summary.json").write_text(json.dumps(summary))
    message = _bad(copy)
    # the first order of that prosumer no longer verifies; had the thief re-signed it, the
    # key itself would be caught against the seed
    assert "bad_signature" in message or "seed gives" in message


def test_a_chain_resigned_with_other_keys(run, tmp_path, attack_ledger):
    """Outsiders who make their own validator keys (or add a prosumer of their own) can
    build a chain that is consistent in itself; the genesis keys are checked against the
    scenario's seed, and without scenario.yaml nothing can be vouched for."""
    validators = attack_ledger["validators"]
    own = {n: derive_key(SEED + 1000, "validator", n) for n in validators}

    def resign(copy, edit_genesis):
        blocks = _blocks(copy)
        edit_genesis(blocks[0])
        prev = "0" * 64
        for b in blocks:
            b["prev_hash"] = prev
            seal(b, own, validators)
            prev = b["hash"]
        _write_lines(copy, [canonical_json(b) for b in blocks])
        summary = json.loads((copy / "summary.json").read_text())
        summary["ledger_head"] = prev
        (copy / "summary.json").write_text(json.dumps(summary))

    def own_validators(genesis):
        for row in genesis["keys"]:
            if row[0] == "validator":
                row[2] = public_bytes(own[row[1]]).hex()

    def extra_prosumer(genesis):
        own_validators(genesis)
        genesis["keys"].insert(0, ["prosumer", "P999", public_bytes(derive_key(SEED, "prosumer", "P999")).hex()])

    copy = Path(shutil.copytree(run, tmp_path / "own"))
    resign(copy, own_validators)
    _bad(copy, "genesis block at line 1", f"key of validator {validators[0]} is not the one the scenario's seed gives")
    (copy / "scenario.yaml").unlink()
    _bad(copy, "scenario.yaml is missing")
    copy = Path(shutil.copytree(run, tmp_path / "extra"))
    resign(copy, extra_prosumer)
    _bad(copy, "the prosumers registered differ")


# -- the command line -----------------------------------------------------------------
def test_cli_verify_names_the_first_bad_block(run, copy, capsys):
    lines = _lines(run)
    for i in (5, 3):
        lines[i] = lines[i].replace('"kind":"round"', '"kind":"rounds"')
    _write_lines(copy, lines)
    assert main(["ledger", "verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("block 3 (round 2) at line 4:"), out


def test_cli_show(run, capsys):
    blocks = _blocks(run)
    b = next(b for b in blocks[1:] if any(o[7] != ADMITTED for o in b["orders"]))
    assert main(["ledger", "show", str(run), "--round", str(b["round"])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"block {b['height']} · round {b['round']} · time {b['time']}")
    assert b["hash"] in out and b["prev_hash"] in out
    assert "signed by   5 of 5 validators (quorum 4)" in out
    n_rejected = sum(o[7] != ADMITTED for o in b["orders"])
    assert f"orders ({len(b['orders'])}: {len(b['orders']) - n_rejected} admitted, {n_rejected} rejected)" in out
    for o in b["orders"]:
        assert any(line.split()[:2] == [o[0], o[1]] and line.split()[-1] == o[7] for line in out.splitlines())
    assert f"trades ({len(b['trades'])})" in out and f"settlement ({len(b['settlement'])})" in out
    assert show(run, b["round"]) == out.rstrip("\n")
    assert main(["ledger", "show", str(run), "--genesis"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("genesis block") and "validator" in out and blocks[0]["keys"][0][2] in out
    assert main(["ledger", "show", str(run), "--round", "999"]) == 2
    assert "--round" in capsys.readouterr().err


def test_cli_show_a_broken_ledger(run, copy, capsys):
    lines = _lines(run)
    lines[2] = lines[2][:-1]  # a block cut short: no longer JSON
    _write_lines(copy, lines)
    assert main(["ledger", "show", str(copy), "--round", "0"]) == 2
    assert "line 3: not a JSON block" in capsys.readouterr().err


def test_attack_scenario_file():
    """The shipped attack scenario: validators and an adversary, the quorum condition
    stated in its comments."""
    from cosim.config.load import load_scenario

    sc = load_scenario(ATTACK_SCENARIO)
    assert sc.n_rounds == 96 and len(sc.ledger.validators) == 5
    assert sc.ledger.quorum == quorum(5) == 4
    adv = sc.ledger.adversary
    assert min(adv.forged_share, adv.replay_share, adv.duplicate_share, adv.overdelivery_share) > 0
    text = ATTACK_SCENARIO.read_text()
    assert "more than two thirds" in text.lower() and "51 %" in text


# -- verifying a long ledger: signatures in worker processes, files by spans of rounds ---
#: Forces the parallel path on the short test run: two workers, two blocks a chunk.
PARALLEL = {"workers": 2, "chunk": 2, "min_blocks": 0}


def _same_verdicts(run: Path) -> tuple[bool, str]:
    """verify's verdict in one process and with workers: they must be the same."""
    sequential = verify(run, workers=0)
    assert verify(run, **PARALLEL) == sequential
    return sequential


def _reseal(run: Path, blocks: list[dict], validators: list[str], signers: list[str] | None = None) -> None:
    """Write `blocks`, every one re-sealed (by `signers`, default all validators) and
    chained, and the head into summary.json: what is left wrong is what was edited."""
    keys = validator_keys(SEED, validators)
    prev = "0" * 64
    for b in blocks:
        b["prev_hash"] = prev
        seal(b, keys, validators if signers is None else signers)
        prev = b["hash"]
    _write_lines(run, [canonical_json(b) for b in blocks])
    summary = json.loads((run / "summary.json").read_text())
    summary["ledger_head"] = prev
    (run / "summary.json").write_text(json.dumps(summary))


def _forge_order_signature(block: dict) -> int:
    """Flip one hex digit of the signature of an admitted order; returns its row."""
    k = next(k for k, o in enumerate(block["orders"]) if o[7] == ADMITTED)
    sig = block["orders"][k][6]
    block["orders"][k][6] = ("1" if sig[0] != "1" else "2") + sig[1:]
    return k


def test_parallel_verify_of_an_intact_ledger(run, monkeypatch):
    """Same verdict with workers, and the order signatures are verified in the workers:
    the main process verifies again only those a worker did not find valid (the forged
    ones of the attack)."""
    calls = []
    real = cosim.virtual.admission.verify_signature

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(cosim.virtual.admission, "verify_signature", counted)  # the main process's admission
    ok, message = verify(run, workers=0)
    assert ok, message
    outcomes = [o[7] for b in _blocks(run)[1:] for o in b["orders"]]
    assert len(calls) == len(outcomes) - outcomes.count("unknown_key")  # an unknown id has no key to verify with
    calls.clear()
    assert verify(run, **PARALLEL) == (ok, message)
    assert len(calls) == outcomes.count("bad_signature") > 0
    for chunk in (1, 3, 100):
        assert verify(run, workers=1, chunk=chunk, min_blocks=0) == (ok, message)


def test_parallel_verify_names_the_same_first_bad_block(run, tmp_path, attack_ledger):
    """A forged order signature or seal in a late block, alone or after a break of the
    chain in an earlier block: with workers the same block and the same message as in one
    process, the earlier block first."""
    validators = attack_ledger["validators"]
    last = len(_blocks(run)) - 1

    copy = Path(shutil.copytree(run, tmp_path / "order"))
    blocks = _blocks(copy)
    k = _forge_order_signature(blocks[last])
    _reseal(copy, blocks, validators)
    ok, message = _same_verdicts(copy)
    assert not ok
    assert message.startswith(f"block {last} (round {last - 1}) at line {last + 1}: order {k} of "), message
    assert "is recorded as 'admitted', but admission gives 'bad_signature'" in message
    lines = _lines(copy)
    b = json.loads(lines[2])
    b["prev_hash"] = "f" * 64  # the chain broken at block 2
    lines[2] = canonical_json(b)
    _write_lines(copy, lines)
    ok, message = _same_verdicts(copy)
    assert message == "block 2 (round 1) at line 3: prev_hash does not match the previous block's hash", message

    copy = Path(shutil.copytree(run, tmp_path / "seal"))
    blocks = _blocks(copy)
    keys = validator_keys(SEED, validators)
    keys[validators[1]] = derive_key(SEED, "validator", "impostor")
    seal(blocks[last], keys, validators)
    _write_lines(copy, [canonical_json(b) for b in blocks])
    ok, message = _same_verdicts(copy)
    assert message.startswith(f"block {last} (round {last - 1}) at line {last + 1}: "
                              f"signature of validator {validators[1]} is not valid"), message
    blocks[3]["time"] = blocks[2]["time"]  # an earlier block out of time order (and its hash off)
    _write_lines(copy, [canonical_json(b) for b in blocks])
    ok, message = _same_verdicts(copy)
    assert message.startswith("block 3 (round 2) at line 4: time "), message


def test_parallel_verify_of_random_edits(run, copy):
    """Seeded one-character edits anywhere: the same verdict and message with workers."""
    text = (run / "ledger.jsonl").read_text()
    rnd = random.Random(7)
    for _ in range(12):
        i = rnd.randrange(len(text))
        edited = text[:i] + rnd.choice([c for c in "0123456789abcdef,:[]" if c != text[i]]) + text[i + 1:]
        (copy / "ledger.jsonl").write_text(edited)
        ok, _ = _same_verdicts(copy)
        assert not ok


def test_a_dead_worker_is_an_error(run, monkeypatch):
    """A worker process that dies while it checks signatures stops the verification with
    `WorkerPoolError`: the ledger is not judged on what the main process alone checked."""
    import os

    import cosim.virtual.ledger.workers

    def die(*args):
        os._exit(1)

    monkeypatch.setattr(cosim.virtual.ledger.workers, "verify_signature", die)  # inherited by the forked workers
    with pytest.raises(WorkerPoolError, match="worker process"):
        verify(run, **PARALLEL)
    monkeypatch.undo()
    ok, message = verify(run, **PARALLEL)
    assert ok, message


@pytest.mark.parametrize("span", [1, 3])
def test_files_compared_by_spans_of_rounds(run, copy, span):
    """The parquet files are compared with the ledger a span of rounds at a time: the same
    verdicts and messages as one comparison of the whole tables, whatever the span, for
    files in round order or not."""
    def settlement_bill(d):
        st = pd.read_parquet(d / "settlement.parquet")
        st.loc[st.index[st["round"] == 4][2], "bill"] += 0.01
        st.to_parquet(d / "settlement.parquet", index=False)

    def shuffled(d):  # the rows in another order: the settlement is matched by party
        st = pd.read_parquet(d / "settlement.parquet")
        st.sample(frac=1.0, random_state=1).to_parquet(d / "settlement.parquet", index=False)

    def trade_moved_last(d):  # a round's last trade moved to the end: still last of its round
        tr = pd.read_parquet(d / "trades.parquet")
        i = tr.index[tr["round"] == 1][-1]
        pd.concat([tr.drop(index=i), tr.loc[[i]]]).to_parquet(d / "trades.parquet", index=False)

    def trades_swapped(d):  # two trades of a round in the other order
        tr = pd.read_parquet(d / "trades.parquet")
        i = tr.index[tr["round"] == tr["round"].value_counts().idxmax()][:2]
        tr.loc[i[::-1]] = tr.loc[i].to_numpy()
        tr.to_parquet(d / "trades.parquet", index=False)

    def extra_rows(d, r):
        st = pd.read_parquet(d / "settlement.parquet")
        pd.concat([st, st.iloc[[0]].assign(round=r)]).to_parquet(d / "settlement.parquet", index=False)

    def float_rounds(d):
        tr = pd.read_parquet(d / "trades.parquet")
        tr.assign(round=tr["round"].astype(float)).to_parquet(d / "trades.parquet", index=False)

    def rejection_dropped(d):
        rj = pd.read_parquet(d / "rejections.parquet")
        rj.drop(index=rj.index[len(rj) // 2]).to_parquet(d / "rejections.parquet", index=False)

    def missing_column(d):
        pd.read_parquet(d / "trades.parquet").drop(columns="buyer").to_parquet(d / "trades.parquet", index=False)

    def truncated(d):
        lines = _lines(d)
        _write_lines(d, lines[:-2])
        summary = json.loads((d / "summary.json").read_text())
        summary["ledger_head"] = json.loads(lines[-3])["hash"]
        summary["rounds"] = len(lines) - 3
        (d / "summary.json").write_text(json.dumps(summary))

    cases = [settlement_bill, shuffled, trade_moved_last, trades_swapped, lambda d: extra_rows(d, -1),
             lambda d: extra_rows(d, 999), float_rounds, rejection_dropped, missing_column, truncated]
    verdicts = []
    for tamper in cases:
        for name in ("ledger.jsonl", "summary.json", "settlement.parquet", "trades.parquet", "rejections.parquet"):
            shutil.copy(run / name, copy / name)
        tamper(copy)
        whole = verify(copy)
        assert verify(copy, compare_rounds=span) == whole, tamper
        if span > 1:
            assert verify(copy, compare_rounds=span, **PARALLEL) == whole, tamper
        verdicts.append(whole)
    assert [ok for ok, _ in verdicts] == [False, True, True, False, False, False, True, False, False, False]
    assert "block 5 (round 4): settlement row" in verdicts[0][1]
    assert verdicts[4][1].startswith("block 0 (round -1): settlement row") and "only in settlement" in verdicts[4][1]
    assert verdicts[5][1].startswith("block 1000 (round 999)")
    assert "cannot be checked" in verdicts[8][1]
