"""The ledger's block format: its tables, their rows, their Merkle leaves, and the seal.

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

The writer (`cosim.virtual.ledger.writer`) and the verifier
(`cosim.virtual.ledger.verify`) share what is here, so that both encode a row the same way.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence

from cosim.virtual.admission import SignedOrder
from cosim.virtual.signing import (
    HASH_BYTES,
    KEY_TAG,
    SETTLEMENT_TAG,
    SIGNATURE_BYTES,
    TRADE_TAG,
    derive_key,
    encode_field,
    encode_record,
    encode_text,
    header_record,
    merkle_root,
    order_message,
    seal_message,
    sha256,
)

#: The prev_hash of the genesis block: a hash of zero bytes, in hex.
GENESIS_PREV = "00" * HASH_BYTES
TRADE_FIELDS = ["seller", "buyer", "energy_kwh", "price_per_kwh", "seller_price_per_kwh", "network_charge_per_kwh"]
SETTLEMENT_FIELDS = [
    "party", "bus", "bought_kwh", "sold_kwh", "grid_import_kwh", "grid_export_kwh", "curtailed_kwh",
    "shed_kwh", "energy_cost", "network_charges", "bill",
]
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
#: The ledger's text for each non-finite number.
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class LedgerError(Exception):
    """The first thing found wrong in a ledger."""


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
    return NONFINITE[v] if isinstance(v, str) else v


# -- leaves, shared by the writer and the verifier --------------------------------------
def order_leaf(row: list) -> bytes:
    id_, side, q, p, round_no, nonce, signature, outcome = row
    return (order_message(round_no, nonce, id_, side, read_real(q), read_real(p))
            + encode_field(bytes.fromhex(signature)) + encode_field(outcome))


_TAGS = {"keys": KEY_TAG, "trades": TRADE_TAG, "settlement": SETTLEMENT_TAG}
#: Packers of the numeric tail of trade and settlement rows, for speed: the same bytes
#: as `encode_record` for rows that pass `check_rows` (a non-finite number, written as
#: text, makes the packer fail and the row goes through `encode_record`).
_TRADE_TAIL = struct.Struct(">" + "cd" * 4)
_SETTLEMENT_TAIL = struct.Struct(">cq" + "cd" * 9)
TRADE_HEAD = TRADE_TAG + b"\x00"
SETTLEMENT_HEAD = SETTLEMENT_TAG + b"\x00"


def _trade_leaf(r: list) -> bytes:
    try:
        tail = _TRADE_TAIL.pack(b"f", r[2], b"f", r[3], b"f", r[4], b"f", r[5])
    except struct.error:
        return encode_record(TRADE_TAG, r)
    return TRADE_HEAD + encode_text(r[0]) + encode_text(r[1]) + tail


def _settlement_leaf(r: list) -> bytes:
    try:
        tail = _SETTLEMENT_TAIL.pack(
            b"i", r[1], b"f", r[2], b"f", r[3], b"f", r[4], b"f", r[5], b"f", r[6], b"f", r[7], b"f", r[8],
            b"f", r[9], b"f", r[10],
        )
    except struct.error:
        return encode_record(SETTLEMENT_TAG, r)
    return SETTLEMENT_HEAD + encode_text(r[0]) + tail


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


# -- checking rows as `json` reads them ---------------------------------------------------
#: The exact Python types of each table's fields as `json` reads a well-formed row, and
#: where its hex fields are, for `check_rows`'s quick path.
_ROW_SHAPES = {table: tuple({"s": str, "i": int, "r": float, "h": str}[t] for t in types)
               for table, types in ROW_TYPES.items()}
_HEX_FIELDS = {table: tuple(k for k, t in enumerate(types) if t == "h") for table, types in ROW_TYPES.items()}
_HEX_DIGITS = "0123456789abcdef"


def check_rows(table: str, rows) -> None:
    """Raise `LedgerError` naming the first row of `table` whose fields are not of
    `ROW_TYPES`."""
    if not isinstance(rows, list):
        raise LedgerError(f"{table} is not a list")
    # quick path: every row a list of exactly the expected types, hex fields hex (a subset
    # of what `_check_row` accepts); otherwise every row is checked field by field, which
    # names the first that is wrong
    try:
        quick = {(type(row), *map(type, row)) for row in rows} <= {(list, *_ROW_SHAPES[table])}
        for j in _HEX_FIELDS[table]:
            quick = quick and all(map(is_hex, [row[j] for row in rows]))
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
            or (t == "r" and (type(v) is float or v in NONFINITE))
            or (t == "h" and isinstance(v, str) and is_hex(v))
        )
        if not ok:
            raise LedgerError(f"{table} row {k}: field {v!r} is not of type {t!r}")


def check_signature_rows(sigs) -> None:
    """Raise `LedgerError` unless `sigs` is a list of [validator, signature hex]."""
    if not isinstance(sigs, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in sigs
    ):
        raise LedgerError("signatures: expected a list of [validator, signature]")
    for name, sig in sigs:
        if len(sig) != 2 * SIGNATURE_BYTES or not is_hex(sig):
            raise LedgerError(f"signature of validator {name} is not {2 * SIGNATURE_BYTES} lowercase hex digits")


def is_hex(v: str) -> bool:
    """Lowercase hex digits, an even number of them (strip leaves nothing only if every
    character is one of them)."""
    return len(v) % 2 == 0 and not v.strip(_HEX_DIGITS)


def signed_orders(rows: list) -> list[SignedOrder]:
    """A block's order rows as the orders admission replays (rows that passed `check_rows`)."""
    return [
        SignedOrder(r[0], r[1], read_real(r[2]), read_real(r[3]), r[4], r[5], bytes.fromhex(r[6])) for r in rows
    ]
