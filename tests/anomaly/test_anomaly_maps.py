"""Post-processing and scores: a planted bright blob is found where it was planted."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
    artefact_features,
    artefact_score,
    leave_one_out_artefact_scores,
    lesion_score,
    reference_statistics,
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
