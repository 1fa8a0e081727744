"""Post-processing and scores: a planted bright blob is found where it was planted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurocast.anomaly.calibration import Calibration, calibrate_scores, per_score_rate
from neurocast.anomaly.iqm import IQMResult
from neurocast.anomaly.maps import (
    anomaly_map,
    components,
    dilated_mask,
    eroded_mask,
    grown_mask,
    remove_small_components,
    threshold_map,
)
from neurocast.anomaly.scores import (
    ARTEFACT_FEATURES,
    SPIKE_FEATURE,
    artefact_features,
    artefact_score,
    fit_noise_lines,
    image_noise_sd,
    leave_one_out_artefact_scores,
    leave_one_out_spike_zscores,
    lesion_score,
    noise_adjusted_features,
    reference_statistics,
    spike_zscore,
)


def _residual(seed: int, blob: tuple[int, int, int] | None = None, shape=(32, 32, 24)):
    rng = np.random.default_rng(seed)
    r = np.abs(rng.normal(0, 0.03, shape)).astype(np.float32)
    brain = np.zeros(shape, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    r[~brain] = 0
    r[brain & ~eroded_mask(brain, 4.0)] += 0.6  # the brain outline: large residual, not a lesion
    r[rng.random(shape) < 0.002] += 1.0  # salt noise
    if blob is not None:
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
        r[sum((idx[i] - blob[i]) ** 2 for i in range(3)) <= 9] += 0.5
    return r, brain


def test_planted_blob_is_found_where_it_was_planted() -> None:
    centre = (20, 11, 12)
    r, brain = _residual(0, centre)
    amap = anomaly_map(r, brain, spacing=(2, 2, 2), erosion_mm=4.0, median_size=3)
    assert not amap[~eroded_mask(brain, 4.0, (2, 2, 2))].any()  # the outline is gone
    comps = components(amap, 0.25, min_voxels=8, voxel_volume_mm3=8.0)
    assert len(comps) == 1  # salt noise removed by the median filter / size filter
    assert np.allclose(comps[0].centroid, centre, atol=0.5)
    assert comps[0].volume_mm3 == pytest.approx(comps[0].n_voxels * 8.0)
    mask = threshold_map(amap, 0.25, 8)
    assert mask[centre] and mask.sum() == comps[0].n_voxels
    # the lesion score is that cluster's mass; a healthy residual scores 0
    assert lesion_score(amap, 0.25, min_voxels=8, voxel_volume_mm3=8.0) == pytest.approx(comps[0].mass)
    healthy, brain = _residual(1)
    hmap = anomaly_map(healthy, brain, spacing=(2, 2, 2))
    assert lesion_score(hmap, 0.25, min_voxels=8, voxel_volume_mm3=8.0) == 0.0


def test_small_components_are_removed() -> None:
    m = np.zeros((10, 10, 10), bool)
    m[1, 1, 1] = True
    m[5:8, 5:8, 5:8] = True
    out = remove_small_components(m, 5)
    assert not out[1, 1, 1] and out[5:8, 5:8, 5:8].all()
    assert remove_small_components(m, 1).sum() == m.sum()


def test_the_mask_grows_a_strong_cluster_into_its_faint_rim_only() -> None:
    """Hysteresis: a lesion's core (above the strict threshold) brings its faint rim; a faint
    patch with no core, and a core smaller than min_voxels, bring nothing."""
    m = np.zeros((20, 20, 20), np.float32)
    m[3:10, 3:10, 3:10] = 0.5  # rim
    m[5:8, 5:8, 5:8] = 1.0  # core: 27 voxels
    m[13:17, 13:17, 13:17] = 0.5  # faint patch, no core
    m[14, 3, 14] = 1.0  # a lone strong voxel...
    m[13:16, 2:5, 13:16] = np.maximum(m[13:16, 2:5, 13:16], 0.5)  # ...with a faint rim of its own
    grown = grown_mask(m, 0.8, 0.3, min_voxels=8)
    assert grown[3:10, 3:10, 3:10].all()
    assert grown.sum() == 7**3  # the rim, not the patch, not the lone voxel's rim
    assert np.array_equal(grown_mask(m, 0.8, 0.9, min_voxels=8), threshold_map(m, 0.8, 8))
    assert np.array_equal(grown_mask(m, 0.8, float("nan"), min_voxels=8), threshold_map(m, 0.8, 8))
    assert not grown_mask(m, 2.0, 0.3).any()


def test_dilation_reaches_the_radius_in_mm_and_stays_within_the_limit() -> None:
    m = np.zeros((11, 11, 11), bool)
    m[5, 5, 5] = True
    assert dilated_mask(m, 2.0, (2, 2, 2)).sum() == 7  # face neighbours only: diagonals are 2.8 mm
    assert dilated_mask(m, 3.0, (2, 2, 2)).sum() == 19  # and the 12 edge neighbours (2.83 mm)
    anisotropic = dilated_mask(m, 2.0, (1, 1, 3))  # 2 voxels in-plane, none through-plane
    assert anisotropic[5, 3, 5] and anisotropic[3, 5, 5] and not anisotropic[5, 5, 4]
    assert np.array_equal(dilated_mask(m, 0.0, (2, 2, 2)), m)
    within = np.zeros_like(m)
    within[:, :6] = True  # the dilation may not cross into y > 5
    d = dilated_mask(m, 2.0, (2, 2, 2), within)
    assert d.sum() == 6 and not d[5, 6, 5]
    off = np.zeros_like(m)
    off[0, 0, 0] = True
    assert dilated_mask(off, 2.0, (2, 2, 2), within=~off)[0, 0, 0]  # the mask itself is kept


def test_artefact_score_rises_with_diffuse_residual_and_ghosting() -> None:
    rng = np.random.default_rng(2)
    region = np.ones((10, 10, 10), bool)

    def feats(level: float, ghost: float, cjv: float = 0.6) -> dict:
        amap = np.abs(rng.normal(level, 0.005, region.shape))
        iq = IQMResult({"efc": 0.5, "fber": 3000.0, "qi1": 0.0, "cjv": cjv, "ghost_ratio": ghost})
        return artefact_features(amap, region, iq)

    refs = [feats(0.05 + 0.002 * i, 0.001 * (i % 5 - 2), 0.6 + 0.005 * (i % 4)) for i in range(12)]
    ref = reference_statistics(refs)
    assert set(ref) == set(ARTEFACT_FEATURES)
    clean = artefact_score(feats(0.055, 0.001), ref)
    moved = artefact_score(feats(0.12, 0.3, 0.7), ref)
    assert moved > clean + 1.5  # at most Z_CLIP (3) per feature
    # ghosting alone (the residual unchanged) still raises the score
    assert artefact_score(feats(0.055, 0.05), ref) > clean + 0.5
    # the MRIQC background metrics are reported, not scored: FBER and QI1 do not move it
    other_air = artefact_features(np.full(region.shape, 0.055), region,
                                  IQMResult({"fber": 30.0, "qi1": 0.2, "cjv": 0.6, "ghost_ratio": 0.001}))
    same_air = artefact_features(np.full(region.shape, 0.055), region,
                                 IQMResult({"fber": 3000.0, "qi1": 0.0, "cjv": 0.6, "ghost_ratio": 0.001}))
    assert artefact_score(other_air, ref) == pytest.approx(artefact_score(same_air, ref))
    # a skull-stripped scan: no ghost ratio, the other features still give a number
    stripped = artefact_features(np.full(region.shape, 0.12), region,
                                 IQMResult({"ghost_ratio": math.nan, "cjv": 0.6, "snr_total": 12.0}))  # fmt: skip
    assert math.isnan(stripped["ghost_ratio"]) and math.isfinite(artefact_score(stripped, ref))
    loo = leave_one_out_artefact_scores(refs)
    assert len(loo) == len(refs) and all(math.isfinite(v) for v in loo)


def test_leave_one_group_out_artefact_scores_leave_out_the_whole_subject() -> None:
    """By subject, each reference is scored against the other subjects' references only."""
    refs = [dict.fromkeys(ARTEFACT_FEATURES, 0.0) | {"cjv": 0.50 + 0.01 * i} for i in range(8)]
    refs[0]["cjv"] = refs[1]["cjv"] = 0.90
    groups = ["a", "a", "b", "c", "d", "e", "f", "g"]
    by_subject = leave_one_out_artefact_scores(refs, groups=groups)
    expected = artefact_score(refs[0], reference_statistics(refs[2:]))
    assert by_subject[0] == pytest.approx(expected) and by_subject[1] == pytest.approx(expected)
    assert by_subject[2:] == pytest.approx(
        [artefact_score(refs[i], reference_statistics([r for j, r in enumerate(refs) if j != i])) for i in range(2, 8)]
    )
    with pytest.raises(ValueError, match="one group per reference"):
        leave_one_out_artefact_scores(refs, groups=groups[:3])


