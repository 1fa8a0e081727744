"""Normative anomaly maps: the residual map standardised voxel by voxel against healthy references.

A healthy-trained reconstruction misses some anatomy more than other anatomy: the folds of the
cortex vary from brain to brain and are only partly reconstructed, deep white matter is
reconstructed almost exactly. So the residual map of a *healthy* scan is high along the cortex
and low in the white matter, and one voxel threshold on it either flags the cortex of scans from
another scanner or misses a lesion in the white matter. :class:`NormativeMaps` puts every place
on one scale, the normative approach (a deviation from the healthy references at that place, as
in normative modelling, Marquand et al., Mol. Psychiatry 2016) applied to the residual map rather
than to the image:

``z(v) = max(m(v) - mean(v), 0) / (sd(v) + floor)``

* ``m``: the scan's anomaly map (:func:`neurocast.anomaly.maps.anomaly_map`);
* ``mean``, ``sd``: the mean and standard deviation of the healthy references' maps at ``v``,
  each reference counted inside its own region (eroded brain mask), smoothed by a Gaussian of
  ``smoothing_mm`` (normalised convolution, so the brain's edge does not pull them to zero);
* ``floor``: ``floor_fraction`` times the median ``sd`` over the references' regions, so that a
  place where the references happen to agree does not blow up;
* where less than one reference covers ``v`` (outside every reference's brain), the median mean
  and ``sd`` stand in.

Only positive deviations count: a residual below the references' mean is not anomalous. Units:
healthy standard deviations. The calibration (:meth:`neurocast.anomaly.AnomalyDetector.calibrate`)
standardises each reference against the *other* references (:meth:`NormativeMaps.leave_one_out`),
so its thresholds see the same out-of-sample spread as a new scan. The mean and ``sd`` are kept in
float16 (what the model folder stores), so calibration and scoring use the same numbers.

Chosen on the development cohort of ``benchmarks/anomaly_benchmark.py --dev`` (never the test
cohort): see BENCHMARKS.md.

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.normative import NormativeMaps
    >>> rng = np.random.default_rng(0)
    >>> region = np.ones((12, 12, 12), bool)
    >>> def healthy():  # a noisy "cortex" at x < 4, a quiet "white matter" elsewhere
    ...     m = np.abs(rng.normal(0, 0.01, region.shape)).astype(np.float32)
    ...     m[:4] += np.abs(rng.normal(0.2, 0.1, (4, 12, 12))).astype(np.float32)
    ...     return m
    >>> norm = NormativeMaps(smoothing_mm=0).fit([healthy() for _ in range(10)], [region] * 10)
    >>> m = healthy(); m[2, 6, 6] = m[8, 6, 6] = 0.3  # the same residual in both places
    >>> z = norm.transform(m, region)
    >>> bool(z[8, 6, 6] > 5 * z[2, 6, 6])  # is far more anomalous where the references are quiet
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.ndimage as ndi

RULE = "positive-z-against-reference-mean-sd"
"""Identifier of the standardisation above, recorded with a calibration."""


class NormativeMaps:
    """Voxel-wise mean and spread of healthy anomaly maps, and the standardisation against them.

    Args:
        smoothing_mm: Gaussian sigma (mm) of the mean and ``sd`` maps (0: none).
        floor_fraction: the ``sd`` floor as a fraction of its median over the references.

    Fitted attributes: ``mean_``, ``sd_`` (``(X, Y, Z)`` float32 holding float16 values),
    ``floor_`` (the absolute floor), ``n_references_``.
    """

    def __init__(self, smoothing_mm: float = 2.0, floor_fraction: float = 0.1) -> None:
        if smoothing_mm < 0:
            raise ValueError(f"smoothing_mm must be >= 0, got {smoothing_mm}")
        if floor_fraction <= 0:
            raise ValueError(f"floor_fraction must be > 0, got {floor_fraction}")
        self.smoothing_mm = float(smoothing_mm)
        self.floor_fraction = float(floor_fraction)

    def __repr__(self) -> str:
        n = getattr(self, "n_references_", None)
        fitted = f"; fitted on {n} references" if n is not None else ""
        return f"NormativeMaps(smoothing_mm={self.smoothing_mm:g}, floor_fraction={self.floor_fraction:g}{fitted})"

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        maps: Sequence[np.ndarray],
        regions: Sequence[np.ndarray],
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
    ) -> NormativeMaps:
        """Fit the mean and ``sd`` maps on healthy references.

        Args:
            maps: the references' anomaly maps, ``(X, Y, Z)`` each, one grid.
            regions: their regions (eroded brain masks), same shapes.
            spacing: voxel size in mm.

        Returns:
            ``self``.
        """
        self._fit_sums(self._sums(maps, regions), spacing, len(maps))
        return self

    def _fit_sums(
        self, sums: tuple[np.ndarray, np.ndarray, np.ndarray], spacing: Sequence[float], n: int
    ) -> None:
        total, total_sq, count = sums
        self.spacing_ = tuple(float(s) for s in spacing)
        self.mean_, self.sd_ = self._moments(total, total_sq, count)
        covered = count > 0
        self.floor_ = (
            self.floor_fraction * float(np.median(self.sd_[covered])) if covered.any() else 0.0
        )
        self.floor_ = max(self.floor_, 1e-6)
        self.n_references_ = n

    def leave_one_out(
        self,
        maps: Sequence[np.ndarray],
        regions: Sequence[np.ndarray],
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
        *,
        groups: Sequence[Any] | None = None,
    ) -> list[np.ndarray]:
        """Fit on ``maps`` and return each one standardised against the others (the floor of the
        full fit). Needs at least two maps.

        With ``groups`` (one label per map, e.g. the participant), each map is standardised
        against the maps of the *other* groups: a subject's other visits share its anatomy, so
        leaving out only the scan itself would still make it look more typical than a new
        subject's scan. Needs at least two groups.
        """
        if len(maps) < 2:
            raise ValueError("leave-one-out standardisation needs at least two reference maps")
        labels = list(range(len(maps))) if groups is None else list(groups)
        if len(labels) != len(maps):
            raise ValueError(f"give one group per map: {len(labels)} groups for {len(maps)} maps")
        if len(set(labels)) < 2:
            raise ValueError("leave-one-group-out standardisation needs at least two groups")
        sums = self._sums(maps, regions)
        self._fit_sums(sums, spacing, len(maps))
        total, total_sq, count = sums
        out: list[np.ndarray] = [np.empty(0)] * len(maps)
        for g in dict.fromkeys(labels):
            members = [i for i, lab in enumerate(labels) if lab == g]
            gt, gsq, gc = self._sums([maps[i] for i in members], [regions[i] for i in members])
            mean, sd = self._moments(total - gt, total_sq - gsq, count - gc)
            for i in members:
                out[i] = _standardise(maps[i], np.asarray(regions[i], dtype=bool), mean, sd, self.floor_)
        return out

    def _sums(
        self, maps: Sequence[np.ndarray], regions: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not maps or len(maps) != len(regions):
            raise ValueError("give one region per reference map, and at least one map")
        shape = np.shape(maps[0])
        total = np.zeros(shape)
        total_sq = np.zeros(shape)
        count = np.zeros(shape)
        for m, r in zip(maps, regions, strict=True):
            if np.shape(m) != shape or np.shape(r) != shape:
                raise ValueError(
                    f"reference maps and regions must share one grid; got {np.shape(m)} and {shape}"
                )
            keep = np.asarray(r, dtype=bool)
            a = np.where(keep, np.asarray(m, dtype=np.float64), 0.0)
            total += a
            total_sq += a * a
            count += keep
        return total, total_sq, count

    def _moments(
        self, total: np.ndarray, total_sq: np.ndarray, count: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        sigma = [self.smoothing_mm / s for s in self.spacing_] if self.smoothing_mm > 0 else None

        def smooth(x: np.ndarray) -> np.ndarray:
            return ndi.gaussian_filter(x, sigma, mode="constant") if sigma else x

        n = smooth(count)
        enough = n >= 1.0  # at least one reference's worth of maps around this voxel
        safe = np.where(enough, n, 1.0)
        mean = smooth(total) / safe
        var = np.maximum(smooth(total_sq) / safe - mean**2, 0.0)
        sd = np.sqrt(var)
        if enough.any():
            mean = np.where(enough, mean, np.median(mean[enough]))
            sd = np.where(enough, sd, np.median(sd[enough]))
        # float16 is what the model folder keeps: calibrate with the numbers scoring will use
        return mean.astype(np.float16).astype(np.float32), sd.astype(np.float16).astype(np.float32)

    # ------------------------------------------------------------------ use
    def transform(self, amap: np.ndarray, region: np.ndarray) -> np.ndarray:
        """The standardised map: ``max(amap - mean, 0) / (sd + floor)`` inside ``region``, 0 outside.

        Args:
            amap: ``(X, Y, Z)`` anomaly map on the references' grid.
            region: the scan's region (eroded brain mask).

        Returns:
            float32 ``(X, Y, Z)`` in healthy standard deviations.
        """
        if not hasattr(self, "mean_"):
            raise RuntimeError("these NormativeMaps are not fitted: call fit() first")
        if np.shape(amap) != self.mean_.shape:
            raise ValueError(
                f"map {np.shape(amap)} differs from the references' grid {self.mean_.shape}"
            )
        return _standardise(amap, np.asarray(region, dtype=bool), self.mean_, self.sd_, self.floor_)

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, json)``: the float16 mean and ``sd`` maps, and the rest as JSON."""
        info = {
            "rule": RULE,
            "smoothing_mm": self.smoothing_mm,
            "floor_fraction": self.floor_fraction,
            "floor": self.floor_,
            "n_references": self.n_references_,
            "spacing_mm": list(self.spacing_),
        }
        return {"mean": self.mean_.astype(np.float16), "sd": self.sd_.astype(np.float16)}, info

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> NormativeMaps:
        """Inverse of :meth:`to_arrays`."""
        if info.get("rule") != RULE:
            raise ValueError(
                f"unknown normative-map rule {info.get('rule')!r} (this version: {RULE!r})"
            )
        norm = cls(float(info["smoothing_mm"]), float(info["floor_fraction"]))
        norm.mean_ = np.asarray(arrays["mean"], dtype=np.float32)
        norm.sd_ = np.asarray(arrays["sd"], dtype=np.float32)
        if norm.mean_.shape != norm.sd_.shape:
            raise ValueError(
                f"mean {norm.mean_.shape} and sd {norm.sd_.shape} maps differ in shape"
            )
        norm.floor_ = float(info["floor"])
        norm.n_references_ = int(info["n_references"])
        norm.spacing_ = tuple(float(s) for s in info["spacing_mm"])
        return norm


def _standardise(
    amap: np.ndarray, region: np.ndarray, mean: np.ndarray, sd: np.ndarray, floor: float
) -> np.ndarray:
    m = np.asarray(amap, dtype=np.float32)
    z = np.maximum(m - mean, 0.0) / (sd + np.float32(floor))
    return np.where(region, z, 0.0).astype(np.float32)
