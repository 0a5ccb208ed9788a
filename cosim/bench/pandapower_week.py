"""pandapower's own time series of a scenario's feeder and period, as a process to time.

What a pandapower user writes for the same study, power flow only and one variant: the
SimBench grid the scenario's network file names, its shipped 15-min profiles in absolute
values (`simbench.get_absolute_values`), one ``ConstControl`` per element and quantity
(`simbench.apply_const_controllers`), an ``OutputWriter`` logging the bus voltages and
the line and transformer loadings, and `pandapower.timeseries.run_timeseries` over the
scenario's rounds, with pandapower's Newton-Raphson or with ``lightsim2grid=True``.

``python -m cosim.bench.pandapower_week SCENARIO.yaml [--lightsim2grid]``; `cosim.bench.week`
times it side by side with ``cosim run``.
"""

from __future__ import annotations

import argparse
import time
import warnings


def run(scenario_path: str, lightsim2grid: bool) -> dict:
    t0 = time.perf_counter()
    import pandapower as pp  # noqa: F401  (imported first, as a pandapower script does)
    import simbench as sb
    from pandapower.timeseries import OutputWriter, run_timeseries

    from cosim.config.load import load_scenario
    from cosim.config.network_file import find_network_file, load_network_spec
    from cosim.physical.profiles import profile_row

    scenario = load_scenario(scenario_path)
    spec = load_network_spec(find_network_file(scenario.network))
    if spec.source != "simbench":
        raise SystemExit(f"{scenario_path}: network {scenario.network!r} is not a SimBench grid")
    net = sb.get_simbench_net(spec.code)
    profiles = sb.get_absolute_values(net, profiles_instead_of_study_cases=True)
    first = profile_row(scenario.start)
    rows = range(first, first + scenario.n_rounds)
    sb.apply_const_controllers(net, profiles)
    ow = OutputWriter(net, time_steps=rows, output_path=None)
    ow.log_variable("res_bus", "vm_pu")
    ow.log_variable("res_line", "loading_percent")
    ow.log_variable("res_trafo", "loading_percent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_timeseries(net, time_steps=rows, verbose=False, numba=False, lightsim2grid=lightsim2grid)
    vm = ow.output["res_bus.vm_pu"]
    return {"steps": len(rows), "vm_max_pu": float(vm.max().max()), "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--lightsim2grid", action="store_true")
    args = parser.parse_args(argv)
    out = run(args.scenario, args.lightsim2grid)
    print(f"{out['steps']} steps, highest voltage {out['vm_max_pu']:.4f} pu, {out['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
