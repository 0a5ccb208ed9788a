"""The Stackelberg pricing game's math (pure functions): the followers' response to the
sellers' prices, the sellers' payoffs and best responses, and the leaders' equilibrium
by best-response sweeps. See `cosim.markets.stackelberg` for the game and its sources."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cosim.markets.base import (
    QTY_TOL,
)

#: Payoffs within this of the best count as ties in the best-response search [currency].
PAYOFF_TIE = 1e-12
#: Sellers (the cheapest) a water-level computation tries first, before widening [-].
LEVEL_SELLERS = 24


# -- the game (pure functions) ------------------------------------------------------------------
@dataclass(frozen=True)
class Followers:
    """The buyers of a round as the followers see themselves (arrays over buyers)."""

    value: np.ndarray
    """alpha_n: net value of a P2P kWh against the outside party [currency/kWh]."""
    weight: np.ndarray
    """w_n: curvature of the utility [currency/kWh^2]."""
    need: np.ndarray
    """D_n: most the buyer takes P2P [kWh]."""


def follower_response(prices: np.ndarray, f: Followers, offer: np.ndarray | None = None) -> np.ndarray:
    """Each buyer's purchase from each seller [kWh] at the given prices.

    `prices` is [sellers] or [batch x sellers]; the result is [buyers x sellers] or
    [batch x buyers x sellers]. Buyer n buys min(S_m, max(0, L_n - p_m) / w_n) from seller
    m (S_m = `offer`, unbounded if None: the buyer cannot take more than a seller offers),
    with its water level L_n the lower of alpha_n and the level at which it buys D_n.

    One buyer (alpha 0.30, w 0.11, D 2). Sellers at 0.19 and 0.25: at level 0.30 it buys
    1 + 0.4545 kWh < 2, so its need does not bind. Sellers at 0.10 and 0.12: level 0.30
    would buy 3.45 kWh, so the level falls to 0.22, where it buys exactly 2 kWh. If the
    first seller offers only 0.5 kWh, the level falls only to 0.285, where it takes
    (0.285 - 0.12) / 0.11 = 1.5 kWh from the second:

    >>> f = Followers(np.array([0.30]), np.array([0.11]), np.array([2.0]))
    >>> x = follower_response(np.array([0.19, 0.25]), f)
    >>> np.round(x, 6).tolist(), round(float(x.sum()), 9)
    ([[1.0, 0.454545]], 1.454545455)
    >>> np.round(follower_response(np.array([0.10, 0.12]), f), 6).tolist()
    [[1.090909, 0.909091]]
    >>> np.round(follower_response(np.array([0.10, 0.12]), f, np.array([0.5, 5.0])), 6).tolist()
    [[0.5, 1.5]]
    """
    p = np.asarray(prices, float)
    batch = p.ndim == 2
    p = p if batch else p[None, :]
    g, s = p.shape
    if s == 0 or len(f.need) == 0:
        out = np.zeros((g, len(f.need), s))
        return out if batch else out[0]
    wd = f.weight * f.need  # [b]
    if offer is None:
        ps = np.sort(p, axis=1)  # [g x s]
        cs = np.cumsum(ps, axis=1)
        k = np.arange(1, s + 1)
        # h_k: what the buyer would take (times w) at level = the k-th lowest price, from the
        # k - 1 cheaper sellers; nondecreasing in k
        h = k * ps - cs  # [g x s]
        active = (h[:, None, :] < wd[None, :, None]).sum(axis=2)  # [g x b], >= 1
        idx = np.maximum(active, 1) - 1
        level = (wd[None, :] + np.take_along_axis(cs, idx, axis=1)) / (idx + 1)  # [g x b]
        level = np.minimum(level, f.value[None, :])
        x = np.maximum(level[:, :, None] - p[:, None, :], 0.0) / f.weight[None, :, None]
        return x if batch else x[0]
    cap = np.asarray(offer, float)
    level = water_levels(p, f, cap)
    wcap = f.weight[:, None] * cap[None, :]  # [b x s]
    x = np.clip(level[:, :, None] - p[:, None, :], 0.0, wcap[None, :, :]) / f.weight[None, :, None]
    return x if batch else x[0]


def water_levels(prices: np.ndarray, f: Followers, offer: np.ndarray, without: np.ndarray | None = None) -> np.ndarray:
    """Each buyer's water level L_n [currency/kWh] at `prices` [batch x sellers], every
    seller's `offer` [kWh] capping what a buyer takes from it: the lower of alpha_n and the
    level at which the buyer takes its need D_n. Returns [batch x buyers]. A buyer buys
    from seller m iff p_m < L_n (`follower_response`).

    With `without` (seller indices; `prices` then one row), row a is each buyer's level
    with seller without[a] left out: the others' take is H(L) less seller a's
    clip(L - p_a, 0, w S_a), whose nodes are among H's, so one sort serves every row."""
    p = np.asarray(prices, float)
    g, s = p.shape
    rows = g if without is None else len(without)
    if s == 0:  # nothing to buy: each buyer's level is its value
        return np.broadcast_to(f.value[None, :], (rows, len(f.value))).copy()
    cap = np.asarray(offer, float)  # [sellers], or [batch x sellers]
    # The cheapest sellers first: a seller priced at or above every level found without it
    # plays no part (each buyer's take from the others is the same up to that price), so
    # the levels are final once none of the sellers left out is priced below them.
    order = np.argsort(p.min(axis=0), kind="stable")
    if without is not None:  # the sellers left out are counted in H, so they come first
        rest = order[~np.isin(order, without)]
        order = np.r_[np.asarray(without, int), rest]
    k = min(s, LEVEL_SELLERS + (0 if without is None else len(without)))
    while True:
        cols = order[:k]
        level = _water_levels(p[:, cols], f, cap[..., cols], None if without is None else np.arange(len(without)))
        if k == s or level.max() <= p[:, order[k:]].min():
            return level
        k = min(s, 2 * k)


