"""The anomaly detector: a healthy-trained diffusion backbone that reconstructs, and what it cannot.

:class:`AnomalyDetector` is estimator-style (``fit`` returns ``self``; fitted attributes end in
``_``):

1. :meth:`~AnomalyDetector.fit` trains the backbone (:mod:`neurocast.backbone`) on axial slices of
   healthy scans on the working grid (:mod:`neurocast.anomaly.training`);
2. :meth:`~AnomalyDetector.calibrate` scores healthy reference scans (not used for training) and
   sets the thresholds at the chosen false-positive rate (:mod:`neurocast.anomaly.calibration`),
   with the artefact features read against the references' lines on their noise level
   (:mod:`neurocast.anomaly.scores`); given each reference's participant (``groups``), a
   reference is scored against the other participants' references only;
   :meth:`~AnomalyDetector.calibrate_residuals` does the same from residual maps already computed;
3. :meth:`~AnomalyDetector.score` reconstructs a scan from partially noised copies, turns the
   residual into a residual map (:mod:`neurocast.anomaly.maps`), divides it by how far its
   median stands above the highest of the healthy references' (``level_scaling``; 1 for scans
   within their range: a scan-wide raise is the artefact score's evidence, not a lesion's),
   standardises it voxel by voxel against the healthy references of the calibration into the
   anomaly map (:mod:`neurocast.anomaly.normative`), scores it
   (:mod:`neurocast.anomaly.scores`) and flags it (:meth:`~AnomalyDetector.judge_residual` from
   a residual map already computed); the map is also brought back to the scan's native grid;
4. :meth:`~AnomalyDetector.save` / :meth:`~AnomalyDetector.load`: a backbone checkpoint folder
   (safetensors + ``model_card.json``) whose card holds the detector's settings, grid and
   calibration under ``extra.anomaly``; the references' mean and spread maps are in
   ``extra.safetensors``.

**Why 2-D axial slices on the 2 mm grid.** The targets are tumours of 6-25 mm radius and Dice
against their masks, so the map needs the 2 mm grid (a 4 mm grid leaves a 6 mm tumour a handful
of voxels). On 2 CPU cores a 3-D UNet at 2 mm is out of reach for training and too slow for
inference, while a 2-D UNet turns every scan into ~70 training images and runs all slices of a
scan in one batch. A 2.5-D input (neighbouring slices as condition channels) would let the
network copy the anomaly from the slices above and below, so the only image condition is the
subject's prior; the slice's position enters as a covariate. The grid spacing is a setting
(``grid_spacing_mm``), recorded in the model card: a 4 mm model is ~4x faster.

**Reconstruction.** For each noise level ``L`` in ``noise_levels`` (fractions of the DDPM chain;
Gaussian noise), every brain slice is noised to ``t = L T`` and denoised with
``num_inference_steps`` DDIM steps (:func:`neurocast.backbone.reconstruct`, EMA weights, the
prior as condition where given; the network runs in bfloat16 under ``torch.autocast``, see
``inference_dtype``); the residual is the mean over levels of ``|x - x_hat|``. Low
levels keep fine anatomy, high levels remove large lesions; combining them covers both.
``draws`` repeats each level with fresh noise and ``average="reconstructions"`` takes
``|x - mean(x_hat)|`` instead; neither is the default, because on the development cohort
neither moved the tumour figures by more than one visit does (``BENCHMARKS.md``, session 22):
what the healthy residual holds is the network's systematic error, not its noise. The
default is one step per level (the v-prediction network's direct estimate of the clean slice):
each network pass over a scan's ~70 slices at 2 mm costs seconds on 2 CPU cores, and in the
quick benchmark run (``benchmarks/anomaly_benchmark.py --quick``, a short-trained model) the
multi-step chain left more noise in the reconstruction than the direct estimate did.

Example (a tiny model on tiny volumes, so the numbers are meaningless):
    >>> import numpy as np
    >>> from neurocast.anomaly import AnomalyDetector, Scan
    >>> rng = np.random.default_rng(0)
    >>> def healthy(i):
    ...     v = np.zeros((16, 16, 8), np.float32); v[3:13, 3:13, 1:7] = 0.8
    ...     return Scan.from_arrays(v + rng.normal(0, 0.02, v.shape).astype(np.float32), v > 0)
    >>> det = AnomalyDetector(channels=(8, 16), n_steps=2, batch_size=4, noise_levels=(0.2,),
    ...                       min_component_mm3=8).fit([healthy(i) for i in range(2)])
    >>> det = det.calibrate([healthy(i) for i in range(4)])
    >>> det.score(healthy(9)).flag in ("pass", "review-lesion", "review-artefact")
    True
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

import nibabel as nib
import numpy as np
import torch

from neurocast.anomaly.calibration import (
    Calibration,
    calibrate_scores,
    per_score_rate,
    threshold_at_rate,
    voxel_thresholds_from_maps,
)
from neurocast.anomaly.iqm import IQMResult
from neurocast.anomaly.maps import Component, anomaly_map, dilated_mask, eroded_mask, grown_mask
from neurocast.anomaly.normative import RULE as NORMATIVE_RULE
from neurocast.anomaly.normative import NormativeMaps
from neurocast.anomaly.scan import Scan
from neurocast.anomaly.scores import (
    ARTEFACT_SCORE_RULE,
    LESION_EVIDENCE,
    LESION_SCORE_RULE,
    NOISE_ADJUSTED_SCORE_RULE,
    SPIKE_FEATURE,
    artefact_features,
    artefact_score,
    combined_lesion_score,
    feature_zscores,
    fit_noise_lines,
    image_noise_sd,
    largest_cluster_share,
    leave_one_out_artefact_scores,
    lesion_evidence,
    level_scale,
    noise_adjusted_features,
    reference_statistics,
    summarise,
)
from neurocast.anomaly.training import (
    SliceDataset,
    brain_slices,
    covariate_specs,
    from_model,
    slice_inputs,
)
from neurocast.backbone import (
    BackboneConfig,
    build_backbone,
    check_channels,
    checkpoint_id,
    load_backbone,
    load_extra_tensors,
    read_model_card,
    reconstruct,
    save_checkpoint,
    train,
)
from neurocast.backbone.training import MixedPrecision
from neurocast.errors import CheckpointError
from neurocast.registration.template import Grid

FORMAT = "neurocast-anomaly"
"""``extra.anomaly.format`` of an anomaly detector's model card."""
FORMAT_VERSION = 1

