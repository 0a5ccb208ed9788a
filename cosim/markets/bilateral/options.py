"""Settings of the multi-bilateral market and the constants of its two solution methods."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cosim.markets.base import (
    MechanismOptions,
)

#: Trades below this are solver noise and set to zero [kWh].
TRADE_ZERO_KWH = 1e-9
#: Caps above this count as unlimited [kWh].
UNLIMITED_KWH = 1e8
#: Over-relaxation of the ADMM's averaging step (Boyd et al. 2011, sec. 3.4.3); 1 is
#: plain ADMM (1.5-1.6 took more iterations on random books, as did Nesterov momentum) [-].
ADMM_RELAXATION = 1.0
#: Iterations between adaptations of rho, and the residual ratio that triggers one
#: (Boyd et al. 2011, sec. 3.4.1) [-].
ADMM_RHO_PERIOD = 10
ADMM_RHO_BALANCE = 10.0
#: rho is adapted only during the first iterations, so that the ADMM converges [-].
ADMM_RHO_ADAPT_UNTIL = 1000
#: rho stays within this factor of its initial value `admm_rho` [-].
ADMM_RHO_RANGE = 1e4


class BilateralOptions(MechanismOptions):
    """Settings of the multi-bilateral market (``market.options`` in a scenario)."""

    distance_rate_per_kwh_km: float = Field(0.01, ge=0.0)
    """Preference cost per kWh and km of line path between seller and buyer [currency/(kWh km)]."""
    green_premium_per_kwh: float = Field(0.01, ge=0.0)
    """What buyers give up per kWh bought from a seller without PV [currency/kWh]."""
    same_feeder_premium_per_kwh: float = Field(0.005, ge=0.0)
    """What buyers give up per kWh bought from another LV feeder [currency/kWh]."""
    preferred_pairs: tuple[tuple[str, str], ...] = ()
    """Pairs of participant ids that prefer to trade with each other (either direction)."""
    preferred_partner_premium_per_kwh: float = Field(0.0, ge=0.0)
    """What buyers give up per kWh bought outside their preferred pairs [currency/kWh]."""
    max_partners: int = Field(12, ge=1)
    """Partners each participant gets pair slots with (its cheapest; dense if >= n - 1) [-]."""
    solve: Literal["central", "admm"] = "central"
    """central: one LP (persistent HiGHS); admm: decentralised consensus ADMM."""
    admm_rho: float = Field(0.05, gt=0.0)
    """Initial ADMM penalty [currency/kWh^2]."""
    admm_adaptive_rho: bool = True
    """Balance primal and dual residuals by doubling/halving rho during the first 1,000 iterations (Boyd et al. 2011, 3.4.1)."""
    admm_tolerance_kwh: float = Field(1e-4, gt=0.0)
    """Stop when every pair's two proposals agree to within this (the primal residual) [kWh]."""
    admm_price_tolerance_per_kwh: float = Field(1e-4, gt=0.0)
    """Stop only when no price moves by more than this in an iteration (the dual residual) [currency/kWh]."""
    admm_max_iterations: int = Field(10000, ge=1)
    """Iteration limit of the ADMM; a round that reaches it without agreement is a failed clearing."""
    admm_warm_start: bool = True
    """Open each negotiation at the prices and averages the last one ended with (see AdmmNegotiation)."""
    admm_local_solver: Literal["vectorised", "pyomo"] = "vectorised"
    """How each prosumer's ADMM step is solved: closed form for all at once, or one Pyomo/HiGHS model each."""
    admm_audit: bool = True
    """Also clear centrally and report the welfare gap of the ADMM in info["admm_gap"]."""
