"""Does a ghost-band feature see mild motion, on simulated and on real scans? (Tried, not adopted.)

Motion during a scan smears signal along the phase-encoding axis: ghosts of the head appear in
the background lines that cross the head. The feature: for each axis, the mean background
intensity in the band of lines (along that axis) that cross the head, divided by the mean
background intensity elsewhere; the largest over the three axes, on the raw (native) image scaled
by its 99th percentile. Head = closed, hole-filled ``image > 0.1``, dilated by 3 voxels.

It reads the raw images of the cohorts cached by ``anomaly_benchmark.py --dev --prepare-only``
(development cohorts ``dev`` and ``lrtrain``, healthy ``calib``; never the test cohort) and the
shared real healthy scans, and prints the AUROC of motion per severity against healthy visits,
and the feature on the real scans::

    python benchmarks/anomaly_ghost_check.py --work WORK
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402


def ghost_band_ratio(path: str | Path) -> float:
    """The largest over the axes of (background in the head's band) / (background elsewhere)."""
    x = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if (x > 0).any():
        x = x / np.percentile(x[x > 0], 99)
    head = ndi.binary_dilation(
        ndi.binary_fill_holes(ndi.binary_closing(x > 0.1, iterations=2)), iterations=3
    )
    background = ~head
    ratios = []
    for axis in range(3):
        band = np.broadcast_to(np.expand_dims(head.any(axis=axis), axis), x.shape) & background
        off = background & ~band
        if band.any() and off.any():
            ratios.append(float(x[band].mean() / (x[off].mean() + 1e-6)))
    return max(ratios) if ratios else float("nan")


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    args = B.cache_script_args(__doc__, argv)
    work = args.work / "full"
    rows = []
    for cohort in ("dev", "lrtrain", "calib"):
        for r in B.simulate(work, cohort, 0, 0, 2.0, (2, 3)).itertuples():
            if not r.tumour_present:
                kind = r.artefact_severity if str(r.artefact) == "motion" else "healthy"
                rows.append((cohort, kind, ghost_band_ratio(r.path)))
    df = pd.DataFrame(rows, columns=["cohort", "kind", "ratio"])
    healthy = df[df["kind"] == "healthy"]["ratio"]
    print(
        "simulated, healthy visits of the three cohorts: ratio",
        healthy.describe().round(3).to_dict(),
    )
    for cohort in ("dev", "lrtrain"):
        d = df[df["cohort"] == cohort]
        for sev in ("mild", "moderate", "severe"):
            m = d[d["kind"] == sev]["ratio"]
            if len(m):
                auc = roc_auc_score([1] * len(m) + [0] * len(healthy), list(m) + list(healthy))
                print(f"{cohort} {sev}: n={len(m)}, AUROC {auc:.3f}, median ratio {m.median():.3f}")
    real = [
        *sorted((B.DATA / "ixi").glob("IXI*_ds.nii.gz")),
        B.DATA / "chris_t1" / "chris_t1.nii.gz",
    ]
    for f in real:
        print(f"real healthy {f.name}: ratio {ghost_band_ratio(f):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
