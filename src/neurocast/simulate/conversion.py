"""Conversion events (CN -> MCI -> AD): a threshold model of cognitive decline, or Weibull hazards.

**Threshold model** (``conversion_model="threshold"``, the default). A latent cognitive score
``c(t)`` in MMSE points starts at the subject's baseline score ``c0`` and follows a Brownian
motion with drift:

    dc = -d_state dt + sigma dW,   d_state = cognition_decline_per_year[state] * m^k * exp(e - centre),

with ``m = exp(covariate_effect + b)`` the subject's atrophy-rate multiplier (so faster atrophy
means faster decline), ``k = cognition_atrophy_coupling``, ``e ~ N(0, cognition_decline_sd^2)``
and ``centre = (k^2 subject_rate_sd^2 + cognition_decline_sd^2) / 2`` keeping the mean drift. The
subject converts out of its state when ``c`` first falls to ``cognition_threshold[state]``
(CN -> MCI, then MCI -> AD with the MCI drift); after conversion the drift is the new state's.
Without fluctuations the time to conversion is ``(c0 - threshold) / d``: how far the subject is
from the threshold (its MMSE) and how fast it declines (its atrophy rate) both predict it, which
is the structure of real conversion data (a first-hitting-time or threshold-regression model, Lee
& Whitmore 2006). The path is simulated on a 0.01-year grid for 40 years (conversion times by
linear interpolation between steps; none within 40 years = never). The visits' MMSE are the path
at the visit plus ``N(0, mmse_visit_sd^2)``, rounded and clipped to 0-30. The recorded
``linear_predictor`` is ``log(d / (c0 - threshold))`` of the baseline state (the inverse of the
deterministic time to conversion; 0 for AD at baseline).

**Weibull model** (``conversion_model="weibull"``, the default before 2026-12-04). The hazard of
leaving the current diagnostic state is

    h(t | x) = (k / lam) (t / lam)^(k - 1) exp(eta),
    eta = b_rate * z + b_apoe4 * (apoe4 - mean_apoe4[dx]) + b_age * (age - age_ref) / 10
          + b_mmse * (mmse - mean_mmse[dx]) + b_female * (female - female_fraction),

with ``z`` the subject's atrophy-rate random effect in SD units, so a survival model fitted to the
simulated visits has a real signal in the atrophy rate (Jack 2005: HR 1.7-1.9 per SD of atrophy
rate). ``lam`` follows from the annual conversion probability ``p`` of a reference subject
(``eta = 0``): ``(1 / lam)^k = -log(1 - p)``. Event times are drawn by inversion,
``T = lam * (E exp(-eta))^(1/k)`` with ``E ~ Exp(1)``. A CN subject who becomes MCI at ``T1``
draws a second time to AD from ``T1`` with the MCI hazard (clock reset). MMSE declines piecewise
linearly at the current state's rate plus visit noise. With literature hazard ratios this model
leaves little to predict: on a 120-subject cohort its own linear predictor orders MCI -> AD
conversions with a C-index of only 0.59 (``benchmarks/cohort_survival.md``).

Either way, latent times are kept in the truth even when they fall after the last visit
(right-censored there).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from neurocast.simulate.config import DIAGNOSES, SimulationConfig
from neurocast.simulate.subjects import Subject, rng_for

if TYPE_CHECKING:
    from neurocast.simulate.progression import SubjectRates

NEXT_STATE = {"CN": "MCI", "MCI": "AD"}


@dataclass
class Conversion:
    """Latent conversion times of one subject (years since baseline; ``inf`` = never).

    Attributes:
        to_mci_years: time of CN -> MCI (CN subjects only).
        to_ad_years: time of MCI -> AD (CN and MCI subjects).
        linear_predictor: ``eta`` of the baseline state's hazard (Weibull model) or
            ``log(drift / distance to the threshold)`` (threshold model).
        censoring_years: time of the last visit.
        cognition_decline_per_year: mean drift of the latent score in the baseline state (MMSE
            points per year).
        cognition_times, cognition_path: the latent score's path (threshold model only).
    """

    baseline: str
    to_mci_years: float
    to_ad_years: float
    linear_predictor: float
    censoring_years: float
    cognition_decline_per_year: float = float("nan")
    cognition_times: np.ndarray | None = field(default=None, repr=False)
    cognition_path: np.ndarray | None = field(default=None, repr=False)

    def cognition_at(self, t: float) -> float:
        """Latent cognitive score at time ``t`` (threshold model; NaN for the Weibull model)."""
        if self.cognition_path is None or self.cognition_times is None:
            return float("nan")
        return float(np.interp(t, self.cognition_times, self.cognition_path))

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


COGNITION_STEP_YEARS = 0.01
"""Time step of the latent cognitive path (years)."""
COGNITION_HORIZON_YEARS = 40.0
"""Length of the latent cognitive path: no conversion within it means never."""


def draw_conversion(
    seed: int, subject: Subject, rates: SubjectRates | float, config: SimulationConfig
) -> Conversion:
    """Latent conversion times of a subject (depends on covariates and the atrophy rate).

    Args:
        seed: cohort seed.
        subject: the subject (baseline diagnosis, covariates, latent baseline cognition).
        rates: the subject's :class:`~neurocast.simulate.progression.SubjectRates`, or just its
            atrophy-rate random effect in SD units (no covariate effect).
        config: the simulation's parameters (``conversion_model`` chooses the model).
    """
    if isinstance(rates, int | float):
        sd_units, log_multiplier = float(rates), float(rates) * config.subject_rate_sd
    else:
        sd_units = rates.subject_effect_sd_units
        log_multiplier = rates.subject_effect + rates.covariate_effect
    if config.conversion_model == "threshold":
        return _threshold_conversion(seed, subject, log_multiplier, config)
    return _weibull_conversion(seed, subject, sd_units, config)


def _weibull_conversion(seed: int, subject: Subject, subject_effect_sd_units: float, config: SimulationConfig) -> Conversion:
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
    decline = config.mmse_decline_per_year.get(subject.diagnosis, 0.0)
    return Conversion(subject.diagnosis, to_mci, to_ad, eta, subject.last_visit_years, decline)


def decline_multiplier(log_rate_multiplier: float, e: float, config: SimulationConfig) -> float:
    """``m^k exp(e - centre)``: the subject's cognitive-decline factor (mean 1 over subjects)."""
    k = config.cognition_atrophy_coupling
    centre = 0.5 * ((k * config.subject_rate_sd) ** 2 + config.cognition_decline_sd**2)
    return math.exp(k * log_rate_multiplier + e - centre)


