"""The no-P2P baseline with and without feedback, simulated in one pass (a fast path of the parallel run)."""

from __future__ import annotations

import dataclasses

import numpy as np

from cosim.markets import MarketContext
from cosim.physical.fleet import OrderBook
from cosim.sim.round import RoundOutcome, VariantRunner
from cosim.sim.setup import Setup, Variant


class PairedBaselines:
    """The no-P2P baseline with feedback and without it, in one pass.

    Without a market, nothing a round sends to the next depends on the feedback: the
    batteries follow their rule on the profiles (no P2P price to react to), the
    zero-intelligence prices draw the same numbers, and the first clearing (everyone with
    the grid, no cuts) needs no solver. So the two variants share each round's
    controllers, orders and first clearing; the round without feedback ends with its
    first grid check, and only the rounds where that check finds a violation go on
    through the feedback. Each keeps what differs: its warm-start voltages (a round after
    feedback starts its first power flow from each variant's own), its loss factors
    and network charges. The results are those of the two variants run apart, bit for bit
    (tests/test_parallel_variants.py). Grid-connected and balanced only: islanded, the
    grid-forming unit's charge follows the power flows; in three phases the pairing would
    have to carry the three-phase solver's warm start too.
    """

    def __init__(self, setup: Setup, with_feedback: Variant, without: Variant):
        if (setup.scenario.mode != "grid-connected" or setup.pf3 is not None or with_feedback.mechanism != "none"
                or without.mechanism != "none"):
            raise ValueError("paired baselines: grid-connected, balanced runs of the no-P2P baseline only")
        self.fb = VariantRunner(setup, with_feedback)
        self.nf = VariantRunner(setup, without)
        self.pf = setup.pf
        self.v_fb = self.v_nf = setup.pf.get_state()

    def run_round(self, t: int) -> list[tuple[RoundOutcome, OrderBook, MarketContext]]:
        """(outcome, book, context) of the round with feedback, then without."""
        fb, nf, pf = self.fb, self.nf, self.pf
        rd = fb.controllers(t)
        fb.market_inputs(rd)
        start = self.v_nf
        pf.set_state(start)
        chk, attribution = fb.first_clearing(rd)
        self.v_nf = pf.get_state()
        # without feedback the round ends here (its own copy of the result: charges differ)
        rd_nf = dataclasses.replace(rd, timings=dict(rd.timings))
        chk_nf = dataclasses.replace(chk, result=dataclasses.replace(chk.result))
        without = nf.finish(rd_nf, chk_nf, 1, len(chk.violations), attribution)
        if not np.array_equal(self.v_fb, start):  # the last round's feedback moved its voltages
            pf.set_state(self.v_fb)
            chk, attribution = fb.first_check(rd, chk.result)
        n_initial, iterations = len(chk.violations), 1
        if fb.variant.feedback and rd.status == "ok" and chk.violations:
            chk, iterations = fb.feedback(rd, chk)
            if chk.violations:
                chk = fb.force(rd, chk)
        with_feedback = fb.finish(rd, chk, iterations, n_initial, attribution)
        self.v_fb = pf.get_state()
        return [with_feedback, without]
