"""The run: every variant of a scenario, round by round, then the summary.

The round itself is `cosim.sim.round`; this module runs it for each variant and round and
puts the stages after it in order:

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
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cosim.config.scenario import VARIANTS
from cosim.flex.assets import flexible_consumption_kwh, summarize_storage
from cosim.io.results import Recorder
from cosim.sim.baselines import PairedBaselines
from cosim.sim.checkpoint import CHECKPOINT, CHUNK_ROUNDS, Checkpoint, Progress, check_resumable
from cosim.sim.parallel import SideVariants, peak_rss_mb
from cosim.sim.round import MAX_CUTS, VariantRunner
from cosim.sim.row import round_row
from cosim.sim.settlement import BILL, parties, settle_matrix
from cosim.sim.setup import OUTSIDE, Setup, Variant, prepare, variants_for
from cosim.virtual.gate import OrderGate
from cosim.virtual.ledger import SETTLEMENT_FIELDS, LedgerWriter, trade_payload
from cosim.virtual.ledger_process import LedgerProcess

#: Settlement columns in the ledger: bought_kwh .. bill (`cosim.virtual.ledger.SETTLEMENT_FIELDS`).
N_LEDGER_SETTLEMENT = len(SETTLEMENT_FIELDS) - 2

__all__ = [
    "CHECKPOINT", "CHUNK_ROUNDS", "MAX_CUTS", "Checkpoint", "OrderGate", "Progress", "Setup", "Variant",
    "VariantRunner", "open_ledger", "prepare", "run_scenario", "simulate_variant", "variants_for",
]


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
    args = (path, sc.seed, sc.ledger.validators, gate.controllers.public_keys, setup.fleet.instants[0].isoformat(), *common)
    return LedgerProcess.new(*args) if process else LedgerWriter(*args)


def simulate_variant(setup: Setup, variant: Variant, folder: Path, progress: bool = True,
                     ledger: LedgerWriter | LedgerProcess | None = None, gate: OrderGate | None = None,
                     chunk_rounds: int = CHUNK_ROUNDS, resume: Progress | None = None, position: int = 0) -> None:
    """Run every round of one variant and write its parquet files into `folder`.

    With a `ledger`, the round's orders are signed and admitted (`gate`, made here if not
    given) and each round's block is appended to it; ``ledger_ms`` in rounds.parquet is
    the time the round spent on signing, admission and the block. Results are written
    every `chunk_rounds` rounds; `resume` starts at a later round from a checkpoint.
    `position` is the line of its progress bar (variants run in parallel each have one).
    """
    sc = setup.scenario
    if gate is None and (ledger is not None or sc.ledger.adversary != type(sc.ledger.adversary)()):
        gate = OrderGate(sc, setup.fleet)
    _simulate(setup, variant, Path(folder), progress, ledger, gate, chunk_rounds, resume or Progress(), position)


def _simulate(setup: Setup, variant: Variant, folder: Path, progress: bool, ledger: LedgerWriter | LedgerProcess | None,
              gate: OrderGate | None, chunk_rounds: int, resume: Progress, position: int = 0) -> None:
    runner = VariantRunner(setup, variant, gate)
    if resume.runner_state is not None:
        runner.set_state(resume.runner_state)
    lane = _lane(setup, runner, folder, chunk_rounds, resume.start_round)
    _rounds(setup, [lane], lambda t: [runner.run_round(t)], f"{setup.scenario.name} [{variant.name}]", progress,
            position, resume, ledger)


def simulate_baselines(setup: Setup, with_feedback: Variant, without: Variant, folders: tuple[Path, Path],
                       progress: bool = True, chunk_rounds: int = CHUNK_ROUNDS, position: int = 0) -> None:
    """The no-P2P baseline with and without feedback in one pass (`PairedBaselines`), each
    written into its folder as `simulate_variant` writes it, with the same results."""
    pair = PairedBaselines(setup, with_feedback, without)
    lanes = [_lane(setup, r, Path(f), chunk_rounds, 0) for r, f in zip((pair.fb, pair.nf), folders, strict=True)]
    _rounds(setup, lanes, pair.run_round, f"{setup.scenario.name} [{with_feedback.name}, {without.name}]", progress,
            position, Progress(), None)


def _lane(setup: Setup, runner: VariantRunner, folder: Path, chunk_rounds: int, first: int) -> tuple:
    """A variant's runner and the recorder of its folder."""
    ids = setup.fleet.ids
    party_names = parties(ids, OUTSIDE[setup.scenario.mode])
    party_buses = np.r_[setup.fleet.table.bus.to_numpy(np.int64), -1, -1, -1]
    main = runner.variant.folder == ""
    rec = Recorder(folder, setup.scenario.n_rounds, setup.pf.buses, setup.pf.lines, setup.pf.trafos, party_names,
                   party_buses, chunk_rounds=chunk_rounds, first_round=first, with_attribution=main,
                   with_storage=main and runner.assets.records, three_phase=setup.pf3 is not None)
    rec.drop_parts_from(first // rec.chunk_rounds)
    return runner, rec


def _rounds(setup: Setup, lanes: list[tuple], step, desc: str, progress: bool, position: int, resume: Progress,
            ledger: LedgerWriter | LedgerProcess | None) -> None:
    """Every round: `step(t)` gives each lane's outcome, which is settled, chained into the
    `ledger` (the first lane's) and recorded; a chunk is written when the recorders fill up."""
    n, first = setup.scenario.n_rounds, resume.start_round
    first_rec = lanes[0][1]
    bar = tqdm(range(first, n), desc=desc, unit="round", disable=not progress, leave=True, initial=first, total=n,
               position=position)
    for t in bar:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        if t % first_rec.chunk_rounds == 0:  # a resumed run starts its chunk from the same solver state
            for runner, _ in lanes:
                runner.mechanism.reset_warm_start()
        outcomes = step(t)
        for (runner, rec), (outcome, _, ctx) in zip(lanes, outcomes, strict=True):
            _settle_and_record(setup, runner, rec, t, outcome, ctx, t0, cpu0, ledger if rec is first_rec else None)
        if not first_rec.full:
            continue
        for _, rec in lanes:
            rec.flush()
        if resume.on_chunk is not None and t + 1 < n:
            if ledger is not None:
                ledger.flush()  # the checkpoint counts the blocks on disk
            resume.on_chunk(lanes[0][0], t + 1)
    bar.close()
    for runner, rec in lanes:
        rec.finish()
        if rec.with_storage:  # EV sessions, shiftable jobs and day-ahead solves of the run
            rec.write_table("sessions", runner.assets.sessions_table())
            rec.write_table("dayahead", runner.assets.dayahead_table())
            auction = runner.assets.battery_auction_table()
            if auction is not None:
                rec.write_table("battery_auction", auction)


def _settle_and_record(setup: Setup, runner: VariantRunner, rec: Recorder, t: int, outcome, ctx, t0: float,
                       cpu0: float, ledger: LedgerWriter | LedgerProcess | None) -> None:
    """Settle one variant's round, hand its block to the ledger and record its rows."""
    t1 = time.perf_counter()
    losses_kwh = outcome.state.losses_kw * runner.dt_h if outcome.state.converged else 0.0
    rent = runner.assets.rent_due(t)  # shared battery capacity (storage.battery_auction), None without
    st = settle_matrix(outcome.result, ctx, outcome.physical, losses_kwh, rent, outcome.network_charges)
    outcome.timings["settle"] = time.perf_counter() - t1
    gr = outcome.gate
    if ledger is not None:
        t1, c1 = time.perf_counter(), time.thread_time()
        ledger.append_round(t, setup.fleet.instants[t].isoformat(), gr.submitted, gr.outcomes,
                            trade_payload(outcome.result.trades), st[:, :N_LEDGER_SETTLEMENT])
        outcome.timings["ledger"] += time.perf_counter() - t1
        outcome.timings["ledger_cpu"] += time.thread_time() - c1
    t1 = time.perf_counter()
    row = round_row(t, setup.fleet.time[t], outcome, runner.dt_h, runner.gfu, t1 - t0, setup.lv)
    row["operator_bill"] = float(st[-1, BILL])  # the market operator's surplus (-) or deficit (+)
    row["round_cpu_ms"] = (time.thread_time() - cpu0) * 1000.0  # the loop's CPU time in the round
    rec.record(row, outcome.p_kw, outcome.q_kvar, outcome.state, outcome.result.trades, st,
               outcome.attribution, rejections=gr.rejections if gr is not None else None,
               storage=outcome.storage, p_abc_kw=outcome.p_abc_kw, q_abc_kvar=outcome.q_abc_kvar)
    row["record_ms"] = (time.perf_counter() - t1) * 1000.0  # buffering; writing a chunk is not counted
    if gr is not None:  # the signed orders are in the block now
        gr.submitted = gr.outcomes = None


def run_scenario(scenario_path: str | Path, out: str | Path | None = None, progress: bool = True,
                 report: bool = True, resume: bool = False, chunk_rounds: int = CHUNK_ROUNDS,
                 workers: int = 1, ledger_process: bool = True) -> Path:
    """Run a scenario file end to end; returns the results folder.

    Results are written to a hidden partial folder beside `out` and moved into place only
    at the end. After each chunk of rounds a checkpoint is taken there; an interrupted run
    (Ctrl-C, SIGTERM, a kill) keeps it, and ``resume=True`` carries on from it with results
    identical to an uninterrupted run. Any other failure removes the partial folder.

    With `workers` > 1 the comparison variants run in ``workers - 1`` forked processes
    beside the main one (`cosim.sim.parallel`), with the same results. Without
    `ledger_process` the ledger is written in this process (`LedgerWriter`), with the same
    bytes: a study's worker then keeps one core busy, not two.
    """
    from cosim.config.load import load_scenario
    from cosim.io.results import RunFolder, write_json
    from cosim.reporting.fairness import fairness_summary

    wall0 = time.perf_counter()
    scenario = load_scenario(scenario_path)
    out = Path(out) if out is not None else Path("results") / scenario.name
    folder = RunFolder(out, resume=resume)
    ckpt = Checkpoint.load(folder.tmp) if resume else None
    if resume:
        check_resumable(folder, ckpt, scenario)
        chunk_rounds = ckpt.chunk_rounds
    setup = prepare(scenario, scenario_path)
    pf_start = setup.power_flow_state()  # every variant starts its power flows from these voltages
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
        if ckpt is not None:
            gate.set_state(ckpt.gate)
            setup.pf.set_state(ckpt.pf_voltages)
            if setup.pf3 is not None and getattr(ckpt, "pf3_voltages", None) is not None:
                setup.pf3.set_state(ckpt.pf3_voltages)
        ledger_head = None
        variants = variants_for(scenario)
        folders = [tmp / v.folder if v.folder else tmp for v in variants]
        side = None
        # the comparison variants in processes of their own, unless an adversary ties them to
        # the main variant's gate or a checkpoint stands in one of them
        if workers > 1 and not gate.adversary.active and (ckpt is None or ckpt.variant == 0):
            jobs = [(v, f) for i, (v, f) in enumerate(zip(variants, folders, strict=True))
                    if i > 0 and v.name not in finished]
            if jobs:
                def simulate(unit: list, position: int) -> None:
                    if len(unit) == 2:  # the two no-P2P baselines in one pass
                        (fb, fb_folder), (nf, nf_folder) = unit
                        simulate_baselines(setup, fb, nf, (fb_folder, nf_folder), progress, chunk_rounds, position)
                    else:
                        ((variant, folder),) = unit
                        simulate_variant(setup, variant, folder, progress=progress, chunk_rounds=chunk_rounds,
                                         position=position)

                side = SideVariants(setup, pf_start, jobs, workers - 1, simulate)
                stack.callback(side.stop)
        for index, variant in enumerate(variants):
            if variant.name in finished or (side is not None and index > 0):
                continue
            main = variant.folder == ""
            here = ckpt is not None and ckpt.variant == index
            if not here:
                setup.set_power_flow_state(pf_start)
            ledger = None
            if main:
                path = tmp / "ledger.jsonl"
                ledger = open_ledger(setup, path, gate, process=ledger_process,
                                     resume=ckpt.ledger if here else None)
                stack.callback(ledger.close)

            def on_chunk(runner, next_round, index=index, ledger=ledger):
                Checkpoint(
                    scenario_yaml=scenario.to_yaml(), variant=index, next_round=next_round,
                    chunk_rounds=chunk_rounds, runner=runner.get_state(), gate=gate.get_state(),
                    pf_voltages=setup.pf.get_state(),
                    pf3_voltages=setup.pf3.get_state() if setup.pf3 is not None else None,
                    ledger=(ledger.height, ledger.head) if ledger is not None else None,
                    finished=finished, elapsed_s=elapsed0 + time.perf_counter() - wall0,
                ).save(tmp)

            state = Progress(ckpt.next_round, ckpt.runner, on_chunk) if here else Progress(on_chunk=on_chunk)
            # the main variant (first) admits every round's orders; the others only need
            # its outcome when an adversary made some prosumers passive
            use_gate = main or gate.adversary.active
            vfolder = folders[index]
            simulate_variant(setup, variant, vfolder, progress=progress, ledger=ledger,
                             gate=gate if use_gate else None, chunk_rounds=chunk_rounds, resume=state)
            if ledger is not None:
                ledger.close()
            if main:
                load_kwh = profile_load_kwh + flexible_consumption_kwh(vfolder, scenario.dt_h)
            finished[variant.name] = variant_results(index, vfolder, ledger, setup, load_kwh, pv_kwh)
            ckpt = None
        if side is not None:
            side.wait()
            for index, variant in enumerate(variants):  # in their order, as one after another
                if index > 0 and variant.name not in finished:
                    finished[variant.name] = variant_results(index, folders[index], None, setup, load_kwh, pv_kwh)
            finished = {v.name: finished[v.name] for v in variants}
        main_name = variants[0].name  # the first variant run: its folder has the fairness
        first_folder = folders[0]
        main_timing = dict(finished[main_name][2])
        ledger_head = finished[main_name][3]
        fairness = fairness_summary(party_totals(first_folder / "settlement.parquet"),
                                    pd.read_parquet(tmp / "prosumers.parquet"))
        storage = summarize_storage(tmp, scenario)
        main_timing["wall_s"] = elapsed0 + time.perf_counter() - wall0
        main_timing["peak_rss_mb"] = peak_rss_mb()
        main_timing["variant_processes"] = 1 + (side.children if side is not None else 0)
        side_peaks = side.peak_rss_mb if side is not None else []
        main_timing["variant_processes_peak_rss_mb"] = side_peaks
        # an upper bound on what the run held at once: every process's peak, shared pages counted in each
        main_timing["total_peak_rss_mb"] = (main_timing["peak_rss_mb"] + sum(side_peaks)
                                            + main_timing.get("ledger_process_peak_rss_mb", 0.0))
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
            "storage": storage,
            "fairness": fairness,
        }
        if scenario.physics == "three-phase":  # a balanced run's summary keeps its keys
            summary["physics"] = scenario.physics
            summary["max_vuf_pct"] = scenario.feedback.max_vuf_pct
        write_json(tmp / "summary.json", summary)
        if scenario.market.mechanism == "community_tariff" and (tmp / "settlement.parquet").is_file():
            write_monthly_bills(tmp, scenario)
        (tmp / CHECKPOINT).unlink(missing_ok=True)
        if report and len(finished) == len(VARIANTS):  # the report compares all four
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


