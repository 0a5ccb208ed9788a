"""Tests of cosim.reporting.report on small synthetic run folders that follow the results contract."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pandas as pd
import pytest
from conftest import report_page, report_row

from cosim.config.errors import InputError
from cosim.reporting.report import FIGURES, MAX_POINTS, load_run, time_base, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_FIGURES = [n for n in FIGURES if n != "grid_forming"]

KPIS_MARKET = {
    "prosumer_bills_total": 1234.5678,
    "prosumer_bill_mean": 246.91356,
    "self_sufficiency": 0.4321,
    "pv_self_consumption": 0.789,
    "p2p_traded_kwh": 98765.43,
    "grid_import_kwh": 500.0,
    "grid_export_kwh": 250.0,
    "mean_price_per_kwh": 0.18765,
    "peak_trafo_loading_pct": 87.65,
    "max_line_loading_pct": 101.2,
    "vm_min_pu": 0.9321,
    "vm_max_pu": 1.0876,
    "losses_kwh": 12.3,
    "violation_rounds": 3,
    "violations": 4,
    "curtailed_kwh": 5.5,
    "shed_kwh": 0.0,
    "network_charges": 42.42,
    "failed_rounds": 0,
}


def make_run(
    root: pathlib.Path,
    *,
    days: float = 3,
    resolution_min: int = 15,
    n_prosumers: int = 5,
    islanded: bool = False,
    with_trades: bool = True,
    variants: tuple[str, ...] = ("no_feedback", "baseline"),
    seed: int = 0,
) -> pathlib.Path:
    """Write a synthetic run folder: a trafo (bus 0 -> 1) and three radial feeders of prosumers."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    run.mkdir()
    n_rounds = int(days * 24 * 60 / resolution_min)
    start = pd.Timestamp("2016-06-13")
    time = pd.date_range(start, periods=n_rounds, freq=f"{resolution_min}min")
    hour = time.hour.to_numpy() + time.minute.to_numpy() / 60
    sun = np.clip(np.sin((hour - 6) / 12 * np.pi), 0, None)
    grid_party = "grid_forming" if islanded else "grid"
    prosumers = [f"p{i:03d}" for i in range(n_prosumers)]
    # bus 0 = MV side of the trafo, bus 1 = LV busbar, buses 2.. on three radial feeders
    buses = np.arange(n_prosumers + 2)
    lv = buses[2:]
    feeder, depth = (lv - 2) % 3, (lv - 2) // 3 + 1
    parent = np.where(depth == 1, 1, lv - 3)
    angle = np.deg2rad(np.array([-30.0, -90.0, -150.0]))[feeder]
    x = np.r_[0.0, 0.0, depth * np.cos(angle)]
    y = np.r_[1.0, 0.0, depth * np.sin(angle)]
    frac = np.r_[0.0, 0.0, depth / depth.max()] if len(lv) else np.zeros(2)
    kinds = ["trafo"] + ["line"] * len(lv)
    branch_ids = [0] + list(range(len(lv)))
    from_bus = np.r_[0, parent]
    to_bus = np.r_[1, lv]
    line_weight = np.r_[0.8, 1.0 / np.sqrt(depth)]

    def tables(scale: float, trades_on: bool) -> dict[str, pd.DataFrame]:
        swing = 0.09 * sun * scale - 0.05 * (1 - sun)
        vm = 1.0 + np.outer(swing, frac)  # rounds x buses
        loading = 20 + 90 * np.outer(sun * scale, line_weight)  # rounds x branches
        is_line = np.array(kinds) == "line"
        cleared = np.where(trades_on, 3.0 * sun * scale, 0.0)
        price = np.where(cleared > 0, 0.15 + 0.05 * sun, np.nan)
        rounds = pd.DataFrame(
            {
                "round": np.arange(n_rounds),
                "time": time,
                "iterations": rng.integers(1, 4, n_rounds),
                "pf_converged": True,
                "cleared_kwh": cleared,
                "price_per_kwh": price,
                "grid_import_kwh": 2.0 * (1 - sun),
                "grid_export_kwh": 1.5 * sun * scale,
                "curtailed_kwh": np.where(sun > 0.9, 0.2, 0.0),
                "shed_kwh": np.where(sun < 0.01, 0.01, 0.0) if islanded else 0.0,
                "losses_kwh": 0.05 + 0.02 * sun,
                "vm_min_pu": vm.min(axis=1),
                "vm_max_pu": vm.max(axis=1),
                "max_line_loading_pct": loading[:, is_line].max(axis=1),
                "max_trafo_loading_pct": loading[:, 0],
                "violations": ((vm.max(axis=1) > 1.1) | (loading.max(axis=1) > 100)).astype(int),
                "network_charges": 0.1 * sun,
                "status": np.where(np.arange(n_rounds) == 5, "solver: infeasible", "ok"),
            }
        )
        if islanded:
            rounds["gfu_soc"] = 0.5 + 0.4 * np.sin(np.arange(n_rounds) / 40)
            rounds["gfu_p_kw"] = 10 * np.cos(np.arange(n_rounds) / 40)

        trades = pd.DataFrame(
            columns=[
                "round",
                "seller",
                "buyer",
                "energy_kwh",
                "price_per_kwh",
                "seller_price_per_kwh",
                "network_charge_per_kwh",
            ]
        )
        if trades_on:
            idx = np.flatnonzero(cleared > 0)
            k = len(idx)
            sellers = rng.integers(0, n_prosumers, k)
            buyers = (sellers + rng.integers(1, n_prosumers, k)) % n_prosumers
            p2p = pd.DataFrame(
                {
                    "round": idx,
                    "seller": np.array(prosumers)[sellers],
                    "buyer": np.array(prosumers)[buyers],
                    "energy_kwh": cleared[idx],
                    "price_per_kwh": price[idx],
                    "seller_price_per_kwh": price[idx],
                    "network_charge_per_kwh": 0.01,
                }
            )
            with_grid = p2p.head(4).assign(seller=grid_party, energy_kwh=1.0)
            trades = pd.concat([p2p, with_grid], ignore_index=True)

        parties = prosumers + [grid_party, "dso", "market_operator"]
        party_bus = list(lv) + [-1, -1, -1]
        n_p = len(parties)
        bill = rng.normal(0.1, 0.05, (n_rounds, n_p)) * scale
        bill[:, -2] = -0.1 * sun  # dso collects
        bill[:, -3] = -bill[:, :n_prosumers].sum(axis=1) - bill[:, -2] - bill[:, -1]
        settlement = pd.DataFrame(
            {
                "round": np.repeat(np.arange(n_rounds), n_p),
                "party": np.tile(parties, n_rounds),
                "bus": np.tile(party_bus, n_rounds),
                "bought_kwh": 0.5,
                "sold_kwh": 0.5,
                "grid_import_kwh": 0.1,
                "grid_export_kwh": 0.1,
                "curtailed_kwh": 0.0,
                "shed_kwh": 0.0,
                "energy_cost": bill.ravel(),
                "network_charges": 0.0,
                "bill": bill.ravel(),
            }
        )
        nb = len(buses)
        bus_table = pd.DataFrame(
            {
                "round": np.repeat(np.arange(n_rounds), nb),
                "bus": np.tile(buses, n_rounds),
                "p_kw": rng.normal(0, 2, n_rounds * nb),
                "q_kvar": 0.0,
                "vm_pu": vm.ravel(),
            }
        )
        nbr = len(kinds)
        branches = pd.DataFrame(
            {
                "round": np.repeat(np.arange(n_rounds), nbr),
                "branch": np.tile(branch_ids, n_rounds),
                "kind": np.tile(kinds, n_rounds),
                "loading_pct": loading.ravel(),
            }
        )
        return {
            "rounds": rounds,
            "trades": trades,
            "settlement": settlement,
            "buses": bus_table,
            "branches": branches,
        }

    def write(folder: pathlib.Path, t: dict[str, pd.DataFrame]) -> None:
        folder.mkdir(exist_ok=True)
        for name, table in t.items():
            table.to_parquet(folder / f"{name}.parquet", index=False)

    write(run, tables(1.0, with_trades))
    if "no_feedback" in variants:
        write(run / "no_feedback", tables(1.3, with_trades))
    if "baseline" in variants:
        write(run / "baseline", tables(0.8, False))

    pd.DataFrame(
        {
            "bus": buses,
            "name": [f"bus {b}" for b in buses],
            "x": x,
            "y": y,
            "vn_kv": np.r_[20.0, np.full(len(buses) - 1, 0.4)],
        }
    ).to_parquet(run / "grid_buses.parquet", index=False)
    pd.DataFrame(
        {
            "branch": branch_ids,
            "kind": kinds,
            "from_bus": from_bus,
            "to_bus": to_bus,
            "name": [f"{k} {b}" for k, b in zip(kinds, branch_ids, strict=True)],
        }
    ).to_parquet(run / "grid_branches.parquet", index=False)

    summary = {
        "scenario": "test-scenario",
        "network": "tiny6",
        "mode": "islanded" if islanded else "grid-connected",
        "start": str(time[0].isoformat()),
        "end": str((time[-1] + pd.Timedelta(minutes=resolution_min)).isoformat()),
        "resolution_min": resolution_min,
        "rounds": n_rounds,
        "currency": "EUR",
        "mechanism": "uniform",
        "n_prosumers": n_prosumers,
        "v_min_pu": 0.9,
        "v_max_pu": 1.1,
        "max_loading_pct": 100.0,
        "variants": {
            "market": dict(KPIS_MARKET),
            "market_no_feedback": {**KPIS_MARKET, "prosumer_bills_total": 1111.0},
            "baseline": {**KPIS_MARKET, "prosumer_bills_total": 2222.0, "p2p_traded_kwh": 0.0},
        },
        "timing": {
            "median_round_ms": 12.3,
            "median_clear_ms": 6.1,
            "median_pf_ms": 1.2,
            "wall_s": 40.1,
        },
        "ledger_head": "ab" * 32,
    }
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run


