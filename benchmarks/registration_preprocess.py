"""Benchmark of neurocast.registration preprocessing and longitudinal alignment on real scans.

Writes ``benchmarks/registration_preprocess.md`` (next to this file) with three parts:

(a) **Recovery of a known transform.** Each of the six real IXI scans (2 mm, whole head) is moved
    by a random affine transform (rotations up to 10 degrees about each axis, translations up to
    10 mm, scaling up to 5 %, drawn with a fixed seed), resampled onto a grid padded by 16 mm, and
    both the original and the moved scan are preprocessed. If registration were perfect, the
    template -> moved-scan mapping would equal ``truth @ (template -> original mapping)``. The error
    is the distance between the two mappings over the voxels of the template brain mask (2 mm):
    mean and maximum in mm; the target is a mean <= 1 mm.
(b) **Real longitudinal pair** (open_ms_long: two visits, anisotropic 3 mm slices, different
    grids): :func:`neurocast.registration.longitudinal.align_subject`; NCC inside the brain
    before (after the shared affine) and after the non-linear alignment.
(c) **Preprocessing time** of chris_t1 (0.88 mm whole head, uint8): wall and user CPU time.

Run: ``python benchmarks/registration_preprocess.py`` (about 3-5 minutes on 2 cores). The shared
real data are found through ``NEUROCAST_SHARED_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from neurocast.registration.preprocess import preprocess_t1w
from neurocast.registration.template import load_template
from neurocast.registration.transforms import displacement_error, random_affine, resample

HERE = Path(__file__).resolve().parent
DATA = (
    Path(os.environ.get("NEUROCAST_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "real"
)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def moved_copy(img: nib.Nifti1Image, truth: np.ndarray, pad_mm: float = 16.0) -> nib.Nifti1Image:
    """The scan moved by ``truth`` (a RAS point mapping): J(y) = I(truth^-1 y), on a padded grid."""
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    pad = np.ceil(pad_mm / zooms).astype(int)
    shape = tuple(int(s) for s in np.array(img.shape) + 2 * pad)
    aff = img.affine.copy()
    aff[:3, 3] = nib.affines.apply_affine(img.affine, -pad)
    data = resample(img.get_fdata(dtype=np.float32), img.affine, shape, aff, np.linalg.inv(truth))
    return nib.Nifti1Image(data, aff)


def recovery(seed: int = 2024) -> list[dict]:
    from neurocast.io import load_image

    rng = np.random.default_rng(seed)
    mask = load_template("brain_mask", 2)
    pts = nib.affines.apply_affine(mask.affine, np.argwhere(np.asarray(mask.dataobj) > 0))
    rows = []
    for path in sorted((DATA / "ixi").glob("IXI*_ds.nii.gz")):
        img = load_image(path)
        t0, c0 = time.perf_counter(), _cpu()
        base = preprocess_t1w(img, on_fail="report")
        centre = nib.affines.apply_affine(base.template_to_native, pts.mean(axis=0))
        truth = random_affine(
            rng, max_rotation_deg=10, max_translation_mm=10, max_scaling=0.05, center=centre
        )
        moved = preprocess_t1w(moved_copy(img, truth), on_fail="report")
        err = displacement_error(moved.template_to_native, truth @ base.template_to_native, pts)
        rows.append(
            {
                "scan": path.name.replace("_ds.nii.gz", ""),
                "mean_mm": float(err.mean()),
                "max_mm": float(err.max()),
                "similarity": base.qc["similarity"],
                "similarity_moved": moved.qc["similarity"],
                "mask_ml": base.qc["mask_volume_ml"],
                "mask_ml_moved": moved.qc["mask_volume_ml"],
                "mask_ratio": moved.qc["mask_volume_ml"]
                / base.qc["mask_volume_ml"]
                / abs(np.linalg.det(truth[:3, :3])),
                "passed": base.qc["passed"] and moved.qc["passed"],
                "wall_s": (time.perf_counter() - t0) / 2,
                "cpu_s": (_cpu() - c0) / 2,
            }
        )
        print(rows[-1], flush=True)
    return rows


def longitudinal() -> dict:
    from neurocast.registration.longitudinal import align_subject

    visits = {
        "study1": DATA / "open_ms_long" / "patient01_study1_T1W.nii.gz",
        "study2": DATA / "open_ms_long" / "patient01_study2_T1W.nii.gz",
    }
    t0, c0 = time.perf_counter(), _cpu()
    al = align_subject(visits, seed=0)
    out = {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "qc": al.qc}
    print(out, flush=True)
    return out


def timing(repeats: int = 1) -> dict:
    path = DATA / "chris_t1" / "chris_t1.nii.gz"
    preprocess_t1w(
        DATA / "nibabel" / "someones_anatomy.nii.gz", on_fail="report"
    )  # warm imports/caches
    walls, cpus, res = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), _cpu()
        res = preprocess_t1w(path)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    load = os.getloadavg()
    out = {
        "wall_s": walls,
        "cpu_s": cpus,
        "steps_s": res.qc["seconds"],
        "load_avg": load,
        "similarity": res.qc["similarity"],
        "mask_ml": res.qc["mask_volume_ml"],
    }
    print(out, flush=True)
    return out


def write_report(rec: list[dict] | None, lon: dict | None, tim: dict | None, path: Path) -> None:
    lines = [
        "# Registration preprocessing benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"ITK threads {os.environ.get('ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS', 'default')}. "
        "Generated by `python benchmarks/registration_preprocess.py`.",
        "",
    ]
    if rec is not None:
        mean_all = float(np.mean([r["mean_mm"] for r in rec]))
        lines += [
            "## (a) Recovery of a known affine transform (IXI, 2 mm, whole head)",
            "",
            "Random affine per scan: rotations <= 10 deg per axis, translations <= 10 mm, scaling <= 5 %. "
            "Error = distance between the recovered and the true template->scan mapping over the "
            "template brain mask voxels (2 mm). Mask ratio = mask volume of the moved scan / mask volume "
            "of the original / det(true transform): 1 for a perfectly consistent brain mask.",
            "",
            "| scan | mean error (mm) | max error (mm) | similarity | similarity (moved) | mask ml | mask ml (moved) | mask ratio | QC passed | wall s | CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rec:
            lines.append(
                f"| {r['scan']} | {r['mean_mm']:.3f} | {r['max_mm']:.3f} | {r['similarity']:.3f} | "
                f"{r['similarity_moved']:.3f} | {r['mask_ml']:.0f} | {r['mask_ml_moved']:.0f} | {r['mask_ratio']:.3f} | "
                f"{r['passed']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |"
            )
        lines += [
            "",
            f"**Mean error over the six scans: {mean_all:.3f} mm** (target <= 1 mm: "
            f"{'met' if mean_all <= 1.0 and all(r['mean_mm'] <= 1.0 for r in rec) else 'NOT met'}).",
            "",
        ]
    if lon is not None:
        q = lon["qc"]
        lines += [
            "## (b) Real longitudinal pair (open_ms_long, 3 mm slices, two grids)",
            "",
            f"align_subject: wall {lon['wall_s']:.1f} s, CPU {lon['cpu_s']:.1f} s.",
            "",
            "| follow-up | NCC in brain before (shared affine + rigid) | NCC after (SVF) | folding |",
            "|---|---|---|---|",
        ]
        for ses, v in q["pairs"].items():
            lines.append(
                f"| {ses} | {v['ncc_before']:.4f} | {v['ncc_after']:.4f} | {v['folding']:.2e} |"
            )
        lines += ["", f"Rigid visit-to-visit motion: {q.get('rigid_motion', {})}", ""]
    if tim is not None:
        lines += [
            "## (c) Preprocessing time of chris_t1 (0.88 mm, 188x256x190, uint8)",
            "",
            f"Wall: {', '.join(f'{w:.1f}' for w in tim['wall_s'])} s; user+system CPU: "
            f"{', '.join(f'{c:.1f}' for c in tim['cpu_s'])} s (target wall <= 45 s on 2 cores). "
            f"Load average at the end: {', '.join(f'{x:.1f}' for x in tim['load_avg'])} "
            "(the machine may be shared).",
            "",
            "Steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in tim["steps_s"].items()),
            "",
            f"QC: similarity {tim['similarity']:.3f}, brain mask {tim['mask_ml']:.0f} ml.",
            "",
        ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="abc", help="which parts to run (a, b, c)")
    ap.add_argument("--out", type=Path, default=HERE / "registration_preprocess.md")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"shared data not found at {DATA}", file=sys.stderr)
        return 2
    rec = recovery() if "a" in args.parts else None
    lon = longitudinal() if "b" in args.parts else None
    tim = timing() if "c" in args.parts else None
    write_report(rec, lon, tim, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
