# Shared pytest fixtures. Other fixtures may be added here; keep each group under its own
# prefix (the `grid_` fixtures below belong to the power-flow, sensitivity and feedback tests).
"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from cosim.networks import build_net, load_network_spec

# The same examples on every run, so that CI is reproducible; explore new ones with
# HYPOTHESIS_PROFILE=explore (or pytest --hypothesis-seed=N). "The same" holds for the same
# selection of test files only: Hypothesis (>= 6.131) also draws, now and then, constants it
# finds in the source of the project modules loaded at the time (not in test files), so a test
# file that imports another cosim module changes the examples of the tests that run after it
# (test_auctions.py imports cosim.scenario, whose constants made the Shapley contract test
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
