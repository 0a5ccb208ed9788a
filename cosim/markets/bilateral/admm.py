"""The decentralised solution of the multi-bilateral market: consensus ADMM over the pair
slots (waterfilling best responses, or one Pyomo/HiGHS model per prosumer)."""

from __future__ import annotations

import highspy
import numpy as np
import pyomo.environ as pyo
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import nnls

from cosim.markets.base import (
    QTY_TOL,
    NetworkCuts,
)
from cosim.markets.bilateral.central import RoundData
from cosim.markets.bilateral.options import (
    ADMM_RELAXATION,
    ADMM_RHO_ADAPT_UNTIL,
    ADMM_RHO_BALANCE,
    ADMM_RHO_PERIOD,
    ADMM_RHO_RANGE,
    TRADE_ZERO_KWH,
    UNLIMITED_KWH,
    BilateralOptions,
)
from cosim.markets.highs import INACTIVE_RHS
from cosim.markets.pool import OUTSIDE_EPSILON


class WaterfillLayout:
    """The items of a `waterfill` grouped by agent, and the order that sorts them.

    Built once per negotiation (an agent's items do not change between its iterations).
    Each call sorts the items by (agent, breakpoint) with a stable sort that starts from
    the order of the previous call: breakpoints move little from one ADMM iteration to
    the next, so the sort runs on nearly sorted data.
    """

    def __init__(self, group: np.ndarray, n_groups: int):
        group = np.asarray(group, dtype=np.int64)
        count = np.bincount(group, minlength=n_groups)
        self.n_groups = n_groups
        self.group = group
        self.agents = np.flatnonzero(count > 0)
        """The agents with items, one row each, in agent order."""
        rank = np.cumsum(count > 0) - 1
        self.row = rank[group]
        """Row (rank among the agents with items) of each item."""
        size = count[self.agents]
        self.row_start = np.cumsum(size) - size
        """Position of each row's first item once sorted."""
        self.row_of_position = np.repeat(np.arange(len(self.agents)), size)
        self.position_in_row = (np.arange(len(group)) - self.row_start[self.row_of_position]).astype(float)
        self.order = np.argsort(self.row, kind="stable")
        """Item at each sorted position (rows contiguous); updated by every call."""
        self._same_row = np.diff(self.row_of_position) == 0

    def __len__(self) -> int:
        return len(self.group)

    def sort(self, breakpoint: np.ndarray) -> np.ndarray:
        """Order of the items by (row, breakpoint); remembers it for the next call."""
        lo, hi = float(breakpoint.min()), float(breakpoint.max())
        span = (hi - lo) * 2.0 + 1.0
        key = self.row * span + (breakpoint - lo)
        order = self.order[np.argsort(key[self.order], kind="stable")]
        b = breakpoint[order]
        # the combined key loses ties finer than its rounding: check, and sort exactly if so
        if np.any((b[1:] < b[:-1]) & self._same_row):
            order = np.lexsort((breakpoint, self.row))
        self.order = order
        return order


