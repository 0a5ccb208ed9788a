"""Community-based markets: a community manager trades for its members.

Every member trades with the community, never directly with the outside party: a buyer
buys its whole demand from the community, a seller sells its whole supply to it. The
community manager (the settlement party ``market_operator``) nets the two and trades
the community's net position with the outside party at retail and feed-in
(`ClearingResult.operator_import_kwh` / ``operator_export_kwh``). Members pay or receive
internal prices set by the community's rule; their bids and asks do not enter the
prices (members are price takers of the rule, as in the sources):

- ``community_sdr``  supply-demand ratio (Liu et al. 2017), `sdr_prices`;
- ``community_mmr``  mid-market rate (Long et al. 2017), `mmr_prices`;
- ``bill_sharing``   the community's bill with the outside party shared (Long et al.
  2017), `bill_sharing_prices`;
- ``fixed_price``    a virtual pool at a fixed price per kWh plus a periodic membership
  fee, `FixedPricePool`.

The allocation (`CommunityModel`, one Pyomo model per mechanism built once and updated
in place in a persistent HiGHS instance, as `cosim.markets.pool`) is the same for all
four. For member n, per round [kWh]:

    bought[n] + imported[n] + shed[n]      = demand[n]
    sold[n]   + exported[n] + curtailed[n] = supply[n]
    injection[n] = sold[n] + exported[n] - bought[n] - imported[n]
    sum bought + operator_export + battery_charge = sum sold + operator_import + battery_discharge
    sum imported + operator_import <= import_cap,  sum exported + operator_export <= export_cap
    sum_n cut_coef[k, n] injection[n] <= cut_rhs[k]            (network cuts)
    imported = exported = 0 (with P2P; without, bought = sold = 0 instead)

    maximise - voll sum shed - curtail_cost sum curtailed
             - 1e-5 (operator_import + operator_export + sum imported + sum exported)
             - 1e-6 (battery_charge + battery_discharge)

So members are served in full unless a network cut or the outside party's caps
(islanded) force shedding or curtailment; the small costs make the manager net
internally first, then use its battery, then trade with the outside party.

Community battery (Options ``battery_kwh``, ``battery_kw``, ``efficiency``,
``initial_soc``; none by default). The manager's battery sits at the transformer's LV
busbar and is part of the manager's own position: it charges from the community's
surplus before anything is exported and discharges into its deficit before anything is
imported, never trading with the outside party itself. Its energy this round is in
``info``: ``battery_charge_kwh``, ``battery_discharge_kwh`` (energy at the busbar) and
``battery_soc_kwh`` (stored energy at the end of the round). The pool balance then reads
``sum bought + operator_export + battery_charge = sum sold + operator_import +
battery_discharge``: the battery shows as a reduction of the manager's own import and
export. Its net load ``battery_charge - battery_discharge`` belongs at the LV busbar;
network cuts carry no coefficient for it (they are given per member), and the round
loop's power flow does not place it there yet: it only sees the members' injections,
so the transformer (or, islanded, the grid-forming unit) carries the battery's share.
The state of charge carries across rounds in the mechanism object. A round is recognised
by `RoundClock` (``ctx.round_no`` if the context has one, else the context object
itself, which the loop builds once per round): re-clearing within a round (network
feedback) replaces that round's battery move instead of adding to it. The round length
for ``battery_kw`` is ``ctx.dt_h`` if the context has it, else `DEFAULT_ROUND_H`
(with a warning).

Network charges (`Charges`) apply to each member's kWh traded with the community and are
paid on top of the internal prices, as settlement does for P2P kWh; the rules' promise
of individual rationality (no member worse off than alone with the outside party) is
about energy prices, before network charges.
"""

from __future__ import annotations

