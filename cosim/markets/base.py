"""What every mechanism takes and returns.

A mechanism clears one round's order book against the outside option (the grid, or in
an islanded feeder the grid-forming unit) under the network's linear limits and charges.
It never sees pandapower: the network reaches it only as `NetworkCuts` (linear
constraints on each participant's net injection) and `Charges` (per-kWh network charges).

Quantities are per round [kWh]; prices [currency/kWh].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from cosim.markets.highs import one_highs_thread

#: Columns of the bilateral trade table every mechanism returns.
TRADE_COLUMNS = [
    "seller",
    "buyer",
    "energy_kwh",
    "price_per_kwh",
    "seller_price_per_kwh",
    "network_charge_per_kwh",
]
#: The trade table of a result without trades (shared; never modified in place).
EMPTY_TRADES = pd.DataFrame({c: pd.Series(dtype=object if c in ("seller", "buyer") else float) for c in TRADE_COLUMNS})
#: Numerical tolerance on quantities [kWh].
QTY_TOL = 1e-7
#: Key of `ClearingResult.info` with the energy each participant's batteries and EVs draw
#: on top of their dispatch this round, at the meter [kWh] (already in the result's
#: quantities: the round applies it to the assets' state of charge).
ASSET_CHARGE = "asset_charge_kwh"
#: Curtailing a kWh costs this much above the feed-in tariff when the scenario sets no
#: curtailment cost, so that exporting always beats curtailing [currency/kWh].
CURTAIL_PREMIUM_PER_KWH = 0.01


@dataclass(frozen=True)
class Participants:
    """Who trades, and where they sit on the network (what a mechanism may know of it).

    Built once per run. Arrays are aligned with `ids`.
    """

    ids: list[str]
    bus: np.ndarray
    """pandapower bus of each participant (-1 when unknown, e.g. ``cosim clear``)."""
    feeder: np.ndarray
    """Index of the LV feeder (line leaving the transformer's busbar) each one is on."""
    has_pv: np.ndarray
    """True for participants with rooftop PV (green producers)."""
    distance_km: np.ndarray | None = None
    """[n x n] length of the line path between participants' buses [km]; None if unknown."""
    battery_kwh: np.ndarray | None = None
    """Capacity of each participant's home battery [kWh] (0: none); None if unknown."""
    battery_kw: np.ndarray | None = None
    """Power limit of each participant's home battery [kW]; None if unknown."""

    @classmethod
    def plain(cls, ids: list[str]) -> Participants:
        """Participants with no network information (one feeder, no distances)."""
        n = len(ids)
        return cls(list(ids), np.full(n, -1), np.zeros(n, dtype=int), np.zeros(n, dtype=bool), None)

    def __len__(self) -> int:
        return len(self.ids)


class MechanismOptions(BaseModel):
    """Settings of a mechanism, from the scenario's ``market.options`` (none by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Mechanism:
    """Base of every mechanism: built once per run, cleared every round.

    Subclasses set `name`, may declare their own `Options` (a `MechanismOptions`), and
    implement `clear`. ``self.participants`` (a `Participants`) and ``self.options`` are
    set here.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[MechanismOptions]] = MechanismOptions
    uses_charge_headroom: ClassVar[bool] = False
    """True if `clear` uses ``ctx.charge_headroom_kwh`` (the round then computes it) and may
    return ``info[ASSET_CHARGE]``: energy each participant's batteries and EVs draw on top
    of their dispatch [kWh], which the round applies to the assets."""

    def __init__(self, participants: Participants | list[str], max_cuts: int = 24,
                 options: MechanismOptions | dict | None = None):
        if not isinstance(participants, Participants):
            participants = Participants.plain(participants)
        self.participants = participants
        self.max_cuts = max_cuts
        if options is None:
            options = self.Options()
        elif isinstance(options, dict):
            options = self.Options.model_validate(options)
        self.options = options
        one_highs_thread()  # before any model of the mechanism is built

    @property
    def ids(self) -> list[str]:
        return self.participants.ids

    def clear(self, orders: OrderArrays, ctx: MarketContext, cuts: NetworkCuts | None = None,
              charges: Charges | None = None) -> ClearingResult:
        raise NotImplementedError

    # -- checkpoints (cosim run --resume) ----------------------------------------------
    def reset_warm_start(self) -> None:
        """Forget solver warm starts (called at the start of every recorded chunk of
        rounds, so that a resumed run solves from the same starting point as an
        uninterrupted one). The default resets every attribute that has a
        ``reset_warm_start`` method (e.g. a `cosim.markets.pool.PoolModel`)."""
        for value in vars(self).values():
            reset = getattr(value, "reset_warm_start", None)
            if callable(reset):
                reset()

    def get_state(self) -> dict:
        """State a mechanism carries from round to round (e.g. a community battery's state
        of charge), as picklable values; {} for a stateless mechanism."""
        return {}

    def set_state(self, state: dict) -> None:
        """Restore what `get_state` returned."""


