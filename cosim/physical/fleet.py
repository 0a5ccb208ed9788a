"""The prosumer fleet and its smart controllers.

Every load of the network is a prosumer. The scenario's shares decide, with its seed,
who has rooftop PV and who has a battery. Each round a controller runs the battery by a
self-consumption rule (charge from surplus, discharge into deficit) or, with a day-ahead
schedule, by that schedule (`Batteries.follow`; EVs and shiftable loads are in
`cosim.flex.assets`), takes the role of buyer, seller or idle from the net position that
remains, and submits one order.

Sign convention: net load is positive when a prosumer consumes (pandapower's load
convention). All powers in kW, energies in kWh, prices in currency/kWh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandapower as pp
import pandas as pd

from cosim.config.scenario import Scenario
from cosim.physical.networks import NetworkSpec
from cosim.physical.profiles import profile_tables, slice_profile

#: Columns of an order book, in this order.
ORDER_COLUMNS = ["id", "bus", "side", "quantity_kwh", "price_per_kwh"]
#: Net positions smaller than this are idle [kW].
IDLE_KW = 1e-6


@dataclass(frozen=True)
class Fleet:
    """Static prosumer data (one row per prosumer) and its time series for the run.

    Attributes
    ----------
    table : index ``id``; columns ``load``, ``bus``, ``p_ref_kw``, ``q_ref_kvar`` (the load's
        SimBench reference powers), ``profile``, ``pv_kwp``,
        ``pv_profile``, ``battery_kwh``, ``battery_kw``
    time : the rounds' start times
    load_kw, load_kvar, pv_kw : arrays [rounds x prosumers]
    """

    table: pd.DataFrame
    time: pd.DatetimeIndex
    load_kw: np.ndarray
    load_kvar: np.ndarray
    pv_kw: np.ndarray

    @property
    def ids(self) -> list[str]:
        return list(self.table.index)

    @property
    def n(self) -> int:
        return len(self.table)


def build_fleet(net: pp.pandapowerNet, spec: NetworkSpec, scenario: Scenario) -> Fleet:
    """Assign PV and batteries to the net's loads and cut their profiles to the run."""
    rng = np.random.default_rng(scenario.seed)
    code = spec.code if spec.source == "simbench" else spec.profiles.simbench_code
    tables = profile_tables(code)
    loads = net.load.sort_index()
    n = len(loads)
    profiles = loads["profile"].astype(object).tolist()
    default_cycle = [p for p in spec.profiles.load if p in tables["load_p"].columns]
    for i, prof in enumerate(profiles):
        if not isinstance(prof, str) or prof not in tables["load_p"].columns:
            profiles[i] = default_cycle[i % len(default_cycle)]
    pv_choices = [p for p in spec.profiles.pv if p in tables["pv"].columns] or list(tables["pv"].columns)
    has_pv = _pick(rng, n, scenario.prosumers.pv_share)
    has_battery = _pick(rng, n, scenario.prosumers.battery_share)
    # SimBench's convention: P = pload profile x p_mw, Q = qload profile x q_mvar
    p_ref_kw = loads.p_mw.astype(float).to_numpy() * 1000.0
    q_ref_kvar = loads.q_mvar.astype(float).to_numpy() * 1000.0
    table = pd.DataFrame(
        {
            "load": loads.index.astype(int),
            "bus": loads.bus.astype(int).to_numpy(),
            "p_ref_kw": p_ref_kw,
            "q_ref_kvar": q_ref_kvar,
            "profile": profiles,
            "pv_kwp": np.where(has_pv, scenario.prosumers.pv_kwp, 0.0),
            "pv_profile": rng.choice(pv_choices, size=n),
            "battery_kwh": np.where(has_battery, scenario.prosumers.battery_kwh, 0.0),
            "battery_kw": np.where(has_battery, scenario.prosumers.battery_kw, 0.0),
        },
        index=pd.Index([f"P{i:03d}" for i in loads.index], name="id"),
    )
    cut = {
        name: slice_profile(df, scenario.start, scenario.duration, scenario.resolution)
        for name, df in tables.items()
    }
    scale = scenario.prosumers.load_scale
    load_kw = cut["load_p"][profiles].to_numpy() * p_ref_kw * scale
    load_kvar = cut["load_q"][profiles].to_numpy() * q_ref_kvar * scale
    pv_kw = cut["pv"][table.pv_profile.tolist()].to_numpy() * table.pv_kwp.to_numpy()
    return Fleet(table, cut["load_p"].index, load_kw, load_kvar, pv_kw)