import logging
from typing import Annotated, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from cosim.markets.base import (
    QTY_TOL,
    TRADE_COLUMNS,
    Charges,
    ClearingResult,
    MarketContext,
    Mechanism,
    MechanismOptions,
    NetworkCuts,
    OrderArrays,
    failed_result,
    outside_trades,
)
from cosim.markets.community_model import (
    CommunityBattery,
    CommunityModel,
    RoundClock,
)

logging.getLogger("pyomo.contrib.appsi").setLevel(logging.ERROR)
log = logging.getLogger(__name__)

#: The community manager's party name (settlement's ``MARKET_OPERATOR``; not imported
#: from cosim.sim.settlement, which imports this package).
MANAGER = "market_operator"
#: Round length assumed for ``battery_kw`` when the context does not carry ``dt_h`` [h].
DEFAULT_ROUND_H = 0.25


# -- pricing rules (pure functions) ---------------------------------------------------------
def sdr_prices(supply_kwh: float, demand_kwh: float, retail: float, feed_in: float) -> tuple[float, float]:
    """Internal (buy, sell) prices [currency/kWh] by the supply-demand ratio.

    Liu, Yu, Wang, Li, Ma and Lei, 2017, "Energy-sharing model with price-based demand
    response for microgrids of peer-to-peer prosumers", IEEE Trans. Power Syst.
    32(5):3569-3583 (Sect. II); the same prices are used by Liu, Yu, Wang and Wang, 2017,
    "Energy sharing management for microgrids with PV prosumers: a Stackelberg game
    approach", IEEE Trans. Ind. Informatics 13(3):1088-1098. With SDR = supply / demand:

        SDR < 1:  sell = feed_in retail / ((retail - feed_in) SDR + feed_in)
                  buy  = sell SDR + retail (1 - SDR)
        SDR >= 1: sell = buy = feed_in

    so that ``buy demand = sell supply + retail (demand - supply)`` when supply < demand:
    the manager, importing the deficit at retail, breaks even. Both prices lie in
    [feed_in, retail].

    >>> [round(p, 6) for p in sdr_prices(1.0, 2.0, 0.30, 0.10)]  # SDR 0.5: sell 0.03 / 0.2
    [0.225, 0.15]
    >>> sdr_prices(3.0, 2.0, 0.30, 0.10)
    (0.1, 0.1)
    """
    if supply_kwh >= demand_kwh:
        return feed_in, feed_in
    sdr = supply_kwh / demand_kwh
    denominator = (retail - feed_in) * sdr + feed_in
    # zero only with a zero feed-in tariff and no supply: nobody sells, the limit is 0
    sell = feed_in * retail / denominator if denominator > 0 else 0.0
    return sell * sdr + retail * (1.0 - sdr), sell


def mmr_prices(supply_kwh: float, demand_kwh: float, retail: float, feed_in: float) -> tuple[float, float]:
    """Internal (buy, sell) prices [currency/kWh] by the mid-market rate.

    Long, Wu, Zhang, Thomas, Cheng and Jenkins, 2017, "Peer-to-peer energy trading in a
    community microgrid", IEEE PES General Meeting. The mid-market rate is
    ``mmr = (retail + feed_in) / 2``; the side in excess shares the outside tariff:

        supply < demand: sell = mmr,  buy  = (mmr supply + retail (demand - supply)) / demand
        supply > demand: buy  = mmr,  sell = (mmr demand + feed_in (supply - demand)) / supply
        supply = demand: buy = sell = mmr

    >>> [round(p, 6) for p in mmr_prices(1.0, 2.0, 0.30, 0.10)]  # mmr 0.20; buy (0.20 + 0.30) / 2
    [0.25, 0.2]
    >>> [round(p, 6) for p in mmr_prices(4.0, 2.0, 0.30, 0.10)]  # sell (0.40 + 0.20) / 4
    [0.2, 0.15]
    """
    mid = 0.5 * (retail + feed_in)
    if supply_kwh < demand_kwh:
        return (mid * supply_kwh + retail * (demand_kwh - supply_kwh)) / demand_kwh, mid
    if supply_kwh > demand_kwh:
        return mid, (mid * demand_kwh + feed_in * (supply_kwh - demand_kwh)) / supply_kwh
    return mid, mid


