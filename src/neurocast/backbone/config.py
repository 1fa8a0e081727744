"""Configuration of the diffusion backbone: a small, JSON-serialisable dataclass.

One :class:`BackboneConfig` fixes everything needed to rebuild a network from its weights: the
UNet's shape, what it is conditioned on (image channels, covariates and how they are encoded), and
the noise schedule. It is stored verbatim in every checkpoint's ``model_card.json``.

Example:
    >>> from neurocast.backbone.config import BackboneConfig, CovariateSpec
    >>> cfg = BackboneConfig(
    ...     spatial_dims=3, target_channels=3, image_condition_channels=1, channels=(16, 32, 64),
    ...     covariates=(CovariateSpec.continuous("horizon", mean=2.0, std=1.5),
    ...                 CovariateSpec.categorical("diagnosis", ["CN", "MCI", "AD"])))
    >>> BackboneConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

PredictionType = Literal["epsilon", "v_prediction", "sample"]
VectorInjection = Literal["timestep", "cross_attention"]

_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")


DEFAULT_NORM_GROUPS = 8
"""GroupNorm groups of the backbone (:attr:`BackboneConfig.norm_num_groups`'s default)."""


def check_channels(channels: tuple[int, ...], norm_num_groups: int = DEFAULT_NORM_GROUPS) -> None:
    """Raise ``ValueError`` unless ``channels`` (feature channels per UNet level) lists at least
    one level and each is a positive multiple of ``norm_num_groups``.

    Example:
        >>> check_channels((16, 32, 64))
        >>> check_channels((12, 24))
        Traceback (most recent call last):
        ...
        ValueError: every entry of channels (12, 24) must be a positive multiple of norm_num_groups=8
    """
    if not channels:
        raise ValueError("channels must list at least one level")
    if any(c <= 0 or c % norm_num_groups for c in channels):
        raise ValueError(
            f"every entry of channels {tuple(channels)} must be a positive multiple of "
            f"norm_num_groups={norm_num_groups}"
        )


def _category_key(value: Any) -> str:
    """The string a category (or a value to look up) is matched by: ``1``, ``1.0`` and ``"1"`` agree."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _category_key(value.item())
    return str(value)


@dataclass(frozen=True)
class CovariateSpec:
    """How one covariate (a per-sample scalar: age, sex, diagnosis, time to target...) is encoded.

    Attributes:
        name: key of the covariate in the mappings given to the model.
        kind: ``"continuous"`` (normalised as ``(x - mean) / std``) or ``"categorical"`` (one learned
            embedding per entry of ``categories``).
        mean, std: normalisation of a continuous covariate (from the training data, see
            :func:`neurocast.backbone.conditioning.fit_covariates`).
        categories: the allowed values of a categorical covariate, in a fixed order (the index is the
            encoded value). Values are matched as strings, so ``1``, ``1.0`` and ``"1"`` agree.
        drop_prob: this covariate's condition-dropout probability during training; ``None`` uses
            :attr:`BackboneConfig.cond_drop_prob`.

    Every covariate also has a learned *null* embedding, used where its value is missing (``None`` /
    NaN) and where condition dropout hides it.

    Example:
        >>> CovariateSpec.categorical("sex", ["F", "M"]).index_of("M")
        1
    """

    name: str
    kind: Literal["continuous", "categorical"] = "continuous"
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[Any, ...] = ()
    drop_prob: float | None = None

    @classmethod
    def continuous(
        cls, name: str, mean: float = 0.0, std: float = 1.0, drop_prob: float | None = None
    ) -> CovariateSpec:
        """A continuous covariate normalised with ``mean`` and ``std``."""
        return cls(name, "continuous", float(mean), float(std), (), drop_prob)

    @classmethod
    def categorical(
        cls, name: str, categories: list | tuple, drop_prob: float | None = None
    ) -> CovariateSpec:
        """A categorical covariate with the given ``categories`` (order fixes the encoding)."""
        return cls(name, "categorical", 0.0, 1.0, tuple(categories), drop_prob)

    def index_of(self, value: Any) -> int:
        """Index of ``value`` among :attr:`categories`; ``ValueError`` if unknown."""
        key = _category_key(value)
        for i, c in enumerate(self.categories):
            if _category_key(c) == key:
                return i
        raise ValueError(
            f"covariate {self.name!r}: unknown category {value!r} (known: {list(self.categories)})"
        )

    def validate(self) -> None:
        """Raise ``ValueError`` if the spec is not usable."""
        if not self.name or not isinstance(self.name, str):
            raise ValueError("covariate name must be a non-empty string")
        if self.kind not in ("continuous", "categorical"):
            raise ValueError(f"covariate {self.name!r}: kind must be 'continuous' or 'categorical'")
        if self.kind == "continuous":
            if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
                raise ValueError(f"covariate {self.name!r}: needs finite mean and std > 0")
        else:
            if len(self.categories) == 0:
                raise ValueError(
                    f"covariate {self.name!r}: categorical needs at least one category"
                )
            keys = [_category_key(c) for c in self.categories]
            if len(set(keys)) != len(keys):
                raise ValueError(f"covariate {self.name!r}: duplicate categories {self.categories}")
        if self.drop_prob is not None and not 0.0 <= self.drop_prob <= 1.0:
            raise ValueError(f"covariate {self.name!r}: drop_prob must be in [0, 1]")


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that defines a backbone network and its noise schedule.

    Attributes:
        spatial_dims: 2 (slices) or 3 (volumes).
        target_channels: channels of the generated quantity (3 for a velocity field, 1 for a T1w image).
        image_condition_channels: channels of the conditioning image(s), concatenated to the noisy
            target as extra input channels (0 = no image condition).
        channels: feature channels per UNet level (each a multiple of ``norm_num_groups``). The
            network pads inputs to a multiple of ``2 ** (len(channels) - 1)`` and crops the output.
        attention_levels: per level, whether it has (self- or cross-) attention; one bool for all
            levels; default none. MONAI's UNet always has one attention block at the bottleneck.
        num_res_blocks: residual blocks per level (int or one per level).
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups.
        covariates: the vector conditions (see :class:`CovariateSpec`), in a fixed order.
        covariate_embed_dim: width of each covariate's embedding token.
        vector_injection: how the covariate embedding enters the UNet: ``"timestep"`` (added to the
            timestep embedding, so it reaches every residual block at every level; default) or
            ``"cross_attention"`` (one token per covariate, attended to at the attention levels).
        num_train_timesteps: length of the DDPM chain (T).
        beta_schedule, beta_start, beta_end: MONAI noise schedule (``beta_*`` ignored by "cosine").
        prediction_type: what the network predicts: ``"v_prediction"`` (default), ``"epsilon"`` or
            ``"sample"``. With few DDIM steps from pure noise, an epsilon model's first clean-sample
            estimate is its error amplified by ``1 / sqrt(alpha_bar_T)`` (~150 with the linear
            schedule); in our tests a tiny epsilon model failed a task the v-prediction model
            learnt in the same steps, hence the default.
        clip_sample: clamp predicted clean samples to ``[-clip_sample, clip_sample]`` while sampling
            (``None``: never clamp; the default, because velocity fields are not bounded).
        target_scale: targets are divided by this before diffusion and samples multiplied by it,
            so the network sees roughly unit-variance data (e.g. the std of training velocities).
        cond_drop_prob: probability, per sample and per covariate, that training hides its value
            (replaced by the null embedding).
        cond_drop_all_prob: probability, per sample, that training hides *all* covariates at once;
            this trains the unconditional model used by classifier-free guidance.
        ema_decay: decay of the exponential moving average of the weights (sampling uses the EMA).
        num_inference_steps: default number of DDIM steps when sampling.
    """

    spatial_dims: int = 3
    target_channels: int = 1
    image_condition_channels: int = 0
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] | bool | None = None
    num_res_blocks: int | tuple[int, ...] = 1
    num_head_channels: int = 8
    norm_num_groups: int = DEFAULT_NORM_GROUPS
    covariates: tuple[CovariateSpec, ...] = ()
    covariate_embed_dim: int = 64
    vector_injection: VectorInjection = "timestep"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear_beta"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction_type: PredictionType = "v_prediction"
    clip_sample: float | None = None
    target_scale: float = 1.0
    cond_drop_prob: float = 0.1
    cond_drop_all_prob: float = 0.1
    ema_decay: float = 0.999
    num_inference_steps: int = 50
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON metadata for the model that uses the backbone (not read by the backbone)."""

    def __post_init__(self) -> None:
        # normalise sequences to tuples (JSON gives lists) so that equality and hashing behave
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        levels = self.attention_levels
        if levels is None:
            levels = False
        if isinstance(levels, bool):
            levels = (levels,) * len(self.channels)
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in levels))
        if not isinstance(self.num_res_blocks, int):
            object.__setattr__(self, "num_res_blocks", tuple(int(n) for n in self.num_res_blocks))
        covs = tuple(
            c if isinstance(c, CovariateSpec) else CovariateSpec(**_cov_kwargs(c))
            for c in self.covariates
        )
        object.__setattr__(self, "covariates", covs)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.target_channels < 1 or self.image_condition_channels < 0:
            raise ValueError("target_channels must be >= 1 and image_condition_channels >= 0")
        check_channels(self.channels, self.norm_num_groups)
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per level of channels")
        if not isinstance(self.num_res_blocks, int) and len(self.num_res_blocks) != len(
            self.channels
        ):
            raise ValueError("num_res_blocks must be an int or have one entry per level")
        if self.vector_injection not in ("timestep", "cross_attention"):
            raise ValueError("vector_injection must be 'timestep' or 'cross_attention'")
        if (
            self.vector_injection == "cross_attention"
            and self.covariates
            and not any(self.attention_levels)
        ):
            raise ValueError(
                "vector_injection='cross_attention' needs at least one True in attention_levels"
            )
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {_PREDICTION_TYPES}")
        if self.beta_schedule not in _SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {_SCHEDULES}")
        if self.num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be >= 2")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError("num_inference_steps must be in [1, num_train_timesteps]")
        for name in ("cond_drop_prob", "cond_drop_all_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")
        if not (self.target_scale > 0 and math.isfinite(self.target_scale)):
            raise ValueError("target_scale must be a positive number")
        if self.clip_sample is not None and self.clip_sample <= 0:
            raise ValueError("clip_sample must be None or > 0")
        names = [c.name for c in self.covariates]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate covariate names: {names}")
        for c in self.covariates:
            c.validate()

    # ------------------------------------------------------------- properties
    @property
    def in_channels(self) -> int:
        """Input channels of the UNet: noisy target + image condition."""
        return self.target_channels + self.image_condition_channels

    @property
    def size_multiple(self) -> int:
        """Spatial sizes the UNet accepts are multiples of this (inputs are padded up to it)."""
        return 2 ** (len(self.channels) - 1)

    @property
    def covariate_names(self) -> tuple[str, ...]:
        """Names of the covariates, in encoding order."""
        return tuple(c.name for c in self.covariates)

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["covariates"] = [asdict(c) for c in self.covariates]
        return json.loads(json.dumps(d))

    def to_json(self, **kwargs: Any) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        """Inverse of :meth:`to_dict`; ``ValueError`` on unknown or invalid keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BackboneConfig keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> BackboneConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> BackboneConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


def _cov_kwargs(d: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(CovariateSpec)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown CovariateSpec keys: {sorted(unknown)}")
    d = dict(d)
    if "categories" in d:
        d["categories"] = tuple(d["categories"])
    return d
