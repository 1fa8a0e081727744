"""Affine transforms between ANTs (ITK, LPS) and neurocast (4x4 matrices, RAS world), and resampling.

Two conventions meet here, and every function says which it speaks:

* **neurocast** keeps transforms as 4x4 ``float64`` matrices acting on *RAS+ world coordinates in
  mm* (what nibabel affines use). A matrix ``M`` maps a point ``p`` to ``M @ [p, 1]``.
* **ANTs/ITK** keeps affine transforms as a 3x3 matrix, a translation and a centre acting on *LPS*
  world coordinates: ``y = A (x - c) + c + t``. A transform produced by a registration with
  ``fixed`` and ``moving`` images maps points of the *fixed* space to the *moving* space (that is
  the direction needed to resample the moving image onto the fixed grid: "pull-back").
  LPS and RAS differ by a sign flip of the first two axes, ``F = diag(-1, -1, 1, 1)``, so
  ``M_ras = F @ M_lps @ F``.

So the ``.mat`` file that resamples a T1w image into template space (BIDS
``from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat``) maps *template* points to *T1w* points; the
matrix ``native_to_template`` of :class:`~neurocast.registration.preprocess.PreprocessResult` (a
point mapping native -> template) is its inverse::

    native_to_template = np.linalg.inv(read_ants_affine("..._from-T1w_to-MNI..._xfm.mat"))

Images cross between nibabel (RAS affine) and ANTs (LPS origin/spacing/direction) with
:func:`nib_to_ants` and :func:`ants_to_nib`; the voxel array is the same in both, only the header
is translated. :func:`resample` resamples with scipy in one interpolation from any source grid to
any target grid through a world-space matrix.

Example:
    >>> import numpy as np
    >>> from neurocast.registration.transforms import matrix_to_ants, ants_to_matrix
    >>> m = np.eye(4); m[:3, 3] = [1.0, 2.0, 3.0]
    >>> np.allclose(ants_to_matrix(matrix_to_ants(m)), m)
    True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import scipy.linalg
import scipy.ndimage as ndi

if TYPE_CHECKING:  # pragma: no cover
    import ants
    import torch

log = logging.getLogger(__name__)

LPS_RAS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
"""``diag(-1, -1, 1, 1)``: converts points (and, by conjugation, matrices) between LPS and RAS."""


# --------------------------------------------------------------------------------------------------
# matrices <-> ANTs transforms


def lps_to_ras(matrix_lps: np.ndarray) -> np.ndarray:
    """Convert a 4x4 matrix acting on LPS points into the same map acting on RAS points."""
    return LPS_RAS_FLIP @ np.asarray(matrix_lps, dtype=float) @ LPS_RAS_FLIP


def ras_to_lps(matrix_ras: np.ndarray) -> np.ndarray:
    """Convert a 4x4 matrix acting on RAS points into the same map acting on LPS points."""
    return LPS_RAS_FLIP @ np.asarray(matrix_ras, dtype=float) @ LPS_RAS_FLIP


def itk_parameters_to_matrix(
    parameters: Sequence[float], fixed_parameters: Sequence[float]
) -> np.ndarray:
    """4x4 LPS matrix of an ITK ``AffineTransform`` (or ``MatrixOffsetTransformBase``) 3-D.

    Args:
        parameters: 12 numbers, the 3x3 matrix row by row then the translation ``t``.
        fixed_parameters: the centre ``c`` (3 numbers).

    Returns:
        ``M`` with ``M @ [x, 1] = A (x - c) + c + t``.
    """
    p = np.asarray(parameters, dtype=float).ravel()
    if p.size != 12:
        raise ValueError(f"expected 12 affine parameters (3-D), got {p.size}")
    c = np.asarray(fixed_parameters, dtype=float).ravel()
    if c.size != 3:
        raise ValueError(f"expected a 3-D centre as fixed parameters, got {c.size} numbers")
    a = p[:9].reshape(3, 3)
    t = p[9:]
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return m


def ants_to_matrix(transform: ants.ANTsTransform | str | os.PathLike[str]) -> np.ndarray:
    """The 4x4 RAS world matrix of an ANTs affine transform (same point mapping, fixed -> moving).

    Args:
        transform: an :class:`ants.ANTsTransform` (``AffineTransform``, ``Euler3DTransform``,
            ``Rigid3DTransform``, ``Similarity3DTransform``... anything with a matrix and offset)
            or the path of an ITK ``.mat``/``.txt`` transform file.
    """
    import ants

    if isinstance(transform, str | os.PathLike):
        transform = ants.read_transform(str(transform))
    if transform.dimension != 3:
        raise ValueError(f"expected a 3-D transform, got {transform.dimension}-D")
    kind = transform.type
    params = np.asarray(transform.parameters, dtype=float)
    fixed = np.asarray(transform.fixed_parameters, dtype=float)
    if kind in ("AffineTransform", "MatrixOffsetTransformBase"):
        m_lps = itk_parameters_to_matrix(params, fixed)
    else:
        # Rigid/Euler/Similarity transforms have other parameterisations: probe the mapping with
        # four points (exact for any affine map).
        pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float) * 100.0
        out = np.array([transform.apply_to_point(tuple(p)) for p in pts], dtype=float)
        m_lps = np.eye(4)
        m_lps[:3, 3] = out[0]
        m_lps[:3, :3] = (out[1:] - out[0]).T / 100.0
    return lps_to_ras(m_lps)


def matrix_to_ants(
    matrix_ras: np.ndarray, center_ras: Sequence[float] | None = None
) -> ants.ANTsTransform:
    """An ANTs ``AffineTransform`` (double precision) doing the point mapping of a 4x4 RAS matrix.

    Args:
        matrix_ras: 4x4 matrix on RAS world points (last row ``0 0 0 1``).
        center_ras: centre of rotation stored in the ITK transform (does not change the mapping;
            default the origin).
    """
    import ants

    m = np.asarray(matrix_ras, dtype=float)
    _check_matrix(m)
    m_lps = ras_to_lps(m)
    c = (
        np.zeros(3)
        if center_ras is None
        else (LPS_RAS_FLIP[:3, :3] @ np.asarray(center_ras, float))
    )
    a = m_lps[:3, :3]
    t = m_lps[:3, 3] - c + a @ c
    return ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="double",
        dimension=3,
        matrix=a,
        translation=t,
        center=c,
    )


def read_ants_affine(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an ITK affine transform file (``.mat``/``.txt``) as a 4x4 RAS matrix (fixed -> moving)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: transform file does not exist")
    return ants_to_matrix(path)


def write_ants_affine(matrix_ras: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a 4x4 RAS matrix as an ITK affine transform file, atomically.

    The file holds the point mapping of ``matrix_ras`` (for an image-mode transform: points of the
    reference/output space -> points of the image to be resampled).
    """
    import ants

    from neurocast.io.atomic import atomic_path

    tx = matrix_to_ants(matrix_ras)
    with atomic_path(path) as tmp:
        ants.write_transform(tx, str(tmp))
    return Path(path)


