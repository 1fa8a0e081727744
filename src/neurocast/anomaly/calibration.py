"""Thresholds from healthy reference scans at a chosen false-positive rate, and per-scan flags.

Only healthy references are used, never labelled anomalies. With ``n`` reference scores, the
threshold of a score at per-score rate ``beta`` is the empirical ``1 - beta`` quantile with the
``(n + 1)`` plotting positions (numpy's ``"weibull"`` method): for exchangeable scores, a new
healthy scan then exceeds it with probability ``beta`` (about ``ceil((1 - beta)(n + 1)) / (n +
1)`` in the discrete case; never below the largest reference when ``(1 - beta)(n + 1) > n``).

A scan is flagged when *either* score exceeds its threshold, so the per-score rate is set by
Šidák's correction ``beta = 1 - (1 - fpr) ** (1 / 2)``: the share of healthy scans flagged by
either score is ``fpr`` when the two scores are independent and at most ``fpr`` when they are
positively correlated. A calibration with the RF-spike check
(:meth:`Calibration.with_spike_references`) flags on three scores (the spike's robust z-score as
the third), at ``beta = 1 - (1 - fpr) ** (1 / 3)`` each.

The voxel threshold of the anomaly map is the ``voxel_quantile`` (default 0.999) of the map
values of all reference scans inside their eroded brain masks, so about 1 healthy voxel in 1000
is above it before small clusters are removed. The clusters above it (the lesion score's) are
grown into the connected voxels above the ``grow_quantile`` (default 0.99) of the same values
for the binary mask (hysteresis thresholding, :func:`neurocast.anomaly.maps.grown_mask`): a
lesion's faint rim is part of it, a faint patch with no strong core is not.

Flags: ``pass``; ``review-lesion`` (lesion score above its threshold); ``review-artefact``
(artefact score, or the spike's z-score, above its threshold). When both are above and the
caller gives the share of the supra-threshold mass that the largest cluster holds
(:func:`neurocast.anomaly.scores.largest_cluster_share`, as the detector does), the flag names the
lesion where that share is at least :data:`COMPACT_SHARE` (one compact finding) and the artefact
otherwise (evidence scattered over many clusters: motion). Without the share, the score exceeding
its threshold by more, relative to the spread between the reference median and the threshold,
wins. The pass / flag decision itself never depends on the share. Each scan
also gets the **percentile** of its scores among the references (share of references at or below
it, in %).

The calibration is a JSON-ready dict (:meth:`Calibration.to_dict`) stored in the model card.

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.calibration import calibrate_scores
    >>> rng = np.random.default_rng(0)
    >>> cal = calibrate_scores(rng.normal(size=400), rng.normal(size=400), fpr=0.05)
    >>> cal.flag(0.0, 0.0), cal.flag(5.0, 0.0), cal.flag(0.0, 5.0)
    ('pass', 'review-lesion', 'review-artefact')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from neurocast.anomaly.scores import (
    SPIKE_FEATURE,
    leave_one_out_spike_zscores,
    reference_statistics,
)

FLAGS = ("pass", "review-lesion", "review-artefact")
"""The flags a scan can get."""
COMPACT_SHARE = 0.5
"""When both scores are over their thresholds, the flag names the lesion if the largest cluster
holds at least this share of the supra-threshold mass, else the artefact. Chosen on the benchmark's
development cohorts before any test cohort was scored with it (``BENCHMARKS.md``, session 25):
there, the tumour visits with both scores over had shares of 0.84-1.00 and three of four
severe-motion visits 0.20-0.37 (the fourth 0.59)."""


def per_score_rate(fpr: float, n_scores: int = 2) -> float:
    """Šidák's per-score rate: ``1 - (1 - fpr) ** (1 / n_scores)``."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"the false-positive rate must be in (0, 1), got {fpr}")
    return 1.0 - (1.0 - fpr) ** (1.0 / n_scores)