@dataclass(frozen=True)
class MarketContext:
    """Round-independent market settings plus the outside option's limits this round."""

    retail_price_per_kwh: float
    feed_in_price_per_kwh: float
    k: float = 0.5
    outside_party: str = "grid"
    """Name of the outside counterparty: ``grid``, or ``grid_forming`` when islanded."""
    import_cap_kwh: float = np.inf
    """Most energy the outside party can sell this round [kWh]."""
    export_cap_kwh: float = np.inf
    """Most energy the outside party can buy this round [kWh]."""
    voll_per_kwh: float = 10.0
    """Value of lost load: cost of shedding [currency/kWh]."""
    curtail_cost_per_kwh: float | None = None
    """Cost of curtailing a kWh; default: the feed-in tariff plus a small premium."""
    p2p: bool = True
    """False for the no-P2P baseline: everyone trades only with the outside party."""
    round_no: int | None = None
    """The round being cleared (None outside a run, e.g. ``cosim clear``); re-clearings of
    a round under feedback carry the same number."""
    dt_h: float | None = None
    """Round length [h] (None outside a run)."""
    n_rounds: int | None = None
    """Rounds in the run (None outside a run)."""
    charge_headroom_kwh: np.ndarray | None = field(default=None, compare=False)
    """What each participant's batteries and EVs could still draw this round on top of
    their dispatch, at the meter [kWh] (`cosim.flex.assets.FlexibleAssets.charge_headroom_kwh`);
    None: unknown, or no mechanism asks for it (see `Mechanism.uses_charge_headroom`)."""

    @property
    def curtail_cost(self) -> float:
        if self.curtail_cost_per_kwh is not None:
            return self.curtail_cost_per_kwh
        return self.feed_in_price_per_kwh + CURTAIL_PREMIUM_PER_KWH


@dataclass(frozen=True)
class NetworkCuts:
    """Linear network limits on the participants' net injections.

    Each row k reads ``sum_n coef[k, n] * injection_kwh[n] <= rhs[k]``, where a
    participant's injection is what it sells minus what it buys (P2P and outside).
    """

    coef: np.ndarray
    """[cuts x participants], per kWh injected."""
    rhs: np.ndarray
    labels: tuple[str, ...] = ()

    @classmethod
    def empty(cls, n: int) -> NetworkCuts:
        return cls(np.zeros((0, n)), np.zeros(0), ())

    def __len__(self) -> int:
        return len(self.rhs)

    def extend(self, other: NetworkCuts) -> NetworkCuts:
        return NetworkCuts(
            np.vstack([self.coef, other.coef]), np.concatenate([self.rhs, other.rhs]), self.labels + other.labels
        )


@dataclass(frozen=True)
class Charges:
    """Network charges per kWh of P2P trade, split into a buyer and a seller part.

    A trade from seller i to buyer j carries ``sell[i] + buy[j]`` per kWh, paid to the
    party ``dso``. Parts may be negative (a trade that relieves the network earns a credit).
    """

    buy: np.ndarray
    sell: np.ndarray

    @classmethod
    def none(cls, n: int) -> Charges:
        return cls(np.zeros(n), np.zeros(n))


