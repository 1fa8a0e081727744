"""The forecaster's coarse field grid: images onto it, velocity fields restricted to it.

The progression model generates stationary velocity fields on a coarse grid (default 8 mm,
``21 x 25 x 22`` voxels for the default 2 mm working grid) that covers the same box as the working
grid (first and last voxel centres shared, ``align_corners=True`` semantics, as everywhere in
:mod:`neurocast.registration.deformation`).

**Why the restriction is fitted, not interpolated.** A velocity field fitted at 4 mm and point-sampled
onto an 8 mm grid loses its sharp divergence: measured on simulated subjects, the regional volume
change it implies shrinks to ~0.82 (hippocampus) and ~0.76 (lateral ventricles) of the truth. The
forecaster would inherit that bias. :func:`restrict_velocity` instead fits the coarse field so that
its volume-change map, evaluated on the fine field's grid, matches the fine field's (least squares,
Adam, starting from the interpolated field). On one simulated subject (5-year AD follow-up) the
fitted 8 mm field (150 iterations) gave hippocampus -23.4 % and lateral ventricles +57.0 % against
the truth's -23.1 % and +55.3 % (point-sampled: -19.2 % and +42.1 %). The mean squared difference
of the volume-change maps was 9e-6 after the default 60 iterations and 5e-7 after 150.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from neurocast.registration.deformation import coarse_shape, resize_field, volume_change_map

DEFAULT_FIELD_SPACING_MM = 8.0
"""Spacing of the forecaster's field grid (mm): the speed/accuracy trade-off measured in
benchmarks/backbone.md (8 mm: ~4 CPU-s per 24-field forecast; 4 mm: ~50 CPU-s)."""


def field_shape(image_shape: Sequence[int], image_spacing_mm: float, field_spacing_mm: float) -> tuple[int, int, int]:
    """Shape of the field grid over the box of an image grid.

    Args:
        image_shape: (X, Y, Z) of the working grid.
        image_spacing_mm: its spacing (mm).
        field_spacing_mm: the field grid's spacing (mm), >= ``image_spacing_mm``.

    Returns:
        The coarse (x, y, z), e.g. ``(21, 25, 22)`` for the 2 mm grid and 8 mm fields.

    Example:
        >>> field_shape((79, 97, 84), 2.0, 8.0)
        (21, 25, 22)
    """
    factor = float(field_spacing_mm) / float(image_spacing_mm)
    if factor < 1:
        raise ValueError(f"field spacing {field_spacing_mm} mm is finer than the image's {image_spacing_mm} mm")
    return coarse_shape(tuple(int(s) for s in image_shape), factor)


def normalise_condition(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Intensity scale of a conditioning image: divided by the 95th percentile of its brain voxels.

    The preprocessed images (white-matter peak = 1) and the simulation's clean images (peak ~0.9)
    then read alike. Voxels above 1 % of the maximum count as brain.

    Args:
        image: (X, Y, Z) array.

    Returns:
        float32 tensor of the same shape.
    """
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise ValueError("conditioning image holds NaN or Inf")
    inside = x[x > 0.01 * float(x.max())] if float(x.max()) > 0 else x.flatten()
    scale = float(torch.quantile(inside[:: max(1, inside.numel() // 200_000)], 0.95)) if inside.numel() else 1.0
    return x / (scale if scale > 0 else 1.0)


def image_to_field_grid(image: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An image on the working grid averaged onto the field grid.

    Area-style: the image is first smoothed by average pooling over the size ratio, then sampled
    at the field voxels with trilinear interpolation (``align_corners=True``).

    Args:
        image: (X, Y, Z) image (already normalised).
        shape: field grid (x, y, z).

    Returns:
        (1, x, y, z) float32 tensor.
    """
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    ratio = [max(1, round(a / b)) for a, b in zip(x.shape[2:], shape, strict=True)]
    k = [r if r % 2 == 1 else r + 1 for r in ratio]
    smooth = F.avg_pool3d(x, kernel_size=k, stride=1, padding=[s // 2 for s in k], count_include_pad=False)
    out = F.interpolate(smooth, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)
    return out[0]


def restrict_velocity(
    velocity: torch.Tensor,
    shape: Sequence[int],
    *,
    n_iter: int = 60,
    lr: float = 0.05,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fit a velocity field on a coarser grid whose volume change matches a fine field's.

    Minimises ``mean((J_c - J_f)^2)`` over the fine grid (inside ``mask`` if given), where ``J_f`` is
    :func:`~neurocast.registration.deformation.volume_change_map` of the fine field and ``J_c`` that of
    the coarse field evaluated on the fine grid; starts from the interpolated field. See the module
    docstring for why.

    Args:
        velocity: (B, 3, X, Y, Z) fine velocity (voxels of its grid).
        shape: coarse (x, y, z) over the same box.
        n_iter: Adam iterations (60 reach the plateau for fields of a few years of atrophy).
        lr: Adam step (coarse voxels).
        mask: optional (X, Y, Z) boolean weights on the fine grid.

    Returns:
        (B, 3, x, y, z) coarse velocity in voxels of the coarse grid.

    Example:
        >>> v = torch.zeros(1, 3, 16, 16, 16)
        >>> restrict_velocity(v, (8, 8, 8), n_iter=2).abs().max().item()
        0.0
    """
    fine = tuple(velocity.shape[2:])
    start = resize_field(velocity.float(), shape).detach()
    if float(velocity.abs().max()) == 0.0 or n_iter <= 0:
        return start
    with torch.no_grad():
        target = volume_change_map(velocity.float())
    weight = None if mask is None else torch.as_tensor(mask, dtype=torch.float32)[None, None]
    w = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    with torch.enable_grad():
        for _ in range(n_iter):
            opt.zero_grad()
            diff = (volume_change_map(w, shape=fine) - target) ** 2
            loss = diff.mean() if weight is None else (diff * weight).sum() / weight.sum().clamp_min(1)
            (loss * 1e4).backward()
            opt.step()
    return w.detach()


__all__ = [
    "DEFAULT_FIELD_SPACING_MM",
    "field_shape",
    "image_to_field_grid",
    "normalise_condition",
    "restrict_velocity",
]
