"""DSO flexibility market: the DSO buys the change the network needs instead of curtailing.

The market-based alternative to curtailment by feedback, as run by Centrica's Cornwall
Local Energy Market (WPD and National Grid ESO buying flexibility in auctions that
respect grid constraints) and Piclo Flex (DSOs procuring flexibility per constraint zone);
see T. Schittekatte and L. Meeus, 2020, "Flexibility markets: Q&A with project pioneers",
Utilities Policy 63:101017.

Each round:

1. The energy market clears as usual (``energy_market``: ``uniform`` or ``continuous``),
   without network cuts.
2. When the grid check found a violation, the network feedback passes its linear cuts
   on injections. The DSO then procures the change from flexibility offers, in a Pyomo
   LP solved by HiGHS (built once per run, persistent):

       minimise  sum_n price_export[n] curtail[n] + price_import[n] reduce[n]
                 + GAP_COST sum_k gap[k]
       s.t.      sum_n coef[k, n] (reduce[n] - curtail[n]) - gap[k] <= rhs[k] - coef[k] . inj0
                 0 <= curtail[n] <= supply[n],  0 <= reduce[n] <= demand[n]

   where ``inj0`` is the energy market's injection. Offers: every seller offers to curtail
   its export at ``max(ask, feed_in) (1 + markup)`` (what the kWh would have earned), every
   buyer to reduce its import at ``reduce_import_ask_per_kwh (1 + markup)``; markups are
   seeded draws in ``[0, max_markup]`` (strategic offers). The DSO pays no offer more than
   its reserve price, the cost of its own alternative: ``reserve_price_per_kwh`` (default
   the round's curtailment cost, feed-in plus a premium: what curtailing by feedback is
   valued at) for export, the value of lost load for import. An offer above it is accepted
   at the reserve price -- a provider with no competitor at a congested bus cannot charge
   more than the DSO's alternative. ``gap`` is relief the offers cannot give (the feedback
   goes on, and forced curtailment takes the rest).
3. The energy market clears again on the orders less the procured changes, so every
   injection is the energy market's less the curtailment plus the import reduction, and
   the cuts hold. Curtailed export is in ``curtailed_kwh``; reduced import in ``shed_kwh``
   (load not served, now paid for).

Pricing (``pricing``): ``pay_as_bid`` pays each provider its (capped) ask;
``uniform`` pays every accepted provider of a product (export curtailment, import
reduction) the highest accepted capped ask of that product.

Settlement: ``info["flexibility_payment"]`` holds each participant's payment this round
[currency, received]; settlement takes it off the provider's bill and puts it on the
DSO's (column ``flexibility_payments``), so the DSO's cost is in its bill.

Not modelled: increasing import (battery or EV charging) as an offer -- the flexible
assets dispatch before the market and their headroom does not reach it -- and nodal
uniform prices (one price per product for the whole feeder).

Quantities per round [kWh], prices [currency/kWh].
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import highspy
import numpy as np
import pyomo.environ as pyo
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
)
from cosim.markets.continuous import ContinuousDoubleAuction
from cosim.markets.highs import INACTIVE_RHS, attach_highs, solve_highs
from cosim.markets.uniform import UniformDoubleAuction

#: Cost of relief the offers cannot give, per kWh of cut violated [currency/kWh]: far above
#: any capped offer, so that the gap is used only when the offers run out.
GAP_COST = 1e3
#: Energy markets the flexibility market can sit on.
ENERGY_MARKETS = {cls.name: cls for cls in (UniformDoubleAuction, ContinuousDoubleAuction)}
#: Key of `ClearingResult.info` with each participant's flexibility payment [currency, received].
FLEXIBILITY_PAYMENT = "flexibility_payment"


class FlexibilityOptions(MechanismOptions):
    """Settings of the DSO flexibility market."""

    energy_market: Literal["uniform", "continuous"] = "uniform"
    """The energy market that clears first."""
    energy_options: dict = {}
    """Options of the energy market (its own ``Options``)."""
    pricing: Literal["pay_as_bid", "uniform"] = "pay_as_bid"
    """pay_as_bid: each provider gets its ask; uniform: the highest accepted ask of its product."""
    reduce_import_ask_per_kwh: Annotated[float, Field(ge=0.0)] = 0.40
    """A consumer's ask to reduce its import, before markup [currency/kWh]."""
    max_markup: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    """Largest seeded markup on an offer's ask, as a share of it [-]."""
    seed: int = 0
    """Seed of the markups (with the round's number) [-]."""
    reserve_price_per_kwh: Annotated[float, Field(ge=0.0)] | None = None
    """Most the DSO pays per kWh of curtailed export; default the round's curtailment cost
    (feed-in plus a premium) [currency/kWh]."""


