"""Figures of the market: price and volume, bills, who sold to whom, network charges.

Each ``_fig_<name>`` draws ``figures/<name>.png`` and returns its caption; `DRAW` names them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cosim.reporting.report.aggregate import price_series, totals
from cosim.reporting.report.figures.common import (
    COLOURS,
    FIG_WIDTH_IN,
    bar_ticks,
    date_axis,
    finite,
    legend_below,
    placeholder,
    save,
    sparse_ticks,
    subplots,
    time_axis,
)
from cosim.reporting.report.load import GRID_PARTIES, NON_PROSUMERS, Run, Variant

__all__ = ["DRAW"]


def _fig_price_volume(run: Run, path: pathlib.Path) -> str:
    rounds, tb, cur = run.market.rounds, run.timebase, run.currency
    fig, (ax_p, ax_v) = subplots(2, 6.0)
    mean, lo, hi = price_series(rounds, tb)
    colour = COLOURS["market"]
    if finite(mean).size:
        if tb.freq is not None:
            ax_p.fill_between(
                lo.index,
                lo.to_numpy(float),
                hi.to_numpy(float),
                color=colour,
                alpha=0.2,
                lw=0,
                label=f"range of round prices in the {tb.unit}",
            )
            label = f"volume-weighted mean price per {tb.unit}"
        else:
            label = "clearing price"
        ax_p.plot(
            mean.index, mean.to_numpy(float), color=colour, lw=1, marker=".", ms=2.5, label=label
        )
    else:
        ax_p.text(
            0.5,
            0.5,
            "no clearing price: nothing was cleared in this run",
            ha="center",
            va="center",
            transform=ax_p.transAxes,
        )
    ax_p.set_ylabel(f"P2P price [{cur}/kWh]")
    ax_p.set_title("P2P clearing price and traded volume (P2P + feedback)")
    ax_p.grid(alpha=0.3)

    vol = totals(rounds, ["cleared_kwh"], tb)["cleared_kwh"]
    ax_v.fill_between(
        vol.index,
        vol.to_numpy(float),
        0.0,
        color="tab:green",
        alpha=0.5,
        lw=0.6,
        step="post" if tb.freq is None else None,
    )
    ax_v.set_ylabel(f"P2P traded [{run.energy_unit()}]")
    ax_v.set_ylim(bottom=0)
    ax_v.grid(alpha=0.3)
    time_axis(ax_v, run)
    legend_below(fig, [ax_p, ax_v])
    save(fig, path)

    total = float(np.nansum(rounds["cleared_kwh"]))
    n_cleared = int((rounds["cleared_kwh"].fillna(0) > 0).sum())
    prices = finite(rounds["price_per_kwh"].where(rounds["cleared_kwh"].fillna(0) > 0))
    price_text = (
        f"prices ranged from {prices.min():.4f} to {prices.max():.4f} {cur}/kWh"
        if prices.size
        else "no price was set"
    )
    return (
        f"The market cleared {total:,.1f} kWh in {n_cleared:,d} of {len(rounds):,d} "
        f"rounds; {price_text}."
    )


def _prosumer_bills(v: Variant | None) -> pd.Series | None:
    if v is None or v.bills is None:
        return None
    b = v.bills
    keep = (b["bus"] >= 0) & ~b.index.isin(list(NON_PROSUMERS))
    return b.loc[keep, "bill"]


def _fig_bills(run: Run, path: pathlib.Path) -> str:
    cur = run.currency
    market = _prosumer_bills(run.variants.get("market"))
    base = _prosumer_bills(run.variants.get("baseline"))
    if market is None or market.empty:
        placeholder(path, "Prosumer bills", "no prosumer settlement recorded")
        return "No prosumer settlement was recorded, so no bills can be shown."
    if base is None or base.empty:
        fig, (ax,) = subplots(1, 4.0)
        s = market.sort_values()
        x = np.arange(len(s))
        ax.bar(x, s.to_numpy(float), color=np.where(s < 0, "tab:green", "tab:blue"), width=0.85)
        bar_ticks(ax, s.index)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xlabel("prosumers, sorted by bill [–]")
        ax.set_ylabel(f"bill over the run [{cur}]")
        ax.set_title("Each prosumer's bill with P2P + feedback (positive = pays)")
        ax.grid(alpha=0.3, axis="y")
        save(fig, path)
        return (
            f"Bills of the {len(s)} prosumers over the run, sorted; no baseline was "
            "recorded to compare with."
        )

    both = pd.DataFrame({"market": market, "baseline": base}).dropna()
    fig, (ax_s, ax_d) = plt.subplots(
        1,
        2,
        figsize=(FIG_WIDTH_IN, 4.6),
        layout="constrained",
        gridspec_kw={"width_ratios": [1, 1.6]},
    )
    ax_s.scatter(
        both["baseline"],
        both["market"],
        s=14,
        color=COLOURS["market"],
        alpha=0.8,
        edgecolors="none",
    )
    vals = finite(both.to_numpy().ravel())
    if vals.size:
        lo, hi = vals.min(), vals.max()
        pad = 0.05 * (hi - lo or 1.0)
        ax_s.plot(
            [lo - pad, hi + pad],
            [lo - pad, hi + pad],
            color="black",
            ls="--",
            lw=0.8,
            label="same bill (y = x)",
        )
        ax_s.legend(loc="upper left", fontsize="small")
    ax_s.set_xlabel(f"bill without P2P (baseline) [{cur}]")
    ax_s.set_ylabel(f"bill with P2P + feedback [{cur}]")
    ax_s.set_title("Bill per prosumer (below the line: saves)", fontsize="medium")
    ax_s.grid(alpha=0.3)

    diff = (both["market"] - both["baseline"]).sort_values()
    x = np.arange(len(diff))
    ax_d.bar(x, diff.to_numpy(float), width=0.85, color=np.where(diff < 0, "tab:green", "tab:red"))
    bar_ticks(ax_d, diff.index)
    ax_d.axhline(0.0, color="black", lw=0.6)
    ax_d.set_xlabel("prosumers, sorted by change [–]")
    ax_d.set_ylabel(f"bill change, P2P − baseline [{cur}]")
    ax_d.set_title("Change of bill (green: pays less with P2P)", fontsize="medium")
    ax_d.grid(alpha=0.3, axis="y")
    save(fig, path)
    n_save = int((diff < 0).sum())
    return (
        f"{n_save} of {len(diff)} prosumers pay less with P2P + feedback than without P2P; "
        f"together their bills change by {diff.sum():+,.2f} {cur} "
        f"(median {diff.median():+,.2f} {cur} per prosumer)."
    )


def _fig_trade_matrix(run: Run, path: pathlib.Path) -> str:
    m = run.market
    pairs = m.pair_kwh
    if pairs is None:
        placeholder(path, "Who sold to whom", "trades.parquet was not recorded")
        return "The trades of the run were not recorded."
    pairs = pairs[pairs["energy_kwh"].fillna(0) > 0]
    from_grid = float(pairs.loc[pairs["seller"].isin(list(GRID_PARTIES)), "energy_kwh"].sum())
    to_grid = float(pairs.loc[pairs["buyer"].isin(list(GRID_PARTIES)), "energy_kwh"].sum())
    grid_text = (
        f"In trades with the {run.grid_name}, prosumers bought {from_grid:,.1f} kWh "
        f"and sold {to_grid:,.1f} kWh (not in the matrix)."
    )
    p2p = pairs[
        ~pairs["seller"].isin(list(NON_PROSUMERS)) & ~pairs["buyer"].isin(list(NON_PROSUMERS))
    ]
    if p2p.empty:
        placeholder(
            path,
            "Who sold to whom (P2P + feedback)",
            "no energy was traded between prosumers in this run",
        )
        return f"No energy was traded between prosumers in this run. {grid_text}"

    # order the prosumers by bus, so that neighbours in the network are neighbours here
    bills = m.bills
    known = (
        bills.loc[(bills["bus"] >= 0) & ~bills.index.isin(list(NON_PROSUMERS)), "bus"]
        if bills is not None
        else pd.Series(dtype=float)
    )
    names = set(known.index) | set(p2p["seller"]) | set(p2p["buyer"])
    order = sorted(names, key=lambda n: (known.get(n, np.inf), n))
    matrix = p2p.pivot_table(
        index="seller", columns="buyer", values="energy_kwh", aggfunc="sum", fill_value=0.0
    ).reindex(index=order, columns=order, fill_value=0.0)
    n = len(order)
    side = min(9.0, max(5.0, 3.0 + 0.05 * n))
    fig, ax = plt.subplots(figsize=(side + 1.5, side), layout="constrained")
    data = np.ma.masked_less_equal(matrix.to_numpy(float), 0.0)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#f2f2f2")
    im = ax.imshow(data, cmap=cmap, interpolation="nearest", aspect="equal")
    ticks = sparse_ticks(n)
    labels = [order[i] for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90, fontsize="x-small")
    ax.set_yticks(ticks, labels, fontsize="x-small")
    ax.set_xlabel("buyer (prosumer id, ordered by bus) [–]")
    ax.set_ylabel("seller (prosumer id, ordered by bus) [–]")
    ax.set_title(
        "Who sold to whom over the run (P2P + feedback; grey: no trade)", fontsize="medium"
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="energy sold over the run [kWh]")
    save(fig, path)
    total = float(p2p["energy_kwh"].sum())
    top = p2p.sort_values("energy_kwh").iloc[-1]
    return (
        f"{total:,.1f} kWh were traded between {p2p['seller'].nunique()} selling and "
        f"{p2p['buyer'].nunique()} buying prosumers, the largest pair being "
        f"{top['seller']} → {top['buyer']} "
        f"({top['energy_kwh']:,.1f} kWh). {grid_text}"
    )

def _dso_per_round(run: Run) -> pd.Series | None:
    """Network charges collected per round [currency], indexed by time."""
    rounds = run.market.rounds
    if "network_charges" in rounds.columns:
        return pd.Series(rounds["network_charges"].to_numpy(float), index=rounds["time"])
    dso = run.market.dso_charges
    if dso is None:
        return None
    per_round = dso.reindex(rounds["round"]).fillna(0.0).to_numpy(float)
    return pd.Series(per_round, index=rounds["time"])


def _fig_network_charges(run: Run, path: pathlib.Path) -> str:
    cur = run.currency
    charges = _dso_per_round(run)
    if charges is None:
        placeholder(path, "Network charges", "network charges were not recorded")
        return "Network charges were not recorded in this run."
    span = charges.index.max() - charges.index.min()
    fig, (ax,) = subplots(1, 4.0)
    if span >= pd.Timedelta(days=2):
        daily = charges.groupby(charges.index.floor("1D")).sum(min_count=1)
        if len(daily) <= 60:
            ax.bar(
                daily.index,
                daily.to_numpy(float),
                width=0.8,
                align="edge",
                color="tab:purple",
                alpha=0.7,
                label="collected per day",
            )
        else:  # bars would merge: draw the daily values as a filled step line
            edges = daily.index.append(pd.DatetimeIndex([daily.index[-1] + pd.Timedelta(days=1)]))
            values = np.r_[daily.to_numpy(float), daily.to_numpy(float)[-1:]]
            ax.fill_between(
                edges,
                values,
                0.0,
                step="post",
                color="tab:purple",
                alpha=0.7,
                lw=0,
                label="collected per day",
            )
        ax.set_ylabel(f"network charges [{cur} per day]")
        per = "day"
    else:
        ax.plot(
            charges.index,
            charges.to_numpy(float),
            color="tab:purple",
            lw=1.0,
            label="collected per round",
        )
        ax.set_ylabel(f"network charges [{cur} per round]")
        per = "round"
    ax.set_ylim(bottom=min(0.0, float(np.nanmin(charges.to_numpy(float)) if len(charges) else 0.0)))
    ax2 = ax.twinx()
    ax2.plot(
        charges.index,
        np.nancumsum(charges.to_numpy(float)),
        color="black",
        lw=1.2,
        label="cumulative",
    )
    ax2.set_ylabel(f"cumulative network charges [{cur}]")
    ax2.set_ylim(bottom=0)
    ax.set_title("Network charges collected by the DSO (P2P + feedback)")
    ax.grid(alpha=0.3)
    date_axis(ax, f"time [date; one value per {per}]")
    legend_below(fig, [ax, ax2])
    save(fig, path)
    total = float(np.nansum(charges.to_numpy(float)))
    n = int((charges.fillna(0) != 0).sum())
    return (
        f"The DSO collected {total:,.2f} {cur} of network charges, in {n:,d} of "
        f"{len(charges):,d} rounds."
    )


#: The market figures by name.
DRAW: dict[str, Callable[[Run, pathlib.Path], str]] = {
    "price_volume": _fig_price_volume,
    "bills": _fig_bills,
    "trade_matrix": _fig_trade_matrix,
    "network_charges": _fig_network_charges,
}
