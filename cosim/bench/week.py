"""A whole run of ``cosim run`` against pandapower's own time series, both timed as processes.

Runs, alternately (A B C A B C ...), `repeats` times each:

- A: ``cosim run SCENARIO --no-report --no-progress`` (every variant, the market with
  network feedback, the ledger; results written), in a fresh process;
- B: pandapower's ``run_timeseries`` of the same SimBench feeder and period with its
  shipped profiles and ``lightsim2grid=True``, power flow only, one variant
  (`cosim.bench.pandapower_week`), in a fresh process;
- C (unless ``--no-newton``): the same with pandapower's own Newton-Raphson.

Prints the median wall time of each and the ratios, and writes ``results/bench/week.json``.
Each process is timed from its start to its exit, imports and file reading included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cosim.bench.timing import DEFAULT_SCENARIO


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall time [s] and CPU time of the process and its children [s] of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run_week_bench(scenario: str, repeats: int, newton: bool, out: Path) -> dict:
    python = sys.executable
    cosim = [python, "-m", "cosim", "run", scenario, "--no-report", "--no-progress"]
    pandapower = [python, "-m", "cosim.bench.pandapower_week", scenario]
    commands = {"cosim run": None, "pandapower + lightsim2grid": pandapower + ["--lightsim2grid"]}
    if newton:
        commands["pandapower (Newton-Raphson)"] = pandapower
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for name, cmd in commands.items():
                if cmd is None:
                    folder = Path(tmp) / f"run{i}"
                    cmd = cosim + ["--out", str(folder)]
                times[name].append(timed(cmd))
                if name == "cosim run":
                    shutil.rmtree(folder, ignore_errors=True)
    result = {
        "scenario": scenario,
        "repeats": repeats,
        "load_average_at_end": os.getloadavg()[0],
        "median_wall_s": {name: statistics.median(w for w, _ in t) for name, t in times.items()},
        "median_cpu_s": {name: statistics.median(c for _, c in t) for name, t in times.items()},
        "wall_s": {name: [round(w, 3) for w, _ in t] for name, t in times.items()},
    }
    base = result["median_wall_s"]["cosim run"]
    result["ratio_to"] = {name: base / wall for name, wall in result["median_wall_s"].items() if name != "cosim run"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "week.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_week(result: dict) -> str:
    lines = [f"{result['scenario']}, whole processes, median of {result['repeats']} alternating runs "
             f"(load average {result['load_average_at_end']:.1f} at the end):"]
    for name, wall in result["median_wall_s"].items():
        lines.append(f"  {name:<30} {wall:7.2f} s wall, {result['median_cpu_s'][name]:7.2f} s CPU")
    for name, ratio in result["ratio_to"].items():
        lines.append(f"  cosim run / {name}: {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-newton", action="store_true", help="leave out pandapower's own Newton-Raphson")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    result = run_week_bench(args.scenario, args.repeats, not args.no_newton, Path(args.out))
    print(format_week(result))
    print(f"written: {Path(args.out) / 'week.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