class FlexibilityModel:
    """The DSO's procurement LP for `n` participants and `max_cuts` cuts (persistent HiGHS)."""

    def __init__(self, n: int, max_cuts: int):
        self.n, self.max_cuts = n, max_cuts
        m = pyo.ConcreteModel(name="flexibility")
        m.N = pyo.RangeSet(0, n - 1)
        m.K = pyo.RangeSet(0, max_cuts - 1)
        m.cut_coef = pyo.Param(m.K, m.N, mutable=True, initialize=1.0)  # non-zero: every entry exists
        m.relief_needed = pyo.Param(m.K, mutable=True, initialize=INACTIVE_RHS)
        m.curtail_export_kwh = pyo.Var(m.N, domain=pyo.NonNegativeReals)
        m.reduce_import_kwh = pyo.Var(m.N, domain=pyo.NonNegativeReals)
        m.relief_gap_kwh = pyo.Var(m.K, domain=pyo.NonNegativeReals)
        m.network_cut = pyo.Constraint(m.K, rule=lambda m, k: sum(
            m.cut_coef[k, n] * (m.reduce_import_kwh[n] - m.curtail_export_kwh[n]) for n in m.N
        ) - m.relief_gap_kwh[k] <= m.relief_needed[k])
        m.procurement_cost = pyo.Objective(expr=sum(m.curtail_export_kwh[n] + m.reduce_import_kwh[n] for n in m.N)
                                           + GAP_COST * sum(m.relief_gap_kwh[k] for k in m.K), sense=pyo.minimize)
        self.model = m
        _, self.highs, self.col, self.row = attach_highs(
            m, ("curtail_export_kwh", "reduce_import_kwh", "relief_gap_kwh"), ("network_cut",))

    def solve(self, cuts: NetworkCuts, injection_kwh: np.ndarray, curtail_max: np.ndarray, reduce_max: np.ndarray,
              export_price: np.ndarray, import_price: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, float]:
        """Cheapest relief of `cuts` from the energy market's `injection_kwh`: (status,
        curtailed export, reduced import [kWh], unmet relief [kWh])."""
        h, col, row, n = self.highs, self.col, self.row, self.n
        if len(cuts) > self.max_cuts:
            return f"{len(cuts)} network cuts exceed the model's {self.max_cuts} slots", None, None, np.nan
        zeros = np.zeros(n)
        h.changeColsBounds(n, col["curtail_export_kwh"], zeros, np.asarray(curtail_max, float))
        h.changeColsBounds(n, col["reduce_import_kwh"], zeros, np.asarray(reduce_max, float))
        h.changeColsCost(n, col["curtail_export_kwh"], np.asarray(export_price, float))
        h.changeColsCost(n, col["reduce_import_kwh"], np.asarray(import_price, float))
        need = np.full(self.max_cuts, INACTIVE_RHS)
        coef = np.zeros((self.max_cuts, n))
        used = len(cuts)
        coef[:used] = cuts.coef
        need[:used] = cuts.rhs - cuts.coef @ injection_kwh
        for k in range(self.max_cuts):
            for j in range(n):
                c = coef[k, j]
                h.changeCoeff(int(row["network_cut"][k]), int(col["reduce_import_kwh"][j]), float(c))
                h.changeCoeff(int(row["network_cut"][k]), int(col["curtail_export_kwh"][j]), float(-c))
        h.changeRowsBounds(self.max_cuts, row["network_cut"], np.full(self.max_cuts, -highspy.kHighsInf), need)
        status = solve_highs(h, "flexibility")
        if status != "ok":
            return status, None, None, np.nan
        x = np.asarray(h.getSolution().col_value)
        curtail = np.clip(x[col["curtail_export_kwh"]], 0.0, curtail_max)
        reduce = np.clip(x[col["reduce_import_kwh"]], 0.0, reduce_max)
        return "ok", curtail, reduce, float(np.maximum(x[col["relief_gap_kwh"]], 0.0).sum())


