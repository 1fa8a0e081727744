"""Longitudinal alignment: all visits of one subject in one unbiased space, then velocity fields.

:func:`align_subject` brings every visit of a subject onto the working grid in template space so
that differences between visits are anatomy, not registration:

1. **Each visit alone**: :func:`~neurocast.registration.preprocess.preprocess_t1w` (RAS, N4, brain
   mask, white-matter-peak normalisation, an affine to the template). Only its bias-corrected
   native image, native brain mask and QC are kept; its affine serves as a starting point.
2. **Rigid, visit to baseline**: each follow-up is registered rigidly to the baseline (Mattes
   mutual information on ~2 mm copies, 8-4-2 mm, both brain masks dilated by 4 mm), starting
   from the *rigid part* of the two visits' template affines (about the baseline brain's
   centre). Each visit's own affine scales its brain to the template, so it absorbs part of that
   visit's atrophy; starting from the full affines would carry that scaling into the result,
   since ANTs keeps the initial transform in its output. Scanner and protocol changes between
   visits are allowed for by the mutual information.
3. **Midpoint space** (no visit privileged): with ``P_i`` the rigid map visit ``i`` ->
   baseline (``P_baseline = I``), the midpoint is their log-Euclidean mean
   ``M = expm(mean_i logm(P_i))`` and visit ``i`` goes to the midpoint by ``H_i = M^-1 P_i``
   (for two visits, each moves half-way). Every visit, the baseline included, is interpolated
   exactly once, so none is sharper than the others.
4. **One affine to the template, shared by all visits**: the visits are resampled into the
   midpoint space (in a provisional template-like frame), averaged, and the *average* is
   registered affinely to the template (the same registration as preprocessing). Using one
   affine for all visits means no visit-specific scaling can absorb real atrophy.
5. **Resampling**: visit ``i`` goes to the working grid through the composed matrix
   ``native_i -> template = A_mid @ H_i`` in one linear interpolation; its mask likewise.
   The common brain mask is the voxel-wise majority of the visits' masks.
6. **Consistent intensities**: each visit is divided by its white-matter peak measured inside the
   *common* mask on the grid (same voxels for every visit), clipped as in preprocessing.
   Then the *differential* bias is removed: each visit is divided by its smooth intensity ratio to
   the visits' mean, estimated in flat tissue away from edges
   (:func:`~neurocast.registration.bias.correct_differential_bias`, ``differential_bias_mm``).
   N4's residual differs between visits, and the non-linear fit would read it as anatomy.
7. **Non-linear**: for each follow-up, a stationary velocity field baseline -> follow-up with
   :func:`neurocast.registration.svf.fit_velocity_field` on the grid ``field_spacing_mm`` (the
   image grid downsampled by ``round(field_spacing_mm / grid spacing)``, e.g. the 4 mm working
   grid), fitted on the brain and a margin around it: the images are set to 0 farther than
   ``fit_margin_mm`` (:data:`FIT_MARGIN_MM`, 8 mm) from the common mask, so that the brain's
   outline stays free to move while far non-brain tissue (scalp, neck, the skull base beside the
   temporal lobes, whose intensities differ between visits) cannot pull on the field; the common
   mask is used for normalisation and QC. Direction as in the project's contract:
   ``warp(baseline, integrate_velocity(v))`` reproduces the follow-up. The fit's own defaults are
   used unless ``fit_options`` says otherwise; ``neurocast register`` passes
   ``regularization=REGIONAL_CHANGE_REGULARIZATION`` and an 8 mm LNCC window
   (``radius=regional_change_radius(grid spacing)``),
   tuned for regional volume change. The
   trade between voxel-wise Jacobian accuracy and regional volume change is documented under
   "Defaults" in :mod:`neurocast.registration.svf`.

QC (:attr:`SubjectAlignment.qc`): each visit's preprocessing QC, the rigid motion between visits,
the similarity of the average with the template, the range of each visit's differential bias
field, and per follow-up the NCC inside the common mask before (affine/rigid only) and after the
non-linear alignment, and the share of folded voxels.

Example:
    >>> from neurocast.registration.longitudinal import align_subject  # doctest: +SKIP
    >>> al = align_subject({"ses-01": "ses-01_T1w.nii.gz", "ses-02": "ses-02_T1w.nii.gz"})  # doctest: +SKIP
    >>> al.qc["pairs"]["ses-02"]["ncc_after"] > al.qc["pairs"]["ses-02"]["ncc_before"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from neurocast.errors import RegistrationFailedError
from neurocast.registration import _ants
from neurocast.registration.bias import DIFFERENTIAL_BIAS_SIGMA_MM, correct_differential_bias
from neurocast.registration.preprocess import (
    MIN_SIMILARITY,
    REG_SPACING_MM,
    OnFail,
    PreprocessResult,
    _ants_img,
    _spacing,
    _template_assets,
    dilate_mm,
    masked_ncc,
    normalise_intensity,
    preprocess_t1w,
    register_to_template,
    resolution_label,
    template_similarity,
)
from neurocast.registration.template import TEMPLATE_NAME, Grid, working_grid
from neurocast.registration.transforms import (
    decompose,
    downsample_blocks,
    mean_transform,
    nearest_rigid,
    resample,
)

log = logging.getLogger(__name__)

FIT_MARGIN_MM = 8.0
"""Margin (mm) around the common brain mask inside which the velocity fit sees the images.

