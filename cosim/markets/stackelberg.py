"""Non-cooperative P2P pricing: a Stackelberg game with sellers as leaders.

Game (a multi-leader, multi-follower Stackelberg game). The round's sellers lead: each
announces a unit price. The buyers follow: each splits its need between the sellers and
the outside party (the grid at the retail tariff); what a seller does not sell goes to the
outside party at the feed-in tariff. The sellers compete with one another through the
buyers' responses, so the leaders' stage is a Nash game in prices. This is the structure
of Maharjan, Zhu, Zhang, Gjessing and Basar, 2013, "Dependable demand response management
in the smart grid: a Stackelberg game approach", IEEE Trans. Smart Grid 4(1):120-132
(utility companies lead with unit prices and play a Nash game among themselves; each end
user buys from every company, with a utility that is a sum over companies of a concave
function of what it buys from that company, minus what it pays; a company sells at most
the energy it has).

Utilities (what is implemented, per round; quantities [kWh], prices [currency/kWh]).
Buyer n (need D_n, bid b_n, network charge cb_n per kWh) buying x_nm from seller m:

    U_n(x_n) = sum_m (alpha_n - p_m) x_nm - (w_n / 2) sum_m x_nm^2,   sum_m x_nm <= D_n

with alpha_n = min(b_n, retail) - cb_n, the buyer's net value of a P2P kWh against buying
it from the outside party (its bid caps what it pays, charge included; with a tariff bid
b_n = retail, U_n is the saving against the grid bill minus the concave term), and
w_n = curvature (retail - feed_in) / D_n. Each seller's term (alpha - p) x - (w/2) x^2 is
the quadratic utility of Samadi, Mohsenian-Rad, Schober, Wong and Jatskevich, 2010,
"Optimal real-time pricing algorithm based on utility maximization for smart grid", IEEE
SmartGridComm, pp. 415-420 (U(x; omega) = omega x - (a/2) x^2 on 0 <= x <= omega/a), used in
place of Maharjan et al.'s k ln(xi + x) so that the follower's problem is a QP that HiGHS
solves; like the logarithm it makes a buyer spread its purchases over the sellers, and
sellers compete through the buyer's need D_n. With curvature 1, a buyer facing a single
seller at the feed-in price would take its whole need from it.

Seller m (offer S_m, ask a_m, charge cs_m) announcing p_m and selling y_m = sum_n x_nm:

    V_m(p_m, p_-m) = (p_m - cs_m) y_m + v_m (S_m - y_m),   v_m = max(a_m, feed_in)

i.e. revenue from peers net of its network charge, plus the value of what it keeps: the
feed-in tariff (with a tariff ask a_m = feed_in, exactly the grid's payment), or its ask if
that is higher. Equivalently V_m = (p_m - c_m) y_m + const with unit cost c_m = v_m + cs_m.
Its strategy is p_m in [c_m, max_n alpha_n]: below c_m it would sell at a loss, above the
highest alpha nobody buys. A seller sells at most S_m: at a price where buyers want more,
it sells S_m (such a price is never a best response -- raising it to the price at which
demand equals S_m pays more -- so the rationing rule does not matter for the seller itself).
A buyer takes at most S_k from any seller k, so when a rival's offer caps what a buyer
takes from it, the buyer's residual need falls on the others: a seller can then price up
to the buyer's level and still sell that residual (the residual-demand kink of
Bertrand-Edgeworth competition).

Followers' response (closed form, the QP's KKT conditions). For given prices, buyer n buys
x_nm = min(S_m, max(0, L_n - p_m) / w_n) with the "water level" L_n = alpha_n if that leaves
sum_m x_nm <= D_n, else the L_n < alpha_n at which sum_m x_nm = D_n (`follower_response`).
Each buyer treats each seller's offer as its own cap (as its QP does, `FollowerModel`);
several buyers together may want more than a rival offers at a deviation, which the
leaders' payoffs do not ration (at an equilibrium no seller is asked for more than it
offers, see above).

Leaders' equilibrium by iterated best response (Gauss-Seidel, each seller in turn, from
every seller at its floor c_m, until no price moves more than ``price_tol_per_kwh``). A
seller's best response is an exact 1-D search (`best_response`, `_residual_demand`): with
the others' prices fixed, each buyer's x_nm is piecewise linear in p_m, with breakpoints
where the buyer's water level passes another seller's price or the price at which it takes
all that seller offers, where its need stops binding, where x_nm reaches 0 and where it
reaches S_m -- all computed in closed form. So the seller's payoff (p - c) min(S, X(p)) is a
concave quadratic on each piece; the search evaluates it at every breakpoint, at every
crossing of X(p) = S and at each piece's stationary point, and takes the best (the lowest
price among ties). Without binding offers, a price rise by one seller shifts demand to the
others and makes each one's demand less price-sensitive (strategic complements), so best
responses rise with rivals' prices and the iteration from the floors rises monotonically
towards the smallest equilibrium (Milgrom and Roberts, 1990, "Rationalizability, learning,
and equilibrium in games with strategic complementarities", Econometrica 58(6):1255-1277;
Vives, 1990, "Nash equilibrium with strategic complementarities", J. Math. Econ. 19:305-321).
With binding offers that fails: a seller's best response can jump from the residual-demand
kink (a high price, selling what a capped rival leaves) down to undercutting the rival, and
a pure-strategy equilibrium need not exist (Edgeworth cycles: Edgeworth, 1925 [1897], "The
pure theory of monopoly", Papers Relating to Political Economy, vol. 1, Macmillan; Dasgupta
and Maskin, 1986, "The existence of equilibrium in discontinuous economic games, II:
Applications", Rev. Econ. Stud. 53(1):27-41; Vives, 1999, "Oligopoly Pricing", MIT Press,
ch. 5). The iteration then stops after ``max_sweeps`` at its last prices with info
``converged`` and ``is_nash`` false (the Nash check below finds the profitable deviation):
the round still clears at those prices, individually rational for both sides.

Verification. The equilibrium is checked as a Nash equilibrium of the leaders: for every
seller, ``ne_grid_points`` alternative prices evenly spaced on its strategy interval (and
two close to its equilibrium price) are tried with the others' prices fixed; the buyers'
response to each deviation, every seller's offer capping what a buyer takes from it, is
recomputed from scratch (`follower_response`, a code path independent of the
best-response search). Info ``ne_max_gain`` is the largest gain found
[currency], ``ne_max_gain_seller`` whose, ``is_nash`` whether it is at most
``ne_tolerance``.

Dispatch. The physical stage is the welfare pool of every mechanism (`PoolModel`: network
cuts, the outside party's caps, charges): its shedding and curtailment fix each
participant's net injection, which does not depend on who trades with whom, so the game is
played on the needs and offers left after them and the network cuts hold whatever the
prices. The followers' stage solves each buyer's own problem at the equilibrium prices as
a Pyomo QP built once per run (`FollowerModel`: persistent HiGHS, one purchase variable
per participant; per buyer only bounds, costs, the need and the Hessian change). Info
``follower_gap_kwh`` is the largest difference between the QPs' purchases and the closed
form the leaders anticipated (solver tolerance, ~1e-7). A seller asked for more than it
offers (round-off only, at an equilibrium) is rationed pro rata (info ``rationed_kwh``).
Islanded, if the equilibrium leaves more for the grid-forming unit to deliver or absorb
than its caps allow (the sellers price some P2P trade away that the pool had counted on),
the excess is shed or curtailed pro rata (info ``cap_shed_kwh``, ``cap_curtailed_kwh``);
that extra shedding or curtailment is not checked against the network cuts (the loop's
power flow still checks the round).

Prices and bills. Each P2P trade is priced at its seller's price: the buyer pays p_m (its
``price_per_kwh``, the average over its sellers per buyer), the seller receives p_m
(``seller_price_per_kwh``); network charges go to ``dso``; the market is budget-balanced,
so ``market_operator`` neither gains nor loses. Buyers pay at most their bid per P2P kWh
(charge included) and sellers receive at least their ask (net of charge): both sides are
individually rational at their declared prices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highspy
import numpy as np
import pandas as pd
import pyomo.environ as pyo
from pydantic import Field

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
    outside_trades,
)
from cosim.markets.highs import attach_highs, solve_highs
from cosim.markets.pool import PoolModel
from cosim.markets.uniform import failed_result

logging.getLogger("pyomo.contrib.appsi").setLevel(logging.ERROR)

#: Payoffs within this of the best count as ties in the best-response search [currency].
PAYOFF_TIE = 1e-12
#: Follower purchases below this are dropped from the trade table [kWh].
TRADE_MIN_KWH = QTY_TOL


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


# -- the followers' dispatch: a persistent Pyomo/HiGHS QP -----------------------------------------
class FollowerModel:
    """One buyer's follower problem, a persistent Pyomo/HiGHS QP solved once per buyer:

        min  sum_m (p_m - alpha_n) x_m + (w_n / 2) sum_m x_m^2
        s.t. sum_m x_m <= D_n,   0 <= x_m <= S_m (0 where the buyer may not buy from m)

    Built once for `n` participants (one purchase variable per participant as a potential
    seller); for each buyer only the bounds, the costs, the need and the Hessian change.
    The quadratic term goes to HiGHS as the model's Hessian (Pyomo's persistent HiGHS
    interface passes linear objectives only).
    """

    def __init__(self, n: int):
        self.n = n
        self.model = m = pyo.ConcreteModel(name="stackelberg_follower")
        m.M = pyo.RangeSet(0, n - 1)
        m.price_gap = pyo.Param(m.M, mutable=True, initialize=0.0)
        """p_m - alpha_n: what a kWh from seller m costs the buyer beyond its value."""
        m.need_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.purchase_kwh = pyo.Var(m.M, domain=pyo.NonNegativeReals)
        m.need_limit = pyo.Constraint(expr=sum(m.purchase_kwh[j] for j in m.M) <= m.need_kwh)
        m.disutility = pyo.Objective(expr=sum(m.price_gap[j] * m.purchase_kwh[j] for j in m.M), sense=pyo.minimize)
        self.solver, self.highs, col, row = attach_highs(m, ("purchase_kwh",), ("need_limit",))
        # the Hessian is positive definite (w > 0 on every column): no regularisation, which
        # would shift purchases by ~1e-7 / w from the buyer's optimum
        self.highs.setOptionValue("qp_regularization_value", 0.0)
        self.col, self.need_row = col["purchase_kwh"], row["need_limit"]
        self.n_col = self.highs.getNumCol()
        self.highs.changeObjectiveSense(highspy.ObjSense.kMinimize)
        order = np.argsort(self.col)
        self._hess_cols = self.col[order].astype(np.int32)
        self._hess_order = order
        is_purchase = np.zeros(self.n_col, dtype=bool)
        is_purchase[self._hess_cols] = True
        self._hess_start = np.r_[0, np.cumsum(is_purchase)].astype(np.int32)

    def reset_warm_start(self) -> None:
        self.highs.clearSolver()

    def solve(self, price: np.ndarray, value: float, weight: float, need: float,
              upper: np.ndarray) -> tuple[str, np.ndarray]:
        """One buyer's purchases from each participant [kWh] at `price` (arrays over
        participants; `upper` is 0 where it may not buy)."""
        h, n, inf = self.highs, self.n, highspy.kHighsInf
        h.changeColsBounds(n, self.col, np.zeros(n), np.asarray(upper, float))
        h.changeColsCost(n, self.col, np.where(upper > 0, np.nan_to_num(price) - value, 0.0))
        h.changeRowsBounds(1, self.need_row, np.array([-inf]), np.array([need]))
        h.passHessian(self.n_col, n, 1, self._hess_start, self._hess_cols, np.full(n, weight))
        status = solve_highs(h, "follower")
        if status != "ok":
            return status, np.zeros(n)
        x = np.asarray(h.getSolution().col_value)[self.col]
        return "ok", np.maximum(x, 0.0)


def ration(purchase: np.ndarray, offer: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale down the purchases from any seller asked for more than it offers, pro rata
    (at an equilibrium this only trims solver round-off). Returns the purchases and the
    energy rationed away [kWh].

    >>> x, cut = ration(np.array([[1.0, 0.5], [1.0, 0.0]]), np.array([1.0, 1.0]))
    >>> x.tolist(), cut
    ([[0.5, 0.5], [0.5, 0.0]], 1.0)
    """
    asked = purchase.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(asked > offer, offer / np.where(asked > 0, asked, 1.0), 1.0)
    out = purchase * scale[None, :]
    return out, float((asked - out.sum(axis=0)).sum())