def min_references(fpr: float, n_scores: int = 2) -> int:
    """The fewest reference scans whose thresholds at ``fpr`` fall inside the references' range.

    The threshold is the ``(1 - beta)(n + 1)``-th smallest of ``n`` scores, so it is the largest
    reference score whenever ``(1 - beta)(n + 1) > n``, i.e. ``n < (1 - beta) / beta``; a new
    healthy scan then exceeds it with probability ``1 / (n + 1)`` per score, not ``beta``.

    Example:
        >>> min_references(0.05)  # beta = 2.53 % per score
        39
    """
    rate = per_score_rate(fpr, n_scores)
    return math.ceil((1.0 - rate) / rate - 1e-9)


def threshold_at_rate(scores: Sequence[float] | np.ndarray, rate: float) -> float:
    """The threshold a new healthy score exceeds with probability ``rate`` (see module docstring).

    Raises:
        ValueError: no finite score, or ``rate`` outside (0, 1).
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite reference scores to calibrate on")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    return float(np.quantile(s, 1.0 - rate, method="weibull"))


def percentile_of(score: float, reference: Sequence[float] | np.ndarray) -> float:
    """Share (in %) of the finite reference scores at or below ``score`` (``NaN`` if undefined)."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0 or score is None or not math.isfinite(score):
        return float("nan")
    return float(100.0 * np.mean(ref <= score))


