"""Network factory, config and conditioning: shapes, covariates with nulls, condition dropout."""

from __future__ import annotations

import json
import math

import pytest
import torch

from neurocast.backbone import (
    BackboneConfig,
    CovariateEncoder,
    CovariateSpec,
    build_backbone,
    fit_covariates,
)

COV_A = {"years": 1.0, "age": 70.0, "sex": "F", "diagnosis": "MCI"}


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("spatial", [(16, 16), (15, 17)])
def test_2d_shapes_with_image_condition(tiny2d, spatial):
    x = torch.randn(3, 1, *spatial)
    cond = torch.randn(3, 1, *spatial)
    out = tiny2d(x, torch.tensor([0, 10, 999]), condition=cond, covariates=[COV_A] * 3)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spatial", [(8, 8, 8), (9, 10, 11)])
def test_3d_shapes_velocity_field(tiny3d, spatial):
    x = torch.randn(2, 3, *spatial)  # a 3-channel velocity field
    cond = torch.randn(2, 1, *spatial)  # the baseline image on the same grid
    out = tiny3d(x, torch.tensor([5, 500]), condition=cond, covariates=COV_A)
    assert out.shape == x.shape


def test_unconditional_image_model_shapes(make_config, make_model):
    net = make_model(make_config(2, image_condition_channels=0, covariates=()))
    out = net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))
    assert out.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="no condition image"):
        net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), condition=torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="no covariates"):
        net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), covariates={"age": 3})


def test_cross_attention_injection(make_config, make_model):
    cfg = make_config(2, vector_injection="cross_attention", attention_levels=(False, True))
    net = make_model(cfg)
    x, cond = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    t = torch.tensor([100, 100])
    a = net(x, t, condition=cond, covariates=[COV_A, COV_A])
    b = net(x, t, condition=cond, covariates=[COV_A, {**COV_A, "age": 85.0}])
    assert a.shape == x.shape
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_wrong_inputs_are_refused(tiny2d):
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="condition"):
        tiny2d(x, t)  # needs a condition image
    with pytest.raises(ValueError, match="condition must have shape"):
        tiny2d(x, t, condition=torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="unknown covariate"):
        tiny2d(x, t, condition=torch.randn(2, 1, 16, 16), covariates={"agee": 70})
    with pytest.raises(ValueError, match="unknown category"):
        tiny2d(x, t, condition=torch.randn(2, 1, 16, 16), covariates={"diagnosis": "SMC"})


# --------------------------------------------------------------------------- covariates
def test_missing_covariates_work_and_change_the_output(tiny2d):
    x, cond = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    t = torch.full((4,), 300)
    rows = [
        COV_A,
        {**COV_A, "age": None},  # None
        {k: v for k, v in COV_A.items() if k != "age"},  # absent
        {**COV_A, "age": float("nan")},  # NaN
    ]
    with torch.no_grad():
        out = tiny2d(
            x[:1].expand(4, -1, -1, -1),
            t,
            condition=cond[:1].expand(4, -1, -1, -1),
            covariates=rows,
        )
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1], atol=1e-6)  # missing differs from present
    assert torch.equal(out[1], out[2]) and torch.equal(out[1], out[3])  # None == absent == NaN


def test_present_values_matter(tiny2d):
    x, cond = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    t = torch.tensor([300])
    outs = [
        tiny2d(x, t, condition=cond, covariates={**COV_A, key: val})
        for key, val in [("years", 1.0), ("years", 4.0), ("sex", "M"), ("diagnosis", "AD")]
    ]
    for o in outs[1:]:
        assert not torch.allclose(outs[0], o, atol=1e-6)


def test_drop_mask_equals_missing(tiny2d):
    x, cond = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    t = torch.tensor([7, 7])
    enc = tiny2d.covariate_encoder
    values = enc.tabulate([COV_A, COV_A])
    drop = torch.tensor([[False, True, False, True], [True, True, True, True]])
    hidden = values.clone()
    hidden[drop] = float("nan")
    with torch.no_grad():
        a = tiny2d(x, t, condition=cond, covariates=values, drop=drop)
        b = tiny2d(x, t, condition=cond, covariates=hidden)
        c = tiny2d(x, t, condition=cond, covariates=None)  # all null
    assert torch.equal(a, b)
    assert torch.equal(a[1], c[1])


