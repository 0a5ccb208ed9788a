"""What the flexible assets of a run are, fixed before it starts (`AssetSpec`): both the
run-time assets (`cosim.flex.assets`) and the day-ahead planner (`cosim.flex.dayahead`)
read it, so it lives apart from either."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosim.config.scenario import Scenario
from cosim.flex.capacity_sharing import AuctionDays
from cosim.flex.sessions import SessionTable
from cosim.physical.fleet import Fleet


@dataclass(frozen=True)
class AssetSpec:
    """Everything about a run's flexible assets that does not change while it runs."""

    scenario: Scenario
    fleet: Fleet
    battery_pos: np.ndarray
    """Fleet positions of prosumers with a battery."""
    evs: SessionTable | None
    shiftables: SessionTable | None
    n_ext: int
    """Rounds covered: the run and one day beyond."""
    forecast_kw: np.ndarray | None = None
    """Forecast net load before flexible assets [rounds x prosumers] (scheduled strategies)."""
    transformer_limit_kw: float | None = None
    auction: AuctionDays | None = None
    """The battery auction's days (``storage.battery_auction.enabled``)."""


def transformer_limit_kw(net, scenario: Scenario) -> float | None:
    """Community import/export limit for schedules: ``storage.transformer_limit_kw``; or,
    islanded, the grid-forming unit's kW; or the MV/LV transformers' rating times
    ``feedback.max_loading_pct`` [kW at unity power factor]."""
    if scenario.storage.transformer_limit_kw is not None:
        return float(scenario.storage.transformer_limit_kw)
    if scenario.mode == "islanded":
        return float(scenario.islanded.p_kw)
    if net is None or not len(net.trafo):
        return None
    return float(net.trafo.sn_mva.sum()) * 1000.0 * scenario.feedback.max_loading_pct / 100.0
