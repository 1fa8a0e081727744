"""Choose the anomaly map's standardisation on the development cohort (never the test cohort).

Uses the cache of ``anomaly_benchmark.py --dev --prepare-only --work WORK``: the ``calib`` cohort
and the two calibration IXI adults are the healthy references, the ``dev`` cohort (the test
cohort's settings at seed 505) is scored, and the held-out real healthy scans and the real
glioblastoma are reported. For each variant the references are standardised leave-one-out, the
voxel threshold is their 99.9th percentile and the lesion threshold is set at 5 % false positives
(Šidák's per-score rate), as :meth:`neurocast.anomaly.AnomalyDetector.calibrate` does. Variants:

* ``raw``: the residual map as is (the detector before standardisation);
* ``ratio``: the map divided by the references' smoothed mean (plus a floor);
* ``z``: :class:`neurocast.anomaly.normative.NormativeMaps` (smoothing, floor).

Residual maps are computed once per scan with the given model and cached in ``WORK/full/maps``.
A dev visit's prior is its subject's latest earlier visit without tumour or motion (the truth;
the benchmark uses the detector's flags instead, which depend on the variant).

Run::

    python benchmarks/anomaly_benchmark.py --jobs 2 --work WORK --dev --prepare-only
    python benchmarks/anomaly_normative_dev.py --work WORK --model src/neurocast/weights/anomaly-demo
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

REAL = ("IXI034-HH-1260-T1", "chris_t1", "tumour_Pre_Scan_T1", "tumour_Post_Scan_T1")
VARIANTS: list[tuple[str, float, float]] = [
    ("raw", 0.0, 0.0), ("ratio", 0.0, 0.1), ("ratio", 2.0, 0.1), ("ratio", 4.0, 0.1),
    ("ratio", 4.0, 0.3), ("ratio", 4.0, 1.0), ("z", 1.0, 0.1), ("z", 2.0, 0.05), ("z", 2.0, 0.1),
    ("z", 2.0, 0.2), ("z", 3.0, 0.1), ("z", 4.0, 0.1), ("z", 4.0, 0.5),
]  # fmt: skip


def residual_maps(
    work: Path,
    model: Path,
    threads: int,
    scored: tuple[str, ...] = ("dev",),
    settings: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Cache the residual maps of the references, the ``scored`` cohorts' visits and the real
    scans; return the scored visits' table and the reference keys. ``settings`` overrides the
    model card's detector settings (the cache in ``work/maps`` must then be the setting's own)."""
    import torch

    from neurocast.anomaly import AnomalyDetector

    torch.set_num_threads(threads)
    det = AnomalyDetector.load(model)
    for name, value in (settings or {}).items():
        setattr(det, name, value)
    out = work / "maps"
    out.mkdir(exist_ok=True)

    def save(key: str, scan: Any) -> None:
        if (out / f"{key}.npz").is_file():
            return
        rmap, _, _ = det.residual_map(scan)
        np.savez_compressed(
            out / f"{key}.npz", rmap=rmap, region=det.region(scan), brain=scan.brain_mask
        )

    def scan(key: str) -> Any:
        return B.load_scan(work / "scans" / f"{key}.npz")[0]

    tables = []
    for cohort in ("calib", *scored):
        v = B.simulate(work, cohort, 0, 0, 2.0, (2, 3))  # cached: reads the truth table
        v["key"] = [f"{cohort}_{r.participant_id}_{r.session_id}" for r in v.itertuples()]
        v["motion"] = v["artefact"].astype(str) == "motion"
        for key, prior in visit_priors(work, v).items():
            s = scan(key)
            save(key, s.with_prior(scan(prior)) if prior is not None else s)
        tables.append(v[[(out / f"{k}.npz").is_file() for k in v["key"]]])
    refs = [k for k in tables[0]["key"]] + list(B.IXI_CALIB)
    for key in list(B.IXI_CALIB) + list(REAL):
        if (work / "scans" / f"{key}.npz").is_file():
            save(key, scan(key))
    return pd.concat(tables[1:], ignore_index=True), refs


def visit_priors(work: Path, visits: pd.DataFrame) -> dict[str, str | None]:
    """The prior of each cached visit whose preprocessing passed (``key`` -> the prior's key, or
    ``None``): its subject's latest earlier visit without tumour or motion (the truth), counted
    from the last visit that was missing or failed its preprocessing.

    Args:
        work: the benchmark's ``work/full`` folder (``scans`` inside).
        visits: a cohort's truth table with a ``key`` column (``COHORT_sub-X_ses-Y``).
    """
    out: dict[str, str | None] = {}
    for _, g in visits.sort_values(["participant_id", "visit_index"]).groupby("participant_id"):
        prev = None
        for r in g.itertuples():
            path = work / "scans" / f"{r.key}.npz"
            if not path.is_file() or not B.load_scan(path)[0].qc.get("passed", True):
                prev = None
                continue
            out[r.key] = prev
            if not (r.tumour_present or str(r.artefact) == "motion"):
                prev = r.key
    return out


