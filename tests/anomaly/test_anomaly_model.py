"""The detector end to end on a tiny model and tiny volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurocast.anomaly import AnomalyDetector
from neurocast.anomaly.scan import Scan
from neurocast.anomaly.scores import image_noise_sd
from neurocast.anomaly.training import SliceDataset, slice_inputs
from neurocast.errors import CheckpointError


def test_planted_blob_is_flagged_and_located(tiny_detector, make_scan, blob_centre) -> None:
    det = tiny_detector
    assert det.calibration_ is not None and det.calibration_.n_references == 6
    res = det.score(make_scan(7, blob=True))
    assert res.flag == "review-lesion"
    assert res.lesion_percentile == 100.0 and res.percentile == 100.0
    assert np.allclose(res.components[0].centroid, blob_centre, atol=1.5)
    assert res.mask[blob_centre]
    clean = det.score(make_scan(8))
    assert clean.lesion_score < res.lesion_score
    assert not clean.mask[blob_centre]
    summary = json.loads(json.dumps(res.summary()))
    assert summary["flag"] == "review-lesion" and summary["clusters"]


def test_scoring_is_deterministic(tiny_detector, make_scan) -> None:
    a = tiny_detector.score(make_scan(9, blob=True))
    b = tiny_detector.score(make_scan(9, blob=True))
    assert np.array_equal(a.anomaly_map, b.anomaly_map) and a.lesion_score == b.lesion_score


def test_prior_conditions_the_reconstruction(tiny_detector, make_scan) -> None:
    scan = make_scan(11)
    with_prior = scan.with_prior(make_scan(12))
    r0 = tiny_detector.score(scan)
    r1 = tiny_detector.score(with_prior)
    r2 = tiny_detector.score(with_prior, use_prior=False)
    assert not r0.used_prior and r1.used_prior and not r2.used_prior
    assert not np.array_equal(r0.reconstruction, r1.reconstruction)
    assert np.array_equal(r0.reconstruction, r2.reconstruction)
    _x, cond, covs = slice_inputs(with_prior, [2, 3])
    assert covs["prior"] == ["present", "present"] and cond.abs().sum() > 0
    _x, cond, covs = slice_inputs(scan, [2, 3])
    assert covs["prior"] == [None, None] and cond.abs().sum() == 0


def test_native_map_uses_the_inverse_transform(tiny_detector, make_brain) -> None:
    img, mask = make_brain(13, blob=True)
    shift = np.eye(4)
    shift[:3, 3] = [4.0, 0.0, 0.0]  # native = template moved by 4 mm (2 voxels) along x
    scan = Scan.from_arrays(img, mask)
    native = Scan(
        img, mask, scan.grid, native_to_template=np.linalg.inv(shift),
        native_affine=scan.grid.affine @ np.diag([1, 1, 1, 1.0]), native_shape=img.shape,
    )  # fmt: skip
    res = tiny_detector.score(native)
    nat = np.asarray(res.native_map.dataobj)
    # native point p maps to template point p - 4 mm: the native map is the template map moved +2
    assert np.allclose(nat[4:-2], res.anomaly_map[2:-4], atol=1e-5)


def test_save_and_load_round_trip(tiny_detector, make_scan, tmp_path) -> None:
    path = tiny_detector.save(tmp_path / "model")
    card = json.loads((path / "model_card.json").read_text())
    info = card["extra"]["anomaly"]
    assert info["format"] == "neurocast-anomaly" and info["calibration"]["fpr"] == 0.05
    assert not list(path.glob("*.pt")) and not list(path.glob("*.pkl"))
    det = AnomalyDetector.load(path)
    assert det.get_params() == tiny_detector.get_params() and det.grid_ == tiny_detector.grid_
    scan = make_scan(14, blob=True)
    a, b = tiny_detector.score(scan), det.score(scan)
    assert np.array_equal(a.anomaly_map, b.anomaly_map) and a.flag == b.flag
    assert info["calibration"]["noise_lines"]  # calibrated on scans: the features' noise lines
    assert det.calibration_.noise_lines == tiny_detector.calibration_.noise_lines
    assert a.artefact_score == b.artefact_score and a.feature_z == b.feature_z
    assert det.model_card_sha256_ == tiny_detector.model_card_sha256_


def test_a_calibration_under_an_earlier_artefact_score_rule_warns_on_load(
    tiny_detector, tmp_path
) -> None:
    """A threshold set on scores of another rule does not fit this version's scores."""
    import warnings

    from neurocast.anomaly.scores import ARTEFACT_SCORE_RULE, NOISE_ADJUSTED_SCORE_RULE

    path = tiny_detector.save(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        det = AnomalyDetector.load(path)  # calibrated now: silent
    # calibrated on scans: the features' noise lines, and the rule that reads them
    assert det.calibration_.extra["artefact_score_rule"] == NOISE_ADJUSTED_SCORE_RULE
    assert NOISE_ADJUSTED_SCORE_RULE.startswith(ARTEFACT_SCORE_RULE + ";")
    card_path = path / "model_card.json"
    card = json.loads(card_path.read_text())
    del card["extra"]["anomaly"]["calibration"]["extra"]["artefact_score_rule"]
    card_path.write_text(json.dumps(card))
    with pytest.warns(UserWarning, match="earlier artefact-score rule.*calibrate it again"):
        AnomalyDetector.load(path)
    # noise lines under the plain rule's name: a threshold this version's scores do not fit either
    card["extra"]["anomaly"]["calibration"]["extra"]["artefact_score_rule"] = ARTEFACT_SCORE_RULE
    card_path.write_text(json.dumps(card))
    with pytest.warns(UserWarning, match="calibrated under the artefact-score rule"):
        AnomalyDetector.load(path)


def test_bfloat16_reconstruction_is_close_to_float32(tiny_detector, make_scan) -> None:
    assert tiny_detector.inference_dtype == "bfloat16"  # the default
    scan = make_scan(15, blob=True)
    rec16, _ = tiny_detector.reconstruct(scan)
    tiny_detector.inference_dtype = "float32"
    try:
        rec32, _ = tiny_detector.reconstruct(scan)
    finally:
        tiny_detector.inference_dtype = "bfloat16"
    assert rec16.dtype == rec32.dtype == np.float32
    assert not np.array_equal(rec16, rec32)  # bfloat16 did run
    assert np.abs(rec16 - rec32).mean() < 0.01 * np.abs(rec32).mean() + 1e-3
    with pytest.raises(ValueError, match="inference_dtype"):
        AnomalyDetector(inference_dtype="float16")


def test_averaging_the_reconstructions_never_raises_the_residual(tiny_detector, make_scan) -> None:
    det = tiny_detector
    scan = make_scan(16, blob=True)
    rec1, res1 = det.reconstruct(scan)
    try:
        det.draws = 2
        rec2, res2 = det.reconstruct(scan)
        det.average = "reconstructions"
        rec2m, res2m = det.reconstruct(scan)
        det.draws = 1
        rec1m, res1m = det.reconstruct(scan)
    finally:
        det.draws, det.average = 1, "residuals"
    # the first draw keeps its noise: one draw reconstructs as before draws existed
    assert np.array_equal(rec1, rec1m) and np.array_equal(rec1, det.reconstruct(scan)[0])
    assert not np.array_equal(rec1, rec2)  # a second draw brings new noise
    assert np.array_equal(rec2, rec2m)  # averaging changes the residual, not the reconstruction
    # |x - mean(x_hat)| <= mean |x - x_hat| voxel by voxel, and strictly less somewhere
    assert np.all(res2m <= res2 + 1e-6) and res2m.sum() < res2.sum()
    assert np.all(res1m <= res1 + 1e-6)
    with pytest.raises(ValueError, match="draws"):
        AnomalyDetector(draws=0)
    with pytest.raises(ValueError, match="average"):
        AnomalyDetector(average="median")


def test_fine_tuning_starts_from_the_given_weights(tiny_detector, make_scan) -> None:
    kw = dict(channels=tiny_detector.channels, noise_levels=tiny_detector.noise_levels,
              batch_size=4, min_component_mm3=tiny_detector.min_component_mm3)  # fmt: skip
    tuned = AnomalyDetector(n_steps=1, lr=1e-12, **kw).fit([make_scan(0)], init=tiny_detector)
    fresh = AnomalyDetector(n_steps=1, lr=1e-12, **kw).fit([make_scan(0)])
    a, b, c = (d.model_.state_dict() for d in (tuned, tiny_detector, fresh))
    key = next(k for k in a if a[k].is_floating_point() and a[k].numel() > 100)
    # a vanishing learning rate: the tuned weights are the initial ones, not a fresh network's
    assert (a[key] - b[key]).abs().max() < 1e-6 < (a[key] - c[key]).abs().max()
    assert tuned.training_["init"]["steps"] == tiny_detector.training_["steps"]
    with pytest.raises(ValueError, match="configuration differs"):
        AnomalyDetector(channels=(8, 8), n_steps=1, batch_size=4).fit([make_scan(0)], init=tiny_detector)


def test_training_precision_is_a_parameter_kept_in_the_model_card(
    tiny_detector, make_scan, tmp_path
) -> None:
    kw = dict(channels=tiny_detector.channels, noise_levels=tiny_detector.noise_levels,
              batch_size=4, min_component_mm3=tiny_detector.min_component_mm3)  # fmt: skip
    det = AnomalyDetector(n_steps=2, mixed_precision="bf16", **kw).fit([make_scan(0)], init=tiny_detector)
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in det.model_.parameters())
    det.calibration_ = tiny_detector.calibration_
    det.normative_ = tiny_detector.normative_
    det.save(tmp_path / "m")
    assert AnomalyDetector.load(tmp_path / "m").mixed_precision == "bf16"
    assert tiny_detector.get_params()["mixed_precision"] == "auto"  # the default
    with pytest.raises(ValueError, match="mixed_precision"):
        AnomalyDetector(mixed_precision="float16")


