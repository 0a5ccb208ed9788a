"""The ledger: one block per round, approved by a quorum of validators, checkable by anyone.

- `format`: the blocks, their tables and rows, Merkle leaves and the seal;
- `writer`: `LedgerWriter` writes ledger.jsonl during a run;
- `process`: `LedgerProcess` runs the writer in a child process beside the rounds;
- `verify`: `verify` checks a finished run's ledger (`cosim ledger verify`), with
  `files` (the ledger against the run's parquet files) and `workers` (signatures
  checked in worker processes on a long ledger);
- `show`: `show` prints one block (`cosim ledger show`).

What it does not do: it is not a distributed consensus network. The validators are
simulated in one process from keys derived from the seed, so whoever has the scenario
file can re-sign a rewritten chain (or re-run the scenario); and a colluding quorum of
validators can always approve a false block, as long as its orders carry valid
signatures and its bills balance. The guarantees hold as far as the keys are held apart
and fewer validators than a quorum collude. To pin a run, keep its ``ledger_head``
somewhere else: any rewritten run has another head.
"""

from cosim.virtual.ledger.format import (
    GENESIS_PREV,
    SETTLEMENT_FIELDS,
    TRADE_FIELDS,
    LedgerError,
    canonical_json,
    leaves,
    quorum,
    seal,
    validator_keys,
)
from cosim.virtual.ledger.show import show
from cosim.virtual.ledger.verify import verify
from cosim.virtual.ledger.workers import WorkerPoolError
from cosim.virtual.ledger.writer import LedgerWriter, rejection_rows, trade_payload

__all__ = [
    "GENESIS_PREV",
    "SETTLEMENT_FIELDS",
    "TRADE_FIELDS",
    "LedgerError",
    "LedgerWriter",
    "WorkerPoolError",
    "canonical_json",
    "leaves",
    "quorum",
    "rejection_rows",
    "seal",
    "show",
    "trade_payload",
    "validator_keys",
    "verify",
]
