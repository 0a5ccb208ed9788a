"""Double auctions with discriminatory or incentive-compatible pricing.

Four mechanisms share one welfare-maximising `PoolModel` (built once, updated each
round): the pool finds the efficient allocation under the network cuts, the outside
party's caps, network charges, shedding and curtailment; each mechanism then prices the
P2P part of it, and the trade-reduction mechanisms shrink it.

- ``pay_as_bid``: discriminatory pricing, every buyer pays its bid, every seller gets its ask.
- ``mcafee``: McAfee's (1992) trade reduction.
- ``huang``: the multi-unit trade reduction of Huang, Scheller-Wolf and Sycara (2002).
- ``vcg``: Vickrey-Clarke-Groves payments (Clarke pivot).

All prices work on *effective* bids and asks, net of each trader's share of the network
charges (``bid - charge_buy``, ``ask + charge_sell``), exactly as `UniformDoubleAuction`
does: a price is the energy price before network charges, so a buyer charged at most its
effective bid pays at most its bid, charges included. Prices are the mechanisms' own;
they are not clamped to the outside tariffs (the controllers bid inside them anyway).

What buyers pay and sellers receive need not match: the difference is the auctioneer's
surplus (or deficit) and is settled to ``market_operator`` automatically (its bill is
``-(sum paid - sum received)``, see `cosim.sim.settlement`). ``info["operator_surplus"]``
holds it for the round [currency].

Trade reduction removes P2P volume from an efficient allocation. The reduced allocation
is handed back to the pool with the P2P quantities fixed, so what a trader no longer
trades P2P goes to the outside party while it has room (its caps), and is otherwise
shed or curtailed -- and the dispatch still meets every network cut. (Moving a trader from
P2P to the outside party leaves its injection unchanged; shedding or curtailing does not,
which is why the dispatch is solved again rather than patched.) If the cuts make the fixed
quantities infeasible they become upper bounds and the pool may trade less still.

Welfare and utilities are those of the pool: a buyer values a P2P kWh at its (effective)
bid, a seller's P2P kWh costs it its (effective) ask, shedding and curtailing cost
``voll_per_kwh`` and ``curtail_cost_per_kwh`` (borne by the system, not by a trader) and
trading with the outside party is the zero-value alternative. Where the outside party
has no room (islanded at its caps) the pool may trade a pair whose bid is below its ask
rather than shed load; the trade-reduction prices then leave the operator a deficit
instead of a surplus, recorded like any other.

Quantities per round [kWh], prices [currency/kWh].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from cosim.markets.auction_rules import (
    PRICE_SLACK,
    Allocation,
    fill_in_merit_order,
    merit_order,
    rank_mcafee,
    trade_reduction,
)
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
from cosim.markets.coalition import matching_values
from cosim.markets.pool import OUTSIDE_EPSILON, PoolModel
from cosim.markets.uniform import merit_order_matching

#: Tie-breaking bonus per P2P kWh, on the buyer's and on the seller's side [currency/kWh].
#: Where the outside party is closed and shedding or curtailing costs nothing (``cosim
#: clear`` without a grid), a trade at bid = ask adds no welfare and the pool could leave
#: it or take it; the bonus makes it go ahead, as the pool's own epsilon does where the
#: outside party is open. The efficient volume, and so who is marginal, then depends on
#: the book alone. Welfare figures leave it out.
P2P_BONUS = OUTSIDE_EPSILON

def trade_frame(rows: list[tuple]) -> pd.DataFrame:
    """The trade table of `rows` (tuples in `TRADE_COLUMNS` order), typed even when empty.

    >>> trade_frame([]).dtypes.energy_kwh
    dtype('float64')
    """
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(TRADE_COLUMNS)
    return pd.DataFrame({
        name: pd.Series(values, dtype=object if name in ("seller", "buyer") else float)
        for name, values in zip(TRADE_COLUMNS, columns, strict=True)
    })


# -- shared machinery -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Book:
    """One round's orders as the mechanisms see them (arrays over participants)."""

    bid: np.ndarray
    """Effective bid: bid minus the buyer's charge share [currency/kWh]."""
    ask: np.ndarray
    """Effective ask: ask plus the seller's charge share [currency/kWh]."""
    demand_kwh: np.ndarray
    """Most each participant may buy P2P (0 without P2P)."""
    supply_kwh: np.ndarray
    voll_per_kwh: float
    curtail_cost_per_kwh: float

    @classmethod
    def of(cls, orders: OrderArrays, ctx: MarketContext, charges: Charges) -> _Book:
        p2p = 1.0 if ctx.p2p else 0.0
        return cls(
            np.asarray(orders.bid_per_kwh, float) - charges.buy,
            np.asarray(orders.ask_per_kwh, float) + charges.sell,
            np.asarray(orders.demand_kwh, float) * p2p,
            np.asarray(orders.supply_kwh, float) * p2p,
            ctx.voll_per_kwh,
            ctx.curtail_cost,
        )

    def welfare(self, x: dict[str, np.ndarray]) -> float:
        """The pool's objective without its tie-breaking epsilon [currency]."""
        return float(
            self.bid @ x["bought_kwh"] - self.ask @ x["sold_kwh"]
            - self.voll_per_kwh * x["shed_kwh"].sum() - self.curtail_cost_per_kwh * x["curtailed_kwh"].sum()
        )