def bill_sharing_prices(supply_kwh: float, demand_kwh: float, import_kwh: float, export_kwh: float,
                        retail: float, feed_in: float) -> tuple[float, float]:
    """Internal (buy, sell) prices [currency/kWh] by bill sharing.

    Long et al., 2017, "Peer-to-peer energy trading in a community microgrid", IEEE PES
    General Meeting (bill sharing; also Zhou, Wu, Long, Cheng, Zhang, 2018, "Evaluation of
    peer-to-peer energy sharing mechanisms based on a multiagent simulation framework",
    Applied Energy 222). Energy shared inside the community is free; the community's
    bill with the outside party is shared: the cost of its imports among the buyers in
    proportion to their demand, the revenue of its exports among the sellers in
    proportion to their supply:

        buy  = retail import / demand
        sell = feed_in export / supply

    Without a battery ``import = max(demand - supply, 0)``, so buyers pay retail for the
    share of their demand not covered internally. Sellers are paid only for what leaves
    the community: unlike SDR and MMR this is not individually rational for sellers (a
    seller in a net-importing round gets 0 where the grid would pay feed-in). The
    manager always breaks even.

    >>> [round(p, 6) for p in bill_sharing_prices(1.0, 4.0, 3.0, 0.0, 0.30, 0.10)]  # 0.90 over 4 kWh
    [0.225, 0.0]
    >>> [round(p, 6) for p in bill_sharing_prices(5.0, 1.0, 0.0, 4.0, 0.30, 0.10)]  # 0.40 over 5 kWh
    [0.0, 0.08]
    """
    buy = retail * import_kwh / demand_kwh if demand_kwh > 0 else 0.0
    sell = feed_in * export_kwh / supply_kwh if supply_kwh > 0 else 0.0
    return buy, sell


def membership_fees(round_no: int, n: int, fee_per_period: float, period_rounds: int) -> np.ndarray:
    """Fee each of `n` members owes in round `round_no` [currency]: the whole period's
    fee in the first round of each period (rounds 0, period_rounds, 2 period_rounds, ...).

    >>> membership_fees(0, 2, 5.0, 96).tolist(), membership_fees(1, 2, 5.0, 96).tolist()
    ([5.0, 5.0], [0.0, 0.0])
    """
    due = fee_per_period if round_no % period_rounds == 0 else 0.0
    return np.full(n, float(due))


# -- mechanisms -------------------------------------------------------------------------------
class CommunityOptions(MechanismOptions):
    """A community manager's battery at the LV busbar (none by default)."""

    battery_kwh: Annotated[float, Field(ge=0.0)] = 0.0
    """Usable capacity of the community battery [kWh]; 0 = no battery."""
    battery_kw: Annotated[float, Field(ge=0.0)] = 0.0
    """Charge and discharge power limit of the community battery [kW]."""
    efficiency: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    """One-way charge and discharge efficiency of the community battery [0..1]."""
    initial_soc: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """State of charge of the community battery at the start of the run [0..1]."""

    @model_validator(mode="after")
    def _battery_complete(self):
        if (self.battery_kwh > 0) != (self.battery_kw > 0):
            raise ValueError(
                "expected battery_kwh and battery_kw both > 0 (a battery) or both 0 (none), found "
                f"battery_kwh={self.battery_kwh}, battery_kw={self.battery_kw}"
            )
        return self


