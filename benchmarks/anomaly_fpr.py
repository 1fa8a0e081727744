"""False-positive rate of the calibration on held-out healthy scans, by cross-calibration.

The issue's figure is the share of held-out healthy scans a calibration at rate ``fpr`` flags.
Measuring it needs many held-out healthy scans *and* enough references for the thresholds to
fall inside their range (:func:`neurocast.anomaly.calibration.min_references`: 39 at 5 %). The
benchmark's own calibration has 26 references and its test cohort 24 healthy visits, so here
every simulated healthy visit not used for training is pooled:

* ``calib`` (the benchmark's calibration cohort), ``healthy2`` (the extra healthy subjects of
  ``anomaly_site_calibration.py --more-healthy 30``), and the healthy visits of the development
  cohorts ``dev`` and ``lrtrain`` (never references, never trained on);
* the test cohort (seed 404) stays out of the pool: it is scored once at the end, by a
  calibration on the whole pool.

The pool's *participants* are split into ``--folds`` folds. For each fold the shipped weights
are calibrated on the other folds' visits (:meth:`neurocast.anomaly.AnomalyDetector.calibrate_residuals`,
each visit with its previous healthy visit as the prior, as the pipeline does) and judge the
fold's visits (:meth:`~neurocast.anomaly.AnomalyDetector.judge_residual`). Every pooled visit is
thus held out exactly once; the false-positive rate is the share flagged, with its Clopper-Pearson
95 % interval. Two ways of scoring the references against each other are compared: leaving out
the scan itself (``calibrate``'s default) and leaving out its participant (``groups=``), because a
subject's other visits share its anatomy and make its references look more typical than a new
subject's scan. Rates 2, 5, 10 and 20 % show whether the flagged share follows the asked rate.

Residual maps come from the cache of ``anomaly_normative_dev.residual_maps`` (computed here if
missing). Run::

    python benchmarks/anomaly_site_calibration.py --work WORK --model src/neurocast/weights/anomaly-demo \\
        --more-healthy 30 --sets sim-large      # simulates and preprocesses healthy2 once
    python benchmarks/anomaly_fpr.py --work WORK --model src/neurocast/weights/anomaly-demo \\
        [--more-healthy 100]                      # 100 more healthy subjects into the pool
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402
from anomaly_normative_dev import load_residual, residual_maps  # noqa: E402

POOL = ("calib", "healthy2", "dev", "lrtrain", "healthy3")
"""The cohorts whose healthy visits are pooled (never training data, never the test cohort);
``healthy3`` only with ``--more-healthy`` (or when simulated by an earlier run)."""
MORE_HEALTHY_SEED = 707
"""Seed of ``healthy3``, after the site-calibration benchmark's ``healthy2`` (606)."""
RATES = (0.02, 0.05, 0.10, 0.20)
MODES = ("scan", "participant")


