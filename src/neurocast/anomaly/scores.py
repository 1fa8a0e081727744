"""Per-scan scores: a lesion score (compact, local residual) and an artefact score (diffuse).

**Lesion evidence** (:func:`lesion_evidence`): two readings of the anomaly map.

* ``mass`` (:func:`lesion_score`): the mass of the largest cluster of the map above the
  calibrated voxel threshold (:func:`neurocast.anomaly.maps.components`): the sum of the map's
  excess over the threshold in that cluster, times the voxel volume (mm³ x the map's units).
  Clusters smaller than ``min_voxels`` do not count. 0 when there is no cluster.
* ``peak``: the map's highest value in the region (the eroded brain mask).

A large tumour makes one strong, extended cluster; a small one can leave a light cluster but a
high peak; healthy scans have at most small, weak clusters and moderate peaks.

**Lesion score** (:func:`combined_lesion_score`): the larger of the two, each divided by its own
threshold over the healthy references (``Calibration.lesion_scales``), so a scan is flagged when
either reading stands out. Calibrated the same way as any score: the lesion threshold is set on
the references' combined scores (1 when there are too few references for the rate and the
scales are the references' largest values). Calibrations from before the peak was read
(no ``lesion_scales``) keep the mass alone as the score. Chosen on the benchmark's development
cohorts and checked on a third before the test cohort was scored (``BENCHMARKS.md``, session
22): mass or peak flagged 48 of 61 development tumour visits against 44 for the mass alone, with
no healthy visit flagged by either.

A scan whose residual is raised everywhere beyond every healthy reference (another scanner,
motion) would raise its clusters and its peak too; the detector first divides such a map by
:func:`level_scale`, so that the lesion evidence reads local excess only.

**How compact the evidence is** (:func:`largest_cluster_share`): the share of the supra-threshold
mass that the largest cluster holds. A tumour's map is one dominant cluster (share 0.84-1.00 on
the development tumours whose artefact score was also over its threshold); severe motion scatters
its excess over dozens of clusters (0.20-0.59). When both scores are over their thresholds the
flag names the lesion only where the share is at least
:data:`neurocast.anomaly.calibration.COMPACT_SHARE` (0.5), and the artefact otherwise
(:meth:`neurocast.anomaly.calibration.Calibration.flag`).

**Artefact score** (:func:`artefact_score`): motion, ghosting and spikes spread over the whole
image. The evidence, each oriented so that larger means worse (:func:`artefact_features`):

==================  =================================================================
feature             what
==================  =================================================================
``residual_median`` median of the anomaly map over the eroded brain (diffuse residual)
``residual_p90``    its 90th percentile
``cjv``             joint variation of GM and WM (blurring mixes them); tissue classes from
                    the brain's core (:func:`neurocast.anomaly.iqm.segment_tissues`)
``ghost_ratio``     air energy in the head's shadow along an axis over the air outside
                    it (:func:`neurocast.anomaly.iqm.ghost_ratio`): phase-encoding ghosts
``spike_z``         a point of the scan's spectrum far above its shell of spatial
                    frequency (:func:`neurocast.anomaly.kspace.spike_peak`): RF spikes
==================  =================================================================

Each defined feature is turned into a robust z-score against the healthy references
(``(value - median) / scale``, ``scale`` = 1.4826 x MAD, floored per feature, see
:func:`reference_statistics` and :data:`MIN_SCALE`) and the artefact score is the mean of the
z-scores of the features that are defined for this scan (skull-stripped scans have no ghost
ratio), each z-score first clipped to ``±Z_CLIP`` (3). The combination is unsupervised: it uses
no labelled artefacts (the logistic-regression baseline of the benchmark does).

**The spike has its own threshold.** The four features above are averaged because diffuse
artefacts move several of them a little. An RF spike moves one feature, ``spike_z``, a lot and the
others hardly at all (its stripes are faint against the noise, and a skull-stripping tool keeps
them inside the brain), so in the mean it could never reach the threshold; and taking the larger
of the mean and the spike's z-score lifted healthy scans whose ``spike_z`` is merely high, which
cost the motion figures (``BENCHMARKS.md``, session 31). So ``spike_z`` is scored on its own: its
robust z-score against the references (:func:`spike_zscore`) has a threshold set like the other
scores' on the references' leave-one-out z-scores (:func:`leave_one_out_spike_zscores`,
:meth:`neurocast.anomaly.calibration.Calibration.with_spike_references`), and a scan over it is
flagged for an artefact whatever its artefact score. A calibration without it (made before
``spike_z`` existed) flags as before.

**The noise level is taken out** of ``residual_median``, ``residual_p90`` and ``cjv``
(:data:`NOISE_ADJUSTED_FEATURES`). All three grow with a scan's noise level: the network does not
reconstruct noise, and noise spreads the tissue classes. Healthy scans differ in noise level
(scanner, voxel size, averages) more than mild or moderate motion changes them, so a healthy but
noisy scan could outscore a moving one. A calibration made from scans
(:meth:`~neurocast.anomaly.AnomalyDetector.calibrate`) therefore reads each reference's noise
level from its prepared image (:func:`image_noise_sd`: the finest detail along the axis where it
is smallest, so that motion's ghosts, which run along one axis, do not pass for noise), fits a
least-squares line of each of the three features on it over the references
(:func:`fit_noise_lines`, stored in the calibration's ``noise_lines``), and scores every scan by
its features' residuals from those lines (:func:`noise_adjusted_features`): the statistics and
the z-scores above are those of the residuals. The ghost ratio is read as it is. A calibration
without lines (made from residual maps alone, or before this was added) scores the features as
read.

Why these four, and not MRIQC's background metrics: the features of a score must change with
motion more than they vary between healthy scans. EFC, FBER, QI1, CNR and SNR_Dietrich measure
the level of the air's signal, which differs from healthy scan to healthy scan with the noise
level, the gain and the scanner's background. On the benchmark's development cohorts (``dev``,
seed 505, and ``lrtrain``, seed 303: 5 mild, 10 moderate and 9 severe motion visits against 25
healthy ones, tumours left out; ``benchmarks/anomaly_artefact_features.py``, 2026-12-06) their
AUROCs were 0.46-0.62 for mild and 0.54-0.75 for moderate motion. The residual features
(0.50-0.53 / 0.59) and CJV (0.62 / 0.78) carry little more; the ghost ratio, which compares two
parts of the same scan's air and so needs no reference level, separated every motion visit from
every healthy one. The score's AUROCs (mild / moderate / severe) went from 0.61 / 0.74 / 0.97
with the previous eight features (these four without the ghost ratio, plus the five background
metrics) to 0.92 / 0.97 / 1.00 with these four. The MRIQC metrics are still computed and
reported for every scan. Simulated healthy air is stationary noise, so the ghost ratio's
separation there overstates what it can do on real scans, whose air holds flow ghosts: the six
real IXI adults score 0.09-2.2 as acquired. With the simulator's motion applied to them (three
draws each, ``benchmarks/anomaly_ghost_check.py``) severe motion took the ratio above that
healthy maximum in 17 of 18 draws and moderate motion in 16, but mild motion in only 7 (and
lowered it in 8): on real data the ratio sees moderate and severe motion, not reliably mild.

Why the clip: a feature that is nearly constant over the references gets a tiny scale, and one
scan from another domain then scores dozens of units on it alone. The ghost ratio of clean
simulated scans is 0 ± 0.003; the real IXI adults among the benchmark's references score 0.7 and
1.3 on it (their air holds vessel-flow ghosts). With the clip one feature moves the score by at
most ``Z_CLIP / n_features``, and the threshold is set by the features together.

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.scores import lesion_score
    >>> amap = np.zeros((20, 20, 20), np.float32); amap[5:9, 5:9, 5:9] = 0.3
    >>> round(lesion_score(amap, 0.1, min_voxels=4, voxel_volume_mm3=8.0), 2)
    102.4
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from neurocast.anomaly.iqm import IQMResult
from neurocast.anomaly.maps import Component, components

ARTEFACT_FEATURES = ("residual_median", "residual_p90", "cjv", "ghost_ratio")
"""The diffuse features whose clipped z-scores the artefact score averages (module docstring)."""
SPIKE_FEATURE = "spike_z"
"""The RF-spike metric (:func:`neurocast.anomaly.kspace.spike_peak`): evidence from one feature
alone, so it has its own threshold instead of a place in the mean (module docstring)."""
Z_CLIP = 3.0
"""Each feature's robust z-score is clipped to ``[-Z_CLIP, Z_CLIP]`` before the mean (see the
module docstring): one feature alone moves the score by at most ``Z_CLIP / n_features``."""
ARTEFACT_SCORE_RULE = "mean-of-robust-z-clipped-3:residual,cjv-core-3mm,ghost"
"""Name of the rule that turns features into the artefact score. A calibration records it: an
artefact threshold set under another rule does not fit this one's scores."""
NOISE_ADJUSTED_SCORE_RULE = ARTEFACT_SCORE_RULE + ";noise-lines-quietest-axis:residual,cjv"
"""The rule a calibration with noise lines records: :data:`ARTEFACT_SCORE_RULE` on the features'
residuals from the lines (a version that does not read the lines must not use its threshold)."""
NOISE_ADJUSTED_FEATURES = ("residual_median", "residual_p90", "cjv")
"""The artefact features that grow with a scan's noise level: a calibration with noise lines
scores each by its residual from the references' line on the noise level (module docstring)."""
MAD_TO_SD = 1.4826
MIN_RELATIVE_SCALE = 0.02
"""Floor of a feature's reference scale, as a share of ``|median|`` (few references can have a
near-zero MAD)."""
MIN_SCALE = {
    "residual_median": 0.002,
    "residual_p90": 0.002,
    "cjv": 0.005,
    "ghost_ratio": 0.005,
    "spike_z": 0.1,
}
"""Absolute floor of each feature's reference scale (feature units): a feature that is nearly
constant over the references must not turn a tiny change into a huge z-score (the ghost ratio's
floor is about twice its sampling error with 10⁵ air voxels on each side)."""


