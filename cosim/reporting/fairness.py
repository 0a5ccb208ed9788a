"""Fairness of curtailment and load shedding among the prosumers of a run.

Who carries the curtailment (and, islanded, the shedding) is a question regulators and
DSOs ask of every curtailment rule (`cosim.sim.feedback.forced_reduction`). The figures here
are pure functions of the run's tables:

- **per-kWp curtailment** of PV owner i: ``c_i / P_i`` [kWh/kWp], its curtailed energy
  over the run divided by its PV capacity; over every PV owner (``P_i > 0``), curtailed or
  not, so that a rule that spares most owners shows as unequal;
- **shedding per kWh of load** of prosumer i: ``s_i / L_i`` [kWh/kWh], its shed energy over
  its load over the run; over every prosumer with load;
- **Jain's index** of those values ``J = (sum x)^2 / (n sum x^2)`` [-], from 1/n (one
  carries everything) to 1 (all equal) (Jain, Chiu and Hawe 1984);
- **Gini coefficient** ``G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))`` [-], from 0 (all
  equal) to 1 - 1/n (one carries everything) (Gini 1912; the mean-difference form, e.g.
  Sen 1973, ch. 2);
- **largest share**: the largest single prosumer's part of the energy [-] (of kWh, not of
  the normalised values), and who it is.

References
----------
R. Jain, D.-M. Chiu, W. R. Hawe, "A quantitative measure of fairness and discrimination
for resource allocation in shared computer systems", DEC Research Report TR-301, 1984.
C. Gini, "Variabilita e mutabilita", Studi Economico-Giuridici della R. Universita di
Cagliari 3 (2), 1912. A. Sen, "On Economic Inequality", Oxford, 1973.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "FAIRNESS_SETTLEMENT_COLUMNS",
    "FAIRNESS_PROSUMER_COLUMNS",
    "per_unit",
    "curtailment_per_kwp",
    "shedding_per_load",
    "jain_index",
    "gini",
    "largest_share",
    "fairness_figures",
    "fairness_summary",
]

#: Columns `fairness_summary` needs from settlement.parquet and from prosumers.parquet.
FAIRNESS_SETTLEMENT_COLUMNS = ("party", "curtailed_kwh", "shed_kwh", "load_kwh")
FAIRNESS_PROSUMER_COLUMNS = ("id", "pv_kwp")
#: Energy below which a prosumer counts as not curtailed / not shed [kWh].
ENERGY_TOL_KWH = 1e-9


def _values(x: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size and (not np.isfinite(a).all() or (a < 0).any()):
        raise ValueError(f"expected finite values >= 0, found {a[~np.isfinite(a) | (a < 0)][:3].tolist()}")
    return a


def jain_index(x: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Jain's fairness index ``(sum x)^2 / (n sum x^2)`` of n values >= 0 [-].

    1 when all values are equal, 1/n when one value carries everything, k/n when k
    values are equal and the rest zero (Jain, Chiu and Hawe 1984). NaN when there are no
    values or all are zero (nothing to share).

    Hand-worked: x = (1, 2, 3): (1 + 2 + 3)^2 / (3 (1 + 4 + 9)) = 36 / 42 = 0.857.

    >>> jain_index([1.0, 1.0, 1.0, 1.0]), jain_index([1.0, 0.0, 0.0, 0.0]), jain_index([2.0, 2.0, 0.0, 0.0])
    (1.0, 0.25, 0.5)
    >>> round(jain_index([1.0, 2.0, 3.0]), 6)
    0.857143
    """
    a = _values(x)
    sq = float(a @ a)
    if a.size == 0 or sq == 0.0:
        return float("nan")
    return float(a.sum() ** 2 / (a.size * sq))


