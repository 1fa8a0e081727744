"""Choose the anomaly mask's grow quantile on the development cohort (never the test cohort).

The lesion score and the flags come from the clusters above the voxel threshold (the 0.999
quantile of healthy map values). The binary mask can grow those clusters into the connected
voxels above a lower quantile (:func:`neurocast.anomaly.maps.grown_mask`, hysteresis
thresholding). For each grow quantile the shipped weights are calibrated on the benchmark's
references (the ``calib`` cohort and the two calibration IXI adults, each scored against the
other participants: :meth:`neurocast.anomaly.AnomalyDetector.calibrate_residuals`) and the ``dev``
cohort (the test cohort's settings at seed 505) is scored from its cached residual maps:

* the Dice of the mask with the true tumour, per tumour visit (visits with motion left out);
* the volume the mask flags on the healthy ``dev`` visits (ml), the price of growing.

Run::

    python benchmarks/anomaly_benchmark.py --jobs 2 --work WORK --dev --prepare-only
    python benchmarks/anomaly_mask_growth.py --work WORK --model src/neurocast/weights/anomaly-demo

``--cohorts`` scores other development cohorts instead (``dev2``, ``dev3`` from
``anomaly_benchmark.py --tumour-dev 2``), with each cohort's mean Dice when there are several.
``--dilations`` also dilates each mask by these radii (mm, inside the brain:
:func:`neurocast.anomaly.maps.dilated_mask`; default ``0``, no dilation, as the grow quantile was
chosen) and ``--grow-quantiles`` restricts the grow quantiles (``0``: no growth)::

    python benchmarks/anomaly_mask_growth.py --work WORK --model src/neurocast/weights/anomaly-demo \
        --cohorts dev dev2 --grow-quantiles 0.99 --dilations 0 2 4
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402
from anomaly_normative_dev import load_brain, load_residual, residual_maps  # noqa: E402

GROW_QUANTILES = (None, 0.95, 0.97, 0.98, 0.99, 0.995)


def main(argv: list[str] | None = None) -> int:
    from neurocast.anomaly import AnomalyDetector

    def cohorts_option(ap: Any) -> None:
        ap.add_argument("--cohorts", nargs="+", default=["dev"],
                        help="the development cohorts to score (e.g. dev2 dev3, from --tumour-dev)")  # fmt: skip
        ap.add_argument("--grow-quantiles", nargs="+", type=float, default=None,
                        help="grow quantiles to compare (0: no growth; default: all of GROW_QUANTILES)")  # fmt: skip
        ap.add_argument("--dilations", nargs="+", type=float, default=[0.0],
                        help="mask dilation radii to compare, mm (default: 0, none)")  # fmt: skip

    args = B.cache_script_args(__doc__, argv, "anomaly_mask_growth.json", cohorts_option)
    work = args.work / "full"
    dev, refs = residual_maps(work, args.model, args.threads, scored=tuple(args.cohorts))

    ref_data = [load_residual(work, k) for k in refs]
    groups = [k.split("_ses-")[0] for k in refs]  # calib_sub-001, or the IXI scan itself
    dev = dev[~dev["motion"]]
    tumours = dev[dev["tumour_present"].astype(bool)]
    healthy = dev[~dev["tumour_present"].astype(bool)]
    det = AnomalyDetector.load(args.model)
    vml = det.grid_.voxel_volume_mm3 / 1000.0
    quantiles = GROW_QUANTILES if args.grow_quantiles is None else [q or None for q in args.grow_quantiles]
    rows, summary = [], []
    for q, radius in itertools.product(quantiles, args.dilations):
        det.grow_quantile, det.mask_dilation_mm = q, radius
        maps, regions, iqms = zip(*ref_data, strict=True)
        cal = det.calibrate_residuals(
            list(maps), list(regions), list(iqms), groups=groups
        ).calibration_

        def mask(key: str) -> np.ndarray:
            return det.mask_of(det.judge_residual(*load_residual(work, key)).anomaly_map, within=load_brain(work, key))

        dice = []
        for r in tumours.itertuples():
            truth = np.asarray(nib.load(r.tumour_truth).dataobj) > 0
            d = B.dice(mask(r.key), truth)
            dice.append(d)
            rows.append(
                {"grow_quantile": q, "mask_dilation_mm": radius, "key": r.key, "cohort": r.cohort,
                 "tumour_ml": float(truth.sum() * vml), "dice": d}
            )  # fmt: skip
        flagged = [float(mask(k).sum() * vml) for k in healthy["key"]]
        summary.append({
            "grow_quantile": q, "mask_dilation_mm": radius, "grow_threshold": cal.grow_threshold,
            "voxel_threshold": cal.voxel_threshold,
            "tumour_dice_mean": float(np.mean(dice)), "healthy_mask_ml_mean": float(np.mean(flagged)),
            "n_tumour_visits": len(dice), "n_healthy_visits": len(flagged),
            **{f"tumour_dice_mean_{c}": float(np.mean([x["dice"] for x in rows if x["grow_quantile"] == q
                                                       and x["mask_dilation_mm"] == radius and x["cohort"] == c]))
               for c in args.cohorts if len(args.cohorts) > 1},
        })  # fmt: skip
        print(json.dumps(summary[-1]), flush=True)
    print(pd.DataFrame(summary).to_string(index=False))
    B.write_results(
        args.out,
        {"model": str(args.model), "cohorts": args.cohorts, "summary": summary, "per_visit": rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
