"""Sharing the home batteries' capacity in a run, by a daily battery auction
(`cosim.flex.battery_auction` gives the auction; this module its use in simulations).

With ``storage.battery_auction.enabled`` the home batteries' capacity is shared by the
auction each day, and `cosim.flex.assets.FlexibleAssets.dispatch` runs it (`CapacityShares`):

- *Days.* An auction day starts at the run's first round and at the first round of
  every day at ``day_start_h`` (local time); the auction is held in its first round.
  Valuations scale with the day's length (``hours`` / 24), so a shorter first or last
  day is worth less.
- *Owners* (RUs) are the households with a battery. Each offers the empty part of its
  usable capacity at the auction, e_n = soc_max E_n - (stored energy) [kWh], so that
  every share starts empty and the physical battery never holds more than it can.
- *Facilities* (SFCs) are the households with PV and no battery. Each asks for the
  capacity that an ideal battery (no power limit, the owners' efficiencies) would use
  on its forecast net load before flexible assets over the day (``storage.forecast``):
  the highest level it reaches charging from surplus and discharging into deficit from
  empty, at most the day's deficit over the discharge efficiency and at most
  ``max_demand_kwh``.
- *Valuations* (this module's assumption, seeded): a kWh of storage for a day is worth
  v = ``value_per_kwh``, by default (retail - feed-in) x eta_c x eta_d, what one
  self-consumption cycle saves. Owner n's reservation price is r_n = v f_n hours/24 and
  K_n = r_n (1 + e_n); facility m bids b_m = v g_m hours/24, with f, g ~ U(0.5, 1.5) drawn
  once per household and run (the draws of `auction_from_fleet`).
- *Allocation.* Each owner's share x_n is split among the winners in proportion to what
  they won: winner m holds a *slice* s_mn = q_m x_n / sum_n x_n of owner n's battery.
- *Operation.* The owner's own account keeps the energy range [soc_min E_n,
  soc_min E_n + U_n - x_n] (U_n = (soc_max - soc_min) E_n) and the power
  p_n (1 - x_n / U_n); the owner's strategy (``rule`` or ``price``) runs it on its own
  net load. A slice has the range [0, s_mn], the power p_n s_mn / U_n and the owner's
  efficiencies; a winner's slices together charge from the winner's surplus and
  discharge into its deficit (net load with its EVs and shiftable loads), split among
  them in proportion to what each can take or give.
- *Physics.* The energy is in the owner's battery: its stored energy is the own account
  plus the slices it hosts, always within [soc_min E_n, soc_max E_n], and its power, own
  plus hosted, is added to the *owner's* net load, so it appears at the owner's bus and
  in the owner's net position. A winner's net position is not changed by its slices:
  what its slices take from its surplus leaves its bus and crosses the network to the
  owner's; what they give back comes the other way. Each account is charged and
  discharged with the battery's efficiencies as if it were a battery of its own; when
  accounts of one battery flow in opposite directions in a round, both conversions are
  counted (a real inverter would net them), so losses are slightly over-counted.
- *Money.* The rent (the auction's payments) falls due in the day's first round
  (`FlexibleAssets.rent_due`: winners pay, owners receive, summing to zero). The energy
  itself is settled by the market like any other: since net positions are the bus
  injections, the winner sells the surplus its slices take and buys the deficit they
  cover, and the owner buys and sells the same energy for its battery. The rent thus
  buys a local counterparty for the winner's surplus and deficit, not energy kept
  behind its meter; the winner's bill, not the auction's utility (b_m - p) q_m, tells
  what it gained.
- *End of a day.* Slices expire; what is left in a winner's slices stays in the owner's
  battery and becomes the owner's (``left_kwh`` in `CapacityShares.table`), without
  payment: a share is capacity for one day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cosim.flex.batteries import battery_efficiencies
from cosim.flex.battery_auction import run_auction, valuation_factors

#: Columns of battery_auction.parquet (`CapacityShares.table`): one row per auction day
#: and party that took part in it. ``day`` counts from 0; ``round`` is the day's first
#: round (where its auction is held and its rent falls due), ``time`` its start and
#: ``hours`` its length [h]; ``role`` owner or facility; ``offered_kwh`` what the party
#: brought [kWh]: an owner the empty usable capacity it could share, a facility the
#: capacity it asked for; ``preference`` an owner's K_n [currency] (NaN for facilities);
#: ``value_per_kwh`` an owner's reservation price r_n or a facility's bid b_m
#: [currency/kWh]; ``participates`` whether the trade reduction let it take part;
#: ``quantity_kwh`` capacity shared (owner) or won (facility) [kWh]; ``price_per_kwh``
#: the day's auction price p (NaN if nothing traded) and ``interval_low_per_kwh``,
#: ``interval_high_per_kwh`` the interval [r_K, b_L] [currency/kWh]; ``payment`` the rent,
#: positive when the party pays [currency]; ``utility`` and ``utility_alone`` the party's
#: utility with the auction and without it (the module's utilities) [currency];
#: ``left_kwh`` the energy in the party's slices at the day's end (a facility's own, an
#: owner's hosted), which passes to the owner when the next day starts [kWh].
AUCTION_COLUMNS = [
    "day", "round", "time", "hours", "id", "role", "offered_kwh", "preference", "value_per_kwh", "participates",
    "quantity_kwh", "price_per_kwh", "interval_low_per_kwh", "interval_high_per_kwh", "payment", "utility",
    "utility_alone", "left_kwh",
]
#: Capacities and demands at or below this are not brought to the auction [kWh].
KWH_TOL = 1e-6


def capacity_value_per_kwh(scenario) -> float:
    """What a kWh of storage capacity is worth for a day [currency/kWh]:
    ``storage.battery_auction.value_per_kwh``, or by default what one self-consumption
    cycle of it saves, (retail - feed-in) x charge x discharge efficiency.

    >>> from cosim.config.scenario import Scenario
    >>> round(capacity_value_per_kwh(Scenario(name="x", network="feeder")), 6)  # (0.3 - 0.08) * 0.95**2
    0.19855
    """
    st, m = scenario.storage, scenario.market
    if st.battery_auction.value_per_kwh is not None:
        return float(st.battery_auction.value_per_kwh)
    eta_c, eta_d = battery_efficiencies(scenario)
    return (m.retail_price_per_kwh - m.feed_in_price_per_kwh) * eta_c * eta_d


def storage_need_kwh(net_kw: np.ndarray, dt_h: float, eta_c: float, eta_d: float) -> np.ndarray:
    """Capacity an ideal battery (no power limit) would use on each column of a net load
    [rounds x households] [kW]: the highest level it reaches, starting empty, charging
    from surplus and discharging into deficit, at most the deficit over the discharge
    efficiency [kWh].

    >>> storage_need_kwh(np.array([[-4.0], [-4.0], [2.0], [6.0]]), 1.0, 1.0, 1.0)
    array([8.])
    >>> storage_need_kwh(np.array([[-4.0], [-4.0], [2.0]]), 1.0, 1.0, 1.0)
    array([2.])
    """
    net_kw = np.atleast_2d(net_kw)
    level = np.zeros(net_kw.shape[1])
    peak = np.zeros(net_kw.shape[1])
    for row in net_kw:
        level = np.maximum(level + (eta_c * np.maximum(-row, 0.0) - np.maximum(row, 0.0) / eta_d) * dt_h, 0.0)
        peak = np.maximum(peak, level)
    return np.minimum(peak, np.maximum(net_kw, 0.0).sum(axis=0) * dt_h / eta_d)


@dataclass(frozen=True, kw_only=True)
class AuctionDays:
    """The auction days of a run and what is known of them before it starts.

    Attributes
    ----------
    starts, ends : first round of each day and the round after its last
    hours : length of each day [h]
    time : start time of each day
    ids : the fleet's prosumer ids
    owners : fleet positions of the households with a battery
    facilities : fleet positions of the households with PV and no battery
    demand_kwh : [days x facilities] capacity each facility asks for (`storage_need_kwh`
        of its forecast, at most ``max_demand_kwh``) [kWh]
    owner_value_per_kwh : [days x owners] each owner's reservation price r_n [currency/kWh]
    bid_per_kwh : [days x facilities] each facility's bid b_m [currency/kWh]
    """

    starts: np.ndarray
    ends: np.ndarray
    hours: np.ndarray
    time: pd.DatetimeIndex
    ids: list[str]
    owners: np.ndarray
    facilities: np.ndarray
    demand_kwh: np.ndarray
    owner_value_per_kwh: np.ndarray
    bid_per_kwh: np.ndarray

    @classmethod
    def build(cls, scenario, fleet, forecast_kw: np.ndarray) -> AuctionDays:
        """The days of a run (see the module docstring) from its scenario, fleet
        and the forecast of every prosumer's net load before flexible assets
        [rounds x prosumers] [kW] (`cosim.flex.forecasts.forecast_net_kw`)."""
        ba = scenario.storage.battery_auction
        n = scenario.n_rounds
        times = pd.DatetimeIndex(fleet.time[:n])
        key = (times - pd.Timedelta(hours=ba.day_start_h)).normalize()
        starts = np.r_[0, np.flatnonzero(key[1:] != key[:-1]) + 1].astype(np.int64)
        ends = np.r_[starts[1:], n].astype(np.int64)
        hours = (ends - starts) * scenario.dt_h
        t = fleet.table
        e = t.battery_kwh.to_numpy(float)
        owners = np.flatnonzero(e > 0)
        facilities = np.flatnonzero((e <= 0) & (t.pv_kwp.to_numpy(float) > 0))
        f_owner, f_facility = valuation_factors(scenario, fleet.n)
        value = capacity_value_per_kwh(scenario)
        eta_c, eta_d = battery_efficiencies(scenario)
        demand = np.array([
            np.minimum(storage_need_kwh(forecast_kw[a:b, facilities], scenario.dt_h, eta_c, eta_d), ba.max_demand_kwh)
            for a, b in zip(starts, ends, strict=True)
        ]).reshape(len(starts), len(facilities))
        scale = (hours / 24.0)[:, None] * value
        return cls(starts=starts, ends=ends, hours=hours, time=times[starts], ids=list(fleet.ids), owners=owners,
                   facilities=facilities, demand_kwh=demand, owner_value_per_kwh=scale * f_owner[owners][None, :],
                   bid_per_kwh=scale * f_facility[facilities][None, :])


@dataclass(kw_only=True)
class CapacityShares:
    """The shared capacity of the home batteries while a run goes on (one per variant).

    `hold` runs a day's auction, `dispatch` runs the owners' own accounts and the
    winners' slices each round and keeps the physical batteries (`Batteries`) the sum of
    both. Slices are indexed k: owner ``host[k]`` (fleet position), winner ``user[k]``,
    capacity ``cap_kwh[k]``, power limit ``p_kw[k]``, stored energy ``energy_kwh[k]``.
    """

    days: AuctionDays
    n: int
    day: int = -1
    shared_kwh: np.ndarray | None = None
    """Capacity each prosumer shares today (owners; zero for the others) [kWh]."""
    host: np.ndarray | None = None
    user: np.ndarray | None = None
    cap_kwh: np.ndarray | None = None
    p_kw: np.ndarray | None = None
    energy_kwh: np.ndarray | None = None
    results: list = None
    """One `AuctionResult.parties` table per day held (with the day's columns)."""
    rents: dict = None
    """Payments per prosumer, by the round they fall due in [currency]."""
    last: dict = None
    """The last round's slice powers [kW] and losses [kWh]."""

    @classmethod
    def start(cls, days: AuctionDays, n: int) -> CapacityShares:
        empty = np.zeros(0)
        return cls(days=days, n=n, day=-1, shared_kwh=np.zeros(n), host=np.zeros(0, np.int64),
                   user=np.zeros(0, np.int64), cap_kwh=empty, p_kw=empty, energy_kwh=empty, results=[], rents={},
                   last={"t": None, "power_kw": empty, "loss_kwh": empty})

    # -- the auction ------------------------------------------------------------------
    def hold(self, t: int, batteries) -> None:
        """If round t starts an auction day: return the expired slices' energy to their
        owners, run the day's auction on the owners' empty capacity and cut the slices."""
        d = int(np.searchsorted(self.days.starts, t))
        if d >= len(self.days.starts) or self.days.starts[d] != t or d <= self.day:
            return
        if self.results:  # yesterday's slices expire; their energy stays with the owners
            self.results[-1]["left_kwh"] = self._left_kwh(self.results[-1])
        days, ids = self.days, np.asarray(self.days.ids, dtype=object)
        e_full = batteries.e_kwh
        empty = np.maximum(batteries.soc_max * e_full - batteries.energy_kwh, 0.0)
        o = days.owners[empty[days.owners] > KWH_TOL]
        o_in = np.isin(days.owners, o)
        f_in = days.demand_kwh[d] > KWH_TOL
        f = days.facilities[f_in]
        r = days.owner_value_per_kwh[d][o_in]
        res = run_auction(
            pd.DataFrame({"id": ids[o], "capacity_kwh": empty[o], "preference": r * (1.0 + empty[o])}),
            pd.DataFrame({"id": ids[f], "demand_kwh": days.demand_kwh[d][f_in], "bid_per_kwh": days.bid_per_kwh[d][f_in]}),
        )
        parties = res.parties
        pos = np.r_[o, f].astype(np.int64)
        x = parties.quantity_kwh.to_numpy(float)[: len(o)]
        q = parties.quantity_kwh.to_numpy(float)[len(o):]
        total = x.sum()
        rows = np.flatnonzero(q > 0)
        hosts = np.flatnonzero(x > 0)
        self.day = d
        self.shared_kwh = np.zeros(self.n)
        self.shared_kwh[o] = x
        if total > 0 and len(rows) and len(hosts):
            split = q[rows, None] * x[None, hosts] / total  # [winners x owners]
            self.user = np.repeat(f[rows], len(hosts)).astype(np.int64)
            self.host = np.tile(o[hosts], len(rows)).astype(np.int64)
            self.cap_kwh = split.ravel()
            usable = (batteries.soc_max - batteries.soc_min) * e_full[self.host]
            self.p_kw = batteries.p_kw[self.host] * self.cap_kwh / usable
        else:
            self.user = self.host = np.zeros(0, np.int64)
            self.cap_kwh = self.p_kw = np.zeros(0)
        self.energy_kwh = np.zeros(len(self.cap_kwh))
        due = np.zeros(self.n)
        np.add.at(due, pos, parties.payment.to_numpy(float))
        self.rents[t] = due
        table = parties.assign(
            day=d, round=t, time=days.time[d], hours=float(days.hours[d]),
            offered_kwh=np.r_[empty[o], days.demand_kwh[d][f_in]],
            preference=np.r_[r * (1.0 + empty[o]), np.full(len(f), np.nan)],
            value_per_kwh=parties.price_per_kwh.to_numpy(float), price_per_kwh=res.price_per_kwh,
            interval_low_per_kwh=res.interval[0], interval_high_per_kwh=res.interval[1], left_kwh=np.nan,
        )
        table["pos"] = pos
        self.results.append(table)

    def _left_kwh(self, table: pd.DataFrame) -> np.ndarray:
        """Energy in each party's slices now: a facility's own, an owner's hosted [kWh]."""
        own = np.bincount(self.user, weights=self.energy_kwh, minlength=self.n)
        hosted = np.bincount(self.host, weights=self.energy_kwh, minlength=self.n)
        pos = table["pos"].to_numpy()
        return np.where(table.role.to_numpy() == "owner", hosted[pos], own[pos])

    # -- each round ---------------------------------------------------------------------
    def dispatch(self, t: int, batteries, net_kw: np.ndarray, dt_h: float,
                 charge_own: bool | np.ndarray = False) -> np.ndarray:
        """Run round t: the owners' own accounts by the self-consumption rule on their net
        load (or at full charging power where `charge_own`, one for all or per owner), the slices on their winners'
        net load; update the physical batteries. Returns the batteries' power per
        prosumer, own plus hosted slices, at the owner [kW] (positive = charging)."""
        self.hold(t, batteries)
        b = batteries
        e = b.e_kwh
        has = e > 0
        e_safe = np.where(has, e, 1.0)
        usable = (b.soc_max - b.soc_min) * e
        hosted_kwh = np.bincount(self.host, weights=self.energy_kwh, minlength=self.n)
        own_kwh = np.maximum(b.energy_kwh - hosted_kwh, b.soc_min * e)
        top = np.where(has, b.soc_min + (usable - self.shared_kwh) / e_safe, 1.0)
        frac = np.where(usable > 0, self.shared_kwh / np.where(usable > 0, usable, 1.0), 0.0)
        own = b.part(e, b.p_kw * np.maximum(1.0 - frac, 0.0), np.minimum(own_kwh / e_safe, top), b.soc_min, top)
        if np.all(charge_own):
            own_kw = own.follow(np.full(self.n, np.inf), dt_h)
        elif np.any(charge_own):  # the rule is follow(-net load)
            own_kw = own.follow(np.where(charge_own, np.inf, -net_kw), dt_h)
        else:
            own_kw = own.self_consume(net_kw, dt_h)
        slice_kw = np.zeros(len(self.cap_kwh))
        if len(self.cap_kwh):
            cap_safe = np.where(self.cap_kwh > 0, self.cap_kwh, 1.0)
            sl = b.part(self.cap_kwh, self.p_kw, self.energy_kwh / cap_safe, 0.0, 1.0)
            most_c, most_d = sl.power_range_kw(dt_h)
            want = net_kw[self.user]
            can_c = np.bincount(self.user, weights=most_c, minlength=self.n)[self.user]
            can_d = np.bincount(self.user, weights=most_d, minlength=self.n)[self.user]
            with np.errstate(divide="ignore", invalid="ignore"):
                share_c = np.where(can_c > 0, np.minimum(np.maximum(-want, 0.0) / can_c, 1.0), 0.0)
                share_d = np.where(can_d > 0, np.minimum(np.maximum(want, 0.0) / can_d, 1.0), 0.0)
            slice_kw = sl.follow(most_c * share_c - most_d * share_d, dt_h)
            new_energy = sl.soc * self.cap_kwh
            self.last = {"t": t, "power_kw": slice_kw, "loss_kwh": slice_kw * dt_h - (new_energy - self.energy_kwh)}
            self.energy_kwh = new_energy
        else:
            self.last = {"t": t, "power_kw": slice_kw, "loss_kwh": slice_kw}
        hosted_kwh = np.bincount(self.host, weights=self.energy_kwh, minlength=self.n)
        b.soc = np.where(has, np.clip((own.soc * e + hosted_kwh) / e_safe, b.soc_min, b.soc_max), 0.0)
        return own_kw + np.bincount(self.host, weights=slice_kw, minlength=self.n)

    def rent_due(self, t: int) -> np.ndarray:
        """Each prosumer's rent in round t [currency, positive = pays]: the day's auction
        payments in its first round, zero otherwise; they sum to zero."""
        d = int(np.searchsorted(self.days.starts, t))
        if d < len(self.days.starts) and self.days.starts[d] == t and t not in self.rents:
            raise ValueError(f"rent_due({t}) expected after dispatch of round {t}, whose auction has not been held")
        return self.rents.get(t, np.zeros(self.n)).copy()

    def share_columns(self) -> dict[str, np.ndarray]:
        """The winners' slices in the last round, one entry per winner (storage.parquet
        rows of asset ``battery_share``): id, power [kW], energy [kWh], soc, loss [kWh]."""
        winners = np.unique(self.user)
        ids = np.asarray(self.days.ids, dtype=object)
        cap = np.bincount(self.user, weights=self.cap_kwh, minlength=self.n)[winners]
        energy = np.bincount(self.user, weights=self.energy_kwh, minlength=self.n)[winners]
        power = np.bincount(self.user, weights=self.last["power_kw"], minlength=self.n)[winners]
        loss = np.bincount(self.user, weights=self.last["loss_kwh"], minlength=self.n)[winners]
        return {"id": ids[winners], "power_kw": power, "energy_kwh": energy,
                "soc": np.where(cap > 0, energy / np.where(cap > 0, cap, 1.0), np.nan), "loss_kwh": loss}

    def table(self) -> pd.DataFrame:
        """Every day's auction, one row per party (`AUCTION_COLUMNS`); the last day's
        ``left_kwh`` is what its slices hold now."""
        if not self.results:
            types = {"day": "int64", "round": "int64", "time": "datetime64[ns]", "id": object, "role": object,
                     "participates": bool}
            return pd.DataFrame({c: pd.Series(dtype=types.get(c, float)) for c in AUCTION_COLUMNS})
        last = self.results[-1].copy()
        last["left_kwh"] = self._left_kwh(last)
        out = pd.concat([*self.results[:-1], last], ignore_index=True)[AUCTION_COLUMNS]
        return out.astype({"day": "int64", "round": "int64", "participates": bool})
