"""The round loop: the only place that knows the order of the stages.

scenario -> network + fleet + profiles -> for each round: controllers -> orders ->
clearing -> grid check -> (feedback -> clearing -> grid check)* -> settlement -> ledger ->
recorder. Between the controllers and the clearing sits the virtual layer (`OrderGate`):
every order is signed by its controller and admitted or rejected by the market
(`cosim.virtual.admission`); a rejected order counts as no order, and that prosumer's physical
net position is traded with the outside party. After settlement the round's orders,
trades and settlement go into a block of the ledger (`cosim.virtual.ledger`).

Each run simulates four variants on the same profiles, P2P or not crossed with network
feedback or not, so that the effect of the market is seen apart from that of the PV:

- ``market``: the scenario's mechanism with network feedback (the main results);
- ``market_no_feedback``: the same market without feedback, to show what it would do;
- ``baseline``: no P2P, every prosumer trades only with the grid (islanded: the
  grid-forming unit), with feedback;
- ``baseline_no_feedback``: no P2P and no feedback: what the PV alone does to the feeder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cosim.config.scenario import Scenario
from cosim.flex.assets import (
    FlexibleAssets,
    build_assets,
    flexible_consumption_kwh,
    summarize_storage,
)
from cosim.io.results import Recorder
from cosim.markets import (
    Charges,
    ClearingResult,
    MarketContext,
    NetworkCuts,
    OrderArrays,
    Participants,
    get_mechanism,
)
from cosim.markets.base import QTY_TOL, TRADE_COLUMNS, fallback_result
from cosim.physical.fleet import Fleet, OrderBook, build_fleet, order_book
from cosim.physical.grid.powerflow import GridState, PowerFlow
from cosim.physical.grid.sensitivities import AdjointSensitivities, Sensitivities, loss_factors
from cosim.physical.networks import (
    build_net,
    feeder_of_buses,
    find_network_file,
    grid_tables,
    line_distance_km,
    load_network_spec,
    lv_busbar,
    set_islanded,
)
from cosim.sim.feedback import (
    MAX_FORCED_STEPS,
    Limits,
    attribute,
    find_violations,
    forced_reduction,
    linearise,
    network_charges,
    reduce_orders,
)
from cosim.sim.settlement import parties, settle_matrix
from cosim.virtual.admission import (
    ADMITTED,
    Admission,
    Adversary,
    Commitments,
    Controllers,
    SignedOrder,
)
from cosim.virtual.ledger import SETTLEMENT_FIELDS, LedgerWriter, rejection_rows, trade_payload
from cosim.virtual.ledger_process import LedgerProcess

#: Settlement columns in the ledger: bought_kwh .. bill (`cosim.virtual.ledger.SETTLEMENT_FIELDS`).
N_LEDGER_SETTLEMENT = len(SETTLEMENT_FIELDS) - 2
#: Network-cut slots in the clearing model.
MAX_CUTS = 40
OUTSIDE = {"grid-connected": "grid", "islanded": "grid_forming"}
#: Buses below this nominal voltage are the LV network [kV].
LV_MAX_KV = 1.0


@dataclass(frozen=True)
class Variant:
    name: str
    mechanism: str
    feedback: bool
    folder: str
    """Subfolder of the run directory ('' for the main results)."""


def variants_for(scenario: Scenario) -> list[Variant]:
    return [
        Variant("market", scenario.market.mechanism, scenario.feedback.enabled, ""),
        Variant("market_no_feedback", scenario.market.mechanism, False, "no_feedback"),
        Variant("baseline", "none", scenario.feedback.enabled, "baseline"),
        Variant("baseline_no_feedback", "none", False, "baseline_no_feedback"),
    ]


@dataclass
class Setup:
    """Everything built once per run and shared by the variants."""

    scenario: Scenario
    net: object
    fleet: Fleet
    pf: PowerFlow
    participant_pos: np.ndarray
    """Position of each prosumer's bus in `pf.buses`."""
    grid_buses: pd.DataFrame
    grid_branches: pd.DataFrame
    participants: Participants
    gfu_bus: int | None = None
    busbar_pos: int = 0
    """Position of the LV busbar (the transformer's LV side) in `pf.buses`."""
    lv: np.ndarray | None = None
    """True for the LV buses of `pf.buses` (below 1 kV): the buses whose voltages
    rounds.parquet and the summary report (not the MV slack bus)."""
    assets: FlexibleAssets | None = None
    """Batteries, EVs, shiftable loads and their day-ahead planner; each variant runs a
    `FlexibleAssets.fresh` copy (the planner and its schedules are shared)."""


def prepare(scenario: Scenario, scenario_path: str | Path | None = None) -> Setup:
    spec = load_network_spec(find_network_file(scenario.network, scenario_path))
    net = build_net(spec)
    fleet = build_fleet(net, spec, scenario)
    assets = build_assets(scenario, fleet, net, spec, scenario_path)
    bus = fleet.table.bus.to_numpy()
    participants = Participants(
        fleet.ids, bus, feeder_of_buses(net).loc[bus].to_numpy(), fleet.table.pv_kwp.to_numpy() > 0,
        line_distance_km(net, bus),
    )
    gfu_bus = None
    if scenario.mode == "islanded":
        gfu_bus = scenario.islanded.grid_forming_bus
        if gfu_bus is None:
            gfu_bus = lv_busbar(net)
        set_islanded(net, gfu_bus)
    grid_buses, grid_branches = grid_tables(net)
    pf = PowerFlow(net)
    pos = pd.Series(np.arange(len(pf.buses)), index=pf.buses)
    participant_pos = pos.loc[fleet.table.bus].to_numpy()
    lv = net.bus.vn_kv.loc[pf.buses].to_numpy(float) < LV_MAX_KV
    return Setup(scenario, net, fleet, pf, participant_pos, grid_buses, grid_branches, participants, gfu_bus,
                 busbar_pos=int(pos.loc[lv_busbar(net)]), assets=assets, lv=lv)