def _water_levels(p: np.ndarray, f: Followers, cap: np.ndarray, without: np.ndarray | None = None) -> np.ndarray:
    """`water_levels` over the given sellers, all of them counted (less seller `without`[a]
    in row a)."""
    g, s = p.shape
    wd = f.weight * f.need  # [b]
    # h(L) = sum_m clip(L - p_m, 0, w S_m): what the buyer takes (times w) at level L;
    # piecewise linear, its slope rises by 1 at each p_m and falls by 1 at each p_m + w S_m
    wcap = f.weight[None, :, None] * np.broadcast_to(cap, (g, s))[:, None, :]  # [g x b x s]
    nodes = np.concatenate([np.broadcast_to(p[:, None, :], (g, len(wd), s)), p[:, None, :] + wcap],
                           axis=2)  # [g x b x 2s]
    step = np.concatenate([np.ones(s), -np.ones(s)])
    order = np.argsort(nodes, axis=2, kind="stable")
    nodes = np.take_along_axis(nodes, order, axis=2)
    slope = np.cumsum(step[order], axis=2)  # slope of h just after each node
    h = np.concatenate([np.zeros((g, len(wd), 1)),
                        np.cumsum(slope[:, :, :-1] * np.diff(nodes, axis=2), axis=2)], axis=2)
    if without is not None:  # row a: H less seller a's own take, on the same nodes
        nodes = np.broadcast_to(nodes, (len(without), len(wd), 2 * s))
        h = h - np.clip(nodes - p[0, without][:, None, None], 0.0, wcap[0][:, without].T[:, :, None])
        g = len(without)
    j = (h < wd[None, :, None]).sum(axis=2)  # [g x b]: h(node j-1) < w D <= h(node j)
    binds = j < 2 * s
    jj = np.clip(j, 1, 2 * s - 1)
    h0 = np.take_along_axis(h, (jj - 1)[:, :, None], axis=2)[:, :, 0]
    h1 = np.take_along_axis(h, jj[:, :, None], axis=2)[:, :, 0]
    z0 = np.take_along_axis(nodes, (jj - 1)[:, :, None], axis=2)[:, :, 0]
    z1 = np.take_along_axis(nodes, jj[:, :, None], axis=2)[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        level = z0 + (wd[None, :] - h0) * (z1 - z0) / (h1 - h0)
    level = np.where(binds & (j >= 1), level, np.inf)
    level = np.minimum(level, f.value[None, :])
    return level


def seller_payoffs(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers) -> np.ndarray:
    """Each seller's payoff (p_m - c_m) min(S_m, sum_n x_nm) at the given prices [currency]
    (its value of the unsold rest, a constant, left out), the buyers responding with every
    seller's offer as a cap. Batched like `follower_response`."""
    x = follower_response(prices, f, offer)
    sold = np.minimum(x.sum(axis=-2), offer)
    return (np.asarray(prices, float) - cost) * sold


def _rows_interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of each row of (xp, fp) [rows x k] at the points `x`
    ([t], the same for every row, or [rows x t]), held constant beyond a row's ends; rows
    of `xp` nondecreasing. Returns [rows x t].

    >>> _rows_interp(np.array([0.0, 0.5, 2.0]), np.array([[0.0, 1.0], [0.0, 0.0]]),
    ...              np.array([[0.0, 2.0], [3.0, 3.0]])).tolist()
    [[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]]
    """
    rows, k = xp.shape
    x = np.broadcast_to(x, (rows, x.shape[-1]))
    if k == 1:
        return np.repeat(fp, x.shape[1], axis=1)
    lo, hi = min(xp[:, 0].min(), x.min()), max(xp[:, -1].max(), x.max())
    offset = (np.arange(rows) * (hi - lo + 1.0))[:, None]  # rows side by side on one sorted axis
    j = np.searchsorted((xp + offset).ravel(), (x + offset).ravel(), side="right").reshape(x.shape)
    j = np.clip(j - 1 - np.arange(rows)[:, None] * k, 0, k - 2)
    x0, x1 = np.take_along_axis(xp, j, axis=1), np.take_along_axis(xp, j + 1, axis=1)
    f0, f1 = np.take_along_axis(fp, j, axis=1), np.take_along_axis(fp, j + 1, axis=1)
    dx = x1 - x0
    frac = np.clip(np.divide(x - x0, dx, out=np.zeros_like(dx), where=dx > 0), 0.0, 1.0)
    return f0 + frac * (f1 - f0)


def best_response(m: int, prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers,
                  ceiling: float) -> tuple[float, float]:
    """Seller m's payoff-maximising price against the others' `prices`, and its payoff.

    Exact: the buyers' demand X(t) for seller m at price t is piecewise linear with
    breakpoints computed in closed form, so the payoff (t - c) min(S, X(t)) is a concave
    quadratic between consecutive breakpoints and crossings of X = S; its maximum is at a
    breakpoint, a crossing or a piece's stationary point, all of which are evaluated. Ties
    go to the lowest price.

    Buyer n with the others' H(L) = sum_k clip(L - q_k, 0, w sq_k) (what it takes from them,
    times w, at level L): at price t its level L(t) solves L + H(L) = t + w D while its need
    binds, and it buys clip(min(alpha, L(t)) - t, 0, w S) / w from m. It buys nothing at
    t >= L^-m, its level without m, so only buyers with L^-m > c count, and only the nodes
    of H (the others' prices q_k, and q_k + w sq_k where a buyer takes all seller k offers:
    the residual-demand kink) between c and L^-m; sellers priced at or above every L^-m
    play no part. The breakpoints in t, for all buyers at once (numpy over buyers and
    nodes): the images z + H(z) - w D of those nodes, alpha and alpha - w S (where the need
    stops binding or the seller's offer caps the purchase), and the t where L(t) - t
    reaches w S; the total demand X(t) merges the buyers' slope changes on one sorted
    axis. Computed by `best_responses` (numpy over sellers, buyers and breakpoints); the
    reference version (a loop over buyers on every node) is kept in the tests, which check
    that both give the same answers.

    A monopolist against one buyer with linear demand (alpha - t) / w prices at
    (alpha + c) / 2 -- here (0.30 + 0.08) / 2:

    >>> f = Followers(np.array([0.30]), np.array([0.11]), np.array([2.0]))
    >>> p, v = best_response(0, np.array([0.08]), np.array([0.08]), np.array([5.0]), f, 0.30)
    >>> round(p, 9), round(v, 9)
    (0.19, 0.11)
    """
    prices, payoffs = best_responses(np.array([m]), prices, cost, offer, f, ceiling)
    return float(prices[0]), float(payoffs[0])


def best_responses(sellers: np.ndarray, prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers,
                   ceiling: float) -> tuple[np.ndarray, np.ndarray]:
    """`best_response` of each of `sellers` to the others' `prices`, all at once (numpy over
    sellers, buyers and breakpoints): the same breakpoints, crossings, stationary points
    and tie rule, each seller's own rows padded to a common length. Returns the prices and
    the payoffs.

    >>> f = Followers(np.array([0.30]), np.array([0.088]), np.array([1.0]))
    >>> p, v = best_responses(np.array([0, 1]), np.array([0.08, 0.12]), np.array([0.08, 0.08]),
    ...                       np.array([5.0, 5.0]), f, 0.30)
    >>> np.round(p, 9).tolist()
    [0.144, 0.124]
    """
    sellers = np.asarray(sellers, int)
    price_out = np.asarray(cost, float)[sellers].copy()
    payoff_out = np.zeros(len(sellers))
    live = (price_out < ceiling) & (np.asarray(offer, float)[sellers] > QTY_TOL)
    if len(f.need) == 0 or not live.any():
        return price_out, payoff_out
    ms = sellers[live]
    a_n = len(ms)
    c, s = np.asarray(cost, float)[ms], np.asarray(offer, float)[ms]
    cap = np.repeat(np.asarray(offer, float)[None, :], a_n, axis=0)
    cap[np.arange(a_n), ms] = 0.0  # seller a left out of its own rows
    prices = np.asarray(prices, float)
    level = water_levels(prices[None, :], f, offer, ms)  # [a x b], each buyer without a
    keep = level > c[:, None]
    if not keep.any():
        return price_out, payoff_out
    rel = prices < level[keep].max()
    q, sq = prices[rel], cap[:, rel]  # [s'], [a x s']
    alpha, w = f.value, f.weight
    wd = w * f.need
    ws = w[None, :] * s[:, None]  # [a x b]
    wsq = w[None, :, None] * sq[:, None, :]  # [a x b x s']
    z = np.concatenate([np.broadcast_to(q, wsq.shape), q + wsq], axis=2)
    step = np.concatenate([np.ones(wsq.shape), -np.ones(wsq.shape)], axis=2)  # H's slope changes
    inside = (z > c[:, None, None]) & (z < level[:, :, None]) & keep[:, :, None]
    cc = np.broadcast_to(c[:, None, None], (a_n, len(w), 1))
    end = np.where(keep, level, c[:, None])[:, :, None]
    z = np.concatenate([cc, np.where(inside, z, np.inf), end], axis=2)
    step = np.concatenate([np.zeros(cc.shape), np.where(inside, step, 0.0), np.zeros(end.shape)], axis=2)
    order = np.argsort(z, axis=2, kind="stable")
    k = int(np.isfinite(z).sum(axis=2).max())
    z, step = np.take_along_axis(z, order[:, :, :k], axis=2), np.take_along_axis(step, order[:, :, :k], axis=2)
    z = np.where(np.isfinite(z), z, end)  # pad each row with its last node
    # H at the nodes: its value and slope at c, then its slope changes node by node
    h_c = np.clip(c[:, None, None] - q, 0.0, wsq).sum(axis=2)
    open_c = ((q <= c[:, None, None]) & (c[:, None, None] < q + wsq)).sum(axis=2)
    slope = open_c[:, :, None] + np.cumsum(step, axis=2)  # just after each node
    hz = h_c[:, :, None] + np.concatenate([np.zeros(cc.shape), np.cumsum(slope[:, :, :-1] * np.diff(z, axis=2),
                                                                          axis=2)], axis=2)
    tz = z + hz - wd[None, :, None]
    d = (wd[None, :, None] - hz) - ws[:, :, None]  # L(t) - t - w S at the nodes
    cross = (d[:, :, :-1] > 0) & (d[:, :, 1:] <= 0) & keep[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = d[:, :, :-1] / (d[:, :, :-1] - d[:, :, 1:])
        t_ws = np.where(cross, tz[:, :, :-1] + frac * (tz[:, :, 1:] - tz[:, :, :-1]), np.inf)
    t_ws = t_ws.min(axis=2)  # at most one crossing per buyer (L(t) - t is nonincreasing)
    # each buyer's purchase is linear between its own breakpoints (both ends of [c, ceiling] added)
    b_n = len(w)
    own = np.concatenate([tz, np.broadcast_to(alpha[None, :, None], (a_n, b_n, 1)), (alpha[None, :] - ws)[:, :, None],
                          t_ws[:, :, None], cc, np.full((a_n, b_n, 1), ceiling)], axis=2)
    own = np.sort(np.where((own >= c[:, None, None]) & (own <= ceiling), own, np.inf), axis=2)
    own = np.where(np.isfinite(own), own, ceiling)  # [a x b x kk], from c to the ceiling
    kk = own.shape[2]
    lt = _rows_interp(own.reshape(-1, kk), tz.reshape(-1, k), z.reshape(-1, k)).reshape(own.shape)
    x_own = np.clip(np.minimum(alpha[None, :, None], lt) - own, 0.0, ws[:, :, None]) / w[None, :, None]
    x_own = x_own * keep[:, :, None]
    dt_own = np.diff(own, axis=2)
    slope_own = np.divide(np.diff(x_own, axis=2), dt_own, out=np.zeros_like(dt_own), where=dt_own > 0)
    # the total demand X(t): the buyers' slope changes merged on one sorted axis per seller
    kink = np.diff(np.concatenate([np.zeros((a_n, b_n, 1)), slope_own], axis=2), axis=2).reshape(a_n, -1)
    starts = own[:, :, :-1].reshape(a_n, -1)
    order = np.argsort(starts, axis=1, kind="stable")
    t = np.take_along_axis(starts, order, axis=1)
    rate = np.cumsum(np.take_along_axis(kink, order, axis=1), axis=1)  # slope of X just after t
    t = np.concatenate([t, np.full((a_n, 1), ceiling)], axis=1)
    x = x_own[:, :, 0].sum(axis=1)[:, None] + np.concatenate(
        [np.zeros((a_n, 1)), np.cumsum(rate * np.diff(t, axis=1), axis=1)], axis=1)
    dx = x - s[:, None]
    cut = dx[:, :-1] * dx[:, 1:] < 0
    if cut.any():  # where X crosses the seller's offer (X = S there), as more points
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = t[:, :-1] + (t[:, 1:] - t[:, :-1]) * dx[:, :-1] / (dx[:, :-1] - dx[:, 1:])
        t = np.concatenate([t, np.where(cut, tc, ceiling)], axis=1)
        x = np.concatenate([x, np.where(cut, s[:, None], x[:, -1:])], axis=1)
        order = np.argsort(t, axis=1, kind="stable")
        t, x = np.take_along_axis(t, order, axis=1), np.take_along_axis(x, order, axis=1)
    y = np.minimum(x, s[:, None])
    dt = t[:, 1:] - t[:, :-1]
    slope = np.divide(y[:, 1:] - y[:, :-1], dt, out=np.zeros_like(dt), where=dt > 0)
    intercept = y[:, :-1] - slope * t[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = np.where(slope < 0, (slope * c[:, None] - intercept) / (2.0 * slope), np.nan)
    inside = np.isfinite(t_star) & (t_star > t[:, :-1]) & (t_star < t[:, 1:])
    cand_t = np.concatenate([t, np.where(inside, t_star, ceiling)], axis=1)
    cand_y = np.concatenate([y, np.where(inside, intercept + slope * np.where(inside, t_star, 0.0), 0.0)], axis=1)
    cand_y[:, t.shape[1]:] = np.where(inside, cand_y[:, t.shape[1]:], y[:, -1:])  # padding: the ceiling's point
    payoff = (cand_t - c[:, None]) * cand_y
    best = payoff.max(axis=1)
    tied = payoff >= (best - PAYOFF_TIE * np.maximum(1.0, np.abs(best)))[:, None]
    j = np.argmin(np.where(tied, cand_t, np.inf), axis=1)
    price_out[live] = cand_t[np.arange(a_n), j]
    payoff_out[live] = payoff[np.arange(a_n), j]
    return price_out, payoff_out


def idle_sellers(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Sellers that sell nothing at `prices` (priced at or above every buyer's water level
    `level`, or offering nothing) and could sell nothing at any price from their cost up:
    their best response is their cost, at payoff 0, and no deviation gains them anything.
    Exact: such a seller plays no part in any buyer's level, so its level without it is
    the same."""
    top = level.max() if len(level) else -np.inf
    return ((prices >= top) | (offer <= QTY_TOL)) & (cost >= top)