def test_load_refuses_a_plain_backbone(tmp_path) -> None:
    from neurocast.backbone import BackboneConfig, build_backbone, save_checkpoint

    net = build_backbone(BackboneConfig(spatial_dims=2, channels=(8, 16)))
    save_checkpoint(tmp_path / "plain", net)
    with pytest.raises(CheckpointError, match="not a neurocast anomaly detector"):
        AnomalyDetector.load(tmp_path / "plain")


def test_estimator_contract(make_scan) -> None:
    det = AnomalyDetector(channels=(8, 16), n_steps=1, batch_size=4, noise_levels=(0.2,))
    with pytest.raises(RuntimeError, match="not fitted"):
        det.reconstruct(make_scan(0))
    assert det.fit([make_scan(0)]) is det
    assert hasattr(det, "model_") and hasattr(det, "grid_") and det.calibration_ is None
    with pytest.raises(RuntimeError, match="not calibrated"):
        det.score(make_scan(1))
    with pytest.raises(ValueError, match="noise levels"):
        AnomalyDetector(noise_levels=(1.5,))
    with pytest.raises(ValueError, match="lr must be a positive number"):
        AnomalyDetector(lr=0.0)
    with pytest.raises(ValueError, match="norm_num_groups"):
        AnomalyDetector(channels=(12, 24))
    other = Scan.from_arrays(np.zeros((8, 8, 4), np.float32), np.zeros((8, 8, 4), bool))
    with pytest.raises(ValueError, match="grid"):
        det.reconstruct(other)


