"""Compare image-level lesion scores on the development cohorts (never the test cohort).

The lesion score decides the ``review-lesion`` flag and the tumour AUROC. Until session 22 it was
the mass of the largest cluster above the voxel threshold (the 0.999 quantile of healthy map
values); since then it is ``cluster mass or peak`` below, chosen here. Small tumours leave
clusters that are present but light, so other readings of the same standardised map are
compared, each one calibrated the same way (the references scored against the other
participants' references; the threshold is the calibration's rule at 5 %):

* ``cluster mass``: the score before session 22;
* ``grown cluster mass``: the mass of the largest cluster of the grown mask (the clusters above
  the voxel threshold grown into the voxels above the grow threshold, as the mask is made);
* ``cluster mass at the grow threshold``: the largest cluster above the lower threshold alone;
* ``peak``: the map's highest value in the region;
* ``top 1 ml``: the mean of the map's highest voxels over 1 ml;
* ``cluster peak``: the highest value inside a cluster above the voxel threshold;
* ``local peak``: the highest 3x3x3-voxel mean;
* ``cluster mass or peak``: the larger of the cluster mass and the peak, each divided by its
  own calibrated threshold (a scan is flagged when either is).

For each: AUROC (tumour against healthy visits) per cohort and pooled, with a 95 % interval of
its difference from the cluster mass (bootstrap over subjects), and the visits flagged at the
calibrated threshold.

Scored: the tumour and healthy visits without motion of ``dev`` (seed 505) and ``dev2`` (seed
707, tumours only), from the shipped weights' cached residual maps; ``--cohorts dev3`` scores
the confirmation cohort (seed 909), kept for checking a choice made on the first two.

Run::

    python benchmarks/anomaly_benchmark.py --jobs 2 --work WORK --dev --tumour-dev 1 --prepare-only
    python benchmarks/anomaly_lesion_score.py --work WORK --model src/neurocast/weights/anomaly-demo
    python benchmarks/anomaly_benchmark.py --jobs 2 --work WORK --tumour-dev 2 --prepare-only
    python benchmarks/anomaly_lesion_score.py --work WORK --model src/neurocast/weights/anomaly-demo \
        --cohorts dev3 --out benchmarks/anomaly_lesion_score_dev3.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402
from anomaly_normative_dev import load_residual, residual_maps  # noqa: E402

TOP_ML = 1.0
EITHER = "cluster mass or peak"


def score_functions(det: Any) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    from scipy import ndimage

    from neurocast.anomaly.maps import components, grown_mask
    from neurocast.anomaly.scores import lesion_score

    cal = det.calibration_
    vv = det.grid_.voxel_volume_mm3
    mv = det._min_voxels()
    top_n = max(1, round(TOP_ML * 1000.0 / vv))

    def grown_mass(m: np.ndarray, region: np.ndarray) -> float:
        mask = grown_mask(m, cal.voxel_threshold, cal.grow_threshold, mv)  # the clusters, undilated
        lab, n = ndimage.label(mask)
        if n == 0:
            return 0.0
        return float(np.max(ndimage.sum(m, lab, index=np.arange(1, n + 1))) * vv)

    def top(m: np.ndarray, region: np.ndarray) -> float:
        v = m[region]
        return float(np.mean(np.sort(v)[-top_n:])) if v.size else 0.0

    def low_mass(m: np.ndarray, region: np.ndarray) -> float:
        comps = components(m, cal.grow_threshold, min_voxels=mv, voxel_volume_mm3=vv)
        return comps[0].mass if comps else 0.0

    def cluster_peak(m: np.ndarray, region: np.ndarray) -> float:
        comps = components(m, cal.voxel_threshold, min_voxels=mv, voxel_volume_mm3=vv)
        return max((c.peak for c in comps), default=0.0)

    def local_peak(m: np.ndarray, region: np.ndarray) -> float:
        local = ndimage.uniform_filter(m.astype(np.float32), size=3)
        return float(local[region].max()) if region.any() else 0.0

    return {
        "cluster mass": lambda m, r: lesion_score(
            m, cal.voxel_threshold, min_voxels=mv, voxel_volume_mm3=vv
        ),
        "grown cluster mass": grown_mass,
        "cluster mass at the grow threshold": low_mass,
        "peak": lambda m, r: float(m[r].max()) if r.any() else 0.0,
        f"top {TOP_ML:g} ml": top,
        "cluster peak": cluster_peak,
        "local peak (3x3x3 mean)": local_peak,
    }


def bootstrap_difference(
    df: pd.DataFrame, a: str, b: str, n: int = 2000, seed: int = 0
) -> list[float]:
    """95 % interval of AUROC(a) - AUROC(b), resampling subjects (a subject's visits together)."""
    from sklearn.metrics import roc_auc_score

    subject = df["key"].str.split("_ses-").str[0]
    groups = [g.index.to_numpy() for _, g in df.groupby(subject)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
        part = df.loc[idx]
        if part["tumour"].nunique() < 2:
            continue
        diffs.append(
            roc_auc_score(part["tumour"], part[a]) - roc_auc_score(part["tumour"], part[b])
        )
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from neurocast.anomaly import AnomalyDetector
    from neurocast.anomaly.calibration import calibrate_scores, per_score_rate, threshold_at_rate

    def cohorts_option(ap: Any) -> None:
        ap.add_argument("--cohorts", nargs="+", default=["dev", "dev2"],
                        help="the development cohorts to score (``dev3``: the confirmation cohort)")  # fmt: skip

    args = B.cache_script_args(__doc__, argv, "anomaly_lesion_score.json", cohorts_option)
    work = args.work / "full"
    visits, refs = residual_maps(work, args.model, args.threads, scored=tuple(args.cohorts))
    visits = visits[~visits["motion"]]
    ref_data = [load_residual(work, k) for k in refs]
    groups = [k.split("_ses-")[0] for k in refs]
    det = AnomalyDetector.load(args.model)
    maps, regions, iqms = zip(*ref_data, strict=True)
    det.calibrate_residuals(list(maps), list(regions), list(iqms), groups=groups)
    fns = score_functions(det)
    # the references' maps as the calibration scores them
    ref_maps = det._reference_maps(list(maps), list(regions), groups)[0]
    ref_scores = {
        name: [f(m, r) for m, r in zip(ref_maps, regions, strict=True)] for name, f in fns.items()
    }
    # check: the re-made reference maps give the calibration's thresholds of mass and peak
    rate = per_score_rate(det.fpr, 2)
    for name, key in (("cluster mass", "mass"), ("peak", "peak")):
        thr = threshold_at_rate(ref_scores[name], rate)
        assert np.isclose(thr, det.calibration_.lesion_scales[key]), (
            f"reference maps differ ({name})"
        )

    rows = []
    for r in visits.itertuples():
        j = det.judge_residual(*load_residual(work, r.key))
        region = load_residual(work, r.key)[1]
        row = {"key": r.key, "cohort": r.cohort, "tumour": bool(r.tumour_present)}
        row.update({name: f(j.anomaly_map, region) for name, f in fns.items()})
        row["detector lesion score"] = j.lesion_score
        rows.append(row)
    df = pd.DataFrame(rows)
    # mass or peak: each as a multiple of its own calibrated threshold, the larger of the two
    thresholds = {
        name: calibrate_scores(ref_scores[name], [0.0] * len(refs), fpr=det.fpr).lesion_threshold
        for name in fns
    }
    either = ("cluster mass", "peak")
    ref_scores[EITHER] = list(
        np.max([np.asarray(ref_scores[n]) / thresholds[n] for n in either], axis=0)
    )
    df[EITHER] = np.max([df[n].to_numpy() / thresholds[n] for n in either], axis=0)
    # the detector's own lesion score is this rule (since session 22), unless its card predates it
    if det.calibration_.lesion_scales is not None:
        assert np.allclose(df[EITHER], df["detector lesion score"]), "the detector scores otherwise"
    rows = df.to_dict("records")
    summary = []
    for name in [*fns, EITHER]:
        thr = calibrate_scores(ref_scores[name], [0.0] * len(refs), fpr=det.fpr).lesion_threshold
        out: dict[str, Any] = {"score": name, "threshold": thr}
        parts = [(c, df[df.cohort == c]) for c in args.cohorts]
        for label, part in parts + ([("all", df)] if len(parts) > 1 else []):
            t, h = part[part.tumour][name], part[~part.tumour][name]
            out[f"auroc_{label}"] = float(roc_auc_score(part.tumour, part[name]))
            out[f"tumours_flagged_{label}"] = f"{int((t > thr).sum())}/{len(t)}"
            out[f"healthy_flagged_{label}"] = f"{int((h > thr).sum())}/{len(h)}"
        out["auroc_minus_cluster_mass_95ci"] = bootstrap_difference(df, name, "cluster mass")
        summary.append(out)
        print(json.dumps(out), flush=True)
    print(pd.DataFrame(summary).to_string(index=False))
    B.write_results(
        args.out,
        {
            "model": str(args.model),
            "cohorts": args.cohorts,
            "summary": summary,
            "per_visit": rows,
            "reference_scores": ref_scores,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
