"""Checks of a valid scenario against what it refers to: the network it names (bus
indices), and the files it names (they must exist and parse). Run once at load time,
before anything runs or is written; each problem is one line of the usual format
(field: expected ..., found ...), and all of them are reported together."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cosim.config.errors import InputError
from cosim.config.network_file import NetworkSpec

if TYPE_CHECKING:  # the scenario module loads scenarios through this one
    from cosim.config.scenario import Scenario


def check_against_network(scenario: Scenario, spec: NetworkSpec, path: Path) -> None:
    """Raise `InputError` naming the scenario file if a bus it names is not in the network
    `spec` builds, or if a file it names does not parse (the file's own `InputError`).

    Parameters
    ----------
    scenario : the validated scenario
    spec : its validated network file
    path : the scenario file (files it names are relative to it)
    """
    from cosim.physical.networks import build_net

    bus = scenario.islanded.grid_forming_bus if scenario.mode == "islanded" else None
    csv = scenario.storage.ev.sessions_csv
    declared = [d.bus for d in scenario.prosumers.declared]
    if bus is None and not csv and not declared:  # nothing named to check: do not build the net for nothing
        return
    net = build_net(spec)
    households = set(int(b) for b in net.load.bus)
    missing = [b for b in declared if b not in households]
    if missing:
        raise InputError(path, [
            f"prosumers.declared: expected buses with a household (a load) of network {scenario.network!r} "
            f"{sorted(households)}, found {missing}"])
    if bus is not None:
        buses = net.bus.index[net.bus.in_service.astype(bool)]
        if bus not in buses:
            raise InputError(path, [
                f"islanded.grid_forming_bus: expected a bus of network {scenario.network!r} (indices "
                f"{int(buses.min())}..{int(buses.max())}), found {bus}"])
    if csv:
        _check_sessions(scenario, spec, net, Path(csv) if Path(csv).is_absolute() else path.parent / csv)


def _check_sessions(scenario: Scenario, spec: NetworkSpec, net, csv: Path) -> None:
    """Read the EV sessions file as a run would (its problems name the CSV file)."""
    from cosim.flex.sessions import read_ev_sessions
    from cosim.physical.fleet import build_fleet

    fleet = build_fleet(net, spec, scenario)
    per_day = int(round(24.0 * 3600.0 / scenario.resolution.total_seconds()))
    read_ev_sessions(csv, scenario, fleet, scenario.n_rounds + per_day + 1)
