# Shared pytest fixtures. Other fixtures may be added here; keep each group under its own
# prefix (the `grid_` fixtures below belong to the power-flow, sensitivity and feedback tests).
"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cosim.physical.networks import build_net, load_network_spec

# The same examples on every run, so that CI is reproducible; explore new ones with
# HYPOTHESIS_PROFILE=explore (or pytest --hypothesis-seed=N). "The same" holds for the same
# selection of test files only: Hypothesis (>= 6.131) also draws, now and then, constants it
# finds in the source of the project modules loaded at the time (not in test files), so a test
# file that imports another cosim module changes the examples of the tests that run after it
# (test_auctions.py imports cosim.config.scenario, whose constants made the Shapley contract test
# draw the loss-making islanded trade that it skipped when run alone). To reproduce a
# Hypothesis failure, run the same list of files.
settings.register_profile("cosim", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cosim"))

GRID_NETWORKS_DIR = Path(__file__).resolve().parent.parent / "networks"


@pytest.fixture(scope="session")
def grid_feeder_net():
    """The small inline feeder of networks/feeder.yaml (9 buses). Read-only: deepcopy to change."""
    return build_net(load_network_spec(GRID_NETWORKS_DIR / "feeder.yaml"))


@pytest.fixture(scope="session")
def grid_rural3_net():
    """SimBench 1-LV-rural3--0-sw of networks/rural3.yaml (129 buses). Read-only: deepcopy to change."""
    return build_net(load_network_spec(GRID_NETWORKS_DIR / "rural3.yaml"))


@pytest.fixture(scope="session")
def grid_cigre_lv_net():
    """pandapower's CIGRE LV net of networks/cigre_lv.yaml (44 buses). Read-only: deepcopy to change."""
    return build_net(load_network_spec(GRID_NETWORKS_DIR / "cigre_lv.yaml"))


# -- market_: order books and the clearing contract, shared by the mechanism tests ---------------
# (test_shapley.py, test_stackelberg.py). Plain functions, imported by name (``from conftest
# import ...``): order books are built at import time, in parametrize lists and strategies.
# cosim.markets and cosim.sim.settlement are imported inside the functions, so that a session that
# does not test a market does not load them (Hypothesis draws constants from the project
# modules loaded, see above).
MARKET_RETAIL, MARKET_FEED_IN = 0.30, 0.08

MARKET_HYPOTHESIS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def market_books(*orders: tuple[str, float, float]):
    """OrderArrays from (side, quantity_kwh, price_per_kwh) tuples, one per participant in
    order; side ``idle`` gives a participant with no order."""
    from cosim.markets import OrderArrays

    n = len(orders)
    demand, supply, bid, ask = (np.zeros(n) for _ in range(4))
    for i, (side, q, p) in enumerate(orders):
        if side == "buy":
            demand[i], bid[i] = q, p
        elif side == "sell":
            supply[i], ask[i] = q, p
    return OrderArrays(demand, supply, bid, ask)


def market_edge_books() -> list:
    """Two-participant books with nothing to trade P2P, as pytest params: no orders, buyers
    only, sellers only, zero quantities, and an ask above the bid."""
    r, f = MARKET_RETAIL, MARKET_FEED_IN
    return [
        pytest.param(market_books(("idle", 0, 0), ("idle", 0, 0)), id="empty"),
        pytest.param(market_books(("buy", 1.0, r), ("buy", 2.0, 0.2)), id="buyers only"),
        pytest.param(market_books(("sell", 1.0, f), ("sell", 2.0, 0.1)), id="sellers only"),
        pytest.param(market_books(("buy", 0.0, r), ("sell", 0.0, f)), id="zero quantities"),
        pytest.param(market_books(("buy", 1.0, 0.1), ("sell", 1.0, 0.2)), id="ask above bid"),
    ]


@st.composite
def market_order_books(draw, n_min: int = 2, n_max: int = 7, q_max: float = 3.0, truthful: bool = False):
    """Random books of n_min..n_max participants: buyers, sellers and idle ones, quantities
    in [0, q_max] kWh (3 decimals), prices between the tariffs (4 decimals), or at the
    tariffs (bid = retail, ask = feed-in) if `truthful`."""
    n = draw(st.integers(n_min, n_max))
    sides = draw(st.lists(st.sampled_from(["buy", "sell", "idle"]), min_size=n, max_size=n))
    qty = draw(st.lists(st.floats(0.0, q_max), min_size=n, max_size=n))
    price = draw(st.lists(st.floats(MARKET_FEED_IN, MARKET_RETAIL), min_size=n, max_size=n))
    orders = []
    for s, q, pr in zip(sides, qty, price, strict=True):
        if truthful:
            pr = MARKET_RETAIL if s == "buy" else MARKET_FEED_IN
        orders.append((s, round(q, 3), round(pr, 4)))
    return market_books(*orders)


def market_draw_limits(data, n: int):
    """Draw (context, cuts, charges) for n participants from a Hypothesis `st.data()`:
    network charges in [-0.02, 0.05] (credits included), one network cut and, half the
    time, an islanded outside party with caps in [0, 2] kWh."""
    from cosim.markets import Charges, MarketContext, NetworkCuts

    charges = Charges(np.array(data.draw(st.lists(st.floats(-0.02, 0.05), min_size=n, max_size=n))),
                      np.array(data.draw(st.lists(st.floats(-0.02, 0.05), min_size=n, max_size=n))))
    coef = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n)))
    cuts = NetworkCuts(coef[None, :], np.array([data.draw(st.floats(0.0, 3.0))]), ("cut",))
    ctx = MarketContext(MARKET_RETAIL, MARKET_FEED_IN)
    if data.draw(st.booleans()):
        ctx = MarketContext(MARKET_RETAIL, MARKET_FEED_IN, outside_party="grid_forming",
                            import_cap_kwh=data.draw(st.floats(0.0, 2.0)),
                            export_cap_kwh=data.draw(st.floats(0.0, 2.0)))
    return ctx, cuts, charges