@dataclass
class ClearingResult:
    """One round's clearing, per participant (arrays aligned with the participants)."""

    status: str
    """``ok`` or the solver's reason for failing."""
    bought_kwh: np.ndarray
    sold_kwh: np.ndarray
    import_kwh: np.ndarray
    export_kwh: np.ndarray
    curtailed_kwh: np.ndarray
    shed_kwh: np.ndarray
    buy_price_per_kwh: np.ndarray
    """Energy price each buyer pays per P2P kWh, before network charges."""
    sell_price_per_kwh: np.ndarray
    """Energy price each seller receives per P2P kWh, before network charges."""
    charges: Charges
    price_per_kwh: float
    """The round's clearing price; NaN when nothing cleared or prices differ by trader."""
    trades: pd.DataFrame = field(default_factory=lambda: EMPTY_TRADES)
    """Bilateral trades (TRADE_COLUMNS). The default is one shared empty table (building an
    empty DataFrame each round cost more than the power flow): replace it, never modify it."""
    welfare: float = float("nan")
    operator_import_kwh: float = 0.0
    """Energy the market operator (e.g. a community manager) buys from the outside party
    at retail on the participants' behalf [kWh]. Pool balance:
    ``sum bought + operator_export = sum sold + operator_import``."""
    operator_export_kwh: float = 0.0
    """Energy the market operator sells to the outside party at feed-in [kWh]."""
    info: dict = field(default_factory=dict)
    """Mechanism-specific figures for the round (e.g. VCG deficit, ADMM iterations)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def injection_kwh(self) -> np.ndarray:
        """Net injection of each participant: sold minus bought, P2P and outside [kWh]."""
        return self.sold_kwh + self.export_kwh - self.bought_kwh - self.import_kwh

    @property
    def cleared_kwh(self) -> float:
        return float(self.bought_kwh.sum())


@dataclass(frozen=True)
class OrderArrays:
    """An order book laid out on a fixed list of participants."""

    demand_kwh: np.ndarray
    supply_kwh: np.ndarray
    bid_per_kwh: np.ndarray
    ask_per_kwh: np.ndarray

    @classmethod
    def from_book(cls, book: pd.DataFrame, participants: list[str], default_price: float = 0.0) -> OrderArrays:
        """Place each order at its participant; participants without an order get zeros."""
        n = len(participants)
        demand, supply = np.zeros(n), np.zeros(n)
        bid, ask = np.full(n, default_price), np.full(n, default_price)
        idx = pd.Index(participants).get_indexer(book["id"])
        if (idx < 0).any():
            raise KeyError(f"orders from unknown participants: {list(book['id'][idx < 0])[:5]}")
        side = book["side"].to_numpy()
        qty = book["quantity_kwh"].to_numpy(float)
        price = book["price_per_kwh"].to_numpy(float)
        is_buy, is_sell = side == "buy", side == "sell"
        np.add.at(demand, idx[is_buy], qty[is_buy])
        np.add.at(supply, idx[is_sell], qty[is_sell])
        bid[idx[is_buy]] = price[is_buy]
        ask[idx[is_sell]] = price[is_sell]
        return cls(demand, supply, bid, ask)

    @classmethod
    def from_positions(cls, n: int, pos: np.ndarray, buy: np.ndarray, quantity_kwh: np.ndarray,
                       price_per_kwh: np.ndarray, default_price: float = 0.0) -> OrderArrays:
        """Place at most one order per participant (`pos`: participant positions, `buy`:
        bid or offer); participants without an order get zeros."""
        demand, supply = np.zeros(n), np.zeros(n)
        bid, ask = np.full(n, default_price), np.full(n, default_price)
        b, s = pos[buy], pos[~buy]
        demand[b], bid[b] = quantity_kwh[buy], price_per_kwh[buy]
        supply[s], ask[s] = quantity_kwh[~buy], price_per_kwh[~buy]
        return cls(demand, supply, bid, ask)


def trade_frame(rows: list[tuple]) -> pd.DataFrame:
    """A trade table (TRADE_COLUMNS) from row tuples: what ``pd.DataFrame(rows,
    columns=TRADE_COLUMNS)`` gives, built column by column (a few times faster)."""
    if not rows:
        return pd.DataFrame(rows, columns=TRADE_COLUMNS)
    cols = list(zip(*rows, strict=True))
    data = {"seller": np.array(cols[0], dtype=object), "buyer": np.array(cols[1], dtype=object)}
    for name, col in zip(TRADE_COLUMNS[2:], cols[2:], strict=True):
        data[name] = np.array(col, dtype=float)
    return pd.DataFrame(data)


def outside_trades(r: ClearingResult, participants: list[str], ctx: MarketContext) -> list[tuple]:
    """Trade rows of each participant with the outside party, at retail and feed-in."""
    rows = []
    for i in np.flatnonzero(r.import_kwh > QTY_TOL):
        p = ctx.retail_price_per_kwh
        rows.append((ctx.outside_party, participants[i], float(r.import_kwh[i]), p, p, 0.0))
    for i in np.flatnonzero(r.export_kwh > QTY_TOL):
        p = ctx.feed_in_price_per_kwh
        rows.append((participants[i], ctx.outside_party, float(r.export_kwh[i]), p, p, 0.0))
    return rows


def fallback_result(orders: OrderArrays, ctx: MarketContext, charges: Charges, participants: list[str]) -> ClearingResult:
    """Dispatch of a round whose clearing failed: everyone trades with the outside party.

    Where the outside party's caps bind (islanded), demand is shed and supply curtailed
    pro rata.
    """
    demand, supply = orders.demand_kwh, orders.supply_kwh
    imp_share = min(1.0, ctx.import_cap_kwh / demand.sum()) if demand.sum() > 0 else 1.0
    exp_share = min(1.0, ctx.export_cap_kwh / supply.sum()) if supply.sum() > 0 else 1.0
    n = len(demand)
    zeros = np.zeros(n)
    result = ClearingResult(
        status="fallback", bought_kwh=zeros, sold_kwh=zeros, import_kwh=demand * imp_share,
        export_kwh=supply * exp_share, curtailed_kwh=supply * (1 - exp_share), shed_kwh=demand * (1 - imp_share),
        buy_price_per_kwh=np.full(n, np.nan), sell_price_per_kwh=np.full(n, np.nan), charges=charges,
        price_per_kwh=float("nan"),
    )
    result.trades = trade_frame(outside_trades(result, participants, ctx))
    return result


def failed_result(status: str, n: int, charges: Charges) -> ClearingResult:
    """A round that did not clear: nothing traded, and `status` says why."""
    zeros = np.zeros(n)
    return ClearingResult(
        status=status, bought_kwh=zeros, sold_kwh=zeros, import_kwh=zeros, export_kwh=zeros,
        curtailed_kwh=zeros, shed_kwh=zeros, buy_price_per_kwh=np.full(n, np.nan),
        sell_price_per_kwh=np.full(n, np.nan), charges=charges, price_per_kwh=float("nan"),
    )
