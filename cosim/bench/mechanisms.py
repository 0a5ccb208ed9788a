"""Benchmark of every market mechanism: median round on rural3 with feedback and the ledger.

``python -m cosim.bench.mechanisms --rounds N`` runs each mechanism's comparison scenario
(``scenarios/rural3-<mechanism>.yaml``, the ones ``make compare`` runs) for its first N
rounds, main variant only, exactly as ``cosim run`` runs it (signed and admitted orders,
clearing, AC power flow, network feedback, settlement, the ledger's block, recording),
then prints a table of each mechanism's median round and the median of each stage
(`cosim.sim.round` times them: ``orders``, ``clear`` -- every clearing of the round, the
feedback's re-clearings included --, ``pf`` the power flows, ``sens`` the feedback's
sensitivities and charges, ``settle``, ``ledger``, ``record``) and writes
results/bench/mechanisms.json. Targets of issue 18 are checked against the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.bench.timing import _scenario_for, run_with_ledger
from cosim.config.load import load_scenario
from cosim.sim.loop import prepare, variants_for

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
#: The scenarios of ``make compare``, by the name of their file (rural3-<name>.yaml).
MECHANISMS = ["uniform", "pay-as-bid", "mcafee", "huang", "vcg", "bilateral", "community-sdr", "community-mmr",
              "bill-sharing", "fixed-price", "hybrid", "shapley", "stackelberg"]
STAGES = ["orders_ms", "clear_ms", "pf_ms", "sens_ms", "settle_ms", "ledger_ms", "record_ms"]
#: Issue 18's targets: a median round at most this [ms]; the others at most 1.2 x uniform.
TARGET_MS = {"stackelberg": 50.0, "shapley": 50.0, "vcg": 15.0, "hybrid": 12.0, "bilateral": 30.0}
UNIFORM_FACTOR = 1.2


def bench_mechanism(name: str, rounds: int, progress: bool = False) -> dict:
    """Run the first `rounds` rounds of ``scenarios/rural3-<name>.yaml`` (main variant, with
    the ledger) and return its median round and stage medians [ms]."""
    path = SCENARIOS / f"rural3-{name}.yaml"
    scenario = load_scenario(path)
    scenario = _scenario_for(scenario, min(rounds, scenario.n_rounds)) if rounds < scenario.n_rounds else scenario
    setup = prepare(scenario, path)
    variant = variants_for(scenario)[0]
    with tempfile.TemporaryDirectory() as tmp:
        wall_s, _ = run_with_ledger(setup, variant, Path(tmp), progress)
        table = pd.read_parquet(Path(tmp) / "rounds.parquet")
    return {
        "mechanism": scenario.market.mechanism,
        "scenario": path.name,
        "rounds": int(len(table)),
        "median_round_ms": float(table.round_ms.median()),
        "p90_round_ms": float(table.round_ms.quantile(0.9)),
        "mean_round_ms": wall_s / len(table) * 1000.0,
        "breakdown_median_ms": {c.removesuffix("_ms"): float(table[c].median()) for c in STAGES if c in table},
        "feedback_rounds": int((table.iterations > 1).sum()),
    }


def check_targets(rows: dict[str, dict]) -> dict[str, dict]:
    """Each benchmarked mechanism's target [ms] and whether its median round meets it."""
    uniform = rows.get("uniform", {}).get("median_round_ms", np.nan)
    out = {}
    for name, row in rows.items():
        target = TARGET_MS.get(name, UNIFORM_FACTOR * uniform)
        out[name] = {"target_ms": float(target), "met": bool(row["median_round_ms"] <= target)}
    return out


def format_table(result: dict) -> str:
    stages = [s.removesuffix("_ms") for s in STAGES]
    head = f"{'mechanism':<14} {'median':>8} {'target':>8}  " + " ".join(f"{s:>7}" for s in stages) + "  feedback"
    lines = [f"median round [ms] over {result['rounds']} rounds of each scenario, with feedback and the ledger", head]
    for name, row in result["mechanisms"].items():
        t = result["targets"][name]
        b = row["breakdown_median_ms"]
        mark = "" if t["met"] else " !"
        lines.append(f"{name:<14} {row['median_round_ms']:8.2f} {t['target_ms']:8.2f}{mark:2} "
                     + " ".join(f"{b.get(s, np.nan):7.2f}" for s in stages) + f"  {row['feedback_rounds']:>8}")
    return "\n".join(lines)


def run(names: list[str], rounds: int, out: str | Path, progress: bool = False) -> dict:
    rows = {}
    for name in names:
        rows[name] = bench_mechanism(name, rounds, progress)
        if progress:
            print(f"{name}: {rows[name]['median_round_ms']:.2f} ms", flush=True)
    result = {"rounds": rounds, "mechanisms": rows, "targets": check_targets(rows),
              "machine": {"python": platform.python_version(), "processor": platform.machine()},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mechanisms.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosim.bench.mechanisms", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=96, help="rounds of each scenario (96: its whole day)")
    parser.add_argument("--mechanisms", nargs="+", default=MECHANISMS, choices=MECHANISMS)
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.mechanisms, args.rounds, args.out, args.progress)
    print(format_table(result))
    print(f"written: {Path(args.out) / 'mechanisms.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
