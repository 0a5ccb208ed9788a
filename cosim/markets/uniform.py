"""Uniform-price double auction with k-pricing, and the no-P2P baseline.

The pool model finds the welfare-maximising allocation. Any price in the interval of
market-clearing prices supports it; k-pricing picks ``low + k (high - low)``
(Satterthwaite and Williams, 1989, "Bilateral trade with the sealed bid k-double
auction", J. Econ. Theory 48). With network charges, buyers' bids and sellers' asks are
taken net of their charge share, so each buyer pays at most its bid and each seller
receives at least its ask, charges included.
"""

from __future__ import annotations

import time

import numpy as np

from cosim.markets.base import (
    QTY_TOL,
    Charges,
    ClearingResult,
    MarketContext,
    Mechanism,
    NetworkCuts,
    OrderArrays,
    failed_result,
    outside_trades,
    trade_frame,
)
from cosim.markets.pool import PoolModel


def clearing_price_interval(
    bid: np.ndarray, ask: np.ndarray, demand: np.ndarray, supply: np.ndarray,
    bought: np.ndarray, sold: np.ndarray, floor: float, ceiling: float,
) -> tuple[float, float]:
    """The interval of prices that support an allocation of divisible orders.

    Every accepted ask and every not-fully-served bid must lie at or below the price;
    every accepted bid and every not-fully-sold ask at or above it. Where a side leaves
    the interval open, the outside option's tariffs (`floor`, `ceiling`) close it.

    >>> clearing_price_interval(np.array([0.3, 0.2]), np.array([0.1, 0.25]), np.array([1.0, 1.0]),
    ...                         np.array([1.0, 1.0]), np.array([1.0, 0.0]), np.array([1.0, 0.0]), 0.0, 1.0)
    (0.2, 0.25)
    """
    accepted_bid = bid[bought > QTY_TOL]
    accepted_ask = ask[sold > QTY_TOL]
    unserved_bid = bid[(demand > QTY_TOL) & (bought < demand - QTY_TOL)]
    unsold_ask = ask[(supply > QTY_TOL) & (sold < supply - QTY_TOL)]
    low = max([floor, *accepted_ask, *unserved_bid])
    high = min([ceiling, *accepted_bid, *unsold_ask])
    if low > high:  # only when the outside tariffs do not bracket the orders
        low = max([*accepted_ask, *unserved_bid], default=low)
        high = min([*accepted_bid, *unsold_ask], default=high)
        if low > high:
            low = high = 0.5 * (low + high)
    return float(low), float(high)


def merit_order_matching(
    buyers: np.ndarray, bought: np.ndarray, bid: np.ndarray,
    sellers: np.ndarray, sold: np.ndarray, ask: np.ndarray,
) -> list[tuple[int, int, float]]:
    """Pair accepted buyers and sellers into bilateral trades, highest bid with lowest ask.

    A pool allocation does not say who trades with whom; this gives at most
    (buyers + sellers - 1) trades that add up to it exactly.

    >>> merit_order_matching(np.array([0, 1]), np.array([2.0, 1.0]), np.array([0.3, 0.2]),
    ...                      np.array([2]), np.array([3.0]), np.array([0.1]))
    [(2, 0, 2.0), (2, 1, 1.0)]
    """
    b_order = [i for i in np.argsort(-bid, kind="stable") if bought[i] > QTY_TOL]
    s_order = [i for i in np.argsort(ask, kind="stable") if sold[i] > QTY_TOL]
    left_b = {i: float(bought[i]) for i in b_order}
    left_s = {i: float(sold[i]) for i in s_order}
    trades, bi, si = [], 0, 0
    while bi < len(b_order) and si < len(s_order):
        b, s = b_order[bi], s_order[si]
        q = min(left_b[b], left_s[s])
        if q > QTY_TOL:
            trades.append((int(sellers[s]), int(buyers[b]), q))
        left_b[b] -= q
        left_s[s] -= q
        if left_b[b] <= QTY_TOL:
            bi += 1
        if left_s[s] <= QTY_TOL:
            si += 1
    return trades


