"""The forecast API: a subject's future T1w, its uncertainty, atrophy maps and regional volumes.

:func:`forecast` samples annual velocity fields from a :class:`~neurocast.progress.model.ProgressionModel`
(the shipped demo model by default), scales them by each horizon, integrates them (scaling and
squaring) and warps the subject's image at full working-grid resolution:

* **mean forecast T1w**: the image warped by the *mean* velocity over samples (sharp);
* **uncertainty**: the per-voxel SD over the images warped by each sample (intensity units);
* **Jacobian (atrophy) map**: mean over samples of the volume-change map (follow-up / baseline
  volume of the tissue at each baseline voxel; < 1 = atrophy);
* **regional volumes**: per sample, the mean of the volume-change map over each atlas region times
  the region's baseline volume (mm³), with quantiles.

Horizons are years after the subject's (latest) scan; a horizon of zero returns the image itself
and a volume-change map of exactly one. With an earlier visit (``history_velocity``), the observed
annual change conditions the forecast (see :mod:`neurocast.progress.visits`).

Example:
    >>> from neurocast.progress.forecast import ForecastSubject, forecast  # doctest: +SKIP
    >>> subj = ForecastSubject.from_scan("sub-01_T1w.nii.gz", {"age": 72, "sex": "F"})  # doctest: +SKIP
    >>> fc = forecast(subj, horizons=[1, 2, 5], n_samples=8, seed=0)  # doctest: +SKIP
    >>> fc.volumes["volume"].sel(region="Hippocampus").mean("sample")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import xarray as xr

from neurocast.progress.fieldgrid import image_to_field_grid, normalise_condition, restrict_velocity
from neurocast.progress.model import ProgressionModel
from neurocast.progress.visits import condition_channels

SHIPPED_MODEL = "progress-demo"
QUANTILES = (0.1, 0.5, 0.9)
COVARIATE_NAMES = ("age", "sex", "diagnosis", "apoe4", "mmse")


@dataclass
class ForecastSubject:
    """What the forecaster needs about one subject.

    Attributes:
        image: the latest scan on the working grid in template space (e.g.
            ``PreprocessResult.image`` or the ``desc-longitudinal_T1w`` of ``neurocast register``).
        covariates: ``age`` (years, at this scan), ``sex`` (M/F), ``diagnosis`` (CN/MCI/AD),
            ``apoe4`` (0/1/2), ``mmse`` (points); missing ones may be left out or None.
        participant_id: ``sub-<label>``.
        session_id: the scan's ``ses-<label>`` (may be empty).
        labels: atlas labels on the image's grid (default: the shipped atlas; pass the subject's
            own segmentation where there is one).
        regions: region table matching ``labels`` (default: the atlas's).
        history_velocity: (1, 3, x, y, z) velocity from an earlier visit to this one (any field
            grid over the same box), e.g. from ``neurocast register``.
        history_years: time between that earlier visit and this one (years).
        volume_scale: native volume / template-space volume (``1 / det`` of the affine to the
            template) so that regional volumes are the subject's own, in mm³.
    """

    image: nib.Nifti1Image
    covariates: dict[str, Any] = field(default_factory=dict)
    participant_id: str = "sub-unknown"
    session_id: str = ""
    labels: nib.Nifti1Image | None = None
    regions: pd.DataFrame | None = None
    history_velocity: torch.Tensor | None = None
    history_years: float | None = None
    volume_scale: float = 1.0

    @classmethod
    def from_scan(
        cls,
        path: str | os.PathLike[str] | nib.Nifti1Image,
        covariates: Mapping[str, Any] | None = None,
        *,
        participant_id: str = "sub-unknown",
        session_id: str = "",
        grid_spacing_mm: float = 2.0,
        skull_stripped: bool | None = None,
        seed: int = 0,
    ) -> ForecastSubject:
        """Preprocess a raw T1w scan (:func:`~neurocast.registration.preprocess.preprocess_t1w`).

        Raises:
            neurocast.errors.RegistrationFailedError: preprocessing failed its QC.
        """
        from neurocast.errors import RegistrationFailedError
        from neurocast.registration.preprocess import preprocess_t1w
        from neurocast.registration.template import working_grid

        res = preprocess_t1w(path, grid=working_grid(grid_spacing_mm), skull_stripped=skull_stripped, seed=seed)
        if not res.qc.get("passed", True):
            raise RegistrationFailedError(f"{path}: preprocessing failed its QC ({res.qc.get('reasons')})")
        scale = 1.0 / abs(float(np.linalg.det(np.asarray(res.native_to_template)[:3, :3])))
        return cls(res.image, dict(covariates or {}), participant_id, session_id, volume_scale=scale)


@dataclass
class Forecast:
    """The result of :func:`forecast`.

    Attributes:
        images: Dataset with dims ``(horizon, x, y, z)``: ``t1w_mean`` and ``t1w_sd`` (intensity
            units of the input), ``jacobian_mean`` and ``jacobian_sd`` (volume ratio); attribute
            ``affine`` (voxel -> template mm, 16 numbers).
        volumes: Dataset with dims ``(horizon, region, sample)``: ``volume`` (mm³),
            ``baseline_volume`` (region, mm³); covariates and ``participant_id`` as attributes (the
            input contract of :func:`neurocast.progress.cohort.gather_forecasts`).
        folding: ``(horizon, sample)`` share of voxels with J <= 0 (expected 0).
        annual_velocity: ``(horizon, sample, 3, x, y, z)`` sampled annual velocities (field grid).
    """

    images: xr.Dataset
    volumes: xr.Dataset
    folding: xr.DataArray
    annual_velocity: torch.Tensor

    @property
    def horizons(self) -> np.ndarray:
        """Horizons in years."""
        return np.asarray(self.images["horizon"].values, dtype=float)

    def quantiles(self, q: Sequence[float] = QUANTILES) -> xr.DataArray:
        """Regional volume quantiles over samples: ``(horizon, region, quantile)`` in mm³."""
        return self.volumes["volume"].quantile(list(q), dim="sample").transpose("horizon", "region", "quantile")

    def change_percent(self) -> xr.DataArray:
        """Regional volume change in percent of baseline: ``(horizon, region, sample)``."""
        return 100.0 * (self.volumes["volume"] / self.volumes["baseline_volume"] - 1.0)

    def nifti(self, variable: str) -> nib.Nifti1Image:
        """A 4-D NIfTI (x, y, z, horizon) of ``images[variable]``."""
        affine = np.asarray(self.images.attrs["affine"], dtype=float).reshape(4, 4)
        data = np.moveaxis(np.asarray(self.images[variable].values, dtype=np.float32), 0, -1)
        img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        img.set_qform(affine, code=4)
        img.set_sform(affine, code=4)
        return img

    def table(self) -> pd.DataFrame:
        """Tidy regional table (schema ``forecast_volumes``): one row per horizon x region."""
        vol = self.volumes["volume"]
        qs = self.quantiles()
        base = self.volumes["baseline_volume"]
        rows = []
        for h in self.horizons:
            for r in self.volumes["region"].values:
                v = vol.sel(horizon=h, region=r).values
                b = float(base.sel(region=r))
                q = qs.sel(horizon=h, region=r).values
                rows.append({
                    "participant_id": self.volumes.attrs.get("participant_id", "n/a"),
                    "session_id": self.volumes.attrs.get("session_id") or "n/a",
                    "horizon_years": float(h), "region": str(r), "baseline_volume_mm3": b,
                    "mean_mm3": float(v.mean()), "sd_mm3": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                    "q10_mm3": float(q[0]), "q50_mm3": float(q[1]), "q90_mm3": float(q[2]),
                    "change_percent_mean": float(100.0 * (v.mean() / b - 1.0)) if b > 0 else float("nan"),
                })  # fmt: skip
        return pd.DataFrame(rows)


def load_model(model: ProgressionModel | str | os.PathLike[str] | None = None) -> ProgressionModel:
    """A progression model: the given one, one loaded from a folder, or the shipped demo model.

    Raises:
        neurocast.errors.CheckpointError: the folder is not a valid progression model, or no model
            was given and the shipped one is missing (nothing is ever downloaded).
    """
    from neurocast.errors import CheckpointError
    from neurocast.weights import shipped_model_dir

    if isinstance(model, ProgressionModel):
        return model
    path = Path(model) if model is not None else shipped_model_dir(SHIPPED_MODEL)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no progression model here"
            + ("" if model is not None else "; train one with 'neurocast train progress' and pass --model")
        )
    return ProgressionModel.load(path)


def _grid_labels(subject: ForecastSubject) -> tuple[np.ndarray, pd.DataFrame, float]:
    from neurocast.registration.atlas import load_atlas
    from neurocast.registration.template import Grid

    vox = float(abs(np.linalg.det(subject.image.affine[:3, :3])))
    if subject.labels is not None:
        labels = np.asarray(subject.labels.dataobj).astype(np.int64)
        if labels.shape != subject.image.shape[:3]:
            raise ValueError(f"labels {labels.shape} and image {subject.image.shape[:3]} are on different grids")
        if subject.regions is None:
            raise ValueError("give the region table with the labels")
        return labels, subject.regions, vox
    grid = Grid(tuple(int(s) for s in subject.image.shape[:3]), np.asarray(subject.image.affine, dtype=float))
    atlas = load_atlas(grid)
    return np.asarray(atlas.labels.dataobj).astype(np.int64), atlas.regions, vox


def _regional_ratios(jac: np.ndarray, labels: np.ndarray, regions: pd.DataFrame, vox: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean volume ratio per region for a stack of maps ``jac`` (n, X, Y, Z)."""
    from neurocast.registration.volumes import regional_volume_change

    names: list[str] = []
    base = None
    ratios = []
    for j in jac:
        tab = regional_volume_change(j, labels, regions, voxel_volume_mm3=vox)
        if base is None:
            names = [str(r) for r in tab["region"]]
            base = tab["baseline_volume_mm3"].to_numpy(dtype=float)
        ratios.append(tab["volume_ratio"].to_numpy(dtype=float))
    return names, np.asarray(base), np.stack(ratios)


def _sd(s1: np.ndarray, s2: np.ndarray, n: int) -> np.ndarray:
    """Per-voxel sample SD (ddof 1) from the sum and the sum of squares; zeros for one sample."""
    if n < 2:
        return np.zeros(s1.shape, np.float32)
    var = (s2 - s1 * s1 / n) / (n - 1)
    return np.sqrt(np.clip(var, 0.0, None)).astype(np.float32)


def forecast(
    subject: ForecastSubject,
    horizons: Sequence[float] = (1.0, 2.0, 5.0),
    n_samples: int = 8,
    seed: int = 0,
    covariate_overrides: Mapping[str, Any] | None = None,
    *,
    model: ProgressionModel | str | os.PathLike[str] | None = None,
    num_inference_steps: int | None = None,
    sample_spread: float | None = None,
    sample_chunk: int = 8,
) -> Forecast:
    """Forecast a subject's brain at each horizon (see the module docstring).

    Args:
        subject: the subject (:class:`ForecastSubject`).
        horizons: years after the subject's scan (>= 0; 0 returns the scan itself).
        n_samples: Monte Carlo samples per horizon (>= 1); sample ``k`` is one trajectory across
            horizons (same initial noise).
        seed: sampling seed (same inputs, seed and machine: same output).
        covariate_overrides: scenario values replacing the subject's covariates, e.g.
            ``{"diagnosis": "AD"}``; ``None`` values make a covariate unknown.
        model: a :class:`ProgressionModel`, a model folder, or ``None`` for the shipped demo model.
        num_inference_steps: DDIM steps (default: the model's).
        sample_spread: factor on each sample's deviation from the mean of the draws (default: the
            model's calibrated one, see :mod:`neurocast.progress.calibration`; 1 = raw samples).
        sample_chunk: samples warped at once; bounds memory (about 25 MB per sample on the 2 mm
            grid) whatever ``n_samples`` is. Results do not depend on it beyond rounding.

    Returns:
        A :class:`Forecast`.

    Raises:
        ValueError: a negative horizon, no horizons, ``n_samples < 1``, an image that is not 3-D.
        neurocast.errors.CheckpointError: the model cannot be loaded.
    """
    from neurocast.registration.deformation import (
        folding_fraction,
        integrate_velocity,
        resize_field,
        volume_change_map,
        warp,
    )

    hz = [float(h) for h in horizons]
    if not hz:
        raise ValueError("give at least one horizon")
    if any(not np.isfinite(h) or h < 0 for h in hz):
        raise ValueError(f"horizons must be finite and >= 0 years, got {hz}")
    if int(n_samples) < 1:
        raise ValueError("n_samples must be >= 1")
    n_samples = int(n_samples)
    m = load_model(model)
    img = np.asarray(subject.image.dataobj, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"the subject's image must be 3-D, got shape {img.shape}")
    fine = tuple(int(s) for s in img.shape)
    spacing = float(np.sqrt((np.asarray(subject.image.affine)[:3, 0] ** 2).sum()))
    fshape = m.grid_field_shape(fine, spacing)
    cov = {k: v for k, v in subject.covariates.items() if k in COVARIATE_NAMES}
    cov.update(dict(covariate_overrides or {}))
    history = None
    if subject.history_velocity is not None and subject.history_years and subject.history_years > 0:
        history = restrict_velocity(subject.history_velocity.float(), fshape)[0] / float(subject.history_years)
        cov["history_years"] = float(subject.history_years)
    cond1 = condition_channels(image_to_field_grid(normalise_condition(img), fshape), history, m.config_.target_scale)

    positive = [h for h in hz if h > 0]
    annual = torch.zeros(len(hz), n_samples, 3, *fshape)
    if positive:
        covs = [{**cov, "years": h} for h in positive]
        rates = m.sample_annual_velocity(cond1[None].expand(len(positive), -1, -1, -1, -1), covs,
                                         n_samples=n_samples, seed=seed, num_inference_steps=num_inference_steps,
                                         spread=sample_spread)  # fmt: skip
        k = 0
        for i, h in enumerate(hz):
            if h > 0:
                annual[i] = rates[k]
                k += 1

    labels, regions, vox = _grid_labels(subject)
    base_img = torch.from_numpy(img)[None, None]
    chunk = max(1, int(sample_chunk))
    t_mean, t_sd, j_mean, j_sd, fold, ratios = [], [], [], [], [], []
    names, base_vol, _ = _regional_ratios(np.ones((1, *fine), np.float32), labels, regions, vox)
    zeros = np.zeros(fine, np.float32)
    with torch.no_grad():
        for i, h in enumerate(hz):
            if h == 0:
                t_mean.append(img)
                t_sd.append(zeros)
                j_mean.append(np.ones(fine, np.float32))
                j_sd.append(zeros)
                fold.append(np.zeros(n_samples))
                ratios.append(np.ones((n_samples, len(names))))
                continue
            v = annual[i] * h  # (S, 3, fx, fy, fz)
            # Samples in chunks: memory stays bounded whatever n_samples (sums in float64).
            sums = {k: np.zeros(fine, np.float64) for k in ("t1", "t2", "j1", "j2")}
            r_parts, f_parts = [], []
            for c in range(0, n_samples, chunk):
                vc = v[c : c + chunk]
                disp = resize_field(integrate_velocity(vc), fine)
                warped = warp(base_img.expand(len(vc), -1, -1, -1, -1), disp)[:, 0].numpy().astype(np.float64)
                jac = volume_change_map(vc, shape=fine)[:, 0].numpy()
                sums["t1"] += warped.sum(0)
                sums["t2"] += (warped**2).sum(0)
                sums["j1"] += jac.sum(0, dtype=np.float64)
                sums["j2"] += (jac.astype(np.float64) ** 2).sum(0)
                r_parts.append(_regional_ratios(jac, labels, regions, vox)[2])
                f_parts.append(folding_fraction(disp).numpy())
                del warped, jac, disp
            mean_disp = resize_field(integrate_velocity(v.mean(0, keepdim=True)), fine)
            t_mean.append(warp(base_img, mean_disp)[0, 0].numpy())
            t_sd.append(_sd(sums["t1"], sums["t2"], n_samples))
            j_mean.append((sums["j1"] / n_samples).astype(np.float32))
            j_sd.append(_sd(sums["j1"], sums["j2"], n_samples))
            fold.append(np.concatenate(f_parts))
            ratios.append(np.concatenate(r_parts))

    scale = float(subject.volume_scale)
    coords_h = {"horizon": ("horizon", np.asarray(hz), {"units": "years"})}
    dims4 = ("horizon", "x", "y", "z")
    images = xr.Dataset(
        {
            "t1w_mean": (dims4, np.stack(t_mean).astype(np.float32), {"units": "input intensity"}),
            "t1w_sd": (dims4, np.stack(t_sd).astype(np.float32), {"units": "input intensity"}),
            "jacobian_mean": (dims4, np.stack(j_mean).astype(np.float32), {"units": "volume ratio"}),
            "jacobian_sd": (dims4, np.stack(j_sd).astype(np.float32), {"units": "volume ratio"}),
        },
        coords=coords_h,
        attrs={"affine": [float(a) for a in np.asarray(subject.image.affine).ravel()], "space": "MNI152NLin2009aSym"},
    )
    base = base_vol * scale
    volume = np.stack(ratios) * base[None, None, :]  # (H, S, R)
    attrs: dict[str, Any] = {"participant_id": subject.participant_id, "session_id": subject.session_id,
                             "units": "mm3", "seed": int(seed), "n_samples": n_samples}  # fmt: skip
    for k, v in cov.items():
        if v is not None and k in COVARIATE_NAMES:
            attrs[k] = v if isinstance(v, str) else float(v)
    if getattr(m, "path_", None) is not None:
        attrs["model"] = str(m.path_)
    volumes = xr.Dataset(
        {
            "volume": (("horizon", "region", "sample"), np.transpose(volume, (0, 2, 1)), {"units": "mm3"}),
            "baseline_volume": (("region",), base, {"units": "mm3"}),
        },
        coords={**coords_h, "region": ("region", np.asarray(names, dtype=object)), "sample": ("sample", np.arange(n_samples))},
        attrs=attrs,
    )
    folding = xr.DataArray(np.stack(fold), dims=("horizon", "sample"), coords={"horizon": np.asarray(hz)})
    return Forecast(images, volumes, folding, annual)


__all__ = ["QUANTILES", "SHIPPED_MODEL", "Forecast", "ForecastSubject", "forecast", "load_model"]
