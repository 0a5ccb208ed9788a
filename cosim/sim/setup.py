"""What a run is made of: its variants, and everything built once and shared by them
(network, fleet, power flow, participants, flexible assets)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.config.scenario import Scenario
from cosim.flex.assets import FlexibleAssets, build_assets
from cosim.markets import Participants
from cosim.physical.fleet import Fleet, build_fleet
from cosim.physical.grid.powerflow import PowerFlow
from cosim.physical.grid.threephase import phase_split
from cosim.physical.grid.threephase_flow import ThreePhasePowerFlow
from cosim.physical.networks import (
    build_net,
    feeder_of_buses,
    find_network_file,
    grid_tables,
    line_distance_km,
    load_network_spec,
    lv_busbar,
    set_islanded,
)

#: The outside party of each mode.
OUTSIDE = {"grid-connected": "grid", "islanded": "grid_forming"}
#: Buses below this nominal voltage are the LV network [kV].
LV_MAX_KV = 1.0


@dataclass(frozen=True)
class Variant:
    name: str
    mechanism: str
    feedback: bool
    folder: str
    """Subfolder of the run directory ('' for the main results)."""


def variants_for(scenario: Scenario) -> list[Variant]:
    """The variants the scenario asks for (`Scenario.variants`), in the order they run."""
    every = [
        Variant("market", scenario.market.mechanism, scenario.feedback.enabled, ""),
        Variant("market_no_feedback", scenario.market.mechanism, False, "no_feedback"),
        Variant("baseline", "none", scenario.feedback.enabled, "baseline"),
        Variant("baseline_no_feedback", "none", False, "baseline_no_feedback"),
    ]
    return [v for v in every if v.name in scenario.variants]


@dataclass
class Setup:
    """Everything built once per run and shared by the variants."""

    scenario: Scenario
    net: object
    fleet: Fleet
    pf: PowerFlow
    participant_pos: np.ndarray
    """Position of each prosumer's bus in `pf.buses`."""
    grid_buses: pd.DataFrame
    grid_branches: pd.DataFrame
    participants: Participants
    gfu_bus: int | None = None
    busbar_pos: int = 0
    """Position of the LV busbar (the transformer's LV side) in `pf.buses`."""
    lv: np.ndarray | None = None
    """True for the LV buses of `pf.buses` (below 1 kV): the buses whose voltages
    rounds.parquet and the summary report (not the MV slack bus)."""
    assets: FlexibleAssets | None = None
    """Batteries, EVs, shiftable loads and their day-ahead planner; each variant runs a
    `FlexibleAssets.fresh` copy (the planner and its schedules are shared)."""
    pf3: ThreePhasePowerFlow | None = None
    """The prepared three-phase power flow (``physics: three-phase``), buses as `pf.buses`."""
    splits: dict[str, np.ndarray] | None = None
    """Three-phase: phase shares [prosumers x 3] of each prosumer's ``load``, ``pv``,
    ``battery`` and ``ev`` (`cosim.physical.grid.threephase.phase_split`; a missing system
    on its load's phase) and the raw connections ``pv_phase`` and ``load_phase``."""

    def power_flow_state(self) -> tuple:
        """The warm starts of the power flows (the balanced one's voltages, the three-phase
        one's sequence voltages or None): every variant starts from the same ones."""
        return self.pf.get_state(), self.pf3.get_state() if self.pf3 is not None else None

    def set_power_flow_state(self, state: tuple) -> None:
        """Restore `power_flow_state`."""
        self.pf.set_state(state[0])
        if self.pf3 is not None and state[1] is not None:
            self.pf3.set_state(state[1])


def prepare(scenario: Scenario, scenario_path: str | Path | None = None) -> Setup:
    spec = load_network_spec(find_network_file(scenario.network, scenario_path))
    net = build_net(spec)
    fleet = build_fleet(net, spec, scenario)
    assets = build_assets(scenario, fleet, net, spec, scenario_path)
    bus = fleet.table.bus.to_numpy()
    participants = Participants(
        fleet.ids, bus, feeder_of_buses(net).loc[bus].to_numpy(), fleet.table.pv_kwp.to_numpy() > 0,
        line_distance_km(net, bus), fleet.table.battery_kwh.to_numpy(float), fleet.table.battery_kw.to_numpy(float),
    )
    gfu_bus = None
    if scenario.mode == "islanded":
        gfu_bus = scenario.islanded.grid_forming_bus
        if gfu_bus is None:
            gfu_bus = lv_busbar(net)
        set_islanded(net, gfu_bus)
    grid_buses, grid_branches = grid_tables(net)
    pf = PowerFlow(net)
    pos = pd.Series(np.arange(len(pf.buses)), index=pf.buses)
    participant_pos = pos.loc[fleet.table.bus].to_numpy()
    lv = net.bus.vn_kv.loc[pf.buses].to_numpy(float) < LV_MAX_KV
    pf3 = splits = None
    if scenario.physics == "three-phase":
        pf3 = ThreePhasePowerFlow(net)
        if not np.array_equal(pf3.buses, pf.buses):
            raise ValueError("the three-phase and balanced power flows disagree on the buses")
        splits = phase_splits(fleet.table)
    return Setup(scenario=scenario, net=net, fleet=fleet, pf=pf, participant_pos=participant_pos,
                 grid_buses=grid_buses, grid_branches=grid_branches, participants=participants, gfu_bus=gfu_bus,
                 busbar_pos=int(pos.loc[lv_busbar(net)]), assets=assets, lv=lv, pf3=pf3, splits=splits)


def phase_splits(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Phase shares [prosumers x 3] of each prosumer's systems (`Setup.splits`) from the
    connections in the fleet table (`cosim.physical.phases.PHASE_COLUMNS`)."""
    load = table.load_phase.to_numpy(object)

    def shares(column: str) -> np.ndarray:
        conn = np.where(pd.isna(table[column]).to_numpy(), load, table[column].to_numpy(object))
        return np.array([phase_split(c) for c in conn]).reshape(-1, 3)

    out = {name: shares(f"{name}_phase") for name in ("load", "pv", "battery", "ev")}
    out["pv_phase"] = np.where(pd.isna(table.pv_phase).to_numpy(), None, table.pv_phase.to_numpy(object))
    out["load_phase"] = load
    return out
