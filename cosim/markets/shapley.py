"""Coalitional game of the round's traders: the saving from trading among themselves is
shared by the Shapley value (or the least core), with a core check.

Game (transferable utility). The players are the round's active traders (participants
with demand or supply; idle participants are null players and get nothing), or, with
``players="feeders"``, the LV feeders that have active traders (see "Players" below).
The value of a coalition S is its saving from trading internally first, against each of
its members trading alone with the outside party, at the members' declared prices:

    v(S) = W(S) - W(empty)

where W(S) is the declared welfare of the round's pool optimum (`PoolModel`, network cuts
and outside caps included) when only the members of S may trade P2P -- everyone else's
P2P bounds are zero, so they trade alone with the outside party --

    W = sum_n (bid[n] - charge_buy[n]) bought[n] - (ask[n] + charge_sell[n]) sold[n]
        - voll sum shed - curtail_cost sum curtailed

(the pool's objective without its 1e-6 tie-break). Where no network cut, outside cap,
shedding or curtailment can bind (no cuts this clearing, the outside party can take every
order, VoLL and the curtailment cost above the tie-break: most rounds), the pool's optimum
for S is the members' own double auction, so W(S) is a sorted cumulative sum: the members'
bids from the highest and asks from the lowest, matched while the bid beats the ask
(`cosim.markets.coalition.matching_values`), for every coalition at once (info
``coalition_values_closed_form``; the tests check it against the LPs). Otherwise one LP
solve per coalition value on ONE persistent `PoolModel` (only the P2P column bounds
change, warm-started; info ``coalition_solves``). The round's
orders already include each home battery's effect, so storage needs no term of its own.
With truthful tariff bids (bid = retail, ask = feed-in), no charges and an unconstrained
outside party the value has the closed form ``v(S) = (retail - feed_in) min(D(S), S(S))``
(D, S: the members' demand and supply) -- the tests check the solves against it.
W(S) grows with S (the feasible set does), so the game is monotone: every Shapley share is
>= 0 and a coalition with no buyer or no seller is worth 0 (nothing to compute).

Shapley value (Shapley 1953, "A value for n-person games", Contributions to the Theory of
Games II, Ann. Math. Studies 28:307-317). Exact over all 2^p coalitions for
p <= ``exact_max_members`` players (the coalitions are visited in Gray-code order, so
consecutive LPs differ by one player). Above that, Monte-Carlo permutation sampling
(Castro, Gomez and Tejada 2009, "Polynomial calculation of the Shapley value based on
sampling", Computers & Operations Research 36(5):1726-1730): ``mc_permutations``
permutations drawn uniformly, each player's share the mean of its marginal contributions,
with a normal confidence interval ``z sd / sqrt(m)`` (info ``shapley_ci_halfwidth``: the
largest over players [currency]; ``shapley_ci_halfwidths``: each player's); coalition
values are cached within the round, at most ``mc_max_solves`` of them computed (LP
solves or closed form). Two exact shortcuts keep a permutation cheap: a prefix with
no buyer or no seller is worth 0, and once a prefix is worth v(N) every later marginal
contribution is 0 (monotone game). The estimate is efficient by construction (each
permutation's contributions add up to v(N)). The sampling is seeded by ``mc_seed`` and
the round's orders, so the same round gives the same estimate.

Players. ``prosumers``: each active trader is a player. ``feeders``: each LV feeder with
active traders is one player (the coalitions are unions of feeders); a feeder's share is
split among its members pro rata to the P2P energy each trades in the grand coalition's
allocation (bought + sold), or pro rata to their orders (demand + supply) if none of
them trades. ``auto`` (default): prosumers when the round has at most
``exact_max_members`` active traders or they all sit on one feeder, else feeders -- so a
round of 118 prosumers on rural3's 8 feeders is an exact 8-player game.

Allocation. The physical allocation is the grand coalition's welfare optimum (the pool
solve with everyone in). Each member's energy bill is its reference bill minus its share
x[n] of the saving, where the reference bill prices the member's P2P kWh at its own
declared price net of its network charge (buyer: bid - charge_buy; seller: ask +
charge_sell) and its outside trades at retail / feed-in. With truthful bids and no
charges the reference bill is exactly the stand-alone grid bill, so
``bill = stand-alone bill - share``. The coalition's manager (the settlement party
``market_operator``) pays out the shares: a member with a non-zero share buys (sells) ALL
its traded energy through the coalition -- its P2P kWh and, routed through the manager,
what it would otherwise import (export), which the manager trades with the outside party
(``operator_import_kwh`` / ``operator_export_kwh``) -- and its per-kWh price encodes the
bill (n = buyer, m = seller; b, a the declared prices, cb, cs the charges):

    buy_price[n]  = ((b[n] - cb[n]) p2p[n] + retail routed[n] - x[n]) / bought[n]
    sell_price[m] = ((a[m] + cs[m]) p2p[m] + feed_in routed[m] + x[m]) / sold[m]

(a member that both buys and sells has its share priced into the side with more kWh).
The manager's own bill is then exactly zero (to rounding): the shares it pays out add up
to exactly the money G the P2P trades create (below), and every price is computed from
the same solution. Settlement levies network charges on every
kWh traded in the market, the routed ones included (as in the community mechanisms).
Members with a zero share keep their outside trades direct. Bid-level individual
rationality (price + charge <= bid) holds on P2P kWh (x >= 0); what the coalition promises
is that no member's energy bill exceeds its reference bill.
The shares are the allocation scaled by G / v(N) (info ``share_scale``), where
G = sum (b - cb) p2p - sum (a + cs) p2p is the money the trades create: without caps or
network cuts G = v(N) and the scale is 1 (up to the LP's rounding); where the outside
party's caps or the cuts bind, v(N) also counts avoided shedding or curtailment, which no
one pays for, and the scale differs. It is negative when those limits make the grand
coalition trade P2P at a loss (an ask above the bid, taken to avoid shedding and
curtailment): the members then cover the loss pro rata to their allocation, and each
pays that much more than its reference bill -- no price could do better, as the reference
bills then do not add up. A member left with no traded kWh (all its demand shed, all its
supply curtailed) has no price to carry a share: its share goes to the members that
trade, pro rata to theirs (info ``stranded_share``, the amount moved). Where v(N) is 0
(nothing to share) and the P2P trades still move money -- the pool's 1e-6 /kWh tie-break
takes a trade whose bid and ask (net of charges) are a hair apart, |G| <= 2e-6 per kWh --
the traders carry G pro rata to their P2P kWh.

Core (Gillies 1959, "Solutions to general non-zero-sum games", Contributions to the Theory
of Games IV; Bondareva 1963; Shapley 1967). The allocation is in the core iff no coalition
gets less than its value: info ``max_excess`` = max_S v(S) - x(S) [currency] and
``in_core`` (max_excess <= 1e-7) -- over all coalitions of players in exact mode, where it
is the optimum of a linear program on the persistent least-core model (min eps s.t.
x(S) + eps >= v(S), shares fixed at the allocation; info ``core_check`` = ``lp``), and over
the coalitions sampled (the permutations' prefixes) in Monte-Carlo mode. In exact mode a
persistent Pyomo/HiGHS LP also computes the least core (Maschler, Peleg and Shapley 1979,
"Geometric properties of the kernel, nucleolus and related solution concepts", Math. Oper.
Res. 4(4)): minimise eps s.t. x(S) >= v(S) - eps for every proper coalition S, x(N) = v(N).
The core is non-empty iff eps* <= 0 (info ``core_nonempty``, ``least_core_epsilon``).
``allocation="least_core"`` shares by the least-core point nearest the Shapley value
(a second, quadratic stage: min ||x - phi||^2 with eps <= eps*), unique because the
least core is convex; it needs the exact game (p <= exact_max_members), and above that
falls back to the Shapley estimate (info ``allocation``).

Reference texts: Maschler, Solan and Zamir 2013, "Game Theory", Cambridge UP, ch. 17
(the core) and ch. 18 (the Shapley value); Peleg and Sudhoelter 2007, "Introduction to the Theory of
Cooperative Games", 2nd ed., Springer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
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
    failed_result,
    outside_trades,
)
from cosim.markets.coalition import (
    CORE_TOL,
    VALUE_TOL,
    CoalitionSolveError,
    LeastCoreModel,
    PoolGame,
    SampledShapley,
    max_excess,
    shapley_exact,
    shapley_sampled,
    subset_matrix,
)
from cosim.markets.pool import PoolModel
from cosim.markets.uniform import merit_order_matching

#: The coalition manager's party name (settlement's ``MARKET_OPERATOR``; not imported
#: from cosim.sim.settlement, which imports this package).
MANAGER = "market_operator"
# -- shares into prices --------------------------------------------------------------------
@dataclass
class CoalitionBills:
    """A member-level allocation whose prices encode reference bill minus share."""

    bought_kwh: np.ndarray
    sold_kwh: np.ndarray
    import_kwh: np.ndarray
    export_kwh: np.ndarray
    buy_price_per_kwh: np.ndarray
    sell_price_per_kwh: np.ndarray
    routed: np.ndarray
    operator_import_kwh: float
    operator_export_kwh: float
    unpaid_share: float


def share_prices(x: dict[str, np.ndarray], shares: np.ndarray, eff_bid: np.ndarray, eff_ask: np.ndarray,
                 ctx: MarketContext) -> CoalitionBills:
    """Route each sharing member's outside trades through the manager and price its
    market kWh so that its energy bill is its reference bill minus its share.

    A member that both buys and sells has its share priced into the side with more kWh;
    a price is set wherever a member buys (sells) anything, however little, so that every
    kWh is paid for.

    >>> x = {"bought_kwh": np.array([1.0, 0.0, 0.0]), "sold_kwh": np.array([0.0, 1.0, 0.0]),
    ...      "imported_kwh": np.array([1.0, 0.0, 0.0]), "exported_kwh": np.array([0.0, 0.0, 1.0])}
    >>> b = share_prices(x, np.array([0.1, 0.05, 0.0]), np.array([0.3, 0, 0]), np.array([0, 0.08, 0.08]),
    ...                  MarketContext(0.3, 0.08))
    >>> b.bought_kwh.tolist(), round(float(b.buy_price_per_kwh[0]), 6), round(float(b.sell_price_per_kwh[1]), 6)
    ([2.0, 0.0, 0.0], 0.25, 0.13)
    >>> b.operator_import_kwh, b.export_kwh.tolist()
    (1.0, [0.0, 0.0, 1.0])

    A negative share (the members covering a loss-making trade) raises the bill:

    >>> b = share_prices(x, np.array([-0.1, -0.05, 0.0]), np.array([0.3, 0, 0]), np.array([0, 0.08, 0.08]),
    ...                  MarketContext(0.3, 0.08))
    >>> round(float(b.buy_price_per_kwh[0]), 6), round(float(b.sell_price_per_kwh[1]), 6), b.operator_import_kwh
    (0.35, 0.03, 1.0)
    """
    p2p_b, p2p_s = x["bought_kwh"], x["sold_kwh"]
    imp, exp = x["imported_kwh"], x["exported_kwh"]
    routed = np.abs(shares) > VALUE_TOL
    bought = p2p_b + np.where(routed, imp, 0.0)
    sold = p2p_s + np.where(routed, exp, 0.0)
    on_buy_side = bought >= sold
    buy_share = np.where(on_buy_side, shares, 0.0)
    buyer_bill = eff_bid * p2p_b + ctx.retail_price_per_kwh * np.where(routed, imp, 0.0) - buy_share
    seller_income = eff_ask * p2p_s + ctx.feed_in_price_per_kwh * np.where(routed, exp, 0.0) + (shares - buy_share)
    is_buyer = bought > 0.0
    is_seller = sold > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        buy_price = np.where(is_buyer, buyer_bill / np.where(is_buyer, bought, 1.0), np.nan)
        sell_price = np.where(is_seller, seller_income / np.where(is_seller, sold, 1.0), np.nan)
    unpaid = float(shares[~is_buyer & ~is_seller].sum())
    return CoalitionBills(
        bought, sold, np.where(routed, 0.0, imp), np.where(routed, 0.0, exp), buy_price, sell_price, routed,
        float(imp[routed].sum()), float(exp[routed].sum()), unpaid,
    )


def carry_shares(x: dict[str, np.ndarray], shares: np.ndarray) -> tuple[np.ndarray, float]:
    """Move the shares of members that have no traded kWh to carry them (everything shed
    or curtailed, or a share too small to route and no P2P kWh) to the members that trade,
    pro rata to their shares (to their traded kWh if those are all zero). The total is kept.
    Returns the shares and the amount moved.

    >>> x = {"bought_kwh": np.array([1.0, 0.0, 0.0]), "sold_kwh": np.array([0.0, 1.0, 0.0]),
    ...      "imported_kwh": np.zeros(3), "exported_kwh": np.zeros(3)}
    >>> shares, moved = carry_shares(x, np.array([0.1, 0.025, 0.025]))  # member 2: all curtailed
    >>> shares.round(6).tolist(), round(moved, 6)
    ([0.12, 0.03, 0.0], 0.025)
    """
    market = x["bought_kwh"] + x["sold_kwh"]
    traded = market + x["imported_kwh"] + x["exported_kwh"]
    carrier = (market > QTY_TOL) | ((np.abs(shares) > VALUE_TOL) & (traded > QTY_TOL))
    stranded = ~carrier & (shares != 0.0)
    if not stranded.any() or not carrier.any():
        return shares, 0.0
    moved = float(shares[stranded].sum())
    out = np.where(carrier, shares, 0.0)
    out[carrier] += split_group_share(moved, np.abs(out[carrier]), traded[carrier])
    return out, moved


def split_group_share(share: float, weights: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Split a group's share pro rata to `weights`, or to `fallback` if they are all zero.

    >>> split_group_share(0.3, np.array([1.0, 2.0, 0.0]), np.ones(3)).round(6).tolist()
    [0.1, 0.2, 0.0]
    >>> split_group_share(0.3, np.zeros(3), np.array([1.0, 1.0, 1.0])).round(6).tolist()
    [0.1, 0.1, 0.1]
    """
    for w in (weights, fallback):
        total = float(w.sum())
        if total > QTY_TOL:
            return share * w / total
    return np.full(len(weights), share / len(weights)) if len(weights) else np.zeros(0)


