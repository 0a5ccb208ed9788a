"""Tests of the command line (cosim.cli) against the contract in DESIGN.md.

``cosim clear`` on order CSVs (reference books and expected trades in tests/data/clear_*),
and ``cosim run`` / ``cosim validate`` on bad scenario files: exit status 2, one message
naming the file and every bad field with what was expected and what was found, no
traceback, nothing written.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cosim.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, main

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


# -- cosim clear edge cases, through the installed command (issue 10, item 8) -------------
#: The `cosim` command of the interpreter running the tests (the project's .venv/bin/cosim).
COSIM = Path(sys.executable).parent / "cosim"
COMMUNITY_MECHANISMS = ["community_sdr", "community_mmr", "bill_sharing", "fixed_price", "community_tariff"]


def cosim_clear(tmp_path: Path, *argv, pythonpath: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """``cosim clear ARGV`` in a fresh process, run from `tmp_path`, importing this working
    tree's cosim (PYTHONPATH), whichever tree the virtualenv's editable install points at."""
    command = [str(COSIM)] if COSIM.exists() else [sys.executable, "-m", "cosim"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, REPO]))}
    return subprocess.run([*command, "clear", *map(str, argv)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env=env)


def assert_bad_input(proc: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 2, nothing on stdout, one message holding every `expected` text, no traceback,
    and no numpy repr of a value."""
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ")
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in {proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    assert "np." not in proc.stderr and "float64" not in proc.stderr


@pytest.mark.parametrize("mechanism", COMMUNITY_MECHANISMS)
def test_clear_community_mechanism_without_grid_exits_2_naming_both_options(tmp_path, mechanism):
    """Community prices are set by the grid's tariffs: no --retail/--feed-in is an error, not
    an empty trade list."""
    proc = cosim_clear(tmp_path, "--mechanism", mechanism, DATA / "clear_overlap.csv")
    assert_bad_input(proc, str(DATA / "clear_overlap.csv"), "--retail", "--feed-in", mechanism,
                     "found no --retail and no --feed-in")


def test_clear_community_mechanism_with_one_tariff_names_the_missing_one(tmp_path):
    proc = cosim_clear(tmp_path, "--mechanism", "community_sdr", "--retail", "0.30", DATA / "clear_overlap.csv")
    assert_bad_input(proc, "--feed-in: expected --retail R and --feed-in F", "found no --feed-in")
    assert "no --retail" not in proc.stderr


def test_clear_community_mechanism_with_grid_clears(tmp_path):
    """With both tariffs the same book clears (exit 0, the output's columns)."""
    proc = cosim_clear(tmp_path, "--mechanism", "community_sdr", "--retail", "0.30", "--feed-in", "0.05",
                       DATA / "clear_overlap.csv")
    assert proc.returncode == EXIT_OK, proc.stderr
    trades = read_trades(proc.stdout)
    assert list(trades.columns) == CLEAR_COLUMNS and len(trades) > 0


@pytest.mark.parametrize("mechanism", ["uniform", "mcafee", "bilateral"])
def test_clear_quantity_beyond_the_limit_exits_2(tmp_path, mechanism):
    """1e300 kWh used to clear to an empty CSV (and to hang mcafee): now it is refused with
    the documented range, the row and the value as written."""
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,1e300,0.30\nC,sell,2,0.10\n")
    proc = cosim_clear(tmp_path, "--mechanism", mechanism, bids)
    assert_bad_input(proc, str(bids), "row 2, quantity_kwh: expected a number from 0 to 10000 [kWh], found 1e300")


def test_clear_side_total_beyond_the_limit_exits_2(tmp_path):
    """101 sell orders of 1e4 kWh: each is within range, their 1.01e6 kWh total is not."""
    rows = "".join(f"S{i},sell,1e4,0.10\n" for i in range(101))
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,1e4,0.30\n" + rows)
    proc = cosim_clear(tmp_path, bids)
    assert_bad_input(proc, "quantity_kwh: expected the sell orders to total at most 1e+06 kWh, found 1.01e+06 kWh")
    assert "buy orders" not in proc.stderr


def test_clear_prices_and_tariffs_beyond_the_limit_exit_2(tmp_path):
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,1,1e4\nC,sell,1,-2000\n")
    proc = cosim_clear(tmp_path, bids)
    assert_bad_input(proc, "2 problem(s)",
                     "row 2, price_per_kwh: expected a number from -1000 to 1000 [currency/kWh], found 1e4",
                     "row 3, price_per_kwh: expected a number from -1000 to 1000 [currency/kWh], found -2000")
    proc = cosim_clear(tmp_path, "--retail", "1e9", "--feed-in", "0.05", DATA / "clear_overlap.csv")
    assert_bad_input(proc, "--retail: expected a number from -1000 to 1000 [currency/kWh], found 1e9")


def test_clear_at_the_limits_clears(tmp_path):
    """A bids 1000 for 1e4 kWh, C asks -1000 for 1e4 kWh (both at the limits): the uniform
    auction trades all 1e4 kWh at -1000 + k (1000 - (-1000)) = 0 with k = 0.5."""
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,1e4,1000\nC,sell,10000,-1000\n")
    proc = cosim_clear(tmp_path, bids)
    assert proc.returncode == EXIT_OK, proc.stderr
    want = pd.DataFrame([["A", "C", 1e4, 0.0, 0.0]], columns=CLEAR_COLUMNS)
    assert_trades_equal(read_trades(proc.stdout), want)


def test_clear_solver_failure_exits_1_with_a_message_and_no_csv(tmp_path):
    """A mechanism that reports a failed clearing (injected into the real command through a
    sitecustomize module) gives exit 1 and a message naming the mechanism and the solver's
    status; nothing, not even a header, on stdout."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "from cosim.markets import Charges, uniform\n"
        "def _fail(self, orders, ctx, cuts=None, charges=None):\n"
        "    n = len(self.ids)\n"
        "    return uniform.failed_result('solver: time limit reached', n, Charges.none(n))\n"
        "uniform.UniformDoubleAuction.clear = _fail\n"
    )
    proc = cosim_clear(tmp_path, DATA / "clear_overlap.csv", pythonpath=(hook,))
    assert proc.returncode == EXIT_FAILURE, proc.stderr
    assert proc.stdout == ""
    assert "uniform could not clear this book (solver: time limit reached)" in proc.stderr
    assert str(DATA / "clear_overlap.csv") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_clear_stackelberg_solver_failure_ends_with_a_message(tmp_path):
    """A real failure: 1e4 kWh against a 0.0005 tariff spread makes the followers' QP nearly
    flat (curvature x 0.0005 / 1e4), and HiGHS's QP solver cycled on it without end. The
    command must end: with trades (exit 0) or, as with the HiGHS of this writing, with exit
    1 and a message naming the failure; never an empty CSV."""
    bids = write(tmp_path, "bids.csv", HEADER + "A,buy,1e4,1000\nC,sell,1e4,-1000\n")
    proc = cosim_clear(tmp_path, "--mechanism", "stackelberg", "--retail", "0.001", "--feed-in", "0.0005", bids)
    assert "Traceback" not in proc.stderr
    if proc.returncode == EXIT_OK:
        assert len(read_trades(proc.stdout)) > 0
    else:
        assert proc.returncode == EXIT_FAILURE, proc.stderr
        assert proc.stdout == ""
        assert "stackelberg could not clear this book (follower" in proc.stderr


def test_clear_messages_show_values_as_written(tmp_path):
    """Bad cells are quoted as the file has them (`nan`, `inf`, `1e300`, `-0.5`), options as
    plain numbers (`nan`), never as ``np.float64(...)``; problems come row by row."""
    bids = write(tmp_path, "bids.csv",
                 HEADER + "A,buy,nan,0.30\nB,buy,1,inf\nC,sell,-0.5,0.10\nD,sell,1e300,NaN\nE,sell,1,\n")
    proc = cosim_clear(tmp_path, bids)
    assert_bad_input(
        proc, "6 problem(s)",
        "row 2, quantity_kwh: expected a finite number, found nan",
        "row 3, price_per_kwh: expected a finite number, found inf",
        "row 4, quantity_kwh: expected a number from 0 to 10000 [kWh], found -0.5",
        "row 5, quantity_kwh: expected a number from 0 to 10000 [kWh], found 1e300",
        "row 5, price_per_kwh: expected a finite number, found NaN",
        "row 6, price_per_kwh: expected a finite number, found an empty cell",
    )
    lines = proc.stderr.splitlines()[1:]
    assert [int(line.split(",")[0].split()[-1]) for line in lines] == [2, 3, 4, 5, 5, 6]
    proc = cosim_clear(tmp_path, "--k", "nan", "--retail", "inf", "--feed-in", "0.05", DATA / "clear_overlap.csv")
    assert_bad_input(proc, "--k: expected a number in [0, 1], found nan", "--retail:", "found inf")


PAIR = "A,buy,1,0.205\nC,sell,1,0.20\n"


@pytest.mark.parametrize("grid", [[], ["--retail", "0.30", "--feed-in", "0.05"]], ids=["no-grid", "grid"])
def test_clear_bilateral_pair_without_bus_or_green_trades_as_under_uniform(tmp_path, grid):
    """A bids 0.205, C asks 0.20 for 1 kWh each, and the file says nothing of buses or green:
    no premium applies, so the 0.005 of surplus is traded under bilateral as under uniform
    (1 kWh; uniform's price 0.20 + 0.5 x 0.005 = 0.2025). bilateral's price is its LP's
    vertex: only its bounds are hand-worked, ask 0.20 <= price <= bid 0.205, the same for
    buyer and seller."""
    bids = write(tmp_path, "bids.csv", HEADER + PAIR)
    uniform = read_trades(cosim_clear(tmp_path, *grid, bids).stdout)
    assert_trades_equal(uniform, pd.DataFrame([["A", "C", 1.0, 0.2025, 0.2025]], columns=CLEAR_COLUMNS))
    proc = cosim_clear(tmp_path, "--mechanism", "bilateral", *grid, bids)
    assert proc.returncode == EXIT_OK, proc.stderr
    trades = read_trades(proc.stdout)
    assert trades[["buyer", "seller", "quantity_kwh"]].values.tolist() == [["A", "C", 1.0]]
    assert 0.20 - PRINT_ABS <= trades.price_per_kwh[0] <= 0.205 + PRINT_ABS
    assert trades.price_per_kwh[0] == trades.seller_price_per_kwh[0]


def test_clear_bilateral_green_column(tmp_path):
    """A bids 0.205 for 1 kWh; C (green false) and D (green true) ask 0.20 for 1 kWh. C's
    energy costs A the green premium 0.01 > the 0.005 of surplus, D's costs nothing: A buys
    its 1 kWh from D. With D's cell empty (unknown: no premium) the same; with D false too,
    nobody trades."""
    head = "id,side,quantity_kwh,price_per_kwh,green\n"
    for d_green, want in (("true", [["A", "D", 1.0]]), ("", [["A", "D", 1.0]]), ("0", [])):
        bids = write(tmp_path, "bids.csv", head + f"A,buy,1,0.205,\nC,sell,1,0.20,false\nD,sell,1,0.20,{d_green}\n")
        proc = cosim_clear(tmp_path, "--mechanism", "bilateral", bids)
        assert proc.returncode == EXIT_OK, proc.stderr
        assert read_trades(proc.stdout)[["buyer", "seller", "quantity_kwh"]].values.tolist() == want, d_green


def test_clear_bilateral_bus_column_with_network(tmp_path):
    """networks/feeder.yaml: feeder 1 is buses 2-5, 0.08 km apart; feeder 2 is buses 6-8,
    0.10 km apart, both from the busbar (bus 1). A (bus 2) bids 0.205 for 1 kWh; C (bus 3,
    0.08 km away) asks 0.20, D (bus 8, 0.08 + 0.30 = 0.38 km away, on the other feeder) asks
    0.199. Premiums: C 0.01 x 0.08 = 0.0008, so A's surplus is 0.205 - 0.0008 - 0.20 =
    0.0042 > 0; D 0.01 x 0.38 + 0.005 = 0.0088, surplus 0.205 - 0.0088 - 0.199 = -0.0028.
    A buys 1 kWh from C at a price between C's ask 0.20 and 0.205 - 0.0008 = 0.2042;
    uniform, blind to the network, sells it D's cheaper kWh."""
    bids = write(tmp_path, "bids.csv", "id,side,quantity_kwh,price_per_kwh,bus\n"
                                       "A,buy,1,0.205,2\nC,sell,1,0.20,3\nD,sell,1,0.199,8\n")
    proc = cosim_clear(tmp_path, "--mechanism", "bilateral", "--network", "feeder", bids)
    assert proc.returncode == EXIT_OK, proc.stderr
    trades = read_trades(proc.stdout)
    assert trades[["buyer", "seller", "quantity_kwh"]].values.tolist() == [["A", "C", 1.0]]
    assert 0.20 - PRINT_ABS <= trades.price_per_kwh[0] <= 0.2042 + PRINT_ABS
    uniform = read_trades(cosim_clear(tmp_path, "--network", "feeder", bids).stdout)
    assert uniform[["buyer", "seller", "quantity_kwh"]].values.tolist() == [["A", "D", 1.0]]


def test_clear_bad_bus_and_green_cells_exit_2(tmp_path):
    bids = write(tmp_path, "bids.csv", "id,side,quantity_kwh,price_per_kwh,bus,green\n"
                                       "A,buy,1,0.205,2.5,yes\nC,sell,1,0.20,,false\nD,sell,1,0.20,-3,TRUE\n"
                                       "E,sell,1,0.20,x,1\n")
    proc = cosim_clear(tmp_path, "--mechanism", "bilateral", "--network", "feeder", bids)
    assert_bad_input(
        proc, str(bids), "5 problem(s)",
        "row 2, bus: expected a bus number (a whole number >= 0), found 2.5",
        "row 2, green: expected true, false, 1 or 0 (or an empty cell: unknown), found 'yes'",
        "row 3, bus: expected a bus number, as other rows give one",
        "row 4, bus: expected a bus number (a whole number >= 0), found -3",
        "row 5, bus: expected a bus number (a whole number >= 0), found 'x'",
    )


def test_clear_bus_needs_a_network_that_has_it(tmp_path):
    bids = write(tmp_path, "bids.csv", "id,side,quantity_kwh,price_per_kwh,bus\nA,buy,1,0.205,2\nC,sell,1,0.20,99\n")
    assert_bad_input(cosim_clear(tmp_path, "--mechanism", "bilateral", bids),
                     "bus: expected --network NAME", "found buses and no --network")
    assert_bad_input(cosim_clear(tmp_path, "--mechanism", "bilateral", "--network", "feeder", bids),
                     "row 3, bus: expected a bus of network 'feeder' (0..8), found 99")
    assert_bad_input(cosim_clear(tmp_path, "--network", "nosuchnet", bids),
                     "--network: expected a file in networks/", "'nosuchnet'")
    assert_bad_input(cosim_clear(tmp_path, "--network", "feeder", DATA / "clear_overlap.csv"),
                     "bus: expected a bus column")


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
