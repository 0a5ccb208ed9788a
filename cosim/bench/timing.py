"""`cosim bench`: time per round of the co-simulation, side by side with pandapower.

Runs N rounds of a scenario's main variant (market + AC power flow + feedback + signed
orders and the ledger, recorded to parquet as in ``cosim run``) and, in
the same process, pandapower's own ``run_timeseries`` on the same network and the same
bus injections (power flow only, ConstControl on one load per bus), then reports the
median time per round, its breakdown and the ratio. Writes results/bench/bench.json.
"""

from __future__ import annotations

import copy
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.config.load import load_scenario
from cosim.config.scenario import PROFILE_END, Scenario
from cosim.sim.loop import OrderGate, open_ledger, prepare, simulate_variant, variants_for

DEFAULT_SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "rural3-summer-pv.yaml"
STAGES = ["orders_ms", "clear_ms", "pf_ms", "sens_ms", "settle_ms", "ledger_ms", "record_ms"]


def _scenario_for(scenario: Scenario, rounds: int) -> Scenario:
    """The scenario stretched (or cut) to `rounds` rounds, moved earlier if it would leave 2016."""
    duration = scenario.resolution * rounds
    start = scenario.start
    if start + duration > PROFILE_END:
        start = PROFILE_END - duration
    return scenario.model_copy(update={"duration": duration, "start": start})


def pandapower_timeseries_ms(net, buses: pd.DataFrame, n_rounds: int, lightsim2grid: bool) -> float:
    """Mean time per step of pandapower's run_timeseries [ms] for the given per-round bus
    injections (columns round, bus, p_kw, q_kvar), with or without lightsim2grid."""
    import pandapower as pp
    from pandapower.control import ConstControl
    from pandapower.timeseries import DFData, OutputWriter, run_timeseries

    net = copy.deepcopy(net)
    net.load.drop(net.load.index, inplace=True)
    net.sgen.drop(net.sgen.index, inplace=True)
    bus_ids = np.sort(buses.bus.unique())
    for b in bus_ids:
        pp.create_load(net, int(b), p_mw=0.0, q_mvar=0.0)
    p = buses.pivot(index="round", columns="bus", values="p_kw").loc[:, bus_ids] / 1000.0
    q = buses.pivot(index="round", columns="bus", values="q_kvar").loc[:, bus_ids] / 1000.0
    p.columns = q.columns = net.load.index
    p = p.reset_index(drop=True)
    q = q.reset_index(drop=True)
    ConstControl(net, "load", "p_mw", element_index=net.load.index, data_source=DFData(p), profile_name=net.load.index)
    ConstControl(net, "load", "q_mvar", element_index=net.load.index, data_source=DFData(q), profile_name=net.load.index)
    ow = OutputWriter(net, output_path=None)
    ow.log_variable("res_bus", "vm_pu")
    ow.log_variable("res_line", "loading_percent")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_timeseries(net, time_steps=range(n_rounds), verbose=False, numba=False, lightsim2grid=lightsim2grid)
    return (time.perf_counter() - t0) / n_rounds * 1000.0


def run_with_ledger(setup, variant, folder: Path, progress: bool) -> tuple[float, object]:
    """Run `variant`'s rounds into `folder` as `cosim run` does (signed orders, admission
    and the ledger included); returns the wall time [s] and the closed ledger."""
    gate = OrderGate(setup.scenario, setup.fleet)
    ledger = open_ledger(setup, folder / "ledger.jsonl", gate)
    t0 = time.perf_counter()
    try:
        simulate_variant(setup, variant, folder, progress=progress, ledger=ledger, gate=gate)
    finally:
        ledger.close()
    return time.perf_counter() - t0, ledger


