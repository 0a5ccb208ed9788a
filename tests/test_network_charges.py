"""Network charges follow the physics, not the counterparty (issue 19; `cosim.sim.tariff`).

- The same scenario under five mechanisms that trade through very different counterparties
  (uniform P2P; a community manager priced by the supply-demand ratio, Liu et al. 2017,
  and by mid-market rate, Long et al. 2017; bill sharing; a fixed price) has identical
  physical injections, so every prosumer pays the same network charge in every round, to
  1e-9, under both charge methods.
- A loss-sensitivity charge steers: the ``price`` storage strategy sees the P2P price
  plus the charge per kWh drawn at its own bus, so the batteries' dispatch changes, and
  it changes where the charge says (batteries where drawing earns the largest credit
  charge more).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cosim.config.scenario import Scenario
from cosim.sim.round import VariantRunner
from cosim.sim.setup import prepare, variants_for
from cosim.sim.tariff import NetworkTariff

MECHANISMS = ("uniform", "community_sdr", "community_mmr", "bill_sharing", "fixed_price")
#: Same-physics tolerance on injections [kWh] and on charges [currency].
TOL = 1e-9

DAY = """
name: charges-by-physics
network: rural3
start: 2016-07-21 00:00
duration: 1d
seed: 42
prosumers: {pv_share: 0.6, pv_kwp: 6.0, battery_share: 0.3}
market: {bidding: zero-intelligence}
feedback: {charge_method: sensitivity, charge_rate_per_kwh: 0.30}
"""


def _runner(data: dict) -> VariantRunner:
    sc = Scenario.model_validate(data)
    return VariantRunner(prepare(sc), variants_for(sc)[0])  # the market variant, with feedback


def _day(mechanism: str, method: str) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Per round: injections and charges per prosumer, the energy the market operator
    traded with the grid, and what the trade table's charges add up to."""
    data = yaml.safe_load(DAY)
    data["market"]["mechanism"] = mechanism
    data["feedback"]["charge_method"] = method
    runner = _runner(data)
    injections, charges, via_operator, on_trades = [], [], 0.0, []
    for t in range(runner.sc.n_rounds):
        outcome = runner.run_round(t)[0]
        r = outcome.result
        injections.append(r.injection_kwh)
        charges.append(outcome.network_charges)
        via_operator += r.operator_export_kwh + r.operator_import_kwh
        on_trades.append(float(r.trades.energy_kwh @ r.trades.network_charge_per_kwh))
    return np.array(injections), np.array(charges), via_operator, np.array(on_trades)


@pytest.fixture(scope="module", params=["sensitivity", "flat"])
def days(request) -> dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    return {m: _day(m, request.param) for m in MECHANISMS}


def test_the_same_injections_pay_the_same_charge_under_every_mechanism(days):
    inj_ref, charges_ref, _, _ = days["uniform"]
    assert np.abs(charges_ref).sum() > 1.0, "the day should have charges worth comparing"
    assert np.unique(np.round(charges_ref[charges_ref != 0], 6)).size > 10, "charges should differ by prosumer"
    for mechanism in MECHANISMS[1:]:
        inj, charges, _, _ = days[mechanism]
        np.testing.assert_allclose(inj, inj_ref, rtol=0, atol=TOL, err_msg=f"{mechanism}: physics differ")
        np.testing.assert_allclose(charges, charges_ref, rtol=0, atol=TOL, err_msg=mechanism)
    # the community managers really did trade through a party at no bus
    assert days["community_sdr"][2] > 1.0 and days["community_mmr"][2] > 1.0


def test_the_trades_show_the_charges_of_their_two_ends(days):
    """Each trade's network_charge_per_kWh is what its seller's end pays per kWh injected
    plus what its buyer's end pays per kWh drawn (nothing at the grid or a manager), so
    the trade table adds up to the round's charges, whichever the counterparties."""
    for mechanism in MECHANISMS:
        _, charges, _, on_trades = days[mechanism]
        np.testing.assert_allclose(on_trades, charges.sum(axis=1), rtol=0, atol=1e-9, err_msg=mechanism)


def _price_run(method: str, rounds: int) -> tuple[np.ndarray, VariantRunner]:
    data = yaml.safe_load(DAY)
    data["prosumers"].update(pv_share=0.9, pv_kwp=10.0, battery_share=0.5)
    data["storage"] = {"strategy": "price", "price_threshold_per_kwh": 0.07}
    data["feedback"].update(charge_method=method, charge_rate_per_kwh=1.0 if method != "none" else 0.0)
    runner = _runner(data)
    battery = [runner.run_round(t)[0].physical["battery_kwh"] for t in range(rounds)]
    return np.array(battery), runner


def test_a_loss_sensitivity_charge_steers_price_responsive_batteries():
    rounds = 64  # midnight to 16:00
    plain, _ = _price_run("none", rounds)
    steered, runner = _price_run("sensitivity", rounds)
    assert not np.allclose(plain, steered), "the charge should change the batteries' dispatch"
    # where a kWh drawn earns a credit (exporting areas, lambda > 0), batteries charge more
    lam = runner.last_loss_factors[runner.setup.participant_pos]
    has_battery = runner.batteries.e_kwh > 0
    extra = (steered - plain).sum(axis=0)
    far = has_battery & (lam > np.quantile(lam[has_battery], 0.75))
    near = has_battery & (lam < np.quantile(lam[has_battery], 0.25))
    assert extra[far].mean() > extra[near].mean()
    assert extra[far].mean() > 0.0
    # and the price signal it saw is the P2P price plus its own bus's charge
    signal = runner.price_signal()
    tariff = NetworkTariff.of("sensitivity", 1.0, runner.last_loss_factors, runner.setup.participant_pos)
    np.testing.assert_allclose(signal - runner.last_price, -1.0 * tariff.loss_factor, rtol=1e-12)