def variant_results(index: int, folder: Path, ledger: LedgerWriter | LedgerProcess | None, setup: Setup,
                    load_kwh: float, pv_kwh: float) -> tuple:
    """What the summary keeps of a simulated variant: (KPIs, prosumer bills, timing, ledger
    head); timing only for the first variant (the market's, unless the scenario leaves it out)."""
    from cosim.io.results import bills_by_party
    from cosim.reporting.summary import kpis, timing

    scenario = setup.scenario
    rounds = pd.read_parquet(folder / "rounds.parquet")
    bills = bills_by_party(folder / "settlement.parquet")
    prosumer_bills = bills[bills.index.isin(setup.fleet.ids)]
    variant_timing = {}
    if index == 0:
        variant_timing = timing(rounds)
        variant_timing["median_ledger_ms"] = float(rounds.ledger_ms.median())
        variant_timing["median_ledger_cpu_ms"] = float(rounds.ledger_cpu_ms.median())
        variant_timing["orders_rejected"] = int(rounds.orders_rejected.sum())
        if isinstance(ledger, LedgerProcess):  # signing and sealing, beside the rounds
            variant_timing["ledger_process_cpu_s"] = ledger.cpu_s
            variant_timing["ledger_process_peak_rss_mb"] = ledger.peak_rss_mb
    voll = scenario.islanded.voll_per_kwh if scenario.mode == "islanded" else None
    return (kpis(rounds, prosumer_bills, load_kwh, pv_kwh, voll), prosumer_bills, variant_timing,
            ledger.head if ledger is not None else None)