def assert_report(run: pathlib.Path, html_path: pathlib.Path, figures: list[str]) -> str:
    """The html exists, references every figure, and every figure is a non-empty PNG."""
    assert html_path == run / "report.html"
    assert html_path.is_file()
    text = html_path.read_text(encoding="utf-8")
    for name in figures:
        assert f"src='figures/{name}.png'" in text, name
        png = run / "figures" / f"{name}.png"
        assert png.is_file(), name
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    referenced = set(re.findall(r"figures/(\w+)\.png", text))
    assert referenced == set(figures)
    return text


def test_grid_connected_run_with_both_variants(tmp_path):
    run = make_run(tmp_path)
    text = assert_report(run, write_report(run), BASE_FIGURES)
    assert "test-scenario" in text and "tiny6" in text and "grid-connected" in text
    assert "How to read this report" in text
    # key figures: the three variants as columns, values formatted with their units
    for column in ("P2P + feedback", "P2P, no feedback", "No P2P (baseline)"):
        assert column in text
    assert "1,234.57" in text  # prosumer_bills_total, market
    assert "1,111.00" in text and "2,222.00" in text  # other variants
    assert "98,765.4" in text  # p2p_traded_kwh
    assert "43.2" in text  # self_sufficiency as %
    assert "0.1877" in text  # mean price
    assert "Mean P2P price [EUR/kWh]" in text
    assert "Lowest bus voltage [pu]" in text
    assert "1 round not ok" in text  # the failed round is reported
    line = report_row(report_page(text), "Peak line loading")
    assert line[0] == ("101.2", {"num", "bad"})  # the main run's line loading, beyond the limit


