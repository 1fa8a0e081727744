"""Differential bias correction: a smooth ratio between visits goes, anatomy stays."""

from __future__ import annotations

import numpy as np
import pytest

from neurocast.registration.bias import correct_differential_bias


def phantom(shape=(40, 40, 40), radius=8.0, seed=0) -> np.ndarray:
    """White matter (1.0) with a dark sphere (0.3, a 'ventricle') in the middle, and a little noise."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum((idx[i] - (shape[i] - 1) / 2) ** 2 for i in range(3)))
    img = np.where(r < radius, 0.3, 1.0).astype(np.float32)
    return img + 0.01 * rng.standard_normal(shape).astype(np.float32)


def ramp(shape, amplitude: float) -> np.ndarray:
    x = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None, None]
    return np.broadcast_to(np.exp(amplitude * x), shape).astype(np.float32)


def test_a_smooth_ratio_between_visits_is_removed():
    a = phantom()
    b = phantom(seed=1) * ramp(a.shape, 0.1)
    mask = np.ones(a.shape, bool)
    (ca, cb), (fa, fb) = correct_differential_bias([a, b], mask, 2.0)
    inner = (slice(8, -8),) * 3  # away from the box edge, where the smoothing has one side only
    true = np.log(ramp(a.shape, 0.1))[inner]
    found = np.log(fb / fa)[inner]
    assert np.abs(found - true).mean() < 0.35 * np.abs(true).mean()
    assert np.abs(np.log(cb / ca))[inner].mean() < np.abs(np.log(b / a))[inner].mean()
    # the fields are smooth ramps in opposite directions, and keep the overall scale
    assert fb[-10, 20, 20] > 1 > fb[10, 20, 20]
    assert fa[-10, 20, 20] < 1 < fa[10, 20, 20]


def test_a_real_change_is_not_taken_for_bias():
    """The 'ventricle' grows between visits: its volume, counted on the corrected images, is kept."""
    a = phantom(radius=8.0)
    b = phantom(radius=9.5, seed=1)
    mask = np.ones(a.shape, bool)
    (ca, cb), _ = correct_differential_bias([a, b], mask, 2.0)
    dark = lambda x: int((x < 0.65).sum())  # noqa: E731
    assert dark(cb) / dark(ca) == pytest.approx(dark(b) / dark(a), rel=0.02)


def test_one_visit_is_returned_unchanged_and_bad_input_is_refused():
    a = phantom()
    (out,), (field,) = correct_differential_bias([a], np.ones(a.shape, bool), 2.0)
    assert np.array_equal(out, a) and np.all(field == 1)
    with pytest.raises(ValueError, match="shape"):
        correct_differential_bias([a, a[:-1]], np.ones(a.shape, bool), 2.0)
    with pytest.raises(ValueError, match="no brain tissue"):
        correct_differential_bias([a, a], np.zeros(a.shape, bool), 2.0)
    with pytest.raises(ValueError, match="at least one"):
        correct_differential_bias([], np.ones(a.shape, bool), 2.0)
