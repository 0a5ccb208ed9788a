"""Fuzz tests of every input a user gives cosim (issue 17): a valid scenario, a bids CSV of
`cosim clear` and an EV sessions CSV are mutated (fields dropped, types changed, extreme,
negative, NaN and infinite values, unknown bus indices, empty and binary files) and fed
to the real command line. For every mutation:

- the exit status is 0 or 2 (bad input), never 1 (an internal failure);
- no traceback is printed;
- a run that fails leaves no results folder and no partial folder.

The examples are derandomised like every property test here (tests/conftest.py); the
whole file runs in about a minute on the small feeder.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosim.cli import main
from cosim.config.scenario import Scenario

BASE = {
    "name": "fuzz", "network": "feeder", "start": "2016-06-14 10:00", "duration": "1h",
    "prosumers": {"pv_share": 0.9, "pv_kwp": 10, "battery_share": 0.3},
    "market": {"bidding": "zero-intelligence"},
    "feedback": {"charge_method": "sensitivity", "charge_rate_per_kwh": 0.3},
}
#: Every field of the resolved scenario, as a path of keys.
FIELDS = []


def _paths(d: dict, prefix: tuple = ()) -> None:
    for k, v in d.items():
        FIELDS.append((*prefix, k))
        if isinstance(v, dict):
            _paths(v, (*prefix, k))


_paths(Scenario.model_validate(BASE).model_dump(mode="json"))
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.sampled_from([2**63, -(2**63), 987654]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e-300]),
    st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                                max_size=2),
)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _set(data: dict, path: tuple, value, drop: bool) -> dict:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
    if drop:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return data


@st.composite
def mutated_scenarios(draw) -> bytes:
    kind = draw(st.sampled_from(["field", "field", "field", "bus", "empty", "binary", "not a mapping"]))
    if kind == "empty":
        return b""
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=64))
    if kind == "not a mapping":
        return yaml.safe_dump(draw(st.one_of(st.lists(st.integers()), st.text(max_size=10)))).encode()
    if kind == "bus":
        data = _set(BASE, ("mode",), "islanded", False)
        data = _set(data, ("islanded", "grid_forming_bus"), draw(st.integers(-5, 10**6)), False)
        return yaml.safe_dump(data).encode()
    path = draw(st.sampled_from(FIELDS))
    drop = draw(st.booleans())
    data = _set(BASE, path, None if drop else draw(VALUES), drop)
    return yaml.safe_dump(data, allow_unicode=True).encode()


@FUZZ
@given(text=mutated_scenarios())
def test_no_scenario_crashes_validate(tmp_path, capsys, text):
    path = tmp_path / "scenario.yaml"
    path.write_bytes(text)
    code, err = _cli(capsys, "validate", str(path))
    assert code in (0, 2), err
    assert "Traceback" not in err


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(text=mutated_scenarios())
def test_no_scenario_crashes_a_run_or_leaves_a_folder(tmp_path_factory, capsys, text):
    folder = tmp_path_factory.mktemp("run")
    path = folder / "scenario.yaml"
    path.write_bytes(text)
    out = folder / "results" / "out"
    code, err = _cli(capsys, "run", str(path), "--out", str(out), "--no-report", "--no-progress")
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code != 0:
        assert not out.exists()
        assert not (out.parent.exists() and any(out.parent.iterdir()))


BIDS = "id,side,quantity_kwh,price_per_kwh\nA,buy,2,0.30\nB,buy,2,0.20\nC,sell,3,0.10\nD,sell,2,0.25\n"
CELLS = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e300", "-1", "0", "", "buy", "sell", "x", "1e-320"]),
                  st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=6),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr))


@st.composite
def mutated_bids(draw) -> bytes:
    kind = draw(st.sampled_from(["cell", "cell", "row", "column", "empty", "binary"]))
    if kind == "empty":
        return b""
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=64))
    rows = [line.split(",") for line in BIDS.strip().split("\n")]
    if kind == "column":
        j = draw(st.integers(0, 3))
        rows = [r[:j] + r[j + 1:] for r in rows]
    elif kind == "row":
        rows.append([draw(CELLS).replace(",", ";").replace("\n", " ") for _ in range(4)])
    else:
        i, j = draw(st.integers(1, len(rows) - 1)), draw(st.integers(0, 3))
        rows[i][j] = draw(CELLS).replace(",", ";").replace("\n", " ")
    return ("\n".join(",".join(r) for r in rows) + "\n").encode("utf-8", "surrogatepass")


@FUZZ
@given(text=mutated_bids(), mechanism=st.sampled_from(["uniform", "pay_as_bid", "mcafee", "huang", "vcg",
                                                      "community_sdr", "bilateral"]))
def test_no_bids_file_crashes_clear(tmp_path, capsys, text, mechanism):
    path = tmp_path / "bids.csv"
    path.write_bytes(text)
    code, err = _cli(capsys, "clear", "--mechanism", mechanism, "--retail", "0.3", "--feed-in", "0.08", str(path))
    assert code in (0, 2), err
    assert "Traceback" not in err


SESSIONS = "id,arrival,departure,arrival_kwh,required_kwh\nP001,2016-06-14 18:00,2016-06-15 07:00,10,40\n"


@st.composite
def mutated_sessions(draw) -> bytes:
    kind = draw(st.sampled_from(["cell", "cell", "column", "empty", "binary"]))
    if kind == "empty":
        return b""
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=64))
    rows = [line.split(",") for line in SESSIONS.strip().split("\n")]
    j = draw(st.integers(0, 4))
    if kind == "column":
        rows = [r[:j] + r[j + 1:] for r in rows]
    else:
        rows[1][j] = draw(CELLS).replace(",", ";").replace("\n", " ")
    return ("\n".join(",".join(r) for r in rows) + "\n").encode("utf-8", "surrogatepass")


@FUZZ
@given(text=mutated_sessions())
def test_no_sessions_file_crashes_validate(tmp_path, capsys, text):
    (tmp_path / "sessions.csv").write_bytes(text)
    data = _set(BASE, ("storage", "ev", "sessions_csv"), "sessions.csv", False)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    code, err = _cli(capsys, "validate", str(path))
    assert code in (0, 2), err
    assert "Traceback" not in err


@pytest.mark.parametrize("bus,ok", [(987654, False), (-1, False), (3, True)])
def test_grid_forming_bus_is_checked_against_the_network(tmp_path, capsys, bus, ok):
    """The case that started issue 17: a bus the network does not have is bad input."""
    data = _set(_set(BASE, ("mode",), "islanded", False), ("islanded", "grid_forming_bus"), bus, False)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    code, err = _cli(capsys, "validate", str(path))
    assert code == (0 if ok else 2)
    if not ok:
        assert "islanded.grid_forming_bus: expected a bus of network 'feeder'" in err and str(bus) in err


def test_duration_must_be_whole_rounds(tmp_path, capsys):
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({**BASE, "duration": "50min"}))
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and "whole number of rounds of 15min, found 50min" in err
