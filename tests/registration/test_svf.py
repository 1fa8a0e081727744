"""Velocity-field fit: recovers known volume changes, is deterministic, refuses bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neurocast.registration.deformation import (
    folding_fraction,
    identity_grid,
    integrate_velocity,
    volume_change_map,
    warp,
)
from neurocast.registration.svf import (
    REGIONAL_CHANGE_RADIUS,
    REGIONAL_CHANGE_REGULARIZATION,
    VelocityFit,
    fit_velocity_field,
    global_ncc,
    regional_change_radius,
)

N = 32


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these fits are small, and extra threads only add contention on a busy runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blob_velocity(shape, centre, sigma: float, change: float) -> torch.Tensor:
    """v = grad(phi) of a Gaussian potential: volume change ~ 1 + change at the centre."""
    x = identity_grid(shape)[0]
    a = -math.log(1.0 + change) * sigma * sigma / 3.0
    d = x - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)
    phi = a * torch.exp(-(d * d).sum(0) / (2 * sigma * sigma))
    return (-d / (sigma * sigma) * phi)[None]


@pytest.fixture(scope="module")
def synthetic_pair() -> dict:
    """A textured 32^3 blob and its follow-up, one region shrunk and one expanded by a known field."""
    gen = torch.Generator().manual_seed(0)
    x = identity_grid((N, N, N))[0]
    c = (N - 1) / 2
    r = ((x - c) ** 2).sum(0).sqrt()
    blob = torch.sigmoid((11 - r) * 1.5)
    texture = torch.nn.functional.interpolate(
        torch.rand(1, 1, 8, 8, 8, generator=gen),
        size=(N, N, N),
        mode="trilinear",
        align_corners=True,
    )[0, 0]
    image = blob * (0.6 + 0.8 * texture)
    v = blob_velocity((N, N, N), (c + 4, c - 1, c), 5.0, -0.2) + blob_velocity(
        (N, N, N), (c - 5, c + 2, c + 1), 5.0, 0.15
    )
    follow = warp(image[None, None], integrate_velocity(v))[0, 0]
    mask = blob > 0.5
    return {"baseline": image, "follow_up": follow, "mask": mask, "v": v}


def test_fit_recovers_the_volume_change(synthetic_pair: dict) -> None:
    p = synthetic_pair
    fit = fit_velocity_field(p["baseline"], p["follow_up"], mask=p["mask"], levels=2, seed=0)
    assert isinstance(fit, VelocityFit)
    assert fit.velocity.shape == (1, 3, 17, 17, 17)  # 32 voxels at factor 2 -> 17
    assert fit.velocity.dtype == torch.float32
    assert fit.n_iter == len(fit.loss_history) == sum(fit.iterations_per_level) > 0
    assert fit.ncc_after > fit.ncc_before
    assert fit.seconds > 0
    true = volume_change_map(p["v"])[0, 0]
    est = fit.volume_change()[0, 0]
    assert est.shape == (N, N, N)
    m = p["mask"]
    r = float(torch.corrcoef(torch.stack([true[m], est[m]]))[0, 1])
    assert r > 0.8, r
    # the right direction: shrinkage where the truth shrinks, expansion where it expands
    shrink = true < 0.95
    grow = true > 1.05
    assert float(est[shrink].mean()) < 0.98
    assert float(est[grow].mean()) > 1.02
    assert float(folding_fraction(fit.displacement())[0]) == 0.0
    # the fitted field reproduces the follow-up better than no field
    warped = warp(p["baseline"][None, None], fit.displacement((N, N, N)))[0, 0]
    assert global_ncc(warped, p["follow_up"], m) == pytest.approx(fit.ncc_after, abs=1e-4)


def test_regional_setting_recovers_more_of_a_regional_change(synthetic_pair: dict) -> None:
    """The weaker penalty ``register`` uses shrinks a region's measured change less."""
    p = synthetic_pair
    true = volume_change_map(p["v"])[0, 0]
    shrink = true < 0.95
    measured = {}
    for reg, radius in ((0.3, 6), (REGIONAL_CHANGE_REGULARIZATION, REGIONAL_CHANGE_RADIUS)):
        fit = fit_velocity_field(
            p["baseline"], p["follow_up"], mask=p["mask"], levels=2, seed=0,
            regularization=reg, radius=radius,
        )  # fmt: skip
        measured[reg] = float(fit.volume_change()[0, 0][shrink].mean()) - 1
    target = float(true[shrink].mean()) - 1
    assert abs(measured[REGIONAL_CHANGE_REGULARIZATION] - target) < abs(measured[0.3] - target)


