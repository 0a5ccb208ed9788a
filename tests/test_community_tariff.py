"""Tests of the community tariff with a virtual battery pool (cosim.markets.community_tariff,
mechanism ``community_tariff``, sonnenCommunity): a month worked by hand, the allowance's
boundary and proration, the pool's revenue shared pro rata, zero-sum settlement on random
books (hypothesis), and a run on the hand-made feeder with monthly bills."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import interrupt_round, market_books
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.markets import MECHANISMS, MarketContext, Participants
from cosim.markets.community_tariff import (
    ALLOWANCE_USED,
    POOL_BATTERY,
    POOL_REVENUE_SHARE,
    CommunityTariff,
    monthly_bills,
)
from cosim.sim import loop
from cosim.sim.settlement import settle

MONEY_ABS = 1e-9
QTY_ABS = 1e-6
RETAIL, FEED_IN = 0.30, 0.08
IDS = ["A", "B", "C"]
#: A has a 10 kWh / 5 kW battery, B 5 kWh / 5 kW, C none.
MEMBERS = Participants(IDS, np.array([1, 2, 3]), np.zeros(3, dtype=int), np.array([True, True, False]), None,
                       np.array([10.0, 5.0, 0.0]), np.array([5.0, 5.0, 0.0]))
#: A billing month of 4 one-hour rounds; half of every battery in the pool, empty at the start.
OPTIONS = {"price_per_kwh": 0.24, "allowance_kwh_per_month": 3.0, "fee_per_month": 10.0, "sell_price_per_kwh": 0.05,
           "month_days": 4 / 24, "pool_share": 0.5, "pool_efficiency": 1.0, "pool_initial_soc": 0.0}


def ctx(t: int, n_rounds: int | None = 4) -> MarketContext:
    return MarketContext(RETAIL, FEED_IN, round_no=t, dt_h=1.0, n_rounds=n_rounds)


def run_rounds(mech, books, n_rounds=4):
    """Clear and settle each round's book; returns the results and the settlement."""
    results, tables = [], []
    for t, book in enumerate(books):
        r = mech.clear(book, ctx(t, n_rounds))
        assert r.ok, r.status
        results.append(r)
        tables.append(settle(t, IDS, np.array([1, 2, 3]), r, ctx(t, n_rounds)))
    return results, pd.concat(tables, ignore_index=True)


#: The hand-worked month: (A, B, C) orders per round.
MONTH = [
    market_books(("sell", 4.0, 0.1), ("sell", 2.0, 0.1), ("buy", 1.0, 0.3)),
    market_books(("buy", 1.0, 0.3), ("idle", 0, 0), ("buy", 2.0, 0.3)),
    market_books(("buy", 1.0, 0.3), ("idle", 0, 0), ("buy", 3.0, 0.3)),
    market_books(("buy", 2.5, 0.3), ("idle", 0, 0), ("buy", 1.0, 0.3)),
]


def test_registered():
    assert MECHANISMS["community_tariff"] is CommunityTariff


