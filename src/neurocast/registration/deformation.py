"""Deformation fields in pure torch: velocity integration, warping, composition and Jacobians.

Every function here takes and returns torch tensors, works on CPU and GPU, on a batch, and is
differentiable (autograd) where that makes sense.

Conventions (the project's contract, ``.notes/INTERFACES.md``):

* Images are ``(B, C, X, Y, Z)`` tensors indexed ``[x, y, z]`` in RAS+ voxel order.
* Fields (displacements and stationary velocities) are ``(B, 3, X, Y, Z)`` float tensors in
  **voxel units of the field's own grid**; channel ``c`` is the displacement along voxel axis ``c``.
* ``warp(image, u)(x) = image(x + u(x))``: the displacement ``u`` maps each output voxel to the
  place in ``image`` it is read from (a "pull" or backward warp). With ``phi(x) = x + u(x)``,
  ``warp(image, u) = image o phi``.
* A field on a coarser grid than the image covers the **same box**: the first and last voxel
  centres of both grids coincide (``align_corners=True`` semantics). Resampling a field to another
  shape (:func:`resize_field`) therefore interpolates it trilinearly *and* rescales its values by
  ``(n_new - 1) / (n_old - 1)`` per axis, so that it keeps meaning the same physical motion.
  :func:`coarse_shape` gives the coarse grid of a fine one for a factor ``f``
  (``ceil((n - 1) / f) + 1`` voxels per axis, what ``working_grid(f * spacing)`` gives too) and
  :func:`field_affine` its exact voxel-to-mm matrix under this convention. Where the box of
  ``working_grid(4.0)`` is slightly larger than that of ``working_grid(2.0)`` because of rounding
  (168 mm versus 166 mm along z), the coarse grid's true voxel size along that axis is
  ``(n_fine - 1) / (n_coarse - 1)`` fine voxels (1.976 instead of 2); :func:`field_affine` says so
  exactly, and a field written to disk should carry that affine.
* Outside the grid, fields and images are extended by their border values (``padding="border"``).
* Velocity fields are integrated by scaling and squaring: ``exp(v) = (exp(v / 2^n))^(2^n)`` with
  ``exp(v / 2^n) ~ id + v / 2^n`` (:func:`integrate_velocity`). The inverse of ``exp(v)`` is
  ``exp(-v)`` (:func:`invert_velocity`).
* Jacobians are computed by central differences in the interior and one-sided differences on the
  first and last voxel of each axis (:func:`torch.gradient`), so the map is defined everywhere and
  exact for affine displacements, borders included.

Example:
    >>> import torch
    >>> from neurocast.registration.deformation import integrate_velocity, jacobian_determinant
    >>> v = torch.zeros(1, 3, 8, 8, 8)
    >>> u = integrate_velocity(v)
    >>> float(jacobian_determinant(u).mean())
    1.0
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "coarse_shape",
    "compose",
    "field_affine",
    "folding_fraction",
    "identity_grid",
    "integrate_velocity",
    "invert_displacement",
    "invert_velocity",
    "jacobian_determinant",
    "log_jacobian",
    "resize_field",
    "volume_change_map",
    "warp",
]

InterpMode = Literal["bilinear", "nearest"]
PaddingMode = Literal["border", "zeros", "reflection"]

_FLOAT_TYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def _check_field(field: Tensor, name: str, *, finite: bool = True) -> None:
    if not isinstance(field, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(field).__name__}")
    if field.ndim != 5 or field.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (B, 3, X, Y, Z) (a 3-D field in voxel units), got "
            f"{tuple(field.shape)}"
        )
    if not field.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {field.dtype}")
    if min(field.shape[2:]) < 2 or field.shape[0] < 1:
        raise ValueError(
            f"{name} needs at least 2 voxels along every axis and a batch of at least 1, got "
            f"shape {tuple(field.shape)}"
        )
    if finite and not bool(torch.isfinite(field).all()):
        n_bad = int((~torch.isfinite(field)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or Inf value(s)")


def _check_image(image: Tensor, name: str = "image") -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 5:
        raise ValueError(f"{name} must have shape (B, C, X, Y, Z), got {tuple(image.shape)}")
    if min(image.shape[2:]) < 2 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(
            f"{name} needs at least 2 voxels along every axis, a batch and a channel, got shape "
            f"{tuple(image.shape)}"
        )
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        n_bad = int((~torch.isfinite(image)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or Inf value(s)")


def _check_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise ValueError(f"{name} must be three integers (X, Y, Z), got {shape!r}") from exc
    if len(out) != 3 or min(out) < 2 or any(int(s) != s for s in shape):
        raise ValueError(f"{name} must be three integers >= 2 (X, Y, Z), got {tuple(shape)!r}")
    return out  # type: ignore[return-value]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype computations run in: float32/float64 as given, half types promoted to float32."""
    return dtype if dtype in _FLOAT_TYPES else torch.float32


