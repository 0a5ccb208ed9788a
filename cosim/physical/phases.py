"""Which phase each household's load, PV system, battery and EV charger connects to.

A connection is ``a``, ``b``, ``c`` (single-phase, phase to neutral) or ``abc``
(three-phase). The scenario's ``prosumers.phases`` chooses for networks that carry no
phases (SimBench): ``three-phase``, everything on ``abc``; or ``single-phase``, each
household on a phase drawn at random with the scenario's seed, and each of its systems
on that phase unless its rating is above ``prosumers.single_phase_max_kva`` (default
4.6 kVA, the largest unbalance VDE-AR-N 4105 allows per connection), then three-phase.
A network's published phases (the IEEE European LV feeder's loads) are kept in either
mode; in ``single-phase`` mode the household's small systems join its published phase. A system's rating is its apparent reference power for a load (kVA), its
peak power for PV (kWp, the inverter taken at unity power factor), its power limit for a
battery and an EV charger (kW).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cosim.physical.grid.threephase import PHASES

#: Default size above which a system is three-phase [kVA] (VDE-AR-N 4105's 4.6 kVA).
SINGLE_PHASE_MAX_KVA = 4.6
#: Modes of `allocate_phases` (the scenario's ``prosumers.phases``).
MODES = ("three-phase", "single-phase")
#: The columns `allocate_phases` returns (recorded in ``prosumers.parquet``).
PHASE_COLUMNS = ["phase", "load_phase", "pv_phase", "battery_phase", "ev_phase"]
#: Offset of the phase draws' random stream from the scenario seed, so that phases never
#: change the draws of PV, batteries or bids.
PHASE_STREAM = 13


def allocate_phases(
    seed: int,
    mode: str,
    load_kva: np.ndarray,
    pv_kwp: np.ndarray,
    battery_kw: np.ndarray,
    ev_charger_kw: float,
    max_kva: float = SINGLE_PHASE_MAX_KVA,
    published: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """Connections of each prosumer's systems, one row per prosumer (in input order).

    Parameters
    ----------
    seed : the scenario's seed; the draws use their own stream (`PHASE_STREAM`).
    mode : ``three-phase`` or ``single-phase`` (see the module).
    load_kva : each household's load rating [kVA].
    pv_kwp, battery_kw : each household's PV peak [kWp] and battery power [kW]; 0 for none
        (the column is then empty).
    ev_charger_kw : the home charger's power limit [kW] (``ev_phase`` is the connection a
        charger of the household would have).
    max_kva : size above which a system is three-phase [kVA].
    published : a network's own phase per household (``a``, ``b``, ``c``), or None where
        it has none; the load keeps it in either mode.

    Returns
    -------
    Columns `PHASE_COLUMNS`: ``phase``, the household's phase (``abc`` in three-phase
    mode), and the connection of its load, PV, battery and EV charger.

    >>> allocate_phases(1, "single-phase", np.array([3.0, 9.0]), np.array([4.0, 0.0]),
    ...                 np.array([5.0, 0.0]), 11.0, published=["b", None])[["load_phase", "pv_phase",
    ...                 "battery_phase"]].values.tolist()[0]
    ['b', 'b', 'abc']
    """
    if mode not in MODES:
        raise ValueError(f"expected a phase mode among {MODES}, found {mode!r}")
    n = len(load_kva)
    rng = np.random.default_rng([seed, PHASE_STREAM])
    drawn = rng.choice(np.array(PHASES), size=n)
    home = drawn if mode == "single-phase" else np.full(n, "abc")
    given = np.array([p if p in PHASES else "" for p in (published or [""] * n)], dtype=object)
    if mode == "single-phase":  # a published household's systems go on its phase
        home = np.where(given != "", given, home)

    def connect(size: np.ndarray, present: np.ndarray) -> np.ndarray:
        on = np.where(np.asarray(size, float) > max_kva, "abc", home).astype(object)
        return np.where(present, on, None)

    ones = np.ones(n, bool)
    pv_kwp, battery_kw = np.asarray(pv_kwp, float), np.asarray(battery_kw, float)
    load = np.where(np.asarray(load_kva, float) > max_kva, "abc", home).astype(object)
    load = np.where(given != "", given, load)  # a published load keeps its phase whatever its size
    return pd.DataFrame({
        "phase": np.where(given != "", given, home).astype(object),
        "load_phase": load,
        "pv_phase": connect(pv_kwp, pv_kwp > 0),
        "battery_phase": connect(battery_kw, battery_kw > 0),
        "ev_phase": connect(np.full(n, float(ev_charger_kw)), ones),
    })


def phase_injections(splits: dict[str, np.ndarray], participant_pos: np.ndarray, load_kw: np.ndarray,
                     load_kvar: np.ndarray, pv_kw: np.ndarray, flex_kw: dict[str, np.ndarray], net_kw: np.ndarray,
                     shed_kw: np.ndarray, curtailed_kw: np.ndarray, bus_p_kw: np.ndarray,
                     bus_q_kvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bus, per-phase net load [buses x 3] [kW], [kvar] of a round's dispatch.

    Each prosumer's served load (and its shiftable loads) goes on its load's phases, its
    PV less curtailment on the PV's, its battery and EV charger on theirs; what its net
    load `net_kw` holds beyond these (e.g. a battery's discharge that was sold and then
    curtailed) on the load's phases. Each bus's phases then add up to `bus_p_kw`,
    `bus_q_kvar` (the balanced power flow's injections); what is left there (the market
    operator's battery at the busbar) is spread evenly over the phases.

    Parameters
    ----------
    splits : phase shares [prosumers x 3] of ``load``, ``pv``, ``battery``, ``ev``
        (`cosim.sim.setup.phase_splits`).
    participant_pos : each prosumer's bus position.
    load_kw, load_kvar, pv_kw : the profiles' load and PV of each prosumer [kW], [kvar].
    flex_kw : ``battery``, ``ev``, ``shiftable`` power of each prosumer, positive when
        consuming [kW] (`cosim.flex.assets.FlexibleAssets.last_components_kw`).
    net_kw : each prosumer's net load after the clearing (load convention) [kW].
    shed_kw, curtailed_kw : each prosumer's shed load and curtailed generation [kW].
    bus_p_kw, bus_q_kvar : the per-bus net load [kW], [kvar].

    >>> one = {k: np.array([[1.0, 0.0, 0.0]]) for k in ("load", "battery", "ev")}
    >>> p, q = phase_injections({**one, "pv": np.array([[0.0, 1.0, 0.0]])}, np.array([1]), np.array([2.0]),
    ...     np.array([0.5]), np.array([5.0]), {k: np.zeros(1) for k in ("battery", "ev", "shiftable")},
    ...     np.array([-3.0]), np.zeros(1), np.zeros(1), np.array([0.0, -3.0]), np.array([0.0, 0.5]))
    >>> p.tolist(), q[1].tolist()
    ([[0.0, 0.0, 0.0], [2.0, -5.0, 0.0]], [0.5, 0.0, 0.0])
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        served = np.where(load_kw > 0, np.clip(1.0 - shed_kw / load_kw, 0.0, 1.0), 1.0)
    pv_left = np.clip(pv_kw - curtailed_kw, 0.0, None)
    parts = ((load_kw * served + flex_kw["shiftable"])[:, None] * splits["load"] - pv_left[:, None] * splits["pv"]
             + flex_kw["battery"][:, None] * splits["battery"] + flex_kw["ev"][:, None] * splits["ev"])
    parts += (net_kw - parts.sum(axis=1))[:, None] * splits["load"]
    q_parts = (load_kvar * served)[:, None] * splits["load"]
    p3, q3 = np.zeros((len(bus_p_kw), 3)), np.zeros((len(bus_p_kw), 3))
    np.add.at(p3, participant_pos, parts)
    np.add.at(q3, participant_pos, q_parts)
    p3 += (bus_p_kw - p3.sum(axis=1))[:, None] / 3.0
    q3 += (bus_q_kvar - q3.sum(axis=1))[:, None] / 3.0
    return p3, q3
