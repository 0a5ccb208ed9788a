"""Time of one three-phase power flow against the balanced one, on the same net and loads.

``python -m cosim.bench.threephase [--repeats N]`` times, per network, with the same
injections: cosim's balanced power flow (`cosim.physical.grid.powerflow.PowerFlow.run`,
the round loop's), ``pandapower.runpp`` (balanced, full setup each call) and
``pandapower.runpp_3ph`` (`cosim.physical.grid.threephase.run_three_phase`) and cosim's
prepared three-phase power flow (`cosim.physical.grid.threephase_flow.ThreePhasePowerFlow.run`,
warm-started from the last solution, as in a round; the injections alternate between
the snapshot's and 0.7 times them, so that every call iterates). Medians over
N calls [ms], printed and written to results/bench/threephase.json. Networks: the IEEE
European LV feeder at its on-peak minute (55 single-phase loads) and rural3 with seeded
single-phase households.

``python -m cosim.bench.threephase --week`` times instead the whole default week, balanced
(scenarios/rural3-summer-pv.yaml) and in three phases (scenarios/rural3-summer-pv-3ph.yaml),
one ``cosim run`` each in a fresh process (four variants, ledger, no report; ``--workers``
passed on when given), alternating RUNS times: wall time [s] and the median round of the main variant [ms] with its power
flow and sensitivity parts, with the machine's load average before each run; written to
results/bench/threephase_week.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandapower as pp
import pandas as pd
from tqdm import tqdm

from cosim.physical import ieee_eu_lv
from cosim.physical.grid.powerflow import PowerFlow
from cosim.physical.grid.threephase import (
    PHASES,
    add_zero_sequence_data,
    phase_split,
    run_three_phase,
    set_phase_injections,
)
from cosim.physical.grid.threephase_flow import ThreePhasePowerFlow
from cosim.physical.networks import REPO_NETWORKS, build_net, load_network_spec
from cosim.physical.phases import allocate_phases

OUT = Path("results") / "bench" / "threephase.json"
WEEK_OUT = Path("results") / "bench" / "threephase_week.json"
#: The default week, balanced and in three phases.
WEEK_SCENARIOS = {"balanced": Path("scenarios") / "rural3-summer-pv.yaml",
                  "three-phase": Path("scenarios") / "rural3-summer-pv-3ph.yaml"}
#: The issue's bound on the default week in three phases [s].
WEEK_LIMIT_S = 300.0


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return float(np.median(times))


def _cases() -> dict[str, tuple[pp.pandapowerNet, np.ndarray, np.ndarray, np.ndarray, list[str]]]:
    """Per network: the net (no loads), and the loads' buses, p [kW], q [kvar], connections."""
    ieee = ieee_eu_lv.snapshot(566)
    al = ieee.asymmetric_load
    p = al[[f"p_{ph}_mw" for ph in PHASES]].to_numpy(float).sum(axis=1) * 1000.0
    q = al[[f"q_{ph}_mvar" for ph in PHASES]].to_numpy(float).sum(axis=1) * 1000.0
    cases = {"ieee_eu_lv (minute 566)": (ieee, al.bus.to_numpy(int), p, q, ieee_eu_lv.load_phases(ieee).tolist())}
    net = build_net(load_network_spec(REPO_NETWORKS / "rural3.yaml"))
    n = len(net.load)
    rng = np.random.default_rng(42)
    p = rng.uniform(-6.0, 4.0, n)
    phases = allocate_phases(42, "single-phase", np.full(n, 3.0), np.zeros(n), np.zeros(n), 3.0)
    cases["rural3 (single-phase households)"] = (net, net.load.bus.to_numpy(int), p, 0.2 * np.abs(p),
                                                 phases.load_phase.tolist())
    return cases


#: Scale of the injections in every other call, so that a warm start still has to iterate [-].
ALTERNATE_SCALE = 0.7


def _alternating(run, p: np.ndarray, q: np.ndarray):
    """A call of ``run`` with the injections, then with them times `ALTERNATE_SCALE`, in turn."""
    calls = [0]

    def call():
        scale = ALTERNATE_SCALE if calls[0] % 2 else 1.0
        calls[0] += 1
        return run(p * scale, q * scale)

    return call


