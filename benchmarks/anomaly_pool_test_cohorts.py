"""Pool the per-visit scores of several anomaly test cohorts scored by one detector and calibration.

``anomaly_benchmark.py`` writes one ``test_scores*.tsv`` per test cohort (``--test-seed`` and
``--test-subjects`` draw another). With the same model and calibration the scores are
comparable across cohorts, so the image-level figures can be pooled: tumour AUROC, motion AUROC
per severity (each against the healthy visits, tumour-plus-motion visits left out as in the
benchmark), the mean tumour Dice, and the flags, with 95 % intervals from a bootstrap over
subjects (a subject's visits are resampled together). The motion AUROCs are also given per input
kind (whole-head motion against whole-head healthy visits, skull-stripped against skull-stripped,
and each against the other kind's healthy visits), with the healthy visits' median artefact score
per kind.

``--whole-head-only`` keeps the whole-head visits alone. Since 2026-12-07 the simulator strips
skull-stripped subjects after acquiring the whole head; whole-head subjects come out
byte-identical, so the whole-head visits of cohorts simulated before still describe the current
simulator and can be pooled with those of newer cohorts.

Usage::

    python benchmarks/anomaly_pool_test_cohorts.py W/full/test_scores-anomaly-demo-levels.tsv \\
        W/full/test_scores-anomaly-demo-levels-test-s1616-n40.tsv --out benchmarks/anomaly_pooled_test.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly_benchmark import auroc, write_results

SEVERITIES = ("mild", "moderate", "severe")
KINDS = ((False, "whole_head"), (True, "skull_stripped"))
"""Input kinds: whole head, skull-stripped (the ``skull_stripped`` column)."""


def tumour_auroc(d: pd.DataFrame) -> float:
    return auroc(
        list(d.loc[d["kind"] == "tumour", "lesion"]), list(d.loc[d["kind"] == "healthy", "lesion"])
    )


def motion_auroc(d: pd.DataFrame, severity: str) -> float:
    motion = d[(d["kind"] == "motion") & (d["severity"] == severity)]
    return auroc(list(motion["artefact"]), list(d.loc[d["kind"] == "healthy", "artefact"]))


def tumour_dice(d: pd.DataFrame) -> float:
    return float(np.nanmean(d.loc[d["kind"] == "tumour", "dice"]))


def bootstrap(
    d: pd.DataFrame, fn: Callable[[pd.DataFrame], float], n: int = 2000, seed: int = 0
) -> list[float]:
    """95 % interval of ``fn`` over subjects resampled with replacement."""
    rng = np.random.default_rng(seed)
    groups = {s: g for s, g in d.groupby("subject")}
    names = list(groups)
    vals = np.array(
        [fn(pd.concat([groups[s] for s in rng.choice(names, len(names))])) for _ in range(n)]
    )
    vals = vals[np.isfinite(vals)]
    return [float(v) for v in np.percentile(vals, [2.5, 97.5])]


def figures(d: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    healthy = d[d["kind"] == "healthy"]
    kind = d["skull_stripped"].astype(bool)
    out: dict[str, Any] = {
        "n": {"subjects": int(d["subject"].nunique()), "healthy": len(healthy),
              "tumour": int((d["kind"] == "tumour").sum()),
              **{f"motion_{s}": int(((d["kind"] == "motion") & (d["severity"] == s)).sum()) for s in SEVERITIES}},
        "tumour_auroc": tumour_auroc(d),
        "tumour_dice_mean": tumour_dice(d),
        "healthy_flagged": int((healthy["flag"] != "pass").sum()),
        "tumours_flagged": int((d.loc[d["kind"] == "tumour", "flag"] != "pass").sum()),
        "tumours_review_lesion": int((d.loc[d["kind"] == "tumour", "flag"] == "review-lesion").sum()),
    }  # fmt: skip
    for s in SEVERITIES:
        out[f"motion_auroc_{s}"] = motion_auroc(d, s)
        motion = d[(d["kind"] == "motion") & (d["severity"] == s)]
        out[f"motion_{s}_review_artefact"] = int((motion["flag"] == "review-artefact").sum())
        out[f"motion_{s}_flagged"] = int((motion["flag"] != "pass").sum())
        # per input kind (a diagnosis): motion of one kind against healthy visits of the same
        # kind, and of the other kind (``_vs_healthy_...``)
        for ms, mlabel in KINDS:
            motion_k = motion[motion["skull_stripped"].astype(bool) == ms]
            out[f"n_motion_{s}_{mlabel}"] = len(motion_k)
            for hs, hlabel in KINDS:
                pair = pd.concat([motion_k, d[(d["kind"] == "healthy") & (kind == hs)]])
                value = motion_auroc(pair, s) if len(motion_k) else float("nan")
                name = f"motion_auroc_{s}_{mlabel}" + ("" if ms == hs else f"_vs_healthy_{hlabel}")
                out[name] = value
    for stripped, label in KINDS:
        h = healthy[healthy["skull_stripped"].astype(bool) == stripped]
        out[f"n_healthy_{label}"] = len(h)
        out[f"healthy_artefact_median_{label}"] = float(h["artefact"].median())
    if n_boot:
        out["tumour_auroc_95ci"] = bootstrap(d, tumour_auroc, n_boot)
        out["tumour_dice_mean_95ci"] = bootstrap(d, tumour_dice, n_boot)
        for s in SEVERITIES:
            out[f"motion_auroc_{s}_95ci"] = bootstrap(d, lambda x, s=s: motion_auroc(x, s), n_boot)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tables", nargs="+", type=Path, help="test_scores*.tsv of anomaly_benchmark.py")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws (0: none)")
    ap.add_argument("--whole-head-only", action="store_true",
                    help="pool the whole-head visits only (see the docstring)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    parts, both = [], []
    for i, path in enumerate(args.tables):
        t = pd.read_csv(path, sep="\t")
        if args.whole_head_only:
            t = t[~t["skull_stripped"].astype(bool)]
        t["cohort"] = path.stem
        t["subject"] = f"{i}:" + t["key"].str.split("_ses-").str[0]
        mixed = t["tumour_and_motion"].astype(bool)
        parts.append(t[~mixed])
        both.append(t[mixed])
    pooled = pd.concat(parts, ignore_index=True)
    res: dict[str, Any] = {
        "command": "python benchmarks/anomaly_pool_test_cohorts.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "pooled": figures(pooled, args.bootstrap),
        "per_cohort": {t["cohort"].iloc[0]: figures(t, 0) for t in parts},
    }
    # tumour-plus-motion visits are left out of the figures; their flags are still worth a look
    res["pooled"]["tumour_and_motion_flags"] = {
        str(k): int(v) for k, v in pd.concat(both)["flag"].value_counts().items()
    }
    for name, val in res["pooled"].items():
        print(f"{name}: {val}")
    if args.out:
        write_results(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
