"""The ledger: one block per round, approved by a quorum of validators, checkable by anyone.

``ledger.jsonl`` holds one block per line, each a JSON object in canonical form: keys
sorted, no spaces, ASCII only, no NaN (a non-finite number of a rejected order is the
text ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``), one ``\\n`` after every block.

Line 1 is the **genesis block** (height 0, round -1): the public keys of every prosumer's
controller and of every validator (``keys``: rows ``[role, name, public key hex]``),
approved by the validators. Line ``t + 2`` is the block of round ``t`` (height ``t + 1``):

- ``prev_hash``: the previous block's hash; ``time``: the round's simulated start;
- ``orders``: every order that reached the market, in arrival order, rows
  ``[id, side, quantity_kwh, price_per_kwh, round, nonce, signature, outcome]``, outcome
  ``admitted`` or the rejection reason (`cosim.virtual.admission`);
- ``trades``: ``[seller, buyer, energy_kwh, price_per_kwh, seller_price_per_kwh,
  network_charge_per_kwh]``; ``settlement``: ``[party, bus, bought_kwh, sold_kwh,
  grid_import_kwh, grid_export_kwh, curtailed_kwh, shed_kwh, energy_cost,
  network_charges, bill]`` (the rows of trades.parquet and settlement.parquet);
- ``roots``: the Merkle root of each table (leaves: the rows' canonical encodings,
  `cosim.virtual.signing`); ``hash``: SHA-256 of the block header (height, kind, round, time,
  prev_hash, roots), so the hash commits to every row;
- ``signatures``: ``[validator, Ed25519 signature of the hash]`` in the genesis order of
  the validators. A block is valid only if every signature listed is valid and there
  are more than two thirds of the validators' (proof of authority).

`verify` checks all of that, replays order admission over the chain (signatures, round,
nonce, one order per prosumer, numbers; the physical limit is taken as recorded, since
the ledger does not hold the meters), checks that every round's bills sum to zero, that
the genesis keys are those the scenario's seed gives to the validators of scenario.yaml
and the prosumers of prosumers.parquet, that the settlement, trades and rejections equal
the run's parquet files row by row, and that the head is summary.json's ``ledger_head``
(catches a truncated chain). Any change to the file, even one character, fails at least
one of these checks. It verifies every signature itself: the shortcut a run may take for
its own controllers' orders (`cosim.virtual.admission.Admission`, ``signer``) is not used here (on
a long ledger, worker processes verify the signatures and admission is replayed with
their results, see `verify`).

What it does not do: it is not a distributed consensus network. The validators are
simulated in one process from keys derived from the seed, so whoever has the scenario
file can re-sign a rewritten chain (or re-run the scenario); and a colluding quorum of
validators can always approve a false block, as long as its orders carry valid
signatures and its bills balance. The guarantees hold as far as the keys are held apart
and fewer validators than a quorum collude. To pin a run, keep its ``ledger_head``
somewhere else: any rewritten run has another head.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import itertools
import json
import math
import multiprocessing as mp
import os
import signal
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from cosim.config.errors import InputError
from cosim.virtual.admission import (
    ADMITTED,
    PENDING,
    REASONS,
    REJECTION_COLUMNS,
    Admission,
    Commitments,
    SignedOrder,
)
from cosim.virtual.signing import (
    HASH_BYTES,
    KEY_TAG,
    SETTLEMENT_TAG,
    SIGNATURE_BYTES,
    TRADE_TAG,
    derive_key,
    encode_field,
    encode_record,
    header_record,
    load_public_key,
    merkle_root,
    order_message,
    public_bytes,
    seal_message,
    sha256,
    verify_signature,
)

GENESIS_PREV = "0" * 64
ORDER_FIELDS = ["id", "side", "quantity_kwh", "price_per_kwh", "round", "nonce", "signature", "outcome"]
TRADE_FIELDS = ["seller", "buyer", "energy_kwh", "price_per_kwh", "seller_price_per_kwh", "network_charge_per_kwh"]
SETTLEMENT_FIELDS = [
    "party", "bus", "bought_kwh", "sold_kwh", "grid_import_kwh", "grid_export_kwh", "curtailed_kwh",
    "shed_kwh", "energy_cost", "network_charges", "bill",
]
KEY_FIELDS = ["role", "name", "public_key"]
ROLES = ("prosumer", "validator")
#: Field types of each table's rows: s text, i integer, r real (float or non-finite
#: text), h hex text.
ROW_TYPES = {
    "keys": "ssh",
    "orders": "ssrriihs",
    "trades": "ssrrrr",
    "settlement": "si" + "r" * 9,
}
#: The Merkle-rooted tables of each kind of block.
TABLES = {"genesis": ("keys",), "round": ("orders", "settlement", "trades")}
BLOCK_KEYS = {
    kind: {"hash", "height", "kind", "prev_hash", "roots", "round", "signatures", "time", *tables}
    for kind, tables in TABLES.items()
}
#: Tolerance when comparing the ledger with the parquet files [kWh, currency].
FILE_TOL = 1e-9
#: Largest sum of a round's bills that counts as zero [currency].
BALANCE_TOL = 1e-6
#: Text columns of the tables compared with the parquet files.
TEXT_FIELDS = ("party", "seller", "buyer", "id", "reason", "side")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def quorum(n_validators: int) -> int:
    """Signatures a block needs: more than two thirds of the validators.

    >>> [quorum(n) for n in (1, 2, 3, 4, 5, 6, 7)]
    [1, 2, 3, 3, 4, 5, 5]
    """
    return 2 * n_validators // 3 + 1


def canonical_json(block: dict) -> str:
    return json.dumps(block, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def json_real(x: float) -> float | str:
    """A float as the ledger writes it: itself, or text if it is not finite."""
    if math.isfinite(x):
        return x
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def read_real(v) -> float:
    return _NONFINITE[v] if isinstance(v, str) else v


# -- leaves, shared by the writer and the verifier --------------------------------------
def order_leaf(row: list) -> bytes:
    id_, side, q, p, round_no, nonce, signature, outcome = row
    return (order_message(round_no, nonce, id_, side, read_real(q), read_real(p))
            + encode_field(bytes.fromhex(signature)) + encode_field(outcome))


_TAGS = {"keys": KEY_TAG, "trades": TRADE_TAG, "settlement": SETTLEMENT_TAG}
#: Packers of the numeric tail of trade and settlement rows, for speed: the same bytes
#: as `encode_record` for rows that pass `_check_rows` (a non-finite number, written as
#: text, makes the packer fail and the row goes through `encode_record`).
_TRADE_TAIL = struct.Struct(">" + "cd" * 4)
_SETTLEMENT_TAIL = struct.Struct(">cq" + "cd" * 9)
_TRADE_HEAD = TRADE_TAG + b"\x00"
_SETTLEMENT_HEAD = SETTLEMENT_TAG + b"\x00"


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"s" + len(raw).to_bytes(4, "big") + raw


def _trade_leaf(r: list) -> bytes:
    try:
        tail = _TRADE_TAIL.pack(b"f", r[2], b"f", r[3], b"f", r[4], b"f", r[5])
    except struct.error:
        return encode_record(TRADE_TAG, r)
    return _TRADE_HEAD + _text(r[0]) + _text(r[1]) + tail


def _settlement_leaf(r: list) -> bytes:
    try:
        tail = _SETTLEMENT_TAIL.pack(
            b"i", r[1], b"f", r[2], b"f", r[3], b"f", r[4], b"f", r[5], b"f", r[6], b"f", r[7], b"f", r[8],
            b"f", r[9], b"f", r[10],
        )
    except struct.error:
        return encode_record(SETTLEMENT_TAG, r)
    return _SETTLEMENT_HEAD + _text(r[0]) + tail


def leaves(table: str, rows: list[list]) -> list[bytes]:
    """The Merkle leaves of a table's rows (the rows as the ledger holds them)."""
    if table == "orders":
        return [order_leaf(r) for r in rows]
    if table == "trades":
        return [_trade_leaf(r) for r in rows]
    if table == "settlement":
        return [_settlement_leaf(r) for r in rows]
    tag = _TAGS[table]
    return [encode_record(tag, r) for r in rows]