def test_the_noise_level_is_read_from_fine_detail_not_from_smooth_anatomy() -> None:
    rng = np.random.default_rng(5)
    shape = (40, 40, 40)
    x = np.linspace(0.0, 1.0, shape[0])[:, None, None]
    anatomy = 0.5 + 0.4 * np.sin(3 * x) * np.ones(shape)  # smooth on the voxel scale
    region = np.zeros(shape, bool)
    region[4:-4, 4:-4, 4:-4] = True
    for sd in (0.01, 0.04):
        noisy = anatomy + rng.normal(0, sd, shape)
        assert image_noise_sd(noisy, region) == pytest.approx(sd, rel=0.05)
    assert image_noise_sd(anatomy, region) < 0.002
    assert math.isnan(image_noise_sd(anatomy, np.zeros(shape, bool)))
    # ringing along one axis (motion's ghosts run along the phase-encoding direction) is not noise
    noisy = anatomy + rng.normal(0, 0.02, shape)
    ringing = 0.03 * np.cos(np.pi * np.arange(shape[1]))[None, :, None] * np.ones(shape)
    assert image_noise_sd(noisy + ringing, region) == pytest.approx(0.02, rel=0.05)


def test_noise_adjusted_features_score_a_noisier_healthy_scan_as_typical_and_raised_residual_high() -> None:
    """Healthy residuals grow with the noise level; taken off the references' line, a healthy scan
    noisier than every reference is typical, while motion (residual raised at the same noise) is not."""
    noise = np.linspace(0.010, 0.030, 12)
    refs = [
        dict.fromkeys(ARTEFACT_FEATURES, math.nan)
        | {"residual_median": 0.02 + 1.5 * x + 0.0005 * (i % 3 - 1), "residual_p90": 0.05 + 3.0 * x + 0.001 * (i % 2),
           "cjv": 0.55 + 2.0 * x + 0.002 * (i % 4 - 1.5)}
        for i, x in enumerate(noise)
    ]  # fmt: skip
    lines = fit_noise_lines(refs, noise)
    assert set(lines) == {"residual_median", "residual_p90", "cjv"}  # the ghost ratio is undefined here
    assert lines["residual_median"]["slope"] == pytest.approx(1.5, rel=0.05)
    adjusted = [noise_adjusted_features(r, x, lines) for r, x in zip(refs, noise, strict=True)]
    stats, plain_stats = reference_statistics(adjusted), reference_statistics(refs)
    x = 0.045  # noisier than every reference, healthy: on the lines
    noisy = {"residual_median": 0.02 + 1.5 * x, "residual_p90": 0.05 + 3.0 * x, "cjv": 0.55 + 2.0 * x}
    assert artefact_score(noisy, plain_stats) > 2.5  # the plain rule flags it
    assert abs(artefact_score(noise_adjusted_features(noisy, x, lines), stats)) < 0.5
    x = 0.02  # motion: the residual raised at a typical noise level
    moved = {"residual_median": 0.02 + 1.5 * x + 0.01, "residual_p90": 0.05 + 3.0 * x + 0.02, "cjv": 0.55 + 2.0 * x}
    assert artefact_score(noise_adjusted_features(moved, x, lines), stats) > 1.5
    with pytest.raises(ValueError, match="image noise SD"):
        noise_adjusted_features(moved, None, lines)
    assert noise_adjusted_features(moved, None, None) == moved  # no lines: as read
    unread = noise_adjusted_features(moved, math.nan, lines)  # no region to read the noise in
    assert all(math.isnan(unread[k]) for k in lines)
    # the calibration's leave-one-out refits the lines without the reference it scores
    loo = leave_one_out_artefact_scores(refs, noise_sds=list(noise))
    others = [r for j, r in enumerate(refs) if j != 3]
    own_lines = fit_noise_lines(others, [x for j, x in enumerate(noise) if j != 3])
    expected = artefact_score(
        noise_adjusted_features(refs[3], noise[3], own_lines),
        reference_statistics([noise_adjusted_features(r, x, own_lines) for r, x in zip(others, np.delete(noise, 3), strict=True)]),
    )
    assert loo[3] == pytest.approx(expected)
    with pytest.raises(ValueError, match="one image noise SD per reference"):
        leave_one_out_artefact_scores(refs, noise_sds=list(noise[:3]))


