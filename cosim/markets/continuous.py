"""Continuous double auction (CDA) within each round: an explicit limit order book.

The market of NRGCoin, Enerchain and Grid Singularity's GSY-e ("one-sided and two-sided
pay-as-bid markets ... clearing happens continuously", GSY-e documentation, *Two-sided
pay-as-bid market*), and the classic continuous double auction of Friedman (1991, "The
double auction market institution: a survey", in Friedman and Rust (eds.), *The Double
Auction Market: Institutions, Theories and Evidence*, Addison-Wesley, pp. 3-25): orders
arrive one at a time; an arriving order trades at once against the best standing
counter-order while their prices cross, *at the standing order's price*, and what is
left of it joins the book. Priority is price, then time of arrival.

In each round:

1. Every order (one per participant and side) is cut into ``ticks`` equal parts; in
   each tick, one part of every order arrives, in an order drawn from the seed
   (``seed``, the round's number: a round re-cleared under network feedback sees the same
   arrivals). Standing orders stay in the book for the rest of the round.
2. An arriving bid trades with the lowest standing ask while ask <= bid; an arriving ask
   with the highest standing bid while bid >= ask; each fill is at the standing order's
   price. A buyer therefore never pays more than its bid and a seller never receives less
   than its ask (individual rationality), whatever the arrival order; the prices, and who
   trades with whom, depend on it.
3. At the end of the round what is left of every order goes to the outside party at
   retail and feed-in; where its caps bind (islanded), the rest is shed or curtailed pro
   rata.

Unlike the call auction (`cosim.markets.uniform`), the CDA need not find the
welfare-maximising allocation: an early bid may take a cheap ask that a later, higher bid
valued more, and a late order may find the book already empty. The welfare of the same
orders in a call auction is therefore at least the CDA's (tested).

Network cuts. A cut bounds each participant's injection ``sold + exported - bought -
imported``, which is ``supply - demand + shed - curtailed``: who trades with whom moves
no power. The only way to meet a cut is to curtail or shed. With cuts (or where the
outside party's caps may bind) the welfare-maximising pool (`PoolModel`, one LP, built on
first need) is solved for the curtailment and shedding that meet them, and each
participant's tradable quantity is capped at what that leaves: its order minus its
curtailment (or shedding). The book then trades only the capped quantities, so every
injection is the pool's and every cut holds.

Budget balance: every fill is paid by its buyer to its seller at one price, so the market
operator keeps nothing. Each participant's P2P price is the volume-weighted mean of its
fills; ``price_per_kwh`` is the round's single price when all fills share one, else NaN,
and ``info["mean_price_per_kwh"]`` is the volume-weighted mean of all fills.

NRGCoin (Mihaylov et al. 2014, "NRGcoin: virtual currency for trading of renewable energy
in smart grids", 11th Int. Conf. on the European Energy Market) mints a token for every
kWh of green energy injected; ``token_per_kwh_injected`` > 0 records the tokens minted
this round (``info["tokens_minted"]``, over each participant's sold and exported kWh). It is
an information figure: tokens do not enter the bills.

Quantities per round [kWh], prices [currency/kWh].
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from pydantic import Field

from cosim.markets.base import (
    QTY_TOL,
    Charges,
    ClearingResult,
    MarketContext,
    Mechanism,
    MechanismOptions,
    NetworkCuts,
    OrderArrays,
    failed_result,
    outside_trades,
    trade_frame,
)
from cosim.markets.pool import PoolModel


@dataclass(frozen=True)
class Fill:
    """One match in the book: `quantity_kwh` from `seller` to `buyer` at `price_per_kwh`."""

    seller: int
    buyer: int
    quantity_kwh: float
    price_per_kwh: float


@dataclass
class LimitOrderBook:
    """A two-sided limit order book with price-time priority.

    Standing bids are a max-heap on price, standing asks a min-heap; ties go to the
    earlier arrival. Entries are ``[key, seq, owner, price, quantity_left]``.

    >>> book = LimitOrderBook()
    >>> book.submit(0, "sell", 0.10, 2.0), book.submit(1, "sell", 0.12, 2.0)
    ([], [])
    >>> book.submit(2, "buy", 0.20, 3.0)  # takes the cheaper ask first, at the asks' prices
    [Fill(seller=0, buyer=2, quantity_kwh=2.0, price_per_kwh=0.1), Fill(seller=1, buyer=2, quantity_kwh=1.0, price_per_kwh=0.12)]
    >>> book.best_ask(), book.best_bid()
    (0.12, None)
    """

    bids: list = field(default_factory=list)
    asks: list = field(default_factory=list)
    _seq: int = 0

    def best_bid(self) -> float | None:
        return self.bids[0][3] if self.bids else None

    def best_ask(self) -> float | None:
        return self.asks[0][3] if self.asks else None

    def submit(self, owner: int, side: str, price_per_kwh: float, quantity_kwh: float) -> list[Fill]:
        """Match an arriving order against the standing counter-orders while prices cross,
        each fill at the standing order's price; rest what is left. Returns the fills in
        the order they happen. An order never trades with its owner's own standing order."""
        is_buy = side == "buy"
        counter = self.asks if is_buy else self.bids
        fills, skipped, left = [], [], float(quantity_kwh)
        while left > QTY_TOL and counter:
            top = counter[0]
            crosses = top[3] <= price_per_kwh if is_buy else top[3] >= price_per_kwh
            if not crosses:
                break
            if top[2] == owner:
                skipped.append(heapq.heappop(counter))
                continue
            q = min(left, top[4])
            seller, buyer = (top[2], owner) if is_buy else (owner, top[2])
            fills.append(Fill(int(seller), int(buyer), q, float(top[3])))
            left -= q
            top[4] -= q
            if top[4] <= QTY_TOL:
                heapq.heappop(counter)
        for entry in skipped:
            heapq.heappush(counter, entry)
        if left > QTY_TOL:
            own = self.bids if is_buy else self.asks
            key = -price_per_kwh if is_buy else price_per_kwh
            heapq.heappush(own, [key, self._seq, owner, float(price_per_kwh), left])
        self._seq += 1
        return fills


