"""Time the anomaly detector per scan, end to end: preprocessing + IQMs + reconstruction + scoring.

Issue 6 asks for one scan end to end in <= 15 s on 2 CPU cores (>= 240 scans per hour). This
script runs what ``neurocast qa`` runs per scan (:func:`neurocast.anomaly.prepare_scan`, then
:meth:`AnomalyDetector.score`, with the previous scan as prior from the second scan on), one
scan after the other in one process after a warm-up scan, and prints the median time of each
part. Run it on an idle machine::

    python benchmarks/anomaly_speed.py --model src/neurocast/weights/anomaly-demo \\
        --scans /tmp/neurocast-anomaly-benchmark/full/cohorts/test --n 6 --threads 2

``--scans`` is a folder searched for ``*_T1w.nii.gz`` outside ``derivatives`` (sorted; the first
is the warm-up).
``--noise-levels`` overrides the model's, to see what fewer network passes would save.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--scans", type=Path, required=True)
    ap.add_argument("--n", type=int, default=6, help="timed scans (after one warm-up scan)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--noise-levels", type=float, nargs="+", default=None)
    ap.add_argument("--inference-dtype", default=None, choices=("bfloat16", "float32"),
                    help="override the model's (the float32 run is the baseline of the speed-up)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from neurocast.registration.threads import set_threads

    set_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from neurocast.anomaly import AnomalyDetector, prepare_scan

    det = AnomalyDetector.load(args.model)
    if args.noise_levels:
        det.noise_levels = tuple(args.noise_levels)
    if args.inference_dtype:
        det.inference_dtype = args.inference_dtype
    paths = sorted(p for p in args.scans.rglob("*_T1w.nii.gz") if "derivatives" not in p.parts)
    paths = paths[: args.n + 1]
    if len(paths) < 2:
        raise SystemExit(f"{args.scans}: need at least two *_T1w.nii.gz files")
    rows = []
    prior, prior_subject = None, None
    for i, path in enumerate(paths):
        subject = path.name.split("_")[0]
        if subject != prior_subject:
            prior = None  # a prior is the same participant's earlier scan
        t0 = time.perf_counter()
        scan = prepare_scan(path, grid=det.grid_, on_fail="report")
        t1 = time.perf_counter()
        result = det.score(scan.with_prior(prior) if prior is not None else scan)
        t2 = time.perf_counter()
        prior, prior_subject = scan, subject
        if i == 0:
            continue  # warm-up: imports, template loading, first allocations
        rows.append({"scan": path.name, "prepare_s": t1 - t0, "score_s": t2 - t1,
                     "total_s": t2 - t0, "flag": result.flag, "prior": result.used_prior})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("prepare_s", "score_s", "total_s")}
    res = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "threads": args.threads, "n_scans": len(rows), "noise_levels": list(det.noise_levels),
        "channels": list(det.channels), "inference_dtype": det.inference_dtype, **{f"median_{k}": round(v, 2) for k, v in med.items()},
        "scans_per_hour": round(3600 / med["total_s"]), "load_average": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"summary": res, "scans": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
