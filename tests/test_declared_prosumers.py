"""Declared prosumers (``prosumers.declared``): a household's PV and battery as declared
replace those the shares drew, and the scenario names only buses with a household."""

from __future__ import annotations

import pytest

from cosim.config.errors import InputError
from cosim.config.load import load_scenario
from cosim.config.network_file import find_network_file
from cosim.config.scenario import Scenario
from cosim.physical.fleet import build_fleet
from cosim.physical.networks import build_net, load_network_spec


def _scenario(tmp_path, declared: str):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nnetwork: feeder\nstart: 2016-06-14 11:00\nduration: 1h\n"
                    f"prosumers:\n  pv_share: 1.0\n  battery_share: 1.0\n  declared:\n{declared}")
    return path


def test_declared_assets_replace_the_drawn_ones(tmp_path):
    path = _scenario(tmp_path, "    - {bus: 2, pv_kwp: 3.5}\n    - {bus: 5, battery_kwh: 6, battery_kw: 2}\n")
    scenario = load_scenario(path)
    spec = load_network_spec(find_network_file("feeder"))
    table = build_fleet(build_net(spec), spec, scenario).table.set_index("bus")
    assert table.loc[2, ["pv_kwp", "battery_kwh", "battery_kw"]].tolist() == [3.5, 0.0, 0.0]
    assert table.loc[5, ["pv_kwp", "battery_kwh", "battery_kw"]].tolist() == [0.0, 6.0, 2.0]
    assert table.loc[3, ["pv_kwp", "battery_kwh", "battery_kw"]].tolist() == [8.0, 10.0, 5.0]  # drawn


@pytest.mark.parametrize("declared, message", [
    ("    - {bus: 99, pv_kwp: 1}\n", "prosumers.declared: expected buses with a household"),
    ("    - {bus: 2, battery_kwh: 5}\n", "expected battery_kwh and battery_kw both > 0"),
    ("    - {bus: 2}\n    - {bus: 2}\n", "found buses [2] more than once"),
    ("    - {bus: 2, pv_kwp: -1}\n", "prosumers.declared.0.pv_kwp"),
])
def test_bad_declarations_name_the_field(tmp_path, declared, message):
    with pytest.raises(InputError) as err:
        load_scenario(_scenario(tmp_path, declared))
    assert message in err.value.format()


def test_no_declaration_is_the_default():
    assert Scenario.model_validate({"name": "x", "network": "feeder"}).prosumers.declared == []


def test_a_declared_ev_is_charged_in_the_run(tmp_path):
    """A household that declared an EV gets one (storage.ev's car and charger, seeded nightly
    sessions), with no EV share drawn, and the run's asset table has its sessions."""
    from cosim.flex.assets import build_assets

    path = tmp_path / "ev.yaml"
    path.write_text("name: s\nnetwork: feeder\nstart: 2016-06-14 00:00\nduration: 1d\n"
                    "prosumers:\n  declared:\n    - {bus: 5, ev: true}\n    - {bus: 2, pv_kwp: 3}\n")
    scenario = load_scenario(path)
    assert scenario.storage.ev.share == 0.0
    spec = load_network_spec(find_network_file("feeder"))
    fleet = build_fleet(build_net(spec), spec, scenario)
    evs = build_assets(scenario, fleet).evs
    owner_bus = fleet.table.bus.to_numpy()[evs.table.owner]
    assert owner_bus.tolist() == [5]
    assert len(evs.table.sessions) >= 1 and (evs.table.sessions.id == fleet.ids[evs.table.owner[0]]).all()
    # without the declaration, no EV at all
    path.write_text(path.read_text().replace("ev: true", "pv_kwp: 1"))
    assert build_assets(load_scenario(path), fleet).evs is None
