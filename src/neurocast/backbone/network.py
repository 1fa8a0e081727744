"""The network: MONAI's ``DiffusionModelUNet`` with image and vector conditioning.

:class:`DiffusionBackbone` predicts the diffusion target (noise, velocity or clean sample, see
``BackboneConfig.prediction_type``) from a noisy target ``x_t``, the timestep ``t``, optional
conditioning image(s) and optional covariates.

* **Image conditioning** by channel concatenation: the UNet's input is ``cat([x_t, condition])``.
* **Vector conditioning** (covariates, including continuous time to target) by embedding
  (:class:`~neurocast.backbone.conditioning.CovariateEncoder`), injected in one of two ways:

  - ``"timestep"`` (default): the covariate tokens are flattened, passed through an MLP to the
    UNet's timestep-embedding width and *added to the timestep embedding*. MONAI's UNet adds that
    embedding (projected) inside every residual block, so the condition reaches every level, also
    in cheap networks without attention. We hand the vector to MONAI through its ``class_labels``
    argument, whose embedding table we replace by an identity: MONAI's ``num_class_embeds`` path
    only embeds *discrete* class indices, and this is exactly its "add to the timestep embedding"
    behaviour for a continuous vector, with no change to MONAI's forward.
  - ``"cross_attention"``: one token per covariate as the cross-attention context
    (``with_conditioning=True``). This only acts at levels with attention (MONAI then replaces
    self-attention by transformer blocks, costly at fine levels), so it is the option for larger,
    attention-rich models.

* Spatial sizes need not be multiples of ``2 ** (levels - 1)``: inputs are zero-padded at the end of
  each axis and the output cropped back (the diffusion process lives on the unpadded grid).

Example:
    >>> import torch
    >>> from neurocast.backbone import BackboneConfig, CovariateSpec, build_backbone
    >>> cfg = BackboneConfig(spatial_dims=2, target_channels=1, image_condition_channels=1,
    ...                      channels=(8, 16), covariates=(CovariateSpec.continuous("age", 70, 8),))
    >>> net = build_backbone(cfg)
    >>> x, cond = torch.randn(2, 1, 15, 17), torch.randn(2, 1, 15, 17)
    >>> net(x, torch.tensor([10, 500]), condition=cond, covariates={"age": [65.0, None]}).shape
    torch.Size([2, 1, 15, 17])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from neurocast.backbone.conditioning import CovariateEncoder, CovariateValues
from neurocast.backbone.config import BackboneConfig


class _VectorIdentity(nn.Module):
    """Stands in for MONAI's class-embedding table: the vector embedding is computed outside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DiffusionBackbone(nn.Module):
    """Conditional denoising network (see the module docstring). Build with :func:`build_backbone`.

    Attributes:
        config: the :class:`BackboneConfig` it was built from.
        unet: the MONAI ``DiffusionModelUNet``.
        covariate_encoder: the :class:`CovariateEncoder` (``None`` without covariates).
        vector_proj: MLP from covariate tokens to the timestep embedding (``"timestep"`` mode) or a
            linear map to the cross-attention width (``"cross_attention"`` mode); ``None`` without
            covariates.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        has_cov = len(cfg.covariates) > 0
        cross = has_cov and cfg.vector_injection == "cross_attention"
        time_embed_dim = cfg.channels[0] * 4
        self.unet = DiffusionModelUNet(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            out_channels=cfg.target_channels,
            num_res_blocks=cfg.num_res_blocks,
            channels=cfg.channels,
            attention_levels=cfg.attention_levels,
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,
            with_conditioning=cross,
            cross_attention_dim=cfg.covariate_embed_dim if cross else None,
            num_class_embeds=1 if (has_cov and not cross) else None,
        )
        self.covariate_encoder: CovariateEncoder | None = None
        self.vector_proj: nn.Module | None = None
        self._channels_last = False
        if has_cov:
            self.covariate_encoder = CovariateEncoder(cfg.covariates, cfg.covariate_embed_dim)
            if cross:
                self.vector_proj = nn.Linear(cfg.covariate_embed_dim, cfg.covariate_embed_dim)
            else:
                # the vector is added to the timestep embedding via MONAI's class_labels path
                self.unet.class_embedding = _VectorIdentity()
                self.vector_proj = nn.Sequential(
                    nn.Linear(len(cfg.covariates) * cfg.covariate_embed_dim, time_embed_dim),
                    nn.SiLU(),
                    nn.Linear(time_embed_dim, time_embed_dim),
                )

    # --------------------------------------------------------------- helpers
    @property
    def has_covariates(self) -> bool:
        """Whether the model takes covariates (and so supports classifier-free guidance)."""
        return self.covariate_encoder is not None

    def use_channels_last(self, enabled: bool = True) -> DiffusionBackbone:
        """Switch the network to (or from) the channels-last memory format.

        oneDNN's convolutions on CPU run faster on channels-last tensors (3-D: about 30 %, measured
        in ``benchmarks/backbone.md``; 2-D: about 40 % for the anomaly detector's slices).
        Values are unchanged; results may differ from the default layout in the last bits.
        :func:`~neurocast.backbone.diffusion.sample` and
        :func:`~neurocast.backbone.diffusion.reconstruct` turn it on for models on CPU.
        Returns ``self``.
        """
        self.to(memory_format=self._memory_format(enabled))
        self._channels_last = bool(enabled)
        return self

    def _memory_format(self, channels_last: bool) -> torch.memory_format:
        if not channels_last:
            return torch.contiguous_format
        return torch.channels_last_3d if self.config.spatial_dims == 3 else torch.channels_last

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def encode_covariates(
        self, covariates: CovariateValues, batch_size: int
    ) -> torch.Tensor | None:
        """Covariates as the encoded ``(B, n)`` float tensor on the model's device (``None`` if the
        model has no covariates; passing covariates to such a model raises ``ValueError``)."""
        if self.covariate_encoder is None:
            if covariates is not None and not (
                isinstance(covariates, torch.Tensor) and covariates.numel() == 0
            ):
                raise ValueError("this backbone has no covariates, but covariates were given")
            return None
        values = self.covariate_encoder.tabulate(covariates, batch_size)
        if values.shape[0] != batch_size:
            raise ValueError(
                f"covariates describe {values.shape[0]} samples but the batch has {batch_size}"
            )
        return values.to(self.covariate_encoder.null.device)

    # --------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        covariates: CovariateValues = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output for noisy targets.

        Args:
            x: noisy target ``(B, target_channels, *spatial)``.
            timesteps: ``(B,)`` integer timesteps (or one value for all).
            condition: ``(B, image_condition_channels, *spatial)`` when the config has image
                condition channels (required then).
            covariates: see :data:`~neurocast.backbone.conditioning.CovariateValues`; missing values
                (and ``None``) use the null embeddings.
            drop: optional boolean ``(B, n_covariates)`` mask of covariates to hide (condition dropout).

        Returns:
            ``(B, target_channels, *spatial)``.
        """
        cfg = self.config
        b = x.shape[0]
        spatial = tuple(x.shape[2:])
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.target_channels:
            raise ValueError(
                f"x must have shape (B, {cfg.target_channels}, {cfg.spatial_dims} spatial dims), "
                f"got {tuple(x.shape)}"
            )
        if cfg.image_condition_channels:
            if condition is None:
                raise ValueError(
                    f"this backbone needs a condition image with {cfg.image_condition_channels} channel(s)"
                )
            if condition.shape[0] != b and condition.shape[0] == 1:
                condition = condition.expand(b, *condition.shape[1:])
            if (
                condition.shape[0] != b
                or condition.shape[1] != cfg.image_condition_channels
                or tuple(condition.shape[2:]) != spatial
            ):
                raise ValueError(
                    f"condition must have shape ({b}, {cfg.image_condition_channels}, *{spatial}), "
                    f"got {tuple(condition.shape)}"
                )
            h = torch.cat([x, condition.to(dtype=x.dtype, device=x.device)], dim=1)
        else:
            if condition is not None:
                raise ValueError(
                    "this backbone takes no condition image (image_condition_channels=0)"
                )
            h = x
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        h = self._pad(h)
        if self._channels_last:
            h = h.contiguous(memory_format=self._memory_format(True))

        context = class_labels = None
        values = self.encode_covariates(covariates, b)
        if values is not None:
            assert self.covariate_encoder is not None and self.vector_proj is not None
            tokens = self.covariate_encoder(values, drop)
            if cfg.vector_injection == "cross_attention":
                context = self.vector_proj(tokens)
            else:
                class_labels = self.vector_proj(tokens.flatten(1))
        out = self.unet(h, timesteps, context=context, class_labels=class_labels)
        return out[(slice(None), slice(None), *(slice(0, s) for s in spatial))].contiguous()

    def _pad(self, h: torch.Tensor) -> torch.Tensor:
        m = self.config.size_multiple
        if m == 1:
            return h
        pads: list[int] = []
        for s in reversed(h.shape[2:]):
            pads += [0, (-s) % m]
        if not any(pads):
            return h
        return F.pad(h, pads)


def build_backbone(config: BackboneConfig) -> DiffusionBackbone:
    """Build a freshly initialised :class:`DiffusionBackbone` from ``config``.

    Initialisation uses torch's global RNG: call ``torch.manual_seed`` first for identical weights.

    Example:
        >>> from neurocast.backbone import BackboneConfig, build_backbone
        >>> net = build_backbone(BackboneConfig(spatial_dims=3, target_channels=3,
        ...                                     image_condition_channels=1, channels=(8, 16)))
        >>> net.num_parameters() > 0
        True
    """
    return DiffusionBackbone(config)
