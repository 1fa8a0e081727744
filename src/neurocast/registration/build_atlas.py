"""Build the default regional atlas from T1w scans with label maps (rebuilds the shipped one).

Run::

    python -m neurocast.registration.build_atlas                     # shared IXI data -> package
    python -m neurocast.registration.build_atlas --data-dir DIR --out OUT --seed 0 --threads 2

``DIR`` holds pairs ``<stem>.nii.gz`` (T1w, whole head or skull-stripped) and
``<stem>_DLMUSE.nii.gz`` (their label maps on the same grid); by default the six IXI adults of the
shared test data (``$NEUROCAST_SHARED_DATA/real/ixi``, default ``../shared/data/real/ixi`` beside
the project).

Method, per subject:

1. the T1w is reoriented to RAS+ and **skull-stripped with its own label map** (labels > 0: the
   template is brain-extracted, the IXI scans are whole head), N4-corrected inside that mask
   and scaled to a median brain intensity of 1;
2. it is registered to the template T1w (MNI152NLin2009aSym, 1 mm, anti-aliased and resampled
   onto the 2 mm working grid) by ``antsRegistration``: centres of mass, rigid + affine (Mattes
   MI), then SyN (neighbourhood cross-correlation), with a fixed ``--random-seed``
   (:class:`~neurocast.registration._syn.SynParams` holds the schedule);
3. its label map is carried to the working grid by **soft voting**: for every template voxel the
   forward transform gives a continuous position in the subject's label map, and each of the 8
   surrounding labels gets its trilinear weight as a vote.

The votes of all subjects are summed and each voxel takes the label with the most votes (ties:
the lower label value): majority-vote fusion in which each subject's vote is split between the
labels at its partial-volume boundary, so there are fewer ties than with hard votes of a handful of
subjects. The result is written, with the region table (see :mod:`neurocast.registration.atlas`)
and a JSON sidecar of provenance, as
``tpl-MNI152NLin2009aSym_res-2_atlas-neurocast_dseg.{nii.gz,tsv,json}``. Temporary ANTs files live
in a temporary folder that is removed on return (also on errors).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neurocast.io.atomic import write_json_atomic, write_nifti_atomic, write_tsv_atomic
from neurocast.io.nifti import load_image
from neurocast.registration._syn import SynParams, moving_coordinates, register_syn
from neurocast.registration.atlas import (
    ATLAS_DSEG,
    ATLAS_JSON,
    ATLAS_TSV,
    atlas_dir,
    default_region_table,
    region_table_for_tsv,
    template_on_grid,
)
from neurocast.registration.template import TEMPLATE_NAME, Grid, working_grid
from neurocast.registration.transforms import nib_to_ants

log = logging.getLogger(__name__)

LABEL_SUFFIX = "_DLMUSE.nii.gz"
FUSION_CHUNK = 32768


@dataclass
class SubjectVotes:
    """One subject carried to the template grid.

    Attributes:
        name: the subject's file stem.
        labels: its label map (native grid, int16).
        coords: (3, X, Y, Z) continuous voxel position in ``labels`` of every template voxel
            (``-1`` outside).
        seconds: registration time.
    """

    name: str
    labels: np.ndarray
    coords: np.ndarray
    seconds: float


def default_data_dir() -> Path:
    """The shared IXI folder (``$NEUROCAST_SHARED_DATA/real/ixi``)."""
    root = os.environ.get("NEUROCAST_SHARED_DATA")
    if root is None:
        root = str(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    return Path(root) / "real" / "ixi"


def find_pairs(data_dir: str | os.PathLike[str]) -> list[tuple[str, Path, Path]]:
    """``(stem, T1w path, label path)`` for every ``<stem>.nii.gz`` with a ``<stem>_DLMUSE.nii.gz``."""
    d = Path(data_dir)
    pairs = []
    for lab in sorted(d.glob(f"*{LABEL_SUFFIX}")):
        stem = lab.name[: -len(LABEL_SUFFIX)]
        t1 = d / f"{stem}.nii.gz"
        if t1.is_file():
            pairs.append((stem, t1, lab))
    if not pairs:
        raise FileNotFoundError(f"{d}: no T1w + *{LABEL_SUFFIX} pairs found")
    return pairs


def load_labels(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """A label map as int16, reoriented to RAS+ (voxels permuted, never resampled)."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(np.round(np.asanyarray(img.dataobj)), dtype=np.int16)
    return nib.Nifti1Image(data, img.affine)