def test_one_feature_far_off_the_references_cannot_carry_the_artefact_score_alone() -> None:
    """A real scan's ghost ratio can sit a hundred robust SDs above clean simulated references;
    the mean of clipped z-scores moves by at most Z_CLIP / n_features for it."""
    from neurocast.anomaly.scores import Z_CLIP

    ref = {name: {"median": 0.0, "scale": 1.0, "n": 10} for name in ARTEFACT_FEATURES}
    typical = dict.fromkeys(ARTEFACT_FEATURES, 0.0)
    one_off = {**typical, "ghost_ratio": 150.0}
    all_up = dict.fromkeys(ARTEFACT_FEATURES, 2.0)
    assert artefact_score(one_off, ref) == pytest.approx(Z_CLIP / len(ARTEFACT_FEATURES))
    assert artefact_score(all_up, ref) == pytest.approx(2.0)
    assert artefact_score(all_up, ref) > artefact_score(one_off, ref)


def test_the_spike_is_scored_apart_from_the_diffuse_artefact_features() -> None:
    """The spike is evidence from one feature: it stays out of the artefact score's mean and is
    read as its own robust z-score, with a threshold set on the references' leave-one-out ones."""
    rng = np.random.default_rng(5)
    refs = [
        {"residual_median": 0.05 + 0.002 * rng.standard_normal(), "residual_p90": 0.09 + 0.003 * rng.standard_normal(),
         "cjv": 0.6 + 0.01 * rng.standard_normal(), "ghost_ratio": math.nan, "spike_z": 3.5 + 0.4 * rng.standard_normal()}
        for _ in range(20)
    ]  # fmt: skip
    ref = reference_statistics(refs)
    assert SPIKE_FEATURE in ref
    typical = {**refs[0], "spike_z": ref[SPIKE_FEATURE]["median"]}
    spiked = {**typical, "spike_z": 8.0}
    assert artefact_score(spiked, ref) == pytest.approx(artefact_score(typical, ref))
    assert spike_zscore(spiked, ref) == pytest.approx((8.0 - ref[SPIKE_FEATURE]["median"]) / ref[SPIKE_FEATURE]["scale"])
    assert math.isnan(spike_zscore(spiked, {k: v for k, v in ref.items() if k != SPIKE_FEATURE}))
    # leave one group out: each reference against the other groups' only
    values = [3.0, 3.2, 3.4, 3.6, 9.0, 9.0]
    by_scan = leave_one_out_spike_zscores(values)
    by_group = leave_one_out_spike_zscores(values, groups=[1, 1, 2, 2, 3, 3])
    assert by_group[4] > by_scan[4] > 0  # its twin no longer makes it look typical
    with pytest.raises(ValueError, match="one group per reference"):
        leave_one_out_spike_zscores(values, groups=[1, 2])


