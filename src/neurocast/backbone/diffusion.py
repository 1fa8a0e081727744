"""Noise schedules, the training loss, the DDIM sampler and partial-noise reconstruction.

* Training uses MONAI's :class:`~monai.networks.schedulers.DDPMScheduler` (``add_noise``,
  ``get_velocity``) with the config's schedule and T = ``num_train_timesteps``.
* Sampling uses MONAI's :class:`~monai.networks.schedulers.DDIMScheduler` with timesteps spaced by
  exactly ``r = T // steps`` (``t_k = t_last + k r``, starting as close to ``T - 1`` as possible,
  ending below ``r`` so the last step lands on the clean sample). MONAI's own ``set_timesteps``
  spaces them by ``(T-1)/(steps-1)`` while its ``step`` jumps by ``T // steps``; for few steps the
  two disagree (the sample sits at a different noise level than the model is told), so we set the
  timesteps ourselves to match ``step``.
* Classifier-free guidance: ``out = out_uncond + w * (out_cond - out_uncond)``, where the
  unconditional pass has *all covariates null* and keeps the image condition. It is applied to the
  network output whatever the prediction type (each is affine in the noise estimate for a given
  ``x_t``, so this equals guidance on epsilon).

Example (an untrained tiny 2-D model, so the output is meaningless but shaped right):
    >>> import torch
    >>> from neurocast.backbone import BackboneConfig, build_backbone, sample
    >>> cfg = BackboneConfig(spatial_dims=2, target_channels=1, channels=(8, 16))
    >>> net = build_backbone(cfg)
    >>> sample(net, shape=(16, 16), num_samples=3, num_inference_steps=4, seed=0).shape
    torch.Size([1, 3, 1, 16, 16])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from neurocast.backbone.conditioning import CovariateValues
from neurocast.backbone.config import BackboneConfig
from neurocast.backbone.network import DiffusionBackbone


def _schedule_args(config: BackboneConfig) -> dict:
    if config.beta_schedule == "cosine":
        return {}
    return {"beta_start": config.beta_start, "beta_end": config.beta_end}


def make_train_scheduler(config: BackboneConfig) -> DDPMScheduler:
    """MONAI DDPM scheduler for training (noising and targets)."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
        **_schedule_args(config),
    )


def make_sampling_scheduler(
    config: BackboneConfig, num_inference_steps: int | None = None
) -> DDIMScheduler:
    """MONAI DDIM scheduler with ``num_inference_steps`` timesteps consistent with its ``step``.

    Example:
        >>> from neurocast.backbone import BackboneConfig
        >>> make_sampling_scheduler(BackboneConfig(), 4).timesteps.tolist()
        [999, 749, 499, 249]
    """
    steps = int(num_inference_steps or config.num_inference_steps)
    t_total = config.num_train_timesteps
    if not 1 <= steps <= t_total:
        raise ValueError(f"num_inference_steps must be in [1, {t_total}], got {steps}")
    clip = config.clip_sample
    sched = DDIMScheduler(
        num_train_timesteps=t_total,
        schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=clip is not None,
        clip_sample_min=-(clip or 1.0),
        clip_sample_max=clip or 1.0,
        set_alpha_to_one=True,
        **_schedule_args(config),
    )
    sched.set_timesteps(steps)
    ratio = t_total // steps
    # start as high as possible, and make the last step land on the clean sample (prev < 0)
    last = min(t_total - 1 - (steps - 1) * ratio, ratio - 1)
    sched.timesteps = last + ratio * torch.arange(steps - 1, -1, -1, dtype=torch.long)
    return sched


