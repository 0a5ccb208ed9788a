"""Community battery auction after Tushar et al. (2016): hand-worked example, individual
rationality, budget balance and market clearing on random instances, and on the rural3 fleet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.battery_auction import (
    RESULT_COLUMNS,
    best_response,
    breakeven,
    reservation_price,
    run_auction,
)

#: Tolerances [kWh], [currency], [currency/kWh].
KWH_TOL = 1e-9
MONEY_TOL = 1e-9
PRICE_TOL = 1e-9


def test_hand_worked_example():
    """Hand-worked on the mechanism of W. Tushar, B. Chai, C. Yuen, S. Huang, D. B. Smith,
    H. V. Poor and Z. Yang, 2016, "Energy storage sharing in smart grid: a modified
    auction-based approach", IEEE Trans. Smart Grid 7(3), as cosim.battery_auction reads it.

    RUs a-d, 2 kWh each, K = 0.3, 0.45, 0.6, 1.5: reservation prices 0.1, 0.15, 0.2, 0.5.
    SFCs x (1.5 kWh, 0.9), y (1 kWh, 0.8), z (3 kWh, 0.6). The efficient trade ends at RU c
    and SFC z, which are left out: a, b share with x, y in [0.2, 0.6]. Below 0.3 neither
    RU is saturated: 6 - 0.75 / p = 2.5 gives p = 3/14; a shares 3 - 0.3 / p = 1.6 kWh,
    b 3 - 0.45 / p = 0.9 kWh.
    """
    owners = pd.DataFrame({"id": list("abcd"), "capacity_kwh": [2.0] * 4, "preference": [0.3, 0.45, 0.6, 1.5]})
    sfcs = pd.DataFrame({"id": list("xyz"), "demand_kwh": [1.5, 1.0, 3.0], "bid_per_kwh": [0.9, 0.8, 0.6]})
    res = run_auction(owners, sfcs)
    assert res.interval == pytest.approx((0.2, 0.6))
    assert res.price_per_kwh == pytest.approx(3.0 / 14.0, abs=PRICE_TOL)
    p = res.parties.set_index("id")
    assert list(res.parties.columns) == RESULT_COLUMNS
    np.testing.assert_allclose(p.loc[list("abcd"), "quantity_kwh"], [1.6, 0.9, 0.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(p.loc[list("xyz"), "quantity_kwh"], [1.5, 1.0, 0.0], atol=1e-8)
    assert list(p.participates) == [True, True, False, False, True, True, False]
    np.testing.assert_allclose(p.loc["a", "utility"], 0.3 * np.log(1.4) + 1.6 * 3 / 14, atol=1e-8)
    np.testing.assert_allclose(p.loc["x", "payment"], 1.5 * 3 / 14, atol=1e-8)


def test_breakeven_and_best_response():
    """Best response maximises the RU's utility on a grid; reservation price is where it starts sharing."""
    e, k = np.array([4.0]), np.array([2.0])
    r = reservation_price(e, k)[0]
    assert best_response(r * 0.999, e, k)[0] == 0.0
    assert best_response(r * 1.01, e, k)[0] > 0.0
    grid = np.linspace(0, 4, 40001)
    for p in (0.45, 0.7, 2.5):
        u = k[0] * np.log1p(e[0] - grid) + p * grid
        assert abs(best_response(p, e, k)[0] - grid[np.argmax(u)]) < 1e-3
    assert breakeven(np.array([0.5]), np.array([1.0]), np.array([0.4]), np.array([1.0])) == (-1, -1)


def test_no_trade_when_reduction_leaves_nobody():
    """One RU and one SFC: trade reduction leaves no participant; nobody pays, nobody loses."""
    owners = pd.DataFrame({"id": ["a"], "capacity_kwh": [5.0], "preference": [0.6]})
    sfcs = pd.DataFrame({"id": ["x"], "demand_kwh": [3.0], "bid_per_kwh": [0.9]})
    res = run_auction(owners, sfcs)
    assert np.isnan(res.price_per_kwh) and res.shared_kwh == 0.0
    assert (res.parties.payment == 0).all() and (res.parties.utility >= res.parties.utility_alone - MONEY_TOL).all()


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="missing preference"):
        run_auction(pd.DataFrame({"id": ["a"], "capacity_kwh": [1.0]}),
                    pd.DataFrame({"id": ["x"], "demand_kwh": [1.0], "bid_per_kwh": [0.5]}))
    with pytest.raises(ValueError, match="bid_per_kwh"):
        run_auction(pd.DataFrame({"id": ["a"], "capacity_kwh": [1.0], "preference": [1.0]}),
                    pd.DataFrame({"id": ["x"], "demand_kwh": [1.0], "bid_per_kwh": [-0.5]}))