Chosen on three simulated cohorts and checked on a fourth (``benchmarks/simulate_truth_check.md``,
item 13). Fitting the whole grid lets non-brain tissue bend the field (grey-matter change 1.16 x
true); fitting the mask alone (margin 0) pins the brain's outline and halves grey-matter and
whole-brain change. With 8 mm, over all four cohorts, the error on grey matter falls from 0.27
to 0.14 of the true change and on the whole brain from 0.22 to 0.15; hippocampus 0.13 -> 0.12
(but worse on the held-out cohort alone, 0.14 -> 0.16), lateral ventricles unchanged (0.08)."""

ImageLike = str | os.PathLike[str] | nib.spatialimages.SpatialImage


@dataclass
class SubjectAlignment:
    """The output of :func:`align_subject`.

    Attributes:
        sessions: the visit labels, in the order given.
        baseline: the baseline visit's label.
        grid: the working grid of ``images`` and ``masks``.
        field_grid: the grid of the velocity fields (same box, ``field_spacing_mm``).
        images: per visit, float32 on ``grid``, normalised (white-matter peak = 1 inside the
            common mask), zero outside the common mask unless ``mask_output=False``.
        masks: per visit, its own brain mask on ``grid`` (uint8).
        brain_mask: the common mask (majority of the visits' masks), uint8 on ``grid``.
        average: the mean of the visits on ``grid`` (unmasked, normalised).
        native_to_template: per visit, 4x4 point mapping visit RAS mm -> template RAS mm (the
            composition of the rigid map to the midpoint and the shared affine).
        visit_to_midpoint: per visit, the rigid 4x4 map visit RAS mm -> midpoint space.
        midpoint_to_template: the affine shared by all visits (midpoint space -> template).
        velocities: per follow-up, the (1, 3, x, y, z) float32 velocity on ``field_grid``
            (voxel units of that grid), baseline -> follow-up.
        fits: per follow-up, the :class:`~neurocast.registration.svf.VelocityFit`.
        qc: see the module docstring; ``passed`` and ``reasons`` as in preprocessing.
        params: the options used (for provenance).
        preprocessing: per visit, its own preprocessing (native space; see
            :func:`~neurocast.registration.preprocess.preprocess_t1w`).
    """

    sessions: list[str]
    baseline: str
    grid: Grid
    field_grid: Grid
    images: dict[str, nib.Nifti1Image]
    masks: dict[str, nib.Nifti1Image]
    brain_mask: nib.Nifti1Image
    average: nib.Nifti1Image
    native_to_template: dict[str, np.ndarray]
    visit_to_midpoint: dict[str, np.ndarray]
    midpoint_to_template: np.ndarray
    velocities: dict[str, Any]
    fits: dict[str, Any]
    qc: dict
    params: dict = field(default_factory=dict)
    preprocessing: dict[str, PreprocessResult] = field(default_factory=dict)

    @property
    def follow_ups(self) -> list[str]:
        """The visits other than the baseline, in order."""
        return [s for s in self.sessions if s != self.baseline]

    def velocity_image(self, session: str) -> nib.Nifti1Image:
        """A follow-up's velocity as a 4-D NIfTI (x, y, z, 3) on ``field_grid`` (voxel units)."""
        v = self.velocities[session]
        arr = np.ascontiguousarray(
            np.moveaxis(np.asarray(v[0].detach().cpu().numpy()), 0, -1).astype(np.float32)
        )
        img = nib.Nifti1Image(arr, self.field_grid.affine)
        img.set_qform(self.field_grid.affine, code=4)
        img.set_sform(self.field_grid.affine, code=4)
        img.header.set_intent("vector")
        return img

    def save(self, out_dir: str | os.PathLike[str], subject: str) -> dict[str, Path]:
        """Write per visit the image, the masks and the transform, and per follow-up the velocity.

        Names (``sub-<subject>_ses-<session>_`` prefix; ``res`` from the grids):
        ``space-MNI152NLin2009aSym_res-2_desc-longitudinal_T1w.nii.gz``,
        ``space-MNI152NLin2009aSym_res-2_desc-longitudinal_mask.nii.gz`` (the visit's own mask;
        ``desc-brain_mask`` is preprocessing's, in the template space of the visit alone),
        ``from-T1w_to-MNI152NLin2009aSym_mode-image_desc-longitudinal_xfm.mat`` (ANTs, template
        points -> visit points), per follow-up
        ``space-MNI152NLin2009aSym_res-4_desc-velocity_xfm.nii.gz`` (4-D, voxel units of its grid,
        baseline -> this visit), and the subject's common mask
        ``sub-<subject>_space-MNI152NLin2009aSym_res-2_desc-longitudinal_mask.nii.gz`` and QC
        ``sub-<subject>_desc-longitudinal_qc.json``. Session labels without ``ses-`` get it.
        """
        from neurocast.io.atomic import write_json_atomic, write_nifti_atomic
        from neurocast.registration.transforms import write_ants_affine

        out = Path(out_dir)
        sub = subject if subject.startswith("sub-") else f"sub-{subject}"
        res = resolution_label(self.grid)
        # nominal spacing (the field grid shares the image grid's box, so its true spacing can
        # differ from the nominal one by a rounding: see _field_grid)
        fres = f"{float(self.params.get('field_spacing_mm', self.field_grid.spacing_mm[0])):g}".replace(
            ".", "p"
        )
        paths: dict[str, Path] = {}
        for s in self.sessions:
            ses = s if s.startswith("ses-") else f"ses-{s}"
            pre = f"{sub}_{ses}"
            p = out / f"{pre}_space-{TEMPLATE_NAME}_res-{res}_desc-longitudinal_T1w.nii.gz"
            paths[f"{s}:image"] = write_nifti_atomic(p, self.images[s])
            p = out / f"{pre}_space-{TEMPLATE_NAME}_res-{res}_desc-longitudinal_mask.nii.gz"
            paths[f"{s}:mask"] = write_nifti_atomic(p, self.masks[s])
            p = out / f"{pre}_from-T1w_to-{TEMPLATE_NAME}_mode-image_desc-longitudinal_xfm.mat"
            paths[f"{s}:xfm"] = write_ants_affine(np.linalg.inv(self.native_to_template[s]), p)
            if s in self.velocities:
                p = out / f"{pre}_space-{TEMPLATE_NAME}_res-{fres}_desc-velocity_xfm.nii.gz"
                paths[f"{s}:velocity"] = write_nifti_atomic(p, self.velocity_image(s))
        p = out / f"{sub}_space-{TEMPLATE_NAME}_res-{res}_desc-longitudinal_mask.nii.gz"
        paths["brain_mask"] = write_nifti_atomic(p, self.brain_mask)
        paths["qc"] = write_json_atomic(
            out / f"{sub}_desc-longitudinal_qc.json",
            {"qc": self.qc, "params": self.params, "native_to_template": self.native_to_template},
        )
        return paths


def _rigid_to_baseline(
    base: PreprocessResult, visit: PreprocessResult, *, work_dir: Path, seed: int
) -> np.ndarray:
    """Rigid map baseline RAS pts -> visit RAS pts (ANTs fixed = baseline)."""

    def low(res: PreprocessResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        aff = np.asarray(res.native.affine, float)
        k = [max(1, round(REG_SPACING_MM / s)) for s in _spacing(aff)]
        d, la = downsample_blocks(np.asarray(res.native.dataobj, np.float32), aff, k)
        m, _ = downsample_blocks(np.asarray(res.native_brain_mask.dataobj, np.float32), aff, k)
        return d, la, dilate_mm(m > 0.5, 4.0, _spacing(la))

    bd, ba, bm = low(base)
    vd, va, vm = low(visit)
    # Start from the two visits' template affines, but only from their rigid part: ANTs keeps the
    # initial transform in its output, so a scaling in it (each visit's affine absorbs some of its
    # own atrophy) would pass into the "rigid" map and cancel part of the change to be measured.
    bmask = np.asarray(base.native_brain_mask.dataobj) > 0
    centre_vox = ndimage.center_of_mass(bmask) if bmask.any() else (np.array(bmask.shape) - 1) / 2
    centre = nib.affines.apply_affine(np.asarray(base.native_brain_mask.affine, float), centre_vox)
    init = nearest_rigid(np.linalg.inv(visit.native_to_template) @ base.native_to_template, centre)
    stages = [
        _ants.Stage("Rigid", (100, 50, 25), (4, 2, 1), (2, 1, 0), gradient_step=0.1, sampling=0.3)
    ]
    return _ants.register_linear(
        _ants_img(bd, ba), _ants_img(vd, va), stages, work_dir=work_dir,
        fixed_mask=_ants_img(bm.astype(np.float32), ba), moving_mask=_ants_img(vm.astype(np.float32), va),
        initial=init, seed=seed, tag="rigid",
    )  # fmt: skip


def brain_with_margin(
    mask: np.ndarray, spacing_mm: float | tuple[float, float, float], margin_mm: float
) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean distance in mm on a grid of ``spacing_mm``).

    Args:
        mask: (X, Y, Z) boolean (or 0/1) mask.
        spacing_mm: voxel size, one value or one per axis.
        margin_mm: the growth, >= 0 (0 returns the mask itself).

    Returns:
        (X, Y, Z) bool array.

    Example:
        >>> m = np.zeros((9, 1, 1), bool); m[4] = True
        >>> brain_with_margin(m, 2.0, 4.0)[:, 0, 0].astype(int)
        array([0, 0, 1, 1, 1, 1, 1, 0, 0])
    """
    if not margin_mm >= 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    inside = np.asarray(mask) > 0
    if not inside.any():
        return inside
    return dilate_mm(inside, margin_mm, np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)))


def align_subject(
    visits: Mapping[str, ImageLike],
    *,
    grid: Grid | None = None,
    field_spacing_mm: float = 4.0,
    seed: int = 0,
    baseline: str | None = None,
    skull_stripped: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    on_fail: OnFail = "raise",
    mask_output: bool = True,
    fit_velocity: bool = True,
    fit_options: Mapping[str, Any] | None = None,
    differential_bias_mm: float | None = DIFFERENTIAL_BIAS_SIGMA_MM,
    fit_margin_mm: float | None = FIT_MARGIN_MM,
    anti_alias: bool = False,
    preprocessed: Mapping[str, PreprocessResult] | None = None,
) -> SubjectAlignment:
    """Align all visits of one subject (see the module docstring for the method).

    Args:
        visits: visit label -> scan (path or nibabel image), at least one.
        grid: output grid (default ``working_grid(2.0)``).
        field_spacing_mm: spacing of the velocity grid; must be a whole multiple of the grid's.
        seed: ANTs seed and the velocity fit's seed.
        baseline: the baseline visit (default: the first in ``visits``' order).
        skull_stripped: passed to preprocessing (``None`` detects per visit).
        work_dir: parent of the temporary ANTs folder (removed afterwards).
        on_fail: ``"raise"`` or ``"report"`` when a QC check fails (see preprocessing).
        mask_output: set the images to 0 outside the common mask.
        fit_velocity: fit the velocity fields (``False``: affine/rigid alignment only).
        fit_options: extra keyword arguments for
            :func:`~neurocast.registration.svf.fit_velocity_field`.
        differential_bias_mm: smoothing (mm) of the differential bias correction between the
            aligned visits (:mod:`neurocast.registration.bias`); ``None`` switches it off.
        fit_margin_mm: the velocity fit sees the images within this distance (mm) of the common
            mask and 0 beyond; ``None`` fits the whole grid. The written images are unaffected.
        anti_alias: smooth each native scan to the working grid's resolution before reading it
            onto the grid (:func:`~neurocast.registration.transforms.resample`). Off by default:
            on the truth check of issue 4 it left the hippocampal figure unchanged
            (``benchmarks/simulate_truth_check.md``, item 15).
        preprocessed: visits already preprocessed with the same ``seed`` and ``skull_stripped``
            (e.g. read back by :func:`~neurocast.registration.preprocessed.load_preprocessed`);
            only their native-space outputs are used, so their working grid may differ. The
            other visits are preprocessed here. All of them end up in the result's
            ``preprocessing``.

    Returns:
        A :class:`SubjectAlignment`.

    Raises:
        ValueError: no visits, an unknown baseline, a field spacing that is not a multiple.
        RegistrationFailedError: a QC check failed (``on_fail="raise"``).
    """
    if on_fail not in ("raise", "report"):
        raise ValueError(f"on_fail must be 'raise' or 'report', got {on_fail!r}")
    sessions = list(visits)
    if not sessions:
        raise ValueError("align_subject needs at least one visit")
    if len(set(sessions)) != len(sessions):
        raise ValueError("visit labels must be unique")
    baseline = sessions[0] if baseline is None else baseline
    if baseline not in visits:
        raise ValueError(f"baseline {baseline!r} is not one of the visits {sessions}")
    grid = working_grid(2.0) if grid is None else grid
    factor = field_spacing_mm / grid.spacing_mm[0]
    if abs(factor - round(factor)) > 1e-6 or round(factor) < 1:
        raise ValueError(
            f"field_spacing_mm {field_spacing_mm} must be a whole multiple of the grid "
            f"spacing {grid.spacing_mm[0]}"
        )
    factor = round(factor)
    if fit_margin_mm is not None and not fit_margin_mm >= 0:
        raise ValueError(f"fit_margin_mm must be >= 0 or None, got {fit_margin_mm}")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    # 1. each visit alone
    pre: dict[str, PreprocessResult] = dict(preprocessed or {})
    for s in (s for s in sessions if s not in pre):
        pre[s] = preprocess_t1w(
            visits[s],
            grid=grid,
            skull_stripped=skull_stripped,
            seed=seed,
            work_dir=work_dir,
            on_fail="report",
        )
    seconds["preprocess"] = time.perf_counter() - t0

    # 2.-4. rigid to baseline, midpoint, one affine for all
    t = time.perf_counter()
    parent = None if work_dir is None else Path(work_dir)
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    assets = _template_assets()
    with tempfile.TemporaryDirectory(prefix="neurocast-long-", dir=parent) as tmp:
        to_base: dict[str, np.ndarray] = {baseline: np.eye(4)}
        for s in sessions:
            if s != baseline:
                base_to_visit = _rigid_to_baseline(
                    pre[baseline], pre[s], work_dir=Path(tmp), seed=seed
                )
                to_base[s] = np.linalg.inv(base_to_visit)
        mid = mean_transform([to_base[s] for s in sessions])
        to_mid = {s: np.linalg.inv(mid) @ to_base[s] for s in sessions}
        # provisional frame: midpoint -> template by the baseline's own affine
        provisional = pre[baseline].native_to_template @ mid
        stack = []
        for s in sessions:
            tmpl_to_visit = np.linalg.inv(provisional @ to_mid[s])
            stack.append(
                resample(
                    np.asarray(pre[s].native.dataobj, np.float32),
                    pre[s].native.affine,
                    assets.t1.shape,
                    assets.affine,
                    tmpl_to_visit,
                )
            )
        avg = np.mean(stack, axis=0).astype(np.float32)
        g, reg_info = register_to_template(
            avg, assets.affine, work_dir=Path(tmp), seed=seed, initial=np.eye(4)
        )
    # g: template pts -> provisional-frame pts; provisional frame = template world under `provisional`
    mid_to_template = np.linalg.inv(g) @ provisional
    native_to_template = {s: mid_to_template @ to_mid[s] for s in sessions}
    seconds["rigid_affine"] = time.perf_counter() - t

    # 5.-6. resample once, common mask, consistent normalisation
    t = time.perf_counter()
    raw: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for s in sessions:
        back = np.linalg.inv(native_to_template[s])
        raw[s] = resample(
            np.asarray(pre[s].native.dataobj, np.float32),
            pre[s].native.affine,
            grid.shape,
            grid.affine,
            back,
            anti_alias=anti_alias,
        )
        masks[s] = (
            resample(
                np.asarray(pre[s].native_brain_mask.dataobj, np.float32),
                pre[s].native_brain_mask.affine,
                grid.shape,
                grid.affine,
                back,
            )
            > 0.5
        )
    common = np.mean([masks[s] for s in sessions], axis=0) > 0.5
    if not common.any():
        raise RegistrationFailedError(f"visits {sessions}: the common brain mask is empty")
    norm = {s: normalise_intensity(raw[s], common)[0] for s in sessions}
    if differential_bias_mm is not None and len(sessions) > 1:
        corrected, bias_fields = correct_differential_bias(
            [norm[s] for s in sessions], common, grid.spacing_mm, sigma_mm=differential_bias_mm
        )
        norm = dict(zip(sessions, corrected, strict=True))
        bias_range = {
            s: [float(f[common].min()), float(f[common].max())]
            for s, f in zip(sessions, bias_fields, strict=True)
        }
    else:
        bias_range = {}
    average = np.mean([norm[s] for s in sessions], axis=0).astype(np.float32)
    seconds["resample"] = time.perf_counter() - t

    # 7. velocity fields
    t = time.perf_counter()
    field_grid = _field_grid(grid, factor)
    velocities: dict[str, Any] = {}
    fits: dict[str, Any] = {}
    pairs: dict[str, dict] = {}
    if fit_velocity:
        import torch

        from neurocast.registration.svf import fit_velocity_field

        fit_images = norm
        if fit_margin_mm is not None:
            keep = brain_with_margin(common, grid.spacing_mm, fit_margin_mm).astype(np.float32)
            fit_images = {s: norm[s] * keep for s in sessions}
        base_t = torch.from_numpy(fit_images[baseline])
        mask_t = torch.from_numpy(common.astype(np.float32))
        for s in sessions:
            if s == baseline:
                continue
            fit = fit_velocity_field(
                base_t,
                torch.from_numpy(fit_images[s]),
                mask=mask_t,
                field_factor=factor,
                seed=seed,
                **dict(fit_options or {}),
            )
            velocities[s] = fit.velocity
            fits[s] = fit
            pairs[s] = {
                "ncc_before": float(fit.ncc_before),
                "ncc_after": float(fit.ncc_after),
                "folding": float(fit.folding),
                "n_iter": int(fit.n_iter),
                "seconds": float(fit.seconds),
            }
    else:
        for s in sessions:
            if s != baseline:
                pairs[s] = {"ncc_before": masked_ncc(norm[baseline], norm[s], common)}
    seconds["velocity"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    # QC
    reasons = []
    for s in sessions:
        for r in pre[s].qc["reasons"]:
            reasons.append(f"{s}: {r}")
    avg_sim = template_similarity(_unmasked_average_on_grid(norm, sessions), grid)
    if not avg_sim >= MIN_SIMILARITY:
        reasons.append(
            f"similarity of the subject average to the template {avg_sim:.3f} < {MIN_SIMILARITY}"
        )
    motion = {}
    for s in sessions:
        if s != baseline:
            d = decompose(to_base[s])
            motion[s] = {
                "translation_mm": float(np.linalg.norm(d["translation_mm"])),
                "rotation_deg": float(d["rotation_deg"]),
            }
    qc = {
        "passed": not reasons,
        "reasons": reasons,
        "average_similarity": avg_sim,
        "shared_affine_scales": [float(x) for x in decompose(mid_to_template)["scales"]],
        "rigid_motion": motion,
        "pairs": pairs,
        "visits": {s: pre[s].qc for s in sessions},
        "common_mask_volume_ml": float(common.sum() * grid.voxel_volume_mm3 / 1000.0),
        "differential_bias_range": bias_range,
        "seconds": seconds,
        **{f"average_{k}": v for k, v in reg_info.items()},
    }
    params = {
        "grid_spacing_mm": list(grid.spacing_mm),
        "field_spacing_mm": field_spacing_mm,
        "seed": seed,
        "baseline": baseline,
        "skull_stripped": skull_stripped,
        "mask_output": mask_output,
        "fit_options": dict(fit_options or {}),
        "differential_bias_mm": differential_bias_mm,
        "fit_margin_mm": fit_margin_mm,
    }
    images = {
        s: grid.image((norm[s] * common if mask_output else norm[s]).astype(np.float32))
        for s in sessions
    }
    result = SubjectAlignment(
        sessions=sessions,
        baseline=baseline,
        grid=grid,
        field_grid=field_grid,
        images=images,
        masks={s: grid.image(masks[s].astype(np.uint8), dtype=np.uint8) for s in sessions},
        brain_mask=grid.image(common.astype(np.uint8), dtype=np.uint8),
        average=grid.image(average),
        native_to_template=native_to_template,
        visit_to_midpoint=to_mid,
        midpoint_to_template=mid_to_template,
        velocities=velocities,
        fits=fits,
        qc=qc,
        params=params,
        preprocessing={s: pre[s] for s in sessions},
    )
    if reasons:
        msg = f"longitudinal alignment of {sessions} failed quality control: " + "; ".join(reasons)
        if on_fail == "raise":
            raise RegistrationFailedError(msg)
        log.warning(msg)
    return result


def _unmasked_average_on_grid(norm: dict[str, np.ndarray], sessions: list[str]) -> np.ndarray:
    return np.mean([norm[s] for s in sessions], axis=0)


def _field_grid(grid: Grid, factor: int) -> Grid:
    """The velocity grid: same box as ``grid``, ``factor`` times coarser (the deformation module's
    ``coarse_shape`` / ``field_affine`` convention: first and last voxel centres shared)."""
    from neurocast.registration.deformation import coarse_shape, field_affine

    shape = coarse_shape(grid.shape, factor)
    return Grid(tuple(int(s) for s in shape), field_affine(grid.affine, grid.shape, shape))  # type: ignore[arg-type]