def first_crossing(t: np.ndarray, path: np.ndarray, threshold: float) -> int | None:
    """Index of the first step at or below ``threshold`` (None if the path never gets there)."""
    below = np.flatnonzero(path <= threshold)
    return int(below[0]) if below.size else None


def _threshold_conversion(seed: int, subject: Subject, log_multiplier: float, config: SimulationConfig) -> Conversion:
    rng = rng_for(seed, subject.index, "conversion")
    e = float(rng.normal(0.0, config.cognition_decline_sd))
    n = round(COGNITION_HORIZON_YEARS / COGNITION_STEP_YEARS)
    dt = COGNITION_STEP_YEARS
    t = np.arange(n + 1) * dt
    noise = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, config.cognition_fluctuation_sd * math.sqrt(dt), n))])
    factor = decline_multiplier(log_multiplier, e, config)
    drift = {s: config.cognition_decline_per_year.get(s, 0.0) * factor for s in DIAGNOSES}

    state, start = subject.diagnosis, 0
    path = subject.cognition - drift[state] * t + noise
    times = {"MCI": math.inf, "AD": math.inf}
    while state in NEXT_STATE:
        threshold = config.cognition_threshold.get(state)
        i = None if threshold is None else first_crossing(t[start:], path[start:], threshold)
        if i is None:
            break
        i += start
        # linear interpolation between the last step above and the first at or below
        tc = t[i] if i == 0 else t[i - 1] + dt * (path[i - 1] - threshold) / max(path[i - 1] - path[i], 1e-12)
        state, start = NEXT_STATE[state], i
        times[state] = float(tc)
        path[i:] = path[i] - drift[state] * (t[i:] - t[i]) + (noise[i:] - noise[i])
    distance = subject.cognition - config.cognition_threshold.get(subject.diagnosis, math.nan)
    lp = math.log(drift[subject.diagnosis] / max(distance, 1e-6)) if subject.diagnosis in NEXT_STATE else 0.0
    return Conversion(subject.diagnosis, times["MCI"], times["AD"], lp, subject.last_visit_years,
                      drift[subject.diagnosis], t, path)  # fmt: skip


def assign_visit_states(seed: int, subject: Subject, conversion: Conversion, config: SimulationConfig) -> None:
    """Fill each visit's diagnosis and MMSE from the latent conversion times (in place).

    MMSE is the latent cognitive path at the visit (threshold model) or declines at the rate of
    the current state, piecewise linear through the conversions (Weibull model), plus visit noise;
    rounded and clipped to 0-30. The baseline visit keeps the baseline MMSE.
    """
    rng = rng_for(seed, subject.index, "conversion", 1)
    for visit in subject.visits:
        visit.diagnosis = conversion.state_at(visit.time_years)
        if visit.index == 0:
            visit.mmse = subject.mmse
            continue
        if conversion.cognition_path is not None:
            noisy = conversion.cognition_at(visit.time_years) + rng.normal(0.0, config.mmse_visit_sd)
            visit.mmse = float(np.clip(round(noisy), 0, 30))
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
    "decline_multiplier",
    "draw_conversion",
    "first_crossing",
    "linear_predictor",
    "rate_multiplier_path",
    "weibull_scale",
]
