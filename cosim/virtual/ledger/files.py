"""The ledger's settlement, trades and rejections against the run's parquet files.

`cosim.virtual.ledger.verify` hands the rows of each span of rounds to a `FileCheck` as it
checks the chain, so that the memory the comparison needs does not grow with the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cosim.virtual.admission import REJECTION_COLUMNS
from cosim.virtual.ledger.format import SETTLEMENT_FIELDS, TRADE_FIELDS, read_real

if TYPE_CHECKING:
    from cosim.virtual.ledger.verify import Verifier

#: Rounds of the ledger compared with the run's parquet files at a time, while the chain
#: is checked: the memory the comparison needs does not grow with the run.
COMPARE_ROUNDS = 512
#: Tolerance when comparing the ledger with the parquet files [kWh, currency].
FILE_TOL = 1e-9
#: Text columns of the tables compared with the parquet files.
TEXT_FIELDS = ("party", "seller", "buyer", "id", "reason", "side")
#: Each table compared: (columns, the columns rows are matched on, fields compared). `k`
#: is a row's place among its round's rows.
FILE_TABLES = {
    "settlement": (["round", *SETTLEMENT_FIELDS], ["round", "party"], SETTLEMENT_FIELDS[1:]),
    "trades": (["round", *TRADE_FIELDS], ["round", "k"], TRADE_FIELDS),
    "rejections": (REJECTION_COLUMNS, ["round", "k"], REJECTION_COLUMNS[1:]),
}
#: Rows of a parquet file read in one batch.
_BATCH_ROWS = 1 << 16


def read_errors() -> tuple[type[Exception], ...]:
    """What reading and comparing a run's file raises when the file is not as cosim
    writes it: not there or unreadable, not parquet (or JSON, YAML), a column missing or
    of another type, a summary that is not a mapping."""
    import pyarrow as pa
    import yaml

    return (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, pa.ArrowException,
            yaml.YAMLError)


class FileCheck:
    """The ledger's settlement, trades and rejections against the run's parquet files,
    compared a span of rounds at a time while the chain is checked (`take`): the rows of
    rounds a <= round < b of the ledger with those of the file (the first span also takes
    the file's rows before round 0, the last every row of the file not taken yet). Rows
    are matched on round and party (settlement) or round and place in the round (trades,
    rejections), as a comparison of the whole tables would; as the spans go up in rounds,
    the first row that differs in a span is the first of the table. What is found is kept
    for `cosim.virtual.ledger.verify`, which reports it after the chain's and the summary's
    checks."""

    def __init__(self, run_dir: Path, span: int | None = None):
        self.run_dir = run_dir
        self.span = COMPARE_ROUNDS if span is None else span
        self.done = 0
        self.tables: dict[str, _FileTable] = {}  # opened at the first comparison

    def take(self, v: Verifier, final: bool = False) -> None:
        """Compare the rows `v` gathered since the last call, if they make a span (or if
        `final`), and let `v` forget them."""
        if not final and v.rounds - self.done < self.span:
            return
        if not self.tables:
            self.tables = {name: _FileTable(self.run_dir / f"{name}.parquet", name, *spec)
                           for name, spec in FILE_TABLES.items()}
        for name, table in self.tables.items():
            table.compare(getattr(v, name), None if final else v.rounds)
        v.settlement, v.trades, v.rejections = [], [], []
        self.done = v.rounds


class _FileTable:
    """One table of `FileCheck`. Its file is read in batches as the spans go up if its
    round column is of integers that do not go down (as cosim writes it); otherwise it is
    read whole: ordered by round (stable, so rows keep their order within a
    round) if its rounds are integers, else kept whole with the ledger's rows and compared
    at the end in one go."""

    def __init__(self, path: Path, name: str, columns: list[str], on: list[str], fields: list[str]):
        self.name, self.columns, self.on, self.fields = name, columns, on, fields
        self.missing = not path.exists()
        self.error: Exception | None = None
        self.problem = ""
        self.whole = False  # compared in one go at the end
        self.kept: list[tuple] = []  # the ledger's rows, when compared in one go
        self.rest: pd.DataFrame | None = None  # the file's rows not compared yet (in round order)
        self.batches: Iterator | None = None  # the file's batches not read yet
        if self.missing:
            return
        try:
            try:
                self._stream(path)
                return
            except read_errors():  # read whole below, which raises what is wrong with the file
                self.batches = None
            rows = pd.read_parquet(path, columns=columns)
            r = rows["round"].to_numpy()
            if r.dtype.kind in "iu":
                self.rest = rows.iloc[np.argsort(r, kind="stable")]
            else:
                self.rest, self.whole = rows, True
        except read_errors() as err:  # reported after the chain's checks
            self.error = err

    def _stream(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path, pre_buffer=False)
        schema = file.schema_arrow
        fields = [schema.field(c) for c in self.columns]  # KeyError if a column is missing
        if not pa.types.is_integer(schema.field("round").type):
            raise ValueError("round is not a column of integers")
        last = None
        for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=["round"]):
            rounds = batch.column(0)
            if rounds.null_count:
                raise ValueError("round has nulls")
            r = rounds.to_numpy()
            if len(r) and ((last is not None and r[0] < last) or (np.diff(r) < 0).any()):
                raise ValueError("rounds go down")
            last = r[-1] if len(r) else last
        self.rest = pa.schema(fields).empty_table().to_pandas()
        self.batches = file.iter_batches(batch_size=_BATCH_ROWS, columns=self.columns)

    def _upto(self, end: int | None) -> pd.DataFrame:
        """The file's rows not handed out yet whose round is below `end` (None: all)."""
        import pyarrow as pa

        parts = [self.rest]
        while self.batches is not None and (end is None or not len(parts[-1]) or parts[-1]["round"].iat[-1] < end):
            batch = next(self.batches, None)
            if batch is None:
                self.batches = None
                break
            parts.append(pa.Table.from_batches([batch]).to_pandas())
        parts = [p for p in parts if len(p)] or parts[:1]
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        cut = len(rows) if end is None else int(np.searchsorted(rows["round"].to_numpy(), end, side="left"))
        self.rest = rows.iloc[cut:]
        return rows.iloc[:cut]

    def compare(self, ledger_rows: list[tuple], end: int | None) -> None:
        """Compare `ledger_rows` (the ledger's rows of the rounds since the last call, up to
        `end`; None: the last call) with the file's."""
        if self.missing or self.error is not None:
            return
        try:
            if self.problem:  # the first row that differs is known: read on only for an unreadable file
                while end is None and self.batches is not None:
                    if next(self.batches, None) is None:
                        self.batches = None
                return
            if self.whole:
                self.kept += ledger_rows
                if end is not None:
                    return
                files, ledger_rows = self.rest, self.kept
            else:
                files = self._upto(end)
            led = pd.DataFrame(ledger_rows, columns=self.columns)
            if "k" in self.on:
                files = files.copy()
                for table in (files, led):
                    table["k"] = table.groupby("round").cumcount()
            self.problem = _compare(led, files, self.on, self.fields, self.name)
        except read_errors() as err:  # reported after the chain's checks
            self.error = err


def _compare(led: pd.DataFrame, files: pd.DataFrame, on: list[str], fields: list[str], name: str) -> str:
    """'' if the ledger's rows equal the file's, else a message naming the first block that differs."""
    files = files.copy()
    led = led.copy()
    for table in (files, led):
        for f in fields:
            if table[f].dtype == object and f not in on and f not in TEXT_FIELDS:
                table[f] = table[f].map(read_real).astype(float)
    merged = led.merge(files, on=on, how="outer", suffixes=("", "_file"), indicator=True)
    bad = merged["_merge"] != "both"
    for f in fields:
        if f in on:
            continue
        a, b = merged[f], merged[f"{f}_file"]
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            a, b = a.astype(float).to_numpy(), b.astype(float).to_numpy()
            same = np.isclose(a, b, rtol=0.0, atol=FILE_TOL) | (np.isnan(a) & np.isnan(b))
        else:
            same = (a.astype(str) == b.astype(str)).to_numpy()
        bad |= ~same
    if not bad.any():
        return ""
    row = merged[bad].sort_values(on).iloc[0]
    r = int(row["round"])
    where = "only in the ledger" if row["_merge"] == "left_only" else (
        f"only in {name}.parquet" if row["_merge"] == "right_only" else f"differs from {name}.parquet")
    key = ", ".join(f"{k} {row[k]}" for k in on if k != "round")
    return f"block {r + 1} (round {r}): {name} row ({key}) {where}"
