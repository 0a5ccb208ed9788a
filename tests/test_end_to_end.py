"""End-to-end runs on the small feeder, grid-connected and islanded, checked against the
results contract of DESIGN.md and the physical and economic invariants:

- each round, P2P energy bought equals energy sold;
- each prosumer's net load equals bought + imported - sold - exported;
- the bills of all parties sum to zero in every round;
- a fresh pandapower power flow of the reported bus injections gives the reported
  voltages to 1e-6 pu;
- with feedback nothing is violated, without feedback the same market violates limits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandapower as pp
import pandas as pd
import pytest

from cosim.cli import main
from cosim.physical.networks import (
    build_net,
    find_network_file,
    load_network_spec,
    lv_busbar,
    set_islanded,
)
from cosim.sim import loop
from cosim.virtual.ledger import verify

VM_TOL_PU = 1e-6
ENERGY_TOL_KWH = 1e-6
MONEY_TOL = 1e-9

ROUND_COLUMNS = (
    "round,time,iterations,pf_converged,cleared_kwh,price_per_kwh,grid_import_kwh,grid_export_kwh,"
    "curtailed_kwh,shed_kwh,losses_kwh,vm_min_pu,vm_max_pu,max_line_loading_pct,max_trafo_loading_pct,violations"
).split(",")
CONTRACT = {
    "rounds.parquet": ROUND_COLUMNS,
    "trades.parquet": "round,seller,buyer,energy_kwh,price_per_kwh,network_charge_per_kwh".split(","),
    "settlement.parquet": (
        "round,party,bus,bought_kwh,sold_kwh,grid_import_kwh,grid_export_kwh,curtailed_kwh,shed_kwh,"
        "energy_cost,network_charges,bill"
    ).split(","),
    "buses.parquet": "round,bus,p_kw,q_kvar,vm_pu".split(","),
    "branches.parquet": "round,branch,kind,loading_pct".split(","),
    "attribution.parquet": ["round", "violation", "seller", "buyer", "contribution"],
}

GRID_SCENARIO = """
name: e2e-grid
network: feeder
start: 2016-07-21 08:00
duration: 6h
seed: 3
prosumers: {pv_share: 0.9, pv_kwp: 10, battery_share: 0.3}
market: {bidding: zero-intelligence}
feedback:
  v_max_pu: 1.02
  max_loading_pct: 12
  charge_method: sensitivity
  charge_rate_per_kwh: 0.3
