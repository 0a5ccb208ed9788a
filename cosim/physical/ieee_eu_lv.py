"""The IEEE European LV Test Feeder's published snapshots, with its loads as published.

The feeder (IEEE PES AMPS test-feeder working group, "European LV Test Feeder", 2015) has
906 LV buses and 55 single-phase constant-power loads at power factor 0.95 lagging behind
an 11/0.416 kV Dyn transformer. pandapower ships three snapshots of it
(`pandapower.networks.ieee_european_lv_asymmetric`), the published minutes 1, 566 (on
peak) and 1440, but with the reactive power of the loads on phases B and C 1000 times too
small (pandapower issue 2218, open). `snapshot` loads the net and sets every load's
reactive power from its active power and the published power factor, on every phase.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandapower as pp
import pandas as pd

from cosim.physical.grid.threephase import PHASES

#: pandapower's scenario of each published minute of the day [min].
PUBLISHED_MINUTES = {1: "off_peak_1", 566: "on_peak_566", 1440: "off_peak_1440"}
#: The published loads' power factor (the feeder's Loads.csv: PF 0.95, lagging) [-].
POWER_FACTOR = 0.95
#: Reactive per active power of each load, tan(acos 0.95) = 0.3287 [-].
Q_PER_P = math.tan(math.acos(POWER_FACTOR))
#: pandapower's name of the feeder (``source: pandapower``, ``code:`` of a network file).
PANDAPOWER_CODE = "ieee_european_lv_asymmetric"


def snapshot(minute: int) -> pp.pandapowerNet:
    """The feeder at a published minute, every load's Q = P tan(acos 0.95) on its phase."""
    import pandapower.networks as pn

    if minute not in PUBLISHED_MINUTES:
        raise ValueError(f"expected a published minute among {sorted(PUBLISHED_MINUTES)}, found {minute}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = getattr(pn, PANDAPOWER_CODE)(PUBLISHED_MINUTES[minute])
    correct_reactive_power(net)
    return net


def correct_reactive_power(net: pp.pandapowerNet) -> None:
    """Set each asymmetric load's reactive power to P tan(acos 0.95) on every phase (in place)."""
    for p in PHASES:
        net.asymmetric_load[f"q_{p}_mvar"] = net.asymmetric_load[f"p_{p}_mw"].astype(float) * Q_PER_P


def load_phases(net: pp.pandapowerNet) -> pd.Series:
    """The phase each asymmetric load is connected to (``a``, ``b``, ``c``; ``abc`` if it
    draws on more than one), indexed like ``net.asymmetric_load``."""
    p = np.abs(net.asymmetric_load[[f"p_{ph}_mw" for ph in PHASES]].to_numpy(float))
    on = p > 0
    names = np.where(on.sum(axis=1) == 1, np.array(PHASES)[p.argmax(axis=1)], "abc")
    return pd.Series(names, index=net.asymmetric_load.index, name="phase")
