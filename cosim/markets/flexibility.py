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
                 + price_increase[n] increase[n] + GAP_COST sum_k gap[k]
       s.t.      sum_n coef[k, n] (reduce[n] - curtail[n] - increase[n]) - gap[k]
                     <= rhs[k] - coef[k] . inj0
                 0 <= curtail[n] <= supply[n],  0 <= reduce[n] <= demand[n],
                 0 <= increase[n] <= headroom[n]

   where ``inj0`` is the energy market's injection. Offers: every seller offers to curtail
   its export at ``max(ask, feed_in) (1 + markup)`` (what the kWh would have earned), every
   buyer to reduce its import at ``reduce_import_ask_per_kwh (1 + markup)``, and every
   participant whose batteries or EVs have headroom (``ctx.charge_headroom_kwh``: what
   their power limits and state of charge leave beside this round's dispatch,
   `cosim.flex.assets.FlexibleAssets.charge_headroom_kwh`) to draw up to that much more at
   ``increase_import_ask_per_kwh (1 + markup)``; markups are seeded draws in
   ``[0, max_markup]`` (strategic offers). The DSO pays no offer more than its reserve
   price, the cost of its own alternative: ``reserve_price_per_kwh`` (default the round's
   curtailment cost, feed-in plus a premium: what curtailing by feedback is valued at) for
   export curtailment and increased import (both lower the injection), the value of lost
   load for import reduction. An offer above it is accepted
   at the reserve price -- a provider with no competitor at a congested bus cannot charge
   more than the DSO's alternative. ``gap`` is relief the offers cannot give (the feedback
   goes on, and forced curtailment takes the rest).
3. The energy market clears again on the orders less the procured changes, so every
   injection is the energy market's less the curtailment and the increased import plus
   the import reduction, and the cuts hold. Curtailed export is in ``curtailed_kwh``;
   reduced import in ``shed_kwh`` (load not served, now paid for). Increased import
   first takes the provider's own export (a seller sells less, its battery stores it),
   then adds to its demand (bid: its own bid, or the retail tariff if it had none); the
   energy is the provider's, bought in the energy market like any other, and
   ``info["asset_charge_kwh"]`` tells the round to charge its batteries and EVs with it.

Pricing (``pricing``): ``pay_as_bid`` pays each provider its (capped) ask;
``uniform`` pays every accepted provider of a product (export curtailment, import
reduction, import increase) the highest accepted capped ask of that product.

Settlement: ``info["flexibility_payment"]`` holds each participant's payment this round
[currency, received]; settlement takes it off the provider's bill and puts it on the
DSO's (column ``flexibility_payments``), so the DSO's cost is in its bill.

Not modelled: nodal uniform prices (one price per product for the whole feeder), and
discharging batteries as an offer (the DSO here relieves export limits, where more
injection does not help, and import limits by import reduction).

Quantities per round [kWh], prices [currency/kWh].
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, NamedTuple

import highspy
import numpy as np
import pyomo.environ as pyo
from pydantic import Field