class _PoolAuction(Mechanism):
    """A double auction priced on the pool's efficient allocation (shared machinery).

    Subclasses implement `allocate`: from the efficient dispatch to the P2P quantities
    and prices the mechanism settles on (or a failure message).
    """

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        self.pool = PoolModel(len(self.ids), max_cuts)

    def allocate(self, book: _Book, x: dict[str, np.ndarray], cuts: NetworkCuts) -> Allocation | str:
        raise NotImplementedError

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        book = _Book.of(orders, ctx, charges)
        self._ctx = ctx  # the outside party's caps, for the closed forms (`outside_only`)
        # nothing can trade P2P and nothing binds (e.g. the nights): the pool's answer without a solve
        solved = self.pool.trivial_solution(orders, ctx, cuts)
        self._solved = solved is None  # whether the efficient allocation took a solve
        if solved is None:
            self.pool.update(orders, ctx, cuts, charges)
            self._prefer_p2p(book)
            solved = self.pool.solve()
        status, x, _ = solved
        if status != "ok":
            return failed_result(status, n, charges)
        alloc = self.allocate(book, x, cuts)
        if isinstance(alloc, str):
            return failed_result(alloc, n, charges)
        final = self._dispatch(x, alloc, cuts)
        if isinstance(final, str):
            return failed_result(final, n, charges)
        return self._result(final, alloc, book, charges, ctx, efficient=x)

    def _prefer_p2p(self, book: _Book) -> None:
        """Add `P2P_BONUS` per P2P kWh bought and sold to the pool's objective this round."""
        h, col, n = self.pool.highs, self.pool.col, len(self.ids)
        h.changeColsCost(n, col["bought_kwh"], book.bid + P2P_BONUS)
        h.changeColsCost(n, col["sold_kwh"], -book.ask + P2P_BONUS)

    # -- steps ------------------------------------------------------------------------------
    def canonical(self, book: _Book, x: dict[str, np.ndarray], cuts: NetworkCuts) -> tuple[np.ndarray, np.ndarray]:
        """The efficient P2P allocation with ties broken by the merit order.

        Without network cuts, who of several orders at the same price is served is
        arbitrary in the pool (its optimum is not unique); the earlier order in the merit
        order is served first here, so the outcome depends on the book only. With cuts the
        orders differ by where they sit on the network and the pool's choice is kept.
        """
        if len(cuts):
            return x["bought_kwh"], x["sold_kwh"]
        volume = 0.5 * (x["bought_kwh"].sum() + x["sold_kwh"].sum())
        bought = fill_in_merit_order(merit_order(book.bid, book.demand_kwh, True), book.demand_kwh, volume)
        sold = fill_in_merit_order(merit_order(book.ask, book.supply_kwh, False), book.supply_kwh, volume)
        return bought, sold

    def outside_only(self, demand_kwh: np.ndarray, supply_kwh: np.ndarray, cuts: NetworkCuts) -> bool:
        """Whether what is not traded P2P simply goes to the outside party: no network cut,
        the outside party can take every order, and shedding and curtailing cost more than
        its tie-break (then the pool never sheds or curtails)."""
        ctx = self._ctx
        return bool(len(cuts) == 0 and demand_kwh.sum() <= ctx.import_cap_kwh and supply_kwh.sum() <= ctx.export_cap_kwh
                    and ctx.voll_per_kwh > OUTSIDE_EPSILON and ctx.curtail_cost > OUTSIDE_EPSILON)

    def _dispatch(self, x: dict[str, np.ndarray], alloc: Allocation,
                  cuts: NetworkCuts) -> dict[str, np.ndarray] | str:
        """The dispatch with the allocation's P2P quantities: the efficient one, the rest
        with the outside party (`outside_only`, no solve), or a re-solve.

        The P2P columns are fixed at the allocation; if the network cuts make that
        infeasible, they become upper bounds instead.
        """
        if (np.abs(alloc.bought_kwh - x["bought_kwh"]).max(initial=0.0) <= QTY_TOL
                and np.abs(alloc.sold_kwh - x["sold_kwh"]).max(initial=0.0) <= QTY_TOL):
            return x
        demand = x["bought_kwh"] + x["imported_kwh"] + x["shed_kwh"]
        supply = x["sold_kwh"] + x["exported_kwh"] + x["curtailed_kwh"]
        if self.outside_only(demand, supply, cuts):
            zeros = np.zeros(len(demand))
            return {"bought_kwh": alloc.bought_kwh, "sold_kwh": alloc.sold_kwh,
                    "imported_kwh": np.maximum(demand - alloc.bought_kwh, 0.0),
                    "exported_kwh": np.maximum(supply - alloc.sold_kwh, 0.0),
                    "shed_kwh": zeros, "curtailed_kwh": zeros, "injection_kwh": supply - demand}
        h, col, n = self.pool.highs, self.pool.col, len(self.ids)
        targets = (("bought_kwh", alloc.bought_kwh), ("sold_kwh", alloc.sold_kwh))
        for name, target in targets:
            h.changeColsBounds(n, col[name], target, target)
        status, final, _ = self.pool.solve()
        if status != "ok":
            for name, target in targets:
                h.changeColsBounds(n, col[name], np.zeros(n), target)
            status, final, _ = self.pool.solve()
            if status != "ok":
                return f"dispatch after {alloc.rule or 'pricing'}: {status}"
        return final

    def _result(self, x, alloc: Allocation, book: _Book, charges: Charges, ctx: MarketContext,
                efficient: dict[str, np.ndarray]) -> ClearingResult:
        bought, sold = x["bought_kwh"], x["sold_kwh"]
        buyers, sellers = bought > QTY_TOL, sold > QTY_TOL
        buy_price = np.where(buyers, alloc.buy_price_per_kwh, np.nan)
        sell_price = np.where(sellers, alloc.sell_price_per_kwh, np.nan)
        prices = np.r_[buy_price[buyers], sell_price[sellers]]
        single = len(prices) and np.ptp(prices) <= PRICE_SLACK
        paid = float(np.nansum(buy_price * bought))
        received = float(np.nansum(sell_price * sold))
        result = ClearingResult(
            trades=None,  # set below (the default would build an empty table for nothing)
            status="ok",
            bought_kwh=bought,
            sold_kwh=sold,
            import_kwh=x["imported_kwh"],
            export_kwh=x["exported_kwh"],
            curtailed_kwh=x["curtailed_kwh"],
            shed_kwh=x["shed_kwh"],
            buy_price_per_kwh=buy_price,
            sell_price_per_kwh=sell_price,
            charges=charges,
            price_per_kwh=float(prices[0]) if single else float("nan"),
            welfare=book.welfare(x),
            info={
                "rule": alloc.rule,
                "operator_surplus": paid - received,
                "efficient_kwh": float(efficient["bought_kwh"].sum()),
                "reduced_kwh": float(efficient["bought_kwh"].sum() - bought.sum()),
                "welfare_loss": book.welfare(efficient) - book.welfare(x),
                **alloc.info,
            },
        )
        ids = np.asarray(self.ids, dtype=object)
        idx = np.arange(len(ids))
        rows = [
            (ids[s], ids[b], q, buy_price[b], sell_price[s], charges.sell[s] + charges.buy[b])
            for s, b, q in merit_order_matching(idx, bought, book.bid, idx, sold, book.ask)
        ]
        rows += outside_trades(result, self.ids, ctx)
        result.trades = trade_frame(rows)
        return result


