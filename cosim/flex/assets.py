"""Flexible assets of the fleet: home batteries, electric vehicles, shiftable loads.

One `FlexibleAssets` object per simulated variant runs them round by round and tracks
their state of charge. Each round `FlexibleAssets.dispatch` takes the prosumers' net load
before any flexible asset and returns the power the assets add to it (positive when
consuming, pandapower's load convention) -- the same contract as the rule-based
`Batteries.self_consume`, which is all it runs when the scenario has no EVs, no
shiftable loads and ``storage.strategy: rule``.

Assets
------
- **Batteries** (`cosim.flex.batteries.Batteries`): kWh capacity, kW limit, charge and
  discharge efficiency, state-of-charge bounds.
- **EVs** and **shiftable loads** are *session assets* (`cosim.flex.sessions`): each must reach
  an energy by a deadline. An EV session runs from arrival to departure; it starts with
  ``arrival_kwh`` in the car and must end with ``required_kwh``; the charger draws at most
  ``p_kw`` (with vehicle-to-grid it may also deliver that much). A shiftable load is a
  session with no storage losses that starts at 0 kWh and must use ``energy_kwh`` within
  its daily window, at any power up to ``p_kw``. A session that cannot reach its energy
  even at full power from the start (``feasible`` False) is reported, charged as far as
  it can be, and its shortfall recorded -- never a crash.

Strategies (``storage.strategy``)
---------------------------------
- ``rule``: EVs charge at full power from arrival until they hold ``required_kwh``
  (uncontrolled charging); shiftable loads run at full power from the window's start;
  batteries then self-consume on the net load that includes both.
- ``private``, ``central``, ``distributed``: every ``reschedule_every`` a
  `cosim.flex.dayahead.DayAheadPlanner` schedules all assets for the next 24 h against the
  forecast; the rounds then follow that schedule (as far as the assets physically can),
  and whatever the forecast got wrong is traded in the real-time market. If a schedule
  fails, the rule runs until the next one and the failure is in `dayahead_table`.

Shared battery capacity (``storage.battery_auction``)
----------------------------------------------------
With the auction enabled (``rule`` or ``price`` only), each day the households with a
battery share part of its capacity with households that have PV and no battery, by the
auction of `cosim.flex.battery_auction` (`cosim.flex.capacity_sharing` gives the design): the
owner's own account shrinks by what it shares, each winner's slice charges from the
winner's surplus and discharges into its deficit, and the slices' power is added to the
owner's net load, at the owner's bus, since the energy is in the owner's battery.
`FlexibleAssets.rent_due` gives the rent of each round, `FlexibleAssets.battery_auction_table`
the day's auctions; storage.parquet has one ``battery_share`` row per winner and round.

Sign conventions: power positive when the asset consumes (charging); energies in kWh;
``soc`` is energy over capacity [0..1].
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.config.scenario import Scenario
from cosim.flex.batteries import Batteries, battery_efficiencies
from cosim.flex.capacity_sharing import AuctionDays, CapacityShares
from cosim.flex.dayahead import PLAN_COLUMNS, DayAheadPlanner
from cosim.flex.forecasts import forecast_net_kw, history_net_kw
from cosim.flex.sessions import (
    ENERGY_TOL,
    SESSION_COLUMNS,
    SessionState,
    empty_sessions,
    random_ev_sessions,
    read_ev_sessions,
    shiftable_jobs,
)
from cosim.flex.spec import AssetSpec, transformer_limit_kw
from cosim.flex.storage_summary import auction_figures, flexible_consumption_kwh, summarize_storage
from cosim.physical.fleet import Fleet

__all__ = ["STORAGE_COLUMNS", "FlexibleAssets", "build_assets", "flexible_consumption_kwh",
           "price_threshold_per_kwh", "summarize_storage"]

log = logging.getLogger(__name__)

#: Columns of storage.parquet: one row per round and asset.
#: ``power_kw`` realised power (+ charging/consuming), ``scheduled_kw`` the day-ahead
#: schedule (NaN under the rule), ``energy_kwh`` stored energy at the end of the round
#: (shiftable: energy used so far by the day's job; NaN while an EV is away),
#: ``soc`` energy over capacity, ``loss_kwh`` conversion losses in the round,
#: ``plugged`` EV at home / shiftable window open (batteries: always), ``required_kwh``
#: the session's energy target, ``shortfall_kwh`` what a session missed, in its last round.
#: With the battery auction, a ``battery`` row is the physical battery (its own account and
#: the slices it hosts) and each winner has a ``battery_share`` row: its slices together
#: (their power, which flows at the owners' buses; energy; energy over the slices'
#: capacity; losses).
STORAGE_COLUMNS = [
    "round", "id", "asset", "power_kw", "scheduled_kw", "energy_kwh", "soc", "loss_kwh", "plugged",
    "required_kwh", "shortfall_kwh",
]


def build_assets(scenario: Scenario, fleet: Fleet, net=None, spec=None,
                 scenario_path: str | Path | None = None) -> FlexibleAssets:
    """The run's flexible assets, ready for the first round (and a planner if scheduled).

    Parameters
    ----------
    scenario, fleet : the run's scenario and fleet (`cosim.physical.fleet.build_fleet`)
    net : the pandapower net (for the transformer rating of central schedules)
    spec : the `NetworkSpec` (for the profiles of the day before the run, persistence forecasts)
    scenario_path : the scenario file (``storage.ev.sessions_csv`` is relative to it)

    Call `FlexibleAssets.fresh` for each further variant of the run: it shares the
    sessions, forecasts and day-ahead planner (schedules are solved once per run).
    """
    st = scenario.storage
    per_day = int(round(24.0 * 3600.0 / scenario.resolution.total_seconds()))
    n_ext = scenario.n_rounds + per_day + 1
    evs = None
    if st.ev.sessions_csv:
        csv = Path(st.ev.sessions_csv)
        if not csv.is_absolute() and scenario_path is not None:
            csv = Path(scenario_path).parent / csv
        evs = read_ev_sessions(csv, scenario, fleet, n_ext)
    elif st.ev.share > 0 or any(d.ev for d in scenario.prosumers.declared):
        evs = random_ev_sessions(scenario, fleet, n_ext)
    shiftables = shiftable_jobs(scenario, fleet, n_ext) if st.shiftable.share > 0 else None
    battery_pos = np.flatnonzero(fleet.table.battery_kwh.to_numpy(float) > 0)
    spec_ = AssetSpec(scenario=scenario, fleet=fleet, battery_pos=battery_pos, evs=evs, shiftables=shiftables,
                      n_ext=n_ext)
    for table in (evs, shiftables):
        if table is not None and not table.sessions.feasible.all():
            bad = table.sessions[~table.sessions.feasible]
            log.warning("%d %s session(s) cannot reach their energy in time (e.g. %s, needs %.1f kWh, "
                        "reaches %.1f kWh); they charge as far as they can and the shortfall is recorded",
                        len(bad), table.kind, bad.id.iloc[0], bad.required_kwh.iloc[0], bad.reachable_kwh.iloc[0])
    scheduled = st.strategy not in ("rule", "price")
    forecast_kw = None
    if scheduled or st.battery_auction.enabled:
        history = None
        if st.forecast == "persistence" and spec is not None:
            code = spec.code if spec.source == "simbench" else spec.profiles.simbench_code
            history = history_net_kw(scenario, fleet, code)
        forecast_kw = forecast_net_kw(scenario, fleet, n_ext, history)
    planner = None
    if scheduled:
        spec_ = dataclasses.replace(spec_, forecast_kw=forecast_kw, transformer_limit_kw=transformer_limit_kw(net, scenario))
        planner = DayAheadPlanner(spec_)
    if st.battery_auction.enabled:
        spec_ = dataclasses.replace(spec_, auction=AuctionDays.build(scenario, fleet, forecast_kw))
    return FlexibleAssets(spec_, planner)


def price_threshold_per_kwh(scenario: Scenario) -> float:
    """The ``price`` strategy's threshold [currency/kWh]: the scenario's, or midway between
    the feed-in tariff and the retail tariff times the batteries' round-trip efficiency.

    >>> from cosim.config.scenario import Scenario
    >>> round(price_threshold_per_kwh(Scenario(name="x", network="feeder")), 6)  # (0.08 + 0.3 * 0.95**2) / 2
    0.175375
    """
    st, m = scenario.storage, scenario.market
    if st.price_threshold_per_kwh is not None:
        return st.price_threshold_per_kwh
    eta_c, eta_d = battery_efficiencies(scenario)
    return 0.5 * (m.feed_in_price_per_kwh + m.retail_price_per_kwh * eta_c * eta_d)


class FlexibleAssets:
    """Batteries, EVs and shiftable loads of one variant, run round by round.

    Built by `build_assets`; `fresh` gives another variant the same assets at their
    initial state and the same planner.
    """

    def __init__(self, spec: AssetSpec, planner=None):
        self.spec = spec
        self.planner = planner
        sc = spec.scenario
        self.strategy = sc.storage.strategy
        self.dt_h = sc.dt_h
        self.batteries = Batteries.from_fleet(spec.fleet, sc)
        self.evs = SessionState.start(spec.evs) if spec.evs is not None else None
        self.shiftables = SessionState.start(spec.shiftables) if spec.shiftables is not None else None
        self.every = int(round(sc.storage.reschedule_every / sc.resolution))
        self.price_threshold_per_kwh = price_threshold_per_kwh(sc)
        self.shares = CapacityShares.start(spec.auction, self.n) if spec.auction is not None else None
        self.schedule = None
        self.plans: list[dict] = []
        self._last: dict = {}

    def fresh(self) -> FlexibleAssets:
        """The same assets at their initial state, sharing the sessions and the planner."""
        return FlexibleAssets(self.spec, self.planner)

    def get_state(self) -> dict:
        """Everything carried from one round to the next (picklable; for checkpoints)."""
        sessions = {name: (st.energy_kwh.copy(), st.end_kwh.copy(), st.last_row.copy())
                    for name, st in (("ev", self.evs), ("shiftable", self.shiftables)) if st is not None}
        state = {"batteries": dataclasses.replace(self.batteries, soc=self.batteries.soc.copy()),
                 "sessions": sessions, "schedule": self.schedule, "plans": list(self.plans)}
        if self.shares is not None:
            state["shares"] = copy.deepcopy(self.shares)
        return state

    def set_state(self, state: dict) -> None:
        self.batteries = state["batteries"]
        for name, (energy, end, last) in state["sessions"].items():
            st = self.evs if name == "ev" else self.shiftables
            st.energy_kwh, st.end_kwh, st.last_row = energy.copy(), end.copy(), last.copy()
        self.schedule = state["schedule"]
        self.plans = list(state["plans"])
        if self.shares is not None:
            self.shares = copy.deepcopy(state["shares"])

    @property
    def records(self) -> bool:
        """True if the fleet has any flexible asset (storage.parquet is then written)."""
        return len(self.spec.battery_pos) > 0 or self.has_sessions

    @property
    def n(self) -> int:
        return self.spec.fleet.n

    @property
    def has_sessions(self) -> bool:
        return self.evs is not None or self.shiftables is not None

    # -- each round -----------------------------------------------------------------------
    def _plan(self, t: int) -> None:
        """Solve the day-ahead schedule for rounds [t, t + 24 h) from the present state."""
        state = {
            "battery_kwh": self.batteries.energy_kwh[self.spec.battery_pos],
            "ev_kwh": self.evs.energy_kwh.copy() if self.evs is not None else np.zeros(0),
            "shiftable_kwh": self.shiftables.energy_kwh.copy() if self.shiftables is not None else np.zeros(0),
        }
        self.schedule = self.planner.plan(t, state)
        self.plans.append(self.schedule.info())

    def _scheduled(self, t: int) -> dict[str, np.ndarray] | None:
        s = self.schedule
        if s is None or not s.ok or not s.t0 <= t < s.t0 + s.n_t:
            return None
        h = t - s.t0
        return {"battery_kw": s.battery_kw[:, h], "ev_kw": s.ev_kw[:, h], "shiftable_kw": s.shiftable_kw[:, h]}

    def dispatch(self, t: int, net_kw: np.ndarray, dt_h: float,
                 price_per_kwh: float | np.ndarray | None = None) -> np.ndarray:
        """Run every flexible asset for round t; returns the power they add to each
        prosumer's net load [kW] (positive = consuming).

        Parameters
        ----------
        t : round number (from 0)
        net_kw : each prosumer's net load before flexible assets (load - PV) [kW]
        dt_h : round length [h]
        price_per_kwh : the last round's P2P price [currency/kWh], one for all or one per
            prosumer (with the network charge per kWh drawn at its bus), for the
            ``price`` strategy: batteries whose price is at or below the threshold charge
            at full power, the others run the rule; None (no P2P market, or nothing
            traded) runs the plain rule
        """
        if self.planner is not None and (self.schedule is None or t - self.schedule.t0 >= self.every):
            self._plan(t)
        plan = self._scheduled(t)
        last = {"t": t, "plan": plan}
        flex = None
        for name, state in (("ev", self.evs), ("shiftable", self.shiftables)):
            if state is None:
                continue
            act = state.open(t)
            request = plan[f"{name}_kw"] if plan is not None else state.uncontrolled_kw(act, dt_h)
            last[f"{name}_before_kwh"] = state.energy_kwh.copy()
            power, loss = state.apply(t, act, request, dt_h)
            last[name] = (act, power, loss)
            add = np.bincount(state.table.owner, weights=power, minlength=self.n)
            flex = add if flex is None else flex + add
        b = self.batteries
        before = b.energy_kwh
        last["battery_soc_before"] = b.soc.copy()
        before_batteries_kw = net_kw if flex is None else net_kw + flex
        cheap = None  # batteries that charge at full power from cheap P2P energy
        if self.strategy == "price" and price_per_kwh is not None:
            cheap = np.broadcast_to(np.asarray(price_per_kwh) <= self.price_threshold_per_kwh, (self.n,))
        if self.shares is not None:  # the battery auction (rule or price strategy only)
            battery_kw = self.shares.dispatch(t, b, before_batteries_kw, dt_h,
                                              False if cheap is None else cheap)
        elif plan is not None:
            request = np.zeros(self.n)
            request[self.spec.battery_pos] = plan["battery_kw"]
            battery_kw = b.follow(request, dt_h)
        elif cheap is not None and cheap.any():
            # the rule is follow(-net load); the cheap ones charge at full power
            battery_kw = b.follow(np.where(cheap, np.inf, -before_batteries_kw), dt_h)
        else:
            battery_kw = b.self_consume(before_batteries_kw, dt_h)
        loss = battery_kw * dt_h - (b.energy_kwh - before)
        last["battery"] = (battery_kw, loss)
        self._last = last
        return battery_kw if flex is None else flex + battery_kw

    def last_components_kw(self) -> dict[str, np.ndarray]:
        """What the last `dispatch` added to each prosumer's net load, by system [kW]
        (positive = consuming): ``battery``, ``ev`` (its chargers) and ``shiftable``; they
        add up to `dispatch`'s return value. The three-phase grid check puts each on the
        phases of its own connection."""
        last = self._last
        out = {"battery": np.array(last["battery"][0], float) if "battery" in last else np.zeros(self.n)}
        for name, state in (("ev", self.evs), ("shiftable", self.shiftables)):
            out[name] = (np.bincount(state.table.owner, weights=last[name][1], minlength=self.n)
                         if state is not None and name in last else np.zeros(self.n))
        return out

    # -- flexibility beyond the dispatch (cosim.markets.flexibility) --------------------------
    def charge_headroom_kwh(self, t: int, dt_h: float) -> np.ndarray:
        """What each prosumer's battery and EVs could still draw in round t on top of
        their dispatch, at the meter [kWh] (after `dispatch` of round t).

        A battery's headroom is what its power limit and its room before the round
        (state of charge up to ``soc_max``) leave beside the power it was dispatched at
        (a discharging battery can stop discharging and charge instead); an EV's is what
        its charger and its room leave while it is plugged in. Shiftable loads have none
        (their energy is fixed), nor do batteries whose capacity is shared by the
        battery auction or that follow a day-ahead schedule (their dispatch is not their
        owner's to change).
        """
        headroom_kw = np.zeros(self.n)
        last = self._last
        if last.get("t") != t:
            raise ValueError(f"charge_headroom_kwh({t}) expected after dispatch of round {t}, found {last.get('t')}")
        if self.shares is None and last["plan"] is None:
            most_kw = self._battery_before(last).power_range_kw(dt_h)[0]
            headroom_kw += np.maximum(most_kw - last["battery"][0], 0.0)
        if self.evs is not None:
            act, power, _ = last["ev"]
            most_kw = self._sessions_before(self.evs, last["ev_before_kwh"]).power_range_kw(act, dt_h)[0]
            headroom_kw += np.bincount(self.evs.table.owner, weights=np.maximum(most_kw - power, 0.0), minlength=self.n)
        return headroom_kw * dt_h

    def add_charge(self, t: int, extra_kwh: np.ndarray, dt_h: float) -> np.ndarray:
        """Draw `extra_kwh` more at each prosumer's meter in round t than its dispatch
        did (an accepted offer to increase import), batteries first, then the EVs in slot
        order, within `charge_headroom_kwh`; the states of charge and the round's
        storage rows follow. Returns the power added to each prosumer's net load [kW]."""
        last = self._last
        extra_kw = np.minimum(np.maximum(np.asarray(extra_kwh, float), 0.0), self.charge_headroom_kwh(t, dt_h)) / dt_h
        left_kw = extra_kw.copy()
        if self.shares is None and last["plan"] is None and left_kw.any():
            b = self._battery_before(last)
            power_kw = last["battery"][0]
            add_kw = np.minimum(left_kw, np.maximum(b.power_range_kw(dt_h)[0] - power_kw, 0.0))
            if add_kw.any():
                new_kw = b.follow(power_kw + add_kw, dt_h)
                self.batteries.soc = b.soc
                loss = new_kw * dt_h - (b.energy_kwh - self._battery_before(last).energy_kwh)
                last["battery"] = (new_kw, loss)
                left_kw -= new_kw - power_kw
        if self.evs is not None and left_kw.max(initial=0.0) > ENERGY_TOL:
            act, power, _ = last["ev"]
            state = self.evs
            most_kw = self._sessions_before(state, last["ev_before_kwh"]).power_range_kw(act, dt_h)[0]
            room_kw = np.maximum(most_kw - power, 0.0)
            owner = state.table.owner
            add_kw = np.zeros(len(owner))
            for j in np.flatnonzero(room_kw > 0):  # each owner's remainder to its slots in order
                add_kw[j] = min(left_kw[owner[j]], room_kw[j])
                left_kw[owner[j]] -= add_kw[j]
            if add_kw.any():
                state.energy_kwh = last["ev_before_kwh"].copy()
                new_power, loss = state.apply(t, act, power + add_kw, dt_h)
                last["ev"] = (act, new_power, loss)
                left_kw += np.bincount(owner, weights=add_kw - (new_power - power), minlength=self.n)
        return extra_kw - np.maximum(left_kw, 0.0)

    def _battery_before(self, last: dict) -> Batteries:
        """The batteries as they were before this round's dispatch."""
        return dataclasses.replace(self.batteries, soc=last["battery_soc_before"].copy())

    @staticmethod
    def _sessions_before(state: SessionState, energy_kwh: np.ndarray) -> SessionState:
        """`state` with the energy its slots held before this round's dispatch."""
        return dataclasses.replace(state, energy_kwh=energy_kwh.copy())

    def limits_kwh(self, t: int, load_kw: np.ndarray, pv_kw: np.ndarray, dt_h: float) -> tuple[np.ndarray, np.ndarray]:
        """Most each prosumer can deliver and absorb in round t, before dispatch [kWh]
        (what `cosim.virtual.admission.physical_limits` computes, with EVs and shiftable loads).

        Batteries: power limit and state of charge within its bounds; EVs and shiftable
        loads: the charger or appliance power while plugged in / in the window (and the
        charger's power into the house with v2g).
        """
        b = self.batteries
        with np.errstate(divide="ignore", invalid="ignore"):
            discharge_kw = np.where(b.e_kwh > 0, np.minimum(
                b.p_kw, (b.soc - b.soc_min) * b.e_kwh * b.eta_discharge / dt_h), 0.0)
            charge_kw = np.where(b.e_kwh > 0, np.minimum(
                b.p_kw, (b.soc_max - b.soc) * b.e_kwh / (b.eta_charge * dt_h)), 0.0)
        for state in (self.evs, self.shiftables):
            if state is None:
                continue
            tb = state.table
            act = tb.active[t] if t < len(tb.active) else np.full(tb.n, -1)
            plugged = act >= 0
            charge_kw = charge_kw + np.bincount(tb.owner, weights=np.where(plugged, tb.p_kw, 0.0), minlength=self.n)
            discharge_kw = discharge_kw + np.bincount(
                tb.owner, weights=np.where(plugged & tb.v2g, tb.p_kw, 0.0), minlength=self.n)
        deliver = (np.maximum(pv_kw, 0.0) + np.maximum(-load_kw, 0.0) + np.maximum(discharge_kw, 0.0)) * dt_h
        absorb = (np.maximum(load_kw, 0.0) + np.maximum(-pv_kw, 0.0) + np.maximum(charge_kw, 0.0)) * dt_h
        return deliver, absorb

    def storage_rows(self, t: int) -> pd.DataFrame:
        """Rows of storage.parquet for round t (after `dispatch` of that round), `STORAGE_COLUMNS`."""
        return pd.DataFrame(self.storage_columns(t))

    def storage_columns(self, t: int) -> dict[str, np.ndarray]:
        """`storage_rows` as one array per column of `STORAGE_COLUMNS` (the loop's hot
        path: the recorder makes the table once per chunk)."""
        last = self._last
        if last.get("t") != t:
            raise ValueError(f"storage_rows({t}) expected after dispatch of round {t}, found round {last.get('t')}")
        plan = last["plan"]
        ids = np.asarray(self.spec.fleet.ids, dtype=object)
        pos = self.spec.battery_pos
        b = self.batteries
        battery_kw, battery_loss = last["battery"]
        nb = len(pos)
        parts = [{
            "id": ids[pos], "asset": np.full(nb, "battery", dtype=object), "power_kw": battery_kw[pos],
            "scheduled_kw": plan["battery_kw"] if plan is not None else np.full(nb, np.nan),
            "energy_kwh": b.energy_kwh[pos], "soc": b.soc[pos], "loss_kwh": battery_loss[pos],
            "plugged": np.ones(nb, dtype=bool), "required_kwh": np.full(nb, np.nan), "shortfall_kwh": np.zeros(nb),
        }]
        for name, state in (("ev", self.evs), ("shiftable", self.shiftables)):
            if state is None:
                continue
            tb = state.table
            act, power, loss = last[name]
            plugged = act >= 0
            rows = np.maximum(act, 0)
            req = np.where(plugged, tb.sessions.required_kwh.to_numpy(float)[rows], np.nan)
            ending = plugged & (tb.sessions.end_round.to_numpy(int)[rows] == t + 1)
            shortfall = np.where(ending, np.maximum(req - state.energy_kwh, 0.0), 0.0)
            parts.append({
                "id": np.asarray(tb.ids, dtype=object), "asset": np.full(tb.n, name, dtype=object),
                "power_kw": power,
                "scheduled_kw": plan[f"{name}_kw"] if plan is not None else np.full(tb.n, np.nan),
                "energy_kwh": np.where(plugged, state.energy_kwh, np.nan),
                "soc": np.where(plugged, state.energy_kwh / tb.cap_kwh, np.nan), "loss_kwh": loss,
                "plugged": plugged, "required_kwh": req,
                "shortfall_kwh": np.where(shortfall > ENERGY_TOL, shortfall, 0.0),
            })
        if self.shares is not None:  # the winners' slices of the battery auction
            share = self.shares.share_columns()
            k = len(share["id"])
            parts.append(share | {
                "asset": np.full(k, "battery_share", dtype=object), "scheduled_kw": np.full(k, np.nan),
                "plugged": np.ones(k, dtype=bool), "required_kwh": np.full(k, np.nan), "shortfall_kwh": np.zeros(k),
            })
        n = sum(len(part["id"]) for part in parts)
        columns = {"round": np.full(n, t, dtype=np.int64)}
        for c in STORAGE_COLUMNS[1:]:
            arrays = [np.asarray(part[c]) for part in parts]
            columns[c] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0].copy()
        columns["plugged"] = columns["plugged"].astype(bool)
        for c in ("power_kw", "scheduled_kw", "energy_kwh", "soc", "loss_kwh", "required_kwh", "shortfall_kwh"):
            columns[c] = columns[c].astype(float)
        return columns

    # -- after the run ------------------------------------------------------------------
    def sessions_table(self) -> pd.DataFrame:
        """Every EV session and shiftable job of the run with its outcome.

        Adds to `SESSION_COLUMNS`: ``end_kwh`` (energy at the end, NaN if it ends after
        the run), ``shortfall_kwh`` and ``status``: ``served``, ``short`` (feasible but
        missed), ``infeasible request`` (could not be met even at full power from
        arrival; charged as far as it could), ``after run`` (ends after the last round).
        """
        parts = []
        n = self.spec.scenario.n_rounds
        for state in (self.evs, self.shiftables):
            if state is None:
                continue
            keep = state.table.sessions.start_round.to_numpy() < n  # not those after the run
            s = state.table.sessions[keep].copy()
            s["end_kwh"] = state.end_kwh[keep]
            s["shortfall_kwh"] = np.maximum(s.required_kwh - s.end_kwh, 0.0).where(s.end_round <= n, np.nan)
            s.loc[s.shortfall_kwh < ENERGY_TOL, "shortfall_kwh"] = 0.0
            status = np.where(s.end_round > n, "after run",
                              np.where(~s.feasible, "infeasible request",
                                       np.where(s.shortfall_kwh > ENERGY_TOL, "short", "served")))
            s["status"] = status
            parts.append(s)
        if not parts:
            cols = SESSION_COLUMNS + ["end_kwh", "shortfall_kwh", "status"]
            return empty_sessions().reindex(columns=cols)
        return pd.concat(parts, ignore_index=True)

    def dayahead_table(self) -> pd.DataFrame:
        """One row per day-ahead solve: round, mode, forecast, status, costs, iterations, time."""
        if not self.plans:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in PLAN_COLUMNS})
        return pd.DataFrame(self.plans)[PLAN_COLUMNS]

    def rent_due(self, t: int) -> np.ndarray | None:
        """Each prosumer's battery-auction rent in round t, after `dispatch` of round t
        [currency, positive = pays; one entry per fleet prosumer, in fleet order]: the
        day's auction payments in its first round (winners pay, owners receive, summing
        to zero), zeros in the other rounds; None without ``storage.battery_auction``."""
        return self.shares.rent_due(t) if self.shares is not None else None

    def battery_auction_table(self) -> pd.DataFrame | None:
        """Every day's battery auction, one row per party
        (`cosim.flex.capacity_sharing.AUCTION_COLUMNS`); None without ``storage.battery_auction``."""
        return self.shares.table() if self.shares is not None else None

    def summary(self) -> dict:
        """Key figures of the flexible assets for summary.json."""
        sessions = self.sessions_table()
        ev = sessions[sessions.asset == "ev"]
        done = ev[ev.status != "after run"]
        out = {
            "strategy": self.strategy,
            "forecast": self.spec.scenario.storage.forecast,
            "batteries": int(len(self.spec.battery_pos)),
            "evs": int(self.evs.table.n) if self.evs is not None else 0,
            "shiftable_loads": int(self.shiftables.table.n) if self.shiftables is not None else 0,
            "ev_sessions_ended": int(len(done)),
            "ev_sessions_served": int((done.status == "served").sum()),
            "ev_infeasible_requests": int((done.status == "infeasible request").sum()),
            "ev_shortfall_kwh": float(done.shortfall_kwh.sum()),
        }
        if self.plans:
            plans = self.dayahead_table()
            out["dayahead_solves"] = int(len(plans))
            out["dayahead_failed"] = int((plans.status != "ok").sum())
            out["dayahead_iterations_max"] = int(plans.iterations.max())
        if self.shares is not None:
            out.update(auction_figures(self.battery_auction_table()))
        return out
