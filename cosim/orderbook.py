"""Order books from CSV for ``cosim clear``: validated once, cleared with no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cosim.errors import InputError
from cosim.markets import MECHANISMS, MarketContext, OrderArrays, get_mechanism

#: Columns an order CSV must have.
CSV_COLUMNS = ["id", "side", "quantity_kwh", "price_per_kwh"]
#: Name of the outside grid in the trades `cosim clear` writes (not allowed as an order id).
OUTSIDE_PARTY = "grid"
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
    for i in np.flatnonzero(book.id.isna().to_numpy() | (book.id.astype(str).str.strip() == "").to_numpy()):
        problems.append(f"row {i + 2}, id: expected a participant id, found an empty cell")
    for i in np.flatnonzero((book.id == OUTSIDE_PARTY).to_numpy()):
        problems.append(f"row {i + 2}, id: expected a participant id other than {OUTSIDE_PARTY!r} "
                        f"(the outside grid's name in the output), found {OUTSIDE_PARTY!r}")
    for col in ("quantity_kwh", "price_per_kwh"):
        values = pd.to_numeric(book[col], errors="coerce")
        for i in np.flatnonzero(~np.isfinite(values.to_numpy(float))):
            problems.append(f"row {i + 2}, {col}: expected a finite number, found {book[col].iloc[i]!r}")
        book[col] = values
    for i in np.flatnonzero((book.quantity_kwh < 0).to_numpy()):
        problems.append(f"row {i + 2}, quantity_kwh: expected >= 0, found {book.quantity_kwh.iloc[i]}")
    for i in np.flatnonzero(~book.side.isin(["buy", "sell"]).to_numpy()):
        problems.append(f"row {i + 2}, side: expected 'buy' or 'sell', found {book.side.iloc[i]!r}")
    dup = book.duplicated(subset=["id"], keep="first") & book.id.notna()
    for i in np.flatnonzero(dup.to_numpy()):
        problems.append(f"row {i + 2}, id: expected one order per id, found {book.id.iloc[i]!r} again")
    if problems:
        raise InputError(path, problems)
    return book


def clear_csv(path: str | Path, mechanism: str, k: float = 0.5, retail: float | None = None,
              feed_in: float | None = None) -> pd.DataFrame:
    """Clear an order CSV; one row per trade, the outside grid as the party ``grid``.

    Without --retail/--feed-in there is no outside grid: unmatched orders stay unmatched.
    The price interval is then closed by the orders themselves. ``k`` matters only to
    ``uniform``; mechanisms with different buyer and seller prices (``pay_as_bid``,
    ``mcafee``, ``huang``, ``vcg``) write them in ``price_per_kwh`` (what the buyer pays)
    and ``seller_price_per_kwh`` (what the seller gets).
    """
    if mechanism not in MECHANISMS:
        raise InputError(path, [f"--mechanism: expected one of {sorted(MECHANISMS)}, found {mechanism!r}"])
    if not 0.0 <= k <= 1.0:
        raise InputError(path, [f"--k: expected a number in [0, 1], found {k}"])
    if (retail is None) != (feed_in is None):
        raise InputError(path, ["--retail and --feed-in: expected both (an outside grid) or neither, found one"])
    if retail is not None and feed_in > retail:
        raise InputError(path, [f"--feed-in: expected at most --retail {retail}, found {feed_in}"])
    book = read_orders(path)
    if book.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("buyer", "seller") else float) for c in CLEAR_COLUMNS})
    participants = book.id.tolist()
    arrays = OrderArrays.from_book(book, participants)
    prices = book.price_per_kwh
    has_grid = retail is not None
    ctx = MarketContext(
        retail_price_per_kwh=retail if has_grid else float(prices.max()),
        feed_in_price_per_kwh=feed_in if has_grid else float(prices.min()),
        k=k,
        outside_party=OUTSIDE_PARTY,
        import_cap_kwh=np.inf if has_grid else 0.0,
        export_cap_kwh=np.inf if has_grid else 0.0,
        # with a grid, what the auction leaves goes to the grid; without, it stays unmatched
        voll_per_kwh=10.0 * (retail + 1.0) if has_grid else 0.0,
        curtail_cost_per_kwh=None if has_grid else 0.0,
    )
    result = get_mechanism(mechanism)(participants, max_cuts=1).clear(arrays, ctx)
    if not result.ok:
        raise RuntimeError(f"clearing failed: {result.status}")
    trades = result.trades
    out = pd.DataFrame(
        {
            "buyer": trades.buyer,
            "seller": trades.seller,
            "quantity_kwh": trades.energy_kwh,
            "price_per_kwh": trades.price_per_kwh,
            "seller_price_per_kwh": trades.seller_price_per_kwh,
        }
    )
    return out[CLEAR_COLUMNS]