# -- the mechanisms -------------------------------------------------------------------------
class PayAsBid(_PoolAuction):
    """Discriminatory (pay-as-bid) double auction.

    Allocation: the pool's welfare optimum, as in ``uniform``. Pricing rule: every
    accepted buyer pays its own (effective) bid for each kWh it buys P2P, every accepted
    seller receives its own (effective) ask for each kWh it sells; the market operator
    keeps the spread, ``sum_i b_i bought_i - sum_j s_j sold_j``.

    Source: the discriminatory clearing of Sandholm and Suri, 2002, "Optimal clearing of
    supply/demand curves", Proc. 13th Int. Symp. on Algorithms and Computation (ISAAC),
    LNCS 2518, Springer: each buyer pays its bid price and each seller receives its ask
    price for the quantity it trades, and the party running the market keeps the
    difference. They choose the quantities to maximise that profit; with a constant price
    per kWh in every order (as here) the profit is ``sum b q - sum s q``, exactly the
    welfare the pool maximises, so their profit-maximising allocation is the efficient
    one used here. (GSY-e's "pay as bid" differs: each bilateral match trades at the
    bid, the seller receiving it too, so nothing is left to an operator.)

    Budget: the operator's surplus is exactly the P2P gains from trade. It is
    non-negative whenever every accepted bid covers every accepted ask (always, unless an
    islanded feeder has to trade at a loss rather than shed load, when the operator covers
    the gap). Individually rational with zero surplus for the traders at their reported
    prices; not truthful (buyers gain by shading their bids, sellers by raising asks).
    """

    name = "pay_as_bid"

    def allocate(self, book, x, cuts):
        return Allocation(x["bought_kwh"], x["sold_kwh"], book.bid.copy(), book.ask.copy(), "pay_as_bid")


