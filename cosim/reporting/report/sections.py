"""The optional sections of the report page: the flexible assets' key figures, the
battery auction's days, and who carried the curtailment and the shedding (fairness)."""

from __future__ import annotations

import html

import pandas as pd

from cosim.reporting.fairness import (
    FAIRNESS_PROSUMER_COLUMNS,
    FAIRNESS_SETTLEMENT_COLUMNS,
    fairness_figures,
    per_prosumer,
)
from cosim.reporting.report.figures.fairness import FAIRNESS_FIGURE, draw_fairness
from cosim.reporting.report.load import VARIANTS, Run, curtailment_rule, read_table
from cosim.reporting.report.numbers import MISSING, as_float, fmt

__all__ = ["storage_html", "battery_auction_html", "fairness_section", "monthly_bills_html"]

#: Rows of the flexible-assets table: (summary.json storage key, label, unit, format).
_STORAGE_ROWS = (
    ("battery_charged_kwh", "Home batteries charged", "kWh", "energy"),
    ("battery_discharged_kwh", "Home batteries discharged", "kWh", "energy"),
    ("ev_charged_kwh", "EVs charged", "kWh", "energy"),
    ("ev_discharged_kwh", "EVs discharged (vehicle-to-grid)", "kWh", "energy"),
    ("shiftable_kwh", "Shiftable loads", "kWh", "energy"),
    ("storage_losses_kwh", "Conversion losses", "kWh", "energy"),
    ("ev_sessions_ended", "EV sessions ended in the run", "count", "count"),
    ("ev_sessions_served", "EV sessions served by departure", "count", "count"),
    ("ev_infeasible_requests", "EV requests no charger could meet", "count", "count"),
    ("ev_shortfall_kwh", "Energy EVs missed at departure", "kWh", "energy"),
    ("dayahead_solves", "Day-ahead schedules solved", "count", "count"),
    ("dayahead_failed", "Day-ahead schedules failed", "count", "count"),
    ("dayahead_iterations_max", "Most decomposition iterations in a day", "count", "count"),
    ("dayahead_bound_gap_max", "Largest certified gap to the central optimum", "share", "plain"),
)


def storage_html(run: Run) -> str:
    """The flexible assets' key figures (summary.json ``storage``), if the run has any."""
    data = run.summary.get("storage")
    if not isinstance(data, dict) or not data:
        return ""
    rows = []
    for key, label, unit, kind in _STORAGE_ROWS:
        value = as_float(data.get(key))
        if value is None:
            continue
        bad = key in ("ev_infeasible_requests", "ev_shortfall_kwh", "dayahead_failed") and value > 0
        cls = "num bad" if bad else "num"
        rows.append(f"<tr><th>{html.escape(label)} [{unit}]</th><td class='{cls}'>{fmt(value, kind)}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Flexible assets</h2><p>Main run (P2P + feedback); EVs still plugged in when the run ends "
            "are counted with what they had received by then.</p><table class='kpi'><tbody>"
            + "".join(rows) + "</tbody></table>")


def battery_auction_html(run: Run) -> str:
    """The battery auction's days (battery_auction.parquet, `cosim.flex.battery_auction.AUCTION_COLUMNS`),
    if the run has them: per day, who shared and who won how much capacity, at what price,
    for what rent; and the biggest winners of the run."""
    path = run.run_dir / "battery_auction.parquet"
    if not path.is_file():
        return ""
    days = pd.read_parquet(path)
    if days.empty:
        return ""
    esc = html.escape
    cur = esc(run.currency)
    rows = []
    for day, d in days.groupby("day", sort=True):
        owners, facilities = d[d.role == "owner"], d[d.role == "facility"]
        sharing, winners = owners[owners.quantity_kwh > 0], facilities[facilities.quantity_kwh > 0]
        price = d.price_per_kwh.iloc[0]
        rows.append(
            f"<tr><td>{int(day)}</td><td>{esc(str(pd.Timestamp(d.time.iloc[0])))}</td>"
            f"<td class='num'>{d.hours.iloc[0]:g}</td>"
            f"<td class='num'>{len(sharing)} of {len(owners)}</td><td class='num'>{len(winners)} of {len(facilities)}</td>"
            f"<td class='num'>{owners.offered_kwh.sum():,.1f}</td><td class='num'>{facilities.offered_kwh.sum():,.1f}</td>"
            f"<td class='num'>{sharing.quantity_kwh.sum():,.2f}</td>"
            f"<td class='num'>{'–' if pd.isna(price) else f'{price:.4f}'}</td>"
            f"<td class='num'>{winners.payment.sum():,.2f}</td></tr>"
        )
    won = days[(days.role == "facility") & (days.quantity_kwh > 0)].groupby("id").agg(
        kwh=("quantity_kwh", "sum"), rent=("payment", "sum")).sort_values("kwh", ascending=False).head(5)
    top = ", ".join(f"{esc(str(i))} {r.kwh:.2f} kWh for {r.rent:.2f}" for i, r in won.iterrows())
    return (
        "<h2>Battery auction</h2><p>Main run (P2P + feedback). Each day the households with a battery offer "
        "the empty part of it and the PV owners without one bid for slices of it (cosim.flex.battery_auction, "
        f"after Tushar et al. 2016); winners pay the rent [{cur}] in the day's first round. Capacities in kWh, "
        f"prices in {cur}/kWh of capacity for the day.</p>"
        "<table class='kpi'><thead><tr><th>Day</th><th>Start</th><th>Hours</th><th>Owners sharing</th>"
        "<th>Winners</th><th>Offered</th><th>Asked</th><th>Shared</th><th>Price</th><th>Rent</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
        + (f"<p>Largest winners of the run: {top}. Every party's row is in battery_auction.parquet.</p>" if top else "")
    )


