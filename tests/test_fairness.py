"""Tests of cosim.reporting.fairness on hand-worked inputs.

Jain's index: R. Jain, D.-M. Chiu, W. R. Hawe, "A quantitative measure of fairness and
discrimination for resource allocation in shared computer systems", DEC TR-301, 1984:
``J = (sum x)^2 / (n sum x^2)``, 1 for equal shares, k/n when k of n share equally and the
rest get nothing. Gini coefficient: C. Gini, "Variabilita e mutabilita", 1912, as the mean
absolute difference over twice the mean (A. Sen, "On Economic Inequality", 1973):
``G = sum_i sum_j |x_i - x_j| / (2 n^2 mean)``, 0 for equal shares, 1 - k/n when k of n
share equally and the rest get nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import report_page, report_row
from hypothesis import given, settings
from hypothesis import strategies as st

from cosim.reporting.fairness import (
    curtailment_per_kwp,
    fairness_summary,
    gini,
    jain_index,
    largest_share,
    per_prosumer,
    shedding_per_load,
)


def gini_by_definition(x) -> float:
    """The double sum of Gini's mean difference, written out."""
    x = np.asarray(x, float)
    n = len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * x.mean())


# -- Jain's index ---------------------------------------------------------------------------


def test_jain_hand_worked():
    # (1 + 2 + 3)^2 / (3 (1 + 4 + 9)) = 36 / 42
    assert jain_index([1.0, 2.0, 3.0]) == pytest.approx(36.0 / 42.0, rel=1e-15)
    # (0.5 + 1.5)^2 / (2 (0.25 + 2.25)) = 4 / 5
    assert jain_index([0.5, 1.5]) == pytest.approx(0.8, rel=1e-15)


@pytest.mark.parametrize(("k", "n"), [(1, 1), (1, 4), (2, 4), (3, 10), (10, 10)])
def test_jain_of_k_equal_shares_among_n_is_k_over_n(k, n):
    x = np.r_[np.full(k, 2.5), np.zeros(n - k)]
    assert jain_index(x) == pytest.approx(k / n, rel=1e-12)


def test_jain_is_undefined_with_nothing_to_share():
    assert np.isnan(jain_index([0.0, 0.0, 0.0]))
    assert np.isnan(jain_index([]))


# -- Gini coefficient -----------------------------------------------------------------------


def test_gini_hand_worked():
    # ordered pairs of (1, 2, 3) differ by 1, 2, 1, twice over: 8; 2 n^2 mean = 2 * 9 * 2 = 36
    assert gini([1.0, 2.0, 3.0]) == pytest.approx(8.0 / 36.0, rel=1e-15)
    # (0, 0, 4, 4): pairs across the groups differ by 4, 2 * 2 * 2 of them = 32; 2 * 16 * 2 = 64
    assert gini([0.0, 4.0, 0.0, 4.0]) == pytest.approx(0.5, rel=1e-15)


@pytest.mark.parametrize(("k", "n"), [(1, 1), (1, 4), (2, 4), (3, 10), (10, 10)])
def test_gini_of_k_equal_shares_among_n_is_one_minus_k_over_n(k, n):
    x = np.r_[np.full(k, 0.7), np.zeros(n - k)]
    assert gini(x) == pytest.approx(1.0 - k / n, abs=1e-12)


def test_gini_is_undefined_with_nothing_to_share():
    assert np.isnan(gini([0.0, 0.0]))
    assert np.isnan(gini([]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30).filter(lambda x: sum(x) > 1e-6),
       st.floats(0.01, 100.0))
def test_indices_match_their_definitions_bounds_and_scale(x, scale):
    n = len(x)
    assert gini(x) == pytest.approx(gini_by_definition(x), rel=1e-9, abs=1e-12)
    assert 1.0 / n - 1e-12 <= jain_index(x) <= 1.0 + 1e-12
    assert -1e-12 <= gini(x) <= 1.0 - 1.0 / n + 1e-12
    # both are free of the unit: kWh/kWp or Wh/kWp give the same index
    assert jain_index(np.asarray(x) * scale) == pytest.approx(jain_index(x), rel=1e-9)
    assert gini(np.asarray(x) * scale) == pytest.approx(gini(x), rel=1e-9, abs=1e-12)