def test_slice_dataset_drops_priors_deterministically(make_scan) -> None:
    scans = [make_scan(0).with_prior(make_scan(1)), make_scan(2)]
    ds = SliceDataset(scans, prior_drop_prob=0.5, seed=3)
    again = SliceDataset(scans, prior_drop_prob=0.5, seed=3)
    assert ds.items == again.items
    n_slices = len(ds.items) - sum(1 for i, _, p in ds.items if i == 0 and not p)
    assert 0 < ds.n_with_prior < len(ds) and n_slices > 0
    item = ds[0]
    assert item["target"].shape == item["condition"].shape == (1, 16, 16)
    assert item["covariates"]["prior"] == "present"
    assert all(not p for i, _, p in ds.items if i == 1)  # no prior, never one


def test_calibration_standardises_the_map_and_the_model_folder_keeps_the_references(
    tiny_detector, make_scan, tmp_path
) -> None:
    from neurocast.anomaly.normative import RULE
    from neurocast.anomaly.scores import artefact_features

    det = tiny_detector
    assert det.normative_ is not None and det.calibration_.extra["map"] == RULE
    scan = make_scan(15, blob=True)
    rmap, _, _ = det.residual_map(scan)
    res = det.score(scan)
    assert res.level_scale >= 1.0  # the residual is divided by it (level_scaling) before standardising
    assert np.array_equal(res.anomaly_map, det.normative_.transform(rmap / np.float32(res.level_scale), det.region(scan)))
    # the artefact features read the residual map, not the standardised one
    feats = artefact_features(rmap, det.region(scan), scan.iqms)
    assert res.features.keys() == feats.keys()
    assert np.allclose(list(res.features.values()), list(feats.values()), equal_nan=True)
    path = det.save(tmp_path / "model")
    card = json.loads((path / "model_card.json").read_text())
    assert "extra.safetensors" in card["files"] and card["extra"]["anomaly"]["normative"]["rule"] == RULE
    again = AnomalyDetector.load(path)
    assert np.array_equal(again.normative_.sd_, det.normative_.sd_)
    (path / "extra.safetensors").unlink()
    with pytest.raises(CheckpointError, match="extra.safetensors: missing"):
        AnomalyDetector.load(path)
    card["files"].pop("extra.safetensors")
    (path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="reference maps .* are missing"):
        AnomalyDetector.load(path)


