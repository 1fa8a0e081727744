"""Benchmark of neurocast.anomaly against issue 6's figures, with the two baselines in the same run.

What it does (every stage caches its output under ``--work``, so a rerun only redoes what is new):

1. **Simulate** four cohorts with :func:`neurocast.simulate.simulate_cohort` (template anatomy):
   ``train`` (healthy visits: no tumour, no artefact), ``calib`` (healthy, another seed),
   ``lrtrain`` (motion artefacts, for the logistic-regression baseline only) and ``test`` (a new
   seed: tumours of several sizes in half of the subjects, TorchIO motion of graded severity in
   half of the visits, healthy visits otherwise). ``--test-seed`` and ``--test-subjects`` draw
   another test cohort with the same settings, to replicate the figures on new held-out subjects
   with the same model and calibration.
2. **Preprocess** every visit (:func:`neurocast.anomaly.prepare_scan`: N4, affine to the template,
   brain mask, normalisation, MRIQC metrics), and the shared real scans: the six healthy IXI
   adults (three for training, two for calibration, one held out) and the real glioblastoma at two
   times (``tumor_progression``; its header's 1 mm voxel size is a placeholder, we use
   ``--tumour-voxel-mm``, an estimate from head size: 0.82 x 0.82 x 6 mm).
3. **Train** :class:`neurocast.anomaly.AnomalyDetector` on the healthy ``train`` visits (later
   visits with the earlier one as prior; ``--more-train N`` adds N healthy subjects as cohort
   ``train2``) and the training IXI scans; **calibrate** on ``calib``
   and the calibration IXI scans at ``--fpr`` (5 %).
4. **Score** the test visits in time order per subject; the prior of a visit is the latest
   earlier visit of the subject that was flagged ``pass`` (as ``neurocast qa`` does). Also without
   prior, for comparison.
5. **Measure**: tumour image-level AUROC (tumour visits vs healthy visits), voxel-level AUPRC and
   Dice at the calibrated threshold (truth: the tumour label map in template space, core + rim +
   oedema), motion AUROC per severity (motion visits vs healthy visits), the false-positive rate on
   held-out healthy visits, the real scans, and time per scan. Baselines: (a) a voxel-wise
   z-score map ``|x - mean| / sd`` against the healthy training scans in template space, with
   the same post-processing, voxel threshold quantile and lesion score; (b) a logistic regression
   on the MRIQC metrics trained on the ``lrtrain`` cohort's artefact and healthy visits.

Run: ``python benchmarks/anomaly_benchmark.py --quick`` (a small smoke-size run on a 4 mm grid,
tens of minutes on 2 shared cores: its figures show the pipeline works, not what the method can
reach) or ``python benchmarks/anomaly_benchmark.py`` (the full size: 2 mm grid, larger cohorts,
longer training; hours on CPU). With a GPU on another machine, split it::

    python benchmarks/anomaly_benchmark.py --jobs 2 --export-training bundle.npz   # CPU
    bash benchmarks/anomaly_train_gpu.sh bundle.npz models 6.5                     # GPU
    python benchmarks/anomaly_benchmark.py --jobs 2 --model models/small           # CPU

Results go to ``--work/results.json`` (``results-NAME.json`` for ``--model .../NAME``) and are
printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.ndimage as ndi

HERE = Path(__file__).resolve().parent
DATA = (
    Path(os.environ.get("NEUROCAST_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "real"
)
IXI_TRAIN = ("IXI012-HH-1211-T1", "IXI013-HH-1212-T1", "IXI014-HH-1236-T1")
IXI_CALIB = ("IXI015-HH-1258-T1", "IXI033-HH-1259-T1")
# real healthy scans used neither for training nor for calibration: the held-out IXI adult and
# another scanner's healthy adult (chris_t1: 0.88 mm, uint8)
REAL_HEALTHY_HELDOUT = {
    "IXI034-HH-1260-T1": "ixi/IXI034-HH-1260-T1_ds.nii.gz",
    "chris_t1": "chris_t1/chris_t1.nii.gz",
}

TUMOUR_DEV_SUBJECTS = 24
TUMOUR_DEV_SEEDS = (707, 909)
"""Subjects and seed offsets of the tumour development cohorts ``dev2``, ``dev3`` (``--tumour-dev``).
``dev2``'s seed is also ``anomaly_fpr.py``'s ``healthy3`` (``MORE_HEALTHY_SEED``), so the two
share subjects' anatomy and acquisitions: do not pool ``healthy3`` into a false-positive figure
for a setting chosen on ``dev2`` (session 22 chose the lesion score on ``dev2`` without
``healthy3`` in the pool)."""
TRAIN_COHORTS = ("train", "train2")  # train2: the ``--more-train`` subjects

SIZES = {
    "quick": dict(
        grid=4.0, train=4, calib=3, lrtrain=3, test=6, dev=4, visits=(2, 2), steps=300, batch=16,
        channels=(16, 32, 64),
    ),
    "full": dict(
        grid=2.0, train=20, calib=10, lrtrain=10, test=30, dev=16, visits=(2, 3), steps=4000, batch=16,
        channels=(32, 64, 64),
    ),
}  # fmt: skip


MOTION_ONLY: dict[str, Any] = {
    "artefact_types": {"motion": 1.0},
    "artefact_severities": {"mild": 1 / 3, "moderate": 1 / 3, "severe": 1 / 3},
}
"""Simulation settings of the cohorts with artefacts: motion only, the three grades equally often."""
LEVEL_SCALING_TAGS = {"model": "", "on": "-levels", "off": "-nolevels"}
"""``--level-scaling`` choices and the tag each adds to a results file name."""


def add_level_scaling_option(ap: argparse.ArgumentParser) -> None:
    """``--level-scaling model|on|off``: the detector's ``level_scaling`` as its model card says,
    or forced on or off."""
    ap.add_argument("--level-scaling", choices=tuple(LEVEL_SCALING_TAGS), default="model",
                    help="the detector's level_scaling: as the model card says (default), or "
                         "forced on or off (results files tagged -levels / -nolevels)")  # fmt: skip


def apply_level_scaling(det: Any, choice: str) -> Any:
    """Set ``det.level_scaling`` from a ``--level-scaling`` choice (``model``: leave it)."""
    if choice != "model":
        det.level_scaling = choice == "on"
    return det


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write a cache script's results as JSON (one-space indent, numpy numbers as floats)."""
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")


