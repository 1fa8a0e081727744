"""Regional volumes (mm³) from label images, in a scan's native space, and from volume-change maps.

* :func:`regional_volumes`: volume of every region of a region table (one-label or composite: the
  union of its ``source_labels``) in a label image = voxel count x voxel volume.
* :func:`atlas_to_native` / :func:`native_regional_volumes`: the atlas (template space) brought to
  the native grid of a preprocessed scan and measured there. The preprocessing affine
  (``native_to_template``) is refined and completed by a deformable registration (affine + SyN,
  CC, seeded) of the skull-stripped native scan to the template, and the atlas labels are pulled
  through the inverse of that transform in one resampling (``genericLabel``: label-wise linear
  interpolation and arg-max, or ``nearestNeighbor``). Labels outside the scan's brain mask are
  dropped (``restrict_to_mask=True``), so the regions cannot grow into skull or background.
* :func:`atlas_to_subject`: the same deformable fit for a scan already in template space (a
  subject's aligned baseline), so that a region's labels follow the subject's anatomy, not the
  template's; ``neurocast register`` measures regional change on these labels.
* :func:`regional_volume_change`: from a volume-change map on the baseline grid (the Jacobian
  determinant of the follow-up -> baseline map, see
  :func:`neurocast.registration.deformation.volume_change_map`), the ratio of a region's follow-up
  volume to its baseline volume = mean of the map over the region, and the change in mm³ = (ratio
  - 1) x baseline volume.

Tables are long ("tidy"): one row per region (and participant/session when written), with the
JSON Schemas ``data_specs/regional_volumes.schema.json`` and
``data_specs/regional_volume_change.schema.json``; :func:`volumes_table`,
:func:`change_table` add the identifiers and :func:`write_volumes_tsv` validates and writes.

Example:
    >>> import numpy as np, nibabel as nib, pandas as pd
    >>> from neurocast.registration.volumes import regional_volumes
    >>> lab = nib.Nifti1Image(np.array([[[1, 1], [2, 0]]] * 2, dtype=np.int16), np.diag([2, 2, 2, 1.0]))
    >>> regions = pd.DataFrame({"index": [1, 2, 10], "name": ["a", "b", "ab"],
    ...                         "source_labels": [(1,), (2,), (1, 2)]})
    >>> regional_volumes(lab, regions)["volume_mm3"].tolist()
    [32.0, 16.0, 48.0]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import nibabel as nib
import numpy as np
import pandas as pd

from neurocast.registration.atlas import Atlas, load_atlas, parse_labels, template_on_grid

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from neurocast.registration._syn import SynParams

VOLUME_COLUMNS = ("region", "index", "hemisphere", "n_voxels", "volume_mm3")
CHANGE_COLUMNS = (
    "region", "index", "hemisphere", "n_voxels", "baseline_volume_mm3", "volume_ratio",
    "followup_volume_mm3", "volume_change_mm3", "volume_change_percent",
)  # fmt: skip
Interpolation = Literal["genericLabel", "nearestNeighbor"]


class NativeScan(Protocol):
    """What :func:`atlas_to_native` needs of a preprocessed scan (a ``PreprocessResult`` has it)."""

    native: nib.Nifti1Image
    native_brain_mask: nib.Nifti1Image
    native_to_template: np.ndarray


# --------------------------------------------------------------------------------------------------
# volumes of a label image


def _label_array(labels: nib.Nifti1Image | Atlas | np.ndarray) -> tuple[np.ndarray, float | None]:
    if isinstance(labels, Atlas):
        labels = labels.labels
    if isinstance(labels, nib.spatialimages.SpatialImage):
        data = np.asanyarray(labels.dataobj)
        vox = float(abs(np.linalg.det(np.asarray(labels.affine, float)[:3, :3])))
    else:
        data, vox = np.asarray(labels), None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"label image must be 3-D, got shape {data.shape}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.allclose(data, np.round(data)):
            raise ValueError("label image is not integer-valued")
        data = np.round(data)
    data = data.astype(np.int64)
    if data.size and data.min() < 0:
        raise ValueError("label image has negative values")
    return data, vox


def _region_rows(regions: pd.DataFrame | Atlas) -> list[dict[str, Any]]:
    if isinstance(regions, Atlas):
        regions = regions.regions
    missing = [c for c in ("name", "source_labels") if c not in regions.columns]
    if missing:
        raise ValueError(f"region table lacks column(s) {missing}")
    rows = []
    for rec in regions.to_dict("records"):
        rows.append({
            "region": str(rec["name"]),
            "index": int(rec["index"]) if "index" in rec and pd.notna(rec["index"]) else None,
            "hemisphere": rec.get("hemisphere", "n/a") if pd.notna(rec.get("hemisphere", "n/a")) else "n/a",
            "source_labels": parse_labels(rec["source_labels"]),
        })
    return rows


def regional_volumes(
    labels: nib.Nifti1Image | Atlas | np.ndarray,
    regions: pd.DataFrame | Atlas | None = None,
    *,
    mask: np.ndarray | nib.spatialimages.SpatialImage | None = None,
    voxel_volume_mm3: float | None = None,
) -> pd.DataFrame:
    """Volume of every region in a label image.

    Args:
        labels: an integer label image (nibabel; the voxel volume comes from its affine), an
            :class:`Atlas`, or a plain array together with ``voxel_volume_mm3``.
        regions: region table (``name``, ``source_labels``; ``index``, ``hemisphere`` optional);
            default: the atlas's own table when ``labels`` is an :class:`Atlas`.
        mask: optional boolean array/image on the same grid; only voxels inside count.
        voxel_volume_mm3: voxel volume for a plain array (overrides the affine's).

    Returns:
        One row per region: ``region``, ``index``, ``hemisphere``, ``n_voxels``, ``volume_mm3``.
    """
    if regions is None:
        if not isinstance(labels, Atlas):
            raise ValueError("regions are required unless labels is an Atlas")
        regions = labels
    data, vox = _label_array(labels)
    if voxel_volume_mm3 is not None:
        vox = float(voxel_volume_mm3)
    if vox is None:
        raise ValueError("voxel_volume_mm3 is required for a plain label array")
    if mask is not None:
        m = np.asanyarray(mask.dataobj) if isinstance(mask, nib.spatialimages.SpatialImage) else np.asarray(mask)
        if m.shape != data.shape:
            raise ValueError(f"mask shape {m.shape} does not match label shape {data.shape}")
        data = np.where(m > 0, data, 0)
    counts = np.bincount(data.ravel())
    out = []
    for r in _region_rows(regions):
        labs = [v for v in r["source_labels"] if 0 < v < len(counts)]
        n = int(counts[labs].sum()) if labs else 0
        out.append({"region": r["region"], "index": r["index"], "hemisphere": r["hemisphere"],
                    "n_voxels": n, "volume_mm3": n * vox})
    return pd.DataFrame(out, columns=list(VOLUME_COLUMNS))


# --------------------------------------------------------------------------------------------------
# atlas in native space

NATIVE_SYN_ITERATIONS: tuple[int, int, int] = (50, 30, 20)
"""SyN iterations of :func:`atlas_to_native` at 8, 4 and 2 mm (the atlas grid's 2 mm included).

The atlas builder's schedule stops at 4 mm (``(50, 30, 0)``), which is enough to fuse labels but
leaves the ventricles' edges to 4 mm: in the atlas leave-one-out benchmark
(``benchmarks/atlas_loo.py``) the lateral-ventricle volumes were off by 11.6 % (right) and 23.7 %
(left) on average. Twenty more iterations on the 2 mm grid brought them to 11.8 % and 14.5 %
(hippocampus 6.9/6.8 % -> 3.2/2.6 %), at the cost of about 70 s per scan on 2 cores (22 -> 90 s; ``benchmarks/atlas_native_speed.py``)."""


def native_syn_params(syn_iterations: tuple[int, int, int] = NATIVE_SYN_ITERATIONS) -> SynParams:
    """The registration schedule of :func:`atlas_to_native`: affine refinement, then SyN with
    ``syn_iterations`` at 8, 4 and 2 mm."""
    from neurocast.registration._syn import SynParams

    return SynParams(linear=("Affine",), syn_iterations=tuple(syn_iterations))


def atlas_to_native(
    result: NativeScan,
    atlas: Atlas | None = None,
    *,
    seed: int = 0,
    params: SynParams | None = None,
    interpolation: Interpolation = "genericLabel",
    restrict_to_mask: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
) -> nib.Nifti1Image:
    """The atlas labels on the native grid of a preprocessed scan.

    The skull-stripped native scan (``result.native`` inside ``result.native_brain_mask``) is
    registered to the template on the atlas grid, starting from ``result.native_to_template``
    (affine refinement, then SyN with cross-correlation; ``seed`` fixes ANTs' sampling), and the
    atlas is resampled through the inverse transform in one step.

    Args:
        result: a :class:`~neurocast.registration.preprocess.PreprocessResult` (or any object
            with ``native``, ``native_brain_mask`` and ``native_to_template``).
        atlas: default :func:`load_atlas`.
        seed: ANTs random seed.
        params: registration schedule (default: :func:`native_syn_params`, affine + SyN with
            :data:`NATIVE_SYN_ITERATIONS`).
        interpolation: ``"genericLabel"`` (default) or ``"nearestNeighbor"``.
        restrict_to_mask: set labels outside the native brain mask to 0.
        work_dir: parent of the temporary ANTs folder (always removed).

    Returns:
        An int16 label image on the native grid (RAS+ as ``result.native``).
    """
    import ants

    from neurocast.registration._syn import register_syn
    from neurocast.registration.transforms import nib_to_ants

    if interpolation not in ("genericLabel", "nearestNeighbor"):
        raise ValueError(f"interpolation must be 'genericLabel' or 'nearestNeighbor', got {interpolation!r}")
    atlas = load_atlas() if atlas is None else atlas
    params = native_syn_params() if params is None else params
    native = result.native
    mask = np.asarray(result.native_brain_mask.dataobj) > 0
    if mask.shape != native.shape[:3]:
        raise ValueError(f"brain mask shape {mask.shape} does not match the native scan {native.shape}")
    if not mask.any():
        raise ValueError("the native brain mask is empty")
    brain = np.asarray(native.dataobj, dtype=np.float32) * mask
    brain_img = nib.Nifti1Image(np.maximum(brain, 0), native.affine)
    fixed = nib_to_ants(template_on_grid(atlas.grid))
    moving = nib_to_ants(brain_img)
    tmp = Path(tempfile.mkdtemp(prefix="neurocast_atlas2native_", dir=work_dir))
    try:
        reg = register_syn(
            fixed, moving, work_dir=tmp, params=params, seed=seed, tag="a2n",
            initial=np.linalg.inv(np.asarray(result.native_to_template, float)),
        )
        warped = ants.apply_transforms(
            moving, nib_to_ants(atlas.labels, dtype=np.float32), reg.inverse,
            interpolator=interpolation, whichtoinvert=reg.inverse_flags,
        )
        out = np.round(warped.numpy()).astype(np.int16)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if restrict_to_mask:
        out[~mask] = 0
    img = nib.Nifti1Image(out, native.affine)
    img.set_qform(native.affine, code=1)
    img.set_sform(native.affine, code=1)
    return img


def native_regional_volumes(
    result: NativeScan,
    atlas: Atlas | None = None,
    *,
    seed: int = 0,
    params: SynParams | None = None,
    interpolation: Interpolation = "genericLabel",
    restrict_to_mask: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
    return_labels: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, nib.Nifti1Image]:
    """Regional volumes (mm³) of a preprocessed scan, measured in its native space.

    The atlas is brought to the native grid by :func:`atlas_to_native` (same arguments) and
    measured with :func:`regional_volumes` (the native voxel volume).

    Returns:
        The volume table (``region``, ``index``, ``hemisphere``, ``n_voxels``, ``volume_mm3``),
        and the native label image too with ``return_labels=True``.
    """
    atlas = load_atlas() if atlas is None else atlas
    labels = atlas_to_native(result, atlas, seed=seed, params=params, interpolation=interpolation,
                             restrict_to_mask=restrict_to_mask, work_dir=work_dir)
    table = regional_volumes(labels, atlas.regions)
    return (table, labels) if return_labels else table


SUBJECT_SYN_ITERATIONS: tuple[int, int, int] = (50, 30, 0)
"""SyN iterations of :func:`atlas_to_subject` at 8, 4 and 2 mm (stops at 4 mm).

Measured on the truth check's 6 simulated subjects (``benchmarks/simulate_truth_check.md``,
2026-12-05): Dice of the subject's hippocampus with its true labels 0.82-0.90 (the template atlas:
0.63-0.82), about 30 s per subject on 2 cores; twenty more iterations on the 2 mm grid (the
native schedule, :data:`NATIVE_SYN_ITERATIONS`) gave 0.83-0.91 at about 140 s and no better
regional change."""

SUBJECT_CC_RADIUS: int = 1
"""Cross-correlation radius (voxels of each level) of :func:`atlas_to_subject`'s SyN.

At the 8 and 4 mm levels a radius of 1 (a 3 x 3 x 3 window: 24 and 12 mm) is as wide as the
structures being matched; ANTs' correlation costs about the cube of the window, so radius 2 made
the 4 mm level most of the fit's time. With this radius and the affine refinement stopping at
4 mm (:func:`subject_syn_params`), the fit takes less than half the time with the same labels:
``benchmarks/atlas_subject_fit.md``."""


def subject_syn_params() -> SynParams:
    """The registration schedule of :func:`atlas_to_subject`.

    The image is already affinely aligned to the template (by
    :func:`~neurocast.registration.longitudinal.align_subject`), so the affine refinement stops
    at 4 mm; SyN then runs :data:`SUBJECT_SYN_ITERATIONS` with correlation radius
    :data:`SUBJECT_CC_RADIUS`.
    """
    from neurocast.registration._syn import SynParams

    return SynParams(
        linear=("Affine",), linear_iterations=(200, 100, 0),
        syn_iterations=SUBJECT_SYN_ITERATIONS, cc_radius=SUBJECT_CC_RADIUS,
    )  # fmt: skip


@dataclass(frozen=True)
class _ScanInTemplateSpace:
    """A scan already resampled into template space, seen as a :class:`NativeScan`."""

    native: nib.Nifti1Image
    native_brain_mask: nib.Nifti1Image
    native_to_template: np.ndarray = field(default_factory=lambda: np.eye(4))


def atlas_to_subject(
    image: nib.Nifti1Image,
    brain_mask: nib.Nifti1Image,
    atlas: Atlas | None = None,
    *,
    seed: int = 0,
    params: SynParams | None = None,
    interpolation: Interpolation = "genericLabel",
    work_dir: str | os.PathLike[str] | None = None,
) -> nib.Nifti1Image:
    """The atlas fitted to one subject's anatomy, for a scan already in template space.

    The template atlas placed by an affine map alone follows the template's anatomy, not the
    subject's: a region's labels then take in neighbouring tissue (the hippocampus some of the
    temporal horn, whose expansion offsets its atrophy). Here the skull-stripped ``image`` (e.g.
    the subject's aligned baseline from :func:`~neurocast.registration.longitudinal.align_subject`)
    is registered deformably to the template (affine refinement, then SyN with cross-correlation:
    :func:`subject_syn_params`), and the atlas labels are pulled through the inverse map, as
    :func:`atlas_to_native` does for a native scan. Labels outside ``brain_mask`` are dropped.

    Args:
        image: a T1w image in template space (any grid; 0 outside the brain is fine).
        brain_mask: its brain mask (same grid).
        atlas: default :func:`load_atlas`.
        seed: ANTs random seed.
        params: registration schedule (default: :func:`subject_syn_params`).
        interpolation: ``"genericLabel"`` (default) or ``"nearestNeighbor"``.
        work_dir: parent of the temporary ANTs folder (always removed).

    Returns:
        An int16 label image on ``image``'s grid.

    Example:
        >>> from neurocast.registration.volumes import atlas_to_subject, regional_volume_change
        >>> labels = atlas_to_subject(baseline_img, mask_img)  # doctest: +SKIP
        >>> regional_volume_change(jacobian, labels, load_atlas().regions)  # doctest: +SKIP
    """
    params = subject_syn_params() if params is None else params
    scan = _ScanInTemplateSpace(image, brain_mask)
    return atlas_to_native(scan, atlas, seed=seed, params=params, interpolation=interpolation,
                           restrict_to_mask=True, work_dir=work_dir)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# volume change


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, nib.spatialimages.SpatialImage):
        return np.asanyarray(x.dataobj, dtype=np.float64)
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=np.float64)


def regional_volume_change(
    change_map: torch.Tensor | np.ndarray | nib.spatialimages.SpatialImage,
    baseline_labels: nib.Nifti1Image | Atlas | np.ndarray,
    regions: pd.DataFrame | Atlas | None = None,
    *,
    voxel_volume_mm3: float | None = None,
) -> pd.DataFrame:
    """Regional volume change from a volume-change (Jacobian determinant) map.

    Args:
        change_map: local volume ratio follow-up/baseline on the baseline grid (``(X, Y, Z)``, or
            ``(1, 1, X, Y, Z)``/``(1, X, Y, Z)`` as a torch tensor from ``volume_change_map``).
        baseline_labels: the atlas labels on the same grid (image, :class:`Atlas` or array with
            ``voxel_volume_mm3``).
        regions: the region table (default: the atlas's when ``baseline_labels`` is an Atlas).
        voxel_volume_mm3: voxel volume for a plain label array.

    Returns:
        One row per region: ``region``, ``index``, ``hemisphere``, ``n_voxels``,
        ``baseline_volume_mm3``, ``volume_ratio`` (mean of the map over the region; NaN for an
        empty region), ``followup_volume_mm3`` (= ratio x baseline), ``volume_change_mm3`` and
        ``volume_change_percent``.

    Raises:
        ValueError: the map and the labels are on different grids, or the map is not finite.
    """
    if regions is None:
        if not isinstance(baseline_labels, Atlas):
            raise ValueError("regions are required unless baseline_labels is an Atlas")
        regions = baseline_labels
    jac = _as_array(change_map)
    while jac.ndim > 3 and jac.shape[0] == 1:
        jac = jac[0]
    data, vox = _label_array(baseline_labels)
    if voxel_volume_mm3 is not None:
        vox = float(voxel_volume_mm3)
    if vox is None:
        raise ValueError("voxel_volume_mm3 is required for a plain label array")
    if jac.shape != data.shape:
        raise ValueError(
            f"volume-change map shape {jac.shape} does not match the baseline labels {data.shape}: "
            "evaluate the map on the label grid (volume_change_map(v, shape=...))"
        )
    if not np.all(np.isfinite(jac)):
        raise ValueError("volume-change map contains NaN or Inf")
    size = int(data.max()) + 1
    counts = np.bincount(data.ravel(), minlength=size)
    sums = np.bincount(data.ravel(), weights=jac.ravel(), minlength=size)
    out = []
    for r in _region_rows(regions):
        labs = [v for v in r["source_labels"] if 0 < v < size]
        n = int(counts[labs].sum()) if labs else 0
        base = n * vox
        ratio = float(sums[labs].sum() / n) if n else float("nan")
        follow = ratio * base if n else float("nan")
        out.append({
            "region": r["region"], "index": r["index"], "hemisphere": r["hemisphere"], "n_voxels": n,
            "baseline_volume_mm3": base, "volume_ratio": ratio, "followup_volume_mm3": follow,
            "volume_change_mm3": follow - base if n else float("nan"),
            "volume_change_percent": 100.0 * (ratio - 1.0) if n else float("nan"),
        })
    return pd.DataFrame(out, columns=list(CHANGE_COLUMNS))


# --------------------------------------------------------------------------------------------------
# tables on disk


def volumes_table(volumes: pd.DataFrame, participant_id: str, session_id: str | None = None, **extra: Any) -> pd.DataFrame:
    """Add ``participant_id``/``session_id`` (and any ``extra`` columns) in front of a volume table.

    Works for the outputs of :func:`regional_volumes` (schema ``regional_volumes``) and
    :func:`regional_volume_change` (schema ``regional_volume_change``, which also wants
    ``baseline_session_id`` as an extra).
    """
    ids = {"participant_id": participant_id, "session_id": session_id, **extra}
    front = pd.DataFrame({k: [v] * len(volumes) for k, v in ids.items()})
    return pd.concat([front, volumes.reset_index(drop=True)], axis=1)


def change_table(change: pd.DataFrame, participant_id: str, session_id: str,
                 baseline_session_id: str | None = None) -> pd.DataFrame:
    """:func:`volumes_table` for a change table (follow-up ``session_id``, ``baseline_session_id``)."""
    return volumes_table(change, participant_id, session_id, baseline_session_id=baseline_session_id)


def _text_frame(table: pd.DataFrame) -> pd.DataFrame:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "n/a"
        return str(v)

    return pd.DataFrame({c: [cell(v) for v in table[c]] for c in table.columns})


def validate_table(table: pd.DataFrame, schema: str) -> None:
    """Check a table against ``data_specs/<schema>.schema.json`` (raises InvalidTableError)."""
    from neurocast.io.tables import validate_frame

    validate_frame(_text_frame(table), schema)


def write_volumes_tsv(path: str | os.PathLike[str], table: pd.DataFrame, *, schema: str | None = None) -> Path:
    """Validate a volume or change table against its schema and write it as TSV, atomically.

    Args:
        path: destination ``.tsv``.
        table: from :func:`volumes_table` or :func:`change_table`.
        schema: ``"regional_volumes"`` or ``"regional_volume_change"``; default chosen by the
            columns (``volume_ratio`` present = change table).
    """
    from neurocast.io.atomic import write_tsv_atomic

    if schema is None:
        schema = "regional_volume_change" if "volume_ratio" in table.columns else "regional_volumes"
    validate_table(table, schema)
    return write_tsv_atomic(path, table)
