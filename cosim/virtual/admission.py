"""Order admission: the market's gate between the controllers and the clearing.

Each round every prosumer's smart controller signs its order (see `cosim.virtual.signing` for
the bytes it signs: round, nonce, id, side, quantity, price). The market admits an order
only if all of these hold, checked in this order; the first that fails is the reason of
the rejection:

==========================  =============================================================
reason                      the order is rejected when
==========================  =============================================================
``unknown_key``             its id has no public key in the genesis block
``bad_signature``           its signature is not the id's key's signature of its bytes
``wrong_round``             it was signed for another round (a replay)
``reused_nonce``            its nonce is not above the last nonce admitted from that key
``second_order``            an order of the same prosumer was admitted this round already
``invalid_side``            its side is neither ``buy`` nor ``sell``
``invalid_quantity``        its quantity is negative, NaN or infinite
``invalid_price``           its price is negative, NaN or infinite
``exceeds_physical_limit``  it offers more than the prosumer can deliver this round (PV
                            plus what its battery can discharge), or bids for more than it
                            can absorb (load plus what its battery can charge)
==========================  =============================================================

Admission keeps one number per key, the last admitted nonce, and changes it only when
it admits an order. A rejected order is treated as no order: the prosumer's physical
net position is then traded with the outside party (see `cosim.sim.loop`). Nothing else of
the round is lost.

Honest controllers never send a bad order, so `Adversary` injects some on demand
(scenario ``ledger.adversary``) to exercise the gate end to end.

>>> from cosim.virtual.signing import public_bytes
>>> ctl = Controllers(7, ["P000", "P001"])
>>> gate = Admission(ctl.public_keys)
>>> orders = ctl.sign(0, [("P000", "buy", 0.5, 0.3), ("P001", "sell", 9.0, 0.1)])
>>> gate.admit(0, orders, limits={"P000": (0.0, 1.0), "P001": (2.0, 1.0)})
['admitted', 'exceeds_physical_limit']
>>> gate.admit(1, orders[:1])  # the same order again next round
['wrong_round']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from cosim.virtual.signing import (
    derive_key,
    load_public_key,
    order_message,
    public_bytes,
    verify_signature,
)

ADMITTED = "admitted"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
WRONG_ROUND = "wrong_round"
REUSED_NONCE = "reused_nonce"
SECOND_ORDER = "second_order"
INVALID_SIDE = "invalid_side"
INVALID_QUANTITY = "invalid_quantity"
INVALID_PRICE = "invalid_price"
EXCEEDS_LIMIT = "exceeds_physical_limit"
#: Rejection reasons, in the order they are checked.
REASONS = (
    UNKNOWN_KEY, BAD_SIGNATURE, WRONG_ROUND, REUSED_NONCE, SECOND_ORDER, INVALID_SIDE,
    INVALID_QUANTITY, INVALID_PRICE, EXCEEDS_LIMIT,
)
SIDES = ("buy", "sell")
#: Columns of rejections.parquet.
REJECTION_COLUMNS = ["round", "id", "reason", "side", "quantity_kwh", "price_per_kwh", "nonce"]
#: Slack on the physical limits: absolute [kWh] and relative [-].
LIMIT_TOL_KWH, LIMIT_TOL_REL = 1e-9, 1e-9
#: The signature field of an order its controller has committed to but signs later, in
#: the ledger (`Controllers.commit`, `Commitments.orders`). Never a valid Ed25519
#: signature.
PENDING = b""


class SignedOrder(NamedTuple):
    """One order as submitted: what was signed, and the signature."""

    id: str
    side: str
    quantity_kwh: float
    """[kWh]"""
    price_per_kwh: float
    """[currency/kWh]"""
    round: int
    """The round the controller signed it for."""
    nonce: int
    signature: bytes

    def message(self) -> bytes:
        """The signed bytes (`cosim.virtual.signing.order_message`)."""
        return order_message(self.round, self.nonce, self.id, self.side, self.quantity_kwh, self.price_per_kwh)


def physical_limits(load_kw: np.ndarray, pv_kw: np.ndarray, soc: np.ndarray, e_kwh: np.ndarray,
                    p_kw: np.ndarray, efficiency: float, dt_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Most each prosumer can deliver and absorb this round [kWh].

    deliver = PV (plus any negative load) + what the battery can discharge;
    absorb = load (plus any negative PV) + what the battery can charge; the battery's
    ability is limited by its power `p_kw` and by its state of charge `soc` at the start
    of the round (one-way `efficiency`).

    >>> physical_limits(np.array([2.0]), np.array([4.0]), np.array([0.5]), np.array([10.0]),
    ...                 np.array([5.0]), 1.0, 0.25)
    (array([2.25]), array([1.75]))
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        discharge_kw = np.where(e_kwh > 0, np.minimum(p_kw, soc * e_kwh * efficiency / dt_h), 0.0)
        charge_kw = np.where(e_kwh > 0, np.minimum(p_kw, (1.0 - soc) * e_kwh / (efficiency * dt_h)), 0.0)
    deliver = (np.maximum(pv_kw, 0.0) + np.maximum(-load_kw, 0.0) + discharge_kw) * dt_h
    absorb = (np.maximum(load_kw, 0.0) + np.maximum(-pv_kw, 0.0) + charge_kw) * dt_h
    return deliver, absorb


class Controllers:
    """The signing side of the prosumers' smart controllers: one key and one nonce
    counter per prosumer. A controller's nonce goes up by one with every order it signs.

    The controllers remember the orders they signed in the current and the previous
    round (`signed`), so that the market of the same simulation can skip checking those
    signatures again (see `Admission`).

    Signing runs in the caller's thread: ``cryptography`` keeps the GIL while it signs or
    verifies, so threads would only add their overhead.
    """

    def __init__(self, seed: int, ids: Sequence[str]):
        self.keys = {i: derive_key(seed, "prosumer", i) for i in ids}
        self.public_keys = {i: public_bytes(k) for i, k in self.keys.items()}
        self.next_nonce = dict.fromkeys(ids, 0)
        self._made: dict[int, dict] = {}
        """round -> signature -> (id, signed bytes), for the last two rounds signed (and
        the round's `Commitments` under `COMMITTED`)."""

    def sign(self, round_no: int, rows: Sequence[tuple[str, str, float, float]]) -> list[SignedOrder]:
        """Sign `rows` of (id, side, quantity_kwh, price_per_kwh) for round `round_no`."""
        round_no = int(round_no)
        made = self._round(round_no)
        keys, next_nonce = self.keys, self.next_nonce
        orders = []
        for id_, side, q, p in rows:
            nonce = next_nonce[id_]
            next_nonce[id_] = nonce + 1
            q, p = float(q), float(p)
            message = order_message(round_no, nonce, id_, side, q, p)
            signature = keys[id_].sign(message)
            made[signature] = (id_, message)
            orders.append(SignedOrder(id_, side, q, p, round_no, nonce, signature))
        return orders

    def _round(self, round_no: int) -> dict:
        made = self._made.get(round_no)
        if made is None:
            self._made = {r: m for r, m in self._made.items() if r >= round_no - 1}
            made = self._made[round_no] = {}
        return made

    def commit(self, round_no: int, ids: Sequence[str], buy: np.ndarray, quantity_kwh: np.ndarray,
               price_per_kwh: np.ndarray) -> Commitments:
        """Each controller commits to its order for round `round_no` (one per id; `buy`
        True for a bid, False for an offer) and takes its next nonce, but does not sign
        yet: the ledger signs each order with its controller's key when it writes the
        round's block (`cosim.virtual.ledger.LedgerWriter`, in its own process beside the
        rounds). Ed25519 signatures are deterministic (RFC 8032), so the ledger holds the
        same bytes as if the controller had signed here, and `cosim ledger verify` checks
        every one of them. The market admits commitments with
        `Admission.admit_commitments`."""
        round_no = int(round_no)
        next_nonce = self.next_nonce
        nonces = []
        for i in ids:  # one after the other: a second order of an id takes the next nonce
            n = next_nonce[i]
            next_nonce[i] = n + 1
            nonces.append(n)
        nonces = np.array(nonces, dtype=np.int64)
        c = Commitments(round_no, list(ids), nonces, np.asarray(buy, dtype=bool).copy(),
                        np.asarray(quantity_kwh, dtype=float).copy(), np.asarray(price_per_kwh, dtype=float).copy())
        self._round(round_no)[COMMITTED] = Commitments(c.round, list(c.ids), c.nonces.copy(), c.buy.copy(),
                                                      c.quantity_kwh.copy(), c.price_per_kwh.copy())
        return c

    def committed(self, c: Commitments) -> np.ndarray:
        """Per order of `c`: True if these controllers committed to exactly it (id, nonce,
        side, quantity, price) for its round (`commit`)."""
        made = self._made.get(c.round, {}).get(COMMITTED)
        if made is None or made.ids != c.ids:
            return np.zeros(len(c), dtype=bool)
        return ((made.nonces == c.nonces) & (made.buy == c.buy)
                & _same(made.quantity_kwh, c.quantity_kwh) & _same(made.price_per_kwh, c.price_per_kwh))

    def signed(self, order: SignedOrder) -> bool:
        """True if these controllers signed exactly this order (same id, same bytes, same
        signature) in the current or the previous round. Ed25519 verification of such an
        order with the controller's public key cannot fail (RFC 8032: a signature made
        with a key verifies with its public key)."""
        for made in self._made.values():
            got = made.get(order.signature)
            if got is not None:
                return got[0] == order.id and got[1] == order.message()
        return False


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality of two float arrays, NaN equal to NaN (same bits committed)."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


#: Key of a round's commitments among the signatures the controllers remember.
COMMITTED = "committed"


class Commitments:
    """A round's orders as the controllers committed to them (`Controllers.commit`), as
    arrays: one entry per order, in arrival order. Not signed yet: see `PENDING`."""

    __slots__ = ("round", "ids", "nonces", "buy", "quantity_kwh", "price_per_kwh")

    def __init__(self, round_no: int, ids: list[str], nonces: np.ndarray, buy: np.ndarray,
                 quantity_kwh: np.ndarray, price_per_kwh: np.ndarray):
        self.round = round_no
        self.ids = ids
        self.nonces = nonces
        self.buy = buy
        self.quantity_kwh = quantity_kwh
        self.price_per_kwh = price_per_kwh

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self):
        return tuple(getattr(self, f) for f in self.__slots__)

    def __setstate__(self, state):
        for f, v in zip(self.__slots__, state, strict=True):
            setattr(self, f, v)

    def orders(self) -> list[SignedOrder]:
        """The orders, each with the signature `PENDING`."""
        sides = ["buy" if b else "sell" for b in self.buy.tolist()]
        return [SignedOrder(i, s, q, p, self.round, n, PENDING) for i, s, q, p, n in zip(
            self.ids, sides, self.quantity_kwh.tolist(), self.price_per_kwh.tolist(), self.nonces.tolist(),
            strict=True)]


