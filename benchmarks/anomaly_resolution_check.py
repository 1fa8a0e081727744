"""Does the anomaly detector flag healthy scans acquired at a finer resolution than its references?

The shipped detector's references are simulated at the simulator's protocols (1.2-1.6 mm, some
with 1.8-2 mm slices) and two real IXI scans at 2 mm; most real T1w scans are 0.8-1 mm. This
simulates the same healthy subjects twice with one seed, once with the simulator's protocols
(``default``) and once with 0.8-1.0 mm voxels (``fine``), scores every visit with the detector
(no prior) and compares the flags, the artefact score and its features' robust z-scores.

Every other draw (anatomy, pose, contrast, noise, bias) is the same in the two sets, so the
difference is the native voxel size. The simulated anatomy itself lives on the 2 mm grid, so
this isolates the acquisition's resolution (its noise per voxel and partial volume), not the
finer anatomy a real 1 mm scan holds.

Usage::

    python benchmarks/anomaly_resolution_check.py --work W --model src/neurocast/weights/anomaly-demo \\
        --out benchmarks/anomaly_resolution_check.json

Preprocessed scans are cached under ``--work/scans`` (as ``anomaly_benchmark.py`` does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import anomaly_benchmark as B

FINE_VOXELS = ((1.0, 1.0, 1.0), (0.9, 0.9, 0.9), (1.0, 1.0, 1.2), (0.8, 0.8, 0.8))
"""The ``fine`` set's protocols (mm), one drawn per subject as the simulator draws its own."""


def score_set(
    work: Path, det: Any, name: str, n: int, seed: int, voxels: Any, jobs: int
) -> pd.DataFrame:
    """Simulate (or reuse) ``n`` healthy subjects with these protocols, preprocess (or reuse)
    and score their visits; one row per visit."""
    changes = {} if voxels is None else {"native_voxel_sizes": tuple(tuple(v) for v in voxels)}
    v = B.healthy_cohort(work, name, n, seed, jobs, jobs, **changes)
    rows = []
    for key in v["key"]:
        cached = work / "scans" / f"{key}.npz"
        if not cached.is_file():  # its preprocessing failed (reported above)
            continue
        scan = B.load_scan(cached)[0]
        r = det.score(scan, use_prior=False)
        voxel = np.sqrt((scan.native_affine[:3, :3] ** 2).sum(axis=0))
        rows.append({
            "key": key, "visit": key.split("_", 1)[1], "set": name, "voxel_mm": "x".join(f"{x:.2f}" for x in voxel),
            "skull_stripped": bool(scan.skull_stripped), "flag": r.flag,
            "artefact_score": r.artefact_score, "lesion_score": r.lesion_score,
            **{f"z_{k}": val for k, val in r.feature_z.items()},
        })  # fmt: skip
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> dict[str, Any]:
    zcols = [c for c in df.columns if c.startswith("z_")]
    return {
        "visits": len(df),
        "flags": df["flag"].value_counts().to_dict(),
        "artefact_score_median": float(df["artefact_score"].median()),
        "artefact_score_max": float(df["artefact_score"].max()),
        "lesion_score_max": float(df["lesion_score"].max()),
        "feature_z_median": {c[2:]: float(df[c].median()) for c in zcols},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=707)
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from neurocast.anomaly import AnomalyDetector

    det = AnomalyDetector.load(args.model)
    sets = {"default": None, "fine": FINE_VOXELS}
    tables = {
        name: score_set(
            args.work, det, f"{name}-s{args.seed}", args.subjects, args.seed, vox, args.jobs
        )
        for name, vox in sets.items()
    }
    both = tables["default"].merge(tables["fine"], on="visit", suffixes=("_default", "_fine"))
    res = {
        "command": "python benchmarks/anomaly_resolution_check.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "model": str(args.model),
        "artefact_threshold": det.calibration_.artefact_threshold,
        "lesion_threshold": det.calibration_.lesion_threshold,
        "fine_voxels_mm": FINE_VOXELS,
        "sets": {name: summary(t) for name, t in tables.items()},
        "paired_artefact_score_fine_minus_default": {
            "median": float(
                (both["artefact_score_fine"] - both["artefact_score_default"]).median()
            ),
            "max": float((both["artefact_score_fine"] - both["artefact_score_default"]).max()),
        },
        "visits": pd.concat(tables.values(), ignore_index=True).round(4).to_dict(orient="records"),
    }
    print(json.dumps({k: v for k, v in res.items() if k != "visits"}, indent=2, default=float))
    if args.out:
        B.write_results(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
