"""Variants in parallel: the comparison variants simulated in child processes beside the main one.

A run simulates up to four variants on the same profiles (`cosim.sim.setup.variants_for`).
They share nothing while they run: each has its own runner, mechanism, flexible assets and
random generator, and each starts the power flow from the same voltages (`Setup` right
after `prepare`). So the main variant runs in the run's own process (with the ledger's
process beside it), and the others run in `workers - 1` forked children, which share the
prepared network, fleet and profiles with the parent until either side writes to them.
The results are those of the same variants run one after another, bit for bit
(tests/test_parallel_variants.py).

Why fork, not a Dask worker: a forked child starts in milliseconds with everything
prepared, while a fresh worker process would import pandapower and Pyomo and prepare the
scenario again (about 4 s on this machine, a third of a whole week's run). Studies keep
Dask for their runs and simulate each run's variants one after another.

A child writes only into its variants' folders. A failure in a child is raised in the
parent when it collects the children (`SideVariants.wait`), with the child's traceback.
On an interrupt the parent terminates the children (`SideVariants.stop`); their
variants are not in the checkpoint, so ``--resume`` simulates them again.
"""

from __future__ import annotations

import gc
import signal
import traceback
from collections.abc import Callable
from pathlib import Path

from cosim.sim.setup import Setup, Variant
from cosim.virtual.ledger.process import fork_context
from cosim.virtual.ledger.workers import cpus


def default_workers(n_variants: int) -> int:
    """Processes for a run's variants: one per core this process may use, at most one per variant."""
    return max(1, min(cpus(), n_variants))


def units_of(setup: Setup, jobs: list[tuple[Variant, Path]]) -> list[list[tuple[Variant, Path]]]:
    """The jobs grouped as a child simulates them: the two no-P2P baselines of a
    grid-connected run together (`cosim.sim.baselines.PairedBaselines`), every other variant alone."""
    by_name = {v.name: (v, f) for v, f in jobs}
    # (three-phase runs simulate the baselines apart: the pairing carries only the balanced warm start)
    units, paired = [], (setup.scenario.mode == "grid-connected" and setup.pf3 is None
                         and {"baseline", "baseline_no_feedback"} <= set(by_name))
    for v, f in jobs:
        if paired and v.name == "baseline":
            units.append([(v, f), by_name["baseline_no_feedback"]])
        elif not (paired and v.name == "baseline_no_feedback"):
            units.append([(v, f)])
    return units


def _serve(conn, setup: Setup, pf_start: tuple, units: list[list[tuple[Variant, Path]]], simulate: Callable,
           position: int) -> None:
    """The child: simulate each unit in turn (`simulate(unit, position)`), then report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt does
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the run's handler: a kill ends the child
    try:
        for unit in units:
            setup.set_power_flow_state(pf_start)
            simulate(unit, position)
        conn.send(("ok", peak_rss_mb()))
    except BaseException:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far [MB] (Linux reports kB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


class SideVariantError(RuntimeError):
    """A variant simulated in a child process failed; the message holds its traceback."""


class SideVariants:
    """The comparison variants, simulated in `children` forked processes.

    `jobs` are (variant, folder) pairs, grouped into units (`units_of`); child k takes
    units k, k + children, ... in order and calls ``simulate(unit, position)`` for each
    (`cosim.sim.loop` simulates one variant, or the two baselines in one pass; `position`
    is the line of the child's progress bars).
    """

    def __init__(self, setup: Setup, pf_start: tuple, jobs: list[tuple[Variant, Path]], children: int,
                 simulate: Callable):
        ctx = fork_context()
        self._procs = []
        units = units_of(setup, jobs)
        children = max(1, min(children, len(units)))
        self.children = children
        gc.freeze()  # the children share the parent's pages: keep their collectors off them
        try:
            for k in range(children):
                mine = units[k::children]
                parent_end, child_end = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_serve, name=f"cosim-variants-{k + 1}", daemon=True,
                                   args=(child_end, setup, pf_start, mine, simulate, k + 1))
                proc.start()
                child_end.close()
                self._procs.append((proc, parent_end, [v.name for unit in mine for v, _ in unit]))
        finally:
            gc.unfreeze()

    def wait(self) -> None:
        """Wait for every child; raise `SideVariantError` if one failed."""
        errors = []
        self.peak_rss_mb = []
        for proc, conn, names in self._procs:
            try:
                status, detail = conn.recv()
            except EOFError:
                status, detail = "error", f"the process ended with exit code {proc.exitcode} without a result"
            proc.join()
            conn.close()
            if status != "ok":
                errors.append(f"variants {', '.join(names)}:\n{detail}")
            else:
                self.peak_rss_mb.append(float(detail))
        self._procs = []
        if errors:
            raise SideVariantError("a comparison variant failed in its process: " + "\n".join(errors))

    def stop(self) -> None:
        """Terminate the children that still run (an interrupt or a failure in the parent)."""
        for proc, conn, _ in self._procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5.0)
            conn.close()
        self._procs = []
