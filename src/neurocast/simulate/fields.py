"""Velocity fields with a prescribed volume change, and smooth random fields.

The progression and the subject anatomy are both built from one primitive,
:func:`velocity_from_log_volume`: given a map ``ell(x)`` of wanted log volume change (per unit
time) on an image grid, it returns a stationary velocity ``v`` on a (possibly coarser) field grid
whose flow changes volume that way to first order:

* Volume change to first order: for ``exp(-v)`` (the map whose Jacobian is the volume change of
  baseline tissue, :func:`neurocast.registration.deformation.volume_change_map`),
  ``log J ~ -div v``. So we need ``div v = -ell``.
* ``v`` is taken curl-free, ``v = grad psi``, so ``laplace psi = -ell``: a Poisson problem, solved
  exactly on the field grid by a discrete cosine transform (Neumann boundary: no flow through the
  box faces, so the total source must be zero; the caller balances atrophy with CSF expansion).
* On a field grid coarser than the image grid, the regional mean of ``-div v`` (resampled to the
  image grid) is not exactly the wanted ``ell``: small structures get diluted. A linear calibration
  (:func:`calibrated_velocity`) fixes the regional means: one Poisson solve per region group gives
  the response matrix ``M[h, g]`` (mean of ``-div v_g`` over region ``h``); the amplitudes ``c``
  solve ``M c = target`` (ridge-regularised), and ``v = sum_g c_g v_g``.

All fields are torch tensors (B, 3, X, Y, Z) in voxel units of their grid, as in
:mod:`neurocast.registration.deformation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import fft as sfft
from scipy import ndimage


def poisson_neumann(source: np.ndarray) -> np.ndarray:
    """Solve ``laplace psi = source`` on a voxel grid with zero-flux (Neumann) boundaries.

    The 7-point Laplacian with mirror boundaries is diagonalised by the type-II DCT, so the solve
    is exact (to round-off) for the discrete operator. The mean of ``source`` is removed first
    (a Neumann problem only has a solution for a zero-mean source); ``psi`` has zero mean.

    Args:
        source: (X, Y, Z) float array, in units per voxel^2.

    Returns:
        (X, Y, Z) float64 potential.
    """
    f = np.asarray(source, dtype=np.float64)
    f = f - f.mean()
    coef = sfft.dctn(f, type=2, norm="ortho")
    lam = np.zeros(f.shape, dtype=np.float64)
    for axis, n in enumerate(f.shape):
        k = np.arange(n, dtype=np.float64)
        eig = 2.0 * np.cos(np.pi * k / n) - 2.0
        shape = [1, 1, 1]
        shape[axis] = n
        lam = lam + eig.reshape(shape)
    lam[0, 0, 0] = 1.0
    coef = coef / lam
    coef[0, 0, 0] = 0.0
    return sfft.idctn(coef, type=2, norm="ortho")


def gradient_field(psi: np.ndarray) -> torch.Tensor:
    """Central-difference gradient of a potential as a (1, 3, X, Y, Z) float32 field (voxel units)."""
    g = np.gradient(np.asarray(psi, dtype=np.float64))
    return torch.from_numpy(np.stack(g)[None].astype(np.float32))


def divergence(field: torch.Tensor) -> torch.Tensor:
    """Divergence of a (B, 3, X, Y, Z) field with the finite differences of the Jacobian code."""
    return sum(torch.gradient(field[:, c], dim=c + 1, edge_order=1)[0] for c in range(3))  # type: ignore[return-value]


def downsample_mean(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample an image-grid array onto a coarser grid over the same box, with anti-aliasing.

    Gaussian smoothing (sigma = 0.5 x the ratio of voxel sizes) then trilinear sampling at the
    coarse voxel centres (first and last centres shared, ``align_corners`` semantics).
    """
    a = np.asarray(array, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if a.shape == shape:
        return a
    ratio = [(n - 1) / (m - 1) for n, m in zip(a.shape, shape, strict=True)]
    sm = ndimage.gaussian_filter(a, sigma=[max(0.0, 0.5 * r) if r > 1 else 0.0 for r in ratio], mode="nearest")
    t = torch.from_numpy(sm)[None, None]
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def upsample(array: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of a scalar (X, Y, Z) map onto another grid over the same box."""
    t = torch.as_tensor(np.asarray(array, dtype=np.float32))[None, None]
    if tuple(t.shape[2:]) == tuple(shape):
        return t[0, 0]
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0, 0]


def velocity_from_log_volume(
    log_volume: np.ndarray, field_shape: Sequence[int] | None = None, smooth_voxels: float = 0.0
) -> torch.Tensor:
    """A curl-free velocity whose flow ``exp(-v)`` changes volume by ``exp(log_volume)`` to first order.

    Args:
        log_volume: (X, Y, Z) wanted log volume change per unit time on the image grid. Its mean
            is removed (the box keeps its volume: with zero-flux boundaries what shrinks somewhere
            must expand elsewhere; balance it yourself where it should happen).
        field_shape: grid of the velocity (same box, e.g. a coarser one); default the image grid.
        smooth_voxels: optional Gaussian smoothing of the source, in image voxels.

    Returns:
        (1, 3, *field_shape) float32 velocity in voxel units of the field grid.
    """
    ell = np.asarray(log_volume, dtype=np.float64)
    if smooth_voxels > 0:
        ell = ndimage.gaussian_filter(ell, smooth_voxels, mode="nearest")
    shape = tuple(ell.shape) if field_shape is None else tuple(int(s) for s in field_shape)
    src = downsample_mean(ell, shape)
    psi = poisson_neumann(-src)
    return gradient_field(psi)


def regional_means(values: torch.Tensor, masks: Sequence[torch.Tensor]) -> np.ndarray:
    """Mean of an (X, Y, Z) map inside each boolean mask (NaN for an empty one)."""
    out = []
    for m in masks:
        n = int(m.sum())
        out.append(float(values[m].double().sum() / n) if n else np.nan)
    return np.asarray(out)


def calibrated_velocity(
    groups: Mapping[str, np.ndarray],
    targets: Mapping[str, float],
    balance: np.ndarray,
    field_shape: Sequence[int],
    *,
    smooth_voxels: float = 0.75,
    ridge: float = 1e-3,
    max_gain: float = 4.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """A velocity on ``field_shape`` whose regional mean log volume change matches ``targets``.

    Each region group ``g`` (a boolean mask on the image grid) gets a uniform source, balanced by
    a uniform opposite source over ``balance`` (the tissue that absorbs the change, e.g. CSF); one
    Poisson solve per group gives the velocity ``v_g`` for unit rate. The response
    ``M[h, g]`` = mean over group ``h`` of ``-div(resize(v_g))`` on the image grid tells how much
    of each source lands where; the amplitudes solve ``M c = target`` by ridge-regularised least
    squares (amplitudes limited to ``max_gain`` times the target, so an unreachable small
    structure does not blow up its neighbours).

    Args:
        groups: name -> (X, Y, Z) boolean mask on the image grid (disjoint).
        targets: name -> wanted mean log volume change per unit time (e.g. ``log(0.953)``).
        balance: (X, Y, Z) boolean mask where the compensating change goes (disjoint from groups).
        field_shape: the velocity grid (same box).
        smooth_voxels: Gaussian smoothing of each source in image voxels (atrophy is smooth).
        ridge: Tikhonov weight (relative to the trace of M^T M).
        max_gain: bound on ``|c_g| / |target_g|``.

    Returns:
        (velocity (1, 3, *field_shape), achieved) with achieved[name] the linear prediction of the
        regional mean log volume change.
    """
    names = [n for n in groups if n in targets and groups[n].any()]
    image_shape = next(iter(groups.values())).shape
    bal = np.asarray(balance, dtype=bool)
    n_bal = int(bal.sum())
    if n_bal == 0:
        raise ValueError("the balance region is empty: the volume change has nowhere to go")
    masks = [torch.from_numpy(np.asarray(groups[n], dtype=bool)) for n in names]
    fields = []
    response = np.zeros((len(names), len(names)))
    for j, name in enumerate(names):
        g = np.asarray(groups[name], dtype=np.float64)
        src = g - bal * (g.sum() / n_bal)
        v = velocity_from_log_volume(src, field_shape, smooth_voxels=smooth_voxels)
        fields.append(v)
        from neurocast.registration.deformation import resize_field

        ldiv = -divergence(resize_field(v, image_shape))[0]
        response[:, j] = regional_means(ldiv, masks)
    t = np.array([targets[n] for n in names], dtype=np.float64)
    a = response.T @ response
    lam = ridge * np.trace(a) / max(len(names), 1)
    c = np.linalg.solve(a + lam * np.eye(len(names)), response.T @ t)
    bound = max_gain * np.abs(t) + 1e-12
    c = np.clip(c, -bound, bound)
    v = sum(ci * fi for ci, fi in zip(c, fields, strict=True))
    achieved = dict(zip(names, (response @ c).tolist(), strict=True))
    return v, achieved  # type: ignore[return-value]


def smooth_random_field(
    rng: np.random.Generator, shape: Sequence[int], correlation_voxels: float, channels: int = 3
) -> np.ndarray:
    """Zero-mean Gaussian random field with unit RMS per channel, smooth over ``correlation_voxels``.

    White noise on a lattice about ``correlation_voxels`` apart, trilinearly upsampled and then
    Gaussian-smoothed, so the cost does not grow with the correlation length.

    Returns:
        (channels, X, Y, Z) float32 array.
    """
    shape = tuple(int(s) for s in shape)
    step = max(1.0, float(correlation_voxels))
    coarse = tuple(max(2, int(np.ceil((n - 1) / step)) + 2) for n in shape)
    noise = rng.standard_normal((channels, *coarse))
    t = torch.from_numpy(noise.astype(np.float64))[None]
    up = F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0].numpy()
    out = np.stack([ndimage.gaussian_filter(c, step / 2.0, mode="nearest") for c in up])
    out -= out.reshape(channels, -1).mean(axis=1)[:, None, None, None]
    rms = np.sqrt((out.reshape(channels, -1) ** 2).mean(axis=1))
    out /= np.maximum(rms, 1e-12)[:, None, None, None]
    return out.astype(np.float32)
