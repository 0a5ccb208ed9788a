"""Islanded operation under scarcity (scenarios/rural3-islanded-winter.yaml): a January
evening on rural3 with the transformer open and a grid-forming battery whose power and
energy cannot serve the evening peak and the night.

Checks: load is shed (the market's last resort at the value of lost load), the shedding
is recorded per prosumer and settled (nobody pays for energy not delivered, the bills of
all parties sum to zero), and the grid-forming unit never exceeds its active power, its
kVA rating or its state-of-charge bounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cosim.sim import loop

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "rural3-islanded-winter.yaml"
#: The feedback treats a slack within 1 W of its limit as kept (`cosim.sim.feedback.SLACK_TOL`);
#: over the rounds the unit spends at its lower bound that is at most a few Wh of 1 MWh.
P_TOL_KW, SOC_TOL, ENERGY_TOL_KWH, MONEY_TOL = 1e-3, 1e-5, 1e-6, 1e-9


@pytest.fixture(scope="module")
def winter(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("winter") / "out"
    return loop.run_scenario(SCENARIO, out=out, progress=False, report=False)


@pytest.fixture(scope="module")
def unit() -> dict:
    return yaml.safe_load(SCENARIO.read_text())["islanded"]


def test_load_is_shed_and_recorded_per_prosumer(winter):
    rounds = pd.read_parquet(winter / "rounds.parquet")
    st = pd.read_parquet(winter / "settlement.parquet")
    prosumers = st[st.bus >= 0]
    assert rounds.shed_kwh.sum() > 10.0, "the scenario must be scarce"
    per_round = prosumers.groupby("round").shed_kwh.sum()
    np.testing.assert_allclose(per_round.to_numpy(), rounds.set_index("round").shed_kwh.loc[per_round.index],
                               atol=ENERGY_TOL_KWH)
    assert (prosumers.groupby("party").shed_kwh.sum() > ENERGY_TOL_KWH).sum() >= 10
    assert (prosumers.shed_kwh <= prosumers.load_kwh + ENERGY_TOL_KWH).all()


def test_shedding_is_settled(winter, unit):
    """Shed energy is neither bought nor paid for: a prosumer's traded energy is its load
    minus PV, battery and what was shed; bills sum to zero each round; the summary values
    the shed energy at the value of lost load."""
    st = pd.read_parquet(winter / "settlement.parquet")
    p = st[st.bus >= 0]
    traded = p.bought_kwh + p.grid_import_kwh - p.sold_kwh - p.grid_export_kwh
    physical = p.load_kwh - p.pv_kwh + p.battery_kwh + p.curtailed_kwh - p.shed_kwh
    np.testing.assert_allclose(traded, physical, atol=ENERGY_TOL_KWH)
    assert st.groupby("round").bill.sum().abs().max() < MONEY_TOL
    summary = json.loads((winter / "summary.json").read_text())["variants"]["market"]
    assert summary["lost_load_value"] == pytest.approx(unit["voll_per_kwh"] * summary["shed_kwh"], rel=1e-12)


def test_grid_forming_unit_stays_within_its_ratings(winter, unit):
    for folder in (winter, winter / "baseline"):
        rounds = pd.read_parquet(folder / "rounds.parquet")
        assert rounds.pf_converged.all() and (rounds.status == "ok").all()
        assert rounds.gfu_p_kw.abs().max() <= unit["p_kw"] + P_TOL_KW
        assert rounds.gfu_s_kva.max() <= unit["s_kva"] + P_TOL_KW
        np.testing.assert_allclose(rounds.gfu_s_kva, np.hypot(rounds.gfu_p_kw, rounds.gfu_q_kvar), rtol=1e-12)
        assert rounds.gfu_soc.min() >= unit["soc_min"] - SOC_TOL
        assert rounds.gfu_soc.max() <= 1.0
    rounds = pd.read_parquet(winter / "rounds.parquet")
    # both limits bind: its power at the evening peak, its lower state of charge at the end
    assert rounds.gfu_p_kw.max() >= unit["p_kw"] * 0.95
    assert rounds.gfu_soc.min() <= unit["soc_min"] + 1e-3
