"""The progression model: the diffusion backbone on annual velocity fields.

:class:`ProgressionModel` (estimator style: ``fit`` returns ``self``, fitted attributes end in
``_``) trains :mod:`neurocast.backbone` on the pairs of :func:`neurocast.progress.visits.training_pairs`
and samples annual velocity fields for new subjects.

What the network sees (3-D, on the field grid, default 8 mm = 21 x 25 x 22 voxels):

* **target**: the annual stationary velocity between two visits (3 channels, field voxels per
  year), divided by ``target_scale`` (the RMS of the training targets);
* **condition image** (4 channels): the earlier visit's image averaged onto the field grid and the
  subject's observed annual velocity so far (zeros without history);
* **covariates**: ``age`` (years), ``sex``, ``diagnosis`` (CN/MCI/AD), ``apoe4`` (allele count,
  categorical), ``mmse`` (points), ``years`` (horizon, years) and ``history_years`` (span of the
  observed history; missing without). Each has a learned null: any may be unknown at forecast time.

Predicting the *annual* rate keeps the target's scale independent of the horizon; the horizon still
enters as a covariate, so acceleration (e.g. around conversion) can be learned.

Example:
    >>> from neurocast.progress.model import ProgressionModel
    >>> m = ProgressionModel(channels=(8, 16), num_inference_steps=2)
    >>> m.field_spacing_mm
    8.0
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from neurocast.progress.fieldgrid import DEFAULT_FIELD_SPACING_MM, field_shape
from neurocast.progress.visits import (
    LongitudinalSubject,
    PreparedSubject,
    prepare_subject,
    training_pairs,
)

CONTINUOUS = ("age", "mmse", "years", "history_years")
CATEGORICAL = ("sex", "diagnosis", "apoe4")
MODEL_KIND = "neurocast-progression"
CONDITION_CHANNELS = 4
SAMPLE_BATCH = 32
"""Fields per network call when sampling (bounds memory for many samples; results do not depend on it)."""


def inflate(samples: torch.Tensor, spread: float, dim: int = 1) -> torch.Tensor:
    """``mean + spread * (samples - mean)`` along the sample dimension ``dim``.

    The identity for one sample or ``spread == 1`` (see :mod:`neurocast.progress.calibration`).

    Example:
        >>> import torch
        >>> inflate(torch.tensor([[1.0, 3.0]]), 2.0)
        tensor([[0., 4.]])
    """
    if spread == 1.0 or samples.shape[dim] < 2:
        return samples
    mean = samples.mean(dim=dim, keepdim=True)
    return mean + float(spread) * (samples - mean)


def _categorical_key(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ProgressionModel:
    """Subject-conditioned generator of annual velocity fields (see the module docstring).

    Args:
        grid_spacing_mm: the working grid the images live on (mm).
        field_spacing_mm: the field grid of the generated velocities (mm).
        channels: UNet channels per level (MONAI ``DiffusionModelUNet``).
        num_inference_steps: DDIM steps when sampling.
        seed: training seed.
        sample_spread: factor on each sample's deviation from the mean of its draws (1 = raw
            samples); fitted after training by :func:`neurocast.progress.calibration.calibrate_spread`
            and stored in the model card.

    Attributes (after :meth:`fit` or :meth:`load`):
        network_: the EMA :class:`~neurocast.backbone.DiffusionBackbone`.
        config_: its :class:`~neurocast.backbone.BackboneConfig`.
        field_shape_: (x, y, z) of the field grid.
        training_summary_: what it was trained on (subjects, pairs, hash, source).
        history_: training loss log.
    """

    def __init__(
        self,
        *,
        grid_spacing_mm: float = 2.0,
        field_spacing_mm: float = DEFAULT_FIELD_SPACING_MM,
        channels: Sequence[int] = (8, 16, 32),
        num_inference_steps: int = 10,
        seed: int = 0,
        sample_spread: float = 1.0,
    ) -> None:
        from neurocast.backbone.config import check_channels

        if not sample_spread > 0:
            raise ValueError(f"sample_spread must be > 0, got {sample_spread}")
        self.grid_spacing_mm = float(grid_spacing_mm)
        self.sample_spread = float(sample_spread)
        self.field_spacing_mm = float(field_spacing_mm)
        self.channels = tuple(int(c) for c in channels)
        check_channels(self.channels)
        self.num_inference_steps = int(num_inference_steps)
        self.seed = int(seed)

    # ------------------------------------------------------------------ data
    def grid_field_shape(self, image_shape: Sequence[int], spacing_mm: float | None = None) -> tuple[int, int, int]:
        """The field grid over a working grid of ``image_shape`` with voxels of ``spacing_mm``
        (default: the model's working grid). The field grid covers the same box whatever the
        working grid's spacing, so a model serves images on the 2 mm or the 4 mm grid alike."""
        return field_shape(image_shape, spacing_mm or self.grid_spacing_mm, self.field_spacing_mm)

    def prepare(
        self,
        subjects: Iterable[LongitudinalSubject | PreparedSubject],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> list[PreparedSubject]:
        """Put subjects on the field grid (cached per subject in ``cache_dir`` when given)."""
        from tqdm.auto import tqdm

        out: list[PreparedSubject] = []
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        for s in tqdm(subjects, desc="prepare", unit="subject", disable=not progress):
            if isinstance(s, PreparedSubject):
                out.append(s)
                continue
            shape = self.grid_field_shape(s.visits[0].image.shape, s.spacing_mm)
            key = f"{s.participant_id}_{self.field_spacing_mm:g}mm_{len(s.visits)}v.npz"
            if cache is not None and (cache / key).is_file():
                out.append(PreparedSubject.load(cache / key))
                continue
            prepared = prepare_subject(s, shape)
            if cache is not None:
                prepared.save(cache / key)
            out.append(prepared)
        return out

    def _config(self, items: list[dict[str, Any]], shape: tuple[int, int, int]) -> Any:
        from neurocast.backbone import BackboneConfig, CovariateSpec, fit_covariates

        columns = {n: [_categorical_key(it["covariates"].get(n)) for it in items] for n in CONTINUOUS + CATEGORICAL}
        known = {n for n, vals in columns.items() if any(v is not None for v in vals)}
        fitted = {
            s.name: s
            for s in fit_covariates({n: columns[n] for n in known}, continuous=[n for n in CONTINUOUS if n in known],
                                    categorical=[n for n in CATEGORICAL if n in known])
        }  # fmt: skip
        # a covariate never seen in training (e.g. no subject with history) keeps its learned null
        defaults = {"history_years": CovariateSpec.continuous("history_years", 1.0, 1.0),
                    "sex": CovariateSpec.categorical("sex", ("F", "M")),
                    "diagnosis": CovariateSpec.categorical("diagnosis", ("AD", "CN", "MCI")),
                    "apoe4": CovariateSpec.categorical("apoe4", (0, 1, 2))}  # fmt: skip
        specs = tuple(
            fitted.get(n) or defaults.get(n) or CovariateSpec.continuous(n) for n in CONTINUOUS + CATEGORICAL
        )
        targets = torch.stack([it["target"] for it in items])
        scale = float(targets.pow(2).mean().sqrt()) or 1.0
        return BackboneConfig(
            spatial_dims=3, target_channels=3, image_condition_channels=CONDITION_CHANNELS,
            channels=self.channels, covariates=specs, target_scale=scale,
            num_inference_steps=self.num_inference_steps,
            extra={
                "model": MODEL_KIND, "grid_spacing_mm": self.grid_spacing_mm,
                "field_spacing_mm": self.field_spacing_mm, "field_shape": list(shape),
                "target": "annual stationary velocity (field voxels / year)",
                "condition": ["image (normalised, field grid)", "history velocity x3 (/ target_scale)"],
            },
        )  # fmt: skip

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        subjects: Iterable[LongitudinalSubject | PreparedSubject],
        *,
        n_steps: int = 2000,
        batch_size: int = 16,
        lr: float = 1e-3,
        out_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        data_summary: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> ProgressionModel:
        """Train on every pair of visits of ``subjects``.

        Args:
            subjects: longitudinal subjects (or already prepared ones).
            n_steps, batch_size, lr: optimisation (AdamW with EMA, see :func:`neurocast.backbone.train`).
            out_dir: where the training checkpoint and ``metrics.jsonl`` go (resumable).
            resume: continue from ``out_dir/checkpoint``.
            cache_dir: cache of prepared subjects.
            data_summary: extra description of the data for the model card.
            progress: progress bars.

        Returns:
            ``self``.

        Raises:
            ValueError: no usable pair of visits.
        """
        from neurocast.backbone import build_backbone, train

        prepared = self.prepare(subjects, cache_dir=cache_dir, progress=progress)
        items0 = training_pairs(prepared, 1.0)
        if not items0:
            raise ValueError("no pair of visits to train on (each subject needs >= 2 visits >= 3 months apart)")
        shape = tuple(int(s) for s in prepared[0].images.shape[2:])
        cfg = self._config(items0, shape)
        items = training_pairs(prepared, cfg.target_scale)
        for it in items:
            it["covariates"] = {k: _categorical_key(v) for k, v in it["covariates"].items()}
        digest = hashlib.sha256()
        for p in prepared:
            digest.update(p.participant_id.encode())
            digest.update(p.fields.numpy().tobytes())
            digest.update(p.images.numpy().tobytes())
        summary = {
            "n_subjects": len(prepared), "n_pairs": len(items),
            "participants": [p.participant_id for p in prepared], "sha256": digest.hexdigest(),
            **dict(data_summary or {}),
        }  # fmt: skip
        torch.manual_seed(self.seed)
        net = build_backbone(cfg)
        train_items = [{k: it[k] for k in ("target", "condition", "covariates")} for it in items]
        result = train(
            net, train_items, n_steps=n_steps, batch_size=batch_size, lr=lr, seed=self.seed,
            out_dir=out_dir, resume=resume, progress=progress, data_summary=summary,
            fingerprint_data=False, checkpoint_every=max(100, n_steps // 10) if out_dir else None,
        )  # fmt: skip
        self.network_ = result.ema_model.eval()
        self.config_ = cfg
        self.field_shape_ = shape
        self.training_summary_ = summary
        self.history_ = result.history
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, metrics: Mapping[str, Any] | None = None, note: str | None = None) -> Path:
        """Write the EMA weights (safetensors) and the model card (JSON) to the folder ``path``.

        A loaded model keeps its card's note, metrics and calibration unless given new ones."""
        from neurocast.backbone import save_checkpoint

        self._check_fitted()
        old = getattr(self, "card_", {})
        extra = {**old.get("extra", {}), "model": MODEL_KIND, "seed": self.seed, "sample_spread": self.sample_spread}
        if getattr(self, "spread_calibration_", None) is not None:
            extra["spread_calibration"] = self.spread_calibration_
        if old.get("training", {}).get("step") is not None:
            extra["training_step"] = old["training"]["step"]
        if note:
            extra["note"] = note
        if metrics is None and old.get("metrics"):
            metrics = old["metrics"]
        return save_checkpoint(path, self.network_, seed=self.seed, data_summary=self.training_summary_,
                               metrics=metrics, card_extra=extra)  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ProgressionModel:
        """Load a saved model (verified, never unpickled).

        Raises:
            neurocast.errors.CheckpointError: missing, tampered or not a progression model.
        """
        from neurocast.backbone import load_backbone, read_model_card
        from neurocast.errors import CheckpointError

        net = load_backbone(path, device=device)
        cfg = net.config
        if cfg.extra.get("model") != MODEL_KIND or cfg.image_condition_channels != CONDITION_CHANNELS:
            raise CheckpointError(f"{path}: not a neurocast progression model (model={cfg.extra.get('model')!r})")
        card = read_model_card(path)
        m = cls(
            grid_spacing_mm=cfg.extra["grid_spacing_mm"], field_spacing_mm=cfg.extra["field_spacing_mm"],
            channels=cfg.channels, num_inference_steps=cfg.num_inference_steps,
            seed=int(card.get("seed") or 0), sample_spread=float(card.get("extra", {}).get("sample_spread", 1.0)),
        )  # fmt: skip
        m.spread_calibration_ = card.get("extra", {}).get("spread_calibration")
        m.network_ = net
        m.config_ = cfg
        m.field_shape_ = tuple(cfg.extra["field_shape"])
        m.training_summary_ = dict(card.get("training", {}).get("data_summary") or {})
        m.history_ = []
        m.card_ = card
        m.path_ = Path(path)
        return m

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise RuntimeError("this ProgressionModel is not fitted: call fit() or ProgressionModel.load()")

    # ------------------------------------------------------------------ sampling
    def sample_annual_velocity(
        self,
        condition: torch.Tensor,
        covariates: Sequence[Mapping[str, Any]],
        *,
        n_samples: int = 8,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        spread: float | None = None,
    ) -> torch.Tensor:
        """Sample annual velocity fields.

        Args:
            condition: (B, 4, x, y, z) from :func:`neurocast.progress.visits.condition_channels`.
            covariates: one mapping per condition (the horizon under ``years``).
            n_samples: samples per condition. The same initial noise is used for every condition,
                so sample ``k`` of two horizons of one subject is one coherent trajectory.
            seed: sampling seed.
            num_inference_steps: DDIM steps (default: the model's).
            guidance_scale: classifier-free guidance (1 = none).
            spread: the sample-spread factor (default: :attr:`sample_spread`).

        Returns:
            (B, n_samples, 3, x, y, z) annual velocities in field voxels per year, each sample's
            deviation from the mean of the ``n_samples`` draws scaled by ``spread``.
        """
        from neurocast.backbone import sample

        self._check_fitted()
        b = condition.shape[0]
        cov = [{k: _categorical_key(v) for k, v in c.items()} for c in covariates]
        columns = {k: [c.get(k) for c in cov] for k in set().union(*cov)} if cov else None
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((n_samples, 3, *condition.shape[2:]), generator=g)
        out = sample(
            self.network_, condition=condition.repeat_interleave(n_samples, 0),
            covariates={k: [v for v in vals for _ in range(n_samples)] for k, vals in columns.items()} if columns else None,
            num_inference_steps=num_inference_steps or self.num_inference_steps,
            guidance_scale=guidance_scale, generator=g, noise=noise.repeat(b, 1, 1, 1, 1),
            batch_size=SAMPLE_BATCH,
        )  # fmt: skip
        return inflate(out.reshape(b, n_samples, 3, *condition.shape[2:]), self.sample_spread if spread is None else float(spread), dim=1)

    def card(self) -> dict[str, Any]:
        """The model card (loaded models) or a summary (fitted ones)."""
        return getattr(self, "card_", {"config": json.loads(self.config_.to_json()), "training_data": self.training_summary_})


__all__ = ["CATEGORICAL", "CONTINUOUS", "MODEL_KIND", "ProgressionModel", "inflate"]
