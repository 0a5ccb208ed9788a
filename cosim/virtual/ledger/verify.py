"""Verifying a run's ledger (`cosim ledger verify`).

`verify` checks the block format (`cosim.virtual.ledger.format`), the chain, every seal
and its quorum, replays order admission over the chain (signatures, round, nonce, one
order per prosumer, numbers; the physical limit is taken as recorded, since the ledger
does not hold the meters), checks that every round's bills sum to zero, that the genesis
keys are those the scenario's seed gives to the validators of scenario.yaml and the
prosumers of prosumers.parquet, that the settlement, trades and rejections equal the
run's parquet files row by row (`cosim.virtual.ledger.files`), and that the head is
summary.json's ``ledger_head`` (catches a truncated chain). Any change to the file, even
one character, fails at least one of these checks. It verifies every signature itself:
the shortcut a run may take for its own controllers' orders
(`cosim.virtual.admission.Admission`, ``signer``) is not used here. On a long ledger,
worker processes verify the signatures ahead of the chain and admission is replayed with
their results (`cosim.virtual.ledger.workers`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cosim.virtual.admission import ADMITTED, REASONS, Admission, SignedOrder
from cosim.virtual.ledger.files import COMPARE_ROUNDS, FILE_TABLES, FileCheck, read_errors
from cosim.virtual.ledger.format import (
    BLOCK_KEYS,
    GENESIS_PREV,
    ROLES,
    TABLES,
    LedgerError,
    canonical_json,
    check_rows,
    check_signature_rows,
    leaves,
    quorum,
    read_real,
    signed_orders,
)
from cosim.virtual.ledger.workers import CHUNK_BLOCKS, PARALLEL_MIN_BLOCKS, Signatures, blocks, cpus
from cosim.virtual.signing import (
    HASH_BYTES,
    derive_key,
    header_record,
    load_public_key,
    merkle_root,
    public_bytes,
    seal_message,
    sha256,
    verify_signature,
)

#: Hex digits of a hash that a message shows.
SHOWN_HASH_CHARS = 16
#: Largest sum of a round's bills that counts as zero [currency].
BALANCE_TOL = 1e-6
#: What checking a block raises when the block is not as the writer writes it (a field of
#: another type or shape than the format's, a number out of range of its encoding).
MALFORMED = (LedgerError, TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
             struct.error)


class _Vouched:
    """Stands in for the simulation's `Controllers` as the `signer` of the verifier's
    `Admission`: it vouches for exactly the orders of the block being replayed whose
    signatures a worker process verified (`ok`, ids of the order objects). Admission
    verifies every other order's signature itself, so a missing or negative result of a
    worker only means the signature is checked again here."""

    def __init__(self, public_keys: Mapping[str, bytes]):
        self.public_keys = public_keys
        self.ok: set[int] = set()

    def signed(self, order: SignedOrder) -> bool:
        return id(order) in self.ok


class Verifier:
    """Checks a ledger block by block in chain order (`block`), keeping the registry and
    gathering the rows that `FileCheck` compares with the run's files."""

    def __init__(self):
        self.prev = GENESIS_PREV
        self.validators: list[str] = []
        self.validator_keys: dict = {}
        self.prosumer_keys: dict[str, bytes] = {}
        self.admission: Admission | None = None
        self.vouched: _Vouched | None = None
        self.last_time: dt.datetime | None = None
        self.settlement: list[tuple] = []
        self.trades: list[tuple] = []
        self.rejections: list[tuple] = []
        self.rounds = 0

    def block(self, line_no: int, raw: bytes, signatures: Signatures | None = None) -> None:
        """Check one block; `signatures`, a worker's check of its signatures, spares
        verifying again those it found valid."""
        try:
            text = raw.decode("ascii")
            block = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LedgerError(f"not valid JSON ({err})") from None
        if not isinstance(block, dict):
            raise LedgerError("not a JSON object")
        height = line_no - 1
        kind = "genesis" if height == 0 else "round"
        if block.get("kind") != kind:
            raise LedgerError(f"expected a {kind} block, found kind {block.get('kind')!r}")
        if set(block) != BLOCK_KEYS[kind]:
            raise LedgerError(f"expected the fields {sorted(BLOCK_KEYS[kind])}, found {sorted(block)}")
        if canonical_json(block) != text:
            raise LedgerError("not in canonical form (keys sorted, no spaces, ASCII)")
        if block["height"] != height:
            raise LedgerError(f"height {block['height']} out of sequence, expected {height}")
        if block["round"] != height - 1:
            raise LedgerError(f"round {block['round']} out of sequence, expected {height - 1}")
        if block["prev_hash"] != self.prev:
            raise LedgerError("prev_hash does not match the previous block's hash")
        self._time(block["time"], kind)
        for table in TABLES[kind]:
            check_rows(table, block[table])
        if kind == "genesis":
            self._registry(block["keys"])
        self._seal(block, signatures)
        if kind == "round":
            self._orders(block, signatures)
            r = block["round"]
            bills = math.fsum(row[10] for row in block["settlement"] if type(row[10]) is float)
            if not abs(bills) <= BALANCE_TOL:
                raise LedgerError(f"settlement does not balance: the bills sum to {bills:.6g}, not zero")
            self.settlement += [(r, *row) for row in block["settlement"]]
            self.trades += [(r, *row) for row in block["trades"]]
            self.rounds += 1
        self.prev = block["hash"]

    def _time(self, value, kind: str) -> None:
        """An ISO 8601 time; rounds strictly one after the other."""
        try:
            t = dt.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise LedgerError(f"time {value!r} is not an ISO 8601 time") from None
        if kind == "genesis":
            return
        if self.last_time is not None and (t.tzinfo is None) != (self.last_time.tzinfo is None):
            raise LedgerError(f"time {value} and the previous block's are not both with (or both without) "
                              "a UTC offset")
        if self.last_time is not None and not t > self.last_time:
            raise LedgerError(f"time {value} is not after the previous block's")
        self.last_time = t

    def _registry(self, rows: list) -> None:
        seen = set()
        for role, name, key in rows:
            if role not in ROLES:
                raise LedgerError(f"keys: unknown role {role!r}")
            if (role, name) in seen:
                raise LedgerError(f"keys: {role} {name} registered twice")
            seen.add((role, name))
            if len(key) != 2 * HASH_BYTES:
                raise LedgerError(f"keys: public key of {role} {name} is not 32 bytes")
            try:
                public = load_public_key(bytes.fromhex(key))
            except ValueError:
                raise LedgerError(f"keys: public key of {role} {name} is not an Ed25519 key") from None
            if role == "validator":
                self.validators.append(name)
                self.validator_keys[name] = public
            else:
                self.prosumer_keys[name] = bytes.fromhex(key)
        if not self.validators:
            raise LedgerError("keys: no validators registered")
        self.vouched = _Vouched(self.prosumer_keys)
        self.admission = Admission(self.prosumer_keys, signer=self.vouched)

    def _seal(self, block: dict, signatures: Signatures | None = None) -> None:
        roots = {t: merkle_root(leaves(t, block[t])) for t in TABLES[block["kind"]]}
        stored = block["roots"]
        if not isinstance(stored, dict) or set(stored) != set(roots):
            raise LedgerError(f"roots: expected {sorted(roots)}")
        for t, r in roots.items():
            if stored[t] != r.hex():
                raise LedgerError(f"Merkle root of {t} does not match its rows")
        digest = sha256(header_record(block["height"], block["kind"], block["round"], block["time"],
                                      bytes.fromhex(block["prev_hash"]), roots))
        if block["hash"] != digest.hex():
            raise LedgerError("hash does not match the block header")
        sigs = block["signatures"]
        check_signature_rows(sigs)
        names = [s[0] for s in sigs]
        unknown = [n for n in names if n not in self.validator_keys]
        if unknown:
            raise LedgerError(f"signed by {unknown[0]!r}, who is not a validator")
        order = [self.validators.index(n) for n in names]
        if order != sorted(set(order)):
            raise LedgerError("signatures: repeated or not in the validators' order")
        message = seal_message(digest)
        # a worker checked these signatures of this hash with the same validators' keys
        valid = signatures.seals if signatures is not None and signatures.hash == block["hash"] else ()
        for name, sig in sigs:
            if (name, sig) in valid:
                continue
            if not verify_signature(self.validator_keys[name], bytes.fromhex(sig), message):
                raise LedgerError(f"signature of validator {name} is not valid")
        need = quorum(len(self.validators))
        if len(sigs) < need:
            raise LedgerError(
                f"signed by {len(sigs)} of {len(self.validators)} validators, a block needs "
                f"more than two thirds ({need})"
            )

    def _orders(self, block: dict, signatures: Signatures | None = None) -> None:
        rows = block["orders"]
        for k, row in enumerate(rows):
            if row[7] != ADMITTED and row[7] not in REASONS:
                raise LedgerError(f"orders row {k}: unknown outcome {row[7]!r}")
        orders = signed_orders(rows)
        recorded = [r[7] for r in rows]
        checked = signatures.orders if signatures is not None else None
        if checked is not None and len(checked) == len(orders):
            # the worker read the same line, so its rows are these rows, in this order
            self.vouched.ok = {id(o) for o, ok in zip(orders, checked, strict=True) if ok is True}
        try:
            outcomes = self.admission.admit(block["round"], orders, recorded=recorded)
        finally:
            self.vouched.ok = set()
        for k, (got, want) in enumerate(zip(outcomes, recorded, strict=True)):
            if got != want:
                raise LedgerError(
                    f"order {k} of {rows[k][0]} is recorded as {want!r}, but admission gives {got!r}"
                )
        self.rejections += [
            (block["round"], r[0], r[7], r[1], read_real(r[2]), read_real(r[3]), r[5]) for r in rows if r[7] != ADMITTED
        ]