def lesion_score(
    amap: np.ndarray,
    voxel_threshold: float,
    *,
    min_voxels: int = 1,
    voxel_volume_mm3: float = 1.0,
) -> float:
    """Mass of the largest supra-threshold cluster of the anomaly map (0 if there is none)."""
    comps = components(amap, voxel_threshold, min_voxels=min_voxels, voxel_volume_mm3=voxel_volume_mm3)
    return comps[0].mass if comps else 0.0


LESION_EVIDENCE = ("mass", "peak")
"""The readings of the anomaly map that the lesion score combines (see the module docstring)."""
LESION_SCORE_RULE = "max-of-mass-and-peak-over-their-reference-thresholds"
"""Name of the rule that turns the lesion evidence into the lesion score; a calibration records it."""
MIN_LESION_SCALE = 1e-6
"""Floor of a lesion scale: references whose maps hold no cluster at all give a mass threshold of
0, and any cluster must then stand out (as it did under the mass alone)."""


def lesion_evidence(
    amap: np.ndarray,
    region: np.ndarray,
    voxel_threshold: float,
    *,
    min_voxels: int = 1,
    voxel_volume_mm3: float = 1.0,
) -> tuple[dict[str, float], list[Component]]:
    """The lesion evidence of an anomaly map and its supra-threshold clusters.

    Args:
        amap: ``(X, Y, Z)`` anomaly map (zero or above).
        region: ``(X, Y, Z)`` bool, where the peak is read (the eroded brain mask).
        voxel_threshold: the clusters' threshold; ``min_voxels``: the smallest cluster that counts.

    Returns:
        ``({"mass": ..., "peak": ...}, clusters)``, the clusters largest mass first.

    Example:
        >>> amap = np.zeros((20, 20, 20), np.float32); amap[5:9, 5:9, 5:9] = 0.3
        >>> ev, comps = lesion_evidence(amap, amap >= 0, 0.1, min_voxels=4, voxel_volume_mm3=8.0)
        >>> round(ev["mass"], 2), round(ev["peak"], 2), len(comps)
        (102.4, 0.3, 1)
    """
    comps = components(amap, voxel_threshold, min_voxels=min_voxels, voxel_volume_mm3=voxel_volume_mm3)
    inside = np.asarray(amap)[np.asarray(region, dtype=bool)]
    return {
        "mass": comps[0].mass if comps else 0.0,
        "peak": float(inside.max()) if inside.size else 0.0,
    }, comps


