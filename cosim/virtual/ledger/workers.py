"""Ed25519 signatures of a long ledger checked in worker processes, ahead of the chain.

`cosim.virtual.ledger.verify` checks every block in chain order in its own process. On a
long ledger, most of that time is Ed25519 verification, which needs nothing from the
chain but the genesis block's keys: `blocks` hands chunks of lines to a pool of worker
processes, which report which seals and order signatures are valid (`Signatures`), and
yields each line with its worker's report. The verifier spares verifying again what a
worker found valid and verifies everything else itself, so its verdict and message are
those it gives without workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import os
import signal
import struct
from collections.abc import Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

from cosim.virtual.ledger.format import LedgerError, check_rows, check_signature_rows, signed_orders
from cosim.virtual.ledger.process import fork_context
from cosim.virtual.signing import load_public_key, public_bytes, seal_message, verify_signature

#: A ledger with fewer round blocks than this is verified in one process: starting the
#: worker processes would cost more than they save.
PARALLEL_MIN_BLOCKS = 200
#: Blocks whose signatures one worker process checks in one go.
CHUNK_BLOCKS = 64
#: Chunks handed out per worker ahead of the caller, so that no worker waits while the
#: caller catches up.
CHUNKS_AHEAD_PER_WORKER = 2


class WorkerPoolError(RuntimeError):
    """The worker processes that check a ledger's signatures died; the ledger is not judged."""


class Signatures(NamedTuple):
    """What a worker process found of one block's signatures."""

    hash: str
    """The block's hash as recorded, whose seal the signatures below were checked against."""
    seals: frozenset
    """The [validator, signature] pairs that are that validator's valid signature of the seal."""
    orders: tuple | None
    """Per order row: True if its signature is the registered key's signature of its bytes
    (None if the rows could not be read as orders)."""


#: The registry of the ledger being verified, in a worker process: (prosumer id -> public
#: key, validator -> public key).
_WORKER_KEYS: tuple[dict, dict] = ({}, {})


def _start_worker(prosumers: Mapping[str, bytes], validators: Mapping[str, bytes]) -> None:
    global _WORKER_KEYS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what a Ctrl-C ends
    _WORKER_KEYS = ({i: load_public_key(k) for i, k in prosumers.items()},
                    {n: load_public_key(k) for n, k in validators.items()})


def _chunk_signatures(lines: list[bytes]) -> list[Signatures | None]:
    """In a worker process: `_block_signatures` of each line."""
    return [_block_signatures(raw) for raw in lines]


def _block_signatures(raw: bytes) -> Signatures | None:
    """The Ed25519 checks of one block's line that the verifier would make: each validator's
    signature of the seal of the recorded hash, each order's signature with its id's
    registered key. Nothing else is judged here: what is malformed is left unchecked, and
    the main process says what is wrong with it. None if the line is not a block."""
    prosumers, validators = _WORKER_KEYS
    try:
        block = json.loads(raw.decode("ascii"))
        digest = block["hash"]
        message = seal_message(bytes.fromhex(digest))
    except (ValueError, KeyError, TypeError):  # not JSON, not an object, no hex hash
        return None
    seals = set()
    try:
        check_signature_rows(block.get("signatures"))
    except LedgerError:
        pass
    else:
        for name, sig in block["signatures"]:
            key = validators.get(name)
            if key is not None and verify_signature(key, bytes.fromhex(sig), message):
                seals.add((name, sig))
    orders = None
    if block.get("kind") == "round":
        try:
            check_rows("orders", block.get("orders"))
            orders = tuple(
                o.id in prosumers and verify_signature(prosumers[o.id], o.signature, o.message())
                for o in signed_orders(block["orders"])
            )
        except (LedgerError, TypeError, OverflowError, struct.error):  # rows the verifier rejects
            orders = None
    return Signatures(digest, frozenset(seals), orders)


def cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _read_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file without their newline, one at a time."""
    with path.open("rb") as fh:
        for raw in fh:
            yield raw[:-1] if raw.endswith(b"\n") else raw


def blocks(path: Path, registry, workers: int, chunk: int,
           min_blocks: int) -> Iterator[tuple[int, bytes, Signatures | None]]:
    """(line number, line, signatures checked by a worker or None) of each block, in order.

    The genesis block comes first, with None: the caller checks it and so fills in
    `registry` (its `prosumer_keys`: id -> public key bytes, and `validator_keys`: name ->
    public key). If at least `min_blocks` round blocks follow and `workers` > 0, `workers`
    processes check the signatures of the rest, `chunk` blocks at a time and a few chunks
    ahead of the caller, who checks each block in chain order. Closing the generator stops
    the workers; a worker that dies raises `WorkerPoolError`.
    """
    lines = _read_lines(path)
    genesis = next(lines, None)
    if genesis is None:
        return
    yield 1, genesis, None
    head = list(itertools.islice(lines, min_blocks))
    if workers < 1 or len(head) < min_blocks or not registry.validator_keys:
        for line_no, raw in enumerate(itertools.chain(head, lines), start=2):
            yield line_no, raw, None
        return
    validators = {n: public_bytes(k) for n, k in registry.validator_keys.items()}
    source = itertools.chain(head, lines)
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=fork_context(), initializer=_start_worker,
        initargs=(dict(registry.prosumer_keys), validators))
    pending: collections.deque = collections.deque()

    def submit() -> None:
        part = list(itertools.islice(source, chunk))
        if part:
            pending.append((part, pool.submit(_chunk_signatures, part)))

    try:
        for _ in range(CHUNKS_AHEAD_PER_WORKER * workers + 1):
            submit()
        line_no = 1
        while pending:
            part, future = pending.popleft()
            submit()
            for raw, signatures in zip(part, future.result(), strict=True):
                line_no += 1
                yield line_no, raw, signatures
    except BrokenProcessPool as err:
        raise WorkerPoolError(f"{path}: a worker process checking the signatures died ({err}); "
                              f"verify again, or with workers=0 to check in one process") from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