@dataclass
class Equilibrium:
    prices: np.ndarray
    sweeps: int
    converged: bool
    last_change: float


def best_response_sweep(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers,
                        ceiling: float) -> np.ndarray:
    """One Gauss-Seidel sweep: each seller in turn plays its exact best response (an idle
    seller, `idle_sellers`, its cost, without a search)."""
    p = np.array(prices, float)
    level = water_levels(p[None, :], f, offer)[0]
    for m in range(len(p)):
        if idle_sellers(p[m:m + 1], cost[m:m + 1], offer[m:m + 1], level)[0]:
            p[m] = cost[m]  # sold nothing at p[m] >= every level, so the levels stay
            continue
        new, _ = best_response(m, p, cost, offer, f, ceiling)
        if new != p[m]:
            p[m] = new
            level = water_levels(p[None, :], f, offer)[0]
    return p


def best_response_jacobi(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers,
                         ceiling: float) -> np.ndarray:
    """One Jacobi sweep: every seller's exact best response to the same `prices`, all at
    once (`best_responses`; an idle seller, `idle_sellers`, plays its cost)."""
    p = np.asarray(prices, float)
    out = np.asarray(cost, float).copy()
    if len(p) == 0 or len(f.need) == 0:
        return out
    idle = idle_sellers(p, cost, offer, water_levels(p[None, :], f, offer)[0])
    busy = np.flatnonzero(~idle)
    if len(busy):
        out[busy], _ = best_responses(busy, p, cost, offer, f, ceiling)
    return out


