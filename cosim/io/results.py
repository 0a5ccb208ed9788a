"""The recorder: the only writer of results (with the report).

`RunFolder` writes into a hidden temporary folder beside the destination and moves it
into place only when the run has finished, so an interrupted or failed run never leaves
a half-written results folder. `Recorder` buffers one variant's rounds in preallocated
arrays and streams them to parquet a chunk of rounds at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.flex.assets import STORAGE_COLUMNS
from cosim.markets import TRADE_COLUMNS
from cosim.sim.feedback import ATTRIBUTION_COLUMNS
from cosim.sim.settlement import NUMERIC_COLUMNS, settlement_frame
from cosim.virtual.admission import REJECTION_COLUMNS

ROUND_COLUMNS = [
    "round", "time", "iterations", "pf_converged", "cleared_kwh", "price_per_kwh", "grid_import_kwh",
    "grid_export_kwh", "curtailed_kwh", "shed_kwh", "losses_kwh", "vm_min_pu", "vm_max_pu",
    "max_line_loading_pct", "max_trafo_loading_pct", "violations",
]


class RunFolder:
    """A results folder that appears only when complete.

    The run writes into a hidden partial folder beside the destination
    (``.<name>.partial``), moved into place by `commit`. `abandon` deletes it; an
    interrupted run keeps it (`keep_for_resume`) so that ``cosim run --resume`` can carry
    on from its checkpoint. Without `resume`, a partial folder left by an earlier run is
    deleted first.
    """

    def __init__(self, final: Path, resume: bool = False):
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.parent / f".{self.final.name}.partial"
        if not resume:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(exist_ok=resume)

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

    def keep_for_resume(self) -> None:
        """Leave the partial folder and its checkpoint in place (an interrupted run)."""


class Recorder:
    """Buffers one variant's rounds and streams them to parquet, a chunk at a time.

    Every `chunk_rounds` rounds (default a week at 15 min) the buffer is written to part
    files ``<folder>/.parts/<table>/<chunk>.parquet`` and emptied, so memory stays flat over
    a year. `finish` merges each table's parts, one at a time, into ``<folder>/<table>.parquet``
    (one row group per chunk) and removes the parts. A checkpoint taken after `flush` can
    resume a run from the next chunk (`cosim.sim.loop`).
    """

    def __init__(self, folder: Path, n_rounds: int, buses: np.ndarray, lines: np.ndarray, trafos: np.ndarray,
                 parties: list[str], party_buses: np.ndarray, chunk_rounds: int = 672, first_round: int = 0,
                 with_attribution: bool = True, with_storage: bool = False, three_phase: bool = False):
        self.folder = Path(folder)
        self.three_phase = three_phase
        self.n_rounds = n_rounds
        self.buses, self.lines, self.trafos = buses, lines, trafos
        self.parties = list(parties)
        self.party_buses = np.asarray(party_buses, dtype=np.int64)
        self.chunk_rounds = max(int(chunk_rounds), 1)
        self.with_attribution = with_attribution
        self.with_storage = with_storage
        self._start(first_round)

    def _start(self, first_round: int) -> None:
        self.first = first_round
        size = max(min(self.chunk_rounds, self.n_rounds - first_round), 0)
        self.size = size
        self.rows: list[dict] = []
        self.bus_p = np.full((size, len(self.buses)), np.nan)
        self.bus_q = np.full((size, len(self.buses)), np.nan)
        self.bus_vm = np.full((size, len(self.buses)), np.nan)
        self.line_loading = np.full((size, len(self.lines)), np.nan)
        self.trafo_loading = np.full((size, len(self.trafos)), np.nan)
        if self.three_phase:  # per bus and phase, per line and phase, per transformer and phase
            nb, nl, nt = len(self.buses), len(self.lines), len(self.trafos)
            self.bus_p_abc, self.bus_q_abc, self.bus_vm_abc = (np.full((size, nb, 3), np.nan) for _ in range(3))
            self.bus_vuf = np.full((size, nb), np.nan)
            self.line_i_abc, self.line_loading_abc = np.full((size, nl, 3), np.nan), np.full((size, nl, 3), np.nan)
            self.line_in = np.full((size, nl), np.nan)
            self.trafo_loading_abc = np.full((size, nt, 3), np.nan)
        self.settlement = np.zeros((size, len(self.parties), len(NUMERIC_COLUMNS)))
        self.trades: list[pd.DataFrame] = []
        self.trade_rounds: list[int] = []
        self.attribution: list[pd.DataFrame] = []
        self.rejections: list[pd.DataFrame] = []
        self.storage: list[pd.DataFrame] = []

    @property
    def next_round(self) -> int:
        """The first round not yet recorded."""
        return self.first + len(self.rows)

    def record(self, row: dict, p_kw, q_kvar, state, trades: pd.DataFrame, settlement: np.ndarray,
               attribution: pd.DataFrame | None = None, rejections: pd.DataFrame | None = None,
               storage: pd.DataFrame | dict[str, np.ndarray] | None = None,
               p_abc_kw: np.ndarray | None = None, q_abc_kvar: np.ndarray | None = None) -> None:
        """Add one round (`settlement`: `cosim.sim.settlement.settle_matrix`). Once `full`, the
        caller writes the chunk with `flush`. A three-phase recorder also keeps the round's
        per-phase injections (`p_abc_kw`, `q_abc_kvar` [buses x 3]) and ``state.phases``."""
        i = row["round"] - self.first
        if i != len(self.rows):
            raise ValueError(f"round {row['round']} recorded out of order (expected {self.next_round})")
        self.rows.append(row)
        self.bus_p[i], self.bus_q[i] = p_kw, q_kvar
        self.bus_vm[i] = state.vm_pu
        self.line_loading[i] = state.line_loading_pct
        self.trafo_loading[i] = state.trafo_loading_pct
        if self.three_phase:
            ph = state.phases
            self.bus_p_abc[i], self.bus_q_abc[i] = p_abc_kw, q_abc_kvar
            self.bus_vm_abc[i], self.bus_vuf[i] = ph.vm_pu, ph.vuf_pct
            self.line_i_abc[i], self.line_in[i], self.line_loading_abc[i] = ph.line_i_ka, ph.line_in_ka, ph.line_loading_pct
            self.trafo_loading_abc[i] = ph.trafo_loading_pct
        self.settlement[i] = settlement
        if trades is not None and len(trades):
            self.trades.append(trades)  # the round column is added when the chunk is written
            self.trade_rounds.append(row["round"])
        if attribution is not None and len(attribution):
            self.attribution.append(attribution)
        if rejections is not None and len(rejections):
            self.rejections.append(rejections)
        if self.with_storage and storage is not None:
            self.storage.append(storage)

    @property
    def full(self) -> bool:
        """True when the buffered chunk is complete."""
        return len(self.rows) == self.size

    # -- tables of the buffered chunk ---------------------------------------------------
    def rounds_table(self) -> pd.DataFrame:
        table = pd.DataFrame(self.rows)
        first = [c for c in ROUND_COLUMNS if c in table.columns]
        return table[first + [c for c in table.columns if c not in first]]

    def _long(self, values: np.ndarray, ids: np.ndarray, id_name: str, value_name: str) -> pd.DataFrame:
        n_t = len(self.rows)
        return pd.DataFrame(
            {
                "round": np.repeat(np.arange(self.first, self.first + n_t, dtype=np.int64), len(ids)),
                id_name: np.tile(ids.astype(np.int64), n_t),
                value_name: values[:n_t].ravel(),
            }
        )

    def buses_table(self) -> pd.DataFrame:
        n_t = len(self.rows)
        table = self._long(self.bus_p, self.buses, "bus", "p_kw")
        table["q_kvar"] = self.bus_q[:n_t].ravel()
        table["vm_pu"] = self.bus_vm[:n_t].ravel()
        if self.three_phase:
            for k, ph in enumerate("abc"):
                table[f"p_{ph}_kw"] = self.bus_p_abc[:n_t, :, k].ravel()
            for k, ph in enumerate("abc"):
                table[f"q_{ph}_kvar"] = self.bus_q_abc[:n_t, :, k].ravel()
            for k, ph in enumerate("abc"):
                table[f"vm_{ph}_pu"] = self.bus_vm_abc[:n_t, :, k].ravel()
            table["vuf_pct"] = self.bus_vuf[:n_t].ravel()
        return table

    def branches_table(self) -> pd.DataFrame:
        n_t = len(self.rows)
        lines = self._long(self.line_loading, self.lines, "branch", "loading_pct").assign(kind="line")
        trafos = self._long(self.trafo_loading, self.trafos, "branch", "loading_pct").assign(kind="trafo")
        columns = ["round", "branch", "kind", "loading_pct"]
        if self.three_phase:
            for k, ph in enumerate("abc"):
                lines[f"loading_{ph}_pct"] = self.line_loading_abc[:n_t, :, k].ravel()
                trafos[f"loading_{ph}_pct"] = self.trafo_loading_abc[:n_t, :, k].ravel()
            for k, ph in enumerate("abc"):  # transformers: their loading per phase only
                lines[f"i_{ph}_ka"] = self.line_i_abc[:n_t, :, k].ravel()
            lines["i_n_ka"] = self.line_in[:n_t].ravel()
            columns += [f"loading_{ph}_pct" for ph in "abc"] + [f"i_{ph}_ka" for ph in "abc"] + ["i_n_ka"]
        table = pd.concat([lines, trafos], ignore_index=True).reindex(columns=columns)
        return table.sort_values(["round", "kind", "branch"], kind="stable")

    def trades_table(self) -> pd.DataFrame:
        cols = ["round", *TRADE_COLUMNS]
        if not self.trades:
            types = {"round": "int64", "seller": object, "buyer": object}
            return pd.DataFrame({c: pd.Series(dtype=types.get(c, float)) for c in cols})
        table = pd.concat(self.trades, ignore_index=True)
        table["round"] = np.repeat(np.asarray(self.trade_rounds, dtype=np.int64), [len(t) for t in self.trades])
        table = table[cols]
        table["seller"] = table.seller.astype(str)
        table["buyer"] = table.buyer.astype(str)
        return table

    def settlement_table(self) -> pd.DataFrame:
        n_t, n_p = len(self.rows), len(self.parties)
        rounds = np.repeat(np.arange(self.first, self.first + n_t, dtype=np.int64), n_p)
        return settlement_frame(rounds, self.parties * n_t, np.tile(self.party_buses, n_t),
                                self.settlement[:n_t].reshape(n_t * n_p, -1))

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

    def storage_table(self) -> pd.DataFrame:
        """State of charge and power of every flexible asset, per round (`cosim.flex.assets.STORAGE_COLUMNS`)."""
        if not self.storage:
            types = {"round": "int64", "id": object, "asset": object, "plugged": bool}
            return pd.DataFrame({c: pd.Series(dtype=types.get(c, float)) for c in STORAGE_COLUMNS})
        if all(isinstance(part, dict) for part in self.storage):  # one table per chunk, column by column
            return pd.DataFrame({c: np.concatenate([part[c] for part in self.storage]) for c in STORAGE_COLUMNS})
        parts = [pd.DataFrame(part) if isinstance(part, dict) else part for part in self.storage]
        return pd.concat(parts, ignore_index=True)[STORAGE_COLUMNS]

    # -- writing ------------------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        tables = {
            "rounds": self.rounds_table(),
            "buses": self.buses_table(),
            "branches": self.branches_table(),
            "trades": self.trades_table(),
            "settlement": self.settlement_table(),
            "rejections": self.rejections_table(),
        }
        if self.with_attribution:
            tables["attribution"] = self.attribution_table()
        if self.with_storage:
            tables["storage"] = self.storage_table()
        return tables

    def parts_dir(self, table: str) -> Path:
        return self.folder / ".parts" / table

    def flush(self) -> None:
        """Write the buffered rounds to part files and start the next chunk."""
        if not self.rows:
            return
        chunk = self.first // self.chunk_rounds
        for name, table in self.tables().items():
            d = self.parts_dir(name)
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f"{chunk:06d}.parquet.tmp"
            table.to_parquet(tmp, index=False)
            os.replace(tmp, d / f"{chunk:06d}.parquet")
        self._start(self.first + len(self.rows))

    def drop_parts_from(self, chunk: int) -> None:
        """Delete the part files of chunk `chunk` and later (left by an interrupted run)."""
        parts = self.folder / ".parts"
        if not parts.exists():
            return
        for f in parts.glob("*/*.parquet"):
            if int(f.stem) >= chunk:
                f.unlink()
        for f in parts.glob("*/*.parquet.tmp"):
            f.unlink()

    def finish(self) -> None:
        """Write what is buffered, then merge every table's parts into one parquet file."""
        self.flush()
        names = ["rounds", "buses", "branches", "trades", "settlement", "rejections"]
        if self.with_attribution:
            names.append("attribution")
        if self.with_storage:
            names.append("storage")
        for name in names:
            merge_parts(sorted(self.parts_dir(name).glob("*.parquet")), self.folder / f"{name}.parquet")
        shutil.rmtree(self.folder / ".parts", ignore_errors=True)

    def write_table(self, name: str, table: pd.DataFrame) -> None:
        """Write a whole-run table (e.g. ``sessions``, ``dayahead``) as ``<folder>/<name>.parquet``."""
        tmp = self.folder / f"{name}.parquet.tmp"
        table.to_parquet(tmp, index=False)
        os.replace(tmp, self.folder / f"{name}.parquet")