def verify(run_dir: str | Path, *, workers: int | None = None, chunk: int = CHUNK_BLOCKS,
           min_blocks: int = PARALLEL_MIN_BLOCKS, compare_rounds: int = COMPARE_ROUNDS) -> tuple[bool, str]:
    """Check a run's ledger; returns (intact, a message naming the first bad block).

    See the module docstring for what is checked. The ledger is read one line at a time
    and its rows compared with the run's parquet files `compare_rounds` rounds at a time,
    so memory does not grow with the run (the verdict does not depend on it). If the
    ledger has at least `min_blocks` round blocks, `workers` processes (default: one per CPU available, none if there is only
    one) verify the Ed25519 signatures of its orders and seals, `chunk` blocks at a time,
    while this process checks every block in chain order as it does without them: the
    same checks, the same first bad block and the same message. A signature a worker found
    valid is not verified twice; every other one is verified here. A worker that dies
    raises `WorkerPoolError`: the ledger is then not judged.
    """
    run_dir = Path(run_dir)
    path = run_dir / "ledger.jsonl"
    if not path.exists():
        return False, f"{path}: no ledger"
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
        last = fh.read(1)
    if last != b"\n":
        return False, f"{path}: the last block is cut short (no newline at the end)"
    if workers is None:
        workers = cpus()
        workers = workers if workers > 1 else 0
    v = Verifier()
    files = FileCheck(run_dir, compare_rounds)  # opens the files at its first span, after the workers have started
    lines = blocks(path, v, workers, chunk, min_blocks)
    try:
        for line_no, raw, signatures in lines:
            try:
                v.block(line_no, raw, signatures)
            except MALFORMED as err:  # anything that stops a block from being checked makes it bad
                height = line_no - 1
                what = "genesis block" if height == 0 else f"block {height} (round {height - 1})"
                reason = str(err) if isinstance(err, LedgerError) else f"malformed ({type(err).__name__}: {err})"
                return False, f"{what} at line {line_no}: {reason}"
            files.take(v)
    finally:
        lines.close()
    try:
        files.take(v, final=True)
        ok, message = _against_files(run_dir, v, files)
    except read_errors() as err:  # an unreadable file of the run
        return False, f"the run's files cannot be checked against the ledger: {type(err).__name__}: {err}"
    if not ok:
        return False, message
    return True, (f"ledger intact: genesis + {v.rounds} blocks, {len(v.prosumer_keys)} prosumer keys, "
                  f"{len(v.validators)} validators (quorum {quorum(len(v.validators))}), head {v.prev[:SHOWN_HASH_CHARS]}...")


