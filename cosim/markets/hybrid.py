"""Hybrid market: P2P inside communities, community managers trade between them.

Sousa, Soares, Pinson, Moret, Baroche and Sorin, 2019, "Peer-to-peer and
community-based markets: a comprehensive review", Renew. Sustain. Energy Rev. 104
(Sect. 3.3, hybrid P2P market: communities trade P2P among their members; their
managers trade with each other and with the upper level). Here, each round:

1. **Inside each community** any double auction (Options ``inner``: ``uniform``, the
   default, ``pay_as_bid``, ``mcafee``, ``huang`` or ``vcg``; ``inner_options`` its
   own options) clears the members' orders, one persistent mechanism object per
   community built once. Its outside party is the community's manager, without caps:
   what the inner auction leaves unmatched is the community's surplus and deficit.
   Communities (Options ``communities``): ``feeder``, one per LV feeder (the branch
   leaving the transformer's busbar; members at the busbar form one more), or a
   mapping participant id -> community name (unmapped participants trade alone).
2. **Between communities** the managers trade those surpluses and deficits in a
   uniform-price double auction (k-pricing, `UniformDoubleAuction`). A manager's bids
   and asks are its members' unmatched orders at their own prices (a stepped curve),
   so the second level clears the unmatched orders of all communities together and
   each kWh stays attributed to the member behind it. With a trade reduction inside
   (``mcafee``, ``huang``) the members it excluded are kept out (see *Truthfulness*).
3. **With the outside party**: what is still unmatched goes to the outside party at
   retail and feed-in within its caps (islanded: shed or curtailed beyond them). The
   managers pass it through at the tariffs, so it is recorded as each member's own
   import and export (no network charge, no margin for the manager); the operator's
   own outside trades are zero.

A member's market energy (`bought_kwh`, `sold_kwh`) is what it traded at both levels;
its buy (sell) price is the volume-weighted mean of its two levels' prices, so each
level's individual rationality carries over. ``price_per_kwh`` is the single price if
every market kWh traded at one, else NaN (prices then differ by community; see
``info``). The trade table lists member-to-member trades at both levels (so that the
network feedback attributes each kWh to the members behind it); ``info`` also holds
``manager_trades`` (the second level as trades between managers: selling community,
buying community, kWh, volume-weighted prices), ``community_price_per_kwh`` (each inner
auction's clearing price), ``inner_kwh`` and ``second_level_kwh``, and per member
``inner_bought_kwh`` / ``inner_sold_kwh`` and ``kept_out_demand_kwh`` /
``kept_out_supply_kwh`` (what was kept out of the second level, zero unless the inner
auction reduces trade). Auctioneer surpluses or deficits of either level (e.g. pay-as-bid,
McAfee, Huang or VCG inside) are settled to ``market_operator``, so the bills still sum
to zero.

Truthfulness. McAfee's trade reduction (R. P. McAfee, 1992, "A dominant strategy double
auction", J. Econ. Theory 56(2):434-450) and the multi-unit one of Huang, Scheller-Wolf
and Sycara (2002, "Design of a multi-unit double auction e-market", Computational
Intelligence 18(4):596-617) make truthful bidding dominant by giving up the marginal
trade: the excluded pair would have set the price. If the second level traded that pair
again, shading into it would pay: in McAfee's example (bids 17, 14, 13, 9, 6, asks 1, 4,
5, 8, 13; buyers pay 9) the buyer of value 13 bidding 8.9 became the excluded buyer and
bought from the excluded seller at the second level at 8.45, utility 4.55 instead of 4.
So with ``inner: mcafee`` or ``huang``, every member whose unmatched order still crosses
another unmatched order of its own community (`crossing_members`: the orders the
reduction excluded, and with McAfee on ranks the rationed remainders that still cross)
reaches the second level with a bid (ask) that never trades P2P: what it has left goes
to the outside party at the tariffs (islanded: within the caps, else shed or curtailed),
exactly as in the plain auction. What the reduction removed is never traded again.
(Under network cuts, crossing orders that the cuts kept apart inside the community are
kept out too.)

The property this gives, and its limit:

- A hybrid of one community is exactly its inner auction with the outside party behind
  it (the community's other unmatched orders cannot cross), so it is dominant-strategy
  truthful where the inner rule is: McAfee along the kWh curves for equal-size orders,
  Huang and McAfee on ranks (``k_counts: orders``) for any sizes, prices reported for
  the true quantities. Tested by a search for profitable misreports in tests/test_hybrid.py.
- With several communities the whole is not truthful, whatever the inner rule. The
  second level is a k-double auction, where a member whose order sets the price can gain
  by misreporting (Satterthwaite and Williams, 1989, J. Econ. Theory 48), and it serves a community's unmatched buyers below
  that community's price whenever another community's unmatched sellers are cheaper: a
  buyer who trades inside may then do better by shading out of its community's trade
  (and a seller by inflating). No sequential design avoids this; a market that is
  truthful across communities must price every member off the whole market's curves,
  which is what ``mcafee`` and ``huang`` on their own do. Inside a community the inner
  rule still holds: what a member trades there and at what price follow it, and what the
  reduction removed cannot be won back.

Network cuts. A cut is linear in the injections, ``sum_n coef[k, n] inj[n] <= rhs[k]``,
and the injections depend only on what is curtailed and shed, not on who trades with
whom. Each community's inner auction gets the cuts restricted to its members with a
share of the right-hand side: ``coef_c inj_ref_c + share_c slack``, where ``inj_ref``
is a reference dispatch that meets every cut and cap (the welfare-maximising pool over
all participants, `PoolModel`), ``slack = rhs - coef inj_ref`` and ``share_c`` the
community's part of ``sum |coef[k]|``. The shares add up to at most one, so the
communities' inner dispatches together keep every cut, and each is feasible (its part
of ``inj_ref`` is). The second level gets the full cuts with the inner trades'
injections moved to the right-hand side, and may curtail or shed what is left over.
The combined dispatch is then checked against every cut and cap; should it fail (or
the second level be infeasible), the round is re-solved once with every order reduced
by the reference dispatch's curtailment and shedding, for which both levels are
feasible by construction (``info['resolved']``). With one community the reference is
not needed and the inner auction gets the cuts as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import field_validator, model_validator

from cosim.config.errors import InputError
from cosim.markets.auction_rules import PRICE_SLACK, fill_in_merit_order, merit_order
from cosim.markets.auctions import MECHANISMS as AUCTION_MECHANISMS
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
    Participants,
    failed_result,
)
from cosim.markets.pool import OUTSIDE_EPSILON, PoolModel
from cosim.markets.uniform import UniformDoubleAuction

#: Slack on a network cut or an outside cap in the final check [kWh].
CHECK_TOL = 1e-6
#: Shedding and curtailment costs inside a community when the round's are zero (no
#: outside party): the inner auction must hand what it leaves to its manager [currency/kWh].
INNER_PENALTY_PER_KWH = 1e-3
#: Inner auctions that reduce trade (McAfee 1992; Huang, Scheller-Wolf and Sycara 2002):
#: the members they exclude are kept out of the second level.
TRADE_REDUCTIONS = ("huang", "mcafee")


#: The double auctions that can clear inside a community, by registry name: each hands
#: what it leaves unmatched to its outside party (here the community's manager). Looked up
#: here, not in the registry (`cosim.markets.MECHANISMS`), which imports this module.
INNER_MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls for cls in (UniformDoubleAuction, *AUCTION_MECHANISMS)
}


def double_auctions() -> list[str]:
    """Registry names of the double auctions that can clear inside a community."""
    return sorted(INNER_MECHANISMS)


class HybridOptions(MechanismOptions):
    """Communities and the auction that clears inside each."""

    communities: Literal["feeder"] | dict[str, str] = "feeder"
    """``feeder``: one community per LV feeder (the participants' feeder); or a mapping
    participant id -> community name. Participants the mapping leaves out trade alone
    (each its own community)."""
    inner: str = "uniform"
    """Registry name of the double auction that clears inside each community."""
    inner_options: dict[str, Any] = {}
    """Options of the inner auction (its own ``Options``)."""

    @field_validator("inner")
    @classmethod
    def _inner_is_a_double_auction(cls, name: str) -> str:
        if name not in double_auctions():
            raise ValueError(f"expected a double auction, one of {double_auctions()}, found {name!r}")
        return name

    @model_validator(mode="after")
    def _inner_options_valid(self):
        INNER_MECHANISMS[self.inner].Options.model_validate(self.inner_options)
        return self


def subset(p: Participants, idx: np.ndarray) -> Participants:
    """The participants at positions `idx`, with their part of the distance matrix."""
    dist = None if p.distance_km is None else p.distance_km[np.ix_(idx, idx)]
    return Participants([p.ids[i] for i in idx], p.bus[idx], p.feeder[idx], p.has_pv[idx], dist)


def assign_communities(p: Participants, communities: str | dict[str, str]) -> list[tuple[str, np.ndarray]]:
    """(community name, member positions) for each community, in order of first member.

    >>> ps = Participants.plain(["a", "b", "c"])
    >>> [(name, idx.tolist()) for name, idx in assign_communities(ps, {"a": "x", "c": "x"})]
    [('x', [0, 2]), ('b', [1])]
    """
    if communities == "feeder":
        labels = [f"feeder {int(f)}" if f >= 0 else "busbar" for f in p.feeder]
    else:
        unknown = sorted(set(communities) - set(p.ids))
        if unknown:
            raise InputError("market.options.communities", [
                f"expected participant ids (e.g. {p.ids[:3]}), found unknown ids {unknown}"
            ])
        labels = [communities.get(i, i) for i in p.ids]
        clash = sorted({i for i in p.ids if i not in communities} & set(communities.values()))
        if clash:
            raise InputError("market.options.communities", [
                f"expected community names that are not ids of unmapped participants, found {clash}"
            ])
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return [(name, np.array(idx, dtype=int)) for name, idx in groups.items()]


def crossing_members(bid: np.ndarray, ask: np.ndarray, demand_kwh: np.ndarray,
                     supply_kwh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The orders that could still trade with each other: walking down the bids and up the
    asks in merit order (ties by member order) while a bid covers an ask. Returns
    (buyers, sellers) as boolean masks of the members whose orders the walk reaches.

    Applied to a community's unmatched orders after a trade reduction, these are the
    orders it excluded (and, with McAfee's rule on ranks, the long side's rationed
    remainders that still cross). McAfee's reduction case (bids 17, 14, 13, 9, 6, asks 1,
    4, 5, 8, 13): the first three pairs trade, and of the unmatched orders B4 (9) and S4
    (8) still cross, B5 (6) and S5 (13) do not:

    >>> bid, ask = np.array([9.0, 6.0, 0.0, 0.0]), np.array([0.0, 0.0, 8.0, 13.0])
    >>> demand, supply = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0])
    >>> [m.tolist() for m in crossing_members(bid, ask, demand, supply)]
    [[True, False, False, False], [False, False, True, False]]
    """
    bo = merit_order(bid, demand_kwh, descending=True)
    so = merit_order(ask, supply_kwh, descending=False)
    volume, i, j = 0.0, 0, 0
    left_b = float(demand_kwh[bo[0]]) if len(bo) else 0.0
    left_s = float(supply_kwh[so[0]]) if len(so) else 0.0
    while i < len(bo) and j < len(so) and bid[bo[i]] >= ask[so[j]] - PRICE_SLACK:
        q = min(left_b, left_s)
        volume += q
        left_b -= q
        left_s -= q
        if left_b <= QTY_TOL:
            i += 1
            left_b = float(demand_kwh[bo[i]]) if i < len(bo) else 0.0
        if left_s <= QTY_TOL:
            j += 1
            left_s = float(supply_kwh[so[j]]) if j < len(so) else 0.0
    buyers = fill_in_merit_order(bo, demand_kwh, volume) > QTY_TOL
    sellers = fill_in_merit_order(so, supply_kwh, volume) > QTY_TOL
    return buyers, sellers


def never_price(orders: OrderArrays, charges: Charges, ctx: MarketContext) -> float:
    """A price so far out that a bid at minus it (an ask at plus it) never trades P2P, not
    even where the alternative is shedding and curtailing [currency/kWh]."""
    prices = np.abs(np.r_[orders.bid_per_kwh, orders.ask_per_kwh, charges.buy, charges.sell, 0.0])
    return float(2.0 * prices.max() + ctx.voll_per_kwh + ctx.curtail_cost + ctx.retail_price_per_kwh + 1.0)


@dataclasses.dataclass
class _Levels:
    """Both levels of one clearing, per participant."""

    result: ClearingResult
    inner_kwh: float
    second_kwh: float
    community_price: dict[str, float]
    manager_trades: pd.DataFrame
    inner_bought_kwh: np.ndarray
    inner_sold_kwh: np.ndarray
    kept_out_demand_kwh: np.ndarray
    kept_out_supply_kwh: np.ndarray


#: Columns of ``info['manager_trades']``: the second level as trades between managers.
MANAGER_TRADE_COLUMNS = ["seller_community", "buyer_community", "energy_kwh", "price_per_kwh",
                         "seller_price_per_kwh"]


def manager_trades(trades: pd.DataFrame, community_of: dict[str, str], outside_party: str) -> pd.DataFrame:
    """The second level's member trades summed per (selling community, buying community):
    what each manager sold to each other manager [kWh] at the volume-weighted prices
    [currency/kWh]. Trades with the outside party are left out.

    >>> t = pd.DataFrame([("s1", "b1", 1.0, 0.2, 0.2, 0.0), ("s2", "b1", 3.0, 0.1, 0.1, 0.0)], columns=TRADE_COLUMNS)
    >>> manager_trades(t, {"s1": "A", "s2": "A", "b1": "B"}, "grid").to_dict("records")
    [{'seller_community': 'A', 'buyer_community': 'B', 'energy_kwh': 4.0, 'price_per_kwh': 0.125, 'seller_price_per_kwh': 0.125}]
    """
    totals: dict[tuple[str, str], list[float]] = {}
    columns = ("seller", "buyer", "energy_kwh", "price_per_kwh", "seller_price_per_kwh")
    for seller, buyer, e, paid, got in zip(*(trades[c].to_numpy() for c in columns), strict=True):
        if seller == outside_party or buyer == outside_party:
            continue
        row = totals.setdefault((community_of[seller], community_of[buyer]), [0.0, 0.0, 0.0])
        row[0] += e
        row[1] += e * paid
        row[2] += e * got
    rows = [(s, b, e, paid / e, got / e) for (s, b), (e, paid, got) in totals.items()]
    return pd.DataFrame(rows, columns=MANAGER_TRADE_COLUMNS)


class HybridMarket(Mechanism):
    """Hybrid P2P market: a double auction per community, a uniform auction between managers.

    Sousa et al., 2019, Renew. Sustain. Energy Rev. 104 (hybrid P2P market); see the
    module docstring for the rules, the handling of network cuts, and truthfulness with a
    trade reduction inside (McAfee 1992; Huang, Scheller-Wolf and Sycara 2002): the
    members it excludes are kept out of the second level, so a one-community hybrid is as
    truthful as its inner rule; across communities the hybrid is not truthful.
    """

    name = "hybrid"
    Options: ClassVar[type[MechanismOptions]] = HybridOptions

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        o = self.options
        inner_cls = INNER_MECHANISMS[o.inner]
        self.groups = assign_communities(self.participants, o.communities)
        self.inner = {
            name: inner_cls(subset(self.participants, idx), max_cuts, o.inner_options)
            for name, idx in self.groups
            if len(idx) > 1  # a lone member has nobody to trade with inside
        }
        for inner in self.inner.values():  # their trade rows are joined into one table here
            if isinstance(inner, UniformDoubleAuction):
                inner.rows_only = True
        self.second = UniformDoubleAuction(self.participants, max_cuts)
        self.reference = PoolModel(len(self.ids), max_cuts)
        self.community_of = {self.ids[i]: name for name, idx in self.groups for i in idx}
        self.reducing = o.inner in TRADE_REDUCTIONS

    def reset_warm_start(self) -> None:
        """Forget the warm starts of every model: each community's, the second level's and
        the reference pool's."""
        for part in (*self.inner.values(), self.second, self.reference):
            reset = getattr(part, "reset_warm_start", None)
            if callable(reset):
                reset()

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        reference = None
        if len(cuts) and self.inner and len(self.groups) > 1:
            reference = self._reference(orders, ctx, cuts, charges)
            if isinstance(reference, str):
                return failed_result(reference, n, charges)
        levels = self._clear_levels(orders, ctx, cuts, charges, reference)
        resolved = False
        if isinstance(levels, str) or self._violation(levels.result, ctx, cuts):
            if reference is None:
                reference = self._reference(orders, ctx, cuts, charges)
                if isinstance(reference, str):
                    return failed_result(reference, n, charges)
            reduced = OrderArrays(
                np.maximum(orders.demand_kwh - reference["shed_kwh"], 0.0),
                np.maximum(orders.supply_kwh - reference["curtailed_kwh"], 0.0),
                orders.bid_per_kwh, orders.ask_per_kwh,
            )
            levels = self._clear_levels(reduced, ctx, cuts, charges, reference)
            if isinstance(levels, str):
                return failed_result(levels, n, charges)
            levels.result.shed_kwh = levels.result.shed_kwh + orders.demand_kwh - reduced.demand_kwh
            levels.result.curtailed_kwh = levels.result.curtailed_kwh + orders.supply_kwh - reduced.supply_kwh
            resolved = True
            if self._violation(levels.result, ctx, cuts):
                return failed_result("hybrid dispatch breaks a network cut or cap after re-solving", n, charges)
        r = levels.result
        r.welfare = float(
            (orders.bid_per_kwh - charges.buy) @ r.bought_kwh - (orders.ask_per_kwh + charges.sell) @ r.sold_kwh
            - ctx.voll_per_kwh * r.shed_kwh.sum() - ctx.curtail_cost * r.curtailed_kwh.sum()
            - OUTSIDE_EPSILON * (r.import_kwh.sum() + r.export_kwh.sum())
        )
        traded = r.bought_kwh.sum()
        r.info = {
            "communities": len(self.groups),
            "inner_kwh": levels.inner_kwh,
            "second_level_kwh": levels.second_kwh,
            "mean_price_per_kwh": float(np.nansum(r.buy_price_per_kwh * r.bought_kwh) / traded)
            if traded > QTY_TOL else float("nan"),
            "community_price_per_kwh": levels.community_price,
            "manager_trades": levels.manager_trades,
            "inner_bought_kwh": levels.inner_bought_kwh,
            "inner_sold_kwh": levels.inner_sold_kwh,
            "kept_out_demand_kwh": levels.kept_out_demand_kwh,
            "kept_out_supply_kwh": levels.kept_out_supply_kwh,
            "resolved": resolved,
        }
        return r

    # -- steps ----------------------------------------------------------------------------
    def _reference(self, orders, ctx, cuts, charges) -> dict[str, np.ndarray] | str:
        """A dispatch meeting every cut and cap: the pool over all participants."""
        self.reference.update(orders, ctx, cuts, charges)
        status, x, _ = self.reference.solve()
        return x if status == "ok" else f"reference dispatch: {status}"

    def _restricted_cuts(self, cuts: NetworkCuts, idx: np.ndarray, reference) -> NetworkCuts:
        """The cuts on community `idx`'s members, with its share of each right-hand side."""
        coef = cuts.coef[:, idx]
        if reference is None:  # the community is the whole market
            return NetworkCuts(coef, cuts.rhs, cuts.labels)
        inj = reference["injection_kwh"]
        slack = np.maximum(cuts.rhs - cuts.coef @ inj, 0.0)
        weight = np.abs(cuts.coef).sum(axis=1)
        share = np.divide(np.abs(coef).sum(axis=1), weight, out=np.zeros(len(cuts)), where=weight > 0)
        return NetworkCuts(coef, coef @ inj[idx] + share * slack, cuts.labels)

    def _clear_levels(self, orders, ctx, cuts, charges, reference) -> _Levels | str:
        n = len(self.ids)
        bought1, sold1, curtailed1, shed1 = (np.zeros(n) for _ in range(4))
        paid1, received1 = np.zeros(n), np.zeros(n)
        out_buy, out_sell = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        left_demand = np.array(orders.demand_kwh, float)
        left_supply = np.array(orders.supply_kwh, float)
        inner_ctx = dataclasses.replace(
            ctx, import_cap_kwh=np.inf, export_cap_kwh=np.inf,
            voll_per_kwh=max(ctx.voll_per_kwh, INNER_PENALTY_PER_KWH),
            curtail_cost_per_kwh=max(ctx.curtail_cost, INNER_PENALTY_PER_KWH),
        )
        frames, community_price = [], {}
        for name, idx in self.groups:
            if name not in self.inner:
                continue
            manager = f"manager {name}"
            r = self.inner[name].clear(
                OrderArrays(orders.demand_kwh[idx], orders.supply_kwh[idx], orders.bid_per_kwh[idx],
                            orders.ask_per_kwh[idx]),
                dataclasses.replace(inner_ctx, outside_party=manager),
                self._restricted_cuts(cuts, idx, reference) if len(cuts) else None,
                Charges(charges.buy[idx], charges.sell[idx]),
            )
            if not r.ok:
                return f"community {name}: {r.status}"
            if r.operator_import_kwh > QTY_TOL or r.operator_export_kwh > QTY_TOL:
                return f"community {name}: the inner mechanism traded through its operator"
            bought1[idx], sold1[idx] = r.bought_kwh, r.sold_kwh
            curtailed1[idx], shed1[idx] = r.curtailed_kwh, r.shed_kwh
            left_demand[idx], left_supply[idx] = r.import_kwh, r.export_kwh
            paid1[idx] = np.nan_to_num(r.buy_price_per_kwh) * r.bought_kwh
            received1[idx] = np.nan_to_num(r.sell_price_per_kwh) * r.sold_kwh
            if self.reducing and ctx.p2p:
                out_buy[idx], out_sell[idx] = crossing_members(
                    orders.bid_per_kwh[idx] - charges.buy[idx], orders.ask_per_kwh[idx] + charges.sell[idx],
                    r.import_kwh, r.export_kwh,
                )
            if getattr(self.inner[name], "rows_only", False):  # its rows, not a table
                rows = [row for row in self.inner[name].last_trade_rows if manager not in (row[0], row[1])]
                columns = list(zip(*rows, strict=True)) if rows else [()] * len(TRADE_COLUMNS)
                t = {c: np.array(col, dtype=object if c in ("seller", "buyer") else float)
                     for c, col in zip(TRADE_COLUMNS, columns, strict=True)}
            else:
                t = {c: r.trades[c].to_numpy() for c in TRADE_COLUMNS}
            inside = (t["seller"] != manager) & (t["buyer"] != manager)
            frames.append({c: col[inside] for c, col in t.items()})
            community_price[name] = r.price_per_kwh
        second_cuts = cuts
        if len(cuts):  # the inner trades' injections are fixed: move them to the right-hand side
            second_cuts = NetworkCuts(cuts.coef, cuts.rhs - cuts.coef @ (sold1 - bought1), cuts.labels)
        second_bid, second_ask = orders.bid_per_kwh, orders.ask_per_kwh
        if out_buy.any() or out_sell.any():
            # members a trade reduction excluded reach the second level at prices that never
            # trade P2P: their orders go to the outside party (or are shed and curtailed)
            # in the same solve, under the same cuts and caps as everyone's
            never = never_price(orders, charges, ctx)
            second_bid = np.where(out_buy, -never, orders.bid_per_kwh)
            second_ask = np.where(out_sell, never, orders.ask_per_kwh)
        r2 = self.second.clear(OrderArrays(left_demand, left_supply, second_bid, second_ask), ctx, second_cuts, charges)
        if not r2.ok:
            return f"second level: {r2.status}"
        bought = bought1 + r2.bought_kwh
        sold = sold1 + r2.sold_kwh
        with np.errstate(invalid="ignore", divide="ignore"):
            buy_price = np.where(
                bought > QTY_TOL, (paid1 + np.nan_to_num(r2.buy_price_per_kwh) * r2.bought_kwh) / bought, np.nan
            )
            sell_price = np.where(
                sold > QTY_TOL, (received1 + np.nan_to_num(r2.sell_price_per_kwh) * r2.sold_kwh) / sold, np.nan
            )
        frames.append({c: r2.trades[c].to_numpy() for c in TRADE_COLUMNS})
        frames = [f for f in frames if len(f["seller"])]
        if frames:
            trades = pd.DataFrame({c: np.concatenate([f[c] for f in frames]) for c in TRADE_COLUMNS})
        else:
            trades = pd.DataFrame(columns=TRADE_COLUMNS)
        result = ClearingResult(
            status="ok",
            bought_kwh=bought,
            sold_kwh=sold,
            import_kwh=r2.import_kwh,
            export_kwh=r2.export_kwh,
            curtailed_kwh=curtailed1 + r2.curtailed_kwh,
            shed_kwh=shed1 + r2.shed_kwh,
            buy_price_per_kwh=buy_price,
            sell_price_per_kwh=sell_price,
            charges=charges,
            price_per_kwh=single_price(trades, ctx.outside_party),
            trades=trades,
        )
        return _Levels(result, float(bought1.sum()), float(r2.bought_kwh.sum()), community_price,
                       manager_trades(r2.trades, self.community_of, ctx.outside_party), bought1, sold1,
                       np.where(out_buy, left_demand, 0.0), np.where(out_sell, left_supply, 0.0))

    @staticmethod
    def _violation(r: ClearingResult, ctx: MarketContext, cuts: NetworkCuts) -> bool:
        """True if the combined dispatch breaks a network cut or an outside cap."""
        over_cut = len(cuts) and np.max(cuts.coef @ r.injection_kwh - cuts.rhs) > CHECK_TOL
        over_import = r.import_kwh.sum() > ctx.import_cap_kwh + CHECK_TOL
        over_export = r.export_kwh.sum() > ctx.export_cap_kwh + CHECK_TOL
        return bool(over_cut or over_import or over_export)


def single_price(trades: pd.DataFrame, outside_party: str) -> float:
    """The price of every market trade if they all share one, else NaN.

    >>> t = pd.DataFrame([("a", "b", 1.0, 0.2, 0.2, 0.0), ("c", "d", 1.0, 0.2, 0.2, 0.0)], columns=TRADE_COLUMNS)
    >>> single_price(t, "grid"), single_price(t.assign(price_per_kwh=[0.2, 0.3]), "grid")
    (0.2, nan)
    """
    market = (trades.seller.to_numpy() != outside_party) & (trades.buyer.to_numpy() != outside_party)
    if not market.any():
        return float("nan")
    prices = np.concatenate([trades.price_per_kwh.to_numpy(float)[market],
                             trades.seller_price_per_kwh.to_numpy(float)[market]])
    return float(prices[0]) if np.ptp(prices) <= 1e-12 else float("nan")


MECHANISMS: list = [HybridMarket]