def test_without_normative_maps_the_map_is_the_residual(
    tiny_detector, make_scan, blob_centre, tmp_path
) -> None:
    det = AnomalyDetector.load(tiny_detector.save(tmp_path / "model"))
    det.normative = False
    det.calibrate([make_scan(100 + i) for i in range(6)])
    assert det.normative_ is None and det.calibration_.extra["map"] == "residual"
    scan = make_scan(16, blob=True)
    res = det.score(scan)
    assert np.array_equal(res.anomaly_map, det.residual_map(scan)[0] / np.float32(res.level_scale))
    assert res.flag == "review-lesion" and res.mask[blob_centre]
    again = AnomalyDetector.load(det.save(tmp_path / "raw"))
    assert again.normative_ is None and not (tmp_path / "raw" / "extra.safetensors").exists()
    assert np.array_equal(again.score(scan).anomaly_map, res.anomaly_map)


def test_calibrating_on_too_few_references_says_so(tiny_detector, make_scan, tmp_path, caplog) -> None:
    """Six references cannot give 5 % false positives: the detector says what they give."""
    import logging

    det = AnomalyDetector.load(tiny_detector.save(tmp_path / "model"))
    with caplog.at_level(logging.WARNING, logger="neurocast.anomaly.model"):
        det.calibrate([make_scan(100 + i) for i in range(6)])
    assert det.calibration_.at_reference_maximum
    assert any("fewer than the 39" in r.getMessage() and "1/7" in r.getMessage() for r in caplog.records)


def test_calibration_from_residual_maps_matches_calibration_from_scans(
    tiny_detector, make_scan, tmp_path
) -> None:
    """The benchmarks calibrate the same weights on many reference sets from cached residual maps:
    that must be the calibration of the scans, and a scan's verdict from its residual map its score."""
    det = AnomalyDetector.load(tiny_detector.save(tmp_path / "model"))
    refs = [make_scan(100 + i) for i in range(6)]
    rmaps = [det.residual_map(s)[0] for s in refs]
    regions = [det.region(s) for s in refs]
    iqms = [s.iqms for s in refs]
    noise = [image_noise_sd(s.image, r) for s, r in zip(refs, regions, strict=True)]
    cal = det.calibrate(refs).calibration_
    again = det.calibrate_residuals(
        rmaps, regions, iqms, references=cal.extra["references"], noise_sds=noise
    ).calibration_
    assert again.to_dict() == cal.to_dict()
    scan = make_scan(21, blob=True)
    res = det.score(scan)
    rmap, region = det.residual_map(scan)[0], det.region(scan)
    judged = det.judge_residual(rmap, region, scan.iqms, noise_sd=image_noise_sd(scan.image, region))
    assert judged.feature_z == res.feature_z and judged.noise_sd == res.noise_sd
    with pytest.raises(ValueError, match="give the scan's image noise SD"):
        det.judge_residual(rmap, region, scan.iqms)
    assert (judged.flag, judged.lesion_score, judged.artefact_score) == (res.flag, res.lesion_score, res.artefact_score)
    assert np.array_equal(judged.anomaly_map, res.anomaly_map)
    # by subject: three subjects of two visits each, each scored against the other two
    by_subject = det.calibrate_residuals(rmaps, regions, iqms, groups=[1, 1, 2, 2, 3, 3]).calibration_
    assert by_subject.extra["left_out"] == "group" and cal.extra["left_out"] == "scan"
    assert by_subject.artefact_reference != cal.artefact_reference
    assert by_subject.voxel_threshold != cal.voxel_threshold
    with pytest.raises(ValueError, match="one group per reference"):
        det.calibrate_residuals(rmaps, regions, iqms, groups=[1, 2])
    with pytest.raises(ValueError, match="at least two groups"):
        det.calibrate_residuals(rmaps, regions, iqms, groups=[1] * 6)


