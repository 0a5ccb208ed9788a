"""What batching a variant's power flows would save: lightsim2grid's `TimeSeriesCPP` against the round's own.

Takes the default scenario's feeder and period, the per-bus net load of its PV and loads
(no batteries, no market), and computes every round's AC power flow twice:

- as the round does, one `PowerFlow.run` a round (compiled Newton-Raphson warm-started
  from the last round, then voltages, branch loadings, slack power and losses);
- in one batch: lightsim2grid's `TimeSeriesCPP.compute_Vs` for every step in one compiled
  call, then `compute_flows` (branch currents only).

Prints the time per step of each and the largest voltage difference between the two.
``python -m cosim.bench.batched_pf [SCENARIO]``. Why cosim does not batch is in
docs/performance.md: in the default scenario no variant can.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from cosim.bench.timing import DEFAULT_SCENARIO


def run(scenario_path: str) -> dict:
    import pandapower as pp
    from lightsim2grid.gridmodel import init_from_pandapower
    from lightsim2grid.lightsim2grid_cpp import TimeSeriesCPP

    from cosim.config.load import load_scenario
    from cosim.sim.setup import prepare

    scenario = load_scenario(scenario_path)
    setup = prepare(scenario, scenario_path)
    pf, n, n_bus = setup.pf, scenario.n_rounds, len(setup.pf.buses)
    fleet, pos = setup.fleet, setup.participant_pos
    p = np.stack([np.bincount(pos, weights=fleet.load_kw[t] - fleet.pv_kw[t], minlength=n_bus) for t in range(n)])
    q = np.stack([np.bincount(pos, weights=fleet.load_kvar[t], minlength=n_bus) for t in range(n)])

    t0 = time.perf_counter()
    states = [pf.run(p[t], q[t]) for t in range(n)]
    per_round_ms = (time.perf_counter() - t0) / n * 1000.0

    net = pf.net  # one load per bus (`PowerFlow`)
    for table in (net.load, net.sgen):
        for col in ("min_p_mw", "max_p_mw", "min_q_mvar", "max_q_mvar"):
            if col in table:
                table[col] = table[col].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid = init_from_pandapower(net)
        pp.runpp(net, numba=False)
    v0 = (net.res_bus.vm_pu.to_numpy() * np.exp(1j * np.deg2rad(net.res_bus.va_degree.to_numpy()))).astype(complex)
    column = {b: i for i, b in enumerate(pf.buses)}
    cols = [column[b] for b in net.load.bus.to_numpy()]
    load_p = np.ascontiguousarray(p[:, cols] / 1000.0)
    load_q = np.ascontiguousarray(q[:, cols] / 1000.0)
    batch = TimeSeriesCPP(grid)
    t0 = time.perf_counter()
    status = batch.compute_Vs(np.zeros((n, len(grid.get_generators()))), np.zeros((n, len(net.sgen))), load_p, load_q,
                              v0, 10, 1e-8)
    batch.compute_flows()
    batched_ms = (time.perf_counter() - t0) / n * 1000.0
    if status != 1:
        raise RuntimeError(f"TimeSeriesCPP diverged after {batch.nb_solved()} steps")
    vm = np.abs(batch.get_voltages())[:, net.bus.index.get_indexer(pf.buses)]
    diff = float(np.nanmax(np.abs(vm - np.array([s.vm_pu for s in states]))))
    return {"steps": n, "per_round_ms": per_round_ms, "batched_ms": batched_ms, "max_vm_difference_pu": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO))
    args = parser.parse_args(argv)
    out = run(args.scenario)
    print(f"{out['steps']} power flows: one a round {out['per_round_ms']:.3f} ms each, batched "
          f"{out['batched_ms']:.3f} ms each; largest voltage difference {out['max_vm_difference_pu']:.1e} pu")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
