"""Tiny backbones for fast tests (channels (8, 16), 16x16 slices, 8^3 volumes)."""

from __future__ import annotations

import pytest
import torch

from neurocast.backbone import BackboneConfig, CovariateSpec, DiffusionBackbone, build_backbone

COVARIATES = (
    CovariateSpec.continuous("years", mean=2.0, std=1.5),
    CovariateSpec.continuous("age", mean=72.0, std=8.0),
    CovariateSpec.categorical("sex", ["F", "M"]),
    CovariateSpec.categorical("diagnosis", ["CN", "MCI", "AD"]),
)


def tiny_config(spatial_dims: int = 2, **kw) -> BackboneConfig:
    base = dict(
        spatial_dims=spatial_dims,
        target_channels=1 if spatial_dims == 2 else 3,
        image_condition_channels=1,
        channels=(8, 16),
        covariates=COVARIATES,
        covariate_embed_dim=16,
        num_inference_steps=4,
    )
    base.update(kw)
    return BackboneConfig(**base)


def randomized(model: DiffusionBackbone, seed: int = 0) -> DiffusionBackbone:
    """Give MONAI's zero-initialised layers random weights, so that outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not suffer from a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny2d() -> DiffusionBackbone:
    torch.manual_seed(0)
    return randomized(build_backbone(tiny_config(2)))


@pytest.fixture
def tiny3d() -> DiffusionBackbone:
    torch.manual_seed(0)
    return randomized(build_backbone(tiny_config(3)))


@pytest.fixture
def make_config():
    """Factory: ``make_config(spatial_dims, **overrides)`` -> a tiny BackboneConfig."""
    return tiny_config


@pytest.fixture
def make_model():
    """Factory: ``make_model(config, seed=0)`` -> a built, randomised backbone in eval mode."""

    def make(config: BackboneConfig, seed: int = 0) -> DiffusionBackbone:
        torch.manual_seed(seed)
        return randomized(build_backbone(config), seed)

    return make
