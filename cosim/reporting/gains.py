"""Who gains from P2P and who loses, and why: each prosumer's bill against the no-P2P
baseline of the same run, split into its parts.

A prosumer's bill is the sum of its energy cost (P2P and grid), its network charges, its
membership fees and its storage rent (`cosim.sim.settlement`). The change of each part
between the baseline (every prosumer trades only with the grid) and the market tells why
a prosumer gains or loses: a worse price for its energy, a larger network charge (the
charges follow the physics, so this part moves only when the dispatch does: curtailment,
price-responsive batteries), or a fee. `cosim compare` shows the totals per mechanism and
lists every prosumer worse off with the part that made it so.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

#: The parts of a prosumer's bill: (settlement column, label).
PARTS = (
    ("energy_cost", "energy"),
    ("network_charges", "network charges"),
    ("membership_fees", "fees"),
    ("storage_rent", "storage rent"),
    ("flexibility_payments", "flexibility payments"),
)
#: Energy flows whose change explains the energy part: (settlement column, what more of it means).
VOLUMES = (
    ("grid_import_kwh", "from the grid"),
    ("bought_kwh", "bought P2P"),
    ("sold_kwh", "sold P2P"),
    ("grid_export_kwh", "to the grid"),
    ("curtailed_kwh", "curtailed"),
)
#: Amounts below this are rounding noise [currency].
MONEY_EPS = 1e-6
#: Worse-off prosumers listed per mechanism on the comparison page (the rest are counted).
LISTED = 15


def _parts(settlement: Path) -> pd.DataFrame:
    """The parts of each prosumer's bills over the run [currency] (a part the run has no
    column for is zero)."""
    table = pd.read_parquet(settlement)
    prosumers = table[table.bus >= 0]
    columns = ["party", *(c for c, _ in PARTS), *(c for c, _ in VOLUMES)]
    return prosumers.reindex(columns=columns, fill_value=0.0).groupby("party").sum()


def gains(run_dir: str | Path) -> pd.DataFrame | None:
    """Each prosumer's gain from the market against the run's no-P2P baseline, by part of
    its bill [currency] (positive = the market made it cheaper), with ``total`` and, for
    those worse off, ``reason``: the part that cost it most. None without the baseline.

    Columns: one per `PARTS` label, ``total``, ``reason``; index: the prosumers.
    """
    run_dir = Path(run_dir)
    base_file, market_file = run_dir / "baseline" / "settlement.parquet", run_dir / "settlement.parquet"
    if not (base_file.is_file() and market_file.is_file()):
        return None
    base, market = _parts(base_file), _parts(market_file)
    market = market.reindex(base.index, fill_value=0.0)
    diff = pd.DataFrame({label: base[c] - market[c] for c, label in PARTS})
    diff["total"] = diff.sum(axis=1)
    more_kwh = market[[c for c, _ in VOLUMES]] - base[[c for c, _ in VOLUMES]]
    diff["reason"] = [_reason(diff.loc[p], more_kwh.loc[p]) if diff.at[p, "total"] < -MONEY_EPS else ""
                      for p in diff.index]
    return diff.sort_values("total")


def _reason(row: pd.Series, more_kwh: pd.Series) -> str:
    """The part that cost the prosumer most, against what the others gave back; for the
    energy part, the two flows that changed most (``more_kwh``: market minus baseline [kWh])."""
    parts = row[[label for _, label in PARTS]]
    worst = parts.idxmin()
    text = f"{worst} {parts[worst]:+.2f}"
    if worst == "energy":
        names = dict(VOLUMES)
        top = more_kwh.abs().sort_values(ascending=False).index[:2]
        flows = [f"{abs(more_kwh[c]):.1f} kWh {'more' if more_kwh[c] > 0 else 'less'} {names[c]}"
                 for c in top if abs(more_kwh[c]) >= 0.05]
        text += f": {', '.join(flows)}" if flows else ""
    rest = [f"{label} {parts[label]:+.2f}" for label in parts.index if label != worst and abs(parts[label]) > 0.005]
    return text + (f" (against {', '.join(rest)})" if rest else "")


def gains_section(labels: list[str], tables: list[pd.DataFrame | None], cur: str) -> str:
    """HTML of the comparison's section on winners and losers: totals by part per run,
    then every run's worse-off prosumers with the reason."""
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)

    def row(label: str, fn) -> str:
        cells = "".join(f"<td>{'–' if t is None else fn(t)}</td>" for t in tables)
        return f"<tr><td>{html.escape(label)}</td>{cells}</tr>"

    rows = [
        row("prosumers better off [-]", lambda t: f"{int((t.total > MONEY_EPS).sum())}"),
        row("prosumers worse off [-]", lambda t: f"{int((t.total < -MONEY_EPS).sum())}"),
        *(row(f"gain from {label} [{cur}]", lambda t, label=label: f"{t[label].sum():,.2f}") for _, label in PARTS),
        row(f"gain in all [{cur}]", lambda t: f"{t.total.sum():,.2f}"),
    ]
    out = [
        "<h2 id=\"gains\">Who gains and who loses, and why</h2>",
        "<p>Each prosumer's bill with the market against the same run's baseline without P2P, by part: "
        "a positive amount is a gain. Network charges follow each prosumer's physical injection at its bus "
        "whatever the counterparty, so their part moves only where the dispatch moved.</p>",
        f"<table><tr><th>by part of the bill</th>{head}</tr>{''.join(rows)}</table>",
    ]
    for label, t in zip(labels, tables, strict=True):
        if t is None:
            continue
        losers = t[t.total < -MONEY_EPS]
        if losers.empty:
            continue
        cols = [lbl for _, lbl in PARTS]
        body = "".join(
            f"<tr><td>{html.escape(str(p))}</td><td>{r.total:,.2f}</td>"
            + "".join(f"<td>{r[c]:,.2f}</td>" for c in cols)
            + f"<td>{html.escape(r.reason)}</td></tr>"
            for p, r in losers.head(LISTED).iterrows()
        )
        more = f"<p>and {len(losers) - LISTED} more.</p>" if len(losers) > LISTED else ""
        out.append(
            f"<h3>Worse off under {html.escape(label)}</h3><table><tr><th>prosumer</th><th>gain [{cur}]</th>"
            + "".join(f"<th>{html.escape(c)} [{cur}]</th>" for c in cols)
            + f"<th>why [{cur}]</th></tr>{body}</table>{more}"
        )
    return "\n".join(out)