def test_hand_worked_month():
    """Three members, one billing month of four one-hour rounds. Pool: half of A's and B's
    batteries, 7.5 kWh (A 5, B 2.5) and 5 kW, empty, efficiency 1; revenue per kWh
    delivered 0.30 - 0.08 = 0.22 EUR, shared 2/3 to A, 1/3 to B. Allowance 3 kWh each,
    price 0.24 above it, fee 10, surplus bought at 0.05. By hand:

    - round 0: A sells 4, B 2 (A -0.20, B -0.10); C buys 1 (free). The pool charges the
      5 kWh surplus; fees 10 each.
    - round 1: A buys 1 (free), C 2 (free: C's allowance is used up). The pool delivers
      3 kWh: revenue 0.66, A -0.44, B -0.22.
    - round 2: A buys 1 (free), C 3 (charged: 0.72). The pool delivers its last 2 kWh
      (revenue 0.44: A -0.2933, B -0.1467); the operator imports 2 kWh (0.60).
    - round 3: A buys 2.5 (1 free, 1.5 charged: 0.36), C 1 (0.24); the operator imports
      3.5 kWh (1.05).

    Month: A 10 - 0.20 + 0.36 - 0.7333 = 9.4267; B 10 - 0.10 - 0.3667 = 9.5333; C 10 +
    0.72 + 0.24 = 10.96; operator -30 - 1.32 + 0.30 + 1.10 + 1.65 = -28.27; grid -1.65.
    The five sum to zero."""
    results, s = run_rounds(CommunityTariff(MEMBERS, options=OPTIONS), MONTH)
    assert [r.info["battery_charge_kwh"] for r in results] == pytest.approx([5.0, 0, 0, 0], abs=QTY_ABS)
    assert [r.info["battery_discharge_kwh"] for r in results] == pytest.approx([0, 3.0, 2.0, 0], abs=QTY_ABS)
    assert [r.operator_import_kwh for r in results] == pytest.approx([0, 0, 2.0, 3.5], abs=QTY_ABS)
    bills = s.groupby("party").bill.sum()
    expected = {"A": 10 - 0.20 + 0.36 - 0.22 * 5 * 2 / 3, "B": 10 - 0.10 - 0.22 * 5 / 3, "C": 10.96,
                "market_operator": -28.27, "grid": -1.65, "dso": 0.0}
    for party, amount in expected.items():
        assert bills[party] == pytest.approx(amount, abs=MONEY_ABS), party
    used = s.groupby("party").allowance_used_kwh.sum()
    assert used[["A", "B", "C"]].tolist() == pytest.approx([3.0, 0.0, 3.0], abs=QTY_ABS)
    assert s.groupby("party").membership_fees.sum()[IDS].tolist() == pytest.approx([10.0] * 3)
    # the pool's energy sits in A's and B's batteries, 2:1
    np.testing.assert_allclose(results[0].info[POOL_BATTERY], [10 / 3, 5 / 3, 0.0], atol=QTY_ABS)
    monthly = monthly_bills(s, 4)
    member = monthly.set_index("party")
    assert member.loc["C", "charged_kwh"] == pytest.approx(4.0, abs=QTY_ABS)
    assert member.loc["A", "bill"] == pytest.approx(expected["A"], abs=MONEY_ABS)
    assert monthly.bill.sum() == pytest.approx(0.0, abs=MONEY_ABS)


def test_allowance_boundary_and_new_month():
    """C buys exactly its allowance (3 kWh) in round 0: all free; 0.5 kWh more in round 1:
    all of it at 0.24; round 4 starts the next month: free again. The fee falls due in
    rounds 0 and 4."""
    books = [market_books(("idle", 0, 0), ("idle", 0, 0), ("buy", q, 0.3)) for q in (3.0, 0.5, 1.0, 1.0, 2.0)]
    results, s = run_rounds(CommunityTariff(MEMBERS, options=OPTIONS), books, n_rounds=8)
    c = s[s.party == "C"].set_index("round")
    assert c.allowance_used_kwh.tolist() == pytest.approx([3.0, 0.0, 0.0, 0.0, 2.0], abs=QTY_ABS)
    assert c.energy_cost.tolist() == pytest.approx([0.0, 0.12, 0.24, 0.24, 0.0], abs=MONEY_ABS)
    assert c.membership_fees.tolist() == pytest.approx([10.0, 0, 0, 0, 10.0])


def test_partial_month_is_prorated():
    """A run of 2 rounds covers half of a 4-round month: fee 5 and allowance 1.5 kWh."""
    books = [market_books(("idle", 0, 0), ("idle", 0, 0), ("buy", 2.0, 0.3))]
    _, s = run_rounds(CommunityTariff(MEMBERS, options=OPTIONS), books, n_rounds=2)
    c = s[s.party == "C"].iloc[0]
    assert c.membership_fees == pytest.approx(5.0)
    assert c.allowance_used_kwh == pytest.approx(1.5, abs=QTY_ABS)
    assert c.energy_cost == pytest.approx(0.5 * 0.24, abs=MONEY_ABS)


