"""The initiatives' presets (scenarios/initiatives/*.yaml) and their comparison page
(cosim.reporting.initiatives): every preset validates, says what it reproduces and from
which source, runs the shipped feeder's summer day, and is on the docs page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cosim.cli import EXIT_OK, main
from cosim.config.load import load_scenario
from cosim.markets import MECHANISMS

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted((REPO / "scenarios" / "initiatives").glob("*.yaml"))
#: The initiatives issue 14 names, each with at least one preset (file stem prefix).
REQUIRED = ["brooklyn-microgrid", "piclo", "piclo-flex", "vandebron", "sonnen-community", "solshare", "lumenaza",
            "centrica-cornwall-lem", "transactive-energy-colombia", "energy-collective", "p2p3m-sdr", "p2p3m-mmr",
            "p2p3m-bill-sharing", "nrgcoin", "enerchain"]


def test_every_required_initiative_has_a_preset():
    assert sorted(REQUIRED) == sorted(p.stem for p in PRESETS)


def test_cosim_validate_accepts_every_preset(capsys):
    """`cosim validate` on all presets at once: exit 0, one ``ok`` line per preset."""
    code = main(["validate", *map(str, PRESETS)])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.count(": ok (") == len(PRESETS)


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_header_and_day(path):
    """Each header says what the initiative does with a source, which cosim mechanism
    reproduces it, and what is approximated; the preset names that mechanism and runs one
    summer day of the shipped rural3 feeder."""
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for part in ("Source:", "cosim:", "Approximated:"):
        assert part in header, f"{path.name}: header lacks {part!r}"
    s = load_scenario(path)
    assert s.name == f"initiative-{path.stem}"
    assert s.market.mechanism in MECHANISMS
    assert f"`{s.market.mechanism}`" in header.split("cosim:")[1]
    assert s.network == "rural3" and s.start.date().isoformat() == "2016-07-21" and s.duration.days == 1


def test_docs_page_lists_every_preset():
    page = (REPO / "docs" / "initiatives.md").read_text()
    for path in PRESETS:
        assert re.search(rf"`{re.escape(path.stem)}`", page), path.stem
    for hidden in ("EMPOWER", "P2P-SmartTest", "NOBEL", "Smart Watts", "CF! Village", "PeerEnergyCloud"):
        assert hidden in page


TINY = """# Tiny initiative (a test): two hours on the hand-made feeder.
# Source: none, a test. cosim: `{mechanism}`. Approximated: everything.
name: tiny-{stem}
network: feeder
start: 2016-07-21 10:00
prosumers: {{pv_share: 0.6, pv_kwp: 15}}
duration: 2h
seed: 3
market: {{mechanism: {mechanism}, bidding: zero-intelligence}}
"""


def test_initiatives_page(tmp_path):
    """The page has one row per preset: a run's row links to its report and shows its
    figures; a preset without a run says so; the full comparison is linked."""
    from conftest import report_page, report_row

    from cosim.reporting.initiatives import main as initiatives_main
    from cosim.sim import loop

    presets, runs = tmp_path / "presets", tmp_path / "runs"
    presets.mkdir()
    for stem, mechanism in (("alpha", "continuous"), ("beta", "uniform")):
        (presets / f"{stem}.yaml").write_text(TINY.format(stem=stem, mechanism=mechanism))
    loop.run_scenario(presets / "alpha.yaml", out=runs / "alpha", progress=False, report=True)
    assert initiatives_main(["--presets", str(presets), "--runs", str(runs)]) == 0
    text = (runs / "initiatives.html").read_text()
    page = report_page(text)
    alpha = report_row(page, "Tiny initiative")
    assert alpha[0][0] == "continuous"
    assert float(alpha[2][0].replace(",", "")) > 0  # P2P traded [kWh]
    assert 'href="alpha/report.html"' in text and 'href="compare/compare.html"' in text
    assert (runs / "compare" / "compare.html").exists()
    assert "beta</code>, not run" in text
    assert "1 of 2 presets run" in text


def test_initiatives_page_without_presets(tmp_path, capsys):
    from cosim.reporting.initiatives import main as initiatives_main

    assert initiatives_main(["--presets", str(tmp_path), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "expected preset files (*.yaml), found none" in err and "Traceback" not in err
