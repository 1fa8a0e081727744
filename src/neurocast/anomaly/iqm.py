"""MRIQC's anatomical image quality metrics (IQMs), with their published definitions.

The metrics follow MRIQC (Esteban et al., PLoS ONE 2017; ``mriqc.qc.anatomical``), written anew
from the published formulas. Notation: ``mu_k``, ``sigma_k`` are the mean and standard deviation
of the image inside tissue mask ``k`` (CSF, GM, WM), ``sigma_air`` the standard deviation inside
the air (background) mask, ``n_k`` the voxel count of ``k``.

==============  =================================================================  ==========  =====
metric          definition                                                         better      needs
==============  =================================================================  ==========  =====
``cjv``         ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|`` (Ganzetti 2016)        lower       tissue
``cnr``         ``|mu_GM - mu_WM| / sqrt(sigma_air^2 + sigma_WM^2 + sigma_GM^2)``  higher      air
                (Magnotta & Friedman 2006, as in MRIQC >= 0.15)
``snr_{csf,gm,  ``mu_k / (sigma_k sqrt(n_k / (n_k - 1)))`` per tissue; ``snr_total``  higher    tissue
wm,total}``     is the mean of the three
``snrd_{...}``  Dietrich 2007 eq. A.12: ``mu_k / (sqrt(2 / (4 - pi)) sigma_air)``  higher      air
``efc``         entropy focus criterion (Atkinson 1997), normalised by the         lower       air
                maximum entropy: ``E / E_max`` with ``E = -sum (x_j / B) ln(x_j / B)``,
                ``B = sqrt(sum x_j^2)``, ``E_max = sqrt(N) ln(1 / sqrt(N))``
``fber``        ``median(|F|^2) / median(|B|^2)``, F inside the head, B the air      higher      air
                (Shehzad 2015; MRIQC's median form)
``qi1``         Mortamet 2009: share of air voxels flagged as artefact: air voxels  lower       air
                whose intensity exceeds 10 robust SDs of the air (MAD of the
                positive air values, scaled by 1/0.6745), not within the 10 %
                of air closest to the head, after a 6-connected binary opening
``wm2max``      ``median(WM) / P99.95(image)``                                     ~0.6-0.8    tissue
==============  =================================================================  ==========  =====

One more metric, not MRIQC's (:data:`EXTRA_METRICS`):

==================  =============================================================  ==========  =====
metric              definition                                                     better      needs
==================  =============================================================  ==========  =====
``ghost_ratio``     ``max`` over the three axes of ``ln(E_in / E_out)``: ``E`` the   ~0          air
                    mean squared intensity of the air farther than 10 mm from the
                    head, inside (``in``) or outside (``out``, beyond a 10 mm
                    margin) the head's shadow along that axis (:func:`ghost_ratio`)
==================  =============================================================  ==========  =====

And one read from the scan's spectrum, defined for every scan (:data:`SPECTRUM_METRICS`):

==================  =============================================================  ==========  =====
metric              definition                                                     better      needs
==================  =============================================================  ==========  =====
``spike_z``         the largest robust z-score of a log magnitude-spectrum          ~3-5        image
                    coefficient against its shell of spatial frequency, outside
                    the centre and the planes through it
                    (:func:`neurocast.anomaly.kspace.spike_peak`): RF spikes
==================  =============================================================  ==========  =====

Why ``ghost_ratio``: motion during a scan makes the k-space lines acquired before and after it
disagree, and the disagreement spreads along the phase-encoding axis only: ghosts of the head
fill the air in line with the head along that axis and leave the rest of the air alone (the
idea behind fMRI's ghost-to-signal ratio and Mortamet's QI1). The ratio compares two parts of
the same scan's air, so it does not depend on the noise level, the gain or the contrast, which
vary between healthy scans: stationary noise gives 0 within sampling error (about ±0.003 with
10⁵ air voxels each side). NIfTI does not record the phase-encoding axis, hence the maximum over
the axes. A scanner whose noise is not stationary (parallel imaging, flow ghosts of the vessels:
the real IXI scans of ../shared/data give 0.1-2.2) has a higher healthy level; calibrate on that
scanner's own healthy scans.

**Undefined values.** Metrics marked "air" need signal outside the head. For a skull-stripped
input (the background was removed, not measured), or where the air holds no measurable signal,
they are ``NaN`` and :attr:`IQMResult.undefined` says why; a number is never invented (MRIQC
writes ``-1`` in that case, which a table reader cannot tell from a value). ``efc`` counts as
background-based because most of its voxels are air. Exact zeros outside the head (padding from
an oblique or rotated field of view, MRIQC's "rotation mask") are never air.

**Tissue masks.** Without a segmentation (MRIQC runs FSL FAST), :func:`segment_tissues` gives a
crude one: 3-class 1-D k-means of the intensities in the brain's core, the voxels of the brain
mask farther than :data:`TISSUE_CORE_MM` (3 mm) from its edge
(:func:`neurocast.registration.preprocess.kmeans_1d`), CSF < GM < WM split at the midpoints
between the class centres; the mask's rim is left unlabelled. Enough for contrast and noise
figures, not a volumetric segmentation.

Why the core: how much extra-cerebral CSF a brain mask holds depends on where it came from, not
on the scan's quality. A skull-stripped input's mask follows the stripping tool's margin (about
2080 ml on the simulated scans of session 26), a whole-head scan's the template's brain (about
1750 ml). Over the whole mask the extra CSF moved the GM/WM class boundary, and skull-stripped
healthy scans had a CJV of 0.67 against 0.61 for whole-head ones (2-3 reference spreads), which
put them among the motion scans on the artefact score. In the core both kinds give 0.61-0.62. Chosen on the
benchmark's development cohorts with the adoption rule written first (``BENCHMARKS.md``,
session 26): moderate-motion AUROC of the artefact score 0.79 -> 0.90, and 0.68 -> 0.85 among
skull-stripped scans, with no more healthy scans over the threshold. A mask too small to have a
core of :data:`MIN_CORE_SHARE` of its voxels (tiny test volumes) is segmented whole.

**Air mask.** :func:`head_and_air_masks`: the head is the foreground of an Otsu threshold of the
log intensities (largest component, closed, holes filled) united with the brain mask; air is
everything farther than ``margin_mm`` (default 4 mm) from the head, minus the zero padding.
MRIQC's "hat" mask also removes the air below the nasion-occipital plane; we do not (our
template-space affine is not needed for the metrics, and the simulated heads have no neck).

All metrics are ratios, so the intensity scale of the image does not matter (a preprocessed image
normalised to white matter = 1 gives the same values as the raw one, up to N4's correction).

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.iqm import compute_iqms
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(0, 1, (24, 24, 24)).__abs__()  # Rayleigh-like air
    >>> brain = np.zeros(img.shape, bool); brain[6:18, 6:18, 6:18] = True
    >>> img[brain] = rng.normal(100, 5, brain.sum())
    >>> tissues = np.zeros(img.shape, np.int8); tissues[brain] = 3; tissues[6:10, 6:18, 6:18] = 2
    >>> tissues[6:8, 6:18, 6:18] = 1
    >>> iqm = compute_iqms(img, brain, tissues=tissues, skull_stripped=False)
    >>> sorted(iqm.values)[:4]
    ['cjv', 'cnr', 'efc', 'fber']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from neurocast.anomaly.kspace import spike_peak

DIETRICH_FACTOR = 1.0 / math.sqrt(2.0 / (4.0 - math.pi))
"""``1 / sqrt(2 / (4 - pi))``: Rayleigh correction of the air standard deviation (Dietrich 2007)."""
QI1_ZSCORE = 10.0
"""Robust z-score above which an air voxel counts as artefact (Mortamet 2009 / MRIQC)."""
QI1_NEAR_HEAD = 0.10
"""Air voxels closer to the head than this share of the largest air distance are ignored by QI1."""
TISSUES = {"csf": 1, "gm": 2, "wm": 3}
"""Labels of :func:`segment_tissues` (0 = outside the brain)."""
TISSUE_CORE_MM = 3.0
"""Tissue classes are found only this far (mm) inside the brain mask (see "Tissue masks" above)."""
MIN_CORE_SHARE = 0.2
"""The core must hold at least this share of the mask's voxels, else the whole mask is segmented."""
BACKGROUND_METRICS = ("cnr", "efc", "fber", "qi1", "snrd_csf", "snrd_gm", "snrd_wm", "snrd_total")
"""Metrics that need a measured background (air)."""
TISSUE_METRICS = ("cjv", "snr_csf", "snr_gm", "snr_wm", "snr_total", "wm2max")
"""Metrics computed from the tissue classes alone."""
MRIQC_METRICS = tuple(sorted(BACKGROUND_METRICS + TISSUE_METRICS))
"""MRIQC's anatomical metrics, in alphabetical order."""
EXTRA_METRICS = ("ghost_ratio",)
"""Metrics beyond MRIQC's (background-based; see the module docstring)."""
SPECTRUM_METRICS = ("spike_z",)
"""Metrics read from the scan's spectrum; defined with or without a background."""
METRICS = tuple(sorted(MRIQC_METRICS + EXTRA_METRICS + SPECTRUM_METRICS))
"""Every metric :func:`compute_iqms` reports, in alphabetical order."""
GHOST_FAR_MM = 10.0
"""The ghost ratio ignores air closer to the head than this (the head's own edges, partial volume)."""
GHOST_MARGIN_MM = 10.0
"""Air within this of the head's shadow (in the plane across the axis) is in neither part."""
MIN_GHOST_VOXELS = 500
"""An axis counts for the ghost ratio only with at least this many air voxels in each part."""
MIN_AIR_VOXELS = 100
"""Fewer air voxels than this: background metrics are undefined."""
SKULL_STRIPPED_REASON = (
    "input is skull-stripped: the air around the head was removed, not measured, so "
    "background-based metrics are undefined"
)


