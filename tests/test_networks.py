"""Every shipped network file builds a pandapower net whose loads are all prosumers and
whose power flow converges, grid-connected and islanded."""

from __future__ import annotations

import numpy as np
import pytest

from cosim.config.errors import InputError
from cosim.physical.grid.powerflow import PowerFlow
from cosim.physical.networks import (
    REPO_NETWORKS,
    build_net,
    grid_tables,
    load_network_spec,
    lv_busbar,
    set_islanded,
)

NETWORK_FILES = sorted(p.stem for p in REPO_NETWORKS.glob("*.yaml"))
EXPECTED = {"rural1": (15, 13), "ieee_eu_lv": (907, 55), "rural3": (129, 118), "semiurb4": (44, 41), "urban6": (59, 111), "cigre_lv": (44, 15), "feeder": (9, 7)}


def test_the_required_networks_are_shipped():
    assert set(EXPECTED) <= set(NETWORK_FILES)


@pytest.mark.parametrize("name", NETWORK_FILES)
@pytest.mark.parametrize("islanded", [False, True])
def test_network_builds_and_solves(name, islanded):
    spec = load_network_spec(REPO_NETWORKS / f"{name}.yaml")
    net = build_net(spec)
    if name in EXPECTED:
        assert (len(net.bus), len(net.load)) == EXPECTED[name]
    assert len(net.sgen) == 0, "the scenario's PV fleet replaces the net's own units"
    if islanded:
        set_islanded(net, lv_busbar(net))
    pf = PowerFlow(net)
    p_kw = np.zeros(len(pf.buses))
    load_pos = np.searchsorted(pf.buses, net.load.bus.to_numpy())
    np.add.at(p_kw, load_pos, net.load.p_mw.to_numpy() * 1000 * 0.5)
    state = pf.run(p_kw, np.zeros_like(p_kw))
    assert state.converged and state.method == "newton"
    assert np.nanmin(state.vm_pu) > 0.85
    buses, branches = grid_tables(net)
    assert buses.x.notna().all() and buses.y.notna().all()
    assert len(branches) == len(net.line) + len(net.trafo)


def test_bad_network_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsource: simbench\ncode: 1-LV-nowhere--0-sw\nkeep_sgen: true\n")
    with pytest.raises(InputError) as err:
        load_network_spec(path)
    assert "keep_sgen" in str(err.value) and str(path) in str(err.value)
    path.write_text("name: bad\nsource: simbench\ncode: 1-LV-nowhere--0-sw\n")
    with pytest.raises(InputError, match="code: expected a SimBench grid code"):
        load_network_spec(path)