def _pick(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Exactly round(share * n) prosumers, chosen at random."""
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: int(round(share * n))]] = True
    return chosen


@dataclass
class Batteries:
    """Home batteries of the fleet, state of charge tracked across rounds.

    The state of charge stays within [soc_min, soc_max]; charging stores
    ``charge_efficiency`` of the power drawn, discharging delivers
    ``discharge_efficiency`` of the energy taken out (both default to the one-way
    ``efficiency``). With the defaults (bounds 0 and 1, one efficiency) the arithmetic is
    that of the original self-consumption rule, to the last bit.
    """

    e_kwh: np.ndarray
    p_kw: np.ndarray
    efficiency: float
    soc: np.ndarray
    """State of charge [0..1]; zero where a prosumer has no battery."""
    soc_min: float = 0.0
    soc_max: float = 1.0
    charge_efficiency: float | None = None
    discharge_efficiency: float | None = None

    @classmethod
    def from_fleet(cls, fleet: Fleet, scenario: Scenario) -> Batteries:
        e = fleet.table.battery_kwh.to_numpy(float)
        soc = np.where(e > 0, scenario.prosumers.battery_initial_soc, 0.0)
        st = scenario.storage
        return cls(e, fleet.table.battery_kw.to_numpy(float), scenario.prosumers.battery_efficiency, soc,
                   st.battery_soc_min, st.battery_soc_max, st.battery_charge_efficiency,
                   st.battery_discharge_efficiency)

    @property
    def eta_charge(self) -> float:
        return self.efficiency if self.charge_efficiency is None else self.charge_efficiency

    @property
    def eta_discharge(self) -> float:
        return self.efficiency if self.discharge_efficiency is None else self.discharge_efficiency

    @property
    def energy_kwh(self) -> np.ndarray:
        """Stored energy [kWh]."""
        return self.soc * self.e_kwh

    def power_range_kw(self, dt_h: float) -> tuple[np.ndarray, np.ndarray]:
        """(most it can charge, most it can discharge) this round [kW], from power and state of charge."""
        with np.errstate(divide="ignore", invalid="ignore"):
            room_kw = np.where(self.e_kwh > 0, (self.soc_max - self.soc) * self.e_kwh / (self.eta_charge * dt_h), 0.0)
            avail_kw = np.maximum(self.soc - self.soc_min, 0.0) * self.e_kwh * self.eta_discharge / dt_h
        return np.minimum(self.p_kw, np.maximum(room_kw, 0.0)), np.minimum(self.p_kw, avail_kw)

    def self_consume(self, net_kw: np.ndarray, dt_h: float) -> np.ndarray:
        """Charge from surplus, discharge into deficit; update the state of charge.

        Parameters
        ----------
        net_kw : net load before the battery [kW]
        dt_h : round length [h]

        Returns
        -------
        battery power, positive when charging [kW]
        """
        eta_c, eta_d = self.eta_charge, self.eta_discharge
        with np.errstate(divide="ignore", invalid="ignore"):
            room_kw = np.where(self.e_kwh > 0, (self.soc_max - self.soc) * self.e_kwh / (eta_c * dt_h), 0.0)
            avail_kw = np.maximum(self.soc - self.soc_min, 0.0) * self.e_kwh * eta_d / dt_h
        charge = np.minimum(np.minimum(np.maximum(-net_kw, 0.0), self.p_kw), room_kw)
        discharge = np.minimum(np.minimum(np.maximum(net_kw, 0.0), self.p_kw), avail_kw)
        return self._apply(charge, discharge, dt_h)

    def follow(self, request_kw: np.ndarray, dt_h: float) -> np.ndarray:
        """Run each battery at the requested power (positive = charging) as far as its
        power and state of charge allow; update the state of charge.

        Returns
        -------
        battery power, positive when charging [kW]
        """
        most_charge, most_discharge = self.power_range_kw(dt_h)
        charge = np.minimum(np.maximum(request_kw, 0.0), most_charge)
        discharge = np.minimum(np.maximum(-request_kw, 0.0), most_discharge)
        return self._apply(charge, discharge, dt_h)

    def part(self, e_kwh, p_kw, soc, soc_min=0.0, soc_max=1.0) -> Batteries:
        """Batteries with these ones' efficiencies and their own capacity [kWh], power
        limit [kW], state of charge and bounds [0..1] (scalars or one per battery): a part
        of these batteries run on its own account, as the owners' own accounts and the
        winners' slices of `cosim.flex.battery_auction.CapacityShares` are.

        >>> b = Batteries(np.array([10.0]), np.array([5.0]), 0.9, np.array([0.5]))
        >>> half = b.part(b.e_kwh / 2, b.p_kw / 2, np.array([0.0]))
        >>> half.follow(np.array([9.0]), 1.0), half.energy_kwh  # 2.5 kW, 90 % stored
        (array([2.5]), array([2.25]))
        """
        return Batteries(np.asarray(e_kwh, float), np.asarray(p_kw, float), self.efficiency, np.asarray(soc, float),
                         soc_min, soc_max, self.charge_efficiency, self.discharge_efficiency)

    def _apply(self, charge: np.ndarray, discharge: np.ndarray, dt_h: float) -> np.ndarray:
        e_safe = np.where(self.e_kwh > 0, self.e_kwh, 1.0)
        delta = (charge * self.eta_charge - discharge / self.eta_discharge) * dt_h / e_safe
        self.soc = np.where(self.e_kwh > 0, np.clip(self.soc + delta, self.soc_min, self.soc_max), 0.0)
        return charge - discharge


class OrderBook(NamedTuple):
    """A round's orders as arrays, one entry per order (the loop's hot path)."""

    pos: np.ndarray
    """Position of the ordering prosumer in the fleet."""
    buy: np.ndarray
    """True for a bid, False for an offer."""
    quantity_kwh: np.ndarray
    price_per_kwh: np.ndarray


def order_book(net_kw: np.ndarray, dt_h: float, bidding: str, retail_price_per_kwh: float,
               feed_in_price_per_kwh: float, rng: np.random.Generator) -> OrderBook:
    """One order per prosumer with a non-zero net position (see `make_orders`)."""
    buying = net_kw > IDLE_KW
    active = buying | (net_kw < -IDLE_KW)
    if bidding == "truthful":
        price = np.where(buying, retail_price_per_kwh, feed_in_price_per_kwh)
    else:
        price = rng.uniform(feed_in_price_per_kwh, retail_price_per_kwh, size=len(net_kw))
    pos = np.flatnonzero(active)
    return OrderBook(pos, buying[pos], np.abs(net_kw[pos]) * dt_h, price[pos])


def make_orders(
    ids: list[str],
    buses: np.ndarray,
    net_kw: np.ndarray,
    dt_h: float,
    bidding: str,
    retail_price_per_kwh: float,
    feed_in_price_per_kwh: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One order per prosumer with a non-zero net position (idle prosumers submit none).

    truthful: buyers bid the retail tariff, sellers ask the feed-in tariff.
    zero-intelligence: a uniform random price between the two (Gode and Sunder, 1993).

    >>> rng = np.random.default_rng(0)
    >>> book = make_orders(["a", "b", "c"], np.array([1, 2, 3]), np.array([2.0, -4.0, 0.0]),
    ...                    0.25, "truthful", 0.3, 0.08, rng)
    >>> book[["id", "side", "quantity_kwh", "price_per_kwh"]].values.tolist()
    [['a', 'buy', 0.5, 0.3], ['b', 'sell', 1.0, 0.08]]
    """
    b = order_book(net_kw, dt_h, bidding, retail_price_per_kwh, feed_in_price_per_kwh, rng)
    return pd.DataFrame(
        {
            "id": np.asarray(ids, dtype=object)[b.pos],
            "bus": np.asarray(buses)[b.pos],
            "side": np.where(b.buy, "buy", "sell"),
            "quantity_kwh": b.quantity_kwh,
            "price_per_kwh": b.price_per_kwh,
        }
    )
