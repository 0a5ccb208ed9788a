"""Tests of the command line (cosim.cli) against the contract in DESIGN.md.

``cosim clear`` on order CSVs (reference books and expected trades in tests/data/clear_*),
and ``cosim run`` / ``cosim validate`` on bad scenario files: exit status 2, one message
naming the file and every bad field with what was expected and what was found, no
traceback, nothing written.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cosim.cli import EXIT_BAD_INPUT, EXIT_OK, main

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
#: The columns `cosim clear` writes, in order (DESIGN.md, command line contract).
CLEAR_COLUMNS = ["buyer", "seller", "quantity_kwh", "price_per_kwh", "seller_price_per_kwh"]
#: Tolerance on printed prices and quantities (written with 6 significant digits).
PRINT_ABS = 1e-6

HEADER = "id,side,quantity_kwh,price_per_kwh\n"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_trades(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"buyer": str, "seller": str})


def assert_trades_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == CLEAR_COLUMNS
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True),
        want.reset_index(drop=True),
        check_dtype=False,
        check_exact=False,
        atol=PRINT_ABS,
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- cosim clear --------------------------------------------------------------------------
def test_clear_worked_example(capsys):
    """Marginal-buyer book (see test_clearing): A 2 and B 1 kWh from C, price 0.20."""
    code, out, err = run_cli(capsys, "clear", "--mechanism", "uniform", DATA / "clear_overlap.csv")
    assert code == EXIT_OK, err
    assert out.splitlines()[0] == ",".join(CLEAR_COLUMNS)
    assert_trades_equal(read_trades(out), pd.read_csv(DATA / "clear_overlap_trades.csv"))


@pytest.mark.parametrize("k, price", [("0", 0.10), ("0.5", 0.25), ("1", 0.40)])
def test_clear_k_pricing(capsys, k, price):
    """A 2 kWh at 0.40 meets C 2 kWh at 0.10; the interval [0.10, 0.40] is priced by k."""
    code, out, err = run_cli(
        capsys, "clear", "--mechanism", "uniform", "--k", k, DATA / "clear_kprice.csv"
    )
    assert code == EXIT_OK, err
    want = pd.DataFrame([["A", "C", 2.0, price, price]], columns=CLEAR_COLUMNS)
    assert_trades_equal(read_trades(out), want)


def test_clear_default_mechanism_is_uniform(capsys):
    code, out, _ = run_cli(capsys, "clear", DATA / "clear_overlap.csv")
    assert code == EXIT_OK
    assert_trades_equal(read_trades(out), pd.read_csv(DATA / "clear_overlap_trades.csv"))


def test_clear_with_grid_adds_grid_rows(capsys):
    """With retail 0.30 and feed-in 0.05, B's unmatched 1 kWh comes from the grid at 0.30
    and D's unmatched 2 kWh go to the grid at 0.05; the P2P trades are unchanged."""
    code, out, err = run_cli(
        capsys,
        "clear",
        "--mechanism",
        "uniform",
        "--retail",
        "0.30",
        "--feed-in",
        "0.05",
        DATA / "clear_overlap.csv",
    )
    assert code == EXIT_OK, err
    assert_trades_equal(read_trades(out), pd.read_csv(DATA / "clear_overlap_grid_trades.csv"))


@pytest.mark.parametrize("k, price", [("0", 0.05), ("1", 0.30)])
def test_clear_with_grid_tariffs_close_the_interval(capsys, tmp_path, k, price):
    """A bids 0.40, C asks 0.02, both 2 kWh: the grid's tariffs narrow [0.02, 0.40] to [0.05, 0.30]."""
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,2,0.40\nC,sell,2,0.02\n")
    code, out, err = run_cli(
        capsys, "clear", "--retail", "0.30", "--feed-in", "0.05", "--k", k, bids
    )
    assert code == EXIT_OK, err
    assert_trades_equal(
        read_trades(out), pd.DataFrame([["A", "C", 2.0, price, price]], columns=CLEAR_COLUMNS)
    )


def test_clear_no_overlap_writes_only_the_header(capsys, tmp_path):
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,2,0.10\nC,sell,2,0.20\n")
    code, out, _ = run_cli(capsys, "clear", bids)
    assert code == EXIT_OK
    assert out.strip() == ",".join(CLEAR_COLUMNS)


