"""Keys, canonical encoding and Merkle trees of the virtual layer (`cosim.virtual.signing`)."""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.virtual.signing import (
    EMPTY_ROOT,
    KDF_SALT,
    ORDER_TAG,
    SigningKey,
    derive_key,
    encode_field,
    encode_record,
    header_record,
    leaf_hash,
    merkle_proof,
    merkle_root,
    node_hash,
    order_message,
    public_bytes,
    seal_message,
    verify_proof,
    verify_signature,
)

# RFC 6962 reference leaves and the roots of their first n leaves (n = 0 .. 8), as used by
# the Certificate Transparency implementations' tests.
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


# -- keys and signatures ----------------------------------------------------------------
def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF written out from its definition (extract, then expand), independent of
    `cryptography`."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_hkdf_reference_matches_rfc5869():
    """Krawczyk & Eronen (2010), RFC 5869 "HMAC-based Extract-and-Expand Key Derivation
    Function (HKDF)", IETF, appendix A.1 (test case 1)."""
    okm = _hkdf_sha256(b"\x0b" * 22, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@pytest.mark.parametrize("seed,role,name", [(42, "prosumer", "P001"), (7, "validator", "dso"), (0, "prosumer", "x")])
def test_derived_key_is_hkdf_of_the_seed(seed, role, name):
    """The private key is exactly HKDF-SHA256(seed as ASCII decimal, salt, role:name), as the
    module docstring documents, so anyone can re-derive it."""
    raw = derive_key(seed, role, name).private_bytes_raw()
    assert raw == _hkdf_sha256(str(seed).encode(), KDF_SALT, f"{role}:{name}".encode(), 32)


def test_keys_are_reproducible_and_distinct():
    a = public_bytes(derive_key(42, "prosumer", "P001"))
    assert a == public_bytes(derive_key(42, "prosumer", "P001"))
    others = {
        public_bytes(derive_key(43, "prosumer", "P001")),
        public_bytes(derive_key(42, "prosumer", "P002")),
        public_bytes(derive_key(42, "validator", "P001")),
    }
    assert a not in others and len(others) == 3


def test_ed25519_matches_rfc8032():
    """Josefsson & Liusvaara (2017), RFC 8032 "Edwards-Curve Digital Signature Algorithm
    (EdDSA)", IETF, section 7.1, TEST 1 (empty message)."""
    key = SigningKey(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert public_bytes(key).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    signature = key.sign(b"")
    assert signature.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert verify_signature(public_bytes(key), signature, b"")


def test_verify_signature_rejects_every_alteration():
    key = derive_key(42, "prosumer", "P001")
    msg = order_message(3, 7, "P001", "buy", 0.5, 0.3)
    sig = key.sign(msg)
    pk = public_bytes(key)
    assert verify_signature(pk, sig, msg)
    assert verify_signature(key.public_key(), sig, msg)
    assert not verify_signature(pk, sig, order_message(3, 7, "P001", "buy", 0.5, 0.31))  # other price
    assert not verify_signature(pk, sig, order_message(4, 7, "P001", "buy", 0.5, 0.3))  # other round
    assert not verify_signature(pk, sig, order_message(3, 8, "P001", "buy", 0.5, 0.3))  # other nonce
    assert not verify_signature(public_bytes(derive_key(42, "prosumer", "P002")), sig, msg)  # other key
    assert not verify_signature(pk, bytes([sig[0] ^ 1]) + sig[1:], msg)
    assert not verify_signature(pk, sig[:-1], msg)  # cut short
    assert not verify_signature(pk[:31], sig, msg)  # not a key


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), name=st.text(min_size=1, max_size=8), message=st.binary(max_size=300))
def test_libsodium_and_openssl_signatures_are_interchangeable(seed, name, message):
    """Ed25519 is deterministic (RFC 8032, section 5.1.6), so the signatures cosim makes with
    libsodium (PyNaCl) are byte for byte those OpenSSL (the ``cryptography`` package) makes
    with the same key, and each library verifies the other's: ledgers written before and
    after the switch stay readable by either."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    ours = derive_key(seed, "prosumer", name)
    theirs = Ed25519PrivateKey.from_private_bytes(ours.private_bytes_raw())
    assert public_bytes(ours) == theirs.public_key().public_bytes_raw()
    assert ours.sign(message) == theirs.sign(message)
    assert verify_signature(public_bytes(ours), theirs.sign(message), message)  # OpenSSL's, checked by libsodium
    Ed25519PublicKey.from_public_bytes(public_bytes(ours)).verify(ours.sign(message), message)  # and the reverse
    tampered = message + b"x"
    assert not verify_signature(public_bytes(ours), theirs.sign(message), tampered)
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(public_bytes(ours)).verify(ours.sign(message), tampered)


# -- canonical encoding -----------------------------------------------------------------
def test_order_encoding_hand_worked():
    """The byte-for-byte example of the module docstring: round 3, nonce 7, P001 buys
    0.5 kWh at 0.3/kWh (0.5 = 0x3fe0000000000000 and 0.3 = 0x3fd3333333333333 in IEEE-754
    binary64)."""
    expected = (
        "636f73696d2f6f726465722f7631" "00"
        "69" "0000000000000003" "69" "0000000000000007"
        "73" "00000004" "50303031" "73" "00000003" "627579"
        "66" "3fe0000000000000" "66" "3fd3333333333333"
    )
    assert order_message(3, 7, "P001", "buy", 0.5, 0.3).hex() == expected


def test_fields():
    assert encode_field("é") == b"s" + struct.pack(">I", 2) + "é".encode()
    assert encode_field(-1) == b"i" + b"\xff" * 8
    assert encode_field(b"\x01\x02") == b"b\x00\x00\x00\x02\x01\x02"
    assert encode_field(-math.inf) == b"f" + bytes.fromhex("fff0000000000000")
    # every NaN, whatever its payload and sign, encodes as the one quiet NaN
    other_nan = struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]
    assert encode_field(other_nan) == encode_field(math.nan) == b"f" + bytes.fromhex("7ff8000000000000")
    for bad in (True, None, 1.5j, [1]):
        with pytest.raises(TypeError):
            encode_field(bad)


def test_records_are_unambiguous():
    """Length prefixes and type bytes keep field boundaries: moving a character from one
    text field to the next, or a number's type, changes the bytes."""
    assert encode_record(b"t", ["ab", "c"]) != encode_record(b"t", ["a", "bc"])
    assert encode_record(b"t", [1]) != encode_record(b"t", [1.0])
    assert encode_record(b"t", ["1"]) != encode_record(b"t", [1])
    assert encode_record(b"t", []) != encode_record(b"u", [])
    roots = {"orders": b"\x01" * 32, "trades": b"\x02" * 32}
    h = header_record(1, "round", 0, "2016-01-01T00:00:00", b"\x00" * 32, roots)
    assert h != header_record(1, "round", 0, "2016-01-01T00:00:00", b"\x00" * 32,
                              {"orders": b"\x02" * 32, "trades": b"\x01" * 32})
    assert seal_message(b"\x00" * 32) != seal_message(b"\x00" * 31 + b"\x01")


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
reals = st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf, -0.0]))


