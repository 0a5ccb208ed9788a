"""Key figures of a run's flexible assets, from its files (for summary.json and compare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cosim.config.scenario import Scenario

#: Round length assumed when a run's rounds.parquet cannot tell it [h].
DEFAULT_ROUND_H = 0.25


def summarize_storage(folder: str | Path, scenario: Scenario | None = None) -> dict | None:
    """Key figures of a run's flexible assets from its files (storage.parquet,
    sessions.parquet, dayahead.parquet), for summary.json; None without storage.parquet.

    Energies [kWh]: ``battery_charged_kwh``/``battery_discharged_kwh`` (grid side),
    ``storage_losses_kwh`` (all assets), ``ev_charged_kwh``, ``ev_discharged_kwh`` (v2g),
    ``shiftable_kwh``, ``ev_shortfall_kwh``; counts of EV sessions ended, served, and
    infeasible requests; day-ahead solves, failures, the most iterations of a
    distributed schedule and its largest certified gap; with battery_auction.parquet, the
    auction's figures (`auction_figures`); with the scenario, its ``strategy`` and
    ``forecast``.
    """
    folder = Path(folder)
    path = folder / "storage.parquet"
    if not path.is_file():
        return None
    rows = pd.read_parquet(path, columns=["round", "asset", "power_kw", "loss_kwh"])
    dt_h = None
    rounds = folder / "rounds.parquet"
    if rounds.is_file():
        t = pd.read_parquet(rounds, columns=["time"]).time
        if len(t) > 1:
            dt_h = float(pd.to_datetime(t).diff().median() / pd.Timedelta(hours=1))
    dt_h = dt_h or DEFAULT_ROUND_H

    def energy(asset: str, sign: int) -> float:
        p = rows.power_kw[rows.asset == asset]
        return float(np.maximum(sign * p, 0.0).sum() * dt_h)

    out = {"strategy": scenario.storage.strategy, "forecast": scenario.storage.forecast} if scenario else {}
    out |= {
        "battery_charged_kwh": energy("battery", 1), "battery_discharged_kwh": energy("battery", -1),
        "ev_charged_kwh": energy("ev", 1), "ev_discharged_kwh": energy("ev", -1),
        "shiftable_kwh": energy("shiftable", 1), "storage_losses_kwh": float(rows.loss_kwh.sum()),
    }
    sessions = folder / "sessions.parquet"
    if sessions.is_file():
        s = pd.read_parquet(sessions)
        ev = s[(s.asset == "ev") & (s.status != "after run")]
        out.update({"ev_sessions_ended": int(len(ev)), "ev_sessions_served": int((ev.status == "served").sum()),
                    "ev_infeasible_requests": int((ev.status == "infeasible request").sum()),
                    "ev_shortfall_kwh": float(ev.shortfall_kwh.sum())})
    plans = folder / "dayahead.parquet"
    if plans.is_file():
        d = pd.read_parquet(plans)
        if len(d):
            out.update({"dayahead_solves": int(len(d)), "dayahead_failed": int((d.status != "ok").sum()),
                        "dayahead_iterations_max": int(d.iterations.max()),
                        "dayahead_bound_gap_max": float(d.bound_gap.max())})
    auction = folder / "battery_auction.parquet"
    if auction.is_file():
        out.update(auction_figures(pd.read_parquet(auction)))
    return out


def auction_figures(days: pd.DataFrame) -> dict:
    """Key figures of a run's battery auction (`cosim.flex.capacity_sharing.AUCTION_COLUMNS`):
    ``battery_auction_days``, capacity shared summed over the days ``battery_shared_kwh``
    [kWh], rent paid ``battery_rent`` [currency], ``battery_auction_winners`` and
    ``battery_auction_sharing_owners`` (households that won or shared on any day)."""
    won = (days.role == "facility") & (days.quantity_kwh > 0)
    shared = (days.role == "owner") & (days.quantity_kwh > 0)
    return {"battery_auction_days": int(days.day.nunique()), "battery_shared_kwh": float(days.quantity_kwh[shared].sum()),
            "battery_rent": float(days.payment[won].sum()), "battery_auction_winners": int(days.id[won].nunique()),
            "battery_auction_sharing_owners": int(days.id[shared].nunique())}


def flexible_consumption_kwh(folder: str | Path, dt_h: float) -> float:
    """Energy EVs (net of vehicle-to-grid) and shiftable loads drew in a run, from its
    storage.parquet (0 without it) [kWh]: consumption on top of the SimBench load profiles,
    which self-sufficiency must count."""
    path = Path(folder) / "storage.parquet"
    if not path.is_file():
        return 0.0
    rows = pd.read_parquet(path, columns=["asset", "power_kw"])
    return float(rows.power_kw[rows.asset.isin(["ev", "shiftable"])].sum() * dt_h)
