"""Post-processing: from the reconstruction residual to the anomaly map, its mask and its clusters.

The residual ``|x - reconstruction|`` of a healthy-trained model is high where the scan holds
something the model did not learn, but also along the brain's outline (the mask edge moves with
registration and brain extraction) and in single noisy voxels. The post-processing follows the
reconstruction-based anomaly detection literature (Baur et al., MedIA 2021; Behrendt et al.,
pDDPM 2023):

1. the residual is zeroed outside the brain mask **eroded** by ``erosion_mm`` (default 4 mm: two
   voxels of the 2 mm grid), where the edge residual lives; eroding *before* filtering keeps the
   outline's residual from leaking inwards through the filter;
2. it is **median filtered** (``median_size`` voxels per axis, default 3; zeros outside) to remove
   salt-and-pepper residual while keeping the edges of real blobs;
3. thresholding (:func:`threshold_map`) keeps voxels above the calibrated voxel threshold and
   **removes connected components** smaller than ``min_voxels`` (6-connectivity);
4. the binary mask **grows** those clusters into the connected voxels above a lower calibrated
   threshold (:func:`grown_mask`, hysteresis thresholding as in Canny's edge detector): the
   strict threshold decides *whether* there is a lesion, the lower one *how far* it reaches.
   Without it the mask keeps only a lesion's brightest core (chosen on the development cohort of
   ``benchmarks/anomaly_mask_growth.py``, see BENCHMARKS.md);
5. the grown mask is **dilated** by ``mask_dilation_mm`` (default 2 mm: the six face neighbours
   on the 2 mm grid; :func:`dilated_mask`) inside the brain: the median filter and the
   references' smoothing pull a lesion's edge inwards, so masks came out about 0.7 times the
   true lesion volume on the development cohorts (chosen there, see BENCHMARKS.md). The lesion
   score and the flags read the undilated clusters.

Units: the map is in normalised intensity units (white-matter peak = 1), like the images. A
calibrated detector then standardises it voxel by voxel against its healthy references
(:mod:`neurocast.anomaly.normative`) before thresholding.

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.maps import anomaly_map, components
    >>> rng = np.random.default_rng(0)
    >>> residual = np.abs(rng.normal(0, 0.02, (30, 30, 30))).astype(np.float32)
    >>> residual[10:15, 12:17, 14:19] += 0.5
    >>> amap = anomaly_map(residual, np.ones(residual.shape, bool), spacing=(2, 2, 2))
    >>> comps = components(amap, 0.2, min_voxels=5)
    >>> [round(c) for c in comps[0].centroid]
    [12, 14, 16]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.ndimage as ndi

from neurocast.registration.preprocess import erode_mm


def eroded_mask(
    brain_mask: np.ndarray, erosion_mm: float, spacing: Sequence[float] = (2.0, 2.0, 2.0)
) -> np.ndarray:
    """The brain mask eroded by a ball of ``erosion_mm`` (exact, distance-transform based)."""
    return erode_mm(np.asarray(brain_mask, dtype=bool), erosion_mm, tuple(float(s) for s in spacing))


def anomaly_map(
    residual: np.ndarray,
    brain_mask: np.ndarray,
    *,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    erosion_mm: float = 4.0,
    median_size: int = 3,
) -> np.ndarray:
    """The anomaly map: the residual inside the eroded brain mask, median filtered.

    Args:
        residual: ``(X, Y, Z)`` non-negative residual (e.g. ``|x - reconstruction|``).
        brain_mask: brain mask on the same grid.
        spacing: voxel size in mm.
        erosion_mm: erosion of the brain mask (0: none).
        median_size: median filter width in voxels (1: none).

    Returns:
        float32 ``(X, Y, Z)``, zero outside the eroded brain mask.
    """
    r = np.asarray(residual, dtype=np.float32)
    brain = np.asarray(brain_mask, dtype=bool)
    if r.shape != brain.shape:
        raise ValueError(f"residual {r.shape} and brain mask {brain.shape} differ in shape")
    keep = eroded_mask(brain, erosion_mm, spacing) if erosion_mm > 0 else brain
    r = np.where(keep, r, 0.0).astype(np.float32)
    if median_size > 1:
        r = ndi.median_filter(r, size=int(median_size), mode="constant", cval=0.0)
    return np.where(keep, r, 0.0).astype(np.float32)


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop 6-connected components with fewer than ``min_voxels`` voxels."""
    m = np.asarray(mask, dtype=bool)
    if min_voxels <= 1 or not m.any():
        return m.copy()
    lab, n = ndi.label(m)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def threshold_map(amap: np.ndarray, threshold: float, min_voxels: int = 1) -> np.ndarray:
    """Binary anomaly mask: ``amap > threshold`` without components smaller than ``min_voxels``."""
    return remove_small_components(np.asarray(amap) > threshold, min_voxels)


