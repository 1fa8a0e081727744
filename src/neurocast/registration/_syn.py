"""Private: one deformable (affine + SyN) ANTs registration, seeded, with every file in a given folder.

Used by the atlas builder (:mod:`neurocast.registration.build_atlas`) and by
:func:`neurocast.registration.volumes.atlas_to_native`. The ``antsRegistration`` command line is
built here (not through :func:`ants.registration`, which draws its output prefix with
``tempfile.mktemp`` and takes its seed from a module global), with an explicit ``--random-seed``.

Conventions (ANTs): the *forward* transforms map points of the ``fixed`` space to the ``moving``
space (they resample the moving image onto the fixed grid); the *inverse* transforms map moving
points to fixed points (they resample a fixed-space image, e.g. an atlas, onto the moving grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurocast.registration import threads
from neurocast.registration._ants import _libfn, _pointer, ants_seed
from neurocast.registration.transforms import matrix_to_ants


@dataclass(frozen=True)
class SynParams:
    """Schedule of the deformable registration (images of about 2 mm voxels).

    Attributes:
        linear: linear stages run before SyN: ``()``, ``("Affine",)`` or ``("Rigid", "Affine")``.
        linear_iterations, linear_shrink, linear_smoothing_vox: multi-resolution schedule of the
            linear stages (Mattes MI, 32 bins, seeded regular sampling of 25 % of the voxels).
        syn_step: SyN gradient step.
        syn_update_sigma, syn_total_sigma: Gaussian regularisation (voxels) of the update and of
            the total field.
        syn_iterations, syn_shrink, syn_smoothing_vox: SyN schedule, coarse to fine.
        syn_metric: ``"CC"`` (neighbourhood cross-correlation, radius ``cc_radius`` voxels) or
            ``"MI"`` (Mattes mutual information, 32 bins, every voxel).
        cc_radius: radius (voxels) of the cross-correlation neighbourhood.
    """

    linear: tuple[str, ...] = ("Rigid", "Affine")
    linear_iterations: tuple[int, ...] = (200, 100, 50)
    linear_shrink: tuple[int, ...] = (4, 2, 1)
    linear_smoothing_vox: tuple[float, ...] = (2.0, 1.0, 0.0)
    syn_step: float = 0.2
    syn_update_sigma: float = 3.0
    syn_total_sigma: float = 0.0
    syn_iterations: tuple[int, ...] = (50, 30, 0)
    syn_shrink: tuple[int, ...] = (4, 2, 1)
    syn_smoothing_vox: tuple[float, ...] = (2.0, 1.0, 0.0)
    syn_metric: str = "CC"
    cc_radius: int = 2

    def as_dict(self) -> dict:
        """Plain-dict form (for provenance)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SynResult:
    """Transform files of one registration (inside the caller's folder).

    Attributes:
        forward: transform list resampling moving -> fixed grid (``[warp, affine]``).
        inverse: transform list resampling fixed -> moving grid (``[affine, inverse warp]``).
        inverse_flags: ``whichtoinvert`` for :attr:`inverse`.
    """

    forward: list[str]
    inverse: list[str]
    inverse_flags: list[bool]