def _time_case(net: pp.pandapowerNet, bus: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray, conn: list[str],
               repeats: int) -> dict[str, float]:
    """Median times of the three power flows of one net and its injections [ms]."""
    flow = PowerFlow(net)
    per_bus = pd.DataFrame({"bus": bus, "p": p_kw, "q": q_kvar}).groupby("bus").sum()
    per_bus = per_bus.reindex(flow.buses, fill_value=0.0)
    p_bus, q_bus = per_bus.p.to_numpy(), per_bus.q.to_numpy()
    fast_ms = _median_ms(_alternating(flow.run, p_bus, q_bus), repeats)

    balanced = copy.deepcopy(net)
    set_phase_injections(balanced, bus, p_kw, q_kvar, ["abc"] * len(bus))
    balanced.asymmetric_load = balanced.asymmetric_load.iloc[0:0]
    for b, pi, qi in zip(bus, p_kw, q_kvar, strict=True):
        pp.create_load(balanced, int(b), p_mw=pi / 1000.0, q_mvar=qi / 1000.0)

    def runpp():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(balanced, numba=False)

    runpp_ms = _median_ms(runpp, repeats)
    three = copy.deepcopy(net)
    add_zero_sequence_data(three)
    set_phase_injections(three, bus, p_kw, q_kvar, conn)
    three_ms = _median_ms(lambda: run_three_phase(three), repeats)
    prepared = ThreePhasePowerFlow(net)
    split = np.array([phase_split(c) for c in conn])
    p_ph, q_ph = np.zeros((len(prepared.buses), 3)), np.zeros((len(prepared.buses), 3))
    pos = pd.Series(np.arange(len(prepared.buses)), index=prepared.buses)[bus].to_numpy()
    np.add.at(p_ph, pos, p_kw[:, None] * split)
    np.add.at(q_ph, pos, q_kvar[:, None] * split)
    prepared_ms = _median_ms(_alternating(prepared.run, p_ph, q_ph), repeats)
    return {"balanced_cosim_ms": fast_ms, "balanced_runpp_ms": runpp_ms, "runpp_3ph_ms": three_ms,
            "three_phase_cosim_ms": prepared_ms, "ratio_3ph_to_balanced_cosim": prepared_ms / fast_ms,
            "ratio_runpp_3ph_to_runpp": three_ms / runpp_ms}


def measure(repeats: int) -> pd.DataFrame:
    """One row per network: its size and `_time_case`'s medians."""
    rows = []
    for name, (net, bus, p_kw, q_kvar, conn) in tqdm(_cases().items(), desc="networks", unit="net"):
        rows.append({"network": name, "buses": len(net.bus), "loads": len(bus),
                     **_time_case(net, bus, p_kw, q_kvar, conn, repeats)})
    return pd.DataFrame(rows)


def time_week(runs: int, workers: int | None = None,
              out_dir: Path = Path("results") / "bench" / "threephase-week") -> pd.DataFrame:
    """`runs` alternating ``cosim run`` processes of each of `WEEK_SCENARIOS` (with
    ``--workers`` when given, else cosim's default): one row per run."""
    import os
    import subprocess
    import sys

    rows = []
    for k in range(runs):
        for physics, scenario in WEEK_SCENARIOS.items():
            load = os.getloadavg()[0]
            folder = out_dir / physics
            t0 = time.perf_counter()
            extra = ["--workers", str(workers)] if workers else []
            subprocess.run([sys.executable, "-m", "cosim", "run", str(scenario), "--out", str(folder), "--no-report",
                            *extra], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            rounds = pd.read_parquet(folder / "rounds.parquet")
            rows.append({"run": k, "physics": physics, "wall_s": wall, "rounds": len(rounds),
                         "median_round_ms": float(rounds.round_ms.median()),
                         "median_pf_ms": float(rounds.pf_ms.median()),
                         "median_sens_ms": float(rounds.sens_ms.median()),
                         "mean_round_ms": float(rounds.round_ms.mean()), "load_avg_1min": load})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosim.bench.threephase", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="calls per measurement (median) [-]")
    parser.add_argument("--week", action="store_true", help="time the default week, balanced and three-phase")
    parser.add_argument("--runs", type=int, default=1, help="with --week: runs of each (alternating) [-]")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --week: cosim run --workers (default: cosim's, one process per core)")
    args = parser.parse_args(argv)
    if args.week:
        table = time_week(args.runs, args.workers)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
        med = table.groupby("physics")[["wall_s", "median_round_ms", "mean_round_ms"]].median()
        print(med.to_string(float_format=lambda x: f"{x:.2f}"))
        ok = bool(med.loc["three-phase", "wall_s"] <= WEEK_LIMIT_S)
        print(f"three-phase week {med.loc['three-phase', 'wall_s']:.1f} s "
              f"({'within' if ok else 'over'} the {WEEK_LIMIT_S:.0f} s bound)")
        WEEK_OUT.parent.mkdir(parents=True, exist_ok=True)
        WEEK_OUT.write_text(json.dumps({"machine": platform.platform(), "runs": args.runs, "workers": args.workers,
                                        "rows": table.to_dict(orient="records"),
                                        "median": med.reset_index().to_dict(orient="records")}, indent=2))
        print(f"written: {WEEK_OUT}")
        return 0
    table = measure(args.repeats)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.platform(), "repeats": args.repeats,
                               "rows": table.to_dict(orient="records")}, indent=2))
    print(f"written: {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