def test_reclearing_a_round_does_not_use_the_allowance_twice():
    """Network feedback clears a round again: the allowance and the pool are those of the
    round's start, whatever an earlier clearing of the same round did."""
    mech = CommunityTariff(MEMBERS, options=OPTIONS)
    book = market_books(("idle", 0, 0), ("idle", 0, 0), ("buy", 2.0, 0.3))
    for _ in range(3):
        r = mech.clear(book, ctx(0))
    assert r.info[ALLOWANCE_USED][2] == pytest.approx(2.0, abs=QTY_ABS)
    r = mech.clear(book, ctx(1))
    assert r.info[ALLOWANCE_USED][2] == pytest.approx(1.0, abs=QTY_ABS)


def test_pool_revenue_shares_sum_to_the_shared_revenue():
    """With 60 % of the revenue shared, the members' shares sum to 0.6 of the pool's
    revenue, pro rata to pooled capacity (A:B = 2:1), and the operator pays exactly that."""
    opts = {**OPTIONS, "pool_revenue_share": 0.6, "pool_initial_soc": 1.0, "pool_efficiency": 0.9}
    book = market_books(("buy", 3.0, 0.3), ("idle", 0, 0), ("buy", 2.0, 0.3))
    r = CommunityTariff(MEMBERS, options=opts).clear(book, ctx(0))
    revenue = (RETAIL - FEED_IN / 0.81) * r.info["battery_discharge_kwh"]
    assert r.info["pool_revenue"] == pytest.approx(revenue)
    share = r.info[POOL_REVENUE_SHARE]
    assert share.sum() == pytest.approx(-0.6 * revenue)
    assert share[0] == pytest.approx(2 * share[1]) and share[2] == 0.0
    s = settle(0, IDS, np.array([1, 2, 3]), r, ctx(0))
    assert s.pool_revenue_share.sum() == pytest.approx(0.0, abs=MONEY_ABS)
    assert float(s.loc[s.party == "market_operator", "pool_revenue_share"].iloc[0]) == pytest.approx(0.6 * revenue)


