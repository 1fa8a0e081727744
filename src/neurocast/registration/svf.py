"""Fit a stationary velocity field between two images of one subject (non-linear alignment).

:func:`fit_velocity_field` finds ``v`` on a grid ``field_factor`` times coarser than the images such
that ``follow_up(x) ~ baseline(x + exp(v)(x))`` (the contract of
:mod:`neurocast.registration.deformation`): ``warp(baseline, integrate_velocity(v))`` reproduces
the follow-up, and ``volume_change_map(v)`` is the local volume change of the baseline's tissue.

Method (log-domain, Demons-like gradient descent, no autograd):

* Both images are divided by their 99th intensity percentile (inside the mask if given).
* Multi-resolution: ``levels`` image levels, each half the resolution of the next (Gaussian
  pre-smoothing, then linear resampling over the same box); the velocity grid of each level is
  ``field_factor`` times coarser than its images, and the velocity is carried to the next level by
  :func:`~neurocast.registration.deformation.resize_field`.
* Similarity: local normalised cross-correlation (``"lncc"``, default; window of ``2 * radius + 1``
  voxels per axis at every level, robust to intensity differences between visits) or mean squared
  error (``"mse"``) of the intensity-normalised images. The LNCC gradient is the usual
  per-voxel approximation (as in ANTs' CC metric). The window is wide by default (``radius=6``:
  26 mm at 2 mm): its local statistics are then estimated from many voxels, so image noise drives
  the field much less, which is what allows the weak regularisation below (see "Defaults").
* The similarity gradient with respect to the displacement is the image residual times the
  baseline's gradient sampled at the warped positions, taken through the exact adjoint of the
  fine-to-coarse field resampling; the derivative of ``exp`` is approximated by the identity (the
  first-order BCH approximation of log-domain Demons), so no gradient is back-propagated through
  scaling and squaring. This keeps an iteration cheap and makes the fit deterministic on CPU *and*
  GPU (no scatter-add in any backward pass).
* Regularisation, both together: the velocity is parametrised as a Gaussian-smoothed field
  ``v = G_sigma * p`` (``smoothing_sigma`` in velocity voxels; Demons-style "fluid-like"
  smoothing of every update), and a bending penalty ``regularization * mean(|Laplacian v|^2)``
  is added to the loss (``regularizer="diffusion"`` uses ``mean(|grad v|^2)`` instead). The
  smoothing makes the per-voxel steps of Adam spatially coherent; the penalty decides the
  velocity where the images carry no information (homogeneous tissue). Bending is the default
  because it leaves smooth regional expansion and shrinkage (what atrophy is) nearly free, where
  diffusion damps them: on the benchmark's known deformations (see
  ``benchmarks/registration_deformation.md``) bending gave Jacobian correlations of about 0.95
  against about 0.87 for the best diffusion weight, with no folding. The weight trades accuracy
  of the pattern (voxel-wise, where image noise is fitted when the penalty is weak) against its
  amplitude (regional volume change, which a strong penalty shrinks): see "Defaults".
* Optimiser: Adam on ``p`` (learning rate in velocity voxels per step), with early stopping per
  level when the loss improves by less than ``tolerance`` (relative) over 10 iterations.

Defaults (``regularization=0.3``, ``smoothing_sigma=1.0``, ``radius=6``; chosen 2026-11-22, before
that ``regularization=2.0``, ``radius=2``). Two uses pull the penalty in opposite directions, so
there are two settings:

* **Voxel-wise maps** (this function's default, 0.3): the known-deformation benchmark of issue 3
  (``benchmarks/registration_deformation.py``: real IXI scans warped by a smooth random
  atrophy-like field, 2 % noise on both images; Jacobian correlation inside the brain >= 0.9,
  folding < 0.01 %) wants a strong penalty, because a weak one fits the noise and the voxel-wise
  Jacobian gets noisy.
* **Regional volume change** (:data:`REGIONAL_CHANGE_REGULARIZATION` 0.01 with
  :data:`REGIONAL_CHANGE_RADIUS` 4 on the 2 mm grid, an 8 mm window,
  :data:`REGIONAL_CHANGE_RADIUS_MM`; what ``neurocast register`` uses since 2026-12-05; 0.05
  with radius 6 before): the truth check of issue 4 (``benchmarks/simulate_truth_check.py``:
  regional volume change of hippocampus and lateral ventricles measured on simulated raw images,
  mean |measured - true| <= 10 % of mean |true|) wants a weak one, because the penalty shrinks
  regional changes, most of all in small structures, while the voxel-wise noise a weak penalty
  lets in averages out over a region. With the narrower LNCC window this setting also keeps the
  known-deformation figure: r min 0.904 / median 0.936, no folding (``--fit regularization=0.01
  --fit radius=4``), against 0.750 / 0.821 for 0.05 with radius 6.

Sweep of 2026-12-05 with the regions fitted to each subject
(:func:`~neurocast.registration.volumes.atlas_to_subject`, ``register``'s default since that
day): refits of the 18 follow-ups of the seed-11 truth check registered by ``register`` at 0.05
(``simulate_truth_check_variants.py``), ratio / slope on the subject-fitted labels (the template
atlas in brackets, hippocampus):

================================  =======================  ======================
setting (4 mm field)              subject: hippocampus     subject: ventricles
================================  =======================  ======================
reg 0.05, radius 6 (before)       0.17 / 0.88 (0.21)       0.08 / 0.95
reg 0.03                          0.14 / 0.92 (0.19)       0.08 / 0.97
reg 0.02                          0.13 / 0.95 (0.18)       0.08 / 0.99
reg 0.01                          0.11 / 0.99 (0.15)       0.09 / 1.01
reg 0.005                         0.11 / 1.01 (0.13)       0.09 / 1.02
reg 0                             0.12 / 1.04 (0.13)       0.10 / 1.03
reg 0.01, smoothing 1.5           0.14 / 0.96              0.10 / 0.92
reg 0.01, smoothing 0.75          0.13 / 0.98              0.09 / 1.01
**reg 0.01, radius 4** (now)      0.10 / 0.98 (0.14)       0.07 / 0.98
reg 0.01, radius 3                0.11 / 0.95              0.08 / 0.97
reg 0.02, radius 4                0.12 / 0.94              0.08 / 0.96
2 mm field, reg 0.1 (11 s)        0.14 / 0.93 (0.19)       0.09 / 0.99
================================  =======================  ======================

These were chosen on this cohort; ``register`` itself with the chosen setting gives 0.105 (the
refit above runs on the masked images it wrote), and a cohort drawn with another seed is in
``benchmarks/simulate_truth_check.md``.

Older sweep (same date, before the subject-fitted labels and the differential bias correction,
on the template atlas), measured after the fix of the longitudinal rigid step (its initial transform carried
each visit's template scaling, which had cancelled part of every measured change and made the
ventricles look right by accident; earlier sweeps in the project history are biased by it).
"truth" = ``python benchmarks/simulate_truth_check_variants.py`` refits of the 18 follow-ups of
the 6-subject, seed-11 cohort on the default atlas (ratio = mean |measured - true| / mean |true|,
slope = measured / true); "known" = ``python benchmarks/registration_deformation.py --no-write
--fit regularization=...``, minimum / median Jacobian correlation over the 6 IXI scans; about 4 s
a pair for every 4 mm setting. The first row is ``register`` itself; the others refit the images
it wrote (masked), which gives nearly the same figures:

==============================  =============  ==================  =================
setting (4 mm field unless 2)   known: r       truth: hippocampus  truth: ventricles
==============================  =============  ==================  =================
reg 0.3 (function default)      0.926 / 0.956  0.27 / 0.73         0.19 / 0.83
reg 0.1                         0.839 / 0.893  --                  --
reg 0.07                        --             0.26 / 0.80         0.09 / 0.95
reg 0.05 (``register`` then)    0.750 / 0.821  0.24 / 0.84         0.09 / 0.97
reg 0.03                        --             0.21 / 0.88         0.10 / 1.01
2 mm field, reg 0.1 (12 s)      0.552 / 0.657  0.21 / 0.88         0.13 / 1.02
==============================  =============  ==================  =================

Since 2026-12-05 ``align_subject`` also removes the differential bias between visits
(:mod:`neurocast.registration.bias`): ``register`` then gave hippocampus 0.19 and ventricles 0.09
(0.16 and 0.08 once the regions were fitted to each subject, before the new penalty and window).
Scatter between pairs, not bias, limited the hippocampus at that point: on a still, ideal acquisition
(no motion, gamma, bias field or protocol change, noise 0.1 %) the 2 mm field at 0.1 gives 0.08
(atlas) and 0.04 (the subject's own labels), and adding 2 % white noise to those images only
raises it to 0.10 / 0.06. Neither more iterations (a finest-level cap of 100 and
``tolerance=1e-5`` changed nothing), Gaussian pre-smoothing of the images nor a larger LNCC
epsilon helped (2026-11-22). A wider LNCC window costs nothing (the box filter is a dense matrix
product per axis) and buys noise robustness, hence ``radius=6``: on the known deformations,
radius 2 gave r = 0.883 at regularization 0.5, radius 4 0.933 at 0.5, radius 6 0.926 at 0.3
(sweep of 2026-11-22; those figures do not involve the longitudinal step).

There is no random element: the ``seed`` only seeds torch's generator (in a forked RNG state) for
the project's reproducibility convention. The same inputs on the same machine and thread count
give bit-identical velocities (``torch.use_deterministic_algorithms`` is switched on for the
duration of the fit and restored afterwards).

Example:
    >>> import torch
    >>> from neurocast.registration.svf import fit_velocity_field
    >>> base = torch.rand(24, 24, 24)
    >>> fit = fit_velocity_field(base, base, levels=1, iterations=5)
    >>> tuple(fit.velocity.shape)
    (1, 3, 13, 13, 13)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neurocast.registration.deformation import (
    _normalised_identity,
    coarse_shape,
    folding_fraction,
    integrate_velocity,
    resize_field,
    volume_change_map,
    warp,
)

__all__ = [
    "REGIONAL_CHANGE_RADIUS",
    "REGIONAL_CHANGE_RADIUS_MM",
    "REGIONAL_CHANGE_REGULARIZATION",
    "VelocityFit",
    "fit_velocity_field",
    "global_ncc",
    "regional_change_radius",
]

Similarity = Literal["lncc", "mse"]
Regularizer = Literal["bending", "diffusion"]

REGIONAL_CHANGE_REGULARIZATION = 0.01
"""The bending weight for measuring regional volume change (``neurocast register``'s default):
far weaker than the function's default 0.3, which is tuned for voxel-wise Jacobian maps and
shrinks the change of small structures. See "Defaults" in the module docstring for the figures."""

REGIONAL_CHANGE_RADIUS_MM = 8.0
"""The LNCC window radius (mm) ``neurocast register`` fits with, beside
:data:`REGIONAL_CHANGE_REGULARIZATION`: 4 voxels of the 2 mm working grid, a narrower window than
the default 6 voxels, which follows the edges of small structures more closely (see "Defaults").
Given in mm so that a finer working grid keeps the same window (:func:`regional_change_radius`)."""

def regional_change_radius(grid_spacing_mm: float) -> int:
    """The LNCC radius in voxels of a working grid that spans :data:`REGIONAL_CHANGE_RADIUS_MM`.

    Example:
        >>> regional_change_radius(2.0), regional_change_radius(1.0)
        (4, 8)
    """
    if not grid_spacing_mm > 0:
        raise ValueError(f"grid_spacing_mm must be > 0, got {grid_spacing_mm}")
    return max(1, round(REGIONAL_CHANGE_RADIUS_MM / grid_spacing_mm))


REGIONAL_CHANGE_RADIUS = regional_change_radius(2.0)
""":data:`REGIONAL_CHANGE_RADIUS_MM` in voxels of the default 2 mm working grid (4)."""

DEFAULT_ITERATIONS: tuple[int, ...] = (200, 100, 40)
"""Maximum iterations per level, coarsest first (for ``levels=3``)."""


@dataclass
class VelocityFit:
    """The result of :func:`fit_velocity_field`.

    Attributes:
        velocity: (1, 3, x, y, z) float32 stationary velocity on the image grid downsampled by
            ``field_factor`` (shape :func:`~neurocast.registration.deformation.coarse_shape`), in
            voxel units of that grid, on the CPU.
        n_iter: iterations run, all levels together.
        loss_history: the loss (similarity + regularisation) at every iteration, all levels in
            order (levels have different resolutions, so values jump between levels).
        ncc_before: normalised cross-correlation (Pearson) of baseline and follow-up inside the
            mask (whole grid without one), before alignment.
        ncc_after: the same between the warped baseline and the follow-up.
        seconds: wall time of the fit.
        image_shape: the grid of the images.
        field_factor: image-to-field downsampling factor.
        folding: share of voxels of the velocity grid where ``exp(v)`` folds (J <= 0).
        iterations_per_level: iterations run at each level, coarsest first.
        settings: the options used.
    """

    velocity: Tensor
    n_iter: int
    loss_history: list[float]
    ncc_before: float
    ncc_after: float
    seconds: float
    image_shape: tuple[int, int, int] = (0, 0, 0)
    field_factor: int = 2
    folding: float = 0.0
    iterations_per_level: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def displacement(self, shape: Sequence[int] | None = None, n_steps: int = 7) -> Tensor:
        """Displacement of ``exp(v)`` on the field grid, or resampled to ``shape`` (e.g. the images')."""
        u = integrate_velocity(self.velocity, n_steps=n_steps)
        return u if shape is None else resize_field(u, shape)

    def volume_change(self, shape: Sequence[int] | None = None) -> Tensor:
        """:func:`~neurocast.registration.deformation.volume_change_map` of the fitted velocity
        (on the image grid unless ``shape`` says otherwise)."""
        return volume_change_map(self.velocity, self.image_shape if shape is None else shape)


# --------------------------------------------------------------------------------------------
# separable linear operators (interpolation, Gaussian, box) as small dense matrices per axis
# --------------------------------------------------------------------------------------------


def _interp_matrix(n_out: int, n_in: int) -> Tensor:
    """(n_out, n_in) linear interpolation, first and last samples aligned (align_corners=True)."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    pos = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))
    lo = torch.clamp(pos.floor().long(), 0, n_in - 1)
    w = pos - lo
    hi = torch.clamp(lo + 1, max=n_in - 1)
    rows = torch.arange(n_out)
    a.index_put_((rows, lo), 1 - w, accumulate=True)
    a.index_put_((rows, hi), w, accumulate=True)
    return a


def _gauss_matrix(n: int, sigma: float) -> Tensor:
    """(n, n) Gaussian smoothing with rows renormalised at the borders (sigma in voxels)."""
    i = torch.arange(n, dtype=torch.float64)
    if sigma <= 0:
        return torch.eye(n, dtype=torch.float64)
    radius = max(1, math.ceil(3 * sigma))
    d = i[:, None] - i[None, :]
    g = torch.exp(-0.5 * (d / sigma) ** 2) * (d.abs() <= radius)
    return g / g.sum(dim=1, keepdim=True)


def _box_matrix(n: int, radius: int) -> Tensor:
    """(n, n) moving average over 2 * radius + 1 samples, zeros outside."""
    i = torch.arange(n, dtype=torch.float64)
    return ((i[:, None] - i[None, :]).abs() <= radius).to(torch.float64) / (2 * radius + 1)


def _separable(x: Tensor, mats: Sequence[Tensor]) -> Tensor:
    """Apply mats[d] (n_out_d, n_in_d) along spatial axis d of x (B, C, X, Y, Z)."""
    b, c, nx, ny, nz = x.shape
    mz, my, mx = mats[2], mats[1], mats[0]
    x = (x.reshape(-1, nz) @ mz.T).reshape(b * c * nx, ny, mz.shape[0])
    x = (my @ x).reshape(b * c, nx, my.shape[0] * mz.shape[0])
    x = mx @ x
    return x.reshape(b, c, mx.shape[0], my.shape[0], mz.shape[0])


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_volume(x: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim == 5 and x.shape[:2] == (1, 1):
        x = x[0, 0]
    if x.ndim != 3:
        raise ValueError(f"{name} must be a 3-D volume (X, Y, Z), got shape {tuple(x.shape)}")
    if min(x.shape) < 4:
        raise ValueError(f"{name} needs at least 4 voxels along every axis, got {tuple(x.shape)}")
    return x


def global_ncc(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """Normalised cross-correlation (Pearson r) of two volumes, inside ``mask`` if given."""
    a = a.reshape(-1).to(torch.float64)
    b = b.reshape(-1).to(torch.float64)
    if mask is not None:
        m = mask.reshape(-1) > 0
        a, b = a[m], b[m]
    a = a - a.mean()
    b = b - b.mean()
    den = torch.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if float(den) > 0 else 0.0


def _percentile(x: Tensor, q: float, mask: Tensor | None) -> float:
    vals = x[mask] if mask is not None else x.reshape(-1)
    vals = vals.reshape(-1)
    k = max(1, min(vals.numel(), round(q / 100.0 * vals.numel())))
    return float(vals.kthvalue(k).values)


def _blur_down(img: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Anti-aliased downsampling of (1, 1, X, Y, Z) to ``shape`` over the same box."""
    src = tuple(img.shape[2:])
    factors = [(n - 1) / (m - 1) for n, m in zip(src, shape, strict=True)]
    mats = []
    for n, m, f in zip(src, shape, factors, strict=True):
        sigma = 0.5 * f if f > 1 else 0.0
        g = _gauss_matrix(n, sigma)
        mats.append((_interp_matrix(m, n) @ g).to(img.dtype))
    return _separable(img, mats)


@contextlib.contextmanager
def _deterministic(num_threads: int | None, seed: int) -> Iterator[None]:
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        if num_threads is not None:
            torch.set_num_threads(prev_threads)


class _Level:
    """Precomputed data of one resolution level."""

    def __init__(
        self,
        moving: Tensor,
        fixed: Tensor,
        vshape: tuple[int, int, int],
        similarity: str,
        radius: int,
        sigma: float,
        eps: float,
    ) -> None:
        self.shape = tuple(moving.shape[2:])
        self.vshape = vshape
        self.fixed = fixed
        dt, dev = moving.dtype, moving.device
        grads = torch.gradient(moving, dim=(2, 3, 4), edge_order=1)
        # warped together in one grid_sample: the moving image and its gradient
        self.stack = torch.cat([moving, *grads], dim=1).contiguous()
        self.up = [
            _interp_matrix(n, m).to(dev, dt) for n, m in zip(self.shape, vshape, strict=True)
        ]
        self.up_t = [a.T.contiguous() for a in self.up]
        self.unit = torch.tensor(
            [(n - 1) / (m - 1) for n, m in zip(self.shape, vshape, strict=True)],
            dtype=dt,
            device=dev,
        ).view(1, 3, 1, 1, 1)
        self.grid_scale = torch.tensor(
            [2.0 / (n - 1) for n in self.shape[::-1]], dtype=dt, device=dev
        )
        self.ident = _normalised_identity(self.shape, dev, dt)  # type: ignore[arg-type]
        self.gauss = [_gauss_matrix(n, sigma).to(dev, dt) for n in vshape]
        self.gauss_t = [g.T.contiguous() for g in self.gauss]
        self.similarity = similarity
        self.eps = eps
        self.n_vox = float(np.prod(self.shape))
        if similarity == "lncc":
            self.box = [_box_matrix(n, radius).to(dev, dt) for n in self.shape]
            mean_f = _separable(fixed, self.box)
            var_f = _separable(fixed * fixed, self.box) - mean_f * mean_f
            self.fc = fixed - mean_f  # fixed minus its local mean
            self.mean_f = mean_f
            self.var_f = var_f.clamp_min(0) + eps

    def similarity_and_grad(self, w: Tensor) -> tuple[float, Tensor]:
        """Similarity loss (lower is better) and its gradient with respect to the warped image."""
        if self.similarity == "mse":
            r = w - self.fixed
            return float((r * r).mean()), r * (2.0 / self.n_vox)
        f = self.fixed
        sums = _separable(torch.cat([w, w * w, w * f], dim=1), self.box)
        mean_w = sums[:, 0:1]
        var_w = (sums[:, 1:2] - mean_w * mean_w).clamp_min(0) + self.eps
        cross = sums[:, 2:3] - self.mean_f * mean_w
        cc = cross * cross / (self.var_f * var_w)
        a = 2.0 * cross / (self.var_f * var_w)
        grad = -(a * (self.fc - (cross / var_w) * (w - mean_w))) / self.n_vox
        return -float(cc.mean()), grad


def _diffusion(v: Tensor) -> tuple[float, Tensor]:
    """mean over voxels of |grad v|^2 (forward differences) and its gradient."""
    n = float(v[0, 0].numel())
    energy = 0.0
    grad = torch.zeros_like(v)
    for d in (2, 3, 4):
        diff = torch.diff(v, dim=d)
        energy += float((diff * diff).sum())
        # d/dv of sum(diff^2): -2 diff at the lower index, +2 diff at the upper one
        pad_lo = [0] * 6
        pad_hi = [0] * 6
        i = (4 - d) * 2
        pad_lo[i + 1] = 1  # pad after -> lower index gets -diff
        pad_hi[i] = 1  # pad before -> upper index gets +diff
        grad += 2.0 * (F.pad(diff, pad_hi) - F.pad(diff, pad_lo))
    return energy / n, grad / n


def _laplacian(v: Tensor) -> Tensor:
    """6-neighbour Laplacian with mirrored (Neumann) borders."""
    vp = F.pad(v, (1, 1, 1, 1, 1, 1), mode="replicate")
    lap = -6.0 * v
    lap = lap + vp[:, :, 2:, 1:-1, 1:-1] + vp[:, :, :-2, 1:-1, 1:-1]
    lap = lap + vp[:, :, 1:-1, 2:, 1:-1] + vp[:, :, 1:-1, :-2, 1:-1]
    lap = lap + vp[:, :, 1:-1, 1:-1, 2:] + vp[:, :, 1:-1, 1:-1, :-2]
    return lap


def _bending(v: Tensor) -> tuple[float, Tensor]:
    """mean over voxels of |Laplacian v|^2 and (approximately) its gradient 2 L^T L v / n."""
    n = float(v[0, 0].numel())
    lap = _laplacian(v)
    return float((lap * lap).sum()) / n, 2.0 * _laplacian(lap) / n


# --------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------


def fit_velocity_field(
    baseline: Tensor | np.ndarray,
    follow_up: Tensor | np.ndarray,
    *,
    mask: Tensor | np.ndarray | None = None,
    field_factor: int = 2,
    levels: int = 3,
    iterations: int | Sequence[int] | None = None,
    similarity: Similarity = "lncc",
    radius: int = 6,
    regularization: float = 0.3,
    smoothing_sigma: float = 1.0,
    learning_rate: float | Sequence[float] = 0.05,
    n_steps: int = 7,
    tolerance: float = 1e-4,
    regularizer: Regularizer = "bending",
    lr_decay: float = 1.0,
    init_velocity: Tensor | None = None,
    device: torch.device | str | None = None,
    num_threads: int | None = None,
    seed: int = 0,
) -> VelocityFit:
    """Fit a stationary velocity field ``v`` with ``follow_up(x) ~ baseline(x + exp(v)(x))``.

    Args:
        baseline: (X, Y, Z) volume (tensor or array; also (1, 1, X, Y, Z)), already affinely
            aligned with the follow-up on the same grid.
        follow_up: (X, Y, Z) volume on the same grid.
        mask: optional (X, Y, Z) brain mask on that grid (nonzero = inside): used for the intensity
            normalisation and for ``ncc_before`` / ``ncc_after``; the similarity uses the whole grid.
        field_factor: the velocity grid is this many times coarser than the images (2: a 4 mm
            field for 2 mm images), :func:`~neurocast.registration.deformation.coarse_shape`.
        levels: resolution levels (1 to 4); each coarser level halves the image resolution.
        iterations: maximum iterations per level, coarsest first (a single int applies to every
            level). Default :data:`DEFAULT_ITERATIONS` (its last ``levels`` entries).
        similarity: ``"lncc"`` (local normalised cross-correlation, default) or ``"mse"``.
        radius: LNCC window half-width in voxels of each level (window ``2 * radius + 1``);
            the default 6 is wide on purpose (noise robustness, see "Defaults" in the module
            docstring).
        regularization: weight of the regulariser (``mean(|Laplacian v|^2)`` for ``"bending"``,
            ``mean(|grad v|^2)`` for ``"diffusion"``; velocity voxels), against a similarity of
            order 1 (LNCC in [-1, 0]).
        smoothing_sigma: Gaussian smoothing of the velocity parametrisation, in velocity voxels
            (0 = none).
        learning_rate: Adam step in velocity voxels, one value or one per level.
        n_steps: scaling-and-squaring steps.
        tolerance: relative loss improvement over 10 iterations below which a level stops early
            (0 = always run all iterations).
        regularizer: ``"bending"`` (default: penalises the Laplacian of the velocity, so smooth
            regional expansion and shrinkage cost little and Jacobians are recovered well) or
            ``"diffusion"`` (penalises its gradient, which also damps the volume changes).
        lr_decay: the learning rate falls geometrically to ``lr_decay`` times its start over each
            level's maximum iterations (1 = constant).
        init_velocity: optional (1, 3, x, y, z) starting point (any grid over the same box,
            resampled to the coarsest level); it is used as the parameter ``p`` before the
            Gaussian smoothing, so the fit starts from its smoothed version.
        device: where to compute (default: the baseline's device).
        num_threads: torch CPU threads during the fit (restored afterwards); None keeps torch's.
        seed: seeds torch's generator during the fit (the fit itself has no random element).

    Returns:
        A :class:`VelocityFit`; its velocity is on the CPU.

    Raises:
        ValueError: shapes that differ or are too small, NaN/Inf voxels, a constant image, a mask
            on another grid or empty, or an option out of range.
    """
    t0 = time.perf_counter()
    base = _as_volume(baseline, "baseline")
    foll = _as_volume(follow_up, "follow_up")
    if tuple(base.shape) != tuple(foll.shape):
        raise ValueError(
            f"baseline {tuple(base.shape)} and follow_up {tuple(foll.shape)} must be on the same grid"
        )
    shape: tuple[int, int, int] = tuple(int(s) for s in base.shape)  # type: ignore[assignment]
    for name, vol in (("baseline", base), ("follow_up", foll)):
        if not bool(torch.isfinite(vol).all()):
            raise ValueError(f"{name} contains NaN or Inf voxels")
    if isinstance(field_factor, bool) or int(field_factor) != field_factor or field_factor < 1:
        raise ValueError(f"field_factor must be a positive integer, got {field_factor!r}")
    if not 1 <= int(levels) <= 4:
        raise ValueError(f"levels must be between 1 and 4, got {levels}")
    levels = int(levels)
    if similarity not in ("lncc", "mse"):
        raise ValueError(f"similarity must be 'lncc' or 'mse', got {similarity!r}")
    if regularization < 0 or smoothing_sigma < 0 or radius < 1 or tolerance < 0:
        raise ValueError(
            "regularization, smoothing_sigma and tolerance must be >= 0 and radius >= 1, got "
            f"{regularization}, {smoothing_sigma}, {tolerance}, {radius}"
        )
    if iterations is None:
        iters = list(DEFAULT_ITERATIONS[-levels:]) if levels <= 3 else [300, *DEFAULT_ITERATIONS]
    elif isinstance(iterations, int):
        iters = [int(iterations)] * levels
    else:
        iters = [int(i) for i in iterations]
    if len(iters) != levels or min(iters) < 0:
        raise ValueError(f"iterations must give {levels} non-negative counts, got {iterations!r}")
    lrs = (
        [float(learning_rate)] * levels
        if np.isscalar(learning_rate)
        else [float(x) for x in learning_rate]
    )  # type: ignore[union-attr]
    if len(lrs) != levels or min(lrs) <= 0:
        raise ValueError(
            f"learning_rate must be positive, one value or {levels}, got {learning_rate!r}"
        )

    if regularizer not in ("bending", "diffusion"):
        raise ValueError(f"regularizer must be 'bending' or 'diffusion', got {regularizer!r}")
    reg_fn = _bending if regularizer == "bending" else _diffusion
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
    dev = torch.device(device) if device is not None else base.device
    dt = torch.float32
    with _deterministic(num_threads, seed):
        base = base.to(dev, dt)[None, None]
        foll = foll.to(dev, dt)[None, None]
        msk = None
        if mask is not None:
            msk = _as_volume(mask, "mask").to(dev)
            if tuple(msk.shape) != shape:
                raise ValueError(f"mask {tuple(msk.shape)} must be on the images' grid {shape}")
            msk = msk > 0
            if not bool(msk.any()):
                raise ValueError("mask is empty (no voxel inside)")
        scales = []
        for name, vol in (("baseline", base), ("follow_up", foll)):
            s = _percentile(vol[0, 0].abs(), 99.0, msk)
            if not s > 0:
                s = float(vol.abs().max())
            if not s > 0 or float(vol.max()) == float(vol.min()):
                raise ValueError(f"{name} is constant; nothing to register")
            scales.append(s)
        base_n = base / scales[0]
        foll_n = foll / scales[1]
        ncc_before = global_ncc(base_n, foll_n, msk)

        # image pyramid, coarsest first
        shapes = [shape]
        for _ in range(levels - 1):
            shapes.append(coarse_shape(shapes[-1], 2))
        shapes = shapes[::-1]
        final_vshape = coarse_shape(shape, field_factor) if field_factor > 1 else shape

        p: Tensor | None = None
        if init_velocity is not None:
            if init_velocity.ndim != 5 or init_velocity.shape[:2] != (1, 3):
                raise ValueError(
                    f"init_velocity must have shape (1, 3, x, y, z), got {tuple(init_velocity.shape)}"
                )
            p = init_velocity.to(dev, dt)
        history: list[float] = []
        per_level: list[int] = []
        for lev, (ishape, n_it, lr) in enumerate(zip(shapes, iters, lrs, strict=True)):
            vshape = (
                final_vshape
                if lev == levels - 1
                else (coarse_shape(ishape, field_factor) if field_factor > 1 else ishape)
            )
            mov = base_n if ishape == shape else _blur_down(base_n, ishape)
            fix = foll_n if ishape == shape else _blur_down(foll_n, ishape)
            level = _Level(mov, fix, vshape, similarity, radius, smoothing_sigma, 1e-4)
            p = (
                torch.zeros((1, 3, *vshape), device=dev, dtype=dt)
                if p is None
                else resize_field(p, vshape)
            )
            p = p.clone().requires_grad_(False)
            opt = torch.optim.Adam([p], lr=lr)
            losses: list[float] = []
            it = 0
            for it in range(1, n_it + 1):
                v = _separable(p, level.gauss) if smoothing_sigma > 0 else p
                u = integrate_velocity(v, n_steps=n_steps)
                big = _separable(u, level.up) * level.unit
                grid = level.ident + big.flip(1).movedim(1, -1) * level.grid_scale
                warped = F.grid_sample(
                    level.stack, grid, mode="bilinear", padding_mode="border", align_corners=True
                )
                sim, dw = level.similarity_and_grad(warped[:, 0:1])
                g_big = dw * warped[:, 1:4]
                g_v = _separable(g_big * level.unit, level.up_t)
                reg, g_reg = reg_fn(v) if regularization > 0 else (0.0, None)
                if g_reg is not None:
                    g_v = g_v + regularization * g_reg
                g_p = _separable(g_v, level.gauss_t) if smoothing_sigma > 0 else g_v
                p.grad = g_p
                opt.step()
                if lr_decay < 1:
                    opt.param_groups[0]["lr"] = lr * lr_decay ** (it / max(n_it, 1))
                loss = sim + regularization * reg
                losses.append(loss)
                if tolerance > 0 and it > 20:
                    old = losses[-11]
                    if old - loss < tolerance * abs(old):
                        break
            history.extend(losses)
            per_level.append(it if n_it > 0 else 0)
            p = p.detach()

        assert p is not None
        if smoothing_sigma > 0:
            v_final = _separable(
                p, [_gauss_matrix(n, smoothing_sigma).to(dev, dt) for n in final_vshape]
            )
        else:
            v_final = p
        u_final = integrate_velocity(v_final, n_steps=n_steps)
        warped_full = warp(base_n, u_final)
        ncc_after = global_ncc(warped_full, foll_n, msk)
        folding = float(folding_fraction(u_final)[0])
    velocity = v_final.detach().to("cpu", torch.float32).contiguous()
    return VelocityFit(
        velocity=velocity,
        n_iter=sum(per_level),
        loss_history=history,
        ncc_before=ncc_before,
        ncc_after=ncc_after,
        seconds=time.perf_counter() - t0,
        image_shape=shape,
        field_factor=int(field_factor),
        folding=folding,
        iterations_per_level=per_level,
        settings={
            "levels": levels,
            "iterations": iters,
            "similarity": similarity,
            "radius": radius,
            "regularization": regularization,
            "smoothing_sigma": smoothing_sigma,
            "learning_rate": lrs,
            "n_steps": n_steps,
            "tolerance": tolerance,
            "regularizer": regularizer,
            "lr_decay": lr_decay,
            "seed": seed,
            "num_threads": num_threads,
            "device": str(dev),
        },
    )
