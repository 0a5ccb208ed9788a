"""The Stackelberg pricing game's math (pure functions): the followers' response to the
sellers' prices, the sellers' payoffs and best responses, and the leaders' equilibrium
by best-response sweeps. See `cosim.markets.stackelberg` for the game and its sources."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosim.markets.base import (
    QTY_TOL,
)

#: Payoffs within this of the best count as ties in the best-response search [currency].
PAYOFF_TIE = 1e-12


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
    # h(L) = sum_m clip(L - p_m, 0, w S_m): what the buyer takes (times w) at level L;
    # piecewise linear, its slope rises by 1 at each p_m and falls by 1 at each p_m + w S_m
    wcap = f.weight[:, None] * cap[None, :]  # [b x s]
    nodes = np.concatenate([np.broadcast_to(p[:, None, :], (g, len(wd), s)),
                            p[:, None, :] + wcap[None, :, :]], axis=2)  # [g x b x 2s]
    step = np.concatenate([np.ones(s), -np.ones(s)])
    order = np.argsort(nodes, axis=2, kind="stable")
    nodes = np.take_along_axis(nodes, order, axis=2)
    slope = np.cumsum(step[order], axis=2)  # slope of h just after each node
    h = np.concatenate([np.zeros((g, len(wd), 1)),
                        np.cumsum(slope[:, :, :-1] * np.diff(nodes, axis=2), axis=2)], axis=2)
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
    x = np.clip(level[:, :, None] - p[:, None, :], 0.0, wcap[None, :, :]) / f.weight[None, :, None]
    return x if batch else x[0]


def seller_payoffs(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers) -> np.ndarray:
    """Each seller's payoff (p_m - c_m) min(S_m, sum_n x_nm) at the given prices [currency]
    (its value of the unsold rest, a constant, left out), the buyers responding with every
    seller's offer as a cap. Batched like `follower_response`."""
    x = follower_response(prices, f, offer)
    sold = np.minimum(x.sum(axis=-2), offer)
    return (np.asarray(prices, float) - cost) * sold


