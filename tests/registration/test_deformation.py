"""Deformation utilities: integration, warping, composition, inverses, Jacobians, conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurocast.registration.deformation import (
    coarse_shape,
    compose,
    field_affine,
    folding_fraction,
    identity_grid,
    integrate_velocity,
    invert_displacement,
    invert_velocity,
    jacobian_determinant,
    log_jacobian,
    resize_field,
    volume_change_map,
    warp,
)

SHAPE = (24, 28, 20)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the volumes are small, and extra threads only add contention on a busy runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_velocity(shape=SHAPE, amplitude=2.0, seed=0, batch=1) -> torch.Tensor:
    """A smooth random velocity (a few voxels of motion), built from a tiny random field."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn((batch, 3, 4, 4, 4), generator=gen)
    v = torch.nn.functional.interpolate(low, size=shape, mode="trilinear", align_corners=True)
    return v * (amplitude / v.norm(dim=1).max())


def smooth_image(shape=SHAPE) -> torch.Tensor:
    """A smooth test image (sum of sinusoids), (1, 1, X, Y, Z)."""
    x, y, z = identity_grid(shape)[0]
    img = (
        torch.sin(2 * math.pi * x / shape[0])
        + torch.cos(2 * math.pi * y / shape[1])
        + 0.5 * torch.sin(2 * math.pi * z / shape[2] + 0.3)
    )
    return img[None, None]


def interior(t: torch.Tensor, margin: int = 4) -> torch.Tensor:
    return t[..., margin:-margin, margin:-margin, margin:-margin]


# ---------------------------------------------------------------- integration and Jacobians


def test_zero_velocity_integrates_to_identity() -> None:
    v = torch.zeros(2, 3, *SHAPE)
    u = integrate_velocity(v)
    assert u.shape == v.shape
    assert torch.equal(u, torch.zeros_like(u))
    assert torch.allclose(jacobian_determinant(u), torch.ones(2, 1, *SHAPE))
    assert float(folding_fraction(u).max()) == 0.0


@pytest.mark.parametrize("s", [0.8, 0.95, 1.1, 1.3])
def test_jacobian_of_uniform_scaling_is_s_cubed(s: float) -> None:
    grid = identity_grid(SHAPE, dtype=torch.float64)
    centre = torch.tensor([(n - 1) / 2 for n in SHAPE], dtype=torch.float64).view(1, 3, 1, 1, 1)
    u = (s - 1.0) * (grid - centre)
    jac = jacobian_determinant(u)
    assert jac.shape == (1, 1, *SHAPE)
    # exact everywhere, borders included (one-sided differences are exact for affine maps)
    assert torch.allclose(jac, torch.full_like(jac, s**3), atol=1e-10)
    assert torch.allclose(log_jacobian(u), torch.full_like(jac, 3 * math.log(s)), atol=1e-10)


def test_jacobian_of_anisotropic_affine_map() -> None:
    grid = identity_grid(SHAPE, dtype=torch.float64)
    a = torch.tensor([[0.1, 0.2, 0.0], [0.0, -0.1, 0.05], [0.3, 0.0, 0.2]], dtype=torch.float64)
    u = torch.einsum("cd,bdxyz->bcxyz", a, grid) + 3.0
    expected = float(torch.linalg.det(torch.eye(3, dtype=torch.float64) + a))
    assert torch.allclose(
        jacobian_determinant(u), torch.full((1, 1, *SHAPE), expected, dtype=torch.float64)
    )


def test_volume_change_of_linear_velocity_follows_the_contract() -> None:
    """v = a (x - c): exp(v) scales by e^a, exp(-v) by e^-a: volume change e^(-3a)."""
    a = 0.05
    grid = identity_grid(SHAPE, dtype=torch.float64)
    centre = torch.tensor([(n - 1) / 2 for n in SHAPE], dtype=torch.float64).view(1, 3, 1, 1, 1)
    v = a * (grid - centre)
    u = integrate_velocity(v, n_steps=8)
    assert torch.allclose(interior(u), interior((math.exp(a) - 1) * (grid - centre)), atol=1e-3)
    vc = volume_change_map(v, n_steps=8)
    assert torch.allclose(interior(vc), torch.full_like(interior(vc), math.exp(-3 * a)), atol=1e-3)
    # on a finer grid over the same box the ratio is the same
    fine = volume_change_map(v, shape=(47, 55, 39), n_steps=8)
    assert fine.shape == (1, 1, 47, 55, 39)
    assert torch.allclose(
        interior(fine, 8), torch.full_like(interior(fine, 8), math.exp(-3 * a)), atol=2e-3
    )


def test_warp_direction_convention() -> None:
    """warp(image, u)(x) = image(x + u(x)): a displacement of +2 along x reads 2 voxels further."""
    img = torch.arange(SHAPE[0], dtype=torch.float32).view(1, 1, -1, 1, 1).expand(1, 1, *SHAPE)
    u = torch.zeros(1, 3, *SHAPE)
    u[:, 0] = 2.0
    out = warp(img, u)
    assert torch.allclose(out[0, 0, :-2], img[0, 0, 2:])
    assert torch.allclose(out[0, 0, -2:], torch.full_like(out[0, 0, -2:], SHAPE[0] - 1))  # border