class McAfeeOptions(MechanismOptions):
    """Settings of ``mcafee``."""

    k_counts: Literal["kwh", "orders"] = "kwh"
    """How McAfee's k (the number of efficient trades) is counted for divisible orders:
    ``kwh`` along the demand and supply curves (the pool's efficient allocation, whose
    marginal orders are the ones the curves cross in), or ``orders``, each order one
    unit-demand trader of its quantity (the r-th highest bid paired with the r-th lowest
    ask). See `McAfeeDoubleAuction`."""


class McAfeeDoubleAuction(_PoolAuction):
    """McAfee's dominant-strategy double auction (trade reduction).

    Source: R. P. McAfee, 1992, "A dominant strategy double auction", J. Econ. Theory
    56(2):434-450. Single-unit traders, bids b_1 >= b_2 >= ..., asks s_1 <= s_2 <= ...,
    k efficient trades (b_k >= s_k, b_{k+1} < s_{k+1}), p0 = (b_{k+1} + s_{k+1}) / 2:
    if s_k <= p0 <= b_k all k pairs trade at p0; otherwise the k-th pair is excluded and
    the other k-1 buyers pay b_k, the k-1 sellers receive s_k, the auctioneer keeping
    (k-1)(b_k - s_k). Truthful bidding is dominant, the mechanism is individually rational
    and weakly budget-balanced, and it loses at most the least valuable efficient trade.
    Where no (k+1)-th buyer or seller exists there is no p0 and the reduction applies (as
    if the missing bid were below, or the missing ask above, every price in the book), so
    a lone buyer and a lone seller never trade. Who trades and at what price do not
    depend on a trader's own report while it trades, which is why truthful bidding is
    dominant; ties are broken by the order of the participants.

    Orders here are divisible quantities; option ``k_counts`` picks how k is counted:

    - ``kwh`` (default): along the demand and supply curves. The efficient allocation is
      the pool's; K and L are its marginal orders (the accepted ones latest in the merit
      order), K+1 and L+1 the next orders; McAfee's test decides between p0 for every
      efficient trade and excluding K and L (the rest then ration the long side by
      `equal_reduction`, as in ``huang``). See `trade_reduction`. It is McAfee's rule
      exactly when all orders are for the same quantity, and it loses at most the marginal
      orders: the volume removed is the larger of K's and L's efficient quantities. With
      orders of different sizes it is *not* dominant-strategy truthful: a trader whose
      order holds the crossing can shift it by misreporting and so change which orders set
      p0 (``test_mcafee_kwh_unequal_sizes_is_not_truthful`` in tests/test_auctions.py
      works such a case). Where that matters use ``huang`` or ``k_counts: orders``.
    - ``orders``: each order is one unit-demand trader of its quantity and McAfee's rule
      is applied to the r-th bid and r-th ask as they stand (`rank_mcafee`); the trading
      orders share the smaller side's volume. Truthful for any order sizes (quantities
      reported truthfully) but blind to quantities when choosing who trades, so with
      unequal sizes it may trade far less than the efficient volume.

    ``info``: ``rule`` (``p0``, ``reduction`` or ``none``), ``reduced_kwh`` and
    ``welfare_loss`` against the efficient allocation, ``operator_surplus``.
    """

    name = "mcafee"
    Options: ClassVar[type[MechanismOptions]] = McAfeeOptions

    def allocate(self, book, x, cuts):
        if self.options.k_counts == "orders":
            return rank_mcafee(book.bid, book.ask, book.demand_kwh, book.supply_kwh)
        bought, sold = self.canonical(book, x, cuts)
        return trade_reduction(book.bid, book.ask, book.demand_kwh, book.supply_kwh, bought, sold, mcafee_price=True)


