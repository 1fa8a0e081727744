"""The progression model and the forecast API on a tiny model and tiny volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurocast.errors import CheckpointError
from neurocast.progress.calibration import calibrate_spread, coverage, spread_for_coverage
from neurocast.progress.cohort import gather_forecasts
from neurocast.progress.fieldgrid import field_shape, image_to_field_grid, restrict_velocity
from neurocast.progress.forecast import ForecastSubject, forecast
from neurocast.progress.model import ProgressionModel, inflate
from neurocast.progress.visits import LongitudinalSubject, Visit, prepare_subject, training_pairs
from neurocast.registration.deformation import volume_change_map

SHAPE = (17, 19, 17)
VEL_SHAPE = (9, 10, 9)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    img = np.exp(-(x**2 + y**2 + z**2) * 2) + 0.05 * rng.standard_normal(SHAPE)
    return np.clip(img, 0, None).astype(np.float32)


def _pattern() -> torch.Tensor:
    """A smooth contraction towards the centre (voxels of the 4 mm grid per year)."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in VEL_SHAPE], indexing="ij")
    return torch.stack(grids)[None] * 0.05


def _subject(i: int, dx: str = "AD") -> LongitudinalSubject:
    times = [0.0, 1.0, 2.5]
    visits = [
        Visit(f"ses-{k}", t, _image(10 * i + k), None if t == 0 else _pattern() * t * (1 + 0.2 * i),
              {"age": 70.0 + t, "diagnosis": dx, "mmse": 25.0})
        for k, t in enumerate(times)
    ]  # fmt: skip
    return LongitudinalSubject(f"sub-{i:02d}", visits, {"sex": "F" if i % 2 else "M", "apoe4": i % 3})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> ProgressionModel:
    torch.set_num_threads(1)
    m = ProgressionModel(channels=(8, 16), num_inference_steps=2, seed=0)
    subjects = [_subject(i, dx) for i, dx in enumerate(["CN", "MCI", "AD"])]
    return m.fit(subjects, n_steps=3, batch_size=4, progress=False)


def _forecast_subject(**kw) -> ForecastSubject:
    img = nib.Nifti1Image(_image(99), AFFINE)
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[6:11, 7:12, 6:11] = 1
    labels[2:5, 2:5, 2:5] = 2
    regions = pd.DataFrame({"index": [1, 2], "name": ["Core", "Corner"], "abbreviation": ["C", "K"],
                            "hemisphere": ["midline", "midline"], "source_labels": ["1", "2"]})  # fmt: skip
    cov = {"age": 72.0, "sex": "F", "diagnosis": "MCI", "apoe4": 1, "mmse": 26.0}
    return ForecastSubject(img, cov, "sub-99", "ses-bl", labels=nib.Nifti1Image(labels, AFFINE), regions=regions, **kw)


def test_field_shape_covers_same_box() -> None:
    assert field_shape((79, 97, 84), 2.0, 8.0) == (21, 25, 22)
    assert field_shape((40, 49, 43), 4.0, 8.0) == (21, 25, 22)
    with pytest.raises(ValueError, match="finer"):
        field_shape((10, 10, 10), 4.0, 2.0)


def test_image_to_field_grid_keeps_a_constant() -> None:
    out = image_to_field_grid(np.full(SHAPE, 3.0, np.float32), (5, 6, 5))
    assert out.shape == (1, 5, 6, 5)
    assert torch.allclose(out, torch.full_like(out, 3.0))


def test_restriction_matches_regional_change_better_than_interpolation() -> None:
    from neurocast.registration.deformation import resize_field

    v = torch.zeros(1, 3, 17, 17, 17)
    v[0, 0, 6:11, 6:11, 6:11] = 0.3  # a sharp local flow: interpolation smears its divergence
    v[0, 0, 6:11, 6:11, 6:11] *= torch.linspace(-1, 1, 5).view(5, 1, 1)
    target = volume_change_map(v)
    region = (slice(5, 12),) * 3
    true = float(target[0, 0][region].mean())
    coarse = (9, 9, 9)
    fitted = float(volume_change_map(restrict_velocity(v, coarse, n_iter=80), shape=v.shape[2:])[0, 0][region].mean())
    naive = float(volume_change_map(resize_field(v, coarse), shape=v.shape[2:])[0, 0][region].mean())
    assert abs(fitted - true) < abs(naive - true)


