"""The market layer's HiGHS plumbing: one thread per process, attach a Pyomo model, solve.

Every market model is built once per run from Pyomo pieces and handed to a persistent
HiGHS instance (`attach_highs`); each round writes its data straight into that instance
and calls `solve_highs`. `define_network_cuts` is the network-cut block the pool, the
community and the bilateral models share.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import highspy
import numpy as np
import pyomo.environ as pyo
from pyomo.contrib.appsi.solvers import Highs

logging.getLogger("pyomo.contrib.appsi").setLevel(logging.ERROR)
logging.getLogger("pyomo.contrib.solver").setLevel(logging.ERROR)

#: Right-hand side of an unused network-cut slot, and the cap standing for "unlimited" [kWh].
INACTIVE_RHS = 1e9

_threads_sized = False


def one_highs_thread() -> None:
    """Size HiGHS's thread scheduler to one thread, once per process, before any solve.

    HiGHS keeps one thread scheduler per process, sized by the first solve; a later solve
    that asks for another size fails at once ("the scheduler has already been initialized
    to use 2 threads", model status Not Set). cosim solves many small LPs, where one
    thread is fastest, and its models ask for one; a model that sets nothing takes what
    the scheduler has. So the first solve of every process is this empty one-thread one.
    Call it before the first HiGHS instance of a process is built; later calls do nothing.
    """
    global _threads_sized
    if _threads_sized:
        return
    _threads_sized = True
    # HiGHS prints its banner once per process, on the C stdout: swallow it here, so that
    # `cosim clear` writes nothing but CSV on stdout
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.addVar(0.0, 1.0)
        h.run()
        ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def attach_highs(m: pyo.ConcreteModel, variables, constraints, **options) -> tuple[Highs, highspy.Highs, dict, dict]:
    """Hand a Pyomo model to a persistent HiGHS instance, once per run.

    Returns the appsi solver, its `highspy.Highs` (each round's data is written straight
    into it: appsi's parameter sync is too slow), and the HiGHS column (row) indices of each
    named variable (constraint), indexed or scalar, in index order. Output is off and HiGHS
    runs on one thread; `options` (e.g. ``presolve="off"``) are set on both.
    """
    one_highs_thread()
    options = {"threads": 1, "output_flag": False, **options}
    solver = Highs()
    solver.config.stream_solver = False
    solver.highs_options = dict(options)
    solver.set_instance(m)
    highs: highspy.Highs = solver._solver_model
    for key, value in options.items():
        highs.setOptionValue(key, value)
    vmap, cmap = solver._pyomo_var_to_solver_var_map, solver._pyomo_con_to_solver_con_map
    col = {name: np.array([vmap[id(v)] for v in getattr(m, name).values()], dtype=np.int32) for name in variables}
    row = {name: np.array([cmap[c] for c in getattr(m, name).values()], dtype=np.int32) for name in constraints}
    return solver, highs, col, row


def solve_highs(h: highspy.Highs, what: str = "clearing") -> str:
    """Solve `h`, retrying once from scratch; returns "ok" or why not. Never raises for
    solver trouble.

    The basis kept from the last round can stall HiGHS ("Unknown" after 0 iterations), so
    a solve that is not optimal is retried once cold before the round is called failed.
    The reason is ``f"{what} {model status}"``, or ``"solver error: ..."`` when highspy
    raised (recorded by the caller, never raised into the loop).
    """
    one_highs_thread()
    try:
        h.run()
        status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            h.clearSolver()
            h.run()
            status = h.getModelStatus()
    except (RuntimeError, ValueError) as err:
        return f"solver error: {err}"
    if status != highspy.HighsModelStatus.kOptimal:
        return f"{what} {h.modelStatusToString(status)}"
    return "ok"

