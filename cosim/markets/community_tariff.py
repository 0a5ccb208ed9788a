"""Community tariff with a virtual battery pool (sonnenCommunity, sonnenFlat).

sonnen's public terms for the sonnenFlat (sonnen.de, "Häufig gestellte Fragen |
sonnenFlat", read 2026): a member with PV and a sonnenBatterie gets an individual
free-energy allowance (*Freistrommenge*) of grid energy from the community; above it,
energy costs a fixed price (from 0.24 EUR/kWh gross, regional); the member assigns its
PV surplus fed into the grid to sonnen (*Abtretung*), which markets it; the members'
batteries are run in part by sonnen's virtual power plant, and each member gets a share
of its profit (*Gewinnbeteiligung*) that grows with battery capacity (at least 77.35
EUR a year for 5.5 kWh, 119 EUR for 11 kWh or more). The German base fee is 0.00
EUR/month today; sonnen's earlier and Australian sonnenFlat plans charge a monthly fee
for the allowance. Zhang, Wu, Long and Cheng, 2017, "Review of existing peer-to-peer
energy trading projects", Energy Procedia 105:2563-2568, describe sonnenCommunity as
such a pool.

The mechanism (``community_tariff``) is a community market (`cosim.markets.community`):
members buy all their demand from the community and sell all their surplus to it; the
community manager (party ``market_operator``, here the tariff's operator) trades the
net position with the outside party at retail and feed-in. Its rules, per member n and
billing month (``month_days`` days from the run's start; a month the run covers only in
part is prorated: its fee and allowance are the share of the month's rounds the run
holds, ``ctx.n_rounds``):

- **Fee.** ``fee_per_month`` in the month's first round (``membership_fees``), paid to
  the operator.
- **Allowance.** The first ``allowance_kwh_per_month`` kWh the member buys from the
  community in the month are free (``allowance_used_kwh``); unused allowance lapses at
  the month's end (sonnen's yearly cashback for it is not modelled).
- **Community power.** Every kWh above the allowance costs ``price_per_kwh``. A member's
  buy price in a round is ``price_per_kwh`` times the share of its purchase above the
  allowance.
- **Surplus.** Members sell their surplus to the community at ``sell_price_per_kwh``
  (default the feed-in tariff; 0 reproduces sonnen's assignment of the surplus).
- **Virtual pool.** ``pool_share`` of every member's home battery (kWh and kW) is run by
  the operator as one virtual battery; the members' own controllers run the rest
  (the round shrinks their home batteries by that share). The pool is the community
  battery of `cosim.markets.community_model.CommunityModel`: it charges from the
  community's surplus before anything is exported and discharges into its deficit before
  anything is imported, with the pooled power and energy as limits. Its energy sits in the
  members' batteries pro rata to their pooled capacity, so each slice has the pool's state
  of charge and its power flows at the member's bus (``info["pool_battery_kwh"]``,
  charging positive).
- **Pool revenue.** The pool's margin on each kWh it delivers: the import it saves the
  operator at retail less what storing that kWh cost, the export forgone at feed-in for
  the ``1 / efficiency^2`` kWh it took to charge it:
  ``(retail - feed_in / efficiency^2) discharge``, booked in the round it discharges (the
  operator carries the energy in store; sonnen too pays its members per kWh the battery
  delivers for the grid). ``pool_revenue_share`` of it is paid to the members pro rata
  to their pooled battery capacity
  (``info["pool_revenue_share"]``: per member, negative = received; the operator pays the
  sum), the rest the operator keeps. sonnen pays a profit share that grows with capacity
  for grid services cosim does not model (frequency reserve); here the pool earns what its
  energy arbitrage within the community earns.

Settlement (`cosim.sim.settlement`) puts the fee in ``membership_fees``, the free kWh in
``allowance_used_kwh``, the pool's share in ``pool_revenue_share``; every payment is
between a member and the operator, so bills still sum to zero every round.
`monthly_bills` sums a run's settlement per member and billing month
(``monthly_bills.parquet``).

Quantities per round [kWh], prices [currency/kWh], amounts [currency].
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import Field

from cosim.markets.base import (
    QTY_TOL,
    ClearingResult,
    MarketContext,
    Mechanism,
    MechanismOptions,
    NetworkCuts,
    OrderArrays,
)
from cosim.markets.community import CommunityMechanism, community_trades
from cosim.markets.community_model import CommunityBattery, CommunityModel, RoundClock

#: Keys of `ClearingResult.info`: free kWh each member used this round, each member's share
#: of the pool's revenue [currency, negative = received], and the pool's energy in each
#: member's battery this round [kWh, charging positive].
ALLOWANCE_USED = "allowance_used_kwh"
POOL_REVENUE_SHARE = "pool_revenue_share"
POOL_BATTERY = "pool_battery_kwh"
#: Columns of monthly_bills.parquet (`monthly_bills`).
MONTHLY_BILL_COLUMNS = [
    "month", "party", "first_round", "rounds", "membership_fees", "community_kwh", "allowance_used_kwh",
    "charged_kwh", "sold_kwh", "energy_cost", "pool_revenue_share", "network_charges", "bill",
]


class CommunityTariffOptions(MechanismOptions):
    """Settings of the community tariff (see the module docstring)."""

    price_per_kwh: Annotated[float, Field(ge=0.0)] = 0.24
    """Community power above the allowance [currency/kWh] (sonnenFlat: from 0.24 EUR/kWh)."""
    allowance_kwh_per_month: Annotated[float, Field(ge=0.0)] = 0.0
    """Free energy per member per billing month [kWh]."""
    fee_per_month: Annotated[float, Field(ge=0.0)] = 0.0
    """Fee per member per billing month [currency]."""
    sell_price_per_kwh: Annotated[float, Field(ge=0.0)] | None = None
    """What a member gets per kWh of surplus [currency/kWh]; default the feed-in tariff."""
    month_days: Annotated[float, Field(gt=0.0)] = 30.0
    """Length of a billing month [days], counted from the run's start."""
    pool_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Share of each member's home battery (capacity and power) run by the virtual pool [0..1]."""
    pool_efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    """One-way charge and discharge efficiency of the pooled batteries [0..1]."""
    pool_initial_soc: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """State of charge of the pool at the start of the run [0..1]."""
    pool_revenue_share: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Share of the pool's revenue paid to the members [0..1]; the operator keeps the rest."""


