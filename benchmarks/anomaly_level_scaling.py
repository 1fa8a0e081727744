"""Decide the detector's ``level_scaling`` on the development cohort (never the test cohort).

The lesion score is meant to read a *local* excess of the residual (a compact cluster); a scan
whose residual is raised everywhere (a noisier acquisition, another scanner's sharper anatomy,
motion) also raises its clusters. ``AnomalyDetector(level_scaling=True)`` divides the residual
map by how far the scan's median residual stands above the highest among the healthy references
(:func:`neurocast.anomaly.scores.level_scale`, never below 1) before the map is standardised and
the clusters read; the artefact score is unchanged. (A first version divided by the references'
median level instead; its figures are in ``anomaly_level_scaling_median_tried.json``.) For each setting the shipped weights are
calibrated on the benchmark's references (the ``calib`` cohort and the two calibration IXI adults,
each scored against the other participants) and the ``dev`` cohort (the test cohort's settings at
seed 505) and the shared real scans are scored from their cached residual maps:

* tumour AUROC (tumour visits against healthy ones; visits with motion left out), voxel AUPRC,
  Dice of the mask, tumours and healthy visits flagged;
* motion visits flagged ``review-lesion`` (a diffuse artefact read as a lesion);
* the real scans' flags and lesion scores (IXI034, chris_t1 from another scanner, the
  glioblastoma before and after);
* how the healthy visits' lesion scores follow their residual level without the scaling
  (Spearman's rho), the mechanism the scaling addresses.

Run::

    python benchmarks/anomaly_benchmark.py --jobs 2 --work WORK --dev --prepare-only
    python benchmarks/anomaly_level_scaling.py --work WORK --model src/neurocast/weights/anomaly-demo

``--draws N`` and ``--average residuals|reconstructions`` override the model card's
reconstruction settings (:class:`neurocast.anomaly.AnomalyDetector`); give such a run its own
``--work`` folder (one that links ``WORK/full/cohorts`` and ``WORK/full/scans`` and has an empty
``full/maps``), since the residual maps are cached there.
"""

from __future__ import annotations

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
from anomaly_normative_dev import REAL, load_brain, load_residual, residual_maps  # noqa: E402


def evaluate(
    det: Any, work: Path, dev: pd.DataFrame, refs: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Calibrate ``det`` on the references and score the dev visits and the real scans."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ref_data = [load_residual(work, k) for k in refs]
    groups = [k.split("_ses-")[0] for k in refs]  # calib_sub-001, or the IXI scan itself
    maps, regions, iqms = zip(*ref_data, strict=True)
    cal = det.calibrate_residuals(list(maps), list(regions), list(iqms), groups=groups).calibration_
    rows, y, s = [], [], []
    for r in dev.itertuples():
        rmap, region, q = load_residual(work, r.key)
        j = det.judge_residual(rmap, region, q)
        kind = "tumour" if r.tumour_present else "motion" if r.motion else "healthy"
        row = {"key": r.key, "kind": kind, "both": bool(r.tumour_present and r.motion),
               "severity": r.artefact_severity if r.motion else None, "lesion": j.lesion_score,
               "flag": j.flag, "level": j.features["residual_median"], "level_scale": j.level_scale,
               "dice": float("nan")}  # fmt: skip
        if r.tumour_present:
            truth = np.asarray(nib.load(r.tumour_truth).dataobj) > 0
            brain = load_brain(work, r.key)
            row["dice"] = B.dice(det.mask_of(j.anomaly_map, within=brain), truth)
            if not r.motion:
                y.append(truth[brain])
                s.append(j.anomaly_map[brain])
        rows.append(row)
    df = pd.DataFrame(rows)
    pure = df[~df["both"]]
    tu, hl, mo = (pure[pure["kind"] == k] for k in ("tumour", "healthy", "motion"))
    out: dict[str, Any] = {
        "level_scaling": det.level_scaling,
        "residual_level": cal.residual_level,
        "lesion_threshold": cal.lesion_threshold,
        "voxel_threshold": cal.voxel_threshold,
        "tumour_auroc": float(roc_auc_score([1] * len(tu) + [0] * len(hl), list(tu["lesion"]) + list(hl["lesion"]))),
        "tumour_voxel_auprc": float(average_precision_score(np.concatenate(y), np.concatenate(s))),
        "tumour_dice_mean": float(tu["dice"].mean()),
        "tumours_flagged": f"{int((tu['flag'] != 'pass').sum())}/{len(tu)}",
        "healthy_flagged": f"{int((hl['flag'] != 'pass').sum())}/{len(hl)}",
        "motion_flagged_lesion": f"{int((mo['flag'] == 'review-lesion').sum())}/{len(mo)}",
        "motion_flagged": f"{int((mo['flag'] != 'pass').sum())}/{len(mo)}",
        "healthy_level_scale_max": float(hl["level_scale"].max()),
        "tumour_level_scale_max": float(tu["level_scale"].max()),
    }  # fmt: skip
    for key in REAL:
        if (work / "maps" / f"{key}.npz").is_file():
            j = det.judge_residual(*load_residual(work, key))
            out[f"{key}"] = {"flag": j.flag, "lesion": j.lesion_score, "artefact": j.artefact_score,
                             "level_scale": j.level_scale}  # fmt: skip
    return out, rows


def main(argv: list[str] | None = None) -> int:
    from scipy.stats import spearmanr

    from neurocast.anomaly import AnomalyDetector

    def reconstruction_options(ap: Any) -> None:
        ap.add_argument(
            "--draws",
            type=int,
            default=None,
            help="noise draws per level (default: the model card's)",
        )
        ap.add_argument("--average", choices=("residuals", "reconstructions"), default=None,
                        help="what is averaged over levels and draws (default: the model card's)")  # fmt: skip

    args = B.cache_script_args(__doc__, argv, "anomaly_level_scaling.json", reconstruction_options)
    settings = {k: v for k in ("draws", "average") if (v := getattr(args, k)) is not None}
    work = args.work / "full"
    dev, refs = residual_maps(work, args.model, args.threads, settings=settings)
    det = AnomalyDetector.load(args.model)
    for name, value in settings.items():
        setattr(det, name, value)
    summary, per_visit = [], []
    for on in (False, True):
        det.level_scaling = on
        res, rows = evaluate(det, work, dev, refs)
        if not on:
            hl = pd.DataFrame(rows)
            hl = hl[(hl["kind"] == "healthy") & ~hl["both"]]
            rho = spearmanr(hl["level"], hl["lesion"])
            res["healthy_lesion_vs_level_spearman"] = {
                "rho": float(rho.statistic),
                "p": float(rho.pvalue),
                "n": len(hl),
            }
        summary.append(res)
        per_visit += [dict(r, level_scaling=on) for r in rows]
        print(json.dumps(res, default=float), flush=True)
    print(pd.DataFrame(summary).drop(columns=[k for k in REAL if k in summary[0]]).T.to_string())
    B.write_results(
        args.out,
        {
            "model": str(args.model),
            "settings": settings,
            "summary": summary,
            "per_visit": per_visit,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