# -- the mechanism -----------------------------------------------------------------------------
class StackelbergPricing(Mechanism):
    """Sellers lead with prices, buyers follow; see the module docstring."""

    name = "stackelberg"

    class Options(MechanismOptions):
        curvature: float = Field(1.0, gt=0.0)
        """Curvature of a buyer's utility, as w_n = curvature (retail - feed_in) / D_n:
        low makes peers near-perfect substitutes (fierce price competition), high makes
        each buyer spread its need thinly over the sellers."""
        price_tol_per_kwh: float = Field(1e-9, gt=0.0)
        """Iterated best response stops when no seller's price moves more than this [currency/kWh]."""
        max_sweeps: int = Field(200, ge=1)
        """Most rounds of best responses (each seller once per sweep)."""
        anderson_memory: int = Field(5, ge=0)
        """Sweeps remembered by the Anderson acceleration (0: plain best-response sweeps,
        which rise monotonically to the smallest equilibrium)."""
        ne_grid_points: int = Field(21, ge=2)
        """Alternative prices per seller in the Nash check (evenly spaced on its strategy interval)."""
        ne_tolerance: float = Field(1e-6, ge=0.0)
        """A seller may gain at most this by deviating for the equilibrium to pass [currency]."""

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        n = len(self.ids)
        self.pool = PoolModel(n, max_cuts)
        self.followers = FollowerModel(n)

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        o = self.options
        # physical stage: the pool fixes shedding and curtailment, hence every injection
        self.pool.update(orders, ctx, cuts, charges)
        status, phys, _ = self.pool.solve()
        if status != "ok":
            return failed_result(status, n, charges)
        need = np.maximum(orders.demand_kwh - phys["shed_kwh"], 0.0)
        offer = np.maximum(orders.supply_kwh - phys["curtailed_kwh"], 0.0)
        retail, feed_in = ctx.retail_price_per_kwh, ctx.feed_in_price_per_kwh
        value = np.minimum(orders.bid_per_kwh, retail) - charges.buy
        cost = np.maximum(orders.ask_per_kwh, feed_in) + charges.sell
        spread = max(retail - feed_in, 1e-6)
        is_buyer = (need > QTY_TOL) & ctx.p2p
        is_seller = (offer > QTY_TOL) & ctx.p2p
        buyers, sellers = np.flatnonzero(is_buyer), np.flatnonzero(is_seller)
        weight = np.ones(n)
        weight[buyers] = o.curvature * spread / need[buyers]
        price = np.full(n, np.nan)
        info = {"stackelberg_buyers": len(buyers), "stackelberg_sellers": len(sellers), "sweeps": 0,
                "converged": True, "ne_max_gain": 0.0, "ne_max_gain_seller": None, "is_nash": True,
                "ne_tolerance": o.ne_tolerance, "ne_grid_points": o.ne_grid_points}
        f = Followers(value[buyers], weight[buyers], need[buyers])
        ceiling = float(value[buyers].max()) if len(buyers) else -np.inf
        game_sellers = sellers[cost[sellers] < ceiling] if len(buyers) else sellers[:0]
        x_closed = np.zeros((len(buyers), len(game_sellers)))
        if len(game_sellers):
            c_s, s_s = cost[game_sellers], offer[game_sellers]
            eq = leaders_equilibrium(c_s, s_s, f, ceiling, o.price_tol_per_kwh, o.max_sweeps, o.anderson_memory)
            gains = nash_gains(eq.prices, c_s, s_s, f, ceiling, o.ne_grid_points)
            worst = int(np.argmax(gains))
            price[game_sellers] = eq.prices
            x_closed = follower_response(eq.prices, f, s_s)
            payoff = seller_payoffs(eq.prices, c_s, s_s, f)
            info.update(sweeps=eq.sweeps, converged=eq.converged, last_price_change=eq.last_change,
                        ne_max_gain=float(gains[worst]), ne_max_gain_seller=self.ids[game_sellers[worst]],
                        is_nash=bool(gains[worst] <= o.ne_tolerance), leaders_profit=float(payoff.sum()))
        # followers' stage: each buyer's own QP at the equilibrium prices
        purchase = np.zeros((n, n))
        for b in buyers:
            upper = np.zeros(n)
            if len(game_sellers):
                upper[game_sellers] = np.where(price[game_sellers] < value[b], offer[game_sellers], 0.0)
            status, purchase[b] = self.followers.solve(price, value[b], weight[b], need[b], upper)
            if status != "ok":
                return failed_result(status, n, charges)
        gap = float(np.abs(purchase[np.ix_(buyers, game_sellers)] - x_closed).max()) if x_closed.size else 0.0
        purchase, rationed = ration(purchase, offer)
        bought, sold = purchase.sum(axis=1), purchase.sum(axis=0)
        imported = np.maximum(need - bought, 0.0)
        exported = np.maximum(offer - sold, 0.0)
        shed, curtailed = phys["shed_kwh"].copy(), phys["curtailed_kwh"].copy()
        # the outside party's caps (islanded): what it cannot deliver or take is shed or
        # curtailed pro rata -- only when the equilibrium trades less P2P than the pool did
        cap_shed = cap_curtailed = 0.0
        if imported.sum() > ctx.import_cap_kwh + QTY_TOL:
            keep = ctx.import_cap_kwh / imported.sum()
            shed += imported * (1.0 - keep)
            cap_shed = float(imported.sum() * (1.0 - keep))
            imported = imported * keep
        if exported.sum() > ctx.export_cap_kwh + QTY_TOL:
            keep = ctx.export_cap_kwh / exported.sum()
            curtailed += exported * (1.0 - keep)
            cap_curtailed = float(exported.sum() * (1.0 - keep))
            exported = exported * keep
        info.update(follower_gap_kwh=gap, rationed_kwh=rationed, cap_shed_kwh=cap_shed,
                    cap_curtailed_kwh=cap_curtailed, seller_prices=price)
        y = {"imported_kwh": imported, "exported_kwh": exported, "shed_kwh": shed, "curtailed_kwh": curtailed}
        return self.result(orders, ctx, charges, purchase, y, price, info)

    def result(self, orders: OrderArrays, ctx: MarketContext, charges: Charges, purchase: np.ndarray,
               y: dict, price: np.ndarray, info: dict) -> ClearingResult:
        bought = purchase.sum(axis=1)
        sold = purchase.sum(axis=0)
        paid = purchase @ np.nan_to_num(price)
        with np.errstate(divide="ignore", invalid="ignore"):
            buy_price = np.where(bought > QTY_TOL, paid / np.where(bought > QTY_TOL, bought, 1.0), np.nan)
        sell_price = np.where(sold > QTY_TOL, price, np.nan)
        traded_prices = np.unique(np.round(price[sold > QTY_TOL], 12))
        eff_bid = orders.bid_per_kwh - charges.buy
        eff_ask = orders.ask_per_kwh + charges.sell
        welfare = float(eff_bid @ bought - eff_ask @ sold - ctx.voll_per_kwh * y["shed_kwh"].sum()
                        - ctx.curtail_cost * y["curtailed_kwh"].sum())
        volume = float(bought.sum())
        info["average_price_per_kwh"] = float(paid.sum() / volume) if volume > QTY_TOL else float("nan")
        result = ClearingResult(
            status="ok",
            bought_kwh=bought,
            sold_kwh=sold,
            import_kwh=y["imported_kwh"],
            export_kwh=y["exported_kwh"],
            curtailed_kwh=y["curtailed_kwh"],
            shed_kwh=y["shed_kwh"],
            buy_price_per_kwh=buy_price,
            sell_price_per_kwh=sell_price,
            charges=charges,
            price_per_kwh=float(traded_prices[0]) if len(traded_prices) == 1 else float("nan"),
            welfare=welfare,
            info=info,
        )
        ids = np.asarray(self.ids, dtype=object)
        b_idx, s_idx = np.nonzero(purchase > TRADE_MIN_KWH)
        rows = [(ids[s], ids[b], float(purchase[b, s]), float(price[s]), float(price[s]),
                 float(charges.sell[s] + charges.buy[b])) for b, s in zip(b_idx, s_idx, strict=True)]
        rows += outside_trades(result, self.ids, ctx)
        result.trades = pd.DataFrame(rows, columns=TRADE_COLUMNS)
        return result


MECHANISMS: list = [StackelbergPricing]
