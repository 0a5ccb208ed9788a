"""Flexible assets: batteries, EVs and shiftable loads under the rule, on SimBench rural3
profiles and on random requests; the storage section of the scenario; storage.parquet rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.config.errors import InputError
from cosim.config.scenario import Scenario
from cosim.flex.assets import STORAGE_COLUMNS, build_assets
from cosim.flex.sessions import SessionState, SessionTable
from cosim.physical.fleet import Batteries, build_fleet
from cosim.physical.networks import REPO_NETWORKS, build_net, load_network_spec
from cosim.virtual.admission import physical_limits

#: Energy balance tolerance [kWh].
KWH_TOL = 1e-9
DAY = "2016-07-21"


@pytest.fixture(scope="module")
def rural3():
    spec = load_network_spec(REPO_NETWORKS / "rural3.yaml")
    return spec, build_net(spec)


def scenario(storage=None, duration="2d", resolution="1h", **prosumers) -> Scenario:
    pro = {"pv_share": 0.8, "pv_kwp": 9.0, "battery_share": 0.3, **prosumers}
    return Scenario.model_validate({"name": "t", "network": "rural3", "start": DAY, "duration": duration,
                                    "resolution": resolution, "prosumers": pro, "storage": storage or {}})


@pytest.fixture(scope="module")
def fleet(rural3):
    spec, net = rural3
    return build_fleet(net, spec, scenario())


def run(assets, fleet, sc, rows=True):
    """Dispatch every round; returns (flex power [rounds x prosumers], storage rows)."""
    net = fleet.load_kw - fleet.pv_kw
    out, tables = [], []
    for t in range(sc.n_rounds):
        out.append(assets.dispatch(t, net[t], sc.dt_h))
        if rows:
            tables.append(assets.storage_rows(t))
    return np.array(out), (pd.concat(tables, ignore_index=True) if rows else None)


def test_rule_without_evs_is_the_self_consumption_battery(fleet):
    """The default (rule, no EVs, no shiftable loads) dispatches and limits exactly as
    `Batteries.self_consume` and `admission.physical_limits` did before."""
    sc = scenario()
    assets = build_assets(sc, fleet)
    old = Batteries.from_fleet(fleet, sc)
    net = fleet.load_kw - fleet.pv_kw
    for t in range(sc.n_rounds):
        d_new, a_new = assets.limits_kwh(t, fleet.load_kw[t], fleet.pv_kw[t], sc.dt_h)
        d_old, a_old = physical_limits(fleet.load_kw[t], fleet.pv_kw[t], old.soc, old.e_kwh, old.p_kw,
                                       old.efficiency, sc.dt_h)
        assert np.array_equal(d_new, d_old) and np.array_equal(a_new, a_old)
        assert np.array_equal(assets.dispatch(t, net[t], sc.dt_h), old.self_consume(net[t], sc.dt_h))
        assert np.array_equal(assets.batteries.soc, old.soc)
    assert assets.planner is None and not assets.has_sessions


def test_rule_serves_every_feasible_ev_and_conserves_energy(fleet):
    """Uncontrolled charging on rural3: every EV that can be served is served by its
    departure; energies stay in bounds; stored energy changes by power x dt - losses."""
    sc = scenario({"ev": {"share": 0.5}, "shiftable": {"share": 0.3}, "battery_soc_min": 0.1,
                   "battery_soc_max": 0.9, "battery_charge_efficiency": 0.96, "battery_discharge_efficiency": 0.92})
    assets = build_assets(sc, fleet)
    flex, rows = run(assets, fleet, sc)
    assert list(rows.columns) == STORAGE_COLUMNS
    per_round = rows.groupby("round").size()
    assert (per_round == len(assets.spec.battery_pos) + assets.evs.table.n + assets.shiftables.table.n).all()
    # every ended, feasible EV session served; shiftable jobs too
    sessions = assets.sessions_table()
    ended = sessions[sessions.status != "after run"]
    assert len(ended[ended.asset == "ev"]) >= assets.evs.table.n
    assert (ended.status[ended.feasible] == "served").all()
    assert np.allclose(ended.end_kwh[ended.feasible], ended.required_kwh[ended.feasible], atol=1e-9)
    # bounds
    bat = rows[rows.asset == "battery"]
    assert bat.soc.between(0.1 - 1e-12, 0.9 + 1e-12).all()
    ev = rows[(rows.asset == "ev") & rows.plugged]
    assert ev.energy_kwh.between(-1e-12, 50.0 + 1e-9).all()
    assert rows[rows.asset == "ev"].power_kw.between(-1e-12, 11.0 + 1e-12).all()
    assert (rows.power_kw[(rows.asset == "ev") & ~rows.plugged] == 0).all()
    # energy conservation per battery round by round, losses included
    for _, g in bat.groupby("id"):
        e = np.r_[sc.prosumers.battery_initial_soc * fleet.table.battery_kwh[g.id.iloc[0]], g.energy_kwh]
        np.testing.assert_allclose(np.diff(e), g.power_kw * sc.dt_h - g.loss_kwh, atol=KWH_TOL)
        assert (g.loss_kwh >= -1e-12).all()
    # per EV session: energy at departure = arrival + charged - losses
    for _, s in ended[ended.asset == "ev"].iterrows():
        g = rows[(rows.asset == "ev") & (rows.id == s.id) & rows["round"].between(max(s.start_round, 0),
                                                                                  s.end_round - 1)]
        gained = (g.power_kw * sc.dt_h - g.loss_kwh).sum()
        assert s.end_kwh == pytest.approx(s.arrival_kwh + gained, abs=1e-9)
    # the flexible power handed back is the sum over assets
    total = rows.assign(p=rows.power_kw).groupby(["round", "id"]).p.sum().unstack(fill_value=0.0)
    ids = list(fleet.ids)
    np.testing.assert_allclose(total.reindex(columns=ids, fill_value=0.0).to_numpy(), flex, atol=1e-12)


def test_shiftable_loads_use_their_energy_inside_the_window(fleet):
    """Each job uses exactly its energy, only inside 10:00-14:00, and (rule) from the window's start."""
    sc = scenario({"shiftable": {"share": 0.4, "energy_kwh": 3.0, "power_kw": 2.0, "window_start_h": 10,
                                 "window_end_h": 14}})
    assets = build_assets(sc, fleet)
    _, rows = run(assets, fleet, sc)
    sh = rows[rows.asset == "shiftable"]
    hours = (sh["round"] % 24).to_numpy()
    assert (sh.power_kw[(hours < 10) | (hours >= 14)] == 0).all()
    per_day = sh.assign(day=sh["round"] // 24).groupby(["id", "day"]).power_kw.sum() * sc.dt_h
    np.testing.assert_allclose(per_day, 3.0, atol=1e-9)
    first = sh[hours == 10]
    np.testing.assert_allclose(first.power_kw, 2.0)


def ev_table(arrival_kwh, required_kwh, start, end, cap=40.0, p=7.0, eta_c=0.9, eta_d=0.85, v2g=True,
             n_ext=30, dt_h=0.5) -> SessionTable:
    sessions = pd.DataFrame({"slot": [0] * len(start), "arrival": pd.NaT, "departure": pd.NaT,
                             "start_round": start, "end_round": end, "arrival_kwh": arrival_kwh,
                             "required_kwh": required_kwh, "asset": "ev", "id": "P000"})
    return SessionTable.build(kind="ev", owner=np.array([0]), ids=["P000"], cap_kwh=np.array([cap]),
                              p_kw=np.array([p]), eta_c=np.array([eta_c]), eta_d=np.array([eta_d]),
                              v2g=np.array([v2g]), sessions=sessions, n_ext=n_ext, dt_h=dt_h)


@settings(max_examples=50, deadline=None)
@given(requests=st.lists(st.floats(-20.0, 20.0), min_size=30, max_size=30),
       arrival=st.floats(0.0, 40.0), required=st.floats(0.0, 45.0))
def test_session_asset_bounds_and_conservation(requests, arrival, required):
    """Any requested power (v2g EV): energy in [0, capacity], power within the charger,
    nothing while away, energy conserved with both efficiencies, shortfall recorded."""
    tb = ev_table([arrival, 10.0], [required, 30.0], [2, 20], [14, 29])
    state = SessionState.start(tb)
    dt_h = 0.5
    energy = []
    powers, losses, acts = [], [], []
    for t in range(30):
        act = state.open(t)
        e0 = state.energy_kwh.copy()
        power, loss = state.apply(t, act, np.array([requests[t]]), dt_h)
        powers.append(power[0])
        losses.append(loss[0])
        acts.append(act[0])
        if act[0] >= 0:
            charge, discharge = max(power[0], 0.0), max(-power[0], 0.0)
            assert state.energy_kwh[0] - e0[0] == pytest.approx(charge * 0.9 * dt_h - discharge / 0.85 * dt_h,
                                                                abs=KWH_TOL)
            assert power[0] * dt_h - loss[0] == pytest.approx(state.energy_kwh[0] - e0[0], abs=KWH_TOL)
        energy.append(state.energy_kwh[0])
    assert all(-1e-12 <= e <= 40.0 + 1e-9 for e in energy)
    assert all(abs(p) <= 7.0 + 1e-12 for p in powers)
    assert all(p == 0 for p, a in zip(powers, acts, strict=True) if a < 0)
    assert state.end_kwh[0] == pytest.approx(energy[13])  # the first session's last round is 13


@settings(max_examples=50, deadline=None)
@given(requests=st.lists(st.floats(-10.0, 10.0), min_size=6, max_size=6),
       soc=st.lists(st.floats(0.2, 0.8), min_size=6, max_size=6),
       eta_c=st.floats(0.8, 1.0), eta_d=st.floats(0.8, 1.0))
def test_battery_follow_keeps_bounds_and_conserves_energy(requests, soc, eta_c, eta_d):
    """Following a schedule: SOC within [soc_min, soc_max]; stored energy changes by
    charge x eta_c - discharge / eta_d; never beyond kW."""
    e = np.array([10.0, 10.0, 5.0, 0.0, 13.5, 2.0])
    p = np.array([5.0, 3.0, 2.5, 0.0, 5.0, 1.0])
    b = Batteries(e, p, 0.95, np.where(e > 0, np.array(soc), 0.0), 0.2, 0.8, eta_c, eta_d)
    before = b.energy_kwh
    power = b.follow(np.array(requests), 0.25)
    assert np.all((b.soc[e > 0] >= 0.2 - 1e-12) & (b.soc[e > 0] <= 0.8 + 1e-12))
    assert np.all(np.abs(power) <= p + 1e-12)
    charge, discharge = np.maximum(power, 0) * 0.25, np.maximum(-power, 0) * 0.25
    np.testing.assert_allclose(b.energy_kwh - before, charge * eta_c - discharge / eta_d, atol=1e-9)
    assert np.all(power[e == 0] == 0)


def test_infeasible_ev_request_is_reported_not_crashed(fleet, tmp_path, caplog):
    """A session that needs more than the charger can deliver in time is flagged, charged
    at full power throughout, and its shortfall recorded; the run goes on."""
    csv = tmp_path / "sessions.csv"
    csv.write_text("id,arrival,departure,arrival_kwh,required_kwh\n"
                   f"{fleet.ids[3]},{DAY} 18:00,{DAY} 20:00,5,45\n"
                   f"{fleet.ids[3]},2016-07-22 18:00,2016-07-22 23:00,10,30\n"
                   f"{fleet.ids[7]},{DAY} 08:00,{DAY} 12:00,20,60\n")
    sc = scenario({"ev": {"sessions_csv": str(csv)}})
    assets = build_assets(sc, fleet)
    assert "cannot reach their energy" in caplog.text
    _, rows = run(assets, fleet, sc)
    s = assets.sessions_table().set_index(["id", "start_round"])
    first = s.loc[(fleet.ids[3], 18)]
    assert not first.feasible and first.status == "infeasible request"
    assert first.end_kwh == pytest.approx(5 + 2 * 11 * 0.92)
    assert first.shortfall_kwh == pytest.approx(45 - 5 - 2 * 11 * 0.92)
    assert s.loc[(fleet.ids[3], 42)].status == "served"
    big = s.loc[(fleet.ids[7], 8)]  # 60 kWh into a 50 kWh battery
    assert big.status == "infeasible request" and big.end_kwh == pytest.approx(50.0)
    ev = rows[(rows.asset == "ev") & (rows.id == fleet.ids[3]) & rows["round"].isin([18, 19])]
    np.testing.assert_allclose(ev.power_kw, 11.0)
    assert ev.shortfall_kwh.iloc[-1] == pytest.approx(first.shortfall_kwh)
    summary = assets.summary()
    assert summary["ev_infeasible_requests"] == 2 and summary["ev_sessions_served"] == 1


def test_bad_sessions_csv_lists_every_problem(fleet, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("id,arrival,departure,arrival_kwh,required_kwh,colour\n"
                   f"P999,{DAY} 18:00,{DAY} 20:00,5,45,red\n"
                   f"{fleet.ids[1]},yesterday,{DAY} 20:00,-1,45,blue\n")
    sc = scenario({"ev": {"sessions_csv": str(csv)}})
    with pytest.raises(InputError) as err:
        build_assets(sc, fleet)
    text = str(err.value)
    assert "bad.csv" in text and "colour" in text and "P999" in text and "arrival:" in text
    assert "arrival_kwh" in text


def test_storage_section_is_validated(tmp_path):
    """Unknown fields and impossible settings of the storage section are named."""
    from cosim.config.load import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nnetwork: rural3\nstorage:\n  strategy: magic\n  battery_soc_min: 0.9\n"
                    "  battery_soc_max: 0.5\n  shiftable: {energy_kwh: 50, power_kw: 2}\n  ev: {chargr_kw: 7}\n")
    with pytest.raises(InputError) as err:
        load_scenario(path)
    text = str(err.value)
    assert "storage.strategy" in text and "storage.ev.chargr_kw: unknown field" in text
    assert "energy_kwh <= power_kw x window" in text
    path.write_text("name: s\nnetwork: rural3\nstorage:\n  ev: {sessions_csv: nowhere.csv}\n")
    with pytest.raises(InputError, match="storage.ev.sessions_csv: expected a CSV file"):
        load_scenario(path)
    ok = Scenario.model_validate({"name": "s", "network": "rural3", "storage": {"strategy": "central"}})
    assert ok.storage.ev.share == 0.0 and ok.storage.forecast == "perfect"
    with pytest.raises(Exception, match="resolution that divides 24h"):
        Scenario.model_validate({"name": "s", "network": "rural3", "resolution": "7min",
                                 "storage": {"strategy": "central"}})


def test_report_draws_storage_figures_only_with_storage_parquet(fleet, tmp_path):
    """The report adds state of charge, EV charging and schedule-against-dispatch figures
    when the run has storage.parquet (here from a central schedule on rural3)."""
    import dataclasses
    import json

    from test_report import make_run

    from cosim.flex.assets import summarize_storage
    from cosim.reporting.report import (
        FIGURES,
        STORAGE_FIGURES,
        figures_for,
        load_run,
        write_report,
    )

    folder = make_run(tmp_path, days=1, resolution_min=60)
    assert not set(figures_for(load_run(folder))) & set(STORAGE_FIGURES)
    sc = scenario({"strategy": "central", "ev": {"share": 0.3}, "shiftable": {"share": 0.3}}, duration="1d")
    day = dataclasses.replace(fleet, time=fleet.time[:24], load_kw=fleet.load_kw[:24],
                              load_kvar=fleet.load_kvar[:24], pv_kw=fleet.pv_kw[:24])
    assets = build_assets(sc, day)
    _, rows = run(assets, day, sc)
    rows.to_parquet(folder / "storage.parquet", index=False)
    assets.sessions_table().to_parquet(folder / "sessions.parquet", index=False)
    assets.dayahead_table().to_parquet(folder / "dayahead.parquet", index=False)
    summary = json.loads((folder / "summary.json").read_text())
    summary["storage"] = summarize_storage(folder, sc)
    assert summary["storage"]["strategy"] == "central" and summary["storage"]["dayahead_solves"] == 1
    (folder / "summary.json").write_text(json.dumps(summary))
    html = write_report(folder).read_text()
    for name in [n for n in FIGURES if n != "grid_forming"] + list(STORAGE_FIGURES):
        assert (folder / "figures" / f"{name}.png").is_file(), name
    assert "Flexible assets" in html and "Day-ahead schedule against realised dispatch" in html


# -- the battery auction's shared capacity (storage.battery_auction) -------------------------


def auction_scenario(strategy="rule", **auction) -> Scenario:
    return scenario({"strategy": strategy, "battery_soc_min": 0.1, "battery_soc_max": 0.9,
                     "battery_auction": {"enabled": True, **auction}}, duration="2d", resolution="1h")


@pytest.mark.parametrize("strategy", ["rule", "price"])
def test_shared_batteries_keep_every_account_in_bounds_and_conserve_energy(fleet, strategy):
    """With the auction (rule, and price with cheap P2P energy every round): each owner's
    physical battery holds its own account plus the slices it hosts and stays within
    [soc_min, soc_max] of its capacity; the own account stays within the capacity left
    after sharing, each slice within its capacity; energy is conserved (power x dt - loss
    = change of stored energy, per battery and per winner's slices within a day); winners'
    slices only charge from their surplus and only discharge into their deficit; rents
    balance."""
    sc = auction_scenario(strategy)
    assets = build_assets(sc, fleet)
    sh = assets.shares
    b = assets.batteries
    e, u = b.e_kwh, (b.soc_max - b.soc_min) * b.e_kwh
    net = fleet.load_kw - fleet.pv_kw
    prev_phys, prev_share, day = b.energy_kwh.copy(), {}, -1
    own_before = None
    shared_any = 0.0
    for t in range(sc.n_rounds):
        cheap = strategy == "price" and 10 <= t % 24 < 14  # cheap P2P energy around noon
        kw = assets.dispatch(t, net[t], sc.dt_h, price_per_kwh=0.0 if cheap else None)
        rows = pd.DataFrame(assets.storage_columns(t))
        phys = b.energy_kwh
        hosted = np.bincount(sh.host, weights=sh.energy_kwh, minlength=fleet.n)
        own = phys - hosted
        has = e > 0
        assert (phys[has] >= b.soc_min * e[has] - KWH_TOL).all() and (phys[has] <= b.soc_max * e[has] + KWH_TOL).all()
        assert (own[has] >= b.soc_min * e[has] - KWH_TOL).all()
        assert (own[has] <= b.soc_min * e[has] + u[has] - sh.shared_kwh[has] + KWH_TOL).all()
        assert ((sh.energy_kwh >= -KWH_TOL) & (sh.energy_kwh <= sh.cap_kwh + KWH_TOL)).all()
        bat = rows[rows.asset == "battery"].set_index("id")
        np.testing.assert_allclose(bat.power_kw * sc.dt_h - bat.loss_kwh,
                                   (phys - prev_phys)[assets.spec.battery_pos], atol=1e-9)
        np.testing.assert_allclose(kw[~has], 0.0, atol=0.0)  # no slice power at a winner's bus
        share = rows[rows.asset == "battery_share"].set_index("id")
        win = [fleet.ids.index(i) for i in share.index]
        assert (share.power_kw[net[t][win] >= 0] <= 1e-12).all() and (share.power_kw[net[t][win] <= 0] >= -1e-12).all()
        assert (share.power_kw.abs() <= np.abs(net[t][win]) + 1e-9).all()
        if sh.day == day:  # the same slices as in the round before
            before = pd.Series(prev_share, dtype=float).reindex(share.index, fill_value=0.0)
            np.testing.assert_allclose(share.power_kw * sc.dt_h - share.loss_kwh, share.energy_kwh - before, atol=1e-9)
        day, prev_phys, prev_share = sh.day, phys.copy(), share.energy_kwh.to_dict()
        shared_any = max(shared_any, sh.shared_kwh.sum())
        assert abs(assets.rent_due(t).sum()) < 1e-9
        if cheap:  # every own account charges at its full power, as far as it has room
            most = np.minimum(b.p_kw * (1.0 - sh.shared_kwh / np.where(u > 0, u, 1.0)),
                              (b.soc_min * e + u - sh.shared_kwh - own_before) / (b.eta_charge * sc.dt_h))
            np.testing.assert_allclose((kw - np.bincount(sh.host, weights=sh.last["power_kw"], minlength=fleet.n))[has],
                                       most[has], atol=1e-9)
        own_before = own
    assert shared_any > 1.0


def test_auction_off_leaves_the_dispatch_alone(fleet):
    """The auction's fields present but disabled: the same dispatch, rows and state as the
    default, and no rent or auction table."""
    plain, off = build_assets(scenario(), fleet), build_assets(
        scenario({"battery_auction": {"enabled": False, "day_start_h": 3}}), fleet)
    net = fleet.load_kw - fleet.pv_kw
    for t in range(24):
        assert np.array_equal(plain.dispatch(t, net[t], 1.0), off.dispatch(t, net[t], 1.0))
        assert pd.DataFrame(plain.storage_columns(t)).equals(pd.DataFrame(off.storage_columns(t)))
    assert off.rent_due(0) is None and off.battery_auction_table() is None and "shares" not in off.get_state()


def test_battery_auction_section_is_validated():
    """The auction needs the rule or price strategy; its fields are checked."""
    with pytest.raises(Exception, match="battery_auction: expected strategy rule or price"):
        Scenario.model_validate({"name": "s", "network": "rural3",
                                 "storage": {"strategy": "central", "battery_auction": {"enabled": True}}})
    with pytest.raises(Exception, match="day_start_h"):
        Scenario.model_validate({"name": "s", "network": "rural3", "storage": {"battery_auction": {"day_start_h": 24}}})
    with pytest.raises(Exception, match="max_demand_kw"):
        Scenario.model_validate({"name": "s", "network": "rural3", "storage": {"battery_auction": {"max_demand_kw": 3}}})
    ok = Scenario.model_validate({"name": "s", "network": "rural3", "storage": {"strategy": "price",
                                                                                 "battery_auction": {"enabled": True}}})
    assert ok.storage.battery_auction.day_start_h == 6.0 and ok.storage.battery_auction.value_per_kwh is None


def test_shared_batteries_resume_from_a_checkpoint(fleet):
    """A checkpoint taken inside an auction day (slices charged, rent paid) and restored
    into fresh assets gives the same dispatch, rows, rents and auction table as a run
    that was never interrupted."""
    sc = auction_scenario()
    net = fleet.load_kw - fleet.pv_kw
    whole = build_assets(sc, fleet)
    out = [(whole.dispatch(t, net[t], sc.dt_h), whole.rent_due(t)) for t in range(sc.n_rounds)]
    first = build_assets(sc, fleet)
    for t in range(20):
        first.dispatch(t, net[t], sc.dt_h)
    resumed = first.fresh()
    resumed.set_state(first.get_state())
    for t in range(20, sc.n_rounds):
        kw = resumed.dispatch(t, net[t], sc.dt_h)
        assert np.array_equal(kw, out[t][0]) and np.array_equal(resumed.rent_due(t), out[t][1])
    assert resumed.battery_auction_table().equals(whole.battery_auction_table())
    assert pd.DataFrame(resumed.storage_columns(sc.n_rounds - 1)).equals(pd.DataFrame(whole.storage_columns(sc.n_rounds - 1)))


def test_charge_headroom_and_add_charge(fleet):
    """What batteries and EVs can draw on top of their dispatch, by hand for one battery:
    10 kWh / 5 kW at state of charge 0.5, efficiency 0.95, one-hour rounds, made to
    discharge 2 kW: it can stop and charge at its full 5 kW (room 5 kWh / 0.95 allows
    more), a headroom of 7 kWh. Drawing 4 kWh more runs it at +2 kW: state of charge
    0.5 + 2 x 0.95 / 10 = 0.69. EVs take what batteries cannot, within their chargers;
    every prosumer's added power stays within its headroom, and the storage rows follow."""
    sc = scenario({"ev": {"share": 0.5}})
    assets = build_assets(sc, fleet)
    net = fleet.load_kw - fleet.pv_kw
    t = 18  # evening: EVs at home
    b = assets.batteries
    owners = set(assets.evs.table.owner.tolist())
    i = next(int(n) for n in assets.spec.battery_pos if n not in owners)  # a battery, no EV
    b.soc[i] = 0.5
    load = net[t].copy()
    load[i] = 2.0  # a deficit of 2 kW: the battery discharges 2 kW
    flex = assets.dispatch(t, load, 1.0)
    assert assets._last["battery"][0][i] == pytest.approx(-2.0)
    headroom = assets.charge_headroom_kwh(t, 1.0)
    assert headroom[i] == pytest.approx(7.0)
    no_battery = np.array([o for o in assets.evs.table.owner if o not in set(assets.spec.battery_pos.tolist())])
    ev_owner = int(no_battery[np.argmax(headroom[no_battery])])
    assert headroom[ev_owner] > 0, "an EV at home with room to charge"
    extra = np.zeros(fleet.n)
    extra[i] = 4.0
    extra[ev_owner] = headroom[ev_owner] + 1.0  # more than its EVs can take
    added_kw = assets.add_charge(t, extra, 1.0)
    np.testing.assert_allclose(added_kw, np.minimum(extra, headroom), atol=KWH_TOL)
    assert assets._last["battery"][0][i] == pytest.approx(2.0)
    assert b.soc[i] == pytest.approx(0.5 + 2.0 * 0.95 / 10.0)
    rows = assets.storage_rows(t)
    power = rows.groupby("id").power_kw.sum().reindex(fleet.ids, fill_value=0.0).to_numpy()
    np.testing.assert_allclose(power, flex + added_kw, atol=1e-9)
    assert assets.charge_headroom_kwh(t, 1.0)[ev_owner] == pytest.approx(0.0, abs=1e-9)