def skull_strip(t1: nib.Nifti1Image, labels: nib.Nifti1Image) -> nib.Nifti1Image:
    """The T1w inside ``labels > 0``, N4-corrected there and scaled to a median of 1."""
    import ants

    from neurocast.registration import threads

    if t1.shape != labels.shape or not np.allclose(t1.affine, labels.affine, atol=1e-3):
        raise ValueError("T1w and label map are not on the same grid")
    mask = np.asarray(labels.dataobj) > 0
    data = np.asarray(t1.dataobj, dtype=np.float32) * mask
    data = np.maximum(data, 0)
    threads.mark_itk_used()
    img = nib.Nifti1Image(data, t1.affine)
    n4 = ants.n4_bias_field_correction(nib_to_ants(img), mask=nib_to_ants(nib.Nifti1Image(mask.astype(np.float32), t1.affine)))
    out = n4.numpy().astype(np.float32) * mask
    med = float(np.median(out[mask]))
    return nib.Nifti1Image(out / max(med, 1e-6), t1.affine)


def register_subject(
    name: str,
    t1_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str],
    *,
    fixed_img: nib.Nifti1Image,
    work_dir: Path,
    seed: int = 0,
    params: SynParams | None = None,
) -> SubjectVotes:
    """Skull-strip, register to the template grid and compute the label positions of one subject."""
    t0 = time.perf_counter()
    t1 = load_image(t1_path)
    labels = load_labels(label_path)
    brain = skull_strip(t1, labels)
    fixed = nib_to_ants(fixed_img)
    moving = nib_to_ants(brain)
    sub = Path(tempfile.mkdtemp(prefix=f"{name}_", dir=work_dir))
    res = register_syn(fixed, moving, work_dir=sub, params=params, seed=seed, tag="reg")
    coords = moving_coordinates(fixed, labels.shape, res, moving)
    return SubjectVotes(name, np.asarray(labels.dataobj, np.int16), coords, time.perf_counter() - t0)


def fuse_votes(subjects: Sequence[SubjectVotes], shape: tuple[int, int, int]) -> np.ndarray:
    """Soft majority vote (trilinear partial-volume weights) of the subjects' labels, int16 array."""
    values = np.unique(np.concatenate([np.unique(s.labels) for s in subjects]))
    values = np.union1d(values, [0]).astype(np.int64)
    k = len(values)
    lut = np.zeros(int(values.max()) + 1, dtype=np.int64)
    lut[values] = np.arange(k)
    n = int(np.prod(shape))
    out = np.zeros(n, dtype=np.int16)
    corners = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    flat = [s.coords.reshape(3, -1) for s in subjects]
    for start in range(0, n, FUSION_CHUNK):
        stop = min(n, start + FUSION_CHUNK)
        m = stop - start
        keys, weights = [], []
        local = np.arange(m, dtype=np.int64) * k
        for s, c in zip(subjects, flat, strict=True):
            pos = c[:, start:stop].astype(np.float64)
            valid = np.all(pos >= 0, axis=0)
            base = np.floor(pos).astype(np.int64)
            frac = pos - base
            for off in corners:
                idx = base + np.asarray(off)[:, None]
                inside = valid & np.all((idx >= 0) & (idx < np.asarray(s.labels.shape)[:, None]), axis=0)
                w = np.ones(m)
                for ax in range(3):
                    w *= frac[ax] if off[ax] else 1.0 - frac[ax]
                lab = np.zeros(m, dtype=np.int64)
                ii = idx[:, inside]
                lab[inside] = s.labels[ii[0], ii[1], ii[2]]
                keys.append(local + lut[lab])
                weights.append(np.where(valid, w, 1.0 / len(corners)))
        votes = np.bincount(np.concatenate(keys), np.concatenate(weights), minlength=m * k).reshape(m, k)
        out[start:stop] = values[np.argmax(votes, axis=1)]
    return out.reshape(shape)