def arrivals(demand_kwh: np.ndarray, supply_kwh: np.ndarray, ticks: int,
             rng: np.random.Generator) -> list[tuple[int, str, float]]:
    """The round's arrivals ``(participant, side, quantity_kwh)``: in each of `ticks`
    ticks, a ``1/ticks`` part of every order, in an order drawn from `rng`.

    >>> arrivals(np.array([1.0, 0.0]), np.array([0.0, 2.0]), 2, np.random.default_rng(0))
    [(0, 'buy', 0.5), (1, 'sell', 1.0), (0, 'buy', 0.5), (1, 'sell', 1.0)]
    """
    orders = [(int(i), "buy", float(q)) for i, q in enumerate(demand_kwh) if q > QTY_TOL]
    orders += [(int(i), "sell", float(q)) for i, q in enumerate(supply_kwh) if q > QTY_TOL]
    out = []
    for _ in range(ticks):
        for j in rng.permutation(len(orders)):
            i, side, q = orders[j]
            out.append((i, side, q / ticks))
    return out


def run_book(demand_kwh: np.ndarray, supply_kwh: np.ndarray, bid_per_kwh: np.ndarray, ask_per_kwh: np.ndarray,
             ticks: int, rng: np.random.Generator) -> list[Fill]:
    """Every fill of one round's continuous double auction, in the order they happen."""
    book, fills = LimitOrderBook(), []
    for i, side, q in arrivals(demand_kwh, supply_kwh, ticks, rng):
        price = bid_per_kwh[i] if side == "buy" else ask_per_kwh[i]
        fills += book.submit(i, side, float(price), q)
    return fills


class ContinuousOptions(MechanismOptions):
    """Settings of the continuous double auction."""

    ticks: Annotated[int, Field(ge=1, le=100)] = 1
    """Arrival ticks per round: each order arrives in this many equal parts, one per tick [-]."""
    seed: int = 0
    """Seed of the arrival order (with the round's number) [-]."""
    token_per_kwh_injected: Annotated[float, Field(ge=0.0)] = 0.0
    """NRGCoin-style tokens minted per kWh sold or exported (information only) [token/kWh]."""


