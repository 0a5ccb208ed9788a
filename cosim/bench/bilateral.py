"""Scaling benchmark of the multi-bilateral market (`bilateral`): time per round against prosumers.

``python -m cosim.bench.bilateral --prosumers 100 250 500 1000 --rounds N`` clears N
random order books at each size, centrally (one LP, persistent HiGHS) and by consensus
ADMM (closed-form prosumer steps, warm-started from the previous round), and writes
results/bench/bilateral.json and a table.

The prosumers sit on a synthetic radial LV network: ``feeders`` feeders leave the
transformer's busbar, each prosumer at a uniform random line distance (up to
``feeder_km``) along one of them, so the line path between two prosumers is the
difference of their distances on one feeder and the sum across feeders. A share
``pv_share`` has PV. Each round is an independent book (so the warm start helps little:
a conservative case): a share ``seller_share`` sells, quantities are log-normal around
``quantity_kwh`` [kWh] per 15 min, prices are zero-intelligence (uniform between the
feed-in and retail tariffs), grid-connected, no network cuts or charges. Reported per size:
pair slots (trade variables), model build times, and per round the wall and CPU time of
each mode, the ADMM's iterations and its welfare gap to the central optimum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cosim.markets.base import MarketContext, OrderArrays, Participants
from cosim.markets.bilateral import MultiBilateral

#: Network-cut slots of the models, as in the co-simulation loop (`cosim.sim.loop.MAX_CUTS`).
MAX_CUTS = 40
RETAIL_PER_KWH, FEED_IN_PER_KWH = 0.30, 0.08


def synthetic_participants(n: int, rng: np.random.Generator, feeders: int = 6, feeder_km: float = 0.6,
                           pv_share: float = 0.6) -> Participants:
    """`n` prosumers on a synthetic radial LV network (see the module docstring)."""
    feeder = rng.integers(0, feeders, n)
    pos_km = rng.uniform(0.01, feeder_km, n)
    same = feeder[:, None] == feeder[None, :]
    dist = np.where(same, np.abs(pos_km[:, None] - pos_km[None, :]), pos_km[:, None] + pos_km[None, :])
    return Participants([f"p{i:04d}" for i in range(n)], np.arange(n), feeder, rng.random(n) < pv_share, dist)


def random_book(n: int, rng: np.random.Generator, seller_share: float = 0.4, quantity_kwh: float = 0.5
                ) -> OrderArrays:
    """One round's order book: one order per prosumer (see the module docstring)."""
    sell = rng.random(n) < seller_share
    q = quantity_kwh * rng.lognormal(0.0, 0.6, n)
    price = rng.uniform(FEED_IN_PER_KWH, RETAIL_PER_KWH, n)
    return OrderArrays(np.where(sell, 0.0, q), np.where(sell, q, 0.0), np.where(sell, 0.0, price),
                       np.where(sell, price, 0.0))


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, 1e3 * (time.perf_counter() - w0), 1e3 * (time.process_time() - c0)