class CommunityMechanism(Mechanism):
    """Base of the community markets: allocation by `CommunityModel`, prices by `prices`."""

    Options: ClassVar[type[MechanismOptions]] = CommunityOptions

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        o = self.options
        self.model = CommunityModel(len(self.ids), max_cuts)
        self.battery = CommunityBattery(o.battery_kwh, o.battery_kw, o.efficiency, o.initial_soc)
        self.clock = RoundClock()
        self._warned_dt = False

    def prices(self, supply_kwh: float, demand_kwh: float, import_kwh: float, export_kwh: float,
               ctx: MarketContext) -> tuple[float, float]:
        """The round's internal (buy, sell) prices [currency/kWh] from the members' totals and
        the manager's own import and export."""
        raise NotImplementedError

    def get_state(self) -> dict:
        """The community battery's stored energy and the round count (for checkpoints)."""
        return {
            "battery_soc_kwh": self.battery.soc_kwh,
            "battery_proposed_kwh": self.battery._proposed_kwh,
            "round_no": self.clock.round_no,
        }

    def set_state(self, state: dict) -> None:
        """Restore what `get_state` returned; the next clearing starts the next round."""
        self.battery.soc_kwh = float(state["battery_soc_kwh"])
        self.battery._proposed_kwh = float(state["battery_proposed_kwh"])
        self.clock = RoundClock()
        self.clock.round_no = int(state["round_no"])

    def round_hours(self, ctx: MarketContext) -> float:
        dt_h = getattr(ctx, "dt_h", None)
        if dt_h is None:
            if self.battery.capacity_kwh > 0 and not self._warned_dt:
                log.warning("the market context has no dt_h: community battery power assumes %.2f h rounds",
                            DEFAULT_ROUND_H)
                self._warned_dt = True
            return DEFAULT_ROUND_H
        return float(dt_h)

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        self.battery.begin(self.clock.tick(ctx))
        dt_h = self.round_hours(ctx)
        charge_max, discharge_max = self.battery.limits_kwh(dt_h)
        self.model.update(orders, ctx, cuts, charge_max, discharge_max)
        status, x = self.model.solve()
        if status != "ok":
            return failed_result(status, n, charges)
        bought, sold = x["bought_kwh"], x["sold_kwh"]
        charge, discharge = float(x["battery_charge_kwh"][0]), float(x["battery_discharge_kwh"][0])
        demand, supply = float(bought.sum()), float(sold.sum())
        # the manager's trade is what balances the community (exact, not the solver's rounding)
        net = demand + charge - supply - discharge
        op_import, op_export = max(net, 0.0), max(-net, 0.0)
        buy, sell = self.prices(supply, demand, op_import, op_export, ctx)
        soc = self.battery.propose(charge, discharge)
        result = ClearingResult(
            status="ok",
            bought_kwh=bought,
            sold_kwh=sold,
            import_kwh=x["imported_kwh"],
            export_kwh=x["exported_kwh"],
            curtailed_kwh=x["curtailed_kwh"],
            shed_kwh=x["shed_kwh"],
            buy_price_per_kwh=np.full(n, buy),
            sell_price_per_kwh=np.full(n, sell),
            charges=charges,
            price_per_kwh=buy if buy == sell and demand > QTY_TOL else float("nan"),
            welfare=float(
                (orders.bid_per_kwh - charges.buy) @ bought - (orders.ask_per_kwh + charges.sell) @ sold
                - ctx.retail_price_per_kwh * op_import + ctx.feed_in_price_per_kwh * op_export
                - ctx.voll_per_kwh * x["shed_kwh"].sum() - ctx.curtail_cost * x["curtailed_kwh"].sum()
            ),
            operator_import_kwh=op_import,
            operator_export_kwh=op_export,
        )
        result.info = {
            "community_supply_kwh": supply,
            "community_demand_kwh": demand,
            "community_buy_price_per_kwh": buy,
            "community_sell_price_per_kwh": sell,
            "battery_charge_kwh": charge,
            "battery_discharge_kwh": discharge,
            "battery_soc_kwh": soc,
            "round_no": self.clock.round_no,
            **self.extra_info(supply, demand, ctx),
        }
        result.trades = community_trades(result, self.ids, ctx)
        return result

    def extra_info(self, supply_kwh: float, demand_kwh: float, ctx: MarketContext) -> dict:
        return {}