@settings(max_examples=60, deadline=None)
@given(round_no=st.integers(-1, 10**6), nonce=st.integers(0, 2**62), id_=st.text(max_size=12),
       side=st.text(max_size=5), q=reals, p=reals)
def test_order_message_fast_path_equals_the_record(round_no, nonce, id_, side, q, p):
    """`order_message` packs with precompiled structs; it must give the same bytes as the
    generic `encode_record`, NaN and infinities included."""
    assert order_message(round_no, nonce, id_, side, q, p) == encode_record(
        ORDER_TAG, [round_no, nonce, id_, side, q, p]
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=6), st.integers(-2**63, 2**63 - 1), finite, st.binary(max_size=8)),
                max_size=6),
       st.lists(st.one_of(st.text(max_size=6), st.integers(-2**63, 2**63 - 1), finite, st.binary(max_size=8)),
                max_size=6))
def test_encoding_is_injective(a, b):
    """Two records encode alike only if their fields are alike (type and value; -0.0 and
    0.0 are different values here)."""
    def key(fields):
        return [(type(v).__name__, struct.pack(">d", v) if isinstance(v, float) else v) for v in fields]

    same = encode_record(b"t", a) == encode_record(b"t", b)
    assert same == (key(a) == key(b))


# -- Merkle trees -----------------------------------------------------------------------
def _rfc6962_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 6962 section 2.1, recursively, as the RFC writes it."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc6962_root(leaves[:k]) + _rfc6962_root(leaves[k:])).digest()


def test_merkle_roots_match_rfc6962_reference():
    """Laurie, Langley & Kasper (2013), RFC 6962 "Certificate Transparency", IETF,
    section 2.1: the tree heads of the reference leaves used by its implementations."""
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    for n in range(len(CT_LEAVES) + 1):
        assert merkle_root(CT_LEAVES[:n]).hex() == CT_ROOTS[n], n


def test_merkle_proofs_match_rfc6962_reference():
    """RFC 6962 section 2.1.1 audit paths of leaves 0 and 5 in the 8-leaf reference tree,
    as in the Certificate Transparency implementations' tests."""
    assert [h.hex() for _, h in merkle_proof(CT_LEAVES, 0)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert [h.hex() for _, h in merkle_proof(CT_LEAVES, 5)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=6), max_size=40), st.data())
def test_merkle_root_and_proofs(leaves, data):
    """The bottom-up root equals RFC 6962's recursive definition for every size; every
    leaf's proof verifies, and no other leaf passes with it."""
    root = merkle_root(leaves)
    assert root == _rfc6962_root(leaves)
    if not leaves:
        return
    i = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle_proof(leaves, i)
    assert verify_proof(leaves[i], proof, root)
    assert not verify_proof(leaves[i] + b"x", proof, root)
    if len(leaves) > 1:
        assert merkle_root(leaves[:-1]) != root
        swapped = list(leaves)
        j = (i + 1) % len(leaves)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assert (merkle_root(swapped) == root) == (leaves[i] == leaves[j])


def test_leaf_and_node_hashes_are_domain_separated():
    """A node cannot pass for a leaf (the second-preimage defence of RFC 6962)."""
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert merkle_root([a + b]) != node_hash(a, b)
    with pytest.raises(IndexError):
        merkle_proof([b"a"], 1)