def bench_size(n: int, rounds: int, seed: int = 0, options: dict | None = None) -> dict:
    """Clear `rounds` random books of `n` prosumers in both modes; returns the figures."""
    rng = np.random.default_rng(seed + n)
    options = dict(options or {})
    participants = synthetic_participants(n, rng)
    central, build_central_ms, _ = _timed(lambda: MultiBilateral(participants, MAX_CUTS, {**options, "solve": "central"}))
    admm, build_admm_ms, _ = _timed(
        lambda: MultiBilateral(participants, MAX_CUTS, {**options, "solve": "admm", "admm_audit": False})
    )
    ctx = MarketContext(RETAIL_PER_KWH, FEED_IN_PER_KWH)
    rows = []
    for _ in range(rounds):
        book = random_book(n, rng)
        rc, c_wall, c_cpu = _timed(lambda book=book: central.clear(book, ctx))
        ra, a_wall, a_cpu = _timed(lambda book=book: admm.clear(book, ctx))
        gap = rc.welfare - ra.welfare if ra.ok and rc.ok else float("nan")
        rows.append({
            "central_ms": c_wall, "central_cpu_ms": c_cpu, "admm_ms": a_wall, "admm_cpu_ms": a_cpu,
            "admm_iterations": ra.info.get("admm_iterations", 0), "admm_ok": ra.ok,
            "admm_gap": gap, "admm_gap_rel": gap / max(abs(rc.welfare), 1e-9),
            "active_slots": rc.info.get("slots_active", 0), "central_ok": rc.ok, "cleared_kwh": rc.cleared_kwh,
        })

    def stat(key: str, how) -> float:
        values = np.array([r[key] for r in rows], float)
        return float(how(values)) if len(values) else float("nan")

    return {
        "prosumers": n,
        "pair_slots": central.n_slots,
        "max_partners": central.options.max_partners,
        "build_central_ms": build_central_ms,
        "build_admm_ms": build_admm_ms,
        "active_slots_median": stat("active_slots", np.median),
        "cleared_kwh_median": stat("cleared_kwh", np.median),
        "central_ms_median": stat("central_ms", np.median),
        "central_ms_max": stat("central_ms", np.max),
        "central_cpu_ms_median": stat("central_cpu_ms", np.median),
        "admm_ms_median": stat("admm_ms", np.median),
        "admm_ms_max": stat("admm_ms", np.max),
        "admm_cpu_ms_median": stat("admm_cpu_ms", np.median),
        "admm_iterations_median": stat("admm_iterations", np.median),
        "admm_iterations_max": stat("admm_iterations", np.max),
        "admm_ms_per_iteration": stat("admm_cpu_ms", np.sum) / max(stat("admm_iterations", np.sum), 1.0),
        "admm_failed_rounds": int(sum(not r["admm_ok"] for r in rows)),
        "central_failed_rounds": int(sum(not r["central_ok"] for r in rows)),
        "admm_gap_rel_max": stat("admm_gap_rel", np.nanmax),
        "admm_gap_max": stat("admm_gap", np.nanmax),
        "rounds": rows,
    }


def run(prosumers: list[int], rounds: int, out: str | Path = "results/bench", seed: int = 0,
        options: dict | None = None) -> dict:
    """Benchmark every size; writes ``<out>/bilateral.json``."""
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    sizes = []
    for n in prosumers:
        sizes.append(bench_size(n, rounds, seed, options))
        print(format_row(sizes[-1]), file=sys.stderr, flush=True)
    result = {
        "command": f"python -m cosim.bench.bilateral --prosumers {' '.join(map(str, prosumers))} --rounds {rounds}"
                   f" --seed {seed}" + (f" --max-partners {options['max_partners']}" if options else ""),
        "rounds": rounds,
        "seed": seed,
        "options": options or {},
        "wall_s": time.perf_counter() - t0,
        "machine": {
            "python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "load_average_start": load_start, "load_average_end": os.getloadavg(),
        },
        "sizes": sizes,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bilateral.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


HEADER = (f"{'prosumers':>9} {'slots':>6} {'active':>6} | {'central ms':>10} {'max':>7} | {'ADMM ms':>8} {'max':>7} "
          f"{'cpu ms':>7} {'iters':>6} {'max':>6} {'ms/it':>6} {'gap rel':>8} {'failed':>6}")


def format_row(s: dict) -> str:
    return (f"{s['prosumers']:>9d} {s['pair_slots']:>6d} {s['active_slots_median']:>6.0f} | "
            f"{s['central_ms_median']:>10.1f} {s['central_ms_max']:>7.1f} | {s['admm_ms_median']:>8.1f} "
            f"{s['admm_ms_max']:>7.1f} {s['admm_cpu_ms_median']:>7.1f} {s['admm_iterations_median']:>6.0f} "
            f"{s['admm_iterations_max']:>6.0f} {s['admm_ms_per_iteration']:>6.2f} {s['admm_gap_rel_max']:>8.1e} "
            f"{s['admm_failed_rounds']:>6d}")


def format_table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"bilateral: {result['rounds']} random books per size (median and max per round; wall time unless cpu), "
        f"{m['cpus']} CPUs, load average {m['load_average_start'][0]:.1f} -> {m['load_average_end'][0]:.1f}",
        HEADER,
        *[format_row(s) for s in result["sizes"]],
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosim.bench.bilateral", description=__doc__.splitlines()[0])
    parser.add_argument("--prosumers", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-partners", type=int, default=None, help="bilateral option max_partners (default 12)")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.prosumers) or args.rounds < 1:
        parser.error("--prosumers and --rounds: expected positive integers")
    options = {"max_partners": args.max_partners} if args.max_partners else {}
    result = run(args.prosumers, args.rounds, args.out, args.seed, options)
    print(format_table(result))
    print(f"written: {Path(args.out) / 'bilateral.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