def test_integrated_smooth_field_is_diffeomorphic() -> None:
    v = smooth_velocity(amplitude=4.0)
    u = integrate_velocity(v)
    assert float(jacobian_determinant(u).min()) > 0
    assert float(folding_fraction(u)[0]) == 0.0


# ---------------------------------------------------------------- inverse and composition


def test_warp_then_inverse_returns_the_image() -> None:
    img = smooth_image()
    v = smooth_velocity(amplitude=2.0)
    there = warp(img, integrate_velocity(v))
    back = warp(there, integrate_velocity(invert_velocity(v)))
    err = interior(back - img).abs()
    value_range = float(img.max() - img.min())
    # what is left is the blur of two trilinear interpolations
    assert float(err.max()) < 0.03 * value_range
    assert float(err.mean()) < 0.005 * value_range
    # warping twice forwards is far off: the inverse is what brings it back
    wrong = warp(there, integrate_velocity(v))
    assert float(err.mean()) < 0.2 * float(interior(wrong - img).abs().mean())


def test_compose_with_inverse_is_identity() -> None:
    v = smooth_velocity(amplitude=2.0)
    fwd, inv = integrate_velocity(v), integrate_velocity(-v)
    assert float(interior(fwd).abs().max()) > 1.0
    # residuals (in voxels) are what interpolating a field that stretches by up to 40 % leaves
    for d in (compose(fwd, inv), compose(inv, fwd)):
        assert float(interior(d).abs().max()) < 0.1
        assert float(interior(d).abs().mean()) < 0.01
    # numerical inverse of a plain displacement
    w = invert_displacement(fwd)
    assert float(interior(compose(fwd, w)).abs().max()) < 0.1
    assert float(interior(compose(fwd, w)).abs().mean()) < 0.01


def test_compose_matches_successive_warps() -> None:
    img = smooth_image()
    d1 = integrate_velocity(smooth_velocity(amplitude=2.0, seed=1))
    d2 = integrate_velocity(smooth_velocity(amplitude=2.0, seed=2))
    twice = warp(warp(img, d1), d2)
    once = warp(img, compose(d1, d2))
    assert float(interior(twice - once).abs().max()) < 0.03


# ---------------------------------------------------------------- folding


def test_folding_is_detected_and_masked() -> None:
    u = torch.zeros(1, 3, *SHAPE)
    x = torch.arange(SHAPE[0], dtype=torch.float32)
    # fold along x inside a slab: phi_x = x - 2 (x - 10) over 10 <= x <= 14 (slope -1)
    fold = torch.clamp(x - 10, 0, 4)
    u[0, 0] = (-2.0 * fold).view(-1, 1, 1)
    jac = jacobian_determinant(u)
    assert float(jac.min()) < 0
    frac = float(folding_fraction(u)[0])
    expected = float((jac <= 0).float().mean())
    assert frac == pytest.approx(expected)
    assert 0.1 < frac < 0.3
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[:6] = True
    assert float(folding_fraction(u, mask)[0]) == 0.0
    mask[11:14] = True
    assert float(folding_fraction(u, mask)[0]) > 0.0
    with pytest.raises(ValueError, match="empty"):
        folding_fraction(u, torch.zeros(SHAPE))
    with pytest.raises(ValueError, match="mask must have shape"):
        folding_fraction(u, torch.ones(5, 5, 5))


# ---------------------------------------------------------------- labels, grids, batches, dtypes


def test_nearest_warp_keeps_label_values_and_dtype() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (1, 1, 6, 7, 5), generator=gen) * 10 + 3
    labels = torch.nn.functional.interpolate(labels.float(), size=SHAPE, mode="nearest").to(
        torch.int16
    )
    out = warp(labels, integrate_velocity(smooth_velocity(amplitude=3.0)), mode="nearest")
    assert out.dtype == torch.int16
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    assert (out != labels).any()  # it did move


def test_coarse_field_warp_equals_fine_warp_of_the_upsampled_field() -> None:
    fine_shape = (33, 41, 29)
    field_shape = coarse_shape(fine_shape, 2)
    assert field_shape == (17, 21, 15)
    img = smooth_image(fine_shape)
    u = integrate_velocity(smooth_velocity(field_shape, amplitude=1.5))
    up = resize_field(u, fine_shape)
    assert up.shape == (1, 3, *fine_shape)
    assert torch.equal(warp(img, u), warp(img, up))
    # units: one coarse voxel is (n_fine - 1) / (n_coarse - 1) = 2 fine voxels here
    shift = torch.zeros(1, 3, *field_shape)
    shift[:, 1] = 1.0
    moved = warp(img, shift)
    assert torch.allclose(moved[0, 0, :, :-2], img[0, 0, :, 2:], atol=1e-5)
    assert torch.allclose(resize_field(shift, fine_shape)[:, 1], torch.full((1, *fine_shape), 2.0))