def cache_script_args(doc: str, argv: list[str] | None, out: str | None = None,
                      more: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:  # fmt: skip
    """The command line of a script that reads this benchmark's cache: ``--work`` (required) and,
    with ``out`` (a JSON file name in benchmarks/), ``--model`` (required), ``--threads`` and ``--out``;
    ``more`` adds the script's own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="the anomaly benchmark's --work folder")
    if out is not None:
        ap.add_argument("--model", type=Path, required=True, help="a trained anomaly model folder")
        ap.add_argument("--threads", type=int, default=2)
        ap.add_argument("--out", type=Path, default=HERE / out)
    if more is not None:
        more(ap)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# data


def simulate(work: Path, name: str, n: int, seed: int, grid: float, visits, **changes) -> pd.DataFrame:
    """Simulate (or reuse) one cohort; return its truth visits table with raw paths."""
    from neurocast.simulate import SimulationConfig, simulate_cohort

    root = work / "cohorts" / name
    table = root / "derivatives" / "neurocast-truth" / "visits.tsv"
    if not table.is_file():
        cfg = SimulationConfig(grid_spacing_mm=grid, field_spacing_mm=max(4.0, 2 * grid),
                               n_visits=tuple(visits), **changes)  # fmt: skip
        simulate_cohort(root, n, seed=seed, config=cfg, progress=False)
    v = pd.read_csv(table, sep="\t", keep_default_na=False, na_values=["n/a"])
    v["path"] = [
        str(root / p / s / "anat" / f"{p}_{s}_T1w.nii.gz")
        for p, s in zip(v["participant_id"], v["session_id"], strict=True)
    ]
    res = f"{grid:g}".replace(".", "p")
    v["tumour_truth"] = [
        str(root / "derivatives" / "neurocast-truth" / p / s / "anat"
            / f"{p}_{s}_space-MNI152NLin2009aSym_res-{res}_desc-tumour_dseg.nii.gz")
        for p, s in zip(v["participant_id"], v["session_id"], strict=True)
    ]  # fmt: skip
    v["cohort"] = name
    v["tumour_present"] = v["tumour_present"].astype(str).str.lower() == "true"
    return v


def save_scan(path: Path, scan: Any, seconds: float) -> None:
    """Write one preprocessed scan to the cache (atomically: an interrupted run leaves no
    half-written file for the next run to trip on)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        image=scan.image,
        brain_mask=scan.brain_mask,
        grid_affine=scan.grid.affine,
        native_to_template=scan.native_to_template,
        native_affine=scan.native_affine,
        native_shape=np.asarray(scan.native_shape),
        meta=json.dumps({
            "iqms": scan.iqms.to_dict() if scan.iqms else None,
            "skull_stripped": scan.skull_stripped, "source": scan.source,
            "seconds": seconds, "qc_seconds": scan.qc.get("seconds", {}),
            "qc_passed": bool(scan.qc.get("passed", True)),
        }),
    )  # fmt: skip
    os.replace(tmp, path)


def load_scan(path: Path) -> tuple[Any, dict]:
    from neurocast.anomaly import IQMResult, Scan
    from neurocast.registration.template import Grid

    d = np.load(path)
    meta = json.loads(str(d["meta"]))
    grid = Grid(tuple(int(s) for s in d["image"].shape), d["grid_affine"])  # type: ignore[arg-type]
    scan = Scan(
        d["image"], d["brain_mask"], grid,
        native_to_template=d["native_to_template"], native_affine=d["native_affine"],
        native_shape=tuple(int(s) for s in d["native_shape"]),  # type: ignore[arg-type]
        iqms=IQMResult.from_dict(meta["iqms"]) if meta["iqms"] else None,
        skull_stripped=meta["skull_stripped"], source=meta["source"],
        qc={"passed": meta.get("qc_passed", True)},
    )  # fmt: skip
    return scan, meta


def prepared(work: Path, key: str, image: Any, grid: Any, seed: int) -> tuple[Any, dict]:
    """Preprocess (or reuse) one scan; ``meta["seconds"]`` is preprocessing + IQM time."""
    from neurocast.anomaly import prepare_scan

    cache = work / "scans" / f"{key}.npz"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        scan = prepare_scan(image, grid=grid, seed=seed, on_fail="report")
        save_scan(cache, scan, time.perf_counter() - t0)
    return load_scan(cache)