class HuangDoubleAuction(_PoolAuction):
    """Multi-unit trade reduction of Huang, Scheller-Wolf and Sycara.

    Source: P. Huang, A. Scheller-Wolf and K. Sycara, 2002, "Design of a multi-unit double
    auction e-market", Computational Intelligence 18(4):596-617. Buyers sorted by falling
    bid, sellers by rising ask, each order a price and a quantity; K and L are the buyer
    and the seller in whose orders the demand and supply curves cross. Buyers 1..K-1 and
    sellers 1..L-1 trade, every buyer paying b_K and every seller receiving s_L per unit;
    the short side trades its whole quantity and each trader on the long side gives up the
    same amount (`equal_reduction`). Strategy-proof with respect to the price for the
    reported quantities, individually rational, weakly budget-balanced (the operator
    keeps (b_K - s_L) per kWh traded); it loses the marginal orders' trades.

    Here K and L are the marginal orders of the pool's efficient allocation: the accepted
    orders latest in the merit order (ties by participant order). Where the curves cross
    exactly at the end of an order, that last fully served order is the marginal one; with
    network cuts the pool's efficient allocation is kept as it is. See `trade_reduction`.
    ``info``: ``rule``, ``reduced_kwh``, ``welfare_loss``, ``operator_surplus``.
    """

    name = "huang"

    def allocate(self, book, x, cuts):
        bought, sold = self.canonical(book, x, cuts)
        return trade_reduction(book.bid, book.ask, book.demand_kwh, book.supply_kwh, bought, sold, mcafee_price=False)


