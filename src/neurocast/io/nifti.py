"""Reading and validating NIfTI scans.

:func:`load_image` accepts what scanners and pipelines actually write (any orientation, dtype,
endianness, ``.nii`` or ``.nii.gz``, anisotropic voxels) and returns one predictable thing: a
float32 :class:`nibabel.Nifti1Image` in the closest canonical (RAS+) orientation. Anything that is
not a usable 3-D scan is refused with an :class:`~neurocast.errors.InvalidImageError` that names the
file and the problem.

Example:
    >>> from neurocast.io import load_image  # doctest: +SKIP
    >>> img = load_image("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> img.shape, img.get_data_dtype()  # doctest: +SKIP
    ((120, 120, 90), dtype('float32'))
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from neurocast.errors import InvalidImageError

MAX_VOXELS_PER_AXIS = 2048
"""Largest accepted number of voxels along one axis."""
MAX_TOTAL_VOXELS = 512 * 512 * 512
"""Largest accepted number of voxels in one volume (about 134 M, 0.5 GiB as float32)."""
VOXEL_SIZE_RANGE_MM = (0.05, 20.0)
"""Accepted voxel edge lengths in mm; outside this the header is almost certainly wrong."""
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ImageInfo:
    """What the header of a scan says, before any data is read.

    Attributes:
        path: the file.
        shape: voxels per axis as stored (3-D; a trailing singleton 4th axis is dropped).
        voxel_size_mm: edge lengths of a voxel in mm, from the affine.
        orientation: axis codes as stored, e.g. ``("P", "S", "R")``.
        dtype: the on-disk data type (with its byte order).
    """

    path: Path
    shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    orientation: tuple[str, str, str]
    dtype: np.dtype

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size of the field of view along each stored axis, in mm."""
        return tuple(float(n * s) for n, s in zip(self.shape, self.voxel_size_mm, strict=True))


def _check_suffix(path: Path) -> None:
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise InvalidImageError(path, "not a NIfTI file name (expected .nii or .nii.gz)")