@settings(max_examples=60, deadline=None)
@given(
    owners=st.lists(st.tuples(st.floats(0.5, 15.0), st.floats(0.01, 5.0)), min_size=1, max_size=12),
    sfcs=st.lists(st.tuples(st.floats(0.1, 20.0), st.floats(0.0, 1.5)), min_size=1, max_size=10),
)
def test_individually_rational_budget_balanced_and_clearing(owners, sfcs):
    """Individual rationality: no RU is worse off than keeping all its capacity, no SFC pays
    more than its bid; payments balance; what RUs share is what SFCs get; the price lies in
    the trade-reduction interval and, inside it, the RUs' best responses meet the demand."""
    o = pd.DataFrame({"id": [f"o{i}" for i in range(len(owners))], "capacity_kwh": [a for a, _ in owners],
                      "preference": [b for _, b in owners]})
    f = pd.DataFrame({"id": [f"f{i}" for i in range(len(sfcs))], "demand_kwh": [a for a, _ in sfcs],
                      "bid_per_kwh": [b for _, b in sfcs]})
    res = run_auction(o, f)
    p = res.parties
    assert (p.utility >= p.utility_alone - MONEY_TOL).all()
    assert abs(p.payment.sum()) < MONEY_TOL * max(1.0, p.payment.abs().sum())
    owners_out, sfcs_out = p[p.role == "owner"], p[p.role == "facility"]
    assert abs(owners_out.quantity_kwh.sum() - sfcs_out.quantity_kwh.sum()) < 1e-7
    assert (owners_out.quantity_kwh <= o.capacity_kwh.to_numpy() + KWH_TOL).all()
    assert (sfcs_out.quantity_kwh <= f.demand_kwh.to_numpy() + KWH_TOL).all()
    assert (p.quantity_kwh[~p.participates] == 0).all()
    if res.shared_kwh > 0:
        price = res.price_per_kwh
        lo, hi = res.interval
        assert lo - PRICE_TOL <= price <= hi + PRICE_TOL
        # SFCs served pay at most their bid; RUs sharing get at least their reservation price
        assert (sfcs_out.price_per_kwh[sfcs_out.quantity_kwh > 0] >= price - PRICE_TOL).all()
        assert (owners_out.price_per_kwh[owners_out.quantity_kwh > 0] <= price + PRICE_TOL).all()
        demand = f.demand_kwh[sfcs_out.participates.to_numpy()].sum()
        offered = best_response(price, o.capacity_kwh[owners_out.participates.to_numpy()],
                                o.preference[owners_out.participates.to_numpy()]).sum()
        if lo + PRICE_TOL < price < hi - PRICE_TOL:  # interior: the market clears exactly
            assert offered == pytest.approx(demand, rel=1e-6)


def test_on_rural3_fleet():
    """Battery owners of the rural3 fleet share with PV owners that have none: individually
    rational and budget balanced on real SimBench profiles."""
    from cosim.battery_auction import auction_from_fleet
    from cosim.networks import REPO_NETWORKS, build_net, load_network_spec
    from cosim.prosumers import build_fleet
    from cosim.scenario import Scenario

    spec = load_network_spec(REPO_NETWORKS / "rural3.yaml")
    sc = Scenario.model_validate({"name": "t", "network": "rural3", "start": "2016-07-21", "duration": "1d",
                                  "resolution": "1h", "prosumers": {"pv_share": 0.6, "battery_share": 0.4}})
    fleet = build_fleet(build_net(spec), spec, sc)
    res = auction_from_fleet(fleet, sc)
    p = res.parties
    assert (p.role == "owner").sum() == round(0.4 * fleet.n)
    assert res.shared_kwh > 0
    assert (p.utility >= p.utility_alone - MONEY_TOL).all()
    assert abs(p.payment.sum()) < 1e-9