class ContinuousDoubleAuction(Mechanism):
    """Continuous double auction on an explicit limit order book (see the module docstring)."""

    name = "continuous"
    Options = ContinuousOptions

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        self._pool: PoolModel | None = None

    @property
    def pool(self) -> PoolModel:
        """The pool LP that finds the curtailment and shedding the cuts need (built on first use)."""
        if self._pool is None:
            self._pool = PoolModel(len(self.ids), self.max_cuts)
        return self._pool

    def rng(self, ctx: MarketContext) -> np.random.Generator:
        """The arrival order's generator: the seed and the round (0 outside a run)."""
        return np.random.default_rng([self.options.seed, ctx.round_no or 0])

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        demand = np.asarray(orders.demand_kwh, float)
        supply = np.asarray(orders.supply_kwh, float)
        shed, curtailed = np.zeros(n), np.zeros(n)
        if len(cuts) or demand.sum() > ctx.import_cap_kwh + QTY_TOL or supply.sum() > ctx.export_cap_kwh + QTY_TOL:
            self.pool.update(orders, ctx, cuts, charges)
            status, x, _ = self.pool.solve()
            if status != "ok":
                return failed_result(status, n, charges)
            shed, curtailed = np.minimum(x["shed_kwh"], demand), np.minimum(x["curtailed_kwh"], supply)
        tradable_demand, tradable_supply = demand - shed, supply - curtailed
        fills = []
        if ctx.p2p:
            fills = run_book(tradable_demand, tradable_supply, np.asarray(orders.bid_per_kwh, float),
                             np.asarray(orders.ask_per_kwh, float), self.options.ticks, self.rng(ctx))
        return self._result(fills, orders, tradable_demand, tradable_supply, shed, curtailed, ctx, charges)

    def _result(self, fills: list[Fill], orders: OrderArrays, demand: np.ndarray, supply: np.ndarray,
                shed: np.ndarray, curtailed: np.ndarray, ctx: MarketContext, charges: Charges) -> ClearingResult:
        n = len(self.ids)
        bought, sold, paid, received = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        for f in fills:
            bought[f.buyer] += f.quantity_kwh
            sold[f.seller] += f.quantity_kwh
            paid[f.buyer] += f.quantity_kwh * f.price_per_kwh
            received[f.seller] += f.quantity_kwh * f.price_per_kwh
        # the remainders go to the outside party while it has room, the rest is shed or curtailed
        rest_d, rest_s = np.maximum(demand - bought, 0.0), np.maximum(supply - sold, 0.0)
        imp_share = min(1.0, ctx.import_cap_kwh / rest_d.sum()) if rest_d.sum() > QTY_TOL else 1.0
        exp_share = min(1.0, ctx.export_cap_kwh / rest_s.sum()) if rest_s.sum() > QTY_TOL else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            buy_price = np.where(bought > QTY_TOL, paid / bought, np.nan)
            sell_price = np.where(sold > QTY_TOL, received / sold, np.nan)
        prices = {round(f.price_per_kwh, 12) for f in fills}
        volume = float(bought.sum())
        welfare = float(np.asarray(orders.bid_per_kwh) @ bought - np.asarray(orders.ask_per_kwh) @ sold)
        result = ClearingResult(
            status="ok", bought_kwh=bought, sold_kwh=sold, import_kwh=rest_d * imp_share,
            export_kwh=rest_s * exp_share, curtailed_kwh=curtailed + rest_s * (1.0 - exp_share),
            shed_kwh=shed + rest_d * (1.0 - imp_share), buy_price_per_kwh=buy_price, sell_price_per_kwh=sell_price,
            charges=charges, price_per_kwh=prices.pop() if len(prices) == 1 else float("nan"), welfare=welfare,
        )
        result.trades = trade_frame(self._trade_rows(fills) + outside_trades(result, self.ids, ctx))
        injected = result.sold_kwh + result.export_kwh
        result.info = {
            "fills": float(len(fills)),
            "mean_price_per_kwh": float(paid.sum() / volume) if volume > QTY_TOL else float("nan"),
            "tokens_minted": float(self.options.token_per_kwh_injected * injected.sum()),
        }
        return result

    def _trade_rows(self, fills: list[Fill]) -> list[tuple]:
        """P2P trade rows, fills of the same pair at the same price merged, in order of first fill."""
        merged: dict[tuple[int, int, float], float] = {}
        for f in fills:
            key = (f.seller, f.buyer, f.price_per_kwh)
            merged[key] = merged.get(key, 0.0) + f.quantity_kwh
        ids = self.ids
        return [(ids[s], ids[b], q, p, p, 0.0) for (s, b, p), q in merged.items()]


MECHANISMS = [ContinuousDoubleAuction]
