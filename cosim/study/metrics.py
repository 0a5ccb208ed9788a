"""One row of figures per run, read from the run's results folder (the results contract
of DESIGN.md), for ``runs.parquet``.

The figures are those of the run's first variant (``market``, unless the run simulated
fewer variants, as the hosting-capacity search does): voltages, minutes outside the band
per customer and the share of customers affected (SARDI-like), the loading-duration
curve's P95 and maximum for the transformer and the worst line, losses, reverse power,
curtailed and shed energy and their fairness, what the DSO paid for flexibility (the
``flexibility`` mechanism's procurement, 0 for every other), the transformer's hot-spot temperature and
relative ageing to IEC 60076-7 (`transformer-thermal-model`), the P2P volume, and bills
against the baseline.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.sim.settlement import DSO

#: The folder of each variant inside a run's folder (`cosim.sim.setup.variants_for`).
VARIANT_FOLDERS = {"market": "", "market_no_feedback": "no_feedback", "baseline": "baseline",
                   "baseline_no_feedback": "baseline_no_feedback"}
#: Buses below this nominal voltage are LV [kV] (as `cosim.sim.setup.LV_MAX_KV`).
LV_MAX_KV = 1.0
#: Nominal load of the thermal model: loadings are given in % of the rating [%].
RATED_LOADING_PCT = 100.0


def variant_folder(run_dir: Path, variant: str) -> Path:
    return Path(run_dir) / VARIANT_FOLDERS[variant]


def run_metrics(run_dir: str | Path, limits: dict, ambient_c: float = 20.0, insulation: str = "normal") -> dict:
    """The figures of a finished run (see the module's docstring); `limits` has ``v_min_pu``,
    ``v_max_pu``, ``max_loading_pct`` (the band and loading the minutes and SARDI count against)."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    variant = next(iter(summary["variants"]))
    folder = variant_folder(run_dir, variant)
    k = summary["variants"][variant]
    dt_min = float(summary["resolution_min"])
    rounds = pd.read_parquet(folder / "rounds.parquet", columns=["time", "grid_export_kwh", "grid_import_kwh",
                                                                  "max_trafo_loading_pct", "pf_converged"])
    row = {
        "variant": variant,
        "rounds": int(summary["rounds"]),
        "vm_min_pu": k["vm_min_pu"],
        "vm_max_pu": k["vm_max_pu"],
        "losses_kwh": k["losses_kwh"],
        "pv_kwh": summary["pv_kwh"],
        "load_kwh": summary["load_kwh"],
        "curtailed_kwh": k["curtailed_kwh"],
        "curtailed_share": k["curtailed_kwh"] / summary["pv_kwh"] if summary["pv_kwh"] > 0 else 0.0,
        "shed_kwh": k["shed_kwh"],
        "p2p_traded_kwh": k["p2p_traded_kwh"],
        "prosumer_bills_total": k["prosumer_bills_total"],
        "violation_rounds": k["violation_rounds"],
        "failed_rounds": k["failed_rounds"],
    }
    row["dso_flexibility_cost"] = dso_flexibility_cost(folder)
    row.update(_voltage_figures(run_dir, folder, limits, dt_min))
    row.update(_loading_figures(run_dir, folder))
    dt_h = dt_min / 60.0
    row["reverse_power_kwh"] = float(rounds.grid_export_kwh.sum())
    row["reverse_power_max_kw"] = float(rounds.grid_export_kwh.max() / dt_h) if len(rounds) else 0.0
    row["reverse_power_h"] = float((rounds.grid_export_kwh > 1e-9).sum() * dt_h)
    fair = summary.get("fairness", {})
    for what in ("curtailment", "shedding"):
        f = fair.get(what, {})
        row[f"{what}_jain"] = f.get("jain_index")
        row[f"{what}_gini"] = f.get("gini")
    if "baseline" in summary["variants"] and variant != "baseline":
        base = summary["variants"]["baseline"]["prosumer_bills_total"]
        row["bill_change_vs_baseline"] = k["prosumer_bills_total"] - base
        row["welfare_gain_vs_baseline"] = base - k["prosumer_bills_total"]
    row.update(transformer_ageing(run_dir, rounds, ambient_c, insulation))
    return row


def dso_flexibility_cost(folder: Path) -> float:
    """What the DSO paid providers for flexibility over the run [currency]: the sum of the
    ``dso`` party's ``flexibility_payments`` in the variant's settlement.parquet."""
    settlement = pd.read_parquet(folder / "settlement.parquet", columns=["party", "flexibility_payments"])
    return float(settlement.flexibility_payments[settlement.party == DSO].sum())


def _voltage_figures(run_dir: Path, folder: Path, limits: dict, dt_min: float) -> dict:
    buses = pd.read_parquet(folder / "buses.parquet", columns=["round", "bus", "vm_pu"])
    grid = pd.read_parquet(run_dir / "grid_buses.parquet")
    prosumers = pd.read_parquet(run_dir / "prosumers.parquet", columns=["id", "bus"])
    lv = set(grid.bus[grid.vn_kv < LV_MAX_KV])
    buses = buses[buses.bus.isin(lv)]
    outside = (buses.vm_pu < limits["v_min_pu"]) | (buses.vm_pu > limits["v_max_pu"])
    minutes_by_bus = outside.groupby(buses.bus).sum() * dt_min
    per_customer = prosumers.bus.map(minutes_by_bus).fillna(0.0)
    return {
        "minutes_outside_band_mean": float(per_customer.mean()) if len(per_customer) else 0.0,
        "minutes_outside_band_max": float(per_customer.max()) if len(per_customer) else 0.0,
        "customers_outside_band_share": float((per_customer > 0).mean()) if len(per_customer) else 0.0,
    }


def _loading_figures(run_dir: Path, folder: Path) -> dict:
    branches = pd.read_parquet(folder / "branches.parquet", columns=["round", "branch", "kind", "loading_pct"])
    names = pd.read_parquet(run_dir / "grid_branches.parquet", columns=["branch", "kind", "name"])
    out = {}
    trafo = branches[branches.kind == "trafo"].groupby("round").loading_pct.max()
    out["trafo_loading_p95_pct"] = float(np.nanpercentile(trafo, 95)) if len(trafo) else np.nan
    out["trafo_loading_max_pct"] = float(trafo.max()) if len(trafo) else np.nan
    lines = branches[branches.kind == "line"]
    if len(lines):
        worst = int(lines.groupby("branch").loading_pct.max().idxmax())
        series = lines.loading_pct[lines.branch == worst]
        out["worst_line"] = str(names.name[(names.kind == "line") & (names.branch == worst)].iloc[0])
        out["line_loading_p95_pct"] = float(np.nanpercentile(series, 95))
        out["line_loading_max_pct"] = float(series.max())
    return out


def transformer_ageing(run_dir: Path, rounds: pd.DataFrame, ambient_c: float, insulation: str) -> dict:
    """Hot-spot temperature [degC] and relative ageing [-] (days aged per day) of the MV/LV
    transformer over the run, by the IEC 60076-7 thermal model of Alliander's
    `transformer-thermal-model` (a distribution transformer, ONAN), fed the loading of each
    round and a constant ambient temperature. NaN without a transformer (islanded runs)."""
    from transformer_thermal_model.aging import days_aged
    from transformer_thermal_model.model import Model
    from transformer_thermal_model.schemas import InputProfile, UserTransformerSpecifications
    from transformer_thermal_model.transformer import DistributionTransformer, PaperInsulationType

    logging.getLogger("transformer_thermal_model").setLevel(logging.WARNING)
    grid = pd.read_parquet(run_dir / "grid_branches.parquet")
    trafos = grid[grid.kind == "trafo"]
    load = rounds.max_trafo_loading_pct.to_numpy(float)
    if trafos.empty or "pfe_kw" not in trafos or len(load) < 2 or not np.isfinite(load).any():
        return {"trafo_hot_spot_max_c": np.nan, "trafo_ageing_rate": np.nan}
    t = trafos.iloc[0]
    specs = UserTransformerSpecifications(
        load_loss=float(t.vkr_percent) / 100.0 * float(t.sn_kva) * 1000.0,  # at rated current [W]
        no_load_loss=float(t.pfe_kw) * 1000.0,  # [W]
        nom_load_sec_side=RATED_LOADING_PCT,  # the load profile is in % of rated
    )
    times = pd.DatetimeIndex(rounds.time)
    profile = InputProfile.create(datetime_index=times.to_pydatetime(), load_profile=np.nan_to_num(load),
                                  ambient_temperature_profile=np.full(len(load), float(ambient_c)))
    out = Model(temperature_profile=profile, transformer=DistributionTransformer(user_specs=specs)).run()
    hot = out.hot_spot_temp_profile
    kind = PaperInsulationType.NORMAL if insulation == "normal" else PaperInsulationType.THERMAL_UPGRADED
    span_days = (times[-1] - times[0]).total_seconds() / 86400.0
    return {"trafo_hot_spot_max_c": float(hot.max()),
            "trafo_ageing_rate": float(days_aged(hot, kind) / span_days) if span_days > 0 else np.nan}
