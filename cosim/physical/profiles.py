"""SimBench's shipped 15-min annual profiles, sliced and resampled for a run.

Profiles are per-unit. A load's active power is its ``p_mw`` times its ``*_pload``
profile, its reactive power its ``q_mvar`` times its ``*_qload`` profile (SimBench's own
convention, ``simbench.get_absolute_profiles_from_relative_profiles``); a PV profile
times the installed kWp gives kW. They come from the simbench package's own CSVs (no
download) and are cached as parquet after the first parse.

The time axis
-------------
SimBench labels its 35,136 rows (2016, a leap year, at 15 min) in German local time
with daylight saving: the labels jump from 01:45 to 03:00 on 27 March and repeat
02:00-02:45 on 30 October. cosim uses the same convention: a scenario's ``start`` and
the ``time`` of every round are local wall-clock times (Europe/Berlin) as SimBench labels
them, and ``start`` selects the row SimBench labels with that time (the first of the two
in the repeated October hour). A run covers consecutive rows, so its rounds are equally
spaced in physical time and their labels show the same jump and repeat.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from cosim.physical.networks import cache_dir

#: SimBench profiles cover the leap year 2016 at 15-min resolution.
PROFILE_STEP = dt.timedelta(minutes=15)
PROFILE_ROWS = 366 * 96
#: The time zone of SimBench's labels.
PROFILE_TZ = "Europe/Berlin"
_FIRST_ROW = pd.Timestamp("2016-01-01 00:00", tz=PROFILE_TZ)


def profile_row(time: dt.datetime, nonexistent: str = "raise") -> int:
    """The row of SimBench's profiles labelled with local time `time`.

    Raises ValueError for a time that is not a row label: not on the 15-min grid, outside
    2016, or in the hour skipped when daylight saving starts (unless `nonexistent` is
    ``"shift_forward"``, which takes the next label).

    >>> profile_row(dt.datetime(2016, 1, 1, 0, 15)), profile_row(dt.datetime(2016, 7, 21))
    (1, 19388)
    >>> profile_row(dt.datetime(2016, 10, 30, 3, 0)) - profile_row(dt.datetime(2016, 10, 30, 2, 0))  # 02:00-02:45 twice
    8
    """
    try:
        local = pd.Timestamp(time).tz_localize(PROFILE_TZ, ambiguous=True, nonexistent=nonexistent)
    except Exception as err:  # pytz / zoneinfo raise their own NonExistentTimeError
        raise ValueError(f"{time} does not exist in local time ({PROFILE_TZ}): the clocks skip it "
                         "when daylight saving starts") from err
    steps = (local - _FIRST_ROW) / PROFILE_STEP
    if steps != int(steps):
        raise ValueError(f"expected a time on the profiles' 15-min grid, found {time}")
    if not 0 <= steps < PROFILE_ROWS:
        raise ValueError(f"expected a time in 2016 (the SimBench profile year), found {time}")
    return int(steps)


def row_instants(first_row: int, n: int, step: dt.timedelta = PROFILE_STEP) -> pd.DatetimeIndex:
    """`n` instants `step` apart from row `first_row`, in local time with their UTC offset
    (unambiguous, also in October's repeated hour).

    >>> [t.isoformat() for t in row_instants(29096 - 4, 5, dt.timedelta(hours=1 / 4))][::4]
    ['2016-10-30T02:00:00+02:00', '2016-10-30T02:00:00+01:00']
    """
    instants = _FIRST_ROW + first_row * PROFILE_STEP + np.arange(n) * pd.Timedelta(step)
    return pd.DatetimeIndex(instants).tz_convert(PROFILE_TZ)


def row_labels(first_row: int, n: int, step: dt.timedelta = PROFILE_STEP) -> pd.DatetimeIndex:
    """Local wall-clock labels of `n` instants `step` apart from row `first_row`, as
    SimBench labels its rows (naive timestamps; daylight saving included).

    >>> row_labels(8263, 2).strftime("%H:%M").tolist()  # 27 March 2016: 01:45, then 03:00
    ['01:45', '03:00']
    """
    return row_instants(first_row, n, step).tz_localize(None)


def profile_tables(simbench_code: str) -> dict[str, pd.DataFrame]:
    """The grid's load (p and q) and PV profiles, one row per SimBench row.

    Returns
    -------
    dict with ``load_p`` and ``load_q`` (columns: load profile names such as ``H0-A``)
    and ``pv`` (columns: ``PV1``, ``PV3``, ...), all per-unit, indexed by row number
    (0 .. 35,135; see `profile_row`).
    """
    path = cache_dir() / f"{simbench_code}.profiles.rows.parquet"
    if path.exists():
        table = pd.read_parquet(path)
    else:
        import simbench as sb

        raw = sb.get_simbench_net(simbench_code).profiles
        load = raw["load"].drop(columns="time")
        pv = raw["renewables"].drop(columns="time")
        pv = pv[[c for c in pv.columns if c.startswith("PV")]]
        table = pd.concat([load, pv.add_prefix("pv:")], axis=1).astype(float)
        table.index = pd.RangeIndex(len(table), name="row")
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
    """Select [start, start + duration) of a table indexed by profile row, at `resolution`.

    `start` is a local time (`profile_row`); `duration` is elapsed time. Coarser
    resolutions average the 15-min values (energy is preserved); finer ones hold each
    15-min value (the profiles are 15-min means). The result is indexed by the local
    wall-clock time of each round's start (`row_labels`).

    >>> p = pd.DataFrame({"a": np.arange(8.0)})
    >>> slice_profile(p, dt.datetime(2016, 1, 1), dt.timedelta(hours=1), dt.timedelta(minutes=30)).a.tolist()
    [0.5, 2.5]
    """
    first = profile_row(start, nonexistent="shift_forward")
    n = int(duration / resolution)
    elapsed = np.arange(n) * resolution
    if resolution >= PROFILE_STEP:
        rows_per = resolution / PROFILE_STEP
        n_rows = int(np.ceil(n * rows_per))
        part = profile.iloc[first : first + n_rows].to_numpy()
        group = (np.arange(len(part)) // rows_per).astype(int)
        sums = np.zeros((n, part.shape[1]))
        np.add.at(sums, group, part)
        values = sums / np.bincount(group, minlength=n)[:, None]
    else:
        rows = first + np.array([e // PROFILE_STEP for e in elapsed], dtype=int)
        values = profile.to_numpy()[rows]
    index = row_labels(first, n, resolution)
    return pd.DataFrame(values, index=index, columns=profile.columns)
