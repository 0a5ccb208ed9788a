"""`cosim compare`: several runs side by side, from their result files only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import report_page

from cosim.config.errors import InputError
from cosim.reporting.compare import write_comparison
from cosim.reporting.gains import gains
from cosim.sim import loop

SCENARIO = """
name: {name}
network: feeder
start: 2016-07-21 10:00
duration: 2h
market: {{mechanism: {mechanism}, bidding: zero-intelligence{options}}}
prosumers: {{pv_share: 0.6, pv_kwp: 8}}
feedback: {{charge_method: sensitivity, charge_rate_per_kwh: 0.3}}
"""
#: A fixed-price pool whose membership fee is due in the first round: a cost that a
#: prosumer with little to trade does not recover in two hours.
FEE_OPTIONS = ", options: {price_per_kwh: 0.19, fee_per_period: 0.5, period_rounds: 96}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    out = []
    for name, mechanism, options in (("with-p2p", "uniform", ""), ("no-p2p", "none", ""),
                                     ("fixed-price", "fixed_price", FEE_OPTIONS)):
        path = base / f"{name}.yaml"
        path.write_text(SCENARIO.format(name=name, mechanism=mechanism, options=options))
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


def test_gains_split_each_bill_change_into_its_parts_and_name_why_losers_lose(runs, tmp_path):
    """The parts (energy, network charges, fees, storage rent) add up to each prosumer's
    bill against the baseline in summary.json; a prosumer worse off is listed with the
    part that cost it most (here the fixed-price pool's membership fee)."""
    for run in runs:
        table = gains(run)
        bills = json.loads((run / "summary.json").read_text())["prosumer_bills"]
        expected = pd.Series({p: b["baseline"] - b["market"] for p, b in bills.items()})
        np.testing.assert_allclose(table.total.sort_index(), expected.sort_index(), atol=1e-5)
        parts = table[["energy", "network charges", "fees", "storage rent"]].sum(axis=1)
        np.testing.assert_allclose(parts, table.total, atol=1e-12)
    fees = gains(runs[2])
    losers = fees[fees.total < 0]
    assert len(losers) and (fees.fees < 0).all()
    assert losers.reason.str.startswith("fees -0.50").any()
    # physics-based charges: the same dispatch pays the same charge with or without P2P
    assert gains(runs[1])["network charges"].abs().max() < 1e-9
    page = report_page(write_comparison(runs, tmp_path / "cmp").read_text())
    assert "Who gains and who loses, and why" in page["headings"]
    assert any("Worse off under" in h for h in page["headings"])


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
