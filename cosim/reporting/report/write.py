"""`write_report`: load the run folder, draw the figures, write the page."""

from __future__ import annotations

import os
import pathlib
import tempfile

from cosim.reporting.report.figures import draw_figures
from cosim.reporting.report.load import load_run
from cosim.reporting.report.page import render_page

__all__ = ["write_report"]


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so that a reader never sees a
    half-written page."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise



def write_report(run_dir: str | pathlib.Path) -> pathlib.Path:
    """(Re)draw the report of a finished run.

    Reads only the files of the run folder, writes ``run_dir/figures/<name>.png`` (see
    ``FIGURES``; ``grid_forming`` only in islanded runs; ``STORAGE_FIGURES`` only when
    the run has ``storage.parquet``) and ``run_dir/report.html``, a single page that
    references the figures by relative path.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        Folder of a finished run: ``summary.json``, ``rounds.parquet``, ``trades.parquet``,
        ``settlement.parquet``, ``buses.parquet``, ``branches.parquet``,
        ``grid_buses.parquet``, ``grid_branches.parquet`` and optionally the variant
        folders ``no_feedback/`` and ``baseline/``. Missing optional files and folders
        leave out the parts that need them and are listed in the report's notes.

    Returns
    -------
    pathlib.Path
        Path of the written ``report.html``.

    Raises
    ------
    cosim.config.errors.InputError
        If ``summary.json`` or ``rounds.parquet`` is missing or unreadable, or a table lacks
        a column the report needs; lists every problem found. Nothing is written.

    Examples
    --------
    >>> from cosim.reporting.report import write_report
    >>> write_report("results/rural3-summer-pv")  # doctest: +SKIP
    PosixPath('results/rural3-summer-pv/report.html')
    """
    run_dir = pathlib.Path(run_dir)
    run = load_run(run_dir)
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    captions = draw_figures(run, fig_dir)
    out = run_dir / "report.html"
    _write_text_atomic(out, render_page(run, captions))
    return out