@dataclass
class GridFormingUnit:
    """The islanded slack: a battery inverter within its kW and kWh limits."""

    p_kw: float
    e_kwh: float
    soc: float
    soc_min: float
    soc_max: float
    efficiency: float
    s_kva: float | None = None
    """Apparent power rating [kVA]; None: ``p_kw``."""
    q_kvar: float = 0.0
    """Reactive power it supplied in the last power flow [kvar]."""

    def p_limit_kw(self, q_kvar: float | None = None) -> float:
        """Most active power it can give or take with `q_kvar` of reactive power
        (default: the last round's) within its kW and kVA ratings [kW]."""
        q = self.q_kvar if q_kvar is None else q_kvar
        s = self.p_kw if self.s_kva is None else self.s_kva
        return min(self.p_kw, float(np.sqrt(max(s * s - q * q, 0.0))))

    def caps_kwh(self, dt_h: float, p_kw: float | None = None) -> tuple[float, float]:
        """(most it can deliver, most it can absorb) this round [kWh], within its power
        rating (or `p_kw`) and its state-of-charge bounds."""
        p = self.p_limit_kw() if p_kw is None else p_kw
        deliver = min(p * dt_h, max(self.soc - self.soc_min, 0.0) * self.e_kwh * self.efficiency)
        absorb = min(p * dt_h, max(self.soc_max - self.soc, 0.0) * self.e_kwh / self.efficiency)
        return deliver, absorb

    def step(self, p_kw: float, dt_h: float) -> None:
        """Apply the slack's output (positive = discharging) for one round."""
        if p_kw >= 0:
            self.soc -= p_kw * dt_h / (self.efficiency * self.e_kwh)
        else:
            self.soc -= p_kw * dt_h * self.efficiency / self.e_kwh
        self.soc = float(np.clip(self.soc, 0.0, 1.0))


@dataclass
class RoundOutcome:
    result: ClearingResult
    state: GridState
    p_kw: np.ndarray
    q_kvar: np.ndarray
    iterations: int
    violations: list
    violations_initial: int
    status: str
    attribution: pd.DataFrame | None
    timings: dict = field(default_factory=dict)
    physical: dict = field(default_factory=dict)
    """Per prosumer: load_kwh, pv_kwh, battery_kwh (charging positive)."""
    gate: GateRound | None = None
    """The virtual layer's admission of the round's orders (None without it)."""
    storage: dict[str, np.ndarray] | None = None
    """The round's rows of storage.parquet, one array per column (None without flexible
    assets, and in the variants that do not record them)."""


@dataclass
class RoundState:
    """What one round carries from stage to stage."""

    t: int
    load_kw: np.ndarray
    load_kvar: np.ndarray
    pv_kw: np.ndarray
    net_kw: np.ndarray
    """Net load after the flexible assets [kW]."""
    battery_kw: np.ndarray
    """Power of the flexible assets, positive when consuming [kW]."""
    book: OrderBook
    limits_kwh: tuple[np.ndarray, np.ndarray] | None
    """(most each prosumer can deliver, absorb) before dispatch [kWh], for admission."""
    timings: dict
    gate: GateRound | None = None
    passive: OrderArrays | None = None
    orders: OrderArrays | None = None
    ctx: MarketContext | None = None
    market_ctx: MarketContext | None = None
    """The context the mechanism sees (less the passive prosumers' share of the outside party)."""
    charges: Charges | None = None
    cuts: NetworkCuts | None = None
    status: str = "ok"


@dataclass
class Checked:
    """A clearing and the grid check of its dispatch."""

    result: ClearingResult
    p_kw: np.ndarray
    q_kvar: np.ndarray
    state: GridState
    violations: list
    sens: Sensitivities | None = None


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

    def close(self) -> None:
        """Nothing to release (kept so that callers can treat the gate as a resource)."""

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


