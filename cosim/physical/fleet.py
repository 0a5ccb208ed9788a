"""The prosumer fleet and its smart controllers.

Every load of the network is a prosumer. The scenario's shares decide, with its seed,
who has rooftop PV and who has a battery. Each round a controller runs the battery by a
self-consumption rule (charge from surplus, discharge into deficit) or, with a day-ahead
schedule, by that schedule (`cosim.flex.batteries.Batteries`; EVs and shiftable loads
are in `cosim.flex.assets`), takes the role of buyer, seller or idle from the net position that
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
from cosim.flex.batteries import Batteries as Batteries  # callers import it from the fleet too
from cosim.physical.networks import NetworkSpec
from cosim.physical.phases import PHASE_COLUMNS, allocate_phases
from cosim.physical.profiles import profile_row, profile_tables, row_instants, slice_profile

#: Net positions smaller than this are idle [kW].
IDLE_KW = 1e-6


@dataclass(frozen=True)
class Fleet:
    """Static prosumer data (one row per prosumer) and its time series for the run.

    Attributes
    ----------
    table : index ``id``; columns ``load``, ``bus``, ``p_ref_kw``, ``q_ref_kvar`` (the load's
        SimBench reference powers), ``profile``, ``pv_kwp``,
        ``pv_profile``, ``battery_kwh``, ``battery_kw``, and the connections
        (`cosim.physical.phases.PHASE_COLUMNS`: ``phase``, ``load_phase``, ``pv_phase``,
        ``battery_phase``, ``ev_phase``; ``a``, ``b``, ``c`` or ``abc``)
    time : the rounds' start times, local wall-clock time as SimBench labels its rows
    load_kw, load_kvar, pv_kw : arrays [rounds x prosumers]
    instants : the same start times with their UTC offset (unambiguous; the ledger's times)
    """

    table: pd.DataFrame
    time: pd.DatetimeIndex
    load_kw: np.ndarray
    load_kvar: np.ndarray
    pv_kw: np.ndarray
    instants: pd.DatetimeIndex | None = None

    @property
    def ids(self) -> list[str]:
        return list(self.table.index)

    @property
    def n(self) -> int:
        return len(self.table)


def build_fleet(net: pp.pandapowerNet, spec: NetworkSpec, scenario: Scenario) -> Fleet:
    """Assign PV and batteries to the net's loads and cut their profiles to the run.

    The scenario's shares draw who has PV and a battery; a household the scenario
    declares (``prosumers.declared``) has what it declared instead."""
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
    for declared in scenario.prosumers.declared:  # the first household at the bus (cross-checked)
        at_bus = table.index[table.bus == declared.bus]
        if len(at_bus):
            table.loc[at_bus[0], ["pv_kwp", "battery_kwh", "battery_kw"]] = (
                declared.pv_kwp, declared.battery_kwh, declared.battery_kw)
    pr = scenario.prosumers
    published = loads["phase"].tolist() if "phase" in loads.columns else None
    phases = allocate_phases(scenario.seed, pr.phases, np.hypot(p_ref_kw, q_ref_kvar), table.pv_kwp.to_numpy(),
                             table.battery_kw.to_numpy(), scenario.storage.ev.charger_kw,
                             pr.single_phase_max_kva, published)
    for col in PHASE_COLUMNS:
        table[col] = phases[col].to_numpy()
    cut = {
        name: slice_profile(df, scenario.start, scenario.duration, scenario.resolution)
        for name, df in tables.items()
    }
    scale = scenario.prosumers.load_scale
    load_kw = cut["load_p"][profiles].to_numpy() * p_ref_kw * scale
    load_kvar = cut["load_q"][profiles].to_numpy() * q_ref_kvar * scale
    pv_kw = cut["pv"][table.pv_profile.tolist()].to_numpy() * table.pv_kwp.to_numpy()
    instants = row_instants(profile_row(scenario.start, nonexistent="shift_forward"), scenario.n_rounds,
                            scenario.resolution)
    return Fleet(table, cut["load_p"].index, load_kw, load_kvar, pv_kw, instants)


def _pick(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Exactly round(share * n) prosumers, chosen at random."""
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: int(round(share * n))]] = True
    return chosen


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