#: Mechanisms kept across tests and examples, as a run keeps one for all its rounds (this
#: also checks that their persistent models are updated correctly from one book to the next).
_MARKET_MECHANISMS: dict[tuple, object] = {}


def market_mechanism(cls, ids: list[str], max_cuts: int, options: dict | None = None):
    """The mechanism `cls` for `ids`, built once per class, participants, cut slots and options."""
    key = (cls, tuple(ids), max_cuts, tuple(sorted((options or {}).items())))
    if key not in _MARKET_MECHANISMS:
        _MARKET_MECHANISMS[key] = cls(list(ids), max_cuts=max_cuts, options=options)
    return _MARKET_MECHANISMS[key]


def market_count_builds(monkeypatch, module, name: str) -> list:
    """Patch the class `module.name` so that each construction is recorded; returns the
    list of the constructors' positional arguments (one entry a model built)."""
    built = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return built


def market_check_balances(r, orders, qty_abs: float) -> None:
    """Each participant's demand (supply) is bought, imported or shed (sold, exported or
    curtailed), and every quantity is non-negative [kWh]."""
    np.testing.assert_allclose(r.bought_kwh + r.import_kwh + r.shed_kwh, orders.demand_kwh, atol=qty_abs)
    np.testing.assert_allclose(r.sold_kwh + r.export_kwh + r.curtailed_kwh, orders.supply_kwh, atol=qty_abs)
    for name in ("bought_kwh", "sold_kwh", "import_kwh", "export_kwh", "shed_kwh", "curtailed_kwh"):
        assert np.all(getattr(r, name) >= 0), name


def market_check_zero_sum(r, ids: list[str], ctx):
    """Settle the round: all bills sum to zero and the market operator breaks even. Both
    hold to rounding: each party's bill is computed from the same prices and quantities, so
    the solver's tolerances cancel out. Returns the settlement table."""
    from cosim.sim.settlement import MARKET_OPERATOR, settle

    s = settle(0, ids, np.full(len(ids), -1), r, ctx)
    assert s.bill.sum() == pytest.approx(0.0, abs=1e-9)
    assert float(s.loc[s.party == MARKET_OPERATOR, "bill"].iloc[0]) == pytest.approx(0.0, abs=1e-9)
    return s


# -- report_: reading the report's and the comparison's pages as tables, not markup -------------
def report_page(text: str) -> dict:
    """The page's headings and tables, parsed (html.parser): ``{"headings": [str],
    "tables": [[[(text, classes), ...] per row] per table]}``, so that tests read values
    and the cells marked as limit breaches, not HTML strings."""
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.headings, self.tables, self._cell, self._heading = [], [], None, None

        def handle_starttag(self, tag, attrs):
            if tag in ("h1", "h2", "h3"):
                self._heading = ""
            elif tag == "table":
                self.tables.append([])
            elif tag == "tr" and self.tables:
                self.tables[-1].append([])
            elif tag in ("td", "th") and self.tables:
                self._cell = ["", set((dict(attrs).get("class") or "").split())]

        def handle_endtag(self, tag):
            if tag in ("h1", "h2", "h3") and self._heading is not None:
                self.headings.append(self._heading.strip())
                self._heading = None
            elif tag in ("td", "th") and self._cell is not None:
                self.tables[-1][-1].append((self._cell[0].strip(), self._cell[1]))
                self._cell = None

        def handle_data(self, data):
            if self._cell is not None:
                self._cell[0] += data
            if self._heading is not None:
                self._heading += data

    page = Page()
    page.feed(text)
    return {"headings": page.headings, "tables": page.tables}


def report_row(page: dict, label: str, table: int | None = None) -> list[tuple[str, set]]:
    """The cells after the row header that starts with `label` (in table `table`, or the
    first table that has such a row)."""
    tables = page["tables"] if table is None else [page["tables"][table]]
    for rows in tables:
        for row in rows:
            if row and row[0][0].startswith(label):
                return row[1:]
    raise KeyError(f"no row {label!r} in {[r[0][0] for rows in tables for r in rows if r]}")


def interrupt_round(monkeypatch, at: int, only_pid: int | None = None) -> None:
    """Ctrl-C at the `at`-th round that `VariantRunner.run_round` simulates (counted over
    the variants, one after another); with `only_pid`, only rounds simulated by that
    process count and are interrupted (the run's own, not its variant processes).
    Undo with ``monkeypatch.undo()``."""
    import os

    from cosim.sim import loop

    real, calls = loop.VariantRunner.run_round, {"n": 0}

    def interrupted(self, t):
        if only_pid is None or os.getpid() == only_pid:
            calls["n"] += 1
            if calls["n"] == at:
                raise KeyboardInterrupt
        return real(self, t)

    monkeypatch.setattr(loop.VariantRunner, "run_round", interrupted)