def seal(block: dict, keys: Mapping, signers: Sequence[str], known: Mapping[str, list[bytes]] | None = None) -> dict:
    """Fill in a block's roots, hash and signatures from its rows.

    `keys` maps validator names to private keys; `signers` lists, in the genesis order,
    the validators who sign. The writer uses it with every validator; a test that plays
    colluding validators uses it with theirs. `known` holds leaves of some tables that
    the caller already encoded (the same bytes `leaves` gives).
    """
    known = known or {}
    roots = {t: merkle_root(known[t] if t in known else leaves(t, block[t])) for t in TABLES[block["kind"]]}
    header = header_record(block["height"], block["kind"], block["round"], block["time"],
                           bytes.fromhex(block["prev_hash"]), roots)
    digest = sha256(header)
    block["roots"] = {t: r.hex() for t, r in roots.items()}
    block["hash"] = digest.hex()
    message = seal_message(digest)
    block["signatures"] = [[name, keys[name].sign(message).hex()] for name in signers]
    return block


def validator_keys(seed: int, names: Sequence[str]) -> dict:
    return {n: derive_key(seed, "validator", n) for n in names}


# -- writing ----------------------------------------------------------------------------
def _columns(table: pd.DataFrame, fields: list[str], types: str) -> list[list]:
    """Rows of `table` as lists of plain Python values of the given field types (s text,
    i integer, r real: non-finite floats as text)."""
    cols = []
    for f, t in zip(fields, types, strict=True):
        col = table[f]
        if t == "r":
            arr = col.to_numpy(dtype=float)
            values = arr.tolist()
            if not np.isfinite(arr).all():
                values = [json_real(v) for v in values]
        elif t == "i":
            values = col.to_numpy(dtype=np.int64).tolist()
        else:
            values = [str(v) for v in col.tolist()]
        cols.append(values)
    return [list(r) for r in zip(*cols, strict=True)]


