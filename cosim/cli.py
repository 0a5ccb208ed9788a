"""Command line: ``cosim run | validate | clear | powerflow | ledger verify | ledger show | report | compare | study | bench | portal``.

Exit status: 0 success, 2 bad input (a message naming the file and field, no traceback,
nothing written), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from cosim.config.errors import InputError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_run(args: argparse.Namespace) -> int:
    from cosim.config.scenario import VARIANTS
    from cosim.sim.loop import CHUNK_ROUNDS, run_scenario
    from cosim.sim.parallel import default_workers

    out = run_scenario(args.scenario, out=args.out, progress=not args.no_progress, report=not args.no_report,
                       resume=args.resume, chunk_rounds=args.chunk_rounds or CHUNK_ROUNDS,
                       workers=args.workers or default_workers(len(VARIANTS)))
    summary = json.loads((out / "summary.json").read_text())
    print(f"results: {out}")
    for name, m in summary["variants"].items():
        print(
            f"  {name}: {m['violation_rounds']} rounds with violations, peak trafo "
            f"{m['peak_trafo_loading_pct']:.1f} %, vm {m['vm_min_pu']:.3f}-{m['vm_max_pu']:.3f} pu, "
            f"curtailed {m['curtailed_kwh']:.1f} kWh"
        )
    tm = summary["timing"]
    print(f"  median round {tm['median_round_ms']:.1f} ms, wall {tm['wall_s']:.0f} s, "
          f"peak memory {tm.get('peak_rss_mb', float('nan')):.0f} MB "
          f"({tm.get('total_peak_rss_mb', float('nan')):.0f} MB over its {tm.get('variant_processes', 1)} variant "
          f"process(es) and the ledger's)")
    if (out / "report.html").is_file() and not args.no_report:
        print(f"report: {out / 'report.html'}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from cosim.reporting.compare import write_comparison

    path = write_comparison(args.run_dirs, out=args.out)
    print(f"comparison: {path}")
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from cosim.bench.timing import main as bench_main

    return bench_main(args.bench_args)


def _cmd_validate(args: argparse.Namespace) -> int:
    from cosim.config.load import load_scenario

    for path in args.scenarios:
        s = load_scenario(path)
        print(f"{path}: ok ({s.name}, {s.n_rounds} rounds)")
    return EXIT_OK


def _cmd_clear(args: argparse.Namespace) -> int:
    from cosim.config.bids import ClearingFailed, clear_csv

    try:
        table = clear_csv(args.bids, args.mechanism, k=args.k, retail=args.retail, feed_in=args.feed_in,
                          network=args.network)
    except ClearingFailed as err:  # valid input the mechanism could not clear: say so, write nothing
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    table.to_csv(sys.stdout, index=False, float_format="%.6g")
    return EXIT_OK


def _cmd_powerflow(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from cosim.config.network_file import find_network_file, load_network_spec
    from cosim.physical.grid.snapshot import has_published_snapshots, powerflow_snapshot
    from cosim.physical.ieee_eu_lv import PUBLISHED_MINUTES

    path = find_network_file(args.network)
    if path is None:
        raise InputError(args.network, ["NETWORK: expected a network file or the name of one in networks/, found none"])
    spec = load_network_spec(path)
    if args.minute is not None and not has_published_snapshots(spec):
        raise InputError(path, [f"--minute: expected only with a network whose snapshots are published (the IEEE "
                                f"European LV feeder, ieee_eu_lv), found --minute {args.minute} with {spec.name}"])
    if args.minute is not None and args.minute not in PUBLISHED_MINUTES:
        raise InputError(path, [f"--minute: expected a published minute among {sorted(PUBLISHED_MINUTES)}, "
                                f"found {args.minute}"])
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(out, [f"--out: expected a file in an existing folder, found no folder {out.parent}"])
    table = powerflow_snapshot(spec, args.minute, three_phase=args.three_phase)
    tmp = out.with_name(out.name + ".partial")
    table.to_csv(tmp, index=False, float_format="%.9f")
    os.replace(tmp, out)
    print(f"{len(table)} buses: {out}")
    return EXIT_OK


def _cmd_ledger(args: argparse.Namespace) -> int:
    from cosim.virtual import ledger
    if args.ledger_command == "verify":
        import time

        t0 = time.perf_counter()
        ok, message = ledger.verify(args.run_dir)
        print(f"{message} ({time.perf_counter() - t0:.1f} s)")
        return EXIT_OK if ok else EXIT_FAILURE
    block = ledger.show(args.run_dir, None if args.genesis else args.round)
    print(block)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from cosim.reporting.report import write_report

    print(f"report: {write_report(args.run_dir)}")
    return EXIT_OK


def _cmd_portal(args: argparse.Namespace) -> int:
    from cosim.portal import serve

    if args.portal_command == "create-operator":
        password = serve.read_password_stdin() if args.password_stdin else None
        print(serve.create_operator(args.email, password, args.db, args.results))
        return EXIT_OK
    serve.serve(args.host, args.port, args.db, args.results, args.scenarios)
    return EXIT_OK


def _add_portal(sub) -> None:
    portal = sub.add_parser("portal", help="the system operator's web portal (SQLite under results/portal/ by default)")
    portal.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    portal.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    portal.add_argument("--scenarios", default=None,
                        help="folder of the base scenarios the operator picks from (default scenarios/)")
    portal_sub = portal.add_subparsers(dest="portal_command")
    create = portal_sub.add_parser("create-operator", help="create an operator account (password from a prompt)")
    create.add_argument("email")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    # given before or after create-operator; after it, not given keeps what was given before
    for p, db, results in ((portal, None, "results"), (create, argparse.SUPPRESS, argparse.SUPPRESS)):
        p.add_argument("--db", default=db, help="SQLAlchemy database URL (default sqlite under RESULTS/portal/)")
        p.add_argument("--results", default=results, help="results folder; runs go to RESULTS/portal/runs/")
    portal.set_defaults(func=_cmd_portal)


def _cmd_study(args: argparse.Namespace) -> int:
    from cosim.study.runner import run_study

    out = run_study(args.study, out=args.out, scheduler=args.scheduler, workers=args.workers, resume=args.resume,
                    progress=not args.no_progress, report=not args.no_report)
    info = json.loads((out / "study.json").read_text())
    print(f"results: {out} ({info['runs']} runs, {info['failed']} failed, {info['workers']} workers, "
          f"wall {info['wall_s']:.0f} s)")
    if (out / "report.html").is_file():
        print(f"report: {out / 'report.html'}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosim", description="Co-simulate P2P energy trading on LV networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument("--out", help="results folder (default results/<scenario name>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-report", action="store_true", help="skip drawing the report")
    run.add_argument("--resume", action="store_true",
                     help="carry on an interrupted run of the same scenario from its last checkpoint")
    run.add_argument("--chunk-rounds", type=_positive_int_of("rounds"), default=None, metavar="N",
                     help="rounds written to disk at a time, each chunk followed by a checkpoint "
                          "(default 672, a week at 15 min; a resumed run keeps the interrupted run's)")
    run.add_argument("--workers", type=_positive_int_of("processes"), default=None, metavar="N",
                     help="processes for the variants: the main one here, the comparison variants in N-1 "
                          "others (default one per core, at most one per variant; 1 runs them one after another)")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="validate scenario files without running them")
    val.add_argument("scenarios", nargs="+")
    val.set_defaults(func=_cmd_validate)

    clear = sub.add_parser("clear", help="clear one order book with no network; trades CSV on stdout")
    clear.add_argument("bids", help="CSV with columns id,side,quantity_kwh,price_per_kwh and optionally bus,green")
    clear.add_argument("--mechanism", default="uniform")
    clear.add_argument("--k", type=number, default=0.5, help="k-pricing parameter [0..1]")
    clear.add_argument("--retail", type=number, default=None,
                       help="outside grid's selling price [currency/kWh] (required by the community mechanisms)")
    clear.add_argument("--feed-in", type=number, default=None,
                       help="outside grid's buying price [currency/kWh] (required by the community mechanisms)")
    clear.add_argument("--network", default=None,
                       help="network whose buses the bids file's bus column names (bilateral's distance "
                            "and feeder premiums)")
    clear.set_defaults(func=_cmd_clear)

    pf = sub.add_parser("powerflow", help="one power flow of a network's own load snapshot; one row per bus")
    pf.add_argument("network", help="network file or name in networks/ (e.g. ieee_eu_lv)")
    pf.add_argument("--minute", type=int, default=None,
                    help="published minute of the IEEE European LV feeder: 1, 566 or 1440 (default 566, on peak)")
    pf.add_argument("--three-phase", action="store_true", help="unbalanced three-phase power flow (default balanced)")
    pf.add_argument("--out", required=True, help="CSV file: bus,base_kv_ll,vm_a_pu,vm_b_pu,vm_c_pu,vuf_pct")
    pf.set_defaults(func=_cmd_powerflow)

    led = sub.add_parser("ledger", help="verify or show a run's ledger")
    led_sub = led.add_subparsers(dest="ledger_command", required=True)
    verify = led_sub.add_parser("verify", help="exit 0 if the ledger is intact, else 1 and the first bad block")
    verify.add_argument("run_dir")
    show = led_sub.add_parser("show", help="print one block: its hash, roots, signatures, orders, trades, settlement")
    show.add_argument("run_dir")
    show.add_argument("--round", type=int, default=0, help="the round whose block to print (default 0)")
    show.add_argument("--genesis", action="store_true", help="print the genesis block: the registered keys")
    led.set_defaults(func=_cmd_ledger)

    rep = sub.add_parser("report", help="(re)draw the report of a finished run")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_cmd_report)

    cmp_ = sub.add_parser("compare", help="one HTML report with finished runs side by side")
    cmp_.add_argument("run_dirs", nargs="+", help="results folders of finished runs")
    cmp_.add_argument("--out", default="results/compare", help="folder of the comparison (default results/compare)")
    cmp_.set_defaults(func=_cmd_compare)

    study = sub.add_parser("study", help="a sweep or hosting-capacity study on Dask (docs/studies.md)")
    study.add_argument("study", help="study YAML file (scenarios/studies/)")
    study.add_argument("--out", help="results folder (default results/studies/<study name>)")
    study.add_argument("--scheduler", metavar="ADDRESS",
                       help="an existing Dask scheduler, e.g. tcp://127.0.0.1:8786 (default: an embedded LocalCluster)")
    study.add_argument("--workers", type=_positive_int_of("workers"), default=None, metavar="N",
                       help="worker processes of the embedded cluster (default: one per core)")
    study.add_argument("--resume", action="store_true", help="skip the runs an interrupted study finished")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")
    study.add_argument("--no-report", action="store_true", help="skip drawing report.html")
    study.set_defaults(func=_cmd_study)

    bench = sub.add_parser("bench", help="time per round against pandapower's run_timeseries (see cosim.bench.timing)",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    _add_portal(sub)
    return parser


class _Written(float):
    """A number option that keeps the text it was written as (``text``), for messages."""

    text: str


def number(text: str) -> float:
    """argparse type of a number option: a float that remembers how it was written, so that
    a message says ``found 1e9``, as typed, not ``found 1000000000.0``."""
    value = _Written(text)
    value.text = text.strip()
    return value


def _positive_int_of(what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what}, at least 1, found {text!r}")
        return value
    return parse


def _terminate(signum, frame):
    """SIGTERM stops a run like Ctrl-C: the partial folder and its checkpoint are kept."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own options, passed through untouched
        from cosim.bench.timing import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err.format()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `cosim ledger show RUN | head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        if getattr(args, "command", None) == "run":
            print("interrupted; no results folder was written. The last checkpoint (if a chunk of rounds was "
                  "finished) is kept: add --resume to carry on", file=sys.stderr)
        elif getattr(args, "command", None) == "study":
            print("interrupted; no results folder was written. The runs that finished are kept in the study's "
                  "hidden partial folder: add --resume to carry on", file=sys.stderr)
        else:
            print("interrupted; no results were written", file=sys.stderr)
        return 130
    except Exception:  # an internal failure: say so, show where, exit 1
        import traceback

        traceback.print_exc()
        print("error: internal failure (the traceback above shows where); please report it", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
