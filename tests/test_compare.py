"""`cosim compare`: several runs side by side, from their result files only."""

from __future__ import annotations

import json
import shutil

import pytest

from cosim.config.errors import InputError
from cosim.reporting.compare import write_comparison
from cosim.sim import loop

SCENARIO = """
name: {name}
network: feeder
start: 2016-07-21 10:00
duration: 2h
market: {{mechanism: {mechanism}, bidding: zero-intelligence}}
prosumers: {{pv_share: 0.6, pv_kwp: 8}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    out = []
    for name, mechanism in (("with-p2p", "uniform"), ("no-p2p", "none")):
        path = base / f"{name}.yaml"
        path.write_text(SCENARIO.format(name=name, mechanism=mechanism))
        out.append(loop.run_scenario(path, out=base / name, progress=False, report=False))
    return out


def test_comparison_page_lists_every_run_and_figure(runs, tmp_path):
    page = write_comparison(runs, tmp_path / "cmp")
    text = page.read_text()
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["scenario"] in text
    for fig in ("economics.png", "bills.png", "prices.png", "grid.png"):
        assert f"figures/{fig}" in text
        assert (tmp_path / "cmp" / "figures" / fig).stat().st_size > 1000
    # the P2P run saves money against its baseline, the no-P2P run saves nothing
    with_p2p = json.loads((runs[0] / "summary.json").read_text())["variants"]
    saving = with_p2p["baseline"]["prosumer_bills_total"] - with_p2p["market"]["prosumer_bills_total"]
    assert saving > 0
    assert f"{saving:,.3f}" in text or f"{saving:,.1f}" in text


def test_missing_files_are_input_errors(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    (broken / "rounds.parquet").unlink()
    with pytest.raises(InputError, match="rounds.parquet: missing"):
        write_comparison([runs[0], broken], tmp_path / "cmp")


def test_cli_compare_writes_the_page_and_rejects_a_missing_run(runs, tmp_path, capsys):
    from cosim.cli import main

    out = tmp_path / "cli-cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    assert str(out / "compare.html") in capsys.readouterr().out
    assert (out / "compare.html").exists()
    assert main(["compare", str(runs[0]), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
