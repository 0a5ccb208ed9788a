"""One round of one variant, as a sequence of named stages (`VariantRunner.run_round`):

controllers -> admission -> clearing and grid check -> feedback (the fixed point:
linearise the violations into cuts, clear again, check again, until nothing is violated
or ``max_iterations`` clearings were made) -> forced curtailment or shedding by the
scenario's rule -> bookkeeping for the next round. Settlement, the ledger and the
recorder follow in `cosim.sim.loop`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cosim.flex.assets import build_assets
from cosim.markets import (
    Charges,
    ClearingResult,
    MarketContext,
    NetworkCuts,
    OrderArrays,
    get_mechanism,
)
from cosim.markets.base import ASSET_CHARGE, QTY_TOL, TRADE_COLUMNS, fallback_result
from cosim.markets.community_tariff import POOL_BATTERY
from cosim.physical.fleet import OrderBook, order_book
from cosim.physical.grid.powerflow import GridState
from cosim.physical.grid.sensitivities import AdjointSensitivities, Sensitivities, loss_factors
from cosim.physical.grid.threephase_flow import PhaseSensitivities, marginal_split
from cosim.physical.islanded import GridFormingUnit
from cosim.physical.phases import phase_injections
from cosim.sim.feedback import (
    MAX_FORCED_STEPS,
    Limits,
    attribute,
    find_violations,
    forced_reduction,
    linearise,
    reduce_orders,
)
from cosim.sim.setup import OUTSIDE, Setup, Variant
from cosim.sim.tariff import NetworkTariff, charges_at_rates, trade_charges_per_kwh
from cosim.virtual.gate import GateRound, OrderGate

#: Network-cut slots in the clearing model.
MAX_CUTS = 40


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
    p_abc_kw: np.ndarray | None = None
    """Three-phase: the per-phase net load the power flow saw [buses x 3] [kW]."""
    q_abc_kvar: np.ndarray | None = None
    balanced: GridState | None = None
    """Three-phase: the balanced power flow of the same dispatch (the same per-bus totals,
    spread over the phases), for the comparison of the two physics."""
    physical: dict = field(default_factory=dict)
    """Per prosumer: load_kwh, pv_kwh, battery_kwh (charging positive)."""
    gate: GateRound | None = None
    """The virtual layer's admission of the round's orders (None without it)."""
    storage: dict[str, np.ndarray] | None = None
    """The round's rows of storage.parquet, one array per column (None without flexible
    assets, and in the variants that do not record them)."""
    network_charges: np.ndarray | None = None
    """Each prosumer's network charge on its physical injection this round
    (`cosim.sim.tariff`) [currency]; None: no charge."""


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
    sens: Sensitivities | PhaseSensitivities | None = None
    p_abc_kw: np.ndarray | None = None
    """Three-phase: net load per bus and phase [buses x 3] [kW] (load convention)."""
    q_abc_kvar: np.ndarray | None = None


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
        pooled = getattr(self.mechanism, "pooled_share", 0.0)
        if pooled > 0:  # a virtual pool runs this share of each home battery (cosim.markets.community_tariff)
            b = self.assets.batteries
            self.assets.batteries = dataclasses.replace(b, e_kwh=b.e_kwh * (1.0 - pooled), p_kw=b.p_kw * (1.0 - pooled))
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
        self.pf3 = setup.pf3
        # the columns of the sensitivities: buses (balanced), participants (three-phase:
        # a participant's injection lands on its own phases)
        self.sens_pos = setup.participant_pos if self.pf3 is None else np.arange(self.fleet.n)
        self.bus_pos_of = dict(zip(self.fleet.ids, self.sens_pos, strict=True))
        self.last_loss_factors = None
        self.last_state: GridState | None = None
        self.last_price: float | None = None
        """The last round's P2P price [currency/kWh], the signal of the ``price`` storage
        strategy (None: nothing traded P2P, or a variant without a market)."""
        self.last_withdrawal_per_kwh: np.ndarray | None = None
        """The network charge per kWh drawn at each prosumer's bus in the last round
        (`NetworkTariff.rates_per_kwh`), added to the ``price`` strategy's signal
        [currency/kWh]; None without charges."""
        # mechanisms clear without network charges: they follow the physics (cosim.sim.tariff)
        self.no_charges = Charges.none(self.fleet.n)
        self._pos_of = {id_: i for i, id_ in enumerate(self.fleet.ids)}  # prosumer id -> position

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
            "last_withdrawal_per_kwh": self.last_withdrawal_per_kwh,
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
        self.last_withdrawal_per_kwh = state.get("last_withdrawal_per_kwh")
        self.mechanism.set_state(state["mechanism"])

    # -- physics helpers ----------------------------------------------------------------
    def bus_injections(self, r: ClearingResult, load_kw: np.ndarray,
                       load_kvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-bus net load [kW] and [kvar] of the dispatch (load convention)."""
        prosumer_kw = -r.injection_kwh / self.dt_h
        shed_kw = r.shed_kwh / self.dt_h
        with np.errstate(divide="ignore", invalid="ignore"):
            served = np.where(load_kw > 0, np.clip(1.0 - shed_kw / load_kw, 0.0, 1.0), 1.0)
        n_bus = len(self.pf.buses)
        p = np.bincount(self.setup.participant_pos, weights=prosumer_kw, minlength=n_bus)
        q = np.bincount(self.setup.participant_pos, weights=load_kvar * served, minlength=n_bus)
        pool_kwh = r.info.get(POOL_BATTERY) if r.info else None
        if pool_kwh is not None:  # a virtual pool of the members' batteries: at their buses
            p += np.bincount(self.setup.participant_pos, weights=pool_kwh / self.dt_h, minlength=n_bus)
        else:  # a community battery run by the market operator sits at the LV busbar
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
            n_rounds=self.sc.n_rounds,
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
        battery_kw = self.assets.dispatch(t, net_kw, dt_h, self.price_signal())  # batteries, EVs, shiftable loads
        net_kw = net_kw + battery_kw
        book = order_book(net_kw, dt_h, sc.market.bidding, sc.market.retail_price_per_kwh,
                          sc.market.feed_in_price_per_kwh, self.rng)
        timings = {"orders": time.perf_counter() - t0, "clear": 0.0, "pf": 0.0, "sens": 0.0, "settle": 0.0,
                   "ledger": 0.0}
        return RoundState(t=t, load_kw=load_kw, load_kvar=load_kvar, pv_kw=pv_kw, net_kw=net_kw,
                          battery_kw=battery_kw, book=book, limits_kwh=limits, timings=timings)

    def price_signal(self) -> float | np.ndarray | None:
        """What a kWh bought in the market costs each prosumer, as far as the last round
        tells: the P2P price plus the network charge per kWh drawn at its bus
        [currency/kWh]; None when nothing traded P2P."""
        if self.last_price is None or self.last_withdrawal_per_kwh is None:
            return self.last_price
        return self.last_price + self.last_withdrawal_per_kwh

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
        """The order arrays and the market context (what passive prosumers leave of the
        outside party's capacity). The mechanism sees no network charge: charges follow
        the physical injections, not the trades (`cosim.sim.tariff`)."""
        t1 = time.perf_counter()
        rd.orders = OrderArrays.from_positions(self.fleet.n, *rd.book)
        rd.ctx = rd.market_ctx = self.context(rd.t)
        if self.mechanism.uses_charge_headroom and self.assets.records:
            headroom = self.assets.charge_headroom_kwh(rd.t, self.dt_h)
            if rd.passive is not None:  # a passive prosumer offers nothing
                headroom[(rd.passive.demand_kwh > 0) | (rd.passive.supply_kwh > 0)] = 0.0
            rd.ctx = rd.market_ctx = dataclasses.replace(rd.ctx, charge_headroom_kwh=headroom)
        if rd.passive is not None:
            rd.market_ctx = dataclasses.replace(
                rd.ctx,
                import_cap_kwh=max(rd.ctx.import_cap_kwh - rd.passive.demand_kwh.sum(), 0.0),
                export_cap_kwh=max(rd.ctx.export_cap_kwh - rd.passive.supply_kwh.sum(), 0.0),
            )
        rd.charges = self.no_charges
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
        p, q = self.bus_injections(r, rd.load_kw, rd.load_kvar)
        p3 = q3 = None
        if self.pf3 is None:
            s = self.pf.run(p, q)
        else:
            p3, q3 = phase_injections(self.setup.splits, self.setup.participant_pos, rd.load_kw, rd.load_kvar,
                                      rd.pv_kw, self.assets.last_components_kw(), -r.injection_kwh / self.dt_h,
                                      r.shed_kwh / self.dt_h, r.curtailed_kwh / self.dt_h, p, q)
            s = self.pf3.run_grid(p3, q3)
        rd.timings["pf"] += time.perf_counter() - t1
        viol = find_violations(s, self.limits_for(s), self.pf.buses, self.pf.lines, self.pf.trafos)
        return Checked(r, p, q, s, viol, p_abc_kw=p3, q_abc_kvar=q3)

    def phase_sensitivities(self, rd: RoundState, state: GridState) -> PhaseSensitivities:
        """Three-phase sensitivities per participant: a participant's injection gives way
        on its PV's phases when it exports, on its load's otherwise (`marginal_split`)."""
        sp = self.setup.splits
        split = marginal_split(sp["pv_phase"], sp["load_phase"], rd.net_kw < 0)
        return PhaseSensitivities(self.pf3, state.phases, self.setup.participant_pos, split)

    def sensitivities(self, rd: RoundState, chk: Checked) -> Sensitivities | PhaseSensitivities | None:
        """Sensitivities at the checked operating point (None without the fast path's voltages)."""
        t1 = time.perf_counter()
        if self.pf3 is not None:
            chk.sens = self.phase_sensitivities(rd, chk.state) if chk.state.converged else None
        else:
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
        return self.first_check(rd, r)

    def first_check(self, rd: RoundState, r: ClearingResult) -> tuple[Checked, pd.DataFrame | None]:
        """The grid check of the first clearing, its violations attributed to its trades."""
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
            new = linearise(chk.violations, chk.sens, self.sens_pos, chk.result.injection_kwh,
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
            c, s_ = forced_reduction(chk.violations, chk.sens, self.sens_pos, chk.result, dt_h,
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
        """The round's network charges, what it leaves for the next one (loss factors,
        the grid-forming unit's state of charge, the P2P price) and its outcome."""
        state, r, dt_h = chk.state, chk.result, self.dt_h
        extra_kwh = r.info.get(ASSET_CHARGE) if r.info else None
        if extra_kwh is not None:  # batteries and EVs draw what the mechanism had them draw
            rd.battery_kw = rd.battery_kw + self.assets.add_charge(rd.t, extra_kwh, dt_h)
        if not state.converged and rd.status == "ok":
            rd.status = "power flow did not converge"
        fb = self.sc.feedback
        if fb.charge_method == "sensitivity" and (state.V is not None or state.phases is not None and state.converged):
            t1 = time.perf_counter()
            # at this round's own operating point
            if self.pf3 is None:
                self.last_loss_factors = loss_factors(self.pf, state)
            else:  # the feedback's own sensitivities where it made them at this state
                sens = chk.sens if isinstance(chk.sens, PhaseSensitivities) else self.phase_sensitivities(rd, state)
                self.last_loss_factors = sens.dloss_dp
            rd.timings["sens"] += time.perf_counter() - t1
        charges = self.network_charges(r)
        if self.gfu is not None and state.converged:
            self.gfu.step(state.slack_p_kw, dt_h)
            self.gfu.q_kvar = state.slack_q_kvar
        self.last_state = state
        traded = self.variant.mechanism != "none" and r.cleared_kwh > QTY_TOL and np.isfinite(r.price_per_kwh)
        self.last_price = float(r.price_per_kwh) if traded else None
        outcome = RoundOutcome(result=r, state=state, p_kw=chk.p_kw, q_kvar=chk.q_kvar, iterations=iterations,
                               violations=chk.violations, violations_initial=n_initial, status=rd.status,
                               attribution=attribution, timings=rd.timings, p_abc_kw=chk.p_abc_kw,
                               q_abc_kvar=chk.q_abc_kvar)
        if self.pf3 is not None:  # what a balanced power flow makes of the same dispatch
            t1 = time.perf_counter()
            outcome.balanced = self.pf.run(chk.p_kw, chk.q_kvar)
            rd.timings["pf"] += time.perf_counter() - t1
        outcome.physical = {"load_kwh": rd.load_kw * dt_h, "pv_kwh": rd.pv_kw * dt_h,
                            "battery_kwh": rd.battery_kw * dt_h}
        outcome.gate = rd.gate
        outcome.network_charges = charges
        records = self.assets.records and self.variant.folder == ""
        outcome.storage = self.assets.storage_columns(rd.t) if records else None
        return outcome, rd.book, rd.ctx

    def network_charges(self, r: ClearingResult) -> np.ndarray | None:
        """Each prosumer's charge on its physical injection this round (None without
        charges); the trades show the per-kWh charges of their two ends."""
        fb = self.sc.feedback
        tariff = NetworkTariff.of(fb.charge_method, fb.charge_rate_per_kwh, self.last_loss_factors, self.sens_pos)
        if not tariff.active:
            return None
        injection = r.injection_kwh
        inject, withdraw = tariff.rates_per_kwh(injection)
        self.last_withdrawal_per_kwh = withdraw
        if len(r.trades):
            pos = self._pos_of
            seller, buyer = r.trades["seller"].to_numpy(), r.trades["buyer"].to_numpy()
            trades = r.trades.copy(deep=False)  # the mechanism's table is left as it was
            trades["network_charge_per_kwh"] = trade_charges_per_kwh(
                np.fromiter((pos.get(x, -1) for x in seller), np.int64, len(seller)),
                np.fromiter((pos.get(x, -1) for x in buyer), np.int64, len(buyer)), inject, withdraw)
            r.trades = trades
        return charges_at_rates(injection, inject, withdraw)


def newest_cuts(cuts: NetworkCuts, slots: int) -> NetworkCuts:
    """The newest `slots` cuts (the clearing model has that many cut slots).

    >>> c = NetworkCuts(np.eye(3), np.arange(3.0), ("a", "b", "c"))
    >>> newest_cuts(c, 2).labels, len(newest_cuts(c, 5))
    (('b', 'c'), 3)
    """
    if len(cuts) <= slots:
        return cuts
    return NetworkCuts(cuts.coef[-slots:], cuts.rhs[-slots:], cuts.labels[-slots:])