#: Settlement parties that are not members of a community tariff.
_NOT_MEMBERS = ("grid", "grid_forming", "dso", "market_operator")
#: Columns of the members' monthly bills table: (monthly_bills.parquet column, heading, format).
_MONTHLY_COLUMNS = (
    ("membership_fees", "Fee", "{:,.2f}"),
    ("community_kwh", "Bought [kWh]", "{:,.1f}"),
    ("allowance_used_kwh", "Free [kWh]", "{:,.1f}"),
    ("charged_kwh", "Charged [kWh]", "{:,.1f}"),
    ("sold_kwh", "Sold [kWh]", "{:,.1f}"),
    ("energy_cost", "Energy", "{:,.2f}"),
    ("pool_revenue_share", "Pool share", "{:,.2f}"),
    ("network_charges", "Network charges", "{:,.2f}"),
    ("bill", "Bill", "{:,.2f}"),
)


def monthly_bills_html(run: Run) -> str:
    """A community tariff's bills per member and billing month (monthly_bills.parquet,
    `cosim.markets.community_tariff.MONTHLY_BILL_COLUMNS`), if the run has them: one summary
    row per month, then every member's row."""
    path = run.run_dir / "monthly_bills.parquet"
    if not path.is_file():
        return ""
    bills = pd.read_parquet(path)
    members = bills[~bills.party.isin(_NOT_MEMBERS)]
    if members.empty:
        return ""
    esc = html.escape
    cur = esc(run.currency)
    operator = bills[bills.party == "market_operator"].set_index("month").bill
    summary = []
    for month, m in members.groupby("month", sort=True):
        summary.append(
            f"<tr><td>{int(month) + 1}</td><td class='num'>{int(m.rounds.max())}</td><td class='num'>{len(m)}</td>"
            f"<td class='num'>{m.membership_fees.sum():,.2f}</td><td class='num'>{m.allowance_used_kwh.sum():,.1f}</td>"
            f"<td class='num'>{m.charged_kwh.sum():,.1f}</td><td class='num'>{-m.pool_revenue_share.sum():,.2f}</td>"
            f"<td class='num'>{m.bill.mean():,.2f}</td><td class='num'>{m.bill.min():,.2f}</td>"
            f"<td class='num'>{m.bill.max():,.2f}</td><td class='num'>{-operator.get(month, 0.0):,.2f}</td></tr>")
    head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in _MONTHLY_COLUMNS)
    rows = []
    for _, row in members.sort_values(["month", "party"]).iterrows():
        cells = "".join(f"<td class='num'>{f.format(row[c])}</td>" for c, _, f in _MONTHLY_COLUMNS)
        rows.append(f"<tr><td>{int(row.month) + 1}</td><td>{esc(str(row.party))}</td>{cells}</tr>")
    return (
        "<h2>Monthly bills (community tariff)</h2><p>Main run (P2P + feedback). Billing months count from the "
        "run's start; a month the run covers only in part has its fee and free allowance prorated. Amounts in "
        f"{cur}, positive = the member pays; the pool share is the members' part of the virtual battery pool's "
        "revenue (cosim.markets.community_tariff). Every party's row is in monthly_bills.parquet.</p>"
        "<table class='kpi'><thead><tr><th>Month</th><th>Rounds</th><th>Members</th><th>Fees</th>"
        "<th>Free energy used [kWh]</th><th>Charged energy [kWh]</th><th>Pool revenue shared</th>"
        "<th>Mean bill</th><th>Lowest bill</th><th>Highest bill</th><th>Operator surplus</th></tr></thead><tbody>"
        + "".join(summary) + "</tbody></table>"
        f"<details><summary>Every member's bill per month ({len(members)} rows)</summary>"
        f"<table class='kpi'><thead><tr><th>Month</th><th>Member</th>{head}</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></details>"
    )


#: Rows of the fairness table: (key of `cosim.reporting.fairness.fairness_figures`, label, unit, format);
#: "{u}" is the unit of the normalised values.
_FAIRNESS_ROWS = (
    ("total_kwh", "Energy", "kWh", "energy"),
    ("affected", "Prosumers affected, of {n}", "count", "count"),
    ("mean", "Mean per prosumer", "{u}", "3f"),
    ("max", "Largest per prosumer", "{u}", "3f"),
    ("jain_index", "Jain's index (1 = equal)", "-", "3f"),
    ("gini", "Gini coefficient (0 = equal)", "-", "3f"),
    ("largest_share", "Largest share of the energy", "%", "fraction"),
)