@settings(max_examples=40, deadline=None)
@given(
    quantities=st.lists(st.lists(st.floats(-5.0, 5.0), min_size=3, max_size=3), min_size=1, max_size=6),
    allowance=st.floats(0.0, 10.0), fee=st.floats(0.0, 30.0), price=st.floats(0.0, 0.5),
    pool_share=st.floats(0.0, 1.0), revenue_share=st.floats(0.0, 1.0), soc=st.floats(0.0, 1.0),
)
def test_zero_sum_on_random_books(quantities, allowance, fee, price, pool_share, revenue_share, soc):
    """Any books, any tariff: every round's bills sum to zero, no member uses more free
    energy than its allowance, and the members' pool shares are the shared revenue."""
    opts = {**OPTIONS, "allowance_kwh_per_month": allowance, "fee_per_month": fee, "price_per_kwh": price,
            "pool_share": pool_share, "pool_revenue_share": revenue_share, "pool_initial_soc": soc,
            "pool_efficiency": 0.95}
    books = [market_books(*[("buy", -q, 0.3) if q < 0 else ("sell", q, 0.1) for q in row]) for row in quantities]
    results, s = run_rounds(CommunityTariff(MEMBERS, options=opts), books, n_rounds=len(books))
    assert s.groupby("round").bill.sum().abs().max() < MONEY_ABS
    members = s[s.party.isin(IDS)]
    used = members.groupby([members["round"] // 4, "party"]).allowance_used_kwh.sum()
    covered = np.minimum(len(books) - 4 * used.index.get_level_values(0).to_numpy(), 4) / 4  # prorated months
    assert (used.to_numpy() <= allowance * covered + QTY_ABS).all()
    for r in results:
        assert r.info[POOL_REVENUE_SHARE].sum() == pytest.approx(-r.info["pool_revenue_shared"], abs=MONEY_ABS)


def test_runs_with_monthly_bills(tmp_path):
    """Six hours on the hand-made feeder: the pool's power flows at the members' buses
    (the power flow's total load is the members' net purchases plus the pool's charge),
    the home batteries keep what the pool leaves (70 %), every round's bills sum to zero,
    and monthly_bills.parquet and the report hold the month."""
    path = tmp_path / "tariff.yaml"
    path.write_text("""
name: tariff
network: feeder
start: 2016-07-21 06:00
duration: 6h
seed: 3
prosumers: {pv_share: 0.6, pv_kwp: 8, battery_share: 1.0, battery_kwh: 10, battery_kw: 5}
market:
  mechanism: community_tariff
  options: {allowance_kwh_per_month: 100, fee_per_month: 20, pool_share: 0.3, sell_price_per_kwh: 0.0}
""")
    run = loop.run_scenario(path, out=tmp_path / "out", progress=False, report=True)
    s = pd.read_parquet(run / "settlement.parquet")
    assert s.groupby("round").bill.sum().abs().max() < MONEY_ABS
    rounds = pd.read_parquet(run / "rounds.parquet")
    assert rounds.info_battery_charge_kwh.sum() > 0
    members = s[s.bus >= 0]
    net = (members.bought_kwh + members.grid_import_kwh - members.sold_kwh - members.grid_export_kwh).groupby(
        members["round"]).sum()
    pool = (rounds.info_battery_charge_kwh - rounds.info_battery_discharge_kwh).to_numpy()
    buses = pd.read_parquet(run / "buses.parquet").groupby("round").p_kw.sum()
    np.testing.assert_allclose(buses.to_numpy() * 0.25, net.to_numpy() + pool, atol=1e-6)
    storage = pd.read_parquet(run / "storage.parquet")
    assert storage[storage.asset == "battery"].energy_kwh.max() <= 7.0 + 1e-9
    monthly = pd.read_parquet(run / "monthly_bills.parquet")
    assert monthly.month.unique().tolist() == [0]
    assert monthly.bill.sum() == pytest.approx(0.0, abs=1e-6)
    fee = monthly.loc[monthly.party.isin(set(members.party)), "membership_fees"]
    assert fee.to_numpy() == pytest.approx(20.0 * 24 / (30 * 96))
    assert "Monthly bills (community tariff)" in (run / "report.html").read_text()


def test_resume_keeps_the_allowance_and_the_pool(tmp_path, monkeypatch):
    """Billing months of 3 h (12 rounds) in a 6 h run, checkpoints every 5 rounds,
    interrupted in round 13 (the second month): the resumed run's settlement and monthly
    bills equal the uninterrupted run's (allowance used so far and the pool's state of
    charge come back from the checkpoint)."""
    from cosim.cli import main

    path = tmp_path / "tariff.yaml"
    path.write_text("""
name: tariff-resume
network: feeder
start: 2016-07-21 06:00
duration: 6h
seed: 3
prosumers: {pv_share: 0.6, pv_kwp: 8, battery_share: 1.0}
market:
  mechanism: community_tariff
  options: {allowance_kwh_per_month: 5, fee_per_month: 2, pool_share: 0.5, month_days: 0.125}
""")
    ref = loop.run_scenario(path, out=tmp_path / "ref", progress=False, report=False, chunk_rounds=5)
    interrupt_round(monkeypatch, 14)
    with pytest.raises(KeyboardInterrupt):
        loop.run_scenario(path, out=tmp_path / "out", progress=False, report=False, chunk_rounds=5)
    monkeypatch.undo()
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--no-report", "--resume"]) == 0
    for name in ("settlement.parquet", "monthly_bills.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(ref / name), pd.read_parquet(tmp_path / "out" / name),
                                      check_exact=True, obj=name)
    monthly = pd.read_parquet(ref / "monthly_bills.parquet")
    assert monthly.month.unique().tolist() == [0, 1]
