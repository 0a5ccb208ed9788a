"""Flexible assets of the fleet: home batteries, electric vehicles, shiftable loads.

One `FlexibleAssets` object per simulated variant runs them round by round and tracks
their state of charge. Each round `FlexibleAssets.dispatch` takes the prosumers' net load
before any flexible asset and returns the power the assets add to it (positive when
consuming, pandapower's load convention) -- the same contract as the rule-based
`Batteries.self_consume`, which it still is when the scenario has no EVs, no shiftable
loads and ``storage.strategy: rule``.

Assets
------
- **Batteries** (`cosim.physical.fleet.Batteries`): kWh capacity, kW limit, charge and
  discharge efficiency, state-of-charge bounds.
- **EVs** and **shiftable loads** are *session assets* (`SessionTable`): each must reach
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
auction of `cosim.flex.battery_auction` (its docstring, *In runs*, gives the design): the
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
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.config.errors import InputError
from cosim.config.scenario import PROFILE_END, PROFILE_START, Scenario
from cosim.flex.battery_auction import AuctionDays, CapacityShares
from cosim.physical.fleet import Batteries, Fleet

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
#: Columns of the session tables (EV charging sessions and shiftable jobs).
SESSION_COLUMNS = [
    "asset", "id", "slot", "arrival", "departure", "start_round", "end_round", "arrival_kwh",
    "required_kwh", "reachable_kwh", "feasible",
]
#: Columns a sessions CSV must have (``battery_kwh`` and ``charger_kw`` are optional).
CSV_COLUMNS = ["id", "arrival", "departure", "arrival_kwh", "required_kwh"]
#: Energies closer than this are equal [kWh].
ENERGY_TOL = 1e-6


# ------------------------------------------------------------------------- static data


@dataclass(frozen=True)
class SessionTable:
    """EVs or shiftable loads of a run: one slot per asset, its sessions, who is active when.

    Attributes
    ----------
    kind : ``ev`` or ``shiftable``
    owner : position of each slot's prosumer in the fleet
    ids : the owners' prosumer ids
    cap_kwh, p_kw : capacity [kWh] and charger / appliance power limit [kW] per slot
    eta_c, eta_d : charge and discharge efficiency per slot [0..1]
    v2g : whether the slot may discharge into the house
    sessions : one row per session, `SESSION_COLUMNS`; rounds count from the run's
        first round, ``end_round`` exclusive (the asset is gone from ``end_round`` on); a
        session already under way at the run's start has, as ``arrival_kwh``, the energy
        full-power charging since its arrival would have given it by then
    active : [rounds x slots] row of `sessions` active in each round, -1 if none; covers
        the run and one day beyond it (the last schedule's horizon)
    """

    kind: str
    owner: np.ndarray
    ids: list[str]
    cap_kwh: np.ndarray
    p_kw: np.ndarray
    eta_c: np.ndarray
    eta_d: np.ndarray
    v2g: np.ndarray
    sessions: pd.DataFrame
    active: np.ndarray

    @property
    def n(self) -> int:
        return len(self.owner)

    @classmethod
    def build(cls, kind: str, owner: np.ndarray, ids: list[str], cap_kwh, p_kw, eta_c, eta_d, v2g,
              sessions: pd.DataFrame, n_ext: int, dt_h: float) -> SessionTable:
        """Check the sessions, add ``reachable_kwh`` and ``feasible``, index who is active when."""
        s = len(owner)
        sessions = sessions.sort_values(["slot", "start_round"], kind="stable").reset_index(drop=True)
        start = sessions.start_round.to_numpy(int)
        # a session under way when the run starts has charged since its arrival (at full
        # power until it held what it needs): it enters the run with that energy
        before = np.maximum(-start, 0)
        slot0 = sessions.slot.to_numpy(int)
        arrival = sessions.arrival_kwh.to_numpy(float)
        gained = np.minimum(np.maximum(sessions.required_kwh.to_numpy(float) - arrival, 0.0),
                            np.asarray(eta_c, float)[slot0] * np.asarray(p_kw, float)[slot0] * dt_h * before)
        sessions["arrival_kwh"] = np.minimum(arrival + gained, np.asarray(cap_kwh, float)[slot0])
        end = sessions.end_round.to_numpy(int)
        slot = sessions.slot.to_numpy(int)
        eff_rounds = np.minimum(end, n_ext) - np.maximum(start, 0)
        cap = np.asarray(cap_kwh, float)[slot]
        reach = np.minimum(cap, sessions.arrival_kwh.to_numpy(float)
                           + np.asarray(eta_c, float)[slot] * np.asarray(p_kw, float)[slot] * dt_h * eff_rounds)
        sessions["reachable_kwh"] = reach
        sessions["feasible"] = reach >= sessions.required_kwh.to_numpy(float) - ENERGY_TOL
        active = np.full((n_ext, s), -1, dtype=np.int64)
        for i in range(len(sessions)):
            a, b = max(start[i], 0), min(end[i], n_ext)
            if b > a:
                active[a:b, slot[i]] = i
        return cls(kind, np.asarray(owner, int), list(ids), np.asarray(cap_kwh, float), np.asarray(p_kw, float),
                   np.asarray(eta_c, float), np.asarray(eta_d, float), np.asarray(v2g, bool),
                   sessions[SESSION_COLUMNS], active)

    def horizon(self, t0: int, n_t: int, energy_kwh: np.ndarray, dt_h: float) -> dict[str, np.ndarray]:
        """What a schedule of rounds [t0, t0 + n_t) needs to know, per slot and round.

        ``energy_kwh`` is each slot's energy at the start of round t0 (used for sessions
        already in progress). Returns [slots x n_t] arrays: ``plugged``; ``link`` (1 where
        the round continues the session of the round before); ``start_kwh`` (energy
        at the start of a round that opens a session, else 0); ``required_kwh`` (energy
        needed at the end of the round, -inf where nothing is due). A session that ends
        after the horizon must hold, at its end, what full power could not add later.
        """
        act = self.active[t0 : t0 + n_t].T  # slots x n_t
        if act.shape[1] < n_t:  # beyond the precomputed range nothing is plugged in
            act = np.hstack([act, np.full((self.n, n_t - act.shape[1]), -1)])
        plugged = act >= 0
        before = self.active[t0 - 1] if t0 > 0 else np.full(self.n, -1)
        prev = np.hstack([before[:, None], act[:, :-1]])
        cont = plugged & (act == prev)
        rows = np.where(plugged, act, 0)
        arr = self.sessions.arrival_kwh.to_numpy(float)[rows]
        start_kwh = np.where(plugged & ~cont, arr, 0.0)
        start_kwh[:, 0] = np.where(cont[:, 0], energy_kwh, start_kwh[:, 0])
        link = cont.astype(float)
        link[:, 0] = 0.0
        end = self.sessions.end_round.to_numpy(int)[rows]
        req = self.sessions.required_kwh.to_numpy(float)[rows]
        absolute = t0 + np.arange(n_t)[None, :]
        due = plugged & (end - 1 == absolute)
        required = np.where(due, np.minimum(req, self.cap_kwh[:, None]), -np.inf)
        # sessions running past the horizon: what they must hold at its end
        last = plugged[:, -1] & (end[:, -1] > t0 + n_t)
        later_kwh = self.eta_c * self.p_kw * dt_h * (end[:, -1] - (t0 + n_t))
        need = np.minimum(req[:, -1], self.cap_kwh) - later_kwh
        required[:, -1] = np.where(last & (need > 0), need, required[:, -1])
        return {"plugged": plugged, "link": link, "start_kwh": start_kwh, "required_kwh": required}


def _empty_sessions() -> pd.DataFrame:
    return pd.DataFrame({
        "asset": pd.Series(dtype=object), "id": pd.Series(dtype=object), "slot": pd.Series(dtype="int64"),
        "arrival": pd.Series(dtype="datetime64[ns]"), "departure": pd.Series(dtype="datetime64[ns]"),
        "start_round": pd.Series(dtype="int64"), "end_round": pd.Series(dtype="int64"),
        "arrival_kwh": pd.Series(dtype=float), "required_kwh": pd.Series(dtype=float),
    })


def _pick(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Positions of exactly round(share * n) prosumers, chosen at random, sorted."""
    return np.sort(rng.permutation(n)[: int(round(share * n))])