def read_velocity(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read a velocity field stored as a 4-D ``(x, y, z, 3)`` NIfTI vector image (voxel units).

    The layout written by ``neurocast register`` and ``neurocast simulate`` (truth).

    Returns:
        (1, 3, x, y, z) float32 tensor.

    Raises:
        ValueError: the file is not a 4-D image with 3 components.
    """
    import torch

    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if data.ndim != 4 or data.shape[-1] != 3:
        raise ValueError(f"{path}: expected a 4-D (x, y, z, 3) velocity field, got shape {data.shape}")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0)))[None]


def _check_matrix(m: np.ndarray) -> None:
    if m.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("matrix contains NaN or Inf")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"last row of an affine matrix must be 0 0 0 1, got {m[3]}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-9:
        raise ValueError("matrix is singular")


# --------------------------------------------------------------------------------------------------
# images nibabel <-> ANTs


def nib_to_ants(img: nib.spatialimages.SpatialImage, dtype: type = np.float32) -> ants.ANTsImage:
    """Convert a 3-D nibabel image to an ANTs image with the same voxels and world geometry.

    A (tiny) shear in the affine is removed by taking the closest rotation (ITK directions are
    orthonormal); a shear above 1e-3 is logged as a warning.
    """
    import ants

    data = np.ascontiguousarray(np.asanyarray(img.dataobj).astype(dtype, copy=False))
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D image, got shape {data.shape}")
    origin, spacing, direction = _ants_geometry(np.asarray(img.affine, dtype=float))
    return ants.from_numpy(data, origin=origin, spacing=spacing, direction=direction)


def _ants_geometry(affine: np.ndarray) -> tuple[tuple, tuple, np.ndarray]:
    lin = affine[:3, :3]
    spacing = np.sqrt((lin**2).sum(axis=0))
    d = lin / spacing
    u, _, vt = np.linalg.svd(d)
    rot = u @ vt
    dev = float(np.abs(rot - d).max())
    if dev > 1e-3:
        log.warning("image affine has a shear (deviation %.2g); using the closest rotation", dev)
    direction_lps = LPS_RAS_FLIP[:3, :3] @ rot
    origin_lps = LPS_RAS_FLIP[:3, :3] @ affine[:3, 3]
    return tuple(float(o) for o in origin_lps), tuple(float(s) for s in spacing), direction_lps


def ants_affine(img: ants.ANTsImage) -> np.ndarray:
    """The RAS voxel-to-world 4x4 affine of an ANTs image (what nibabel would call ``affine``)."""
    direction = np.asarray(img.direction, dtype=float).reshape(3, 3)
    spacing = np.asarray(img.spacing, dtype=float)
    origin = np.asarray(img.origin, dtype=float)
    a = np.eye(4)
    a[:3, :3] = LPS_RAS_FLIP[:3, :3] @ direction @ np.diag(spacing)
    a[:3, 3] = LPS_RAS_FLIP[:3, :3] @ origin
    return a


def ants_to_nib(img: ants.ANTsImage, dtype: type = np.float32) -> nib.Nifti1Image:
    """Convert a 3-D ANTs image to a nibabel image (RAS affine, same voxel array)."""
    data = np.ascontiguousarray(img.numpy().astype(dtype, copy=False))
    aff = ants_affine(img)
    out = nib.Nifti1Image(data, aff)
    out.set_qform(aff, code=1)
    out.set_sform(aff, code=1)
    return out


# --------------------------------------------------------------------------------------------------
# resampling


def resample(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    world_matrix: np.ndarray | None = None,
    *,
    order: int = 1,
    cval: float = 0.0,
    anti_alias: bool = False,
) -> np.ndarray:
    """Resample ``data`` onto a target grid in one interpolation.

    Args:
        data: the source voxel array (3-D).
        source_affine: voxel -> world (RAS mm) of the source.
        target_shape, target_affine: the target grid (voxel -> world of the target space).
        world_matrix: 4x4 point mapping from target world to source world (``None``: identity,
            i.e. both grids live in the same world). To bring a native image into template space
            with ``native_to_template``, pass ``np.linalg.inv(native_to_template)``.
        order: spline order (0 nearest, 1 linear, 3 cubic).
        cval: value outside the source field of view.
        anti_alias: where a target voxel spans more than one source voxel along a source axis,
            smooth the source first by a Gaussian that brings its resolution (FWHM) to the
            target voxel's extent along that axis (:func:`anti_alias_sigma`). Without it, a point
            read from a finer grid keeps the source's noise at full strength, by an amount that
            depends on where the point falls between source voxels.

    Returns:
        ``float32`` array of ``target_shape`` (dtype of ``data`` for ``order=0``).
    """
    wm = np.eye(4) if world_matrix is None else np.asarray(world_matrix, dtype=float)
    vox = np.linalg.inv(np.asarray(source_affine, float)) @ wm @ np.asarray(target_affine, float)
    src = np.asarray(data)
    if order > 0 and src.dtype != np.float32:
        src = src.astype(np.float32)
    if anti_alias and order > 0:
        sigma = anti_alias_sigma(vox)
        if any(s > 0 for s in sigma):
            src = ndi.gaussian_filter(src, sigma, mode="nearest")
    out = ndi.affine_transform(
        src,
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=tuple(int(s) for s in target_shape),
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )
    return out


def anti_alias_sigma(target_to_source_voxels: np.ndarray) -> tuple[float, float, float]:
    """Per source axis, the Gaussian sigma (source voxels) that anti-aliases a resampling.

    Row ``i`` of the 3x3 part of ``target_to_source_voxels`` (target voxel index -> source voxel
    index) says how far, in source voxels along axis ``i``, one step along each target axis
    reaches; its norm ``f`` is the target voxel's extent along that axis (exact for an isotropic
    target, whatever the rotation). A source voxel has a resolution (FWHM) of about one voxel, so
    the Gaussian that brings it to ``f`` voxels has FWHM ``sqrt(f**2 - 1)``, i.e.
    ``sigma = sqrt(f**2 - 1) / (2 sqrt(2 ln 2))``, and 0 where ``f <= 1`` (no downsampling).

    Example:
        >>> import numpy as np
        >>> [round(s, 3) for s in anti_alias_sigma(np.diag([2.0, 1.0, 0.5, 1.0]))]
        [0.736, 0.0, 0.0]
    """
    lin = np.asarray(target_to_source_voxels, float)[:3, :3]
    extent = np.linalg.norm(lin, axis=1)
    fwhm = np.sqrt(np.clip(extent**2 - 1.0, 0.0, None))
    return tuple(float(x) for x in fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0))))


def downsample_blocks(
    data: np.ndarray, affine: np.ndarray, factors: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Block-average ``data`` by integer ``factors`` (anti-aliased downsampling); returns (data, affine).

    Voxel ``i`` of the result is the mean of source voxels ``k*i ... k*i + k - 1`` (incomplete
    blocks at the far edge are dropped), so its centre lies at source index ``k*i + (k-1)/2``.
    """
    k = tuple(max(1, int(f)) for f in factors)
    if k == (1, 1, 1):
        return np.asarray(data, dtype=np.float32), np.asarray(affine, float).copy()
    shape = tuple(s // f for s, f in zip(data.shape, k, strict=True))
    if min(shape) < 1:
        raise ValueError(f"cannot downsample shape {data.shape} by {k}")
    cropped = np.asarray(data, dtype=np.float32)[
        : shape[0] * k[0], : shape[1] * k[1], : shape[2] * k[2]
    ]
    blocks = cropped.reshape(shape[0], k[0], shape[1], k[1], shape[2], k[2])
    out = blocks.mean(axis=(1, 3, 5), dtype=np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(k)
    scale[:3, 3] = [(f - 1) / 2.0 for f in k]
    return out, np.asarray(affine, float) @ scale


# --------------------------------------------------------------------------------------------------
# matrix algebra


def mean_transform(
    matrices: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """Log-Euclidean mean of affine (or rigid) 4x4 matrices: ``expm(sum w_i logm(M_i))``.

    The mean of rigid transforms is (to numerical precision) rigid again for the small rotations
    between visits of one subject, and the mean of ``M`` and ``inv(M)`` is the identity: no
    matrix is privileged.
    """
    ms = [np.asarray(m, dtype=float) for m in matrices]
    if not ms:
        raise ValueError("mean of no transforms")
    for m in ms:
        _check_matrix(m)
    w = np.full(len(ms), 1.0 / len(ms)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(ms),) or not np.isclose(w.sum(), 1.0):
        raise ValueError("weights must be one per matrix and sum to 1")
    log_sum = sum(wi * np.real(scipy.linalg.logm(m)) for wi, m in zip(w, ms, strict=True))
    out = np.real(scipy.linalg.expm(log_sum))
    out[3] = [0, 0, 0, 1]
    return out


def nearest_rigid(matrix: np.ndarray, centre: Sequence[float] | None = None) -> np.ndarray:
    """The rigid matrix closest to ``matrix``: its rotation by polar decomposition.

    Args:
        matrix: 4x4 affine (points -> points, mm).
        centre: a point (mm) that the rigid matrix maps where ``matrix`` does, e.g. the brain's
            centre, so that dropping the scaling does not shift the brain. Default: the origin
            (the translation is kept as it is).

    Returns:
        4x4 rigid matrix (determinant 1).
    """
    m = np.asarray(matrix, dtype=float).copy()
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    if centre is not None:
        c = np.asarray(centre, dtype=float)
        m[:3, 3] = m[:3, :3] @ c + m[:3, 3] - r @ c
    m[:3, :3] = r
    return m


def decompose(matrix: np.ndarray) -> dict[str, np.ndarray | float]:
    """Translation (mm), rotation angle (degrees), scale factors and shear of an affine matrix.

    Scales are the singular values of the linear part (ascending order); ``rotation_deg`` is
    the angle of the rotation of the polar decomposition; ``shear`` is the largest off-diagonal
    of the symmetric stretch normalised by its diagonal.
    """
    m = np.asarray(matrix, dtype=float)
    lin = m[:3, :3]
    u, s, vt = np.linalg.svd(lin)
    r = u @ vt
    stretch = vt.T @ np.diag(s) @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))
    diag = np.sqrt(np.outer(np.diag(stretch), np.diag(stretch)))
    off = np.abs(stretch / diag - np.eye(3)).max()
    return {
        "translation_mm": m[:3, 3].copy(),
        "rotation_deg": angle,
        "scales": np.sort(s),
        "determinant": float(np.linalg.det(lin)),
        "shear": float(off),
    }


def random_affine(
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 10.0,
    max_translation_mm: float = 10.0,
    max_scaling: float = 0.05,
    center: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A random affine matrix (RAS): rotations about each axis, translations, and per-axis scaling
    (with a random rotation of the scaling axes) drawn uniformly within the limits, about ``center``.
    """
    ang = np.radians(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    rot = _euler(ang)
    scales = 1.0 + rng.uniform(-max_scaling, max_scaling, 3)
    q = _euler(np.radians(rng.uniform(-180, 180, 3)))
    lin = rot @ q @ np.diag(scales) @ q.T
    t = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    c = np.asarray(center, dtype=float)
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = c - lin @ c + t
    return m


def _euler(ang: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid_matrix(
    rotation_deg: Sequence[float] = (0, 0, 0),
    translation_mm: Sequence[float] = (0, 0, 0),
    center: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A rigid 4x4 matrix: rotations (degrees, about x then y then z, around ``center``) and a translation."""
    r = _euler(np.radians(np.asarray(rotation_deg, dtype=float)))
    c = np.asarray(center, dtype=float)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=float)
    return m


def displacement_error(
    matrix_a: np.ndarray, matrix_b: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """Distance (mm) between where two 4x4 matrices send each of ``points`` (N, 3)."""
    p = np.c_[np.asarray(points, float), np.ones(len(points))]
    da = p @ np.asarray(matrix_a, float).T
    db = p @ np.asarray(matrix_b, float).T
    return np.linalg.norm(da[:, :3] - db[:, :3], axis=1)
