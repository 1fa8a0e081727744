"""Speed of neurocast.simulate: 40 subjects x 4 visits on the 2 mm working grid.

Target (issue 4): <= 5 minutes on 2 CPU cores. The cohort is simulated with the default
configuration except ``n_visits=(4, 4)`` and ``n_jobs`` processes (default 2, one per core; each
process runs torch single-threaded, so the output does not depend on ``n_jobs``). Wall time
includes process start-up (imports, template and atlas loading per process) and writing every
file. Reported: total wall time, seconds per visit (wall / visits), CPU-seconds per visit
(wall x processes / visits), disk size of the dataset.

Run from the project root:

    python benchmarks/simulate_speed.py                      # 40 x 4 at 2 mm, 2 processes
    python benchmarks/simulate_speed.py --n-subjects 8       # quicker
    python benchmarks/simulate_speed.py --keep /tmp/cohort   # keep the cohort (for the plausibility benchmark)

Prints a JSON record; ``--json PATH`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-subjects", type=int, default=40)
    ap.add_argument("--visits", type=int, default=4)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--grid-spacing-mm", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--keep", type=Path, default=None, help="write the cohort here and keep it")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from neurocast.simulate import SimulationConfig, simulate_cohort

    cfg = SimulationConfig(n_visits=(args.visits, args.visits), n_jobs=args.n_jobs,
                           grid_spacing_mm=args.grid_spacing_mm)
    tmp = None
    if args.keep is None:
        tmp = Path(tempfile.mkdtemp(prefix="neurocast-sim-speed-"))
        out = tmp / "cohort"
    else:
        out = args.keep
        if out.exists():
            shutil.rmtree(out)
    t0 = time.perf_counter()
    truth = simulate_cohort(out, args.n_subjects, seed=args.seed, config=cfg, progress=True)
    wall = time.perf_counter() - t0
    n_visits = len(truth.visits)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    record = {
        "n_subjects": args.n_subjects,
        "visits": n_visits,
        "grid_spacing_mm": args.grid_spacing_mm,
        "n_jobs": args.n_jobs,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "wall_s": round(wall, 1),
        "s_per_visit": round(wall / n_visits, 3),
        "cpu_s_per_visit": round(wall * args.n_jobs / n_visits, 3),
        "dataset_mb": round(size / 2**20, 1),
        "target_wall_s": 300,
        "passed": wall <= 300,
    }
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
