"""What every figure of the report shares: size, resolution, colours, the time axis, one
legend below the plots, and a placeholder for figures whose data was not recorded."""

from __future__ import annotations

import math
import pathlib

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cosim.reporting.report.load import Run

__all__ = [
    "DPI",
    "FIG_WIDTH_IN",
    "RC_PARAMS",
    "COLOURS",
    "MAX_TICK_LABELS",
    "subplots",
    "time_axis",
    "legend_below",
    "save",
    "placeholder",
    "finite",
    "sparse_ticks",
    "bar_ticks",
]

#: Resolution of the PNG files [dots per inch].
DPI = 110
#: Width of every figure [in]; at `DPI` it fills the page's 1,120 px column.
FIG_WIDTH_IN = 10.0
#: Matplotlib settings of every figure: smaller text than the default, so labels fit.
RC_PARAMS = {"font.size": 9.5, "axes.titlesize": "medium"}

#: Colour of each variant, and of limits.
COLOURS = {
    "market": "tab:blue",
    "market_no_feedback": "tab:orange",
    "baseline": "tab:grey",
    "baseline_no_feedback": "tab:brown",
    "limit": "tab:red",
}

#: Most names written along an axis [count]; beyond that they overlap and are thinned.
MAX_TICK_LABELS = 30
#: Fewest and most date ticks on a time axis [count].
_DATE_TICKS = (4, 10)


def subplots(nrows: int, height_in: float, sharex: bool = True):
    """A figure of ``nrows`` axes stacked, `FIG_WIDTH_IN` wide.

    Parameters
    ----------
    nrows : int
        Number of axes, one above the other.
    height_in : float
        Height of the figure [in].
    sharex : bool
        Whether the axes share their x axis.

    Returns
    -------
    (matplotlib.figure.Figure, list of matplotlib.axes.Axes)
    """
    fig, axes = plt.subplots(
        nrows,
        1,
        figsize=(FIG_WIDTH_IN, height_in),
        sharex=sharex,
        squeeze=False,
        layout="constrained",
    )
    return fig, list(axes[:, 0])


def date_axis(ax, label: str) -> None:
    """Concise date ticks on the x axis of ``ax``, and the axis label ``label``."""
    locator = mdates.AutoDateLocator(minticks=_DATE_TICKS[0], maxticks=_DATE_TICKS[1])
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel(label)


def time_axis(ax, run: Run) -> None:
    """Date ticks on the x axis of ``ax``, labelled with the run's time base."""
    tb = run.timebase
    date_axis(ax, "time [date]" if tb.freq is None else f"time [date; one point per {tb.unit}]")


def legend_below(fig, axes) -> None:
    """One legend for all axes of a figure, outside the plots so it hides no data."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen.keys()),
            loc="outside lower center",
            ncol=min(4, len(seen)),
            fontsize="small",
            frameon=False,
        )


def save(fig, path: pathlib.Path) -> None:
    """Write ``fig`` as a PNG at `DPI` to ``path`` and close it, also when writing fails."""
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def placeholder(path: pathlib.Path, title: str, message: str) -> None:
    """Write a small figure that only says why the real one cannot be drawn.

    Parameters
    ----------
    path : pathlib.Path
        The PNG file.
    title : str
        Title of the figure.
    message : str
        What was not recorded.
    """
    fig, (ax,) = subplots(1, 2.2)
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(
        0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes, wrap=True
    )
    save(fig, path)


def finite(values) -> np.ndarray:
    """The finite values of ``values`` as a flat float array (NaN and inf dropped)."""
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def sparse_ticks(n: int, max_labels: int = MAX_TICK_LABELS) -> np.ndarray:
    """Positions of at most ``max_labels`` evenly spaced ticks among ``n`` items.

    >>> sparse_ticks(70).tolist()[:4]
    [0, 3, 6, 9]
    """
    step = max(1, math.ceil(n / max_labels))
    return np.arange(0, n, step)


def bar_ticks(ax, names: pd.Index) -> None:
    """Name each bar of ``ax`` below it, or none when there are more than
    `MAX_TICK_LABELS` bars."""
    if len(names) <= MAX_TICK_LABELS:
        ax.set_xticks(
            np.arange(len(names)), [str(n) for n in names], rotation=90, fontsize="x-small"
        )
    else:
        ax.set_xticks([])
    ax.set_xlim(-0.6, len(names) - 0.4)
