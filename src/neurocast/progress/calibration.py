"""Calibrating the forecaster's uncertainty: the sample-spread factor.

A diffusion model trained briefly learns the conditional mean of the annual velocity well but
under-disperses its samples: much of the between-subject variation (the subject's own rate of
atrophy) is invisible in one baseline scan, and the sampled fields come out too alike. The 80 %
interval of the regional volume change then holds the truth far less often than 80 % of the time.

:func:`calibrate_spread` fixes this after training, without touching the weights, in the spirit of
temperature scaling: each sample's deviation from the mean of its draws is multiplied by one factor
``s``,

    v_k  ->  mean(v) + s * (v_k - mean(v)),

applied to the annual velocity fields (so images, uncertainty maps, Jacobians and regional volumes
stay consistent with each other). ``s`` is fitted on subjects *not used in training* (for instance a
cohort simulated with another seed): every (baseline, follow-up) pair is forecast with ``s = 1``;
the log regional volume ratios of the samples are ``m + d_k``; and ``s`` is the factor whose interval
``[m + s q_lo(d), m + s q_hi(d)]`` holds the true log ratio in ``level`` of the cases (a quantile of
an affine map of the samples is that map of their quantile, so this is exact to first order in the
field; the benchmark then checks coverage on a third cohort by sampling with ``s``).

The truth of each pair is the volume-change map of the subject's own velocity field (exact for a
simulated cohort's truth, the registration's measurement for a real dataset) averaged over the same
atlas regions as the forecast.

Example:
    >>> from neurocast.progress.calibration import spread_for_coverage
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> samples = rng.normal(0, 0.5, size=(400, 16))     # too narrow: the truth has SD 1
    >>> truth = rng.normal(0, 1.0, size=400)
    >>> 1.6 < spread_for_coverage(samples, truth, 0.8) < 2.6
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from neurocast.progress.forecast import ForecastSubject, forecast, load_model
from neurocast.progress.model import ProgressionModel, inflate
from neurocast.progress.visits import LongitudinalSubject

DEFAULT_REGIONS = ("Hippocampus", "Amygdala", "Lateral-Ventricles", "Brain-Parenchyma")
"""The regions the spread is fitted on (those the forecast figures are scored on)."""


@dataclass
class SpreadCalibration:
    """The result of :func:`calibrate_spread` (stored in the model card under ``extra``).

    Attributes:
        spread: the fitted factor ``s`` (1 = the raw samples).
        level: the nominal coverage of the central interval it was fitted for (e.g. 0.8).
        coverage_raw: share of cases whose truth lies in the raw samples' interval.
        coverage_fitted: the same with ``s`` (first-order estimate on the calibration cases).
        n_subjects, n_cases: calibration subjects and (pair, region) cases.
        n_samples, seed: the sampling used.
        regions: the regions used.
        seconds: wall time of the calibration.
        cases: the per-case table (not stored in the card).
    """

    spread: float
    level: float
    coverage_raw: float
    coverage_fitted: float
    n_subjects: int
    n_cases: int
    n_samples: int
    seed: int
    regions: list[str]
    seconds: float = 0.0
    cases: pd.DataFrame | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the case table)."""
        d = asdict(self)
        d.pop("cases")
        return d


def _interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a], axis=-1)
    return lo, hi


def coverage(samples: np.ndarray, truth: np.ndarray, level: float = 0.8) -> float:
    """Share of cases whose ``truth`` lies in the central ``level`` interval of its samples.

    Args:
        samples: (n_cases, n_samples).
        truth: (n_cases,).
        level: nominal coverage in (0, 1).
    """
    lo, hi = _interval(np.asarray(samples, dtype=float), level)
    t = np.asarray(truth, dtype=float)
    return float(np.mean((lo <= t) & (t <= hi)))


