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
from cosim.markets.flexibility import FLEXIBILITY_PAYMENT

SETTLEMENT_COLUMNS = [
    "round", "party", "bus", "bought_kwh", "sold_kwh", "grid_import_kwh", "grid_export_kwh",
    "curtailed_kwh", "shed_kwh", "energy_cost", "network_charges", "bill", "membership_fees",
    "losses_kwh", "losses_cost", "storage_rent", "flexibility_payments",
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
    ``flexibility_payments`` (negative for the provider, positive for the DSO). Every
    cost column enters the bill.
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
    m[:n, 0], m[:n, 1], m[:n, 2], m[:n, 3] = r.bought_kwh, r.sold_kwh, r.import_kwh, r.export_kwh
    m[:n, 4], m[:n, 5] = r.curtailed_kwh, r.shed_kwh
    m[:n, 6] = p2p_paid - p2p_received + retail * r.import_kwh - feed_in * r.export_kwh
    m[:n, 7] = charges
    m[n, 0], m[n, 1] = exported, imported
    m[n, 6] = -retail * imported + feed_in * exported
    m[n + 1, 7] = -charges.sum()
    m[n + 2, 0], m[n + 2, 1], m[n + 2, 2], m[n + 2, 3] = op_export, op_import, op_import, op_export
    m[n + 2, 6] = -(p2p_paid.sum() - p2p_received.sum()) + retail * op_import - feed_in * op_export
    fees = r.info.get(MEMBERSHIP_FEE) if r.info else None
    if fees is not None:  # members pay the operator (e.g. fixed_price's periodic fee)
        m[:n, 9] = fees
        m[n + 2, 9] = -float(np.sum(fees))
    if losses_kwh:
        m[n, 1] += losses_kwh
        m[n, 10], m[n, 11] = losses_kwh, -retail * losses_kwh
        m[n + 1, 2], m[n + 1, 10], m[n + 1, 11] = losses_kwh, losses_kwh, retail * losses_kwh
    if rent is not None:
        m[:n, 12] = rent
    flex = r.info.get(FLEXIBILITY_PAYMENT) if r.info else None
    if flex is not None:  # the DSO pays the flexibility it bought
        m[:n, 13] = -np.asarray(flex, float)
        m[n + 1, 13] = float(np.sum(flex))
    m[:, 8] = m[:, 6] + m[:, 7] + m[:, 9] + m[:, 11] + m[:, 12] + m[:, 13]
    if physical is not None:
        m[:n, 14], m[:n, 15], m[:n, 16] = physical["load_kwh"], physical["pv_kwh"], physical["battery_kwh"]
        m[:n, 17] = m[:n, 14] - m[:n, 15] + m[:n, 16] + r.curtailed_kwh - r.shed_kwh
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