def test_negative_or_non_finite_values_are_refused():
    for bad in ([1.0, -0.5], [1.0, float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="expected finite values >= 0"):
            jain_index(bad)
        with pytest.raises(ValueError, match="expected finite values >= 0"):
            gini(bad)


# -- per-prosumer normalisation and largest share ---------------------------------------------


def test_largest_share_and_who():
    share, who = largest_share(pd.Series({"P1": 40.7, "P2": 100.0, "P3": 26.2}))
    assert (share, who) == (pytest.approx(100.0 / 166.9), "P2")
    assert largest_share(pd.Series({"P1": 0.0})) == (pytest.approx(float("nan"), nan_ok=True), None)


def test_curtailment_per_kwp_counts_every_pv_owner_and_only_them():
    curtailed = pd.Series({"a": 9.0, "c": 3.0})  # b was never curtailed, d has no PV
    kwp = pd.Series({"a": 9.0, "b": 4.5, "c": 6.0, "d": 0.0})
    per_kwp = curtailment_per_kwp(curtailed, kwp)
    assert per_kwp.to_dict() == {"a": 1.0, "b": 0.0, "c": 0.5}  # [kWh/kWp]


def test_shedding_per_load():
    shed = pd.Series({"a": 2.0})
    load = pd.Series({"a": 40.0, "b": 10.0})
    assert shedding_per_load(shed, load).to_dict() == {"a": 0.05, "b": 0.0}  # [kWh/kWh]


# -- fairness_summary on a hand-made run ------------------------------------------------------


def hand_run() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two rounds, prosumers P1..P4 and the other parties. Over the run: curtailed 6, 2, 0, 0
    kWh (P4 has no PV), shed 0, 0, 1, 3 kWh; load 10, 10, 20, 30 kWh; PV 6, 4, 4, 0 kWp."""
    parties = ["P1", "P2", "P3", "P4", "grid", "dso", "market_operator"]
    rows = []
    for rnd, curt, shed in ((0, [4.0, 2.0, 0, 0], [0, 0, 1.0, 0]), (1, [2.0, 0, 0, 0], [0, 0, 0, 3.0])):
        load = [5.0, 5.0, 10.0, 15.0]
        for i, party in enumerate(parties):
            p = i < 4
            rows.append({"round": rnd, "party": party, "curtailed_kwh": curt[i] if p else 0.0,
                         "shed_kwh": shed[i] if p else 0.0, "load_kwh": load[i] if p else 0.0,
                         "pv_kwh": 1.0 if p else 0.0, "bill": 1.0})
    prosumers = pd.DataFrame({"id": ["P1", "P2", "P3", "P4"], "pv_kwp": [6.0, 4.0, 4.0, 0.0], "bus": [1, 2, 3, 4]})
    return pd.DataFrame(rows), prosumers


def test_per_prosumer_totals():
    table = per_prosumer(*hand_run())
    assert table.index.tolist() == ["P1", "P2", "P3", "P4"]
    assert table.curtailed_kwh.tolist() == [6.0, 2.0, 0.0, 0.0]
    assert table.shed_kwh.tolist() == [0.0, 0.0, 1.0, 3.0]
    assert table.load_kwh.tolist() == [10.0, 10.0, 20.0, 30.0]
    np.testing.assert_allclose(table.curtailed_kwh_per_kwp, [1.0, 0.5, 0.0, np.nan])
    np.testing.assert_allclose(table.shed_kwh_per_kwh_load, [0.0, 0.0, 0.05, 0.1])


def test_fairness_summary_hand_worked():
    out = fairness_summary(*hand_run())
    c = out["curtailment"]
    # PV owners P1, P2, P3: 1, 0.5, 0 kWh/kWp
    assert (c["total_kwh"], c["population"], c["affected"]) == (8.0, 3, 2)
    assert c["mean"] == pytest.approx(0.5) and c["max"] == pytest.approx(1.0)
    assert c["jain_index"] == pytest.approx(1.5**2 / (3 * 1.25))  # 2.25 / 3.75 = 0.6
    assert c["gini"] == pytest.approx(2 * (0.5 + 1.0 + 0.5) / (2 * 9 * 0.5))  # 4 / 9
    assert (c["largest_share"], c["largest_party"]) == (pytest.approx(6.0 / 8.0), "P1")
    assert c["unit"] == "kWh/kWp"
    s = out["shedding"]
    # everyone has load: 0, 0, 0.05, 0.1 kWh/kWh
    assert (s["total_kwh"], s["population"], s["affected"]) == (4.0, 4, 2)
    assert s["jain_index"] == pytest.approx(0.15**2 / (4 * 0.0125))  # 0.0225 / 0.05 = 0.45
    assert s["gini"] == pytest.approx(gini_by_definition([0, 0, 0.05, 0.1]))
    assert s["gini"] == pytest.approx(0.5833333333)  # pairs: 0.05*2*2 + 0.1*2*2 + 0.05*2 = 0.7; / (2*16*0.0375)
    assert (s["largest_share"], s["largest_party"]) == (pytest.approx(0.75), "P4")
    json.dumps(out, allow_nan=False)  # JSON as it stands


def test_fairness_summary_without_curtailment_or_shedding_is_json_with_nulls():
    settlement, prosumers = hand_run()
    settlement[["curtailed_kwh", "shed_kwh"]] = 0.0
    out = fairness_summary(settlement, prosumers)
    for part in ("curtailment", "shedding"):
        assert out[part]["total_kwh"] == 0.0 and out[part]["affected"] == 0
        assert out[part]["jain_index"] is None and out[part]["gini"] is None
        assert out[part]["largest_share"] is None and out[part]["largest_party"] is None
    json.dumps(out, allow_nan=False)


def test_fairness_summary_names_missing_columns():
    settlement, prosumers = hand_run()
    with pytest.raises(ValueError, match="settlement: .*missing load_kwh"):
        fairness_summary(settlement.drop(columns="load_kwh"), prosumers)
    with pytest.raises(ValueError, match="prosumers: .*missing pv_kwp"):
        fairness_summary(settlement, prosumers.drop(columns="pv_kwp"))


# -- the report's fairness section --------------------------------------------------------------


def test_report_has_a_fairness_table_and_figure(tmp_path):
    """On a synthetic run folder (tests/test_report.py) with prosumers.parquet and a settlement
    in which p000 carries 3 kWh and p001 1 kWh of curtailment, all with 5 kWp: 0.6 and 0.2
    kWh/kWp, the other three 0; Jain (0.8)^2 / (5 * 0.4) = 0.32; largest share 75 %."""
    from test_report import make_run

    from cosim.reporting.report import FAIRNESS_FIGURE, write_report

    run = make_run(tmp_path, days=1, n_prosumers=5, variants=())
    settlement = pd.read_parquet(run / "settlement.parquet")
    settlement["load_kwh"] = np.where(settlement.party.str.startswith("p"), 0.25, 0.0)
    first = settlement["round"] == 0
    settlement.loc[first & (settlement.party == "p000"), "curtailed_kwh"] = 3.0
    settlement.loc[first & (settlement.party == "p001"), "curtailed_kwh"] = 1.0
    settlement.to_parquet(run / "settlement.parquet", index=False)
    pd.DataFrame({"id": [f"p{i:03d}" for i in range(5)], "pv_kwp": 5.0}).to_parquet(run / "prosumers.parquet")
    text = write_report(run).read_text(encoding="utf-8")
    page = report_page(text)
    assert "Fairness of curtailment and shedding" in page["headings"]
    assert f"src='figures/{FAIRNESS_FIGURE}.png'" in text
    assert (run / "figures" / f"{FAIRNESS_FIGURE}.png").read_bytes().startswith(b"\x89PNG")
    section = text[text.index("<h2>Fairness"):text.index("<h2>Figures</h2>")]
    fairness = report_page(section)
    assert report_row(fairness, "Energy [kWh]")[0][0] == "4.0"
    assert report_row(fairness, "Prosumers affected, of 5 [count]")[0][0] == "2"
    values = {row[0][0]: row[1][0] for row in fairness["tables"][0] if len(row) > 1}
    assert [v for k, v in values.items() if k.endswith("[kWh/kWp]")] == ["0.160", "0.600"]  # mean, largest per kWp
    assert "0.320" in [v for k, v in values.items() if k.endswith("[-]")]  # Jain
    assert f"{gini([0.6, 0.2, 0, 0, 0]):.3f}" in section
    assert "75.0 (p000)" in section
    assert "No variant had any shedding." in section


def test_report_without_prosumers_table_has_no_fairness_section(tmp_path):
    from test_report import make_run

    from cosim.reporting.report import fairness_section, load_run

    run = make_run(tmp_path, days=1, n_prosumers=3, variants=())
    assert fairness_section(load_run(run)) == ""
    pd.DataFrame({"id": ["p000", "p001", "p002"], "pv_kwp": 5.0}).to_parquet(run / "prosumers.parquet")
    text = fairness_section(load_run(run))  # settlement without load_kwh
    assert "Left out: settlement.parquet: expected columns" in text and "missing load_kwh" in text


# -- the rules in whole runs, and the comparison of them -----------------------------------------

TINY_SCENARIO = """
name: tiny-{rule}
network: feeder
start: 2016-07-21 12:00
duration: 1h
market: {{mechanism: uniform, bidding: zero-intelligence}}
prosumers: {{pv_share: 1.0, pv_kwp: 12}}
feedback: {{v_max_pu: 1.004, curtailment_rule: {rule}}}
"""
RULES = ("sensitivity", "pro_rata", "equal_share")


@pytest.fixture(scope="module")
def rule_runs(tmp_path_factory):
    """The small feeder at noon with a band tight enough (1.004 pu) that PV must be curtailed,
    once per curtailment rule."""
    import warnings

    from cosim.sim import loop
    base = tmp_path_factory.mktemp("rules")
    out = {}
    for rule in RULES:
        path = base / f"{rule}.yaml"
        path.write_text(TINY_SCENARIO.format(rule=rule))
        with warnings.catch_warnings():  # equal_share warns while the loop gives it no PV energies
            warnings.simplefilter("ignore", UserWarning)
            out[rule] = loop.run_scenario(path, out=base / rule, progress=False, report=False)
    return out


def test_every_rule_keeps_the_limits_in_a_run_and_the_sharing_ones_spread_the_curtailment(rule_runs):
    fair = {}
    for rule, run in rule_runs.items():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["variants"]["market"]["violation_rounds"] == 0, rule
        assert summary["variants"]["market_no_feedback"]["violation_rounds"] > 0, rule
        fair[rule] = fairness_summary(pd.read_parquet(run / "settlement.parquet"),
                                      pd.read_parquet(run / "prosumers.parquet"))["curtailment"]
        assert fair[rule]["total_kwh"] == pytest.approx(summary["variants"]["market"]["curtailed_kwh"], rel=1e-9)
    sens = fair["sensitivity"]
    for rule in ("pro_rata", "equal_share"):
        assert fair[rule]["total_kwh"] > sens["total_kwh"]  # fairness costs energy
        assert fair[rule]["affected"] == fair[rule]["population"] > sens["affected"]
        assert fair[rule]["jain_index"] > sens["jain_index"]
        assert fair[rule]["gini"] < sens["gini"]
        assert fair[rule]["largest_share"] < sens["largest_share"]


def test_comparison_shows_the_rules_energy_and_fairness(rule_runs, tmp_path):
    from cosim.reporting.compare import write_comparison

    page = write_comparison([rule_runs[r] for r in RULES], tmp_path / "cmp")
    text = page.read_text()
    for row in ("curtailment rule", "curtailment per kWp, Jain&#x27;s index [-]",
                "curtailment per kWp, Gini coefficient [-]", "largest share of the curtailment [%]"):
        assert row in text
    cells = {c[0] for rows in report_page(text)["tables"] for row in rows for c in row}
    assert set(RULES) <= cells
    assert (tmp_path / "cmp" / "figures" / "fairness.png").stat().st_size > 1000
