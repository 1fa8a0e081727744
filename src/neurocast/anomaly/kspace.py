"""RF spikes: a point of the scan's spectrum that stands out from its ring.

A spike (a burst of RF noise during the readout; "herringbone" or "corduroy" artefact) corrupts
one point of k-space. In the image it is a faint plane wave over the whole field of view, which a
skull-stripping tool keeps inside the brain and the reconstruction-based scores barely see
(``BENCHMARKS.md``, session 31). In the spectrum of the image it is a single coefficient far above
the others at the same spatial frequency.

:func:`spike_peak` reads that: the magnitude spectrum of the scan (FFT of the image as
delivered), its log, and every coefficient's robust z-score against the coefficients in the same
shell of spatial frequency (median and 1.4826 MAD per shell, :data:`N_SHELLS` shells out to the
corner of k-space); the metric is the largest z-score. Two parts of the spectrum are left out:

* the centre (normalised radius below :data:`CENTRE_RADIUS`, in cycles per voxel), where the
  anatomy's own low frequencies vary between directions by far more than any shell's spread;
* the three planes through the centre (:data:`AXIS_PLANES` either side), which carry the cross of
  energy that the FFT's periodic boundary makes from any signal at the field of view's edge
  (whole-head scans, real scans cropped at the neck). Without it the real scans of
  ../shared/data scored up to 8.1; with it 2.85-4.65.

Every scan's IQMs hold it (:func:`neurocast.anomaly.iqm.compute_iqms`, ``spike_z``), and a
calibration made from scans gives it its own threshold: its robust z-score against the healthy
references, over which the scan is flagged for an artefact
(:meth:`neurocast.anomaly.calibration.Calibration.with_spike_references`, the module docstring
of :mod:`neurocast.anomaly.scores`).

It is not one of MRIQC's metrics. The magnitude image is not the scanner's k-space (phase and
interpolation spread a spike over a few coefficients), but a spike of a few per cent of the
spectrum's maximum still stands out by far. Measured 2026-12-08 (session 31, ``BENCHMARKS.md``):
simulated healthy scans 2.6-4.9 (whole head and skull-stripped), the real healthy and tumour
scans of ../shared/data 2.85-4.65, simulated mild spikes (TorchIO ``Spike``, intensity 0.03-0.06)
6.4-10.2 in 21 of 22 visits (one, close to the centre of k-space, 3.9).

Example:
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> from neurocast.anomaly.kspace import spike_peak
    >>> rng = np.random.default_rng(0)
    >>> zz, yy, xx = np.mgrid[:48, :48, :48]
    >>> ball = ((zz - 24) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2) < 18**2
    >>> image = ndimage.gaussian_filter(ball * 100.0, 1.5) + rng.normal(0, 3, ball.shape)
    >>> round(spike_peak(image), 1)
    2.5
    >>> spectrum = np.fft.fftn(image)
    >>> spectrum[9, 30, 14] += 0.05 * np.abs(spectrum).max()  # one spike
    >>> round(spike_peak(np.fft.ifftn(spectrum).real), 1)
    7.6
"""

from __future__ import annotations

import numpy as np
import scipy.fft

CENTRE_RADIUS = 0.08
"""Spatial frequencies below this normalised radius (cycles per voxel; 0.5 is the edge of
k-space along an axis) are not searched for a spike."""
AXIS_PLANES = 1
"""Planes of k-space this close (in coefficients) to each plane through the centre are left out."""
N_SHELLS = 60
"""Shells of spatial frequency over which each coefficient's z-score is taken."""
MIN_SHELL = 50
"""A shell with fewer coefficients than this (tiny images) is not scored."""
MIN_SHAPE = 16
"""Images smaller than this along an axis have too few coefficients per shell: no value."""


def spike_peak(image: np.ndarray) -> float:
    """The largest robust z-score of the scan's log magnitude spectrum within its shell.

    Args:
        image: ``(X, Y, Z)`` the scan on its own grid, as delivered (any intensity scale).

    Returns:
        The metric (about 3-5 without a spike; see the module docstring), or ``NaN`` for an image
        smaller than :data:`MIN_SHAPE` along an axis, a constant one, or one without a shell of
        :data:`MIN_SHELL` coefficients outside the centre.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or min(x.shape) < MIN_SHAPE or not np.isfinite(x).all() or np.ptp(x) == 0:
        return float("nan")
    # The spectrum of a real image is symmetric (|F(k)| = |F(-k)|): the half from rfftn is enough.
    log_mag = np.log(np.abs(scipy.fft.rfftn(x)).astype(np.float64) + 1e-12)
    freqs = [np.fft.fftfreq(x.shape[0]), np.fft.fftfreq(x.shape[1]), np.fft.rfftfreq(x.shape[2])]
    counts = [np.rint(f * n) for f, n in zip(freqs, x.shape, strict=True)]
    fx, fy, fz = np.meshgrid(*freqs, indexing="ij", sparse=True)
    radius = np.sqrt(fx**2 + fy**2 + fz**2)
    cx, cy, cz = np.meshgrid(*counts, indexing="ij", sparse=True)
    off_axes = (np.abs(cx) > AXIS_PLANES) & (np.abs(cy) > AXIS_PLANES) & (np.abs(cz) > AXIS_PLANES)
    shell = np.minimum((radius / radius.max() * N_SHELLS).astype(np.int64), N_SHELLS - 1)

    values, shells, radii = log_mag[off_axes], shell[off_axes], radius[off_axes]
    order = np.argsort(shells, kind="stable")
    values, shells, radii = values[order], shells[order], radii[order]
    edges = np.searchsorted(shells, np.arange(N_SHELLS + 1))
    best = -np.inf
    for i in range(N_SHELLS):
        seg = values[edges[i] : edges[i + 1]]
        searched = radii[edges[i] : edges[i + 1]] > CENTRE_RADIUS
        if seg.size < MIN_SHELL or not searched.any():
            continue
        centre = float(np.median(seg))
        spread = 1.4826 * float(np.median(np.abs(seg - centre)))
        if spread > 0:
            best = max(best, (float(seg[searched].max()) - centre) / spread)
    return float(best) if np.isfinite(best) else float("nan")


__all__ = ["AXIS_PLANES", "CENTRE_RADIUS", "N_SHELLS", "spike_peak"]
