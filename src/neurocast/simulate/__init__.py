"""Synthetic longitudinal brain MRI cohorts with ground truth, written as BIDS datasets.

``simulate_cohort(output_dir, n_subjects, seed, config)`` writes a raw BIDS dataset (one T1w per
visit, ``participants.tsv``, ``sub-*/sub-*_sessions.tsv``, ``dataset_description.json``) and beside
it, in ``derivatives/neurocast-truth/``, everything that made the images: velocity fields,
Jacobians, regional volumes, conversion times, tumour masks, artefacts and transforms. It is the
demo data, the test data, and the yardstick of every model in neurocast.

Example:
    >>> from neurocast.simulate import SimulationConfig, simulate_cohort  # doctest: +SKIP
    >>> truth = simulate_cohort("/tmp/cohort", n_subjects=10, seed=1,
    ...                         config=SimulationConfig(tumour_fraction=0.2))  # doctest: +SKIP
    >>> truth.visits[["participant_id", "session_id", "diagnosis"]].head()  # doctest: +SKIP

This docstring is the one place where the generative model is described. Every parameter is a
field of :class:`SimulationConfig` (``neurocast/simulate/config.py``), listed in the table at the
end with its default and source; the references are given in full in ``config.py``.

The generative model
====================

Everything happens in template space (MNI152NLin2009aSym, nilearn's brain-extracted T1w) on the
working grid of ``grid_spacing_mm`` (default 2 mm), then a scanner "acquires" the head.

1. Subjects (``subjects.py``)
-----------------------------
* Baseline diagnosis CN / MCI / AD in ``diagnosis_proportions``, assigned by a golden-ratio
  low-discrepancy sequence over subject indices (close to the proportions for any cohort size,
  and subject *i* keeps its diagnosis whatever the cohort size).
* Age: normal(``age_mean``, ``age_sd``) truncated to ``age_range`` (55-90). Sex: female with
  probability ``female_fraction``. APOE4 allele count from ``apoe4_probabilities`` by diagnosis.
  MMSE: normal(mean, SD) rounded and clipped to the group's range (``mmse_baseline``).
* Visits: baseline plus ``n_visits - 1`` visits drawn without replacement from
  ``visit_schedule_years`` (ADNI-like, up to ``max_followup_years`` = 5), each jittered by
  normal(0, ``visit_jitter_years``) and rounded to whole days from a synthetic baseline date.
  Session labels are the nominal months (``bl``, ``m06``, ``m12``...); ``acq_time`` is an ISO
  date-time and the true visit time is ``(date - baseline date) / 365.25 days``, exactly what
  :mod:`neurocast.io.bids` computes from it.
* Randomness: each subject and each part of the model has its own ``numpy`` Generator from
  ``SeedSequence(seed, spawn_key=(subject, stream, ...))``, so subjects are independent of the
  cohort size and of each other, and changing e.g. the artefact fraction leaves the anatomy as
  it was. Torch runs single-threaded per subject; gzip headers carry no time stamp; no file holds
  a wall-clock time: the same seed and configuration give byte-identical files (also with
  ``n_jobs > 1``).

2. Anatomy (``anatomy.py``)
---------------------------
* The subject's baseline brain is the template warped by a smooth diffeomorphism
  ``exp(v_anat)`` with ``v_anat = v_volume + v_shape``: ``v_volume`` gives the ventricles their
  size (log scale ``ventricle_log_scale[dx] + ventricle_log_scale_per_decade * (age - 73) / 10 +
  normal(0, ventricle_log_scale_sd)``) and every region group ``baseline_atrophy_years`` of the
  subject's own atrophy (so AD subjects start with small hippocampi); ``v_shape`` is a smooth
  Gaussian random field (RMS ``shape_variation_mm``, correlation ``shape_correlation_mm``).
  Atlas labels (:func:`neurocast.registration.atlas.load_atlas`) are warped with it (nearest).
* Head size and shape are not in this warp: they are the scaling between template space and the
  scanner (``head_scale_sd``, ``head_axis_scale_sd``, ``male_head_scale``), which an affine
  registration to the template removes, as for real data.
* Real anatomy: with ``base_scans`` (e.g. the IXI scans), a real T1w preprocessed into template
  space (:func:`neurocast.registration.preprocess.preprocess_t1w`) is the baseline instead, with
  its own label map when one lies beside it (``<stem>_DLMUSE.nii.gz``), else the atlas. Its
  progression is then simulated exactly like a template subject's.
* Whole head: the template has no skull, so a synthetic shell is laid around the brain mask:
  CSF, inner table, diploe, outer table, muscle, fat and skin layers (``SHELL_LAYERS``, 1.5-3.5 mm
  each) whose thickness varies per subject (x0.85-1.2) and smoothly in space (+-20 %). It is closed
  underneath (no neck). A share ``skull_stripped_fraction`` of subjects is delivered skull-stripped:
  the whole head is acquired (artefacts and noise included) and then every voxel outside the true
  brain mask *of that visit* (the baseline's mask carried by the visit's atrophy and mass effect,
  so it shrinks with the brain) is set to 0, as a skull-stripping tool delivers a scanner's image
  (until 2026-12-07 those subjects were acquired without the shell, so their background held noise
  and their motion ghosts lacked the scalp's, and every visit was stripped with the baseline's
  outline).

3. Progression (``progression.py``, ``fields.py``)
-------------------------------------------------
* Annual volume loss of region group *g* (hippocampus, amygdala, cortex, white matter, deep grey
  matter, cerebellum, brainstem; ventricles expand):
  ``r_g = annual_rates[g][dx] * exp(age_effect_per_decade[dx] * (age - reference_age) / 10
  + apoe4_rate_effect * (apoe4 - mean apoe4 of dx) + female_rate_effect * (female -
  female_fraction) + b + e_g - (subject_rate_sd^2 + region_rate_sd^2) / 2)`` with the subject
  random effect ``b ~ normal(0, subject_rate_sd)`` shared by all regions and ``e_g ~ normal(0,
  region_rate_sd)``; the centring keeps the mean rate of a group that does not convert at
  ``annual_rates[g][dx]``.
* One stationary velocity ``v`` per subject (on the coarse field grid, ``field_spacing_mm``)
  realises these rates: for the map ``exp(-v)`` whose Jacobian is the volume change of baseline
  tissue, ``log J ~ -div v``. We take ``v = grad psi`` and solve the Poisson equation
  ``laplace psi = -log(1 - r_g / 100)`` per group by a discrete cosine transform (zero flux
  through the box faces); the lost volume is balanced by expansion of the extra-cerebral CSF and
  background (the skull does not move). Because the field grid is coarser than the labels, the
  amplitudes of the groups are calibrated by one linear least-squares solve so that the regional
  means of ``-div v`` on the image grid equal the targets (``fields.calibrated_velocity``).
* Visit *t* is the baseline warped by ``exp(s(t) v)`` (:mod:`neurocast.registration.deformation`:
  ``visit = warp(baseline, integrate_velocity(s(t) v))``). The time reparametrisation
  ``s(t) = int_0^t m(u) du``, ``m(u) = prod_k (1 + (a_k - 1) sigmoid((u - T_k) / tau))`` speeds
  atrophy up by ``conversion_acceleration`` around each conversion time ``T_k`` (width
  ``conversion_transition_years``). Without conversion ``s(t) = t``.
* Truth: the velocity ``s(t) v`` (the field taking the baseline to the visit), the volume change
  map ``volume_change_map(s(t) v)`` on the image grid, the regional volumes ``sum over each
  baseline region of J * voxel volume`` (template space, and x the head scaling determinant for
  native mm^3), and the visit's labels (baseline labels warped). The realised regional changes are
  the truth; the designed rates are recorded too (they agree to first order).

4. Conversion (``conversion.py``)
---------------------------------
* Threshold model (``conversion_model="threshold"``, default): a latent cognitive score in MMSE
  points starts at the subject's baseline score (drawn as ``mmse_baseline``; the baseline MMSE is
  its measurement with ``normal(0, mmse_visit_sd)`` noise, rounded) and drifts down by
  ``cognition_decline_per_year[state] * m^cognition_atrophy_coupling * exp(e - centre)`` per year
  (``m`` the subject's atrophy-rate multiplier, ``e ~ normal(0, cognition_decline_sd)``) plus a
  Brownian fluctuation of ``cognition_fluctuation_sd`` per sqrt(year). The subject converts when
  the score first reaches ``cognition_threshold[state]`` (CN -> MCI at 25.5, MCI -> AD at 23.5);
  the drift is then the new state's. Time to conversion is thus set by how far the subject is
  from the threshold and how fast it declines (tied to its atrophy rate), a first-hitting-time
  model (Lee & Whitmore 2006). MCI subjects convert at about 9 % in the first year, 34 % within
  3 years and 55 % within 5 (Risacher 2009: 10-15 % a year); controls at about 1 %, 5 % and 14 %.
* Weibull model (``conversion_model="weibull"``, the default before 2026-12-04): proportional
  hazards ``h(t) = (k / lam) (t / lam)^(k-1) exp(eta)`` with shape ``weibull_shape`` and ``lam``
  set so that a reference subject converts within a year with probability
  ``annual_conversion_probability`` (CN->MCI, MCI->AD), and ``eta = sum of hazard_log_ratio``
  terms: per SD of the subject's atrophy-rate effect ``b``, per APOE4 allele, per decade of age,
  per MMSE point above the group mean, female (covariates centred on their group means). Times
  are drawn by inversion; a CN subject who becomes MCI draws a time to AD from then on with the
  MCI hazard. With these literature hazard ratios the times are mostly noise: the model's own
  linear predictor orders MCI -> AD conversions with a C-index of about 0.6.
* Latent times are kept in the truth; the event is observed when it falls before the last visit,
  otherwise censored there.
* Per-visit diagnosis in ``sessions.tsv`` is the state at the visit time. MMSE is the latent
  score at the visit (threshold model) or declines by ``mmse_decline_per_year`` of the current
  state (Weibull model), plus normal(0, ``mmse_visit_sd``), rounded and clipped to 0-30.

5. Anomalies (``anomalies.py``)
-------------------------------
* Tumours (share ``tumour_fraction`` of subjects) appear at a random visit in deep brain tissue and
  grow radially (``tumour_radius_mm`` at onset, ``tumour_growth_mm_per_year``, up to
  ``tumour_max_radius_mm``), with a lobulated shape (a smooth random field modulating the radius),
  a dark necrotic core, an enhancing rim brighter than white matter and surrounding oedema
  (``tumour_oedema_extent`` x the radius, hypointense). Mass effect: a radial, volume-conserving
  displacement for ``tumour_mass_effect`` of the tumour volume, tapered to zero at 4 radii,
  composed with the atrophy deformation. Truth: label maps (1 core, 2 rim, 3 oedema) in template
  and native space, radius and volumes per visit. (Truth regional volumes describe atrophy only.)
* Artefacts (share ``artefact_fraction`` of visits): TorchIO ``Motion``, ``Ghosting`` or ``Spike``
  (``artefact_types``) with severity mild / moderate / severe (``artefact_severities``); the
  parameter ranges per grade are in ``anomalies.ARTEFACT_RANGES`` and the drawn parameters are in
  ``visits.tsv``.

6. Acquisition (``acquisition.py``)
-----------------------------------
* Per subject: a protocol (``native_voxel_sizes``), a stored orientation (``orientations``, e.g.
  LPS, PSR), a contrast (log gamma ~ normal(0, ``gamma_subject_sd``)) and a scanner gain
  (``intensity_scale_range``); per visit: a head pose (rotation ~ normal(0,
  ``rotation_sd_degrees``) per axis, translation ~ normal(0, ``translation_sd_mm``)), an oblique
  grid tilt of the same size, sometimes another protocol (``protocol_change_probability``), a
  visit gamma (``gamma_visit_sd``), a TorchIO polynomial bias field (``bias_field_order``,
  coefficients uniform in +-``bias_field_max_coefficient``) and Rician noise (SD a fraction of
  white matter drawn from ``noise_fraction_range``). The head (brain plus shell) is resampled
  into the scanner grid, whose field of view covers the head: images are *not* in template space,
  so preprocessing is exercised. Each native voxel is the mean of the anatomy over the voxel
  (``partial_volume_samples`` sub-voxels per axis, trilinear at their centres), as a real voxel
  records its whole extent; noise is added per native voxel after this. Stored as int16. A
  subject delivered skull-stripped is then set to 0 outside the visit's brain mask on the native
  grid (``acquisition.skull_strip``), after the artefact and the noise. The
  true ``native_to_template`` 4x4 matrix of every visit is in the truth (JSON, and an ANTs
  ``.mat`` in image mode).

Outputs
=======
See :mod:`neurocast.simulate.writer` for the file layout and ``data_specs/simulate_*.schema.json``
for the truth tables (``subjects.tsv``, ``visits.tsv``, ``regional_volumes.tsv``).

Parameters (``SimulationConfig`` fields)
========================================

=================================  ==========================================  ==========================================
field                              default                                     source
=================================  ==========================================  ==========================================
diagnosis_proportions              CN 0.4, MCI 0.4, AD 0.2                     ADNI-1-like mix (assumption)
age_range, age_mean, age_sd        (55, 90), 73, 7                             Petersen 2010 (ADNI-1 ages 75 +- 5-8)
female_fraction                    0.5                                         assumption
apoe4_probabilities                CN .73/.24/.03, MCI .47/.42/.11,            carriers ~27/53/66 % (Petersen 2010)
                                   AD .34/.47/.19
mmse_baseline                      CN 29.1+-1.0 [26-30], MCI 27.0+-1.8 [24-30], ADNI-1 means and entry ranges
                                   AD 23.3+-2.0 [18-26]                        (Petersen 2010)
mmse_decline_per_year              CN 0.1, MCI 0.8, AD 2.5                     assumption (typical ADNI); Weibull model
mmse_visit_sd                      0.8                                         assumption
n_visits                           (2, 5)                                      assumption
visit_schedule_years               0.5, 1, 1.5, 2, 3, 4, 5                     ADNI-like schedule
max_followup_years                 5                                           issue (up to 5 years)
visit_jitter_years                 0.06                                        assumption (~3 weeks)
grid_spacing_mm                    2.0                                         the working grid (ARCHITECTURE)
field_spacing_mm                   4.0                                         registration's field grid
head_scale_sd, head_axis_scale_sd  0.04, 0.02                                  assumption (ICV CV ~10 %)
male_head_scale                    1.03                                        ~9 % larger ICV in men
head_volume_ratio_range            0.62, 1.14 (x 1883 ml template mask)        adult ICV ~1170-2150 ml
shape_variation_mm                 2.0                                         assumption
shape_correlation_mm               20.0                                        assumption
ventricle_log_scale                CN 0.45, MCI 0.6, AD 0.8                    assumption
ventricle_log_scale_per_decade     0.2                                         assumption
ventricle_log_scale_sd             0.25                                        assumption
baseline_atrophy_years             6.0                                         assumption
annual_rates (%/yr loss)           hippocampus CN 1.41, MCI 2.55, AD 4.66      Barnes 2009 (CN, AD); Jack 2000 (stable MCI)
                                   amygdala 1.3 / 2.3 / 4.3                    assumption (~0.9 x hippocampus)
                                   cortex 0.5 / 1.0 / 2.0                      assumption (Jack 2004 range)
                                   white_matter 0.3 / 0.5 / 0.8                assumption
                                   deep_gm 0.5 / 1.0 / 1.6                     assumption
                                   cerebellum 0.3 / 0.4 / 0.6                  assumption
                                   brainstem 0.2 / 0.3 / 0.4                   assumption
                                   ventricles -3.0 / -5.0 / -7.5 (expansion)   assumption (Jack 2004, Nestor 2008 range)
reference_age                      73                                          cohort mean age
age_effect_per_decade              CN +0.15, MCI -0.10, AD -0.10               direction Hua 2010, size assumption
apoe4_rate_effect                  0.12 per allele                             direction Hua 2010, Nestor 2008
female_rate_effect                 0.08                                        direction Hua 2010
subject_rate_sd                    0.35                                        assumption (CV ~40 %)
region_rate_sd                     0.12                                        assumption
conversion_acceleration            CN->MCI 1.81, MCI->AD 1.83                  hippocampal rate ratios; Leung 2013
conversion_transition_years        0.5                                         assumption
conversion_model                   threshold                                   first-hitting time, Lee & Whitmore 2006
cognition_threshold                CN 25.5, MCI 23.5                           below the next group's MMSE range
cognition_decline_per_year         CN 0.25, MCI 0.8, AD 2.5                    ADNI-typical MMSE declines; CN assumption
cognition_atrophy_coupling         1.5                                         direction Jack 2004/2005; size assumption
cognition_decline_sd               0.3                                         assumption
cognition_fluctuation_sd           0.6 per sqrt(year)                          sets MCI->AD ~13 %/yr (Risacher 2009)
annual_conversion_probability      CN 0.04, MCI 0.13                           Risacher 2009 (MCI 10-15 %/yr); Weibull model
weibull_shape                      1.3                                         assumption; Weibull model
hazard_log_ratio                   rate_sd 0.53, apoe4 0.35, age_decade 0.18,  Jack 2005 (HR 1.7-1.9 per SD of
                                   mmse_point -0.15, female 0.1                atrophy rate); rest assumption
native_voxel_sizes                 1.5 iso, 1.3x1.3x2, 1.6 iso, 1.2x1.2x1.8    modest for speed (see field doc)
orientations                       RAS, LPS, PSR, LAS, LIP                     variety on purpose
protocol_change_probability        0.15                                        assumption
partial_volume_samples             2 (8 points per voxel)                      voxel averaging, as BrainWeb (Kwan 1999)
rotation_sd_degrees                3.0                                         assumption
translation_sd_mm                  5.0                                         assumption
skull_stripped_fraction            0.25                                        assumption
gamma_subject_sd, gamma_visit_sd   0.12, 0.04                                  assumption
bias_field_order                   3                                           TorchIO default
bias_field_max_coefficient         0.3                                         assumption (TorchIO default 0.5)
noise_fraction_range               (0.01, 0.035)                               SNR 30-100 (assumption)
intensity_scale_range              (500, 1500)                                 assumption
tumour_fraction                    0.0                                         off unless asked
tumour_radius_mm                   (6, 12)                                     assumption
tumour_growth_mm_per_year          (4, 10)                                     assumption
tumour_max_radius_mm               25                                          assumption
tumour_mass_effect                 0.7                                         assumption
tumour_oedema_extent               (1.3, 1.7)                                  assumption
artefact_fraction                  0.0                                         off unless asked
artefact_types                     motion 0.6, ghosting 0.25, spike 0.15       assumption
artefact_severities                mild 0.4, moderate 0.35, severe 0.25        assumption
base_scans                         None (template anatomy)                     option
write_clean_images                 True                                        option
n_jobs                             1                                           option
=================================  ==========================================  ==========================================
"""

from neurocast.simulate.cohort import CohortTruth, simulate_cohort, simulate_subject
from neurocast.simulate.config import (
    DEFAULT_ANNUAL_RATES,
    DIAGNOSES,
    REGION_GROUPS,
    SimulationConfig,
)
from neurocast.simulate.writer import read_velocity

__all__ = [
    "DEFAULT_ANNUAL_RATES",
    "DIAGNOSES",
    "REGION_GROUPS",
    "CohortTruth",
    "SimulationConfig",
    "read_velocity",
    "simulate_cohort",
    "simulate_subject",
]
