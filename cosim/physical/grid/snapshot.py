"""One power flow of a network's own load snapshot (``cosim powerflow``), balanced or in
three phases, one row per bus under the network's own bus names.

The IEEE European LV Test Feeder is taken at a published minute with its loads as
published (`cosim.physical.ieee_eu_lv`); any other network with the loads its source
gives it (SimBench's static load values), three-phase loads split equally over the phases.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandapower as pp
import pandas as pd

from cosim.config.network_file import NetworkSpec
from cosim.physical import ieee_eu_lv
from cosim.physical.grid.threephase import (
    PHASES,
    add_zero_sequence_data,
    run_three_phase,
    set_phase_injections,
)

#: Columns of the table `powerflow_snapshot` returns (and ``cosim powerflow`` writes).
SNAPSHOT_COLUMNS = ["bus", "base_kv_ll", "vm_a_pu", "vm_b_pu", "vm_c_pu", "vuf_pct"]
#: The minute the IEEE feeder is taken at when none is given: the on-peak minute 566.
DEFAULT_MINUTE = 566


def has_published_snapshots(spec: NetworkSpec) -> bool:
    """Whether the network is the IEEE European LV feeder, whose minutes are published."""
    return spec.source == "pandapower" and spec.code == ieee_eu_lv.PANDAPOWER_CODE


def snapshot_net(spec: NetworkSpec, minute: int | None) -> pp.pandapowerNet:
    """The net of the snapshot, its loads as asymmetric loads on their phases."""
    if has_published_snapshots(spec):
        return ieee_eu_lv.snapshot(DEFAULT_MINUTE if minute is None else minute)
    from cosim.physical.networks import build_net

    net = build_net(spec)
    loads, sgens = net.load, net.sgen
    bus = np.r_[loads.bus.to_numpy(int), sgens.bus.to_numpy(int)]
    p_kw = np.r_[loads.p_mw.to_numpy(float), -sgens.p_mw.to_numpy(float)] * 1000.0
    q_kvar = np.r_[loads.q_mvar.to_numpy(float), -sgens.q_mvar.to_numpy(float)] * 1000.0
    set_phase_injections(net, bus, p_kw, q_kvar, ["abc"] * len(bus))
    return net


def balanced_equivalent(net: pp.pandapowerNet) -> pp.pandapowerNet:
    """A copy of `net` with each asymmetric load replaced by a balanced load of the same
    total active and reactive power."""
    import copy

    net = copy.deepcopy(net)
    al = net.asymmetric_load
    p = al[[f"p_{ph}_mw" for ph in PHASES]].to_numpy(float).sum(axis=1)
    q = al[[f"q_{ph}_mvar" for ph in PHASES]].to_numpy(float).sum(axis=1)
    for b, pi, qi in zip(al.bus.to_numpy(int), p, q, strict=True):
        pp.create_load(net, int(b), p_mw=float(pi), q_mvar=float(qi))
    net.asymmetric_load = al.iloc[0:0]
    return net


def powerflow_snapshot(spec: NetworkSpec, minute: int | None = None, three_phase: bool = False) -> pd.DataFrame:
    """One power flow of the network's snapshot; columns `SNAPSHOT_COLUMNS`, one row per bus.

    Voltages are line-to-neutral per unit of the bus's nominal line-to-line voltage / sqrt 3
    (416 V / sqrt 3 = 240.18 V on the IEEE feeder's LV side). Balanced: the three phases
    carry the same value and the unbalance factor is 0.
    """
    net = snapshot_net(spec, minute)
    if three_phase:
        add_zero_sequence_data(net)
        res = run_three_phase(net)
    else:
        net = balanced_equivalent(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(net, numba=False)
        vm = net.res_bus.vm_pu.astype(float)
        res = pd.DataFrame({f"vm_{ph}_pu": vm for ph in PHASES})
        res["vuf_pct"] = 0.0
    names = net.bus.name.where(net.bus.name.notna(), net.bus.index.to_series().astype(str)).astype(str)
    out = pd.DataFrame({"bus": names, "base_kv_ll": net.bus.vn_kv.astype(float).round(6)})
    out = out.join(res[[f"vm_{ph}_pu" for ph in PHASES] + ["vuf_pct"]])
    return out[SNAPSHOT_COLUMNS].reset_index(drop=True)
