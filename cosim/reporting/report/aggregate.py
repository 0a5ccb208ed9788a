"""Time bases and aggregation: how long runs become readable series, and how the key
figures of two variants are compared.

Up to `MAX_POINTS` rounds are drawn round by round; longer runs are aggregated into
hourly, daily or weekly buckets: totals for energies, minimum/maximum envelopes for
voltages and loadings, a volume-weighted mean for prices.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cosim.reporting.report.numbers import as_float

__all__ = [
    "MAX_POINTS",
    "TimeBase",
    "time_base",
    "totals",
    "envelope",
    "price_series",
    "storage_series",
    "same_physics",
]

#: Longest time series [points] drawn round by round; longer runs are aggregated.
MAX_POINTS = 1500

#: Candidate aggregation buckets for long runs, finest first: (pandas frequency, unit in
#: labels).
_BUCKETS = (("1h", "hour"), ("1D", "day"), ("7D", "week"))

#: Physical key figures two variants must share to have "the same physics", with the
#: tolerance within which they count as equal (relative; absolute for voltages [pu]).
_PHYSICS_KPIS = (
    ("losses_kwh", "losses", 1e-6),
    ("peak_trafo_loading_pct", "peak transformer loading", 1e-6),
    ("max_line_loading_pct", "peak line loading", 1e-6),
    ("vm_max_pu", "highest voltage", 1e-9),
    ("vm_min_pu", "lowest voltage", 1e-9),
    ("curtailed_kwh", "curtailment", 1e-6),
    ("shed_kwh", "shedding", 1e-6),
    ("grid_import_kwh", "import", 1e-6),
    ("grid_export_kwh", "export", 1e-6),
)


@dataclass(frozen=True)
class TimeBase:
    """How time series are drawn: round by round (``freq`` None) or per bucket.

    ``freq`` is a pandas frequency (``"1h"``, ``"1D"``, ``"7D"``); ``unit`` names one
    point in labels (``"round"``, ``"hour"``, ``"day"``, ``"week"``).
    """

    freq: str | None
    unit: str


def time_base(time: pd.Series) -> TimeBase:
    """The time base of a run: round by round up to `MAX_POINTS` rounds, else the finest
    bucket that keeps the series at `MAX_POINTS` points or fewer (weekly at the most).

    Parameters
    ----------
    time : pandas.Series
        Start time of each round [datetime64].

    Returns
    -------
    TimeBase

    >>> time_base(pd.Series(pd.date_range("2016-01-01", periods=96, freq="15min")))
    TimeBase(freq=None, unit='round')
    """
    if len(time) <= MAX_POINTS:
        return TimeBase(None, "round")
    for freq, unit in _BUCKETS:
        if time.dt.floor(freq).nunique() <= MAX_POINTS:
            return TimeBase(freq, unit)
    return TimeBase(*_BUCKETS[-1])


def _bucket(rounds: pd.DataFrame, tb: TimeBase) -> pd.Series:
    return rounds["time"].dt.floor(tb.freq)


def totals(rounds: pd.DataFrame, cols: list[str], tb: TimeBase) -> pd.DataFrame:
    """Per-round energies, or their totals per bucket, indexed by time.

    Parameters
    ----------
    rounds : pandas.DataFrame
        One row per round with ``time`` and the energy columns ``cols`` [kWh per round].
    cols : list of str
        Energy columns to sum.
    tb : TimeBase
        Round by round or per bucket.

    Returns
    -------
    pandas.DataFrame
        ``cols`` [kWh per round or per bucket]; a bucket without any value is NaN.
    """
    if tb.freq is None:
        return rounds.set_index("time")[cols]
    return rounds.groupby(_bucket(rounds, tb))[cols].sum(min_count=1)


def envelope(
    rounds: pd.DataFrame, lo_col: str, hi_col: str, tb: TimeBase
) -> tuple[pd.Series, pd.Series]:
    """Lower and upper edge of a quantity over time.

    Parameters
    ----------
    rounds : pandas.DataFrame
        One row per round with ``time``, ``lo_col`` and ``hi_col`` (in any one unit,
        e.g. [pu] or [%]).
    lo_col, hi_col : str
        Columns of the lower and the upper edge (may be the same column).
    tb : TimeBase
        Round by round or per bucket.

    Returns
    -------
    (pandas.Series, pandas.Series)
        Per round ``lo_col`` and ``hi_col``; per bucket the minimum of ``lo_col`` and the
        maximum of ``hi_col``; in the unit of the columns, indexed by time.
    """
    if tb.freq is None:
        r = rounds.set_index("time")
        return r[lo_col], r[hi_col]
    g = rounds.groupby(_bucket(rounds, tb))
    return g[lo_col].min(), g[hi_col].max()


def price_series(rounds: pd.DataFrame, tb: TimeBase) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Clearing price of the rounds that cleared energy.

    Parameters
    ----------
    rounds : pandas.DataFrame
        One row per round with ``time``, ``price_per_kwh`` [currency/kWh] and
        ``cleared_kwh`` [kWh].
    tb : TimeBase
        Round by round or per bucket.

    Returns
    -------
    (pandas.Series, pandas.Series, pandas.Series)
        Mean, minimum and maximum price [currency/kWh], indexed by time: per round the
        price three times; per bucket the volume-weighted mean and the range of the
        round prices. NaN where nothing was cleared.
    """
    price = rounds["price_per_kwh"].where(rounds["cleared_kwh"].fillna(0) > 0)
    if tb.freq is None:
        s = pd.Series(price.to_numpy(), index=rounds["time"])
        return s, s, s
    frame = pd.DataFrame(
        {
            "value_x_kwh": (price * rounds["cleared_kwh"]).fillna(0.0),
            "kwh": rounds["cleared_kwh"].where(price.notna(), 0.0),
            "price": price,
        }
    )
    g = frame.groupby(_bucket(rounds, tb))
    sums = g[["value_x_kwh", "kwh"]].sum()
    mean = (sums["value_x_kwh"] / sums["kwh"]).where(sums["kwh"] > 0)
    return mean, g["price"].min(), g["price"].max()


