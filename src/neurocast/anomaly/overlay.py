"""The QA picture of one scan: input, reconstruction and anomaly overlay through the main cluster.

A 3 x 3 grid (rows: input, pseudo-healthy reconstruction, input with the anomaly map above the
voxel threshold in colour; columns: axial, coronal, sagittal) with every plane through the centre
of the largest anomaly cluster (the brain's centre when there is none), so the reviewer sees the
finding at once. It is composed as one RGB array and written as a PNG in a single call (tens of
milliseconds; a matplotlib figure with one axes per panel, like
:func:`neurocast.report.figures.mosaic`, takes seconds, a large share of the per-scan budget).
Orientation as in :mod:`neurocast.report.figures`: superior / anterior up, RAS+ arrays.

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.overlay import overlay_png
    >>> img = np.random.default_rng(0).random((20, 24, 18)).astype(np.float32)
    >>> amap = np.zeros_like(img); amap[8:12, 10:14, 7:10] = 1.0
    >>> overlay_png(img, img, amap, threshold=0.5)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def _plane(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.rot90(np.take(vol, index, axis=axis))


def _grey(sl: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((sl - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.repeat(g[..., None], 3, axis=-1)


def image_centre(image: np.ndarray) -> tuple[float, float, float]:
    """Centre (voxel coordinates) of the non-zero voxels of ``image`` (the brain, for a masked
    scan); the grid's centre when it is all zero.

    Example:
        >>> import numpy as np
        >>> img = np.zeros((10, 10, 10)); img[2:6, 4:8, 0:4] = 1.0
        >>> image_centre(img)
        (3.5, 5.5, 1.5)
    """
    from scipy import ndimage

    nz = np.asarray(image) != 0
    if not nz.any():
        return tuple((n - 1) / 2 for n in nz.shape)  # type: ignore[return-value]
    return tuple(float(v) for v in ndimage.center_of_mass(nz))  # type: ignore[return-value]


def largest_cluster_centre(amap: np.ndarray, threshold: float) -> tuple[float, float, float] | None:
    """Centre (voxel coordinates) of the main cluster of ``amap > threshold``: the first of
    :func:`neurocast.anomaly.maps.components` (largest excess over the threshold, weighted by
    it), as the QA workflow uses; ``None`` when no voxel is above the threshold.

    Scattered voxels elsewhere do not pull the centre off the cluster (a centre over all
    supra-threshold voxels can fall between two findings, on neither).

    Example:
        >>> import numpy as np
        >>> amap = np.zeros((30, 10, 10)); amap[2:8, 2:8, 2:8] = 1.0; amap[27, 5, 5] = 1.0
        >>> [round(c) for c in largest_cluster_centre(amap, 0.5)]
        [4, 4, 4]
    """
    from neurocast.anomaly.maps import components

    found = components(np.asarray(amap, dtype=np.float32), threshold)
    return found[0].centroid if found else None


def overlay_png(
    image: np.ndarray,
    reconstruction: np.ndarray,
    amap: np.ndarray,
    *,
    threshold: float,
    centre: Sequence[float] | None = None,
    upscale: int = 3,
    cmap: str = "autumn",
) -> bytes:
    """PNG bytes of the 3 x 3 QA grid (see the module docstring).

    Args:
        image, reconstruction, amap: ``(X, Y, Z)`` arrays on one grid (RAS+).
        threshold: anomaly values at or below it are not coloured (the calibrated voxel threshold).
        centre: voxel the planes pass through (default: :func:`largest_cluster_centre` of the
            map above ``threshold``, else :func:`image_centre`).
        upscale: pixels per voxel (nearest).
        cmap: matplotlib colour map of the overlay.
    """
    import matplotlib

    img = np.asarray(image, dtype=np.float32)
    rec = np.asarray(reconstruction, dtype=np.float32)
    a = np.asarray(amap, dtype=np.float32)
    if centre is None:
        centre = largest_cluster_centre(a, threshold)
        if centre is None:
            centre = image_centre(img)
    c = [int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(centre, img.shape, strict=True)]
    nz = img[img != 0]
    lo, hi = (
        (float(np.percentile(nz, 1)), float(np.percentile(nz, 99.5))) if nz.size else (0.0, 1.0)
    )
    vmax = float(a.max()) if a.max() > threshold else threshold + 1.0
    colours = matplotlib.colormaps[cmap]
    rows = []
    for kind in ("input", "reconstruction", "overlay"):
        panels = []
        for axis in (2, 1, 0):  # axial, coronal, sagittal
            base = _grey(_plane(rec if kind == "reconstruction" else img, axis, c[axis]), lo, hi)
            if kind == "overlay":
                sl = _plane(a, axis, c[axis])
                on = sl > threshold
                rgb = colours(np.clip((sl - threshold) / (vmax - threshold), 0, 1))[..., :3]
                base = np.where(on[..., None], 0.35 * base + 0.65 * rgb, base)
            panels.append(base)
        height = max(p.shape[0] for p in panels)
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, 2), (0, 0))) for p in panels]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows])
    grid = np.kron(grid, np.ones((upscale, upscale, 1)))
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, np.clip(grid, 0, 1), format="png")
    return buf.getvalue()
