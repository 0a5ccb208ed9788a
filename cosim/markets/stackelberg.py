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

Leaders' equilibrium by iterated best response (option ``sweeps``: ``jacobi``, every seller
at once against the same prices, or ``gauss_seidel``, each seller in turn), from every
seller at its floor c_m (or, with ``warm_start``, from the previous round's equilibrium
prices), until no price moves more than ``price_tol_per_kwh``. A
seller's best response is an exact 1-D search (`best_response`, `best_responses`): with
the others' prices fixed, each buyer's x_nm is piecewise linear in p_m, with breakpoints
where the buyer's water level passes another seller's price or the price at which it takes
all that seller offers, where its need stops binding, where x_nm reaches 0 and where it
reaches S_m -- all computed in closed form. So the seller's payoff (p - c) min(S, X(p)) is a
concave quadratic on each piece; the search evaluates it at every breakpoint, at every
crossing of X(p) = S and at each piece's stationary point, and takes the best (the lowest
price among ties). Without binding offers, a price rise by one seller shifts demand to the
others and makes each one's demand less price-sensitive (strategic complements), so best
responses rise with rivals' prices and Gauss-Seidel sweeps from the floors (without
acceleration) rise monotonically towards the smallest equilibrium (Milgrom and Roberts, 1990, "Rationalizability, learning,
and equilibrium in games with strategic complementarities", Econometrica 58(6):1255-1277;
Vives, 1990, "Nash equilibrium with strategic complementarities", J. Math. Econ. 19:305-321).
With binding offers that fails: a seller's best response can jump from the residual-demand
kink (a high price, selling what a capped rival leaves) down to undercutting the rival, and
a pure-strategy equilibrium need not exist (Edgeworth cycles: Edgeworth, 1925 [1897], "The
pure theory of monopoly", Papers Relating to Political Economy, vol. 1, Macmillan; Dasgupta
and Maskin, 1986, "The existence of equilibrium in discontinuous economic games, II:
Applications", Rev. Econ. Stud. 53(1):27-41; Vives, 1999, "Oligopoly Pricing", MIT Press,
ch. 5). Jacobi sweeps can also alternate between two price vectors where Gauss-Seidel
sweeps settle (each seller answering the other's last move); the Anderson mixing damps
such cycles. The iteration then stops after ``max_sweeps`` at its last prices with info
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
prices. The followers' stage takes each buyer's closed-form response at the equilibrium
prices (``followers: closed_form``, the default: the KKT conditions of its QP, exact), or
solves each buyer's own problem as a Pyomo QP built once per run (``followers: qp``,
`FollowerModel`: persistent HiGHS, one purchase variable per participant; per buyer only
bounds, costs, the need and the Hessian change); info ``follower_gap_kwh`` is then the
largest difference between the QPs' purchases and the closed form the leaders anticipated
(solver tolerance, ~1e-7; 0 with the closed form). A seller asked for more than it
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

from typing import Literal

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
    failed_result,
    outside_trades,
)
from cosim.markets.highs import attach_highs, solve_highs
from cosim.markets.pool import PoolModel
from cosim.markets.stackelberg_game import (
    Followers,
    follower_response,
    leaders_equilibrium,
    nash_gains,
    seller_payoffs,
)

#: Follower purchases below this are dropped from the trade table [kWh].
TRADE_MIN_KWH = QTY_TOL


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
        followers: Literal["closed_form", "qp"] = "closed_form"
        """How the buyers' purchases at the equilibrium prices are found: their closed-form
        response (the QP's KKT conditions, exact), or each buyer's QP solved by HiGHS (the
        same purchases to the solver's tolerance, ~1e-7 kWh; info follower_gap_kwh)."""
        sweeps: Literal["jacobi", "gauss_seidel"] = "jacobi"
        """Best-response sweeps of the leaders' iteration: every seller at once against the
        same prices (numpy over sellers, buyers and breakpoints; cheap), or each seller in
        turn against the prices already updated (the iteration before issue 18). Both stop
        only at a Nash equilibrium within price_tol_per_kwh; where the game has several
        equilibria (e.g. sellers with equal costs sharing one buyer whose need binds),
        the two paths may settle on different ones."""
        warm_start: bool = True
        """Start the best-response sweeps from the previous round's equilibrium prices (each
        seller that led then, clipped to its strategy interval; the others at their floor)
        instead of every seller at its floor. The stopping rule and the Nash check are the
        same; where the game has several equilibria, the one reached may differ."""

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        n = len(self.ids)
        self.pool = PoolModel(n, max_cuts)
        self.followers = FollowerModel(n) if self.options.followers == "qp" else None
        self.last_prices = np.full(n, np.nan)
        """The last clearing's equilibrium prices [currency/kWh] (NaN: not a leader), the
        warm start of the next round's sweeps."""

    def reset_warm_start(self) -> None:
        super().reset_warm_start()
        self.last_prices = np.full(len(self.ids), np.nan)

    def get_state(self) -> dict:
        return {"last_prices": self.last_prices.copy()}

    def set_state(self, state: dict) -> None:
        self.last_prices = np.asarray(state.get("last_prices", np.full(len(self.ids), np.nan)), float).copy()

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
            start = self.last_prices[game_sellers] if o.warm_start else None
            eq = leaders_equilibrium(c_s, s_s, f, ceiling, o.price_tol_per_kwh, o.max_sweeps, o.anderson_memory,
                                     start, o.sweeps)
            gains = nash_gains(eq.prices, c_s, s_s, f, ceiling, o.ne_grid_points)
            worst = int(np.argmax(gains))
            price[game_sellers] = eq.prices
            x_closed = follower_response(eq.prices, f, s_s)
            payoff = seller_payoffs(eq.prices, c_s, s_s, f)
            info.update(sweeps=eq.sweeps, converged=eq.converged, last_price_change=eq.last_change,
                        ne_max_gain=float(gains[worst]), ne_max_gain_seller=self.ids[game_sellers[worst]],
                        is_nash=bool(gains[worst] <= o.ne_tolerance), leaders_profit=float(payoff.sum()))
        # followers' stage: each buyer's response at the equilibrium prices
        purchase = np.zeros((n, n))
        gap = 0.0
        if self.followers is None:
            purchase[np.ix_(buyers, game_sellers)] = x_closed
        else:
            for b in buyers:
                upper = np.zeros(n)
                if len(game_sellers):
                    upper[game_sellers] = np.where(price[game_sellers] < value[b], offer[game_sellers], 0.0)
                status, purchase[b] = self.followers.solve(price, value[b], weight[b], need[b], upper)
                if status != "ok":
                    return failed_result(status, n, charges)
            gap = float(np.abs(purchase[np.ix_(buyers, game_sellers)] - x_closed).max()) if x_closed.size else 0.0
        self.last_prices = price.copy()
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