def run_bench(scenario_path: str | Path = DEFAULT_SCENARIO, rounds: int = 2000, out: str | Path = "results/bench",
              progress: bool = True, network: str | None = None) -> dict:
    scenario = _scenario_for(load_scenario(scenario_path), rounds)
    if network is not None:
        scenario = scenario.model_copy(update={"network": network, "name": f"{scenario.name}-{network}"})
    t0 = time.perf_counter()
    setup = prepare(scenario, scenario_path)
    setup_s = time.perf_counter() - t0
    variant = variants_for(scenario)[0]
    with tempfile.TemporaryDirectory() as tmp:
        wall_s, ledger = run_with_ledger(setup, variant, Path(tmp), progress)
        ledger_cpu_ms = getattr(ledger, "cpu_s", float("nan")) / rounds * 1000.0
        rounds_table = pd.read_parquet(Path(tmp) / "rounds.parquet")
        buses = pd.read_parquet(Path(tmp) / "buses.parquet")
    with tempfile.TemporaryDirectory() as tmp:  # the same rounds without orders signed, admitted or chained
        t0 = time.perf_counter()
        simulate_variant(setup, variant, Path(tmp), progress=progress)
        wall_no_ledger_s = time.perf_counter() - t0
        no_ledger_ms = float(pd.read_parquet(Path(tmp) / "rounds.parquet", columns=["round_ms"]).round_ms.median())
    pp_ms = pandapower_timeseries_ms(setup.pf.net, buses, rounds, lightsim2grid=False)
    pp_lsg_ms = pandapower_timeseries_ms(setup.pf.net, buses, rounds, lightsim2grid=True)
    median_round = float(rounds_table.round_ms.median())
    breakdown = {c: float(rounds_table[c].median()) for c in STAGES if c in rounds_table.columns}
    for part in ("update_ms", "solve_ms"):  # the clearing's parts (the uniform auction reports them)
        if f"info_{part}" in rounds_table.columns:
            breakdown[f"clear_{part}"] = float(rounds_table[f"info_{part}"].median())
    result = {
        "scenario": scenario.name,
        "network": scenario.network,
        "mechanism": scenario.market.mechanism,
        "rounds": rounds,
        "n_prosumers": setup.fleet.n,
        "n_buses": len(setup.pf.buses),
        "median_round_ms": median_round,
        "mean_round_ms": wall_s / rounds * 1000.0,
        "breakdown_median_ms": breakdown,
        "pandapower_run_timeseries_ms_per_step": pp_ms,
        "ratio_round_to_pandapower_step": median_round / pp_ms,
        "pandapower_lightsim2grid_run_timeseries_ms_per_step": pp_lsg_ms,
        "ratio_round_to_pandapower_lightsim2grid_step": median_round / pp_lsg_ms,
        "ledger_process_cpu_ms_per_round": ledger_cpu_ms,
        "median_round_without_ledger_ms": no_ledger_ms,
        "mean_round_without_ledger_ms": wall_no_ledger_s / rounds * 1000.0,
        "ledger_share_of_round": (median_round - no_ledger_ms) / median_round,
        "ledger_share_of_wall": (wall_s - wall_no_ledger_s) / wall_s,
        "setup_s": setup_s,
        "wall_s": wall_s,
        "feedback_rounds": int((rounds_table.iterations > 1).sum()),
        "pf_fallback_rounds": int((rounds_table.pf_method != "newton").sum()),
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / (f"bench-{network}.json" if network else "bench.json")).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_bench(result: dict) -> str:
    lines = [
        f"{result['scenario']} on {result['network']}: {result['n_prosumers']} prosumers, "
        f"{result['n_buses']} buses, {result['rounds']} rounds ({result['feedback_rounds']} with feedback)",
        f"  cosim median round       {result['median_round_ms']:8.2f} ms (mean {result['mean_round_ms']:.2f} ms)",
    ]
    for stage, ms in result["breakdown_median_ms"].items():
        lines.append(f"    {stage.removesuffix('_ms'):<22} {ms:8.2f} ms")
    lines.append(f"  ledger process (signing, sealing, writing; beside the rounds): "
                 f"{result['ledger_process_cpu_ms_per_round']:.2f} ms CPU per round")
    lines.append(f"  without signing, admission and ledger: median round {result['median_round_without_ledger_ms']:.2f} ms "
                 f"(mean {result['mean_round_without_ledger_ms']:.2f} ms); the ledger's share: "
                 f"{100 * result['ledger_share_of_round']:.1f} % of the median round, "
                 f"{100 * result['ledger_share_of_wall']:.1f} % of the wall time")
    lines += [
        f"  pandapower run_timeseries, its own Newton-Raphson: {result['pandapower_run_timeseries_ms_per_step']:7.2f} ms"
        f" per step (power flow only); ratio cosim/pandapower {result['ratio_round_to_pandapower_step']:.3f}",
        f"  pandapower run_timeseries with lightsim2grid:      "
        f"{result['pandapower_lightsim2grid_run_timeseries_ms_per_step']:7.2f} ms per step; ratio "
        f"{result['ratio_round_to_pandapower_lightsim2grid_step']:.3f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="cosim bench", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO))
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--network", help="run the scenario on this network file instead")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    result = run_bench(args.scenario, args.rounds, args.out, progress=not args.no_progress, network=args.network)
    print(format_bench(result))
    name = f"bench-{args.network}.json" if args.network else "bench.json"
    print(f"written: {Path(args.out) / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

