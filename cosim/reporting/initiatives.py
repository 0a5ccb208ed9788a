"""The initiatives page: every preset of ``scenarios/initiatives/`` side by side.

``make initiatives`` runs each preset into ``results/initiatives/<preset>/`` and then
``python -m cosim.reporting.initiatives`` writes ``results/initiatives/initiatives.html``:
one row per initiative (mechanism, P2P volume, mean price, saving against the no-P2P
baseline, curtailment, DSO cost, the market operator's surplus or deficit, violations
without feedback) with a link to each run's
report, and the full side-by-side comparison of `cosim.reporting.compare` beneath it
(``results/initiatives/compare/compare.html``). Reads only the presets' headers and the
runs' result files.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cosim.config.errors import InputError
from cosim.reporting.compare import Run, _fmt, write_comparison
from cosim.reporting.report.numbers import MISSING

#: Columns of the initiatives table: (label with unit, how to compute it from a run).
COLUMNS = [
    ("mechanism", lambda r: r.summary["mechanism"]),
    ("mode", lambda r: r.summary["mode"]),
    ("P2P traded [kWh]", lambda r: r.kpi("p2p_traded_kwh")),
    ("mean P2P price [{cur}/kWh]", lambda r: r.kpi("mean_price_per_kwh")),
    ("saving against no P2P [{cur}]", lambda r: r.baseline("prosumer_bills_total") - r.kpi("prosumer_bills_total")),
    ("curtailed [kWh]", lambda r: r.kpi("curtailed_kwh")),
    ("DSO cost [{cur}]", lambda r: r.dso_cost()),
    ("market operator surplus (+) / deficit (-) [{cur}]", lambda r: r.operator_surplus()),
    ("rounds with violations, no feedback [-]", lambda r: r.variant("market_no_feedback", "violation_rounds")),
]


@dataclass(frozen=True)
class Preset:
    """One preset file and what its header says."""

    path: Path
    initiative: str
    """The initiative's name: the header's first words, up to its first parenthesis or comma."""
    design: str
    """The header's ``cosim:`` paragraph: the mechanism and options that reproduce it."""

    @property
    def stem(self) -> str:
        return self.path.stem

    @classmethod
    def read(cls, path: Path) -> Preset:
        lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
        if not lines:
            raise InputError(path, ["header: expected comment lines saying what the initiative does, found none"])
        first = lines[0]
        name = first.split("(")[0].split(",")[0].split(":")[0].strip()
        text = " ".join(lines)
        design = text.split("cosim:", 1)[1].split("Approximated:", 1)[0].strip() if "cosim:" in text else ""
        return cls(path, name, design)


def presets_in(folder: Path) -> list[Preset]:
    """The presets of `folder` (``*.yaml``), sorted by file name."""
    paths = sorted(Path(folder).glob("*.yaml"))
    if not paths:
        raise InputError(folder, ["expected preset files (*.yaml), found none"])
    return [Preset.read(p) for p in paths]


def _row(preset: Preset, run: Run | None, out: Path) -> str:
    name = html.escape(preset.initiative)
    if run is None:
        cells = "".join(f"<td>{MISSING}</td>" for _ in COLUMNS)
        return f"<tr><td>{name} <small>(<code>{preset.stem}</code>, not run)</small></td>{cells}</tr>"
    report = run.path / "report.html"
    link = Path(_relative(report, out.parent)) if report.exists() else None
    title = f'<a href="{html.escape(str(link))}">{name}</a>' if link else name
    cells = "".join(f"<td>{_fmt(fn(run))}</td>" for _, fn in COLUMNS)
    return (f'<tr><td title="{html.escape(preset.design)}">{title} <small>(<code>{preset.stem}</code>)</small></td>'
            f"{cells}</tr>")


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def write_initiatives(presets_dir: str | Path = "scenarios/initiatives", runs_dir: str | Path = "results/initiatives",
                      out: str | Path | None = None) -> Path:
    """Write the initiatives page.

    Parameters
    ----------
    presets_dir : str or pathlib.Path
        Folder of the presets (``*.yaml`` with their header comments).
    runs_dir : str or pathlib.Path
        Folder holding one finished run per preset, in ``<preset file stem>/``; presets
        without one show as not run.
    out : str or pathlib.Path, optional
        The page to write; default ``<runs_dir>/initiatives.html``. The side-by-side
        comparison of the runs goes to ``compare/compare.html`` beside it.

    Returns
    -------
    pathlib.Path
        Path of the written page.
    """
    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir / "initiatives.html"
    presets = presets_in(Path(presets_dir))
    runs = {p.stem: Run(runs_dir / p.stem) if (runs_dir / p.stem / "summary.json").exists() else None
            for p in presets}
    done = [r for r in runs.values() if r is not None]
    cur = done[0].summary.get("currency", "EUR") if done else "EUR"
    out.parent.mkdir(parents=True, exist_ok=True)
    compare_link = ""
    if done:
        compare = write_comparison([r.path for r in done], out.parent / "compare")
        compare_link = (f'<p>Every key figure, who gains and who loses, and the figures: '
                        f'<a href="{html.escape(_relative(compare, out.parent))}">the runs side by side</a>.</p>')
    header = "".join(f"<th>{html.escape(label.format(cur=cur))}</th>" for label, _ in COLUMNS)
    rows = "".join(_row(p, runs[p.stem], out) for p in presets)
    nets = sorted({r.summary["network"] for r in done})
    periods = sorted({f"{r.summary['start']} – {r.summary['end']}" for r in done})
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cosim: initiatives</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}</style></head><body>
<h1>Real P2P initiatives on one feeder</h1>
<p>Each row is one preset of <code>{html.escape(str(presets_dir))}</code> run by <code>cosim run</code>
(network: {html.escape(", ".join(nets) or MISSING)}; period: {html.escape("; ".join(periods) or MISSING)}).
The preset's header says what the initiative does, its source, the mechanism that reproduces it and what is
approximated (hover over a name for the mechanism; the link opens the run's report). Saving: what the
prosumers' bills fall by against trading only with the grid. DSO cost: the network's losses bought at retail
less the network charges collected, plus any flexibility it bought. Operator: what the market operator or
community manager keeps (a fixed-price pool that pays members more than the grid does runs a deficit).
Violations: rounds the market's dispatch would break a grid limit in
without the network feedback.</p>
<table><tr><th>initiative</th>{header}</tr>{rows}</table>
{compare_link}
<p>{len(done)} of {len(presets)} presets run.</p></body></html>"""
    out.write_text(page)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosim.reporting.initiatives", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="scenarios/initiatives", help="folder of the presets")
    parser.add_argument("--runs", default="results/initiatives", help="folder with one run per preset")
    parser.add_argument("--out", default=None, help="the page (default RUNS/initiatives.html)")
    args = parser.parse_args(argv)
    try:
        path = write_initiatives(args.presets, args.runs, args.out)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