def community_trades(r: ClearingResult, ids: list[str], ctx: MarketContext, manager: str = MANAGER) -> pd.DataFrame:
    """Each member's trade with the manager, the manager's trades with the outside party,
    and any member's own outside trades (TRADE_COLUMNS)."""
    ids_arr = np.asarray(ids, dtype=object)
    s = np.flatnonzero(r.sold_kwh > QTY_TOL)
    b = np.flatnonzero(r.bought_kwh > QTY_TOL)
    rows = []
    if r.operator_import_kwh > QTY_TOL:
        p = ctx.retail_price_per_kwh
        rows.append((ctx.outside_party, manager, r.operator_import_kwh, p, p, 0.0))
    if r.operator_export_kwh > QTY_TOL:
        p = ctx.feed_in_price_per_kwh
        rows.append((manager, ctx.outside_party, r.operator_export_kwh, p, p, 0.0))
    rows += outside_trades(r, ids, ctx)
    extra = list(zip(*rows, strict=True)) if rows else [()] * len(TRADE_COLUMNS)
    # members sell to the manager at the sell price and buy from it at the buy price
    member_price = np.r_[r.sell_price_per_kwh[s], r.buy_price_per_kwh[b]]
    columns = [
        np.r_[ids_arr[s], np.full(len(b), manager, dtype=object), np.array(extra[0], dtype=object)],
        np.r_[np.full(len(s), manager, dtype=object), ids_arr[b], np.array(extra[1], dtype=object)],
        np.r_[r.sold_kwh[s], r.bought_kwh[b], np.array(extra[2], dtype=float)],
        np.r_[member_price, np.array(extra[3], dtype=float)],
        np.r_[member_price, np.array(extra[4], dtype=float)],
        np.r_[r.charges.sell[s], r.charges.buy[b], np.array(extra[5], dtype=float)],
    ]
    return pd.DataFrame(dict(zip(TRADE_COLUMNS, columns, strict=True)))


class SupplyDemandRatio(CommunityMechanism):
    """Community market priced by the supply-demand ratio (see `sdr_prices`).

    Liu, Yu, Wang, Li, Ma and Lei, 2017, "Energy-sharing model with price-based demand
    response for microgrids of peer-to-peer prosumers", IEEE TPWRS 32(5):3569-3583; also
    Liu, Yu, Wang and Wang, 2017, IEEE TII 13(3):1088-1098. Supply and demand are the
    members' served totals. Without a community battery the manager breaks even; with
    one its round bill is ``feed_in battery_charge - retail battery_discharge`` (it keeps
    the battery's value). ``info['sdr']`` holds the ratio (inf without demand).
    """

    name = "community_sdr"

    def prices(self, supply_kwh, demand_kwh, import_kwh, export_kwh, ctx):
        return sdr_prices(supply_kwh, demand_kwh, ctx.retail_price_per_kwh, ctx.feed_in_price_per_kwh)

    def extra_info(self, supply_kwh, demand_kwh, ctx):
        return {"sdr": supply_kwh / demand_kwh if demand_kwh > 0 else float("inf")}


class MidMarketRate(CommunityMechanism):
    """Community market priced at the mid-market rate (see `mmr_prices`).

    Long, Wu, Zhang, Thomas, Cheng and Jenkins, 2017, "Peer-to-peer energy trading in a
    community microgrid", IEEE PES General Meeting. Without a community battery the
    manager breaks even; with one its round bill is ``feed_in battery_charge - retail
    battery_discharge``.
    """

    name = "community_mmr"

    def prices(self, supply_kwh, demand_kwh, import_kwh, export_kwh, ctx):
        return mmr_prices(supply_kwh, demand_kwh, ctx.retail_price_per_kwh, ctx.feed_in_price_per_kwh)


