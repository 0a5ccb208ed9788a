"""The round's feedback logic, stage by stage (`cosim.sim.round.VariantRunner`), on the small
feeder with tight limits (v_max 1.01 pu, loading 6 %) so that most midday rounds violate:

- the fixed point makes at most ``feedback.max_iterations`` clearings;
- the clearing model never gets more cuts than its cut slots (the newest are kept);
- with no re-clearing (``max_iterations: 1``) forced curtailment removes the violations in
  at most ``MAX_FORCED_STEPS`` steps, each checked by a power flow.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cosim.config.scenario import Scenario
from cosim.sim import round as round_module
from cosim.sim.feedback import MAX_FORCED_STEPS
from cosim.sim.round import VariantRunner, newest_cuts
from cosim.sim.setup import prepare, variants_for

SCENARIO = """
name: round-stages
network: feeder
start: 2016-07-21 10:00
duration: 3h
seed: 3
prosumers: {pv_share: 0.9, pv_kwp: 10, battery_share: 0.3}
market: {bidding: zero-intelligence}
feedback: {v_max_pu: 1.01, max_loading_pct: 6, charge_method: sensitivity, charge_rate_per_kwh: 0.3}
"""


def _runner(**feedback) -> VariantRunner:
    data = yaml.safe_load(SCENARIO)
    data["feedback"].update(feedback)
    sc = Scenario.model_validate(data)
    return VariantRunner(prepare(sc), variants_for(sc)[0])


def _counting(runner: VariantRunner, name: str, obj) -> list:
    """Wrap obj.name to record its arguments; returns the record."""
    calls = []
    original = getattr(obj, name)

    def wrapped(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(obj, name, wrapped)
    return calls


def test_the_fixed_point_stops_at_max_iterations():
    runner = _runner(max_iterations=2)
    outcomes = [runner.run_round(t)[0] for t in range(12)]
    iterations = np.array([o.iterations for o in outcomes])
    assert iterations.max() == 2 and iterations.min() >= 1
    assert any(o.violations_initial > 0 for o in outcomes)
    assert all(not o.violations for o in outcomes)  # forced curtailment takes what remains


def test_the_clearing_never_gets_more_cuts_than_its_slots(monkeypatch):
    monkeypatch.setattr(round_module, "MAX_CUTS", 2)
    runner = _runner(max_iterations=8)
    calls = _counting(runner, "clear", runner.mechanism)
    for t in range(12):
        runner.run_round(t)
    n_cuts = [len(args[2]) for args in calls]  # clear(orders, ctx, cuts, charges)
    assert max(n_cuts) == 2  # the slots fill up and the oldest cuts are dropped
    c = round_module.NetworkCuts(np.eye(3), np.arange(3.0), ("a", "b", "c"))
    kept = newest_cuts(c, 2)
    assert kept.labels == ("b", "c") and np.array_equal(kept.rhs, [1.0, 2.0])


def test_forced_curtailment_without_re_clearing_takes_at_most_its_steps():
    runner = _runner(max_iterations=1)
    flows = _counting(runner, "run", runner.pf)
    forced = 0
    for t in range(12):
        before = len(flows)
        outcome = runner.run_round(t)[0]
        assert outcome.iterations == 1
        assert len(flows) - before <= 1 + MAX_FORCED_STEPS
        assert not outcome.violations
        if outcome.violations_initial:
            forced += 1
            assert outcome.result.curtailed_kwh.sum() > 0
    assert forced > 0


@pytest.mark.parametrize("rule", ["pro_rata", "equal_share"])
def test_sharing_rules_skip_the_cuts(rule):
    """Under a sharing curtailment rule the fixed point makes no cut (the market would meet
    it most sensitive first): one clearing, then forced curtailment."""
    runner = _runner(max_iterations=5, curtailment_rule=rule)
    calls = _counting(runner, "clear", runner.mechanism)
    for t in range(12):
        outcome = runner.run_round(t)[0]
        assert outcome.iterations == 1 and not outcome.violations
    assert all(len(args[2]) == 0 for args in calls)
