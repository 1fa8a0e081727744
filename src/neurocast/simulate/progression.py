"""Progression: subject atrophy rates, the subject's velocity field, and each visit's deformation.

* **Rates.** The annual volume loss of region group ``g`` for a subject with baseline diagnosis
  ``dx`` is ``r_g = R[g][dx] * exp(eta_cov + b + e_g - (sd_b^2 + sd_e^2) / 2)`` with ``eta_cov``
  the covariate effects (age per decade by diagnosis, APOE4 per allele above the group mean,
  female minus the female fraction), ``b ~ N(0, sd_b^2)`` the subject random effect shared by all
  regions and ``e_g ~ N(0, sd_e^2)`` a region effect; the centring keeps the group mean at
  ``R[g][dx]``. Ventricles expand (negative loss) with the same multiplier.
* **Velocity.** The wanted annual log volume change ``log(1 - r_g / 100)`` of each group is
  realised by one stationary velocity ``v`` on the coarse field grid, calibrated so that the
  regional means of the first-order log volume change ``-div v`` on the subject's baseline labels
  match (:func:`neurocast.simulate.fields.calibrated_velocity`). The tissue lost is balanced by
  expansion of the CSF outside the brain and of the background inside the working grid (the skull
  does not move).
* **Visits.** The visit at time ``t`` is the baseline warped by ``exp(s(t) v)``, where
  ``s(t) = int_0^t m(u) du`` and ``m(u) = prod_k (1 + (a_k - 1) sigmoid((u - T_k) / tau))`` speeds
  the atrophy up by the factor ``a_k`` around each conversion ``T_k`` (a time reparametrisation).
  The truth volume change is ``volume_change_map(s(t) v)`` (Jacobian of ``exp(-s(t) v)`` on the
  baseline grid) and the true regional volume is its sum over each baseline region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from neurocast.simulate.config import REGION_GROUPS, SimulationConfig
from neurocast.simulate.subjects import Subject, rng_for


@dataclass
class SubjectRates:
    """Annual atrophy rates of one subject in its baseline state.

    Attributes:
        subject_effect: ``b``, the shared random effect on the log rate.
        subject_effect_sd_units: ``b / subject_rate_sd`` (what the hazard model uses).
        covariate_effect: ``eta_cov``, the covariate part of the log rate multiplier.
        percent_per_year: group -> annual volume loss in percent (negative = expansion).
    """

    subject_effect: float
    subject_effect_sd_units: float
    covariate_effect: float
    percent_per_year: dict[str, float] = field(default_factory=dict)

    def log_volume_per_year(self) -> dict[str, float]:
        """group -> annual log volume change ``log(1 - r / 100)``."""
        return {g: math.log1p(-r / 100.0) for g, r in self.percent_per_year.items()}


def draw_rates(seed: int, subject: Subject, config: SimulationConfig) -> SubjectRates:
    """Draw the subject's atrophy rates (baseline state) from its covariates and random effects."""
    rng = rng_for(seed, subject.index, "rates")
    b = float(rng.normal(0.0, config.subject_rate_sd))
    region_effects = {g: float(rng.normal(0.0, config.region_rate_sd)) for g in REGION_GROUPS}
    dx = subject.diagnosis
    eta = (
        config.age_effect_per_decade.get(dx, 0.0) * (subject.age - config.reference_age) / 10.0
        + config.apoe4_rate_effect * (subject.apoe4 - config.mean_apoe4(dx))
        + config.female_rate_effect * (float(subject.female) - config.female_fraction)
    )
    centre = 0.5 * (config.subject_rate_sd**2 + config.region_rate_sd**2)  # E[exp(b + e)] = 1
    rates = {}
    for g in REGION_GROUPS:
        base = config.annual_rates.get(g, {}).get(dx, 0.0)
        r = base * math.exp(eta + b + region_effects[g] - centre)
        rates[g] = float(np.clip(r, -40.0, 40.0))
    sd_units = b / config.subject_rate_sd if config.subject_rate_sd > 0 else 0.0
    return SubjectRates(b, sd_units, eta, rates)


def time_warp(t: float | np.ndarray, accelerations: list[tuple[float, float]], tau: float) -> np.ndarray:
    """Effective progression time ``s(t) = int_0^t m(u) du`` with smooth rate steps.

    Args:
        t: time(s) since baseline in years (>= 0).
        accelerations: (time T_k, factor a_k) of each conversion.
        tau: width of each step (years).

    Returns:
        ``s(t)`` (same shape as ``t``); ``s(t) = t`` without conversions.
    """
    t_arr = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if not accelerations:
        return t_arr if np.ndim(t) else t_arr[0]  # type: ignore[return-value]
    out = np.empty_like(t_arr)
    tau = max(float(tau), 1e-3)
    for i, ti in enumerate(t_arr):
        if ti <= 0:
            out[i] = 0.0
            continue
        n = max(200, int(ti / tau * 50))
        u = np.linspace(0.0, ti, n + 1)
        m = np.ones_like(u)
        for tk, ak in accelerations:
            z = np.clip((u - tk) / tau, -60, 60)
            m *= 1.0 + (ak - 1.0) / (1.0 + np.exp(-z))
        out[i] = float(np.sum(0.5 * (m[1:] + m[:-1]) * np.diff(u)))  # trapezoid rule
    return out if np.ndim(t) else out[0]  # type: ignore[return-value]


def subject_velocity(
    baseline_groups: dict[str, np.ndarray],
    balance: np.ndarray,
    rates: SubjectRates,
    field_shape: tuple[int, int, int],
) -> tuple[torch.Tensor, dict[str, float]]:
    """The subject's annual stationary velocity on the field grid.

    Args:
        baseline_groups: group -> boolean mask of the subject's baseline anatomy (image grid).
        balance: where the lost volume goes (extra-cerebral CSF and background).
        rates: the subject's rates.
        field_shape: the coarse field grid.

    Returns:
        ``(v, achieved)``: (1, 3, *field_shape) velocity in field voxels per year, and the linear
        prediction of each group's annual log volume change.
    """
    from neurocast.simulate.fields import calibrated_velocity

    targets = rates.log_volume_per_year()
    return calibrated_velocity(baseline_groups, targets, balance, field_shape)


__all__ = ["SubjectRates", "draw_rates", "subject_velocity", "time_warp"]