def leaders_equilibrium(cost: np.ndarray, offer: np.ndarray, f: Followers, ceiling: float,
                        tol: float = 1e-9, max_sweeps: int = 200, memory: int = 5,
                        start: np.ndarray | None = None, sweep: str | Callable = "jacobi") -> Equilibrium:
    """Iterated best response (sweeps T) from every seller at its floor price (or from
    `start`, clipped to the strategy intervals), until a sweep moves no price more than
    `tol`: then every price is (within `tol`) a best response to the others', i.e. a Nash
    equilibrium of the leaders. A ``jacobi`` sweep has every seller respond to the same
    prices, all at once (`best_response_jacobi`); a ``gauss_seidel`` sweep has them respond
    in turn, each to the prices already updated (`best_response_sweep`). Both have the
    same fixed points; Jacobi takes more sweeps, each far cheaper. `sweep` may also be a
    function with the signature of `best_response_sweep`.

    With `memory` > 0 the fixed-point iteration p = T(p) is accelerated by Anderson mixing
    of the last `memory` sweeps (Walker and Ni, 2011, "Anderson acceleration for
    fixed-point iterations", SIAM J. Numer. Anal. 49(4):1715-1735), projected on the
    strategy intervals; the stopping rule is the same (one exact sweep that moves nothing),
    so acceleration changes the path, not what is certified. Without it Gauss-Seidel sweeps
    from the floors rise monotonically to the smallest equilibrium (strategic complements);
    Jacobi sweeps may instead alternate between two price vectors.

    Two sellers (cost 0.08) and one buyer whose need binds (alpha 0.30, w 0.088, D 1): the
    symmetric equilibrium is p = c + w D = 0.168 (each seller's best response to p' is
    (w D + p' + c) / 2):

    >>> f = Followers(np.array([0.30]), np.array([0.088]), np.array([1.0]))
    >>> eq = leaders_equilibrium(np.array([0.08, 0.08]), np.array([5.0, 5.0]), f, 0.30)
    >>> np.round(eq.prices, 9).tolist(), eq.converged
    ([0.168, 0.168], True)
    """
    lower = np.asarray(cost, float)
    upper = np.maximum(lower, ceiling)
    x = lower.copy() if start is None else np.clip(np.where(np.isfinite(start), start, lower), lower, upper)
    step = {"jacobi": best_response_jacobi, "gauss_seidel": best_response_sweep}.get(sweep, sweep)
    xs, gs = [], []
    change = np.inf
    for n_sweeps in range(1, max_sweeps + 1):
        tx = step(x, cost, offer, f, ceiling)
        g = tx - x
        change = float(np.abs(g).max()) if len(g) else 0.0
        if change <= tol:
            return Equilibrium(tx, n_sweeps, True, change)
        if memory <= 0:
            x = tx
            continue
        xs.append(x)
        gs.append(g)
        xs, gs = xs[-(memory + 1):], gs[-(memory + 1):]
        if len(gs) < 2:
            x = tx
            continue
        dg = np.diff(np.array(gs), axis=0).T  # [sellers x history]
        dx = np.diff(np.array(xs), axis=0).T
        gamma, *_ = np.linalg.lstsq(dg, g, rcond=None)
        x_new = x + g - (dx + dg) @ gamma
        if not np.all(np.isfinite(x_new)):
            x_new, xs, gs = tx, [], []
        x = np.clip(x_new, lower, upper)
    return Equilibrium(x, max_sweeps, False, change)


