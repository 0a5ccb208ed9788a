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
alone (a search, not a proof).

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

`cosim.flex.capacity_sharing` runs this auction each day of a simulation
(``storage.battery_auction``).
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
#: Range of the seeded preference factors, uniform, that scale each household's value of
#: storage [-] (this module's assumption).
PREFERENCE_FACTOR_RANGE = (0.5, 1.5)
#: The seed stream of the preference factors: ``[scenario.seed, *stream, seed_offset]``.
VALUATION_SEED_STREAM = (6, 3)
#: Most a facility asks for in `auction_from_fleet` [kWh].
FLEET_DEMAND_CAP_KWH = 10.0
#: A unit block of supply or demand with less than this left is used up [kWh].
BLOCK_TOL_KWH = 1e-12


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
        if left_s <= BLOCK_TOL_KWH:
            k += 1
            left_s = e[k] if k < len(e) else 0.0
        if left_d <= BLOCK_TOL_KWH:
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


def valuation_factors(scenario, n: int, seed_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded preference factors, uniform in `PREFERENCE_FACTOR_RANGE`, of n households:
    (as an owner, as a facility) [-]."""
    rng = np.random.default_rng([scenario.seed, *VALUATION_SEED_STREAM, seed_offset])
    return rng.uniform(*PREFERENCE_FACTOR_RANGE, size=n), rng.uniform(*PREFERENCE_FACTOR_RANGE, size=n)


def auction_from_fleet(fleet, scenario, seed_offset: int = 0) -> AuctionResult:
    """The auction on a simulated fleet: battery owners share, PV owners without a
    battery ask for capacity for the day.

    Valuations (this module's assumption, seeded): keeping a kWh of storage is worth
    about what it saves in a day of self-consumption, (retail - feed-in) x efficiency^2
    per kWh, times a preference factor U(0.5, 1.5) per household -- so an RU's
    reservation price r_n is that value, K_n = r_n (1 + e_n). A facility asks for its
    mean daily PV surplus over the run (capped at `FLEET_DEMAND_CAP_KWH`) and bids the same
    self-consumption value times its own factor U(0.5, 1.5).
    """
    f_owner, f_facility = valuation_factors(scenario, fleet.n, seed_offset)
    m = scenario.market
    eta = scenario.prosumers.battery_efficiency
    value = (m.retail_price_per_kwh - m.feed_in_price_per_kwh) * eta * eta
    t = fleet.table
    st = scenario.storage
    e = t.battery_kwh.to_numpy(float) * (st.battery_soc_max - st.battery_soc_min)
    has_b = e > 0
    r = value * f_owner
    owners = pd.DataFrame({"id": np.asarray(fleet.ids)[has_b], "capacity_kwh": e[has_b],
                           "preference": (r * (1.0 + e))[has_b]})
    days = max(len(fleet.time) * scenario.dt_h / 24.0, 1e-9)
    surplus = np.maximum(fleet.pv_kw - fleet.load_kw, 0.0).sum(axis=0) * scenario.dt_h / days
    wants = (~has_b) & (t.pv_kwp.to_numpy(float) > 0) & (surplus > 0)
    facilities = pd.DataFrame({"id": np.asarray(fleet.ids)[wants], "demand_kwh": np.minimum(surplus[wants], FLEET_DEMAND_CAP_KWH),
                               "bid_per_kwh": value * f_facility[wants]})
    return run_auction(owners, facilities)