def merge_parts(parts: list[Path], dest: Path) -> None:
    """Concatenate parquet part files into `dest`, one part in memory at a time.

    The merged schema is the union of the parts' columns, in order of first appearance
    (a mechanism may report a figure only in some rounds); a part without a column gets
    nulls there. Column types come from the first part with rows that has the column.
    Parts with no rows only lend their schema when every part is empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not parts:
        raise FileNotFoundError(f"no parts to merge into {dest}")
    full = [p for p in parts if pq.ParquetFile(p).metadata.num_rows > 0]
    if not full:
        os.replace(parts[0], dest)
        return
    fields: dict[str, pa.Field] = {}
    for p in full:
        for f in pq.read_schema(p):
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name] = f
    schema = pa.schema(list(fields.values()))
    with pq.ParquetWriter(dest, schema) as writer:
        for p in full:
            table = pq.read_table(p).replace_schema_metadata(None)
            if table.schema != schema:
                columns = [
                    table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
                    for f in schema
                ]
                table = pa.Table.from_arrays(columns, schema=schema)
            writer.write_table(table)


def bills_by_party(settlement_path: Path) -> pd.Series:
    """Sum of each party's bills over a run [currency], from settlement.parquet with the
    party names read as a dictionary (a year of rounds stays small in memory). Summed in
    row order, so the total does not depend on how the file was chunked."""
    import pyarrow.parquet as pq

    table = pq.read_table(settlement_path, columns=["party", "bill"], read_dictionary=["party"]).to_pandas()
    return table.groupby("party", observed=True, sort=True).bill.sum()


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
