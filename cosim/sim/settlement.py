"""Settlement: who pays whom for one round, per party. Bills of all parties sum to zero.

Parties: every prosumer, the outside party (``grid``; ``grid_forming`` when islanded),
``dso`` (collects network charges and buys the network's losses from the outside party at
the retail tariff: it recovers them through the charges or carries them as a cost) and ``market_operator`` (keeps the auction's surplus
or covers its deficit, zero for budget-balanced mechanisms; as a community manager it
also trades the community's net position with the outside party). A bill is positive
when the party pays. For the outside party, bought/sold are what it bought from and sold
to everyone; for the operator, grid_import/grid_export are its own trades with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cosim.markets import ClearingResult, MarketContext
from cosim.markets.community_tariff import ALLOWANCE_USED, POOL_REVENUE_SHARE
from cosim.markets.flexibility import FLEXIBILITY_PAYMENT

SETTLEMENT_COLUMNS = [
    "round", "party", "bus", "bought_kwh", "sold_kwh", "grid_import_kwh", "grid_export_kwh",
    "curtailed_kwh", "shed_kwh", "energy_cost", "network_charges", "bill", "membership_fees",
    "losses_kwh", "losses_cost", "storage_rent", "flexibility_payments", "allowance_used_kwh",
    "pool_revenue_share",
]
#: Physical columns of prosumer rows (zero for other parties): consumption, PV
#: generation, battery charging (negative: discharging) and the resulting net load
#: ``load - pv + battery + curtailed - shed`` [kWh].
PHYSICAL_COLUMNS = ["load_kwh", "pv_kwh", "battery_kwh", "net_load_kwh"]
#: Key of `ClearingResult.info` holding each participant's membership fee this round [currency].
MEMBERSHIP_FEE = "membership_fee"
#: The market's own parties besides the prosumers and the outside party.
DSO, MARKET_OPERATOR = "dso", "market_operator"


#: Numeric columns of a settlement row, in the order of `settle_matrix`'s columns.
NUMERIC_COLUMNS = SETTLEMENT_COLUMNS[3:] + PHYSICAL_COLUMNS
#: Column of the bill in `settle_matrix`'s matrix (the market operator's row is the last).
BILL = NUMERIC_COLUMNS.index("bill")
#: Column of each other numeric column in `settle_matrix`'s matrix.
_COL = {name: j for j, name in enumerate(NUMERIC_COLUMNS)}
#: The cost columns that make up the bill.
BILL_PARTS = ["energy_cost", "network_charges", "membership_fees", "losses_cost", "storage_rent",
              "flexibility_payments", "pool_revenue_share"]


def parties(ids: list[str], outside_party: str) -> list[str]:
    """The parties of a round's settlement, in row order: the prosumers, the outside
    party, the DSO and the market operator."""
    return [*ids, outside_party, DSO, MARKET_OPERATOR]


def settle_matrix(r: ClearingResult, ctx: MarketContext, physical: dict[str, np.ndarray] | None = None,
                  losses_kwh: float = 0.0, rent: np.ndarray | None = None,
                  network_charges: np.ndarray | None = None) -> np.ndarray:
    """The round's settlement as a float matrix: one row per party (`parties`), one column
    per `NUMERIC_COLUMNS` entry. This is the hot path; `settle` wraps it in a table.

    Prosumer n pays ``buy_price[n] bought[n] - sell_price[n] sold[n] + retail imported[n]
    - feed_in exported[n]`` for energy, plus its `network_charges` [currency] (in a run,
    on its physical injection whoever the counterparty: `cosim.sim.tariff`; by default
    the per-kWh trade costs the mechanism cleared with, ``r.charges``, which a run leaves
    at zero), plus any membership fee the mechanism charged this round
    (``info["membership_fee"]``, per participant [currency], received by the operator). The outside party sells what the prosumers and the
    operator import and buys what they export; the DSO receives the network charges; the
    operator keeps what buyers pay minus what sellers get and pays for its own trades
    with the outside party (a community manager's net position).

    The network's `losses_kwh` this round (from the power flow) are bought by the DSO
    from the outside party at the retail tariff (``losses_kwh``, ``losses_cost``; the
    outside party's row shows them as sold, with a negative cost). `rent` is each
    prosumer's payment for shared battery capacity this round (``storage_rent``
    [currency], positive = pays, summing to zero). What the DSO pays providers for
    flexibility (``info["flexibility_payment"]``, `cosim.markets.flexibility`) is in
    ``flexibility_payments`` (negative for the provider, positive for the DSO). A
    community tariff (`cosim.markets.community_tariff`) reports the free kWh each member
    used this round (``info["allowance_used_kwh"]``, column ``allowance_used_kwh``) and
    each member's share of its virtual pool's revenue (``info["pool_revenue_share"]``,
    negative = received; the operator pays the sum). Every cost column (`BILL_PARTS`)
    enters the bill.
    """
    retail, feed_in = ctx.retail_price_per_kwh, ctx.feed_in_price_per_kwh
    n = len(r.bought_kwh)
    m = np.zeros((n + 3, len(NUMERIC_COLUMNS)))
    p2p_paid = np.nan_to_num(r.buy_price_per_kwh) * r.bought_kwh
    p2p_received = np.nan_to_num(r.sell_price_per_kwh) * r.sold_kwh
    if network_charges is None:  # the trade costs the mechanism cleared with (none in a run)
        network_charges = r.charges.buy * r.bought_kwh + r.charges.sell * r.sold_kwh
    charges = network_charges
    op_import, op_export = r.operator_import_kwh, r.operator_export_kwh
    imported = r.import_kwh.sum() + op_import
    exported = r.export_kwh.sum() + op_export
    # columns: bought, sold, grid_import, grid_export, curtailed, shed, energy_cost,
    # network_charges, bill, membership_fees, losses_kwh, losses_cost, storage_rent,
    # flexibility_payments, load, pv, battery, net_load
    c = _COL
    outside, dso, operator = n, n + 1, n + 2
    m[:n, c["bought_kwh"]], m[:n, c["sold_kwh"]] = r.bought_kwh, r.sold_kwh
    m[:n, c["grid_import_kwh"]], m[:n, c["grid_export_kwh"]] = r.import_kwh, r.export_kwh
    m[:n, c["curtailed_kwh"]], m[:n, c["shed_kwh"]] = r.curtailed_kwh, r.shed_kwh
    m[:n, c["energy_cost"]] = p2p_paid - p2p_received + retail * r.import_kwh - feed_in * r.export_kwh
    m[:n, c["network_charges"]] = charges
    m[outside, c["bought_kwh"]], m[outside, c["sold_kwh"]] = exported, imported
    m[outside, c["energy_cost"]] = -retail * imported + feed_in * exported
    m[dso, c["network_charges"]] = -charges.sum()
    m[operator, c["bought_kwh"]], m[operator, c["sold_kwh"]] = op_export, op_import
    m[operator, c["grid_import_kwh"]], m[operator, c["grid_export_kwh"]] = op_import, op_export
    m[operator, c["energy_cost"]] = -(p2p_paid.sum() - p2p_received.sum()) + retail * op_import - feed_in * op_export
    info = r.info or {}
    fees = info.get(MEMBERSHIP_FEE)
    if fees is not None:  # members pay the operator (e.g. fixed_price's periodic fee)
        m[:n, c["membership_fees"]] = fees
        m[operator, c["membership_fees"]] = -float(np.sum(fees))
    if losses_kwh:
        m[outside, c["sold_kwh"]] += losses_kwh
        m[outside, c["losses_kwh"]], m[outside, c["losses_cost"]] = losses_kwh, -retail * losses_kwh
        m[dso, c["grid_import_kwh"]], m[dso, c["losses_kwh"]] = losses_kwh, losses_kwh
        m[dso, c["losses_cost"]] = retail * losses_kwh
    if rent is not None:
        m[:n, c["storage_rent"]] = rent
    flex = info.get(FLEXIBILITY_PAYMENT)
    if flex is not None:  # the DSO pays the flexibility it bought
        m[:n, c["flexibility_payments"]] = -np.asarray(flex, float)
        m[dso, c["flexibility_payments"]] = float(np.sum(flex))
    allowance = info.get(ALLOWANCE_USED)
    if allowance is not None:
        m[:n, c["allowance_used_kwh"]] = allowance
    pool = info.get(POOL_REVENUE_SHARE)
    if pool is not None:  # the operator pays the members their share of the pool's revenue
        m[:n, c["pool_revenue_share"]] = pool
        m[operator, c["pool_revenue_share"]] = -float(np.sum(pool))
    m[:, BILL] = m[:, [c[name] for name in BILL_PARTS]].sum(axis=1)
    if physical is not None:
        load, pv, battery = c["load_kwh"], c["pv_kwh"], c["battery_kwh"]
        m[:n, load], m[:n, pv], m[:n, battery] = physical["load_kwh"], physical["pv_kwh"], physical["battery_kwh"]
        m[:n, c["net_load_kwh"]] = m[:n, load] - m[:n, pv] + m[:n, battery] + r.curtailed_kwh - r.shed_kwh
    return m


def settlement_frame(round_no: int | np.ndarray, party: list[str], bus: np.ndarray, matrix: np.ndarray,
                     physical: bool = True) -> pd.DataFrame:
    """Settlement rows as a table (SETTLEMENT_COLUMNS, then PHYSICAL_COLUMNS if `physical`)."""
    columns = NUMERIC_COLUMNS if physical else SETTLEMENT_COLUMNS[3:]
    data = {
        "round": np.broadcast_to(np.asarray(round_no, dtype=np.int64), (len(party),)).copy(),
        "party": party,
        "bus": np.asarray(bus, dtype=np.int64),
    }
    data.update({c: matrix[:, j] for j, c in enumerate(columns)})
    return pd.DataFrame(data)


def settle(round_no: int, ids: list[str], buses: np.ndarray, r: ClearingResult, ctx: MarketContext,
           physical: dict[str, np.ndarray] | None = None, losses_kwh: float = 0.0,
           rent: np.ndarray | None = None, network_charges: np.ndarray | None = None) -> pd.DataFrame:
    """The round's settlement table (`settle_matrix` with party names and buses)."""
    m = settle_matrix(r, ctx, physical, losses_kwh, rent, network_charges)
    bus = np.r_[np.asarray(buses, dtype=np.int64), -1, -1, -1]
    if physical is None:
        return settlement_frame(round_no, parties(ids, ctx.outside_party), bus, m[:, :len(SETTLEMENT_COLUMNS) - 3],
                                physical=False)
    return settlement_frame(round_no, parties(ids, ctx.outside_party), bus, m)
