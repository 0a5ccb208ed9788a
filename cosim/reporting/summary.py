"""Key figures of a variant, for summary.json and the report's table."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _f(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def kpis(rounds: pd.DataFrame, bills: pd.Series, load_kwh: float, pv_kwh: float,
         voll_per_kwh: float | None = None) -> dict:
    """Key figures of one variant.

    self_sufficiency: share of the prosumers' consumption not bought from the outside
    party nor shed [0..1]. pv_self_consumption: share of PV generation used inside the
    community, i.e. neither exported nor curtailed [0..1]. `bills` is each prosumer's
    total bill over the run [currency]. lost_load_value: the energy shed valued at the
    value of lost load `voll_per_kwh` [currency] (islanded runs; None otherwise).
    """
    imported = rounds.grid_import_kwh.sum()
    exported = rounds.grid_export_kwh.sum()
    shed = rounds.shed_kwh.sum()
    curtailed = rounds.curtailed_kwh.sum()
    traded = rounds.cleared_kwh.sum()
    # what buyers paid per P2P kWh, weighted by volume (also for mechanisms whose traders
    # pay different prices, where the round has no single price)
    mean_price = rounds.p2p_paid.sum() / traded if traded > 0 else np.nan
    return {
        "prosumer_bills_total": _f(bills.sum()),
        "prosumer_bill_mean": _f(bills.mean()),
        "self_sufficiency": _f(1.0 - (imported + shed) / load_kwh) if load_kwh > 0 else None,
        "pv_self_consumption": _f(1.0 - (exported + curtailed) / pv_kwh) if pv_kwh > 0 else None,
        "p2p_traded_kwh": _f(traded),
        "grid_import_kwh": _f(imported),
        "grid_export_kwh": _f(exported),
        "mean_price_per_kwh": _f(mean_price),
        "peak_trafo_loading_pct": _f(rounds.max_trafo_loading_pct.max()),
        "max_line_loading_pct": _f(rounds.max_line_loading_pct.max()),
        "vm_min_pu": _f(rounds.vm_min_pu.min()),
        "vm_max_pu": _f(rounds.vm_max_pu.max()),
        "losses_kwh": _f(rounds.losses_kwh.sum()),
        "violation_rounds": int((rounds.violations > 0).sum()),
        "violations": int(rounds.violations.sum()),
        "curtailed_kwh": _f(curtailed),
        "shed_kwh": _f(shed),
        "lost_load_value": _f(shed * voll_per_kwh) if voll_per_kwh is not None else None,
        "network_charges": _f(rounds.network_charges.sum()),
        "operator_bill": _f(rounds.operator_bill.sum()) if "operator_bill" in rounds else None,
        "failed_rounds": int((rounds.status != "ok").sum()),
        "mean_iterations": _f(rounds.iterations.mean()),
    }


def timing(rounds: pd.DataFrame) -> dict:
    """Median time per round and its parts [ms]."""
    return {
        "median_round_ms": _f(rounds.round_ms.median()),
        "median_orders_ms": _f(rounds.orders_ms.median()),
        "median_clear_ms": _f(rounds.clear_ms.median()),
        "median_pf_ms": _f(rounds.pf_ms.median()),
        "median_sens_ms": _f(rounds.sens_ms.median()),
        "pf_fallback_rounds": int((rounds.pf_method != "newton").sum()),
    }