def test_tabulate_forms_agree():
    enc = CovariateEncoder(
        [CovariateSpec.continuous("age", 70, 8), CovariateSpec.categorical("apoe4", [0, 1, 2])],
        dim=4,
    )
    rows = enc.tabulate([{"age": 60, "apoe4": 2}, {"age": None, "apoe4": "1"}])
    cols = enc.tabulate({"age": [60, None], "apoe4": [2.0, 1]})
    assert torch.equal(torch.nan_to_num(rows, nan=-1), torch.nan_to_num(cols, nan=-1))
    assert rows[0].tolist() == [60.0, 2.0] and math.isnan(rows[1, 0]) and rows[1, 1] == 1
    assert enc.tabulate({"age": 61}, batch_size=3).shape == (3, 2)
    assert torch.isnan(enc.tabulate(None, batch_size=2)).all()
    with pytest.raises(ValueError, match="not a number"):
        enc.tabulate({"age": "old"})


def test_condition_dropout_rate_as_configured():
    specs = [
        CovariateSpec.continuous("a"),
        CovariateSpec.continuous("b", drop_prob=0.5),
        CovariateSpec.categorical("c", ["x", "y"]),
    ]
    enc = CovariateEncoder(specs, dim=4)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    mask = enc.sample_drop_mask(n, drop_prob=0.2, drop_all_prob=0.1, generator=g)
    rate = mask.float().mean(0)
    expected = torch.tensor([1 - 0.8 * 0.9, 1 - 0.5 * 0.9, 1 - 0.8 * 0.9])
    assert torch.allclose(rate, expected, atol=0.01), (rate, expected)
    all_null = mask.all(1).float().mean().item()
    assert abs(all_null - (0.1 + 0.9 * 0.2 * 0.5 * 0.2)) < 0.01
    none = enc.sample_drop_mask(1000, drop_prob=0.0, drop_all_prob=0.0, generator=g)
    assert not none[:, [0, 2]].any()


def test_fit_covariates():
    specs = fit_covariates(
        {
            "age": [60.0, 70.0, float("nan"), 80.0],
            "sex": ["M", "F", "n/a", "F"],
            "apoe4": [0, 2, 1, 1],
        },
        continuous=["age"],
        categorical=["sex", "apoe4"],
        drop_prob={"age": 0.3},
    )
    age, sex, apoe = specs
    assert age.mean == pytest.approx(70.0) and age.std == pytest.approx(8.16496, rel=1e-4)
    assert age.drop_prob == 0.3
    assert sex.categories == ("F", "M") and apoe.categories == (0, 1, 2)


# --------------------------------------------------------------------------- config
def test_config_json_round_trip(make_config):
    cfg = make_config(
        3,
        prediction_type="v_prediction",
        num_res_blocks=(1, 2),
        clip_sample=3.0,
        extra={"grid_mm": 8},
    )
    text = cfg.to_json()
    back = BackboneConfig.from_json(text)
    assert back == cfg
    assert json.loads(text)["covariates"][2]["categories"] == ["F", "M"]
    assert build_backbone(back).num_parameters() == build_backbone(cfg).num_parameters()


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"channels": (8, 12)}, "multiple of norm_num_groups"),
        ({"channels": (0, 8)}, "positive multiple"),
        ({"channels": ()}, "at least one level"),
        ({"prediction_type": "noise"}, "prediction_type"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"cond_drop_prob": 1.5}, "cond_drop_prob"),
        ({"vector_injection": "cross_attention"}, "attention_levels"),
        (
            {"covariates": (CovariateSpec.continuous("a"), CovariateSpec.continuous("a"))},
            "duplicate",
        ),
        ({"covariates": (CovariateSpec.continuous("a", std=0.0),)}, "std"),
    ],
)
def test_invalid_configs_are_refused(make_config, changes, match):
    with pytest.raises(ValueError, match=match):
        make_config(2, **changes)


def test_spatial_dims_must_be_2_or_3(make_config):
    with pytest.raises(ValueError, match="spatial_dims"):
        make_config(4)


def test_unknown_config_keys_are_refused(make_config):
    d = make_config(2).to_dict()
    d["chanels"] = [8, 16]
    with pytest.raises(ValueError, match="chanels"):
        BackboneConfig.from_dict(d)