def largest_cluster_share(clusters: Sequence[Component]) -> float:
    """The share (0-1) of the clusters' total mass that the largest cluster holds.

    Near 1 for one compact finding (a tumour), low when the supra-threshold evidence is spread over
    many clusters (motion). ``NaN`` without clusters.

    Example:
        >>> from neurocast.anomaly.maps import Component
        >>> largest_cluster_share([Component(8, 64.0, 30.0, 2.0, (0, 0, 0)),
        ...                        Component(4, 32.0, 10.0, 1.0, (5, 5, 5))])
        0.75
    """
    masses = [float(c.mass) for c in clusters]
    total = sum(masses)
    return max(masses) / total if masses and total > 0 else math.nan


def combined_lesion_score(evidence: Mapping[str, float], scales: Mapping[str, float]) -> float:
    """The lesion score: the largest of ``evidence[k] / scales[k]`` over :data:`LESION_EVIDENCE`.

    Example:
        >>> combined_lesion_score({"mass": 50.0, "peak": 9.0}, {"mass": 100.0, "peak": 6.0})
        1.5
    """
    return max(float(evidence[k]) / max(float(scales[k]), MIN_LESION_SCALE) for k in LESION_EVIDENCE)


def level_scale(level: float, reference_level: float) -> float:
    """How far a scan's diffuse residual level stands above the healthy references' (>= 1).

    ``max(1, level / reference_level)``: the factor the detector's ``level_scaling`` divides a
    residual map by before the lesion evidence is read, so that the lesion score measures a
    *local* excess and not a scan-wide raise beyond anything healthy (another scanner's sharper
    anatomy, motion), which the artefact score reads. Never below 1: a scan within the
    references' range is left as it is. 1 when either level is undefined.

    Args:
        level: the scan's ``residual_median`` feature (:func:`artefact_features`).
        reference_level: the highest value of the same feature among the healthy references.

    Example:
        >>> level_scale(0.08, 0.04), level_scale(0.03, 0.04)
        (2.0, 1.0)
    """
    if not (math.isfinite(level) and math.isfinite(reference_level)) or reference_level <= 0:
        return 1.0
    return max(1.0, float(level) / float(reference_level))