def _fairness_tables(run: Run, problems: list[str]) -> dict[str, pd.DataFrame]:
    """Per variant with a settlement that has the needed columns: `cosim.reporting.fairness.per_prosumer`.
    Tables without them go to ``problems``; none at all without prosumers.parquet."""
    path = run.run_dir / "prosumers.parquet"
    if not path.is_file():
        return {}
    prosumers = read_table(path, FAIRNESS_PROSUMER_COLUMNS, (), problems)
    out: dict[str, pd.DataFrame] = {}
    for key, sub, _ in VARIANTS:
        if key not in run.variants:
            continue
        folder = run.run_dir if sub is None else run.run_dir / sub
        settlement_path = folder / "settlement.parquet"
        if prosumers is None or not settlement_path.is_file():
            continue
        settlement = read_table(settlement_path, FAIRNESS_SETTLEMENT_COLUMNS, (), problems)
        if settlement is not None:
            out[key] = per_prosumer(settlement, prosumers)
    return out


def fairness_section(run: Run) -> str:
    """Who carried the curtailment and the shedding: a table of `cosim.reporting.fairness` figures per
    variant and a figure (figures/fairness.png, drawn here). Empty when the run folder
    lacks prosumers.parquet or the settlement's load column; a sentence when nothing was
    curtailed or shed."""
    problems: list[str] = []
    tables = _fairness_tables(run, problems)
    fig_path = run.run_dir / "figures" / f"{FAIRNESS_FIGURE}.png"
    if not tables:
        fig_path.unlink(missing_ok=True)
        if problems:
            return ("<h2>Fairness of curtailment and shedding</h2><p>Left out: "
                    + html.escape("; ".join(problems)) + ".</p>")
        return ""
    labels = {key: label for key, _, label in VARIANTS}
    figures = {
        key: {
            "curtailment": fairness_figures(t["curtailed_kwh"], t["curtailed_kwh_per_kwp"].dropna()),
            "shedding": fairness_figures(t["shed_kwh"], t["shed_kwh_per_kwh_load"].dropna()),
        }
        for key, t in tables.items()
    }
    rule = curtailment_rule(run.run_dir)
    rule_text = f" under the curtailment rule <code>{html.escape(rule)}</code>" if rule else ""
    head = (
        "<h2>Fairness of curtailment and shedding</h2>"
        f"<p>Who carried the curtailed PV and the shed load{rule_text}. Curtailment is compared "
        "per kWp of PV over every PV owner, shedding per kWh of load over every prosumer with load, "
        "curtailed (shed) or not. Jain's index (Jain, Chiu and Hawe 1984) is 1 when all carry the "
        "same and 1/n when one carries everything; the Gini coefficient is 0 when all carry the "
        "same and 1 − 1/n when one does; the largest share is the largest single prosumer's part of "
        "the energy.</p>"
    )
    parts = [head]
    drew_any = False
    for part, unit in (("curtailment", "kWh/kWp"), ("shedding", "kWh/kWh of load")):
        keys = [k for k in figures if figures[k][part]["total_kwh"] > 0]
        if not keys:
            parts.append(f"<p>No variant had any {part}.</p>")
            continue
        drew_any = True
        title = "Curtailed PV" if part == "curtailment" else "Shed load"
        cols = "".join(f"<th>{html.escape(labels[k])}</th>" for k in keys)
        rows = [f"<table class='kpi'><thead><tr><th>{title} [unit]</th>{cols}</tr></thead><tbody>"]
        for key, label, row_unit, kind in _FAIRNESS_ROWS:
            n = figures[keys[0]][part]["population"]
            cells = []
            for k in keys:
                value = figures[k][part][key]
                if value is None:
                    text = MISSING
                else:
                    text = f"{float(value):.3f}" if kind == "3f" else fmt(float(value), kind)
                if key == "largest_share" and figures[k][part]["largest_party"]:
                    text += f" ({html.escape(figures[k][part]['largest_party'])})"
                cells.append(f"<td class='num'>{text}</td>")
            name = html.escape(label.format(n=n))
            rows.append(f"<tr><th>{name} [{html.escape(row_unit.format(u=unit))}]</th>{''.join(cells)}</tr>")
        rows.append("</tbody></table>")
        parts.append("".join(rows))
    if not drew_any:
        fig_path.unlink(missing_ok=True)
        return "".join(parts)
    shed = any(figures[k]["shedding"]["total_kwh"] > 0 for k in figures)
    draw_fairness(tables, labels, fig_path, shed)
    parts.append(
        f"<figure id='{FAIRNESS_FIGURE}'><img src='figures/{FAIRNESS_FIGURE}.png' "
        "alt='Curtailment per kWp per PV owner, sorted'><figcaption><b>Curtailment per kWp of PV "
        "per PV owner, most curtailed first.</b> Bars: the main run; lines: the other variants that "
        "curtailed. A flat profile is an equal share; a few tall bars mean a few owners carry it."
        + (" The lower panel shows the shed load per kWh of each prosumer's load." if shed else "")
        + "</figcaption></figure>"
    )
    return "".join(parts)