"""

ISLAND_SCENARIO = """
name: e2e-island
network: feeder
mode: islanded
start: 2016-07-21 14:00
duration: 10h
seed: 5
prosumers: {pv_share: 0.9, pv_kwp: 10, battery_share: 0.0, load_scale: 3}
market: {bidding: truthful}
feedback: {charge_method: flat, charge_rate_per_kwh: 0.01}
islanded: {p_kw: 3, e_kwh: 60, initial_soc: 0.8}
"""


def _run(tmp_path_factory, text: str, name: str) -> Path:
    folder = tmp_path_factory.mktemp(name)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return loop.run_scenario(path, out=folder / "out", progress=False, report=True)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, GRID_SCENARIO, "grid")


@pytest.fixture(scope="module")
def island_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory, ISLAND_SCENARIO, "island")


@pytest.fixture(params=["grid_run", "island_run"])
def run(request) -> Path:
    return request.getfixturevalue(request.param)


def _variants(run: Path) -> list[Path]:
    return [run, run / "no_feedback", run / "baseline", run / "baseline_no_feedback"]


def test_results_contract(run):
    for name, columns in CONTRACT.items():
        table = pd.read_parquet(run / name)
        missing = [c for c in columns if c not in table.columns]
        assert not missing, f"{name} lacks {missing}"
    phases = pd.read_parquet(run / "prosumers.parquet")[["load_phase", "pv_phase", "battery_phase"]]
    assert set(phases.stack().dropna()) <= {"a", "b", "c", "abc"}  # issue 13: connections recorded
    for extra in ("scenario.yaml", "ledger.jsonl", "summary.json", "report.html"):
        assert (run / extra).is_file()
    assert len(list((run / "figures").glob("*.png"))) >= 9
    rounds = pd.read_parquet(run / "rounds.parquet")
    summary = json.loads((run / "summary.json").read_text())
    assert len(rounds) == summary["rounds"] > 0
    assert set(summary["variants"]) == {"market", "market_no_feedback", "baseline", "baseline_no_feedback"}
    assert summary["timing"]["median_round_ms"] > 0
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_p2p_bought_equals_sold(run):
    """Pool balance: what prosumers buy in the market equals what they sell, plus what the
    market operator (a community manager) buys from the outside party, minus what it sells."""
    for folder in _variants(run):
        st = pd.read_parquet(folder / "settlement.parquet")
        prosumers = st[st.bus >= 0]
        per_round = prosumers.groupby("round")[["bought_kwh", "sold_kwh"]].sum()
        operator = st[st.party == "market_operator"].set_index("round")
        net_operator = (operator.grid_import_kwh - operator.grid_export_kwh).loc[per_round.index]
        np.testing.assert_allclose(per_round.bought_kwh, per_round.sold_kwh + net_operator, atol=ENERGY_TOL_KWH)
        rounds = pd.read_parquet(folder / "rounds.parquet")
        np.testing.assert_allclose(per_round.bought_kwh.to_numpy(), rounds.cleared_kwh.to_numpy(), atol=ENERGY_TOL_KWH)


def test_net_load_balance(run):
    """net load = load - pv + battery + curtailed - shed = bought + imported - sold - exported,
    and the buses saw exactly the sum of their prosumers' net loads."""
    dt_h = 0.25
    for folder in _variants(run):
        st = pd.read_parquet(folder / "settlement.parquet")
        p = st[st.bus >= 0]
        physical = p.load_kwh - p.pv_kwh + p.battery_kwh + p.curtailed_kwh - p.shed_kwh
        traded = p.bought_kwh + p.grid_import_kwh - p.sold_kwh - p.grid_export_kwh
        np.testing.assert_allclose(physical, traded, atol=ENERGY_TOL_KWH)
        np.testing.assert_allclose(p.net_load_kwh, traded, atol=ENERGY_TOL_KWH)
        assert (p.curtailed_kwh <= p.pv_kwh + ENERGY_TOL_KWH).all()
        buses = pd.read_parquet(folder / "buses.parquet").set_index(["round", "bus"]).p_kw
        per_bus = p.groupby(["round", "bus"]).net_load_kwh.sum() / dt_h
        full = pd.Series(0.0, index=buses.index)
        full.loc[per_bus.index] = per_bus
        np.testing.assert_allclose(buses.to_numpy(), full.to_numpy(), atol=1e-6)


def test_bills_sum_to_zero(run):
    for folder in _variants(run):
        st = pd.read_parquet(folder / "settlement.parquet")
        assert st.groupby("round").bill.sum().abs().max() < MONEY_TOL
        np.testing.assert_allclose(
            st.bill, st.energy_cost + st.network_charges + st.membership_fees + st.losses_cost + st.storage_rent
            + st.flexibility_payments,
            atol=MONEY_TOL)


def test_dso_buys_the_losses(run):
    """The network's losses each round (from the power flow) are bought by the DSO from the
    outside party at the retail tariff; it recovers them through the network charges or
    carries them, and the bills still sum to zero."""
    import yaml

    retail = yaml.safe_load((run / "scenario.yaml").read_text())["market"]["retail_price_per_kwh"]
    for folder in _variants(run):
        rounds = pd.read_parquet(folder / "rounds.parquet").set_index("round")
        st = pd.read_parquet(folder / "settlement.parquet")
        dso = st[st.party == "dso"].set_index("round")
        assert rounds.losses_kwh.sum() > 0
        np.testing.assert_allclose(dso.losses_kwh, rounds.losses_kwh.loc[dso.index], atol=ENERGY_TOL_KWH)
        np.testing.assert_allclose(dso.grid_import_kwh, dso.losses_kwh, atol=ENERGY_TOL_KWH)
        np.testing.assert_allclose(dso.losses_cost, retail * dso.losses_kwh, atol=MONEY_TOL)
        np.testing.assert_allclose(dso.bill, dso.losses_cost + dso.network_charges, atol=MONEY_TOL)
        outside = st[(st.bus < 0) & ~st.party.isin(["dso", "market_operator"])].set_index("round")
        np.testing.assert_allclose(outside.losses_cost, -dso.losses_cost.loc[outside.index], atol=MONEY_TOL)


def test_voltages_are_those_of_the_lv_network(run):
    """vm_min_pu / vm_max_pu of rounds.parquet are over the LV buses (below 1 kV) only,
    not the MV slack bus with its fixed set point."""
    grid = pd.read_parquet(run / "grid_buses.parquet")
    lv = set(grid.bus[grid.vn_kv < 1.0])
    assert len(lv) < len(grid)  # the MV bus exists and is left out
    buses = pd.read_parquet(run / "buses.parquet")
    on_lv = buses[buses.bus.isin(lv)].groupby("round").vm_pu
    rounds = pd.read_parquet(run / "rounds.parquet").set_index("round")
    np.testing.assert_allclose(rounds.vm_max_pu, on_lv.max().loc[rounds.index], atol=1e-12)
    np.testing.assert_allclose(rounds.vm_min_pu, on_lv.min().loc[rounds.index], atol=1e-12)


