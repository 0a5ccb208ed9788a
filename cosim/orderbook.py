"""Order books from CSV for ``cosim clear``: validated once, cleared with no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cosim.errors import InputError
from cosim.markets import MECHANISMS, MarketContext, OrderArrays, get_mechanism

#: Columns an order CSV must have.
CSV_COLUMNS = ["id", "side", "quantity_kwh", "price_per_kwh"]
#: Columns `cosim clear` writes, one row per trade.
CLEAR_COLUMNS = ["buyer", "seller", "quantity_kwh", "price_per_kwh", "seller_price_per_kwh"]


def read_orders(path: str | Path) -> pd.DataFrame:
    """Read and check an order CSV; every problem is reported at once."""
    path = Path(path)
    try:
        book = pd.read_csv(path, dtype={"id": str, "side": str})
    except FileNotFoundError:
        raise InputError(path, ["file not found"]) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, [f"not a readable CSV: {err}"]) from None
    missing = [c for c in CSV_COLUMNS if c not in book.columns]
    if missing:
        raise InputError(path, [f"columns: expected {CSV_COLUMNS}, missing {missing}, found {list(book.columns)}"])
    problems = []
    for col in ("quantity_kwh", "price_per_kwh"):
        values = pd.to_numeric(book[col], errors="coerce")
        for i in np.flatnonzero(~np.isfinite(values.to_numpy(float))):
            problems.append(f"row {i + 2}, {col}: expected a finite number, found {book[col].iloc[i]!r}")
        book[col] = values
    for i in np.flatnonzero((book.quantity_kwh < 0).to_numpy()):
        problems.append(f"row {i + 2}, quantity_kwh: expected >= 0, found {book.quantity_kwh.iloc[i]}")
    for i in np.flatnonzero(~book.side.isin(["buy", "sell"]).to_numpy()):
        problems.append(f"row {i + 2}, side: expected 'buy' or 'sell', found {book.side.iloc[i]!r}")
    dup = book.duplicated(subset=["id", "side"], keep="first")
    for i in np.flatnonzero(dup.to_numpy()):
        problems.append(f"row {i + 2}, id: expected one order per id and side, found {book.id.iloc[i]!r} again")
    if problems:
        raise InputError(path, problems)
    return book


def clear_csv(path: str | Path, mechanism: str, k: float = 0.5, retail: float | None = None,
              feed_in: float | None = None) -> pd.DataFrame:
    """Clear an order CSV; one row per trade, the outside grid as the party ``grid``.

    Without --retail/--feed-in there is no outside grid: unmatched orders stay unmatched.
    The price interval is then closed by the orders themselves.
    """
    if mechanism not in MECHANISMS:
        raise InputError(path, [f"--mechanism: expected one of {sorted(MECHANISMS)}, found {mechanism!r}"])
    if not 0.0 <= k <= 1.0:
        raise InputError(path, [f"--k: expected a number in [0, 1], found {k}"])
    book = read_orders(path)
    # one participant per (id, side): a prosumer may both buy and sell in a book
    book = book.assign(participant=book.id + "\x1f" + book.side)
    participants = book.participant.tolist()
    arrays = OrderArrays.from_book(book.assign(id=book.participant), participants)
    prices = book.price_per_kwh
    has_grid = retail is not None and feed_in is not None
    ctx = MarketContext(
        retail_price_per_kwh=retail if retail is not None else (float(prices.max()) if len(prices) else 0.0),
        feed_in_price_per_kwh=feed_in if feed_in is not None else (float(prices.min()) if len(prices) else 0.0),
        k=k,
        import_cap_kwh=np.inf if has_grid else 0.0,
        export_cap_kwh=np.inf if has_grid else 0.0,
        voll_per_kwh=0.0,
        curtail_cost_per_kwh=0.0,
    )
    result = get_mechanism(mechanism)(participants, max_cuts=1).clear(arrays, ctx)
    if not result.ok:
        raise RuntimeError(f"clearing failed: {result.status}")
    trades = result.trades
    name = {p: p.split("\x1f")[0] for p in participants}
    out = pd.DataFrame(
        {
            "buyer": trades.buyer.map(lambda p: name.get(p, p)),
            "seller": trades.seller.map(lambda p: name.get(p, p)),
            "quantity_kwh": trades.energy_kwh,
            "price_per_kwh": trades.price_per_kwh,
            "seller_price_per_kwh": trades.seller_price_per_kwh,
        }
    )
    return out[CLEAR_COLUMNS]
