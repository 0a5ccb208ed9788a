"""The fairness figure: who carried the curtailment and the shedding, per prosumer."""

from __future__ import annotations

import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cosim.reporting.report.figures.common import COLOURS, RC_PARAMS, legend_below, save, subplots

__all__ = ["FAIRNESS_FIGURE", "draw_fairness"]

#: The fairness section's figure (figures/<name>.png), drawn when a variant curtailed or shed.
FAIRNESS_FIGURE = "fairness"


def draw_fairness(tables: dict[str, pd.DataFrame], labels: dict[str, str], path: pathlib.Path,
                  shed: bool) -> None:
    """Curtailment per kWp of each PV owner, sorted (one line per variant), and the same
    for shedding per kWh of load when a variant shed."""
    with plt.rc_context(RC_PARAMS):
        fig, axes = subplots(2 if shed else 1, 6.0 if shed else 3.6, sharex=False)
        panels = [("curtailed_kwh_per_kwp", 1.0, "curtailed energy per kWp [kWh/kWp]",
                   "PV owners, most curtailed first [rank]", "Curtailment per kWp of PV, per PV owner")]
        if shed:
            panels.append(("shed_kwh_per_kwh_load", 100.0, "shed energy per load [% of kWh]",
                           "prosumers, most shed first [rank]", "Load shed per kWh of load, per prosumer"))
        for ax, (col, scale, ylabel, xlabel, title) in zip(axes, panels, strict=True):
            for key, table in tables.items():
                values = np.sort(table[col].dropna().to_numpy(float))[::-1] * scale
                if not len(values) or not values.any():
                    continue
                rank = np.arange(1, len(values) + 1)
                if key == "market":
                    ax.bar(rank, values, width=1.0, color=COLOURS.get(key, "tab:blue"), alpha=0.55,
                           label=labels[key])
                else:
                    ax.step(rank, values, where="mid", color=COLOURS.get(key, "tab:grey"), lw=1.3,
                            label=labels[key])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.set_xlim(0.5, None)
            ax.grid(alpha=0.3)
        legend_below(fig, axes)
        save(fig, path)