def _against_files(run_dir: Path, v: Verifier, files: FileCheck) -> tuple[bool, str]:
    head_block = f"block {v.rounds} (round {v.rounds - 1})" if v.rounds else "genesis block"
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return False, f"{summary_path}: missing, so the head of the chain cannot be checked"
    summary = json.loads(summary_path.read_text())
    head = summary.get("ledger_head")
    if head != v.prev:
        return False, (f"{head_block}, the last in the file, has hash {v.prev[:SHOWN_HASH_CHARS]}... but summary.json's "
                       f"ledger_head is {str(head)[:SHOWN_HASH_CHARS]}...: the chain was truncated or replaced")
    if summary.get("rounds") not in (None, v.rounds):
        return False, f"the ledger holds {v.rounds} rounds, summary.json {summary['rounds']}"
    problem = _keys_from_seed(run_dir, v)
    if problem:
        return False, f"genesis block at line 1: {problem}"
    for name in FILE_TABLES:
        if files.tables[name].missing:
            return False, f"{run_dir / name}.parquet: missing, so it cannot be checked against the ledger"
    for name in FILE_TABLES:
        table = files.tables[name]
        if table.error is not None:
            raise table.error
        if table.problem:
            return False, table.problem
    return True, ""


def _keys_from_seed(run_dir: Path, v: Verifier) -> str:
    """The genesis block must register the scenario's validators and prosumers (those of
    prosumers.parquet) with the keys the scenario's seed gives: a chain re-signed with
    other keys is caught here."""
    scenario_path = run_dir / "scenario.yaml"
    if not scenario_path.exists():
        return f"{scenario_path} is missing, so the keys cannot be checked against the seed"
    import yaml

    sc = yaml.safe_load(scenario_path.read_text())
    seed = sc.get("seed") if isinstance(sc, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        return f"{scenario_path} has no integer seed, so the keys cannot be checked against it"
    names = (sc.get("ledger") or {}).get("validators")
    if names is not None and list(names) != v.validators:
        return f"validators {v.validators} differ from the scenario's {list(names)}"
    prosumers_path = run_dir / "prosumers.parquet"
    if prosumers_path.exists():
        ids = pd.read_parquet(prosumers_path, columns=["id"])["id"].astype(str).tolist()
        if ids != list(v.prosumer_keys):
            return f"the prosumers registered differ from those of {prosumers_path.name}"
    for n in v.validators:
        if public_bytes(derive_key(seed, "validator", n)) != public_bytes(v.validator_keys[n]):
            return f"key of validator {n} is not the one the scenario's seed gives"
    for i, raw in v.prosumer_keys.items():
        if public_bytes(derive_key(seed, "prosumer", i)) != raw:
            return f"key of prosumer {i} is not the one the scenario's seed gives"
    return ""
