"""Choose the artefact score's features on the development cohort (never the test cohort).

Uses the caches of ``anomaly_benchmark.py --dev --prepare-only`` (scans with their IQMs, the
ghost ratio included) and of ``anomaly_normative_dev.py`` (residual maps, computed here if
missing). The ``calib`` cohort and the two calibration IXI adults are the healthy references; the ``dev``
cohort (the test cohort's settings at seed 505) and the ``lrtrain`` cohort (motion and healthy
visits at seed 303, otherwise used only to train the benchmark's logistic-regression baseline)
are scored. Reported:

* each feature's AUROC, motion visits of each severity against healthy visits (visits with a
  tumour left out), oriented so that larger means worse;
* for each rule (a feature set combined as :func:`neurocast.anomaly.scores.artefact_score`
  does: mean of robust z-scores clipped to ±3, references scored leave-one-out, threshold at
  the detector's per-score rate for 5 % false positives): the AUROCs, the share of each
  group above the threshold, and the held-out real IXI adult's score against it.

``previous`` is the rule before 2026-12-06 (residuals, five MRIQC background metrics and CJV);
``current`` is :data:`neurocast.anomaly.scores.ARTEFACT_FEATURES`.

Run::

    python benchmarks/anomaly_benchmark.py --jobs 2 --work WORK --dev --prepare-only
    python benchmarks/anomaly_artefact_features.py --work WORK --model src/neurocast/weights/anomaly-demo
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402
from anomaly_normative_dev import residual_maps  # noqa: E402

HELD_OUT_REAL = "IXI034-HH-1260-T1"
PREVIOUS_MIN_SCALE = {
    "residual_median": 0.002, "residual_p90": 0.002, "efc": 0.002, "neg_log_fber": 0.05,
    "qi1": 0.0005, "cjv": 0.005, "neg_log_cnr": 0.02, "neg_log_snrd": 0.02,
}  # fmt: skip
"""The previous rule's features and the floors of their reference scales."""


def _neg_log(v: float) -> float:
    return -math.log(v) if math.isfinite(v) and v > 0 else float("nan")


def all_features(rmap: np.ndarray, region: np.ndarray, iqms: Any) -> dict[str, float]:
    """The current features plus the previous rule's MRIQC-based ones."""
    from neurocast.anomaly.scores import artefact_features

    f = artefact_features(rmap, region, iqms)
    q = iqms.get if iqms is not None else (lambda name: float("nan"))
    f.update(efc=q("efc"), neg_log_fber=_neg_log(q("fber")), qi1=q("qi1"),
             neg_log_cnr=_neg_log(q("cnr")), neg_log_snrd=_neg_log(q("snrd_total")))  # fmt: skip
    return f


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    p, n = np.asarray(pos, float), np.asarray(neg, float)
    p, n = p[np.isfinite(p)], n[np.isfinite(n)]
    if not p.size or not n.size:
        return float("nan")
    return float(((p[:, None] > n[None]) + 0.5 * (p[:, None] == n[None])).mean())


def main(argv: list[str] | None = None) -> int:
    args = B.cache_script_args(__doc__, argv, "anomaly_artefact_features.json")
    from neurocast.anomaly.calibration import per_score_rate, threshold_at_rate
    from neurocast.anomaly.scores import (
        ARTEFACT_FEATURES,
        MIN_SCALE,
        artefact_score,
        reference_statistics,
    )

    work = args.work / "full"
    dev, refs = residual_maps(work, args.model, args.threads, scored=("dev", "lrtrain"))
    keys = refs + list(dev["key"]) + [HELD_OUT_REAL]
    feats = {}
    for k in keys:
        scan = B.load_scan(work / "scans" / f"{k}.npz")[0]
        if scan.iqms is not None and "ghost_ratio" not in scan.iqms.values:
            raise SystemExit(f"{k}: cached before the ghost ratio; prepare the cache again")
        with np.load(work / "maps" / f"{k}.npz") as d:
            feats[k] = all_features(d["rmap"], d["region"], scan.iqms)
    pure = dev[~dev["tumour_present"].astype(bool)]
    healthy = [k for k, m in zip(pure["key"], pure["motion"], strict=True) if not m]
    motion = {s: list(pure[pure["motion"] & (pure["artefact_severity"] == s)]["key"])
              for s in ("mild", "moderate", "severe")}  # fmt: skip
    out: dict[str, Any] = {"model": str(args.model), "n": {"healthy": len(healthy), **{s: len(v) for s, v in motion.items()}},
                           "references": len(refs), "features": {}, "rules": {}}  # fmt: skip
    for name in PREVIOUS_MIN_SCALE | dict.fromkeys(ARTEFACT_FEATURES):
        h = [feats[k][name] for k in healthy]
        out["features"][name] = {
            s: auroc([feats[k][name] for k in v], h) for s, v in motion.items()
        }
    rules = {
        "previous": PREVIOUS_MIN_SCALE,
        "current": {n: MIN_SCALE[n] for n in ARTEFACT_FEATURES},
    }
    rate = per_score_rate(0.05, 2)
    for rule, floors in rules.items():
        ref_feats = [feats[k] for k in refs]
        loo = [artefact_score(f, reference_statistics(ref_feats[:i] + ref_feats[i + 1 :], floors))
               for i, f in enumerate(ref_feats)]  # fmt: skip
        thr = threshold_at_rate(np.array(loo), rate)
        stats = reference_statistics(ref_feats, floors)
        score = {k: artefact_score(feats[k], stats) for k in keys}
        h = [score[k] for k in healthy]
        res: dict[str, Any] = {"features": list(floors), "threshold": thr}
        for s, v in motion.items():
            res[f"auroc_{s}"] = auroc([score[k] for k in v], h)
            res[f"flagged_{s}"] = f"{sum(score[k] > thr for k in v)}/{len(v)}"
        res["flagged_healthy"] = f"{sum(x > thr for x in h)}/{len(h)}"
        res[f"{HELD_OUT_REAL}_score"] = score[HELD_OUT_REAL]
        res[f"{HELD_OUT_REAL}_flagged"] = bool(score[HELD_OUT_REAL] > thr)
        out["rules"][rule] = res
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