_PARAMS = (
    "channels", "num_res_blocks", "noise_levels", "num_inference_steps", "n_steps", "batch_size",
    "lr", "warmup_steps", "prior_drop_prob", "min_brain_fraction", "erosion_mm", "median_size",
    "min_component_mm3", "voxel_quantile", "grow_quantile", "mask_dilation_mm", "fpr", "inference_batch_size", "inference_dtype", "seed",
    "mixed_precision", "normative", "normative_smoothing_mm", "normative_floor", "level_scaling",
    "draws", "average",
)  # fmt: skip
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_AVERAGES = ("residuals", "reconstructions")
_DRAW_SEED_STRIDE = 7919
"""Seed offset between noise draws (draw 0 uses ``seed + level index``, as before draws existed)."""

log = logging.getLogger(__name__)


@dataclass
class ResidualJudgement:
    """What :meth:`AnomalyDetector.judge_residual` returns: a scan's verdict from its residual map.

    Attributes:
        anomaly_map: ``(X, Y, Z)`` float32 on the detector's grid, zero outside the eroded brain
            mask: the residual map standardised against the healthy references (healthy
            standard deviations, :mod:`neurocast.anomaly.normative`), or, for a detector
            calibrated without them, the residual map itself (normalised intensity units).
        components: supra-threshold clusters, largest mass first.
        features: the artefact features as read (:func:`~neurocast.anomaly.scores.artefact_features`).
        feature_z: the artefact features' robust z-scores against the references, as the
            artefact score reads them (noise-adjusted where the calibration has noise lines).
        noise_sd: the scan's image noise SD
            (:func:`~neurocast.anomaly.scores.image_noise_sd`; ``NaN`` when not given).
        lesion_score, artefact_score: the two scores (see :mod:`neurocast.anomaly.scores`).
        flag: ``pass``, ``review-lesion`` or ``review-artefact``.
        percentile: percentile of the deciding score among the healthy references (%).
        lesion_percentile, artefact_percentile: both percentiles.
        level_scale: the factor the residual map was divided by before standardisation
            (:func:`~neurocast.anomaly.scores.level_scale`; 1 without ``level_scaling``).
        lesion_evidence: the readings the lesion score combines: ``mass`` of the largest cluster
            and ``peak`` of the map (:func:`~neurocast.anomaly.scores.lesion_evidence`).
        largest_share: the share (0-1) of the clusters' mass in the largest one
            (:func:`~neurocast.anomaly.scores.largest_cluster_share`; ``NaN`` without clusters):
            when both scores are over their thresholds, it decides which one the flag names.
    """

    anomaly_map: np.ndarray
    components: list[Component]
    features: dict[str, float]
    feature_z: dict[str, float]
    noise_sd: float
    lesion_score: float
    artefact_score: float
    flag: str
    percentile: float
    lesion_percentile: float
    artefact_percentile: float
    level_scale: float
    lesion_evidence: dict[str, float]
    largest_share: float


@dataclass
class AnomalyResult(ResidualJudgement):
    """What :meth:`AnomalyDetector.score` returns for one scan: its :class:`ResidualJudgement`
    and more.

    Attributes:
        mask: ``(X, Y, Z)`` bool: the clusters of the map above the calibrated voxel threshold
            (smaller ones than the detector's ``min_component_mm3`` removed), grown into the
            connected voxels above the grow threshold (:meth:`AnomalyDetector.mask_of`).
        reconstruction: the pseudo-healthy image (mean over noise levels), on ``grid``.
        grid: the working grid.
        iqms: the scan's MRIQC metrics (``None`` if not computed).
        used_prior: whether an earlier scan conditioned the reconstruction.
        native_map: the anomaly map resampled to the scan's native grid (``None`` without one).
        seconds: time spent (reconstruction and scoring).
        over_threshold: the scores above their calibrated thresholds (``"lesion"``,
            ``"artefact"``, ``"spike"``; :meth:`~neurocast.anomaly.calibration.Calibration.over_thresholds`):
            the flag names one of them when both are.
    """

    mask: np.ndarray
    reconstruction: np.ndarray
    grid: Grid
    iqms: IQMResult | None = None
    used_prior: bool = False
    native_map: nib.Nifti1Image | None = None
    seconds: float = 0.0
    over_threshold: tuple[str, ...] = ()

    def map_image(self) -> nib.Nifti1Image:
        """The anomaly map as a NIfTI image in template space."""
        return self.grid.image(self.anomaly_map.astype(np.float32))

    def mask_image(self) -> nib.Nifti1Image:
        """The binary mask as a uint8 NIfTI image in template space."""
        return self.grid.image(self.mask.astype(np.uint8), dtype=np.uint8)

    def reconstruction_image(self) -> nib.Nifti1Image:
        """The reconstruction as a NIfTI image in template space."""
        return self.grid.image(self.reconstruction.astype(np.float32))

    def summary(self) -> dict[str, Any]:
        """JSON-ready scores, flag, percentiles, clusters and IQMs (``NaN`` as ``None``)."""

        def num(v: float) -> float | None:
            return float(v) if v is not None and math.isfinite(v) else None

        return {
            "flag": self.flag,
            "over_threshold": list(self.over_threshold),
            "percentile": num(self.percentile),
            "lesion_score": num(self.lesion_score),
            "lesion_percentile": num(self.lesion_percentile),
            "artefact_score": num(self.artefact_score),
            "artefact_percentile": num(self.artefact_percentile),
            "anomaly_volume_mm3": float(self.mask.sum() * self.grid.voxel_volume_mm3),
            "level_scale": num(self.level_scale),
            "lesion_evidence": summarise(self.lesion_evidence),
            "largest_cluster_share": num(self.largest_share),
            "used_prior": self.used_prior,
            "artefact_features": summarise(self.features),
            "artefact_feature_z": summarise(self.feature_z),
            "noise_sd": num(self.noise_sd),
            "clusters": [c.to_dict() for c in self.components[:5]],
            "iqms": self.iqms.to_dict() if self.iqms is not None else None,
        }


