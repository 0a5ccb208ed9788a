"""The order gate: the virtual layer in front of the market. Each round the controllers
sign (or commit to) their orders, an adversary may add or replace some, and the market
admits or rejects each (`cosim.virtual.admission`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cosim.config.scenario import Scenario
from cosim.physical.fleet import Fleet, OrderBook
from cosim.virtual.admission import (
    ADMITTED,
    Admission,
    Adversary,
    Commitments,
    Controllers,
    SignedOrder,
)
from cosim.virtual.ledger import rejection_rows


@dataclass
class GateRound:
    """What the virtual layer made of one round's orders."""

    passive: frozenset
    """Prosumers with a physical net position but no admitted order."""
    rejections: pd.DataFrame | None
    """The round's rows of rejections.parquet; None if nothing was rejected."""
    submitted: list[SignedOrder] | Commitments | None = None
    """Every order that reached the market, in arrival order (None once recorded)."""
    outcomes: list[str] | None = None
    """``admitted`` or the rejection reason of each submitted order."""
    cpu_s: float = 0.0
    """Thread CPU time of signing and admission [s]."""


class OrderGate:
    """The virtual layer in front of the market, one per run and shared by its variants.

    Each round the controllers sign their orders, the adversary (scenario
    ``ledger.adversary``) adds or replaces some, and the market admits or rejects each.
    The first variant to reach a round computes it; the later ones get the same
    admission (who became passive, the rejections), so every variant clears the same
    admitted orders.
    """

    def __init__(self, scenario: Scenario, fleet: Fleet):
        self.controllers = Controllers(scenario.seed, fleet.ids)
        self.ids = list(fleet.ids)
        # an order byte-identical to one these controllers just signed needs no second
        # signature check (same outcomes; `cosim ledger verify` checks every signature)
        self.admission = Admission(self.controllers.public_keys, signer=self.controllers)
        self.adversary = Adversary(scenario.ledger.adversary, scenario.seed, self.controllers)
        self.done: dict[int, GateRound] = {}
        self.defer = not self.adversary.active
        """Whether the controllers only commit to their orders and the ledger signs them
        (`cosim.virtual.admission.Controllers.commit`), beside the rounds. Not with an adversary,
        whose attacks copy signed orders."""

    def get_state(self) -> dict:
        """Nonce counters, the adversary's random state and the admissions the later
        variants reuse (picklable), for a checkpoint."""
        adv = self.adversary
        return {
            "next_nonce": dict(self.controllers.next_nonce),
            "last_nonce": dict(self.admission.last_nonce),
            "adversary_rng": adv.rng.bit_generator.state,
            "adversary_previous": adv.previous,
            "done": dict(self.done),
        }

    def set_state(self, state: dict) -> None:
        self.controllers.next_nonce = dict(state["next_nonce"])
        self.admission.last_nonce = dict(state["last_nonce"])
        self.adversary.rng.bit_generator.state = state["adversary_rng"]
        self.adversary.previous = state["adversary_previous"]
        self.done = dict(state["done"])

    def round(self, t: int, book: OrderBook, deliver_kwh: np.ndarray, absorb_kwh: np.ndarray) -> GateRound:
        """Admit round t's orders (`book`); `deliver_kwh` / `absorb_kwh` are each
        prosumer's physical limits [kWh]."""
        if t in self.done:
            return self.done[t]
        c0 = time.thread_time()
        fleet_ids = self.ids
        ids = [fleet_ids[i] for i in book.pos.tolist()]
        if self.defer:  # the controllers commit, the market admits, the ledger signs
            submitted = self.controllers.commit(t, ids, book.buy, book.quantity_kwh, book.price_per_kwh)
            outcomes = self.admission.admit_commitments(t, submitted, deliver_kwh[book.pos], absorb_kwh[book.pos])
            admitted = np.array([o == ADMITTED for o in outcomes], dtype=bool)
            passive_pos = book.pos[~admitted]
            rejections = rejection_rows(t, submitted.orders(), outcomes) if not admitted.all() else None
            gr = GateRound(frozenset(fleet_ids[i] for i in passive_pos.tolist()), rejections, submitted, outcomes)
            gr.cpu_s = time.thread_time() - c0
            return gr
        sides = np.where(book.buy, "buy", "sell").tolist()
        qty, price = book.quantity_kwh.tolist(), book.price_per_kwh.tolist()
        limits = dict(zip(fleet_ids, zip(deliver_kwh.tolist(), absorb_kwh.tolist(), strict=True), strict=True))
        honest = self.controllers.sign(t, list(zip(ids, sides, qty, price, strict=True)))
        submitted = self.adversary.attack(t, honest, limits) if self.adversary.active else honest
        outcomes = self.admission.admit(t, submitted, limits)
        planned = {i: (s, q, p) for i, s, q, p in zip(ids, sides, qty, price, strict=True)}
        admitted = set()
        for o, out in zip(submitted, outcomes, strict=True):
            if out == ADMITTED:
                if planned.get(o.id) != (o.side, o.quantity_kwh, o.price_per_kwh):
                    raise RuntimeError(
                        f"round {t}: admitted an order of {o.id} that is not its controller's plan; the "
                        "physics would not match the trades"
                    )
                admitted.add(o.id)
        rejections = rejection_rows(t, submitted, outcomes) if len(admitted) < len(submitted) else None
        gr = GateRound(frozenset(planned) - admitted, rejections, submitted, outcomes)
        gr.cpu_s = time.thread_time() - c0
        if self.adversary.active:  # later variants need the outcome
            self.done[t] = GateRound(gr.passive, gr.rejections)
        return gr