def month_rounds(month_days: float, dt_h: float) -> int:
    """Rounds in a billing month of `month_days` days of `dt_h`-hour rounds.

    >>> month_rounds(30, 0.25)
    2880
    """
    return max(int(round(month_days * 24.0 / dt_h)), 1)


def month_fraction(month: int, per_month: int, n_rounds: int | None) -> float:
    """Share of billing month `month` (from 0) that a run of `n_rounds` rounds covers
    (1 if the run's length is unknown): its fee and allowance are prorated by it.

    >>> month_fraction(0, 2880, 96), month_fraction(0, 2880, 3000), month_fraction(1, 2880, 3000)
    (0.03333333333333333, 1.0, 0.041666666666666664)
    """
    if n_rounds is None:
        return 1.0
    return float(np.clip(n_rounds - month * per_month, 0, per_month)) / per_month


def allowance_split(bought_kwh: np.ndarray, left_kwh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split each member's purchase into the part its remaining allowance covers and the
    part charged at the community price [kWh].

    >>> free, charged = allowance_split(np.array([2.0, 2.0, 0.0]), np.array([5.0, 0.5, 1.0]))
    >>> free.tolist(), charged.tolist()
    ([2.0, 0.5, 0.0], [0.0, 1.5, 0.0])
    """
    free = np.minimum(bought_kwh, np.maximum(left_kwh, 0.0))
    return free, bought_kwh - free


def pool_revenue(discharge_kwh: float, retail: float, feed_in: float, efficiency: float) -> float:
    """The pool's revenue in a round [currency]: on each kWh it delivers, the import it
    saves the operator at retail less the feed-in forgone on the ``1 / efficiency^2`` kWh
    it took to store it.

    >>> round(pool_revenue(2.0, 0.30, 0.08, 1.0), 6), round(pool_revenue(2.0, 0.30, 0.08, 0.5), 6)
    (0.44, -0.04)
    """
    return (retail - feed_in / efficiency**2) * discharge_kwh


def pro_rata(total: float, weights: np.ndarray) -> np.ndarray:
    """`total` split in proportion to `weights` (zeros if they sum to zero).

    >>> pro_rata(3.0, np.array([10.0, 5.0, 0.0])).tolist()
    [2.0, 1.0, 0.0]
    """
    s = float(np.sum(weights))
    return np.zeros(len(weights)) if s <= 0 else total * np.asarray(weights, float) / s


class CommunityTariff(CommunityMechanism):
    """sonnenCommunity's tariff: fee, allowance, community price and a virtual battery pool
    whose revenue is shared among members (see the module docstring)."""

    name = "community_tariff"
    Options = CommunityTariffOptions

    def __init__(self, participants, max_cuts: int = 24, options=None):
        Mechanism.__init__(self, participants, max_cuts, options)
        o, p, n = self.options, self.participants, len(self.ids)
        kwh = np.zeros(n) if p.battery_kwh is None else np.asarray(p.battery_kwh, float)
        kw = np.zeros(n) if p.battery_kw is None else np.asarray(p.battery_kw, float)
        self.pool_kwh = o.pool_share * kwh
        """Each member's battery capacity in the pool [kWh]."""
        pool_kw = o.pool_share * kw if self.pool_kwh.sum() > 0 else np.zeros(n)
        self.model = CommunityModel(n, max_cuts)
        self.battery = CommunityBattery(float(self.pool_kwh.sum()), float(pool_kw.sum()), o.pool_efficiency,
                                        o.pool_initial_soc)
        self.clock = RoundClock()
        self._warned_dt = False
        self.per_month: int | None = None
        """Rounds in a billing month (known from the first clearing's ``ctx.dt_h``)."""
        self.n_rounds: int | None = None
        self._round = -1
        self._used_kwh = np.zeros(n)
        """Allowance each member used in this month before the current round [kWh]."""
        self._proposed_kwh = np.zeros(n)
        """... and including the current round's last clearing [kWh]."""

    @property
    def pooled_share(self) -> float:
        """Share of each member's home battery the pool runs (the round shrinks the home
        batteries by it)."""
        return float(self.options.pool_share) if self.battery.capacity_kwh > 0 else 0.0

    def get_state(self) -> dict:
        return {**super().get_state(), "allowance_used_kwh": self._used_kwh.copy(),
                "allowance_proposed_kwh": self._proposed_kwh.copy(), "tariff_round": self._round}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._used_kwh = np.asarray(state["allowance_used_kwh"], float).copy()
        self._proposed_kwh = np.asarray(state["allowance_proposed_kwh"], float).copy()
        self._round = int(state["tariff_round"])

    def prices(self, supply_kwh, demand_kwh, import_kwh, export_kwh, ctx):
        sell = ctx.feed_in_price_per_kwh if self.options.sell_price_per_kwh is None else self.options.sell_price_per_kwh
        return float(self.options.price_per_kwh), float(sell)

    def month_of(self, round_no: int) -> int:
        return round_no // (self.per_month or 1)

    def allowance_kwh(self, round_no: int) -> float:
        """Each member's allowance in the billing month of `round_no`, prorated [kWh]."""
        month = self.month_of(round_no)
        return self.options.allowance_kwh_per_month * month_fraction(month, self.per_month or 1, self.n_rounds)

    def fees_due(self, round_no: int) -> np.ndarray:
        """Fee each member owes in round `round_no` [currency]: the month's prorated fee in
        its first round."""
        per = self.per_month or 1
        due = 0.0
        if round_no % per == 0:
            due = self.options.fee_per_month * month_fraction(round_no // per, per, self.n_rounds)
        return np.full(len(self.ids), float(due))

    def _begin_round(self, round_no: int) -> None:
        """Commit the last round's allowance use; a new month starts from none."""
        if round_no == self._round:
            return
        same_month = self._round >= 0 and self.month_of(round_no) == self.month_of(self._round)
        self._used_kwh = self._proposed_kwh.copy() if same_month else np.zeros(len(self.ids))
        self._proposed_kwh = self._used_kwh.copy()
        self._round = round_no

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges=None) -> ClearingResult:
        if self.per_month is None:
            self.per_month = month_rounds(self.options.month_days, self.round_hours(ctx))
            self.n_rounds = ctx.n_rounds
        r = super().clear(orders, ctx, cuts, charges)
        if not r.ok:
            return r
        t = max(self.clock.round_no, 0)
        self._begin_round(t)
        free, charged = allowance_split(r.bought_kwh, self.allowance_kwh(t) - self._used_kwh)
        self._proposed_kwh = self._used_kwh + free
        price = float(self.options.price_per_kwh)
        with np.errstate(divide="ignore", invalid="ignore"):
            r.buy_price_per_kwh = np.where(r.bought_kwh > QTY_TOL, price * charged / r.bought_kwh, price)
        r.price_per_kwh = float("nan")  # members pay different prices
        charge, discharge = r.info["battery_charge_kwh"], r.info["battery_discharge_kwh"]
        revenue = pool_revenue(discharge, ctx.retail_price_per_kwh, ctx.feed_in_price_per_kwh,
                               self.options.pool_efficiency)
        shared = self.options.pool_revenue_share * revenue
        r.info.update({
            "membership_fee": self.fees_due(t),
            ALLOWANCE_USED: free,
            POOL_REVENUE_SHARE: -pro_rata(shared, self.pool_kwh),
            POOL_BATTERY: pro_rata(charge - discharge, self.pool_kwh),
            "pool_revenue": revenue,
            "pool_revenue_shared": shared,
            "allowance_used_total_kwh": float(free.sum()),
            "community_charged_kwh": float(charged.sum()),
            "billing_month": self.month_of(t),
        })
        r.trades = community_trades(r, self.ids, ctx)
        return r


def monthly_bills(settlement: pd.DataFrame, per_month: int) -> pd.DataFrame:
    """Each party's bill per billing month of `per_month` rounds (`MONTHLY_BILL_COLUMNS`),
    summed from a run's settlement: members, the outside party, the DSO and the operator.

    ``community_kwh`` is what a member bought from the community, ``allowance_used_kwh``
    the free part of it, ``charged_kwh`` the rest (at the community price), ``sold_kwh``
    its surplus sold to the community; the amounts [currency] are the settlement's
    columns summed (bill positive = pays).
    """
    st = settlement.assign(month=settlement["round"].to_numpy() // per_month)
    for col in ("allowance_used_kwh", "pool_revenue_share", "membership_fees"):
        if col not in st.columns:
            st[col] = 0.0
    g = st.groupby(["month", "party"], sort=True)
    out = g.agg(first_round=("round", "min"), rounds=("round", "nunique"), membership_fees=("membership_fees", "sum"),
                community_kwh=("bought_kwh", "sum"), allowance_used_kwh=("allowance_used_kwh", "sum"),
                sold_kwh=("sold_kwh", "sum"), energy_cost=("energy_cost", "sum"),
                pool_revenue_share=("pool_revenue_share", "sum"), network_charges=("network_charges", "sum"),
                bill=("bill", "sum")).reset_index()
    out["charged_kwh"] = out.community_kwh - out.allowance_used_kwh
    return out[MONTHLY_BILL_COLUMNS]


MECHANISMS = [CommunityTariff]