# --------------------------------------------------------------------------- training loss
def diffusion_loss(
    model: DiffusionBackbone,
    target: torch.Tensor,
    scheduler: DDPMScheduler,
    *,
    condition: torch.Tensor | None = None,
    covariates: CovariateValues = None,
    generator: torch.Generator | None = None,
    drop: torch.Tensor | bool | None = True,
    forward: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean squared error of the network on randomly noised ``target`` (one training step's loss).

    Draws timesteps, noise and (if ``drop is True`` and the model has covariates) the condition
    dropout mask from ``generator``, so a seeded generator makes the loss reproducible.
    ``target`` is in data units; it is divided by ``config.target_scale`` here. ``forward`` is
    the callable that runs the network (default ``model``; the DDP wrapper when distributed).

    Example:
        >>> import torch
        >>> from neurocast.backbone import BackboneConfig, build_backbone
        >>> from neurocast.backbone.diffusion import diffusion_loss, make_train_scheduler
        >>> cfg = BackboneConfig(spatial_dims=2, target_channels=1, channels=(8, 16))
        >>> net = build_backbone(cfg)
        >>> g = torch.Generator().manual_seed(0)
        >>> loss = diffusion_loss(net, torch.randn(4, 1, 16, 16), make_train_scheduler(cfg), generator=g)
        >>> loss.ndim
        0
    """
    cfg = model.config
    dev = target.device
    x0 = target.float() / cfg.target_scale
    b = x0.shape[0]
    gdev = generator.device if generator is not None else dev
    t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=generator, device=gdev).to(dev)
    noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=torch.float32).to(dev)
    drop_mask = None
    if isinstance(drop, torch.Tensor):
        drop_mask = drop
    elif drop is True and model.has_covariates:
        enc = model.covariate_encoder
        assert enc is not None
        drop_mask = enc.sample_drop_mask(
            b, cfg.cond_drop_prob, cfg.cond_drop_all_prob, generator=generator, device=gdev
        ).to(dev)
    x_t = scheduler.add_noise(x0, noise, t)
    if cfg.prediction_type == "epsilon":
        goal = noise
    elif cfg.prediction_type == "v_prediction":
        goal = scheduler.get_velocity(x0, noise, t)
    else:
        goal = x0
    net = model if forward is None else forward
    out = net(x_t, t, condition=condition, covariates=covariates, drop=drop_mask)
    return torch.nn.functional.mse_loss(out.float(), goal)


# --------------------------------------------------------------------------- sampling
@dataclass
class SampleResult:
    """What :func:`sample` and :func:`reconstruct` return with ``return_intermediates=True``.

    Attributes:
        samples: the final samples (same layout as without intermediates).
        x0_predictions: per DDIM step, the predicted clean sample (data units, on CPU), each
            shaped like ``samples``.
        timesteps: the DDIM timesteps visited, in order.
    """

    samples: torch.Tensor
    x0_predictions: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)


def _batch_size(condition: torch.Tensor | None, covariates: CovariateValues) -> int | None:
    if condition is not None:
        return int(condition.shape[0])
    if covariates is None:
        return None
    if isinstance(covariates, torch.Tensor):
        return int(covariates.shape[0]) if covariates.ndim == 2 else 1
    if isinstance(covariates, dict):
        for v in covariates.values():
            if not isinstance(v, str) and hasattr(v, "__len__") and getattr(v, "ndim", 1) != 0:
                return len(v)
        return 1
    return len(list(covariates))


def _make_generator(
    seed: int | None, generator: torch.Generator | None, device: torch.device
) -> torch.Generator:
    if generator is not None:
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but sampling runs on {device}; "
                "pass a generator on the model's device, or a seed"
            )
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


@torch.no_grad()
def _denoise(
    model: DiffusionBackbone,
    x: torch.Tensor,
    scheduler: DDIMScheduler,
    timesteps: list[int],
    condition: torch.Tensor | None,
    values: torch.Tensor | None,
    *,
    eta: float,
    guidance_scale: float,
    generator: torch.Generator,
    batch_size: int | None,
    progress: bool,
    desc: str,
    keep_x0: bool,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None,
    autocast: torch.dtype | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run DDIM from ``x`` (at ``timesteps[0]``) to a clean sample; all tensors on one device.

    The network runs under :func:`_autocast` in ``autocast``; the DDIM updates stay in float32.
    """
    cfg = model.config
    n = x.shape[0]
    guided = guidance_scale != 1.0
    if guided and values is None:
        raise ValueError("guidance_scale != 1 needs a model with covariates (nothing to guide on)")
    null = model.covariate_encoder.null_values(n) if guided else None  # type: ignore[union-attr]
    chunk = int(batch_size or n)
    x0s: list[torch.Tensor] = []
    for t in _progress(timesteps, progress, desc):
        outs = []
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            xb = x[sl]
            cb = condition[sl] if condition is not None else None
            vb = values[sl] if values is not None else None
            tt = torch.full((xb.shape[0],), int(t), device=x.device, dtype=torch.long)
            with _autocast(x.device, autocast):
                if guided:
                    assert null is not None
                    both = model(
                        torch.cat([xb, xb]),
                        torch.cat([tt, tt]),
                        condition=None if cb is None else torch.cat([cb, cb]),
                        covariates=torch.cat([vb, null[sl]]),
                    ).float()
                    cond_out, uncond_out = both.chunk(2)
                    outs.append(uncond_out + guidance_scale * (cond_out - uncond_out))
                else:
                    outs.append(model(xb, tt, condition=cb, covariates=vb))
        out = torch.cat(outs).float()
        x, x0 = scheduler.step(out, int(t), x, eta=eta, generator=generator)
        if keep_x0:
            x0s.append((x0 * cfg.target_scale).detach().cpu())
        if callback is not None:
            callback(int(t), x, x0)
    return x, x0s


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _maybe_channels_last(model: DiffusionBackbone, enabled: bool | None, dev: torch.device) -> None:
    if enabled is None:
        enabled = dev.type == "cpu"
        if not enabled:
            return
    model.use_channels_last(enabled)


def _autocast(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on the model's device, or nothing for ``None``/float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def _prepare_condition(
    model: DiffusionBackbone, condition: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    if condition is None:
        return None
    condition = torch.as_tensor(condition, dtype=torch.float32)
    if condition.ndim == model.config.spatial_dims + 1:
        condition = condition.unsqueeze(0)
    return condition.to(device)


def sample(
    model: DiffusionBackbone,
    *,
    condition: torch.Tensor | None = None,
    covariates: CovariateValues = None,
    shape: tuple[int, ...] | None = None,
    num_samples: int | None = None,
    num_inference_steps: int | None = None,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    return_intermediates: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    channels_last: bool | None = None,
    noise: torch.Tensor | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor | SampleResult:
    """Generate samples with DDIM (pass the EMA model).

    Args:
        model: a :class:`DiffusionBackbone` (switched to eval mode here).
        condition: conditioning image(s) ``(B, Cc, *spatial)`` or ``(Cc, *spatial)``.
        covariates: covariate values for the B conditions (see ``CovariateValues``); one mapping of
            scalars is broadcast to all B.
        shape: spatial shape, needed when there is no condition image.
        num_samples: samples per condition. ``None``: one, and the result is ``(B, C, *spatial)``;
            an int: the result is ``(B, num_samples, C, *spatial)``.
        num_inference_steps: DDIM steps (default ``config.num_inference_steps``).
        eta: DDIM stochasticity (0 = deterministic given the initial noise).
        guidance_scale: classifier-free guidance weight ``w`` (1 = no guidance, i.e. conditional).
        seed, generator: the initial noise (and eta noise) comes from ``generator`` if given, else
            from a fresh generator seeded with ``seed`` on the model's device. Same seed, same
            inputs, same machine: same output; results do not depend on ``batch_size``.
        batch_size: at most this many samples per network call (memory bound).
        progress: show a tqdm bar.
        return_intermediates: return a :class:`SampleResult` with the predicted clean samples of
            every step.
        callback: called after each step as ``callback(t, x_t, x0_pred)`` (normalised units).
        channels_last: switch the model to the channels-last layout (faster convolutions on
            CPU; see :meth:`DiffusionBackbone.use_channels_last`). Default: on for models on
            CPU, otherwise left as is.
        autocast: run the network under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``:
            about 3x faster on CPUs with AMX / AVX512-BF16, in the last bits less exact); the
            DDIM updates stay float32. Default ``None``: float32 throughout.
        noise: the initial noise ``x_T`` (normalised units), shape ``(B * num_samples, C, *spatial)``
            in the order of the result; default: drawn from the generator. With ``eta=0`` sampling
            is deterministic given it (e.g. the same noise for several horizons of one subject).

    Returns:
        Samples in data units (multiplied by ``config.target_scale``), on the model's device.

    Example:
        >>> import torch
        >>> from neurocast.backbone import BackboneConfig, CovariateSpec, build_backbone, sample
        >>> cfg = BackboneConfig(spatial_dims=3, target_channels=3, image_condition_channels=1,
        ...                      channels=(8, 16), covariates=(CovariateSpec.continuous("years"),))
        >>> net = build_backbone(cfg)
        >>> baseline = torch.randn(1, 1, 8, 8, 8)
        >>> out = sample(net, condition=baseline.expand(3, -1, -1, -1, -1),
        ...              covariates={"years": [1.0, 2.0, 5.0]}, num_samples=2,
        ...              num_inference_steps=3, guidance_scale=1.5, seed=1)
        >>> out.shape
        torch.Size([3, 2, 3, 8, 8, 8])
    """
    model.eval()
    cfg = model.config
    dev = _model_device(model)
    _maybe_channels_last(model, channels_last, dev)
    condition = _prepare_condition(model, condition, dev)
    b = _batch_size(condition, covariates) or 1
    if condition is not None:
        spatial = tuple(condition.shape[2:])
        if shape is not None and tuple(shape) != spatial:
            raise ValueError(f"shape {tuple(shape)} differs from the condition's {spatial}")
    elif shape is not None:
        spatial = tuple(int(s) for s in shape)
    else:
        raise ValueError("give a condition image or the spatial shape of the samples")
    if len(spatial) != cfg.spatial_dims:
        raise ValueError(f"shape must have {cfg.spatial_dims} spatial dims, got {spatial}")
    values = model.encode_covariates(covariates, b)
    k = 1 if num_samples is None else int(num_samples)
    if k < 1:
        raise ValueError("num_samples must be >= 1")
    if k > 1:  # sample-major within each condition: (B, k) -> B*k
        if condition is not None:
            condition = condition.repeat_interleave(k, dim=0)
        if values is not None:
            values = values.repeat_interleave(k, dim=0)
    g = _make_generator(seed, generator, dev)
    scheduler = make_sampling_scheduler(cfg, num_inference_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    want = (b * k, cfg.target_channels, *spatial)
    if noise is None:
        x = torch.randn(want, generator=g, device=dev)
    elif tuple(noise.shape) != want:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {want}")
    else:
        x = noise.to(device=dev, dtype=torch.float32)
    x, x0s = _denoise(
        model,
        x,
        scheduler,
        timesteps,
        condition,
        values,
        eta=eta,
        guidance_scale=guidance_scale,
        generator=g,
        batch_size=batch_size,
        progress=progress,
        desc="sampling",
        keep_x0=return_intermediates,
        callback=callback,
        autocast=autocast,
    )
    out = x * cfg.target_scale

    def shaped(t: torch.Tensor) -> torch.Tensor:
        return t if num_samples is None else t.reshape(b, k, *t.shape[1:])

    if return_intermediates:
        return SampleResult(shaped(out), [shaped(t) for t in x0s], timesteps)
    return shaped(out)


def reconstruction_timesteps(
    config: BackboneConfig, noise_level: float, num_inference_steps: int | None = None
) -> tuple[list[int], int]:
    """The DDIM timesteps of a reconstruction from ``noise_level`` and the DDIM grid size used.

    The partial chain starts at ``t0 = round(noise_level * T)`` (clamped to ``[1, T-1]``) and steps
    down by ``r = T // n`` where ``n`` is chosen so that the chain has about
    ``num_inference_steps`` steps (default: the config's steps scaled by ``noise_level``).
    """
    if not 0.0 < noise_level <= 1.0:
        raise ValueError(f"noise_level must be in (0, 1], got {noise_level}")
    t_total = config.num_train_timesteps
    t0 = min(t_total - 1, max(1, round(noise_level * t_total)))
    steps = num_inference_steps or max(1, math.ceil(config.num_inference_steps * noise_level))
    n_grid = min(t_total, max(1, round(steps * t_total / (t0 + 1))))
    ratio = t_total // n_grid
    return list(range(t0, -1, -ratio)), n_grid


def reconstruct(
    model: DiffusionBackbone,
    x: torch.Tensor,
    noise_level: float,
    *,
    condition: torch.Tensor | None = None,
    covariates: CovariateValues = None,
    num_inference_steps: int | None = None,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    return_intermediates: bool = False,
    channels_last: bool | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor | SampleResult:
    """Partially noise ``x`` to ``t0 = noise_level * T`` and denoise it back with DDIM.

    The anomaly detector's reconstruction (AnoDDPM / pDDPM): structure the model has not learned
    (a lesion, an artefact) is replaced by what it expects. ``x`` is ``(B, C, *spatial)`` (or
    without the batch axis) in data units; the result has the same shape.

    Args:
        noise_level: fraction of the chain, in (0, 1]; 1 means sampling from (almost) pure noise.
        num_inference_steps: approximate number of DDIM steps *of the partial chain* (default:
            ``config.num_inference_steps * noise_level``); see :func:`reconstruction_timesteps`.
        noise: the noise added at ``t0`` (default: drawn from the generator / seed).
        others: as in :func:`sample`.

    Example:
        >>> import torch
        >>> from neurocast.backbone import BackboneConfig, build_backbone, reconstruct
        >>> net = build_backbone(BackboneConfig(spatial_dims=2, target_channels=1, channels=(8, 16)))
        >>> img = torch.randn(2, 1, 16, 16)
        >>> reconstruct(net, img, noise_level=0.3, num_inference_steps=5, seed=0).shape
        torch.Size([2, 1, 16, 16])
    """
    model.eval()
    cfg = model.config
    dev = _model_device(model)
    _maybe_channels_last(model, channels_last, dev)
    x = torch.as_tensor(x, dtype=torch.float32)
    squeeze = x.ndim == cfg.spatial_dims + 1
    if squeeze:
        x = x.unsqueeze(0)
    x = x.to(dev)
    b = x.shape[0]
    condition = _prepare_condition(model, condition, dev)
    if condition is not None and condition.shape[0] == 1 and b > 1:
        condition = condition.expand(b, *condition.shape[1:])
    values = model.encode_covariates(covariates, b)
    g = _make_generator(seed, generator, dev)
    timesteps, n_grid = reconstruction_timesteps(cfg, noise_level, num_inference_steps)
    scheduler = make_sampling_scheduler(cfg, n_grid)
    scheduler.timesteps = torch.tensor(timesteps, dtype=torch.long)
    if noise is None:
        noise = torch.randn(x.shape, generator=g, device=dev)
    else:
        noise = torch.as_tensor(noise, dtype=torch.float32).reshape(x.shape).to(dev)
    x_t = scheduler.add_noise(
        x / cfg.target_scale, noise, torch.full((b,), timesteps[0], dtype=torch.long, device=dev)
    )
    out, x0s = _denoise(
        model,
        x_t,
        scheduler,
        timesteps,
        condition,
        values,
        eta=eta,
        guidance_scale=guidance_scale,
        generator=g,
        batch_size=batch_size,
        progress=progress,
        desc="reconstructing",
        keep_x0=return_intermediates,
        callback=None,
        autocast=autocast,
    )
    out = out * cfg.target_scale
    if squeeze:
        out = out[0]
        x0s = [t[0] for t in x0s]
    if return_intermediates:
        return SampleResult(out, x0s, timesteps)
    return out
