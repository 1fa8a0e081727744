"""Private: one linear (rigid/similarity/affine) ANTs registration with full control of its stages.

The stock :func:`ants.registration` builds a fixed command line, draws its output prefix with
``tempfile.mktemp`` (files left in ``/tmp``) and, in antspyx 0.6, takes no seed argument. Here the
``antsRegistration`` command line is built from :class:`Stage` objects, with an explicit
``--random-seed``, and every file goes to a folder the caller owns (and removes).

Conventions: ``fixed``/``moving`` as in ANTs; the result is the 4x4 RAS matrix of the point mapping
fixed world -> moving world (see :mod:`neurocast.registration.transforms`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurocast.registration import threads
from neurocast.registration.transforms import ants_to_matrix, matrix_to_ants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage of a linear registration (one transform type, a multi-resolution schedule).

    Attributes:
        transform: ``"Translation"``, ``"Rigid"``, ``"Similarity"`` or ``"Affine"``.
        iterations: iterations per level, coarse to fine.
        shrink: shrink factor per level (voxels of the fixed image).
        smoothing_vox: Gaussian sigma per level, in voxels of the fixed image.
        gradient_step: the optimiser's step.
        metric: ``"MI"`` (Mattes mutual information, 32 bins), ``"GC"`` (global correlation),
            ``"CC"`` (neighbourhood cross-correlation, radius 2) or ``"MeanSquares"``.
        sampling: share of fixed voxels sampled (regular grid with seeded jitter); 1 = all.
        masked: use the fixed/moving masks in this stage.
    """

    transform: str
    iterations: tuple[int, ...]
    shrink: tuple[int, ...]
    smoothing_vox: tuple[float, ...]
    gradient_step: float = 0.1
    metric: str = "MI"
    sampling: float = 0.25
    masked: bool = True

    def __post_init__(self) -> None:
        if self.transform not in ("Translation", "Rigid", "Similarity", "Affine"):
            raise ValueError(f"unknown linear transform {self.transform!r}")
        if not (len(self.iterations) == len(self.shrink) == len(self.smoothing_vox)):
            raise ValueError("iterations, shrink and smoothing_vox need one entry per level")


def _pointer(img) -> str:
    try:
        from ants.internal import get_pointer_string
    except ImportError:  # pragma: no cover - older antspyx
        from ants.utils import get_pointer_string  # type: ignore[no-redef]
    return get_pointer_string(img)


def _libfn():
    try:
        from ants.internal import get_lib_fn
    except ImportError:  # pragma: no cover - older antspyx
        from ants.utils import get_lib_fn  # type: ignore[no-redef]
    return get_lib_fn("antsRegistration")


def ants_seed(seed: int) -> int:
    """The ``--random-seed`` given to ANTs for a neurocast seed: ``seed + 1``.

    ANTs treats a seed of 0 as "no seed" and then draws its sampling jitter from the clock, so
    neurocast's default seed 0 must not be passed through as 0.
    """
    seed = int(seed)
    if seed < 0 or seed >= 2**31 - 1:
        raise ValueError(f"seed must be in [0, 2**31 - 2], got {seed}")
    return seed + 1


def register_linear(
    fixed,
    moving,
    stages: list[Stage],
    *,
    work_dir: Path,
    fixed_mask=None,
    moving_mask=None,
    initial: np.ndarray | str | None = None,
    seed: int = 0,
    tag: str = "reg",
) -> np.ndarray:
    """Run ``antsRegistration`` (linear stages only) and return the fixed->moving RAS matrix.

    Args:
        fixed, moving: ANTs float images.
        stages: the stages, run in order; their transforms are collapsed into one affine.
        work_dir: an existing folder for the transform files (the caller removes it).
        fixed_mask, moving_mask: ANTs images (non-zero = inside), used in stages with ``masked``.
        initial: a 4x4 RAS matrix (fixed -> moving points) to start from; ``"com"`` to align the
            intensity centres of mass; ``"geometry"`` to align the image centres; ``None`` = identity.
        seed: seed of the metric's sampling jitter (same seed, same result; ANTs gets
            :func:`ants_seed` of it).
        tag: a name for the files of this call inside ``work_dir``.

    Raises:
        RuntimeError: antsRegistration returned an error code or wrote no transform.
    """
    import ants

    work_dir = Path(work_dir)
    prefix = str(work_dir / f"{tag}_")
    keep = []  # keep every image referenced by pointer alive until the call returns

    def ptr(img) -> str:
        keep.append(img)
        return _pointer(img)

    fixed = fixed if fixed.pixeltype == "float" else fixed.clone("float")
    moving = moving if moving.pixeltype == "float" else moving.clone("float")
    f_str, m_str = ptr(fixed), ptr(moving)
    if isinstance(initial, np.ndarray):
        init_path = work_dir / f"{tag}_init.mat"
        ants.write_transform(matrix_to_ants(initial), str(init_path))
        init = str(init_path)
    elif initial == "com":
        init = f"[{f_str},{m_str},1]"
    elif initial == "geometry":
        init = f"[{f_str},{m_str},0]"
    elif initial is None:
        init = "Identity"
    else:
        raise ValueError(f"unknown initial transform {initial!r}")

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
        "--use-histogram-matching", "0",
        "--initial-moving-transform", init,
        "--random-seed", str(ants_seed(seed)),
    ]  # fmt: skip
    for st in stages:
        if st.metric == "MI":
            metric = f"MI[{f_str},{m_str},1,32,Regular,{st.sampling}]"
        elif st.metric == "GC":
            metric = f"GC[{f_str},{m_str},1,1,Regular,{st.sampling}]"
        elif st.metric == "CC":
            metric = f"CC[{f_str},{m_str},1,2]"
        elif st.metric == "MeanSquares":
            metric = f"MeanSquares[{f_str},{m_str},1,0,Regular,{st.sampling}]"
        else:
            raise ValueError(f"unknown metric {st.metric!r}")
        args += [
            "--transform", f"{st.transform}[{st.gradient_step}]",
            "--metric", metric,
            "--convergence", f"[{'x'.join(str(i) for i in st.iterations)},1e-6,10]",
            "--shrink-factors", "x".join(str(s) for s in st.shrink),
            "--smoothing-sigmas", "x".join(f"{s:g}" for s in st.smoothing_vox) + "vox",
            "--masks", f"[{fm},{mm}]" if st.masked else "[NA,NA]",
        ]  # fmt: skip
    threads.mark_itk_used()
    code = _libfn()(args)
    if code != 0:
        raise RuntimeError(f"antsRegistration failed with exit code {code}")
    out = Path(prefix + "0GenericAffine.mat")
    if not out.is_file():
        raise RuntimeError("antsRegistration wrote no transform")
    matrix = ants_to_matrix(out)
    keep.clear()  # the images referenced by pointer may be released now
    return matrix