def _net_for(run: Path) -> pp.pandapowerNet:
    scenario = (run / "scenario.yaml").read_text()
    import yaml

    sc = yaml.safe_load(scenario)
    net = build_net(load_network_spec(find_network_file(sc["network"])))
    if sc["mode"] == "islanded":
        set_islanded(net, sc["islanded"]["grid_forming_bus"] or lv_busbar(net))
    net.load.drop(net.load.index, inplace=True)
    return net


def test_fresh_pandapower_gives_reported_voltages(run):
    """Rebuild the net independently, put the reported injections on it as loads, runpp."""
    buses = pd.read_parquet(run / "buses.parquet")
    rounds = pd.read_parquet(run / "rounds.parquet")
    picks = rounds.sort_values("grid_export_kwh")["round"].to_numpy()[[0, len(rounds) // 2, -1]]
    for t in picks:
        net = _net_for(run)
        b = buses[buses["round"] == t]
        for bus, p_kw, q_kvar in zip(b.bus, b.p_kw, b.q_kvar, strict=True):
            pp.create_load(net, int(bus), p_mw=p_kw / 1000, q_mvar=q_kvar / 1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(net, numba=False)
        reported = b.set_index("bus").vm_pu
        fresh = net.res_bus.vm_pu.loc[reported.index]
        ok = reported.notna()
        assert np.max(np.abs(fresh[ok] - reported[ok])) < VM_TOL_PU


def test_feedback_removes_violations(run):
    summary = json.loads((run / "summary.json").read_text())
    market, no_fb = summary["variants"]["market"], summary["variants"]["market_no_feedback"]
    assert no_fb["violation_rounds"] > 0, "the scenario must stress the network"
    assert market["violation_rounds"] == 0
    # the feedback acts by curtailing PV or shedding load
    assert market["curtailed_kwh"] + market["shed_kwh"] > no_fb["curtailed_kwh"] + no_fb["shed_kwh"]
    assert market["failed_rounds"] == 0
    rounds = pd.read_parquet(run / "rounds.parquet")
    assert rounds.pf_converged.all()
    assert (rounds.iterations[rounds.violations_initial > 0] >= 2).all()
    attribution = pd.read_parquet(run / "attribution.parquet")
    assert set(attribution["round"]) == set(rounds["round"][rounds.violations_initial > 0])


def test_grid_connected_limits(grid_run):
    rounds = pd.read_parquet(grid_run / "rounds.parquet")
    assert rounds.vm_max_pu.max() <= 1.02 + 1e-6
    assert rounds.max_trafo_loading_pct.max() <= 12 + 1e-4
    no_fb = pd.read_parquet(grid_run / "no_feedback" / "rounds.parquet")
    assert (no_fb.max_trafo_loading_pct > 12).any() or (no_fb.vm_max_pu > 1.02).any()


def test_islanded_grid_forming_unit(island_run):
    """The slack stays within its kW once the feedback has acted, its state of charge within bounds,
    and nothing is traded with an outside grid."""
    rounds = pd.read_parquet(island_run / "rounds.parquet")
    assert rounds.gfu_p_kw.abs().max() <= 3 + 1e-3
    assert rounds.gfu_soc.between(0.05 - 1e-3, 0.95 + 1e-3).all()
    no_fb = pd.read_parquet(island_run / "no_feedback" / "rounds.parquet")
    assert no_fb.gfu_p_kw.abs().max() > 3
    assert rounds.shed_kwh.sum() > 0 and rounds.curtailed_kwh.sum() > 0
    trades = pd.read_parquet(island_run / "trades.parquet")
    assert "grid" not in set(trades.seller) | set(trades.buyer)
    assert "grid_forming" in set(trades.seller) | set(trades.buyer)
    st = pd.read_parquet(island_run / "settlement.parquet")
    assert "grid_forming" in set(st.party) and "grid" not in set(st.party)


def test_ledger_verifies_and_catches_an_edit(run, tmp_path):
    ok, message = verify(run)
    assert ok, message
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    lines = (copy / "ledger.jsonl").read_text().splitlines()
    # line 1 is the genesis block, line 3 the block of round 1
    assert '"round":1,' in lines[2]
    lines[2] = lines[2].replace('"round":1,', '"round":7,', 1)
    (copy / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    ok, message = verify(copy)
    assert not ok and "line 3" in message, message
    assert main(["ledger", "verify", str(copy)]) == 1
    assert main(["ledger", "verify", str(run)]) == 0


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(GRID_SCENARIO)
    calls = {"n": 0}
    real = loop.simulate_variant

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "simulate_variant", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        loop.run_scenario(path, out=out, progress=False, report=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_run_prints_report_path(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(GRID_SCENARIO.replace("duration: 6h", "duration: 1h"))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "report.html") in out


def test_community_battery_is_in_the_power_flow(tmp_path):
    """The community battery (run by the market operator) sits at the LV busbar: every
    round, the bus injections the power flow saw add up to what the feeder bought from the
    grid minus what it sold to it, battery included; and the battery does move energy."""
    path = tmp_path / "community.yaml"
    path.write_text(GRID_SCENARIO.replace("name: e2e-grid", "name: e2e-community").replace(
        "market: {bidding: zero-intelligence}",
        "market: {mechanism: community_sdr, options: {battery_kwh: 30, battery_kw: 10, initial_soc: 0.2}}",
    ))
    run = loop.run_scenario(path, out=tmp_path / "out", progress=False, report=False)
    dt_h = 0.25
    buses = pd.read_parquet(run / "buses.parquet").groupby("round").p_kw.sum() * dt_h
    st = pd.read_parquet(run / "settlement.parquet")
    grid = st[st.party == "grid"].set_index("round")
    from_grid = grid.sold_kwh - grid.bought_kwh - grid.losses_kwh  # the losses are sold to the DSO
    np.testing.assert_allclose(buses.to_numpy(), from_grid.loc[buses.index].to_numpy(), atol=ENERGY_TOL_KWH)
    prosumers = st[~st.party.isin(["grid", "dso", "market_operator"])]
    members_net = (prosumers.bought_kwh + prosumers.grid_import_kwh - prosumers.sold_kwh
                   - prosumers.grid_export_kwh).groupby(prosumers["round"]).sum()
    battery = from_grid - members_net.loc[from_grid.index]
    assert battery.abs().max() > 0.1, "the scenario should make the battery move"


def test_report_says_when_p2p_leaves_the_physics_unchanged(tmp_path):
    """With no P2P market (mechanism ``none``) the runs with and without P2P are the same
    simulation: the report says in words that the market only moves money; with a market
    and price-responsive batteries, it names what P2P changes."""
    from cosim.reporting.report import same_physics

    path = tmp_path / "none.yaml"
    path.write_text(GRID_SCENARIO.replace("name: e2e-grid", "name: e2e-none")
                    .replace("market: {bidding: zero-intelligence}", "market: {mechanism: none}"))
    run = loop.run_scenario(path, out=tmp_path / "out", progress=False, report=True)
    v = json.loads((run / "summary.json").read_text())["variants"]
    assert same_physics(v["market"], v["baseline"]) == []
    assert same_physics(v["market_no_feedback"], v["baseline_no_feedback"]) == []
    text = (run / "report.html").read_text()
    assert text.count("the physics of the runs with and without P2P is identical") == 2

    path.write_text(GRID_SCENARIO.replace("name: e2e-grid", "name: e2e-price").replace("08:00", "05:00")
                    .replace("battery_share: 0.3", "battery_share: 0.6") + "storage: {strategy: price}\n")
    run = loop.run_scenario(path, out=tmp_path / "out2", progress=False, report=True)
    v = json.loads((run / "summary.json").read_text())["variants"]
    assert "losses" in same_physics(v["market"], v["baseline"])
    assert "P2P trading changes the dispatch" in (run / "report.html").read_text()


def test_a_run_across_the_end_of_daylight_saving_verifies(tmp_path):
    """On 30 October 2016 the local hour 02:00-03:00 comes twice: rounds.parquet shows
    SimBench's labels (repeated), the ledger the same instants with their UTC offset, so
    its times still increase and `cosim ledger verify` passes."""
    path = tmp_path / "dst.yaml"
    path.write_text(GRID_SCENARIO.replace("name: e2e-grid", "name: e2e-dst")
                    .replace("start: 2016-07-21 08:00", "start: 2016-10-30 01:00").replace("duration: 6h", "duration: 3h"))
    run = loop.run_scenario(path, out=tmp_path / "out", progress=False, report=False)
    times = pd.read_parquet(run / "rounds.parquet").time
    assert times.duplicated().sum() == 4 and len(times) == 12
    ok, message = verify(run)
    assert ok, message