@dataclass
class IQMResult:
    """The metrics of one scan.

    Attributes:
        values: metric name -> value (``NaN`` where undefined); see :data:`METRICS`.
        undefined: metric name -> the reason it is undefined (only for ``NaN`` values).
        n_voxels: voxel counts of the masks used (``csf``, ``gm``, ``wm``, ``air``, ``head``,
            ``artefact``).
    """

    values: dict[str, float]
    undefined: dict[str, str] = field(default_factory=dict)
    n_voxels: dict[str, int] = field(default_factory=dict)

    def get(self, name: str) -> float:
        """One metric (``NaN`` when undefined)."""
        return float(self.values.get(name, float("nan")))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"values": {name: float or None}, "undefined": {name: reason}, ...}``."""
        return {
            "values": {k: (None if not math.isfinite(v) else float(v)) for k, v in self.values.items()},
            "undefined": dict(self.undefined),
            "n_voxels": dict(self.n_voxels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IQMResult:
        """Inverse of :meth:`to_dict`."""
        values = {k: (float("nan") if v is None else float(v)) for k, v in d["values"].items()}
        return cls(values, dict(d.get("undefined", {})), dict(d.get("n_voxels", {})))


# --------------------------------------------------------------------------------------------------
# the metrics (scalar formulas)


def cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float:
    """Coefficient of joint variation ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|`` (lower is better)."""
    den = abs(mu_wm - mu_gm)
    return float((sigma_wm + sigma_gm) / den) if den > 0 else float("nan")


def cnr(mu_wm: float, mu_gm: float, sigma_air: float, sigma_wm: float, sigma_gm: float) -> float:
    """Contrast-to-noise ratio ``|mu_GM - mu_WM| / sqrt(sigma_air^2 + sigma_WM^2 + sigma_GM^2)``."""
    den = math.sqrt(sigma_air**2 + sigma_wm**2 + sigma_gm**2)
    return float(abs(mu_wm - mu_gm) / den) if den > 0 else float("nan")


def snr(mu: float, sigma: float, n: int) -> float:
    """Tissue SNR ``mu / (sigma sqrt(n / (n - 1)))`` (the sample-SD correction)."""
    if n < 2 or sigma <= 0:
        return float("nan")
    return float(mu / (sigma * math.sqrt(n / (n - 1))))


def snr_dietrich(mu: float, sigma_air: float) -> float:
    """Dietrich's SNR ``mu / (sqrt(2 / (4 - pi)) sigma_air)`` (air noise is Rayleigh distributed)."""
    return float(DIETRICH_FACTOR * mu / sigma_air) if sigma_air > 0 else float("nan")