class LedgerWriter:
    """Writes ledger.jsonl: the genesis block on opening, then one block per round.

    Parameters
    ----------
    path : the ledger file
    seed : the scenario seed, from which the validators' keys are derived (and the
        controllers' keys, to sign the orders they committed to with
        `cosim.virtual.admission.PENDING`)
    validators : the validators' names, in order
    prosumer_keys : id -> 32-byte public key of each controller
    start : the run's start, the genesis block's time
    parties, buses : the settlement's parties and their buses, in the row order of the
        matrices `append_round` takes (`cosim.sim.settlement.parties`)
    """

    def __init__(self, path: Path, seed: int, validators: Sequence[str], prosumer_keys: Mapping[str, bytes],
                 start: str, parties: Sequence[str] = (), buses: Sequence[int] = ()):
        self._open(path, seed, validators, parties, buses)
        self._fh = self.path.open("w", encoding="ascii", newline="\n")
        self.height = 0
        self.head = GENESIS_PREV
        rows = [["prosumer", i, pk.hex()] for i, pk in prosumer_keys.items()]
        rows += [["validator", n, public_bytes(self.keys[n]).hex()] for n in self.validators]
        self._write({"height": 0, "kind": "genesis", "round": -1, "time": start, "prev_hash": GENESIS_PREV,
                     "keys": rows})

    def _open(self, path, seed, validators, parties, buses) -> None:
        self.path = Path(path)
        self.seed = seed
        self.validators = list(validators)
        self.keys = validator_keys(seed, self.validators)
        self.parties = [str(p) for p in parties]
        self.buses = [int(b) for b in buses]
        self._controller_keys: dict = {}
        # the leading fields of each party's settlement leaf (tag, party, bus) and the
        # encodings of names and outcomes, which recur every round
        self._settlement_heads = [_SETTLEMENT_HEAD + _text(p) + _BUS.pack(b"i", b)
                                  for p, b in zip(self.parties, self.buses, strict=True)]
        self._fields: dict[str, bytes] = {}

    @classmethod
    def resume(cls, path: Path, seed: int, validators: Sequence[str], height: int, head: str,
               parties: Sequence[str] = (), buses: Sequence[int] = ()) -> LedgerWriter:
        """A writer that carries on a chain cut back to its first `height` blocks (the
        genesis block and the blocks of rounds 0 .. height - 2), whose head is `head`."""
        self = cls.__new__(cls)
        self._open(path, seed, validators, parties, buses)
        keep = truncate_lines(self.path, height)
        if keep != height:
            raise RuntimeError(f"{self.path}: the checkpoint needs {height} blocks, the file has {keep}")
        self._fh = self.path.open("a", encoding="ascii", newline="\n")
        self.height = height
        self.head = head
        return self

    def _write(self, block: dict, known: Mapping[str, list[bytes]] | None = None) -> str:
        seal(block, self.keys, self.validators, known)
        self._fh.write(canonical_json(block) + "\n")
        self.head = block["hash"]
        self.height = block["height"] + 1
        return self.head

    def _orders(self, orders: Sequence[SignedOrder] | Commitments, outcomes: Sequence[str]) -> tuple[list[list], list[bytes]]:
        """The order rows and their Merkle leaves; an order committed with `PENDING` is
        signed here, with its controller's key."""
        if isinstance(orders, Commitments):
            orders = orders.orders()
        rows, leaves_ = [], []
        keys, fields = self._controller_keys, self._fields
        for o, outcome in zip(orders, outcomes, strict=True):
            q, p = o.quantity_kwh, o.price_per_kwh
            message = order_message(o.round, o.nonce, o.id, o.side, q, p)
            signature = o.signature
            if signature == PENDING:
                key = keys.get(o.id)
                if key is None:
                    key = keys[o.id] = derive_key(self.seed, "prosumer", o.id)
                signature = key.sign(message)
            rows.append([o.id, o.side, json_real(q), json_real(p), o.round, o.nonce, signature.hex(), outcome])
            tail = fields.get(outcome)
            if tail is None:
                tail = fields[outcome] = encode_field(outcome)
            sig = _SIGNATURE_FIELD + signature if len(signature) == SIGNATURE_BYTES else encode_field(signature)
            leaves_.append(message + sig + tail)
        return rows, leaves_

    def _text(self, name: str) -> bytes:
        field = self._fields.get(name)
        if field is None:
            field = self._fields[name] = _text(name)
        return field

    def append(self, round_no: int, time: str, orders: Sequence[SignedOrder], outcomes: Sequence[str],
               trades: pd.DataFrame, settlement: pd.DataFrame) -> str:
        """Add the block of one round from its tables; returns its hash."""
        order_rows, order_leaves = self._orders(orders, outcomes)
        return self._write({
            "height": self.height, "kind": "round", "round": int(round_no), "time": time, "prev_hash": self.head,
            "orders": order_rows,
            "trades": _columns(trades, TRADE_FIELDS, ROW_TYPES["trades"]),
            "settlement": _columns(settlement, SETTLEMENT_FIELDS, ROW_TYPES["settlement"]),
        }, {"orders": order_leaves})

    def append_round(self, round_no: int, time: str, orders: Sequence[SignedOrder] | Commitments,
                     outcomes: Sequence[str],
                     trades: tuple | None, settlement: np.ndarray) -> str:
        """Add the block of one round from arrays (the loop's hot path); returns its hash.

        `trades` is `trade_payload` of the round's trades; `settlement` the settlement
        matrix (`cosim.sim.settlement.settle_matrix`: one row per party of `parties`, the
        columns of SETTLEMENT_FIELDS from bought_kwh to bill first).
        """
        known = {}
        order_rows, known["orders"] = self._orders(orders, outcomes)
        values = settlement[:, :len(SETTLEMENT_FIELDS) - 2]
        if len(values) != len(self.parties):
            raise ValueError(f"settlement: expected {len(self.parties)} party rows, found {len(values)}")
        rows = _real_rows(values)
        settlement_rows = [[p, b, *v] for p, b, v in zip(self.parties, self.buses, rows, strict=True)]
        tails = _real_fields(values)
        if tails is not None:
            known["settlement"] = [h + t for h, t in zip(self._settlement_heads, tails, strict=True)]
        trade_rows = []
        if trades is not None:
            sellers, buyers, numbers = trades
            trade_rows = [[s, b, *v] for s, b, v in zip(sellers, buyers, _real_rows(numbers), strict=True)]
            tails = _real_fields(numbers)
            if tails is not None:
                text = self._text
                known["trades"] = [_TRADE_HEAD + text(s) + text(b) + t
                                   for s, b, t in zip(sellers, buyers, tails, strict=True)]
        return self._write({
            "height": self.height, "kind": "round", "round": int(round_no), "time": time, "prev_hash": self.head,
            "orders": order_rows, "trades": trade_rows, "settlement": settlement_rows,
        }, known)

    def flush(self) -> tuple[int, str]:
        """Put every block appended so far on disk (before a checkpoint counts them);
        returns (blocks on disk, head hash)."""
        self._fh.flush()
        return self.height, self.head

    def close(self) -> tuple[int, str]:
        """Close the file; returns (blocks written, head hash)."""
        self._fh.close()
        return self.height, self.head