def test_pairs_annualise_targets_and_mark_history() -> None:
    p = prepare_subject(_subject(0), (5, 6, 5), restrict_iterations=5)
    items = training_pairs([p], scale=1.0)
    # 3 visits: pairs (0,1), (0,2), (1,2) + (1,2) again with history
    assert len(items) == 4
    with_hist = [it for it in items if it["covariates"]["history_years"] is not None]
    assert len(with_hist) == 1 and with_hist[0]["covariates"]["history_years"] == pytest.approx(1.0)
    assert float(with_hist[0]["condition"][1:].abs().sum()) > 0
    no_hist = [it for it in items if it["covariates"]["history_years"] is None]
    assert all(float(it["condition"][1:].abs().sum()) == 0 for it in no_hist)
    # a stationary progression has the same annual rate for every pair
    rates = torch.stack([it["target"] for it in items])
    assert torch.allclose(rates[0], rates[1], atol=1e-4)


def test_fit_sets_fitted_attributes(tiny_model: ProgressionModel) -> None:
    m = tiny_model
    assert m.field_shape_ == (5, 6, 5)
    assert m.training_summary_["n_subjects"] == 3
    assert len(m.training_summary_["sha256"]) == 64
    names = [c.name for c in m.config_.covariates]
    assert {"age", "sex", "diagnosis", "apoe4", "mmse", "years", "history_years"} <= set(names)


def test_zero_horizon_returns_the_scan(tiny_model: ProgressionModel) -> None:
    subj = _forecast_subject()
    fc = forecast(subj, [0.0, 2.0], n_samples=3, seed=0, model=tiny_model)
    img = np.asarray(subj.image.dataobj)
    assert np.array_equal(fc.images["t1w_mean"].sel(horizon=0.0).values, img)
    assert float(abs(fc.images["jacobian_mean"].sel(horizon=0.0) - 1).max()) == 0.0
    vol0 = fc.volumes["volume"].sel(horizon=0.0)
    assert np.allclose(vol0.values, fc.volumes["baseline_volume"].values[:, None])
    assert fc.volumes["volume"].dims == ("horizon", "region", "sample")
    assert fc.images["t1w_mean"].dims == ("horizon", "x", "y", "z")
    assert float(fc.folding.max()) == 0.0


def test_forecast_is_deterministic_under_a_seed(tiny_model: ProgressionModel) -> None:
    a = forecast(_forecast_subject(), [1.0, 3.0], 2, seed=5, model=tiny_model)
    b = forecast(_forecast_subject(), [1.0, 3.0], 2, seed=5, model=tiny_model)
    c = forecast(_forecast_subject(), [1.0, 3.0], 2, seed=6, model=tiny_model)
    assert np.array_equal(a.volumes["volume"].values, b.volumes["volume"].values)
    assert np.array_equal(a.images["t1w_mean"].values, b.images["t1w_mean"].values)
    assert not np.array_equal(a.volumes["volume"].values, c.volumes["volume"].values)


