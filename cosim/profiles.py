"""SimBench's shipped 15-min annual profiles, sliced and resampled for a run.

Profiles are per-unit: a load profile times the load's reference power gives kW, a PV
profile times the installed kWp gives kW. They come from the simbench package's own CSVs
(no download) and are cached as parquet after the first parse.
"""

from __future__ import annotations

import datetime as dt

import numpy as np  # noqa: F401  (used in the docstring example)
import pandas as pd

from cosim.networks import cache_dir
from cosim.scenario import PROFILE_START

PROFILE_STEP = dt.timedelta(minutes=15)


def profile_tables(simbench_code: str) -> dict[str, pd.DataFrame]:
    """The grid's load (p and q) and PV profiles, indexed by 2016 time at 15 min.

    Returns
    -------
    dict with ``load_p`` and ``load_q`` (columns: load profile names such as ``H0-A``)
    and ``pv`` (columns: ``PV1``, ``PV3``, ...), all per-unit.
    """
    path = cache_dir() / f"{simbench_code}.profiles.parquet"
    if path.exists():
        table = pd.read_parquet(path)
    else:
        import simbench as sb

        raw = sb.get_simbench_net(simbench_code).profiles
        load = raw["load"].drop(columns="time")
        pv = raw["renewables"].drop(columns="time")
        pv = pv[[c for c in pv.columns if c.startswith("PV")]]
        table = pd.concat([load, pv.add_prefix("pv:")], axis=1).astype(float)
        table.index = pd.date_range(PROFILE_START, periods=len(table), freq=PROFILE_STEP)
        table.to_parquet(path)
    load_p = table[[c for c in table.columns if c.endswith("_pload")]]
    load_q = table[[c for c in table.columns if c.endswith("_qload")]]
    return {
        "load_p": load_p.rename(columns=lambda c: c.removesuffix("_pload")),
        "load_q": load_q.rename(columns=lambda c: c.removesuffix("_qload")),
        "pv": table[[c for c in table.columns if c.startswith("pv:")]].rename(
            columns=lambda c: c.removeprefix("pv:")
        ),
    }


def slice_profile(
    profile: pd.DataFrame, start: dt.datetime, duration: dt.timedelta, resolution: dt.timedelta
) -> pd.DataFrame:
    """Select [start, start + duration) and bring it to `resolution`.

    Coarser resolutions average the 15-min values (energy is preserved); finer ones
    hold each 15-min value (the profiles are 15-min means).

    >>> idx = pd.date_range("2016-01-01", periods=8, freq="15min")
    >>> p = pd.DataFrame({"a": np.arange(8.0)}, index=idx)
    >>> slice_profile(p, dt.datetime(2016, 1, 1), dt.timedelta(hours=1), dt.timedelta(minutes=30)).a.tolist()
    [0.5, 2.5]
    """
    end = start + duration
    if resolution >= PROFILE_STEP:
        part = profile.loc[start : end - PROFILE_STEP]
        out = part.resample(resolution, origin=start).mean()
    else:
        part = profile.loc[start - PROFILE_STEP : end]
        index = pd.date_range(start, end, freq=resolution, inclusive="left")
        out = part.reindex(part.index.union(index)).ffill().reindex(index)
    return out.iloc[: int(duration / resolution)]