def test_clear_no_p2p_mechanism_trades_nothing_p2p(capsys):
    code, out, _ = run_cli(capsys, "clear", "--mechanism", "none", DATA / "clear_overlap.csv")
    assert code == EXIT_OK
    trades = read_trades(out)
    assert list(trades.columns) == CLEAR_COLUMNS
    assert ((trades.buyer == "grid") | (trades.seller == "grid")).all()


def test_clear_empty_book(capsys, tmp_path):
    bids = write(tmp_path, "bids.csv", HEADER)
    code, out, err = run_cli(capsys, "clear", bids)
    assert code in (EXIT_OK, EXIT_BAD_INPUT)
    assert "Traceback" not in err
    if code == EXIT_OK:
        assert out.strip() == ",".join(CLEAR_COLUMNS)


BAD_ROWS = {
    "negative-quantity": ("A,buy,-1,0.30\n", ["row 2", "quantity_kwh", "-1"]),
    "nan-price": ("A,buy,1,nan\n", ["row 2", "price_per_kwh", "nan"]),
    "text-quantity": ("A,buy,lots,0.30\n", ["row 2", "quantity_kwh", "lots"]),
    "bad-side": ("A,bid,1,0.30\n", ["row 2", "side", "bid"]),
}


@pytest.mark.parametrize("rows, expected", list(BAD_ROWS.values()), ids=list(BAD_ROWS))
def test_clear_bad_field_exits_2_naming_it(capsys, tmp_path, rows, expected):
    bids = write(tmp_path, "bids.csv", HEADER + "C,sell,2,0.10\n" + rows)
    code, out, err = run_cli(capsys, "clear", bids)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert str(bids) in err
    for text in expected:
        assert text.replace("row 2", "row 3") in err
    assert "expected" in err
    assert "Traceback" not in err


def test_clear_every_bad_field_reported_at_once(capsys, tmp_path):
    bids = write(
        tmp_path, "bids.csv", HEADER + "A,buy,-1,0.30\nB,buy,1,nan\nC,offer,2,0.10\nD,sell,2,0.10\n"
    )
    code, out, err = run_cli(capsys, "clear", bids)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert str(bids) in err
    assert "3 problem(s)" in err
    assert "row 2, quantity_kwh" in err
    assert "row 3, price_per_kwh" in err
    assert "row 4, side" in err and "'offer'" in err
    assert "Traceback" not in err


def test_clear_missing_column_exits_2(capsys, tmp_path):
    bids = write(tmp_path, "bids.csv", "id,side,quantity_kwh\nA,buy,1\n")
    code, out, err = run_cli(capsys, "clear", bids)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert str(bids) in err
    assert "price_per_kwh" in err and "missing" in err
    assert "Traceback" not in err


def test_clear_unknown_mechanism_exits_2(capsys):
    code, out, err = run_cli(capsys, "clear", "--mechanism", "vickrey", DATA / "clear_overlap.csv")
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert "--mechanism" in err and "'vickrey'" in err and "uniform" in err
    assert "Traceback" not in err


def test_clear_k_out_of_range_exits_2(capsys):
    code, _, err = run_cli(capsys, "clear", "--k", "1.5", DATA / "clear_overlap.csv")
    assert code == EXIT_BAD_INPUT
    assert "--k" in err and "1.5" in err
    assert "Traceback" not in err


def test_clear_missing_file_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "clear", tmp_path / "nope.csv")
    assert code == EXIT_BAD_INPUT
    assert "nope.csv" in err and "not found" in err