def _grid_to_json(grid: Grid) -> dict[str, Any]:
    return {"shape": list(grid.shape), "affine": np.asarray(grid.affine).tolist()}


def _grid_from_json(d: dict[str, Any]) -> Grid:
    return Grid(tuple(int(s) for s in d["shape"]), np.asarray(d["affine"], dtype=float))  # type: ignore[arg-type]


class AnomalyDetector:
    """Reconstruction-based anomaly detector on the diffusion backbone (see the module docstring).

    Args:
        channels: UNet feature channels per level (multiples of 8).
        num_res_blocks: residual blocks per level.
        noise_levels: partial-noising levels, fractions of the chain in (0, 1).
        num_inference_steps: DDIM steps per noise level (1 = direct prediction of the clean
            slice).
        draws: independent noise draws per level (each one more network pass over the scan).
        average: how the reconstructions of all levels and draws make the residual:
            ``"residuals"`` (default) is the mean of ``|x - x_hat|``; ``"reconstructions"`` is
            ``|x - mean(x_hat)|``, which cancels reconstruction noise of opposite signs (healthy
            tissue) and keeps a residual all reconstructions agree on (a lesion).
        n_steps, batch_size, lr, warmup_steps: training (optimizer steps, slices per step, AdamW).
        mixed_precision: training precision, as :func:`neurocast.backbone.train`'s: ``"auto"``
            (bfloat16 or float16 on CUDA, float32 on CPU), ``"bf16"`` (also on CPU: about 2.7x
            faster per step on CPUs with AMX) or ``"no"``.
        prior_drop_prob: share of prior-carrying training slices also shown without the prior.
        min_brain_fraction: training slices need at least this share of brain.
        erosion_mm, median_size: post-processing (:func:`neurocast.anomaly.maps.anomaly_map`).
        normative: standardise the map voxel by voxel against the calibration's healthy
            references (:mod:`neurocast.anomaly.normative`; default); ``False`` keeps the
            residual map, in normalised intensity units.
        normative_smoothing_mm, normative_floor: the references' smoothing (mm) and the ``sd``
            floor (fraction of its median), see :class:`~neurocast.anomaly.normative.NormativeMaps`.
        level_scaling: divide each residual map by how far the scan's diffuse residual level
            (median over the region) stands above the highest level among the healthy
            references (:func:`~neurocast.anomaly.scores.level_scale`, never below 1) before the
            map is standardised and the lesion evidence read, so that a scan-wide raise beyond
            anything healthy (another scanner, motion) is left to the artefact score and not
            read as a lesion. References are scaled the same way at calibration, each against
            the other groups' highest level.
        min_component_mm3: clusters smaller than this are removed from masks and scores.
        voxel_quantile: quantile of healthy map values that sets the voxel threshold.
        grow_quantile: quantile of healthy map values the mask's clusters grow into
            (:func:`~neurocast.anomaly.maps.grown_mask`; ``None``: no growth, the mask is the
            clusters above the voxel threshold).
        mask_dilation_mm: the grown mask is dilated by this radius (mm) inside the brain
            (:func:`~neurocast.anomaly.maps.dilated_mask`; ``0``: no dilation). The lesion score
            and the flags do not depend on it.
        fpr: per-scan false-positive rate of the calibration.
        inference_batch_size: slices per network call when reconstructing.
        inference_dtype: ``"bfloat16"`` (default) runs the network under ``torch.autocast`` in
            bfloat16 when reconstructing: about 3x faster on CPUs with AMX / AVX512-BF16, with
            reconstructions within ~0.3 % of float32's (mean absolute difference relative to the
            signal); ``"float32"`` for full precision. Calibration uses the same setting as
            scoring, so the thresholds fit the maps they are applied to.
        seed: training seed (weights, data order, noise) and reconstruction noise.
        device: torch device (default: CUDA if available, else CPU).
        progress: show progress bars.

    Fitted attributes: ``model_`` (the EMA backbone), ``config_``, ``grid_``, ``history_``,
    ``training_`` (data summary), ``calibration_`` and ``normative_`` (after :meth:`calibrate`; the
    reference maps, ``None`` when the map is not standardised), ``model_card_sha256_`` (after
    :meth:`load`/:meth:`save`).
    """

    def __init__(
        self,
        *,
        channels: Sequence[int] = (16, 32, 64),
        num_res_blocks: int = 1,
        noise_levels: Sequence[float] = (0.2, 0.4),
        num_inference_steps: int = 1,
        n_steps: int = 2000,
        batch_size: int = 16,
        lr: float = 2e-4,
        warmup_steps: int = 50,
        prior_drop_prob: float = 0.5,
        min_brain_fraction: float = 0.02,
        erosion_mm: float = 4.0,
        median_size: int = 3,
        min_component_mm3: float = 64.0,
        voxel_quantile: float = 0.999,
        grow_quantile: float | None = 0.99,
        mask_dilation_mm: float = 2.0,
        fpr: float = 0.05,
        inference_batch_size: int = 32,
        inference_dtype: str = "bfloat16",
        seed: int = 0,
        mixed_precision: str = "auto",
        normative: bool = True,
        normative_smoothing_mm: float = 2.0,
        normative_floor: float = 0.1,
        level_scaling: bool = True,
        draws: int = 1,
        average: str = "residuals",
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        self.channels = tuple(int(c) for c in channels)
        self.num_res_blocks = int(num_res_blocks)
        self.noise_levels = tuple(float(v) for v in noise_levels)
        if not self.noise_levels or not all(0.0 < v < 1.0 for v in self.noise_levels):
            raise ValueError(f"noise levels must be in (0, 1), got {self.noise_levels}")
        self.num_inference_steps = int(num_inference_steps)
        self.n_steps = int(n_steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.prior_drop_prob = float(prior_drop_prob)
        self.min_brain_fraction = float(min_brain_fraction)
        self.erosion_mm = float(erosion_mm)
        self.median_size = int(median_size)
        self.min_component_mm3 = float(min_component_mm3)
        self.voxel_quantile = float(voxel_quantile)
        if grow_quantile is not None and not 0.0 < grow_quantile < self.voxel_quantile:
            raise ValueError(
                f"grow_quantile must be in (0, voxel_quantile={self.voxel_quantile}) or None, got {grow_quantile}"
            )
        self.grow_quantile = None if grow_quantile is None else float(grow_quantile)
        if not (math.isfinite(mask_dilation_mm) and mask_dilation_mm >= 0):
            raise ValueError(f"mask_dilation_mm must be a finite number >= 0, got {mask_dilation_mm}")
        self.mask_dilation_mm = float(mask_dilation_mm)
        self.fpr = float(fpr)
        self.inference_batch_size = int(inference_batch_size)
        if inference_dtype not in _DTYPES:
            raise ValueError(f"inference_dtype must be one of {sorted(_DTYPES)}, got {inference_dtype!r}")
        self.inference_dtype = str(inference_dtype)
        self.seed = int(seed)
        if mixed_precision not in get_args(MixedPrecision):
            raise ValueError(
                f"mixed_precision must be one of {get_args(MixedPrecision)}, got {mixed_precision!r}"
            )
        self.mixed_precision = str(mixed_precision)
        self.normative = bool(normative)
        self.normative_smoothing_mm = float(normative_smoothing_mm)
        self.normative_floor = float(normative_floor)
        self.level_scaling = bool(level_scaling)
        if int(draws) < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        self.draws = int(draws)
        if average not in _AVERAGES:
            raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
        self.average = str(average)
        self.device = device
        self.progress = bool(progress)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr}")
        if self.n_steps < 1 or self.batch_size < 1:
            raise ValueError(f"n_steps and batch_size must be >= 1, got {n_steps} and {batch_size}")
        check_channels(self.channels)

    # ------------------------------------------------------------------ params
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (JSON-ready, without ``device`` and ``progress``)."""
        out: dict[str, Any] = {}
        for k in _PARAMS:
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def __repr__(self) -> str:
        fitted = "fitted" if hasattr(self, "model_") else "not fitted"
        cal = ", calibrated" if getattr(self, "calibration_", None) is not None else ""
        return f"AnomalyDetector(channels={self.channels}, noise_levels={self.noise_levels}; {fitted}{cal})"

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("this AnomalyDetector is not fitted: call fit() or load() first")

    def _check_grid(self, scan: Scan) -> None:
        if scan.grid != self.grid_:
            raise ValueError(
                f"scan grid {scan.grid.shape} @ {scan.grid.spacing_mm} mm differs from the "
                f"detector's {self.grid_.shape} @ {self.grid_.spacing_mm} mm: preprocess with "
                "the detector's grid"
            )

    def _min_voxels(self) -> int:
        return max(1, round(self.min_component_mm3 / self.grid_.voxel_volume_mm3))

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ------------------------------------------------------------------ fit
    def backbone_config(self) -> BackboneConfig:
        """The backbone configuration this detector trains (2-D, one prior channel, covariates)."""
        return BackboneConfig(
            spatial_dims=2,
            target_channels=1,
            image_condition_channels=1,
            channels=self.channels,
            num_res_blocks=self.num_res_blocks,
            covariates=covariate_specs(),
            cond_drop_prob=0.0,
            cond_drop_all_prob=0.0,
            num_inference_steps=self.num_inference_steps,
            extra={"model": FORMAT},
        )

    def fit(
        self,
        scans: Sequence[Scan],
        *,
        out_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        data_summary: dict[str, Any] | None = None,
        max_seconds: float | None = None,
        init: AnomalyDetector | None = None,
    ) -> AnomalyDetector:
        """Train the backbone on healthy scans (their priors, where set, are used).

        Args:
            scans: healthy :class:`Scan` objects on one grid.
            out_dir: optional folder for training logs and a resumable checkpoint.
            resume: resume from ``out_dir/checkpoint``.
            data_summary: description of the training data for the model card.
            max_seconds: stop training after this wall-clock time (s) even if ``n_steps`` are
                not done; ``n_steps`` (and ``training_["steps"]``) then become the steps actually
                taken, so the model card says what was done.
            init: a fitted detector of the same configuration whose weights training starts from
                (fine-tuning; the optimizer starts afresh). ``training_["init"]`` records its
                model-card hash and steps.

        Returns:
            ``self``.
        """
        if not scans:
            raise ValueError("fit needs at least one healthy scan")
        grid = scans[0].grid
        dataset = SliceDataset(
            scans,
            min_brain_fraction=self.min_brain_fraction,
            prior_drop_prob=self.prior_drop_prob,
            seed=self.seed,
        )
        cfg = self.backbone_config()
        torch.manual_seed(self.seed)
        net = build_backbone(cfg)
        if init is not None:
            init._check_fitted()
            if init.model_.config.to_dict() != cfg.to_dict():
                raise ValueError("init: its backbone configuration differs from this detector's")
            net.load_state_dict(init.model_.state_dict())
        summary = {
            "n_scans": len(scans),
            "n_scans_with_prior": sum(s.has_prior for s in scans),
            "n_slices": len(dataset),
            "n_slices_with_prior": dataset.n_with_prior,
            "sources": [s.source for s in scans if s.source],
            **(data_summary or {}),
        }
        result = train(
            net,
            dataset,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=min(self.warmup_steps, max(0, self.n_steps // 5)),
            seed=self.seed,
            device=self._device(),
            mixed_precision=self.mixed_precision,  # type: ignore[arg-type]
            out_dir=out_dir,
            resume=resume,
            progress=self.progress,
            log_every=max(1, self.n_steps // 100),
            data_summary=summary,
            max_seconds=max_seconds,
        )
        self.model_ = result.ema_model.eval()
        self.config_ = cfg
        self.grid_ = grid
        self.history_ = result.history
        self.training_ = {"data_summary": summary, "steps": result.step}
        self.n_steps = int(result.step)
        if init is not None:
            self.training_["init"] = {
                "model_card_sha256": getattr(init, "model_card_sha256_", None),
                "steps": init.training_.get("steps"),
            }
        self.calibration_: Calibration | None = None
        self.normative_: NormativeMaps | None = None
        return self

    # ------------------------------------------------------------------ maps
    @torch.no_grad()
    def reconstruct(self, scan: Scan, *, use_prior: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-healthy reconstruction and residual of a scan.

        Returns:
            ``(reconstruction, residual)``, both ``(X, Y, Z)`` float32 in normalised units: the mean
            reconstruction over the noise levels (the input itself on slices without brain) and
            the mean ``|x - x_hat|`` over the levels (zero on slices without brain).
        """
        self._check_fitted()
        self._check_grid(scan)
        idx = brain_slices(scan.brain_mask)
        recon = scan.image.copy()
        residual = np.zeros_like(scan.image)
        if idx.size == 0:
            return recon, residual
        x, cond, covs = slice_inputs(scan, idx, use_prior=use_prior)
        dev = next(self.model_.parameters()).device
        rec_sum = torch.zeros_like(x)
        res_sum = torch.zeros_like(x)
        for d in range(self.draws):
            for i, level in enumerate(self.noise_levels):
                r = reconstruct(
                    self.model_,
                    x.to(dev),
                    level,
                    condition=cond.to(dev),
                    covariates=covs,
                    num_inference_steps=self.num_inference_steps,
                    seed=self.seed + i + _DRAW_SEED_STRIDE * d,
                    batch_size=self.inference_batch_size,
                    autocast=_DTYPES[self.inference_dtype],
                ).cpu()
                rec_sum += r
                res_sum += (x - r).abs()
        n = len(self.noise_levels) * self.draws
        mean_rec = rec_sum / n
        mean_res = (x - mean_rec).abs() if self.average == "reconstructions" else res_sum / n
        rec = from_model(mean_rec)[:, 0].numpy()
        res = mean_res[:, 0].numpy() * 0.5  # network units are twice the normalised ones
        recon[:, :, idx] = np.moveaxis(rec, 0, -1)
        residual[:, :, idx] = np.moveaxis(res, 0, -1)
        return recon.astype(np.float32), residual.astype(np.float32)

    def residual_map(
        self, scan: Scan, *, use_prior: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(residual_map, reconstruction, residual)``: the post-processed residual
        (:func:`neurocast.anomaly.maps.anomaly_map`, normalised intensity units) before any
        standardisation."""
        recon, residual = self.reconstruct(scan, use_prior=use_prior)
        rmap = anomaly_map(
            residual,
            scan.brain_mask,
            spacing=scan.grid.spacing_mm,
            erosion_mm=self.erosion_mm,
            median_size=self.median_size,
        )
        return rmap, recon, residual

    def anomaly_map(
        self, scan: Scan, *, use_prior: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(anomaly_map, reconstruction, residual)`` of a scan: the residual map, standardised
        against the healthy references when the calibration holds them (``normative_``, units:
        healthy standard deviations), else as is (normalised intensity units)."""
        rmap, recon, residual = self.residual_map(scan, use_prior=use_prior)
        return self._standardised(rmap, self.region(scan)), recon, residual

    def _standardised(self, rmap: np.ndarray, region: np.ndarray) -> np.ndarray:
        norm = getattr(self, "normative_", None)
        return rmap if norm is None else norm.transform(rmap, region)

    def region(self, scan: Scan) -> np.ndarray:
        """Where the maps and the artefact features are read: the scan's brain mask eroded by
        ``erosion_mm`` (``(X, Y, Z)`` bool on the detector's grid)."""
        return eroded_mask(scan.brain_mask, self.erosion_mm, scan.grid.spacing_mm)

    # ------------------------------------------------------------------ calibrate
    def calibrate(
        self,
        healthy_scans: Sequence[Scan],
        *,
        fpr: float | None = None,
        groups: Sequence[Any] | None = None,
    ) -> AnomalyDetector:
        """Set the thresholds on healthy reference scans (not used for training).

        Args:
            healthy_scans: healthy references on the detector's grid, with their priors where the
                scans to be screened will have them.
            fpr: false-positive rate (default the constructor's ``fpr``).
            groups: one label per reference (e.g. the participant); see
                :meth:`calibrate_residuals`.

        Returns:
            ``self`` with ``calibration_`` set.
        """
        self._check_fitted()
        if len(healthy_scans) < 2:
            raise ValueError("calibration needs at least two healthy reference scans")
        rmaps, regions, iqms, noise = [], [], [], []
        for s in healthy_scans:
            self._check_grid(s)
            rmap, _, _ = self.residual_map(s)
            region = self.region(s)
            rmaps.append(rmap)
            regions.append(region)
            iqms.append(s.iqms)
            noise.append(image_noise_sd(s.image, region))
        return self.calibrate_residuals(
            rmaps,
            regions,
            iqms,
            fpr=fpr,
            groups=groups,
            references=[s.source or f"scan {i}" for i, s in enumerate(healthy_scans)],
            noise_sds=noise,
        )

    def calibrate_residuals(
        self,
        residual_maps: Sequence[np.ndarray],
        regions: Sequence[np.ndarray],
        iqms: Sequence[IQMResult | None],
        *,
        fpr: float | None = None,
        groups: Sequence[Any] | None = None,
        references: Sequence[str] | None = None,
        noise_sds: Sequence[float] | None = None,
    ) -> AnomalyDetector:
        """:meth:`calibrate` from the references' residual maps (:meth:`residual_map`), e.g. to
        calibrate the same weights on several reference sets without reconstructing again.

        Each reference is scored against the *other* references (the normative maps and the
        artefact features' statistics leave it out), so that its scores spread like a new scan's.
        With ``groups``, a reference is scored against the references of *other* groups only:
        give the participant, so that a subject's other visits (the same anatomy) do not make
        its scans look more typical than a new subject's.

        Args:
            residual_maps: ``(X, Y, Z)`` residual maps on the detector's grid, one per reference.
            regions: their eroded brain masks (:meth:`region`), same shapes.
            iqms: their image quality metrics (``None`` where not computed).
            fpr: false-positive rate (default the constructor's ``fpr``).
            groups: one label per reference (``None``: each reference its own group).
            references: identifiers recorded in the calibration (default ``"scan i"``).
            noise_sds: the references' image noise SDs
                (:func:`~neurocast.anomaly.scores.image_noise_sd` of each prepared image in
                its region), which :meth:`calibrate` gives: the calibration then fits the noise
                lines of the artefact features and scores them noise-adjusted. ``None``: no lines
                (the features are scored as they are).

        Returns:
            ``self`` with ``calibration_`` (and ``normative_``) set.
        """
        self._check_fitted()
        n = len(residual_maps)
        if n < 2:
            raise ValueError("calibration needs at least two healthy reference scans")
        if len(regions) != n or len(iqms) != n:
            raise ValueError("give one region and one IQM result per residual map")
        if groups is not None and len(groups) != n:
            raise ValueError(f"give one group per reference: {len(groups)} groups for {n} references")
        if groups is not None and len(set(groups)) < 2:
            raise ValueError("calibration by groups needs references from at least two groups")
        if noise_sds is not None and len(noise_sds) != n:
            raise ValueError(f"give one image noise SD per reference: {len(noise_sds)} for {n} references")
        feats = [artefact_features(m, r, q) for m, r, q in zip(residual_maps, regions, iqms, strict=True)]
        fpr = self.fpr if fpr is None else float(fpr)
        maps, residual_level, self.normative_ = self._reference_maps(residual_maps, regions, groups)
        quantiles = [self.voxel_quantile] + ([self.grow_quantile] if self.grow_quantile is not None else [])
        vthr, *grow = voxel_thresholds_from_maps(maps, regions, quantiles)
        vv = self.grid_.voxel_volume_mm3
        evidence = [
            lesion_evidence(m, r, vthr, min_voxels=self._min_voxels(), voxel_volume_mm3=vv)[0]
            for m, r in zip(maps, regions, strict=True)
        ]
        rate = per_score_rate(fpr, 2)
        scales = {k: threshold_at_rate([e[k] for e in evidence], rate) for k in LESION_EVIDENCE}
        les = [combined_lesion_score(e, scales) for e in evidence]
        art = leave_one_out_artefact_scores(feats, groups=groups, noise_sds=noise_sds)
        lines = fit_noise_lines(feats, noise_sds) if noise_sds is not None else None
        scored = [noise_adjusted_features(f, x, lines) for f, x in zip(feats, noise_sds or [None] * n, strict=True)]
        names = list(references) if references is not None else [f"scan {i}" for i in range(n)]
        self.calibration_ = calibrate_scores(
            les,
            art,
            fpr=fpr,
            voxel_threshold=vthr,
            voxel_quantile=self.voxel_quantile,
            grow_threshold=grow[0] if grow else float("nan"),
            grow_quantile=self.grow_quantile if grow else float("nan"),
            residual_level=residual_level,
            lesion_scales=scales,
            feature_reference=reference_statistics(scored),
            noise_lines=lines,
            extra={
                "references": names,
                "artefact_score_rule": NOISE_ADJUSTED_SCORE_RULE if lines else ARTEFACT_SCORE_RULE,
                "lesion_score_rule": LESION_SCORE_RULE,
                "map": NORMATIVE_RULE if self.normative_ is not None else "residual",
                "left_out": "group" if groups is not None else "scan",
            },
        )
        spikes = [f[SPIKE_FEATURE] for f in feats]
        if sum(math.isfinite(v) for v in spikes) >= 2:  # scans whose IQMs read the spike metric
            self.calibration_ = self.calibration_.with_spike_references(spikes, groups=groups)
        note = self.calibration_.describe_reference_count()
        if note:
            log.warning(note)
        return self

    def _reference_maps(
        self,
        residual_maps: Sequence[np.ndarray],
        regions: Sequence[np.ndarray],
        groups: Sequence[Any] | None = None,
    ) -> tuple[list[np.ndarray], float | None, NormativeMaps | None]:
        """The references' anomaly maps as :meth:`calibrate_residuals` scores them: each divided
        by its level scale against the other groups' highest level (``level_scaling``), then
        standardised against the other groups' references (``normative``).

        Returns:
            ``(maps, residual_level, normative)``: the maps, the references' highest residual
            level (``None`` without ``level_scaling``) and the normative maps fitted on all
            references (``None`` without ``normative``).
        """
        maps = list(residual_maps)
        residual_level = None
        if self.level_scaling:
            levels = np.array(
                [artefact_features(m, r)["residual_median"] for m, r in zip(maps, regions, strict=True)],
                dtype=np.float64,
            )
            residual_level = float(np.nanmax(levels))
            labels = list(range(len(maps))) if groups is None else list(groups)
            others = [float(np.nanmax(levels[[lab != own for lab in labels]])) for own in labels]
            maps = [m / np.float32(level_scale(lv, ref)) for m, lv, ref in zip(maps, levels, others, strict=True)]
        norm = None
        if self.normative:
            norm = NormativeMaps(self.normative_smoothing_mm, self.normative_floor)
            maps = norm.leave_one_out(maps, regions, self.grid_.spacing_mm, groups=groups)
        return maps, residual_level, norm

    # ------------------------------------------------------------------ score
    def score(self, scan: Scan, *, use_prior: bool = True) -> AnomalyResult:
        """Anomaly map, mask, scores, flag and percentile of one scan.

        Args:
            scan: the scan (its prior, if set, conditions the reconstruction).
            use_prior: ignore the prior when ``False``.
        """
        cal = getattr(self, "calibration_", None)
        if cal is None:
            raise RuntimeError("this AnomalyDetector is not calibrated: call calibrate() first")
        t0 = time.perf_counter()
        rmap, recon, _ = self.residual_map(scan, use_prior=use_prior)
        region = self.region(scan)
        judged = self.judge_residual(rmap, region, scan.iqms, noise_sd=image_noise_sd(scan.image, region))
        amap = judged.anomaly_map
        native = native_map(amap, scan) if scan.has_native else None
        return AnomalyResult(
            **{f.name: getattr(judged, f.name) for f in fields(ResidualJudgement)},
            mask=self.mask_of(amap, within=scan.brain_mask),
            reconstruction=recon,
            grid=scan.grid,
            iqms=scan.iqms,
            used_prior=bool(use_prior and scan.has_prior),
            native_map=native,
            seconds=time.perf_counter() - t0,
            over_threshold=cal.over_thresholds(
                judged.lesion_score, judged.artefact_score, judged.feature_z.get(SPIKE_FEATURE, math.nan)
            ),
        )

    def mask_of(self, anomaly_map: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
        """The binary anomaly mask of an anomaly map at the calibrated thresholds: the clusters
        above the voxel threshold (at least ``min_component_mm3``), grown into the connected
        voxels above the grow threshold (:func:`~neurocast.anomaly.maps.grown_mask`), then
        dilated by ``mask_dilation_mm`` (:func:`~neurocast.anomaly.maps.dilated_mask`).

        Args:
            anomaly_map: ``(X, Y, Z)`` anomaly map on the detector's grid.
            within: ``(X, Y, Z)`` bool, the scan's brain mask: the dilation stays inside it
                (``None``: no limit).
        """
        cal = getattr(self, "calibration_", None)
        if cal is None:
            raise RuntimeError("this AnomalyDetector is not calibrated: call calibrate() first")
        grown = grown_mask(anomaly_map, cal.voxel_threshold, cal.grow_threshold, self._min_voxels())
        return dilated_mask(grown, self.mask_dilation_mm, self.grid_.spacing_mm, within)

    def judge_residual(
        self,
        residual_map: np.ndarray,
        region: np.ndarray,
        iqms: IQMResult | None = None,
        *,
        noise_sd: float | None = None,
    ) -> ResidualJudgement:
        """Scores, flag and percentiles of a scan from its residual map (:meth:`residual_map`),
        without reconstructing: what :meth:`score` does after the reconstruction.

        Args:
            residual_map: ``(X, Y, Z)`` residual map on the detector's grid.
            region: the scan's eroded brain mask (:meth:`region`).
            iqms: the scan's image quality metrics (``None``: the artefact score reads the
                residual features only).
            noise_sd: the scan's image noise SD (:func:`~neurocast.anomaly.scores.image_noise_sd`
                of the prepared image in ``region``); needed when the calibration has noise lines.

        Raises:
            ValueError: the calibration has noise lines and no ``noise_sd`` was given.
        """
        cal = getattr(self, "calibration_", None)
        if cal is None:
            raise RuntimeError("this AnomalyDetector is not calibrated: call calibrate() first")
        feats = artefact_features(residual_map, region, iqms)  # the artefact features read the residual
        scale = 1.0
        if self.level_scaling and cal.residual_level is not None:
            scale = level_scale(feats["residual_median"], cal.residual_level)
        amap = self._standardised(residual_map / np.float32(scale), region)
        vv = self.grid_.voxel_volume_mm3
        evidence, comps = lesion_evidence(
            amap, region, cal.voxel_threshold, min_voxels=self._min_voxels(), voxel_volume_mm3=vv
        )
        les = evidence["mass"] if cal.lesion_scales is None else combined_lesion_score(evidence, cal.lesion_scales)
        scored = noise_adjusted_features(feats, noise_sd, cal.noise_lines)
        art = artefact_score(scored, cal.feature_reference)
        share = largest_cluster_share(comps)
        feature_z = feature_zscores(scored, cal.feature_reference)
        verdict = cal.assess(les, art, share, spike=feature_z.get(SPIKE_FEATURE, math.nan))
        return ResidualJudgement(
            anomaly_map=amap,
            components=comps,
            features=feats,
            feature_z=feature_z,
            noise_sd=float("nan") if noise_sd is None else float(noise_sd),
            lesion_score=float(les),
            artefact_score=float(art),
            flag=verdict["flag"],
            percentile=verdict["percentile"],
            lesion_percentile=verdict["lesion_percentile"],
            artefact_percentile=verdict["artefact_percentile"],
            level_scale=float(scale),
            lesion_evidence=evidence,
            largest_share=share,
        )

    # ------------------------------------------------------------------ save / load
    def card(self) -> dict[str, Any]:
        """The detector's part of the model card (``extra.anomaly``)."""
        self._check_fitted()
        cal = getattr(self, "calibration_", None)
        norm = getattr(self, "normative_", None)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "grid": _grid_to_json(self.grid_),
            "grid_spacing_mm": list(self.grid_.spacing_mm),
            "calibration": cal.to_dict() if cal is not None else None,
            # the reference maps themselves are in extra.safetensors (``normative.mean``, ``.sd``)
            "normative": norm.to_arrays()[1] if norm is not None else None,
            "training": getattr(self, "training_", {}),
        }

    def save(self, path: str | os.PathLike[str], *, metrics: dict[str, Any] | None = None) -> Path:
        """Write the detector as a checkpoint folder (safetensors + model card with calibration).

        Returns:
            The folder.
        """
        self._check_fitted()
        training = getattr(self, "training_", {})
        norm = getattr(self, "normative_", None)
        tensors = (
            {f"normative.{k}": torch.from_numpy(v) for k, v in norm.to_arrays()[0].items()}
            if norm is not None
            else None
        )
        out = save_checkpoint(
            path,
            self.model_,
            seed=self.seed,
            data_summary=training.get("data_summary", {}),
            metrics=metrics,
            card_extra={"anomaly": self.card()},
            extra_tensors=tensors,
        )
        self.model_card_sha256_ = checkpoint_id(out)
        return out

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
    ) -> AnomalyDetector:
        """Load a detector saved by :meth:`save` (hashes verified, nothing unpickled).

        Raises:
            CheckpointError: not a neurocast anomaly checkpoint, or damaged.
        """
        p = Path(path)
        card = read_model_card(p)
        info = (card.get("extra") or {}).get("anomaly")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise CheckpointError(f"{p}: not a neurocast anomaly detector (no extra.anomaly card)")
        if int(info.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(
                f"{p}: anomaly format version {info.get('format_version')} is newer than this "
                f"neurocast reads ({FORMAT_VERSION})"
            )
        params = dict(info.get("params") or {})
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise CheckpointError(f"{p}: unknown detector settings in the model card: {unknown}")
        params.setdefault("grow_quantile", None)  # cards from before mask growth: none
        params.setdefault("level_scaling", False)  # nor level scaling
        params.setdefault("mask_dilation_mm", 0.0)  # nor mask dilation
        det = cls(**params, device=device)
        det.model_ = load_backbone(p, device=device)
        det.config_ = det.model_.config
        det.grid_ = _grid_from_json(info["grid"])
        det.history_ = []
        det.training_ = dict(info.get("training") or {})
        cal = info.get("calibration")
        det.calibration_ = Calibration.from_dict(cal) if cal else None
        if det.calibration_ is not None:
            _warn_if_another_artefact_rule(det.calibration_, p)
        det.normative_ = _load_normative(p, info, det.calibration_)
        det.model_card_sha256_ = checkpoint_id(p)
        return det


def _load_normative(path: Path, info: dict[str, Any], cal: Calibration | None) -> NormativeMaps | None:
    """The reference maps a calibration standardised its maps with (``None`` when it did not)."""
    if cal is None or cal.extra.get("map") != NORMATIVE_RULE:
        return None
    tensors = load_extra_tensors(path)
    arrays = {k.removeprefix("normative."): v.numpy() for k, v in tensors.items() if k.startswith("normative.")}
    if not isinstance(info.get("normative"), dict) or set(arrays) != {"mean", "sd"}:
        raise CheckpointError(
            f"{path}: the calibration standardises the anomaly map, but the reference maps "
            "(extra.safetensors: normative.mean, normative.sd; extra.anomaly.normative) are missing"
        )
    try:
        return NormativeMaps.from_arrays(arrays, info["normative"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable reference maps ({exc})") from exc


def _warn_if_another_artefact_rule(cal: Calibration, path: Path) -> None:
    """Warn when ``cal``'s artefact threshold was set on scores of another rule than this version's."""
    rule = cal.extra.get("artefact_score_rule")
    expected = NOISE_ADJUSTED_SCORE_RULE if cal.noise_lines else ARTEFACT_SCORE_RULE
    if rule == expected:
        return
    found = f"the artefact-score rule {rule!r}" if rule else "an earlier artefact-score rule"
    warnings.warn(
        f"{path}: calibrated under {found}, not this version's ({expected!r}); its "
        "artefact threshold does not fit the scores it now gets: calibrate it again on healthy "
        "scans (AnomalyDetector.calibrate, or neurocast train anomaly)",
        UserWarning,
        stacklevel=3,
    )


def native_map(amap: np.ndarray, scan: Scan) -> nib.Nifti1Image:
    """The template-space anomaly map resampled (linear) onto the scan's native grid.

    Uses the inverse of the preprocessing's affine: a native point ``p`` takes the map's value at
    ``native_to_template @ p``.
    """
    from neurocast.registration.transforms import resample

    if not scan.has_native:
        raise ValueError("the scan has no native grid and transform")
    assert scan.native_shape is not None and scan.native_affine is not None
    data = resample(
        np.asarray(amap, dtype=np.float32),
        scan.grid.affine,
        scan.native_shape,
        scan.native_affine,
        scan.native_to_template,
        order=1,
    )
    img = nib.Nifti1Image(data.astype(np.float32), scan.native_affine)
    img.set_qform(scan.native_affine, code=1)
    img.set_sform(scan.native_affine, code=1)
    return img