def _run_days(scenario: Scenario, n_ext: int) -> pd.DatetimeIndex:
    """Calendar days from the day before the run to the last day of the extended range."""
    first = pd.Timestamp(scenario.start).normalize() - pd.Timedelta(days=1)
    last = pd.Timestamp(scenario.start) + n_ext * pd.Timedelta(scenario.resolution)
    return pd.date_range(first, last.normalize(), freq="1D")


def _to_round(times: np.ndarray, start: pd.Timestamp, res: pd.Timedelta) -> np.ndarray:
    """First round that starts at or after each time."""
    x = (pd.DatetimeIndex(times) - start) / res
    return np.ceil(np.asarray(x, float) - 1e-9).astype(np.int64)


def random_ev_sessions(scenario: Scenario, fleet: Fleet, n_ext: int) -> SessionTable | None:
    """Seeded EVs: ``storage.ev.share`` of the prosumers, one charging session a night."""
    ev = scenario.storage.ev
    rng = np.random.default_rng([scenario.seed, 6, 1])
    owner = _pick(rng, fleet.n, ev.share)
    if not len(owner):
        return None
    start = pd.Timestamp(scenario.start)
    res = pd.Timedelta(scenario.resolution)
    days = _run_days(scenario, n_ext)
    cap = ev.battery_kwh
    rows = []
    for slot in range(len(owner)):
        prev_dep = None
        for day in days:
            arr = day + pd.Timedelta(hours=ev.arrival_h + rng.normal(0.0, ev.time_sd_h))
            dep_day = day + pd.Timedelta(days=1) if ev.departure_h <= ev.arrival_h else day
            dep = dep_day + pd.Timedelta(hours=ev.departure_h + rng.normal(0.0, ev.time_sd_h))
            km = max(rng.normal(ev.daily_km_mean, ev.daily_km_sd), 0.0)
            if prev_dep is not None and arr < prev_dep + res:
                arr = prev_dep + res
            if dep < arr + res:
                dep = arr + res
            prev_dep = dep
            required = ev.departure_soc * cap
            rows.append((slot, arr, dep, float(np.clip(required - km * ev.kwh_per_km, 0.0, cap)), required))
    table = pd.DataFrame(rows, columns=["slot", "arrival", "departure", "arrival_kwh", "required_kwh"])
    table["start_round"] = _to_round(table.arrival.to_numpy(), start, res)
    table["end_round"] = _to_round(table.departure.to_numpy(), start, res)
    keep = (table.end_round > table.start_round) & (table.end_round > 0) & (table.start_round < n_ext)
    table = table[keep].reset_index(drop=True)
    ids = [fleet.ids[i] for i in owner]
    table["asset"] = "ev"
    table["id"] = [ids[s] for s in table.slot]
    n = len(owner)
    return SessionTable.build("ev", owner, ids, np.full(n, cap), np.full(n, ev.charger_kw),
                              np.full(n, ev.charge_efficiency), np.full(n, ev.discharge_efficiency),
                              np.full(n, ev.v2g), table, n_ext, scenario.dt_h)


