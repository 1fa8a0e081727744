"""Post-processing and scores: a planted bright blob is found where it was planted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurocast.anomaly.iqm import IQMResult
from neurocast.anomaly.maps import (
    anomaly_map,
    components,
    eroded_mask,
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


def test_artefact_score_rises_with_diffuse_residual_and_background_energy() -> None:
    rng = np.random.default_rng(2)
    region = np.ones((10, 10, 10), bool)

    def feats(level: float, fber: float, qi1: float) -> dict:
        amap = np.abs(rng.normal(level, 0.005, region.shape))
        iq = IQMResult({"efc": 0.5, "fber": fber, "qi1": qi1, "cjv": 0.6, "cnr": 3.0, "snrd_total": 30.0})
        return artefact_features(amap, region, iq)

    refs = [feats(0.05 + 0.002 * i, 3000 + 50 * i, 0.001 * (i % 3)) for i in range(12)]
    ref = reference_statistics(refs)
    assert set(ref) == set(ARTEFACT_FEATURES)
    clean = artefact_score(feats(0.055, 3200, 0.001), ref)
    moved = artefact_score(feats(0.12, 300, 0.05), ref)
    assert moved > clean + 1.5  # at most Z_CLIP (3) per feature
    # a skull-stripped scan: only the residual features, still a number
    stripped = artefact_features(np.full(region.shape, 0.12), region,
                                 IQMResult({"efc": math.nan, "fber": math.nan, "qi1": math.nan,
                                            "cjv": 0.6, "snr_total": 12.0}))  # fmt: skip
    assert math.isfinite(artefact_score(stripped, ref))
    loo = leave_one_out_artefact_scores(refs)
    assert len(loo) == len(refs) and all(math.isfinite(v) for v in loo)


def test_one_feature_far_off_the_references_cannot_carry_the_artefact_score_alone() -> None:
    """A real scan's QI1 can sit a hundred robust SDs above clean simulated references; the mean
    of clipped z-scores moves by at most Z_CLIP / n_features for it."""
    from neurocast.anomaly.scores import Z_CLIP

    ref = {name: {"median": 0.0, "scale": 1.0, "n": 10} for name in ARTEFACT_FEATURES}
    typical = dict.fromkeys(ARTEFACT_FEATURES, 0.0)
    one_off = {**typical, "qi1": 150.0}
    all_up = dict.fromkeys(ARTEFACT_FEATURES, 2.0)
    assert artefact_score(one_off, ref) == pytest.approx(Z_CLIP / len(ARTEFACT_FEATURES))
    assert artefact_score(all_up, ref) == pytest.approx(2.0)
    assert artefact_score(all_up, ref) > artefact_score(one_off, ref)
