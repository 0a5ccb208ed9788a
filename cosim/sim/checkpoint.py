"""Checkpoints: where an interrupted run stands, enough to resume it with identical results."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosim.config.scenario import Scenario

# -- checkpoints ------------------------------------------------------------------------
CHECKPOINT = "checkpoint.pkl"
#: Rounds per recorded chunk: a week at 15 min. Each chunk is written to disk, then a
#: checkpoint is taken.
CHUNK_ROUNDS = 672


@dataclass
class Checkpoint:
    """Where an interrupted run stands: enough to resume it with identical results."""

    scenario_yaml: str
    variant: int
    """Index (in `variants_for`) of the variant being simulated."""
    next_round: int
    """Its first round not yet on disk."""
    chunk_rounds: int
    runner: dict
    gate: dict
    pf_voltages: np.ndarray
    ledger: tuple[int, str] | None
    """(blocks on disk, head hash) of the ledger, for the main variant."""
    finished: dict = field(default_factory=dict)
    """Variant name -> (kpis, prosumer bills, timing) of the variants already done."""
    elapsed_s: float = 0.0
    pf3_voltages: np.ndarray | None = None
    """The three-phase power flow's warm start (``physics: three-phase``), else None."""

    def save(self, folder: Path) -> None:
        import pickle

        tmp = folder / (CHECKPOINT + ".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / CHECKPOINT)

    @staticmethod
    def load(folder: Path) -> Checkpoint | None:
        import pickle

        path = folder / CHECKPOINT
        if not path.exists():
            return None
        with open(path, "rb") as fh:
            return pickle.load(fh)


@dataclass
class Progress:
    """What `simulate_variant` needs to start mid-run and to take checkpoints."""

    start_round: int = 0
    runner_state: dict | None = None
    on_chunk: object = None
    """Called as ``on_chunk(runner, next_round)`` after each chunk is on disk."""


def check_resumable(folder, ckpt: Checkpoint | None, scenario: Scenario) -> None:
    """Refuse to resume without a checkpoint or with a scenario that has changed."""
    from cosim.config.errors import InputError

    if ckpt is None:
        raise InputError(folder.final, [f"--resume: expected a checkpoint of an interrupted run in {folder.tmp}, "
                                         "found none; run without --resume"])
    if ckpt.scenario_yaml != scenario.to_yaml():
        raise InputError(folder.final, ["--resume: expected the scenario of the interrupted run, found a changed "
                                        "one; run without --resume to start again"])
