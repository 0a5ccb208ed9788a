"""Printing one block of a run's ledger in readable form (`cosim ledger show`)."""

from __future__ import annotations

import json
from pathlib import Path

from cosim.config.errors import InputError
from cosim.virtual.admission import ADMITTED
from cosim.virtual.ledger.format import quorum


def _read_blocks(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "ledger.jsonl"
    if not path.exists():
        raise InputError(path, ["file not found"])
    blocks, problems = [], []
    for n, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), start=1):
        try:
            block = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {n}: not a JSON block ({err}); `cosim ledger verify` tells what is wrong")
            continue
        if isinstance(block, dict):
            blocks.append(block)
        else:
            problems.append(f"line {n}: expected a JSON object, found {type(block).__name__}")
    if problems:
        raise InputError(path, problems)
    return blocks


def _num(v, width: int = 10, digits: int = 4) -> str:
    return f"{v:{width}.{digits}f}" if isinstance(v, int | float) else f"{v:>{width}}"


def show(run_dir: str | Path, round_no: int | None = 0) -> str:
    """One block in readable form: the genesis block if `round_no` is None or -1."""
    blocks = _read_blocks(run_dir)
    want = -1 if round_no is None else round_no
    match = [b for b in blocks if b.get("round") == want]
    if not match:
        last = max((b.get("round", -1) for b in blocks), default=-1)
        raise InputError(Path(run_dir) / "ledger.jsonl",
                         [f"--round: expected a round between 0 and {last} (or --genesis), found {round_no}"])
    b = match[0]
    validators = [row[1] for row in blocks[0].get("keys", []) if row[0] == "validator"]
    signers = [s[0] for s in b.get("signatures", [])]
    head = "genesis block" if b["kind"] == "genesis" else f"block {b['height']} · round {b['round']}"
    lines = [
        f"{head} · time {b['time']}",
        f"  hash        {b['hash']}",
        f"  prev_hash   {b['prev_hash']}",
        *[f"  root {t:<10} {r}" for t, r in sorted(b.get("roots", {}).items())],
        f"  signed by   {len(signers)} of {len(validators)} validators (quorum {quorum(len(validators))}): "
        + ", ".join(signers),
    ]
    if b["kind"] == "genesis":
        lines.append(f"  keys ({len(b['keys'])}): role name public_key")
        lines += [f"    {role:<9} {name:<12} {key}" for role, name, key in b["keys"]]
        return "\n".join(lines)
    orders = b["orders"]
    n_admitted = sum(o[7] == ADMITTED for o in orders)
    lines.append(f"  orders ({len(orders)}: {n_admitted} admitted, {len(orders) - n_admitted} rejected)")
    lines.append(f"    {'id':<8} {'side':<5} {'quantity_kwh':>12} {'price_per_kwh':>13} {'round':>6} {'nonce':>6}  outcome")
    lines += [f"    {o[0]:<8} {o[1]:<5} {_num(o[2], 12)} {_num(o[3], 13)} {o[4]:>6} {o[5]:>6}  {o[7]}" for o in orders]
    lines.append(f"  trades ({len(b['trades'])}): seller -> buyer, energy_kwh, price_per_kwh, network_charge_per_kwh")
    lines += [f"    {t[0]:<12} -> {t[1]:<12} {_num(t[2])} {_num(t[3])} {_num(t[5])}" for t in b["trades"]]
    lines.append(f"  settlement ({len(b['settlement'])}): party, bought_kwh, sold_kwh, bill (positive = pays)")
    lines += [f"    {s[0]:<16} {_num(s[2])} {_num(s[3])} {_num(s[10])}" for s in b["settlement"]]
    return "\n".join(lines)
