"""Speed-up of a study with the number of Dask workers (not a test: a measurement).

``python -m cosim.bench.study_workers [STUDY] --seeds N --workers 1 2`` runs the study
(default: the shipped hosting-capacity study of rural3 with fewer seeds) once per worker
count on the embedded LocalCluster, each time from scratch, and writes the wall times,
the runs and the speed-up against the first count to results/bench/study_workers.json
and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

from cosim.study.runner import run_study
from cosim.study.spec import base_path, load_study

DEFAULT_STUDY = Path(__file__).resolve().parents[2] / "scenarios" / "studies" / "rural3-hosting-summer.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosim.bench.study_workers", description=__doc__)
    parser.add_argument("study", nargs="?", default=str(DEFAULT_STUDY))
    parser.add_argument("--seeds", type=int, default=4, help="seeds of the study (default 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    study_path = Path(args.study)
    study = load_study(study_path)
    data = yaml.safe_load(study_path.read_text())
    data["seeds"] = args.seeds
    data["base"] = str(base_path(study, study_path))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "study.yaml"
        small.write_text(yaml.safe_dump(data, sort_keys=False))
        for n in args.workers:
            t0 = time.perf_counter()
            out = run_study(small, out=Path(tmp) / f"out-{n}", workers=n, progress=True, report=False)
            wall = time.perf_counter() - t0
            info = json.loads((out / "study.json").read_text())
            rows.append({"workers": n, "wall_s": wall, "runs": info["runs"], "failed": info["failed"]})
    for r in rows:
        r["speedup"] = rows[0]["wall_s"] / r["wall_s"]
    result = {"study": study.name, "seeds": args.seeds, "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "python": platform.python_version(), "rows": rows}
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "study_workers.json").write_text(json.dumps(result, indent=2))
    print(f"{'workers':>8} {'runs':>6} {'wall [s]':>10} {'speed-up':>9}")
    for r in rows:
        print(f"{r['workers']:>8} {r['runs']:>6} {r['wall_s']:>10.1f} {r['speedup']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
