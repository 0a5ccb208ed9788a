"""Reference paths of the mechanisms made faster for issue 18, kept as they were so that
property tests can compare the fast paths against them on random books.

- Stackelberg (`cosim.markets.stackelberg_game` before issue 18): each seller's exact best
  response by a loop over the buyers (`best_response`), the leaders' equilibrium by
  Gauss-Seidel sweeps from the floors over every seller (`leaders_equilibrium`: the
  same Anderson mixing and stopping rule, on these sweeps), and the
  Nash check over every seller with the buyers' responses to all sellers
  (`nash_gains`).
"""

from __future__ import annotations

import numpy as np

from cosim.markets.base import QTY_TOL
from cosim.markets.stackelberg_game import PAYOFF_TIE, Equilibrium, Followers, seller_payoffs
from cosim.markets.stackelberg_game import leaders_equilibrium as fast_equilibrium


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


def best_response_sweep(prices: np.ndarray, cost: np.ndarray, offer: np.ndarray, f: Followers,
                        ceiling: float) -> np.ndarray:
    """One Gauss-Seidel sweep: each seller in turn plays its exact best response."""
    p = np.array(prices, float)
    for m in range(len(p)):
        p[m], _ = best_response(m, p, cost, offer, f, ceiling)
    return p


def leaders_equilibrium(cost: np.ndarray, offer: np.ndarray, f: Followers, ceiling: float,
                        tol: float = 1e-9, max_sweeps: int = 200, memory: int = 5) -> Equilibrium:
    """The leaders' iteration as it was: Gauss-Seidel sweeps of the reference best
    responses from the floors, with the same Anderson mixing and stopping rule."""
    return fast_equilibrium(cost, offer, f, ceiling, tol, max_sweeps, memory, sweep=best_response_sweep)


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
