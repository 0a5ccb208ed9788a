"""Sharing battery capacity through an auction, after Tushar et al. (2016), and its use in runs.

Source: W. Tushar, B. Chai, C. Yuen, S. Huang, D. B. Smith, H. V. Poor and Z. Yang, 2016,
"Energy storage sharing in smart grid: a modified auction-based approach", IEEE Trans.
Smart Grid 7(3), 1462-1475 (arXiv:1512.07700).

Setting
-------
Residential units (RUs, here: households with a home battery) put part of their storage
capacity into a shared pool -- the *community battery* -- that shared facility
controllers (SFCs, here: anyone who needs storage and has none: the community's shared
facilities, or households with PV and no battery) use. Each RU n has capacity e_n [kWh]
and values keeping y kWh of it for itself at K_n ln(1 + y) [currency], so sharing x_n
kWh at price p [currency/kWh] gives it

    U_n(x_n, p) = K_n ln(1 + e_n - x_n) + p x_n,          0 <= x_n <= e_n.

Each SFC m asks for Q_m kWh and bids b_m [currency/kWh]; receiving q_m at price p is
worth (b_m - p) q_m to it.

Mechanism (the "modified auction")
----------------------------------
1. *Reservation prices.* RU n shares nothing below r_n = K_n / (1 + e_n), the marginal
   value of the first kWh it would give up. RUs report K_n (hence r_n), SFCs (Q_m, b_m).
2. *Breakeven and trade reduction* (the multi-unit double auction of Huang,
   Scheller-Wolf and Sycara, 2002, that the paper modifies): RUs sorted by ascending r,
   SFCs by descending b, each RU offering up to e_n and each SFC asking Q_m; K is the
   RU and L the SFC at which the efficient trade ends. RU K and SFC L are left out;
   RUs before K and SFCs before L take part, and the price must lie in [r_K, b_L]. The
   bounds are the reports of the two parties that the reduction leaves out.
3. *Stackelberg game* between the auctioneer (leader) and the participating RUs
   (followers). Given p, RU n's best response maximises U_n:

       x_n(p) = min(e_n, max(0, 1 + e_n - K_n / p)).

   The leader picks the lowest price in [r_K, b_L] at which the RUs' responses cover
   the participating SFCs' demand Q = sum_{m<L} Q_m: sum_n x_n(p) is continuous and
   non-decreasing in p, so that price -- the Stackelberg equilibrium -- is unique; it
   is found by bisection. If even b_L does not draw Q, p = b_L and the SFCs are
   rationed in proportion to Q_m; if r_K already draws more, p = r_K and the RUs are
   rationed in proportion to x_n(p).
4. *Settlement.* Every participating SFC pays p per kWh it receives, every
   participating RU is paid p per kWh it shares.

What it guarantees, and what it does not
----------------------------------------
With truthful reports:

- *Individual rationality.* No RU is worse off than keeping all its capacity: it shares
  its best response x_n(p), or a proportional cut of it when RUs are rationed at
  p = r_K, and U_n is concave in x_n with U_n(0) = K_n ln(1 + e_n), so any share in
  [0, x_n(p)] is worth at least that. No SFC pays more than its bid: p <= b_L <= b_m.
  Parties left out pay and receive nothing.
- *Budget balance.* The auctioneer pays the RUs exactly what the SFCs pay.
- *Equilibrium.* At the price p no participating RU gains by sharing another quantity:
  x_n(p) is its best response (the followers' side of the Stackelberg equilibrium);
  only when RUs are rationed at p = r_K would each rather share more.

It is *not* strategy-proof, for either side. The bounds of the interval are set by the
two parties the reduction leaves out, but the price inside it is where the *reported*
supply curves of the participating RUs meet the *reported* demand of the participating
SFCs, so reports move it:

- a participating RU that inflates its preference K_n withholds capacity and raises p.
  Whenever p lies strictly inside the interval and the RU shares part, but not all, of
  its capacity, a small inflation pays: its share was a best response, so changing it
  costs nothing to first order, while the price it is paid rises (the envelope
  theorem). Larger ones can also pay by moving the breakeven;
- a participating SFC that asks for less than it needs lowers p;
- a party left out can misreport its way in (an RU by a lower K_n, an SFC by a higher
  bid) and then trades at a price strictly inside the new interval, below its true
  value (or above its true reservation price): the argument that makes Huang et al.'s
  trade reduction truthful needs the price at a bound, which the Stackelberg price is
  not.

tests/test_battery_auction.py works the first through by hand and finds each by search
(``misreport_search``): on 200 seeded random instances (2-8 RUs, 2-8 SFCs) a profitable
misreport exists for a participating RU inflating K_n in 37 (the price rising with it),
for a participating SFC shrinking Q_m in 41, for an RU left out in 49 and for an SFC
left out in 33. In the same search no participating SFC gained by changing its bid
alone (a search, not a proof). An earlier version of this docstring said that no
participant moves the price by misreporting: that was wrong.

Fidelity to the paper
---------------------
Only the paper's abstract could be read here (a transcription of arXiv:1512.07700v1 in
the stored public pages; its body and equations were not available). The abstract
fixes: RUs decide what fraction of their storage to share with the SFCs; a modified
auction decides the price and the allocation; the fractions and the price come from a
non-cooperative Stackelberg game between the RUs and the auctioneer with a unique
equilibrium; the auction is claimed incentive compatible and individually rational.
Everything else above is this module's own reading, not checked against the paper's
equations: the RU utility K_n ln(1 + e_n - x_n) + p x_n (so the reservation price
K_n / (1 + e_n) and the best response), the SFC's report (Q_m, b_m) and utility
(b_m - p) q_m, the breakeven and trade-reduction step with e_n and Q_m as quantities,
the leader's objective (the lowest price in the interval that covers the demand), the
proportional rationing and the single price for both sides. The abstract's incentive
compatibility does not hold for this reading (above): either the paper's property is a
narrower one (such as the equilibrium property, or truthful reservation prices with the
quantities fixed), or its equations differ from this reading. Check them before citing
numbers from either.

The equilibrium has a closed-form best response and a one-dimensional monotone clearing
equation, so no optimisation solver is needed; this is an allocation run once a day, not
a per-round market mechanism of `cosim.markets`.

In runs (``storage.battery_auction``)
-------------------------------------
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
from typing import NamedTuple

import numpy as np
import pandas as pd

#: Columns of the owners table (RUs): id, capacity_kwh [kWh], preference [currency].
OWNER_COLUMNS = ["id", "capacity_kwh", "preference"]
#: Columns of the facilities table (SFCs): id, demand_kwh [kWh], bid_per_kwh [currency/kWh].
FACILITY_COLUMNS = ["id", "demand_kwh", "bid_per_kwh"]
#: Columns of the result: one row per party.
RESULT_COLUMNS = [
    "id", "role", "price_per_kwh", "participates", "quantity_kwh", "payment", "utility", "utility_alone",
]
#: Relative precision of the equilibrium price [-].
PRICE_TOL = 1e-12


@dataclass(frozen=True)
class AuctionResult:
    """Outcome of one auction.

    Attributes
    ----------
    price_per_kwh : the equilibrium price p (NaN if nobody trades) [currency/kWh]
    interval : the price interval [r_K, b_L] the trade reduction leaves [currency/kWh]
    shared_kwh : capacity in the community pool = capacity allocated [kWh]
    parties : one row per RU and SFC, `RESULT_COLUMNS`: ``role`` owner or facility,
        ``price_per_kwh`` its reservation price or bid, ``quantity_kwh`` shared (owner)
        or received (facility), ``payment`` positive when the party pays [currency],
        ``utility`` with the auction and ``utility_alone`` without it [currency]
    """

    price_per_kwh: float
    interval: tuple[float, float]
    shared_kwh: float
    parties: pd.DataFrame


def reservation_price(capacity_kwh, preference) -> np.ndarray:
    """r_n = K_n / (1 + e_n): below it an RU shares nothing [currency/kWh].

    >>> reservation_price(np.array([9.0]), np.array([2.0]))
    array([0.2])
    """
    return np.asarray(preference, float) / (1.0 + np.asarray(capacity_kwh, float))


def best_response(price: float, capacity_kwh, preference) -> np.ndarray:
    """x_n(p) = min(e_n, max(0, 1 + e_n - K_n / p)): what each RU shares at price p [kWh].

    >>> best_response(0.4, np.array([9.0, 9.0]), np.array([2.0, 5.0]))
    array([5., 0.])
    """
    e = np.asarray(capacity_kwh, float)
    k = np.asarray(preference, float)
    if price <= 0:
        return np.zeros_like(e)
    return np.minimum(e, np.maximum(0.0, 1.0 + e - k / price))


def owner_utility(shared_kwh, price: float, capacity_kwh, preference) -> np.ndarray:
    """U_n = K_n ln(1 + e_n - x_n) + p x_n [currency]."""
    e = np.asarray(capacity_kwh, float)
    x = np.asarray(shared_kwh, float)
    return np.asarray(preference, float) * np.log1p(e - x) + price * x


def breakeven(r: np.ndarray, e: np.ndarray, b: np.ndarray, q: np.ndarray) -> tuple[int, int]:
    """(K, L): positions, in the sorted orders, of the RU and the SFC at which the
    efficient trade ends (-1, -1 if no RU's reservation price is below any bid).

    Walks the supply (ascending r, each RU up to e) and demand (descending b, each SFC
    up to Q) curves unit block by block while the next RU's reservation price is at most
    the next SFC's bid.

    >>> breakeven(np.array([0.1, 0.2, 0.5]), np.array([5.0, 5.0, 5.0]),
    ...           np.array([0.6, 0.3, 0.15]), np.array([4.0, 4.0, 4.0]))
    (1, 1)
    """
    k = l_ = 0
    left_s = e[0] if len(e) else 0.0
    left_d = q[0] if len(q) else 0.0
    last = (-1, -1)
    while k < len(r) and l_ < len(b) and r[k] <= b[l_]:
        last = (k, l_)
        step = min(left_s, left_d)
        left_s -= step
        left_d -= step
        if left_s <= 1e-12:
            k += 1
            left_s = e[k] if k < len(e) else 0.0
        if left_d <= 1e-12:
            l_ += 1
            left_d = q[l_] if l_ < len(q) else 0.0
    return last


class Clearing(NamedTuple):
    """`clear`'s outcome as arrays, in the order of its inputs."""

    price_per_kwh: float
    """The equilibrium price p (NaN if nobody trades) [currency/kWh]."""
    interval: tuple[float, float]
    """[r_K, b_L] [currency/kWh]."""
    shared_kwh: np.ndarray
    """What each RU shares [kWh]."""
    received_kwh: np.ndarray
    """What each SFC receives [kWh]."""
    owner_in: np.ndarray
    """RUs that take part."""
    facility_in: np.ndarray
    """SFCs that take part."""


def clear(capacity_kwh: np.ndarray, preference: np.ndarray, demand_kwh: np.ndarray,
          bid_per_kwh: np.ndarray) -> Clearing:
    """The auction on arrays (what `run_auction` does, without the tables): RUs' e_n [kWh]
    and K_n [currency], SFCs' Q_m [kWh] and b_m [currency/kWh].

    >>> c = clear(np.array([9.0, 9.0, 9.0]), np.array([1.0, 2.0, 4.0]), np.array([6.0, 6.0, 6.0]),
    ...           np.array([0.9, 0.6, 0.35]))
    >>> c.interval, c.owner_in.tolist(), c.facility_in.tolist()
    ((0.2, 0.35), [True, False, False], [True, True, False])
    """
    e, k = np.asarray(capacity_kwh, float), np.asarray(preference, float)
    q, b = np.asarray(demand_kwh, float), np.asarray(bid_per_kwh, float)
    r = reservation_price(e, k)
    so = np.argsort(r, kind="stable")
    sf = np.argsort(-b, kind="stable")
    kk, ll = breakeven(r[so], e[so], b[sf], q[sf])
    ru_in = np.zeros(len(e), bool)
    sfc_in = np.zeros(len(q), bool)
    price, interval = float("nan"), (float("nan"), float("nan"))
    x = np.zeros(len(e))
    got = np.zeros(len(q))
    if kk >= 1 and ll >= 1:  # trade reduction leaves RUs before K and SFCs before L
        ru_in[so[:kk]] = True
        sfc_in[sf[:ll]] = True
        lo, hi = float(r[so[kk]]), float(b[sf[ll]])
        interval = (lo, hi)
        demand = float(q[sfc_in].sum())
        supply = lambda p: float(best_response(p, e[ru_in], k[ru_in]).sum())  # noqa: E731
        if supply(hi) <= demand:
            price = hi
        elif supply(lo) >= demand:
            price = lo
        else:  # the unique price at which the followers' responses meet the demand
            a, c = lo, hi
            while c - a > PRICE_TOL * max(c, 1.0):
                mid = 0.5 * (a + c)
                a, c = (mid, c) if supply(mid) < demand else (a, mid)
            price = c
        x_resp = best_response(price, e[ru_in], k[ru_in])
        offered = float(x_resp.sum())
        traded = min(offered, demand)
        x[ru_in] = x_resp * (traded / offered if offered > 0 else 0.0)
        got[sfc_in] = q[sfc_in] * (traded / demand if demand > 0 else 0.0)
    return Clearing(price, interval, x, got, ru_in, sfc_in)


def run_auction(owners: pd.DataFrame, facilities: pd.DataFrame) -> AuctionResult:
    """Allocate the RUs' shared capacity to the SFCs (see the module docstring).

    Parameters
    ----------
    owners : `OWNER_COLUMNS`; capacity_kwh e_n > 0 they could share, preference K_n > 0
    facilities : `FACILITY_COLUMNS`; demand_kwh Q_m > 0, bid_per_kwh b_m >= 0

    >>> owners = pd.DataFrame({"id": ["a", "b", "c"], "capacity_kwh": [9.0, 9.0, 9.0],
    ...                        "preference": [1.0, 2.0, 4.0]})
    >>> sfcs = pd.DataFrame({"id": ["x", "y", "z"], "demand_kwh": [6.0, 6.0, 6.0],
    ...                      "bid_per_kwh": [0.9, 0.6, 0.35]})
    >>> res = run_auction(owners, sfcs)
    >>> res.interval, round(res.price_per_kwh, 4), round(res.shared_kwh, 4)
    ((0.2, 0.35), 0.35, 7.1429)
    """
    _check(owners, OWNER_COLUMNS, "owners")
    _check(facilities, FACILITY_COLUMNS, "facilities")
    e = owners.capacity_kwh.to_numpy(float)
    k = owners.preference.to_numpy(float)
    q = facilities.demand_kwh.to_numpy(float)
    b = facilities.bid_per_kwh.to_numpy(float)
    r = reservation_price(e, k)
    price, interval, x, got, ru_in, sfc_in = clear(e, k, q, b)
    p = 0.0 if np.isnan(price) else price
    owners_out = pd.DataFrame({
        "id": owners.id.astype(str).to_numpy(), "role": "owner", "price_per_kwh": r, "participates": ru_in,
        "quantity_kwh": x, "payment": 0.0 - p * x, "utility": owner_utility(x, p, e, k),
        "utility_alone": owner_utility(np.zeros_like(e), p, e, k),
    })
    sfcs_out = pd.DataFrame({
        "id": facilities.id.astype(str).to_numpy(), "role": "facility", "price_per_kwh": b,
        "participates": sfc_in, "quantity_kwh": got, "payment": p * got, "utility": (b - p) * got,
        "utility_alone": 0.0,
    })
    parties = pd.concat([owners_out, sfcs_out], ignore_index=True)[RESULT_COLUMNS]
    return AuctionResult(price, interval, float(x.sum()), parties)


def _check(table: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: expected columns {', '.join(columns)}; missing {', '.join(missing)}")
    bad = [c for c in columns[1:] if (pd.to_numeric(table[c], errors="coerce") < 0).any()
           or pd.to_numeric(table[c], errors="coerce").isna().any()]
    if bad:
        raise ValueError(f"{name}: expected numbers >= 0 in {', '.join(bad)}, found otherwise")


def auction_from_fleet(fleet, scenario, seed_offset: int = 0) -> AuctionResult:
    """The auction on a simulated fleet: battery owners share, PV owners without a
    battery ask for capacity for the day.

    Valuations (this module's assumption, seeded): keeping a kWh of storage is worth
    about what it saves in a day of self-consumption, (retail - feed-in) x efficiency^2
    per kWh, times a preference factor U(0.5, 1.5) per household -- so an RU's
    reservation price r_n is that value, K_n = r_n (1 + e_n). A facility asks for its
    mean daily PV surplus over the run (capped at 10 kWh) and bids the same
    self-consumption value times its own factor U(0.5, 1.5).
    """
    rng = np.random.default_rng([scenario.seed, 6, 3, seed_offset])
    m = scenario.market
    eta = scenario.prosumers.battery_efficiency
    value = (m.retail_price_per_kwh - m.feed_in_price_per_kwh) * eta * eta
    t = fleet.table
    st = scenario.storage
    e = t.battery_kwh.to_numpy(float) * (st.battery_soc_max - st.battery_soc_min)
    has_b = e > 0
    r = value * rng.uniform(0.5, 1.5, size=fleet.n)
    owners = pd.DataFrame({"id": np.asarray(fleet.ids)[has_b], "capacity_kwh": e[has_b],
                           "preference": (r * (1.0 + e))[has_b]})
    days = max(len(fleet.time) * scenario.dt_h / 24.0, 1e-9)
    surplus = np.maximum(fleet.pv_kw - fleet.load_kw, 0.0).sum(axis=0) * scenario.dt_h / days
    wants = (~has_b) & (t.pv_kwp.to_numpy(float) > 0) & (surplus > 0)
    facilities = pd.DataFrame({"id": np.asarray(fleet.ids)[wants], "demand_kwh": np.minimum(surplus[wants], 10.0),
                               "bid_per_kwh": value * rng.uniform(0.5, 1.5, size=fleet.n)[wants]})
    return run_auction(owners, facilities)


# ------------------------------------------------------------------------------ in runs

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
    eta_c = st.battery_charge_efficiency or scenario.prosumers.battery_efficiency
    eta_d = st.battery_discharge_efficiency or scenario.prosumers.battery_efficiency
    return (m.retail_price_per_kwh - m.feed_in_price_per_kwh) * eta_c * eta_d


def valuation_factors(scenario, n: int, seed_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded preference factors U(0.5, 1.5) of n households: (as an owner, as a facility)."""
    rng = np.random.default_rng([scenario.seed, 6, 3, seed_offset])
    return rng.uniform(0.5, 1.5, size=n), rng.uniform(0.5, 1.5, size=n)


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


@dataclass(frozen=True)
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
        """The days of a run (see the module docstring, *In runs*) from its scenario, fleet
        and the forecast of every prosumer's net load before flexible assets
        [rounds x prosumers] [kW] (`cosim.flex.assets.forecast_net_kw`)."""
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
        st = scenario.storage
        eta_c = st.battery_charge_efficiency or scenario.prosumers.battery_efficiency
        eta_d = st.battery_discharge_efficiency or scenario.prosumers.battery_efficiency
        demand = np.array([
            np.minimum(storage_need_kwh(forecast_kw[a:b, facilities], scenario.dt_h, eta_c, eta_d), ba.max_demand_kwh)
            for a, b in zip(starts, ends, strict=True)
        ]).reshape(len(starts), len(facilities))
        scale = (hours / 24.0)[:, None] * value
        return cls(starts, ends, hours, times[starts], list(fleet.ids), owners, facilities, demand,
                   scale * f_owner[owners][None, :], scale * f_facility[facilities][None, :])


@dataclass
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
        return cls(days, n, -1, np.zeros(n), np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty, empty,
                   [], {}, {"t": None, "power_kw": empty, "loss_kwh": empty})

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
    def dispatch(self, t: int, batteries, net_kw: np.ndarray, dt_h: float, charge_own: bool = False) -> np.ndarray:
        """Run round t: the owners' own accounts by the self-consumption rule on their net
        load (or at full charging power if `charge_own`), the slices on their winners'
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
        if charge_own:
            own_kw = own.follow(np.full(self.n, np.inf), dt_h)
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
