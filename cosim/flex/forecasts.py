"""Forecasts of the prosumers' net load before flexible assets, as the schedules and the
battery auction see them (``storage.forecast``: ``perfect`` or ``persistence``)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from cosim.config.scenario import PROFILE_END, PROFILE_START, Scenario
from cosim.physical.fleet import Fleet
from cosim.physical.profiles import profile_tables, slice_profile


def history_net_kw(scenario: Scenario, fleet: Fleet, profile_code: str) -> np.ndarray:
    """Net load (load - PV) of every prosumer in the 24 h before the run [rounds x prosumers].

    Cut from the same SimBench profiles as the fleet; a run that starts on 2016-01-01
    takes the last day of 2016 instead (the profiles cover 2016 only).
    """
    day = dt.timedelta(days=1)
    start = scenario.start - day
    if start < PROFILE_START:
        start = PROFILE_END - day
    tables = profile_tables(profile_code)
    cut = {name: slice_profile(df, start, day, scenario.resolution) for name, df in tables.items()}
    t = fleet.table
    load = cut["load_p"][t.profile.tolist()].to_numpy() * t.p_ref_kw.to_numpy() * scenario.prosumers.load_scale
    pv = cut["pv"][t.pv_profile.tolist()].to_numpy() * t.pv_kwp.to_numpy()
    return load - pv


def forecast_net_kw(scenario: Scenario, fleet: Fleet, n_ext: int, history: np.ndarray | None) -> np.ndarray:
    """The forecast of every prosumer's net load (before flexible assets) the schedules see
    [rounds x prosumers], for the run and one day beyond it.

    ``perfect``: the real net load. ``persistence``: the net load 24 h earlier (before the
    run: `history_net_kw`). Beyond the run's end both repeat the last day.
    """
    per_day = int(round(24.0 / scenario.dt_h))
    actual = fleet.load_kw - fleet.pv_kw
    n = len(actual)
    if history is None:
        history = actual[:per_day] if n >= per_day else np.resize(actual, (per_day, actual.shape[1]))
    series = np.vstack([history[-per_day:], actual])  # series[k] is round k - per_day
    while len(series) < per_day + n_ext:
        series = np.vstack([series, series[-per_day:]])
    if scenario.storage.forecast == "perfect":
        return series[per_day : per_day + n_ext]
    return series[:n_ext]
