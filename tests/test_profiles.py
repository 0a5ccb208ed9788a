"""Profiles: SimBench's shipped 15-min data, sliced and resampled without losing energy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cosim.physical.profiles import profile_tables, slice_profile


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


# -- SimBench's conventions: reactive power and the time axis -------------------------------------
Q_TOL_KVAR = 1e-9


@pytest.fixture(scope="module")
def simbench_rural3():
    """SimBench's own rural3 net and its absolute profiles (simbench.get_absolute_values)."""
    import simbench as sb

    net = sb.get_simbench_net("1-LV-rural3--0-sw")
    return net, sb.get_absolute_values(net, profiles_instead_of_study_cases=True)


def _fleet(start: dt.datetime, duration: dt.timedelta = dt.timedelta(days=1)):
    from cosim.config.scenario import Scenario
    from cosim.physical.fleet import build_fleet
    from cosim.physical.networks import build_net, load_network_spec

    spec = load_network_spec(Path(__file__).resolve().parent.parent / "networks" / "rural3.yaml")
    scenario = Scenario(name="q", network="rural3", start=start, duration=duration)
    return build_fleet(build_net(spec), spec, scenario)


def test_feeder_reactive_power_is_simbench_s(simbench_rural3):
    """The feeder's reactive (and active) load per round over a whole day equals SimBench's
    absolute profiles, ``*_qload`` x q_mvar (simbench.get_absolute_profiles_from_relative_profiles),
    to 1e-9 kvar: not ``*_qload`` x p_mw, which made the default week's Q 2.53 times too high."""
    net, absolute = simbench_rural3
    start = dt.datetime(2016, 7, 21)
    fleet = _fleet(start)
    row = int(np.flatnonzero(net.profiles["load"]["time"].to_numpy() == "21.07.2016 00:00")[0])
    order = fleet.table.load.to_numpy()
    q_kvar = absolute[("load", "q_mvar")].iloc[row : row + 96][order].to_numpy() * 1000.0
    p_kw = absolute[("load", "p_mw")].iloc[row : row + 96][order].to_numpy() * 1000.0
    assert np.abs(fleet.load_kvar.sum(axis=1) - q_kvar.sum(axis=1)).max() <= Q_TOL_KVAR
    assert np.abs(fleet.load_kvar - q_kvar).max() <= Q_TOL_KVAR
    assert np.abs(fleet.load_kw - p_kw).max() <= Q_TOL_KVAR
    assert fleet.load_kvar.sum() < 0.5 * fleet.load_kw.sum()  # power factor above 0.89 over the day


@pytest.mark.parametrize("label", ["21.07.2016 12:00", "27.03.2016 03:00", "30.10.2016 02:15", "15.01.2016 06:45"])
def test_start_selects_the_row_simbench_labels_with_it(simbench_rural3, label):
    """A scenario's start is local time as SimBench labels its rows (with daylight saving):
    the first round's load is the row so labelled (the first one in October's repeated hour)."""
    net, absolute = simbench_rural3
    start = dt.datetime.strptime(label, "%d.%m.%Y %H:%M")
    fleet = _fleet(start, dt.timedelta(hours=2))
    row = int(np.flatnonzero(net.profiles["load"]["time"].to_numpy() == label)[0])
    order = fleet.table.load.to_numpy()
    p_kw = absolute[("load", "p_mw")].iloc[row : row + 8][order].to_numpy() * 1000.0
    np.testing.assert_allclose(fleet.load_kw, p_kw, rtol=0, atol=1e-12)
    assert fleet.time[0] == pd.Timestamp(start)
    labels = pd.to_datetime(net.profiles["load"]["time"].iloc[row : row + 8], format="%d.%m.%Y %H:%M")
    assert list(fleet.time) == list(labels)


def test_time_labels_are_simbench_s(simbench_rural3):
    """cosim's label of every profile row is SimBench's own, jump and repeat included."""
    from cosim.physical.profiles import PROFILE_ROWS, row_labels

    net, _ = simbench_rural3
    simbench = pd.to_datetime(net.profiles["load"]["time"], format="%d.%m.%Y %H:%M")
    assert list(row_labels(0, PROFILE_ROWS)) == list(simbench)


#: Solar noon at SimBench's German sites (about 10 deg E: 40 min after 12:00 of the time zone's
#: 15 deg E meridian, give or take the equation of time, -6 to +14 min) [hour of local time].
SOLAR_NOON_CET_H, SOLAR_NOON_CEST_H = 12 + 20 / 60, 13 + 20 / 60
NOON_TOL_H = 0.75


@pytest.mark.parametrize("start,noon_h", [(dt.datetime(2016, 7, 18), SOLAR_NOON_CEST_H),
                                          (dt.datetime(2016, 1, 11), SOLAR_NOON_CET_H)])
def test_pv_peaks_at_solar_noon_in_local_time(start, noon_h):
    """Over a week, the mean day's PV peaks at solar noon in local time: about 13:20 in
    summer (daylight saving) and 12:20 in winter. With rows counted in fixed 15-min steps
    from 1 January (cosim before this fix), the summer peak fell at 12:00, 80 min early."""
    fleet = _fleet(start, dt.timedelta(days=7))
    pv = pd.Series(fleet.pv_kw.sum(axis=1), index=fleet.time)
    daily = pv.groupby(pv.index.hour + pv.index.minute / 60.0).mean()
    assert abs(float(daily.idxmax()) - noon_h) <= NOON_TOL_H


def test_start_in_the_hour_daylight_saving_skips_is_refused():
    from cosim.config.scenario import Scenario

    with pytest.raises(ValueError, match="does not exist in local time"):
        Scenario(name="x", network="feeder", start=dt.datetime(2016, 3, 27, 2, 30))
    with pytest.raises(ValueError, match="15-min grid"):
        Scenario(name="x", network="feeder", start=dt.datetime(2016, 3, 27, 1, 10))