def test_many_samples_are_warped_in_chunks_with_the_same_result(tiny_model: ProgressionModel) -> None:
    subj = _forecast_subject()
    whole = forecast(subj, [0, 1.5], 6, 2, model=tiny_model, sample_chunk=64)
    chunked = forecast(subj, [0, 1.5], 6, 2, model=tiny_model, sample_chunk=4)
    for name in ("t1w_mean", "t1w_sd", "jacobian_mean", "jacobian_sd"):
        np.testing.assert_allclose(chunked.images[name].values, whole.images[name].values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(chunked.volumes["volume"].values, whole.volumes["volume"].values, rtol=1e-6)
    assert chunked.folding.shape == (2, 6)
    # the per-voxel SD matches numpy's on the individually warped samples
    from neurocast.registration.deformation import integrate_velocity, resize_field, warp

    v = whole.annual_velocity[1] * 1.5
    img = torch.from_numpy(np.asarray(subj.image.dataobj, np.float32))[None, None]
    w = warp(img.expand(6, -1, -1, -1, -1), resize_field(integrate_velocity(v), SHAPE))[:, 0].numpy()
    np.testing.assert_allclose(whole.images["t1w_sd"].sel(horizon=1.5).values, w.std(0, ddof=1), rtol=1e-3, atol=1e-5)


def test_scenarios_and_missing_covariates(tiny_model: ProgressionModel) -> None:
    cn = forecast(_forecast_subject(), [2.0], 2, 0, {"diagnosis": "CN"}, model=tiny_model)
    ad = forecast(_forecast_subject(), [2.0], 2, 0, {"diagnosis": "AD"}, model=tiny_model)
    assert cn.volumes.attrs["diagnosis"] == "CN" and ad.volumes.attrs["diagnosis"] == "AD"
    assert not np.array_equal(cn.annual_velocity.numpy(), ad.annual_velocity.numpy())
    unknown = forecast(_forecast_subject(), [2.0], 2, 0, {"apoe4": None, "mmse": None}, model=tiny_model)
    assert "apoe4" not in unknown.volumes.attrs
    assert np.isfinite(unknown.volumes["volume"].values).all()


def test_history_changes_the_condition(tiny_model: ProgressionModel) -> None:
    plain = forecast(_forecast_subject(), [1.0], 2, 0, model=tiny_model)
    hist = forecast(_forecast_subject(history_velocity=_pattern(), history_years=1.0), [1.0], 2, 0, model=tiny_model)
    assert not np.array_equal(plain.annual_velocity.numpy(), hist.annual_velocity.numpy())


def test_outputs_feed_the_cohort_and_the_schema(tiny_model: ProgressionModel) -> None:
    from neurocast.registration.volumes import validate_table

    fc = forecast(_forecast_subject(), [1.0, 2.0], 3, 0, model=tiny_model)
    cohort = gather_forecasts([fc.volumes])
    assert dict(cohort.sizes) == {"subject": 1, "horizon": 2, "region": 2, "sample": 3}
    table = fc.table()
    validate_table(table, "forecast_volumes")
    assert set(table.region) == {"Core", "Corner"}
    q = fc.quantiles()
    assert q.dims == ("horizon", "region", "quantile")
    assert fc.nifti("t1w_sd").shape == (*SHAPE, 2)


def test_bad_requests_are_refused(tiny_model: ProgressionModel) -> None:
    with pytest.raises(ValueError, match="horizons"):
        forecast(_forecast_subject(), [-1.0], 2, 0, model=tiny_model)
    with pytest.raises(ValueError, match="n_samples"):
        forecast(_forecast_subject(), [1.0], 0, 0, model=tiny_model)
    with pytest.raises(RuntimeError, match="not fitted"):
        ProgressionModel().sample_annual_velocity(torch.zeros(1, 4, 5, 6, 5), [{}])
    with pytest.raises(ValueError, match="norm_num_groups"):
        ProgressionModel(channels=(12,))


def test_save_load_round_trip_gives_identical_forecasts(tiny_model: ProgressionModel, tmp_path) -> None:
    tiny_model.save(tmp_path / "m", note="test")
    loaded = ProgressionModel.load(tmp_path / "m")
    a = forecast(_forecast_subject(), [1.5], 2, 3, model=tiny_model)
    b = forecast(_forecast_subject(), [1.5], 2, 3, model=loaded)
    assert np.array_equal(a.volumes["volume"].values, b.volumes["volume"].values)
    assert loaded.card()["extra"]["note"] == "test"


def test_load_refuses_tampered_or_foreign_checkpoints(tiny_model: ProgressionModel, tmp_path) -> None:
    from neurocast.backbone import BackboneConfig, build_backbone, save_checkpoint

    path = tiny_model.save(tmp_path / "m")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        ProgressionModel.load(path)
    other = save_checkpoint(tmp_path / "other", build_backbone(BackboneConfig(spatial_dims=2, channels=(8, 16))))
    with pytest.raises(CheckpointError, match="not a neurocast progression model"):
        ProgressionModel.load(other)
    with pytest.raises(CheckpointError, match="no progression model"):
        forecast(_forecast_subject(), [1.0], 1, 0, model=tmp_path / "missing")


def test_fit_on_two_visit_subjects_without_history() -> None:
    subjects = []
    for i in range(2):
        s = _subject(i)
        s.visits = s.visits[:2]
        subjects.append(s)
    m = ProgressionModel(channels=(8, 16), num_inference_steps=1).fit(subjects, n_steps=1, batch_size=2, progress=False)
    assert "history_years" in [c.name for c in m.config_.covariates]


def test_registration_outputs_become_subjects(tmp_path) -> None:
    from nc_testutils import make_bids
    from neurocast.io.bids import discover
    from neurocast.progress.visits import session_covariates, subjects_from_registration

    bids = make_bids(tmp_path / "bids", {"01": ["bl", "m18"], "02": ["bl"]})
    reg = tmp_path / "reg"
    space = "space-MNI152NLin2009aSym"
    for ses in ("bl", "m18"):
        folder = reg / "sub-01" / f"ses-{ses}" / "anat"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(_image(1), AFFINE), folder / f"sub-01_ses-{ses}_{space}_res-2_desc-longitudinal_T1w.nii.gz")
    vel = np.moveaxis(_pattern()[0].numpy() * 1.5, 0, -1)
    nib.save(nib.Nifti1Image(vel, np.diag([4.0, 4.0, 4.0, 1.0])),
             reg / "sub-01" / "ses-m18" / "anat" / f"sub-01_ses-m18_from-sesbl_{space}_res-4_desc-velocity_xfm.nii.gz")  # fmt: skip
    subjects = list(subjects_from_registration(bids, reg))
    assert [s.participant_id for s in subjects] == ["sub-01"]  # sub-02 has no registered follow-up
    s = subjects[0]
    assert [v.session_id for v in s.visits] == ["ses-bl", "ses-m18"]
    assert s.visits[1].time_years == pytest.approx(1.5) and s.spacing_mm == pytest.approx(2.0)
    assert s.visits[1].velocity.shape == (1, 3, *VEL_SHAPE) and s.visits[0].velocity is None
    assert s.visits[1].covariates["age"] == pytest.approx(71.5) and s.covariates == {"sex": "M", "apoe4": 0}
    p = discover(bids).participants[0]
    cov = session_covariates(p, p.sessions[1])
    assert cov == {"age": 71.5, "diagnosis": "CN", "mmse": 28, "sex": "M", "apoe4": 0}