def test_islanded_run_draws_the_grid_forming_unit(tmp_path):
    run = make_run(tmp_path, islanded=True, days=1, n_prosumers=4)
    text = assert_report(run, write_report(run), BASE_FIGURES + ["grid_forming"])
    assert "islanded" in text
    assert "grid-forming unit" in text


def test_no_trades_no_variants_and_missing_kpis(tmp_path):
    run = make_run(tmp_path, with_trades=False, variants=(), days=1)
    summary = json.loads((run / "summary.json").read_text())
    del summary["variants"]["market"]["losses_kwh"]
    del summary["variants"]["market_no_feedback"]
    del summary["variants"]["baseline"]
    (run / "summary.json").write_text(json.dumps(summary))
    text = assert_report(run, write_report(run), BASE_FIGURES)
    assert report_row(report_page(text), "Network losses [kWh]")[0][0] == "–"
    assert "no_feedback/ folder" in text and "baseline/ folder" in text
    assert "No energy was traded between prosumers" in text


def test_long_run_is_aggregated(tmp_path):
    run = make_run(tmp_path, days=20, n_prosumers=3, variants=("no_feedback",))
    text = assert_report(run, write_report(run), BASE_FIGURES)
    assert "one point per hour" in text


@pytest.mark.parametrize(
    ("n_rounds", "freq_min", "expected"),
    [(672, 15, None), (2976, 15, "1h"), (35136, 15, "1D"), (8760, 60, "1D")],
)
def test_time_base_keeps_series_short(n_rounds, freq_min, expected):
    time = pd.Series(pd.date_range("2016-01-01", periods=n_rounds, freq=f"{freq_min}min"))
    tb = time_base(time)
    assert tb.freq == expected
    if tb.freq is not None:
        assert time.dt.floor(tb.freq).nunique() <= MAX_POINTS


def test_missing_files_and_columns_are_reported_together(tmp_path):
    run = make_run(tmp_path, days=1, variants=())
    (run / "summary.json").unlink()
    pd.read_parquet(run / "buses.parquet").drop(columns="vm_pu").to_parquet(run / "buses.parquet")
    with pytest.raises(InputError) as err:
        write_report(run)
    message = str(err.value)
    assert "summary.json" in message
    assert "buses.parquet" in message and "vm_pu" in message
    assert not (run / "report.html").exists()


def test_missing_rounds_is_an_input_error(tmp_path):
    run = make_run(tmp_path, days=1, variants=())
    (run / "rounds.parquet").unlink()
    with pytest.raises(InputError, match="rounds.parquet"):
        write_report(run)


def test_missing_variant_file_is_a_note_not_an_error(tmp_path):
    run = make_run(tmp_path, days=1)
    (run / "baseline" / "settlement.parquet").unlink()
    loaded = load_run(run)  # drawing without a baseline is covered above
    assert any("baseline/settlement.parquet missing" in note for note in loaded.notes)
    assert loaded.variants["baseline"].bills is None
    assert loaded.variant("baseline") is not None  # its rounds are still compared


def test_bad_variant_columns_name_the_subfolder(tmp_path):
    run = make_run(tmp_path, days=1)
    rounds = pd.read_parquet(run / "no_feedback" / "rounds.parquet")
    rounds.drop(columns=["vm_min_pu"]).to_parquet(run / "no_feedback" / "rounds.parquet")
    with pytest.raises(InputError, match=r"no_feedback/rounds\.parquet: .*missing vm_min_pu"):
        write_report(run)