# --------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------


def coarse_shape(shape: Sequence[int], factor: float) -> tuple[int, int, int]:
    """The grid that covers the box of ``shape`` with voxels ``factor`` times larger.

    ``ceil((n - 1) / factor) + 1`` voxels per axis (at least 2): for the 2 mm working grid
    (79, 97, 84) and ``factor=2`` this is (40, 49, 43), the shape of the 4 mm working grid.
    """
    shape = _check_shape(shape)
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    return tuple(max(2, math.ceil((n - 1) / factor - 1e-9) + 1) for n in shape)  # type: ignore[return-value]


def field_affine(
    image_affine: np.ndarray, image_shape: Sequence[int], field_shape: Sequence[int]
) -> np.ndarray:
    """The exact voxel-to-mm matrix of a field grid that shares its box with an image grid.

    Under this module's convention the first and last voxel centres of the field grid coincide
    with those of the image grid, so the field's voxel axis ``c`` is ``(n_image - 1) /
    (n_field - 1)`` image voxels long.

    Args:
        image_affine: 4x4 voxel-to-mm matrix of the image grid.
        image_shape: the image grid's shape.
        field_shape: the field grid's shape.

    Returns:
        A 4x4 float64 matrix (same origin as ``image_affine``, axes scaled).
    """
    image_shape = _check_shape(image_shape, "image_shape")
    field_shape = _check_shape(field_shape, "field_shape")
    scale = np.array([(n - 1) / (m - 1) for n, m in zip(image_shape, field_shape, strict=True)])
    aff = np.array(image_affine, dtype=np.float64, copy=True)
    aff[:3, :3] = aff[:3, :3] * scale[None, :]
    return aff


