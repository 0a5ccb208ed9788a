"""Settlement is zero-sum: the bills of all parties add up to zero in every round, for
any order book, outside caps and network charges on the physical injections (hypothesis
on random inputs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.markets import Charges, MarketContext, OrderArrays
from cosim.markets.base import fallback_result
from cosim.markets.uniform import NoP2P, UniformDoubleAuction
from cosim.sim.settlement import DSO, MARKET_OPERATOR, settle
from cosim.sim.tariff import NetworkTariff

N = 12
MONEY_TOL = 1e-9
IDS = [f"P{i}" for i in range(N)]


@pytest.fixture(scope="module")
def auction():
    return UniformDoubleAuction(IDS, max_cuts=2)


books = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell", "idle"]),
        st.floats(0.0, 5.0),
        st.floats(0.0, 0.5),
        st.floats(-0.05, 0.05),
    ),
    min_size=N,
    max_size=N,
)


def _arrays(rows):
    side = np.array([r[0] for r in rows])
    q = np.array([r[1] for r in rows])
    price = np.array([r[2] for r in rows])
    return OrderArrays(np.where(side == "buy", q, 0.0), np.where(side == "sell", q, 0.0), price, price)


@settings(max_examples=60, deadline=None)
@given(rows=books, caps=st.tuples(st.floats(0, 20), st.floats(0, 20)), islanded=st.booleans(),
       charged=st.sampled_from([None, "flat", "sensitivity"]))
def test_bills_sum_to_zero(auction, rows, caps, islanded, charged):
    orders = _arrays(rows)
    loss_factors = np.array([r[3] for r in rows])  # per bus [kW/kW]
    ctx = MarketContext(0.3, 0.08, outside_party="grid_forming" if islanded else "grid",
                        import_cap_kwh=caps[0] if islanded else np.inf,
                        export_cap_kwh=caps[1] if islanded else np.inf)
    r = auction.clear(orders, ctx)
    assert r.ok
    charges = None
    if charged:
        charges = NetworkTariff.of(charged, 0.2, loss_factors, np.arange(N)).charges(r.injection_kwh)
    table = settle(0, IDS, np.arange(N), r, ctx, network_charges=charges)
    assert abs(table.bill.sum()) < MONEY_TOL
    assert set(table.party) == {*IDS, ctx.outside_party, DSO, MARKET_OPERATOR}
    dso = table.set_index("party").loc[DSO]
    assert dso.bill == pytest.approx(0.0 if charges is None else -charges.sum(), abs=1e-12)
    # uniform pricing is budget-balanced: the market operator neither gains nor loses
    assert table.set_index("party").loc[MARKET_OPERATOR].bill == pytest.approx(0.0, abs=1e-9)


def test_hand_worked_settlement():
    """Worked by hand: buyer A wants 2 kWh at 0.30, seller B offers 3 kWh at 0.10, a flat
    network charge of 0.05/kWh on locally supplied withdrawals, retail 0.30, feed-in
    0.08, k = 0.5.

    A's bid 0.30 >= 0.10, so 2 kWh trade P2P; B's third kWh goes to the grid. B's 3 kWh
    injected cover all of A's 2 kWh withdrawn, so A pays the charge on 2 kWh. Clearing interval: accepted ask 0.10 <= p (B sells), and B's unsold kWh at
    0.10 needs p <= 0.10 (else B would sell more) -> p = 0.10.
    Bills: A 2 x (0.10 + 0.05) = 0.30; B -(2 x 0.10 + 1 x 0.08) = -0.28; grid buys 1 kWh
    at 0.08 -> +0.08; dso collects 0.10 -> -0.10; market operator 0. Sum 0.
    """
    auction = UniformDoubleAuction(["A", "B"], max_cuts=1)
    orders = OrderArrays(np.array([2.0, 0.0]), np.array([0.0, 3.0]), np.array([0.30, 0.0]), np.array([0.0, 0.10]))
    ctx = MarketContext(0.30, 0.08, k=0.5)
    r = auction.clear(orders, ctx)
    assert r.price_per_kwh == pytest.approx(0.10)
    charges = NetworkTariff.of("flat", 0.05, None, np.array([0, 1])).charges(r.injection_kwh)
    table = settle(0, ["A", "B"], np.array([1, 2]), r, ctx, network_charges=charges).set_index("party")
    assert table.loc["A", "bill"] == pytest.approx(2 * 0.10 + 2 * 0.05)
    assert table.loc["B", "bill"] == pytest.approx(-(2 * 0.10 + 1 * 0.08))
    assert table.loc["grid", "bill"] == pytest.approx(0.08)
    assert table.loc["dso", "bill"] == pytest.approx(-0.10)
    assert table.bill.sum() == pytest.approx(0.0, abs=1e-12)


def test_fallback_and_baseline_are_zero_sum():
    orders = OrderArrays(np.array([1.0, 0.0, 2.0]), np.array([0.0, 4.0, 0.0]), np.full(3, 0.3), np.full(3, 0.08))
    ctx = MarketContext(0.3, 0.08, outside_party="grid_forming", import_cap_kwh=1.5, export_cap_kwh=1.0)
    r = fallback_result(orders, ctx, Charges.none(3), ["a", "b", "c"])
    assert r.shed_kwh.sum() == pytest.approx(1.5) and r.curtailed_kwh.sum() == pytest.approx(3.0)
    assert abs(settle(0, ["a", "b", "c"], np.arange(3), r, ctx).bill.sum()) < MONEY_TOL
    base = NoP2P(["a", "b", "c"], max_cuts=1).clear(orders, MarketContext(0.3, 0.08))
    assert base.bought_kwh.sum() == 0 and base.sold_kwh.sum() == 0
    table = settle(0, ["a", "b", "c"], np.arange(3), base, MarketContext(0.3, 0.08))
    assert abs(table.bill.sum()) < MONEY_TOL
    assert isinstance(table, pd.DataFrame)
