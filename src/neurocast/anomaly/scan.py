"""One scan as the anomaly detector sees it: template-space image and mask, prior, native geometry.

:func:`prepare_scan` runs :func:`neurocast.registration.preprocess.preprocess_t1w` on a T1w scan
(path or nibabel image) and computes the MRIQC metrics (:mod:`neurocast.anomaly.iqm`) on the
N4-corrected native image, where the air around the head still is. The result, a :class:`Scan`,
holds what :class:`~neurocast.anomaly.model.AnomalyDetector` needs: the image on the working grid
(white-matter peak = 1, zero outside the brain), its brain mask, optionally the subject's earlier
scan on the same grid (the *prior*), and the native grid and transform to bring the anomaly map
back to the scan.

**The prior.** Both visits are affinely registered to the template by preprocessing, so the
earlier visit's template-space image is already aligned with this one up to the affine
registration's error (~0.3 mm on IXI, see ``benchmarks/registration_preprocess.md``) and to
anatomical change between visits; no further registration is done.

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.scan import Scan
    >>> scan = Scan.from_arrays(np.ones((8, 8, 4), np.float32), np.ones((8, 8, 4), bool))
    >>> scan.grid.spacing_mm, scan.has_prior
    ((2.0, 2.0, 2.0), False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import nibabel as nib
import numpy as np

from neurocast.anomaly.iqm import IQMResult, compute_iqms
from neurocast.registration.template import Grid


@dataclass
class Scan:
    """A scan ready for the detector.

    Attributes:
        image: ``(X, Y, Z)`` float32 on ``grid`` (template space, RAS+), intensity-normalised
            (white-matter peak = 1), zero outside the brain.
        brain_mask: ``(X, Y, Z)`` bool.
        grid: the working grid of ``image``.
        prior: the same subject's earlier scan on ``grid`` (same normalisation), or ``None``.
        native_to_template: 4x4 RAS mm point mapping, native scan -> template (``None``: no
            native space, e.g. arrays given directly).
        native_affine, native_shape: the native grid (RAS+ voxel -> mm).
        iqms: MRIQC metrics of the native scan (``None`` if not computed).
        skull_stripped: whether the input was skull-stripped (``None``: unknown).
        source: where the scan came from (for messages and provenance).
        qc: the preprocessing QC record.
    """

    image: np.ndarray
    brain_mask: np.ndarray
    grid: Grid
    prior: np.ndarray | None = None
    native_to_template: np.ndarray | None = None
    native_affine: np.ndarray | None = None
    native_shape: tuple[int, int, int] | None = None
    iqms: IQMResult | None = None
    skull_stripped: bool | None = None
    source: str | None = None
    qc: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.brain_mask = np.asarray(self.brain_mask, dtype=bool)
        if self.image.ndim != 3 or self.image.shape != self.brain_mask.shape:
            raise ValueError(
                f"image {self.image.shape} and brain mask {self.brain_mask.shape} must be the "
                "same 3-D shape"
            )
        if tuple(self.grid.shape) != self.image.shape:
            raise ValueError(f"image shape {self.image.shape} is not the grid's {self.grid.shape}")
        if self.prior is not None:
            self.prior = np.asarray(self.prior, dtype=np.float32)
            if self.prior.shape != self.image.shape:
                raise ValueError(
                    f"prior shape {self.prior.shape} differs from the image's {self.image.shape}"
                )

    @property
    def has_prior(self) -> bool:
        """Whether an earlier scan of the subject conditions the reconstruction."""
        return self.prior is not None

    @property
    def has_native(self) -> bool:
        """Whether the native grid and transform are known (native-space maps possible)."""
        return (
            self.native_to_template is not None
            and self.native_affine is not None
            and self.native_shape is not None
        )

    def with_prior(self, prior: Scan | np.ndarray | None) -> Scan:
        """A copy with ``prior`` (a :class:`Scan` on the same grid, an array, or ``None``)."""
        if isinstance(prior, Scan):
            if prior.grid != self.grid:
                raise ValueError("the prior scan lies on another grid")
            prior = prior.image
        return replace(self, prior=prior)

    @classmethod
    def from_arrays(
        cls,
        image: np.ndarray,
        brain_mask: np.ndarray,
        *,
        grid: Grid | None = None,
        prior: np.ndarray | None = None,
        spacing_mm: float = 2.0,
    ) -> Scan:
        """A scan from template-space arrays (tests, simulations): default grid at ``spacing_mm``
        with the origin at voxel 0."""
        image = np.asarray(image, dtype=np.float32)
        if grid is None:
            affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
            grid = Grid(tuple(int(s) for s in image.shape), affine)  # type: ignore[arg-type]
        return cls(image, brain_mask, grid, prior=prior)

    @classmethod
    def from_preprocessed(
        cls,
        result: Any,
        *,
        prior: Scan | np.ndarray | None = None,
        iqms: bool = True,
        raw: str | os.PathLike[str] | nib.spatialimages.SpatialImage | None = None,
    ) -> Scan:
        """A scan from a :class:`~neurocast.registration.preprocess.PreprocessResult`.

        Args:
            result: the preprocessing result.
            prior: the subject's earlier scan (a :class:`Scan` or template-space array).
            iqms: compute the MRIQC metrics on the native image (about a second).
            raw: the input scan before preprocessing (path or image), for the ghost ratio, which
                needs the air before bias correction (see
                :func:`~neurocast.anomaly.iqm.compute_iqms`). Default: the preprocessing's
                ``source`` where that is a file; without either the ghost ratio is undefined.
        """
        native = np.asarray(result.native.dataobj, dtype=np.float32)
        native_mask = np.asarray(result.native_brain_mask.dataobj) > 0
        metrics = None
        if iqms:
            spacing = tuple(float(s) for s in result.native.header.get_zooms()[:3])
            raw_img = _raw_image(raw, result)
            metrics = compute_iqms(
                native, native_mask, skull_stripped=bool(result.skull_stripped), spacing=spacing,
                raw_image=None if raw_img is None else np.asarray(raw_img.dataobj, dtype=np.float32),
                raw_spacing=None if raw_img is None else tuple(float(s) for s in raw_img.header.get_zooms()[:3]),
                no_ghost_reason=None if raw_img is not None else NO_RAW_REASON,
            )  # fmt: skip
        scan = cls(
            image=np.asarray(result.image.dataobj, dtype=np.float32),
            brain_mask=np.asarray(result.brain_mask.dataobj) > 0,
            grid=result.grid,
            native_to_template=np.asarray(result.native_to_template, dtype=float),
            native_affine=np.asarray(result.native.affine, dtype=float),
            native_shape=tuple(int(s) for s in native.shape),  # type: ignore[arg-type]
            iqms=metrics,
            skull_stripped=bool(result.skull_stripped),
            source=str(result.params.get("source")) if result.params else None,
            qc=dict(result.qc),
        )
        return scan.with_prior(prior) if prior is not None else scan


NO_RAW_REASON = "the scan before bias correction was not available (give raw=)"
"""Why a scan built from a preprocessing result alone has no ghost ratio."""


def _raw_image(raw: Any, result: Any) -> nib.spatialimages.SpatialImage | None:
    """The input before preprocessing: ``raw`` (path or image), else the result's source file."""
    if raw is None:
        source = (result.params or {}).get("source")
        if not source or not os.path.isfile(str(source)):
            return None
        raw = source
    img = nib.load(os.fspath(raw)) if isinstance(raw, str | os.PathLike) else raw
    return img if len(img.shape) == 3 else nib.funcs.squeeze_image(img)


