"""Subjects: random streams, covariates and visit schedules.

Every random draw of subject ``i`` comes from its own :class:`numpy.random.Generator`, seeded by
``SeedSequence(seed, spawn_key=(i, stream, ...))``. Subject ``i`` is therefore the same in a cohort
of 3 and of 300, and changing one part of the model (say the artefact fraction) does not change
the draws of another (the anatomy), because each part has its own stream.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np

from neurocast.simulate.config import DIAGNOSES, SimulationConfig

STREAMS = {
    "covariates": 0,
    "visits": 1,
    "anatomy": 2,
    "rates": 3,
    "conversion": 4,
    "scanner": 5,
    "acquisition": 6,
    "tumour": 7,
    "artefact": 8,
    "base_scan": 9,
}
"""Independent random streams of a subject (the second element of the spawn key)."""

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
EPOCH = dt.datetime(2008, 1, 1, 0, 0, 0)
"""Earliest possible baseline date (synthetic dates; no wall-clock time enters the data)."""


def rng_for(seed: int, index: int, stream: str, *extra: int) -> np.random.Generator:
    """The generator of one stream of subject ``index`` (``extra`` keys, e.g. a visit index)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}")
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index), STREAMS[stream], *map(int, extra)))
    return np.random.default_rng(ss)


def subject_label(index: int, n_subjects: int) -> str:
    """BIDS label of subject ``index`` (0-based): ``001``, ``002``, ... (wider past 999)."""
    width = max(3, len(str(n_subjects)))
    return f"{index + 1:0{width}d}"


def session_label(nominal_years: float) -> str:
    """BIDS session label from the nominal visit time: ``bl``, ``m06``, ``m12``..."""
    months = round(nominal_years * 12)
    return "bl" if months == 0 else f"m{months:02d}"


@dataclass
class Visit:
    """One visit of a subject.

    Attributes:
        index: 0 for baseline.
        label: session label without ``ses-``.
        nominal_years: scheduled time since baseline.
        time_years: actual time since baseline (from the acquisition dates, 365.25-day years).
        acq_time: ISO date-time of the visit (synthetic).
        age: age at the visit.
    """

    index: int
    label: str
    nominal_years: float
    time_years: float
    acq_time: str
    age: float
    diagnosis: str = "CN"
    mmse: float = 30.0


@dataclass
class Subject:
    """Covariates and visits of one simulated subject."""

    index: int
    label: str
    age: float
    sex: str
    diagnosis: str
    apoe4: int
    mmse: float
    visits: list[Visit] = field(default_factory=list)
    cognition: float = 30.0
    """Latent cognitive score at baseline (MMSE points, not rounded): the start of the threshold
    conversion model's path; the baseline MMSE is its noisy, rounded measurement."""

    @property
    def participant_id(self) -> str:
        """``sub-<label>``."""
        return f"sub-{self.label}"

    @property
    def female(self) -> bool:
        """True for women."""
        return self.sex == "F"

    @property
    def last_visit_years(self) -> float:
        """Time of the last visit since baseline (the censoring time)."""
        return self.visits[-1].time_years if self.visits else 0.0


def baseline_diagnosis(seed: int, index: int, proportions: dict[str, float]) -> str:
    """Diagnosis of subject ``index`` by a golden-ratio sequence (close to the proportions for any
    cohort size, and the same for subject ``index`` whatever the cohort size)."""
    offset = np.random.SeedSequence(entropy=int(seed)).generate_state(1)[0] / 2.0**32
    u = (offset + (index + 1) * GOLDEN) % 1.0
    total = sum(proportions.get(d, 0.0) for d in DIAGNOSES)
    acc = 0.0
    for d in DIAGNOSES:
        acc += proportions.get(d, 0.0) / total
        if u < acc:
            return d
    return [d for d in DIAGNOSES if proportions.get(d, 0.0) > 0][-1]


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    if sd <= 0 or lo == hi:
        return float(np.clip(mean, lo, hi))
    for _ in range(1000):
        x = rng.normal(mean, sd)
        if lo <= x <= hi:
            return float(x)
    return float(rng.uniform(lo, hi))


def draw_subject(seed: int, index: int, n_subjects: int, config: SimulationConfig) -> Subject:
    """Draw the covariates and the visit schedule of subject ``index``.

    Diagnoses and visit times only; per-visit diagnoses and MMSE are filled in by
    :mod:`neurocast.simulate.conversion`.
    """
    dx = baseline_diagnosis(seed, index, config.diagnosis_proportions)
    rng = rng_for(seed, index, "covariates")
    lo, hi = config.age_range
    age = round(_truncated_normal(rng, config.age_mean, config.age_sd, lo, hi), 2)
    sex = "F" if rng.random() < config.female_fraction else "M"
    probs = np.asarray(config.apoe4_probabilities[dx], dtype=float)
    apoe4 = int(rng.choice(3, p=probs / probs.sum()))
    mean, sd, mlo, mhi = config.mmse_baseline[dx]
    latent = float(rng.normal(mean, sd))
    cognition = float(np.clip(latent, mlo, mhi))
    if config.conversion_model == "threshold":
        # the baseline MMSE measures the latent score with the visits' noise (last draw of the stream)
        mmse = float(np.clip(round(cognition + rng.normal(0.0, config.mmse_visit_sd)), mlo, mhi))
    else:
        mmse = float(np.clip(round(latent), mlo, mhi))
    subject = Subject(index, subject_label(index, n_subjects), age, sex, dx, apoe4, mmse, cognition=cognition)
    subject.visits = draw_visits(seed, index, age, config)
    return subject


def draw_visits(seed: int, index: int, age: float, config: SimulationConfig) -> list[Visit]:
    """Irregular visits: baseline plus a random subset of the nominal schedule, jittered."""
    rng = rng_for(seed, index, "visits")
    schedule = [t for t in config.visit_schedule_years if 0 < t <= config.max_followup_years]
    lo, hi = config.n_visits
    hi = min(hi, len(schedule) + 1)
    lo = min(lo, hi)
    n = int(rng.integers(lo, hi + 1))
    nominal = [0.0, *sorted(float(t) for t in rng.choice(schedule, size=n - 1, replace=False))]
    start_day = int(rng.integers(0, 4 * 365))
    base = EPOCH + dt.timedelta(days=start_day)
    visits: list[Visit] = []
    prev_day = -1
    t0 = None
    for k, tn in enumerate(nominal):
        if k == 0:
            day = 0
        else:
            jitter = rng.normal(0.0, config.visit_jitter_years)
            day = round((tn + jitter) * 365.25)
            day = min(max(day, prev_day + 30), int(config.max_followup_years * 365.25))
            day = max(day, prev_day + 1)
        prev_day = day
        minutes = int(rng.integers(8 * 12, 17 * 12)) * 5  # 08:00-17:00 in 5-minute steps
        when = base + dt.timedelta(days=day, minutes=minutes)
        if t0 is None:
            t0 = when
        t = (when - t0).total_seconds() / (365.25 * 86400.0)
        visits.append(
            Visit(k, session_label(tn), tn, t, when.strftime("%Y-%m-%dT%H:%M:%S"), round(age + t, 2))
        )
    return visits
