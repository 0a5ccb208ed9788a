"""EVs and shiftable loads as session assets: their session tables and their state in a run.

A session asset must reach an energy by a deadline. An EV session runs from arrival to
departure; it starts with ``arrival_kwh`` in the car and must end with ``required_kwh``;
the charger draws at most ``p_kw`` (with vehicle-to-grid it may also deliver that much).
A shiftable load is a session with no storage losses that starts at 0 kWh and must use
``energy_kwh`` within its daily window, at any power up to ``p_kw``. A session that
cannot reach its energy even at full power from the start (``feasible`` False) is
reported, charged as far as it can be, and its shortfall recorded -- never a crash.

`SessionTable` is what is known before the run (built by `random_ev_sessions`,
`read_ev_sessions` or `shiftable_jobs`); `SessionState` tracks each slot's energy while
the run goes on. Sign convention: power positive when the asset consumes (charging).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.config.errors import InputError
from cosim.config.scenario import Scenario
from cosim.physical.fleet import Fleet

#: Columns of the session tables (EV charging sessions and shiftable jobs).
SESSION_COLUMNS = [
    "asset", "id", "slot", "arrival", "departure", "start_round", "end_round", "arrival_kwh",
    "required_kwh", "reachable_kwh", "feasible",
]
#: Columns a sessions CSV must have (``battery_kwh`` and ``charger_kw`` are optional).
CSV_COLUMNS = ["id", "arrival", "departure", "arrival_kwh", "required_kwh"]
#: Energies closer than this are equal [kWh].
ENERGY_TOL = 1e-6
#: Seed streams of the random session tables: ``[scenario.seed, *stream]``.
EV_SEED_STREAM = (6, 1)
SHIFTABLE_SEED_STREAM = (6, 2)
#: Slack when rounding a time to the round that starts at or after it [rounds].
ROUND_SLACK = 1e-9


# ------------------------------------------------------------------------- static data


@dataclass(frozen=True, kw_only=True)
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
    def build(cls, *, kind: str, owner: np.ndarray, ids: list[str], cap_kwh, p_kw, eta_c, eta_d, v2g,
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
        return cls(kind=kind, owner=np.asarray(owner, int), ids=list(ids), cap_kwh=np.asarray(cap_kwh, float),
                   p_kw=np.asarray(p_kw, float), eta_c=np.asarray(eta_c, float), eta_d=np.asarray(eta_d, float),
                   v2g=np.asarray(v2g, bool), sessions=sessions[SESSION_COLUMNS], active=active)

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


def empty_sessions() -> pd.DataFrame:
    """A session table with no rows, with the columns and types of one read or drawn."""
    return pd.DataFrame({
        "asset": pd.Series(dtype=object), "id": pd.Series(dtype=object), "slot": pd.Series(dtype="int64"),
        "arrival": pd.Series(dtype="datetime64[ns]"), "departure": pd.Series(dtype="datetime64[ns]"),
        "start_round": pd.Series(dtype="int64"), "end_round": pd.Series(dtype="int64"),
        "arrival_kwh": pd.Series(dtype=float), "required_kwh": pd.Series(dtype=float),
    })


def _seeded_owners(scenario: Scenario, fleet: Fleet, stream: tuple[int, int],
                   share: float) -> tuple[np.random.Generator, np.ndarray]:
    """The random stream of one kind of session asset and the fleet positions of exactly
    round(share * n) prosumers that have one, chosen from it at random, sorted."""
    rng = np.random.default_rng([scenario.seed, *stream])
    return rng, np.sort(rng.permutation(fleet.n)[: int(round(share * fleet.n))])


def _in_rounds(table: pd.DataFrame, start: pd.Timestamp, res: pd.Timedelta, n_ext: int) -> pd.DataFrame:
    """Add each session's first round and the round after its last (from arrival and
    departure); keep the sessions that last a round or more within rounds [0, n_ext)."""
    table["start_round"] = _to_round(table.arrival.to_numpy(), start, res)
    table["end_round"] = _to_round(table.departure.to_numpy(), start, res)
    keep = (table.end_round > table.start_round) & (table.end_round > 0) & (table.start_round < n_ext)
    return table[keep].reset_index(drop=True)


def _label(table: pd.DataFrame, kind: str, ids: list[str]) -> pd.DataFrame:
    """Name each session's asset kind and its owner's prosumer id (from its slot)."""
    table["asset"] = kind
    table["id"] = [ids[s] for s in table.slot]
    return table


def _run_days(scenario: Scenario, n_ext: int) -> pd.DatetimeIndex:
    """Calendar days from the day before the run to the last day of the extended range."""
    first = pd.Timestamp(scenario.start).normalize() - pd.Timedelta(days=1)
    last = pd.Timestamp(scenario.start) + n_ext * pd.Timedelta(scenario.resolution)
    return pd.date_range(first, last.normalize(), freq="1D")


def _to_round(times: np.ndarray, start: pd.Timestamp, res: pd.Timedelta) -> np.ndarray:
    """First round that starts at or after each time."""
    x = (pd.DatetimeIndex(times) - start) / res
    return np.ceil(np.asarray(x, float) - ROUND_SLACK).astype(np.int64)


def random_ev_sessions(scenario: Scenario, fleet: Fleet, n_ext: int) -> SessionTable | None:
    """Seeded EVs: ``storage.ev.share`` of the prosumers, and the households that declared
    one (``prosumers.declared``), one charging session a night."""
    ev = scenario.storage.ev
    rng, owner = _seeded_owners(scenario, fleet, EV_SEED_STREAM, ev.share)
    declared = [d.bus for d in scenario.prosumers.declared if d.ev]
    if declared:  # the first household at each bus, as for its declared PV and battery
        bus = fleet.table.bus.to_numpy()
        first = [int(np.flatnonzero(bus == b)[0]) for b in declared if (bus == b).any()]
        owner = np.union1d(owner, np.asarray(first, dtype=owner.dtype))
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
    ids = [fleet.ids[i] for i in owner]
    table = _label(_in_rounds(table, start, res, n_ext), "ev", ids)
    n = len(owner)
    return SessionTable.build(kind="ev", owner=owner, ids=ids, cap_kwh=np.full(n, cap), p_kw=np.full(n, ev.charger_kw),
                              eta_c=np.full(n, ev.charge_efficiency), eta_d=np.full(n, ev.discharge_efficiency),
                              v2g=np.full(n, ev.v2g), sessions=table, n_ext=n_ext, dt_h=scenario.dt_h)


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
    table = _label(_in_rounds(table, start, res, n_ext), "ev", ids)
    owner = np.array([fleet.ids.index(i) for i in ids])
    n = len(ids)
    return SessionTable.build(kind="ev", owner=owner, ids=ids, cap_kwh=cap, p_kw=p,
                              eta_c=np.full(n, ev.charge_efficiency), eta_d=np.full(n, ev.discharge_efficiency),
                              v2g=np.full(n, ev.v2g), sessions=table, n_ext=n_ext, dt_h=scenario.dt_h)


def shiftable_jobs(scenario: Scenario, fleet: Fleet, n_ext: int) -> SessionTable | None:
    """Seeded shiftable loads: ``storage.shiftable.share`` of the prosumers, one job a day
    in the rounds that lie wholly inside the window (windows that open before the run
    are left out)."""
    sh = scenario.storage.shiftable
    _, owner = _seeded_owners(scenario, fleet, SHIFTABLE_SEED_STREAM, sh.share)
    if not len(owner):
        return None
    start = pd.Timestamp(scenario.start)
    res = pd.Timedelta(scenario.resolution)
    rows = []
    for day in _run_days(scenario, n_ext):
        ws = day + pd.Timedelta(hours=sh.window_start_h)
        we = day + pd.Timedelta(hours=sh.window_end_h)
        a = int(np.ceil((ws - start) / res - ROUND_SLACK))
        b = int(np.floor((we - start) / res + ROUND_SLACK))
        if a < 0 or b > n_ext or b <= a:
            continue
        for slot in range(len(owner)):
            rows.append((slot, ws, we, a, b))
    table = pd.DataFrame(rows, columns=["slot", "arrival", "departure", "start_round", "end_round"])
    table["arrival_kwh"] = 0.0
    table["required_kwh"] = sh.energy_kwh
    ids = [fleet.ids[i] for i in owner]
    table = _label(table, "shiftable", ids)
    n = len(owner)
    ones = np.ones(n)
    return SessionTable.build(kind="shiftable", owner=owner, ids=ids, cap_kwh=ones * sh.energy_kwh,
                              p_kw=ones * sh.power_kw, eta_c=ones, eta_d=ones, v2g=np.zeros(n, bool),
                              sessions=table, n_ext=n_ext, dt_h=scenario.dt_h)


# --------------------------------------------------------------------------- run state


@dataclass
class SessionState:
    """Energy of each slot of a `SessionTable` while a run goes on [kWh], and of each
    session at its end."""

    table: SessionTable
    energy_kwh: np.ndarray
    end_kwh: np.ndarray
    """Energy of each session at its end (NaN until then) [kWh]."""
    last_row: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @classmethod
    def start(cls, table: SessionTable) -> SessionState:
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
