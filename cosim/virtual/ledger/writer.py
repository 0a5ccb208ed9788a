"""Writing the ledger: the genesis block on opening, then one sealed block per round.

The block format is in `cosim.virtual.ledger.format`. The loop's hot path is
`LedgerWriter.append_round`, which takes the round's arrays and encodes the Merkle
leaves of trades and settlement straight from them (the same bytes
`cosim.virtual.ledger.format.leaves` gives from the rows).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.virtual.admission import ADMITTED, PENDING, REJECTION_COLUMNS, Commitments, SignedOrder
from cosim.virtual.ledger.format import (
    GENESIS_PREV,
    ROW_TYPES,
    SETTLEMENT_FIELDS,
    SETTLEMENT_HEAD,
    TRADE_FIELDS,
    TRADE_HEAD,
    canonical_json,
    json_real,
    seal,
    validator_keys,
)
from cosim.virtual.signing import (
    SIGNATURE_BYTES,
    derive_key,
    encode_field,
    encode_text,
    order_message,
    public_bytes,
)


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
        self._settlement_heads = [SETTLEMENT_HEAD + encode_text(p) + _BUS.pack(b"i", b)
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
            field = self._fields[name] = encode_text(name)
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
                known["trades"] = [TRADE_HEAD + text(s) + text(b) + t
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


#: A real field of a record (`cosim.virtual.signing`): b"f" and a big-endian binary64 (9 bytes).
_REAL_FIELD = np.dtype([("tag", "S1"), ("value", ">f8")])
#: An integer field of a record: b"i" and a big-endian int64 (a settlement row's bus).
_BUS = struct.Struct(">cq")
#: The tag and length of a signature field of a record.
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
    buf, width = packed.tobytes(), _REAL_FIELD.itemsize * k
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


def rejection_rows(round_no: int, orders: Sequence[SignedOrder], outcomes: Sequence[str]) -> pd.DataFrame:
    """The round's rows of rejections.parquet."""
    rows = [
        (round_no, o.id, out, o.side, o.quantity_kwh, o.price_per_kwh, o.nonce)
        for o, out in zip(orders, outcomes, strict=True) if out != ADMITTED
    ]
    return pd.DataFrame(rows, columns=REJECTION_COLUMNS)
