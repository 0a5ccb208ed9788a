"""The recorder: the only writer of results (with the report).

`RunFolder` writes into a hidden temporary folder beside the destination and moves it
into place only when the run has finished, so an interrupted or failed run never leaves
a half-written results folder. `Recorder` buffers one variant's rounds in preallocated
arrays and lists of small frames and writes them as parquet.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.admission import REJECTION_COLUMNS
from cosim.feedback import ATTRIBUTION_COLUMNS
from cosim.markets import TRADE_COLUMNS
from cosim.settlement import PHYSICAL_COLUMNS, SETTLEMENT_COLUMNS

ROUND_COLUMNS = [
    "round", "time", "iterations", "pf_converged", "cleared_kwh", "price_per_kwh", "grid_import_kwh",
    "grid_export_kwh", "curtailed_kwh", "shed_kwh", "losses_kwh", "vm_min_pu", "vm_max_pu",
    "max_line_loading_pct", "max_trafo_loading_pct", "violations",
]


class RunFolder:
    """A results folder that appears only when complete."""

    def __init__(self, final: Path):
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()

    def commit(self) -> Path:
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        return self.final

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class Recorder:
    """Buffers one variant's results round by round."""

    def __init__(self, n_rounds: int, buses: np.ndarray, lines: np.ndarray, trafos: np.ndarray):
        self.n_rounds = n_rounds
        self.buses, self.lines, self.trafos = buses, lines, trafos
        self.rows: list[dict] = []
        self.bus_p = np.full((n_rounds, len(buses)), np.nan)
        self.bus_q = np.full((n_rounds, len(buses)), np.nan)
        self.bus_vm = np.full((n_rounds, len(buses)), np.nan)
        self.line_loading = np.full((n_rounds, len(lines)), np.nan)
        self.trafo_loading = np.full((n_rounds, len(trafos)), np.nan)
        self.trades: list[pd.DataFrame] = []
        self.settlement: list[pd.DataFrame] = []
        self.attribution: list[pd.DataFrame] = []
        self.rejections: list[pd.DataFrame] = []

    def record(self, row: dict, p_kw, q_kvar, state, trades: pd.DataFrame, settlement: pd.DataFrame,
               attribution: pd.DataFrame | None = None, rejections: pd.DataFrame | None = None) -> None:
        t = row["round"]
        self.rows.append(row)
        self.bus_p[t], self.bus_q[t] = p_kw, q_kvar
        self.bus_vm[t] = state.vm_pu
        self.line_loading[t] = state.line_loading_pct
        self.trafo_loading[t] = state.trafo_loading_pct
        if len(trades):
            self.trades.append(trades.assign(round=t))
        self.settlement.append(settlement)
        if attribution is not None and len(attribution):
            self.attribution.append(attribution)
        if rejections is not None and len(rejections):
            self.rejections.append(rejections)

    # -- tables -------------------------------------------------------------------------
    def rounds_table(self) -> pd.DataFrame:
        table = pd.DataFrame(self.rows)
        first = [c for c in ROUND_COLUMNS if c in table.columns]
        return table[first + [c for c in table.columns if c not in first]]

    def _long(self, values: np.ndarray, ids: np.ndarray, id_name: str, value_name: str) -> pd.DataFrame:
        n_t = len(self.rows)
        return pd.DataFrame(
            {
                "round": np.repeat(np.arange(n_t, dtype=np.int64), len(ids)),
                id_name: np.tile(ids.astype(np.int64), n_t),
                value_name: values[:n_t].ravel(),
            }
        )

    def buses_table(self) -> pd.DataFrame:
        n_t = len(self.rows)
        table = self._long(self.bus_p, self.buses, "bus", "p_kw")
        table["q_kvar"] = self.bus_q[:n_t].ravel()
        table["vm_pu"] = self.bus_vm[:n_t].ravel()
        return table

    def branches_table(self) -> pd.DataFrame:
        lines = self._long(self.line_loading, self.lines, "branch", "loading_pct").assign(kind="line")
        trafos = self._long(self.trafo_loading, self.trafos, "branch", "loading_pct").assign(kind="trafo")
        table = pd.concat([lines, trafos], ignore_index=True)
        return table[["round", "branch", "kind", "loading_pct"]].sort_values(["round", "kind", "branch"], kind="stable")

    def trades_table(self) -> pd.DataFrame:
        cols = ["round", *TRADE_COLUMNS]
        if not self.trades:
            return pd.DataFrame({c: pd.Series(dtype=float if c.endswith("kwh") else object) for c in cols})
        table = pd.concat(self.trades, ignore_index=True)[cols]
        table["seller"] = table.seller.astype(str)
        table["buyer"] = table.buyer.astype(str)
        return table

    def settlement_table(self) -> pd.DataFrame:
        table = pd.concat(self.settlement, ignore_index=True)
        return table[SETTLEMENT_COLUMNS + [c for c in PHYSICAL_COLUMNS if c in table.columns]]

    def attribution_table(self) -> pd.DataFrame:
        if not self.attribution:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in ATTRIBUTION_COLUMNS})
        return pd.concat(self.attribution, ignore_index=True)[ATTRIBUTION_COLUMNS]

    def rejections_table(self) -> pd.DataFrame:
        """Orders the market rejected: round, id, reason, side, quantity_kwh, price_per_kwh, nonce."""
        if not self.rejections:
            types = {"round": "int64", "nonce": "int64", "quantity_kwh": float, "price_per_kwh": float}
            return pd.DataFrame({c: pd.Series(dtype=types.get(c, object)) for c in REJECTION_COLUMNS})
        return pd.concat(self.rejections, ignore_index=True)[REJECTION_COLUMNS]

    def write(self, folder: Path, with_attribution: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.rounds_table().to_parquet(folder / "rounds.parquet", index=False)
        self.buses_table().to_parquet(folder / "buses.parquet", index=False)
        self.branches_table().to_parquet(folder / "branches.parquet", index=False)
        self.trades_table().to_parquet(folder / "trades.parquet", index=False)
        self.settlement_table().to_parquet(folder / "settlement.parquet", index=False)
        self.rejections_table().to_parquet(folder / "rejections.parquet", index=False)
        if with_attribution:
            self.attribution_table().to_parquet(folder / "attribution.parquet", index=False)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
