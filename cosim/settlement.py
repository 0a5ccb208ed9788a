"""Settlement: who pays whom for one round, per party. Bills of all parties sum to zero.

Parties: every prosumer, the outside party (``grid``; ``grid_forming`` when islanded),
``dso`` (collects network charges) and ``market_operator`` (keeps the auction's surplus
or covers its deficit, zero for budget-balanced mechanisms; as a community manager it
also trades the community's net position with the outside party). A bill is positive
when the party pays. For the outside party, bought/sold are what it bought from and sold
to everyone; for the operator, grid_import/grid_export are its own trades with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cosim.markets import ClearingResult, MarketContext

SETTLEMENT_COLUMNS = [
    "round", "party", "bus", "bought_kwh", "sold_kwh", "grid_import_kwh", "grid_export_kwh",
    "curtailed_kwh", "shed_kwh", "energy_cost", "network_charges", "bill",
]
#: Physical columns of prosumer rows (zero for other parties): consumption, PV
#: generation, battery charging (negative: discharging) and the resulting net load
#: ``load - pv + battery + curtailed - shed`` [kWh].
PHYSICAL_COLUMNS = ["load_kwh", "pv_kwh", "battery_kwh", "net_load_kwh"]
#: The market's own parties besides the prosumers and the outside party.
DSO, MARKET_OPERATOR = "dso", "market_operator"


def settle(round_no: int, ids: list[str], buses: np.ndarray, r: ClearingResult, ctx: MarketContext,
           physical: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The round's settlement table (vectorised over prosumers).

    Prosumer n pays ``buy_price[n] bought[n] - sell_price[n] sold[n] + retail imported[n]
    - feed_in exported[n]`` for energy, plus ``charge_buy[n] bought[n] + charge_sell[n]
    sold[n]`` in network charges.
    """
    buy_p = np.nan_to_num(r.buy_price_per_kwh)
    sell_p = np.nan_to_num(r.sell_price_per_kwh)
    p2p_paid = buy_p * r.bought_kwh
    p2p_received = sell_p * r.sold_kwh
    energy = p2p_paid - p2p_received + ctx.retail_price_per_kwh * r.import_kwh - ctx.feed_in_price_per_kwh * r.export_kwh
    charges = r.charges.buy * r.bought_kwh + r.charges.sell * r.sold_kwh
    n = len(ids)
    op_import, op_export = r.operator_import_kwh, r.operator_export_kwh
    imported = r.import_kwh.sum() + op_import
    exported = r.export_kwh.sum() + op_export
    outside_energy = -ctx.retail_price_per_kwh * imported + ctx.feed_in_price_per_kwh * exported
    # the operator keeps what buyers pay minus what sellers get, and pays for its own
    # trades with the outside party (a community manager's net position)
    operator_energy = (
        -(p2p_paid.sum() - p2p_received.sum())
        + ctx.retail_price_per_kwh * op_import
        - ctx.feed_in_price_per_kwh * op_export
    )
    total_charges = charges.sum()
    table = pd.DataFrame(
        {
            "round": np.full(n + 3, round_no, dtype=np.int64),
            "party": [*ids, ctx.outside_party, DSO, MARKET_OPERATOR],
            "bus": np.r_[buses, -1, -1, -1].astype(np.int64),
            "bought_kwh": np.r_[r.bought_kwh, exported, 0.0, op_export],
            "sold_kwh": np.r_[r.sold_kwh, imported, 0.0, op_import],
            "grid_import_kwh": np.r_[r.import_kwh, 0.0, 0.0, op_import],
            "grid_export_kwh": np.r_[r.export_kwh, 0.0, 0.0, op_export],
            "curtailed_kwh": np.r_[r.curtailed_kwh, 0.0, 0.0, 0.0],
            "shed_kwh": np.r_[r.shed_kwh, 0.0, 0.0, 0.0],
            "energy_cost": np.r_[energy, outside_energy, 0.0, operator_energy],
            "network_charges": np.r_[charges, 0.0, -total_charges, 0.0],
        }
    )
    table["bill"] = table.energy_cost + table.network_charges
    if physical is not None:
        for col in ("load_kwh", "pv_kwh", "battery_kwh"):
            table[col] = np.r_[physical[col], 0.0, 0.0, 0.0]
        net = physical["load_kwh"] - physical["pv_kwh"] + physical["battery_kwh"] + r.curtailed_kwh - r.shed_kwh
        table["net_load_kwh"] = np.r_[net, 0.0, 0.0, 0.0]
    return table
