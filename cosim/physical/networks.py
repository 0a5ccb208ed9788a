"""The pandapower nets of network files (`cosim.config.network_file`), and what cosim reads off them.

A network file in `networks/` names where the pandapower net comes from and what to
change about it. Every load of the resulting net is a prosumer. Nets are cached as
pandapower JSON under the cache folder, so SimBench's CSVs are parsed only once; nothing
is ever downloaded (SimBench ships its grids and profiles inside the package).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import pandapower as pp
import pandas as pd

from cosim.config.network_file import (  # noqa: F401  (the network file's schema, re-exported)
    HOUSEHOLD_Q_PER_P,
    REPO_NETWORKS,
    InlineFeeder,
    NetworkSpec,
    ProfileChoice,
    find_network_file,
    load_network_spec,
)


def cache_dir() -> Path:
    """Folder for parsed SimBench nets and profiles ($COSIM_CACHE or ~/.cache/cosim)."""
    path = Path(os.environ.get("COSIM_CACHE", Path.home() / ".cache" / "cosim"))
    path.mkdir(parents=True, exist_ok=True)
    return path


#: SimBench nets parsed in this process, by code: a study's worker runs many scenarios on
#: one net, and a copy (~0.07 s for rural3) costs a fraction of parsing the JSON (~1.7 s).
_PARSED: dict[str, pp.pandapowerNet] = {}


def _simbench_net(code: str) -> pp.pandapowerNet:
    """A SimBench net, parsed once and cached as pandapower JSON (profiles excluded); a
    fresh copy of the one this process parsed first."""
    if code not in _PARSED:
        cached = cache_dir() / f"{code}.json"
        if not cached.exists():
            import simbench as sb

            net = sb.get_simbench_net(code)
            net.profiles = {}
            pp.to_json(net, str(cached))
        _PARSED[code] = pp.from_json(str(cached))
    return copy.deepcopy(_PARSED[code])


def _inline_net(spec: InlineFeeder) -> pp.pandapowerNet:
    net = pp.create_empty_network(name="inline feeder")
    hv = pp.create_bus(net, 20.0, name="MV")
    lv = pp.create_bus(net, 0.4, name="LV busbar")
    pp.create_ext_grid(net, hv, vm_pu=1.0, name="MV grid")
    pp.create_transformer(net, hv, lv, std_type=spec.trafo_std_type, name="trafo")
    for f, sections in enumerate(spec.feeders_km):
        prev = lv
        for s, length in enumerate(sections):
            bus = pp.create_bus(net, 0.4, name=f"F{f + 1} bus {s + 1}")
            pp.create_line(net, prev, bus, length, spec.line_std_type, name=f"F{f + 1} line {s + 1}")
            pp.create_load(net, bus, p_mw=spec.load_p_kw / 1000, q_mvar=spec.load_q_kvar / 1000,
                           name=f"F{f + 1} load {s + 1}")
            prev = bus
    return net


def build_net(spec: NetworkSpec) -> pp.pandapowerNet:
    """The pandapower net a network file describes, before any scenario settings."""
    if spec.source == "simbench":
        net = _simbench_net(spec.code)
    elif spec.source == "pandapower":
        import pandapower.networks as pn

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = getattr(pn, spec.code)()
    else:
        net = _inline_net(spec.inline)
    if "asymmetric_load" in net and len(net.asymmetric_load):
        from cosim.physical.ieee_eu_lv import load_phases

        asym = net.asymmetric_load
        published = load_phases(net)
        for i, row in asym.iterrows():
            idx = pp.create_load(net, int(row.bus), p_mw=spec.balanced_household_p_kw / 1000.0,
                                 q_mvar=spec.balanced_household_q_kvar / 1000.0, name=str(row["name"]))
            net.load.loc[idx, "phase"] = published[i]  # the published phase, kept for the fleet
        net.asymmetric_load.drop(asym.index, inplace=True)
    if "asymmetric_sgen" in net and len(net.asymmetric_sgen):
        net.asymmetric_sgen.drop(net.asymmetric_sgen.index, inplace=True)
    if not spec.keep_sgens and len(net.sgen):
        net.sgen.drop(net.sgen.index, inplace=True)
    if spec.ext_grid_vm_pu is not None:
        net.ext_grid["vm_pu"] = spec.ext_grid_vm_pu
    # loads and sgens are injections the loop sets; keep no stale values or storage
    for table in ("storage", "gen"):
        if len(net[table]):
            net[table].drop(net[table].index, inplace=True)
    net.load = net.load[net.load.in_service.astype(bool)]
    if "profile" not in net.load.columns:
        net.load["profile"] = None
    for col in ("min_p_mw", "max_p_mw", "min_q_mvar", "max_q_mvar"):
        for table in ("load", "sgen"):
            if col in net[table].columns:
                net[table][col] = net[table][col].astype(float)
    return net


def set_islanded(net: pp.pandapowerNet, grid_forming_bus: int) -> None:
    """Open the transformers and make the grid-forming unit at `grid_forming_bus` the slack."""
    net.trafo["in_service"] = False
    net.ext_grid.drop(net.ext_grid.index, inplace=True)
    pp.create_ext_grid(net, grid_forming_bus, vm_pu=1.0, name="grid-forming unit")


def lv_busbar(net: pp.pandapowerNet) -> int:
    """The LV bus of the (first) MV/LV transformer."""
    return int(net.trafo.lv_bus.iloc[0])


def schematic_coordinates(net: pp.pandapowerNet) -> pd.DataFrame:
    """Feeder schematic: x = distance from the transformer along the lines [km], y = leaf
    order, spaced so that the drawing is about as tall as the feeder is long.

    Works for any net whose lines form a tree or a lightly meshed grid (breadth-first
    spanning tree from the external grid's bus).
    """
    import networkx as nx
    import pandapower.topology as top

    graph = top.create_nxgraph(net, include_out_of_service=True, respect_switches=False)
    root = int(net.ext_grid.bus.iloc[0])
    tree = nx.bfs_tree(graph, root)
    dist = {root: 0.0}
    for u, v in nx.bfs_edges(graph, root):
        data = graph.get_edge_data(u, v)
        lengths = [d.get("weight", 0.0) for d in data.values()] if data else [0.0]
        dist[v] = dist[u] + float(min(lengths))
    y: dict[int, float] = {}
    counter = [0]

    def place(node: int) -> float:
        children = list(tree.successors(node))
        if not children:
            y[node] = float(counter[0])
            counter[0] += 1
        else:
            y[node] = float(np.mean([place(c) for c in children]))
        return y[node]

    import sys

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    place(root)
    coords = pd.DataFrame(index=net.bus.index)
    coords["x"] = [dist.get(b, np.nan) for b in net.bus.index]
    spacing = max(max(dist.values()), 1e-3) / max(counter[0] - 1, 1)
    coords["y"] = [y.get(b, np.nan) * spacing for b in net.bus.index]
    return coords


def grid_tables(net: pp.pandapowerNet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bus and branch tables the report draws the network map from; the transformers'
    rows also carry their rating ``sn_kva`` [kVA], no-load loss ``pfe_kw`` [kW] and
    short-circuit resistance ``vkr_percent`` [%] (NaN for lines)."""
    coords = schematic_coordinates(net)
    buses = pd.DataFrame(
        {
            "bus": net.bus.index.astype(int),
            "name": net.bus.name.astype(str).values,
            "x": coords.x.values,
            "y": coords.y.values,
            "vn_kv": net.bus.vn_kv.astype(float).values,
        }
    )
    lines = pd.DataFrame(
        {
            "branch": net.line.index.astype(int),
            "kind": "line",
            "from_bus": net.line.from_bus.astype(int).values,
            "to_bus": net.line.to_bus.astype(int).values,
            "name": net.line.name.astype(str).values,
        }
    )
    trafos = pd.DataFrame(
        {
            "branch": net.trafo.index.astype(int),
            "kind": "trafo",
            "from_bus": net.trafo.hv_bus.astype(int).values,
            "to_bus": net.trafo.lv_bus.astype(int).values,
            "name": net.trafo.name.astype(str).values,
            # rating and losses, for the transformer's thermal model (cosim.study.metrics)
            "sn_kva": net.trafo.sn_mva.astype(float).values * 1000.0,
            "pfe_kw": net.trafo.pfe_kw.astype(float).values,
            "vkr_percent": net.trafo.vkr_percent.astype(float).values,
        }
    )
    return buses, pd.concat([lines, trafos], ignore_index=True)


def _line_graph(net: pp.pandapowerNet):
    import pandapower.topology as top

    return top.create_nxgraph(net, include_out_of_service=True, respect_switches=False, calc_branch_impedances=False)


def feeder_of_buses(net: pp.pandapowerNet) -> pd.Series:
    """For each bus, the index of the feeder it is on: the subtree hanging off each branch
    that leaves the transformer's LV busbar (0, 1, ...; -1 for the busbar and above)."""
    import networkx as nx

    graph = _line_graph(net)
    root = lv_busbar(net) if len(net.trafo) else int(net.ext_grid.bus.iloc[0])
    feeder = pd.Series(-1, index=net.bus.index, dtype=int)
    tree = nx.bfs_tree(graph, root)
    hv = set(net.trafo.hv_bus.astype(int)) if len(net.trafo) else set()
    for k, child in enumerate(c for c in tree.successors(root) if c not in hv):
        feeder.loc[[child, *nx.descendants(tree, child)]] = k
    return feeder


def line_distance_km(net: pp.pandapowerNet, buses: np.ndarray) -> np.ndarray:
    """[len(buses) x len(buses)] length of the shortest line path between buses [km]."""
    import networkx as nx

    graph = _line_graph(net)
    unique = np.unique(buses)
    pos = {b: i for i, b in enumerate(unique)}
    dist_u = np.full((len(unique), len(unique)), np.inf)
    for i, b in enumerate(unique):
        lengths = nx.single_source_dijkstra_path_length(graph, int(b), weight="weight")
        for other, d in lengths.items():
            j = pos.get(other)
            if j is not None:
                dist_u[i, j] = d
    idx = np.array([pos[b] for b in buses])
    return dist_u[np.ix_(idx, idx)]