def nash_gains(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers, ceiling: float,
               points: int = 21) -> np.ndarray:
    """Each seller's largest payoff gain from a unilateral price deviation [currency].

    Deviations: `points` prices evenly spaced on [c_m, ceiling], and the equilibrium price
    plus and minus 1e-4 of that interval. The buyers' response to each is recomputed from
    scratch (`seller_payoffs`, every deviation of every seller in one batch), leaving out
    only what cannot matter: an idle seller (`idle_sellers`) gains exactly 0, and the
    sellers priced at or above every buyer's level without the deviating seller play no
    part (no buyer's level reaches them whatever it asks, since another seller can only
    lower a level). A negative gain means every deviation loses."""
    prices = np.asarray(prices, float)
    n_s = len(prices)
    gains = np.zeros(n_s)
    if n_s == 0 or len(f.need) == 0:
        return gains
    base = seller_payoffs(prices, cost, offer, f)
    idle = idle_sellers(prices, cost, offer, water_levels(prices[None, :], f, offer)[0])
    ms = np.flatnonzero((cost < ceiling) & (offer > QTY_TOL) & ~idle)
    if len(ms) == 0:
        return gains
    a_n = len(ms)
    top = water_levels(prices[None, :], f, offer, ms).max()  # no level reaches beyond
    rel = prices < top
    rel[ms] = True
    at = np.cumsum(rel)[ms] - 1  # where each deviating seller sits among the sellers kept
    span = ceiling - cost[ms]
    alt = np.concatenate([cost[ms, None] + np.linspace(0.0, 1.0, points)[None, :] * span[:, None],
                          (prices[ms] + 1e-4 * span)[:, None], (prices[ms] - 1e-4 * span)[:, None]], axis=1)
    alt = np.clip(alt, cost[ms, None], ceiling)  # [a x deviations]
    n_dev = alt.shape[1]
    batch = np.repeat(prices[rel][None, :], a_n * n_dev, axis=0)
    rows = np.arange(a_n * n_dev)
    batch[rows, np.repeat(at, n_dev)] = alt.ravel()
    payoff = seller_payoffs(batch, cost[rel], offer[rel], f)[rows, np.repeat(at, n_dev)].reshape(a_n, n_dev)
    gains[ms] = payoff.max(axis=1) - base[ms]
    return gains