def test_working_grids_and_field_affine() -> None:
    from neurocast.registration.template import working_grid

    fine, coarse = working_grid(2.0), working_grid(4.0)
    assert coarse_shape(fine.shape, 2) == coarse.shape
    aff = field_affine(fine.affine, fine.shape, coarse.shape)
    # first and last voxel centres coincide with the fine grid's
    last = np.array([n - 1 for n in coarse.shape] + [1])
    assert np.allclose(aff @ last, fine.affine @ np.array([n - 1 for n in fine.shape] + [1]))
    assert np.allclose(aff[:3, 3], fine.affine[:3, 3])


def test_batches_match_single_items_and_broadcast() -> None:
    v = smooth_velocity(amplitude=2.0, batch=3)
    u = integrate_velocity(v)
    img = smooth_image()
    for i in range(3):
        ui = integrate_velocity(v[i : i + 1])
        assert torch.allclose(u[i : i + 1], ui, atol=1e-6)
        assert torch.allclose(warp(img, u)[i : i + 1], warp(img, ui), atol=1e-6)
    assert warp(img.expand(3, 1, *SHAPE), u).shape == (3, 1, *SHAPE)
    assert jacobian_determinant(u).shape == (3, 1, *SHAPE)
    assert folding_fraction(u).shape == (3,)
    assert volume_change_map(v).shape == (3, 1, *SHAPE)
    with pytest.raises(ValueError, match="batch sizes"):
        warp(torch.zeros(2, 1, *SHAPE), u)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(dtype: torch.dtype) -> None:
    v = smooth_velocity(amplitude=2.0)
    ref = integrate_velocity(v)
    u = integrate_velocity(v.to(dtype))
    assert u.dtype == dtype
    tol = 1e-5 if dtype == torch.float64 else 0.05
    assert torch.allclose(u.float(), ref, atol=tol)
    img = smooth_image().to(dtype)
    assert warp(img, u).dtype == dtype
    assert jacobian_determinant(u).dtype == dtype


def test_autograd_flows_through_integration_and_warp() -> None:
    v = smooth_velocity(amplitude=1.0).requires_grad_()
    target = smooth_image()
    out = warp(smooth_image(), integrate_velocity(v))
    loss = ((out - target.roll(1, dims=2)) ** 2).mean() + jacobian_determinant(
        integrate_velocity(v)
    ).var()
    loss.backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: integrate_velocity(torch.zeros(3, *SHAPE)), r"shape \(B, 3, X, Y, Z\)"),
        (lambda: integrate_velocity(torch.zeros(1, 2, *SHAPE)), r"shape \(B, 3, X, Y, Z\)"),
        (lambda: integrate_velocity(torch.zeros(1, 3, 1, 5, 5)), "at least 2 voxels"),
        (
            lambda: integrate_velocity(torch.zeros(1, 3, *SHAPE, dtype=torch.int32)),
            "floating-point",
        ),
        (lambda: integrate_velocity(torch.zeros(1, 3, *SHAPE), n_steps=-1), "n_steps"),
        (lambda: integrate_velocity(np.zeros((1, 3, *SHAPE))), "torch.Tensor"),
        (lambda: warp(torch.zeros(*SHAPE), torch.zeros(1, 3, *SHAPE)), r"\(B, C, X, Y, Z\)"),
        (lambda: warp(torch.zeros(1, 1, *SHAPE), torch.zeros(1, 3, *SHAPE), mode="cubic"), "mode"),
        (
            lambda: warp(torch.zeros(1, 1, *SHAPE), torch.zeros(1, 3, *SHAPE), padding="wrap"),
            "padding",
        ),
        (lambda: resize_field(torch.zeros(1, 3, *SHAPE), (10, 10)), "three integers"),
        (lambda: log_jacobian(torch.zeros(1, 3, *SHAPE), eps=0), "eps"),
        (lambda: coarse_shape(SHAPE, 0), "factor"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_fields_are_refused(bad: float) -> None:
    v = torch.zeros(1, 3, *SHAPE)
    v[0, 1, 3, 4, 5] = bad
    for fn in (
        integrate_velocity,
        jacobian_determinant,
        folding_fraction,
        volume_change_map,
        invert_velocity,
    ):
        with pytest.raises(ValueError, match="1 NaN or Inf"):
            fn(v)
    with pytest.raises(ValueError, match="displacement contains"):
        warp(torch.zeros(1, 1, *SHAPE), v)
    img = torch.zeros(1, 1, *SHAPE)
    img[0, 0, 1, 1, 1] = bad
    with pytest.raises(ValueError, match="image contains"):
        warp(img, torch.zeros(1, 3, *SHAPE))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_matches_cpu() -> None:
    v = smooth_velocity(amplitude=3.0)
    img = smooth_image()
    u_cpu = integrate_velocity(v)
    u_gpu = integrate_velocity(v.cuda())
    assert u_gpu.is_cuda
    assert torch.allclose(u_gpu.cpu(), u_cpu, atol=1e-4)
    assert torch.allclose(warp(img.cuda(), u_gpu).cpu(), warp(img, u_cpu), atol=1e-4)
    assert torch.allclose(jacobian_determinant(u_gpu).cpu(), jacobian_determinant(u_cpu), atol=1e-4)
