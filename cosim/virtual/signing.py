"""Keys, the canonical encoding and Merkle trees of the virtual layer.

Keys
----
Every party that signs has an Ed25519 key pair (RFC 8032): each prosumer's smart
controller (role ``prosumer``) and each validator (role ``validator``). Signing and
verifying run in libsodium (through PyNaCl), about twice as fast as OpenSSL through the
``cryptography`` package; Ed25519 signatures are deterministic, so both give the same
bytes, and each verifies the other's (tests/test_signing.py). Keys are derived reproducibly from the scenario seed, so a run can be
repeated bit for bit::

    private key (32 bytes) = HKDF-SHA256(ikm  = ASCII decimal of the seed, e.g. b"42",
                                         salt = b"cosim-ledger/v1",
                                         info = role + b":" + name, e.g. b"prosumer:P003")

A consequence stated once: whoever knows the seed (it is in the run's scenario.yaml)
can derive every key. The simulation shows what signatures guarantee when each party
keeps its own key; it does not keep keys secret.

Canonical encoding (byte for byte)
----------------------------------
Signed messages and Merkle leaves are *records*: an ASCII tag, one zero byte, then the
fields in order, each one type byte and its value::

    record = tag 0x00 field*
    field  = 0x73 ('s') u32be(n) n bytes of UTF-8    text
           | 0x69 ('i') i64be                        integer (two's complement)
           | 0x66 ('f') f64be                        real, IEEE-754 binary64; every NaN
                                                     as the quiet NaN 7ff8000000000000
           | 0x62 ('b') u32be(n) n bytes             raw bytes (hashes, signatures)

where u32be, i64be and f64be are big-endian 4-byte unsigned, 8-byte signed and 8-byte
float. The records of the ledger:

- order, what a controller signs: ``b"cosim/order/v1"`` with
  ``i round, i nonce, s id, s side, f quantity_kwh, f price_per_kwh``. Example: round 3,
  nonce 7, id ``P001``, ``buy``, 0.5 kWh at 0.3/kWh is ``636f73696d2f6f726465722f7631 00
  69 0000000000000003 69 0000000000000007 73 00000004 50303031 73 00000003 627579
  66 3fe0000000000000 66 3fd3333333333333`` (spaces added here for reading).
- order leaf: the order record followed by ``b signature`` (64 bytes) and
  ``s outcome`` (``admitted`` or the rejection reason).
- trade leaf ``b"cosim/trade/v1"``: ``s seller, s buyer, f energy_kwh, f price_per_kwh,
  f seller_price_per_kwh, f network_charge_per_kwh``.
- settlement leaf ``b"cosim/settlement/v1"``: ``s party, i bus, f bought_kwh, f sold_kwh,
  f grid_import_kwh, f grid_export_kwh, f curtailed_kwh, f shed_kwh, f energy_cost,
  f network_charges, f bill``.
- key leaf ``b"cosim/key/v1"``: ``s role, s name, s public key (64 hex digits)``.
- block header ``b"cosim/block/v1"``: ``i height, s kind, i round, s time,
  b prev_hash (32)``, then for each Merkle root in name order ``s name, b root (32)``.
  The block hash is SHA-256 of the header.
- seal, what a validator signs: ``b"cosim/seal/v1"`` with ``b block hash (32)``.

A value the ledger writes as JSON text rather than a number (a non-finite quantity of a
rejected order: ``"NaN"``, ``"Infinity"``, ``"-Infinity"``) is encoded as text.

Merkle trees
------------
RFC 6962 (Certificate Transparency): leaf hash ``SHA-256(0x00 || leaf)``, node hash
``SHA-256(0x01 || left || right)``, the left subtree holding the largest power of two
of leaves smaller than their number; the root of no leaves is ``SHA-256(b"")``.

>>> k = derive_key(42, "prosumer", "P001")
>>> msg = order_message(3, 7, "P001", "buy", 0.5, 0.3)
>>> verify_signature(public_bytes(k), k.sign(msg), msg)
True
>>> merkle_root([b"a", b"b", b"c"]).hex()[:16]
'36642e73c2540ab1'
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import nacl.bindings as _sodium
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import CryptoError

KDF_SALT = b"cosim-ledger/v1"
ORDER_TAG = b"cosim/order/v1"
TRADE_TAG = b"cosim/trade/v1"
SETTLEMENT_TAG = b"cosim/settlement/v1"
KEY_TAG = b"cosim/key/v1"
BLOCK_TAG = b"cosim/block/v1"
SEAL_TAG = b"cosim/seal/v1"
#: Length of an Ed25519 signature and of a SHA-256 hash [bytes].
SIGNATURE_BYTES, HASH_BYTES = 64, 32
#: Length of an Ed25519 private key (the seed HKDF derives) [bytes].
PRIVATE_KEY_BYTES = 32

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">cq")
_F64 = struct.Struct(">cd")
_QUIET_NAN = bytes.fromhex("7ff8000000000000")
_ORDER_HEAD = struct.Struct(">cqcq")
_ORDER_TAIL = struct.Struct(">cdcd")


# -- keys -------------------------------------------------------------------------------
class PublicKey:
    """An Ed25519 public key (32 raw bytes)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes):
        if len(raw) != _sodium.crypto_sign_PUBLICKEYBYTES:
            raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
        self.raw = bytes(raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if `signature` is this key's signature of `message`."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            _sodium.crypto_sign_open(bytes(signature) + message, self.raw)
        except (CryptoError, ValueError):
            return False
        return True


class SigningKey:
    """An Ed25519 private key: the 32-byte seed RFC 8032 calls the private key."""

    __slots__ = ("_expanded", "public")

    def __init__(self, private: bytes):
        if len(private) != PRIVATE_KEY_BYTES:
            raise ValueError(f"an Ed25519 private key has 32 bytes, not {len(private)}")
        public, self._expanded = _sodium.crypto_sign_seed_keypair(bytes(private))
        self.public = PublicKey(public)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message` (RFC 8032, deterministic)."""
        return _sodium.crypto_sign(message, self._expanded)[:SIGNATURE_BYTES]

    def public_key(self) -> PublicKey:
        return self.public

    def private_bytes_raw(self) -> bytes:
        return self._expanded[:PRIVATE_KEY_BYTES]


def derive_key(seed: int, role: str, name: str) -> SigningKey:
    """The Ed25519 key of `name` in `role` (``prosumer`` or ``validator``), from the seed."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=PRIVATE_KEY_BYTES, salt=KDF_SALT, info=f"{role}:{name}".encode())
    return SigningKey(hkdf.derive(str(int(seed)).encode()))


def public_bytes(key: SigningKey | PublicKey) -> bytes:
    """The 32-byte raw public key."""
    return key.public.raw if isinstance(key, SigningKey) else key.raw


def load_public_key(raw: bytes) -> PublicKey:
    return PublicKey(raw)


def verify_signature(public_key: bytes | PublicKey, signature: bytes, message: bytes) -> bool:
    """True if `signature` is `public_key`'s Ed25519 signature of `message`."""
    if isinstance(public_key, bytes | bytearray):
        try:
            public_key = load_public_key(bytes(public_key))
        except ValueError:
            return False
    return public_key.verify(signature, message)


# -- canonical encoding -----------------------------------------------------------------
def encode_text(value: str) -> bytes:
    """A text field of a record: b"s", its UTF-8 length (u32be), its UTF-8 bytes."""
    raw = value.encode()
    return b"s" + _U32.pack(len(raw)) + raw


def _real(value: float) -> bytes:
    if value != value:  # NaN: one bit pattern
        return b"f" + _QUIET_NAN
    return _F64.pack(b"f", value)


def _raw(value: bytes) -> bytes:
    return b"b" + _U32.pack(len(value)) + value


def encode_field(value) -> bytes:
    """One field of a record (see the module docstring)."""
    if isinstance(value, str):
        return encode_text(value)
    if isinstance(value, bool):
        raise TypeError("a record has no boolean fields")
    if isinstance(value, int):
        return _I64.pack(b"i", value)
    if isinstance(value, float):
        return _real(value)
    if isinstance(value, bytes | bytearray):
        return _raw(bytes(value))
    # numpy scalars and the like
    if hasattr(value, "dtype"):
        return encode_field(value.item())
    raise TypeError(f"cannot encode {type(value).__name__} in a record")


def encode_record(tag: bytes, fields: Sequence) -> bytes:
    """``tag 0x00`` followed by each field's encoding.

    >>> encode_record(b"t", ["a", 1, 0.5]).hex()
    '7400730000000161690000000000000001663fe0000000000000'
    """
    return tag + b"\x00" + b"".join([encode_field(v) for v in fields])


def order_message(round_no: int, nonce: int, id_: str, side: str, quantity_kwh: float,
                  price_per_kwh: float) -> bytes:
    """The bytes a controller signs for one order (same as ``encode_record(ORDER_TAG, ...)``)."""
    if quantity_kwh != quantity_kwh or price_per_kwh != price_per_kwh:
        return encode_record(ORDER_TAG, [round_no, nonce, id_, side, quantity_kwh, price_per_kwh])
    return b"".join((
        ORDER_TAG, b"\x00", _ORDER_HEAD.pack(b"i", round_no, b"i", nonce), encode_text(id_), encode_text(side),
        _ORDER_TAIL.pack(b"f", quantity_kwh, b"f", price_per_kwh),
    ))


def header_record(height: int, kind: str, round_no: int, time: str, prev_hash: bytes,
                  roots: dict[str, bytes]) -> bytes:
    fields = [height, kind, round_no, time, prev_hash]
    for name in sorted(roots):
        fields += [name, roots[name]]
    return encode_record(BLOCK_TAG, fields)


def seal_message(block_hash: bytes) -> bytes:
    """What each validator signs to approve a block."""
    return encode_record(SEAL_TAG, [block_hash])


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- Merkle trees (RFC 6962) -------------------------------------------------------------
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root of the RFC 6962 tree over `leaves` (raw leaf bytes, not yet hashed).

    Built bottom-up: pair neighbours, carry an unpaired last node up unchanged, which
    gives the same tree as RFC 6962's recursive split.
    """
    if not leaves:
        return EMPTY_ROOT
    level = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[tuple[str, bytes]]:
    """Inclusion proof of leaf `index`: the sibling hashes from the leaf up, each with the
    side (``L`` or ``R``) it sits on. Anyone holding a leaf, its proof and a block's root
    can check that the leaf is in the block without the other rows."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    level = [leaf_hash(leaf) for leaf in leaves]
    proof = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(("L" if sibling < index else "R", level[sibling]))
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, index = nxt, index // 2
    return proof


def verify_proof(leaf: bytes, proof: list[tuple[str, bytes]], root: bytes) -> bool:
    """True if `proof` (from `merkle_proof`) leads from `leaf` to `root`.

    >>> leaves = [b"a", b"b", b"c", b"d", b"e"]
    >>> all(verify_proof(leaves[i], merkle_proof(leaves, i), merkle_root(leaves)) for i in range(5))
    True
    """
    h = leaf_hash(leaf)
    for side, sibling in proof:
        h = node_hash(sibling, h) if side == "L" else node_hash(h, sibling)
    return h == root