def grown_mask(
    amap: np.ndarray, seed_threshold: float, grow_threshold: float, min_voxels: int = 1
) -> np.ndarray:
    """Hysteresis mask: the voxels above ``grow_threshold`` 6-connected to a cluster of at least
    ``min_voxels`` voxels above ``seed_threshold``.

    A ``grow_threshold`` at or above ``seed_threshold`` (or ``NaN``) gives
    :func:`threshold_map`'s mask.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((9, 3, 3)); m[1:4] = 0.6; m[2] = 1.0; m[6:8] = 0.6  # a core, a faint patch
        >>> grown_mask(m, 0.8, 0.5)[:, 1, 1].astype(int).tolist()
        [0, 1, 1, 1, 0, 0, 0, 0, 0]
    """
    seeds = threshold_map(amap, seed_threshold, min_voxels)
    if not np.isfinite(grow_threshold) or grow_threshold >= seed_threshold or not seeds.any():
        return seeds
    lab, _n = ndi.label(np.asarray(amap) > grow_threshold)
    keep = np.unique(lab[seeds])
    return np.isin(lab, keep[keep > 0])


def dilated_mask(
    mask: np.ndarray,
    radius_mm: float,
    spacing: Sequence[float],
    within: np.ndarray | None = None,
) -> np.ndarray:
    """The voxels within ``radius_mm`` (Euclidean, in mm) of ``mask``, kept inside ``within``.

    Args:
        mask: ``(X, Y, Z)`` bool mask.
        radius_mm: dilation radius in mm; ``0`` returns the mask unchanged.
        spacing: voxel size in mm per axis.
        within: ``(X, Y, Z)`` bool; the dilation does not leave it (``None``: no limit).
            Voxels of ``mask`` itself are always kept.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((7, 7, 7), bool); m[3, 3, 3] = True
        >>> int(dilated_mask(m, 2.0, (2, 2, 2)).sum())  # the voxel and its six face neighbours
        7
    """
    mask = np.asarray(mask, bool)
    if radius_mm <= 0 or not mask.any():
        return mask
    distance = ndi.distance_transform_edt(~mask, sampling=tuple(float(v) for v in spacing))
    near = distance <= radius_mm + 1e-6
    if within is not None:
        near &= np.asarray(within, bool)
    return near | mask


@dataclass
class Component:
    """One connected cluster of supra-threshold voxels.

    Attributes:
        n_voxels: its size in voxels.
        volume_mm3: its volume.
        mass: ``sum(map - threshold)`` over its voxels times the voxel volume (mm³ x intensity
            units): large for big or strongly anomalous clusters.
        peak: the largest map value in it.
        centroid: its centre of mass in voxel coordinates (x, y, z), weighted by ``map - threshold``.
    """

    n_voxels: int
    volume_mm3: float
    mass: float
    peak: float
    centroid: tuple[float, float, float]

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        d = asdict(self)
        d["centroid"] = [float(c) for c in self.centroid]
        return d


def components(
    amap: np.ndarray,
    threshold: float,
    *,
    min_voxels: int = 1,
    voxel_volume_mm3: float = 1.0,
) -> list[Component]:
    """Connected components of ``amap > threshold`` (6-connected), largest ``mass`` first."""
    a = np.asarray(amap, dtype=np.float64)
    m = threshold_map(a, threshold, min_voxels)
    lab, n = ndi.label(m)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    excess = np.where(m, a - threshold, 0.0)
    sizes = ndi.sum(m, lab, idx)
    masses = ndi.sum(excess, lab, idx)
    peaks = ndi.maximum(a, lab, idx)
    centres = ndi.center_of_mass(excess, lab, idx)
    out = [
        Component(
            n_voxels=int(sizes[i]),
            volume_mm3=float(sizes[i] * voxel_volume_mm3),
            mass=float(masses[i] * voxel_volume_mm3),
            peak=float(peaks[i]),
            centroid=tuple(float(c) for c in centres[i]),  # type: ignore[arg-type]
        )
        for i in range(n)
    ]
    return sorted(out, key=lambda c: c.mass, reverse=True)
