"""Per-scan scores: a lesion score (compact, local residual) and an artefact score (diffuse).

**Lesion score** (:func:`lesion_score`): the ``mass`` of the largest cluster of the anomaly map
above the calibrated voxel threshold (:func:`neurocast.anomaly.maps.components`): the sum of the
map's excess over the threshold in that cluster, times the voxel volume (mm³ x intensity units).
A tumour makes one strong compact cluster; healthy scans have at most small, weak ones. Clusters
smaller than ``min_voxels`` do not count. 0 when there is no cluster.

**Artefact score** (:func:`artefact_score`): motion, ghosting and spikes spread over the whole
image. The evidence, each oriented so that larger means worse (:func:`artefact_features`):

==================  =================================================================
feature             what
==================  =================================================================
``residual_median`` median of the anomaly map over the eroded brain (diffuse residual)
``residual_p90``    its 90th percentile
``efc``             entropy focus criterion (ghosting/blurring spread energy into the air)
``neg_log_fber``    ``-log(FBER)``: energy in the air relative to the head
``qi1``             Mortamet's share of artefactual air voxels
``cjv``             joint variation of GM and WM (blurring mixes them)
``neg_log_cnr``     ``-log(CNR)``: blurring lowers the GM/WM contrast against the air noise
``neg_log_snrd``    ``-log(SNR_Dietrich)``: signal against the noise of the air
==================  =================================================================

The IQMs are the ones MRIQC's authors found most sensitive to motion; on the benchmark's
development cohort (``lrtrain``: simulated motion of three severities and healthy visits, a seed
used for nothing else) CJV, CNR, FBER, SNR_Dietrich and EFC each separated motion from healthy
visits with an AUROC of 0.90-1.00 (oriented), while SNR_total (the brain's own signal over its
own noise) did not (0.44), so it is not used.

Each defined feature is turned into a robust z-score against the healthy references
(``(value - median) / scale``, ``scale`` = 1.4826 x MAD, floored per feature, see
:func:`reference_statistics` and :data:`MIN_SCALE`) and the artefact score is the mean of the z-scores of the
features that are defined for this scan (skull-stripped scans have no background features; the
residual features are always there), each z-score first clipped to ``±Z_CLIP`` (3). The
combination is unsupervised: it uses no labelled artefacts (the logistic-regression baseline of
the benchmark does).

Why the clip: a feature that is nearly constant over the references gets a tiny scale, and one
scan from another domain then scores dozens of units on it alone. QI1 is 0 in every clean
simulated scan, and the two real IXI adults among the benchmark's references score 38 and 47 on
it (the other IXI adults up to 153). The mean then followed that one feature, the two real
references set the artefact threshold (7.7), and not one simulated motion visit of the
development cohorts (seeds 303 and 505) was flagged at it. With the clip the threshold is set by
the features together (1.3 on the same references), those cohorts' AUROCs are unchanged, and
67 % of their severe and 10 % of their moderate motion visits are flagged, with no healthy one (2026-12-06, ``benchmarks/anomaly_benchmark.py``
caches, see BENCHMARKS.md).

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
from neurocast.anomaly.maps import components

ARTEFACT_FEATURES = (
    "residual_median",
    "residual_p90",
    "efc",
    "neg_log_fber",
    "qi1",
    "cjv",
    "neg_log_cnr",
    "neg_log_snrd",
)
"""Features of the artefact score (see the module docstring)."""
Z_CLIP = 3.0
"""Each feature's robust z-score is clipped to ``[-Z_CLIP, Z_CLIP]`` before the mean (see the
module docstring): one feature alone moves the score by at most ``Z_CLIP / n_features``."""
ARTEFACT_SCORE_RULE = "mean-of-robust-z-clipped-3"
"""Name of the rule that turns features into the artefact score. A calibration records it: an
artefact threshold set under another rule does not fit this one's scores."""
MAD_TO_SD = 1.4826
MIN_RELATIVE_SCALE = 0.02
"""Floor of a feature's reference scale, as a share of ``|median|`` (few references can have a
near-zero MAD)."""
MIN_SCALE = {
    "residual_median": 0.002,
    "residual_p90": 0.002,
    "efc": 0.002,
    "neg_log_fber": 0.05,
    "qi1": 0.0005,
    "cjv": 0.005,
    "neg_log_cnr": 0.02,
    "neg_log_snrd": 0.02,
}
"""Absolute floor of each feature's reference scale (feature units): a feature that is constant
over the references (QI1 is 0 in every clean scan) must not turn a tiny change into a huge
z-score."""


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


def _log_or_nan(v: float) -> float:
    return math.log(v) if math.isfinite(v) and v > 0 else float("nan")


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
    feats["efc"] = q("efc")
    feats["neg_log_fber"] = -_log_or_nan(q("fber"))
    feats["qi1"] = q("qi1")
    feats["cjv"] = q("cjv")
    feats["neg_log_cnr"] = -_log_or_nan(q("cnr"))
    feats["neg_log_snrd"] = -_log_or_nan(q("snrd_total"))
    return {k: float(feats[k]) for k in ARTEFACT_FEATURES}


def reference_statistics(
    features: Sequence[Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """Median and robust scale of each feature over healthy references (NaNs ignored).

    ``scale = max(1.4826 MAD, MIN_RELATIVE_SCALE |median|, MIN_SCALE[feature])``. Features
    defined for no reference are left out (they cannot be scored).
    """
    out: dict[str, dict[str, float]] = {}
    for name in ARTEFACT_FEATURES:
        v = np.array([f.get(name, float("nan")) for f in features], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med))) * MAD_TO_SD
        scale = max(mad, MIN_RELATIVE_SCALE * abs(med), MIN_SCALE.get(name, 1e-9))
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
    """Mean of the defined artefact features' robust z-scores, each clipped to ``±Z_CLIP``
    (``NaN`` if no feature is defined)."""
    z = feature_zscores(features, reference)
    return float(np.mean(np.clip(list(z.values()), -Z_CLIP, Z_CLIP))) if z else float("nan")


def leave_one_out_artefact_scores(features: Sequence[Mapping[str, float]]) -> list[float]:
    """Artefact score of each reference against the *other* references.

    Used by the calibration: a reference scored against statistics that include itself looks
    more typical than a new scan would, which would put the threshold too low.
    """
    out = []
    for i in range(len(features)):
        others = [f for j, f in enumerate(features) if j != i]
        ref = reference_statistics(others) if others else reference_statistics(features)
        out.append(artefact_score(features[i], ref))
    return out


def summarise(features: Mapping[str, float]) -> dict[str, Any]:
    """JSON-ready features (``NaN`` as ``None``)."""
    return {k: (None if not math.isfinite(v) else float(v)) for k, v in features.items()}