def prepare_scan(
    image: str | os.PathLike[str] | nib.spatialimages.SpatialImage,
    *,
    grid: Grid | None = None,
    prior: Scan | np.ndarray | None = None,
    skull_stripped: bool | None = None,
    seed: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
    iqms: bool = True,
    on_fail: str = "raise",
) -> Scan:
    """Preprocess a T1w scan into a :class:`Scan` (template space, IQMs on the native image).

    Args:
        image: NIfTI path or nibabel image (any orientation, voxel size, whole head or
            skull-stripped).
        grid: the working grid (default 2 mm :func:`~neurocast.registration.template.working_grid`;
            must be the detector's grid).
        prior: the subject's earlier scan on the same grid (see the module docstring).
        skull_stripped: say whether the input is skull-stripped (``None``: detected).
        seed: ANTs random seed.
        work_dir: parent folder of temporary files.
        iqms: compute the MRIQC metrics.
        on_fail: ``"raise"`` (default) or ``"report"``: keep a scan whose preprocessing failed its
            quality checks (``scan.qc["passed"]`` is then false; a strong motion artefact can do
            that, and it still needs screening).

    Raises:
        RegistrationFailedError: the preprocessing failed its quality checks (``on_fail="raise"``).
    """
    from neurocast.registration.preprocess import preprocess_t1w

    result = preprocess_t1w(
        image, grid=grid, skull_stripped=skull_stripped, seed=seed, work_dir=work_dir,
        on_fail=on_fail,  # type: ignore[arg-type]
    )
    scan = Scan.from_preprocessed(result, prior=prior, iqms=iqms, raw=image)
    if isinstance(image, str | os.PathLike):
        scan.source = os.fspath(image)
    return scan