def real_tumour_image(name: str, voxel_mm: tuple[float, float, float]) -> nib.Nifti1Image:
    """A tumor_progression image with the estimated voxel size instead of the 1 mm placeholder."""
    img = nib.load(str(DATA / "tumor_progression" / f"{name}.nii.gz"))
    aff = img.affine.copy()
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    aff[:3, :3] = aff[:3, :3] / zooms * np.asarray(voxel_mm)
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), aff)


def _init_worker(threads: int) -> None:
    """Thread counts of a preprocessing worker (before ITK runs in it)."""
    import torch

    from neurocast.registration.threads import set_threads

    set_threads(threads)
    torch.set_num_threads(threads)


def _prepare_one(work: Path, key: str, source: Any, *, grid_mm: float, seed: int,
                 tumour_voxel_mm: tuple[float, float, float]) -> tuple[str, float, str | None]:
    """Preprocess one scan into the cache; ``(key, seconds, error)``."""
    from neurocast.registration.template import working_grid

    try:
        image = real_tumour_image(source[1], tumour_voxel_mm) if isinstance(source, tuple) else source
        _, meta = prepared(work, key, image, working_grid(grid_mm), seed)
        return key, meta["seconds"], None
    except Exception as exc:  # a failed registration is reported, not fatal
        return key, float("nan"), f"{type(exc).__name__}: {exc}"


def prepare_all(work: Path, jobs: dict[str, Any], grid_mm: float, seed: int, threads: int,
                n_jobs: int, tumour_voxel_mm: tuple[float, float, float], log: Any) -> dict[str, tuple[Any, dict]]:
    """Preprocess (or reuse) every scan of ``jobs`` (key -> path, or ("tumour", name)).

    With ``n_jobs > 1`` scans are preprocessed in that many spawned processes, each with
    ``max(1, threads // n_jobs)`` threads. Returns key -> (scan, meta) for the scans that worked.
    """
    import functools
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    todo = [k for k in jobs if not (work / "scans" / f"{k}.npz").is_file()]
    if todo:
        log(f"preprocessing {len(todo)} scans ({n_jobs} at a time)")
        one = functools.partial(_prepare_one, work, grid_mm=grid_mm, seed=seed, tumour_voxel_mm=tumour_voxel_mm)
        with contextlib.ExitStack() as stack:
            mapper = map
            if n_jobs > 1:
                pool = stack.enter_context(ProcessPoolExecutor(
                    n_jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                    initargs=(max(1, threads // n_jobs),)))  # fmt: skip
                mapper = pool.map
            for i, (key, secs, err) in enumerate(mapper(one, todo, [jobs[k] for k in todo]), 1):
                log(f"  {i}/{len(todo)} {key}: " + (f"failed: {err}" if err else f"{secs:.1f} s"))
    return {k: load_scan(work / "scans" / f"{k}.npz") for k in jobs if (work / "scans" / f"{k}.npz").is_file()}


def prepared_cohort(work: Path, name: str, n: int, seed: int, threads: int, n_jobs: int, **settings: Any) -> pd.DataFrame:
    """Simulate (or reuse) ``n`` subjects as cohort ``name`` (2 mm, 2-3 visits) and preprocess (or
    reuse) their visits; return the visits table with a ``key`` column
    (cohort_participant_session). ``settings`` are :class:`~neurocast.simulate.SimulationConfig`
    settings."""
    v = simulate(work, name, n, seed, 2.0, (2, 3), **settings)
    v["key"] = [f"{name}_{p}_{s}" for p, s in zip(v["participant_id"], v["session_id"], strict=True)]
    prepare_all(work, dict(zip(v["key"], v["path"], strict=True)), 2.0, 0, threads, n_jobs,
                (0.82, 0.82, 6.0), lambda m: print(m, flush=True))  # fmt: skip
    return v


def healthy_cohort(work: Path, name: str, n: int, seed: int, threads: int, n_jobs: int, **changes: Any) -> pd.DataFrame:
    """:func:`prepared_cohort` of healthy subjects (no tumours, no artefacts); ``changes`` are
    further :class:`~neurocast.simulate.SimulationConfig` settings."""
    return prepared_cohort(work, name, n, seed, threads, n_jobs, tumour_fraction=0.0, artefact_fraction=0.0, **changes)


def _portable_card(det: Any, work: Path) -> None:
    """Name the training and calibration scans relative to ``work`` (or the shared data folder)
    in the model card, not by this machine's absolute paths."""

    def rel(path: str) -> str:
        for base, tag in ((work, "benchmark"), (DATA, "shared/data/real")):
            try:
                return f"{tag}/{Path(path).resolve().relative_to(base.resolve())}"
            except ValueError:
                continue
        return path

    summary = det.training_.get("data_summary", {})
    if "sources" in summary:
        summary["sources"] = [rel(s) for s in summary["sources"]]
    refs = det.calibration_.extra.get("references")
    if refs:
        det.calibration_.extra["references"] = [rel(s) for s in refs]


# ------------------------------------------------------------------------------------------------
# metrics


def auroc(pos: list[float], neg: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    pos = [p for p in pos if math.isfinite(p)]
    neg = [n for n in neg if math.isfinite(n)]
    if not pos or not neg:
        return float("nan")
    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg))


def subject_bootstrap_interval(values: Any, subjects: Any, n: int = 2000, seed: int = 0) -> list[float]:
    """95 % interval of the mean of ``values``, resampling subjects (a subject's visits together)."""
    frame = pd.DataFrame({"v": np.asarray(values, float), "s": list(subjects)}).dropna()
    groups = [g["v"].to_numpy() for _, g in frame.groupby("s")]
    if not groups:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = [np.mean(np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))]))
             for _ in range(n)]  # fmt: skip
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def visit_group(tumour_present: Any, artefact: Any, severity: Any) -> str | None:
    """``tumour``, ``motion_<severity>`` or ``healthy``; ``None`` for a visit with both a tumour
    and motion (left out of the per-kind figures)."""
    motion = str(artefact) == "motion"
    if tumour_present and motion:
        return None
    return "tumour" if tumour_present else f"motion_{severity}" if motion else "healthy"


