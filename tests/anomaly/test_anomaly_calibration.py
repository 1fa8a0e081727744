"""Calibration on healthy references gives the asked false-positive rate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neurocast.anomaly.calibration import (
    Calibration,
    calibrate_scores,
    per_score_rate,
    percentile_of,
    threshold_at_rate,
    voxel_threshold_from_maps,
    voxel_thresholds_from_maps,
)


@pytest.mark.parametrize("fpr", [0.05, 0.1])
def test_calibration_gives_the_asked_false_positive_rate(fpr: float) -> None:
    rng = np.random.default_rng(0)
    # healthy references: lesion scores mostly 0 with a heavy tail, artefact scores Gaussian
    def healthy(n: int) -> tuple[np.ndarray, np.ndarray]:
        les = np.where(rng.random(n) < 0.3, rng.gamma(2.0, 50.0, n), 0.0) + rng.random(n) * 1e-6
        return les, rng.normal(0.0, 1.0, n)

    cal = calibrate_scores(*healthy(2000), fpr=fpr)
    les, art = healthy(100_000)
    flagged = np.array([cal.flag(a, b) != "pass" for a, b in zip(les, art, strict=True)])
    assert flagged.mean() == pytest.approx(fpr, abs=0.01)
    # each score alone takes Šidák's share
    assert np.mean(art > cal.artefact_threshold) == pytest.approx(per_score_rate(fpr), abs=0.007)


def test_small_reference_sets_stay_conservative() -> None:
    # with 20 references at 5 %, the threshold is the largest reference (never below it)
    refs = np.arange(20.0)
    assert threshold_at_rate(refs, per_score_rate(0.05)) == pytest.approx(19.0)
    assert threshold_at_rate(refs, 0.5) == pytest.approx(9.5)


def test_too_few_references_are_reported_with_the_rate_they_really_give() -> None:
    from neurocast.anomaly.calibration import min_references

    rate = per_score_rate(0.05)
    n = min_references(0.05)
    assert n == 39
    # one fewer: the threshold is the largest score; from n on it lies inside the range
    assert threshold_at_rate(np.arange(float(n - 1)), rate) == pytest.approx(n - 2)
    assert threshold_at_rate(np.arange(float(n)), rate) < n - 1
    rng = np.random.default_rng(2)
    few = calibrate_scores(rng.normal(size=26), rng.normal(size=26), fpr=0.05)
    assert few.at_reference_maximum
    assert "26 healthy reference" in few.describe_reference_count() and "1/27" in few.describe_reference_count()
    many = calibrate_scores(rng.normal(size=n), rng.normal(size=n), fpr=0.05)
    assert not many.at_reference_maximum and many.describe_reference_count() is None
    assert min_references(0.1) < n  # a higher rate needs fewer


def test_flags_percentiles_and_json_round_trip() -> None:
    rng = np.random.default_rng(1)
    cal = calibrate_scores(rng.normal(size=200), rng.normal(size=200), fpr=0.05,
                           voxel_threshold=0.3, voxel_quantile=0.999,
                           feature_reference={"cjv": {"median": 0.6, "scale": 0.05, "n": 200}})  # fmt: skip
    assert cal.flag(0.0, 0.0) == "pass"
    assert cal.flag(9.0, 0.0) == "review-lesion"
    assert cal.flag(0.0, 9.0) == "review-artefact"
    assert cal.flag(9.0, 4.0) == "review-lesion"  # both above: the larger excess wins
    assert cal.flag(4.0, 9.0) == "review-artefact"
    assert cal.flag(math.nan, 0.0) == "pass"
    verdict = cal.assess(9.0, 0.0)
    assert verdict["flag"] == "review-lesion" and verdict["percentile"] == 100.0
    # every score over its threshold is named, whichever the flag names
    assert cal.assess(9.0, 4.0)["over_threshold"] == ("lesion", "artefact")
    assert cal.over_thresholds(0.0, 9.0) == ("artefact",) and cal.over_thresholds(0.0, 0.0) == ()
    assert cal.over_thresholds(math.nan, math.nan) == ()
    assert percentile_of(0.0, [-1.0, 0.0, 1.0, 2.0]) == 50.0
    text = json.dumps(cal.to_dict())
    back = Calibration.from_dict(json.loads(text))
    assert back.to_dict() == cal.to_dict() and math.isnan(back.grow_threshold)  # NaN != NaN
    grown = calibrate_scores([0.0, 1.0], [0.0, 1.0], voxel_threshold=0.3, voxel_quantile=0.999,
                             grow_threshold=0.2, grow_quantile=0.99,
                             lesion_scales={"mass": 4400.0, "peak": 17.7})  # fmt: skip
    assert Calibration.from_dict(json.loads(json.dumps(grown.to_dict()))) == grown
    assert grown.lesion_scales == {"mass": 4400.0, "peak": 17.7} and cal.lesion_scales is None
    # a calibration written before mask growth reads back without it
    old = {k: v for k, v in grown.to_dict().items() if not k.startswith("grow_") and k != "lesion_scales"}
    assert math.isnan(Calibration.from_dict(old).grow_threshold)
    assert Calibration.from_dict(old).lesion_scales is None  # nor the peak


def test_when_both_scores_are_over_the_largest_clusters_share_names_the_flag() -> None:
    """A compact finding (one cluster holds most of the supra-threshold mass) is a lesion even
    when the artefact score is further above its threshold; scattered evidence is an artefact."""
    from neurocast.anomaly.calibration import COMPACT_SHARE

    rng = np.random.default_rng(1)
    cal = calibrate_scores(rng.normal(size=200), rng.normal(size=200), fpr=0.05)
    assert cal.flag(4.0, 9.0, largest_share=0.9) == "review-lesion"
    assert cal.flag(9.0, 4.0, largest_share=0.2) == "review-artefact"
    assert cal.flag(4.0, 9.0, largest_share=COMPACT_SHARE) == "review-lesion"
    assert cal.assess(9.0, 4.0, 0.2)["flag"] == "review-artefact"
    assert cal.assess(9.0, 4.0, 0.2)["percentile"] == cal.artefact_percentile(4.0)
    # without a share (or an undefined one) the larger excess decides, as before
    assert cal.flag(9.0, 4.0, largest_share=math.nan) == cal.flag(9.0, 4.0) == "review-lesion"
    # the share only names the flag: it never raises or clears one
    assert cal.flag(9.0, 0.0, largest_share=0.1) == "review-lesion"
    assert cal.flag(0.0, 9.0, largest_share=0.9) == "review-artefact"
    assert cal.flag(0.0, 0.0, largest_share=0.1) == "pass"


def test_voxel_threshold_is_a_quantile_of_healthy_map_values() -> None:
    rng = np.random.default_rng(2)
    maps = [rng.random((10, 10, 10)) for _ in range(3)]
    regions = [np.ones((10, 10, 10), bool)] * 3
    thr = voxel_threshold_from_maps(maps, regions, 0.99)
    allv = np.concatenate([m.ravel() for m in maps])
    assert np.mean(allv > thr) == pytest.approx(0.01, abs=0.001)
    assert voxel_thresholds_from_maps(maps, regions, (0.999, 0.99)) == [
        voxel_threshold_from_maps(maps, regions, 0.999), thr
    ]
