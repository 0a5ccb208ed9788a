"""The report's figures: which a run gets, in which order, under which title, and the
functions that draw them, by theme (market, grid, storage; fairness is drawn with its
section of the page)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import matplotlib.pyplot as plt

from cosim.reporting.report.figures import grid, market, phases, storage
from cosim.reporting.report.figures.common import RC_PARAMS
from cosim.reporting.report.load import Run

__all__ = ["FIGURES", "PHASE_FIGURES", "STORAGE_FIGURES", "FIGURE_TITLES", "DRAW", "figures_for", "draw_figures"]

#: Figures in the order they appear in the report; ``grid_forming`` only when islanded.
FIGURES = (
    "price_volume",
    "grid_exchange",
    "voltage_envelope",
    "loading",
    "curtailment_shedding",
    "bills",
    "trade_matrix",
    "network_map",
    "network_charges",
    "grid_forming",
)

#: Figures of a three-phase run, after the voltage envelope (only when rounds.parquet has
#: the per-phase columns, `cosim.reporting.report.figures.phases.PHASE_COLUMNS`).
PHASE_FIGURES = ("phase_voltages", "physics_comparison")

#: Figures of the flexible assets, after `FIGURES`, only when the run has storage.parquet;
#: ``schedule_dispatch`` only when the assets followed a day-ahead schedule.
STORAGE_FIGURES = ("storage_soc", "ev_charging", "schedule_dispatch")

#: The function that draws each figure into a PNG file and returns its caption.
DRAW: dict[str, Callable[[Run, pathlib.Path], str]] = {**market.DRAW, **grid.DRAW, **phases.DRAW, **storage.DRAW}

#: Heading of each figure on the page; "{grid}" is the run's `Run.grid_name`.
FIGURE_TITLES = {
    "price_volume": "P2P price and traded volume",
    "grid_exchange": "Exchange with the {grid}",
    "voltage_envelope": "Bus voltages",
    "phase_voltages": "Voltages per phase and unbalance",
    "physics_comparison": "Three-phase against balanced power flow",
    "loading": "Line and transformer loading",
    "curtailment_shedding": "Curtailment and load shedding",
    "bills": "Prosumer bills: P2P against no P2P",
    "trade_matrix": "Who sold to whom",
    "network_map": "Network map: worst voltage per bus",
    "network_charges": "Network charges",
    "grid_forming": "Grid-forming unit",
    "storage_soc": "State of charge of batteries and EVs",
    "ev_charging": "EV charging and flexible loads",
    "schedule_dispatch": "Day-ahead schedule against realised dispatch",
}


def figures_for(run: Run) -> list[str]:
    """The figures a run gets, in the order of the page.

    Parameters
    ----------
    run : Run
        The loaded run folder.

    Returns
    -------
    list of str
        `FIGURES` (``grid_forming`` only when the rounds record the unit's state of
        charge; `PHASE_FIGURES` after the voltage envelope in a three-phase run), then the `STORAGE_FIGURES` the run's storage.parquet supports.
    """
    names = [n for n in FIGURES if n != "grid_forming"]
    if all(c in run.market.rounds.columns for c in phases.PHASE_COLUMNS):
        at = names.index("voltage_envelope") + 1
        names[at:at] = list(PHASE_FIGURES)
    if "gfu_soc" in run.market.rounds.columns:
        names.append("grid_forming")
    st = run.storage
    if st is not None and len(st.columns) > 2:  # more than round and time
        names += ["storage_soc", "ev_charging"]
        if any(c.endswith("_scheduled_kw") and st[c].notna().any() for c in st.columns):
            names.append("schedule_dispatch")
    return names


def draw_figures(run: Run, fig_dir: pathlib.Path) -> dict[str, str]:
    """Draw every figure of `figures_for` into ``fig_dir/<name>.png``.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    fig_dir : pathlib.Path
        An existing folder; files of the same names are overwritten.

    Returns
    -------
    dict of str to str
        The caption of each figure drawn, in the order of the page.
    """
    captions: dict[str, str] = {}
    with plt.rc_context(RC_PARAMS):
        for name in figures_for(run):
            captions[name] = DRAW[name](run, fig_dir / f"{name}.png")
    return captions