def artefact_features(
    amap: np.ndarray, region: np.ndarray, iqms: IQMResult | None = None
) -> dict[str, float]:
    """The artefact evidence of one scan (``NaN`` where undefined), see the module docstring.

    Args:
        amap: the anomaly map.
        region: where the diffuse residual is measured (the eroded brain mask).
        iqms: the scan's MRIQC metrics (``None``: only the residual features).
    """
    vals = np.asarray(amap, dtype=np.float64)[np.asarray(region, dtype=bool)]
    feats = {
        "residual_median": float(np.median(vals)) if vals.size else float("nan"),
        "residual_p90": float(np.percentile(vals, 90)) if vals.size else float("nan"),
    }
    q = iqms.get if iqms is not None else (lambda name: float("nan"))
    feats["cjv"] = q("cjv")
    feats["ghost_ratio"] = q("ghost_ratio")
    feats[SPIKE_FEATURE] = q(SPIKE_FEATURE)
    return {k: float(feats[k]) for k in (*ARTEFACT_FEATURES, SPIKE_FEATURE)}


def image_noise_sd(image: np.ndarray, region: np.ndarray) -> float:
    """A scan's image noise SD, read from its finest detail (normalised intensity units).

    Along each axis, ``1.4826 MAD`` of the image's second difference inside ``region``, divided
    by ``sqrt(6)`` (its standard deviation for white noise of SD 1); the smallest of the three.
    Anatomy is smooth at this scale over most of the brain, so the median-based spread reads the
    noise and not the edges. Noise is the same along every axis, while motion's ghosts and
    ringing run mostly along one (the phase-encoding direction), so the smallest axis reads the
    noise and little of the motion; a 3-D Laplacian mixes them and took part of mild motion's
    residual away with the noise (``BENCHMARKS.md``, session 29). On the 2 mm working grid the
    resampling averages the native noise, so this tracks the acquisition's noise level rather
    than equals it.

    Args:
        image: ``(X, Y, Z)`` the prepared scan (:class:`~neurocast.anomaly.scan.Scan` ``.image``).
        region: ``(X, Y, Z)`` bool, where to read it (the detector's eroded brain mask).

    Returns:
        The noise SD, or ``NaN`` when ``region`` holds no voxel with both neighbours on an axis.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> image = rng.normal(1.0, 0.05, (30, 30, 30))
        >>> round(image_noise_sd(image, np.ones(image.shape, bool)), 2)
        0.05
    """
    img, inside = np.asarray(image, dtype=np.float64), np.asarray(region, dtype=bool)
    per_axis = []
    for axis in range(3):
        centre = np.take(inside, range(1, inside.shape[axis] - 1), axis=axis)
        values = np.diff(img, n=2, axis=axis)[centre]
        if values.size:
            spread = np.median(np.abs(values - np.median(values)))
            per_axis.append(MAD_TO_SD * float(spread) / math.sqrt(6.0))
    return float(min(per_axis)) if per_axis else float("nan")


