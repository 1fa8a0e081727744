"""Which score the flag names when both are over: the larger excess, or the largest cluster's share.

When both the lesion and the artefact score of a scan are above their thresholds,
``Calibration.flag`` used to name the one further above, in units of its references' spread.
Severe motion raises both, and its lesion score's excess was usually the larger, so most severe
motion was flagged ``review-lesion``. The detector now names the lesion only where the largest
supra-threshold cluster holds at least ``COMPACT_SHARE`` (0.5) of the clusters' mass, and the
artefact otherwise (``neurocast.anomaly.scores.largest_cluster_share``). The pass / flag decision
is the same under both rules; only the name can change.

This counts the flags under both rules per kind of visit:

* on the development cohorts (``--dev``), from the cached residual maps of
  ``anomaly_normative_dev.py`` and the shipped calibration, nothing reconstructed;
* on test cohorts (``--tables``: the ``test_scores*.tsv`` of ``anomaly_benchmark.py``, which
  keep each visit's two scores and ``largest_share``).

Usage::

    python benchmarks/anomaly_flag_rule.py --work W --model src/neurocast/weights/anomaly-demo \\
        --tables W/full/test_scores-anomaly-demo-levels.tsv --out benchmarks/anomaly_flag_rule.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anomaly_benchmark as B
from anomaly_normative_dev import load_residual

GROUPS = (
    "healthy",
    "motion_mild",
    "motion_moderate",
    "motion_severe",
    "tumour",
    "tumour_and_motion",
)


def dev_visits(work: Path, det: Any, cohorts: list[str]) -> pd.DataFrame:
    """Scores and cluster share of the development visits with a cached residual map."""
    rows = []
    for cohort in cohorts:
        for r in B.simulate(work, cohort, 0, 0, 2.0, (2, 3)).itertuples():
            key = f"{cohort}_{r.participant_id}_{r.session_id}"
            if not (work / "maps" / f"{key}.npz").is_file():
                continue
            j = det.judge_residual(*load_residual(work, key))
            group = B.visit_group(r.tumour_present, r.artefact, r.artefact_severity)
            rows.append(dict(key=key, group=group or "tumour_and_motion", lesion=j.lesion_score,
                             artefact=j.artefact_score, largest_share=j.largest_share))  # fmt: skip
    return pd.DataFrame(rows)


def test_visits(table: Path) -> pd.DataFrame:
    """A ``test_scores*.tsv`` with the benchmark's visit groups."""
    t = pd.read_csv(table, sep="\t")
    group = t["kind"].where(t["kind"] != "motion", "motion_" + t["severity"].astype(str))
    t["group"] = group.where(~t["tumour_and_motion"].astype(bool), "tumour_and_motion")
    return t


def count_flags(d: pd.DataFrame, cal: Any) -> dict[str, Any]:
    """Per visit group: visits, flagged, and the flags under each rule."""
    excess = [cal.flag(a, b) for a, b in zip(d["lesion"], d["artefact"], strict=True)]
    share = [
        cal.flag(a, b, s)
        for a, b, s in zip(d["lesion"], d["artefact"], d["largest_share"], strict=True)
    ]
    d = d.assign(flag_excess=excess, flag_share=share)
    out: dict[str, Any] = {}
    for group in GROUPS:
        g = d[d["group"] == group]
        out[group] = {
            "visits": len(g),
            "flagged": int((g["flag_share"] != "pass").sum()),
            "both_over": int(((g["lesion"] > cal.lesion_threshold) & (g["artefact"] > cal.artefact_threshold)).sum()),
            **{f"{rule}_review_{name}": int((g[f"flag_{rule}"] == f"review-{name}").sum())
               for rule in ("excess", "share") for name in ("lesion", "artefact")},
        }  # fmt: skip
    out["changed"] = d.loc[d["flag_excess"] != d["flag_share"], ["key", "group", "flag_excess",
                           "flag_share", "largest_share"]].round(3).to_dict(orient="records")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="the anomaly benchmark's --work")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dev", nargs="*", default=["dev", "dev2", "dev3", "lrtrain"],
                    help="development cohorts with cached residual maps")  # fmt: skip
    ap.add_argument("--tables", nargs="*", type=Path, default=[], help="test_scores*.tsv files")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from neurocast.anomaly import AnomalyDetector

    det = AnomalyDetector.load(args.model)
    cal = det.calibration_
    res: dict[str, Any] = {
        "command": "python benchmarks/anomaly_flag_rule.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": str(args.model),
    }  # fmt: skip
    if args.dev:
        res["development"] = count_flags(dev_visits(args.work / "full", det, args.dev), cal)
    tables = [test_visits(t).assign(cohort=t.stem) for t in args.tables]
    for t in tables:
        res[str(t["cohort"].iloc[0])] = count_flags(t, cal)
    if len(tables) > 1:
        res["tests_pooled"] = count_flags(pd.concat(tables, ignore_index=True), cal)
    for name, val in res.items():
        if isinstance(val, dict):
            print(name)
            print(pd.DataFrame({g: val[g] for g in GROUPS}).T.to_string())
    if args.out:
        B.write_results(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