def test_the_mask_is_the_lesion_clusters_grown_at_the_calibrated_lower_threshold_then_dilated(
    tiny_detector, make_scan, blob_centre, tmp_path
) -> None:
    from neurocast.anomaly.maps import dilated_mask, grown_mask, threshold_map

    det = tiny_detector
    cal = det.calibration_
    assert cal.grow_quantile == det.grow_quantile == 0.99
    assert cal.grow_threshold < cal.voxel_threshold
    assert det.mask_dilation_mm == 2.0  # the default: one voxel of the 2 mm grid
    scan = make_scan(22, blob=True)
    res = det.score(scan)
    core = threshold_map(res.anomaly_map, cal.voxel_threshold, det._min_voxels())
    grown = grown_mask(res.anomaly_map, cal.voxel_threshold, cal.grow_threshold, det._min_voxels())
    assert res.mask[blob_centre] and (res.mask >= grown).all() and (grown >= core).all()
    assert res.mask.sum() > grown.sum()  # the dilation added the grown clusters' rim
    assert np.array_equal(res.mask, dilated_mask(grown, 2.0, (2.0, 2.0, 2.0), scan.brain_mask))
    assert not (res.mask & ~scan.brain_mask).any()
    # the lesion evidence reads the clusters, not the dilated mask
    det.mask_dilation_mm = 0.0
    undilated = det.score(scan)
    det.mask_dilation_mm = 2.0
    assert np.array_equal(undilated.mask, grown) and undilated.lesion_score == res.lesion_score
    # a model card from before mask growth and dilation: neither until it is calibrated again
    path = det.save(tmp_path / "model")
    card = json.loads((path / "model_card.json").read_text())
    for key in ("grow_quantile", "mask_dilation_mm"):
        del card["extra"]["anomaly"]["params"][key]
    for key in ("grow_threshold", "grow_quantile"):
        del card["extra"]["anomaly"]["calibration"][key]
    (path / "model_card.json").write_text(json.dumps(card))
    old = AnomalyDetector.load(path)
    assert old.grow_quantile is None and old.mask_dilation_mm == 0.0
    assert np.array_equal(old.score(make_scan(22, blob=True)).mask, core)
    with pytest.raises(ValueError, match="grow_quantile"):
        AnomalyDetector(grow_quantile=0.9995)
    with pytest.raises(ValueError, match="mask_dilation_mm"):
        AnomalyDetector(mask_dilation_mm=-1.0)


def test_level_scaling_leaves_a_scan_wide_raise_to_the_artefact_score(
    tiny_detector, make_scan, blob_centre, tmp_path
) -> None:
    """A residual raised everywhere beyond the references (another scanner) is not lesion
    evidence; a local blob still is, though in these tiny volumes it is a large share of the brain
    and raises the scan's level too."""
    from neurocast.anomaly.scores import level_scale

    det = AnomalyDetector.load(tiny_detector.save(tmp_path / "model"))
    det.level_scaling = True
    refs = [make_scan(100 + i) for i in range(6)]
    rmaps = [det.residual_map(s)[0] for s in refs]
    regions = [det.region(s) for s in refs]
    cal = det.calibrate_residuals(rmaps, regions, [s.iqms for s in refs]).calibration_
    levels = [float(np.median(m[r])) for m, r in zip(rmaps, regions, strict=True)]
    assert cal.residual_level == pytest.approx(max(levels))

    scan = make_scan(31)
    rmap, region = det.residual_map(scan)[0], det.region(scan)
    plain = det.judge_residual(rmap, region)
    raised = det.judge_residual(rmap * 3.0, region)
    assert raised.level_scale == pytest.approx(level_scale(3.0 * float(np.median(rmap[region])), cal.residual_level))
    assert raised.level_scale > 1.5 and plain.level_scale < 1.2
    assert raised.lesion_score <= plain.lesion_score + 1e-6  # the raise adds no lesion evidence
    assert raised.artefact_score > plain.artefact_score  # it is the artefact score's to see
    det.level_scaling = False
    assert det.judge_residual(rmap * 3.0, region).lesion_score > raised.lesion_score
    det.level_scaling = True

    blob = make_scan(32, blob=True)
    res = det.judge_residual(det.residual_map(blob)[0], det.region(blob))
    assert res.flag == "review-lesion" and res.level_scale < raised.level_scale
    assert det.mask_of(res.anomaly_map)[blob_centre]

    again = AnomalyDetector.load(det.save(tmp_path / "scaled"))
    assert again.level_scaling and again.calibration_.residual_level == cal.residual_level
    assert again.judge_residual(rmap * 3.0, region).lesion_score == raised.lesion_score
    # a model card from before the scaling: none until it is calibrated again
    card = json.loads((tmp_path / "scaled" / "model_card.json").read_text())
    del card["extra"]["anomaly"]["params"]["level_scaling"]
    del card["extra"]["anomaly"]["calibration"]["residual_level"]
    (tmp_path / "scaled" / "model_card.json").write_text(json.dumps(card))
    old = AnomalyDetector.load(tmp_path / "scaled")
    assert not old.level_scaling and old.calibration_.residual_level is None
    assert old.judge_residual(rmap * 3.0, region).level_scale == 1.0
    assert AnomalyDetector().level_scaling  # on by default
    assert level_scale(float("nan"), 0.1) == level_scale(0.2, 0.0) == 1.0


