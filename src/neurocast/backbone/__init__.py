"""neurocast.backbone: the one conditional diffusion model (ground floor).

Used by the progression forecaster (velocity fields, 3-D, conditioned on the baseline image, time to
target and covariates) and by the anomaly detector (images, 2-D or 3-D, partial-noise
reconstruction). Imports only torch, MONAI, safetensors, numpy (and tqdm for progress bars).

=========================  =============================================================
:mod:`.config`             :class:`BackboneConfig`, :class:`CovariateSpec` (JSON-serialisable)
:mod:`.conditioning`       :class:`CovariateEncoder` (null embedding per covariate), :func:`fit_covariates`
:mod:`.network`            :class:`DiffusionBackbone` on MONAI's ``DiffusionModelUNet``, :func:`build_backbone`
:mod:`.diffusion`          DDPM/DDIM schedulers, :func:`diffusion_loss`, :func:`sample`, :func:`reconstruct`
:mod:`.training`           :func:`train` (AdamW, EMA, clipping, AMP on CUDA, DDP, exact resume)
:mod:`.checkpoint`         :func:`save_checkpoint`, :func:`load_backbone`, model cards, verification
=========================  =============================================================

Example:
    >>> import torch
    >>> from neurocast.backbone import BackboneConfig, CovariateSpec, build_backbone, train, sample
    >>> cfg = BackboneConfig(spatial_dims=2, target_channels=1, image_condition_channels=1,
    ...                      channels=(8, 16), covariates=(CovariateSpec.continuous("k"),))
    >>> data = [{"target": torch.ones(1, 8, 8) * i, "condition": torch.ones(1, 8, 8),
    ...          "covariates": {"k": float(i)}} for i in range(4)]
    >>> result = train(build_backbone(cfg), data, n_steps=2, batch_size=2, progress=False)
    >>> sample(result.ema_model, condition=torch.ones(1, 1, 8, 8), covariates={"k": 2.0},
    ...        num_inference_steps=2).shape
    torch.Size([1, 1, 8, 8])
"""

from neurocast.backbone.checkpoint import (
    TrainingState,
    checkpoint_id,
    load_backbone,
    load_extra_tensors,
    load_safetensors,
    load_training_state,
    read_model_card,
    save_checkpoint,
    verify_checkpoint,
)
from neurocast.backbone.conditioning import CovariateEncoder, CovariateValues, fit_covariates
from neurocast.backbone.config import BackboneConfig, CovariateSpec, check_channels
from neurocast.backbone.diffusion import (
    SampleResult,
    diffusion_loss,
    make_sampling_scheduler,
    make_train_scheduler,
    reconstruct,
    reconstruction_timesteps,
    sample,
)
from neurocast.backbone.network import DiffusionBackbone, build_backbone
from neurocast.backbone.training import TrainResult, collate, make_ema, train

__all__ = [
    "BackboneConfig",
    "CovariateEncoder",
    "CovariateSpec",
    "CovariateValues",
    "DiffusionBackbone",
    "SampleResult",
    "TrainResult",
    "TrainingState",
    "build_backbone",
    "check_channels",
    "checkpoint_id",
    "collate",
    "diffusion_loss",
    "fit_covariates",
    "load_backbone",
    "load_extra_tensors",
    "load_safetensors",
    "load_training_state",
    "make_ema",
    "make_sampling_scheduler",
    "make_train_scheduler",
    "read_model_card",
    "reconstruct",
    "reconstruction_timesteps",
    "sample",
    "save_checkpoint",
    "train",
    "verify_checkpoint",
]