class Admission:
    """The market's gate. Holds the registered public keys and the last admitted nonce
    of each key.

    Parameters
    ----------
    public_keys : id -> 32-byte Ed25519 public key (the genesis block's registry)
    signer : the simulation's own `Controllers`, if the market may skip checking again
        the signatures they made. Such an order reaches the market byte for byte as its
        controller signed it, with the key registered for its id, so its check cannot
        fail; skipping it changes no outcome and saves most of the gate's time. Every
        other order (forged, altered, from an unknown or re-keyed id, replayed from
        earlier rounds) is verified, and `cosim.virtual.ledger.verify` checks every signature
        of the run again.
    """

    def __init__(self, public_keys: Mapping[str, bytes], *, signer: Controllers | None = None):
        self.keys = {}
        for i, raw in public_keys.items():
            try:
                self.keys[i] = load_public_key(raw)
            except ValueError:
                continue  # not a valid key: orders in that name are rejected as unknown
        self.last_nonce: dict[str, int] = {}
        self.signer = signer
        # the signer vouches only for ids whose registered key is the one it signs with
        self._vouched = frozenset(
            i for i in self.keys if signer is not None and signer.public_keys.get(i) == bytes(public_keys[i])
        )

    def admit(self, round_no: int, orders: Sequence[SignedOrder],
              limits: Mapping[str, tuple[float, float]] | None = None,
              recorded: Sequence[str] | None = None) -> list[str]:
        """Outcome of each order, in order: ``admitted`` or the rejection reason.

        Parameters
        ----------
        round_no : the round being cleared
        orders : the orders as they arrived
        limits : id -> (most it can deliver, most it can absorb) [kWh]; None skips the
            physical check
        recorded : outcomes recorded in a ledger, when re-checking it: an order recorded
            as ``exceeds_physical_limit`` that passes every other check is taken as
            rejected for that (the ledger does not hold the physical data)
        """
        keys, signer, vouched = self.keys, self.signer, self._vouched
        sig_ok: dict[int, bool] = {}
        for i, o in enumerate(orders):
            key = keys.get(o.id)
            if key is None:
                continue
            if o.id in vouched and signer.signed(o):
                sig_ok[i] = True
            else:
                sig_ok[i] = verify_signature(key, o.signature, o.message())
        last = self.last_nonce
        seen: set[str] = set()
        outcomes = []
        for i, o in enumerate(orders):
            q, p = o.quantity_kwh, o.price_per_kwh
            if i not in sig_ok:
                reason = UNKNOWN_KEY
            elif not sig_ok[i]:
                reason = BAD_SIGNATURE
            elif o.round != round_no:
                reason = WRONG_ROUND
            elif o.nonce <= last.get(o.id, -1):
                reason = REUSED_NONCE
            elif o.id in seen:
                reason = SECOND_ORDER
            elif o.side not in SIDES:
                reason = INVALID_SIDE
            elif not (math.isfinite(q) and q >= 0.0):
                reason = INVALID_QUANTITY
            elif not (math.isfinite(p) and p >= 0.0):
                reason = INVALID_PRICE
            elif recorded is not None and recorded[i] == EXCEEDS_LIMIT:
                reason = EXCEEDS_LIMIT
            elif limits is not None and o.id in limits and _over(q, limits[o.id][0 if o.side == "sell" else 1]):
                reason = EXCEEDS_LIMIT
            else:
                reason = ADMITTED
                last[o.id] = o.nonce
                seen.add(o.id)
            outcomes.append(reason)
        return outcomes

    def admit_commitments(self, round_no: int, c: Commitments, deliver_kwh: np.ndarray | None = None,
                          absorb_kwh: np.ndarray | None = None) -> list[str]:
        """Outcome of each committed order (`Controllers.commit`), in order: the rules of
        `admit`, in the same order, for orders whose signature the ledger makes later.
        The signer must have committed to exactly the order (else ``bad_signature``).
        `deliver_kwh` / `absorb_kwh` are the physical limits per order (None: no check).
        """
        n = len(c)
        keys, last = self.keys, self.last_nonce
        vouched = self.signer.committed(c) if self.signer is not None else np.zeros(n, dtype=bool)
        q, p = c.quantity_kwh, c.price_per_kwh
        with np.errstate(invalid="ignore"):
            q_ok = np.isfinite(q) & (q >= 0.0)
            p_ok = np.isfinite(p) & (p >= 0.0)
            over = np.zeros(n, dtype=bool)
            if deliver_kwh is not None:
                limit = np.where(c.buy, absorb_kwh, deliver_kwh)
                over = q > limit * (1.0 + LIMIT_TOL_REL) + LIMIT_TOL_KWH
        seen: set[str] = set()
        outcomes = []
        right_round = c.round == round_no
        for i, nonce, v, qk, pk, ov in zip(c.ids, c.nonces.tolist(), vouched.tolist(), q_ok.tolist(), p_ok.tolist(),
                                           over.tolist(), strict=True):
            if i not in keys:
                reason = UNKNOWN_KEY
            elif not v or i not in self._vouched:
                reason = BAD_SIGNATURE
            elif not right_round:
                reason = WRONG_ROUND
            elif nonce <= last.get(i, -1):
                reason = REUSED_NONCE
            elif i in seen:
                reason = SECOND_ORDER
            elif not qk:
                reason = INVALID_QUANTITY
            elif not pk:
                reason = INVALID_PRICE
            elif ov:
                reason = EXCEEDS_LIMIT
            else:
                reason = ADMITTED
                last[i] = nonce
                seen.add(i)
            outcomes.append(reason)
        return outcomes