class VariantRunner:
    """Runs one variant round by round."""

    def __init__(self, setup: Setup, variant: Variant, gate: OrderGate | None = None):
        self.setup = setup
        self.variant = variant
        self.gate = gate
        sc = setup.scenario
        self.sc = sc
        self.dt_h = sc.dt_h
        self.fleet = setup.fleet
        self.pf = setup.pf
        options = sc.market.options if variant.mechanism == sc.market.mechanism else None
        self.mechanism = get_mechanism(variant.mechanism)(setup.participants, max_cuts=MAX_CUTS, options=options)
        self.assets = setup.assets.fresh() if setup.assets is not None else build_assets(sc, self.fleet)
        self.batteries = self.assets.batteries
        self.rng = np.random.default_rng(sc.seed + 1)
        self.gfu = None
        slack_limit = None
        if sc.mode == "islanded":
            isl = sc.islanded
            self.gfu = GridFormingUnit(isl.p_kw, isl.e_kwh, isl.initial_soc, isl.soc_min, isl.soc_max, isl.efficiency,
                                       isl.s_kva)
            slack_limit = isl.p_kw
        self.limits = Limits.from_feedback(sc.feedback, slack_limit)
        self.bus_pos_of = dict(zip(self.fleet.ids, setup.participant_pos, strict=True))
        self.last_loss_factors = None
        self.last_state: GridState | None = None
        self.last_price: float | None = None
        """The last round's P2P price [currency/kWh], the signal of the ``price`` storage
        strategy (None: nothing traded P2P, or a variant without a market)."""

    # -- checkpoints --------------------------------------------------------------------
    def get_state(self) -> dict:
        """Everything this runner carries from one round to the next (picklable)."""
        return {
            "assets": self.assets.get_state(),
            "rng": self.rng.bit_generator.state,
            "gfu": self.gfu,
            "last_loss_factors": self.last_loss_factors,
            "last_state": self.last_state,
            "last_price": self.last_price,
            "mechanism": self.mechanism.get_state(),
        }

    def set_state(self, state: dict) -> None:
        self.assets.set_state(state["assets"])
        self.batteries = self.assets.batteries
        self.rng.bit_generator.state = state["rng"]
        self.gfu = state["gfu"]
        self.last_loss_factors = state["last_loss_factors"]
        self.last_state = state["last_state"]
        self.last_price = state.get("last_price")
        self.mechanism.set_state(state["mechanism"])

    # -- physics helpers ----------------------------------------------------------------
    def bus_injections(self, r: ClearingResult, net_kw: np.ndarray, load_kw: np.ndarray,
                       load_kvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-bus net load [kW] and [kvar] of the dispatch (load convention)."""
        prosumer_kw = -r.injection_kwh / self.dt_h
        shed_kw = r.shed_kwh / self.dt_h
        with np.errstate(divide="ignore", invalid="ignore"):
            served = np.where(load_kw > 0, np.clip(1.0 - shed_kw / load_kw, 0.0, 1.0), 1.0)
        n_bus = len(self.pf.buses)
        p = np.bincount(self.setup.participant_pos, weights=prosumer_kw, minlength=n_bus)
        q = np.bincount(self.setup.participant_pos, weights=load_kvar * served, minlength=n_bus)
        # a community battery run by the market operator sits at the LV busbar
        battery_kwh = r.info.get("battery_charge_kwh", 0.0) - r.info.get("battery_discharge_kwh", 0.0) if r.info else 0.0
        if battery_kwh:
            p[self.setup.busbar_pos] += battery_kwh / self.dt_h
        return p, q

    def limits_for(self, state: GridState) -> Limits:
        """The limits a power flow's outcome is checked against: islanded, the slack's
        active power limit is what its kVA rating leaves beside the reactive power it
        supplies in that power flow."""
        if self.gfu is None or not state.converged:
            return self.limits
        g = self.gfu
        deliver_kwh, absorb_kwh = g.caps_kwh(self.dt_h, g.p_limit_kw(state.slack_q_kvar))
        # one symmetric limit: the side the slack is on this round
        limit_kwh = deliver_kwh if state.slack_p_kw >= 0 else absorb_kwh
        return dataclasses.replace(self.limits, slack_p_kw=limit_kwh / self.dt_h)

    def context(self, t: int) -> MarketContext:
        m = self.sc.market
        ctx = MarketContext(
            round_no=t,
            dt_h=self.dt_h,
            retail_price_per_kwh=m.retail_price_per_kwh,
            feed_in_price_per_kwh=m.feed_in_price_per_kwh,
            k=m.k,
            outside_party=OUTSIDE[self.sc.mode],
            voll_per_kwh=self.sc.islanded.voll_per_kwh,
        )
        if self.gfu is not None:
            deliver, absorb = self.gfu.caps_kwh(self.dt_h)
            ctx = dataclasses.replace(ctx, import_cap_kwh=deliver, export_cap_kwh=absorb)
        return ctx

    # -- one round ----------------------------------------------------------------------
    def outside_positions(self, r: ClearingResult, demand_kwh: np.ndarray, supply_kwh: np.ndarray,
                          ctx: MarketContext) -> ClearingResult:
        """Add the net positions of prosumers without an admitted order to a clearing
        result: they buy from and sell to the outside party at its tariffs; islanded, what
        the grid-forming unit cannot take is shed or curtailed pro rata."""
        d_tot, s_tot = demand_kwh.sum(), supply_kwh.sum()
        imp_share = min(1.0, ctx.import_cap_kwh / d_tot) if d_tot > 0 else 1.0
        exp_share = min(1.0, ctx.export_cap_kwh / s_tot) if s_tot > 0 else 1.0
        r = dataclasses.replace(
            r,
            import_kwh=r.import_kwh + demand_kwh * imp_share,
            export_kwh=r.export_kwh + supply_kwh * exp_share,
            shed_kwh=r.shed_kwh + demand_kwh * (1.0 - imp_share),
            curtailed_kwh=r.curtailed_kwh + supply_kwh * (1.0 - exp_share),
        )
        ids, rows = self.fleet.ids, []
        for i in np.flatnonzero(demand_kwh * imp_share > QTY_TOL):
            p = ctx.retail_price_per_kwh
            rows.append((ctx.outside_party, ids[i], float(demand_kwh[i] * imp_share), p, p, 0.0))
        for i in np.flatnonzero(supply_kwh * exp_share > QTY_TOL):
            p = ctx.feed_in_price_per_kwh
            rows.append((ids[i], ctx.outside_party, float(supply_kwh[i] * exp_share), p, p, 0.0))
        if rows:
            extra = pd.DataFrame(rows, columns=TRADE_COLUMNS)
            r.trades = extra if r.trades is None or not len(r.trades) else pd.concat([r.trades, extra], ignore_index=True)
        return r

    def run_round(self, t: int) -> tuple[RoundOutcome, OrderBook, MarketContext]:
        """One round, stage by stage (pandapower's control loop, with the feedback as an
        explicit fixed point): controllers -> admission -> clearing and grid check ->
        feedback (re-clear with cuts) -> forced curtailment or shedding -> bookkeeping."""
        rd = self.controllers(t)
        self.admit(rd)
        self.market_inputs(rd)
        chk, attribution = self.first_clearing(rd)
        n_initial = len(chk.violations)
        iterations = 1
        if self.variant.feedback and rd.status == "ok":
            chk, iterations = self.feedback(rd, chk)
            if chk.violations:
                chk = self.force(rd, chk)
        return self.finish(rd, chk, iterations, n_initial, attribution)

    # -- the round's stages ---------------------------------------------------------------
    def controllers(self, t: int) -> RoundState:
        """The flexible assets run, then each prosumer's controller makes its order."""
        sc, fleet, dt_h = self.sc, self.fleet, self.dt_h
        t0 = time.perf_counter()
        load_kw, load_kvar, pv_kw = fleet.load_kw[t], fleet.load_kvar[t], fleet.pv_kw[t]
        net_kw = load_kw - pv_kw
        limits = None
        if self.gate is not None:  # before the flexible assets run
            limits = self.assets.limits_kwh(t, load_kw, pv_kw, dt_h)
        battery_kw = self.assets.dispatch(t, net_kw, dt_h, self.last_price)  # batteries, EVs, shiftable loads
        net_kw = net_kw + battery_kw
        book = order_book(net_kw, dt_h, sc.market.bidding, sc.market.retail_price_per_kwh,
                          sc.market.feed_in_price_per_kwh, self.rng)
        timings = {"orders": time.perf_counter() - t0, "clear": 0.0, "pf": 0.0, "sens": 0.0, "settle": 0.0,
                   "ledger": 0.0}
        return RoundState(t=t, load_kw=load_kw, load_kvar=load_kvar, pv_kw=pv_kw, net_kw=net_kw,
                          battery_kw=battery_kw, book=book, limits_kwh=limits, timings=timings)

    def admit(self, rd: RoundState) -> None:
        """The virtual layer: orders are signed and admitted; prosumers without an admitted
        order become passive (they trade their net position with the outside party)."""
        if self.gate is None:
            return
        t1 = time.perf_counter()
        rd.gate = self.gate.round(rd.t, rd.book, *rd.limits_kwh)
        rd.timings["ledger"] += time.perf_counter() - t1
        rd.timings["ledger_cpu"] = rd.gate.cpu_s
        if rd.gate.passive:
            book, ids = rd.book, self.fleet.ids
            is_passive = np.array([ids[i] in rd.gate.passive for i in book.pos.tolist()], dtype=bool)
            rd.passive = OrderArrays.from_positions(self.fleet.n, book.pos[is_passive], book.buy[is_passive],
                                                    book.quantity_kwh[is_passive], book.price_per_kwh[is_passive])
            rd.book = OrderBook(*(x[~is_passive] for x in book))

    def market_inputs(self, rd: RoundState) -> None:
        """The order arrays, the market context (what passive prosumers leave of the outside
        party's capacity) and the network charges from the last operating point."""
        t1 = time.perf_counter()
        rd.orders = OrderArrays.from_positions(self.fleet.n, *rd.book)
        rd.ctx = rd.market_ctx = self.context(rd.t)
        if rd.passive is not None:
            rd.market_ctx = dataclasses.replace(
                rd.ctx,
                import_cap_kwh=max(rd.ctx.import_cap_kwh - rd.passive.demand_kwh.sum(), 0.0),
                export_cap_kwh=max(rd.ctx.export_cap_kwh - rd.passive.supply_kwh.sum(), 0.0),
            )
        fb = self.sc.feedback
        rd.charges = network_charges(fb.charge_method, fb.charge_rate_per_kwh, self.last_loss_factors,
                                     self.setup.participant_pos)
        rd.cuts = NetworkCuts.empty(self.fleet.n)
        rd.timings["orders"] += time.perf_counter() - t1

    def clear(self, rd: RoundState, orders: OrderArrays, curtail: np.ndarray | None = None,
              shed: np.ndarray | None = None) -> ClearingResult:
        """Clear `orders` under the round's cuts; passive prosumers' positions (less any
        forced `curtail`/`shed` [kWh]) go to the outside party."""
        t1 = time.perf_counter()
        passive = rd.passive
        if passive is None:
            r = self.mechanism.clear(orders, rd.ctx, rd.cuts, rd.charges)
        else:
            demand, supply = passive.demand_kwh, passive.supply_kwh
            if curtail is not None:
                demand, supply = np.maximum(demand - shed, 0.0), np.maximum(supply - curtail, 0.0)
            # cuts bound the whole injection; the mechanism controls all but the passive part
            cuts = rd.cuts
            market_cuts = NetworkCuts(cuts.coef, cuts.rhs - cuts.coef @ (supply - demand), cuts.labels)
            r = self.mechanism.clear(orders, rd.market_ctx, market_cuts, rd.charges)
            if r.ok:
                r = self.outside_positions(r, demand, supply, rd.ctx)
        rd.timings["clear"] += time.perf_counter() - t1
        return r

    def check(self, rd: RoundState, r: ClearingResult) -> Checked:
        """The grid check: one AC power flow of the dispatch and the limits it violates."""
        t1 = time.perf_counter()
        p, q = self.bus_injections(r, rd.net_kw, rd.load_kw, rd.load_kvar)
        s = self.pf.run(p, q)
        rd.timings["pf"] += time.perf_counter() - t1
        viol = find_violations(s, self.limits_for(s), self.pf.buses, self.pf.lines, self.pf.trafos)
        return Checked(r, p, q, s, viol)

    def sensitivities(self, rd: RoundState, chk: Checked) -> Sensitivities | None:
        """Sensitivities at the checked operating point (None without the fast path's voltages)."""
        t1 = time.perf_counter()
        chk.sens = AdjointSensitivities(self.pf, chk.state) if chk.state.V is not None else None
        rd.timings["sens"] += time.perf_counter() - t1
        return chk.sens

    def first_clearing(self, rd: RoundState) -> tuple[Checked, pd.DataFrame | None]:
        """Clear without cuts (a failed clearing falls back to the outside party), check it,
        and attribute its violations to its trades."""
        r = self.clear(rd, rd.orders)
        if not r.ok:
            rd.status = r.status
            r = fallback_result(rd.orders, rd.market_ctx, rd.charges, self.fleet.ids)
            if rd.passive is not None:
                r = self.outside_positions(r, rd.passive.demand_kwh, rd.passive.supply_kwh, rd.ctx)
            fees_due = getattr(self.mechanism, "fees_due", None)
            if callable(fees_due):  # a membership fee falls due even when the clearing failed
                r.info = {**r.info, "membership_fee": fees_due(rd.t)}
        chk = self.check(rd, r)
        attribution = None
        if chk.violations and self.sensitivities(rd, chk) is not None:
            attribution = attribute(rd.t, 1, chk.violations, chk.sens, self.bus_pos_of, r.trades, self.dt_h)
        return chk, attribution

    def feedback(self, rd: RoundState, chk: Checked) -> tuple[Checked, int]:
        """The fixed point: while a limit is violated and fewer than ``max_iterations``
        clearings were made, linearise the violations into cuts and clear again. Returns
        the last good check and the number of clearings."""
        fb, iterations = self.sc.feedback, 1
        while chk.violations and iterations < fb.max_iterations and chk.sens is not None:
            new = linearise(chk.violations, chk.sens, self.setup.participant_pos, chk.result.injection_kwh,
                            self.dt_h, fb)
            if not len(new):  # a sharing curtailment rule: straight to forced curtailment
                break
            rd.cuts = newest_cuts(rd.cuts.extend(new), MAX_CUTS)
            r = self.clear(rd, rd.orders)
            iterations += 1
            if not r.ok:
                rd.status = f"iteration {iterations}: {r.status}"
                break
            chk = self.check(rd, r)
            if chk.violations:
                self.sensitivities(rd, chk)
        return chk, iterations

    def force(self, rd: RoundState, chk: Checked) -> Checked:
        """Curtail or shed by the scenario's curtailment rule, a power flow after each of at
        most ``MAX_FORCED_STEPS`` steps, until nothing is violated."""
        n, dt_h = self.fleet.n, self.dt_h
        forced_c, forced_s = np.zeros(n), np.zeros(n)
        for _ in range(MAX_FORCED_STEPS):
            if chk.sens is None and self.sensitivities(rd, chk) is None:
                break
            c, s_ = forced_reduction(chk.violations, chk.sens, self.setup.participant_pos, chk.result, dt_h,
                                     self.sc.feedback, pv_kwh=rd.pv_kw * dt_h, load_kwh=rd.load_kw * dt_h)
            forced_c += c
            forced_s += s_
            r = self.clear(rd, reduce_orders(rd.orders, forced_c, forced_s), forced_c, forced_s)
            if not r.ok:
                rd.status = f"forced curtailment: {r.status}"
                break
            r.curtailed_kwh = r.curtailed_kwh + forced_c
            r.shed_kwh = r.shed_kwh + forced_s
            chk = self.check(rd, r)
            if not chk.violations:
                break
        return chk

    def finish(self, rd: RoundState, chk: Checked, iterations: int, n_initial: int,
               attribution: pd.DataFrame | None) -> tuple[RoundOutcome, OrderBook, MarketContext]:
        """What the round leaves for the next one (loss factors, the grid-forming unit's
        state of charge, the P2P price) and its outcome."""
        state, r, dt_h = chk.state, chk.result, self.dt_h
        if not state.converged and rd.status == "ok":
            rd.status = "power flow did not converge"
        if self.sc.feedback.charge_method == "sensitivity" and state.V is not None:
            t1 = time.perf_counter()
            self.last_loss_factors = loss_factors(self.pf, state)  # for the next round's charges
            rd.timings["sens"] += time.perf_counter() - t1
        if self.gfu is not None and state.converged:
            self.gfu.step(state.slack_p_kw, dt_h)
            self.gfu.q_kvar = state.slack_q_kvar
        self.last_state = state
        traded = self.variant.mechanism != "none" and r.cleared_kwh > QTY_TOL and np.isfinite(r.price_per_kwh)
        self.last_price = float(r.price_per_kwh) if traded else None
        outcome = RoundOutcome(r, state, chk.p_kw, chk.q_kvar, iterations, chk.violations, n_initial, rd.status,
                               attribution, rd.timings)
        outcome.physical = {"load_kwh": rd.load_kw * dt_h, "pv_kwh": rd.pv_kw * dt_h,
                            "battery_kwh": rd.battery_kw * dt_h}
        outcome.gate = rd.gate
        records = self.assets.records and self.variant.folder == ""
        outcome.storage = self.assets.storage_columns(rd.t) if records else None
        return outcome, rd.book, rd.ctx


def newest_cuts(cuts: NetworkCuts, slots: int) -> NetworkCuts:
    """The newest `slots` cuts (the clearing model has that many cut slots).

    >>> c = NetworkCuts(np.eye(3), np.arange(3.0), ("a", "b", "c"))
    >>> newest_cuts(c, 2).labels, len(newest_cuts(c, 5))
    (('b', 'c'), 3)
    """
    if len(cuts) <= slots:
        return cuts
    return NetworkCuts(cuts.coef[-slots:], cuts.rhs[-slots:], cuts.labels[-slots:])


def round_row(t: int, time_: pd.Timestamp, o: RoundOutcome, dt_h: float, gfu: GridFormingUnit | None,
              round_s: float, lv: np.ndarray | None = None) -> dict:
    r, s = o.result, o.state
    vm_lv = s.vm_pu if lv is None else s.vm_pu[lv]
    row = {
        "round": t,
        "time": time_,
        "iterations": o.iterations,
        "pf_converged": bool(s.converged),
        "cleared_kwh": r.cleared_kwh,
        "p2p_paid": float(np.nan_to_num(r.buy_price_per_kwh) @ r.bought_kwh),
        "price_per_kwh": r.price_per_kwh,
        "grid_import_kwh": float(r.import_kwh.sum()) + r.operator_import_kwh,
        "grid_export_kwh": float(r.export_kwh.sum()) + r.operator_export_kwh,
        "curtailed_kwh": float(r.curtailed_kwh.sum()),
        "shed_kwh": float(r.shed_kwh.sum()),
        "losses_kwh": s.losses_kw * dt_h,
        "vm_min_pu": float(np.nanmin(vm_lv)) if s.converged else np.nan,
        "vm_max_pu": float(np.nanmax(vm_lv)) if s.converged else np.nan,
        "max_line_loading_pct": float(np.nanmax(s.line_loading_pct, initial=0.0)) if s.converged else np.nan,
        "max_trafo_loading_pct": float(np.nanmax(s.trafo_loading_pct, initial=0.0)) if s.converged else np.nan,
        "violations": len(o.violations),
        "violations_initial": o.violations_initial,
        "violation_kinds": ",".join(sorted({v.kind for v in o.violations})),
        "network_charges": float(r.charges.buy @ r.bought_kwh + r.charges.sell @ r.sold_kwh),
        "slack_p_kw": s.slack_p_kw,
        "status": o.status,
        "pf_method": s.method,
        "round_ms": round_s * 1000.0,
        "orders_ms": o.timings["orders"] * 1000.0,
        "clear_ms": o.timings["clear"] * 1000.0,
        "pf_ms": o.timings["pf"] * 1000.0,
        "sens_ms": o.timings["sens"] * 1000.0,
        "settle_ms": o.timings.get("settle", 0.0) * 1000.0,
        "ledger_ms": o.timings.get("ledger", 0.0) * 1000.0,
        "ledger_cpu_ms": o.timings.get("ledger_cpu", 0.0) * 1000.0,
        "orders_submitted": len(o.gate.submitted) if o.gate is not None and o.gate.submitted is not None else 0,
        "orders_rejected": len(o.gate.rejections) if o.gate is not None and o.gate.rejections is not None else 0,
    }
    for key, value in (r.info or {}).items():  # the mechanism's own figures (VCG deficit, Nash gain, ...)
        if isinstance(value, bool | int | float | np.number) and not isinstance(value, str):
            row[f"info_{key}"] = float(value)
    if gfu is not None:
        row["gfu_p_kw"] = s.slack_p_kw
        row["gfu_q_kvar"] = s.slack_q_kvar
        row["gfu_s_kva"] = float(np.hypot(s.slack_p_kw, s.slack_q_kvar))
        row["gfu_soc"] = gfu.soc
    return row


def open_ledger(setup: Setup, path: Path, gate: OrderGate, process: bool = True,
                resume: tuple[int, str] | None = None) -> LedgerWriter | LedgerProcess:
    """A ledger for the run: its genesis block registers the controllers' and the
    validators' public keys. With `process`, the writer runs in a child process beside
    the rounds (`cosim.virtual.ledger_process`); `resume` = (blocks, head) carries on a chain cut
    back to its first blocks."""
    sc = setup.scenario
    ids = setup.fleet.ids
    party_buses = np.r_[setup.fleet.table.bus.to_numpy(np.int64), -1, -1, -1]
    common = (parties(ids, OUTSIDE[sc.mode]), party_buses.tolist())
    if resume is not None:
        args = (path, sc.seed, sc.ledger.validators, *resume, *common)
        return LedgerProcess.resume(*args) if process else LedgerWriter.resume(*args)
    args = (path, sc.seed, sc.ledger.validators, gate.controllers.public_keys, setup.fleet.time[0].isoformat(), *common)
    return LedgerProcess.new(*args) if process else LedgerWriter(*args)


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


def simulate_variant(setup: Setup, variant: Variant, folder: Path, progress: bool = True,
                     ledger: LedgerWriter | LedgerProcess | None = None, gate: OrderGate | None = None,
                     chunk_rounds: int = CHUNK_ROUNDS, resume: Progress | None = None) -> None:
    """Run every round of one variant and write its parquet files into `folder`.

    With a `ledger`, the round's orders are signed and admitted (`gate`, made here if not
    given) and each round's block is appended to it; ``ledger_ms`` in rounds.parquet is
    the time the round spent on signing, admission and the block. Results are written
    every `chunk_rounds` rounds; `resume` starts at a later round from a checkpoint.
    """
    sc = setup.scenario
    own_gate = gate is None and (ledger is not None or sc.ledger.adversary != type(sc.ledger.adversary)())
    if own_gate:
        gate = OrderGate(sc, setup.fleet)
    try:
        _simulate(setup, variant, Path(folder), progress, ledger, gate, chunk_rounds, resume or Progress())
    finally:
        if own_gate:
            gate.close()


def _simulate(setup: Setup, variant: Variant, folder: Path, progress: bool, ledger: LedgerWriter | LedgerProcess | None,
              gate: OrderGate | None, chunk_rounds: int, resume: Progress) -> None:
    sc = setup.scenario
    runner = VariantRunner(setup, variant, gate)
    if resume.runner_state is not None:
        runner.set_state(resume.runner_state)
    n, first = sc.n_rounds, resume.start_round
    ids = setup.fleet.ids
    party_names = parties(ids, OUTSIDE[sc.mode])
    party_buses = np.r_[setup.fleet.table.bus.to_numpy(np.int64), -1, -1, -1]
    rec = Recorder(folder, n, setup.pf.buses, setup.pf.lines, setup.pf.trafos, party_names, party_buses,
                   chunk_rounds=chunk_rounds, first_round=first, with_attribution=variant.folder == "",
                   with_storage=variant.folder == "" and runner.assets.records)
    rec.drop_parts_from(first // rec.chunk_rounds)
    bar = tqdm(range(first, n), desc=f"{sc.name} [{variant.name}]", unit="round", disable=not progress, leave=True,
               initial=first, total=n)
    for t in bar:
        t0 = time.perf_counter()
        if t % rec.chunk_rounds == 0:  # a resumed run starts its chunk from the same solver state
            runner.mechanism.reset_warm_start()
        outcome, book, ctx = runner.run_round(t)
        t1 = time.perf_counter()
        losses_kwh = outcome.state.losses_kw * runner.dt_h if outcome.state.converged else 0.0
        rent = runner.assets.rent_due(t)  # shared battery capacity (storage.battery_auction), None without
        st = settle_matrix(outcome.result, ctx, outcome.physical, losses_kwh, rent)
        outcome.timings["settle"] = time.perf_counter() - t1
        gr = outcome.gate
        if ledger is not None:
            t1, c1 = time.perf_counter(), time.thread_time()
            ledger.append_round(t, setup.fleet.time[t].isoformat(), gr.submitted, gr.outcomes,
                                trade_payload(outcome.result.trades), st[:, :N_LEDGER_SETTLEMENT])
            outcome.timings["ledger"] += time.perf_counter() - t1
            outcome.timings["ledger_cpu"] += time.thread_time() - c1
        t1 = time.perf_counter()
        row = round_row(t, setup.fleet.time[t], outcome, runner.dt_h, runner.gfu, t1 - t0, setup.lv)
        row["operator_bill"] = float(st[-1, 8])  # the market operator's surplus (-) or deficit (+)
        rec.record(row, outcome.p_kw, outcome.q_kvar, outcome.state, outcome.result.trades, st,
                   outcome.attribution, rejections=gr.rejections if gr is not None else None,
                   storage=outcome.storage)
        row["record_ms"] = (time.perf_counter() - t1) * 1000.0  # buffering; writing a chunk is not counted
        if gr is not None:  # the signed orders are in the block now
            gr.submitted = gr.outcomes = None
        if not rec.full:
            continue
        rec.flush()
        if resume.on_chunk is not None and t + 1 < n:
            if ledger is not None:
                ledger.flush()  # the checkpoint counts the blocks on disk
            resume.on_chunk(runner, t + 1)
    bar.close()
    rec.finish()
    if rec.with_storage:  # EV sessions, shiftable jobs and day-ahead solves of the run
        rec.write_table("sessions", runner.assets.sessions_table())
        rec.write_table("dayahead", runner.assets.dayahead_table())
        auction = runner.assets.battery_auction_table()
        if auction is not None:
            rec.write_table("battery_auction", auction)


def run_scenario(scenario_path: str | Path, out: str | Path | None = None, progress: bool = True,
                 report: bool = True, resume: bool = False, chunk_rounds: int = CHUNK_ROUNDS) -> Path:
    """Run a scenario file end to end; returns the results folder.

    Results are written to a hidden partial folder beside `out` and moved into place only
    at the end. After each chunk of rounds a checkpoint is taken there; an interrupted run
    (Ctrl-C, SIGTERM, a kill) keeps it, and ``resume=True`` carries on from it with results
    identical to an uninterrupted run. Any other failure removes the partial folder.
    """
    from cosim.config.scenario import load_scenario
    from cosim.io.results import RunFolder, bills_by_party, write_json
    from cosim.reporting.fairness import fairness_summary
    from cosim.reporting.summary import kpis, timing

    wall0 = time.perf_counter()
    scenario = load_scenario(scenario_path)
    out = Path(out) if out is not None else Path("results") / scenario.name
    folder = RunFolder(out, resume=resume)
    ckpt = Checkpoint.load(folder.tmp) if resume else None
    if resume:
        check_resumable(folder, ckpt, scenario)
        chunk_rounds = ckpt.chunk_rounds
    setup = prepare(scenario, scenario_path)
    stack = contextlib.ExitStack()
    try:
        tmp = folder.tmp
        if ckpt is None:
            (tmp / "scenario.yaml").write_text(scenario.to_yaml())
            setup.grid_buses.to_parquet(tmp / "grid_buses.parquet", index=False)
            setup.grid_branches.to_parquet(tmp / "grid_branches.parquet", index=False)
            setup.fleet.table.reset_index().to_parquet(tmp / "prosumers.parquet", index=False)
        profile_load_kwh = float(setup.fleet.load_kw.sum() * scenario.dt_h)
        # EVs and shiftable loads consume on top of the profiles (known once the main variant ran)
        load_kwh = profile_load_kwh + flexible_consumption_kwh(tmp, scenario.dt_h)
        pv_kwh = float(setup.fleet.pv_kw.sum() * scenario.dt_h)
        finished = dict(ckpt.finished) if ckpt is not None else {}
        elapsed0 = ckpt.elapsed_s if ckpt is not None else 0.0
        gate = OrderGate(scenario, setup.fleet)
        stack.callback(gate.close)
        if ckpt is not None:
            gate.set_state(ckpt.gate)
            setup.pf.set_state(ckpt.pf_voltages)
        ledger_head = None
        for index, variant in enumerate(variants_for(scenario)):
            if variant.name in finished:
                continue
            main = variant.folder == ""
            here = ckpt is not None and ckpt.variant == index
            ledger = None
            if main:
                path = tmp / "ledger.jsonl"
                ledger = open_ledger(setup, path, gate, resume=ckpt.ledger if here else None)
                stack.callback(ledger.close)

            def on_chunk(runner, next_round, index=index, ledger=ledger):
                Checkpoint(
                    scenario.to_yaml(), index, next_round, chunk_rounds, runner.get_state(), gate.get_state(),
                    setup.pf.get_state(), (ledger.height, ledger.head) if ledger is not None else None,
                    finished, elapsed0 + time.perf_counter() - wall0,
                ).save(tmp)

            state = Progress(ckpt.next_round, ckpt.runner, on_chunk) if here else Progress(on_chunk=on_chunk)
            # the main variant (first) admits every round's orders; the others only need
            # its outcome when an adversary made some prosumers passive
            use_gate = main or gate.adversary.active
            vfolder = tmp / variant.folder if variant.folder else tmp
            simulate_variant(setup, variant, vfolder, progress=progress, ledger=ledger,
                             gate=gate if use_gate else None, chunk_rounds=chunk_rounds, resume=state)
            if ledger is not None:
                ledger.close()
            if main:
                load_kwh = profile_load_kwh + flexible_consumption_kwh(vfolder, scenario.dt_h)
            rounds = pd.read_parquet(vfolder / "rounds.parquet")
            bills = bills_by_party(vfolder / "settlement.parquet")
            prosumer_bills = bills[bills.index.isin(setup.fleet.ids)]
            variant_timing = {}
            if main:
                variant_timing = timing(rounds)
                variant_timing["median_ledger_ms"] = float(rounds.ledger_ms.median())
                variant_timing["median_ledger_cpu_ms"] = float(rounds.ledger_cpu_ms.median())
                variant_timing["orders_rejected"] = int(rounds.orders_rejected.sum())
                if isinstance(ledger, LedgerProcess):  # signing and sealing, beside the rounds
                    variant_timing["ledger_process_cpu_s"] = ledger.cpu_s
                    variant_timing["ledger_process_peak_rss_mb"] = ledger.peak_rss_mb
            finished[variant.name] = (
                kpis(rounds, prosumer_bills, load_kwh, pv_kwh,
                     scenario.islanded.voll_per_kwh if scenario.mode == "islanded" else None), prosumer_bills,
                variant_timing, ledger.head if ledger is not None else None,
            )
            ckpt = None
        main_name = variants_for(scenario)[0].name
        main_timing = dict(finished[main_name][2])
        ledger_head = finished[main_name][3]
        main_timing["wall_s"] = elapsed0 + time.perf_counter() - wall0
        main_timing["peak_rss_mb"] = peak_rss_mb()
        summary = {
            "scenario": scenario.name,
            "network": scenario.network,
            "mode": scenario.mode,
            "start": scenario.start.isoformat(),
            "end": (scenario.start + scenario.duration).isoformat(),
            "resolution_min": scenario.resolution.total_seconds() / 60.0,
            "rounds": scenario.n_rounds,
            "currency": scenario.market.currency,
            "mechanism": scenario.market.mechanism,
            "n_prosumers": setup.fleet.n,
            "n_buses": len(setup.pf.buses),
            "v_min_pu": scenario.feedback.v_min_pu,
            "v_max_pu": scenario.feedback.v_max_pu,
            "max_loading_pct": scenario.feedback.max_loading_pct,
            "load_kwh": load_kwh,
            "pv_kwh": pv_kwh,
            "variants": {name: f[0] for name, f in finished.items()},
            "prosumer_bills": pd.DataFrame({name: f[1] for name, f in finished.items()}).round(6).to_dict(orient="index"),
            "timing": main_timing,
            "ledger_head": ledger_head,
            "storage": summarize_storage(tmp, scenario),
            "fairness": fairness_summary(
                pd.read_parquet(tmp / "settlement.parquet", columns=["party", "curtailed_kwh", "shed_kwh", "load_kwh"]),
                pd.read_parquet(tmp / "prosumers.parquet")),
        }
        write_json(tmp / "summary.json", summary)
        (tmp / CHECKPOINT).unlink(missing_ok=True)
        if report:
            from cosim.reporting.report import write_report

            write_report(tmp)
        stack.close()
        return folder.commit()
    except KeyboardInterrupt:
        try:
            stack.close()
        except Exception as err:  # noqa: BLE001 - e.g. the ledger's process was killed too; the checkpoint stands
            print(f"cosim: while stopping: {err}", file=sys.stderr)
        if (folder.tmp / CHECKPOINT).exists():
            folder.keep_for_resume()
        else:
            folder.abandon()
        raise
    except BaseException:
        stack.close()
        folder.abandon()
        raise


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far [MB] (Linux reports kB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


def check_resumable(folder, ckpt: Checkpoint | None, scenario: Scenario) -> None:
    """Refuse to resume without a checkpoint or with a scenario that has changed."""
    from cosim.config.errors import InputError

    if ckpt is None:
        raise InputError(folder.final, [f"--resume: expected a checkpoint of an interrupted run in {folder.tmp}, "
                                         "found none; run without --resume"])
    if ckpt.scenario_yaml != scenario.to_yaml():
        raise InputError(folder.final, ["--resume: expected the scenario of the interrupted run, found a changed "
                                        "one; run without --resume to start again"])
