"""`cosim.virtual.ledger.process` under the name the simulation imports it by."""

from cosim.virtual.ledger.process import (
    BATCH_ROUNDS,
    CLOSE_TIMEOUT_S,
    LedgerProcess,
    LedgerProcessError,
)

__all__ = ["BATCH_ROUNDS", "CLOSE_TIMEOUT_S", "LedgerProcess", "LedgerProcessError"]