class VCGDoubleAuction(_PoolAuction):
    """Vickrey-Clarke-Groves double auction: efficient allocation, Clarke-pivot payments.

    Sources: Vickrey 1961 (J. Finance 16(1):8-37), Clarke 1971 (Public Choice 11:17-33),
    Groves 1973 (Econometrica 41(4):617-631), as set out in Nisan, Roughgarden, Tardos and
    Vazirani (eds.), 2007, "Algorithmic Game Theory", Cambridge University Press, ch. 9
    (VCG mechanisms, the Clarke pivot rule).

    Welfare W(x) = sum b_i bought_i - sum s_j sold_j - voll shed - curtail_cost curtailed
    (effective prices; the pool's objective without its tie-breaking terms); the
    allocation x* maximises it (the pool). For each P2P trader i, W_-i is the best welfare
    with i's P2P quantity held at zero: i stays out of the market, its demand or supply
    going to the outside party or shed or curtailed (those costs are the system's, not
    i's, so they stay in W_-i). The Clarke pivot gives trader i the utility
    ``u_i = W(x*) - W_-i >= 0``, i.e. buyer i pays ``b_i bought_i - u_i`` and seller j
    receives ``s_j sold_j + u_j`` (per kWh: divided by the quantity). Truthful reporting
    of the price is dominant (Groves), the allocation is efficient, every trader is
    individually rational, and -- as Myerson and Satterthwaite (1983, J. Econ. Theory
    29:265-281) showed it must -- the operator runs a deficit,
    ``info["vcg_deficit"] = sum received - sum paid`` [currency], settled to
    ``market_operator``. With single-unit traders and k efficient pairs every buyer pays
    max(s_k, b_{k+1}) and every seller receives min(b_k, s_{k+1}).

    Numerically W(x*) may fall short of W_-i by the pool's tie-breaking terms (about 1e-6
    per kWh); u_i is clipped at zero so individual rationality holds exactly.

    Cost: where no network cut, outside cap, shedding or curtailment can bind (no cuts
    this clearing, the outside party can take every order, VoLL and the curtailment cost
    above the tie-break: most rounds), W_-i is the double auction of the book without i,
    a sorted cumulative sum (`cosim.markets.coalition.matching_values`), for every trader
    at once: one solve in all (none where nothing can trade P2P). Otherwise one solve plus
    one per P2P trader, each a
    warm-started re-solve of the same persistent pool with the trader's P2P column bounds
    set to zero and restored after (no model is built). ``info["vcg_solves"]`` counts the
    solves; the tests check the two ways against each other.
    """

    name = "vcg"

    def closed_form(self, book: _Book, cuts: NetworkCuts) -> bool:
        """Whether each W_-i is the book's double auction without i (see the class docstring)."""
        return self.outside_only(book.demand_kwh, book.supply_kwh, cuts)

    def welfare_without(self, book: _Book, traders: np.ndarray, closed_form: bool) -> np.ndarray | str:
        """W_-i of each of `traders` [currency]: in closed form, or by a pool solve each (a
        failure message if one fails)."""
        if closed_form:
            members = np.ones((len(traders), len(self.ids)), dtype=bool)
            members[np.arange(len(traders)), traders] = False
            # the pool trades a kWh whose bid beats its ask by more than -2 (bonus + epsilon)
            return matching_values(members, book.demand_kwh, book.supply_kwh, book.bid, book.ask,
                                   2.0 * (P2P_BONUS + OUTSIDE_EPSILON))
        h, col = self.pool.highs, self.pool.col
        out = np.zeros(len(traders))
        zero = np.zeros(2)
        for k, i in enumerate(traders):
            cols = np.array([col["bought_kwh"][i], col["sold_kwh"][i]], dtype=np.int32)
            h.changeColsBounds(2, cols, zero, zero)
            status, without, _ = self.pool.solve()
            h.changeColsBounds(2, cols, zero, np.array([book.demand_kwh[i], book.supply_kwh[i]]))
            if status != "ok":
                return f"vcg without {self.ids[i]}: {status}"
            out[k] = book.welfare(without)
        return out

    def allocate(self, book, x, cuts):
        n = len(self.ids)
        bought, sold = x["bought_kwh"], x["sold_kwh"]
        best = book.welfare(x)
        buy_price, sell_price = np.full(n, np.nan), np.full(n, np.nan)
        utility = np.zeros(n)
        traders = np.flatnonzero((bought > QTY_TOL) | (sold > QTY_TOL))
        closed = self.closed_form(book, cuts)
        without = self.welfare_without(book, traders, closed)
        if isinstance(without, str):
            return without
        for i, w_minus in zip(traders, without, strict=True):
            utility[i] = max(best - w_minus, 0.0)
            # a participant with both a P2P purchase and a sale takes its utility once
            if bought[i] > QTY_TOL:
                buy_price[i] = book.bid[i] - utility[i] / bought[i]
                if sold[i] > QTY_TOL:
                    sell_price[i] = book.ask[i]
            else:
                sell_price[i] = book.ask[i] + utility[i] / sold[i]
        paid = float(np.nansum(buy_price * bought))
        received = float(np.nansum(sell_price * sold))
        return Allocation(bought, sold, buy_price, sell_price, "vcg",
                          {"vcg_deficit": received - paid, "vcg_solves": int(self._solved) + (0 if closed else len(traders)),
                           "vcg_utility_total": float(utility.sum())})


MECHANISMS: list = [PayAsBid, McAfeeDoubleAuction, HuangDoubleAuction, VCGDoubleAuction]