def gini(x: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Gini coefficient ``sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))`` of n values >= 0 [-].

    0 when all values are equal, 1 - 1/n when one value carries everything (Gini 1912;
    the mean absolute difference over twice the mean). Computed from the sorted values as
    ``sum_i (2 i - n - 1) x_(i) / (n^2 mean(x))``, i = 1..n. NaN when there are no values
    or all are zero.

    Hand-worked: x = (1, 2, 3): the ordered pairs differ by 1, 2, 1 twice over, 8 in all;
    2 n^2 mean = 2 * 9 * 2 = 36; G = 8 / 36 = 0.222.

    >>> gini([1.0, 1.0, 1.0, 1.0]), gini([1.0, 0.0, 0.0, 0.0]), gini([2.0, 2.0, 0.0, 0.0])
    (0.0, 0.75, 0.5)
    >>> round(gini([1.0, 2.0, 3.0]), 6)
    0.222222
    """
    a = np.sort(_values(x))
    n = a.size
    total = float(a.sum())
    if n == 0 or total == 0.0:
        return float("nan")
    rank = np.arange(1, n + 1)
    return float(((2 * rank - n - 1) @ a) / (n * total))


def largest_share(energy_kwh: pd.Series) -> tuple[float, str | None]:
    """The largest single part of a total [-] and whose it is (the index label).

    (NaN, None) when the total is zero. Ties: the first label.

    >>> largest_share(pd.Series({"a": 10.0, "b": 30.0, "c": 0.0}))
    (0.75, 'b')
    """
    e = pd.Series(_values(energy_kwh), index=energy_kwh.index)
    total = float(e.sum())
    if e.empty or total == 0.0:
        return float("nan"), None
    who = e.idxmax()
    return float(e[who] / total), str(who)


def per_unit(energy_kwh: pd.Series, size: pd.Series) -> pd.Series:
    """``energy / size`` per prosumer, over the prosumers with ``size > 0`` [kWh per unit
    of size]; prosumers missing from ``energy_kwh`` count as 0 kWh.

    >>> per_unit(pd.Series({"a": 9.0}), pd.Series({"a": 9.0, "b": 4.5, "c": 0.0})).to_dict()
    {'a': 1.0, 'b': 0.0}
    """
    size = size[size > 0].astype(float)
    energy = energy_kwh.reindex(size.index, fill_value=0.0).astype(float)
    return energy / size


def curtailment_per_kwp(curtailed_kwh: pd.Series, pv_kwp: pd.Series) -> pd.Series:
    """Curtailed energy per kWp of PV, per PV owner [kWh/kWp] (`per_unit`)."""
    return per_unit(curtailed_kwh, pv_kwp).rename("curtailed_kwh_per_kwp")


def shedding_per_load(shed_kwh: pd.Series, load_kwh: pd.Series) -> pd.Series:
    """Shed energy per kWh of load, per prosumer with load [kWh/kWh] (`per_unit`)."""
    return per_unit(shed_kwh, load_kwh).rename("shed_kwh_per_kwh_load")


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def fairness_figures(energy_kwh: pd.Series, normalised: pd.Series) -> dict:
    """Fairness figures of one quantity: `energy_kwh` per prosumer [kWh] and the same
    normalised (`curtailment_per_kwp` or `shedding_per_load`) over its population.

    Keys: ``total_kwh`` [kWh], ``population`` (prosumers counted) and ``affected`` (those
    with energy > 0) [count], ``mean`` and ``max`` of the normalised values [their unit],
    ``jain_index`` and ``gini`` of the normalised values [-], ``largest_share`` of the
    energy [-] and ``largest_party``. Undefined figures (nothing to share) are None.
    """
    energy = energy_kwh.reindex(normalised.index, fill_value=0.0)
    share, who = largest_share(energy)
    return {
        "total_kwh": float(energy.sum()),
        "population": int(len(normalised)),
        "affected": int((energy > ENERGY_TOL_KWH).sum()),
        "mean": _clean(float(normalised.mean())) if len(normalised) else None,
        "max": _clean(float(normalised.max())) if len(normalised) else None,
        "jain_index": _clean(jain_index(normalised)),
        "gini": _clean(gini(normalised)),
        "largest_share": _clean(share),
        "largest_party": who,
    }


def _check_columns(table: pd.DataFrame, needed: Sequence[str], name: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: expected columns {', '.join(needed)}; missing {', '.join(missing)}")


def per_prosumer(settlement: pd.DataFrame, prosumers: pd.DataFrame) -> pd.DataFrame:
    """Per prosumer over the run: ``curtailed_kwh``, ``shed_kwh``, ``load_kwh`` [kWh],
    ``pv_kwp`` [kWp], ``curtailed_kwh_per_kwp`` [kWh/kWp] (NaN without PV) and
    ``shed_kwh_per_kwh_load`` [kWh/kWh] (NaN without load), indexed by prosumer id.
    Rows of other parties (grid, dso, market_operator) are left out."""
    _check_columns(settlement, FAIRNESS_SETTLEMENT_COLUMNS, "settlement")
    _check_columns(prosumers, FAIRNESS_PROSUMER_COLUMNS, "prosumers")
    ids = pd.Index(prosumers["id"].astype(str), name="id")
    rows = settlement[settlement["party"].astype(str).isin(ids)]
    totals = rows.groupby(rows["party"].astype(str))[["curtailed_kwh", "shed_kwh", "load_kwh"]].sum()
    out = totals.reindex(ids, fill_value=0.0).astype(float)
    out["pv_kwp"] = prosumers["pv_kwp"].to_numpy(float)
    out["curtailed_kwh_per_kwp"] = curtailment_per_kwp(out["curtailed_kwh"], out["pv_kwp"])
    out["shed_kwh_per_kwh_load"] = shedding_per_load(out["shed_kwh"], out["load_kwh"])
    return out


def fairness_summary(settlement: pd.DataFrame, prosumers: pd.DataFrame) -> dict:
    """Fairness of a run's curtailment and shedding, as a JSON-able dict.

    Parameters
    ----------
    settlement : the run's settlement.parquet rows (at least ``party``, ``curtailed_kwh``,
        ``shed_kwh``, ``load_kwh``; one row per round and party).
    prosumers : the run's prosumers.parquet (at least ``id``, ``pv_kwp``).

    Returns
    -------
    dict
        ``{"curtailment": {...}, "shedding": {...}}``, each as `fairness_figures`:
        curtailment normalised per kWp over the PV owners (``mean``/``max`` in kWh/kWp),
        shedding per kWh of load over the prosumers with load (``mean``/``max`` in
        kWh/kWh), plus ``unit`` (of mean and max) and ``population_kind``.

    >>> settlement = pd.DataFrame({"party": ["a", "b", "grid", "a", "b", "grid"],
    ...                            "curtailed_kwh": [3.0, 0.0, 0.0, 1.0, 2.0, 0.0],
    ...                            "shed_kwh": 0.0, "load_kwh": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]})
    >>> prosumers = pd.DataFrame({"id": ["a", "b"], "pv_kwp": [4.0, 2.0]})
    >>> c = fairness_summary(settlement, prosumers)["curtailment"]
    >>> c["total_kwh"], c["mean"], c["jain_index"], c["gini"], c["largest_share"], c["largest_party"]
    (6.0, 1.0, 1.0, 0.0, 0.6666666666666666, 'a')
    """
    table = per_prosumer(settlement, prosumers)
    curtail = fairness_figures(table["curtailed_kwh"], table["curtailed_kwh_per_kwp"].dropna())
    shed = fairness_figures(table["shed_kwh"], table["shed_kwh_per_kwh_load"].dropna())
    return {
        "curtailment": {**curtail, "unit": "kWh/kWp", "population_kind": "PV owners"},
        "shedding": {**shed, "unit": "kWh/kWh of load", "population_kind": "prosumers with load"},
    }