def _real_rows(values: np.ndarray) -> list[list]:
    """Rows of a float matrix as lists of floats, non-finite values as the ledger's text."""
    rows = values.tolist()
    if not np.isfinite(values).all():
        rows = [[json_real(v) for v in r] for r in rows]
    return rows


#: A real field of a record (`cosim.virtual.signing`): b"f" and a big-endian binary64.
_REAL_FIELD = np.dtype([("tag", "S1"), ("value", ">f8")])
_BUS = struct.Struct(">cq")
_SIGNATURE_FIELD = b"b" + SIGNATURE_BYTES.to_bytes(4, "big")


def _real_fields(values: np.ndarray) -> list[bytes] | None:
    """Each row of a float matrix as its record fields (the bytes `encode_field` gives
    each value, packed by numpy in one go); None if a value is not finite (such rows are
    encoded from the ledger's text, see `leaves`)."""
    if not np.isfinite(values).all():
        return None
    n, k = values.shape
    packed = np.empty((n, k), dtype=_REAL_FIELD)
    packed["tag"] = b"f"
    packed["value"] = values
    buf, width = packed.tobytes(), 9 * k
    return [buf[i:i + width] for i in range(0, n * width, width)]


def trade_payload(trades: pd.DataFrame | None) -> tuple | None:
    """A round's trades as (sellers, buyers, float matrix of TRADE_FIELDS[2:]), what
    `LedgerWriter.append_round` takes: cheaper than the table to hand to another process."""
    if trades is None or not len(trades):
        return None
    numbers = np.column_stack([trades[f].to_numpy(dtype=float) for f in TRADE_FIELDS[2:]])
    return [str(v) for v in trades["seller"].tolist()], [str(v) for v in trades["buyer"].tolist()], numbers


def truncate_lines(path: Path, n: int) -> int:
    """Cut a text file back to its first `n` lines; returns how many it kept."""
    kept, offset = 0, 0
    with open(path, "rb+") as fh:
        for line in fh:
            if kept == n or not line.endswith(b"\n"):
                break
            kept += 1
            offset += len(line)
        fh.truncate(offset)
    return kept


# -- verifying --------------------------------------------------------------------------
#: A ledger with fewer round blocks than this is verified in one process: starting the
#: worker processes would cost more than they save.
PARALLEL_MIN_BLOCKS = 200
#: Blocks whose signatures one worker process checks in one go.
CHUNK_BLOCKS = 64
#: Rounds of the ledger compared with the run's parquet files at a time, while the chain
#: is checked: the memory the comparison needs does not grow with the run.
COMPARE_ROUNDS = 512


class LedgerError(Exception):
    """The first thing found wrong in a ledger."""


#: The exact Python types of each table's fields as `json` reads a well-formed row, and
#: where its hex fields are, for `_check_rows`'s quick path.
_ROW_SHAPES = {table: tuple({"s": str, "i": int, "r": float, "h": str}[t] for t in types)
               for table, types in ROW_TYPES.items()}
_HEX_FIELDS = {table: tuple(k for k, t in enumerate(types) if t == "h") for table, types in ROW_TYPES.items()}
_HEX_DIGITS = "0123456789abcdef"


def _check_rows(table: str, rows) -> None:
    if not isinstance(rows, list):
        raise LedgerError(f"{table} is not a list")
    # quick path: every row a list of exactly the expected types, hex fields hex (a subset
    # of what `_check_row` accepts); otherwise every row is checked field by field, which
    # names the first that is wrong
    try:
        quick = {(type(row), *map(type, row)) for row in rows} <= {(list, *_ROW_SHAPES[table])}
        for j in _HEX_FIELDS[table]:
            quick = quick and all(map(_is_hex, [row[j] for row in rows]))
    except TypeError:  # a row that is not a sequence
        quick = False
    if not quick:
        for k, row in enumerate(rows):
            _check_row(table, k, row)


def _check_row(table: str, k: int, row) -> None:
    types = ROW_TYPES[table]
    if not isinstance(row, list) or len(row) != len(types):
        raise LedgerError(f"{table} row {k}: expected {len(types)} fields")
    for v, t in zip(row, types, strict=True):
        ok = (
            (t == "s" and isinstance(v, str))
            or (t == "i" and isinstance(v, int) and not isinstance(v, bool))
            or (t == "r" and (type(v) is float or v in _NONFINITE))
            or (t == "h" and isinstance(v, str) and _is_hex(v))
        )
        if not ok:
            raise LedgerError(f"{table} row {k}: field {v!r} is not of type {t!r}")


