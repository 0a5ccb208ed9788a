"""The multi-bilateral mechanism: pair slots built once, each round cleared centrally or by
ADMM, and the result with one trade row per traded pair."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from cosim.markets.base import (
    TRADE_COLUMNS,
    Charges,
    ClearingResult,
    MarketContext,
    Mechanism,
    NetworkCuts,
    OrderArrays,
    failed_result,
    outside_trades,
)
from cosim.markets.bilateral.admm import AdmmNegotiation
from cosim.markets.bilateral.central import CentralModel, RoundData
from cosim.markets.bilateral.options import TRADE_ZERO_KWH, BilateralOptions
from cosim.markets.bilateral.partners import partner_slots, preference_costs, preferred_matrix
from cosim.markets.pool import OUTSIDE_EPSILON


# -- the mechanism ----------------------------------------------------------------------
class MultiBilateral(Mechanism):
    """Multi-bilateral P2P market with product differentiation (Sorin, Bobo and Pinson 2019).

    See the module docstring for the formulation, prices and the two solution methods.
    """

    name = "bilateral"
    Options = BilateralOptions

    def __init__(self, participants, max_cuts: int = 24, options=None):
        super().__init__(participants, max_cuts, options)
        opts: BilateralOptions = self.options
        n = len(self.ids)
        cost = preference_costs(self.participants, opts)
        preferred = preferred_matrix(self.ids, opts.preferred_pairs) if opts.preferred_pairs else None
        self.slot_seller, self.slot_buyer = partner_slots(cost, opts.max_partners, preferred)
        self.slot_cost = cost[self.slot_seller, self.slot_buyer]
        """Preference cost c_s of each slot [currency/kWh]."""
        need_central = opts.solve == "central" or opts.admm_audit
        self.central = CentralModel(n, self.slot_seller, self.slot_buyer, max_cuts) if need_central else None
        self.admm = AdmmNegotiation(n, self.slot_seller, self.slot_buyer, opts) if opts.solve == "admm" else None

    @property
    def n_slots(self) -> int:
        """Number of pair (trade) variables."""
        return len(self.slot_seller)

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        n = len(self.ids)
        cuts = cuts if cuts is not None else NetworkCuts.empty(n)
        charges = charges if charges is not None else Charges.none(n)
        if len(cuts) > self.max_cuts:
            return failed_result(f"{len(cuts)} network cuts exceed the model's {self.max_cuts} slots", n, charges)
        d = RoundData(self, orders, ctx, cuts, charges)
        if n == 0:  # nobody to clear
            empty = {name: np.zeros(0) for name in ("imported_kwh", "exported_kwh", "shed_kwh", "curtailed_kwh")}
            return self._result(d, {"trade_kwh": np.zeros(0), **empty}, np.zeros(0), 0.0, {"solve": "none"})
        if self.options.solve == "admm":
            return self._clear_admm(d)
        return self._clear_central(d)

    # -- central ------------------------------------------------------------------------
    def _solve_central(self, d: RoundData) -> tuple[str, dict, np.ndarray, float]:
        self.central.update(d, d.value - d.cost)
        status, x, duals, welfare = self.central.solve()
        if status != "ok":
            return status, x, np.zeros(0), welfare
        # the reciprocity dual of each pair, read off its seller's balance
        price = d.cost + self.central.seller_rent(duals)[self.slot_seller]
        return status, x, price, welfare

    def _clear_central(self, d: RoundData) -> ClearingResult:
        t0 = time.perf_counter()
        status, x, price, welfare = self._solve_central(d)
        if status != "ok":
            return failed_result(status, len(self.ids), d.charges)
        info = {"solve": "central", "clear_ms": 1e3 * (time.perf_counter() - t0)}
        return self._result(d, x, price, welfare, info)

    # -- decentralised ------------------------------------------------------------------
    def _clear_admm(self, d: RoundData) -> ClearingResult:
        t0 = time.perf_counter()
        out = self.admm.negotiate(d)
        admm_ms = 1e3 * (time.perf_counter() - t0)
        welfare = self.welfare(d, out)
        info = {
            "solve": "admm",
            "admm_iterations": out["iterations"],
            "admm_converged": out["converged"],
            "admm_residual_kwh": out["residual_kwh"],
            "admm_rho": out["rho"],
            "admm_ms": admm_ms,
            "admm_gap": float("nan"),
        }
        if self.central is not None:  # the audit: how far the negotiation is from the optimum
            status, _, _, best = self._solve_central(d)
            if status == "ok":
                info["admm_gap"] = best - welfare
                info["admm_gap_rel"] = (best - welfare) / max(abs(best), 1e-9)
                info["central_welfare"] = best
        if not out["converged"]:  # no agreement: recorded as a failed clearing, like a solver failure
            result = failed_result(
                f"admm: no agreement within {out['iterations']} iterations (residual "
                f"{out['residual_kwh']:.2e} kWh)", len(self.ids), d.charges,
            )
            result.info = info
            return result
        return self._result(d, out, out["price"], welfare, info)

    def welfare(self, d: RoundData, x: dict) -> float:
        """The clearing objective of an allocation [currency]."""
        ctx = d.ctx
        return float(
            np.where(d.active, d.value - d.cost, 0.0) @ x["trade_kwh"]
            - ctx.voll_per_kwh * x["shed_kwh"].sum() - ctx.curtail_cost * x["curtailed_kwh"].sum()
            - OUTSIDE_EPSILON * (x["imported_kwh"].sum() + x["exported_kwh"].sum())
        )

    # -- result -------------------------------------------------------------------------
    def _result(self, d: RoundData, x: dict, price: np.ndarray, welfare: float, info: dict) -> ClearingResult:
        n = len(self.ids)
        t = np.where(d.active, x["trade_kwh"], 0.0)
        t[t < TRADE_ZERO_KWH] = 0.0
        # prices: the pair dual, kept inside the trade's individually rational interval
        lo, hi = d.cost, d.value
        ir = np.where(lo <= hi, np.clip(price, lo, hi), 0.5 * (lo + hi))
        price = np.where(np.isfinite(price), ir, 0.5 * (lo + hi))
        seller, buyer = self.slot_seller, self.slot_buyer
        bought = np.bincount(buyer, weights=t, minlength=n)
        sold = np.bincount(seller, weights=t, minlength=n)
        paid = np.bincount(buyer, weights=t * price, minlength=n)
        received = np.bincount(seller, weights=t * price, minlength=n)
        with np.errstate(divide="ignore", invalid="ignore"):
            buy_price = np.where(bought > 0, paid / bought, np.nan)
            sell_price = np.where(sold > 0, received / sold, np.nan)
        traded = np.flatnonzero(t > 0)
        info["p2p_trades"] = len(traded)
        info["mean_price_per_kwh"] = float(paid.sum() / bought.sum()) if bought.sum() > 0 else float("nan")
        info["slots_active"] = int(d.active.sum())
        result = ClearingResult(
            status="ok",
            bought_kwh=bought,
            sold_kwh=sold,
            import_kwh=x["imported_kwh"],
            export_kwh=x["exported_kwh"],
            curtailed_kwh=x["curtailed_kwh"],
            shed_kwh=x["shed_kwh"],
            buy_price_per_kwh=buy_price,
            sell_price_per_kwh=sell_price,
            charges=d.charges,
            price_per_kwh=float("nan"),
            welfare=welfare,
            info=info,
        )
        ids = np.asarray(self.ids, dtype=object)
        p2p = pd.DataFrame({
            "seller": ids[seller[traded]],
            "buyer": ids[buyer[traded]],
            "energy_kwh": t[traded],
            "price_per_kwh": price[traded],
            "seller_price_per_kwh": price[traded],
            "network_charge_per_kwh": d.charges.sell[seller[traded]] + d.charges.buy[buyer[traded]],
        }, columns=TRADE_COLUMNS)
        outside = pd.DataFrame(outside_trades(result, self.ids, d.ctx), columns=TRADE_COLUMNS)
        parts = [table for table in (p2p, outside) if len(table)]
        result.trades = pd.concat(parts, ignore_index=True) if parts else p2p
        return result



MECHANISMS = [MultiBilateral]
