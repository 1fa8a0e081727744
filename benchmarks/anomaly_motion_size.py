"""How large is the simulator's motion artefact inside the brain, next to the healthy residual?

A skull-stripped scan has no air, so the artefact score can only read motion inside the brain:
the reconstruction residual (``residual_median``, ``residual_p90``) and the CJV. This script
measures how much the simulator's motion changes the brain's voxels, with no noise, bias or
anatomy variation in the way: the MNI template (nilearn's, 1 mm) resampled to a native-like
1.3 mm grid, intensities scaled as the detector's preprocessing scales them (white-matter peak 1,
:func:`neurocast.registration.preprocess.normalise_intensity`), then
moved with :func:`neurocast.simulate.anomalies.apply_artefact` using motion parameters drawn by
the simulator itself (:func:`neurocast.simulate.anomalies.draw_artefact`, one severity at a
time). The change is read in the brain mask eroded by 2 voxels, on the 1.3 mm grid and after
both images are resampled to the detector's 2 mm grid (what the reconstruction sees).

For scale, the shipped calibration's statistics of ``residual_median`` over its healthy
references (median and robust scale) are printed beside it. The template is smoother than a
real brain, so its edges (where motion changes intensities) are weaker: the figures are a lower
bound on the artefact's size, not an estimate of a detector's AUROC.

Usage::

    python benchmarks/anomaly_motion_size.py --draws 10 --out benchmarks/anomaly_motion_size.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

SEVERITIES = ("mild", "moderate", "severe")


def template(spacing_mm: float) -> tuple[Any, np.ndarray]:
    """The MNI template on an isotropic grid (white matter ~1) and its eroded brain mask."""
    from nilearn import datasets, image
    from scipy import ndimage

    t1 = datasets.load_mni152_template(resolution=1)
    grid = np.diag([spacing_mm] * 3)
    img = image.resample_img(t1, target_affine=grid, interpolation="continuous", force_resample=True,
                             copy_header=True)  # fmt: skip
    mask = image.resample_to_img(datasets.load_mni152_brain_mask(resolution=1), img, interpolation="nearest",
                                 force_resample=True, copy_header=True)  # fmt: skip
    brain = ndimage.binary_erosion(np.asarray(mask.dataobj) > 0.5, iterations=2)
    from neurocast.registration.preprocess import normalise_intensity

    x, _ = normalise_intensity(np.asarray(img.dataobj, dtype=np.float32), brain)
    return image.new_img_like(img, x, copy_header=True), brain


def to_grid(img: Any, spacing_mm: float) -> np.ndarray:
    from nilearn import image

    out = image.resample_img(img, target_affine=np.diag([spacing_mm] * 3), interpolation="continuous",
                             force_resample=True, copy_header=True)  # fmt: skip
    return np.asarray(out.dataobj, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=10, help="motion draws per severity")
    ap.add_argument("--native-mm", type=float, default=1.3)
    ap.add_argument("--model", type=Path, default=Path("src/neurocast/weights/anomaly-demo"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    import torchio as tio
    from nilearn import image

    from neurocast.anomaly import AnomalyDetector
    from neurocast.simulate import SimulationConfig
    from neurocast.simulate.anomalies import apply_artefact, draw_artefact

    img, brain = template(args.native_mm)
    x = np.asarray(img.dataobj, dtype=np.float32)
    ref2 = to_grid(img, 2.0)
    brain2 = (
        to_grid(image.new_img_like(img, brain.astype(np.float32), copy_header=True), 2.0) > 0.99
    )
    scan = tio.ScalarImage(tensor=torch.from_numpy(x)[None], affine=img.affine)
    results: dict[str, Any] = {}
    for sev in SEVERITIES:
        config = SimulationConfig(artefact_fraction=1.0, artefact_types={"motion": 1.0},
                                  artefact_severities={sev: 1.0})  # fmt: skip
        rows = []
        for draw in range(args.draws):
            artefact = draw_artefact(2026, draw, 0, config)
            assert artefact is not None and artefact.kind == "motion"
            y = apply_artefact(scan, artefact).data[0].numpy()
            d = np.abs(y - x)[brain]
            d2 = np.abs(to_grid(image.new_img_like(img, y, copy_header=True), 2.0) - ref2)[brain2]
            rows.append(
                [np.median(d), np.sqrt(np.mean(d**2)), np.median(d2), np.percentile(d2, 90)]
            )
        med = np.median(np.array(rows), axis=0)
        results[sev] = {
            "median_abs_change_native": float(med[0]),
            "rms_change_native": float(med[1]),
            "median_abs_change_2mm": float(med[2]),
            "p90_abs_change_2mm": float(med[3]),
            "draws": args.draws,
        }
        print(sev, {k: round(v, 4) for k, v in results[sev].items()}, flush=True)
    cal = AnomalyDetector.load(args.model).calibration_
    ref = {k: cal.feature_reference[k] for k in ("residual_median", "residual_p90")}
    print("healthy references:", ref)
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python benchmarks/anomaly_motion_size.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "native_mm": args.native_mm,
            "units": "white-matter peak = 1, the detector's normalised units",
            "motion": results,
            "healthy_reference_statistics": ref,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
