"""The ledger writer in a process of its own, beside the rounds.

Signing a round's orders (an Ed25519 signature for each, about 100 at 118 prosumers) and
sealing its block cost more than the rest of the round. None of it feeds back into the market: the admission of a round's
orders needs only the controllers' commitments (`cosim.virtual.admission.PENDING`), and the
block of round t is not read by round t + 1. So the loop hands each round's rows to a
`LedgerProcess` through a pipe (eight rounds a message) and goes on; the child signs,
hashes, seals and writes, with the same bytes a `LedgerWriter` in the loop would write
(Ed25519 is deterministic). The child runs under Linux's SCHED_BATCH policy, so that its
wake-ups do not preempt the loop on its own core.

The pipe is the only link. A full pipe makes the loop wait (the ledger never falls
behind by more than a pipe's worth of blocks), `flush` waits until every block handed
over is on disk (checkpoints count them), and a failure in the child is raised in the
loop at its next call. The child ignores Ctrl-C: the loop decides what happens on an
interrupt, and `close` lets the child write what it was given first. A kill ends the
child; an interrupted run resumes from its checkpoint, which counts only blocks that
were on disk.

The child is forked (spawned where there is no fork), so it starts in milliseconds; it
shares the loop's memory pages until either side writes to them, and the loop's objects
are frozen for the garbage collector while it forks, so the child's collector leaves
them (and their pages) alone.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import traceback
from collections.abc import Sequence

import numpy as np

from cosim.virtual.admission import Commitments, SignedOrder
from cosim.virtual.ledger.writer import LedgerWriter

#: Rounds handed over in one message: fewer wake-ups of the child, each a chance for the
#: scheduler to stop the loop in its favour.
BATCH_ROUNDS = 8
#: Seconds `close` waits for the child to finish writing before it gives up on it.
CLOSE_TIMEOUT_S = 120.0
#: Seconds to wait for the child to end once it has answered (or failed to).
JOIN_TIMEOUT_S = 5.0


def fork_context():
    """Fork where there is fork: the child starts in milliseconds and imports nothing.
    (Spawn and the fork server would run the caller's main script again in the child.)"""
    if "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _serve(conn, how: str, args: tuple) -> None:
    """The child: open the writer, then append, flush and close on request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the loop decides (a Ctrl-C reaches both)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the loop's handler: a kill ends the child
    if hasattr(os, "SCHED_BATCH"):  # wake up without preempting the loop (Linux, sched(7))
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        writer = LedgerWriter(*args) if how == "new" else LedgerWriter.resume(*args)
        conn.send(("ok", writer.height, writer.head, *_usage()))
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the loop is gone: keep what was written
                writer.close()
                return
            if msg[0] == "blocks":
                for block in msg[1]:
                    writer.append_round(*block)
            elif msg[0] == "flush":
                conn.send(("ok", *writer.flush(), *_usage()))
            else:
                conn.send(("ok", *writer.close(), *_usage()))
                return
    except BaseException:  # noqa: BLE001 - handed to the loop, which raises it
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass


def _usage() -> tuple[float, float]:
    """(CPU seconds, peak resident memory [MB]) of this process so far (Linux: kB)."""
    import resource
    import sys
    import time

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return time.process_time(), peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


class LedgerProcessError(RuntimeError):
    """The ledger's process failed; the message holds its traceback."""


class LedgerProcess:
    """A `LedgerWriter` run in a child process, with the writer's interface.

    Open one with `LedgerProcess.new` (a new chain; arguments of `LedgerWriter`) or
    `LedgerProcess.resume` (arguments of `LedgerWriter.resume`). `height` and `head` are
    those of the blocks on disk as of the last `flush` or `close`; `cpu_s` and
    `peak_rss_mb` the child's CPU time and peak memory as of then.
    """

    def __init__(self, how: str, args: tuple):
        ctx = fork_context()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, how, args), name="cosim-ledger", daemon=True)
        # the child shares the loop's memory until either writes to it: keep the garbage
        # collector of the child off the objects it inherits (Python's gc.freeze advice)
        gc.freeze()
        try:
            self._proc.start()
        finally:
            gc.unfreeze()
        child.close()
        self.path = args[0]
        self._closed = False
        self.cpu_s = self.peak_rss_mb = 0.0
        self._batch: list[tuple] = []
        self.height, self.head = self._reply()

    @classmethod
    def new(cls, *args) -> LedgerProcess:
        return cls("new", args)

    @classmethod
    def resume(cls, *args) -> LedgerProcess:
        return cls("resume", args)

    def _reply(self) -> tuple[int, str]:
        try:
            msg = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=JOIN_TIMEOUT_S)
            raise LedgerProcessError(f"the ledger process for {self.path} ended (exit code "
                                     f"{self._proc.exitcode}) without a word") from None
        if msg[0] == "error":
            self._closed = True
            raise LedgerProcessError(f"the ledger process for {self.path} failed:\n{msg[1]}")
        self.cpu_s, self.peak_rss_mb = msg[3], msg[4]
        return msg[1], msg[2]

    def _send(self, msg: tuple) -> None:
        if self._conn.poll():  # the child only speaks unasked when it failed
            self._reply()
        try:
            self._conn.send(msg)
        except (BrokenPipeError, OSError):
            self._reply()
            raise

    def append_round(self, round_no: int, time: str, orders: Sequence[SignedOrder] | Commitments,
                     outcomes: Sequence[str],
                     trades: tuple | None, settlement: np.ndarray) -> None:
        """Hand one round's block over (see `LedgerWriter.append_round`); its hash is
        known after the next `flush`."""
        orders = orders if isinstance(orders, Commitments) else list(orders)
        self._batch.append((round_no, time, orders, list(outcomes), trades, np.ascontiguousarray(settlement)))
        if len(self._batch) >= BATCH_ROUNDS:
            self._send_batch()

    def _send_batch(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._send(("blocks", batch))

    def flush(self) -> tuple[int, str]:
        """Wait until every block handed over is on disk; returns (blocks, head hash)."""
        self._send_batch()
        self._send(("flush",))
        self.height, self.head = self._reply()
        return self.height, self.head

    def close(self) -> tuple[int, str]:
        """Let the child write what it was given, then end it; returns (blocks, head)."""
        if self._closed:
            return self.height, self.head
        self._closed = True
        try:
            try:
                self._send_batch()
                self._conn.send(("close",))
            except OSError:
                return self._reply()  # raises the child's failure
            if not self._conn.poll(CLOSE_TIMEOUT_S):
                raise LedgerProcessError(f"the ledger process for {self.path} did not finish in {CLOSE_TIMEOUT_S} s")
            self.height, self.head = self._reply()
        finally:
            self._conn.close()
            self._proc.join(timeout=JOIN_TIMEOUT_S)
            if self._proc.is_alive():
                self._proc.kill()
        return self.height, self.head
