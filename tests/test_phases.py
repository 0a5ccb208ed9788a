"""Phase allocation (issue 13): seeded, reproducible, the size threshold, the IEEE European
LV feeder's published phases kept, and the fleet's table (``prosumers.parquet``) carrying
the connections."""

from __future__ import annotations

import numpy as np
import pytest

from cosim.config.scenario import Scenario
from cosim.physical.fleet import build_fleet
from cosim.physical.networks import REPO_NETWORKS, build_net, load_network_spec
from cosim.physical.phases import PHASE_COLUMNS, SINGLE_PHASE_MAX_KVA, allocate_phases

N = 300


def sizes(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.uniform(1, 8, N), np.where(rng.random(N) < 0.7, rng.uniform(2, 10, N), 0.0), \
        np.where(rng.random(N) < 0.3, rng.uniform(3, 6, N), 0.0)


def test_single_phase_allocation_is_seeded_and_reproducible():
    load, pv, bat = sizes()
    a = allocate_phases(42, "single-phase", load, pv, bat, 3.7)
    b = allocate_phases(42, "single-phase", load, pv, bat, 3.7)
    c = allocate_phases(43, "single-phase", load, pv, bat, 3.7)
    assert a.equals(b)
    assert not a.phase.equals(c.phase)
    assert list(a.columns) == PHASE_COLUMNS
    counts = a.phase.value_counts()
    assert set(counts.index) == {"a", "b", "c"}
    assert counts.min() > N / 3 - 4 * np.sqrt(N * (1 / 3) * (2 / 3)), "phases drawn about uniformly"


@pytest.mark.parametrize("max_kva", [SINGLE_PHASE_MAX_KVA, 3.0, 7.5])
def test_threshold_decides_single_or_three_phase(max_kva):
    """A system up to the threshold is on its household's phase, one above it three-phase;
    a household without the system has no connection for it."""
    load, pv, bat = sizes(1)
    load[:3] = [max_kva, np.nextafter(max_kva, np.inf), max_kva / 2]
    t = allocate_phases(7, "single-phase", load, pv, bat, 11.0, max_kva=max_kva)
    for col, size in (("load_phase", load), ("pv_phase", pv), ("battery_phase", bat)):
        present = size > 0
        assert t[col][~present].isna().all()
        big = present & (size > max_kva)
        assert (t[col][big] == "abc").all()
        assert (t[col][present & ~big] == t.phase[present & ~big]).all()
    assert list(t.load_phase[:3]) == [t.phase[0], "abc", t.phase[2]]
    assert (t.ev_phase == ("abc" if 11.0 > max_kva else t.phase)).all()


def test_three_phase_mode_puts_everything_on_abc():
    load, pv, bat = sizes(2)
    t = allocate_phases(42, "three-phase", load, pv, bat, 3.7)
    assert (t.phase == "abc").all() and (t.load_phase == "abc").all() and (t.ev_phase == "abc").all()
    assert (t.pv_phase.dropna() == "abc").all() and (t.battery_phase.dropna() == "abc").all()


@pytest.mark.parametrize("mode", ["three-phase", "single-phase"])
def test_ieee_feeder_keeps_its_published_phases(mode):
    """The IEEE European LV feeder's households stay on their published phases (pandapower's
    copy of the feeder's Loads.csv); in single-phase mode their small PV joins that phase."""
    from cosim.physical import ieee_eu_lv

    spec = load_network_spec(REPO_NETWORKS / "ieee_eu_lv.yaml")
    net = build_net(spec)
    sc = Scenario.model_validate({"name": "t", "network": "ieee_eu_lv", "duration": "1h",
                                  "prosumers": {"phases": mode, "pv_share": 1.0, "pv_kwp": 4.0}})
    fleet = build_fleet(net, spec, sc)
    published = ieee_eu_lv.load_phases(ieee_eu_lv.snapshot(566)).tolist()
    assert fleet.table.load_phase.tolist() == published
    want_pv = published if mode == "single-phase" else ["abc"] * len(published)
    assert fleet.table.pv_phase.tolist() == want_pv


def test_fleet_records_phases_without_changing_other_draws():
    """The connections are columns of the fleet's table (written to prosumers.parquet); the
    phase draws use their own random stream, so PV, batteries and profiles stay as they were."""
    spec = load_network_spec(REPO_NETWORKS / "rural3.yaml")
    net = build_net(spec)
    base = {"name": "t", "network": "rural3", "duration": "1h", "prosumers": {"pv_kwp": 4.0}}
    three = build_fleet(net, spec, Scenario.model_validate(base))
    single = build_fleet(net, spec, Scenario.model_validate(
        {**base, "prosumers": {"pv_kwp": 4.0, "phases": "single-phase"}}))
    others = [c for c in three.table.columns if c not in PHASE_COLUMNS]
    assert three.table[others].equals(single.table[others])
    assert set(single.table.pv_phase.dropna()) == {"a", "b", "c"}
    assert (three.table.load_phase == "abc").all()