def fit_noise_lines(
    features: Sequence[Mapping[str, float]], noise_sds: Sequence[float]
) -> dict[str, dict[str, float]]:
    """Per feature of :data:`NOISE_ADJUSTED_FEATURES`, the least-squares line of the references'
    values on their noise levels (:func:`image_noise_sd`).

    Features with fewer than three references where both values are defined get no line (they
    are scored as they are).

    Args:
        features: one mapping of feature values per reference (:func:`artefact_features`).
        noise_sds: the references' noise levels, same order.

    Returns:
        ``{feature: {"intercept": a, "slope": b, "n": n}}``: the feature's expected value at
        noise level ``x`` is ``a + b x``.
    """
    if len(features) != len(noise_sds):
        raise ValueError(f"give one image noise SD per reference: {len(noise_sds)} for {len(features)}")
    x_all = np.asarray(noise_sds, dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for name in NOISE_ADJUSTED_FEATURES:
        y = np.array([f.get(name, float("nan")) for f in features], dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(x_all)
        if ok.sum() < 3 or np.ptp(x_all[ok]) == 0:
            continue
        slope, intercept = np.polyfit(x_all[ok], y[ok], 1)
        out[name] = {"intercept": float(intercept), "slope": float(slope), "n": int(ok.sum())}
    return out


def noise_adjusted_features(
    features: Mapping[str, float],
    noise_sd: float | None,
    lines: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, float]:
    """``features`` with each feature that has a line replaced by its residual from that line
    (``value - (a + b * noise_sd)``); the others unchanged. Without lines, a copy. A ``NaN``
    noise SD (nothing to read it in) leaves those features undefined (``NaN``).

    Raises:
        ValueError: there are lines but no ``noise_sd`` was given.
    """
    out = {k: float(v) for k, v in features.items()}
    if not lines:
        return out
    if noise_sd is None:
        raise ValueError(
            "this calibration takes the noise level out of the artefact features: give the "
            "scan's image noise SD (image_noise_sd of the prepared image in the detector's region)"
        )
    for name, line in lines.items():
        if name in out:
            out[name] -= line["intercept"] + line["slope"] * float(noise_sd)
    return out


def reference_statistics(
    features: Sequence[Mapping[str, float]],
    min_scale: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Median and robust scale of each feature over healthy references (NaNs ignored).

    ``scale = max(1.4826 MAD, MIN_RELATIVE_SCALE |median|, min_scale[feature])``. Features
    defined for no reference are left out (they cannot be scored).

    Args:
        features: one mapping of feature values per reference.
        min_scale: the features to summarise and the floors of their scales (default
            :data:`MIN_SCALE` for :data:`ARTEFACT_FEATURES`; another set compares other rules).
    """
    if min_scale is None:
        floors = {n: MIN_SCALE.get(n, 1e-9) for n in (*ARTEFACT_FEATURES, SPIKE_FEATURE)}
    else:
        floors = dict(min_scale)
    out: dict[str, dict[str, float]] = {}
    for name, floor in floors.items():
        v = np.array([f.get(name, float("nan")) for f in features], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med))) * MAD_TO_SD
        scale = max(mad, MIN_RELATIVE_SCALE * abs(med), floor)
        out[name] = {"median": med, "scale": scale, "n": int(v.size)}
    return out


def feature_zscores(
    features: Mapping[str, float], reference: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Robust z-score of every feature that is defined here and in the reference."""
    z = {}
    for name, ref in reference.items():
        v = features.get(name, float("nan"))
        if v is not None and math.isfinite(v):
            z[name] = (float(v) - ref["median"]) / ref["scale"]
    return z


def artefact_score(
    features: Mapping[str, float], reference: Mapping[str, Mapping[str, float]]
) -> float:
    """Mean of the defined diffuse artefact features' (:data:`ARTEFACT_FEATURES`) robust
    z-scores, each clipped to ``±Z_CLIP`` (``NaN`` if none is defined). The spike
    (:data:`SPIKE_FEATURE`) is not in it: it has its own threshold (module docstring)."""
    z = feature_zscores(features, reference)
    z.pop(SPIKE_FEATURE, None)
    return float(np.mean(np.clip(list(z.values()), -Z_CLIP, Z_CLIP))) if z else float("nan")


def spike_zscore(features: Mapping[str, float], reference: Mapping[str, Mapping[str, float]]) -> float:
    """The robust z-score of the scan's :data:`SPIKE_FEATURE` against the references (``NaN``
    where either has none)."""
    return feature_zscores(features, reference).get(SPIKE_FEATURE, float("nan"))


def _other_groups(n: int, groups: Sequence[Any] | None) -> list[list[int]]:
    """For each of ``n`` references, the indices of the references outside its group (each its
    own group without ``groups``)."""
    labels = list(range(n)) if groups is None else list(groups)
    if len(labels) != n:
        raise ValueError(f"give one group per reference: {len(labels)} groups for {n}")
    return [[j for j, h in enumerate(labels) if h != g] for g in labels]


def leave_one_out_spike_zscores(
    values: Sequence[float], *, groups: Sequence[Any] | None = None
) -> list[float]:
    """Each reference's :data:`SPIKE_FEATURE` robust z-score against the *other* references (or
    the other groups'), as :func:`leave_one_out_artefact_scores` does for the artefact score."""
    floor = {SPIKE_FEATURE: MIN_SCALE[SPIKE_FEATURE]}
    out = []
    for i, idx in enumerate(_other_groups(len(values), groups)):
        others = [{SPIKE_FEATURE: float(values[j])} for j in idx]
        out.append(spike_zscore({SPIKE_FEATURE: float(values[i])}, reference_statistics(others, floor)))
    return out


def leave_one_out_artefact_scores(
    features: Sequence[Mapping[str, float]],
    *,
    groups: Sequence[Any] | None = None,
    noise_sds: Sequence[float] | None = None,
) -> list[float]:
    """Artefact score of each reference against the *other* references.

    Used by the calibration: a reference scored against statistics that include itself looks
    more typical than a new scan would, which would put the threshold too low. With ``groups``
    (one label per reference, e.g. the participant) each is scored against the other groups'
    references only. With ``noise_sds`` the noise lines (:func:`fit_noise_lines`) are fitted
    on those other references too, and every feature set is read against them.
    """
    left_out = _other_groups(len(features), groups)
    if noise_sds is not None and len(noise_sds) != len(features):
        raise ValueError(f"give one image noise SD per reference: {len(noise_sds)} for {len(features)}")
    out = []
    for i, other in enumerate(left_out):
        idx = other or list(range(len(features)))
        others = [features[j] for j in idx]
        own = dict(features[i])
        if noise_sds is not None:
            lines = fit_noise_lines(others, [noise_sds[j] for j in idx])
            others = [noise_adjusted_features(features[j], noise_sds[j], lines) for j in idx]
            own = noise_adjusted_features(own, noise_sds[i], lines)
        out.append(artefact_score(own, reference_statistics(others)))
    return out


def summarise(features: Mapping[str, float]) -> dict[str, Any]:
    """JSON-ready features (``NaN`` as ``None``)."""
    return {k: (None if not math.isfinite(v) else float(v)) for k, v in features.items()}
