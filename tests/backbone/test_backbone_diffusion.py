"""Schedulers, sampler, guidance and reconstruction."""

from __future__ import annotations

import itertools

import pytest
import torch

from neurocast.backbone import (
    SampleResult,
    diffusion_loss,
    make_sampling_scheduler,
    make_train_scheduler,
    reconstruct,
    reconstruction_timesteps,
    sample,
)

COV = {"years": 2.0, "age": 75.0, "sex": "M", "diagnosis": "AD"}


def test_ddim_timesteps_match_the_step_size(make_config):
    cfg = make_config(2)
    for steps in (1, 3, 7, 10, 50, 333):
        sched = make_sampling_scheduler(cfg, steps)
        ts = sched.timesteps.tolist()
        ratio = cfg.num_train_timesteps // steps
        assert len(ts) == steps and ts[0] > cfg.num_train_timesteps - 1 - ratio
        assert all(a - b == ratio for a, b in itertools.pairwise(ts))
        assert ts[-1] - ratio < 0  # the last step lands on the clean sample


def test_reconstruction_timesteps(make_config):
    cfg = make_config(2, num_inference_steps=50)
    ts, n_grid = reconstruction_timesteps(cfg, 0.3, 10)
    assert ts[0] == 300 and ts[-1] >= 0 and ts[-1] - 1000 // n_grid < 0
    assert 9 <= len(ts) <= 12
    ts_default, _ = reconstruction_timesteps(cfg, 0.5)
    assert 24 <= len(ts_default) <= 27
    with pytest.raises(ValueError):
        reconstruction_timesteps(cfg, 0.0)


def test_sample_shapes_and_determinism(tiny3d):
    cond = torch.randn(3, 1, 8, 8, 8)
    covs = {"years": [1.0, 2.0, 5.0], "age": 70.0, "sex": "F", "diagnosis": None}
    a = sample(tiny3d, condition=cond, covariates=covs, num_samples=2, seed=3)
    b = sample(tiny3d, condition=cond, covariates=covs, num_samples=2, seed=3, batch_size=4)
    c = sample(tiny3d, condition=cond, covariates=covs, num_samples=2, seed=4)
    assert a.shape == (3, 2, 3, 8, 8, 8)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)  # chunking does not change the result
    assert not torch.allclose(a, c)
    one = sample(tiny3d, condition=cond[0], covariates=COV, seed=3)
    assert one.shape == (1, 3, 8, 8, 8)


def test_sample_with_eta_and_generator_is_reproducible(tiny2d):
    cond = torch.randn(2, 1, 16, 16)
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    a = sample(tiny2d, condition=cond, covariates=COV, eta=1.0, generator=g1)
    b = sample(tiny2d, condition=cond, covariates=COV, eta=1.0, generator=g2)
    assert torch.equal(a, b)


def test_guidance_uncond_path_is_the_null_covariate_path(tiny2d):
    cond = torch.randn(2, 1, 16, 16)
    null = sample(tiny2d, condition=cond, covariates=None, seed=5)
    guided0 = sample(tiny2d, condition=cond, covariates=COV, guidance_scale=0.0, seed=5)
    assert torch.allclose(
        null, guided0, rtol=1e-4, atol=1e-4
    )  # w = 0: out = out_uncond (all covariates null)
    cond_only = sample(tiny2d, condition=cond, covariates=COV, seed=5)
    guided1 = sample(tiny2d, condition=cond, covariates=COV, guidance_scale=1.0, seed=5)
    assert torch.equal(cond_only, guided1)
    guided3 = sample(tiny2d, condition=cond, covariates=COV, guidance_scale=3.0, seed=5)
    assert not torch.allclose(guided3, cond_only)
    assert not torch.allclose(null, cond_only)


def test_guidance_needs_covariates(make_config, make_model):
    net = make_model(make_config(2, covariates=()))
    with pytest.raises(ValueError, match="guidance"):
        sample(net, condition=torch.randn(1, 1, 16, 16), guidance_scale=2.0)


def test_intermediates_and_progress(tiny2d):
    res = sample(
        tiny2d,
        condition=torch.randn(1, 1, 16, 16),
        covariates=COV,
        num_samples=2,
        num_inference_steps=5,
        return_intermediates=True,
        progress=True,
    )
    assert isinstance(res, SampleResult)
    assert res.samples.shape == (1, 2, 1, 16, 16)
    assert len(res.x0_predictions) == 5 == len(res.timesteps)
    assert res.x0_predictions[-1].shape == res.samples.shape
    assert torch.allclose(res.x0_predictions[-1], res.samples, rtol=1e-5, atol=1e-5)


def test_sample_needs_a_shape_without_condition(make_config, make_model):
    net = make_model(make_config(2, image_condition_channels=0, covariates=(), target_scale=2.0))
    with pytest.raises(ValueError, match="shape"):
        sample(net)
    out = sample(net, shape=(12, 12), num_samples=3)
    assert out.shape == (1, 3, 1, 12, 12)


def test_reconstruct(tiny2d):
    x = torch.randn(2, 1, 16, 16)
    cond = torch.randn(2, 1, 16, 16)
    out = reconstruct(tiny2d, x, 0.4, condition=cond, covariates=COV, num_inference_steps=4, seed=0)
    again = reconstruct(
        tiny2d, x, 0.4, condition=cond, covariates=COV, num_inference_steps=4, seed=0
    )
    assert out.shape == x.shape and torch.equal(out, again)
    res = reconstruct(
        tiny2d,
        x[0],
        0.4,
        condition=cond[0],
        covariates=COV,
        num_inference_steps=4,
        return_intermediates=True,
    )
    assert res.samples.shape == x[0].shape and len(res.x0_predictions) == len(res.timesteps)
    assert torch.allclose(
        res.samples, out[0], rtol=1e-4, atol=1e-4
    )  # same seed, same noise for item 0


def test_reconstruct_from_tiny_noise_stays_close(make_config, make_model):
    # a model that predicts zero noise returns its (barely) noised input
    net = make_model(make_config(2, image_condition_channels=0, covariates=()))
    with torch.no_grad():
        for p in net.unet.out.parameters():
            p.zero_()
    x = torch.randn(1, 1, 16, 16)
    out = reconstruct(net, x, 0.002, num_inference_steps=1)
    assert (out - x).abs().max() < 0.1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_for_each_prediction_type(make_config, make_model, prediction_type):
    cfg = make_config(2, prediction_type=prediction_type)
    net = make_model(cfg)
    net.train()
    g = torch.Generator().manual_seed(0)
    loss = diffusion_loss(
        net,
        torch.randn(4, 1, 16, 16),
        make_train_scheduler(cfg),
        condition=torch.randn(4, 1, 16, 16),
        covariates=[COV] * 4,
        generator=g,
    )
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())  # nulls included: DDP-safe
    out = sample(net, condition=torch.randn(1, 1, 16, 16), covariates=COV, num_inference_steps=3)
    assert torch.isfinite(out).all()


def test_channels_last_layout_gives_the_same_samples(tiny3d):
    cond = torch.randn(2, 1, 9, 10, 11)
    a = sample(tiny3d, condition=cond, covariates=COV, seed=2, channels_last=False)
    b = sample(tiny3d, condition=cond, covariates=COV, seed=2, channels_last=True)
    assert tiny3d.unet.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)
    assert b.is_contiguous()