def efc(image: np.ndarray, frame_mask: np.ndarray | None = None) -> float:
    """Entropy focus criterion of the voxels outside ``frame_mask``, normalised to [0, 1].

    ``E = -sum (x_j / B) ln(x_j / B)`` with ``B = sqrt(sum x_j^2)``, divided by its maximum
    ``sqrt(N) ln(sqrt(N))`` (reached when all N voxels are equal). Negative values are taken in
    absolute value (magnitude images). 0 = all energy in one voxel; higher = more spread
    (ghosting, blurring).
    """
    x = np.abs(np.asarray(image, dtype=np.float64))
    if frame_mask is not None:
        x = x[~np.asarray(frame_mask, dtype=bool)]
    x = x.ravel()
    n = x.size
    b = math.sqrt(float((x * x).sum()))
    if n < 2 or b <= 0:
        return float("nan")
    p = x[x > 0] / b
    entropy = float(-(p * np.log(p)).sum())
    e_max = math.sqrt(n) * math.log(math.sqrt(n))
    return entropy / e_max


def fber(image: np.ndarray, head_mask: np.ndarray, air_mask: np.ndarray) -> float:
    """Foreground-background energy ratio ``median(|F|^2) / median(|B|^2)`` (``NaN`` if B is 0)."""
    x = np.asarray(image, dtype=np.float64)
    fg = np.median(np.abs(x[np.asarray(head_mask, bool)]) ** 2)
    bg = np.median(np.abs(x[np.asarray(air_mask, bool)]) ** 2)
    return float(fg / bg) if bg > 0 else float("nan")