class BillSharing(CommunityMechanism):
    """Community market whose bill with the outside party is shared (see `bill_sharing_prices`).

    Long et al., 2017, "Peer-to-peer energy trading in a community microgrid", IEEE PES
    General Meeting. Rule: internal energy is free; buyers share the cost of the
    manager's imports in proportion to their demand, sellers the revenue of its exports
    in proportion to their supply. The manager breaks even in every round, battery or
    not: the battery lowers the shared import cost (and export revenue) instead.
    """

    name = "bill_sharing"

    def prices(self, supply_kwh, demand_kwh, import_kwh, export_kwh, ctx):
        return bill_sharing_prices(supply_kwh, demand_kwh, import_kwh, export_kwh,
                                   ctx.retail_price_per_kwh, ctx.feed_in_price_per_kwh)


class FixedPriceOptions(CommunityOptions):
    """A fixed-price pool and its membership fee (plus the optional community battery)."""

    price_per_kwh: Annotated[float, Field(ge=0.0)] | None = None
    """Price members pay and receive per kWh traded with the pool [currency/kWh];
    default: the round's mid-market rate (retail + feed-in) / 2."""
    fee_per_period: Annotated[float, Field(ge=0.0)] = 0.0
    """Membership fee each member pays per period [currency]."""
    period_rounds: Annotated[int, Field(ge=1)] = 2880
    """Length of a fee period [rounds] (2880 = 30 days of 15-minute rounds)."""


class FixedPricePool(CommunityMechanism):
    """A virtual pool at a fixed price per kWh, funded by a periodic membership fee.

    Every member buys from and sells to the pool at ``price_per_kwh``; the pool's
    operator (the community manager) trades the net position with the outside party at
    retail and feed-in and keeps the difference: its energy bill is ``(retail - price)
    deficit`` in a net-importing round and ``(price - feed_in) surplus`` in a
    net-exporting one. Every member owes a membership fee of ``fee_per_period`` in the
    first round of each period of ``period_rounds`` rounds (rounds 0, period_rounds,
    ...), paid to the operator. This is the community-based market of Sousa, Soares,
    Pinson, Moret, Baroche and Sorin, 2019, "Peer-to-peer and community-based markets: a
    comprehensive review", Renew. Sustain. Energy Rev. 104 (Sect. 3.2), with a flat price
    and a subscription, as in the sonnenCommunity scheme reviewed by Zhang, Wu, Long and
    Cheng, 2017, "Review of existing peer-to-peer energy trading projects", Energy
    Procedia 105:2563-2568.

    The fee does not enter the energy prices. The round's fee per member is in
    ``info['membership_fee']`` (an array aligned with the participants [currency]; the
    round number in ``info['round_no']``, see `RoundClock`), for settlement to add to
    each member's bill and take off the operator's. Members are no worse off than alone
    with the outside party, fee aside, when feed_in <= price <= retail.
    """

    name = "fixed_price"
    Options = FixedPriceOptions

    def price(self, ctx: MarketContext) -> float:
        p = self.options.price_per_kwh
        return 0.5 * (ctx.retail_price_per_kwh + ctx.feed_in_price_per_kwh) if p is None else float(p)

    def prices(self, supply_kwh, demand_kwh, import_kwh, export_kwh, ctx):
        p = self.price(ctx)
        return p, p

    def fees_due(self, round_no: int) -> np.ndarray:
        """Membership fee each participant owes in round `round_no` [currency]."""
        o = self.options
        return membership_fees(round_no, len(self.ids), o.fee_per_period, o.period_rounds)

    def extra_info(self, supply_kwh, demand_kwh, ctx):
        return {
            "membership_fee": self.fees_due(max(self.clock.round_no, 0)),
            "membership_fee_per_period": float(self.options.fee_per_period),
            "fee_period_rounds": int(self.options.period_rounds),
        }


MECHANISMS: list = [SupplyDemandRatio, MidMarketRate, BillSharing, FixedPricePool]
