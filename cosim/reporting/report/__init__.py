"""Report of a finished run: figures and one self-contained HTML page.

The report reads only the files of a run folder (see "Results of a run" in the design)
and never imports the market or the grid stages. It writes ``figures/<name>.png`` and
``report.html`` into the run folder; calling it again redraws both.

Time series stay readable for long runs: up to ``MAX_POINTS`` rounds are drawn round by
round, longer runs are aggregated into hourly, daily or weekly buckets (totals for
energies, minimum/maximum envelopes for voltages and loadings). Quantities over many
buses are always drawn as envelopes, never one line per bus.

The parts, in the order `write_report` uses them:

- `load`: read and check the run folder, reduce its tables (`load_run`);
- `aggregate`: time bases and aggregation of long runs, and `same_physics`;
- `figures`: which figures a run gets and the functions that draw them, by theme;
- `sections` and `page`: the HTML page;
- `numbers`: how numbers are read from summary.json and printed.
"""

from __future__ import annotations

import matplotlib

# A report is drawn to files, also on machines without a display.
matplotlib.use("Agg")

from cosim.reporting.report.aggregate import MAX_POINTS, TimeBase, same_physics, time_base  # noqa: E402
from cosim.reporting.report.figures import FIGURES, STORAGE_FIGURES, figures_for  # noqa: E402
from cosim.reporting.report.figures.fairness import FAIRNESS_FIGURE  # noqa: E402
from cosim.reporting.report.load import Run, load_run  # noqa: E402
from cosim.reporting.report.sections import fairness_section  # noqa: E402
from cosim.reporting.report.write import write_report  # noqa: E402

__all__ = [
    "write_report",
    "FIGURES",
    "STORAGE_FIGURES",
    "FAIRNESS_FIGURE",
    "MAX_POINTS",
    "same_physics",
    "load_run",
    "Run",
    "time_base",
    "TimeBase",
    "figures_for",
    "fairness_section",
]