# -- the mechanism ------------------------------------------------------------------------------
class ShapleyCoalition(Mechanism):
    """Coalitional game: the grand coalition's pool optimum, its saving shared by the
    Shapley value (or the least core), with a core check. See the module docstring for the
    game, the sources, the bills and the info keys."""

    name = "shapley"

    class Options(MechanismOptions):
        players: Literal["auto", "prosumers", "feeders"] = "auto"
        """Who the players are: each active trader, each LV feeder with active traders,
        or auto (prosumers up to exact_max_members active traders or on one feeder, else feeders)."""
        exact_max_members: int = Field(12, ge=1, le=14)
        """Most players for the exact Shapley value (2^p coalition LPs); above: Monte-Carlo."""
        mc_permutations: int = Field(200, ge=2)
        """Permutations sampled by the Monte-Carlo estimate."""
        mc_max_solves: int = Field(20000, ge=1)
        """Budget of coalition values computed per clearing in Monte-Carlo mode (LP solves or
        closed form; checked after each permutation)."""
        mc_confidence: float = Field(0.95, gt=0.0, lt=1.0)
        """Confidence level of the reported interval (info shapley_ci_halfwidth)."""
        mc_seed: int = 0
        """Seed of the permutation sampling (combined with the round's orders)."""
        allocation: Literal["shapley", "least_core"] = "shapley"
        """Share by the Shapley value, or by the least-core point nearest it (exact games only)."""

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        self.pool = PoolModel(len(self.ids), max_cuts)
        self._least_core: LeastCoreModel | None = None  # built on first use, then kept

    def least_core_model(self, p: int) -> LeastCoreModel:
        """The persistent least-core LP, with room for `p` players. It is built for the first
        game that needs it and rebuilt only when a game has more players than it has slots
        (2^slots rows: sized to the games met, at most exact_max_members, rather than
        always 2^exact_max_members)."""
        if self._least_core is None or self._least_core.slots < p:
            self._least_core = LeastCoreModel(min(max(p, 2), self.options.exact_max_members))
        return self._least_core

    # -- players ------------------------------------------------------------------------------
    def players_of(self, active: np.ndarray) -> tuple[str, list[np.ndarray]]:
        idx = np.flatnonzero(active)
        feeders = self.participants.feeder[idx]
        mode = self.options.players
        if mode == "auto":
            few = len(idx) <= self.options.exact_max_members or len(np.unique(feeders)) <= 1
            mode = "prosumers" if few else "feeders"
        if mode == "prosumers":
            return mode, [np.array([i]) for i in idx]
        return mode, [idx[feeders == f] for f in np.unique(feeders)]

    def _rng(self, orders: OrderArrays) -> np.random.Generator:
        digest = 0
        for a in (orders.demand_kwh, orders.supply_kwh, orders.bid_per_kwh, orders.ask_per_kwh):
            digest = zlib.crc32(np.ascontiguousarray(a, dtype=float).tobytes(), digest)
        return np.random.default_rng([self.options.mc_seed, digest])

    # -- the round ------------------------------------------------------------------------------
    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        self.pool.update(orders, ctx, cuts, charges)
        status, x, _ = self.pool.solve()
        if status != "ok":
            return failed_result(status, n, charges)
        active = (orders.demand_kwh > QTY_TOL) | (orders.supply_kwh > QTY_TOL)
        mode, players = self.players_of(active)
        game = PoolGame(self.pool, orders, ctx, charges, players, cuts)
        w_grand = game.welfare(x)
        info = {"shapley_players": mode, "shapley_n_players": len(players), "allocation": self.options.allocation}
        try:
            shares, game_info = self.share(game, x, w_grand, ctx, orders)
        except CoalitionSolveError as err:
            return failed_result(str(err), n, charges)
        info.update(game_info)
        return self.result(x, shares, game, w_grand, orders, ctx, charges, info)

    def share(self, game: PoolGame, x: dict, w_grand: float, ctx: MarketContext,
              orders: OrderArrays) -> tuple[np.ndarray, dict]:
        """Each participant's share of the grand coalition's saving [currency], and info."""
        n, p = self.pool.n, len(game.players)
        info = {"coalition_value": 0.0, "coalition_solves": 0, "coalition_values_closed_form": 0,
                "shapley_method": "trivial",
                "shapley_ci_halfwidth": 0.0, "shapley_permutations": 0, "in_core": True,
                "max_excess": 0.0, "core_coalitions_checked": 0, "core_nonempty": True,
                "least_core_epsilon": float("nan"), "player_shares": np.zeros(p)}
        shares = np.zeros(n)
        trades_possible = ctx.p2p and p >= 1 and game.buyer_players.any() and game.seller_players.any()
        if not trades_possible:
            return shares, info
        # nobody trades P2P: in closed form everyone trades with the outside party (welfare 0)
        game.baseline = 0.0 if game.closed_form else game.solve(np.zeros(n, dtype=bool))[0]
        v_grand = w_grand - game.baseline
        full = (1 << p) - 1
        game.cache[full] = v_grand
        info["coalition_value"] = v_grand
        if v_grand <= VALUE_TOL:  # monotone game: every coalition is worth 0, so is every share
            info.update(coalition_solves=game.solves, coalition_values_closed_form=game.closed_form_values)
            return shares, info
        if p <= self.options.exact_max_members:
            phi, values, membership = self.exact(game, p)
            info["shapley_method"] = "exact"
        else:
            est, values, membership = self.sampled(game, p, v_grand, orders)
            phi = est.phi
            info.update(shapley_method="monte_carlo", shapley_ci_halfwidth=float(est.halfwidth.max()),
                        shapley_ci_halfwidths=est.halfwidth,
                        shapley_permutations=est.permutations)
        allocation = phi
        if p <= self.options.exact_max_members:
            status, eps, point = self.least_core_model(p).solve(values, phi)
            info["least_core_epsilon"] = eps
            info["core_nonempty"] = bool(eps <= CORE_TOL)
            if self.options.allocation == "least_core" and status == "ok":
                allocation = point
            elif self.options.allocation == "least_core":
                info["allocation"] = f"shapley ({status})"
        elif self.options.allocation == "least_core":
            info["allocation"] = "shapley (least core needs the exact game)"
            info["core_nonempty"] = None
        else:
            info["core_nonempty"] = None
        excess = max_excess(values, membership, allocation)
        if p <= self.options.exact_max_members and p >= 2:
            # exact game: the core check is the LP over every coalition (the enumeration
            # above gives the same number; the LP is the check reported)
            lp_status, lp_excess = self.least_core_model(p).max_excess(values, allocation)
            if lp_status == "ok":
                excess = lp_excess
            info["core_check"] = "lp" if lp_status == "ok" else f"enumeration ({lp_status})"
        else:
            info["core_check"] = "sampled coalitions"
        info.update(in_core=bool(excess <= CORE_TOL), max_excess=excess, core_coalitions_checked=len(values),
                    coalition_solves=game.solves, coalition_values_closed_form=game.closed_form_values,
                    player_shares=allocation)
        for k, members in enumerate(game.players):
            if len(members) == 1:
                shares[members] = allocation[k]
            else:
                traded = x["bought_kwh"][members] + x["sold_kwh"][members]
                offered = orders.demand_kwh[members] + orders.supply_kwh[members]
                shares[members] = split_group_share(allocation[k], traded, offered)
        return shares, info

    def exact(self, game: PoolGame, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every coalition's value: all at once in closed form where it holds
        (`PoolGame.values`), else one LP each in Gray-code order (consecutive LPs differ by
        one player)."""
        membership = subset_matrix(p)
        if game.closed_form:
            values = game.values(membership)
            values[0] = 0.0
            return shapley_exact(values), values, membership
        values = np.zeros(2**p)
        for i in range(1, 2**p):
            mask = i ^ (i >> 1)
            member = (membership[mask].astype(float) @ game.player_matrix) > 0
            values[mask] = game.value(mask, member)
        return shapley_exact(values), values, membership

    def sampled(self, game: PoolGame, p: int, v_grand: float,
                orders: OrderArrays) -> tuple[SampledShapley, np.ndarray, np.ndarray]:
        """Monte-Carlo estimate; also the sampled coalitions (values, membership) for the core check."""
        o = self.options
        state = {"order": None, "k": 0, "mask": 0, "member": np.zeros(game.n, dtype=bool)}
        sampled: dict[int, np.ndarray] = {}

        def value(order: np.ndarray, k: int) -> float:
            if state["order"] is not order or k != state["k"] + 1:  # a new permutation starts
                state.update(order=order, k=0, mask=0, member=np.zeros(game.n, dtype=bool))
            j = int(order[k - 1])
            state["k"], state["mask"] = k, state["mask"] | (1 << j)
            state["member"][game.players[j]] = True
            if state["mask"] not in sampled:
                row = np.zeros(p, dtype=bool)
                row[order[:k]] = True
                sampled[state["mask"]] = row
            return game.value(state["mask"], state["member"])

        est = shapley_sampled(value, p, v_grand, o.mc_permutations, self._rng(orders), o.mc_confidence,
                              o.mc_max_solves, lambda: game.solves + game.closed_form_values)
        masks = list(sampled)
        values = np.array([game.cache[m] for m in masks] + [v_grand])
        membership = np.array([sampled[m] for m in masks] + [np.ones(p, dtype=bool)]).reshape(-1, p)
        return est, values, membership

    # -- the result -----------------------------------------------------------------------------
    def result(self, x: dict, shares: np.ndarray, game: PoolGame, w_grand: float, orders: OrderArrays,
               ctx: MarketContext, charges: Charges, info: dict) -> ClearingResult:
        # the shares pay out exactly the money the P2P trades create (negative when caps or
        # cuts make the grand coalition trade at a loss), so that the manager breaks even
        money = float(game.eff_bid @ x["bought_kwh"] - game.eff_ask @ x["sold_kwh"])
        v_grand = info["coalition_value"]
        scale = 1.0
        if v_grand > VALUE_TOL:
            scale = money / v_grand
            shares = shares * scale
        else:  # nothing to share; a trade the tie-break made can still move money (|G| <= 2e-6/kWh)
            market = x["bought_kwh"] + x["sold_kwh"]
            if market.sum() > 0.0:
                shares = money * market / market.sum()
        shares, stranded = carry_shares(x, shares)
        bills = share_prices(x, shares, game.eff_bid, game.eff_ask, ctx)
        result = ClearingResult(
            status="ok",
            bought_kwh=bills.bought_kwh,
            sold_kwh=bills.sold_kwh,
            import_kwh=bills.import_kwh,
            export_kwh=bills.export_kwh,
            curtailed_kwh=x["curtailed_kwh"],
            shed_kwh=x["shed_kwh"],
            buy_price_per_kwh=bills.buy_price_per_kwh,
            sell_price_per_kwh=bills.sell_price_per_kwh,
            charges=charges,
            price_per_kwh=float("nan"),
            welfare=w_grand,
            operator_import_kwh=bills.operator_import_kwh,
            operator_export_kwh=bills.operator_export_kwh,
        )
        info.update(
            share_scale=scale,
            shares=shares,
            internal_kwh=float(x["bought_kwh"].sum()),
            routed_kwh=float(bills.operator_import_kwh + bills.operator_export_kwh),
            stranded_share=stranded,
            unpaid_share=bills.unpaid_share,
        )
        result.info = info
        result.trades = self.trade_table(result, x, bills, charges, game, ctx)
        return result

    def trade_table(self, r: ClearingResult, x: dict, bills: CoalitionBills, charges: Charges, game: PoolGame,
                    ctx: MarketContext) -> pd.DataFrame:
        """Internal P2P trades (merit order), members' routed trades with the manager, the
        manager's trades with the outside party, and direct outside trades."""
        ids = np.asarray(self.ids, dtype=object)
        idx = np.arange(len(ids))
        bp, sp = bills.buy_price_per_kwh, bills.sell_price_per_kwh
        rows = [
            (ids[s], ids[b], q, bp[b], sp[s], charges.sell[s] + charges.buy[b])
            for s, b, q in merit_order_matching(idx, x["bought_kwh"], game.eff_bid, idx, x["sold_kwh"], game.eff_ask)
        ]
        for b in np.flatnonzero(bills.routed & (x["imported_kwh"] > QTY_TOL)):
            rows.append((MANAGER, ids[b], float(x["imported_kwh"][b]), bp[b], bp[b], charges.buy[b]))
        for s in np.flatnonzero(bills.routed & (x["exported_kwh"] > QTY_TOL)):
            rows.append((ids[s], MANAGER, float(x["exported_kwh"][s]), sp[s], sp[s], charges.sell[s]))
        if r.operator_import_kwh > QTY_TOL:
            p = ctx.retail_price_per_kwh
            rows.append((ctx.outside_party, MANAGER, r.operator_import_kwh, p, p, 0.0))
        if r.operator_export_kwh > QTY_TOL:
            p = ctx.feed_in_price_per_kwh
            rows.append((MANAGER, ctx.outside_party, r.operator_export_kwh, p, p, 0.0))
        rows += outside_trades(r, self.ids, ctx)
        return pd.DataFrame(rows, columns=TRADE_COLUMNS)


MECHANISMS: list = [ShapleyCoalition]