def build_atlas(
    data_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    grid: Grid | None = None,
    seed: int = 0,
    params: SynParams | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Register every scan of ``data_dir`` to the template, fuse the labels, write the atlas files.

    Args:
        data_dir: folder of T1w + label map pairs (default :func:`default_data_dir`).
        out_dir: destination (default the package's ``data/atlas``).
        grid: template grid of the atlas (default ``working_grid(2.0)``).
        seed: ANTs random seed.
        params: registration schedule.
        work_dir: parent of the temporary folder (removed on return).

    Returns:
        The written paths (``dseg``, ``tsv``, ``json``).
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    out_dir = atlas_dir() if out_dir is None else Path(out_dir)
    grid = working_grid(2.0) if grid is None else grid
    params = SynParams() if params is None else params
    t0 = time.perf_counter()
    pairs = find_pairs(data_dir)
    fixed_img = template_on_grid(grid)
    with tempfile.TemporaryDirectory(prefix="neurocast_atlas_", dir=work_dir) as tmp:
        subjects = []
        for name, t1, lab in pairs:
            s = register_subject(name, t1, lab, fixed_img=fixed_img, work_dir=Path(tmp), seed=seed, params=params)
            log.info("registered %s in %.1f s", name, s.seconds)
            subjects.append(s)
    fused = fuse_votes(subjects, grid.shape)
    return write_atlas(
        fused, grid, out_dir,
        provenance={
            "subjects": [s.name for s in subjects],
            "data_dir": str(data_dir),
            "seed": seed,
            "registration": params.as_dict(),
            "registration_seconds": {s.name: round(s.seconds, 1) for s in subjects},
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )


def write_atlas(fused: np.ndarray, grid: Grid, out_dir: str | os.PathLike[str], *, provenance: dict) -> dict[str, Path]:
    """Write a fused label array with the default region table and a JSON sidecar."""
    from neurocast import __version__

    out_dir = Path(out_dir)
    present = np.unique(fused)
    table = default_region_table(present.tolist())
    img = grid.image(fused.astype(np.int16), dtype=np.int16)
    img.header.set_data_dtype(np.int16)
    paths = {"dseg": out_dir / ATLAS_DSEG, "tsv": out_dir / ATLAS_TSV, "json": out_dir / ATLAS_JSON}
    write_nifti_atomic(paths["dseg"], img)
    write_tsv_atomic(paths["tsv"], region_table_for_tsv(table))
    sidecar = {
        "Name": "neurocast default regional atlas",
        "Description": (
            "DLMUSE label maps of healthy adults registered to the template (affine + SyN) and "
            "fused by soft majority vote; see neurocast.registration.build_atlas."
        ),
        "Space": TEMPLATE_NAME,
        "Resolution": f"{grid.spacing_mm[0]:g} mm working grid {list(grid.shape)}",
        "Sources": "IXI (CC BY-SA 3.0) T1w scans; label maps from the CBICA CCL_NMF_Prediction repository (MIT)",
        "License": "CC BY-SA 3.0",
        "GeneratedBy": [{"Name": "neurocast", "Version": __version__}],
        "Date": _dt.date.today().isoformat(),
        **provenance,
    }
    write_json_atomic(paths["json"], sidecar)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``python -m neurocast.registration.build_atlas``."""
    ap = argparse.ArgumentParser(prog="python -m neurocast.registration.build_atlas", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="folder of T1w + *_DLMUSE.nii.gz pairs")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the package's data/atlas)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="ITK threads (same seed and threads, same atlas)")
    ap.add_argument("--spacing", type=float, default=2.0, help="working grid spacing in mm")
    args = ap.parse_args(argv)
    from neurocast.registration.threads import set_threads

    set_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = build_atlas(args.data_dir, args.out, grid=working_grid(args.spacing), seed=args.seed)
    for k, p in paths.items():
        print(f"{k}: {p} ({p.stat().st_size / 1024:.1f} kB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