def _open(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    if not path.exists():
        raise InvalidImageError(path, "file does not exist")
    if path.is_dir():
        raise InvalidImageError(path, "is a directory, not a NIfTI file")
    _check_suffix(path)
    if path.stat().st_size == 0:
        raise InvalidImageError(path, "file is empty (0 bytes)")
    try:
        img = nib.load(str(path))
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise InvalidImageError(path, f"corrupt or truncated compressed file ({exc})") from exc
    except nib.filebasedimages.ImageFileError as exc:
        raise InvalidImageError(path, f"not a readable NIfTI image ({exc})") from exc
    except (OSError, ValueError, nib.spatialimages.HeaderDataError) as exc:
        raise InvalidImageError(path, f"cannot read NIfTI header ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidImageError(
            path, f"not a NIfTI image (nibabel read it as {type(img).__name__})"
        )
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise InvalidImageError(
            path, f"complex-valued voxels ({dtype}); expected a magnitude (real-valued) T1w scan"
        )
    if dtype.kind not in "biuf":
        raise InvalidImageError(
            path, f"voxels of type {dtype} (e.g. RGB); expected one real number per voxel"
        )
    _check_raw_pixdim(path, img)
    return img


def _check_raw_pixdim(path: Path, img: nib.Nifti1Image | nib.Nifti2Image) -> None:
    """Refuse a zero or non-finite voxel size where the affine comes from ``pixdim``.

    nibabel silently sets zero ``pixdim`` entries to 1 mm when it reads a header; where no sform
    overrides them, that would give the scan an invented geometry (and wrong volumes in ml).
    """
    if int(img.header["sform_code"]) > 0:
        return
    try:
        with nib.openers.ImageOpener(str(path)) as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
    except (OSError, ValueError, EOFError, zlib.error, nib.spatialimages.HeaderDataError):
        return  # already read once; errors in the data are reported when it is read
    n = min(3, max(0, int(raw["dim"][0])))
    pixdim = np.asarray(raw["pixdim"][1 : 1 + n], dtype=float)
    if np.any(~np.isfinite(pixdim) | (pixdim == 0)):
        raise InvalidImageError(
            path,
            f"voxel size in the header is {tuple(float(v) for v in pixdim)} (pixdim): zero or "
            "not finite, so the scan's geometry is unknown",
        )


def _checked_geometry(path: Path, img: nib.Nifti1Image) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise InvalidImageError(
            path, f"image is 4-D with {shape[3]} volumes; expected one 3-D scan"
        )
    if len(shape) > 4:
        raise InvalidImageError(path, f"image has {len(shape)} dimensions; expected 3")
    if len(shape) < 3 or min(shape) == 1:
        raise InvalidImageError(path, f"image is 2-D (shape {shape}); expected a 3-D scan")
    if min(shape) < 1:
        raise InvalidImageError(path, f"image has an empty axis (shape {shape})")
    if max(shape) > MAX_VOXELS_PER_AXIS or int(np.prod(shape)) > MAX_TOTAL_VOXELS:
        raise InvalidImageError(
            path,
            f"image is too large (shape {shape}); at most {MAX_VOXELS_PER_AXIS} voxels per axis "
            f"and {MAX_TOTAL_VOXELS} in all are accepted",
        )
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise InvalidImageError(path, "affine contains NaN or Inf")
    det = float(np.linalg.det(affine[:3, :3]))
    if abs(det) < 1e-9:
        raise InvalidImageError(path, "affine is singular (zero voxel size or collapsed axes)")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    lo, hi = VOXEL_SIZE_RANGE_MM
    if np.any(zooms < lo) or np.any(zooms > hi):
        raise InvalidImageError(
            path,
            f"implausible voxel size {tuple(round(float(z), 4) for z in zooms)} mm "
            f"(accepted {lo} to {hi} mm)",
        )
    return shape, affine  # type: ignore[return-value]


def read_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Read a scan's header only and check its geometry.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        The :class:`ImageInfo` of the file.

    Raises:
        InvalidImageError: the file is missing, not NIfTI, or its geometry is unusable.
    """
    path = Path(path)
    img = _open(path)
    shape, affine = _checked_geometry(path, img)
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    ornt = tuple(nib.aff2axcodes(affine))
    return ImageInfo(path, shape, zooms, ornt, img.get_data_dtype())  # type: ignore[arg-type]


def load_image(path: str | os.PathLike[str], *, canonical: bool = True) -> nib.Nifti1Image:
    """Load a 3-D scan as float32, reoriented to RAS+ and checked for usability.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file, any orientation, data type or byte order.
        canonical: reorient to the closest canonical (RAS+) orientation (default). The voxel
            data are only permuted and flipped, never resampled.

    Returns:
        A :class:`nibabel.Nifti1Image` with float32 data of shape ``(X, Y, Z)`` and an affine in
        mm; scaling (``scl_slope``/``scl_inter``) is applied.

    Raises:
        InvalidImageError: naming the file and the problem: missing, empty, not NIfTI, truncated,
            2-D, 4-D with several volumes, too large, singular or non-finite affine, implausible
            (or zero) voxel size, complex or RGB voxels, NaN/Inf values, or a constant image.
    """
    path = Path(path)
    img = _open(path)
    shape, affine = _checked_geometry(path, img)
    try:
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidImageError(path, f"truncated or corrupt image data ({exc})") from exc
    except (OSError, ValueError, nib.spatialimages.HeaderDataError) as exc:
        raise InvalidImageError(path, f"cannot read image data ({exc})") from exc
    data = np.asarray(data).reshape(shape)
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int((~finite).sum())
        raise InvalidImageError(path, f"image contains {n_bad} NaN or Inf voxel(s)")
    if float(data.max()) == float(data.min()):
        raise InvalidImageError(path, f"image is constant (every voxel is {float(data.min())})")
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    if canonical:
        out = nib.as_closest_canonical(out)
        out = nib.Nifti1Image(np.ascontiguousarray(out.get_fdata(dtype=np.float32)), out.affine)
        out.set_qform(out.affine, code=1)
        out.set_sform(out.affine, code=1)
    return out


def voxel_size(img: nib.spatialimages.SpatialImage) -> tuple[float, float, float]:
    """Voxel edge lengths in mm of an image, from its affine."""
    zooms = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0))
    return tuple(float(z) for z in zooms)  # type: ignore[return-value]