@dataclass
class Calibration:
    """Thresholds and reference distributions of a detector (see the module docstring).

    Attributes:
        fpr: the chosen false-positive rate per scan.
        per_score_rate: Šidák's rate of each score (two, or three with the spike check).
        lesion_threshold, artefact_threshold: score thresholds (flag when above).
        voxel_threshold: anomaly-map value of the binary mask and the clusters.
        voxel_quantile: the quantile of healthy map values that set ``voxel_threshold``.
        grow_threshold, grow_quantile: the map value (and its quantile) the mask's clusters are
            grown into (``NaN``: no growth, the mask is the clusters above ``voxel_threshold``).
        residual_level: the highest diffuse residual level among the references (their largest
            ``residual_median`` feature, normalised intensity units) that a scan's level is
            divided by for the detector's ``level_scaling`` (``None``: no scaling).
        lesion_scales: each lesion reading's threshold over the references (``{"mass": ...,
            "peak": ...}``), which :func:`~neurocast.anomaly.scores.combined_lesion_score`
            divides by (``None``: a calibration from before the peak was read; the lesion
            score is the cluster mass alone).
        lesion_reference, artefact_reference: the reference scores, sorted.
        feature_reference: median and scale of each artefact feature over the references
            (of the noise-adjusted features where there are ``noise_lines``).
        noise_lines: per artefact feature that grows with the noise level, the references'
            least-squares line on their noise levels (``{"intercept", "slope", "n"}``,
            :func:`~neurocast.anomaly.scores.fit_noise_lines`); a scan's feature is scored by its
            residual from that line. ``None``: the features are scored as they are (calibrations
            from before the noise level was read, or made without the scans' images).
        n_references: number of reference scans.
        extra: free-form JSON (e.g. the references' identifiers).
        spike_threshold: the threshold of the RF-spike metric's robust z-score against the
            references (``feature_reference["spike_z"]``), over which a scan is flagged for an
            artefact whatever its artefact score (:meth:`with_spike_references`). ``None``: no
            spike check (calibrations from before it, or references without the metric).
        spike_reference: the references' leave-one-out spike z-scores, sorted (``None``: none).
    """

    fpr: float
    per_score_rate: float
    lesion_threshold: float
    artefact_threshold: float
    voxel_threshold: float
    voxel_quantile: float
    lesion_reference: list[float]
    artefact_reference: list[float]
    feature_reference: dict[str, dict[str, float]] = field(default_factory=dict)
    n_references: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    grow_threshold: float = float("nan")
    grow_quantile: float = float("nan")
    residual_level: float | None = None
    lesion_scales: dict[str, float] | None = None
    noise_lines: dict[str, dict[str, float]] | None = None
    spike_threshold: float | None = None
    spike_reference: list[float] | None = None

    @property
    def n_scores(self) -> int:
        """The scores a scan is flagged on: lesion and artefact, and the spike where calibrated."""
        return 2 if self.spike_threshold is None else 3

    @property
    def at_reference_maximum(self) -> bool:
        """Whether there were too few references for ``fpr`` (:func:`min_references`): the
        thresholds are then the largest reference scores, and the rate is ``1 / (n + 1)`` per
        score for scans like the references, whatever ``fpr`` asked."""
        return self.n_references < min_references(self.fpr, self.n_scores)

    def describe_reference_count(self) -> str | None:
        """A sentence for the user when :attr:`at_reference_maximum`, else ``None``."""
        if not self.at_reference_maximum:
            return None
        return (
            f"{self.n_references} healthy reference scan(s) are fewer than the "
            f"{min_references(self.fpr, self.n_scores)} that a false-positive rate of {self.fpr:g} needs: each "
            "threshold is the largest reference score, so the rate is about "
            f"1/{self.n_references + 1} per score for scans like the references and is set by "
            "the single most atypical one; calibrate on more healthy scans from this scanner"
        )

    # ------------------------------------------------------------------ use
    def lesion_percentile(self, score: float) -> float:
        """Percentile of a lesion score among the references."""
        return percentile_of(score, self.lesion_reference)

    def artefact_percentile(self, score: float) -> float:
        """Percentile of an artefact score among the references."""
        return percentile_of(score, self.artefact_reference)

    def _excess(self, score: float, threshold: float, reference: Sequence[float]) -> float:
        med = float(np.median(reference)) if len(reference) else 0.0
        spread = max(threshold - med, 1e-12)
        return (score - threshold) / spread

    def spike_over(self, spike: float) -> bool:
        """Whether a spike z-score is over :attr:`spike_threshold` (never without one)."""
        return self.spike_threshold is not None and math.isfinite(spike) and spike > self.spike_threshold

    def over_thresholds(self, lesion: float, artefact: float, spike: float = float("nan")) -> tuple[str, ...]:
        """The scores above their calibrated thresholds, in the order ``"lesion"``,
        ``"artefact"``, ``"spike"`` (e.g. ``("lesion", "artefact")``, ``("spike",)`` or ``()``).

        The flag names one finding (:meth:`flag` says which; a spike is an artefact); this names
        every score over. A strong motion artefact often raises the lesion score over its
        threshold too (its residual is high everywhere).
        """
        out = []
        if math.isfinite(lesion) and lesion > self.lesion_threshold:
            out.append("lesion")
        if math.isfinite(artefact) and artefact > self.artefact_threshold:
            out.append("artefact")
        if self.spike_over(spike):
            out.append("spike")
        return tuple(out)

    def flag(
        self, lesion: float, artefact: float, largest_share: float | None = None, spike: float = float("nan")
    ) -> str:
        """``pass``, ``review-lesion`` or ``review-artefact`` for a scan's two scores.

        An undefined (``NaN``) score never raises a flag on its own. When both scores are above
        their thresholds (:meth:`over_thresholds` names the lesion and the artefact or the spike),
        the flag names:

        * with ``largest_share`` (the share of the supra-threshold mass in the largest cluster,
          :func:`~neurocast.anomaly.scores.largest_cluster_share`): the lesion when it is at
          least :data:`COMPACT_SHARE`, else the artefact;
        * without it (``None`` or ``NaN``): the score further above its threshold, in units of
          its references' spread (threshold minus median).

        ``spike``: the scan's spike z-score (:func:`~neurocast.anomaly.scores.spike_zscore`);
        over :attr:`spike_threshold` it is an artefact finding, as the artefact score over its
        threshold is.
        """
        over = self.over_thresholds(lesion, artefact, spike)
        lesion_over = "lesion" in over
        artefact_over = "artefact" in over or "spike" in over
        if lesion_over and artefact_over:
            if largest_share is not None and math.isfinite(largest_share):
                return "review-lesion" if largest_share >= COMPACT_SHARE else "review-artefact"
            el = self._excess(lesion, self.lesion_threshold, self.lesion_reference)
            ea = self._excess(artefact, self.artefact_threshold, self.artefact_reference)
            if self.spike_over(spike) and self.spike_reference:
                ea = max(ea, self._excess(spike, float(self.spike_threshold), self.spike_reference))
            return "review-lesion" if el >= ea else "review-artefact"
        return "review-lesion" if lesion_over else "review-artefact" if artefact_over else "pass"

    def assess(
        self,
        lesion: float,
        artefact: float,
        largest_share: float | None = None,
        spike: float = float("nan"),
    ) -> dict[str, Any]:
        """Flag (:meth:`flag`), the percentile of the deciding score, and both percentiles.

        The deciding score is the flagged one (for an artefact flagged by its spike, the spike's
        percentile among the references' leave-one-out spike z-scores); for ``pass``, the one with
        the higher percentile.
        """
        flag = self.flag(lesion, artefact, largest_share, spike)
        pl, pa = self.lesion_percentile(lesion), self.artefact_percentile(artefact)
        if flag == "review-lesion":
            pct = pl
        elif flag == "review-artefact":
            by_spike_alone = self.spike_over(spike) and not artefact > self.artefact_threshold
            pct = percentile_of(spike, self.spike_reference or []) if by_spike_alone else pa
        else:
            finite = [p for p in (pl, pa) if math.isfinite(p)]
            pct = max(finite) if finite else float("nan")
        return {
            "flag": flag,
            "percentile": pct,
            "lesion_percentile": pl,
            "artefact_percentile": pa,
            "over_threshold": self.over_thresholds(lesion, artefact, spike),
        }

    def with_spike_references(
        self, values: Sequence[float], *, groups: Sequence[Any] | None = None
    ) -> Calibration:
        """This calibration with the RF-spike check, from the references' ``spike_z`` values.

        The spike's reference statistics go into ``feature_reference["spike_z"]``; its threshold
        is set on the references' leave-one-out robust z-scores
        (:func:`~neurocast.anomaly.scores.leave_one_out_spike_zscores`, by ``groups`` where
        given) at Šidák's rate for three scores, and the lesion and artefact thresholds are set
        again on their stored reference scores at that rate, so that the share of healthy scans
        flagged by any of the three stays ``fpr``.

        Args:
            values: the references' ``spike_z``, in the order the calibration was made (NaN
                allowed; at least two finite).
            groups: the references' groups (e.g. participants), as for the calibration.
        """
        v = [float(x) for x in values]
        ok = [i for i, x in enumerate(v) if math.isfinite(x)]
        if len(ok) < 2:
            raise ValueError("the spike check needs at least two references with a spike_z value")
        labels = None if groups is None else [list(groups)[i] for i in ok]
        loo = leave_one_out_spike_zscores([v[i] for i in ok], groups=labels)
        stats = reference_statistics([{SPIKE_FEATURE: v[i]} for i in ok])
        rate = per_score_rate(self.fpr, 3)
        return replace(
            self,
            per_score_rate=rate,
            lesion_threshold=threshold_at_rate(self.lesion_reference, rate),
            artefact_threshold=threshold_at_rate(self.artefact_reference, rate),
            feature_reference={**self.feature_reference, **stats},
            spike_threshold=threshold_at_rate(loo, rate),
            spike_reference=sorted(loo),
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers as ``None``)."""
        return _json_clean(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""

        def num(v: Any) -> float:
            return float("nan") if v is None else float(v)

        return cls(
            fpr=float(d["fpr"]),
            per_score_rate=float(d["per_score_rate"]),
            lesion_threshold=num(d["lesion_threshold"]),
            artefact_threshold=num(d["artefact_threshold"]),
            voxel_threshold=num(d["voxel_threshold"]),
            voxel_quantile=num(d["voxel_quantile"]),
            lesion_reference=[num(v) for v in d["lesion_reference"]],
            artefact_reference=[num(v) for v in d["artefact_reference"]],
            feature_reference={
                k: {kk: float(vv) for kk, vv in v.items()}
                for k, v in dict(d.get("feature_reference", {})).items()
            },
            n_references=int(d.get("n_references", 0)),
            extra=dict(d.get("extra", {})),
            grow_threshold=num(d.get("grow_threshold")),
            grow_quantile=num(d.get("grow_quantile")),
            residual_level=None if d.get("residual_level") is None else float(d["residual_level"]),
            lesion_scales=(
                None if d.get("lesion_scales") is None
                else {k: float(v) for k, v in dict(d["lesion_scales"]).items()}
            ),
            noise_lines=(
                None if d.get("noise_lines") is None
                else {k: {kk: float(vv) for kk, vv in dict(v).items()} for k, v in dict(d["noise_lines"]).items()}
            ),
            spike_threshold=None if d.get("spike_threshold") is None else float(d["spike_threshold"]),
            spike_reference=(
                None if d.get("spike_reference") is None else [num(v) for v in d["spike_reference"]]
            ),
        )


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_clean(v) for v in obj]
    return obj


def calibrate_scores(
    lesion_scores: Sequence[float] | np.ndarray,
    artefact_scores: Sequence[float] | np.ndarray,
    *,
    fpr: float = 0.05,
    voxel_threshold: float = float("nan"),
    voxel_quantile: float = float("nan"),
    feature_reference: Mapping[str, Mapping[str, float]] | None = None,
    extra: Mapping[str, Any] | None = None,
    grow_threshold: float = float("nan"),
    grow_quantile: float = float("nan"),
    residual_level: float | None = None,
    lesion_scales: Mapping[str, float] | None = None,
    noise_lines: Mapping[str, Mapping[str, float]] | None = None,
) -> Calibration:
    """A :class:`Calibration` from the two scores of healthy reference scans.

    Args:
        lesion_scores, artefact_scores: one per reference scan (same order; NaN allowed).
        fpr: the share of healthy scans to flag (default 5 %).
        voxel_threshold, voxel_quantile: the voxel threshold of the maps and its quantile
            (recorded; see :func:`voxel_threshold_from_maps`).
        grow_threshold, grow_quantile: the lower threshold the mask's clusters grow into, and
            its quantile (recorded; ``NaN``: no growth).
        residual_level: the references' highest diffuse residual level (``None``: no scaling).
        lesion_scales: the lesion readings' reference thresholds the lesion scores were made
            with (recorded; ``None``: the scores are cluster masses).
        feature_reference: the artefact features' reference statistics.
        noise_lines: the artefact features' lines on the noise level the scores were made with
            (recorded; ``None``: the features were scored as they are).
        extra: more JSON to keep.
    """
    les = np.asarray(lesion_scores, dtype=np.float64)
    art = np.asarray(artefact_scores, dtype=np.float64)
    if les.shape != art.shape:
        raise ValueError("give one lesion and one artefact score per reference scan")
    rate = per_score_rate(fpr, 2)
    return Calibration(
        fpr=float(fpr),
        per_score_rate=rate,
        lesion_threshold=threshold_at_rate(les, rate),
        artefact_threshold=threshold_at_rate(art, rate),
        voxel_threshold=float(voxel_threshold),
        voxel_quantile=float(voxel_quantile),
        lesion_reference=sorted(float(v) for v in les if math.isfinite(v)),
        artefact_reference=sorted(float(v) for v in art if math.isfinite(v)),
        feature_reference={k: dict(v) for k, v in (feature_reference or {}).items()},
        n_references=int(les.size),
        extra=dict(extra or {}),
        grow_threshold=float(grow_threshold),
        grow_quantile=float(grow_quantile),
        residual_level=None if residual_level is None else float(residual_level),
        lesion_scales=None if lesion_scales is None else {k: float(v) for k, v in lesion_scales.items()},
        noise_lines=None if noise_lines is None else {k: dict(v) for k, v in noise_lines.items()},
    )


def voxel_threshold_from_maps(
    maps: Sequence[np.ndarray], regions: Sequence[np.ndarray], quantile: float = 0.999
) -> float:
    """The ``quantile`` of the healthy maps' values inside their regions (eroded brain masks)."""
    return voxel_thresholds_from_maps(maps, regions, (quantile,))[0]


def voxel_thresholds_from_maps(
    maps: Sequence[np.ndarray], regions: Sequence[np.ndarray], quantiles: Sequence[float]
) -> list[float]:
    """:func:`voxel_threshold_from_maps` at several quantiles, reading the maps once."""
    if not maps:
        raise ValueError("no reference maps")
    vals = np.concatenate(
        [np.asarray(m, dtype=np.float32)[np.asarray(r, dtype=bool)] for m, r in zip(maps, regions, strict=True)]
    )
    if vals.size == 0:
        raise ValueError("the reference maps hold no voxel inside their regions")
    return [float(v) for v in np.quantile(vals, list(quantiles))]