def _options(ap: Any) -> None:
    ap.add_argument("--folds", type=int, default=10, help="participant folds (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split into folds")
    ap.add_argument("--more-healthy", type=int, default=0, metavar="N",
                    help="simulate and preprocess N more healthy subjects (cohort healthy3) into the pool")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=2, help="preprocessing processes for healthy3")
    B.add_level_scaling_option(ap)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of ``k`` events in ``n`` trials."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = float(beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - a, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    import torch

    from neurocast.anomaly import AnomalyDetector
    from neurocast.anomaly.calibration import calibrate_scores

    args = B.cache_script_args(__doc__, argv, "anomaly_fpr.json", more=_options)
    if args.level_scaling != "model" and args.out == HERE / "anomaly_fpr.json":
        args.out = HERE / f"anomaly_fpr{B.LEVEL_SCALING_TAGS[args.level_scaling]}.json"
    torch.set_num_threads(args.threads)
    work = args.work / "full"
    t0 = time.perf_counter()
    if args.more_healthy:
        B.healthy_cohort(
            work, "healthy3", args.more_healthy, MORE_HEALTHY_SEED, args.threads, args.jobs
        )
    cohorts = [c for c in POOL if (work / "cohorts" / c).is_dir()]
    table, _refs = residual_maps(work, args.model, args.threads, scored=(*cohorts, "test"))
    healthy = table[~(table["tumour_present"].astype(bool) | table["motion"])]
    pool = healthy[healthy["cohort"].isin(POOL)].reset_index(drop=True)
    test = table[table["cohort"] == "test"].reset_index(drop=True)
    pool["participant"] = pool["cohort"] + "_" + pool["participant_id"]

    data = {k: load_residual(work, k) for k in (*pool["key"], *test["key"])}
    print(f"{len(pool)} pooled healthy visits of {pool['participant'].nunique()} participants; "
          f"{len(test)} test visits; maps loaded in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

    participants = np.array(sorted(set(pool["participant"])))
    rng = np.random.default_rng(args.seed)
    fold_of = dict(
        zip(rng.permutation(participants), np.arange(len(participants)) % args.folds, strict=True)
    )
    pool["fold"] = [int(fold_of[p]) for p in pool["participant"]]

    def calibrate(det: Any, keys: list[str], groups: list[str] | None) -> Any:
        maps, regions, iqms = zip(*(data[k] for k in keys), strict=True)
        return det.calibrate_residuals(
            list(maps), list(regions), list(iqms), groups=groups, references=keys
        )

    def at_rates(cal: Any) -> dict[float, Any]:
        return {r: calibrate_scores(cal.lesion_reference, cal.artefact_reference, fpr=r,
                                    voxel_threshold=cal.voxel_threshold, voxel_quantile=cal.voxel_quantile)
                for r in RATES}  # fmt: skip

    results: dict[str, Any] = {
        "n_pool": len(pool),
        "n_participants": len(participants),
        "folds": args.folds,
    }
    for mode in MODES:
        det = B.apply_level_scaling(AnomalyDetector.load(args.model), args.level_scaling)
        flags: dict[float, list[str]] = {r: [] for r in RATES}
        by_score: dict[float, list[int]] = {r: [0, 0] for r in RATES}
        thresholds = []
        for fold in range(args.folds):
            tf = time.perf_counter()
            refs = pool[pool["fold"] != fold]
            held = pool[pool["fold"] == fold]
            groups = list(refs["participant"]) if mode == "participant" else None
            cal = calibrate(det, list(refs["key"]), groups).calibration_
            cals = at_rates(cal)
            thresholds.append({"n_references": cal.n_references, "lesion": cal.lesion_threshold,
                               "artefact": cal.artefact_threshold, "voxel": cal.voxel_threshold})  # fmt: skip
            for k in held["key"]:
                j = det.judge_residual(*data[k])
                for r, c in cals.items():
                    flags[r].append(c.flag(j.lesion_score, j.artefact_score))
                    by_score[r][0] += j.lesion_score > c.lesion_threshold
                    by_score[r][1] += j.artefact_score > c.artefact_threshold
            print(f"{mode} fold {fold}: {len(refs)} references, {len(held)} held out, "
                  f"{sum(f != 'pass' for f in flags[0.05][-len(held):])} flagged at 5 % "
                  f"({time.perf_counter() - tf:.0f} s)", flush=True)  # fmt: skip
        out: dict[str, Any] = {"thresholds_per_fold": thresholds}
        for r in RATES:
            n = len(flags[r])
            k = sum(f != "pass" for f in flags[r])
            out[f"{r:g}"] = {"flagged": f"{k}/{n}", "rate": k / n, "ci95": clopper_pearson(k, n),
                             "lesion_above": by_score[r][0], "artefact_above": by_score[r][1]}  # fmt: skip
        results[mode] = out
        print(mode, json.dumps({f"{r:g}": out[f"{r:g}"]["flagged"] for r in RATES}), flush=True)

    # the whole pool as references, the test cohort scored once
    det = B.apply_level_scaling(AnomalyDetector.load(args.model), args.level_scaling)
    cal = calibrate(det, list(pool["key"]), list(pool["participant"])).calibration_
    groups: dict[str, list[str]] = {}
    for r in test.itertuples():
        kind = B.visit_group(r.tumour_present, r.artefact, r.artefact_severity)
        if kind is not None:  # both a tumour and motion: left out, as in the benchmark
            groups.setdefault(kind, []).append(det.judge_residual(*data[r.key]).flag)
    test_out: dict[str, Any] = {"n_references": cal.n_references,
                                "thresholds": {"lesion": cal.lesion_threshold, "artefact": cal.artefact_threshold}}  # fmt: skip
    for kind, f in sorted(groups.items()):
        hit = [B.caught(kind, x) for x in f]
        test_out[kind] = f"{sum(hit)}/{len(f)}"
        if kind == "healthy":
            test_out["healthy_ci95"] = clopper_pearson(sum(hit), len(f))
    results["test_cohort_pool_calibrated"] = test_out
    print("test", json.dumps(test_out), flush=True)
    results["seconds"] = time.perf_counter() - t0
    results["level_scaling"] = bool(det.level_scaling)
    args.out.write_text(json.dumps({"model": str(args.model), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
