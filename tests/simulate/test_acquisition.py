"""The scanner model: each native voxel averages the anatomy over its extent."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neurocast.simulate.acquisition import sample, sample_voxel_average, sampling_grid

SHAPE = (24, 20, 16)  # template-space volume, 1 mm voxels


def _acquisition(voxel_mm: float, shift_mm: float) -> SimpleNamespace:
    """A native grid aligned with the template's axes, ``voxel_mm`` voxels, shifted along x."""
    native_shape = tuple(int((n - 4) // voxel_mm) for n in SHAPE)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = [2.0 + shift_mm, 2.0, 2.0]
    return SimpleNamespace(
        native_to_template=np.eye(4), native_affine=affine, native_shape=native_shape
    )


def test_voxel_average_equals_point_sampling_for_one_sample_and_for_linear_images():
    x = np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    ramp = np.broadcast_to(3.0 * x + 1.0, SHAPE).copy()
    grid = sampling_grid(SHAPE, np.eye(4), _acquisition(1.5, 0.3))
    point = sample(ramp, grid)
    assert torch.equal(sample_voxel_average(ramp, grid, 1), point)
    # the mean of a linear function over a voxel is its value at the centre
    torch.testing.assert_close(sample_voxel_average(ramp, grid, 2), point, atol=1e-4, rtol=0)


def test_voxel_average_records_partial_volume_whatever_the_grid_offset():
    # planes of 1 and 0 alternating every template voxel along x; 2 mm scanner voxels hold one
    # of each, so a real voxel reads 0.5 wherever it lies, while its centre reads 1 or 0
    stripes = np.broadcast_to(
        (np.arange(SHAPE[0]) % 2).astype(np.float32)[:, None, None], SHAPE
    ).copy()
    for shift in (0.0, 0.5, 1.0):
        grid = sampling_grid(SHAPE, np.eye(4), _acquisition(2.0, shift))
        averaged = sample_voxel_average(stripes, grid, 2)
        torch.testing.assert_close(averaged, torch.full_like(averaged, 0.5), atol=1e-5, rtol=0)
    point = sample(stripes, sampling_grid(SHAPE, np.eye(4), _acquisition(2.0, 0.0)))
    assert float(point.max() - point.min()) < 1e-4  # every centre on the same kind of plane
    assert float(point.mean()) in (pytest.approx(0.0, abs=1e-4), pytest.approx(1.0, abs=1e-4))


def test_voxel_average_refuses_fewer_than_one_sample():
    grid = sampling_grid(SHAPE, np.eye(4), _acquisition(2.0, 0.0))
    with pytest.raises(ValueError, match="samples_per_axis"):
        sample_voxel_average(np.zeros(SHAPE, np.float32), grid, 0)