def read_ev_sessions(path: str | Path, scenario: Scenario, fleet: Fleet, n_ext: int) -> SessionTable | None:
    """EV charging sessions from a CSV (see `CSV_COLUMNS`); one EV per prosumer id.

    Every problem of the file is collected into one `InputError` naming the file.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(path, ["storage.ev.sessions_csv: file not found"]) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, [f"expected a CSV of EV sessions, found unreadable text ({err})"]) from None
    problems = []
    missing = [c for c in CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(path, [f"expected columns {', '.join(CSV_COLUMNS)}; missing {', '.join(missing)}"])
    unknown = [c for c in raw.columns if c not in CSV_COLUMNS + ["battery_kwh", "charger_kw"]]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)} (typo?)")
    ev = scenario.storage.ev
    raw = raw.copy()
    raw["id"] = raw["id"].astype(str)
    bad_ids = sorted(set(raw.id) - set(fleet.ids))
    if bad_ids:
        problems.append(f"id: expected prosumer ids of the fleet (e.g. {fleet.ids[0]}), found {bad_ids[:5]}")
    for col in ("arrival", "departure"):
        parsed = pd.to_datetime(raw[col], errors="coerce")
        if parsed.isna().any():
            rows = list(np.flatnonzero(parsed.isna().to_numpy()) + 2)[:5]
            problems.append(f"{col}: expected times such as 2016-07-21 18:00, found unreadable values in rows {rows}")
        raw[col] = parsed
    for col in ("arrival_kwh", "required_kwh", "battery_kwh", "charger_kw"):
        if col not in raw.columns:
            continue
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = values.isna() | (values < 0) | ((values <= 0) & (col in ("battery_kwh", "charger_kw")))
        if bad.any():
            rows = list(np.flatnonzero(bad.to_numpy()) + 2)[:5]
            problems.append(f"{col}: expected numbers >= 0 (> 0 for capacities), found bad values in rows {rows}")
        raw[col] = values
    if not problems:
        late = raw.departure <= raw.arrival
        if late.any():
            problems.append(f"departure: expected after arrival, found otherwise in rows {list(np.flatnonzero(late) + 2)[:5]}")
        cap = raw["battery_kwh"] if "battery_kwh" in raw.columns else pd.Series(ev.battery_kwh, index=raw.index)
        over = raw.arrival_kwh > cap + ENERGY_TOL
        if over.any():
            problems.append(f"arrival_kwh: expected at most the battery's kWh, found more in rows {list(np.flatnonzero(over) + 2)[:5]}")
        ordered = raw.sort_values(["id", "arrival"])
        overlap = ordered.groupby("id").apply(
            lambda g: bool((g.arrival.to_numpy()[1:] < g.departure.to_numpy()[:-1]).any()), include_groups=False)
        if overlap.any():
            problems.append(f"sessions of one EV overlap for id(s) {list(overlap[overlap].index)[:5]}")
    if problems:
        raise InputError(path, problems)
    if raw.empty:
        return None
    ids = sorted(raw.id.unique(), key=fleet.ids.index)
    slot_of = {i: k for k, i in enumerate(ids)}
    first = raw.groupby("id").first()
    cap = np.array([first.battery_kwh[i] if "battery_kwh" in raw.columns else ev.battery_kwh for i in ids], float)
    p = np.array([first.charger_kw[i] if "charger_kw" in raw.columns else ev.charger_kw for i in ids], float)
    start = pd.Timestamp(scenario.start)
    res = pd.Timedelta(scenario.resolution)
    table = pd.DataFrame({
        "slot": raw.id.map(slot_of).to_numpy(int), "arrival": raw.arrival, "departure": raw.departure,
        "arrival_kwh": raw.arrival_kwh.astype(float), "required_kwh": raw.required_kwh.astype(float),
    })
    table["start_round"] = _to_round(table.arrival.to_numpy(), start, res)
    table["end_round"] = _to_round(table.departure.to_numpy(), start, res)
    table = table[(table.end_round > table.start_round) & (table.end_round > 0) & (table.start_round < n_ext)]
    table = table.reset_index(drop=True)
    table["asset"] = "ev"
    table["id"] = [ids[s] for s in table.slot]
    owner = np.array([fleet.ids.index(i) for i in ids])
    n = len(ids)
    return SessionTable.build("ev", owner, ids, cap, p, np.full(n, ev.charge_efficiency),
                              np.full(n, ev.discharge_efficiency), np.full(n, ev.v2g), table, n_ext, scenario.dt_h)


def shiftable_jobs(scenario: Scenario, fleet: Fleet, n_ext: int) -> SessionTable | None:
    """Seeded shiftable loads: ``storage.shiftable.share`` of the prosumers, one job a day
    in the rounds that lie wholly inside the window (windows that open before the run
    are left out)."""
    sh = scenario.storage.shiftable
    rng = np.random.default_rng([scenario.seed, 6, 2])
    owner = _pick(rng, fleet.n, sh.share)
    if not len(owner):
        return None
    start = pd.Timestamp(scenario.start)
    res = pd.Timedelta(scenario.resolution)
    rows = []
    for day in _run_days(scenario, n_ext):
        ws = day + pd.Timedelta(hours=sh.window_start_h)
        we = day + pd.Timedelta(hours=sh.window_end_h)
        a = int(np.ceil((ws - start) / res - 1e-9))
        b = int(np.floor((we - start) / res + 1e-9))
        if a < 0 or b > n_ext or b <= a:
            continue
        for slot in range(len(owner)):
            rows.append((slot, ws, we, a, b))
    table = pd.DataFrame(rows, columns=["slot", "arrival", "departure", "start_round", "end_round"])
    table["arrival_kwh"] = 0.0
    table["required_kwh"] = sh.energy_kwh
    ids = [fleet.ids[i] for i in owner]
    table["asset"] = "shiftable"
    table["id"] = [ids[s] for s in table.slot]
    n = len(owner)
    ones = np.ones(n)
    return SessionTable.build("shiftable", owner, ids, ones * sh.energy_kwh, ones * sh.power_kw, ones, ones,
                              np.zeros(n, bool), table, n_ext, scenario.dt_h)


def history_net_kw(scenario: Scenario, fleet: Fleet, profile_code: str) -> np.ndarray:
    """Net load (load - PV) of every prosumer in the 24 h before the run [rounds x prosumers].

    Cut from the same SimBench profiles as the fleet; a run that starts on 2016-01-01
    takes the last day of 2016 instead (the profiles cover 2016 only).
    """
    from cosim.physical.profiles import profile_tables, slice_profile

    day = dt.timedelta(days=1)
    start = scenario.start - day
    if start < PROFILE_START:
        start = PROFILE_END - day
    tables = profile_tables(profile_code)
    cut = {name: slice_profile(df, start, day, scenario.resolution) for name, df in tables.items()}
    t = fleet.table
    load = cut["load_p"][t.profile.tolist()].to_numpy() * t.p_ref_kw.to_numpy() * scenario.prosumers.load_scale
    pv = cut["pv"][t.pv_profile.tolist()].to_numpy() * t.pv_kwp.to_numpy()
    return load - pv


def forecast_net_kw(scenario: Scenario, fleet: Fleet, n_ext: int, history: np.ndarray | None) -> np.ndarray:
    """The forecast of every prosumer's net load (before flexible assets) the schedules see
    [rounds x prosumers], for the run and one day beyond it.

    ``perfect``: the real net load. ``persistence``: the net load 24 h earlier (before the
    run: `history_net_kw`). Beyond the run's end both repeat the last day.
    """
    per_day = int(round(24.0 / scenario.dt_h))
    actual = fleet.load_kw - fleet.pv_kw
    n = len(actual)
    if history is None:
        history = actual[:per_day] if n >= per_day else np.resize(actual, (per_day, actual.shape[1]))
    series = np.vstack([history[-per_day:], actual])  # series[k] is round k - per_day
    while len(series) < per_day + n_ext:
        series = np.vstack([series, series[-per_day:]])
    if scenario.storage.forecast == "perfect":
        return series[per_day : per_day + n_ext]
    return series[:n_ext]


@dataclass(frozen=True)
class AssetSpec:
    """Everything about a run's flexible assets that does not change while it runs."""

    scenario: Scenario
    fleet: Fleet
    battery_pos: np.ndarray
    """Fleet positions of prosumers with a battery."""
    evs: SessionTable | None
    shiftables: SessionTable | None
    n_ext: int
    """Rounds covered: the run and one day beyond."""
    forecast_kw: np.ndarray | None = None
    """Forecast net load before flexible assets [rounds x prosumers] (scheduled strategies)."""
    transformer_limit_kw: float | None = None
    auction: AuctionDays | None = None
    """The battery auction's days (``storage.battery_auction.enabled``)."""


