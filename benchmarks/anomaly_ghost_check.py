"""Does the ghost ratio see motion, on simulated scans and on real backgrounds?

The ghost ratio (:func:`neurocast.anomaly.iqm.ghost_ratio`): for each axis, the energy of the air
farther than 10 mm from the head that lies in the head's shadow along that axis, over the energy
of the air outside the shadow (log); the largest over the axes. Motion ghosts land in the shadow
along the phase-encoding axis.

Three checks, on raw (native) images:

1. the development cohorts cached by ``anomaly_benchmark.py --dev --prepare-only`` (``dev`` and
   ``lrtrain``, healthy ``calib``; never the test cohort): AUROC of motion per severity against
   the healthy visits (visits with a tumour left out);
2. the shared real healthy scans (IXI adults, chris_t1) as they are;
3. the same IXI scans with the simulator's TorchIO motion of each severity applied (three draws
   each): does motion raise the ratio beyond the real scans' own spread?

The simulated air is stationary noise (ratio 0 ± 0.003 when healthy); real air is not (vessel
flow ghosts, neck), so check 1 overstates what the ratio can do on real data, and check 3 is the
closer test.

Before 2026-12-06 this script checked an earlier "ghost-band" feature (mean background in the
head's band over the rest, near air included) that was not adopted: on the real IXI scans it was
17-132 against 1.000 ± 0.001 on simulated ones (see BENCHMARKS.md).

Run::

    python benchmarks/anomaly_ghost_check.py --work WORK
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402

SEVERITIES = ("mild", "moderate", "severe")
DRAWS = 3


def ratio_of(x: np.ndarray, spacing: tuple[float, ...]) -> float:
    """The ghost ratio of a raw image (masks from :func:`head_and_air_masks`)."""
    from neurocast.anomaly.iqm import ghost_ratio, head_and_air_masks

    head, air = head_and_air_masks(x, spacing=spacing)
    return ghost_ratio(x, head, air, spacing)[0]


def ratio_of_file(path: str | Path) -> float:
    img = nib.load(str(path))
    return ratio_of(np.asarray(img.dataobj, dtype=np.float32), img.header.get_zooms()[:3])


def with_motion(img: nib.Nifti1Image, severity: str, seed: int) -> np.ndarray:
    """The image with the simulator's motion artefact of ``severity`` (draw ``seed``)."""
    import torch
    import torchio as tio

    from neurocast.simulate.anomalies import apply_artefact, draw_artefact
    from neurocast.simulate.config import SimulationConfig

    cfg = SimulationConfig(artefact_fraction=1.0, artefact_types={"motion": 1.0},
                           artefact_severities={severity: 1.0})  # fmt: skip
    art = draw_artefact(seed, 0, 0, cfg)
    x = torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32))[None]
    return np.clip(
        apply_artefact(tio.ScalarImage(tensor=x, affine=img.affine), art).data[0].numpy(), 0, None
    )


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    args = B.cache_script_args(__doc__, argv)
    work = args.work / "full"
    rows = []
    for cohort in ("dev", "lrtrain", "calib"):
        for r in B.simulate(work, cohort, 0, 0, 2.0, (2, 3)).itertuples():
            if not r.tumour_present:
                kind = r.artefact_severity if str(r.artefact) == "motion" else "healthy"
                rows.append((cohort, kind, ratio_of_file(r.path)))
    df = pd.DataFrame(rows, columns=["cohort", "kind", "ratio"])
    healthy = df[df["kind"] == "healthy"]["ratio"].dropna()
    print(
        "1. simulated healthy visits (dev, lrtrain, calib):", healthy.describe().round(4).to_dict()
    )
    for cohort in ("dev", "lrtrain"):
        d = df[df["cohort"] == cohort]
        for sev in SEVERITIES:
            m = d[d["kind"] == sev]["ratio"].dropna()
            if len(m):
                auc = roc_auc_score([1] * len(m) + [0] * len(healthy), list(m) + list(healthy))
                print(
                    f"   {cohort} {sev}: n={len(m)}, AUROC {auc:.3f}, ratio {m.min():.3f}-{m.max():.3f}"
                )
    ixi = sorted((B.DATA / "ixi").glob("IXI*_ds.nii.gz"))
    print("2. real healthy scans:")
    for f in [*ixi, B.DATA / "chris_t1" / "chris_t1.nii.gz"]:
        print(f"   {f.name}: {ratio_of_file(f):.3f}")
    print(f"3. IXI scans with simulated motion ({DRAWS} draws per severity):")
    for f in ixi:
        img = nib.load(str(f))
        sp = img.header.get_zooms()[:3]
        line = [
            f"   {f.name}: as acquired {ratio_of(np.asarray(img.dataobj, dtype=np.float32), sp):.2f}"
        ]
        for sev in SEVERITIES:
            vals = [ratio_of(with_motion(img, sev, seed), sp) for seed in range(DRAWS)]
            line.append(f"{sev} " + "/".join(f"{v:.2f}" for v in vals))
        print("; ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
