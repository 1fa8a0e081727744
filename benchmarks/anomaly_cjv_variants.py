"""CJV as MRIQC computes it (tissue cores, medians and MADs) against ours, in the artefact score.

Until session 26 ``neurocast.anomaly.iqm`` computed the coefficient of joint variation from the
means and standard deviations of k-means tissue classes over the whole brain mask. MRIQC's
``StructuralQC`` takes the medians and MADs of tissue masks eroded once (3 x 3 x 3,
18-connectivity) when every voxel is finer than 1.9 mm. On the benchmark's cohorts the
whole-mask CJV is higher on skull-stripped healthy scans than on whole-head ones, which puts
skull-stripped healthy scans nearer the artefact threshold. This re-computes the CJV of the
references and of the development cohorts under six definitions and scores the development
visits' artefact score under each, re-calibrated on the references' residual maps (nothing is
reconstructed again):

* ``current``: mean and SD, whole classes over the whole mask (the package until session 26);
* ``robust``: median and MAD, whole classes;
* ``eroded``: mean and SD, classes eroded when voxels < 1.9 mm;
* ``mriqc``: median and MAD, classes eroded when voxels < 1.9 mm (MRIQC);
* ``mriqc_always``: median and MAD, classes always eroded;
* ``core``: mean and SD, classes found in the brain's core only, 3 mm inside the mask (the
  package since session 26, :func:`neurocast.anomaly.iqm.segment_tissues`). A skull-stripped
  scan's mask holds the CSF around the brain, which moved the whole-mask classes' GM/WM boundary.

``--stripped-dev`` adds the cohort the ``core`` variant was chosen on: ``devss``, 30 subjects
(seed 4242), all skull-stripped, 60 % of visits with motion of the three grades, no tumours.
It is simulated, preprocessed and its residual maps cached (``anomaly_normative_dev.py``'s
prior rule) when missing. Per variant the results also give the AUROCs among skull-stripped
visits only (motion against healthy). The recorded ``devss`` was simulated before session 27,
when skull-stripped subjects were acquired without their scalp; simulated anew it has the
current simulator's images (stripped after a whole-head acquisition).

It needs the N4-corrected native image and native brain mask of each scan, which the benchmark's
cache does not keep, so each scan is preprocessed again (one ITK thread, the benchmark's seed:
the ``current`` CJV reproduced the cached one exactly before session 26) into
``--work/full/native``.

Usage (on the cache of ``anomaly_benchmark.py`` and the residual maps of
``anomaly_normative_dev.py``)::

    python benchmarks/anomaly_cjv_variants.py --work W --model src/neurocast/weights/anomaly-demo \\
        --out benchmarks/anomaly_cjv_variants.json
    python benchmarks/anomaly_cjv_variants.py --work W --model src/neurocast/weights/anomaly-demo \\
        --stripped-dev --out benchmarks/anomaly_cjv_core.json  # session 26
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anomaly_benchmark as B
from anomaly_normative_dev import load_residual, residual_maps

VARIANTS = {
    "current": (False, "never", 0.0),
    "robust": (True, "never", 0.0),
    "eroded": (False, "fine", 0.0),
    "mriqc": (True, "fine", 0.0),
    "mriqc_always": (True, "always", 0.0),
    "core": (False, "never", 3.0),
}
"""Name -> (medians and MADs?, when the tissue classes are eroded, depth of the mask's rim left
out of the k-means in mm)."""
STRIPPED_DEV = ("devss", 30, 4242)
"""Name, subjects and seed of the skull-stripped development cohort (``--stripped-dev``)."""
FINE_MM = 1.9
"""MRIQC erodes the tissue masks when every voxel size is below this (mm)."""


def cache_native(item: tuple[str, str, Path]) -> str:
    """Preprocess one scan again and keep its native image and brain mask (``key`` back)."""
    key, source, out_dir = item
    out = out_dir / f"{key}.npz"
    if out.is_file():
        return key
    import torch

    from neurocast.registration.preprocess import preprocess_t1w
    from neurocast.registration.template import working_grid
    from neurocast.registration.threads import set_threads

    set_threads(1)
    torch.set_num_threads(1)
    r = preprocess_t1w(source, grid=working_grid(2.0), seed=0, on_fail="report")
    tmp = out.with_name(f".{key}.tmp.npz")
    np.savez_compressed(
        tmp,
        native=np.asarray(r.native.dataobj, np.float32),
        mask=np.asarray(r.native_brain_mask.dataobj) > 0,
        zooms=np.array(r.native.header.get_zooms()[:3], float),
    )
    tmp.replace(out)
    return key


def cjv_variant(native: Path, robust: bool, erode: str, core_mm: float) -> float:
    """The CJV of one cached native scan under one definition (see the module docstring)."""
    from neurocast.anomaly.iqm import robust_sd, segment_tissues

    with np.load(native) as d:
        x, brain, zooms = d["native"].astype(np.float64), d["mask"], d["zooms"]
    tissues = segment_tissues(x, brain, spacing=zooms, core_mm=core_mm)
    erode_now = erode == "always" or (erode == "fine" and bool(np.all(zooms < FINE_MM)))
    stats = {}
    for name, label in (("gm", 2), ("wm", 3)):
        mask = tissues == label
        if erode_now:
            core = ndi.binary_erosion(mask, ndi.generate_binary_structure(3, 2))
            mask = core if core.sum() >= 100 else mask
        v = x[mask]
        stats[name] = (
            (float(np.median(v)), robust_sd(v)) if robust else (float(v.mean()), float(v.std()))
        )
    return (stats["wm"][1] + stats["gm"][1]) / abs(stats["wm"][0] - stats["gm"][0])


def evaluate(work: Path, det0: Any, refs: list[str], groups: list[str], visits: list[tuple[str, str]],
             robust: bool, erode: str, core_mm: float) -> tuple[dict[str, Any], pd.DataFrame]:  # fmt: skip
    """Calibrate a copy of the detector with this CJV and score the visits' artefact score."""

    def inputs(key: str) -> tuple[np.ndarray, np.ndarray, Any]:
        rmap, region, iqms = load_residual(work, key)
        iqms = copy.deepcopy(iqms)
        iqms.values["cjv"] = cjv_variant(work / "native" / f"{key}.npz", robust, erode, core_mm)
        return rmap, region, iqms

    det = copy.deepcopy(det0)
    ref_inputs = [inputs(k) for k in refs]
    det.calibrate_residuals(*map(list, zip(*ref_inputs, strict=True)), groups=groups)
    rows = []
    for key, kind in visits:
        rmap, region, iqms = inputs(key)
        j = det.judge_residual(rmap, region, iqms)
        stripped = B.load_scan(work / "scans" / f"{key}.npz")[0].skull_stripped
        rows.append(dict(key=key, kind=kind, skull_stripped=stripped, cjv=iqms.values["cjv"],
                         artefact_score=j.artefact_score, flag=j.flag))  # fmt: skip
    df = pd.DataFrame(rows)
    healthy = df[df["kind"] == "healthy"]
    res: dict[str, Any] = {"artefact_threshold": det.calibration_.artefact_threshold}
    for sev in ("mild", "moderate", "severe"):
        mo = df[df["kind"] == f"motion_{sev}"]
        res[f"motion_auroc_{sev}"] = B.auroc(
            list(mo["artefact_score"]), list(healthy["artefact_score"])
        )
        res[f"motion_{sev}_review_artefact"] = (
            f"{int((mo['flag'] == 'review-artefact').sum())}/{len(mo)}"
        )
        ms = mo[mo["skull_stripped"].astype(bool)]
        hs = healthy[healthy["skull_stripped"].astype(bool)]
        if len(ms) and len(hs):
            res[f"motion_auroc_{sev}_skull_stripped"] = B.auroc(
                list(ms["artefact_score"]), list(hs["artefact_score"])
            )
    res["healthy_flagged"] = f"{int((healthy['flag'] != 'pass').sum())}/{len(healthy)}"
    for stripped, label in ((False, "whole_head"), (True, "skull_stripped")):
        h = healthy[healthy["skull_stripped"] == stripped]
        res[f"healthy_{label}_n"] = len(h)
        res[f"healthy_{label}_cjv_median"] = float(h["cjv"].median())
        res[f"healthy_{label}_artefact_score_median"] = float(h["artefact_score"].median())
    return res, df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="the anomaly benchmark's --work")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cohorts", nargs="+", default=["dev", "lrtrain"], help="cohorts scored")
    ap.add_argument("--jobs", type=int, default=2, help="scans preprocessed at once")
    ap.add_argument("--stripped-dev", action="store_true",
                    help="also score the skull-stripped development cohort (see the docstring)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from neurocast.anomaly import AnomalyDetector

    work = args.work / "full"
    (work / "native").mkdir(exist_ok=True)
    if args.stripped_dev:
        name, n, seed = STRIPPED_DEV
        B.prepared_cohort(work, name, n, seed, args.jobs, args.jobs, tumour_fraction=0.0,
                          artefact_fraction=0.6, skull_stripped_fraction=1.0, **B.MOTION_ONLY)  # fmt: skip
        residual_maps(work, args.model, args.jobs, scored=(name,))
        args.cohorts = [*args.cohorts, name]
    calib = B.simulate(work, "calib", 0, 0, 2.0, (2, 3))  # cached cohorts: reads the truth table
    refs = [f"calib_{r.participant_id}_{r.session_id}" for r in calib.itertuples()] + list(
        B.IXI_CALIB
    )
    groups = [k.split("_")[1] for k in refs[: len(calib)]] + list(B.IXI_CALIB)
    sources = dict(
        zip(
            refs,
            list(calib["path"]) + [str(B.DATA / "ixi" / f"{n}_ds.nii.gz") for n in B.IXI_CALIB],
            strict=True,
        )
    )
    visits = []
    for cohort in args.cohorts:
        v = B.simulate(work, cohort, 0, 0, 2.0, (2, 3))
        for r in v.itertuples():
            key = f"{cohort}_{r.participant_id}_{r.session_id}"
            if (work / "maps" / f"{key}.npz").is_file():
                visits.append(
                    (
                        key,
                        B.visit_group(r.tumour_present, r.artefact, r.artefact_severity)
                        or "tumour_and_motion",
                    )
                )
                sources[key] = r.path
    todo = [
        (k, s, work / "native")
        for k, s in sources.items()
        if not (work / "native" / f"{k}.npz").is_file()
    ]
    if todo:
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            for i, key in enumerate(pool.map(cache_native, todo), 1):
                print(f"native {i}/{len(todo)} {key}", flush=True)

    det0 = AnomalyDetector.load(args.model)
    results, tables = {}, []
    for name, (robust, erode, core_mm) in VARIANTS.items():
        results[name], df = evaluate(work, det0, refs, groups, visits, robust, erode, core_mm)
        tables.append(df.assign(variant=name))
        print(name, json.dumps(results[name]), flush=True)
    print(pd.DataFrame(results).T.to_string())
    if args.out:
        B.write_results(args.out, {
            "command": "python benchmarks/anomaly_cjv_variants.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "model": str(args.model), "cohorts": args.cohorts, "references": len(refs),
            "variants": results,
            "visits": pd.concat(tables, ignore_index=True).round(4).to_dict(orient="records"),
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