class FlexibilityMarket(Mechanism):
    """An energy market plus the DSO's flexibility procurement (see the module docstring)."""

    name = "flexibility"
    Options = FlexibilityOptions

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        o = self.options
        self.energy = ENERGY_MARKETS[o.energy_market](self.participants, max_cuts, o.energy_options)
        self._model: FlexibilityModel | None = None

    @property
    def model(self) -> FlexibilityModel:
        if self._model is None:
            self._model = FlexibilityModel(len(self.ids), self.max_cuts)
        return self._model

    def offers(self, orders: OrderArrays, ctx: MarketContext) -> tuple[np.ndarray, np.ndarray]:
        """Each participant's ask to curtail export and to reduce import, after its seeded
        markup and capped at the DSO's reserve prices [currency/kWh]."""
        o, n = self.options, len(self.ids)
        rng = np.random.default_rng([o.seed, ctx.round_no or 0])
        markup = 1.0 + rng.uniform(0.0, o.max_markup, size=(2, n))
        reserve_export = ctx.curtail_cost if o.reserve_price_per_kwh is None else o.reserve_price_per_kwh
        export_ask = np.maximum(np.asarray(orders.ask_per_kwh, float), ctx.feed_in_price_per_kwh) * markup[0]
        import_ask = np.full(n, o.reduce_import_ask_per_kwh) * markup[1]
        return np.minimum(export_ask, reserve_export), np.minimum(import_ask, ctx.voll_per_kwh)

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        charges = charges if charges is not None else Charges.none(n)
        first = self.energy.clear(orders, ctx, None, charges)
        if not first.ok or cuts is None or not len(cuts):
            first.info = {**first.info, FLEXIBILITY_PAYMENT: np.zeros(n), "flexibility_cost": 0.0}
            return first
        export_price, import_price = self.offers(orders, ctx)
        status, curtail, reduce, gap = self.model.solve(
            cuts, first.injection_kwh, orders.supply_kwh, orders.demand_kwh, export_price, import_price)
        if status != "ok":
            return failed_result(status, n, charges)
        reduced = OrderArrays(np.maximum(orders.demand_kwh - reduce, 0.0), np.maximum(orders.supply_kwh - curtail, 0.0),
                              orders.bid_per_kwh, orders.ask_per_kwh)
        r = self.energy.clear(reduced, ctx, None, charges)
        if not r.ok:
            return r
        r = dataclasses.replace(r, curtailed_kwh=r.curtailed_kwh + curtail, shed_kwh=r.shed_kwh + reduce)
        payment = self.payments(curtail, reduce, export_price, import_price)
        r.info = {**first.info, **r.info, FLEXIBILITY_PAYMENT: payment, "flexibility_cost": float(payment.sum()),
                  "flex_curtailed_kwh": float(curtail.sum()), "flex_reduced_import_kwh": float(reduce.sum()),
                  "flex_unmet_kwh": gap}
        return r

    def payments(self, curtail: np.ndarray, reduce: np.ndarray, export_price: np.ndarray,
                 import_price: np.ndarray) -> np.ndarray:
        """What the DSO pays each provider [currency]: its capped ask per kWh (pay as bid),
        or the highest accepted capped ask of the product (uniform)."""
        if self.options.pricing == "uniform":
            export_price = np.full_like(export_price, export_price[curtail > QTY_TOL].max(initial=0.0))
            import_price = np.full_like(import_price, import_price[reduce > QTY_TOL].max(initial=0.0))
        return np.where(curtail > QTY_TOL, curtail, 0.0) * export_price + np.where(reduce > QTY_TOL, reduce, 0.0) * import_price


MECHANISMS = [FlexibilityMarket]