def transformer_limit_kw(net, scenario: Scenario) -> float | None:
    """Community import/export limit for schedules: ``storage.transformer_limit_kw``; or,
    islanded, the grid-forming unit's kW; or the MV/LV transformers' rating times
    ``feedback.max_loading_pct`` [kW at unity power factor]."""
    if scenario.storage.transformer_limit_kw is not None:
        return float(scenario.storage.transformer_limit_kw)
    if scenario.mode == "islanded":
        return float(scenario.islanded.p_kw)
    if net is None or not len(net.trafo):
        return None
    return float(net.trafo.sn_mva.sum()) * 1000.0 * scenario.feedback.max_loading_pct / 100.0


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
    elif st.ev.share > 0:
        evs = random_ev_sessions(scenario, fleet, n_ext)
    shiftables = shiftable_jobs(scenario, fleet, n_ext) if st.shiftable.share > 0 else None
    battery_pos = np.flatnonzero(fleet.table.battery_kwh.to_numpy(float) > 0)
    spec_ = AssetSpec(scenario, fleet, battery_pos, evs, shiftables, n_ext)
    for table in (evs, shiftables):
        if table is not None and not table.sessions.feasible.all():
            bad = table.sessions[~table.sessions.feasible]
            log.warning("%d %s session(s) cannot reach their energy in time (e.g. %s, needs %.1f kWh, "
                        "reaches %.1f kWh); they charge as far as they can and the shortfall is recorded",
                        len(bad), table.kind, bad.id.iloc[0], bad.required_kwh.iloc[0], bad.reachable_kwh.iloc[0])
    planner = None
    if st.strategy not in ("rule", "price"):
        from cosim.flex.dayahead import DayAheadPlanner

        history = None
        if st.forecast == "persistence" and spec is not None:
            code = spec.code if spec.source == "simbench" else spec.profiles.simbench_code
            history = history_net_kw(scenario, fleet, code)
        spec_ = dataclasses.replace(spec_, forecast_kw=forecast_net_kw(scenario, fleet, n_ext, history),
                                    transformer_limit_kw=transformer_limit_kw(net, scenario))
        planner = DayAheadPlanner(spec_)
    if st.battery_auction.enabled:
        history = None
        if st.forecast == "persistence" and spec is not None:
            code = spec.code if spec.source == "simbench" else spec.profiles.simbench_code
            history = history_net_kw(scenario, fleet, code)
        spec_ = dataclasses.replace(
            spec_, auction=AuctionDays.build(scenario, fleet, forecast_net_kw(scenario, fleet, n_ext, history)))
    return FlexibleAssets(spec_, planner)


