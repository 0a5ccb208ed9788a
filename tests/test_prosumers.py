"""Prosumer controllers: the self-consumption battery rule and the bidding strategies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.config.scenario import Scenario
from cosim.physical.fleet import Batteries, build_fleet, make_orders
from cosim.physical.networks import REPO_NETWORKS, build_net, load_network_spec


@settings(max_examples=80, deadline=None)
@given(
    net_kw=st.lists(st.floats(-20, 20), min_size=6, max_size=6),
    soc=st.lists(st.floats(0, 1), min_size=6, max_size=6),
    eta=st.floats(0.8, 1.0),
)
def test_battery_keeps_bounds_and_conserves_energy(net_kw, soc, eta):
    """State of charge stays in [0, 1]; stored energy changes by charge x eta - discharge / eta;
    the battery never charges into a deficit nor discharges into a surplus, nor beyond kW."""
    e = np.array([10.0, 10.0, 5.0, 0.0, 13.5, 2.0])
    p = np.array([5.0, 3.0, 2.5, 0.0, 5.0, 1.0])
    b = Batteries(e, p, eta, np.where(e > 0, np.array(soc), 0.0))
    before = b.soc * e
    net = np.array(net_kw)
    power = b.self_consume(net, 0.25)
    assert np.all((b.soc >= 0) & (b.soc <= 1))
    assert np.all(np.abs(power) <= p + 1e-12)
    assert np.all(power[net > 0] <= 1e-12) and np.all(power[net < 0] >= -1e-12)
    assert np.all(np.abs(power) <= np.abs(net) + 1e-12)
    charge, discharge = np.maximum(power, 0) * 0.25, np.maximum(-power, 0) * 0.25
    np.testing.assert_allclose(b.soc * e - before, charge * eta - discharge / eta, atol=1e-9)
    assert np.all(power[e == 0] == 0)


def test_zero_intelligence_prices_are_seeded_and_between_tariffs():
    net = np.array([1.0, -2.0, 3.0, -0.5])
    a = make_orders(list("abcd"), np.arange(4), net, 0.25, "zero-intelligence", 0.3, 0.08, np.random.default_rng(7))
    b = make_orders(list("abcd"), np.arange(4), net, 0.25, "zero-intelligence", 0.3, 0.08, np.random.default_rng(7))
    assert a.equals(b)
    assert a.price_per_kwh.between(0.08, 0.3).all()
    assert list(a.side) == ["buy", "sell", "buy", "sell"]
    np.testing.assert_allclose(a.quantity_kwh, np.abs(net) * 0.25)


@pytest.mark.parametrize("name", ["feeder", "rural3", "cigre_lv"])
def test_fleet_every_load_is_a_prosumer_with_real_profiles(name):
    spec = load_network_spec(REPO_NETWORKS / f"{name}.yaml")
    net = build_net(spec)
    sc = Scenario.model_validate({"name": "t", "network": name, "duration": "1d",
                                  "prosumers": {"pv_share": 0.5, "pv_kwp": 8, "battery_share": 0.25}})
    fleet = build_fleet(net, spec, sc)
    assert fleet.n == len(net.load)
    assert fleet.load_kw.shape == fleet.pv_kw.shape == (96, fleet.n)
    assert (fleet.table.pv_kwp > 0).sum() == round(0.5 * fleet.n)
    assert (fleet.table.battery_kwh > 0).sum() == round(0.25 * fleet.n)
    assert fleet.pv_kw.max() <= 8 * 0.7  # SimBench PV profiles peak below 0.7 of kWp
    assert fleet.pv_kw.max() > 0 and fleet.load_kw.min() >= 0
    assert np.all(fleet.pv_kw[:, fleet.table.pv_kwp.to_numpy() == 0] == 0)