def caught(group: str, flag: str) -> bool:
    """Whether a visit of ``group`` counts as flagged: a motion visit when flagged
    ``review-artefact``, any other when flagged at all."""
    return flag == "review-artefact" if group.startswith("motion") else flag != "pass"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


class ZScoreBaseline:
    """Baseline (a): voxel-wise ``|x - mean| / sd`` against healthy template-space images."""

    def __init__(self, scans: list[Any], erosion_mm: float, median_size: int) -> None:
        stack = np.stack([s.image for s in scans])
        self.mean = stack.mean(axis=0)
        sd = stack.std(axis=0)
        self.sd = np.maximum(sd, np.percentile(sd[sd > 0], 10) if np.any(sd > 0) else 1.0)
        self.erosion_mm, self.median_size = erosion_mm, median_size

    def map(self, scan: Any) -> np.ndarray:
        from neurocast.anomaly.maps import anomaly_map

        z = np.abs(scan.image - self.mean) / self.sd
        return anomaly_map(z, scan.brain_mask, spacing=scan.grid.spacing_mm,
                           erosion_mm=self.erosion_mm, median_size=self.median_size)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke-size run (4 mm grid)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/neurocast-anomaly-benchmark"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default by size)")
    ap.add_argument("--fpr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tumour-voxel-mm", type=float, nargs=3, default=(0.82, 0.82, 6.0))
    ap.add_argument("--noise-levels", type=float, nargs="+", default=None)
    ap.add_argument("--inference-steps", type=int, default=None)
    ap.add_argument("--grow-quantile", type=float, default=0.99,
                    help="healthy quantile the mask's clusters grow into (0: no growth)")  # fmt: skip
    ap.add_argument("--mask-dilation-mm", type=float, default=2.0,
                    help="radius the mask is dilated by inside the brain, mm (0: none)")  # fmt: skip
    ap.add_argument("--no-real", action="store_true", help="skip the shared real scans")
    ap.add_argument("--jobs", type=int, default=1,
                    help="preprocess this many scans at once (threads are shared out among them)")
    ap.add_argument("--export-training", type=Path, default=None, metavar="BUNDLE",
                    help="preprocess the training scans, write them as a bundle for "
                         "anomaly_train.py (e.g. on a GPU machine) and stop")
    ap.add_argument("--more-train", type=int, default=0, metavar="N",
                    help="simulate N more healthy training subjects (cohort ``train2``, seed "
                         "+808) whose visits join the training scans (and the bundle)")
    ap.add_argument("--prepare-only", action="store_true",
                    help="simulate and preprocess every scan into the cache, then stop")
    ap.add_argument("--dev", action="store_true",
                    help="also simulate and preprocess a development cohort (``dev``: the test "
                         "cohort's settings at another seed) for choosing methods without "
                         "touching the test cohort; it is cached and not scored here")
    ap.add_argument("--tumour-dev", type=int, default=0, metavar="N", choices=range(len(TUMOUR_DEV_SEEDS) + 1),
                    help="also simulate and preprocess N tumour development cohorts (``dev2``, "
                         "``dev3``: 24 subjects each, seeds +707 and +909, tumours in 60 %% of "
                         "subjects, no artefacts) for choosing and then checking how tumours are "
                         "scored; cached and not scored here")
    ap.add_argument("--residual-map", action="store_true",
                    help="calibrate and score on the residual map, without the voxel-wise "
                         "standardisation against the references (the detector before 2026-12-06)")
    ap.add_argument("--test-seed", type=int, default=None,
                    help="simulate the test cohort at this seed instead of --seed + 404 (a "
                         "replication on new held-out subjects; cohort and result files are "
                         "then named test-sSEED-nN)")
    ap.add_argument("--test-subjects", type=int, default=None,
                    help="subjects in the test cohort (default by size: 30 full, 6 quick)")
    add_level_scaling_option(ap)
    ap.add_argument("--model", type=Path, default=None,
                    help="use this trained model folder (e.g. from anomaly_train.py) instead of "
                         "training one; it is calibrated here")
    args = ap.parse_args(argv)

    import torch

    from neurocast.anomaly import AnomalyDetector
    from neurocast.anomaly.calibration import voxel_threshold_from_maps
    from neurocast.anomaly.maps import dilated_mask, eroded_mask, grown_mask, threshold_map
    from neurocast.anomaly.model import native_map
    from neurocast.anomaly.scores import lesion_score
    from neurocast.registration.template import working_grid
    from neurocast.registration.threads import set_threads
    from neurocast.registration.transforms import resample

    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else "full"]
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    grid = working_grid(size["grid"])
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)  # noqa: E731

    # 1. cohorts
    healthy = dict(tumour_fraction=0.0, artefact_fraction=0.0)
    test_seed = args.seed + 404 if args.test_seed is None else args.test_seed
    test_n = size["test"] if args.test_subjects is None else args.test_subjects
    replication = args.test_seed is not None or args.test_subjects is not None
    test_name = f"test-s{test_seed}-n{test_n}" if replication else "test"
    train_cohort = simulate(work, "train", size["train"], args.seed + 101, size["grid"], size["visits"], **healthy)
    if args.more_train:
        train_cohort = pd.concat([train_cohort, simulate(
            work, "train2", args.more_train, args.seed + 808, size["grid"], size["visits"], **healthy
        )], ignore_index=True)  # fmt: skip
    cohorts = train_cohort if args.export_training else pd.concat([
        train_cohort,
        simulate(work, "calib", size["calib"], args.seed + 202, size["grid"], size["visits"], **healthy),
        simulate(work, "lrtrain", size["lrtrain"], args.seed + 303, size["grid"], size["visits"],
                 tumour_fraction=0.0, artefact_fraction=0.6, **MOTION_ONLY),
        simulate(work, test_name, test_n, test_seed, size["grid"], size["visits"],
                 tumour_fraction=0.5, artefact_fraction=0.5, **MOTION_ONLY),
    ] + ([simulate(work, "dev", size["dev"], args.seed + 505, size["grid"], size["visits"],
                   tumour_fraction=0.5, artefact_fraction=0.5, **MOTION_ONLY)] if args.dev else [])
      + [simulate(work, f"dev{i + 2}", TUMOUR_DEV_SUBJECTS, args.seed + TUMOUR_DEV_SEEDS[i], size["grid"],
                  size["visits"], tumour_fraction=0.6, artefact_fraction=0.0) for i in range(args.tumour_dev)],
        ignore_index=True)  # fmt: skip
    log(f"cohorts ready: {len(cohorts)} visits")

    # 2. preprocessing (only what training needs when exporting the training bundle)
    cohorts["key"] = [f"{r.cohort}_{r.participant_id}_{r.session_id}" for r in cohorts.itertuples()]
    if args.export_training:
        cohorts = cohorts[cohorts["cohort"].isin(TRAIN_COHORTS)].reset_index(drop=True)
    jobs: dict[str, Any] = dict(zip(cohorts["key"], cohorts["path"], strict=True))
    real_keys: dict[str, str] = {}
    if not args.no_real:
        ixi = IXI_TRAIN if args.export_training else IXI_TRAIN + IXI_CALIB
        for name in ixi:
            jobs[name] = str(DATA / "ixi" / f"{name}_ds.nii.gz")
            real_keys[name] = name
        if not args.export_training:
            for name, rel in REAL_HEALTHY_HELDOUT.items():
                jobs[name] = str(DATA / rel)
                real_keys[name] = name
        if not args.export_training:
            for name in ("Pre_Scan_T1", "Post_Scan_T1"):
                jobs[f"tumour_{name}"] = ("tumour", name)
                real_keys[name] = f"tumour_{name}"
    done = prepare_all(work, jobs, size["grid"], args.seed, args.threads, args.jobs, tuple(args.tumour_voxel_mm), log)
    scans: dict[str, Any] = {k: v[0] for k, v in done.items() if k in cohorts["key"].values}
    seconds: dict[str, float] = {k: v[1]["seconds"] for k, v in done.items()}
    cohorts = cohorts[cohorts["key"].isin(scans)].reset_index(drop=True)
    real: dict[str, Any] = {name: done[key][0] for name, key in real_keys.items() if key in done}
    seconds.update({name: done[key][1]["seconds"] for name, key in real_keys.items() if key in done})
    log(f"preprocessed {len(scans)} simulated and {len(real)} real scans")
    if args.prepare_only:
        return 0

    def with_priors(table: pd.DataFrame, participants: list[str] | None = None) -> list[Any]:
        """The table's scans in time order, each with its previous scan as prior; ``participants``
        (if given) receives each returned scan's participant."""
        out = []
        # by cohort too: the cohorts reuse participant labels (train and train2 both have sub-001)
        by_subject = table.sort_values(["participant_id", "visit_index"]).groupby(["cohort", "participant_id"])
        for (_, pid), g in by_subject:
            prev = None
            for key in g["key"]:
                if not scans[key].qc.get("passed", True):  # never train or calibrate on a failure
                    prev = None
                    continue
                out.append(scans[key].with_prior(prev) if prev is not None else scans[key])
                if participants is not None:
                    participants.append(str(pid))
                prev = scans[key]
        return out

    # 3. train and calibrate
    tag = (f"-{args.model.name}" if args.model is not None else "") + ("-residual" if args.residual_map else "")
    tag += LEVEL_SCALING_TAGS[args.level_scaling]
    model_dir = work / f"model{tag}"
    if replication:  # the model and its calibration are shared; the test's files are not
        tag += f"-{test_name}"
    kw = {}
    if args.noise_levels:
        kw["noise_levels"] = tuple(args.noise_levels)
    if args.inference_steps:
        kw["num_inference_steps"] = args.inference_steps
    kw["grow_quantile"] = args.grow_quantile if args.grow_quantile > 0 else None
    kw["mask_dilation_mm"] = args.mask_dilation_mm
    train_scans = with_priors(cohorts[cohorts["cohort"].isin(TRAIN_COHORTS)]) + [real[n] for n in IXI_TRAIN if n in real]
    calib_groups: list[str] = []  # each reference is scored against the other participants'
    calib_scans = with_priors(cohorts[cohorts["cohort"] == "calib"], calib_groups) + [real[n] for n in IXI_CALIB if n in real]
    calib_groups += [n for n in IXI_CALIB if n in real]
    steps = args.steps or size["steps"]
    if args.export_training:
        from anomaly_train import write_bundle

        write_bundle(train_scans, args.export_training)
        log(f"wrote {len(train_scans)} training scans to {args.export_training}")
        return 0
    if args.model is not None:
        import shutil

        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.copytree(args.model, model_dir)
    if (model_dir / "model_card.json").is_file():
        det = AnomalyDetector.load(model_dir)
        for k, v in kw.items():
            setattr(det, k, v)
        steps = det.training_.get("steps", steps)
        log(f"reusing the trained model in {model_dir} ({steps} steps)")
    else:
        t0 = time.perf_counter()
        det = AnomalyDetector(channels=size["channels"], n_steps=steps, batch_size=size["batch"],
                              seed=args.seed, fpr=args.fpr, progress=False, **kw)  # fmt: skip
        det.fit(train_scans, data_summary={"benchmark": "anomaly", "quick": args.quick})
        train_seconds = time.perf_counter() - t0
        det.save(model_dir)
        log(f"trained {steps} steps in {train_seconds:.0f} s; loss {det.history_[-1]['loss']:.4f}")
    det.normative = not args.residual_map
    apply_level_scaling(det, args.level_scaling)
    det.calibrate(calib_scans, fpr=args.fpr, groups=calib_groups)
    _portable_card(det, work)
    det.save(model_dir)  # with its calibration: usable by `neurocast qa --model`
    cal = det.calibration_
    log(f"calibrated on {len(calib_scans)} scans: lesion > {cal.lesion_threshold:.3g}, "
        f"artefact > {cal.artefact_threshold:.3g}, voxel > {cal.voxel_threshold:.3g}")  # fmt: skip

    # 4. score the test visits (prior = latest earlier visit flagged pass)
    test = cohorts[cohorts["cohort"] == test_name].sort_values(["participant_id", "visit_index"])
    rows = []
    maps: dict[str, np.ndarray] = {}
    for _, g in test.groupby("participant_id"):
        prior = None
        for r in g.itertuples():
            scan = scans[r.key]
            t0 = time.perf_counter()
            res = det.score(scan.with_prior(prior) if prior is not None else scan)
            score_s = time.perf_counter() - t0
            res0 = det.score(scan, use_prior=False) if prior is not None else res
            qc_ok = bool(scan.qc.get("passed", True))
            if res.flag == "pass" and qc_ok:
                prior = scan
            maps[r.key] = res.anomaly_map
            kind = ("tumour" if r.tumour_present else "motion" if r.artefact == "motion" else "healthy")
            rows.append(dict(
                key=r.key, kind=kind, severity=r.artefact_severity if kind == "motion" else None,
                tumour_and_motion=bool(r.tumour_present and r.artefact == "motion"),
                skull_stripped=bool(scan.skull_stripped), used_prior=res.used_prior, qc_passed=qc_ok,
                lesion=res.lesion_score, artefact=res.artefact_score, flag=res.flag,
                largest_share=res.largest_share,
                lesion_noprior=res0.lesion_score, artefact_noprior=res0.artefact_score,
                flag_noprior=res0.flag, score_seconds=score_s, dice=float("nan"),
            ))  # fmt: skip
            if r.tumour_present and os.path.isfile(r.tumour_truth):
                truth = np.asarray(nib.load(r.tumour_truth).dataobj) > 0
                rows[-1]["dice"] = dice(res.mask, truth)
                rows[-1]["truth_ml"] = float(truth.sum() * grid.voxel_volume_mm3 / 1000)
    df = pd.DataFrame(rows)
    df.to_csv(work / f"test_scores{tag}.tsv", sep="\t", index=False)
    log(f"scored {len(df)} test visits")

    # 5. metrics
    res: dict[str, Any] = {"size": "quick" if args.quick else "full", "steps": steps,
                           "test_cohort": test_name, "test_seed": test_seed, "test_subjects": test_n,
                           "grid_mm": size["grid"], "detector": det.get_params(),
                           "calibration": {k: getattr(cal, k) for k in ("fpr", "lesion_threshold",
                           "artefact_threshold", "voxel_threshold", "n_references")}}  # fmt: skip
    pure = df[~df["tumour_and_motion"]]
    hl = pure[pure["kind"] == "healthy"]
    tu = pure[pure["kind"] == "tumour"]
    res["n"] = {"healthy": len(hl), "tumour": len(tu),
                **{f"motion_{s}": int(((pure["kind"] == "motion") & (pure["severity"] == s)).sum())
                   for s in ("mild", "moderate", "severe")}}  # fmt: skip
    res["tumour_auroc"] = auroc(list(tu["lesion"]), list(hl["lesion"]))
    res["tumour_auroc_noprior"] = auroc(list(tu["lesion_noprior"]), list(hl["lesion_noprior"]))
    res["tumour_dice_mean"] = float(np.nanmean(tu["dice"])) if len(tu) else float("nan")
    res["tumour_dice_mean_95ci"] = subject_bootstrap_interval(tu["dice"], tu["key"].str.split("_ses-").str[0])
    both = df[df["tumour_and_motion"]]
    res["tumour_and_motion_dice_mean"] = float(np.nanmean(both["dice"])) if len(both) else float("nan")
    res["fpr_healthy"] = float(np.mean(hl["flag"] != "pass")) if len(hl) else float("nan")
    res["fpr_healthy_noprior"] = float(np.mean(hl["flag_noprior"] != "pass")) if len(hl) else float("nan")
    for s in ("mild", "moderate", "severe"):
        mo = pure[(pure["kind"] == "motion") & (pure["severity"] == s)]
        res[f"motion_auroc_{s}"] = auroc(list(mo["artefact"]), list(hl["artefact"]))

    # voxel-level AUPRC of the detector and of baseline (a)
    from sklearn.metrics import average_precision_score

    zb = ZScoreBaseline([s for s in train_scans], det.erosion_mm, det.median_size)
    zmaps_cal = [zb.map(s) for s in calib_scans]
    regions = [eroded_mask(s.brain_mask, det.erosion_mm, s.grid.spacing_mm) for s in calib_scans]
    z_thr = voxel_threshold_from_maps(zmaps_cal, regions, det.voxel_quantile)
    # the detector's mask post-processing (clusters grown at a lower quantile) on (a) too
    z_grow = voxel_threshold_from_maps(zmaps_cal, regions, det.grow_quantile) if det.grow_quantile else float("nan")
    min_vox = det._min_voxels()
    vv = grid.voxel_volume_mm3
    z_cal_scores = [lesion_score(m, z_thr, min_voxels=min_vox, voxel_volume_mm3=vv) for m in zmaps_cal]
    z_les_thr = float(np.quantile(z_cal_scores, 1 - args.fpr, method="weibull"))
    # voxels of the tumour visits: pure ones (the per-kind figures) and those with motion too
    yv, sv, zv = {False: [], True: []}, {False: [], True: []}, {False: [], True: []}
    zrows = []
    for r in test.itertuples():
        z = zb.map(scans[r.key])
        zs = lesion_score(z, z_thr, min_voxels=min_vox, voxel_volume_mm3=vv)
        row = {"key": r.key, "z_lesion": zs, "z_dice": float("nan"), "z_dice_grown": float("nan")}
        if r.tumour_present and os.path.isfile(r.tumour_truth):
            truth = np.asarray(nib.load(r.tumour_truth).dataobj) > 0
            brain = scans[r.key].brain_mask
            with_motion = r.artefact == "motion"
            yv[with_motion].append(truth[brain])
            sv[with_motion].append(maps[r.key][brain])
            zv[with_motion].append(z[brain])
            row["z_dice"] = dice(threshold_map(z, z_thr, min_vox), truth)
            z_mask = grown_mask(z, z_thr, z_grow, min_vox)
            row["z_dice_grown"] = dice(z_mask, truth)
            # and dilated as the detector's mask is
            row["z_dice_dilated"] = dice(dilated_mask(z_mask, det.mask_dilation_mm, grid.spacing_mm, brain), truth)
        zrows.append(row)
    zdf = df.merge(pd.DataFrame(zrows), on="key")
    zp = zdf[~zdf["tumour_and_motion"]]
    res["baseline_z_tumour_auroc"] = auroc(list(zp[zp["kind"] == "tumour"]["z_lesion"]),
                                           list(zp[zp["kind"] == "healthy"]["z_lesion"]))  # fmt: skip
    res["baseline_z_tumour_dice_mean"] = float(np.nanmean(zp[zp["kind"] == "tumour"]["z_dice"])) if len(tu) else float("nan")
    res["baseline_z_tumour_dice_mean_grown"] = float(np.nanmean(zp[zp["kind"] == "tumour"]["z_dice_grown"])) if len(tu) else float("nan")
    res["baseline_z_tumour_dice_mean_dilated"] = float(np.nanmean(zp[zp["kind"] == "tumour"]["z_dice_dilated"])) if len(tu) else float("nan")
    res["baseline_z_fpr_healthy"] = float(np.mean(zp[zp["kind"] == "healthy"]["z_lesion"] > z_les_thr)) if len(hl) else float("nan")
    # the tumour visits without motion, as the AUROC and the Dice (until 2026-12-07 this pooled
    # the visits with motion too: that figure is now *_incl_motion)
    for suffix, parts in (("", (False,)), ("_incl_motion", (False, True))):
        if not any(yv[b] for b in parts):
            continue
        y = np.concatenate([a for b in parts for a in yv[b]])
        res[f"tumour_voxel_auprc{suffix}"] = float(average_precision_score(y, np.concatenate([a for b in parts for a in sv[b]])))
        res[f"baseline_z_voxel_auprc{suffix}"] = float(average_precision_score(y, np.concatenate([a for b in parts for a in zv[b]])))
        res[f"voxel_prevalence{suffix}"] = float(y.mean())

    # baseline (b): logistic regression on the IQMs, trained on the lrtrain cohort
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from neurocast.anomaly.iqm import MRIQC_METRICS  # MRIQC's own set: not the ghost ratio

    def iqm_row(key: str) -> list[float]:
        q = scans[key].iqms
        return [q.get(m) if q is not None else float("nan") for m in MRIQC_METRICS] + [float(bool(scans[key].skull_stripped))]

    lr_tab = cohorts[cohorts["cohort"].isin(["lrtrain", "calib"])]
    Xtr = np.array([iqm_row(k) for k in lr_tab["key"]], dtype=float)
    ytr = np.array([a == "motion" for a in lr_tab["artefact"]], dtype=int)
    Xtr = np.where(np.isfinite(Xtr), Xtr, np.nan)
    if len(set(ytr)) == 2:
        lr = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                           LogisticRegression(max_iter=2000, C=1.0))  # fmt: skip
        lr.fit(Xtr, ytr)
        p = lr.predict_proba(np.array([iqm_row(k) for k in df["key"]], dtype=float))[:, 1]
        df["lr_motion"] = p
        pure = df[~df["tumour_and_motion"]]
        for s in ("mild", "moderate", "severe"):
            mo = pure[(pure["kind"] == "motion") & (pure["severity"] == s)]
            res[f"baseline_lr_motion_auroc_{s}"] = auroc(list(mo["lr_motion"]),
                                                         list(pure[pure["kind"] == "healthy"]["lr_motion"]))  # fmt: skip

    # real scans
    if real:
        for name in REAL_HEALTHY_HELDOUT:
            if name not in real:
                continue
            r = det.score(real[name])
            res[f"real_{name}_flag"] = r.flag
            res[f"real_{name}_lesion_score"] = r.lesion_score
            res[f"real_{name}_artefact_score"] = r.artefact_score
            res[f"real_{name}_lesion_percentile"] = r.lesion_percentile
        for name, prior in (("Pre_Scan_T1", None), ("Post_Scan_T1", None), ("Post_Scan_T1", "Pre_Scan_T1")):
            if name not in real or (prior and prior not in real):
                continue
            scan = real[name].with_prior(real[prior]) if prior else real[name]
            r = det.score(scan)
            key = f"real_{name}" + (f"_prior-{prior}" if prior else "")
            mimg = real_tumour_image(name.replace("Scan_T1", "Mask"), tuple(args.tumour_voxel_mm))
            # the scan's native grid is the input reoriented to RAS+ (same world, other voxel
            # order), so the truth is brought onto it through world coordinates
            truth = resample(np.asarray(mimg.dataobj, np.float32), mimg.affine, scan.native_shape,
                             scan.native_affine, order=0) > 0  # fmt: skip
            nmask = resample(r.mask.astype(np.float32), scan.grid.affine, scan.native_shape,
                             scan.native_affine, scan.native_to_template, order=1) > 0.5  # fmt: skip
            truth_tmpl = resample(truth.astype(np.float32), scan.native_affine, scan.grid.shape, scan.grid.affine,
                                  np.linalg.inv(scan.native_to_template), order=1) > 0.5  # fmt: skip
            overlap, largest_ml = False, 0.0
            lab_id, n_lab = ndi.label(threshold_map(r.anomaly_map, cal.voxel_threshold, min_vox))
            if n_lab:  # the largest cluster as `components` orders them: by mass above threshold
                ids = np.arange(1, n_lab + 1)
                mass = ndi.sum(np.where(lab_id > 0, r.anomaly_map - cal.voxel_threshold, 0.0), lab_id, ids)
                big = lab_id == ids[int(np.argmax(mass))]
                largest_ml = float(big.sum() * vv / 1000)
                overlap = bool((big & truth_tmpl).any())
            res[key] = {"flag": r.flag, "lesion_percentile": r.lesion_percentile,
                        "dice_native": dice(nmask, truth), "dice_template": dice(r.mask, truth_tmpl),
                        "largest_cluster_overlaps": overlap, "largest_cluster_ml": largest_ml,
                        "truth_ml": float(truth.sum() * abs(np.linalg.det(scan.native_affine[:3, :3])) / 1000)}  # fmt: skip
            _ = native_map  # the workflow writes it; here the mask is enough

    # speed: preprocessing (+ IQMs) of the visit + scoring
    per_scan = [seconds[k] + s for k, s in zip(df["key"], df["score_seconds"], strict=True) if k in seconds]
    res["seconds_per_scan_median"] = float(np.median(per_scan)) if per_scan else float("nan")
    res["score_seconds_median"] = float(np.median(df["score_seconds"]))
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch threads {args.threads}"
    res["load_average"] = os.getloadavg()
    res["wall_seconds"] = time.perf_counter() - t_start
    res["model_dir"] = str(model_dir)
    (work / f"results{tag}.json").write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