def waterfill(group: np.ndarray, breakpoint: np.ndarray, quantity: np.ndarray, nu_cap: np.ndarray,
              rho: float, layout: WaterfillLayout | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form best response of many agents at once, one balance each.

    Agent g solves ``min sum_v [g_v v + rho/2 (v - z_v)^2] + nu_cap[g] w`` subject to
    ``sum_v v + w = quantity[g]``, ``v, w >= 0``, where the items v of agent g are those with
    ``group == g``, ``breakpoint = g_v - rho z_v``, and w is the agent's cheapest option with
    a linear cost (``nu_cap = inf`` when it has none). Stationarity gives
    ``v = max(0, (nu - breakpoint) / rho)`` with nu the balance's multiplier, the root of
    the increasing piecewise-linear ``sum_v max(0, nu - breakpoint_v) = rho quantity``,
    capped by nu_cap. The root is found exactly by sorting each agent's breakpoints
    (`WaterfillLayout`, built from `group` unless given). Returns (v per item, w per agent).

    >>> v, w = waterfill(np.array([0, 0, 1]), np.array([-1.0, 0.0, 0.0]), np.array([1.5, 5.0]),
    ...                  np.array([np.inf, 1.0]), 1.0)
    >>> v.tolist(), w.tolist()
    ([1.25, 0.25, 1.0], [0.0, 4.0])
    """
    if layout is None:
        layout = WaterfillLayout(group, len(quantity))
    quantity = np.asarray(quantity, float)
    nu_solve = np.full(len(quantity), np.inf)
    v = np.zeros(len(layout))
    if len(layout):
        b = breakpoint[layout.sort(breakpoint)]
        q = quantity[layout.agents]
        row, start = layout.row_of_position, layout.row_start
        cum = np.cumsum(b)
        base = cum[start] - b[start]  # sum of the rows before
        below = cum - b - base[row]  # sum of the smaller breakpoints of the row
        # the balance's left side when nu is this breakpoint: sum_{l<k} (b_k - b_l)
        level = layout.position_in_row * b - below
        m = np.add.reduceat((level < rho * q[row]).astype(np.int64), start)
        total = cum[start + np.maximum(m - 1, 0)] - base
        nu_solve[layout.agents] = np.where(m > 0, (rho * q + total) / np.maximum(m, 1), np.inf)
    nu_solve[quantity <= 0] = -np.inf
    nu = np.minimum(nu_solve, nu_cap)
    taken = np.zeros(len(quantity))
    if len(layout):
        v = np.maximum(0.0, (nu[layout.group] - breakpoint) / rho)
        v[~np.isfinite(v)] = 0.0
        taken = np.bincount(layout.group, weights=v, minlength=len(quantity))
    w = np.where(nu_solve > nu_cap, np.maximum(quantity - taken, 0.0), 0.0)
    return v, w


def project_capped(a: np.ndarray, cap: float) -> np.ndarray:
    """Euclidean projection of `a` onto ``{o >= 0, sum o <= cap}``.

    >>> project_capped(np.array([3.0, 1.0, -1.0]), 2.0).tolist()
    [2.0, 0.0, 0.0]
    """
    o = np.maximum(a, 0.0)
    if o.sum() <= cap:
        return o
    desc = np.sort(o)[::-1]
    theta = (np.cumsum(desc) - cap) / np.arange(1, len(desc) + 1)
    k = np.flatnonzero(desc - theta > 0)[-1]
    return np.maximum(o - theta[k], 0.0)


class CutProjection:
    """The DSO's step: project its copies of curtailment and shedding onto the network cuts.

    Copies o = (curtailed at the sellers, shed at the buyers) must satisfy
    ``coef (supply - demand - curtailed + shed) <= rhs``, i.e. ``A o <= b``. The projection
    ``argmin ||o - a||^2, A o <= b`` is ``a - A' pi`` with pi >= 0 the solution of the small
    dual ``min 1/2 pi' A A' pi - pi' (A a - b)`` (one entry per cut), solved as a
    non-negative least-squares problem.
    """

    def __init__(self, cuts: NetworkCuts, supply: np.ndarray, demand: np.ndarray,
                 sellers: np.ndarray, buyers: np.ndarray):
        coef = np.asarray(cuts.coef, float)
        self.A = np.hstack([-coef[:, sellers], coef[:, buyers]])
        self.b = np.asarray(cuts.rhs, float) - coef @ (supply - demand)
        gram = self.A @ self.A.T
        ridge = 1e-12 * (np.trace(gram) / max(len(gram), 1) + 1.0)
        self.R = cholesky(gram + ridge * np.eye(len(gram)), lower=False)

    def project(self, a: np.ndarray) -> np.ndarray:
        h = self.A @ a - self.b
        if np.all(h <= 0):
            return a
        pi, _ = nnls(self.R, solve_triangular(self.R, h, trans="T"), maxiter=50 * len(h) + 100)
        return a - self.A.T @ pi


class Side:
    """One side (sellers or buyers) of every prosumer's ADMM step.

    Each prosumer with a positive `quantity` on this side balances it over its pair
    proposals (items with `pair_owner`, `pair_breakpoint`) and its options (export and
    curtail for a seller, import and shed for a buyer). An option is either absent,
    linear (``coef`` = cost per kWh) or quadratic (shared with another peer: ``coef`` =
    its breakpoint ``g - rho z``). `layout` (the water-filling table of the pair items
    and the quadratic options) depends only on that structure; pass the one of an
    earlier `Side` of the same negotiation to reuse it.
    """

    def __init__(self, quantity: np.ndarray, pair_owner: np.ndarray, pair_breakpoint: np.ndarray,
                 options: dict[str, tuple[np.ndarray, bool, np.ndarray]], layout: WaterfillLayout | None = None):
        self.quantity = quantity
        self.pair_owner = pair_owner
        self.pair_breakpoint = pair_breakpoint
        self.options = options
        """name -> (available per prosumer, quadratic?, coef per prosumer)."""
        self.quadratic = [(name, np.flatnonzero(available)) for name, (available, quad, _) in options.items() if quad]
        self.linear = [name for name, (_, quad, _) in options.items() if not quad]
        if layout is None:
            group = np.concatenate([pair_owner, *[idx for _, idx in self.quadratic]]).astype(np.int64)
            layout = WaterfillLayout(group, len(quantity))
        self.layout = layout


def vectorised_best_response(side: Side, rho: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every prosumer's step on one side at once (closed form, `waterfill`)."""
    n = len(side.quantity)
    cap = np.full(n, np.inf)
    cheapest = np.full(n, -1)
    for k, name in enumerate(side.linear):
        available, _, coef = side.options[name]
        c = np.where(available, coef, np.inf)
        better = c < cap
        cap = np.where(better, c, cap)
        cheapest = np.where(better, k, cheapest)
    breakpoints = [side.pair_breakpoint, *[side.options[name][2][idx] for name, idx in side.quadratic]]
    v, w = waterfill(side.layout.group, np.concatenate(breakpoints), side.quantity, cap, rho, side.layout)
    n_pairs = len(side.pair_owner)
    out = {name: np.zeros(n) for name in side.options}
    offset = n_pairs
    for name, idx in side.quadratic:
        out[name][idx] = v[offset:offset + len(idx)]
        offset += len(idx)
    for k, name in enumerate(side.linear):
        out[name] += np.where(cheapest == k, w, 0.0)
    return v[:n_pairs], out


class ProsumerModels:
    """One persistent Pyomo model per prosumer for its ADMM step, solved by HiGHS (QP).

    The same problem `vectorised_best_response` solves in closed form: for prosumer n,

        minimise  sum_v coef_v v + rho/2 sum_{quadratic v} v^2
        sum sales + exported + curtailed = supply[n],  sum purchases + imported + shed = demand[n]

    over its slots (inactive slots and absent options bounded to 0); ``coef = g - rho z``
    for a shared quantity (the proximal term without its constant), the cost for an
    option with a linear cost. Built once per run (Pyomo, then HiGHS through Pyomo's
    persistent interface); each step only writes costs, bounds and, when rho or the
    pattern of shared options changes, the diagonal Hessian.
    """

    OPTION_VARS = {"exported": "exported_kwh", "curtailed": "curtailed_kwh",
                   "imported": "imported_kwh", "shed": "shed_kwh"}

    def __init__(self, n: int, sales: list[list[int]], purchases: list[list[int]]):
        from pyomo.contrib.solver.solvers.highs import Highs as PersistentHighs

        self.n, self.sales, self.purchases = n, sales, purchases
        self.highs: list[highspy.Highs] = []
        self.cols: list[dict[str, np.ndarray]] = []
        self.rows: list[np.ndarray] = []
        self._hessian_key: list[tuple | None] = [None] * n
        for k in range(n):
            m = self._build(len(sales[k]), len(purchases[k]))
            solver = PersistentHighs()
            solver.set_instance(m)
            h = solver._solver_model
            h.setOptionValue("output_flag", False)
            h.setOptionValue("log_to_console", False)
            vmap, cmap = solver._pyomo_var_to_solver_var_map, solver._pyomo_con_to_solver_con_map
            cols = {name: np.array([vmap[id(v)] for v in getattr(m, name).values()], dtype=np.int32)
                    for name in ("sale_kwh", "purchase_kwh", *self.OPTION_VARS.values())}
            self.highs.append(h)
            self.cols.append(cols)
            self.rows.append(np.array([cmap[m.seller_balance], cmap[m.buyer_balance]], dtype=np.int32))

    @staticmethod
    def _build(n_sales: int, n_purchases: int) -> pyo.ConcreteModel:
        m = pyo.ConcreteModel(name="prosumer")
        m.SALES = pyo.RangeSet(0, n_sales - 1)
        m.PURCHASES = pyo.RangeSet(0, n_purchases - 1)
        nonneg = pyo.NonNegativeReals
        m.sale_kwh = pyo.Var(m.SALES, domain=nonneg)
        m.purchase_kwh = pyo.Var(m.PURCHASES, domain=nonneg)
        m.exported_kwh = pyo.Var(domain=nonneg)
        m.curtailed_kwh = pyo.Var(domain=nonneg)
        m.imported_kwh = pyo.Var(domain=nonneg)
        m.shed_kwh = pyo.Var(domain=nonneg)
        m.supply_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.demand_kwh = pyo.Param(mutable=True, initialize=0.0)
        m.rho = pyo.Param(mutable=True, initialize=1.0)
        m.sale_coef = pyo.Param(m.SALES, mutable=True, initialize=0.0)
        m.purchase_coef = pyo.Param(m.PURCHASES, mutable=True, initialize=0.0)
        m.option_coef = pyo.Param(["exported", "curtailed", "imported", "shed"], mutable=True, initialize=0.0)
        m.seller_balance = pyo.Constraint(
            expr=sum(m.sale_kwh[s] for s in m.SALES) + m.exported_kwh + m.curtailed_kwh == m.supply_kwh
        )
        m.buyer_balance = pyo.Constraint(
            expr=sum(m.purchase_kwh[s] for s in m.PURCHASES) + m.imported_kwh + m.shed_kwh == m.demand_kwh
        )
        options = {"exported": m.exported_kwh, "curtailed": m.curtailed_kwh, "imported": m.imported_kwh,
                   "shed": m.shed_kwh}
        m.proposal_cost = pyo.Objective(
            expr=sum(m.sale_coef[s] * m.sale_kwh[s] + m.rho / 2 * m.sale_kwh[s] ** 2 for s in m.SALES)
            + sum(m.purchase_coef[s] * m.purchase_kwh[s] + m.rho / 2 * m.purchase_kwh[s] ** 2 for s in m.PURCHASES)
            + sum(m.option_coef[name] * var + m.rho / 2 * var**2 for name, var in options.items()),
            sense=pyo.minimize,
        )
        return m

    def best_response(self, sellers: Side, buyers: Side, slot_seller_index: np.ndarray,
                      slot_buyer_index: np.ndarray, active: np.ndarray, rho: float
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """Solve every prosumer's model; same returns as two `vectorised_best_response` calls.

        `active` lists the active slots in the order of the sides' pair items;
        ``slot_seller_index[s]`` / ``slot_buyer_index[s]`` is slot s's position in its
        seller's sales / its buyer's purchases.
        """
        n = self.n
        sell_coef = [np.zeros(len(s)) for s in self.sales]
        sell_on = [np.zeros(len(s), dtype=bool) for s in self.sales]
        buy_coef = [np.zeros(len(p)) for p in self.purchases]
        buy_on = [np.zeros(len(p), dtype=bool) for p in self.purchases]
        for k, s in enumerate(active.tolist()):
            i, j = int(sellers.pair_owner[k]), int(buyers.pair_owner[k])
            sell_coef[i][slot_seller_index[s]] = sellers.pair_breakpoint[k]
            sell_on[i][slot_seller_index[s]] = True
            buy_coef[j][slot_buyer_index[s]] = buyers.pair_breakpoint[k]
            buy_on[j][slot_buyer_index[s]] = True
        out_s = {name: np.zeros(n) for name in sellers.options}
        out_b = {name: np.zeros(n) for name in buyers.options}
        x_by = [np.zeros(len(s)) for s in self.sales]
        y_by = [np.zeros(len(p)) for p in self.purchases]
        inf = highspy.kHighsInf
        for k in np.flatnonzero((sellers.quantity > 0) | (buyers.quantity > 0)):
            h, cols = self.highs[k], self.cols[k]
            opt_cost, opt_upper, opt_quad = {}, {}, {}
            for side in (sellers, buyers):
                for name, (available, quad, coef) in side.options.items():
                    opt_cost[name] = float(coef[k]) if available[k] else 0.0
                    opt_upper[name] = inf if available[k] and side.quantity[k] > 0 else 0.0
                    opt_quad[name] = bool(quad and available[k] and side.quantity[k] > 0)
            names = list(self.OPTION_VARS)
            idx = np.concatenate([cols["sale_kwh"], cols["purchase_kwh"],
                                  *[cols[self.OPTION_VARS[name]] for name in names]]).astype(np.int32)
            cost = np.concatenate([sell_coef[k], buy_coef[k], [opt_cost[name] for name in names]])
            upper = np.concatenate([np.where(sell_on[k], inf, 0.0), np.where(buy_on[k], inf, 0.0),
                                    [opt_upper[name] for name in names]])
            quad = np.concatenate([sell_on[k], buy_on[k], [opt_quad[name] for name in names]])
            h.changeColsCost(len(idx), idx, cost)
            h.changeColsBounds(len(idx), idx, np.zeros(len(idx)), upper)
            q = np.array([sellers.quantity[k], buyers.quantity[k]])
            h.changeRowsBounds(2, self.rows[k], q, q)
            self._set_hessian(k, idx[quad], rho)
            h.run()
            x = np.asarray(h.getSolution().col_value)
            x_by[k] = np.maximum(x[cols["sale_kwh"]], 0.0)
            y_by[k] = np.maximum(x[cols["purchase_kwh"]], 0.0)
            for name in names:
                value = max(float(x[cols[self.OPTION_VARS[name]][0]]), 0.0)
                (out_s if name in out_s else out_b)[name][k] = value
        x = np.array([x_by[int(sellers.pair_owner[k])][slot_seller_index[s]] for k, s in enumerate(active.tolist())])
        y = np.array([y_by[int(buyers.pair_owner[k])][slot_buyer_index[s]] for k, s in enumerate(active.tolist())])
        return x.reshape(-1), out_s, y.reshape(-1), out_b

    def _set_hessian(self, k: int, quad_cols: np.ndarray, rho: float) -> None:
        key = (tuple(quad_cols.tolist()), rho)
        if key == self._hessian_key[k]:
            return
        h = self.highs[k]
        dim = h.getNumCol()
        diag = np.zeros(dim)
        diag[quad_cols] = rho
        nz = np.flatnonzero(diag)
        start = np.searchsorted(nz, np.arange(dim)).astype(np.int32)
        h.passHessian(dim, len(nz), int(highspy.HessianFormat.kTriangular), start, nz.astype(np.int32),
                      diag[nz])
        self._hessian_key[k] = key


class AdmmNegotiation:
    """Consensus ADMM between the prosumers (and the outside party and DSO when they bind).

    Exchanged each iteration: each prosumer's proposals for its active slots (and its
    import/export or curtail/shed proposals when those are shared), the pair prices
    lambda and the averages z. No agent sees another's bid, ask or quantity.

    With ``admm_warm_start`` a negotiation opens at the prices and averages the last one
    ended with on the slots active in both (the feedback's re-clearing of a round, and
    the next round, start close to the answer); other slots open at the middle of the
    pair's bid and ask, with nothing proposed.
    """

    def __init__(self, n: int, seller: np.ndarray, buyer: np.ndarray, options: BilateralOptions):
        self.n, self.seller, self.buyer, self.options = n, seller, buyer, options
        sales = [[] for _ in range(n)]
        purchases = [[] for _ in range(n)]
        self.slot_seller_index = np.zeros(len(seller), dtype=np.int64)
        self.slot_buyer_index = np.zeros(len(seller), dtype=np.int64)
        for s, (i, j) in enumerate(zip(seller.tolist(), buyer.tolist(), strict=True)):
            self.slot_seller_index[s] = len(sales[i])
            self.slot_buyer_index[s] = len(purchases[j])
            sales[i].append(s)
            purchases[j].append(s)
        self.models = ProsumerModels(n, sales, purchases) if options.admm_local_solver == "pyomo" else None
        self.history: list[tuple[float, float, float]] = []
        """(residual, move [kWh], rho) of each iteration of the last negotiation."""
        self._last_price = np.full(len(seller), np.nan)
        self._last_average = np.zeros(len(seller))
        self._last_option_price: dict[str, np.ndarray] = {}
        self._last_rho = 0.0

    def reset(self) -> None:
        """Forget the last negotiation (the next one opens cold)."""
        self._last_price[:] = np.nan
        self._last_average[:] = 0.0
        self._last_option_price = {}
        self._last_rho = 0.0

    def _best_response(self, sellers: Side, buyers: Side, active: np.ndarray, rho: float):
        if self.models is not None:
            return self.models.best_response(sellers, buyers, self.slot_seller_index, self.slot_buyer_index,
                                             active, rho)
        x, out_s = vectorised_best_response(sellers, rho)
        y, out_b = vectorised_best_response(buyers, rho)
        return x, out_s, y, out_b

    def negotiate(self, d: RoundData) -> dict:
        """Run the ADMM for one round; returns the allocation, prices and convergence figures.

        Stopping rule: every pair's (and shared option's) two proposals agree to within
        ``admm_tolerance_kwh`` (primal residual) and no price moved by more than
        ``admm_price_tolerance_per_kwh`` in the last iteration (dual residual, rho times the
        move of the averages); or ``admm_max_iterations``.
        """
        opts, n, ctx = self.options, self.n, d.ctx
        active = np.flatnonzero(d.active)
        si, bj = self.seller[active], self.buyer[active]
        cost, value = d.cost[active], d.value[active]
        is_seller, is_buyer = d.supply > QTY_TOL, d.demand > QTY_TOL
        supply, demand = np.where(is_seller, d.supply, 0.0), np.where(is_buyer, d.demand, 0.0)

        def mode(cap: float) -> str:
            return "absent" if cap <= QTY_TOL else ("linear" if cap >= UNLIMITED_KWH else "shared")

        import_mode, export_mode = mode(d.import_cap), mode(d.export_cap)
        sellers_idx, buyers_idx = np.flatnonzero(is_seller), np.flatnonzero(is_buyer)
        dso = CutProjection(d.cuts, supply, demand, sellers_idx, buyers_idx) if len(d.cuts) else None
        # options shared with another peer (outside party, DSO); the others have a linear cost
        shared = [name for name, on in (("exported", export_mode == "shared"), ("imported", import_mode == "shared"),
                                        ("curtailed", dso is not None), ("shed", dso is not None)) if on]
        base_cost = {"exported": OUTSIDE_EPSILON, "imported": OUTSIDE_EPSILON, "curtailed": ctx.curtail_cost,
                     "shed": ctx.voll_per_kwh}
        available = {"exported": is_seller & (export_mode != "absent"), "curtailed": is_seller,
                     "imported": is_buyer & (import_mode != "absent"), "shed": is_buyer}

        # consensus state, flat: averages z and prices of the pair slots, then of each shared
        # option per prosumer (the prosumer pays its option's price to the other peer)
        part = {"pairs": slice(0, len(active))}
        for k, name in enumerate(shared):
            part[name] = slice(len(active) + k * n, len(active) + (k + 1) * n)
        z = np.zeros(len(active) + len(shared) * n)
        price = np.zeros_like(z)
        price[part["pairs"]] = 0.5 * (cost + value)  # opening offer: the middle of bid and ask
        rho = opts.admm_rho
        if opts.admm_warm_start and self._last_rho > 0:  # or where the last negotiation ended
            last = self._last_price[active]
            warm = np.isfinite(last)
            price[part["pairs"]][warm] = last[warm]
            cap = np.minimum(supply[si], demand[bj])
            z[part["pairs"]][warm] = np.minimum(self._last_average[active][warm], cap[warm])
            for name in shared:
                if name in self._last_option_price:
                    price[part[name]] = self._last_option_price[name]
            rho = self._last_rho

        tol, price_tol = opts.admm_tolerance_kwh, opts.admm_price_tolerance_per_kwh
        layouts: dict[str, WaterfillLayout | None] = {"sellers": None, "buyers": None}
        converged, residual, move = False, np.inf, np.inf
        self.history = history = []
        for iterations in range(1, opts.admm_max_iterations + 1):
            lam, zp = price[part["pairs"]], z[part["pairs"]]
            # an option's cost per kWh; a shared one's proximal breakpoint g - rho z, g = cost + price
            options = {
                name: (available[name], True, base_cost[name] + price[part[name]] - rho * z[part[name]])
                if name in shared else (available[name], False, np.full(n, base_cost[name]))
                for name in base_cost
            }
            # every prosumer's step (in parallel): its proposals, given the prices and averages
            sellers = Side(supply, si, (cost - lam) - rho * zp, {k: options[k] for k in ("exported", "curtailed")},
                           layouts["sellers"])
            buyers = Side(demand, bj, (lam - value) - rho * zp, {k: options[k] for k in ("imported", "shed")},
                          layouts["buyers"])
            layouts["sellers"], layouts["buyers"] = sellers.layout, buyers.layout
            x, out_s, y, out_b = self._best_response(sellers, buyers, active, rho)
            mine = {**out_s, **out_b}
            # the other peers' copies of the shared options: projections onto their limits
            other = {}
            for name, cap, idx in (("exported", d.export_cap, sellers_idx), ("imported", d.import_cap, buyers_idx)):
                if name in shared:
                    other[name] = np.zeros(n)
                    a = z[part[name]] + price[part[name]] / rho
                    other[name][idx] = project_capped(a[idx], cap)
            if dso is not None:
                a = np.r_[(z[part["curtailed"]] + price[part["curtailed"]] / rho)[sellers_idx],
                          (z[part["shed"]] + price[part["shed"]] / rho)[buyers_idx]]
                o = dso.project(a)
                other["curtailed"], other["shed"] = np.zeros(n), np.zeros(n)
                other["curtailed"][sellers_idx] = o[:len(sellers_idx)]
                other["shed"][buyers_idx] = o[len(sellers_idx):]
            # averages and prices: the payer's copy (buyer, prosumer) against the payee's
            # (seller, outside party or DSO); over-relaxed (Boyd et al. 2011, sec. 3.4.3)
            payer = np.concatenate([y, *[mine[k] for k in shared]])
            payee = np.concatenate([x, *[other[k] for k in shared]])
            z_new = ADMM_RELAXATION * 0.5 * (payer + payee) + (1 - ADMM_RELAXATION) * z
            price = price + ADMM_RELAXATION * 0.5 * rho * (payer - payee)
            residual = float(np.max(np.abs(payer - payee), initial=0.0))
            move = float(np.max(np.abs(z_new - z), initial=0.0))
            z = z_new
            history.append((residual, move, rho))
            primal, dual = residual / tol, rho * move / price_tol
            if primal <= 1.0 and dual <= 1.0:
                converged = True
                break
            # residual balancing (Boyd et al. 2011, sec. 3.4.1), on the residuals scaled by their tolerances
            if opts.admm_adaptive_rho and iterations % ADMM_RHO_PERIOD == 0 and iterations <= ADMM_RHO_ADAPT_UNTIL:
                if primal > ADMM_RHO_BALANCE * dual:
                    rho = min(2 * rho, ADMM_RHO_RANGE * opts.admm_rho)
                elif dual > ADMM_RHO_BALANCE * primal:
                    rho = max(rho / 2, opts.admm_rho / ADMM_RHO_RANGE)

        lam = price[part["pairs"]]
        self._last_price[:] = np.nan
        self._last_price[active] = lam
        self._last_average[:] = 0.0
        self._last_average[active] = z[part["pairs"]]
        self._last_option_price = {name: price[part[name]].copy() for name in shared}
        self._last_rho = rho

        # the trades both sides agree on; what either proposed beyond them falls back
        t = np.minimum(x, y)
        t[t < TRADE_ZERO_KWH] = 0.0
        sold = np.bincount(si, weights=t, minlength=n)
        bought = np.bincount(bj, weights=t, minlength=n)
        alloc = {name: mine.get(name, np.zeros(n)).copy() for name in ("exported", "curtailed", "imported", "shed")}
        for name in ("exported", "imported"):
            if name in shared:  # never more than the outside party agreed to
                alloc[name] = np.maximum(np.minimum(mine[name], other[name]), 0.0)
        # (quantities below QTY_TOL take no part in the negotiation: they fall back too)
        rest_s = np.maximum(d.supply - sold - alloc["exported"] - alloc["curtailed"], 0.0)
        rest_b = np.maximum(d.demand - bought - alloc["imported"] - alloc["shed"], 0.0)
        # to the outside party while it has room, then curtailed or shed
        for rest, outside, last, room in ((rest_s, "exported", "curtailed", d.export_cap),
                                          (rest_b, "imported", "shed", d.import_cap)):
            room = max(min(room, INACTIVE_RHS) - alloc[outside].sum(), 0.0)
            share = min(1.0, room / rest.sum()) if rest.sum() > 0 else 0.0
            alloc[outside] += share * rest
            alloc[last] += (1.0 - share) * rest
        # a prosumer whose own proposals overshoot (by the tolerance) gives up its fallback first
        for q, traded, names in ((d.supply, sold, ("exported", "curtailed")), (d.demand, bought, ("imported", "shed"))):
            over = np.maximum(traded + alloc[names[0]] + alloc[names[1]] - q, 0.0)
            for name in names:
                cut = np.minimum(over, alloc[name])
                alloc[name] -= cut
                over -= cut
        trade = np.zeros(len(self.seller))
        trade[active] = t
        slot_price = np.full(len(self.seller), np.nan)
        slot_price[active] = lam
        return {
            "trade_kwh": trade, "imported_kwh": alloc["imported"], "exported_kwh": alloc["exported"],
            "shed_kwh": alloc["shed"], "curtailed_kwh": alloc["curtailed"], "price": slot_price,
            "converged": converged, "iterations": iterations, "residual_kwh": residual, "move_kwh": move,
            "rho": rho,
        }