# ------------------------------------------------------------------ spread calibration
def test_spread_for_coverage_recovers_the_missing_width() -> None:
    rng = np.random.default_rng(1)
    samples = rng.normal(0.0, 0.5, size=(2000, 32))  # twice too narrow
    truth = rng.normal(0.0, 1.0, size=2000)
    assert coverage(samples, truth, 0.8) < 0.55
    s = spread_for_coverage(samples, truth, 0.8)
    assert 1.8 < s < 2.3
    m = samples.mean(1, keepdims=True)
    assert coverage(m + s * (samples - m), truth, 0.8) == pytest.approx(0.8, abs=0.01)


def test_spread_for_coverage_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="n_cases"):
        spread_for_coverage(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="level"):
        spread_for_coverage(np.zeros((3, 4)), np.zeros(3), level=1.0)


def test_inflate_keeps_the_mean_and_scales_deviations() -> None:
    x = torch.randn(2, 5, 3, 4)
    y = inflate(x, 3.0, dim=1)
    assert torch.allclose(y.mean(1), x.mean(1), atol=1e-6)
    assert torch.allclose(y - y.mean(1, keepdim=True), 3 * (x - x.mean(1, keepdim=True)), atol=1e-5)
    assert inflate(x[:, :1], 3.0) is not None and torch.equal(inflate(x[:, :1], 3.0), x[:, :1])


def test_model_spread_widens_samples_around_the_same_mean(tiny_model: ProgressionModel) -> None:
    cond = torch.zeros(1, 4, *tiny_model.field_shape_)
    cov = [{"age": 70.0, "years": 2.0}]
    raw = tiny_model.sample_annual_velocity(cond, cov, n_samples=4, seed=3, spread=1.0)
    wide = tiny_model.sample_annual_velocity(cond, cov, n_samples=4, seed=3, spread=2.5)
    assert torch.allclose(wide.mean(1), raw.mean(1), atol=1e-5)
    assert torch.allclose(wide.std(1), 2.5 * raw.std(1), rtol=1e-3, atol=1e-6)


def test_calibrate_spread_on_tiny_subjects_and_card_round_trip(tiny_model: ProgressionModel, tmp_path) -> None:
    fs = _forecast_subject()
    labels = np.asarray(fs.labels.dataobj)
    subjects = [_subject(i, dx) for i, dx in enumerate(["CN", "AD"])]
    res = calibrate_spread(tiny_model, subjects, regions=("Core", "Corner"), n_samples=3, labels=labels,
                           region_table=fs.regions, progress=False)  # fmt: skip
    assert res.n_subjects == 2 and res.n_cases == 2 * 2 * 2
    assert np.isfinite(res.spread) and res.spread > 0
    assert set(res.cases.region) == {"Core", "Corner"}
    # the truth is the volume change of the visits' own fields: a contraction, so ratios < 1 in the core
    core = res.cases[res.cases.region == "Core"]
    assert (core.true_ratio < 1).all()
    assert tiny_model.sample_spread == 1.0  # calibration does not change the model
    tiny_model.sample_spread = res.spread
    tiny_model.spread_calibration_ = res.to_dict()
    try:
        tiny_model.save(tmp_path / "m")
        loaded = ProgressionModel.load(tmp_path / "m")
    finally:
        tiny_model.sample_spread = 1.0
        tiny_model.spread_calibration_ = None
    assert loaded.sample_spread == pytest.approx(res.spread)
    assert loaded.spread_calibration_["n_cases"] == res.n_cases
    assert isinstance(pd.DataFrame(res.cases), pd.DataFrame)


def test_calibrate_spread_needs_follow_ups(tiny_model: ProgressionModel) -> None:
    s = _subject(0)
    s.visits = s.visits[:1]
    with pytest.raises(ValueError, match="follow-up"):
        calibrate_spread(tiny_model, [s], n_samples=2, labels=np.zeros(SHAPE), region_table=pd.DataFrame(), progress=False)
    with pytest.raises(ValueError, match="n_samples"):
        calibrate_spread(tiny_model, [s], n_samples=1, progress=False)
