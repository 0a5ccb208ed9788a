"""The double auctions' rules as pure functions of a book: merit order, trade reduction
(Huang et al.), McAfee's rank rule and equal reduction. See `cosim.markets.auctions` for
the mechanisms built on them and their sources."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cosim.markets.base import (
    QTY_TOL,
)

#: Slack on price comparisons in McAfee's rule [currency/kWh]: (0.1 + 0.2) / 2 must count
#: as lying in [0.15, 0.15].
PRICE_SLACK = 1e-12


# -- pure functions -------------------------------------------------------------------------
def merit_order(price: np.ndarray, quantity_kwh: np.ndarray, descending: bool) -> np.ndarray:
    """Indices of the orders with a positive quantity, best price first, ties by index.

    >>> merit_order(np.array([0.2, 0.3, 0.2, 0.1]), np.array([1.0, 1.0, 1.0, 0.0]), descending=True)
    array([1, 0, 2])
    """
    idx = np.flatnonzero(np.asarray(quantity_kwh) > QTY_TOL)
    key = -price[idx] if descending else price[idx]
    return idx[np.lexsort((idx, key))]


def fill_in_merit_order(order: np.ndarray, capacity_kwh: np.ndarray, volume_kwh: float) -> np.ndarray:
    """Serve `volume_kwh` along `order`, each order up to its capacity.

    Used to make the efficient allocation canonical where the pool is indifferent (orders
    at equal prices): the earlier order in the merit order is served first.

    >>> fill_in_merit_order(np.array([2, 0, 1]), np.array([1.0, 2.0, 2.0]), 3.5)
    array([1. , 0.5, 2. ])
    """
    out = np.zeros(len(capacity_kwh))
    q = np.asarray(capacity_kwh, float)[order]
    before = np.cumsum(q) - q
    out[order] = np.clip(volume_kwh - before, 0.0, q)
    return out


def equal_reduction(quantity_kwh: np.ndarray, total_kwh: float) -> np.ndarray:
    """Cut every quantity by one common amount (none below zero) until they add up to `total_kwh`.

    The rationing of the long side in Huang, Scheller-Wolf and Sycara (2002): when the
    trading buyers want more than the trading sellers offer (or the reverse), each trader
    on the long side gives up the same amount; one whose quantity is smaller than that
    amount trades nothing and the rest share its part of the cut (the paper's footnote;
    the same rule as pymarket's ``update_quantity``). The short side trades in full.

    >>> equal_reduction(np.array([1.0, 2.0, 3.0]), 5.4)
    array([0.8, 1.8, 2.8])
    >>> equal_reduction(np.array([1.0, 0.5, 2.0]), 1.7)
    array([0.35, 0.  , 1.35])
    """
    q = np.asarray(quantity_kwh, float)
    if total_kwh <= 0.0:
        return np.zeros_like(q)
    if q.sum() <= total_kwh:
        return q.copy()
    top = np.sort(q)[::-1]
    # with the j largest quantities above the cut level: level_j = (their sum - total) / j
    level = (np.cumsum(top) - total_kwh) / np.arange(1, len(top) + 1)
    below = np.append(top[1:], 0.0)
    j = int(np.argmax(level >= below))
    return np.maximum(q - level[j], 0.0)


@dataclass(frozen=True)
class Allocation:
    """P2P quantities and prices a mechanism settles on (arrays over participants)."""

    bought_kwh: np.ndarray
    sold_kwh: np.ndarray
    buy_price_per_kwh: np.ndarray
    """Energy price each buyer pays per P2P kWh, before network charges."""
    sell_price_per_kwh: np.ndarray
    """Energy price each seller receives per P2P kWh, before network charges."""
    rule: str = ""
    """Which branch of the rule applied (``p0``, ``reduction``, ``none``, ...)."""
    info: dict = field(default_factory=dict)


def _uniform_allocation(bought, sold, buy_price: float, sell_price: float, rule: str) -> Allocation:
    return Allocation(bought, sold, np.full(len(bought), buy_price), np.full(len(sold), sell_price), rule)


def _nothing(n: int) -> Allocation:
    zeros = np.zeros(n)
    return _uniform_allocation(zeros, zeros.copy(), np.nan, np.nan, "none")


def _reduce(keep_b, keep_s, qty_b, qty_s, buy_price, sell_price, rule) -> Allocation:
    """Trade `keep_b` with `keep_s` at the given prices, rationing the long side (Huang et al.)."""
    bought, sold = np.zeros(len(qty_b)), np.zeros(len(qty_s))
    volume = min(float(qty_b[keep_b].sum()), float(qty_s[keep_s].sum()))
    bought[keep_b] = equal_reduction(qty_b[keep_b], volume)
    sold[keep_s] = equal_reduction(qty_s[keep_s], volume)
    return _uniform_allocation(bought, sold, buy_price, sell_price, rule)


def trade_reduction(bid: np.ndarray, ask: np.ndarray, demand_kwh: np.ndarray, supply_kwh: np.ndarray,
                    bought: np.ndarray, sold: np.ndarray, mcafee_price: bool) -> Allocation:
    """McAfee's or Huang's trade reduction on an efficient allocation of divisible orders.

    `bid` and `ask` are the (effective) prices of every participant, `demand_kwh` and
    `supply_kwh` what each may trade P2P, `bought` and `sold` an efficient allocation.
    The marginal buyer K and seller L are the accepted orders latest in the merit order
    (highest bid first, lowest ask first, ties by index): the orders the demand and supply
    curves cross in.

    - ``mcafee_price=True`` (McAfee 1992): with K+1 and L+1 the next orders in the merit
      order, ``p0 = (b[K+1] + s[L+1]) / 2``; if ``s[L] <= p0 <= b[K]`` every efficient
      trade goes ahead at p0; otherwise K and L are excluded, buyers pay b[K] and sellers
      receive s[L]. Without a next buyer or seller there is no p0 and the reduction applies.
    - ``mcafee_price=False`` (Huang et al. 2002): K and L are always excluded, buyers pay
      b[K] and sellers receive s[L].

    After an exclusion the remaining orders keep their efficient quantities, and the long
    side is rationed by `equal_reduction` down to the short side's volume.

    Four pairs of 1-kWh orders trade; p0 = (6 + 11) / 2 = 8.5 lies in [s4, b4] = [8, 9]:

    >>> bid = np.array([17.0, 14, 13, 9, 6, 0, 0, 0, 0, 0])
    >>> ask = np.array([0.0, 0, 0, 0, 0, 1, 4, 5, 8, 11])
    >>> demand, supply = np.r_[np.ones(5), np.zeros(5)], np.r_[np.zeros(5), np.ones(5)]
    >>> bought, sold = np.r_[np.ones(4), np.zeros(6)], np.r_[np.zeros(5), np.ones(4), 0.0]
    >>> a = trade_reduction(bid, ask, demand, supply, bought, sold, mcafee_price=True)
    >>> a.rule, float(a.buy_price_per_kwh[0]), float(a.bought_kwh.sum())
    ('p0', 8.5, 4.0)
    """
    n = len(bid)
    bo = merit_order(bid, demand_kwh, descending=True)
    so = merit_order(ask, supply_kwh, descending=False)
    accepted_b = bo[bought[bo] > QTY_TOL]
    accepted_s = so[sold[so] > QTY_TOL]
    if not len(accepted_b) or not len(accepted_s):
        return _nothing(n)
    k, l_ = accepted_b[-1], accepted_s[-1]
    if mcafee_price:
        next_b = bo[np.flatnonzero(bo == k)[0] + 1:]
        next_s = so[np.flatnonzero(so == l_)[0] + 1:]
        if len(next_b) and len(next_s):
            p0 = 0.5 * (bid[next_b[0]] + ask[next_s[0]])
            if ask[l_] - PRICE_SLACK <= p0 <= bid[k] + PRICE_SLACK:
                return _uniform_allocation(bought.copy(), sold.copy(), p0, p0, "p0")
    return _reduce(accepted_b[:-1], accepted_s[:-1], bought, sold, bid[k], ask[l_], "reduction")


def rank_mcafee(bid: np.ndarray, ask: np.ndarray, demand_kwh: np.ndarray, supply_kwh: np.ndarray) -> Allocation:
    """McAfee's rule with each order one unit-demand trader of its quantity.

    The r-th highest bid is paired with the r-th lowest ask; k is the number of pairs
    with ``b_r >= s_r``. With ``p0 = (b_{k+1} + s_{k+1}) / 2``: if ``s_k <= p0 <= b_k`` the
    first k buyers and sellers trade at p0, otherwise the first k-1 trade, buyers paying
    b_k and sellers receiving s_k. The trading orders then share the smaller side's
    volume: the short side trades in full, the long side is rationed by `equal_reduction`.
    Who trades and at what price depend on the bids only through McAfee's unit rule, so
    truthful bidding stays dominant whatever the order sizes.

    McAfee's second case: b = 17, 14, 13, 9, 6 and s = 1, 4, 5, 8, 13 give k = 4,
    p0 = (6 + 13) / 2 = 9.5 > b_4 = 9, so three pairs trade, buyers paying 9, sellers getting 8:

    >>> bid = np.array([17.0, 14, 13, 9, 6, 0, 0, 0, 0, 0])
    >>> ask = np.array([0.0, 0, 0, 0, 0, 1, 4, 5, 8, 13])
    >>> demand, supply = np.r_[np.ones(5), np.zeros(5)], np.r_[np.zeros(5), np.ones(5)]
    >>> a = rank_mcafee(bid, ask, demand, supply)
    >>> a.rule, float(a.buy_price_per_kwh[0]), float(a.sell_price_per_kwh[0]), float(a.bought_kwh.sum())
    ('reduction', 9.0, 8.0, 3.0)
    """
    n = len(bid)
    bo = merit_order(bid, demand_kwh, descending=True)
    so = merit_order(ask, supply_kwh, descending=False)
    m = min(len(bo), len(so))
    gains = bid[bo[:m]] >= ask[so[:m]]
    k = m if gains.all() else int(np.argmin(gains))
    if k == 0:
        return _nothing(n)
    if k < len(bo) and k < len(so):
        p0 = 0.5 * (bid[bo[k]] + ask[so[k]])
        if ask[so[k - 1]] - PRICE_SLACK <= p0 <= bid[bo[k - 1]] + PRICE_SLACK:
            return _reduce(bo[:k], so[:k], demand_kwh, supply_kwh, p0, p0, "p0")
    return _reduce(bo[:k - 1], so[:k - 1], demand_kwh, supply_kwh, bid[bo[k - 1]], ask[so[k - 1]], "reduction")