def test_a_spot_too_small_for_a_cluster_is_lesion_evidence_by_its_peak(tiny_detector, make_scan, tmp_path) -> None:
    """The lesion score is the larger of the largest cluster's mass and the map's peak, each over
    its threshold among the references; a calibration from before the peak keeps the mass."""
    from neurocast.anomaly.calibration import per_score_rate, threshold_at_rate
    from neurocast.anomaly.scores import combined_lesion_score, lesion_evidence

    det = AnomalyDetector.load(tiny_detector.save(tmp_path / "model"))
    det.level_scaling = False  # the references' maps are then the leave-one-out standardised ones
    refs = [make_scan(100 + i) for i in range(6)]
    rmaps = [det.residual_map(s)[0] for s in refs]
    regions = [det.region(s) for s in refs]
    cal = det.calibrate_residuals(rmaps, regions, [s.iqms for s in refs]).calibration_
    assert set(cal.lesion_scales) == {"mass", "peak"} and cal.extra["lesion_score_rule"]
    rate = per_score_rate(det.fpr, 2)
    peaks = [float(m[r].max()) for m, r in zip(det.normative_.leave_one_out(rmaps, regions), regions, strict=True)]
    assert cal.lesion_scales["peak"] == pytest.approx(threshold_at_rate(peaks, rate))

    scan = make_scan(33)
    rmap, region = det.residual_map(scan)[0], det.region(scan)
    plain = det.judge_residual(rmap, region)
    assert plain.flag == "pass"
    assert plain.lesion_score == pytest.approx(combined_lesion_score(plain.lesion_evidence, cal.lesion_scales))
    spot = rmap.copy()
    i, j, k = np.argwhere(region)[len(np.argwhere(region)) // 2]
    spot[i, j, k] += 50.0 * float(rmap[region].max())  # one voxel: no cluster of min_component_mm3
    judged = det.judge_residual(spot, region)
    assert judged.lesion_evidence["mass"] == pytest.approx(plain.lesion_evidence["mass"])
    assert judged.lesion_evidence["peak"] > cal.lesion_scales["peak"]
    assert judged.flag == "review-lesion" and judged.lesion_score > cal.lesion_threshold
    ev, _ = lesion_evidence(judged.anomaly_map, region, cal.voxel_threshold, min_voxels=det._min_voxels(),
                            voxel_volume_mm3=det.grid_.voxel_volume_mm3)  # fmt: skip
    assert ev == judged.lesion_evidence

    # a model card from before the peak was read: the mass alone, until calibrated again
    det.save(tmp_path / "peak")
    card = json.loads((tmp_path / "peak" / "model_card.json").read_text())
    del card["extra"]["anomaly"]["calibration"]["lesion_scales"]
    (tmp_path / "peak" / "model_card.json").write_text(json.dumps(card))
    old = AnomalyDetector.load(tmp_path / "peak")
    assert old.calibration_.lesion_scales is None
    assert old.judge_residual(spot, region).lesion_score == pytest.approx(judged.lesion_evidence["mass"])


def test_scattered_evidence_over_both_thresholds_is_flagged_as_an_artefact(
    tiny_detector, make_scan, tmp_path
) -> None:
    """Strong motion scatters its excess over many clusters and raises the diffuse residual too; a
    tumour leaves one cluster. When both scores are over their thresholds, the largest cluster's
    share of the supra-threshold mass names the flag."""
    from neurocast.anomaly.calibration import COMPACT_SHARE
    from neurocast.anomaly.scores import largest_cluster_share

    det = AnomalyDetector.load(tiny_detector.save(tmp_path / "model"))
    refs = [make_scan(100 + i) for i in range(6)]
    rmaps = [det.residual_map(s)[0] for s in refs]
    regions = [det.region(s) for s in refs]
    cal = det.calibrate_residuals(rmaps, regions, [s.iqms for s in refs]).calibration_

    scan = make_scan(31)
    rmap, region = det.residual_map(scan)[0], det.region(scan)
    high = 20.0 * float(rmap[region].max())
    scattered, compact = rmap.copy(), rmap.copy()
    for n, (x, y) in enumerate((x, y) for x in (3, 6, 9, 12) for y in (3, 6, 9, 12)):
        z = 2 + 2 * (n % 2)
        scattered[x, y, z : z + 2] += high  # 16 spots of two voxels, two voxels apart
    compact[6:9, 6:9, 3:5] += high  # one block of 18 voxels
    judged = {name: det.judge_residual(m, region) for name, m in (("scattered", scattered), ("compact", compact))}
    for j in judged.values():
        assert cal.over_thresholds(j.lesion_score, j.artefact_score) == ("lesion", "artefact")
        assert j.largest_share == pytest.approx(largest_cluster_share(j.components))
    assert len(judged["scattered"].components) > 1 and judged["scattered"].largest_share < COMPACT_SHARE
    assert judged["scattered"].flag == "review-artefact"
    # the larger excess alone would have called it a lesion: its clusters are far above threshold
    assert cal.flag(judged["scattered"].lesion_score, judged["scattered"].artefact_score) == "review-lesion"
    assert judged["compact"].largest_share >= COMPACT_SHARE and judged["compact"].flag == "review-lesion"


def test_references_with_the_spike_metric_calibrate_the_spike_check(tiny_detector, make_scan, tmp_path) -> None:
    """References whose IQMs hold spike_z give the calibration the spike's threshold; a scan with
    a spike far above the references is flagged for its artefact, its artefact score unchanged."""
    from neurocast.anomaly.iqm import IQMResult

    det = AnomalyDetector.load(tiny_detector.save(tmp_path / "model"))
    refs = [make_scan(200 + i) for i in range(8)]
    rmaps = [det.residual_map(s)[0] for s in refs]
    regions = [det.region(s) for s in refs]
    noise = [image_noise_sd(s.image, r) for s, r in zip(refs, regions, strict=True)]

    def with_spike(q: IQMResult | None, value: float) -> IQMResult:
        return IQMResult({**(dict(q.values) if q is not None else {}), "spike_z": value})

    plain_cal = det.calibrate_residuals(rmaps, regions, [s.iqms for s in refs], noise_sds=noise).calibration_
    iqms = [with_spike(s.iqms, 3.4 + 0.1 * (i % 4)) for i, s in enumerate(refs)]
    cal = det.calibrate_residuals(rmaps, regions, iqms, noise_sds=noise).calibration_
    assert plain_cal.spike_threshold is None and cal.spike_threshold is not None
    assert "spike_z" in cal.feature_reference and cal.artefact_reference == plain_cal.artefact_reference
    again = AnomalyDetector.load(det.save(tmp_path / "spike-model")).calibration_
    assert again.to_dict() == cal.to_dict()
    scan = make_scan(31)
    rmap, region = det.residual_map(scan)[0], det.region(scan)
    sd = image_noise_sd(scan.image, region)
    plain = det.judge_residual(rmap, region, with_spike(scan.iqms, 3.5), noise_sd=sd)
    spiked = det.judge_residual(rmap, region, with_spike(scan.iqms, 9.0), noise_sd=sd)
    assert spiked.artefact_score == plain.artefact_score  # the spike is not in the mean
    assert spiked.feature_z["spike_z"] > cal.spike_threshold > plain.feature_z["spike_z"]
    assert spiked.flag == "review-artefact"