def test_register_defaults_to_the_regional_setting() -> None:
    from neurocast.cli.registration_cmds import register

    option = next(o for o in register.params if o.name == "regularization")
    assert option.default == REGIONAL_CHANGE_REGULARIZATION


def test_register_keeps_its_lncc_window_in_mm_on_any_grid() -> None:
    assert regional_change_radius(2.0) == REGIONAL_CHANGE_RADIUS == 4
    assert regional_change_radius(1.0) == 8
    assert regional_change_radius(1.5) == 5
    assert regional_change_radius(32.0) == 1
    with pytest.raises(ValueError, match="grid_spacing_mm"):
        regional_change_radius(0.0)


def test_fit_is_deterministic(synthetic_pair: dict) -> None:
    p = synthetic_pair
    kw = {"mask": p["mask"], "levels": 2, "iterations": (20, 10), "seed": 3}
    a = fit_velocity_field(p["baseline"], p["follow_up"], **kw)
    b = fit_velocity_field(p["baseline"].numpy(), p["follow_up"].numpy(), **kw)
    assert torch.equal(a.velocity, b.velocity)
    assert a.loss_history == b.loss_history
    assert not torch.are_deterministic_algorithms_enabled()  # the global switch is restored


def test_identical_images_give_a_near_zero_field(synthetic_pair: dict) -> None:
    base = synthetic_pair["baseline"]
    fit = fit_velocity_field(base, base, levels=2, iterations=(20, 10), similarity="mse")
    assert float(fit.velocity.abs().max()) < 0.05
    assert fit.ncc_before == pytest.approx(1.0)


def test_options_shape_the_fit(synthetic_pair: dict) -> None:
    p = synthetic_pair
    fit = fit_velocity_field(
        p["baseline"],
        p["follow_up"],
        field_factor=4,
        levels=1,
        iterations=15,
        similarity="mse",
        regularizer="diffusion",
        tolerance=0,
        num_threads=1,
    )
    assert fit.velocity.shape == (1, 3, 9, 9, 9)
    assert fit.iterations_per_level == [15]
    assert fit.settings["similarity"] == "mse"
    assert fit.settings["regularizer"] == "diffusion"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"follow_up": torch.rand(N, N, N - 1)}, "same grid"),
        ({"baseline": torch.rand(N, N)}, "3-D volume"),
        ({"mask": torch.zeros(N, N, N)}, "mask is empty"),
        ({"mask": torch.ones(N, N, 5)}, "mask"),
        ({"field_factor": 0}, "field_factor"),
        ({"levels": 7}, "levels"),
        ({"similarity": "mi"}, "similarity"),
        ({"regularizer": "tv"}, "regularizer"),
        ({"iterations": (5, 5, 5)}, "iterations"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"regularization": -1.0}, "regularization"),
    ],
)
def test_bad_input_is_refused(kwargs: dict, match: str) -> None:
    args = {"baseline": torch.rand(N, N, N), "follow_up": torch.rand(N, N, N), "levels": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit_velocity_field(**args)


def test_nan_and_constant_images_are_refused() -> None:
    bad = torch.rand(N, N, N)
    bad[3, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="baseline contains NaN"):
        fit_velocity_field(bad, torch.rand(N, N, N))
    with pytest.raises(ValueError, match="follow_up is constant"):
        fit_velocity_field(torch.rand(N, N, N), torch.ones(N, N, N))


def test_fit_on_real_anatomy(shared_data: Path) -> None:
    """A real T1 scan warped by a known smooth atrophy-like field: the fit finds its Jacobian."""
    from neurocast.io import load_image

    img = torch.from_numpy(
        load_image(shared_data / "nibabel" / "someones_anatomy.nii.gz").get_fdata(dtype=np.float32)
    )
    shape = tuple(img.shape)
    head = img > 0.2 * float(img.max())
    centre = [float(c) for c in torch.nonzero(head).float().mean(0)]
    v = blob_velocity(shape, (centre[0] + 6, centre[1], centre[2] + 4), 5.0, -0.2)
    v = v + blob_velocity(shape, (centre[0] - 7, centre[1] + 5, centre[2]), 5.0, 0.2)
    follow = warp(img[None, None], integrate_velocity(v))[0, 0]
    fit = fit_velocity_field(img, follow, mask=head, seed=0)
    true = volume_change_map(v)[0, 0]
    est = fit.volume_change()[0, 0]
    r = float(torch.corrcoef(torch.stack([true[head], est[head]]))[0, 1])
    assert r > 0.85, r
    assert float(folding_fraction(fit.displacement(shape), head)[0]) == 0.0
    assert fit.ncc_after > fit.ncc_before