def _residual_demand(t: np.ndarray, alpha: float, w: float, wd: float, s: float, q: np.ndarray,
                     sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One buyer's purchase from a seller at prices `t` [kWh] (offer `s`), the other
    sellers at prices `q` with offers `sq`, and the prices at which it is not linear in t.

    With H(L) = sum_k clip(L - q_k, 0, w sq_k) what the buyer takes from the others (times
    w) at level L, while the need binds and the buyer takes part of its purchase from the
    seller, L solves L - t = w D - H(L): t(L) = L + H(L) - w D, increasing and piecewise
    linear in L with nodes at the q_k and q_k + w sq_k. So L(t) is its piecewise-linear
    inverse, and the purchase (times w) is min(clip(alpha - t, 0, w s), clip(w D - H(L(t)),
    0, w s)): the first term when the need does not bind, the second when it does (the
    clip at 0 where the others' offers cover the need at level L(t), at w s where the
    seller sells the buyer all it has). The breakpoints in t: the images t(z) of the nodes
    z of H (the level passes another seller's price, or the buyer takes all that seller
    offers: the residual-demand kink), t(alpha) (the need stops binding), alpha and
    alpha - w s, and the crossings of w D - H(L(t)) with 0 and w s.
    """
    z = np.unique(np.concatenate([q, q + w * sq]))
    z = np.concatenate([[min(z.min(initial=alpha), alpha) - 10.0 - wd - w * s], z,
                        [max(z.max(initial=alpha), alpha) + 10.0 + wd + w * s]])
    hz = np.clip(z[:, None] - q[None, :], 0.0, w * sq[None, :]).sum(axis=1)
    tz = z + hz - wd  # strictly increasing (slope >= 1)
    g = wd - hz  # w D - H(L) at the nodes, nonincreasing along them

    def purchase(tt: np.ndarray) -> np.ndarray:
        level = np.interp(tt, tz, z)
        bound = wd - np.interp(level, z, hz)
        return np.minimum(np.clip(alpha - tt, 0.0, w * s), np.clip(bound, 0.0, w * s)) / w

    cuts = [tz[1:-1], [alpha + np.interp(alpha, z, hz) - wd, alpha, alpha - w * s]]
    for level_ in (0.0, w * s):  # where w D - H(L(t)) crosses 0 and w s
        d = g - level_
        k = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0))
        if len(k):
            frac = d[k] / (d[k] - d[k + 1])
            cuts.append(tz[k] + frac * (tz[k + 1] - tz[k]))
    return purchase(t), np.concatenate(cuts)


def best_response(m: int, prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers,
                  ceiling: float) -> tuple[float, float]:
    """Seller m's payoff-maximising price against the others' `prices`, and its payoff.

    Exact: the buyers' demand X(t) for seller m at price t is piecewise linear with
    breakpoints computed in closed form (`_residual_demand`; they include the prices at
    which another seller's offer caps what a buyer takes from it, so that the buyer's
    residual need falls on m), so the payoff (t - c) min(S, X(t)) is a concave quadratic
    between consecutive breakpoints and crossings of X = S; its maximum is at a
    breakpoint, a crossing or a piece's stationary point, all of which are evaluated. Ties
    go to the lowest price.

    A monopolist against one buyer with linear demand (alpha - t) / w prices at
    (alpha + c) / 2 -- here (0.30 + 0.08) / 2:

    >>> f = Followers(np.array([0.30]), np.array([0.11]), np.array([2.0]))
    >>> p, v = best_response(0, np.array([0.08]), np.array([0.08]), np.array([5.0]), f, 0.30)
    >>> round(p, 9), round(v, 9)
    (0.19, 0.11)
    """
    c, s = float(cost[m]), float(offer[m])
    if c >= ceiling or s <= QTY_TOL:
        return c, 0.0
    keep = np.flatnonzero(f.value > c)  # other buyers never buy from m at a price >= c
    if len(keep) == 0:
        return c, 0.0
    others = np.asarray(prices, float)
    q = np.concatenate([others[:m], others[m + 1:]])
    sq = np.concatenate([np.asarray(offer, float)[:m], np.asarray(offer, float)[m + 1:]])
    breaks = [np.array([c, ceiling])]
    for n in keep:
        _, cuts = _residual_demand(np.empty(0), float(f.value[n]), float(f.weight[n]),
                                   float(f.weight[n] * f.need[n]), s, q, sq)
        breaks.append(cuts)
    breaks = np.concatenate(breaks)

    def demand(tt: np.ndarray) -> np.ndarray:
        total = np.zeros(len(tt))
        for n in keep:
            total += _residual_demand(tt, float(f.value[n]), float(f.weight[n]),
                                      float(f.weight[n] * f.need[n]), s, q, sq)[0]
        return total

    t = np.unique(breaks[(breaks >= c) & (breaks <= ceiling)])
    x = demand(t)
    d = x - s
    cross = np.flatnonzero(d[:-1] * d[1:] < 0)
    if len(cross):
        tc = t[cross] + (t[cross + 1] - t[cross]) * d[cross] / (d[cross] - d[cross + 1])
        t = np.unique(np.concatenate([t, tc]))
        x = demand(t)
    y = np.minimum(x, s)
    # stationary point of (t - c)(A + B t) on each piece with B < 0
    dt = t[1:] - t[:-1]
    slope = np.divide(y[1:] - y[:-1], dt, out=np.zeros_like(dt), where=dt > 0)
    intercept = y[:-1] - slope * t[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = np.where(slope < 0, (slope * c - intercept) / (2.0 * slope), np.nan)
    inside = np.isfinite(t_star) & (t_star > t[:-1]) & (t_star < t[1:])
    cand_t = np.concatenate([t, t_star[inside]])
    cand_y = np.concatenate([y, intercept[inside] + slope[inside] * t_star[inside]])
    payoff = (cand_t - c) * cand_y
    best = payoff.max()
    tied = payoff >= best - PAYOFF_TIE * max(1.0, abs(best))
    j = np.flatnonzero(tied)[np.argmin(cand_t[tied])]
    return float(cand_t[j]), float(payoff[j])


@dataclass
class Equilibrium:
    prices: np.ndarray
    sweeps: int
    converged: bool
    last_change: float


def best_response_sweep(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers,
                        ceiling: float) -> np.ndarray:
    """One Gauss-Seidel sweep: each seller in turn plays its exact best response."""
    p = np.array(prices, float)
    for m in range(len(p)):
        p[m], _ = best_response(m, p, cost, offer, f, ceiling)
    return p


def leaders_equilibrium(cost: np.ndarray, offer: np.ndarray, f: Followers, ceiling: float,
                        tol: float = 1e-9, max_sweeps: int = 200, memory: int = 5) -> Equilibrium:
    """Iterated best response (Gauss-Seidel sweeps T) from every seller at its floor price,
    until a sweep moves no price more than `tol`: then every price is (within `tol`) a
    best response to the others', i.e. a Nash equilibrium of the leaders.

    With `memory` > 0 the fixed-point iteration p = T(p) is accelerated by Anderson mixing
    of the last `memory` sweeps (Walker and Ni, 2011, "Anderson acceleration for
    fixed-point iterations", SIAM J. Numer. Anal. 49(4):1715-1735), projected on the
    strategy intervals; the stopping rule is the same (one exact sweep that moves nothing),
    so acceleration changes the path, not what is certified. Without it the sweeps from
    the floors rise monotonically to the smallest equilibrium (strategic complements).

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
    x = lower.copy()
    xs, gs = [], []
    change = np.inf
    for sweep in range(1, max_sweeps + 1):
        tx = best_response_sweep(x, cost, offer, f, ceiling)
        g = tx - x
        change = float(np.abs(g).max()) if len(g) else 0.0
        if change <= tol:
            return Equilibrium(tx, sweep, True, change)
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
    scratch. A negative gain means every deviation loses."""
    n_s = len(prices)
    gains = np.zeros(n_s)
    base = seller_payoffs(prices, cost, offer, f)
    for m in range(n_s):
        if cost[m] >= ceiling or offer[m] <= QTY_TOL:
            continue
        span = ceiling - cost[m]
        alt = np.r_[np.linspace(cost[m], ceiling, points), prices[m] + 1e-4 * span, prices[m] - 1e-4 * span]
        alt = np.clip(alt, cost[m], ceiling)
        batch = np.repeat(prices[None, :], len(alt), axis=0)
        batch[:, m] = alt
        payoff = seller_payoffs(batch, cost, offer, f)[:, m]
        gains[m] = float(payoff.max() - base[m])
    return gains
