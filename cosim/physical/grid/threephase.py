"""Three-phase (unbalanced) power flow: pandapower's ``runpp_3ph`` on a net whose loads and
generators sit on their phases.

pandapower solves the sequence networks (positive with Newton-Raphson, negative and zero
by current injection) and reports the phase voltages; it needs zero-sequence data on the
lines (``r0_ohm_per_km``, ``x0_ohm_per_km``, ``c0_nf_per_km``), the transformers
(``vector_group``, ``vk0_percent``, ``vkr0_percent``, ``mag0_percent``, ``mag0_rx``,
``si0_hv_partial``) and the external grid (``s_sc_max_mva``, ``rx_max``, ``r0x0_max``,
``x0x_max``). SimBench nets carry none of them: `add_zero_sequence_data` fills what is
missing with the values of the IEEE European LV Test Feeder's own cable, transformer and
source (named below), and leaves what a net has alone.

A connection is ``a``, ``b``, ``c`` (single-phase, between that phase and neutral) or
``abc`` (three-phase, the power split equally over the phases). Powers in kW and kvar,
positive when consumed (load convention); MW only at the pandapower boundary.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandapower as pp
import pandas as pd

#: The phases, in the order of the result columns.
PHASES = ("a", "b", "c")
#: The connections a load, PV system or battery may have.
CONNECTIONS = ("a", "b", "c", "abc")

#: Zero- to positive-sequence ratios of a line's series resistance and reactance [-], of
#: the IEEE European LV Test Feeder's 4-core 70 mm2 cable (its `LineCodes`: r1 0.446,
#: x1 0.071, r0 1.505, x0 0.083 ohm/km); used where a net gives no zero-sequence data.
LINE_R0_PER_R1 = 1.505 / 0.446
LINE_X0_PER_X1 = 0.083 / 0.071
#: The feeder's transformer zero-sequence data where a net has none: Dyn vector group
#: (the neutral of the LV star earthed), zero-sequence short-circuit voltage as the
#: positive one, mag0 1 %, mag0_rx 0, si0_hv_partial 0.9 (pandapower's copy of the feeder).
TRAFO_ZERO_SEQUENCE = {"vector_group": "Dyn", "mag0_percent": 1.0, "mag0_rx": 0.0, "si0_hv_partial": 0.9}
#: The vector groups ``runpp_3ph`` computes (any clock number).
SUPPORTED_VECTOR_GROUPS = ("Dyn", "YNyn", "Yzn")
#: The feeder's source where a net has no short-circuit data: 10 GVA, R/X 0.1, R0/X0 0.1, X0/X 1.
EXT_GRID_SHORT_CIRCUIT = {"s_sc_max_mva": 10000.0, "s_sc_min_mva": 8000.0, "rx_max": 0.1, "rx_min": 0.1,
                          "r0x0_max": 0.1, "x0x_max": 1.0, "r0x0_min": 0.1, "x0x_min": 1.0}


def _missing(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table.columns:
        return pd.Series(True, index=table.index)
    return pd.to_numeric(table[column], errors="coerce").isna() if column != "vector_group" else table[column].isna()


def add_zero_sequence_data(net: pp.pandapowerNet) -> None:
    """Fill the zero-sequence and short-circuit data ``runpp_3ph`` needs where the net lacks it
    (in place; see the module's constants for the values and their source)."""
    line = net.line
    for col, base, ratio in (("r0_ohm_per_km", "r_ohm_per_km", LINE_R0_PER_R1),
                             ("x0_ohm_per_km", "x_ohm_per_km", LINE_X0_PER_X1),
                             ("c0_nf_per_km", "c_nf_per_km", 1.0)):
        miss = _missing(line, col)
        if col not in line.columns:
            line[col] = np.nan
        line.loc[miss, col] = line.loc[miss, base].astype(float) * ratio
        line[col] = line[col].astype(float)
    trafo = net.trafo
    for col, value in (("vk0_percent", trafo.get("vk_percent")), ("vkr0_percent", trafo.get("vkr_percent")),
                       *TRAFO_ZERO_SEQUENCE.items()):
        miss = _missing(trafo, col)
        if col not in trafo.columns:
            trafo[col] = np.nan if col != "vector_group" else None
        trafo.loc[miss, col] = value[miss] if isinstance(value, pd.Series) else value
    trafo["vector_group"] = [_supported_vector_group(g) for g in trafo["vector_group"]]
    for col, value in EXT_GRID_SHORT_CIRCUIT.items():
        miss = _missing(net.ext_grid, col)
        if col not in net.ext_grid.columns:
            net.ext_grid[col] = np.nan
        net.ext_grid.loc[miss, col] = value
        net.ext_grid[col] = net.ext_grid[col].astype(float)


def _supported_vector_group(group: str) -> str:
    """The vector group as ``runpp_3ph`` names it (without the clock number, which the
    transformer's ``shift_degree`` carries): ``Dyn``, ``YNyn`` or ``Yzn``."""
    name = str(group).rstrip("0123456789")
    if name not in SUPPORTED_VECTOR_GROUPS:
        raise ValueError(f"expected a transformer vector group among {SUPPORTED_VECTOR_GROUPS} (a four-wire LV "
                         f"side with an earthed neutral), found {group!r}")
    return name


def phase_split(connection: str) -> np.ndarray:
    """Share of a connection's power on phases a, b, c [-].

    >>> phase_split("b").tolist(), phase_split("abc").round(3).tolist()
    ([0.0, 1.0, 0.0], [0.333, 0.333, 0.333])
    """
    if connection == "abc":
        return np.full(3, 1.0 / 3.0)
    if connection not in PHASES:
        raise ValueError(f"expected a connection among {CONNECTIONS}, found {connection!r}")
    return np.array([float(connection == p) for p in PHASES])


def set_phase_injections(net: pp.pandapowerNet, bus: np.ndarray, p_kw: np.ndarray, q_kvar: np.ndarray,
                         connection: list[str] | np.ndarray) -> None:
    """Replace the net's loads and generators by one asymmetric load per entry: ``p_kw``,
    ``q_kvar`` (load convention, negative for an injection) at ``bus`` on ``connection``."""
    for table in ("load", "sgen", "asymmetric_load", "asymmetric_sgen"):
        if table in net and len(net[table]):
            net[table] = net[table].iloc[0:0]
    split = np.array([phase_split(c) for c in connection]).reshape(-1, 3)
    p = np.asarray(p_kw, float)[:, None] * split / 1000.0
    q = np.asarray(q_kvar, float)[:, None] * split / 1000.0
    for i, b in enumerate(np.asarray(bus, int)):
        pp.create_asymmetric_load(net, int(b), p_a_mw=p[i, 0], p_b_mw=p[i, 1], p_c_mw=p[i, 2],
                                  q_a_mvar=q[i, 0], q_b_mvar=q[i, 1], q_c_mvar=q[i, 2])


def run_three_phase(net: pp.pandapowerNet) -> pd.DataFrame:
    """``runpp_3ph`` of the net as it stands; per bus (index as ``net.bus``): ``vm_a_pu``,
    ``vm_b_pu``, ``vm_c_pu`` (line-to-neutral, per unit of the bus's nominal voltage / sqrt 3),
    ``va_a_degree`` .. ``va_c_degree`` and ``vuf_pct``, the voltage unbalance factor
    (negative- over positive-sequence voltage [%], EN 50160's measure).

    Raises pandapower's ``LoadflowNotConverged`` if it does not converge.
    """
    from pandapower.pf.runpp_3ph import runpp_3ph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runpp_3ph(net, numba=False)
    res = net.res_bus_3ph
    out = pd.DataFrame({f"vm_{p}_pu": res[f"vm_{p}_pu"].astype(float) for p in PHASES})
    for p in PHASES:
        out[f"va_{p}_degree"] = res[f"va_{p}_degree"].astype(float)
    out["vuf_pct"] = voltage_unbalance_pct(out)
    return out


def voltage_unbalance_pct(phases: pd.DataFrame) -> np.ndarray:
    """Voltage unbalance factor |V2| / |V1| [%] from per-phase magnitudes and angles
    (columns as `run_three_phase`); V1, V2 by Fortescue's transform (IEC 61000-4-30).

    >>> balanced = pd.DataFrame({"vm_a_pu": [1.0], "vm_b_pu": [1.0], "vm_c_pu": [1.0],
    ...     "va_a_degree": [0.0], "va_b_degree": [-120.0], "va_c_degree": [120.0]})
    >>> round(float(voltage_unbalance_pct(balanced)[0]), 9)
    0.0
    """
    v = np.stack([phases[f"vm_{p}_pu"].to_numpy(float) * np.exp(1j * np.deg2rad(phases[f"va_{p}_degree"]
                                                                             .to_numpy(float))) for p in PHASES])
    a = np.exp(2j * np.pi / 3)
    v1 = (v[0] + a * v[1] + a * a * v[2]) / 3.0
    v2 = (v[0] + a * a * v[1] + a * v[2]) / 3.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(v2) / np.abs(v1) * 100.0