@functools.lru_cache(maxsize=16)
def _normalised_identity(
    shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Identity sampling grid for grid_sample, (1, X, Y, Z, 3) in (z, y, x) order, in [-1, 1]."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack(mesh[::-1], dim=-1)[None]
    return grid.to(device=device, dtype=dtype).contiguous()


def identity_grid(
    shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Voxel coordinates of a grid: a (1, 3, X, Y, Z) tensor whose channel ``c`` holds index ``c``."""
    shape = _check_shape(shape)
    axes = [torch.arange(n, dtype=dtype, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)[None]


def _sampling_grid(displacement: Tensor) -> Tensor:
    """grid_sample grid (B, X, Y, Z, 3) for positions x + u(x) (u in voxels of its own grid)."""
    shape = tuple(displacement.shape[2:])
    ident = _normalised_identity(shape, displacement.device, displacement.dtype)  # type: ignore[arg-type]
    # voxel units -> normalised [-1, 1] units, channel order (x, y, z) -> grid_sample's (z, y, x)
    scale = torch.tensor(
        [2.0 / (n - 1) for n in shape[::-1]], dtype=displacement.dtype, device=displacement.device
    )
    return ident + displacement.flip(1).movedim(1, -1) * scale


# --------------------------------------------------------------------------------------------
# resampling and warping
# --------------------------------------------------------------------------------------------


def resize_field(field: Tensor, shape: Sequence[int]) -> Tensor:
    """Resample a displacement or velocity field onto a grid of another shape over the same box.

    Trilinear interpolation with the first and last voxel centres kept in place
    (``align_corners=True``), then each channel ``c`` is multiplied by
    ``(shape[c] - 1) / (old_shape[c] - 1)`` so that the values stay in voxel units of the new grid.

    Args:
        field: (B, 3, x, y, z) field in voxel units of its own grid.
        shape: the target (X, Y, Z).

    Returns:
        (B, 3, X, Y, Z) field in voxel units of the target grid (the input itself if the shape is
        unchanged).

    Raises:
        ValueError: the field or the shape is malformed, or the field holds NaN/Inf.
    """
    _check_field(field, "field")
    shape = _check_shape(shape)
    old = tuple(field.shape[2:])
    if old == shape:
        return field
    work = _work_dtype(field.dtype)
    out = F.interpolate(field.to(work), size=shape, mode="trilinear", align_corners=True)
    scale = torch.tensor(
        [(n - 1) / (m - 1) for n, m in zip(shape, old, strict=True)],
        dtype=work,
        device=field.device,
    )
    out = out * scale.view(1, 3, 1, 1, 1)
    return out.to(field.dtype)


def _broadcast_batch(a: Tensor, b: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    if a.shape[0] == b.shape[0]:
        return a, b
    if a.shape[0] == 1:
        return a.expand(b.shape[0], *a.shape[1:]), b
    if b.shape[0] == 1:
        return a, b.expand(a.shape[0], *b.shape[1:])
    raise ValueError(
        f"batch sizes of {names[0]} ({a.shape[0]}) and {names[1]} ({b.shape[0]}) differ; "
        "they must be equal or one of them 1"
    )


def warp(
    image: Tensor,
    displacement: Tensor,
    mode: InterpMode = "bilinear",
    padding: PaddingMode = "border",
) -> Tensor:
    """Warp an image (or label map, or field) by a displacement: ``out(x) = image(x + u(x))``.

    The displacement may live on a coarser (or finer) grid than the image; it is then resampled to
    the image grid first with :func:`resize_field` (same box, values rescaled to image voxels).

    Args:
        image: (B, C, X, Y, Z) tensor. Integer tensors (label maps) are allowed with
            ``mode="nearest"`` and come back with their dtype; otherwise the result is floating.
        displacement: (B, 3, x, y, z) displacement in voxel units of its own grid. A batch of 1
            on either side is broadcast against the other.
        mode: ``"bilinear"`` (trilinear interpolation) or ``"nearest"`` (label maps: values kept).
        padding: what is read outside the image: ``"border"`` (nearest edge value, default),
            ``"zeros"`` or ``"reflection"``.

    Returns:
        The warped image, (B, C, X, Y, Z), the image's dtype (float32 for integer input with
        bilinear mode).

    Raises:
        ValueError: malformed shapes, NaN/Inf in the image or field, devices that differ, or an
            unknown mode.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if padding not in ("border", "zeros", "reflection"):
        raise ValueError(f"padding must be 'border', 'zeros' or 'reflection', got {padding!r}")
    _check_image(image)
    _check_field(displacement, "displacement")
    if image.device != displacement.device:
        raise ValueError(
            f"image is on {image.device} but displacement on {displacement.device}; move both to "
            "the same device"
        )
    shape = tuple(image.shape[2:])
    disp = resize_field(displacement, shape)
    work = _work_dtype(disp.dtype)
    if image.is_floating_point():
        work = torch.promote_types(work, _work_dtype(image.dtype))
    img = image.to(work)
    img, disp = _broadcast_batch(img, disp, ("image", "displacement"))
    grid = _sampling_grid(disp.to(work))
    out = F.grid_sample(img, grid, mode=mode, padding_mode=padding, align_corners=True)
    if image.is_floating_point():
        return out.to(image.dtype)
    if mode == "nearest":
        return out.round().to(image.dtype)
    return out


# --------------------------------------------------------------------------------------------
# velocity fields
# --------------------------------------------------------------------------------------------


def _self_warp(u: Tensor, grid_scale: Tensor, ident: Tensor) -> Tensor:
    grid = ident + u.flip(1).movedim(1, -1) * grid_scale
    return F.grid_sample(u, grid, mode="bilinear", padding_mode="border", align_corners=True)


def integrate_velocity(velocity: Tensor, n_steps: int = 7) -> Tensor:
    """Integrate a stationary velocity field into a displacement by scaling and squaring.

    ``u_0 = v / 2^n``, then ``n`` times ``u <- u + u o (id + u)`` (the displacement of
    ``phi o phi``). The result is the displacement of ``phi = exp(v)`` on the velocity's grid, in
    the same voxel units; it is diffeomorphic when ``v / 2^n`` is small against one voxel and ``v``
    is smooth.

    Args:
        velocity: (B, 3, X, Y, Z) velocity in voxel units of its grid.
        n_steps: number of squarings (7: ``2^7 = 128`` sub-steps; 0 returns ``v`` itself).

    Returns:
        (B, 3, X, Y, Z) displacement, same dtype and device.

    Raises:
        ValueError: malformed field, NaN/Inf values, or a negative or non-integer ``n_steps``.
    """
    _check_field(velocity, "velocity")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    work = _work_dtype(velocity.dtype)
    u = velocity.to(work) / float(2**n_steps)
    if n_steps == 0:
        return u.to(velocity.dtype)
    shape = tuple(u.shape[2:])
    ident = _normalised_identity(shape, u.device, work)  # type: ignore[arg-type]
    scale = torch.tensor([2.0 / (n - 1) for n in shape[::-1]], dtype=work, device=u.device)
    for _ in range(int(n_steps)):
        u = u + _self_warp(u, scale, ident)
    return u.to(velocity.dtype)


def invert_velocity(velocity: Tensor) -> Tensor:
    """The velocity of the inverse transformation: ``exp(v)^-1 = exp(-v)``."""
    _check_field(velocity, "velocity")
    return -velocity


def compose(d_outer: Tensor, d_inner: Tensor) -> Tensor:
    """Displacement of ``phi_outer o phi_inner`` (apply ``phi_inner`` first, then ``phi_outer``).

    ``(phi_outer o phi_inner)(x) = x + d_inner(x) + d_outer(x + d_inner(x))``. With the pull
    convention of :func:`warp`, ``warp(warp(I, d_outer), d_inner) == warp(I, compose(d_outer,
    d_inner))`` (up to interpolation).

    Args:
        d_outer: (B, 3, ...) displacement; resampled to ``d_inner``'s grid if its shape differs.
        d_inner: (B, 3, X, Y, Z) displacement; the result lives on its grid.

    Returns:
        (B, 3, X, Y, Z) displacement in voxel units of ``d_inner``'s grid.
    """
    _check_field(d_outer, "d_outer")
    _check_field(d_inner, "d_inner")
    if d_outer.device != d_inner.device:
        raise ValueError(f"d_outer is on {d_outer.device} but d_inner on {d_inner.device}")
    outer = resize_field(d_outer, tuple(d_inner.shape[2:]))
    return d_inner + warp(outer, d_inner, mode="bilinear", padding="border")


def invert_displacement(displacement: Tensor, n_iter: int = 30) -> Tensor:
    """Numerical inverse of a (small, smooth) displacement by fixed-point iteration.

    Solves ``w(x) = -u(x + w(x))`` so that ``phi_u o phi_w ~ id``. For velocity fields use
    :func:`invert_velocity` instead, which is exact.

    Args:
        displacement: (B, 3, X, Y, Z) displacement in voxels.
        n_iter: fixed-point iterations (converges when the displacement's gradient is well below 1).

    Returns:
        (B, 3, X, Y, Z) displacement of the inverse.
    """
    _check_field(displacement, "displacement")
    w = -displacement
    for _ in range(int(n_iter)):
        w = -warp(displacement, w, mode="bilinear", padding="border")
    return w


# --------------------------------------------------------------------------------------------
# Jacobians
# --------------------------------------------------------------------------------------------


def _jacobian_matrix_terms(u: Tensor) -> list[list[Tensor]]:
    """d u_c / d x_d for c, d in 0..2, each (B, X, Y, Z): central differences, one-sided at edges."""
    grads = torch.gradient(u, dim=(2, 3, 4), edge_order=1)  # grads[d][:, c] = du_c/dx_d
    return [[grads[d][:, c] for d in range(3)] for c in range(3)]


def jacobian_determinant(displacement: Tensor) -> Tensor:
    """Jacobian determinant of ``x -> x + u(x)`` at every voxel of the displacement's grid.

    ``det(I + du/dx)`` with central differences in the interior and one-sided differences on the
    first and last voxel of each axis. Grid-independent (a ratio of volumes), so a field on a
    coarse grid gives the same values as its resampled version up to interpolation.

    Args:
        displacement: (B, 3, X, Y, Z) displacement in voxels.

    Returns:
        (B, 1, X, Y, Z) determinant (1 = volume kept, < 1 = shrinkage, <= 0 = folding).
    """
    _check_field(displacement, "displacement")
    u = displacement.to(_work_dtype(displacement.dtype))
    g = _jacobian_matrix_terms(u)
    a, b, c = g[0][0] + 1, g[0][1], g[0][2]
    d, e, f = g[1][0], g[1][1] + 1, g[1][2]
    gg, h, i = g[2][0], g[2][1], g[2][2] + 1
    det = a * (e * i - f * h) - b * (d * i - f * gg) + c * (d * h - e * gg)
    return det.unsqueeze(1).to(displacement.dtype)


def log_jacobian(displacement: Tensor, eps: float = 1e-6) -> Tensor:
    """Natural log of the Jacobian determinant, ``log(max(J, eps))`` (folded voxels get ``log eps``).

    Args:
        displacement: (B, 3, X, Y, Z) displacement in voxels.
        eps: floor applied before the log (J <= 0 is folding; see :func:`folding_fraction`).

    Returns:
        (B, 1, X, Y, Z) log-Jacobian (0 = volume kept, < 0 = shrinkage).
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return torch.log(torch.clamp(jacobian_determinant(displacement), min=eps))


def _mask_like(mask: Tensor | np.ndarray, ref: Tensor) -> Tensor:
    """A boolean (B or 1, 1, X, Y, Z) mask matching ``ref`` (B, 1, X, Y, Z)."""
    m = torch.as_tensor(mask, device=ref.device)
    spatial = tuple(ref.shape[2:])
    if m.ndim == 3:
        m = m[None, None]
    elif m.ndim == 4:
        m = m[:, None]
    if m.ndim != 5 or tuple(m.shape[2:]) != spatial or m.shape[1] != 1:
        raise ValueError(
            f"mask must have shape (X, Y, Z), (B, X, Y, Z) or (B, 1, X, Y, Z) matching the field's "
            f"grid {spatial}, got {tuple(torch.as_tensor(mask).shape)}"
        )
    if m.shape[0] not in (1, ref.shape[0]):
        raise ValueError(f"mask batch {m.shape[0]} does not match the field's batch {ref.shape[0]}")
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise ValueError("mask contains NaN or Inf")
    return m > 0 if m.dtype != torch.bool else m


def folding_fraction(displacement: Tensor, mask: Tensor | np.ndarray | None = None) -> Tensor:
    """Share of voxels where the transformation folds (Jacobian determinant <= 0).

    Args:
        displacement: (B, 3, X, Y, Z) displacement in voxels.
        mask: optional region on the displacement's grid, (X, Y, Z), (B, X, Y, Z) or
            (B, 1, X, Y, Z); nonzero = inside. Only voxels inside count.

    Returns:
        (B,) float tensor of fractions in [0, 1] (not percent).

    Raises:
        ValueError: malformed input, a mask on another grid, or an empty mask.
    """
    jac = jacobian_determinant(displacement)
    folded = (jac <= 0).to(jac.dtype)
    if mask is None:
        return folded.flatten(1).mean(dim=1)
    m = _mask_like(mask, jac).expand_as(jac).to(jac.dtype)
    n_in = m.flatten(1).sum(dim=1)
    if bool((n_in == 0).any()):
        raise ValueError("mask is empty (no voxel inside) for at least one batch element")
    return (folded * m).flatten(1).sum(dim=1) / n_in


def volume_change_map(
    velocity: Tensor, shape: Sequence[int] | None = None, n_steps: int = 7
) -> Tensor:
    """Local volume change of baseline tissue between baseline and follow-up.

    For a velocity fitted with ``follow_up(x) ~ baseline(x + exp(v)(x))`` this is the Jacobian
    determinant of ``exp(-v)`` on the baseline grid: the ratio (follow-up volume / baseline
    volume) of the tissue at each baseline voxel (< 1 = atrophy, > 1 = expansion).

    Args:
        velocity: (B, 3, x, y, z) stationary velocity in voxels of its grid.
        shape: optional finer (or other) grid (X, Y, Z) over the same box: the displacement of
            ``exp(-v)`` is integrated on the velocity's grid, resampled there with
            :func:`resize_field`, and the Jacobian taken on that grid.
        n_steps: scaling-and-squaring steps.

    Returns:
        (B, 1, X, Y, Z) Jacobian determinant map.
    """
    u = integrate_velocity(invert_velocity(velocity), n_steps=n_steps)
    if shape is not None:
        u = resize_field(u, shape)
    return jacobian_determinant(u)