def test_a_calibration_with_the_spike_check_flags_a_spike_alone_at_three_scores_rate() -> None:
    rng = np.random.default_rng(6)
    n = 200
    base = calibrate_scores(rng.normal(size=n), rng.normal(size=n), fpr=0.05)
    spikes = list(3.5 + 0.4 * rng.standard_normal(n))
    cal = base.with_spike_references(spikes)
    assert base.spike_threshold is None and cal.n_scores == 3
    assert cal.per_score_rate == pytest.approx(per_score_rate(0.05, 3))
    assert cal.per_score_rate < base.per_score_rate
    assert cal.lesion_threshold > base.lesion_threshold and cal.artefact_threshold > base.artefact_threshold
    assert 1.5 < cal.spike_threshold < 4.0 and cal.feature_reference[SPIKE_FEATURE]["n"] == n
    assert cal.flag(0.0, 0.0, spike=1.0) == "pass" == base.flag(0.0, 0.0, spike=20.0)
    verdict = cal.assess(0.0, 0.0, spike=20.0)
    assert verdict["flag"] == "review-artefact" and verdict["over_threshold"] == ("spike",)
    assert cal.over_thresholds(0.0, 9.0, spike=20.0) == ("artefact", "spike")
    assert verdict["percentile"] == 100.0  # the spike's, above every reference
    # a lesion and a spike: the lesion rule still decides by the largest cluster's share
    assert cal.flag(10.0, 0.0, largest_share=0.9, spike=20.0) == "review-lesion"
    assert cal.flag(10.0, 0.0, largest_share=0.2, spike=20.0) == "review-artefact"
    again = Calibration.from_dict(cal.to_dict())
    assert again.spike_threshold == cal.spike_threshold and again.spike_reference == cal.spike_reference
    assert Calibration.from_dict(base.to_dict()).spike_threshold is None
    with pytest.raises(ValueError, match="at least two references"):
        base.with_spike_references([3.0, math.nan])