def _is_hex(v: str) -> bool:
    """Lowercase hex digits, an even number of them (strip leaves nothing only if every
    character is one of them)."""
    return len(v) % 2 == 0 and not v.strip(_HEX_DIGITS)


def _signed_orders(rows: list) -> list[SignedOrder]:
    """A block's order rows as the orders admission replays (rows that passed `_check_rows`)."""
    return [
        SignedOrder(r[0], r[1], read_real(r[2]), read_real(r[3]), r[4], r[5], bytes.fromhex(r[6])) for r in rows
    ]


class _Signatures(NamedTuple):
    """What a worker process found of one block's signatures (`_block_signatures`)."""

    hash: str
    """The block's hash as recorded, whose seal the signatures below were checked against."""
    seals: frozenset
    """The [validator, signature] pairs that are that validator's valid signature of the seal."""
    orders: tuple | None
    """Per order row: True if its signature is the registered key's signature of its bytes
    (None if the rows could not be read as orders)."""


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


class _Verifier:
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

    def block(self, line_no: int, raw: bytes, signatures: _Signatures | None = None) -> None:
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
            _check_rows(table, block[table])
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

    def _seal(self, block: dict, signatures: _Signatures | None = None) -> None:
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
        if not isinstance(sigs, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in sigs
        ):
            raise LedgerError("signatures: expected a list of [validator, signature]")
        for name, sig in sigs:
            if len(sig) != 2 * SIGNATURE_BYTES or not _is_hex(sig):
                raise LedgerError(f"signature of validator {name} is not {2 * SIGNATURE_BYTES} lowercase hex digits")
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
            try:
                self.validator_keys[name].verify(bytes.fromhex(sig), message)
            except Exception:
                raise LedgerError(f"signature of validator {name} is not valid") from None
        need = quorum(len(self.validators))
        if len(sigs) < need:
            raise LedgerError(
                f"signed by {len(sigs)} of {len(self.validators)} validators, a block needs "
                f"more than two thirds ({need})"
            )

    def _orders(self, block: dict, signatures: _Signatures | None = None) -> None:
        rows = block["orders"]
        for k, row in enumerate(rows):
            if row[7] != ADMITTED and row[7] not in REASONS:
                raise LedgerError(f"orders row {k}: unknown outcome {row[7]!r}")
        orders = _signed_orders(rows)
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


# -- signatures in worker processes ------------------------------------------------------
#: The registry of the ledger being verified, in a worker process: (prosumer id -> public
#: key, validator -> public key).
_WORKER_KEYS: tuple[dict, dict] = ({}, {})


def _start_worker(prosumers: Mapping[str, bytes], validators: Mapping[str, bytes]) -> None:
    global _WORKER_KEYS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what a Ctrl-C ends
    _WORKER_KEYS = ({i: load_public_key(k) for i, k in prosumers.items()},
                    {n: load_public_key(k) for n, k in validators.items()})


def _chunk_signatures(lines: list[bytes]) -> list[_Signatures | None]:
    """In a worker process: `_block_signatures` of each line."""
    return [_block_signatures(raw) for raw in lines]


def _block_signatures(raw: bytes) -> _Signatures | None:
    """The Ed25519 checks of one block's line that `_Verifier` would make: each validator's
    signature of the seal of the recorded hash, each order's signature with its id's
    registered key. Nothing else is judged here; None if the line is not a block."""
    prosumers, validators = _WORKER_KEYS
    try:
        block = json.loads(raw.decode("ascii"))
        digest = block["hash"]
        message = seal_message(bytes.fromhex(digest))
    except Exception:  # noqa: BLE001 - the main process says what is wrong with the block
        return None
    seals = set()
    try:
        for name, sig in block["signatures"]:
            key = validators.get(name)
            if key is not None and verify_signature(key, bytes.fromhex(sig), message):
                seals.add((name, sig))
    except Exception:  # noqa: BLE001
        pass  # what was found valid before a malformed entry is still valid
    orders = None
    if block.get("kind") == "round":
        try:
            orders = tuple(
                o.id in prosumers and verify_signature(prosumers[o.id], o.signature, o.message())
                for o in _signed_orders(block["orders"])
            )
        except Exception:  # noqa: BLE001
            orders = None
    return _Signatures(digest, frozenset(seals), orders)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _pool_context():
    """Fork where there is fork (a worker starts in milliseconds and imports nothing);
    spawn elsewhere."""
    if "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _read_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file without their newline, one at a time."""
    with path.open("rb") as fh:
        for raw in fh:
            yield raw[:-1] if raw.endswith(b"\n") else raw