class UniformDoubleAuction(Mechanism):
    """Uniform-price double auction, k-pricing, outside option at retail and feed-in."""

    name = "uniform"

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        self.pool = PoolModel(len(self.ids), max_cuts)
        self.rows_only = False
        """True: a clearing leaves its trade table empty and its rows in `last_trade_rows`
        (for a caller that joins several clearings' trades, e.g. the hybrid market)."""
        self.last_trade_rows: list[tuple] = []

    def clear(
        self,
        orders: OrderArrays,
        ctx: MarketContext,
        cuts: NetworkCuts | None = None,
        charges: Charges | None = None,
    ) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        t0 = time.perf_counter()
        solved = self.pool.trivial_solution(orders, ctx, cuts)
        t1 = t2 = time.perf_counter()
        if solved is None:
            self.pool.update(orders, ctx, cuts, charges)
            t2 = time.perf_counter()
            solved = self.pool.solve()
        timing = {"update_ms": (t2 - t0) * 1000.0, "solve_ms": (time.perf_counter() - t2) * 1000.0 if t2 > t1 else 0.0}
        status, x, welfare = solved
        if status != "ok":
            return failed_result(status, n, charges)
        eff_bid = orders.bid_per_kwh - charges.buy
        eff_ask = orders.ask_per_kwh + charges.sell
        if x["bought_kwh"].sum() > QTY_TOL:
            # with an outside seller at retail nobody pays more, with an outside buyer at
            # feed-in nobody takes less: such bids and asks price as the tariff
            price_bid = np.minimum(eff_bid, ctx.retail_price_per_kwh) if ctx.import_cap_kwh > QTY_TOL else eff_bid
            price_ask = np.maximum(eff_ask, ctx.feed_in_price_per_kwh) if ctx.export_cap_kwh > QTY_TOL else eff_ask
            low, high = clearing_price_interval(
                price_bid, price_ask, orders.demand_kwh, orders.supply_kwh, x["bought_kwh"], x["sold_kwh"],
                ctx.feed_in_price_per_kwh, ctx.retail_price_per_kwh,
            )
            price = low + ctx.k * (high - low)
        else:
            price = float("nan")
        result = ClearingResult(
            status="ok",
            bought_kwh=x["bought_kwh"],
            sold_kwh=x["sold_kwh"],
            import_kwh=x["imported_kwh"],
            export_kwh=x["exported_kwh"],
            curtailed_kwh=x["curtailed_kwh"],
            shed_kwh=x["shed_kwh"],
            buy_price_per_kwh=np.full(n, price),
            sell_price_per_kwh=np.full(n, price),
            charges=charges,
            price_per_kwh=price,
            welfare=welfare,
        )
        rows = self.trade_rows(result, eff_bid, eff_ask, ctx)
        if self.rows_only:  # the caller builds one table from several clearings' rows
            self.last_trade_rows = rows
        else:
            result.trades = trade_frame(rows)
        result.info = timing  # model update and HiGHS solve [ms], for the benchmark's breakdown
        return result

    def trade_rows(
        self, r: ClearingResult, eff_bid: np.ndarray, eff_ask: np.ndarray, ctx: MarketContext
    ) -> list[tuple]:
        """Bilateral P2P trades in merit order, plus each participant's outside trades, as
        rows in `TRADE_COLUMNS` order."""
        ids = np.asarray(self.ids, dtype=object)
        idx = np.arange(len(ids))
        rows = [
            (ids[s], ids[b], q, r.buy_price_per_kwh[b], r.sell_price_per_kwh[s], r.charges.sell[s] + r.charges.buy[b])
            for s, b, q in merit_order_matching(idx, r.bought_kwh, eff_bid, idx, r.sold_kwh, eff_ask)
        ]
        return rows + outside_trades(r, self.ids, ctx)


class NoP2P(UniformDoubleAuction):
    """The no-P2P baseline: every participant trades only with the outside party."""

    name = "none"

    def clear(self, orders, ctx, cuts=None, charges=None):
        from dataclasses import replace

        return super().clear(orders, replace(ctx, p2p=False), cuts, charges)