def test_python_m_cosim_clear(tmp_path):
    """The ``python -m cosim`` entry point, in a fresh interpreter, from another folder."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cosim",
            "clear",
            "--mechanism",
            "uniform",
            str(DATA / "clear_overlap.csv"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert_trades_equal(read_trades(proc.stdout), pd.read_csv(DATA / "clear_overlap_trades.csv"))


def test_python_m_cosim_bad_input_exits_2(tmp_path):
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,-1,0.30\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cosim", "clear", str(bids)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert "quantity_kwh" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- scenario validation ------------------------------------------------------------------
GOOD = "name: t\nnetwork: feeder\n"

BAD_SCENARIOS = {
    "unknown-field": (
        GOOD + "duraton: 1h\nprosumers:\n  pv_shar: 0.5\n",
        ["duraton", "unknown field", "'1h'", "prosumers.pv_shar", "0.5"],
    ),
    "wrong-type": (
        GOOD + "seed: abc\nprosumers:\n  pv_kwp: lots\n",
        ["seed", "integer", "'abc'", "prosumers.pv_kwp", "number", "'lots'"],
    ),
    "share-out-of-range": (
        GOOD + "prosumers:\n  pv_share: 1.5\n  battery_share: -0.1\n",
        [
            "prosumers.pv_share",
            "less than or equal to 1",
            "1.5",
            "prosumers.battery_share",
            "greater than or equal to 0",
            "-0.1",
        ],
    ),
    "bad-mode": (GOOD + "mode: offgrid\n", ["mode", "'grid-connected' or 'islanded'", "'offgrid'"]),
    "unknown-mechanism": (
        GOOD + "market:\n  mechanism: vickrey\n",
        ["market.mechanism", "uniform", "'vickrey'"],
    ),
    "unknown-network": ("name: t\nnetwork: nosuchnet\n", ["network", "nosuchnet", "no such file"]),
    "feed-in-above-retail": (
        GOOD + "market:\n  retail_price_per_kwh: 0.10\n  feed_in_price_per_kwh: 0.20\n",
        ["market", "feed_in_price_per_kwh <= retail_price_per_kwh", "0.2 > 0.1"],
    ),
    "bad-duration": (GOOD + "duration: a week\n", ["duration", "'7d'", "'a week'"]),
    "bad-name": ("name: my run\nnetwork: feeder\n", ["name", "'my run'"]),
    "not-yaml": ("name: [unclosed\nnetwork: feeder\n", ["not valid YAML"]),
    "not-a-mapping": ("- name\n- feeder\n", ["expected a YAML mapping", "list"]),
    "empty-file": ("", ["expected a YAML mapping"]),
    "missing-name-and-network": (
        "description: hi\n",
        ["name: required field is missing", "network: required field is missing"],
    ),
    "many-problems": (
        "name: t\nnetwork: nosuchnet\nmode: offgrid\nmarket:\n  mechanism: vickrey\n  k: 2\n",
        [
            "network",
            "nosuchnet",
            "mode",
            "'offgrid'",
            "market.mechanism",
            "'vickrey'",
            "market.k",
            "4 problem(s)",
        ],
    ),
}


@pytest.mark.parametrize("text, expected", list(BAD_SCENARIOS.values()), ids=list(BAD_SCENARIOS))
def test_run_bad_scenario_exits_2_and_writes_nothing(capsys, tmp_path, text, expected):
    scenario = write(tmp_path, "scenario.yaml", text)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "run", scenario, "--out", out_dir, "--no-progress")
    assert code == EXIT_BAD_INPUT
    assert str(scenario) in err
    for text_ in expected:
        assert text_ in err, f"{text_!r} not in {err!r}"
    assert "Traceback" not in err
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenario.yaml"]


def test_run_missing_scenario_file_exits_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", tmp_path / "nope.yaml", "--out", tmp_path / "out")
    assert code == EXIT_BAD_INPUT
    assert "nope.yaml" in err and "not found" in err
    assert not (tmp_path / "out").exists()


def test_validate_smoke_scenario(capsys):
    code, out, err = run_cli(capsys, "validate", REPO / "scenarios" / "smoke.yaml")
    assert code == EXIT_OK, err
    assert "ok" in out and "smoke" in out


def test_validate_finds_network_by_name_from_another_folder(capsys, tmp_path):
    """``network: feeder`` in a scenario outside the repository resolves to networks/feeder.yaml."""
    scenario = write(tmp_path, "scenario.yaml", GOOD + "duration: 1h\n")
    code, out, err = run_cli(capsys, "validate", scenario)
    assert code == EXIT_OK, err
    assert "(t, 4 rounds)" in out


def test_validate_bad_scenario_exits_2(capsys, tmp_path):
    scenario = write(tmp_path, "scenario.yaml", GOOD + "mode: offgrid\n")
    code, _, err = run_cli(capsys, "validate", scenario)
    assert code == EXIT_BAD_INPUT
    assert str(scenario) in err and "mode" in err
    assert "Traceback" not in err