def load_residual(work: Path, key: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """A cached visit's ``(residual map, region, IQMs)``: what
    :meth:`neurocast.anomaly.AnomalyDetector.calibrate_residuals` and ``judge_residual`` take."""
    with np.load(work / "maps" / f"{key}.npz") as z:
        rmap, region = z["rmap"], z["region"].astype(bool)
    return rmap, region, B.load_scan(work / "scans" / f"{key}.npz")[0].iqms


def load_brain(work: Path, key: str) -> np.ndarray:
    """A cached visit's brain mask on the working grid (what the anomaly mask's dilation stays in)."""
    with np.load(work / "maps" / f"{key}.npz") as z:
        return z["brain"].astype(bool)


def evaluate(maps: dict[str, dict[str, np.ndarray]], refs: list[str], dev: pd.DataFrame,
             kind: str, smoothing_mm: float, floor: float) -> dict[str, Any]:  # fmt: skip
    from sklearn.metrics import average_precision_score, roc_auc_score

    from neurocast.anomaly.calibration import (
        per_score_rate,
        threshold_at_rate,
        voxel_threshold_from_maps,
    )
    from neurocast.anomaly.maps import threshold_map
    from neurocast.anomaly.normative import NormativeMaps
    from neurocast.anomaly.scores import lesion_score

    rm = [maps[k]["rmap"] for k in refs]
    rr = [maps[k]["region"] for k in refs]
    if kind == "raw":
        ref_maps, norm = rm, lambda m, r: m
    else:
        nm = NormativeMaps(smoothing_mm, floor)
        if kind == "z":
            ref_maps = nm.leave_one_out(rm, rr)
            norm = nm.transform
        else:  # ratio: the same smoothed mean, no spread
            nm.fit(rm, rr)
            ref_maps = []
            for i in range(len(rm)):
                others = NormativeMaps(smoothing_mm, floor).fit(
                    rm[:i] + rm[i + 1 :], rr[:i] + rr[i + 1 :]
                )
                ref_maps.append(_ratio(rm[i], rr[i], others.mean_, floor))
            norm = lambda m, r: _ratio(m, r, nm.mean_, floor)  # noqa: E731
    vthr = voxel_threshold_from_maps(ref_maps, rr, 0.999)
    score = lambda x: lesion_score(x, vthr, min_voxels=8, voxel_volume_mm3=8.0)  # noqa: E731
    lthr = threshold_at_rate(np.array([score(x) for x in ref_maps]), per_score_rate(0.05, 2))
    rows, y, s = [], [], []
    for r in dev.itertuples():
        d = maps[r.key]
        x = norm(d["rmap"], d["region"])
        dice = float("nan")
        if r.tumour_present:
            truth = np.asarray(nib.load(r.tumour_truth).dataobj) > 0
            mask = threshold_map(x, vthr, 8)
            dice = 2 * float((mask & truth).sum()) / max(float(mask.sum() + truth.sum()), 1.0)
            y.append(truth[d["brain"]])
            s.append(x[d["brain"]])
        kind_ = "tumour" if r.tumour_present else "motion" if r.motion else "healthy"
        rows.append((kind_, bool(r.tumour_present and r.motion), score(x), dice))
    df = pd.DataFrame(rows, columns=["kind", "both", "lesion", "dice"])
    pure = df[~df["both"]]
    tu, hl = pure[pure["kind"] == "tumour"], pure[pure["kind"] == "healthy"]
    res: dict[str, Any] = {
        "variant": kind, "smoothing_mm": smoothing_mm, "floor": floor,
        "tumour_auroc": float(roc_auc_score([1] * len(tu) + [0] * len(hl), list(tu["lesion"]) + list(hl["lesion"]))),
        "tumour_dice_mean": float(tu["dice"].mean()),
        "tumour_voxel_auprc": float(average_precision_score(np.concatenate(y), np.concatenate(s))),
        "tumours_flagged": f"{int((tu['lesion'] > lthr).sum())}/{len(tu)}",
        "healthy_flagged": f"{int((hl['lesion'] > lthr).sum())}/{len(hl)}",
    }  # fmt: skip
    for key in REAL:
        if key in maps:
            x = norm(maps[key]["rmap"], maps[key]["region"])
            res[f"{key}_flagged"] = bool(score(x) > lthr)
    return res


def _ratio(m: np.ndarray, region: np.ndarray, mean: np.ndarray, floor: float) -> np.ndarray:
    f = floor * float(np.median(mean[region])) if region.any() else floor
    return np.where(region, m / (mean + f), 0.0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    args = B.cache_script_args(__doc__, argv, "anomaly_normative_dev.json")
    work = args.work / "full"
    dev, refs = residual_maps(work, args.model, args.threads)
    keys = refs + list(dev["key"]) + [k for k in REAL if (work / "maps" / f"{k}.npz").is_file()]
    maps = {}
    for k in keys:
        with np.load(work / "maps" / f"{k}.npz") as d:
            maps[k] = {
                "rmap": d["rmap"].astype(np.float32),
                "region": d["region"],
                "brain": d["brain"],
            }
    results = []
    for v in VARIANTS:
        results.append(evaluate(maps, refs, dev, *v))
        print(json.dumps(results[-1]), flush=True)
    n = {"references": len(refs), "dev_visits": len(dev)}
    args.out.write_text(
        json.dumps({"model": str(args.model), "n": n, "variants": results}, indent=1) + "\n"
    )
    print(pd.DataFrame(results).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
