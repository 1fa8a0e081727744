"""Figures people look at: slice mosaics with optional overlays.

Example:
    >>> import numpy as np
    >>> from neurocast.report.figures import mosaic
    >>> vol = np.random.default_rng(0).random((20, 24, 18))
    >>> fig = mosaic([vol], n_slices=3, titles=["random"])
    >>> len(fig.axes)
    9
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from neurocast.io.atomic import write_bytes_atomic

PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    # arrays are RAS+ [x, y, z]; show each plane in radiological-free "neurological" view with
    # superior / anterior up
    sl = np.take(vol, index, axis=axis)
    return np.rot90(sl)


def _robust_limits(vol: np.ndarray) -> tuple[float, float]:
    nz = vol[vol != 0]
    if nz.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(nz, [1, 99.5])
    return float(min(lo, 0.0)), float(hi if hi > lo else lo + 1)


def mosaic(
    volumes: Sequence[np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    planes: Sequence[str] = ("axial", "coronal", "sagittal"),
    n_slices: int = 5,
    overlays: Sequence[np.ndarray | None] | None = None,
    overlay_cmap: str = "autumn",
    overlay_threshold: float = 0.0,
    overlay_range: tuple[float, float] | None = None,
    cmap: str = "gray",
    shared_limits: bool = True,
    slice_fraction: tuple[float, float] = (0.25, 0.75),
    panel_size: float = 1.6,
) -> Figure:
    """A grid of slices: one row per (volume, plane), ``n_slices`` columns.

    Args:
        volumes: 3-D arrays (x, y, z in RAS+ order) to show, e.g. the visits of one subject.
        titles: a label per volume, shown at the start of its rows.
        planes: which planes to show, among ``"axial"``, ``"coronal"``, ``"sagittal"``.
        n_slices: slices per plane, evenly spaced within ``slice_fraction`` of the axis.
        overlays: per volume an optional array of the same shape drawn on top (e.g. an anomaly
            map); values at or below ``overlay_threshold`` are transparent.
        overlay_cmap: colour map of the overlays.
        overlay_threshold: overlay values at or below this are not drawn.
        overlay_range: colour limits of the overlays (default: their 99th percentile).
        cmap: colour map of the volumes.
        shared_limits: use the first volume's intensity limits for all (so visits compare).
        slice_fraction: the part of each axis the slices are taken from.
        panel_size: size of one panel in inches.

    Returns:
        A matplotlib :class:`~matplotlib.figure.Figure` (save it with :func:`save_figure`).
    """
    if not volumes:
        raise ValueError("mosaic needs at least one volume")
    for v in volumes:
        if np.ndim(v) != 3:
            raise ValueError(f"mosaic volumes must be 3-D, got shape {np.shape(v)}")
    rows = [(i, p) for i, _ in enumerate(volumes) for p in planes]
    fig = Figure(figsize=(panel_size * n_slices, panel_size * len(rows)), facecolor="black")
    axes = fig.subplots(len(rows), n_slices, squeeze=False)
    limits = [_robust_limits(np.asarray(v)) for v in volumes]
    for r, (i, plane) in enumerate(rows):
        vol = np.asarray(volumes[i])
        axis = PLANES[plane]
        n = vol.shape[axis]
        idx = (
            np.linspace(slice_fraction[0] * (n - 1), slice_fraction[1] * (n - 1), n_slices)
            .round()
            .astype(int)
        )
        vmin, vmax = limits[0] if shared_limits else limits[i]
        ov = None if overlays is None else overlays[i]
        if ov is not None:
            ov = np.asarray(ov, dtype=float)
            above = ov[ov > overlay_threshold]
            if overlay_range is not None:
                orange = overlay_range
            else:
                orange = (overlay_threshold, float(np.percentile(above, 99)) if above.size else 1.0)
        for c, k in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(
                _slice(vol, axis, int(k)), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
            )
            if ov is not None:
                sl = _slice(ov, axis, int(k))
                ax.imshow(
                    np.ma.masked_less_equal(sl, overlay_threshold),
                    cmap=overlay_cmap,
                    vmin=orange[0],
                    vmax=orange[1],
                    alpha=0.7,
                    interpolation="nearest",
                )
            ax.set_axis_off()
        if titles is not None:
            axes[r, 0].text(
                0.02,
                0.98,
                f"{titles[i]} ({plane})",
                color="yellow",
                fontsize=7,
                transform=axes[r, 0].transAxes,
                va="top",
            )
    fig.subplots_adjust(left=0, right=1, top=1, bottom=0, wspace=0.02, hspace=0.02)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> os.PathLike[str]:
    """Save a figure as PNG atomically (no partial file if interrupted) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())
