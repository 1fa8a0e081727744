"""The template space and the working grid every model sees.

The template is MNI152NLin2009aSym as bundled by nilearn (brain-extracted T1w, 1 mm, no download).
The *working grid* is a setting, not a constant: an axis-aligned box in template space around the
brain mask (plus a margin), sampled at ``spacing_mm`` (default 2 mm).

Example:
    >>> from neurocast.registration.template import working_grid
    >>> grid = working_grid(2.0)
    >>> grid.spacing_mm
    (2.0, 2.0, 2.0)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np

TEMPLATE_NAME = "MNI152NLin2009aSym"
"""BIDS ``space-`` label of the template."""

TemplateKind = Literal["T1w", "brain_mask", "gm", "wm"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid in template space.

    Attributes:
        shape: voxels along (x, y, z), RAS+ axis order.
        affine: 4x4 voxel-to-mm (template space) matrix, diagonal with positive spacing.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def image(self, data: np.ndarray | None = None, dtype: type = np.float32) -> nib.Nifti1Image:
        """A NIfTI image on this grid holding ``data`` (zeros if ``None``)."""
        arr = np.zeros(self.shape, dtype=dtype) if data is None else np.asarray(data)
        if arr.shape[:3] != self.shape:
            raise ValueError(f"data shape {arr.shape} does not match grid shape {self.shape}")
        img = nib.Nifti1Image(arr, self.affine)
        img.set_qform(self.affine, code=4)  # 4 = MNI152 in NIfTI's xform codes
        img.set_sform(self.affine, code=4)
        return img

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Grid)
            and self.shape == other.shape
            and np.allclose(self.affine, other.affine)
        )

    def __hash__(self) -> int:
        return hash((self.shape, tuple(np.round(self.affine, 6).ravel())))


@functools.lru_cache(maxsize=8)
def _load_template(kind: str, resolution: int) -> nib.Nifti1Image:
    from nilearn import datasets

    loaders = {
        "T1w": datasets.load_mni152_template,
        "brain_mask": datasets.load_mni152_brain_mask,
        "gm": datasets.load_mni152_gm_mask,
        "wm": datasets.load_mni152_wm_mask,
    }
    img = loaders[kind](resolution=resolution)
    dtype = np.uint8 if kind != "T1w" else np.float32
    return nib.Nifti1Image(np.asarray(img.get_fdata(), dtype=dtype), img.affine)


def load_template(kind: TemplateKind = "T1w", resolution: int = 1) -> nib.Nifti1Image:
    """Load the bundled MNI152NLin2009aSym template or one of its masks.

    Args:
        kind: ``"T1w"`` (brain-extracted, intensities in [0, 1]), ``"brain_mask"``, ``"gm"`` or
            ``"wm"`` (binary masks).
        resolution: 1 or 2 mm.

    Returns:
        A RAS+ NIfTI image (a cached object: copy before modifying its data in place).
    """
    if kind not in ("T1w", "brain_mask", "gm", "wm"):
        raise ValueError(f"unknown template kind {kind!r}")
    if resolution not in (1, 2):
        raise ValueError(f"template resolution must be 1 or 2 mm, got {resolution}")
    return _load_template(kind, resolution)


@functools.lru_cache(maxsize=16)
def working_grid(spacing_mm: float = 2.0, margin_mm: float = 6.0) -> Grid:
    """The cropped brain box in template space, sampled at ``spacing_mm``.

    Args:
        spacing_mm: isotropic voxel size in mm (default 2 mm; e.g. 4 or 6 mm for velocity fields).
        margin_mm: space kept around the template brain mask on every side.

    Returns:
        The :class:`Grid`. Grids of different spacing cover (nearly) the same box, so a field on a
        coarse grid can be resampled onto a fine one.
    """
    if not 0.5 <= spacing_mm <= 16:
        raise ValueError(f"grid spacing must be between 0.5 and 16 mm, got {spacing_mm}")
    mask = load_template("brain_mask", 1)
    idx = np.argwhere(np.asarray(mask.dataobj) > 0)
    lo_mm = nib.affines.apply_affine(mask.affine, idx.min(axis=0)) - margin_mm
    hi_mm = nib.affines.apply_affine(mask.affine, idx.max(axis=0)) + margin_mm
    shape = tuple(
        int(np.ceil((h - lo) / spacing_mm)) + 1 for lo, h in zip(lo_mm, hi_mm, strict=True)
    )
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = lo_mm
    return Grid(shape, affine)  # type: ignore[arg-type]
