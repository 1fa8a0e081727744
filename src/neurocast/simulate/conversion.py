"""Conversion events (CN -> MCI -> AD) from a Weibull proportional-hazards model.

The hazard of leaving the current diagnostic state is

    h(t | x) = (k / lam) (t / lam)^(k - 1) exp(eta),
    eta = b_rate * z + b_apoe4 * (apoe4 - mean_apoe4[dx]) + b_age * (age - age_ref) / 10
          + b_mmse * (mmse - mean_mmse[dx]) + b_female * (female - female_fraction),

with ``z`` the subject's atrophy-rate random effect in SD units, so a survival model fitted to the
simulated visits has a real signal in the atrophy rate (Jack 2005: HR 1.7-1.9 per SD of atrophy
rate). ``lam`` follows from the annual conversion probability ``p`` of a reference subject
(``eta = 0``): ``(1 / lam)^k = -log(1 - p)``. Event times are drawn by inversion,
``T = lam * (E exp(-eta))^(1/k)`` with ``E ~ Exp(1)``. A CN subject who becomes MCI at ``T1``
draws a second time to AD from ``T1`` with the MCI hazard (clock reset). Latent times are kept in
the truth even when they fall after the last visit (right-censored there).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from neurocast.simulate.config import DIAGNOSES, SimulationConfig
from neurocast.simulate.subjects import Subject, rng_for

NEXT_STATE = {"CN": "MCI", "MCI": "AD"}


@dataclass
class Conversion:
    """Latent conversion times of one subject (years since baseline; ``inf`` = never).

    Attributes:
        to_mci_years: time of CN -> MCI (CN subjects only).
        to_ad_years: time of MCI -> AD (CN and MCI subjects).
        linear_predictor: ``eta`` of the baseline state's hazard.
        censoring_years: time of the last visit.
    """

    baseline: str
    to_mci_years: float
    to_ad_years: float
    linear_predictor: float
    censoring_years: float

    @property
    def first_event(self) -> tuple[str | None, float]:
        """(state converted to, time) of the first conversion, or (None, inf) for AD at baseline."""
        if self.baseline == "CN":
            return "MCI", self.to_mci_years
        if self.baseline == "MCI":
            return "AD", self.to_ad_years
        return None, math.inf

    @property
    def event_observed(self) -> bool:
        """True when the first conversion happens no later than the last visit."""
        return self.first_event[1] <= self.censoring_years

    def state_at(self, t: float) -> str:
        """Diagnosis at time ``t`` since baseline."""
        if t >= self.to_ad_years:
            return "AD"
        if t >= self.to_mci_years:
            return "MCI"
        return self.baseline

    def transitions(self) -> list[tuple[float, str, str]]:
        """(time, from, to) of each latent conversion, in time order."""
        out = []
        if math.isfinite(self.to_mci_years):
            out.append((self.to_mci_years, "CN", "MCI"))
        if math.isfinite(self.to_ad_years):
            out.append((self.to_ad_years, "MCI", "AD"))
        return out


def weibull_scale(annual_probability: float, shape: float) -> float:
    """Scale ``lam`` such that a reference subject converts within one year with this probability."""
    if not 0 < annual_probability < 1:
        raise ValueError(f"annual conversion probability must be in (0, 1), got {annual_probability}")
    return (-math.log1p(-annual_probability)) ** (-1.0 / shape)


def linear_predictor(subject: Subject, subject_effect_sd_units: float, config: SimulationConfig, state: str) -> float:
    """``eta`` of the proportional-hazards model for a subject in ``state``."""
    b = config.hazard_log_ratio
    mmse_ref = config.mmse_baseline[state][0]
    mmse_term = (subject.mmse - mmse_ref) if state == subject.diagnosis else 0.0
    return float(
        b.get("rate_sd", 0.0) * subject_effect_sd_units
        + b.get("apoe4", 0.0) * (subject.apoe4 - config.mean_apoe4(subject.diagnosis))
        + b.get("age_decade", 0.0) * (subject.age - config.reference_age) / 10.0
        + b.get("mmse_point", 0.0) * mmse_term
        + b.get("female", 0.0) * (float(subject.female) - config.female_fraction)
    )


def draw_conversion(seed: int, subject: Subject, subject_effect_sd_units: float, config: SimulationConfig) -> Conversion:
    """Latent conversion times of a subject (depends on covariates and the atrophy-rate effect)."""
    rng = rng_for(seed, subject.index, "conversion")
    e1, e2 = rng.exponential(1.0), rng.exponential(1.0)  # drawn always: stream use independent of dx
    eta = linear_predictor(subject, subject_effect_sd_units, config, subject.diagnosis)
    to_mci = to_ad = math.inf
    k = config.weibull_shape

    def invert(state: str, e: float, eta_s: float) -> float:
        p = config.annual_conversion_probability.get(state)
        if p is None or p <= 0:
            return math.inf
        return float(weibull_scale(p, k) * (e * math.exp(-eta_s)) ** (1.0 / k))

    if subject.diagnosis == "CN":
        to_mci = invert("CN", e1, eta)
        eta2 = linear_predictor(subject, subject_effect_sd_units, config, "MCI")
        to_ad = to_mci + invert("MCI", e2, eta2)
    elif subject.diagnosis == "MCI":
        to_ad = invert("MCI", e1, eta)
    return Conversion(subject.diagnosis, to_mci, to_ad, eta, subject.last_visit_years)


def assign_visit_states(seed: int, subject: Subject, conversion: Conversion, config: SimulationConfig) -> None:
    """Fill each visit's diagnosis and MMSE from the latent conversion times (in place).

    MMSE declines at the rate of the current state (piecewise linear through the conversions),
    plus visit noise; rounded and clipped to 0-30. The baseline visit keeps the baseline MMSE.
    """
    rng = rng_for(seed, subject.index, "conversion", 1)
    for visit in subject.visits:
        visit.diagnosis = conversion.state_at(visit.time_years)
        if visit.index == 0:
            visit.mmse = subject.mmse
            continue
        loss = 0.0
        edges = [0.0, *[t for t, _, _ in conversion.transitions() if t < visit.time_years], visit.time_years]
        for a, b in itertools.pairwise(edges):
            state = conversion.state_at(a)
            loss += config.mmse_decline_per_year.get(state, 0.0) * (b - a)
        noisy = subject.mmse - loss + rng.normal(0.0, config.mmse_visit_sd)
        visit.mmse = float(np.clip(round(noisy), 0, 30))


def rate_multiplier_path(conversion: Conversion, config: SimulationConfig) -> list[tuple[float, float]]:
    """(time, factor) of each latent rate acceleration (one per conversion)."""
    out = []
    for t, src, _dst in conversion.transitions():
        factor = config.conversion_acceleration.get(src)
        if factor is not None and factor != 1.0:
            out.append((t, float(factor)))
    return out


__all__ = [
    "DIAGNOSES",
    "NEXT_STATE",
    "Conversion",
    "assign_visit_states",
    "draw_conversion",
    "linear_predictor",
    "rate_multiplier_path",
    "weibull_scale",
]
