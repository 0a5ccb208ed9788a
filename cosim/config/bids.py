"""Order books from CSV for ``cosim clear``: validated once, cleared with no power flow.

An order CSV has the columns ``id,side,quantity_kwh,price_per_kwh`` and, optionally,
``bus`` (the order's bus in the network given with ``--network``) and ``green`` (whether
a seller's energy is green). ``bilateral`` prices them as its distance, feeder and green
premiums (the feeders also set ``hybrid``'s communities and ``shapley``'s players, as in
a run); where the file gives no bus or green, no such premium applies. Quantities and
prices must lie within documented limits (QUANTITY_MAX_KWH, SIDE_MAX_KWH,
PRICE_MAX_PER_KWH). Every problem is reported at once, one line per bad field, with the
value as written in the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cosim.config.errors import InputError
from cosim.markets import MECHANISMS, MarketContext, OrderArrays, Participants, get_mechanism

#: Columns an order CSV must have.
CSV_COLUMNS = ["id", "side", "quantity_kwh", "price_per_kwh"]
#: Name of the outside grid in the trades `cosim clear` writes (not allowed as an order id).
OUTSIDE_PARTY = "grid"
#: Columns `cosim clear` writes, one row per trade.
CLEAR_COLUMNS = ["buyer", "seller", "quantity_kwh", "price_per_kwh", "seller_price_per_kwh"]
#: Largest quantity of one order [kWh] (10 MWh in one round: far beyond any prosumer).
#: Larger books are refused up front because the mechanisms do not clear them reliably:
#: at 1e5 kWh Stackelberg's follower QP stalls; above 1e9 kWh the pool models' caps on the
#: outside trades (pool.INACTIVE_RHS) cut the result short; at 1e300 kWh every mechanism
#: came back with no trade. Every mechanism was checked on books at these limits.
QUANTITY_MAX_KWH = 1e4
#: Largest total of the buy orders, and of the sell orders [kWh].
SIDE_MAX_KWH = 1e6
#: Largest price in absolute value, of an order and of --retail/--feed-in [currency/kWh].
PRICE_MAX_PER_KWH = 1e3
#: Mechanisms whose prices are set by the outside grid's tariffs: they need --retail and --feed-in.
NEEDS_GRID = ("community_sdr", "community_mmr", "bill_sharing", "fixed_price", "community_tariff")
#: Iteration cap on the HiGHS QPs of Stackelberg's followers in `cosim clear`. HiGHS's QP
#: solver cycles without end when a follower's curvature (curvature x tariff spread / need)
#: is tiny, e.g. 1e4 kWh against a 0.0005 spread; capped, such a book is a failed clearing
#: (exit 1 with a message) instead of a command that never returns. Converging solves take
#: a few iterations per order.
FOLLOWER_QP_ITERATIONS = 100_000
#: What the ``green`` column may hold (case-insensitive); an empty cell means unknown.
GREEN_VALUES = {"true": True, "1": True, "false": False, "0": False}

_WHOLE_NUMBER = re.compile(r"[+-]?\d+")


class ClearingFailed(RuntimeError):
    """The mechanism could not clear a valid order book (e.g. its solver failed)."""


def _as_written(text: str) -> str:
    """A cell as the user wrote it: numbers bare (``nan``, ``1e300``), other text quoted."""
    if text.strip() == "":
        return "an empty cell"
    try:
        float(text)
    except ValueError:
        return repr(text)
    return text.strip()


def read_orders(path: str | Path) -> pd.DataFrame:
    """Read and check an order CSV; every problem is reported at once, row by row.

    Returns the orders with numeric ``quantity_kwh`` and ``price_per_kwh``, and the
    optional columns always present: ``bus`` (nullable integer) and ``green`` (nullable
    boolean), missing where the file gives none.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError(path, ["file not found"]) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, [f"not a readable CSV: {err}"]) from None
    missing = [c for c in CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(path, [f"columns: expected {CSV_COLUMNS}, missing {missing}, found {list(raw.columns)}"])
    problems: list[tuple[int, int, str]] = []  # (row, column, message), sorted at the end

    def bad(i: int, col: str, message: str) -> None:
        problems.append((i, list(raw.columns).index(col), f"row {i + 2}, {col}: {message}"))

    book = pd.DataFrame({"id": raw.id, "side": raw.side})
    for i in np.flatnonzero((raw.id.str.strip() == "").to_numpy()):
        bad(i, "id", "expected a participant id, found an empty cell")
    for i in np.flatnonzero((raw.id == OUTSIDE_PARTY).to_numpy()):
        bad(i, "id", f"expected a participant id other than {OUTSIDE_PARTY!r} "
                     f"(the outside grid's name in the output), found {OUTSIDE_PARTY!r}")
    dup = raw.id.duplicated(keep="first") & (raw.id.str.strip() != "")
    for i in np.flatnonzero(dup.to_numpy()):
        bad(i, "id", f"expected one order per id, found {raw.id.iloc[i]!r} again")
    for i in np.flatnonzero(~raw.side.isin(["buy", "sell"]).to_numpy()):
        bad(i, "side", f"expected 'buy' or 'sell', found {_as_written(raw.side.iloc[i])}")

    limits = {"quantity_kwh": (0.0, QUANTITY_MAX_KWH, "kWh"),
              "price_per_kwh": (-PRICE_MAX_PER_KWH, PRICE_MAX_PER_KWH, "currency/kWh")}
    for col, (lo, hi, unit) in limits.items():
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce").to_numpy(float)
        for i in range(len(raw)):
            if not np.isfinite(values[i]):
                bad(i, col, f"expected a finite number, found {_as_written(raw[col].iloc[i])}")
            elif not lo <= values[i] <= hi:
                bad(i, col, f"expected a number from {lo:g} to {hi:g} [{unit}], found {_as_written(raw[col].iloc[i])}")
        book[col] = values
    qty = book.quantity_kwh.to_numpy()
    ok = np.isfinite(qty) & (qty >= 0) & (qty <= QUANTITY_MAX_KWH)  # the others are reported already
    for side in ("buy", "sell"):
        total = float(book.quantity_kwh[ok & (raw.side == side).to_numpy()].sum())
        if total > SIDE_MAX_KWH:
            problems.append((-1, 0, f"quantity_kwh: expected the {side} orders to total at most "
                                    f"{SIDE_MAX_KWH:g} kWh, found {total:g} kWh"))

    bus = pd.Series(pd.NA, index=raw.index, dtype="Int64")
    if "bus" in raw.columns:
        text = raw.bus.str.strip()
        given = text != ""
        for i in range(len(raw)):
            if given.iloc[i] and not (_WHOLE_NUMBER.fullmatch(text.iloc[i]) and int(text.iloc[i]) >= 0):
                bad(i, "bus", f"expected a bus number (a whole number >= 0), found {_as_written(raw.bus.iloc[i])}")
            elif given.iloc[i]:
                bus.iloc[i] = int(text.iloc[i])
        if given.any():
            for i in np.flatnonzero(~given.to_numpy()):
                bad(i, "bus", "expected a bus number, as other rows give one (either every order has "
                              "a bus or none), found an empty cell")
    book["bus"] = bus

    green = pd.Series(pd.NA, index=raw.index, dtype="boolean")
    if "green" in raw.columns:
        for i, cell in enumerate(raw.green):
            key = cell.strip().lower()
            if key in GREEN_VALUES:
                green.iloc[i] = GREEN_VALUES[key]
            elif key != "":
                bad(i, "green", f"expected true, false, 1 or 0 (or an empty cell: unknown), found {_as_written(cell)}")
    book["green"] = green

    if problems:
        raise InputError(path, [message for _, _, message in sorted(problems)])
    return book


def _number(value: float) -> str:
    """An option's value as the user wrote it (the command line's numbers keep their text in
    ``text``), else as a plain number: ``nan``, ``0.3``, never ``np.float64(...)``."""
    return getattr(value, "text", None) or repr(float(value))


def check_options(path: str | Path, mechanism: str, k: float, retail: float | None,
                  feed_in: float | None) -> None:
    """Check the options of ``cosim clear``; every problem is reported at once."""
    problems = []
    if mechanism not in MECHANISMS:
        problems.append(f"--mechanism: expected one of {sorted(MECHANISMS)}, found {mechanism!r}")
    if not 0.0 <= k <= 1.0:
        problems.append(f"--k: expected a number in [0, 1], found {_number(k)}")
    for option, value in (("--retail", retail), ("--feed-in", feed_in)):
        if value is not None and not -PRICE_MAX_PER_KWH <= value <= PRICE_MAX_PER_KWH:
            problems.append(f"{option}: expected a number from {-PRICE_MAX_PER_KWH:g} to {PRICE_MAX_PER_KWH:g} "
                            f"[currency/kWh], found {_number(value)}")
    missing = [option for option, value in (("--retail", retail), ("--feed-in", feed_in)) if value is None]
    if mechanism in NEEDS_GRID and missing:
        problems.append(f"{' and '.join(missing)}: expected --retail R and --feed-in F, as {mechanism} prices "
                        f"energy against the outside grid's tariffs, found no {' and no '.join(missing)}")
    elif len(missing) == 1:
        problems.append(f"--retail and --feed-in: expected both (an outside grid) or neither, found one, "
                        f"missing {missing[0]}")
    if not missing and not problems and feed_in > retail:
        problems.append(f"--feed-in: expected at most --retail {_number(retail)}, found {_number(feed_in)}")
    if problems:
        raise InputError(path, problems)


def participants_of(path: str | Path, book: pd.DataFrame, network: str | None) -> Participants:
    """Who trades and where: buses, feeders and line distances from `network` where the
    book gives buses; green where it says so. Where it says nothing, nothing is assumed:
    one feeder, no distances, every seller green, so that no premium applies."""
    ids = book.id.tolist()
    n = len(ids)
    has_pv = book.green.fillna(True).to_numpy(bool)  # unknown: no green premium
    has_bus = bool(book.bus.notna().any())
    if not has_bus:
        if network is not None:
            raise InputError(path, ["bus: expected a bus column with each order's bus in --network "
                                    f"{network!r}, found none"])
        return Participants(ids, np.full(n, -1), np.zeros(n, dtype=int), has_pv, None)
    if network is None:
        raise InputError(path, ["bus: expected --network NAME, the network whose buses these are "
                                "(it gives their line distances and feeders), found buses and no --network"])
    from cosim.physical.networks import (
        build_net,
        feeder_of_buses,
        find_network_file,
        line_distance_km,
        load_network_spec,
    )

    net_file = find_network_file(network)
    if net_file is None:
        raise InputError(path, [f"--network: expected a file in networks/ (name without .yaml) or a path "
                                f"to a network file, found {network!r} (no such file)"])
    net = build_net(load_network_spec(net_file))
    bus = book.bus.to_numpy(int)
    unknown = ~np.isin(bus, net.bus.index.to_numpy())
    if unknown.any():
        known = net.bus.index
        raise InputError(path, [f"row {i + 2}, bus: expected a bus of network {network!r} "
                                f"({int(known.min())}..{int(known.max())}), found {bus[i]}"
                                for i in np.flatnonzero(unknown)])
    return Participants(ids, bus, feeder_of_buses(net).loc[bus].to_numpy(), has_pv, line_distance_km(net, bus))


def clear_csv(path: str | Path, mechanism: str, k: float = 0.5, retail: float | None = None,
              feed_in: float | None = None, network: str | None = None) -> pd.DataFrame:
    """Clear an order CSV; one row per trade, the outside grid as the party ``grid``.

    Without --retail/--feed-in there is no outside grid: unmatched orders stay unmatched.
    The price interval is then closed by the orders themselves. The community mechanisms
    (NEEDS_GRID) price against the grid's tariffs and refuse to clear without them.
    ``k`` matters only to ``uniform``; mechanisms with different buyer and seller prices
    (``pay_as_bid``, ``mcafee``, ``huang``, ``vcg``) write them in ``price_per_kwh`` (what
    the buyer pays) and ``seller_price_per_kwh`` (what the seller gets). ``bilateral``
    gives every buyer-seller pair a trade slot, and prices only the premiums the file
    gives (see `participants_of`). Raises InputError for bad options or orders and
    ClearingFailed when the mechanism cannot clear the book.
    """
    check_options(path, mechanism, k, retail, feed_in)
    k = float(k)
    retail, feed_in = (None, None) if retail is None else (float(retail), float(feed_in))
    book = read_orders(path)
    participants = participants_of(path, book, network)
    if book.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("buyer", "seller") else float) for c in CLEAR_COLUMNS})
    arrays = OrderArrays.from_book(book, participants.ids)
    prices = book.price_per_kwh
    has_grid = retail is not None
    ctx = MarketContext(
        retail_price_per_kwh=retail if has_grid else float(prices.max()),
        feed_in_price_per_kwh=feed_in if has_grid else float(prices.min()),
        k=k,
        outside_party=OUTSIDE_PARTY,
        import_cap_kwh=np.inf if has_grid else 0.0,
        export_cap_kwh=np.inf if has_grid else 0.0,
        # with a grid, what the auction leaves goes to the grid (VOLL above any tariff, negative
        # ones included); without, it stays unmatched
        voll_per_kwh=10.0 * (abs(retail) + 1.0) if has_grid else 0.0,
        curtail_cost_per_kwh=None if has_grid else 0.0,
    )
    # bilateral: a slot for every pair, so that which pairs may trade depends on no ranking
    options = {"max_partners": max(1, len(book) - 1)} if mechanism == "bilateral" else None
    mech = get_mechanism(mechanism)(participants, max_cuts=1, options=options)
    followers = getattr(mech, "followers", None)  # stackelberg's follower QP
    if followers is not None:
        followers.highs.setOptionValue("qp_iteration_limit", FOLLOWER_QP_ITERATIONS)
    result = mech.clear(arrays, ctx)
    if not result.ok:
        raise ClearingFailed(f"{path}: {mechanism} could not clear this book ({result.status}); "
                             "no trades were written")
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