def _over(quantity_kwh: float, limit_kwh: float) -> bool:
    return quantity_kwh > limit_kwh * (1.0 + LIMIT_TOL_REL) + LIMIT_TOL_KWH


class Adversary:
    """Bad orders injected into the round's stream, for tests and demonstrations.

    Each share is the probability that one of the round's honest orders draws that
    attack (independent draws, seeded):

    - ``forged_share``: an attacker also submits an order in the prosumer's name, signed
      with a key that is not its own -> ``bad_signature``;
    - ``replay_share`` (of the previous round's orders): an attacker submits a captured
      order again -> ``wrong_round``;
    - ``duplicate_share``: an attacker submits the round's order a second time ->
      ``reused_nonce``;
    - ``overdelivery_share``: the prosumer's own controller offers (or bids for) twice
      what it can physically deliver (absorb) plus 1 kWh, in place of its honest order ->
      ``exceeds_physical_limit``; the prosumer then trades only with the outside party;
    - ``malformed_share``: a faulty controller first sends an order, signed with its own
      key, whose quantity or price is negative, NaN or infinite, or whose side is
      neither buy nor sell -> ``invalid_quantity``, ``invalid_price`` or
      ``invalid_side``; its honest order follows and is admitted;
    - ``unknown_share``: an outsider whose key is not in the genesis block submits an
      order in a name of its own -> ``unknown_key``.

    Malformed orders reach the market before the honest ones, every other attack after
    them. The shares are read from `settings` (scenario ``ledger.adversary``); a share
    that `settings` lacks is 0.
    """

    SHARES = ("forged_share", "replay_share", "duplicate_share", "overdelivery_share", "malformed_share",
              "unknown_share")
    #: The defects of a malformed order, drawn with equal chance: (field, defect).
    DEFECTS = (
        ("quantity_kwh", "negative"), ("quantity_kwh", "nan"), ("quantity_kwh", "inf"),
        ("price_per_kwh", "negative"), ("price_per_kwh", "nan"), ("price_per_kwh", "-inf"),
        ("side", "hold"),
    )
    #: An over-delivering order offers (bids for) this many times its physical limit ...
    OVERDELIVERY_FACTOR = 2.0
    #: ... plus this much, so that it is over the limit even where the limit is 0 [kWh].
    OVERDELIVERY_EXTRA_KWH = 1.0
    #: A forged buy order bids this many times the honest price (a forged sell asks 0), so
    #: that it would be served first [-].
    FORGED_BID_FACTOR = 10.0

    def __init__(self, settings, seed: int, controllers: Controllers):
        for name in self.SHARES:
            setattr(self, name, float(getattr(settings, name, 0.0)))
        self.rng = np.random.default_rng([int(seed), 0xAD])
        self.forger = derive_key(seed, "adversary", "forger")
        self.outsider = derive_key(seed, "adversary", "outsider")
        self.controllers = controllers
        self.previous: list[SignedOrder] = []

    @property
    def active(self) -> bool:
        return max(getattr(self, name) for name in self.SHARES) > 0.0

    def _malformed(self, o: SignedOrder) -> tuple[str, str, float, float]:
        field, defect = self.DEFECTS[int(self.rng.integers(len(self.DEFECTS)))]
        row = {"side": o.side, "quantity_kwh": o.quantity_kwh, "price_per_kwh": o.price_per_kwh}
        if field == "side":
            row["side"] = defect
        else:
            row[field] = {"negative": -row[field] - 1.0, "nan": math.nan, "inf": math.inf,
                          "-inf": -math.inf}[defect]
        return o.id, row["side"], row["quantity_kwh"], row["price_per_kwh"]

    def attack(self, round_no: int, honest: list[SignedOrder],
               limits: Mapping[str, tuple[float, float]]) -> list[SignedOrder]:
        """The round's orders as they reach the market: malformed ones, the honest ones
        (some replaced by over-delivering ones), then the other attackers'."""
        rng, n = self.rng, len(honest)
        submitted = list(honest)
        over = np.flatnonzero(rng.random(n) < self.overdelivery_share)
        if len(over):
            rows = []
            for i in over:
                o = honest[i]
                cap = limits[o.id][0 if o.side == "sell" else 1]
                rows.append((o.id, o.side, self.OVERDELIVERY_FACTOR * cap + self.OVERDELIVERY_EXTRA_KWH, o.price_per_kwh))
            for i, o in zip(over, self.controllers.sign(round_no, rows), strict=True):
                submitted[i] = o
        extra = []
        for i in np.flatnonzero(rng.random(n) < self.forged_share):
            o = honest[i]
            price = 0.0 if o.side == "sell" else self.FORGED_BID_FACTOR * o.price_per_kwh
            fake = o._replace(nonce=o.nonce + 1, price_per_kwh=price)
            extra.append(fake._replace(signature=self.forger.sign(fake.message())))
        extra += [submitted[i] for i in np.flatnonzero(rng.random(n) < self.duplicate_share)]
        prev = self.previous
        extra += [prev[j] for j in np.flatnonzero(rng.random(len(prev)) < self.replay_share)]
        self.previous = submitted
        first: list[SignedOrder] = []
        if self.malformed_share > 0.0:
            picked = np.flatnonzero(rng.random(n) < self.malformed_share)
            first = self.controllers.sign(round_no, [self._malformed(honest[i]) for i in picked])
        if self.unknown_share > 0.0:
            for k, i in enumerate(np.flatnonzero(rng.random(n) < self.unknown_share)):
                o = honest[i]
                own = SignedOrder(f"outsider_{k}", o.side, o.quantity_kwh, o.price_per_kwh, round_no, 0, b"")
                extra.append(own._replace(signature=self.outsider.sign(own.message())))
        return first + submitted + extra