def _csv(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def register_syn(
    fixed,
    moving,
    *,
    work_dir: Path,
    params: SynParams | None = None,
    fixed_mask=None,
    moving_mask=None,
    initial: np.ndarray | None = None,
    seed: int = 0,
    tag: str = "syn",
) -> SynResult:
    """Run ``antsRegistration`` (linear stages then SyN with CC) and return the transform files.

    Args:
        fixed, moving: ANTs float images (same modality; CC metric for SyN).
        work_dir: existing folder for the transform files (the caller removes it).
        params: the schedule (default :class:`SynParams`).
        fixed_mask, moving_mask: ANTs images, non-zero inside; used by every stage.
        initial: optional 4x4 RAS matrix mapping fixed points to moving points to start from;
            ``None`` aligns the intensity centres of mass.
        seed: neurocast seed, passed to ANTs as ``seed + 1`` (see :func:`~neurocast.registration._ants.ants_seed`).
        tag: file name stem inside ``work_dir``.

    Raises:
        RuntimeError: antsRegistration failed or wrote no transform.
    """
    import ants

    p = SynParams() if params is None else params
    work_dir = Path(work_dir)
    prefix = str(work_dir / f"{tag}_")
    keep = []

    def ptr(img) -> str:
        keep.append(img)
        return _pointer(img)

    fixed = fixed if fixed.pixeltype == "float" else fixed.clone("float")
    moving = moving if moving.pixeltype == "float" else moving.clone("float")
    f_str, m_str = ptr(fixed), ptr(moving)
    if initial is not None:
        init_path = work_dir / f"{tag}_init.mat"
        ants.write_transform(matrix_to_ants(np.asarray(initial, float)), str(init_path))
        init = str(init_path)
    else:
        init = f"[{f_str},{m_str},1]"
    fm = ptr((fixed_mask != 0).clone("unsigned char")) if fixed_mask is not None else "NA"
    mm = ptr((moving_mask != 0).clone("unsigned char")) if moving_mask is not None else "NA"

    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--collapse-output-transforms", "1",
        "--write-composite-transform", "0",
        "--output", prefix,
        "--interpolation", "Linear",
        "--winsorize-image-intensities", "[0.005,0.995]",
        "--use-histogram-matching", "1",
        "--initial-moving-transform", init,
        "--random-seed", str(ants_seed(seed)),  # 0 would mean "from the clock"
    ]  # fmt: skip
    for kind in p.linear:
        args += [
            "--transform", f"{kind}[0.1]",
            "--metric", f"MI[{f_str},{m_str},1,32,Regular,0.25]",
            "--convergence", f"[{_csv(p.linear_iterations)},1e-6,10]",
            "--shrink-factors", _csv(p.linear_shrink),
            "--smoothing-sigmas", _csv(p.linear_smoothing_vox) + "vox",
            "--masks", f"[{fm},{mm}]",
        ]  # fmt: skip
    if p.syn_metric == "CC":
        syn_metric = f"CC[{f_str},{m_str},1,{p.cc_radius}]"
    elif p.syn_metric == "MI":
        syn_metric = f"MI[{f_str},{m_str},1,32]"
    else:
        raise ValueError(f"unknown SyN metric {p.syn_metric!r}")
    args += [
        "--transform", f"SyN[{p.syn_step},{p.syn_update_sigma},{p.syn_total_sigma}]",
        "--metric", syn_metric,
        "--convergence", f"[{_csv(p.syn_iterations)},1e-6,10]",
        "--shrink-factors", _csv(p.syn_shrink),
        "--smoothing-sigmas", _csv(p.syn_smoothing_vox) + "vox",
        "--masks", f"[{fm},{mm}]",
    ]  # fmt: skip
    threads.mark_itk_used()
    code = _libfn()(args)
    keep.clear()
    if code != 0:
        raise RuntimeError(f"antsRegistration failed with exit code {code}")
    affine = Path(prefix + "0GenericAffine.mat")
    warp = Path(prefix + "1Warp.nii.gz")
    inv_warp = Path(prefix + "1InverseWarp.nii.gz")
    for f in (affine, warp, inv_warp):
        if not f.is_file():
            raise RuntimeError(f"antsRegistration wrote no {f.name}")
    return SynResult(
        forward=[str(warp), str(affine)],
        inverse=[str(affine), str(inv_warp)],
        inverse_flags=[True, False],
    )


def moving_coordinates(fixed, moving_shape, result: SynResult, moving_affine_img) -> np.ndarray:
    """Continuous voxel coordinates in the moving image of every fixed voxel, shape (3, X, Y, Z).

    Each coordinate is a linear function of the moving voxel index, so resampling the index
    images linearly through the forward transforms gives it exactly (away from the border);
    fixed voxels that map outside the moving image get ``-1``.

    Args:
        fixed: the ANTs fixed image (its grid).
        moving_shape: shape of the moving image.
        result: the registration.
        moving_affine_img: an ANTs image with the moving image's geometry.
    """
    import ants

    out = []
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in moving_shape], indexing="ij")
    for axis in range(3):
        idx = moving_affine_img.new_image_like(np.ascontiguousarray(grids[axis]))
        w = ants.apply_transforms(
            fixed, idx, result.forward, interpolator="linear", defaultvalue=-1.0
        )
        out.append(w.numpy().astype(np.float32))
    return np.stack(out)