from cosim.markets.base import (
    ASSET_CHARGE,
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


class Offers(NamedTuple):
    """One array per product, aligned with the participants: quantities [kWh] or prices
    [currency/kWh] of the offers to curtail export, reduce import and increase import."""

    curtail_export: np.ndarray
    reduce_import: np.ndarray
    increase_import: np.ndarray


#: The procurement LP's variable of each product, in the order of `Offers`.
OFFER_VARIABLES = ("curtail_export_kwh", "reduce_import_kwh", "increase_import_kwh")


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
    increase_import_ask_per_kwh: Annotated[float, Field(ge=0.0)] = 0.02
    """A battery or EV owner's ask to draw more than its dispatch (it keeps and pays for
    the energy, so the ask covers losses and wear, not the energy), before markup
    [currency/kWh]."""
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
        m.increase_import_kwh = pyo.Var(m.N, domain=pyo.NonNegativeReals)
        m.relief_gap_kwh = pyo.Var(m.K, domain=pyo.NonNegativeReals)
        m.network_cut = pyo.Constraint(m.K, rule=lambda m, k: sum(
            m.cut_coef[k, n] * (m.reduce_import_kwh[n] - m.curtail_export_kwh[n] - m.increase_import_kwh[n])
            for n in m.N
        ) - m.relief_gap_kwh[k] <= m.relief_needed[k])
        m.procurement_cost = pyo.Objective(expr=sum(m.curtail_export_kwh[n] + m.reduce_import_kwh[n]
                                                    + m.increase_import_kwh[n] for n in m.N)
                                           + GAP_COST * sum(m.relief_gap_kwh[k] for k in m.K), sense=pyo.minimize)
        self.model = m
        _, self.highs, self.col, self.row = attach_highs(
            m, ("curtail_export_kwh", "reduce_import_kwh", "increase_import_kwh", "relief_gap_kwh"), ("network_cut",))

    def solve(self, cuts: NetworkCuts, injection_kwh: np.ndarray, limits_kwh: Offers,
              prices: Offers) -> tuple[str, Offers | None, float]:
        """Cheapest relief of `cuts` from the energy market's `injection_kwh`, within the
        offered quantities `limits_kwh` [kWh] at `prices` [currency/kWh]: (status, the
        quantities bought [kWh], unmet relief [kWh])."""
        h, col, row, n = self.highs, self.col, self.row, self.n
        if len(cuts) > self.max_cuts:
            return f"{len(cuts)} network cuts exceed the model's {self.max_cuts} slots", None, np.nan
        zeros = np.zeros(n)
        for name, most, price in zip(OFFER_VARIABLES, limits_kwh, prices, strict=True):
            h.changeColsBounds(n, col[name], zeros, np.asarray(most, float))
            h.changeColsCost(n, col[name], np.asarray(price, float))
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
                h.changeCoeff(int(row["network_cut"][k]), int(col["increase_import_kwh"][j]), float(-c))
        h.changeRowsBounds(self.max_cuts, row["network_cut"], np.full(self.max_cuts, -highspy.kHighsInf), need)
        status = solve_highs(h, "flexibility")
        if status != "ok":
            return status, None, np.nan
        x = np.asarray(h.getSolution().col_value)
        bought = Offers(*(np.clip(x[col[name]], 0.0, most) for name, most in zip(OFFER_VARIABLES, limits_kwh,
                                                                                 strict=True)))
        return "ok", bought, float(np.maximum(x[col["relief_gap_kwh"]], 0.0).sum())


class FlexibilityMarket(Mechanism):
    """An energy market plus the DSO's flexibility procurement (see the module docstring)."""

    name = "flexibility"
    Options = FlexibilityOptions
    uses_charge_headroom = True

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

    def offers(self, orders: OrderArrays, ctx: MarketContext) -> Offers:
        """Each participant's ask to curtail export, to reduce import and to increase
        import, after its seeded markup and capped at the DSO's reserve prices
        [currency/kWh]."""
        o, n = self.options, len(self.ids)
        rng = np.random.default_rng([o.seed, ctx.round_no or 0])
        markup = 1.0 + rng.uniform(0.0, o.max_markup, size=(2, n))
        reserve_export = ctx.curtail_cost if o.reserve_price_per_kwh is None else o.reserve_price_per_kwh
        export_ask = np.maximum(np.asarray(orders.ask_per_kwh, float), ctx.feed_in_price_per_kwh) * markup[0]
        import_ask = np.full(n, o.reduce_import_ask_per_kwh) * markup[1]
        # a third stream, so that the two above stay what they were before this product
        increase_ask = np.full(n, o.increase_import_ask_per_kwh) * (
            1.0 + np.random.default_rng([o.seed, ctx.round_no or 0, 1]).uniform(0.0, o.max_markup, size=n))
        return Offers(np.minimum(export_ask, reserve_export), np.minimum(import_ask, ctx.voll_per_kwh),
                      np.minimum(increase_ask, reserve_export))

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        charges = charges if charges is not None else Charges.none(n)
        first = self.energy.clear(orders, ctx, None, charges)
        if not first.ok or cuts is None or not len(cuts):
            first.info = {**first.info, FLEXIBILITY_PAYMENT: np.zeros(n), "flexibility_cost": 0.0}
            return first
        prices = self.offers(orders, ctx)
        headroom = np.zeros(n) if ctx.charge_headroom_kwh is None else np.maximum(ctx.charge_headroom_kwh, 0.0)
        status, bought, gap = self.model.solve(cuts, first.injection_kwh,
                                               Offers(orders.supply_kwh, orders.demand_kwh, headroom), prices)
        if status != "ok":
            return failed_result(status, n, charges)
        curtail, reduce, increase = bought
        # increased import takes the provider's own export first, then adds to its demand
        from_export = np.minimum(increase, np.maximum(orders.supply_kwh - curtail, 0.0))
        more_demand = increase - from_export
        reduced = OrderArrays(np.maximum(orders.demand_kwh - reduce, 0.0) + more_demand,
                              np.maximum(orders.supply_kwh - curtail - from_export, 0.0),
                              np.where(orders.demand_kwh > QTY_TOL, orders.bid_per_kwh, ctx.retail_price_per_kwh),
                              orders.ask_per_kwh)
        r = self.energy.clear(reduced, ctx, None, charges)
        if not r.ok:
            return r
        r = dataclasses.replace(r, curtailed_kwh=r.curtailed_kwh + curtail, shed_kwh=r.shed_kwh + reduce)
        payment = self.payments(bought, prices)
        r.info = {**first.info, **r.info, FLEXIBILITY_PAYMENT: payment, "flexibility_cost": float(payment.sum()),
                  "flex_curtailed_kwh": float(curtail.sum()), "flex_reduced_import_kwh": float(reduce.sum()),
                  "flex_increased_import_kwh": float(increase.sum()), "flex_unmet_kwh": gap}
        if increase.any():
            r.info[ASSET_CHARGE] = increase
        return r

    def payments(self, bought: Offers, prices: Offers) -> np.ndarray:
        """What the DSO pays each provider [currency]: its capped ask per kWh (pay as bid),
        or the highest accepted capped ask of the product (uniform)."""
        total = np.zeros(len(self.ids))
        for qty, price in zip(bought, prices, strict=True):
            accepted = qty > QTY_TOL
            if self.options.pricing == "uniform":
                price = np.full_like(price, price[accepted].max(initial=0.0))
            total += np.where(accepted, qty, 0.0) * price
        return total


MECHANISMS = [FlexibilityMarket]
