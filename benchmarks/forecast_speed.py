"""Speed of one forecast: one subject, 8 samples x 3 horizons (the CLI default), in-process.

Times :func:`neurocast.progress.forecast.forecast` (sampling, integration, warping at 2 mm,
Jacobian maps, regional volumes) after one warm-up call: wall and CPU seconds per call, median of
``--repeats``. Imports and model loading are not included (they happen once per process).

Usage::

    python benchmarks/forecast_speed.py --image sub-01_ses-bl_space-MNI152NLin2009aSym_res-2_desc-clean_T1w.nii.gz \\
        [--model DIR] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import nibabel as nib
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="a T1w image on the working grid (template space)")
    ap.add_argument("--model", default=None, help="progression model folder (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from neurocast.progress.forecast import ForecastSubject, forecast, load_model

    model = load_model(args.model)
    subject = ForecastSubject(nib.load(args.image), {"age": 74.0, "sex": "F", "diagnosis": "MCI", "apoe4": 1, "mmse": 26.0})
    forecast(subject, [1, 2, 5], 8, 0, model=model)
    walls, cpus = [], []
    for r in range(args.repeats):
        w, c = time.perf_counter(), time.process_time()
        forecast(subject, [1, 2, 5], 8, r, model=model)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    print(json.dumps({
        "threads": args.threads, "repeats": args.repeats, "wall_s_median": statistics.median(walls),
        "wall_s": walls, "cpu_s_median": statistics.median(cpus), "load_average": os.getloadavg(),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
