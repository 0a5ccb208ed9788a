"""Market mechanisms, looked up by name.

Each mechanism is a class constructed once per run with the list of participants (its
Pyomo model is built then) and called every round with ``clear(orders, ctx, cuts,
charges)``, returning a `ClearingResult`.
"""

from cosim.markets import (
    auctions,
    bilateral,
    community,
    community_tariff,
    continuous,
    flexibility,
    hybrid,
    shapley,
    stackelberg,
)
from cosim.markets.base import (
    TRADE_COLUMNS,
    Charges,
    ClearingResult,
    MarketContext,
    Mechanism,
    MechanismOptions,
    NetworkCuts,
    OrderArrays,
    Participants,
)
from cosim.markets.uniform import NoP2P, UniformDoubleAuction

#: Registry: mechanism name -> class. Each family module lists its classes in MECHANISMS.
MECHANISMS = {
    cls.name: cls
    for cls in [
        UniformDoubleAuction,
        NoP2P,
        *auctions.MECHANISMS,
        *community.MECHANISMS,
        *community_tariff.MECHANISMS,
        *hybrid.MECHANISMS,
        *bilateral.MECHANISMS,
        *shapley.MECHANISMS,
        *stackelberg.MECHANISMS,
        *continuous.MECHANISMS,
        *flexibility.MECHANISMS,
    ]
}


def get_mechanism(name: str):
    try:
        return MECHANISMS[name]
    except KeyError:
        raise KeyError(f"unknown mechanism {name!r}; expected one of {sorted(MECHANISMS)}") from None


__all__ = [
    "Mechanism",
    "MechanismOptions",
    "Participants",
    "MECHANISMS",
    "TRADE_COLUMNS",
    "Charges",
    "ClearingResult",
    "MarketContext",
    "NetworkCuts",
    "OrderArrays",
    "get_mechanism",
]