def ghost_ratio(
    image: np.ndarray,
    head_mask: np.ndarray,
    air_mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[float, int | None]:
    """Ghost ratio: air energy in the head's shadow along an axis against the air outside it.

    For each axis ``a``, the air farther than :data:`GHOST_FAR_MM` from the head is split into
    the part whose line along ``a`` crosses the head (the shadow, where phase-encoding ghosts
    land) and the part more than :data:`GHOST_MARGIN_MM` outside the shadow; the value for ``a``
    is ``ln(mean(x^2 | shadow) / mean(x^2 | outside))``. The metric is the largest over the axes
    with at least :data:`MIN_GHOST_VOXELS` voxels in each part.

    Args:
        image: the scan, 3-D, native grid.
        head_mask, air_mask: boolean masks (see :func:`head_and_air_masks`).
        spacing: voxel size in mm.

    Returns:
        ``(ratio, axis)`` (dimensionless natural log; 0 for stationary noise), or ``(NaN, None)``
        where no axis has enough air on both sides.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> img = np.abs(rng.normal(0, 1, (60, 60, 60)))
        >>> head = np.zeros(img.shape, bool); head[20:40, 20:40, 20:40] = True
        >>> img[head] = 100.0
        >>> ratio, axis = ghost_ratio(img, head, ~head)
        >>> abs(ratio) < 0.05
        True
        >>> img[25:35, 25:35, :] += 2.0  # a ghost along axis 2
        >>> ratio, axis = ghost_ratio(img, head, ~head)
        >>> axis, ratio > 0.5
        (2, True)
    """
    x = np.asarray(image, dtype=np.float64)
    head = np.asarray(head_mask, dtype=bool)
    sp = np.asarray(spacing, dtype=float)
    if not head.any():
        return float("nan"), None
    energy = x * x
    far = np.asarray(air_mask, dtype=bool) & (ndi.distance_transform_edt(~head, sampling=sp) > GHOST_FAR_MM)
    best, best_axis = float("nan"), None
    for a in range(3):
        others = [i for i in range(3) if i != a]
        shadow2d = head.any(axis=a)
        outside2d = ndi.distance_transform_edt(~shadow2d, sampling=sp[others]) > GHOST_MARGIN_MM
        inside = far & np.expand_dims(shadow2d, a)
        outside = far & np.expand_dims(outside2d, a)
        n_in, n_out = int(inside.sum()), int(outside.sum())
        if n_in < MIN_GHOST_VOXELS or n_out < MIN_GHOST_VOXELS:
            continue
        e_in, e_out = float(energy[inside].mean()), float(energy[outside].mean())
        if e_in <= 0 or e_out <= 0:
            continue
        value = math.log(e_in / e_out)
        if best_axis is None or value > best:
            best, best_axis = value, a
    return best, best_axis


def wm2max(image: np.ndarray, wm_mask: np.ndarray) -> float:
    """White matter to maximum: ``median(WM) / P99.95(image)`` (all voxels of the image)."""
    x = np.asarray(image, dtype=np.float64)
    top = float(np.percentile(x, 99.95))
    return float(np.median(x[np.asarray(wm_mask, bool)]) / top) if top > 0 else float("nan")


def robust_sd(values: np.ndarray) -> float:
    """Normalised median absolute deviation ``median(|x - median(x)|) / 0.6745``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    return float(np.median(np.abs(v - np.median(v))) / 0.6744897501960817)


def artefact_mask(
    image: np.ndarray,
    air_mask: np.ndarray,
    *,
    zscore: float = QI1_ZSCORE,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Mortamet's artefact voxels in the air (see :func:`qi1`); boolean, same shape as ``image``.

    Air voxels brighter than ``zscore`` robust SDs (of the positive air values), ignoring the
    air closest to the head (distance to the head below :data:`QI1_NEAR_HEAD` of the largest
    distance), cleaned by a 6-connected binary opening. With ``spacing`` given, the distances are
    computed on a copy of about 4 mm voxels (the 10 % band does not need more).
    """
    x = np.asarray(image, dtype=np.float64)
    air = np.asarray(air_mask, dtype=bool)
    out = np.zeros(x.shape, dtype=bool)
    vals = x[air]
    pos = vals[vals > 0]
    if pos.size < 10:
        return out
    spread = robust_sd(pos)
    if not spread > 0:
        return out
    out[air] = vals / spread > zscore
    if not out.any():
        return out
    k = _block_factor(spacing) if spacing is not None else (1, 1, 1)
    low_air = _block_any(~air, k)
    dist = _upsample(ndi.distance_transform_edt(~low_air), x.shape, k)
    dmax = float(dist.max())
    if dmax > 0:
        out &= dist / dmax >= QI1_NEAR_HEAD
    return ndi.binary_opening(out, structure=ndi.generate_binary_structure(3, 1))


def qi1(
    image: np.ndarray, air_mask: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[float, int]:
    """Mortamet's QI1: share of air voxels that are artefact (:func:`artefact_mask`).

    Returns:
        (QI1, number of artefact voxels).
    """
    air = np.asarray(air_mask, dtype=bool)
    n_air = int(air.sum())
    if n_air == 0:
        return float("nan"), 0
    art = artefact_mask(image, air, spacing=spacing)
    n_art = int(art.sum())
    return n_art / n_air, n_art


# --------------------------------------------------------------------------------------------------
# masks


def brain_core(
    brain_mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    core_mm: float = TISSUE_CORE_MM,
) -> np.ndarray:
    """The voxels of ``brain_mask`` farther than ``core_mm`` from its edge; the whole mask when
    that core holds less than :data:`MIN_CORE_SHARE` of it (or ``core_mm`` is 0).

    Args:
        brain_mask: boolean brain mask.
        spacing: voxel size in mm.
        core_mm: depth of the rim left out (mm).

    Returns:
        Boolean mask, same shape.
    """
    m = np.asarray(brain_mask, dtype=bool)
    if core_mm <= 0 or not m.any():
        return m
    core = ndi.distance_transform_edt(m, sampling=tuple(float(s) for s in spacing)) > core_mm
    return core if core.sum() >= MIN_CORE_SHARE * m.sum() else m


def segment_tissues(
    image: np.ndarray,
    brain_mask: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    core_mm: float = TISSUE_CORE_MM,
) -> np.ndarray:
    """Crude CSF/GM/WM labels (1/2/3) by 3-class k-means of the intensities in the brain's core.

    Args:
        image: T1-weighted array (any scale; WM brightest).
        brain_mask: boolean brain mask, same shape.
        spacing: voxel size in mm.
        core_mm: the mask's rim this deep (mm) is left out and unlabelled (:func:`brain_core`;
            0: the whole mask, the definition before session 26).

    Returns:
        ``int8`` label array (see :data:`TISSUES`; 0 outside the core).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> img = np.zeros((30, 30, 30)); img[5:25, 5:25, 5:15] = 60.0  # GM
        >>> img[5:25, 5:25, 15:25] = 100.0; img[10:20, 10:20, 10:14] = 30.0  # WM, CSF
        >>> img += rng.normal(0, 2, img.shape) * (img > 0)
        >>> seg = segment_tissues(img, img > 0)
        >>> [int(seg[15, 15, z]) for z in (12, 8, 20)], int(seg[5, 5, 5])  # the rim: unlabelled
        ([1, 2, 3], 0)
    """
    from neurocast.registration.preprocess import kmeans_1d

    x = np.asarray(image, dtype=np.float64)
    m = brain_core(np.asarray(brain_mask, dtype=bool), spacing, core_mm)
    labels = np.zeros(x.shape, dtype=np.int8)
    if m.sum() < 3:
        return labels
    vals = x[m]
    step = max(1, vals.size // 100_000)  # the class centres need no more than ~1e5 samples
    centres = kmeans_1d(vals[::step], 3)
    bounds = (centres[:-1] + centres[1:]) / 2
    labels[m] = (np.searchsorted(bounds, x[m]) + 1).astype(np.int8)
    return labels


def head_and_air_masks(
    image: np.ndarray,
    brain_mask: np.ndarray | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    margin_mm: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Head and air masks of a whole-head scan (see the module docstring).

    The head is every voxel above the Otsu threshold of the *log* intensities of the non-zero
    voxels (air noise and tissue differ by an order of magnitude, so the log histogram separates
    them even with the scalp thin and dark). The mask is built on a block-averaged copy of about
    4 mm voxels (opened by one voxel, largest component, closed by ``margin_mm``, holes filled),
    brought back to the full grid (nearest) and united with the brain mask.

    Returns:
        ``(head, air)`` boolean arrays. Air is farther than ``margin_mm`` from the head and
        excludes exact zeros (field-of-view padding).
    """
    from neurocast.registration.preprocess import (
        dilate_mm,
        erode_mm,
        largest_component,
        otsu_threshold,
    )

    x = np.asarray(image, dtype=np.float32)
    k = _block_factor(spacing)
    sp = tuple(float(s) * f for s, f in zip(spacing, k, strict=True))
    pos = x[x > 0]
    low = _block_mean(x, k)
    head = np.zeros(low.shape, dtype=bool)
    if pos.size > 10:
        step = max(1, pos.size // 200_000)
        thr = float(np.exp(otsu_threshold(np.log(pos[::step]))))
        head = ndi.binary_opening(low > thr, iterations=1)
        if head.any():
            head = largest_component(head)
            head = erode_mm(dilate_mm(head, margin_mm, sp), margin_mm, sp) | head
            head = ndi.binary_fill_holes(head)
    near = _upsample(dilate_mm(head, margin_mm, sp), x.shape, k)
    head = _upsample(head, x.shape, k)
    if brain_mask is not None:
        head = head | np.asarray(brain_mask, dtype=bool)
    air = ~near & ~head & (x != 0)
    return head, air


def _block_factor(spacing: Sequence[float], target_mm: float = 4.0) -> tuple[int, int, int]:
    return tuple(max(1, round(target_mm / float(s))) for s in spacing)  # type: ignore[return-value]


def _crop(x: np.ndarray, k: Sequence[int]) -> np.ndarray:
    return x[tuple(slice(0, (n // f) * f) for n, f in zip(x.shape, k, strict=True))]


def _block_mean(x: np.ndarray, k: Sequence[int]) -> np.ndarray:
    """Mean over blocks of ``k`` voxels (a partial block at the end of an axis is dropped)."""
    c = _crop(np.asarray(x, dtype=np.float32), k)
    sh = [d for n, f in zip(c.shape, k, strict=True) for d in (n // f, f)]
    return c.reshape(sh).mean(axis=(1, 3, 5))


def _block_any(x: np.ndarray, k: Sequence[int]) -> np.ndarray:
    c = _crop(np.asarray(x, dtype=bool), k)
    sh = [d for n, f in zip(c.shape, k, strict=True) for d in (n // f, f)]
    return c.reshape(sh).any(axis=(1, 3, 5))


def _upsample(low: np.ndarray, shape: Sequence[int], k: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a block-reduced array back to ``shape`` (edge repeated)."""
    idx = [np.minimum(np.arange(n) // f, m - 1) for n, f, m in zip(shape, k, low.shape, strict=True)]
    return low[np.ix_(*idx)]


# --------------------------------------------------------------------------------------------------
# all metrics of one scan


def _stats(x: np.ndarray, m: np.ndarray) -> tuple[float, float, int]:
    v = x[m]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(v.size)


def compute_iqms(
    image: np.ndarray,
    brain_mask: np.ndarray,
    *,
    tissues: np.ndarray | None = None,
    air_mask: np.ndarray | None = None,
    head_mask: np.ndarray | None = None,
    skull_stripped: bool | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    raw_image: np.ndarray | None = None,
    raw_spacing: Sequence[float] | None = None,
    no_ghost_reason: str | None = None,
) -> IQMResult:
    """MRIQC's anatomical IQMs of one scan (see the module docstring for definitions).

    Args:
        image: the scan, 3-D, native grid, not masked (any intensity scale).
        brain_mask: boolean brain mask.
        tissues: labels 1 CSF, 2 GM, 3 WM (default :func:`segment_tissues`, in the brain's
            core).
        air_mask: background voxels (default from :func:`head_and_air_masks`).
        head_mask: head voxels for FBER (default from :func:`head_and_air_masks`).
        skull_stripped: ``True``: background metrics are undefined (reason given). ``None`` or
            ``False``: they are computed where the air holds signal; an air without any (all
            zeros, or fewer than :data:`MIN_AIR_VOXELS` voxels) also gives ``NaN`` with a reason.
        spacing: voxel size in mm (for the air margin).
        raw_image: the scan as acquired, before bias-field correction (its own grid and
            orientation). The ghost ratio and ``spike_z`` are measured on it when given: N4's
            field, extrapolated into the air, scales the air unevenly (on a simulated healthy scan it took the ratio
            from 0.000 to 0.32). ``None``: measured on ``image``, which must then be uncorrected.
        raw_spacing: voxel size of ``raw_image`` in mm (default ``spacing``).
        no_ghost_reason: leave the ghost ratio undefined, for this reason (``image`` is
            bias-corrected and the scan as acquired is not at hand).

    Returns:
        An :class:`IQMResult`.
    """
    x = np.asarray(image, dtype=np.float64)
    brain = np.asarray(brain_mask, dtype=bool)
    if x.shape != brain.shape:
        raise ValueError(f"image {x.shape} and brain mask {brain.shape} differ in shape")
    if tissues is None:
        tissues = segment_tissues(x, brain, spacing=spacing)
    tissues = np.asarray(tissues)
    masks = {k: tissues == v for k, v in TISSUES.items()}
    st = {k: _stats(x, m) for k, m in masks.items()}
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}
    (mu_wm, sd_wm, n_wm), (mu_gm, sd_gm, n_gm) = st["wm"], st["gm"]
    values["cjv"] = cjv(mu_wm, mu_gm, sd_wm, sd_gm) if n_wm and n_gm else float("nan")
    for k in ("csf", "gm", "wm"):
        mu, sd, n = st[k]
        values[f"snr_{k}"] = snr(mu, sd, n)
    values["snr_total"] = float(np.mean([values["snr_csf"], values["snr_gm"], values["snr_wm"]]))
    values["wm2max"] = wm2max(x, masks["wm"]) if n_wm else float("nan")
    for name in TISSUE_METRICS:
        if not math.isfinite(values[name]):
            undefined[name] = "a tissue class is empty or has no spread"

    values["spike_z"] = spike_peak(x if raw_image is None else raw_image)
    if not math.isfinite(values["spike_z"]):
        undefined["spike_z"] = "the image is too small or constant for the spectrum's shells"

    counts = {k: st[k][2] for k in ("csf", "gm", "wm")}
    reason = None
    if skull_stripped:
        reason = SKULL_STRIPPED_REASON
    else:
        if air_mask is None or head_mask is None:
            h, a = head_and_air_masks(x, brain, spacing=spacing)
            head_mask = h if head_mask is None else head_mask
            air_mask = a if air_mask is None else air_mask
        air = np.asarray(air_mask, dtype=bool)
        head = np.asarray(head_mask, dtype=bool)
        counts["air"], counts["head"] = int(air.sum()), int(head.sum())
        air_vals = x[air]
        if air_vals.size < MIN_AIR_VOXELS:
            reason = f"only {air_vals.size} air voxels (< {MIN_AIR_VOXELS}): no background to measure"
        elif not np.any(air_vals != 0):
            reason = (
                "the air around the head is all zero (skull-stripped or background removed): "
                "background-based metrics are undefined"
            )
    if reason is not None:
        for name in BACKGROUND_METRICS + EXTRA_METRICS:
            values[name] = float("nan")
            undefined[name] = reason
    else:
        sd_air = float(air_vals.std())
        values["cnr"] = cnr(mu_wm, mu_gm, sd_air, sd_wm, sd_gm)
        for k in ("csf", "gm", "wm"):
            values[f"snrd_{k}"] = snr_dietrich(st[k][0], sd_air)
        values["snrd_total"] = float(
            np.mean([values["snrd_csf"], values["snrd_gm"], values["snrd_wm"]])
        )
        frame = (x == 0) & ~head & ~air
        values["efc"] = efc(x, frame)
        values["fber"] = fber(x, head, air)
        values["qi1"], counts["artefact"] = qi1(x, air, spacing)
        for name in BACKGROUND_METRICS:
            if not math.isfinite(values[name]):
                undefined[name] = "the air has no spread (zero standard deviation or energy)"
        if no_ghost_reason is not None:
            values["ghost_ratio"] = float("nan")
        elif raw_image is None:
            values["ghost_ratio"], _ = ghost_ratio(x, head, air, spacing)
        else:
            raw = np.asarray(raw_image, dtype=np.float32)
            rsp = spacing if raw_spacing is None else raw_spacing
            raw_head, raw_air = head_and_air_masks(raw, spacing=rsp)
            values["ghost_ratio"], _ = ghost_ratio(raw, raw_head, raw_air, rsp)
        if no_ghost_reason is not None:
            undefined["ghost_ratio"] = no_ghost_reason
        elif not math.isfinite(values["ghost_ratio"]):
            undefined["ghost_ratio"] = (
                f"no axis has {MIN_GHOST_VOXELS} air voxels both in the head's shadow and outside "
                f"it, farther than {GHOST_FAR_MM:g} mm from the head (field of view too tight)"
            )
    ordered = {k: values[k] for k in METRICS}
    return IQMResult(ordered, {k: undefined[k] for k in METRICS if k in undefined}, counts)
