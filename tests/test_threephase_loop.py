"""The round loop in three phases (issue 13, ``physics: three-phase``): per-phase results
that a fresh three-phase power flow reproduces, the unbalance limit turned into cuts and
met after feedback, energy balance and zero-sum bills, a balanced fleet in three phases
equal to the balanced run, and the scenario fields' input errors.

References: the three-phase power flow is pandapower's ``runpp_3ph`` model (validated
against the IEEE European LV Test Feeder in tests/test_threephase.py); the voltage
unbalance factor |V2| / |V1| and its 2 % limit are EN 50160's; the invariants (bus
balance, zero-sum settlement) are the ones tests/test_end_to_end.py checks for the
balanced loop.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import interrupt_round
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.cli import EXIT_BAD_INPUT, main
from cosim.physical.grid.threephase import PHASES

#: A short three-phase run: the noon hours of the default week's first day, on rural3, with
#: single-phase 9 kWp PV and a 1 % unbalance limit, so that the unbalance is violated
#: without feedback and must be met with it.
SCENARIO = {
    "name": "t3",
    "network": "rural3",
    "start": "2016-07-21 10:00",
    "duration": "3h",
    "resolution": "15min",
    "seed": 42,
    "physics": "three-phase",
    "prosumers": {"pv_share": 0.85, "pv_kwp": 9.0, "battery_share": 0.3, "battery_kwh": 10.0, "battery_kw": 5.0,
                  "phases": "single-phase", "single_phase_max_kva": 10.0},
    "feedback": {"max_vuf_pct": 1.0, "charge_method": "sensitivity", "charge_rate_per_kwh": 0.3},
    "storage": {"strategy": "price"},
    "variants": ["market", "market_no_feedback"],
}
#: A fresh prepared three-phase solve of the recorded injections against the recorded
#: voltages: both solve the same equations to 1e-11 pu [pu].
FRESH_TOL_PU = 1e-6
#: pandapower's runpp_3ph stops at 3e-8 MVA of positive-sequence mismatch (about 1e-6 pu on
#: rural3) [pu].
RUNPP_3PH_TOL_PU = 1e-5
#: Energy balance and zero-sum bills [kWh], [currency].
BALANCE_TOL = 1e-6
#: Equality of a balanced fleet's three-phase voltages with the balanced run's [pu].
BALANCED_TOL_PU = 1e-6


def write(tmp_path: Path, data: dict, name: str = "t3.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> Path:
    from cosim.sim.loop import run_scenario

    tmp = tmp_path_factory.mktemp("three-phase")
    return run_scenario(write(tmp, SCENARIO), tmp / "out", progress=False, report=False)


def test_unbalance_limit_produces_cuts_and_is_met_after_feedback(run3):
    """Without feedback some rounds exceed the 1 % unbalance limit; with feedback the
    violations become linear cuts (a second clearing; attribution rows of kind ``vuf``)
    and every round ends within every per-phase limit and the unbalance limit."""
    free = pd.read_parquet(run3 / "no_feedback" / "rounds.parquet")
    assert (free.vuf_max_pct > 1.0).sum() >= 3, "the limit must bind for the test to mean anything"
    rounds = pd.read_parquet(run3 / "rounds.parquet")
    attribution = pd.read_parquet(run3 / "attribution.parquet")
    assert "vuf" in set(attribution.kind)
    vuf_rounds = attribution[attribution.kind == "vuf"]["round"].unique()
    assert (rounds.set_index("round").loc[vuf_rounds, "iterations"] >= 2).all(), "cuts mean re-clearing"
    assert (rounds.violations == 0).all()
    assert (rounds.vuf_max_pct <= 1.0 + 1e-6).all()
    assert (rounds.vm_max_pu <= 1.10 + 1e-6).all() and (rounds.max_trafo_loading_pct <= 100.0 + 1e-4).all()
    # a cut changes injections only by curtailing (or shedding): the rounds it acted in curtail
    assert (rounds.set_index("round").loc[vuf_rounds, "curtailed_kwh"] > 0).all()
    assert (free.set_index("round").loc[vuf_rounds, "curtailed_kwh"] == 0).all()


def test_per_phase_columns_reproduced_by_a_fresh_three_phase_power_flow(run3):
    """buses.parquet's per-phase injections, solved again by a fresh prepared three-phase
    power flow and by pandapower's runpp_3ph, give the recorded per-phase voltages and
    unbalance; the phases add up to the bus totals; the round's extremes and the branch
    loadings are the per-phase ones."""
    from cosim.physical.grid.threephase import add_zero_sequence_data, run_three_phase
    from cosim.physical.grid.threephase_flow import ThreePhasePowerFlow
    from cosim.physical.networks import build_net, find_network_file, load_network_spec

    buses = pd.read_parquet(run3 / "buses.parquet")
    branches = pd.read_parquet(run3 / "branches.parquet")
    rounds = pd.read_parquet(run3 / "rounds.parquet").set_index("round")
    for cols, total in ((["p_a_kw", "p_b_kw", "p_c_kw"], "p_kw"), (["q_a_kvar", "q_b_kvar", "q_c_kvar"], "q_kvar")):
        np.testing.assert_allclose(buses[cols].sum(axis=1), buses[total], rtol=0, atol=1e-9)
    net = build_net(load_network_spec(find_network_file("rural3", None)))
    flow = ThreePhasePowerFlow(net)
    worst = int(rounds.vuf_max_pct.idxmax())
    for t in (0, worst):
        b = buses[buses["round"] == t].set_index("bus").loc[flow.buses]
        p = b[[f"p_{ph}_kw" for ph in PHASES]].to_numpy()
        q = b[[f"q_{ph}_kvar" for ph in PHASES]].to_numpy()
        st = flow.run(p, q)
        vm = b[[f"vm_{ph}_pu" for ph in PHASES]].to_numpy()
        assert float(np.abs(st.vm_pu - vm).max()) < FRESH_TOL_PU
        np.testing.assert_allclose(st.vuf_pct, b.vuf_pct, rtol=0, atol=1e-6)
        lines = branches[(branches["round"] == t) & (branches.kind == "line")].set_index("branch").loc[flow.lines]
        np.testing.assert_allclose(st.line_i_ka, lines[[f"i_{ph}_ka" for ph in PHASES]], rtol=0, atol=1e-9)
        np.testing.assert_allclose(st.line_in_ka, lines.i_n_ka, rtol=0, atol=1e-9)
        np.testing.assert_allclose(lines.loading_pct, lines[[f"loading_{ph}_pct" for ph in PHASES]].max(axis=1))
        lv = net.bus.vn_kv.loc[flow.buses].to_numpy() < 1.0
        assert rounds.loc[t, "vm_min_pu"] == pytest.approx(vm[lv].min(), abs=1e-12)
        assert rounds.loc[t, "vm_max_pu"] == pytest.approx(vm[lv].max(), abs=1e-12)
        assert rounds.loc[t, "vuf_max_pct"] == pytest.approx(b.vuf_pct.to_numpy()[lv].max(), abs=1e-12)
        # pandapower's own three-phase power flow of the same injections
        three = copy.deepcopy(net)
        add_zero_sequence_data(three)
        for table in ("load", "sgen"):
            three[table] = three[table].iloc[0:0]
        import pandapower as pp

        for bus, row in b.iterrows():
            if np.any(row[[f"p_{ph}_kw" for ph in PHASES]].to_numpy() != 0) or np.any(
                    row[[f"q_{ph}_kvar" for ph in PHASES]].to_numpy() != 0):
                pp.create_asymmetric_load(three, int(bus), **{f"p_{ph}_mw": row[f"p_{ph}_kw"] / 1000.0 for ph in PHASES},
                                          **{f"q_{ph}_mvar": row[f"q_{ph}_kvar"] / 1000.0 for ph in PHASES})
        ref = run_three_phase(three).loc[flow.buses]
        assert float(np.abs(ref[[f"vm_{ph}_pu" for ph in PHASES]].to_numpy() - vm).max()) < RUNPP_3PH_TOL_PU


@pytest.mark.parametrize("variant", ["", "no_feedback"])
def test_energy_balance_and_zero_sum_bills_in_three_phases(run3, variant):
    """Every round: the bills of all parties sum to zero; the source supplies the feeder's
    net load plus the losses of the three-phase power flow (grid import - export = net
    load of all buses and phases + losses)."""
    folder = run3 / variant if variant else run3
    st = pd.read_parquet(folder / "settlement.parquet")
    assert float(st.groupby("round").bill.sum().abs().max()) < BALANCE_TOL
    rounds = pd.read_parquet(folder / "rounds.parquet").set_index("round")
    buses = pd.read_parquet(folder / "buses.parquet")
    net_load_kwh = buses.groupby("round").p_kw.sum() * 0.25
    np.testing.assert_allclose(rounds.slack_p_kw * 0.25, net_load_kwh + rounds.losses_kwh, rtol=0, atol=BALANCE_TOL)
    assert (rounds.losses_kwh > 0).all()


def test_balanced_fleet_in_three_phases_equals_the_balanced_run(tmp_path):
    """Every load, PV system and battery on a, b and c (``prosumers.phases: three-phase``):
    the three-phase run's voltages on every phase equal the balanced run's to 1e-6 pu,
    with no unbalance, and the market's outcome is the same."""
    from cosim.sim.loop import run_scenario

    base = {**SCENARIO, "duration": "1h", "variants": ["market_no_feedback"],
            "prosumers": {**SCENARIO["prosumers"], "phases": "three-phase"}, "feedback": {}}
    three = run_scenario(write(tmp_path, base, "a.yaml"), tmp_path / "three", progress=False, report=False)
    bal = run_scenario(write(tmp_path, {**base, "physics": "balanced"}, "b.yaml"), tmp_path / "bal", progress=False,
                       report=False)
    b3 = pd.read_parquet(three / "no_feedback" / "buses.parquet")
    b1 = pd.read_parquet(bal / "no_feedback" / "buses.parquet")
    assert "vm_a_pu" not in b1.columns, "a balanced run's files keep their columns"
    for ph in PHASES:
        np.testing.assert_allclose(b3[f"vm_{ph}_pu"], b1.vm_pu, rtol=0, atol=BALANCED_TOL_PU)
    assert float(b3.vuf_pct.max()) < 1e-6
    assert float(np.ptp(b1.vm_pu)) > 1e-2, "the PV moves the voltages"
    r3 = pd.read_parquet(three / "no_feedback" / "rounds.parquet")
    r1 = pd.read_parquet(bal / "no_feedback" / "rounds.parquet")
    np.testing.assert_allclose(r3.cleared_kwh, r1.cleared_kwh, rtol=0, atol=1e-9)
    np.testing.assert_allclose(r3.losses_kwh, r1.losses_kwh, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("change, words", [
    ({"physics": "threephase"}, ["physics", "'balanced' or 'three-phase'", "'threephase'"]),
    ({"feedback": {"max_vuf_pct": -1}}, ["feedback.max_vuf_pct", "greater than 0", "-1"]),
    ({"mode": "islanded"}, ["grid-connected", "three-phase", "islanded"]),
])
def test_scenario_field_errors_exit_2(tmp_path, capsys, change, words):
    """A bad ``physics`` or ``feedback.max_vuf_pct``, or three phases islanded: exit status 2,
    one message with the file, the field, what was expected and what was found."""
    path = write(tmp_path, {**SCENARIO, **change}, "bad.yaml")
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert str(path) in err and "expected" in err and "found" in err
    for w in words:
        assert w in err
    assert "Traceback" not in err


def test_branch_currents_and_source_power_equal_runpp_3ph():
    """The prepared power flow's phase and neutral currents, phase loadings and source power
    on the on-peak IEEE European LV feeder equal ``runpp_3ph``'s (res_line_3ph,
    res_trafo_3ph, res_ext_grid_3ph) within runpp_3ph's own tolerance."""
    from test_threephase import phase_injections

    from cosim.physical import ieee_eu_lv
    from cosim.physical.grid.threephase import add_zero_sequence_data, run_three_phase
    from cosim.physical.grid.threephase_flow import ThreePhasePowerFlow

    net = ieee_eu_lv.snapshot(566)
    add_zero_sequence_data(net)
    run_three_phase(net)
    flow = ThreePhasePowerFlow(net)
    st = flow.run(*phase_injections(net, flow))
    lines = net.res_line_3ph.loc[flow.lines]
    for k, ph in enumerate(PHASES):
        np.testing.assert_allclose(st.line_i_ka[:, k], lines[f"i_{ph}_ka"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(st.line_loading_pct[:, k], lines[f"loading_{ph}_percent"], rtol=0, atol=5e-3)
        np.testing.assert_allclose(st.trafo_loading_pct[:, k], net.res_trafo_3ph[f"loading_{ph}_percent"], rtol=0,
                                   atol=5e-3)
    np.testing.assert_allclose(st.line_in_ka, lines.i_n_ka, rtol=0, atol=1e-5)
    assert float(lines.i_n_ka.max()) > 0.05, "the single-phase loads drive a neutral current"
    src = net.res_ext_grid_3ph
    assert st.slack_p_kw == pytest.approx(1000.0 * float(src[[f"p_{ph}_mw" for ph in PHASES]].sum(axis=1).sum()),
                                          abs=1e-2)


def test_participant_sensitivities_match_finite_differences(grid_rural3_net):
    """`PhaseSensitivities` (adjoint rows per participant) against central differences of
    the prepared power flow, for single-phase and three-phase participants on rural3:
    phase voltages, unbalance factor, phase loading of lines and transformer, source power."""
    from cosim.physical.grid.threephase_flow import PhaseSensitivities, ThreePhasePowerFlow

    flow = ThreePhasePowerFlow(grid_rural3_net)
    rng = np.random.default_rng(1)
    nb = len(flow.buses)
    lv = np.flatnonzero(grid_rural3_net.bus.vn_kv.loc[flow.buses].to_numpy() < 1.0)
    pos = rng.choice(lv[1:], 5, replace=False)
    split = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [1, 0, 0.0]])
    p, q = np.zeros((nb, 3)), np.zeros((nb, 3))
    p[lv] = rng.uniform(-4.0, 3.0, (len(lv), 3))
    q[lv] = rng.uniform(0.0, 1.0, (len(lv), 3))
    st = flow.run(p, q)
    sens = PhaseSensitivities(flow, st, pos, split)
    h = 1e-3  # kW
    for k in range(len(pos)):
        dp = np.zeros((nb, 3))
        dp[pos[k]] = -split[k] * h  # +h kW injected
        a, b = flow.run(p + dp, q), flow.run(p - dp, q)
        fd_vm = ((a.vm_pu - b.vm_pu) / (2 * h)).ravel()
        fd_line = ((a.line_loading_pct - b.line_loading_pct) / (2 * h)).ravel()
        fd_trafo = ((a.trafo_loading_pct - b.trafo_loading_pct) / (2 * h)).ravel()
        for r in (3 * lv[5], 3 * lv[20] + 2, 3 * pos[k] + 1):
            assert abs(fd_vm[r] - sens.dvm_dp[r][k]) < 1e-8
        fd_vuf = (a.vuf_pct[pos[k]] - b.vuf_pct[pos[k]]) / (2 * h)
        assert abs(fd_vuf - sens.dvuf_dp[pos[k]][k]) < 1e-6
        for r in (0, 5, 3 * 40 + 2):
            assert abs(fd_line[r] - sens.dline_dp[r][k]) < 1e-5
        assert abs(fd_trafo[1] - sens.dtrafo_dp[1][k]) < 1e-5
        assert abs((a.slack_p_kw - b.slack_p_kw) / (2 * h) - sens.dslack_dp[k]) < 1e-4
        assert abs(sens.dvm_dp[3 * pos[k]][k]) > 1e-5, "the sensitivities are not trivially zero"


def test_three_phase_run_resumes_with_identical_results(tmp_path, monkeypatch):
    """An interrupted three-phase run resumes from its checkpoint (which carries the
    three-phase power flow's warm start) with results equal to an uninterrupted run's."""
    from test_resume import CHUNK, _same_results
    from test_resume import SCENARIO as RESUME_SCENARIO

    from cosim.sim import loop

    path = tmp_path / "s.yaml"
    path.write_text(RESUME_SCENARIO.replace("duration: 6h", "duration: 3h")
                    + "physics: three-phase\n"
                    + "variants: [market, market_no_feedback]\n")
    text = path.read_text().replace("prosumers: {pv_share: 0.9, pv_kwp: 10, battery_share: 0.3}",
                                    "prosumers: {pv_share: 0.9, pv_kwp: 10, battery_share: 0.3, phases: single-phase}")
    path.write_text(text)
    ref = loop.run_scenario(path, out=tmp_path / "ref", progress=False, report=False, chunk_rounds=CHUNK)
    assert "vm_a_pu" in pd.read_parquet(ref / "buses.parquet").columns
    out = tmp_path / "out"
    interrupt_round(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        loop.run_scenario(path, out=out, progress=False, report=False, chunk_rounds=CHUNK)
    monkeypatch.undo()
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-report", "--resume"]) == 0
    _same_results(ref, out)


def test_three_phase_variants_in_parallel_equal_one_after_another(tmp_path):
    """``--workers 2`` (the comparison variants in a forked process, each starting from the
    same three-phase warm start) gives the results of the variants run one after another,
    bit for bit; the two no-P2P baselines are simulated apart in three phases."""
    from test_parallel_variants import same_results

    from cosim.sim.loop import run_scenario

    data = {**SCENARIO, "duration": "1h", "variants": ["market", "baseline", "baseline_no_feedback"]}
    path = write(tmp_path, data)
    one = run_scenario(path, tmp_path / "one", progress=False, report=False, workers=1)
    two = run_scenario(path, tmp_path / "two", progress=False, report=False, workers=2)
    same_results(one, two)


def test_report_of_a_three_phase_run_draws_the_phase_figures(run3):
    """The report of a three-phase run gains the per-phase voltage envelopes with the
    unbalance factor and the three-phase against balanced comparison, titled on the page."""
    from cosim.reporting.report import write_report

    page = write_report(run3).read_text()
    for name, title in (("phase_voltages", "Voltages per phase and unbalance"),
                        ("physics_comparison", "Three-phase against balanced power flow")):
        assert (run3 / "figures" / f"{name}.png").stat().st_size > 10_000
        assert title in page and f"figures/{name}.png" in page
    rounds = pd.read_parquet(run3 / "no_feedback" / "rounds.parquet")
    assert (rounds.vm_max_pu > rounds.vm_max_balanced_pu + 0.01).any(), "single-phase PV raises a phase above the balanced"


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_phase_injections_add_up_and_land_on_their_phases(data):
    """`phase_injections` (invariant, hand-checked construction): each bus's phases add up
    to its balanced totals, whatever the dispatch; a prosumer whose every system is on one
    phase puts nothing on the other two (the busbar's remainder aside); reactive power
    follows the load."""
    from cosim.physical.phases import phase_injections

    n = data.draw(st.integers(1, 6))
    n_bus = data.draw(st.integers(n + 1, n + 3))
    phase = data.draw(st.lists(st.sampled_from(PHASES), min_size=n, max_size=n))
    split = np.array([[float(p == q) for q in PHASES] for p in phase])
    splits = {k: split for k in ("load", "pv", "battery", "ev")}
    kw = st.floats(0.0, 10.0)
    load = np.array(data.draw(st.lists(kw, min_size=n, max_size=n)))
    pv = np.array(data.draw(st.lists(kw, min_size=n, max_size=n)))
    flex = {k: np.array(data.draw(st.lists(st.floats(-5.0, 5.0), min_size=n, max_size=n)))
            for k in ("battery", "ev", "shiftable")}
    shed, curtailed = np.minimum(load, 1.0), np.minimum(pv, 2.0)
    net = load - shed - (pv - curtailed) + flex["battery"] + flex["ev"] + flex["shiftable"]
    pos = np.arange(1, n + 1)  # bus 0 is the busbar
    busbar_kw = data.draw(st.floats(-3.0, 3.0))
    bus_p = np.bincount(pos, weights=net, minlength=n_bus)
    bus_p[0] += busbar_kw
    load_kvar = 0.3 * load
    bus_q = np.bincount(pos, weights=load_kvar * np.where(load > 0, 1 - shed / np.where(load > 0, load, 1), 1),
                        minlength=n_bus)
    p3, q3 = phase_injections(splits, pos, load, load_kvar, pv, flex, net, shed, curtailed, bus_p, bus_q)
    np.testing.assert_allclose(p3.sum(axis=1), bus_p, atol=1e-9)
    np.testing.assert_allclose(q3.sum(axis=1), bus_q, atol=1e-9)
    off = 1.0 - split
    assert np.abs(p3[pos] * off).max(initial=0.0) < 1e-9
    assert np.abs(q3[pos] * off).max(initial=0.0) < 1e-9
    np.testing.assert_allclose(p3[0], busbar_kw / 3.0, atol=1e-9)
