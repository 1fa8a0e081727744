"""The normative standardisation of anomaly maps against healthy references."""

from __future__ import annotations

import numpy as np
import pytest

from neurocast.anomaly.normative import RULE, NormativeMaps

SHAPE = (10, 10, 10)


def healthy_maps(n: int, seed: int = 0) -> list[np.ndarray]:
    """Maps with a noisy "cortex" (x < 3: mean ~0.2, sd ~0.1) and a quiet rest (~0.01)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = np.abs(rng.normal(0, 0.01, SHAPE))
        m[:3] += np.abs(rng.normal(0.2, 0.1, (3, *SHAPE[1:])))
        out.append(m.astype(np.float32))
    return out


def test_the_same_residual_counts_more_where_healthy_references_are_quiet() -> None:
    region = np.ones(SHAPE, bool)
    maps = healthy_maps(12)
    norm = NormativeMaps(smoothing_mm=0.0, floor_fraction=0.1).fit(maps, [region] * 12)
    m = np.zeros(SHAPE, np.float32)
    m[1, 5, 5] = m[7, 5, 5] = 0.3
    z = norm.transform(m, region)
    expected = (0.3 - norm.mean_[7, 5, 5]) / (norm.sd_[7, 5, 5] + norm.floor_)
    assert z[7, 5, 5] == pytest.approx(expected, rel=1e-5)
    assert z[7, 5, 5] > 10 * z[1, 5, 5] > 0
    assert z[0, 0, 0] == 0.0  # below the references' mean: not anomalous
    outside = region.copy()
    outside[7] = False
    assert norm.transform(m, outside)[7, 5, 5] == 0.0


def test_leave_one_out_standardises_each_reference_against_the_others() -> None:
    region = np.ones(SHAPE, bool)
    maps = healthy_maps(6, seed=1)
    norm = NormativeMaps(smoothing_mm=2.0)
    loo = norm.leave_one_out(maps, [region] * 6)
    others = NormativeMaps(smoothing_mm=2.0).fit(maps[1:], [region] * 5)
    others.floor_ = norm.floor_  # leave-one-out keeps the full fit's floor
    assert np.allclose(loo[0], others.transform(maps[0], region), rtol=2e-3, atol=1e-3)
    assert norm.n_references_ == 6  # and leaves the full fit behind
    # in-sample, a reference is always closer to the mean than out of sample
    assert norm.transform(maps[0], region).sum() < loo[0].sum()
    with pytest.raises(ValueError, match="at least two"):
        NormativeMaps().leave_one_out(maps[:1], [region])


def test_leave_one_group_out_standardises_against_the_other_subjects_only() -> None:
    """A subject's two visits share a residual peak (its own anatomy): left out one scan at a
    time, the other visit hides the peak; left out by subject, it shows as it would in a new one."""
    region = np.ones(SHAPE, bool)
    maps = healthy_maps(8, seed=3)
    for m in maps[:2]:  # subject "a"
        m[7, 5, 5] = 0.5
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    norm = NormativeMaps(smoothing_mm=0.0)
    by_scan = norm.leave_one_out(maps, [region] * 8)
    by_subject = norm.leave_one_out(maps, [region] * 8, groups=groups)
    others = NormativeMaps(smoothing_mm=0.0).fit(maps[2:], [region] * 6)
    others.floor_ = norm.floor_
    assert np.allclose(by_subject[0], others.transform(maps[0], region), rtol=2e-3, atol=1e-3)
    assert by_subject[0][7, 5, 5] > 3 * by_scan[0][7, 5, 5]
    # a subject with one visit is left out alone either way
    single = NormativeMaps(smoothing_mm=0.0).leave_one_out(maps, [region] * 8, groups=[0, 1, 2, 3, 4, 5, 6, 7])
    assert all(np.array_equal(x, y) for x, y in zip(single, by_scan, strict=True))
    with pytest.raises(ValueError, match="one group per map"):
        norm.leave_one_out(maps, [region] * 8, groups=groups[:7])
    with pytest.raises(ValueError, match="at least two groups"):
        norm.leave_one_out(maps, [region] * 8, groups=["a"] * 8)


def test_voxels_no_reference_covers_take_the_median_statistics() -> None:
    region = np.zeros(SHAPE, bool)
    region[2:8, 2:8, 2:8] = True
    norm = NormativeMaps(smoothing_mm=0.0).fit(healthy_maps(5, seed=2), [region] * 5)
    inside = norm.mean_[region]
    assert norm.mean_[0, 0, 0] == pytest.approx(float(np.median(inside)), rel=1e-3)
    assert np.isfinite(norm.transform(np.ones(SHAPE, np.float32), np.ones(SHAPE, bool))).all()


def test_reference_maps_round_trip_through_arrays_and_refuse_another_rule() -> None:
    region = np.ones(SHAPE, bool)
    norm = NormativeMaps(smoothing_mm=2.0, floor_fraction=0.2).fit(healthy_maps(4), [region] * 4)
    arrays, info = norm.to_arrays()
    assert arrays["mean"].dtype == np.float16 and info["rule"] == RULE
    again = NormativeMaps.from_arrays(arrays, info)
    m = healthy_maps(1, seed=9)[0]
    assert np.array_equal(norm.transform(m, region), again.transform(m, region))
    with pytest.raises(ValueError, match="unknown normative-map rule"):
        NormativeMaps.from_arrays(arrays, {**info, "rule": "something-else"})


def test_bad_inputs_are_refused_with_the_reason() -> None:
    region = np.ones(SHAPE, bool)
    norm = NormativeMaps().fit(healthy_maps(2), [region] * 2)
    with pytest.raises(ValueError, match="differs from the references' grid"):
        norm.transform(np.zeros((4, 4, 4), np.float32), np.ones((4, 4, 4), bool))
    with pytest.raises(ValueError, match="share one grid"):
        NormativeMaps().fit(
            [np.zeros(SHAPE), np.zeros((4, 4, 4))], [region, np.ones((4, 4, 4), bool)]
        )
    with pytest.raises(RuntimeError, match="not fitted"):
        NormativeMaps().transform(np.zeros(SHAPE), region)
    with pytest.raises(ValueError, match="floor_fraction"):
        NormativeMaps(floor_fraction=0.0)