def _blocks(path: Path, v: _Verifier, workers: int, chunk: int,
            min_blocks: int) -> Iterator[tuple[int, bytes, _Signatures | None]]:
    """(line number, line, signatures checked by a worker or None) of each block, in order.

    The genesis block comes first, with None: `v` checks it and so learns the registry.
    If at least `min_blocks` round blocks follow and `workers` > 0, `workers` processes
    check the signatures of the rest, `chunk` blocks at a time and a few chunks ahead of
    the caller, who checks each block in chain order as before. Closing the generator
    stops the workers.
    """
    lines = _read_lines(path)
    genesis = next(lines, None)
    if genesis is None:
        return
    yield 1, genesis, None
    head = list(itertools.islice(lines, min_blocks))
    if workers < 1 or len(head) < min_blocks or not v.validator_keys:
        for line_no, raw in enumerate(itertools.chain(head, lines), start=2):
            yield line_no, raw, None
        return
    validators = {n: public_bytes(k) for n, k in v.validator_keys.items()}
    source = itertools.chain(head, lines)
    try:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=_pool_context(), initializer=_start_worker,
            initargs=(dict(v.prosumer_keys), validators))
    except Exception:  # noqa: BLE001 - no workers to be had: check everything here
        pool = None
    pending: collections.deque = collections.deque()

    def submit() -> None:
        part = list(itertools.islice(source, chunk))
        if part:
            try:
                future = pool.submit(_chunk_signatures, part) if pool is not None else None
            except Exception:  # noqa: BLE001 - e.g. a worker died: the caller checks these blocks itself
                future = None
            pending.append((part, future))

    try:
        for _ in range(2 * workers + 1):  # keep every worker busy while the caller catches up
            submit()
        line_no = 1
        while pending:
            part, future = pending.popleft()
            submit()
            try:
                found = future.result() if future is not None else None
            except Exception:  # noqa: BLE001 - a worker failed: the caller checks these blocks itself
                found = None
            if found is None or len(found) != len(part):
                found = [None] * len(part)
            for raw, signatures in zip(part, found, strict=True):
                line_no += 1
                yield line_no, raw, signatures
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def verify(run_dir: str | Path, *, workers: int | None = None, chunk: int = CHUNK_BLOCKS,
           min_blocks: int = PARALLEL_MIN_BLOCKS) -> tuple[bool, str]:
    """Check a run's ledger; returns (intact, a message naming the first bad block).

    See the module docstring for what is checked. The ledger is read one line at a time
    and its rows compared with the run's parquet files `COMPARE_ROUNDS` rounds at a time,
    so memory does not grow with the run. If the ledger has at least `min_blocks` round
    blocks, `workers` processes (default: one per CPU available, none if there is only
    one) verify the Ed25519 signatures of its orders and seals, `chunk` blocks at a time,
    while this process checks every block in chain order as it does without them: the
    same checks, the same first bad block and the same message. A signature a worker found
    valid is not verified twice; every other one is verified here.
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
        workers = _cpus()
        workers = workers if workers > 1 else 0
    v = _Verifier()
    files = _FileCheck(run_dir)  # opens the files at its first span, after the workers have started
    blocks = _blocks(path, v, workers, chunk, min_blocks)
    try:
        for line_no, raw, signatures in blocks:
            try:
                v.block(line_no, raw, signatures)
            except Exception as err:  # anything that stops a block from being checked makes it bad
                height = line_no - 1
                what = "genesis block" if height == 0 else f"block {height} (round {height - 1})"
                reason = str(err) if isinstance(err, LedgerError) else f"malformed ({type(err).__name__}: {err})"
                return False, f"{what} at line {line_no}: {reason}"
            files.take(v)
    finally:
        blocks.close()
    try:
        files.take(v, final=True)
        ok, message = _against_files(run_dir, v, files)
    except Exception as err:  # an unreadable file of the run
        return False, f"the run's files cannot be checked against the ledger: {type(err).__name__}: {err}"
    if not ok:
        return False, message
    return True, (f"ledger intact: genesis + {v.rounds} blocks, {len(v.prosumer_keys)} prosumer keys, "
                  f"{len(v.validators)} validators (quorum {quorum(len(v.validators))}), head {v.prev[:16]}...")


def _against_files(run_dir: Path, v: _Verifier, files: _FileCheck) -> tuple[bool, str]:
    head_block = f"block {v.rounds} (round {v.rounds - 1})" if v.rounds else "genesis block"
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return False, f"{summary_path}: missing, so the head of the chain cannot be checked"
    summary = json.loads(summary_path.read_text())
    head = summary.get("ledger_head")
    if head != v.prev:
        return False, (f"{head_block}, the last in the file, has hash {v.prev[:16]}... but summary.json's "
                       f"ledger_head is {str(head)[:16]}...: the chain was truncated or replaced")
    if summary.get("rounds") not in (None, v.rounds):
        return False, f"the ledger holds {v.rounds} rounds, summary.json {summary['rounds']}"
    problem = _keys_from_seed(run_dir, v)
    if problem:
        return False, f"genesis block at line 1: {problem}"
    for name in _FILE_TABLES:
        if files.tables[name].missing:
            return False, f"{run_dir / name}.parquet: missing, so it cannot be checked against the ledger"
    for name in _FILE_TABLES:
        table = files.tables[name]
        if table.error is not None:
            raise table.error
        if table.problem:
            return False, table.problem
    return True, ""


def _keys_from_seed(run_dir: Path, v: _Verifier) -> str:
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


# -- the ledger against the run's parquet files ------------------------------------------
#: Each table compared: (columns, the columns rows are matched on, fields compared). `k`
#: is a row's place among its round's rows.
_FILE_TABLES = {
    "settlement": (["round", *SETTLEMENT_FIELDS], ["round", "party"], SETTLEMENT_FIELDS[1:]),
    "trades": (["round", *TRADE_FIELDS], ["round", "k"], TRADE_FIELDS),
    "rejections": (REJECTION_COLUMNS, ["round", "k"], REJECTION_COLUMNS[1:]),
}
#: Rows of a parquet file read in one batch.
_BATCH_ROWS = 1 << 16


class _FileCheck:
    """The ledger's settlement, trades and rejections against the run's parquet files,
    compared a span of rounds at a time while the chain is checked (`take`): the rows of
    rounds a <= round < b of the ledger with those of the file (the first span also takes
    the file's rows before round 0, the last every row of the file not taken yet). Rows
    are matched on round and party (settlement) or round and place in the round (trades,
    rejections), as a comparison of the whole tables would; as the spans go up in rounds,
    the first row that differs in a span is the first of the table. What is found is kept
    for `_against_files`, which reports it after the chain's and the summary's checks."""

    def __init__(self, run_dir: Path, span: int | None = None):
        self.run_dir = run_dir
        self.span = COMPARE_ROUNDS if span is None else span
        self.done = 0
        self.tables: dict[str, _FileTable] = {}  # opened at the first comparison

    def take(self, v: _Verifier, final: bool = False) -> None:
        """Compare the rows `v` gathered since the last call, if they make a span (or if
        `final`), and let `v` forget them."""
        if not final and v.rounds - self.done < self.span:
            return
        if not self.tables:
            self.tables = {name: _FileTable(self.run_dir / f"{name}.parquet", name, *spec)
                           for name, spec in _FILE_TABLES.items()}
        for name, table in self.tables.items():
            table.compare(getattr(v, name), None if final else v.rounds)
        v.settlement, v.trades, v.rejections = [], [], []
        self.done = v.rounds


class _FileTable:
    """One table of `_FileCheck`. Its file is read in batches as the spans go up if its
    round column is of integers that do not go down (as cosim writes it); otherwise it is
    read whole as before: ordered by round (stable, so rows keep their order within a
    round) if its rounds are integers, else kept whole with the ledger's rows and compared
    at the end in one go."""

    def __init__(self, path: Path, name: str, columns: list[str], on: list[str], fields: list[str]):
        self.name, self.columns, self.on, self.fields = name, columns, on, fields
        self.missing = not path.exists()
        self.error: Exception | None = None
        self.problem = ""
        self.whole = False  # compared in one go at the end
        self.kept: list[tuple] = []  # the ledger's rows, when compared in one go
        self.rest: pd.DataFrame | None = None  # the file's rows not compared yet (in round order)
        self.batches: Iterator | None = None  # the file's batches not read yet
        if self.missing:
            return
        try:
            try:
                self._stream(path)
                return
            except Exception:  # noqa: BLE001 - read as before, which raises what is wrong with the file
                self.batches = None
            rows = pd.read_parquet(path, columns=columns)
            r = rows["round"].to_numpy()
            if r.dtype.kind in "iu":
                self.rest = rows.iloc[np.argsort(r, kind="stable")]
            else:
                self.rest, self.whole = rows, True
        except Exception as err:  # noqa: BLE001 - reported after the chain, see `_against_files`
            self.error = err

    def _stream(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path, pre_buffer=False)
        schema = file.schema_arrow
        fields = [schema.field(c) for c in self.columns]  # KeyError if a column is missing
        if not pa.types.is_integer(schema.field("round").type):
            raise ValueError("round is not a column of integers")
        last = None
        for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=["round"]):
            rounds = batch.column(0)
            if rounds.null_count:
                raise ValueError("round has nulls")
            r = rounds.to_numpy()
            if len(r) and ((last is not None and r[0] < last) or (np.diff(r) < 0).any()):
                raise ValueError("rounds go down")
            last = r[-1] if len(r) else last
        self.rest = pa.schema(fields).empty_table().to_pandas()
        self.batches = file.iter_batches(batch_size=_BATCH_ROWS, columns=self.columns)

    def _upto(self, end: int | None) -> pd.DataFrame:
        """The file's rows not handed out yet whose round is below `end` (None: all)."""
        import pyarrow as pa

        parts = [self.rest]
        while self.batches is not None and (end is None or not len(parts[-1]) or parts[-1]["round"].iat[-1] < end):
            batch = next(self.batches, None)
            if batch is None:
                self.batches = None
                break
            parts.append(pa.Table.from_batches([batch]).to_pandas())
        parts = [p for p in parts if len(p)] or parts[:1]
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        cut = len(rows) if end is None else int(np.searchsorted(rows["round"].to_numpy(), end, side="left"))
        self.rest = rows.iloc[cut:]
        return rows.iloc[:cut]

    def compare(self, ledger_rows: list[tuple], end: int | None) -> None:
        """Compare `ledger_rows` (the ledger's rows of the rounds since the last call, up to
        `end`; None: the last call) with the file's."""
        if self.missing or self.error is not None:
            return
        try:
            if self.problem:  # the first row that differs is known: read on only for an unreadable file
                while end is None and self.batches is not None:
                    if next(self.batches, None) is None:
                        self.batches = None
                return
            if self.whole:
                self.kept += ledger_rows
                if end is not None:
                    return
                files, ledger_rows = self.rest, self.kept
            else:
                files = self._upto(end)
            led = pd.DataFrame(ledger_rows, columns=self.columns)
            if "k" in self.on:
                files = files.copy()
                for table in (files, led):
                    table["k"] = table.groupby("round").cumcount()
            self.problem = _compare(led, files, self.on, self.fields, self.name)
        except Exception as err:  # noqa: BLE001
            self.error = err


def _compare(led: pd.DataFrame, files: pd.DataFrame, on: list[str], fields: list[str], name: str) -> str:
    """'' if the ledger's rows equal the file's, else a message naming the first block that differs."""
    files = files.copy()
    led = led.copy()
    for table in (files, led):
        for f in fields:
            if table[f].dtype == object and f not in on and f not in TEXT_FIELDS:
                table[f] = table[f].map(read_real).astype(float)
    merged = led.merge(files, on=on, how="outer", suffixes=("", "_file"), indicator=True)
    bad = merged["_merge"] != "both"
    for f in fields:
        if f in on:
            continue
        a, b = merged[f], merged[f"{f}_file"]
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            a, b = a.astype(float).to_numpy(), b.astype(float).to_numpy()
            same = np.isclose(a, b, rtol=0.0, atol=FILE_TOL) | (np.isnan(a) & np.isnan(b))
        else:
            same = (a.astype(str) == b.astype(str)).to_numpy()
        bad |= ~same
    if not bad.any():
        return ""
    row = merged[bad].sort_values(on).iloc[0]
    r = int(row["round"])
    where = "only in the ledger" if row["_merge"] == "left_only" else (
        f"only in {name}.parquet" if row["_merge"] == "right_only" else f"differs from {name}.parquet")
    key = ", ".join(f"{k} {row[k]}" for k in on if k != "round")
    return f"block {r + 1} (round {r}): {name} row ({key}) {where}"


# -- showing ----------------------------------------------------------------------------
def _read_blocks(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "ledger.jsonl"
    if not path.exists():
        raise InputError(path, ["file not found"])
    blocks, problems = [], []
    for n, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), start=1):
        try:
            block = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {n}: not a JSON block ({err}); `cosim ledger verify` tells what is wrong")
            continue
        if isinstance(block, dict):
            blocks.append(block)
        else:
            problems.append(f"line {n}: expected a JSON object, found {type(block).__name__}")
    if problems:
        raise InputError(path, problems)
    return blocks


