"""The report's HTML page: how to read it, the facts of the run, the key figures of every
variant, the optional sections and the figures with their captions."""

from __future__ import annotations

import html
import math

import pandas as pd

from cosim.reporting.report.aggregate import same_physics
from cosim.reporting.report.figures import FIGURE_TITLES
from cosim.reporting.report.load import VARIANTS, Run
from cosim.reporting.report.numbers import MISSING, as_float, fmt
from cosim.reporting.report.sections import (
    battery_auction_html,
    fairness_section,
    monthly_bills_html,
    storage_html,
)

__all__ = ["render_page"]

#: Rows of the key-figures table: (KPI key, label, unit; "{cur}" is the currency, format).
_KPI_ROWS = (
    ("prosumer_bills_total", "Prosumer bills, total", "{cur}", "money"),
    ("prosumer_bill_mean", "Prosumer bill, mean", "{cur}", "money"),
    ("self_sufficiency", "Self-sufficiency", "%", "fraction"),
    ("pv_self_consumption", "PV self-consumption", "%", "fraction"),
    ("p2p_traded_kwh", "P2P traded energy", "kWh", "energy"),
    ("grid_import_kwh", "Import from the {grid}", "kWh", "energy"),
    ("grid_export_kwh", "Export to the {grid}", "kWh", "energy"),
    ("mean_price_per_kwh", "Mean P2P price", "{cur}/kWh", "price"),
    ("peak_trafo_loading_pct", "Peak transformer loading", "%", "pct"),
    ("max_line_loading_pct", "Peak line loading", "%", "pct"),
    ("vm_min_pu", "Lowest bus voltage", "pu", "pu"),
    ("vm_max_pu", "Highest bus voltage", "pu", "pu"),
    ("losses_kwh", "Network losses", "kWh", "energy"),
    ("violation_rounds", "Rounds with a violation", "rounds", "count"),
    ("violations", "Violations", "count", "count"),
    ("curtailed_kwh", "Curtailed energy", "kWh", "energy"),
    ("shed_kwh", "Shed load", "kWh", "energy"),
    ("network_charges", "Network charges", "{cur}", "money"),
    ("failed_rounds", "Failed rounds", "rounds", "count"),
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1120px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.facts { color: #444; margin: 0.2em 0 1em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { background: #fde2e1; font-weight: bold; }
figure { margin: 1.2em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #333; font-size: 0.95em; margin-top: 0.3em; }
.notes { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; }
.small { color: #666; font-size: 0.85em; }
"""


def _kpi_breach(key: str, value: float, summary: dict) -> bool:
    """True if a KPI value lies beyond a limit of the run (highlighted in the table)."""
    v_min = as_float(summary.get("v_min_pu"))
    v_max = as_float(summary.get("v_max_pu"))
    limit = as_float(summary.get("max_loading_pct"))
    if key == "vm_min_pu" and v_min is not None:
        return value < v_min
    if key == "vm_max_pu" and v_max is not None:
        return value > v_max
    if key in ("peak_trafo_loading_pct", "max_line_loading_pct") and limit is not None:
        return value > limit
    if key in ("violation_rounds", "violations", "shed_kwh", "failed_rounds"):
        return value > 0
    return False


def _market_effect_html(run: Run) -> str:
    """In words: does the P2P market change what happens on the feeder, with and without
    feedback? (Identical physics means the market only moved money.)"""
    variants = run.summary.get("variants") if isinstance(run.summary.get("variants"), dict) else {}
    lines = []
    for p2p, base, what in (("market", "baseline", "with network feedback"),
                            ("market_no_feedback", "baseline_no_feedback", "without network feedback")):
        a, b = variants.get(p2p), variants.get(base)
        if not isinstance(a, dict) or not isinstance(b, dict):
            continue
        differ = same_physics(a, b)
        if not differ:
            lines.append(f"{what.capitalize()}, the physics of the runs with and without P2P is identical "
                         "(losses, loadings, voltages, curtailment, shedding, import and export): the market "
                         "only moves money between the parties.")
        else:
            la, lb = as_float(a.get("losses_kwh")), as_float(b.get("losses_kwh"))
            pa, pb = as_float(a.get("peak_trafo_loading_pct")), as_float(b.get("peak_trafo_loading_pct"))
            detail = ""
            if None not in (la, lb, pa, pb):
                detail = (f" Losses {fmt(la)} kWh with P2P against {fmt(lb)} kWh without; peak transformer "
                          f"loading {fmt(pa)} % against {fmt(pb)} %.")
            lines.append(f"{what.capitalize()}, P2P trading changes the dispatch: the runs differ in "
                         f"{', '.join(differ)}.{detail}")
    nf = variants.get("baseline_no_feedback")
    if isinstance(nf, dict) and as_float(nf.get("violation_rounds")):
        lines.append(f"Without P2P and without feedback, {int(nf['violation_rounds']):,d} rounds violate a limit: "
                     "these come from the PV and the loads, not from the market.")
    if not lines:
        return ""
    return "<p>" + " ".join(html.escape(x) for x in lines) + "</p>"


def _kpi_table(run: Run) -> str:
    summary = run.summary
    variants = summary.get("variants") if isinstance(summary.get("variants"), dict) else {}
    kpis = [
        variants.get(key) if isinstance(variants.get(key), dict) else {} for key, _, _ in VARIANTS
    ]
    known = {row[0] for row in _KPI_ROWS}
    extra = sorted({k for d in kpis for k in d if k not in known})
    rows = list(_KPI_ROWS) + [(k, k, "as recorded", "plain") for k in extra]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, _, label in VARIANTS)
    out = [f"<table class='kpi'><thead><tr><th>Key figure [unit]</th>{head}</tr></thead><tbody>"]
    for key, label, unit, kind in rows:
        label = label.format(grid=run.grid_name)
        unit = unit.format(cur=run.currency)
        cells = []
        for d in kpis:
            value = d.get(key)
            number = as_float(value) if not isinstance(value, bool) else float(value)
            if number is None:
                text = (
                    MISSING
                    if value is None or isinstance(value, (int, float))
                    else html.escape(str(value))
                )
                cells.append(f"<td class='num'>{text}</td>")
                continue
            cls = "num bad" if _kpi_breach(key, number, summary) else "num"
            cells.append(f"<td class='{cls}'>{fmt(number, kind)}</td>")
        out.append(f"<tr><th>{html.escape(label)} [{html.escape(unit)}]</th>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _period_text(run: Run) -> str:
    s = run.summary
    rounds = run.market.rounds
    start = pd.Timestamp(s["start"]) if s.get("start") else rounds["time"].iloc[0]
    end = pd.Timestamp(s["end"]) if s.get("end") else None
    n = int(s.get("rounds") or len(rounds))
    res = run.resolution_min
    res_text = f" of {res:g} min" if math.isfinite(res) else ""
    end_text = f" to {end:%Y-%m-%d %H:%M}" if end is not None else ""
    days = f", {(end - start) / pd.Timedelta(days=1):g} days" if end is not None else ""
    return f"{start:%Y-%m-%d %H:%M}{end_text} ({n:,d} rounds{res_text}{days})"


def _facts_html(run: Run) -> str:
    s = run.summary
    esc = html.escape
    items = [
        ("Network", esc(str(s.get("network", MISSING)))),
        ("Mode", esc(str(s.get("mode", MISSING)))),
        ("Period", esc(_period_text(run))),
        ("Market mechanism", esc(str(s.get("mechanism", MISSING)))),
        ("Prosumers", esc(str(s.get("n_prosumers", MISSING)))),
        (
            "Limits",
            esc(
                f"voltage {fmt(as_float(s.get('v_min_pu')))}–"
                f"{fmt(as_float(s.get('v_max_pu')))} pu, branch loading "
                f"{fmt(as_float(s.get('max_loading_pct')))} %"
            ),
        ),
        ("Currency", esc(run.currency)),
    ]
    rounds = run.market.rounds
    if "status" in rounds.columns:
        bad = rounds.loc[rounds["status"].astype(str) != "ok", "status"].astype(str)
        if bad.empty:
            items.append(("Round status", "all rounds ok"))
        else:
            counts = bad.value_counts()
            reasons = ", ".join(f"{esc(r)}: {c:,d}" for r, c in counts.head(5).items())
            items.append(
                (
                    "Round status",
                    f"<b>{len(bad):,d} {'round' if len(bad) == 1 else 'rounds'} not ok</b> ({reasons})",
                )
            )
    timing = s.get("timing") if isinstance(s.get("timing"), dict) else {}
    if timing:
        items.append(
            (
                "Timing",
                esc(
                    f"median round {fmt(as_float(timing.get('median_round_ms')))} ms "
                    f"(clearing {fmt(as_float(timing.get('median_clear_ms')))} ms, power flow "
                    f"{fmt(as_float(timing.get('median_pf_ms')))} ms), wall time "
                    f"{fmt(as_float(timing.get('wall_s')))} s"
                ),
            )
        )
    if s.get("ledger_head"):
        items.append(("Ledger head", f"<code>{esc(str(s['ledger_head']))}</code>"))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
    return f"<table class='facts'>{rows}</table>"


def _how_to_read(run: Run) -> str:
    s = run.summary
    grid = run.grid_name
    mech = html.escape(str(s.get("mechanism", "")))
    mech_text = f" (mechanism: {mech})" if mech else ""
    tb = run.timebase
    if tb.freq is None:
        agg = "Time series show every round."
    else:
        agg = (
            f"The run has {len(run.market.rounds):,d} rounds, too many to draw one by one: "
            f"time series show one point per {tb.unit} — energies as totals over the "
            f"{tb.unit}, voltages and loadings as the lowest and highest value in it."
        )
    return (
        "<p>This report compares four simulations of the same scenario over the same period: "
        "P2P trading or not, crossed with network feedback or not. "
        f"<b>P2P + feedback</b> is the main run: prosumers trade energy with each other in a "
        f"local market{mech_text}; after every round an AC power flow checks bus voltages and "
        "line and transformer loadings, and any violation is fed back into the market as limits "
        "and network charges until the round is feasible — what still violates is curtailed. "
        "<b>P2P, no feedback</b> is the same market without that feedback: it shows what the "
        "market alone would do to the network. "
        f"<b>No P2P (baseline)</b> has every prosumer trade only with the {grid}, with the same "
        "feedback; <b>No P2P, no feedback</b> shows what the PV and the loads alone do to the "
        "network. Comparing the columns with and without P2P separates the effect of the "
        "market from that of the PV.</p>"
        "<p>Bills are positive when a prosumer pays. Voltages are per unit (pu) of the nominal "
        "voltage; loadings are in % of the rating. Cells shaded red in the table mark a "
        "limit exceeded, a violation, shed load or failed rounds. "
        f"{agg} A dash (–) means the value was not recorded.</p>"
    )


def render_page(run: Run, captions: dict[str, str]) -> str:
    """The report as one self-contained HTML page.

    Draws the fairness figure (`cosim.reporting.report.sections.fairness_section`) on the
    way; the other figures must already be in ``run.run_dir/figures``.

    Parameters
    ----------
    run : Run
        The loaded run folder.
    captions : dict of str to str
        Caption of each figure drawn, in the order of the page
        (`cosim.reporting.report.figures.draw_figures`).

    Returns
    -------
    str
        The page; it refers to the figures by relative path.
    """
    s = run.summary
    esc = html.escape
    scenario = esc(str(s.get("scenario") or run.run_dir.name))
    title = (
        f"{scenario} — {esc(str(s.get('network', '')))}, {esc(str(s.get('mode', '')))}, "
        f"{esc(_period_text(run))}"
    )
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>P2P co-simulation report: {scenario}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>P2P energy trading on the network: {scenario}</h1>",
        f"<p class='facts'>{title}</p>",
        "<h2>How to read this report</h2>",
        _how_to_read(run),
        "<h2>The run</h2>",
        _facts_html(run),
    ]
    if run.notes:
        parts.append(
            "<div class='notes'><b>Notes</b><ul>"
            + "".join(f"<li>{esc(n)}</li>" for n in run.notes)
            + "</ul></div>"
        )
    parts += ["<h2>Key figures</h2>", _market_effect_html(run), _kpi_table(run), storage_html(run),
              battery_auction_html(run), monthly_bills_html(run), fairness_section(run), "<h2>Figures</h2>"]
    for i, (name, caption) in enumerate(captions.items(), start=1):
        heading = FIGURE_TITLES[name].format(grid=run.grid_name)
        parts.append(
            f"<figure id='{name}'><img src='figures/{name}.png' alt='{esc(heading)}'>"
            f"<figcaption><b>Figure {i}. {esc(heading)}.</b> {esc(caption)}</figcaption></figure>"
        )
    parts.append(
        f"<p class='small'>Drawn by cosim.reporting.report from the files in "
        f"{esc(run.run_dir.name)}/.</p></body></html>"
    )
    return "\n".join(parts)