def party_totals(settlement_path: Path) -> pd.DataFrame:
    """Each party's curtailed, shed and load energy over the run [kWh], one row per party,
    from settlement.parquet with the party names read as a dictionary (a year holds
    4 million rows; as text they would cost the run its peak memory)."""
    import pyarrow.parquet as pq

    table = pq.read_table(settlement_path, columns=["party", "curtailed_kwh", "shed_kwh", "load_kwh"],
                          read_dictionary=["party"]).to_pandas()
    totals = table.groupby("party", observed=True, sort=False)[["curtailed_kwh", "shed_kwh", "load_kwh"]].sum()
    return totals.reset_index().astype({"party": str})


def write_monthly_bills(folder: Path, scenario) -> Path:
    """monthly_bills.parquet of a community tariff's run: each party's bill per billing
    month of the main variant (`cosim.markets.community_tariff.monthly_bills`)."""
    from cosim.markets.community_tariff import CommunityTariffOptions, month_rounds, monthly_bills

    options = CommunityTariffOptions.model_validate(scenario.market.options or {})
    table = monthly_bills(pd.read_parquet(folder / "settlement.parquet"), month_rounds(options.month_days, scenario.dt_h))
    path = folder / "monthly_bills.parquet"
    table.to_parquet(path, index=False)
    return path
