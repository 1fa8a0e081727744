"""Write a benchmarked anomaly model as the shipped demo model, with its measured figures in the card.

``anomaly_benchmark.py --model models/NAME`` leaves the calibrated model in
``WORK/full/model-NAME`` and its figures in ``WORK/full/results-NAME.json``; this script saves that
model (weights + model card only) into ``src/neurocast/weights/anomaly-demo`` with the headline
figures under the card's ``metrics`` and a note on what it was trained and calibrated on::

    python benchmarks/anomaly_ship.py /tmp/neurocast-anomaly-benchmark/full/model-small \\
        /tmp/neurocast-anomaly-benchmark/full/results-small.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "src" / "neurocast" / "weights" / "anomaly-demo"
HEADLINE = (
    "tumour_auroc", "tumour_voxel_auprc", "tumour_voxel_auprc_incl_motion", "tumour_dice_mean",
    "tumour_dice_mean_95ci", "tumour_and_motion_dice_mean", "fpr_healthy", "motion_auroc_mild",
    "motion_auroc_moderate", "motion_auroc_severe", "baseline_z_tumour_auroc",
    "baseline_z_voxel_auprc", "baseline_z_voxel_auprc_incl_motion", "baseline_z_tumour_dice_mean",
    "baseline_z_tumour_dice_mean_grown", "baseline_z_tumour_dice_mean_dilated",
    "baseline_lr_motion_auroc_mild",
    "baseline_lr_motion_auroc_moderate", "baseline_lr_motion_auroc_severe", "n",
)  # fmt: skip
NOTE = (
    "Demo model. Trained on healthy simulated visits (neurocast simulate, template anatomy, 2 mm "
    "grid) and three healthy IXI adults from ../shared/data; calibrated at 5 % false positives on "
    "held-out simulated healthy visits and two other IXI adults. Its thresholds fit data like "
    "that: calibrate it on your own healthy scans (AnomalyDetector.calibrate) before trusting its "
    "flags on another scanner. Not for clinical use."
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="calibrated model folder from anomaly_benchmark.py")
    ap.add_argument("results", type=Path, help="its results JSON")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    from neurocast.anomaly import AnomalyDetector

    det = AnomalyDetector.load(args.model)
    if det.calibration_ is None:
        raise SystemExit(f"{args.model}: not calibrated")
    res = json.loads(args.results.read_text())
    metrics = {k: res[k] for k in HEADLINE if k in res}
    metrics["benchmark"] = (
        f"benchmarks/anomaly_benchmark.py (held-out simulated cohort {res.get('test_cohort', 'test')}, "
        f"seed {res.get('test_seed', 404)}; see BENCHMARKS.md)"
    )
    det.training_.setdefault("data_summary", {})["note"] = NOTE
    tmp = args.out.with_name(args.out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    det.save(tmp, metrics=metrics)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    AnomalyDetector.load(args.out)  # verifies hashes and settings
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    print(f"wrote {args.out} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
