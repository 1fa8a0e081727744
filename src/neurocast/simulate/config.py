"""Every parameter of the simulation, with its default and where the default comes from.

:class:`SimulationConfig` is a plain dataclass: the command line maps its options onto the fields,
``to_dict()`` records it in the truth's provenance, ``from_dict()`` reads it back. The model these
parameters drive is described in :mod:`neurocast.simulate` (the package docstring).

References (cited by short name in the field docs):

* **Barnes 2009**: Barnes J, Bartlett JW, van de Pol LA, et al. A meta-analysis of hippocampal
  atrophy rates in Alzheimer's disease. *Neurobiol Aging* 2009;30(11):1711-1723. Annualised
  hippocampal atrophy 4.66 %/yr (95 % CI 3.92-5.40) in AD, 1.41 %/yr (0.52-2.30) in controls.
* **Jack 2000**: Jack CR Jr, Petersen RC, Xu Y, et al. Rates of hippocampal atrophy correlate with
  change in clinical status in aging and AD. *Neurology* 2000;55(4):484-489. Annualised hippocampal
  loss 1.73 %/yr in stable controls, 2.55 %/yr in stable MCI, higher in those who declined.
* **Jack 2004**: Jack CR Jr, Shiung MM, Gunter JL, et al. Comparison of different MRI brain atrophy
  rate measures with clinical disease progression in AD. *Neurology* 2004;62(4):591-600.
  (Hippocampus, entorhinal, whole brain and ventricle rates in CN, MCI and AD.)
* **Jack 2005**: Jack CR Jr, Shiung MM, Weigand SD, et al. Brain atrophy rates predict subsequent
  clinical conversion in normal elderly and amnestic MCI. *Neurology* 2005;65(8):1227-1231.
  Hazard ratio of conversion per 1-SD faster ventricular expansion 1.9 (CN) and 1.7 (MCI).
* **Leung 2013**: Leung KK, Bartlett JW, Barnes J, et al. Cerebral atrophy in mild cognitive
  impairment and Alzheimer disease: rates and acceleration. *Neurology* 2013;80(7):648-654.
  Hippocampal atrophy in MCI accelerates by 0.22 %/yr^2, by 0.50 %/yr^2 in MCI who progress.
* **Lee & Whitmore 2006**: Lee MLT, Whitmore GA. Threshold regression for survival analysis:
  modeling event times by a stochastic process reaching a boundary. *Statistical Science*
  2006;21(4):501-513. (Event = first time a drifting latent process reaches a threshold.)
* **Nestor 2008**: Nestor SM, Rupsingh R, Borrie M, et al. Ventricular enlargement as a possible
  measure of Alzheimer's disease progression validated using the ADNI database. *Brain*
  2008;131(9):2443-2454. (Ventricular enlargement AD > MCI > controls, faster in APOE4 carriers.)
* **Hua 2010**: Hua X, Hibar DP, Lee S, et al. Sex and age differences in atrophic rates: an ADNI
  study with N=1368 MRI scans. *Neurobiol Aging* 2010;31(8):1463-1480. Faster atrophy in women,
  in younger MCI/AD subjects, and with more APOE4 alleles.
* **Petersen 2010**: Petersen RC, Aisen PS, Beckett LA, et al. Alzheimer's Disease Neuroimaging
  Initiative (ADNI): clinical characterization. *Neurology* 2010;74(3):201-209. (ADNI-1 baseline:
  ages, MMSE and APOE4 carrier frequencies by group.)
* **Risacher 2009**: Risacher SL, Saykin AJ, West JD, et al. Baseline MRI predictors of conversion
  from MCI to probable AD in the ADNI cohort. *Curr Alzheimer Res* 2009;6(4):347-361. (MCI: 10-15 %
  annual risk of conversion to AD.)

Values marked *assumption* are round numbers chosen to lie in the range these papers report, not
values taken from one table; the plausibility benchmark (``benchmarks/simulate_plausibility.py``)
compares what the simulator produces with the published hippocampal rates.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DIAGNOSES = ("CN", "MCI", "AD")
"""Diagnostic groups, in order of severity."""

REGION_GROUPS = (
    "hippocampus",
    "amygdala",
    "cortex",
    "white_matter",
    "deep_gm",
    "cerebellum",
    "brainstem",
    "ventricles",
)
"""Region groups with their own atrophy rate. Atlas regions are mapped onto them by name (see
:func:`neurocast.simulate.anatomy.region_group`); everything else (extra-cerebral CSF and the
background inside the working grid) is the *balance* that absorbs the volume lost by tissue."""

DEFAULT_ANNUAL_RATES: dict[str, dict[str, float]] = {
    # percent volume LOSS per year at the group's reference age (negative = expansion)
    "hippocampus": {"CN": 1.41, "MCI": 2.55, "AD": 4.66},  # Barnes 2009 (CN, AD); Jack 2000 (stable MCI 2.55; converters accelerate)
    "amygdala": {"CN": 1.3, "MCI": 2.3, "AD": 4.3},  # assumption: ~0.9 x hippocampus
    "cortex": {"CN": 0.5, "MCI": 1.0, "AD": 2.0},  # assumption (order of Jack 2004 whole brain / regional cortex rates)
    "white_matter": {"CN": 0.3, "MCI": 0.5, "AD": 0.8},  # assumption
    "deep_gm": {"CN": 0.5, "MCI": 1.0, "AD": 1.6},  # assumption
    "cerebellum": {"CN": 0.3, "MCI": 0.4, "AD": 0.6},  # assumption
    "brainstem": {"CN": 0.2, "MCI": 0.3, "AD": 0.4},  # assumption
    "ventricles": {"CN": -3.0, "MCI": -5.0, "AD": -7.5},  # expansion; assumption in the range of Jack 2004 / Nestor 2008
}
"""Annual volume loss in percent per region group and diagnosis (negative: expansion): the mean
over subjects of that diagnosis who stay in it (covariates and random effects are centred so that
the group mean is this value); converters speed up by :attr:`SimulationConfig.conversion_acceleration`."""


CONVERSION_MODELS = ("threshold", "weibull")
"""Models of the conversion times (:attr:`SimulationConfig.conversion_model`)."""

EXECUTION_FIELDS = ("n_jobs",)
"""Fields that change how the simulation runs, never what it writes."""


def _rates() -> dict[str, dict[str, float]]:
    return {k: dict(v) for k, v in DEFAULT_ANNUAL_RATES.items()}


_RANGE_FLOORS: dict[str, float] = {
    "noise_fraction_range": 0.0,
    "intensity_scale_range": 1e-6,
    "tumour_radius_mm": 1e-6,
    "tumour_growth_mm_per_year": 0.0,
    "tumour_oedema_extent": 1.0,
}
"""``(min, max)`` fields of :class:`SimulationConfig` and the smallest ``min`` each allows."""


@dataclass
class SimulationConfig:
    """Parameters of a simulated cohort.

    Every field has a default and a docstring saying where the default comes from (references in
    the module docstring). Fields are grouped: cohort and covariates, visits, anatomy, progression,
    conversion, acquisition, anomalies, inputs and outputs.
    """

    # --- cohort -------------------------------------------------------------------------------
    diagnosis_proportions: dict[str, float] = field(
        default_factory=lambda: {"CN": 0.4, "MCI": 0.4, "AD": 0.2}
    )
    """Share of each baseline diagnosis. Assigned by a low-discrepancy sequence over subject
    indices, so any cohort size gets close to these proportions and subject ``i`` keeps its
    diagnosis whatever the cohort size. Default: ADNI-1-like mix (assumption)."""
    age_range: tuple[float, float] = (55.0, 90.0)
    """Baseline ages are drawn from a normal distribution truncated to this range."""
    age_mean: float = 73.0
    """Mean of the (untruncated) baseline age distribution; ADNI-1 means are 75-76 (Petersen 2010)."""
    age_sd: float = 7.0
    """Standard deviation of the baseline age distribution (Petersen 2010: 5-8 years by group)."""
    female_fraction: float = 0.5
    """Probability that a subject is female."""
    apoe4_probabilities: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: {
            "CN": (0.73, 0.24, 0.03),
            "MCI": (0.47, 0.42, 0.11),
            "AD": (0.34, 0.47, 0.19),
        }
    )
    """Probability of 0, 1, 2 APOE4 alleles by diagnosis; carrier rates ~27 % CN, ~53 % MCI,
    ~66 % AD as in ADNI-1 (Petersen 2010); the split between 1 and 2 alleles is an assumption."""
    mmse_baseline: dict[str, tuple[float, float, float, float]] = field(
        default_factory=lambda: {
            "CN": (29.1, 1.0, 26.0, 30.0),
            "MCI": (27.0, 1.8, 24.0, 30.0),
            "AD": (23.3, 2.0, 18.0, 26.0),
        }
    )
    """Baseline MMSE (mean, SD, min, max) by diagnosis; means as ADNI-1 (Petersen 2010), ranges
    its entry criteria (CN/MCI 24-30, AD 20-26), widened slightly (assumption)."""
    mmse_decline_per_year: dict[str, float] = field(
        default_factory=lambda: {"CN": 0.1, "MCI": 0.8, "AD": 2.5}
    )
    """Weibull conversion model only: annual MMSE decline in the current diagnostic state
    (assumption, typical of ADNI). The threshold model uses :attr:`cognition_decline_per_year`."""
    mmse_visit_sd: float = 0.8
    """Visit-to-visit MMSE noise (points); scores are rounded and clipped to 0-30."""

    # --- visits -------------------------------------------------------------------------------
    n_visits: tuple[int, int] = (2, 5)
    """Smallest and largest number of visits per subject (baseline included), drawn uniformly."""
    visit_schedule_years: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
    """Nominal follow-up times; each subject attends a random subset (ADNI-like schedule)."""
    max_followup_years: float = 5.0
    """No follow-up later than this."""
    visit_jitter_years: float = 0.06
    """SD of the deviation of a visit from its nominal time (about 3 weeks)."""

    # --- anatomy ------------------------------------------------------------------------------
    grid_spacing_mm: float = 2.0
    """Voxel size of the template-space working grid the anatomy lives on (and the truth maps)."""
    field_spacing_mm: float = 4.0
    """Voxel size of the velocity fields (the same box, coarser grid); 4 mm as the registration
    module's default field grid. Never finer than the working grid: the field grid used is
    :attr:`effective_field_spacing_mm`."""
    head_scale_sd: float = 0.04
    """SD of the per-subject global linear head size factor (template to native scaling)."""
    head_axis_scale_sd: float = 0.02
    """SD of the per-axis head shape factor, on top of the global one."""
    male_head_scale: float = 1.03
    """Linear head size factor of men relative to women (~9 % larger intracranial volume)."""
    head_volume_ratio_range: tuple[float, float] = (0.62, 1.14)
    """Range of the head's volume relative to the template (1883 ml brain mask): draws outside are
    scaled back to it (uniformly on all axes), keeping intracranial volumes within the adult range
    ~1170 to ~2150 ml (preprocessing's QC accepts brain masks up to
    :data:`neurocast.registration.preprocess.MASK_VOLUME_RANGE_ML`, ~10 % above this range)."""
    shape_variation_mm: float = 2.0
    """RMS of the random smooth anatomical deformation (mm)."""
    shape_correlation_mm: float = 20.0
    """Correlation length of the random anatomical deformation (mm)."""
    ventricle_log_scale: dict[str, float] = field(
        default_factory=lambda: {"CN": 0.45, "MCI": 0.6, "AD": 0.8}
    )
    """Mean log ventricle size of a 73-year-old subject relative to the (young adult) template, by
    diagnosis (assumption: elderly ventricles are 1.5-2.5x those of young adults)."""
    ventricle_log_scale_per_decade: float = 0.2
    """Increase of the log ventricle size per decade of age (assumption)."""
    ventricle_log_scale_sd: float = 0.25
    """Between-subject SD of the log ventricle size (assumption)."""
    baseline_atrophy_years: float = 6.0
    """Baseline anatomy already carries this many years of the subject's own regional atrophy
    (so AD subjects start with smaller hippocampi); assumption."""

    # --- progression --------------------------------------------------------------------------
    annual_rates: dict[str, dict[str, float]] = field(default_factory=_rates)
    """Annual percent volume loss per region group and diagnosis (negative = expansion). See
    :data:`DEFAULT_ANNUAL_RATES` for the sources."""
    reference_age: float = 73.0
    """Age at which :attr:`annual_rates` hold."""
    age_effect_per_decade: dict[str, float] = field(
        default_factory=lambda: {"CN": 0.15, "MCI": -0.10, "AD": -0.10}
    )
    """Change of the log atrophy rate per decade of age: older controls atrophy faster, younger
    MCI/AD patients faster (direction as Hua 2010; size an assumption)."""
    apoe4_rate_effect: float = 0.12
    """Change of the log atrophy rate per APOE4 allele above the diagnosis group's mean allele
    count (direction as Hua 2010 and Nestor 2008)."""
    female_rate_effect: float = 0.08
    """Change of the log atrophy rate for women, centred on :attr:`female_fraction` (direction as
    Hua 2010)."""
    subject_rate_sd: float = 0.35
    """SD of the subject random effect on the log atrophy rate, shared by all regions (assumption
    giving between-subject coefficients of variation of ~40 %). The random effects enter as
    ``exp(b + e - (subject_rate_sd^2 + region_rate_sd^2) / 2)`` so they leave the mean unchanged."""
    region_rate_sd: float = 0.12
    """SD of the region-specific random effect on the log atrophy rate (assumption)."""
    conversion_acceleration: dict[str, float] = field(
        default_factory=lambda: {"CN": 1.81, "MCI": 1.83}
    )
    """Factor by which all atrophy rates grow when a CN subject converts to MCI (CN->MCI) or an
    MCI subject to AD (MCI->AD); default = ratio of the hippocampal rates of the two groups
    (2.55 / 1.41 and 4.66 / 2.55), so a converter ends up at the next group's rate, consistent with
    the acceleration in converters of Leung 2013."""
    conversion_transition_years: float = 0.5
    """Width of the smooth rate change around a conversion (years)."""

    # --- conversion ---------------------------------------------------------------------------
    conversion_model: str = "threshold"
    """How conversion times arise. ``"threshold"`` (default): a latent cognitive score (MMSE
    points) starts at the subject's baseline score, declines with a subject-specific drift tied to
    the atrophy rate plus Brownian fluctuations, and the subject converts when it first crosses
    :attr:`cognition_threshold` (a first-hitting-time model, Lee & Whitmore 2006; the diagnosis of
    dementia is a threshold on progressive decline). ``"weibull"``: the proportional-hazards model
    of :attr:`annual_conversion_probability`, :attr:`weibull_shape` and :attr:`hazard_log_ratio`
    (the default before 2026-12-04; give it to reproduce cohorts simulated before then)."""
    cognition_threshold: dict[str, float] = field(default_factory=lambda: {"CN": 25.5, "MCI": 23.5})
    """Latent score (MMSE points) at which a subject leaves the state: CN -> MCI at 25.5, MCI -> AD
    at 23.5, half a point below the lowest baseline MMSE of the next milder group's range
    (:attr:`mmse_baseline`), so every subject starts above its threshold (assumption)."""
    cognition_decline_per_year: dict[str, float] = field(
        default_factory=lambda: {"CN": 0.25, "MCI": 0.8, "AD": 2.5}
    )
    """Mean drift of the latent cognitive score (MMSE points per year) in each state (threshold
    model): MCI 0.8 and AD 2.5 as typical ADNI MMSE declines; CN 0.25 (assumption, set with
    :attr:`cognition_fluctuation_sd` so that about 3 % of controls a year become MCI)."""
    cognition_atrophy_coupling: float = 1.5
    """Exponent linking the subject's cognitive decline to its atrophy rate: the drift is
    :attr:`cognition_decline_per_year` of the current state times ``m^coupling`` (``m`` = the subject's
    atrophy-rate multiplier from covariates and random effect, mean-centred), so faster atrophy
    means faster decline and earlier conversion (Jack 2004, Jack 2005: atrophy rates track and
    predict clinical decline); size an assumption."""
    cognition_decline_sd: float = 0.3
    """SD of a subject's log cognitive-decline multiplier not explained by its atrophy rate
    (assumption)."""
    cognition_fluctuation_sd: float = 0.6
    """SD of the latent score's Brownian fluctuation over one year (MMSE points per sqrt(year));
    with the decline rates and thresholds it sets the annual conversion probabilities (about 13 %
    MCI -> AD, Risacher 2009; about 4 % CN -> MCI); assumption."""
    annual_conversion_probability: dict[str, float] = field(
        default_factory=lambda: {"CN": 0.04, "MCI": 0.13}
    )
    """Weibull model only: probability of converting within the first year for a reference subject:
    MCI->AD 10-15 % (Risacher 2009), CN->MCI 4 % (assumption)."""
    weibull_shape: float = 1.3
    """Weibull model only: shape of the baseline hazard (>1: risk grows with time; assumption)."""
    hazard_log_ratio: dict[str, float] = field(
        default_factory=lambda: {
            "rate_sd": 0.53,  # log(1.7): HR per 1-SD faster atrophy (Jack 2005: 1.7-1.9)
            "apoe4": 0.35,  # per allele (assumption, HR ~1.4)
            "age_decade": 0.18,  # per decade (assumption, HR ~1.2)
            "mmse_point": -0.15,  # per MMSE point above the group mean (assumption)
            "female": 0.1,  # assumption
        }
    )
    """Weibull model only: log hazard ratios of the proportional-hazards conversion model. APOE4 and sex are centred on
    the group means (mean allele count of :attr:`apoe4_probabilities`, :attr:`female_fraction`),
    age on :attr:`reference_age`, MMSE on the group's mean: a subject with average covariates has
    the hazard given by :attr:`annual_conversion_probability`."""

    # --- acquisition --------------------------------------------------------------------------
    native_voxel_sizes: tuple[tuple[float, float, float], ...] = (
        (1.5, 1.5, 1.5),
        (1.3, 1.3, 2.0),
        (1.6, 1.6, 1.6),
        (1.2, 1.2, 1.8),
    )
    """Scanner protocols (voxel sizes in mm along the stored axes), one drawn per subject. Kept
    modest (the anatomy itself lives on the 2 mm grid, and 40 subjects x 4 visits must simulate in
    minutes on two cores); real 1 mm protocols can be asked for here."""
    orientations: tuple[str, ...] = ("RAS", "LPS", "PSR", "LAS", "LIP")
    """Stored voxel-axis orientations (nibabel axis codes), one per subject's scanner."""
    protocol_change_probability: float = 0.15
    """Probability that a follow-up visit uses another protocol (scanner upgrade)."""
    partial_volume_samples: int = 2
    """Sub-voxels per axis over which each native voxel averages the anatomy (the partial-volume
    effect of a voxel's finite extent, as in BrainWeb): 2 reads 8 points per voxel; 1 reads the
    voxel centre only (the simulator before 2026-12-05), which makes the images of two head poses
    differ by more than their anatomy (:func:`neurocast.simulate.acquisition.sample_voxel_average`)."""
    rotation_sd_degrees: float = 3.0
    """SD of the head rotation about each axis per visit (oblique positioning); clipped at 3 SD."""
    translation_sd_mm: float = 5.0
    """SD of the head translation per visit and axis."""
    skull_stripped_fraction: float = 0.25
    """Share of subjects whose images are delivered skull-stripped: acquired with the synthetic
    scalp/skull shell like every head, then set to 0 outside the visit's brain mask (the baseline's
    carried by the visit's deformation; :func:`neurocast.simulate.acquisition.skull_strip`)."""
    gamma_subject_sd: float = 0.12
    """SD of the per-subject log gamma of the contrast curve (TorchIO Gamma)."""
    gamma_visit_sd: float = 0.04
    """SD of the per-visit log gamma on top of the subject's."""
    bias_field_order: int = 3
    """Polynomial order of the multiplicative bias field (TorchIO BiasField)."""
    bias_field_max_coefficient: float = 0.3
    """Coefficients of the bias field are drawn uniformly in +-this value per visit."""
    noise_fraction_range: tuple[float, float] = (0.01, 0.035)
    """Rician noise SD as a fraction of the white-matter intensity, drawn per visit (SNR 30-100)."""
    intensity_scale_range: tuple[float, float] = (500.0, 1500.0)
    """White matter maps to this range of stored integer values (per subject scanner gain)."""

    # --- anomalies ----------------------------------------------------------------------------
    tumour_fraction: float = 0.0
    """Share of subjects who have a tumour (it appears at a random visit and grows)."""
    tumour_radius_mm: tuple[float, float] = (6.0, 12.0)
    """Radius of the enhancing tumour when it first appears."""
    tumour_growth_mm_per_year: tuple[float, float] = (4.0, 10.0)
    """Radial growth speed (mm per year), drawn per tumour."""
    tumour_max_radius_mm: float = 25.0
    """Growth stops at this radius."""
    tumour_mass_effect: float = 0.7
    """Share of the tumour volume that pushes the surrounding tissue away (the rest infiltrates)."""
    tumour_oedema_extent: tuple[float, float] = (1.3, 1.7)
    """Outer radius of the oedema as a multiple of the tumour radius."""
    artefact_fraction: float = 0.0
    """Share of visits with an acquisition artefact."""
    artefact_types: dict[str, float] = field(
        default_factory=lambda: {"motion": 0.6, "ghosting": 0.25, "spike": 0.15}
    )
    """Relative frequency of each artefact type (TorchIO Motion, Ghosting, Spike)."""
    artefact_severities: dict[str, float] = field(
        default_factory=lambda: {"mild": 0.4, "moderate": 0.35, "severe": 0.25}
    )
    """Relative frequency of each severity grade."""

    # --- inputs and outputs -------------------------------------------------------------------
    base_scans: str | None = None
    """Folder of real T1w scans (e.g. IXI) used as baseline anatomy instead of the template; one
    is picked per subject. Needs the registration module's preprocessing."""
    write_clean_images: bool = True
    """Also write each visit's noise-free template-space image (the truth before acquisition)."""
    n_jobs: int = 1
    """Subjects simulated in parallel processes (each single-threaded, so results do not depend
    on it). The processes are started with ``spawn``: a script that calls :func:`simulate_cohort`
    with ``n_jobs > 1`` needs the usual ``if __name__ == "__main__":`` guard."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check ranges and consistency; raises ``ValueError`` naming the field."""
        p = self.diagnosis_proportions
        if set(p) - set(DIAGNOSES) or any(v < 0 for v in p.values()) or sum(p.values()) <= 0:
            raise ValueError(
                f"diagnosis_proportions must map CN/MCI/AD to non-negative weights, got {p}"
            )
        lo, hi = self.age_range
        if not 0 < lo <= hi <= 120:
            raise ValueError(f"age_range must satisfy 0 < min <= max <= 120, got {self.age_range}")
        lo, hi = self.head_volume_ratio_range
        if not 0.2 <= lo <= hi <= 3.0:
            raise ValueError(f"head_volume_ratio_range must satisfy 0.2 <= min <= max <= 3, got {self.head_volume_ratio_range}")
        a, b = self.n_visits
        if not 1 <= a <= b <= len(self.visit_schedule_years) + 1:
            raise ValueError(
                f"n_visits must satisfy 1 <= min <= max <= {len(self.visit_schedule_years) + 1}, "
                f"got {self.n_visits}"
            )
        if not 0.5 <= self.grid_spacing_mm <= 8:
            raise ValueError(f"grid_spacing_mm must be in 0.5-8 mm, got {self.grid_spacing_mm}")
        if not 0.5 <= self.field_spacing_mm <= 16:
            raise ValueError(f"field_spacing_mm must be in 0.5-16 mm, got {self.field_spacing_mm}")
        for name in ("tumour_fraction", "artefact_fraction", "skull_stripped_fraction",
                     "female_fraction", "protocol_change_probability"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for g in self.annual_rates:
            if g not in REGION_GROUPS:
                raise ValueError(f"annual_rates: unknown region group {g!r}; known: {REGION_GROUPS}")
            for dx, r in self.annual_rates[g].items():
                if dx not in DIAGNOSES or not -50 < r < 50:
                    raise ValueError(f"annual_rates[{g!r}][{dx!r}] = {r} is out of range")
        if not isinstance(self.partial_volume_samples, int) or not 1 <= self.partial_volume_samples <= 4:
            raise ValueError(f"partial_volume_samples must be an integer from 1 to 4, got {self.partial_volume_samples!r}")
        if not self.native_voxel_sizes or any(
            len(v) != 3 or min(v) <= 0 or max(v) > 8 for v in self.native_voxel_sizes
        ):
            raise ValueError(f"native_voxel_sizes must be triples in (0, 8] mm, got {self.native_voxel_sizes}")
        import nibabel as nib

        for code in self.orientations:
            try:
                nib.orientations.axcodes2ornt(tuple(code))
            except Exception as exc:
                raise ValueError(f"orientations: {code!r} is not a valid axis code") from exc
            if len(code) != 3 or len({c for c in code.replace("L", "R").replace("P", "A").replace("I", "S")}) != 3:
                raise ValueError(f"orientations: {code!r} must name three different axes")
        if self.n_jobs < 1:
            raise ValueError(f"n_jobs must be >= 1, got {self.n_jobs}")
        if self.conversion_model not in CONVERSION_MODELS:
            raise ValueError(f"conversion_model must be one of {CONVERSION_MODELS}, got {self.conversion_model!r}")
        for f in dataclasses.fields(self):  # every SD, the cognition ones included
            v = getattr(self, f.name)
            if "_sd" in f.name and isinstance(v, int | float) and not v >= 0:
                raise ValueError(f"{f.name} is a standard deviation and must be >= 0, got {v}")
        # (min, max) draws: the lowest allowed min of each
        for name, low in _RANGE_FLOORS.items():
            try:
                lo, hi = (float(x) for x in getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name} must be a pair (min, max) of numbers, got {getattr(self, name)!r}"
                ) from None
            if not low <= lo <= hi:
                raise ValueError(
                    f"{name} must be (min, max) with {low} <= min <= max, got {getattr(self, name)}"
                )
        if not self.max_followup_years > 0:
            raise ValueError(f"max_followup_years must be > 0, got {self.max_followup_years}")
        if not self.bias_field_max_coefficient >= 0:
            raise ValueError(
                f"bias_field_max_coefficient must be >= 0, got {self.bias_field_max_coefficient}"
            )

    def mean_apoe4(self, diagnosis: str) -> float:
        """Expected APOE4 allele count of a diagnosis group."""
        p = self.apoe4_probabilities.get(diagnosis, (1.0, 0.0, 0.0))
        return float((p[1] + 2 * p[2]) / max(sum(p), 1e-12))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def model_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields that cannot change the output (``n_jobs``): what
        provenance records and hashes."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationConfig:
        """Build a config from :meth:`to_dict` output (unknown keys are an error)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"unknown SimulationConfig field(s): {sorted(unknown)}")
        kwargs = {}
        for k, v in data.items():
            default = getattr(cls(), k)
            if isinstance(default, tuple) and isinstance(v, list):
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            if isinstance(default, dict) and isinstance(v, dict):
                v = {kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in v.items()}
            kwargs[k] = v
        return cls(**kwargs)

    def with_updates(self, **changes: Any) -> SimulationConfig:
        """A copy with some fields replaced (validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def effective_field_spacing_mm(self) -> float:
        """The field grid's spacing: ``field_spacing_mm``, but never finer than the working grid."""
        return max(float(self.field_spacing_mm), float(self.grid_spacing_mm))

    @property
    def base_scans_path(self) -> Path | None:
        """:attr:`base_scans` as a path."""
        return None if self.base_scans is None else Path(self.base_scans)