def spread_for_coverage(
    samples: np.ndarray,
    truth: np.ndarray,
    level: float = 0.8,
    *,
    bounds: tuple[float, float] = (0.25, 50.0),
    n_grid: int = 2000,
) -> float:
    """The factor ``s`` whose inflated samples ``m + s (x - m)`` cover ``truth`` at ``level``.

    Args:
        samples: (n_cases, n_samples) draws per case (e.g. log volume ratios), n_samples >= 2.
        truth: (n_cases,) true values.
        level: nominal coverage of the central interval.
        bounds: the range searched (log-spaced grid).
        n_grid: grid points.

    Returns:
        The smallest ``s`` on the grid whose coverage is closest to ``level``.

    Raises:
        ValueError: shapes disagree, fewer than two samples, or ``level`` outside (0, 1).
    """
    x = np.asarray(samples, dtype=float)
    t = np.asarray(truth, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2 or t.shape != (x.shape[0],):
        raise ValueError(f"samples must be (n_cases, >=2) and truth (n_cases,), got {x.shape} and {t.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    m = x.mean(axis=1)
    lo, hi = _interval(x - m[:, None], level)
    r = t - m
    grid = np.geomspace(bounds[0], bounds[1], n_grid)
    cov = ((grid[:, None] * lo[None] <= r[None]) & (r[None] <= grid[:, None] * hi[None])).mean(axis=1)
    return float(grid[int(np.argmin(np.abs(cov - level)))])


def _true_ratios(subject: LongitudinalSubject, visit_index: int, labels: np.ndarray, regions: pd.DataFrame,
                 names: Sequence[str]) -> dict[str, float]:  # fmt: skip
    """Regional volume ratios of the visit's own velocity field, computed as the forecast does."""
    from neurocast.progress.forecast import _regional_ratios
    from neurocast.registration.deformation import volume_change_map

    v = subject.visits[visit_index].velocity
    jac = volume_change_map(v.float(), shape=subject.visits[0].image.shape)[:, 0].numpy()
    found, _, ratio = _regional_ratios(jac, labels, regions, 1.0)
    return {n: float(r) for n, r in zip(found, ratio[0], strict=True) if n in names}


def calibrate_spread(
    model: ProgressionModel | str | None,
    subjects: Iterable[LongitudinalSubject],
    *,
    level: float = 0.8,
    regions: Sequence[str] = DEFAULT_REGIONS,
    n_samples: int = 16,
    seed: int = 0,
    labels: np.ndarray | None = None,
    region_table: pd.DataFrame | None = None,
    progress: bool = True,
) -> SpreadCalibration:
    """Fit the sample-spread factor of ``model`` on held-out ``subjects`` (see the module docstring).

    Each subject is forecast from its first visit to every later visit (the visits' velocity fields
    are the truth); the model's own spread is ignored while fitting.

    Args:
        model: the model (or its folder, or ``None`` for the shipped one). Not modified: set
            ``model.sample_spread = result.spread`` (or use
            :func:`neurocast.progress.workflow.calibrate_progress`) to apply it.
        subjects: longitudinal subjects never seen in training (e.g.
            :func:`~neurocast.progress.visits.subjects_from_truth` of another seed).
        level: the interval's nominal coverage (0.8 = the 10th to 90th percentile).
        regions: atlas regions to score.
        n_samples: samples per forecast (>= 2).
        seed: sampling seed.
        labels, region_table: label map on the subjects' image grid and its region table (default:
            the shipped atlas on the working grid, which the images must then be on).
        progress: a progress bar.

    Returns:
        A :class:`SpreadCalibration`.

    Raises:
        ValueError: no subject with a follow-up visit, or ``n_samples < 2``.
    """
    from tqdm.auto import tqdm

    from neurocast.progress.forecast import _grid_labels
    from neurocast.registration.template import working_grid

    if n_samples < 2:
        raise ValueError("calibration needs n_samples >= 2")
    m = load_model(model)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    samples: list[np.ndarray] = []
    atlas_cache: dict[tuple[int, ...], Any] = {}
    n_subjects = 0
    for subj in tqdm(subjects, desc="calibrate", unit="subject", disable=not progress):
        follow = [i for i, v in enumerate(subj.visits) if i > 0 and v.velocity is not None and v.time_years > 0]
        if not follow:
            continue
        n_subjects += 1
        bl = subj.visits[0]
        if labels is not None:
            if region_table is None:
                raise ValueError("give region_table with labels")
            affine = np.diag([subj.spacing_mm] * 3 + [1.0])
            lab, table = np.asarray(labels).astype(np.int64), region_table
        else:
            grid = working_grid(subj.spacing_mm)
            if tuple(grid.shape) != tuple(bl.image.shape):
                raise ValueError(f"{subj.participant_id}: images {bl.image.shape} are not on the {subj.spacing_mm:g} mm working grid {grid.shape}")
            affine = grid.affine
            key = tuple(bl.image.shape)
            if key not in atlas_cache:  # the forecast's own default labels, once per grid
                atlas_cache[key] = _grid_labels(ForecastSubject(nib.Nifti1Image(bl.image, affine)))[:2]
            lab, table = atlas_cache[key]
        fs = ForecastSubject(nib.Nifti1Image(bl.image, affine), {**subj.covariates, **bl.covariates},
                             subj.participant_id, bl.session_id, labels=nib.Nifti1Image(lab.astype(np.int32), affine),
                             regions=table)  # fmt: skip
        horizons = [float(subj.visits[i].time_years) for i in follow]
        fc = forecast(fs, horizons, n_samples, seed, model=m, sample_spread=1.0)
        ratio = fc.volumes["volume"] / fc.volumes["baseline_volume"]
        for i, h in zip(follow, horizons, strict=True):
            truth = _true_ratios(subj, i, lab, table, regions)
            for name, true in truth.items():
                s = ratio.sel(horizon=h, region=name).values.astype(float)
                samples.append(np.log(s))
                rows.append({"participant_id": subj.participant_id, "session_id": subj.visits[i].session_id,
                             "years": h, "region": name, "true_ratio": true, "mean_ratio": float(s.mean())})  # fmt: skip
    if not rows:
        raise ValueError("no subject with a follow-up visit to calibrate on")
    x = np.stack(samples)
    t = np.log(np.asarray([r["true_ratio"] for r in rows]))
    s = spread_for_coverage(x, t, level)
    mean = x.mean(axis=1, keepdims=True)
    cases = pd.DataFrame(rows)
    return SpreadCalibration(
        spread=s, level=level, coverage_raw=coverage(x, t, level),
        coverage_fitted=coverage(mean + s * (x - mean), t, level), n_subjects=n_subjects,
        n_cases=len(rows), n_samples=n_samples, seed=seed, regions=list(regions),
        seconds=time.perf_counter() - t0, cases=cases,
    )  # fmt: skip


__all__ = ["DEFAULT_REGIONS", "SpreadCalibration", "calibrate_spread", "coverage", "inflate", "spread_for_coverage"]