# --------------------------------------------------------------------------- run state


@dataclass
class _SessionState:
    table: SessionTable
    energy_kwh: np.ndarray
    end_kwh: np.ndarray
    """Energy of each session at its end (NaN until then) [kWh]."""
    last_row: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @classmethod
    def start(cls, table: SessionTable) -> _SessionState:
        return cls(table, np.zeros(table.n), np.full(len(table.sessions), np.nan), np.full(table.n, -1))

    def open(self, t: int) -> np.ndarray:
        """Session of each slot in round t (-1: none); an arriving session takes its energy."""
        act = self.table.active[t] if t < len(self.table.active) else np.full(self.table.n, -1)
        new = (act >= 0) & (act != self.last_row)
        if new.any():
            self.energy_kwh[new] = self.table.sessions.arrival_kwh.to_numpy(float)[act[new]]
        self.last_row = act
        return act

    def power_range_kw(self, act: np.ndarray, dt_h: float) -> tuple[np.ndarray, np.ndarray]:
        """(most each slot can draw, most it can deliver) this round [kW]."""
        tb = self.table
        plugged = act >= 0
        room = np.maximum(tb.cap_kwh - self.energy_kwh, 0.0) / (tb.eta_c * dt_h)
        avail = np.maximum(self.energy_kwh, 0.0) * tb.eta_d / dt_h
        charge = np.where(plugged, np.minimum(tb.p_kw, room), 0.0)
        discharge = np.where(plugged & tb.v2g, np.minimum(tb.p_kw, avail), 0.0)
        return charge, discharge

    def uncontrolled_kw(self, act: np.ndarray, dt_h: float) -> np.ndarray:
        """Full power until the session holds its required energy."""
        tb = self.table
        req = np.where(act >= 0, tb.sessions.required_kwh.to_numpy(float)[np.maximum(act, 0)], 0.0)
        missing = np.maximum(np.minimum(req, tb.cap_kwh) - self.energy_kwh, 0.0)
        return np.where(act >= 0, np.minimum(tb.p_kw, missing / (tb.eta_c * dt_h)), 0.0)

    def apply(self, t: int, act: np.ndarray, request_kw: np.ndarray, dt_h: float) -> tuple[np.ndarray, np.ndarray]:
        """Run each slot at the requested power as far as it can; returns (power [kW], loss [kWh])."""
        tb = self.table
        most_c, most_d = self.power_range_kw(act, dt_h)
        charge = np.minimum(np.maximum(request_kw, 0.0), most_c)
        discharge = np.minimum(np.maximum(-request_kw, 0.0), most_d)
        self.energy_kwh = np.clip(self.energy_kwh + (charge * tb.eta_c - discharge / tb.eta_d) * dt_h,
                                  0.0, tb.cap_kwh)
        loss = (charge * (1.0 - tb.eta_c) + discharge * (1.0 / tb.eta_d - 1.0)) * dt_h
        ending = (act >= 0) & (tb.sessions.end_round.to_numpy(int)[np.maximum(act, 0)] == t + 1)
        self.end_kwh[act[ending]] = self.energy_kwh[ending]
        return charge - discharge, loss


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
    eta_c = st.battery_charge_efficiency or scenario.prosumers.battery_efficiency
    eta_d = st.battery_discharge_efficiency or scenario.prosumers.battery_efficiency
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
        self.evs = _SessionState.start(spec.evs) if spec.evs is not None else None
        self.shiftables = _SessionState.start(spec.shiftables) if spec.shiftables is not None else None
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

    def dispatch(self, t: int, net_kw: np.ndarray, dt_h: float, price_per_kwh: float | None = None) -> np.ndarray:
        """Run every flexible asset for round t; returns the power they add to each
        prosumer's net load [kW] (positive = consuming).

        Parameters
        ----------
        t : round number (from 0)
        net_kw : each prosumer's net load before flexible assets (load - PV) [kW]
        dt_h : round length [h]
        price_per_kwh : the last round's P2P price [currency/kWh], for the ``price``
            strategy; None (no P2P market, or nothing traded) runs the plain rule
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
            power, loss = state.apply(t, act, request, dt_h)
            last[name] = (act, power, loss)
            add = np.bincount(state.table.owner, weights=power, minlength=self.n)
            flex = add if flex is None else flex + add
        b = self.batteries
        before = b.energy_kwh
        if self.shares is not None:  # the battery auction (rule or price strategy only)
            cheap = (self.strategy == "price" and price_per_kwh is not None
                     and price_per_kwh <= self.price_threshold_per_kwh)
            battery_kw = self.shares.dispatch(t, b, net_kw if flex is None else net_kw + flex, dt_h, cheap)
        elif plan is not None:
            request = np.zeros(self.n)
            request[self.spec.battery_pos] = plan["battery_kw"]
            battery_kw = b.follow(request, dt_h)
        elif self.strategy == "price" and price_per_kwh is not None and price_per_kwh <= self.price_threshold_per_kwh:
            battery_kw = b.follow(np.full(self.n, np.inf), dt_h)  # cheap P2P energy: charge at full power
        else:
            battery_kw = b.self_consume(net_kw if flex is None else net_kw + flex, dt_h)
        loss = battery_kw * dt_h - (b.energy_kwh - before)
        last["battery"] = (battery_kw, loss)
        self._last = last
        return battery_kw if flex is None else flex + battery_kw

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

    def parts_kw(self) -> dict[str, np.ndarray]:
        """Last round's power per prosumer and kind of asset [kW]: battery, ev, shiftable."""
        last = self._last
        out = {"battery": last["battery"][0]}
        for name, state in (("ev", self.evs), ("shiftable", self.shiftables)):
            power = last[name][1] if name in last else np.zeros(0)
            owner = state.table.owner if state is not None else np.zeros(0, int)
            out[name] = np.bincount(owner, weights=power, minlength=self.n)
        return out

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
            return _empty_sessions().reindex(columns=cols)
        return pd.concat(parts, ignore_index=True)

    def dayahead_table(self) -> pd.DataFrame:
        """One row per day-ahead solve: round, mode, forecast, status, costs, iterations, time."""
        from cosim.flex.dayahead import PLAN_COLUMNS

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
        (`cosim.flex.battery_auction.AUCTION_COLUMNS`); None without ``storage.battery_auction``."""
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


def summarize_storage(folder: str | Path, scenario: Scenario | None = None) -> dict | None:
    """Key figures of a run's flexible assets from its files (storage.parquet,
    sessions.parquet, dayahead.parquet), for summary.json; None without storage.parquet.

    Energies [kWh]: ``battery_charged_kwh``/``battery_discharged_kwh`` (grid side),
    ``storage_losses_kwh`` (all assets), ``ev_charged_kwh``, ``ev_discharged_kwh`` (v2g),
    ``shiftable_kwh``, ``ev_shortfall_kwh``; counts of EV sessions ended, served, and
    infeasible requests; day-ahead solves, failures, the most iterations of a
    distributed schedule and its largest certified gap; with battery_auction.parquet, the
    auction's figures (`auction_figures`); with the scenario, its ``strategy`` and
    ``forecast``.
    """
    folder = Path(folder)
    path = folder / "storage.parquet"
    if not path.is_file():
        return None
    rows = pd.read_parquet(path, columns=["round", "asset", "power_kw", "loss_kwh"])
    dt_h = None
    rounds = folder / "rounds.parquet"
    if rounds.is_file():
        t = pd.read_parquet(rounds, columns=["time"]).time
        if len(t) > 1:
            dt_h = float(pd.to_datetime(t).diff().median() / pd.Timedelta(hours=1))
    dt_h = dt_h or 0.25

    def energy(asset: str, sign: int) -> float:
        p = rows.power_kw[rows.asset == asset]
        return float(np.maximum(sign * p, 0.0).sum() * dt_h)

    out = {"strategy": scenario.storage.strategy, "forecast": scenario.storage.forecast} if scenario else {}
    out |= {
        "battery_charged_kwh": energy("battery", 1), "battery_discharged_kwh": energy("battery", -1),
        "ev_charged_kwh": energy("ev", 1), "ev_discharged_kwh": energy("ev", -1),
        "shiftable_kwh": energy("shiftable", 1), "storage_losses_kwh": float(rows.loss_kwh.sum()),
    }
    sessions = folder / "sessions.parquet"
    if sessions.is_file():
        s = pd.read_parquet(sessions)
        ev = s[(s.asset == "ev") & (s.status != "after run")]
        out.update({"ev_sessions_ended": int(len(ev)), "ev_sessions_served": int((ev.status == "served").sum()),
                    "ev_infeasible_requests": int((ev.status == "infeasible request").sum()),
                    "ev_shortfall_kwh": float(ev.shortfall_kwh.sum())})
    plans = folder / "dayahead.parquet"
    if plans.is_file():
        d = pd.read_parquet(plans)
        if len(d):
            out.update({"dayahead_solves": int(len(d)), "dayahead_failed": int((d.status != "ok").sum()),
                        "dayahead_iterations_max": int(d.iterations.max()),
                        "dayahead_bound_gap_max": float(d.bound_gap.max())})
    auction = folder / "battery_auction.parquet"
    if auction.is_file():
        out.update(auction_figures(pd.read_parquet(auction)))
    return out


def auction_figures(days: pd.DataFrame) -> dict:
    """Key figures of a run's battery auction (`cosim.flex.battery_auction.AUCTION_COLUMNS`):
    ``battery_auction_days``, capacity shared summed over the days ``battery_shared_kwh``
    [kWh], rent paid ``battery_rent`` [currency], ``battery_auction_winners`` and
    ``battery_auction_sharing_owners`` (households that won or shared on any day)."""
    won = (days.role == "facility") & (days.quantity_kwh > 0)
    shared = (days.role == "owner") & (days.quantity_kwh > 0)
    return {"battery_auction_days": int(days.day.nunique()), "battery_shared_kwh": float(days.quantity_kwh[shared].sum()),
            "battery_rent": float(days.payment[won].sum()), "battery_auction_winners": int(days.id[won].nunique()),
            "battery_auction_sharing_owners": int(days.id[shared].nunique())}


def flexible_consumption_kwh(folder: str | Path, dt_h: float) -> float:
    """Energy EVs (net of vehicle-to-grid) and shiftable loads drew in a run, from its
    storage.parquet (0 without it) [kWh]: consumption on top of the SimBench load profiles,
    which self-sufficiency must count."""
    path = Path(folder) / "storage.parquet"
    if not path.is_file():
        return 0.0
    rows = pd.read_parquet(path, columns=["asset", "power_kw"])
    return float(rows.power_kw[rows.asset.isin(["ev", "shiftable"])].sum() * dt_h)