def _num(v, width: int = 10, digits: int = 4) -> str:
    return f"{v:{width}.{digits}f}" if isinstance(v, int | float) else f"{v:>{width}}"


def show(run_dir: str | Path, round_no: int | None = 0) -> str:
    """One block in readable form: the genesis block if `round_no` is None or -1."""
    blocks = _read_blocks(run_dir)
    want = -1 if round_no is None else round_no
    match = [b for b in blocks if b.get("round") == want]
    if not match:
        last = max((b.get("round", -1) for b in blocks), default=-1)
        raise InputError(Path(run_dir) / "ledger.jsonl",
                         [f"--round: expected a round between 0 and {last} (or --genesis), found {round_no}"])
    b = match[0]
    validators = [row[1] for row in blocks[0].get("keys", []) if row[0] == "validator"]
    signers = [s[0] for s in b.get("signatures", [])]
    head = "genesis block" if b["kind"] == "genesis" else f"block {b['height']} · round {b['round']}"
    lines = [
        f"{head} · time {b['time']}",
        f"  hash        {b['hash']}",
        f"  prev_hash   {b['prev_hash']}",
        *[f"  root {t:<10} {r}" for t, r in sorted(b.get("roots", {}).items())],
        f"  signed by   {len(signers)} of {len(validators)} validators (quorum {quorum(len(validators))}): "
        + ", ".join(signers),
    ]
    if b["kind"] == "genesis":
        lines.append(f"  keys ({len(b['keys'])}): role name public_key")
        lines += [f"    {role:<9} {name:<12} {key}" for role, name, key in b["keys"]]
        return "\n".join(lines)
    orders = b["orders"]
    n_admitted = sum(o[7] == ADMITTED for o in orders)
    lines.append(f"  orders ({len(orders)}: {n_admitted} admitted, {len(orders) - n_admitted} rejected)")
    lines.append(f"    {'id':<8} {'side':<5} {'quantity_kwh':>12} {'price_per_kwh':>13} {'round':>6} {'nonce':>6}  outcome")
    lines += [f"    {o[0]:<8} {o[1]:<5} {_num(o[2], 12)} {_num(o[3], 13)} {o[4]:>6} {o[5]:>6}  {o[7]}" for o in orders]
    lines.append(f"  trades ({len(b['trades'])}): seller -> buyer, energy_kwh, price_per_kwh, network_charge_per_kwh")
    lines += [f"    {t[0]:<12} -> {t[1]:<12} {_num(t[2])} {_num(t[3])} {_num(t[5])}" for t in b["trades"]]
    lines.append(f"  settlement ({len(b['settlement'])}): party, bought_kwh, sold_kwh, bill (positive = pays)")
    lines += [f"    {s[0]:<16} {_num(s[2])} {_num(s[3])} {_num(s[10])}" for s in b["settlement"]]
    return "\n".join(lines)


def rejection_rows(round_no: int, orders: Sequence[SignedOrder], outcomes: Sequence[str]) -> pd.DataFrame:
    """The round's rows of rejections.parquet."""
    rows = [
        (round_no, o.id, out, o.side, o.quantity_kwh, o.price_per_kwh, o.nonce)
        for o, out in zip(orders, outcomes, strict=True) if out != ADMITTED
    ]
    return pd.DataFrame(rows, columns=REJECTION_COLUMNS)
