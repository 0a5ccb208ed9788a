"""A minimal hash-chained ledger: one block per round, verifiable after the run.

Each block holds the previous block's hash, the round's orders, trades and per-party
bills, and its own SHA-256 hash over a canonical JSON encoding (sorted keys, no spaces,
floats rounded to 9 decimals). Changing, removing, reordering or inserting a block breaks
the chain; the head hash is also stored in summary.json so truncation is caught.
It is tamper-evident, not a consensus network: anyone holding the files can rewrite the
whole chain and summary together. Signed orders and validator quorums come later.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.errors import InputError

GENESIS_HASH = "0" * 64
DECIMALS = 9


def _canon(value):
    if isinstance(value, float | np.floating):
        return round(float(value), DECIMALS)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def block_hash(block: dict) -> str:
    body = {k: v for k, v in block.items() if k != "hash"}
    data = json.dumps(_canon(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


class LedgerWriter:
    """Appends one block per round to ledger.jsonl."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = self.path.open("w")
        self.head = GENESIS_HASH

    def append(self, round_no: int, time: str, orders: pd.DataFrame, trades: pd.DataFrame,
               settlement: pd.DataFrame) -> str:
        block = {
            "round": int(round_no),
            "time": time,
            "prev_hash": self.head,
            "orders": orders[["id", "side", "quantity_kwh", "price_per_kwh"]].values.tolist(),
            "trades": trades[["seller", "buyer", "energy_kwh", "price_per_kwh", "network_charge_per_kwh"]].values.tolist(),
            "bills": dict(zip(settlement.party, settlement.bill.astype(float), strict=True)),
        }
        block = _canon(block)
        block["hash"] = block_hash(block)
        self._fh.write(json.dumps(block, sort_keys=True, separators=(",", ":")) + "\n")
        self.head = block["hash"]
        return self.head

    def close(self) -> None:
        self._fh.close()


def verify(run_dir: str | Path) -> tuple[bool, str]:
    """Check every block's hash and link, the head against summary.json, and the bills
    against settlement.parquet. Returns (intact, message naming the first bad block)."""
    run_dir = Path(run_dir)
    path = run_dir / "ledger.jsonl"
    if not path.exists():
        return False, f"{path}: no ledger"
    prev = GENESIS_HASH
    bills_by_round: dict[int, dict[str, float]] = {}
    with path.open() as fh:
        for line_no, line in enumerate(fh, start=1):
            try:
                block = json.loads(line)
            except json.JSONDecodeError as err:
                return False, f"block at line {line_no}: not valid JSON ({err.msg})"
            if not isinstance(block, dict) or "hash" not in block:
                return False, f"block at line {line_no}: no hash"
            if block.get("prev_hash") != prev:
                return False, f"block at line {line_no} (round {block.get('round')}): prev_hash does not match the previous block"
            if block_hash(block) != block["hash"]:
                return False, f"block at line {line_no} (round {block.get('round')}): hash does not match its content"
            if block.get("round") != line_no - 1:
                return False, f"block at line {line_no}: round {block.get('round')} out of sequence"
            bills_by_round[block["round"]] = block["bills"]
            prev = block["hash"]
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        head = json.loads(summary_path.read_text()).get("ledger_head")
        if head != prev:
            return False, f"head of the chain {prev[:16]}... differs from summary.json ledger_head {str(head)[:16]}... (truncated or replaced chain)"
    settlement_path = run_dir / "settlement.parquet"
    if settlement_path.exists():
        st = pd.read_parquet(settlement_path, columns=["round", "party", "bill"])
        if set(st["round"].unique()) != set(bills_by_round):
            return False, "rounds in the ledger differ from settlement.parquet"
        led = pd.DataFrame(
            [(r, p, b) for r, bills in bills_by_round.items() for p, b in bills.items()], columns=["round", "party", "bill"]
        )
        merged = st.merge(led, on=["round", "party"], how="outer", suffixes=("", "_ledger"))
        bad = merged[~np.isclose(merged.bill.fillna(np.inf), merged.bill_ledger.fillna(-np.inf), atol=1e-6)]
        if len(bad):
            row = bad.iloc[0]
            return False, f"block of round {int(row['round'])}: bill of {row.party} differs from settlement.parquet"
    return True, f"ledger intact: {len(bills_by_round)} blocks, head {prev[:16]}..."


def show(run_dir: str | Path, round_no: int = 0) -> str:
    """One block in readable form."""
    path = Path(run_dir) / "ledger.jsonl"
    with path.open() as fh:
        for line in fh:
            block = json.loads(line)
            if block.get("round") == round_no:
                lines = [
                    f"block {block['round']}  time {block['time']}",
                    f"  hash      {block['hash']}",
                    f"  prev_hash {block['prev_hash']}",
                    f"  orders ({len(block['orders'])}): id side quantity_kwh price_per_kwh",
                    *[f"    {o[0]} {o[1]} {o[2]:.4f} {o[3]:.4f}" for o in block["orders"]],
                    f"  trades ({len(block['trades'])}): seller -> buyer energy_kwh price_per_kwh network_charge_per_kwh",
                    *[f"    {t[0]} -> {t[1]} {t[2]:.4f} {t[3]:.4f} {t[4]:.4f}" for t in block["trades"]],
                    "  bills (positive = pays):",
                    *[f"    {p} {b:.4f}" for p, b in block["bills"].items()],
                ]
                return "\n".join(lines)
    raise InputError(path, [f"--round: expected a round between 0 and the last block, found {round_no}"])
