"""Profiles: SimBench's shipped 15-min data, sliced and resampled without losing energy."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from cosim.profiles import profile_tables, slice_profile


@pytest.fixture(scope="module")
def tables():
    return profile_tables("1-LV-rural3--0-sw")


def test_profiles_cover_the_leap_year(tables):
    for name in ("load_p", "load_q", "pv"):
        assert len(tables[name]) == 35136
    assert {"H0-A", "H0-B", "H0-C", "G1-C"} <= set(tables["load_p"].columns)
    assert {"PV1", "PV3", "PV4", "PV7"} == set(tables["pv"].columns)
    assert tables["pv"].min().min() >= 0


@pytest.mark.parametrize("minutes", [30, 60, 180])
def test_coarser_resolution_keeps_energy(tables, minutes):
    start, duration = dt.datetime(2016, 7, 21), dt.timedelta(days=2)
    fine = slice_profile(tables["pv"], start, duration, dt.timedelta(minutes=15))
    coarse = slice_profile(tables["pv"], start, duration, dt.timedelta(minutes=minutes))
    assert len(coarse) == 2 * 24 * 60 // minutes
    np.testing.assert_allclose(coarse.sum() * minutes, fine.sum() * 15, rtol=1e-12)


def test_finer_resolution_holds_each_quarter_hour(tables):
    start, duration = dt.datetime(2016, 3, 1, 10), dt.timedelta(hours=3)
    fine = slice_profile(tables["load_p"], start, duration, dt.timedelta(minutes=5))
    base = slice_profile(tables["load_p"], start, duration, dt.timedelta(minutes=15))
    assert len(fine) == 36
    np.testing.assert_allclose(fine.iloc[::3].to_numpy(), base.to_numpy())
    np.testing.assert_allclose(fine.iloc[1::3].to_numpy(), base.to_numpy())