def storage_series(
    storage: pd.DataFrame, tb: TimeBase, cols: list[str], how: str = "mean"
) -> pd.DataFrame:
    """Columns of the flexible assets per round, or aggregated per bucket.

    Parameters
    ----------
    storage : pandas.DataFrame
        One row per round with ``time`` (see `cosim.reporting.report.load.Run.storage`):
        powers [kW], states of charge [0..1], EVs plugged in [count].
    tb : TimeBase
        Round by round or per bucket.
    cols : list of str
        Columns wanted; those the run does not have are left out.
    how : str
        Aggregation per bucket: ``"mean"``, ``"min"`` or ``"max"``.

    Returns
    -------
    pandas.DataFrame
        The columns in their units, indexed by time.
    """
    cols = [c for c in cols if c in storage.columns]
    if tb.freq is None:
        return storage.set_index("time")[cols]
    return storage.groupby(_bucket(storage, tb))[cols].agg(how)


def same_physics(a: dict, b: dict) -> list[str]:
    """The physical key figures on which two variants' summaries differ.

    Parameters
    ----------
    a, b : dict
        Key figures of two variants (summary.json ``variants``): energies [kWh],
        loadings [%], voltages [pu]. Figures missing in either are not compared.

    Returns
    -------
    list of str
        Labels of the figures that differ beyond their tolerance (`_PHYSICS_KPIS`);
        empty when the physics is the same.

    >>> same_physics({"losses_kwh": 5.0, "vm_max_pu": 1.05}, {"losses_kwh": 5.0, "vm_max_pu": 1.05})
    []
    >>> same_physics({"losses_kwh": 5.0}, {"losses_kwh": 5.2})
    ['losses']
    """
    differ = []
    for key, label, tol in _PHYSICS_KPIS:
        x, y = as_float(a.get(key)), as_float(b.get(key))
        if x is None or y is None:
            continue
        scale = 1.0 if key.startswith("vm_") else max(abs(x), abs(y), 1.0)
        if abs(x - y) > tol * scale:
            differ.append(label)
    return differ
