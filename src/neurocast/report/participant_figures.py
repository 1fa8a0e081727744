"""Figures of one participant's report: forecast strips over horizons and regional trajectories.

Every function takes arrays or a plain table (read from the output folder by
:mod:`neurocast.report.html`, so this module never imports the modules that wrote them) and returns a
matplotlib :class:`~matplotlib.figure.Figure` built with the object API on the Agg backend; save it
with :func:`neurocast.report.figures.save_figure`.

Example:
    >>> import numpy as np
    >>> from neurocast.report.participant_figures import forecast_strip
    >>> rng = np.random.default_rng(0)
    >>> fc = rng.random((12, 14, 10, 3))
    >>> fig = forecast_strip(fc, horizons=[1, 2, 5], uncertainty=fc * 0.1)
    >>> len(fig.axes) >= 6
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from neurocast.report.figures import _robust_limits, _slice

COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


def _mid(vol: np.ndarray, axis: int, fraction: float) -> int:
    return round(fraction * (vol.shape[axis] - 1))


def _check4d(name: str, arr: np.ndarray | None, n: int) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr, dtype=float)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] != n:
        raise ValueError(f"{name} must be 4-D with {n} horizons on the last axis, got {arr.shape}")
    return arr


def forecast_strip(
    forecast: np.ndarray,
    *,
    horizons: Sequence[float],
    uncertainty: np.ndarray | None = None,
    jacobian: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
    axial_fraction: float = 0.42,
    coronal_fraction: float = 0.45,
    panel_size: float = 1.8,
) -> Figure:
    """An image strip over forecast horizons: mean forecast, its uncertainty and volume change.

    Columns: the baseline (when given), then one per horizon. Rows: the mean forecast (axial and
    coronal), the per-voxel standard deviation over samples (``uncertainty``) and the mean
    volume change in percent (``jacobian``: volume ratio, 1 = no change), each where given.

    Args:
        forecast: 4-D array (x, y, z, horizon) in RAS+ order.
        horizons: the horizons in years (one per volume).
        uncertainty: 4-D per-voxel SD over samples, same shape.
        jacobian: 4-D mean volume-change ratio, same shape.
        baseline: 3-D baseline image on the same grid.
    """
    n = len(horizons)
    fc = _check4d("forecast", forecast, n)
    sd = _check4d("uncertainty", uncertainty, n)
    jac = _check4d("jacobian", jacobian, n)
    assert fc is not None
    cols = ([("baseline", None)] if baseline is not None else []) + [
        (f"+{h:g} y", k) for k, h in enumerate(horizons)
    ]
    rows: list[tuple[str, str]] = [("forecast", "axial"), ("forecast", "coronal")]
    if sd is not None:
        rows.append(("uncertainty", "axial"))
    if jac is not None:
        rows.append(("change", "axial"))
    fig = Figure(figsize=(panel_size * len(cols) + 0.9, panel_size * len(rows)), facecolor="black")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    ref = np.asarray(baseline, float) if baseline is not None else fc[..., 0]
    vmin, vmax = _robust_limits(ref)
    sd_max = float(np.nanpercentile(sd[sd > 0], 99)) if sd is not None and (sd > 0).any() else 1.0
    change = None if jac is None else (jac - 1.0) * 100.0
    ch_max = 1.0
    if change is not None:
        nz = np.abs(change[np.isfinite(change) & (change != 0)])
        ch_max = float(np.percentile(nz, 99)) if nz.size else 1.0
        ch_max = max(ch_max, 0.5)
    inside = ref > 0 if (ref > 0).any() else np.ones(ref.shape, bool)
    if sd is not None:
        sd = np.where(inside[..., None], sd, np.nan)
    if change is not None:
        change = np.where(inside[..., None], change, np.nan)
    images: dict[str, object] = {}
    for r, (kind, plane) in enumerate(rows):
        axis = 2 if plane == "axial" else 1
        frac = axial_fraction if plane == "axial" else coronal_fraction
        for c, (title, k) in enumerate(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if k is None:  # the baseline column
                if kind == "forecast":
                    vol = ref
                    ax.imshow(_slice(vol, axis, _mid(vol, axis, frac)), cmap="gray", vmin=vmin,
                              vmax=vmax, interpolation="nearest")  # fmt: skip
            elif kind == "forecast":
                vol = fc[..., k]
                ax.imshow(_slice(vol, axis, _mid(vol, axis, frac)), cmap="gray", vmin=vmin,
                          vmax=vmax, interpolation="nearest")  # fmt: skip
            elif kind == "uncertainty" and sd is not None:
                vol = sd[..., k]
                images[kind] = ax.imshow(_slice(vol, axis, _mid(vol, axis, frac)), cmap="magma",
                                         vmin=0, vmax=sd_max, interpolation="nearest")  # fmt: skip
            elif kind == "change" and change is not None:
                vol = change[..., k]
                images[kind] = ax.imshow(_slice(vol, axis, _mid(vol, axis, frac)), cmap="RdBu_r",
                                         vmin=-ch_max, vmax=ch_max, interpolation="nearest")  # fmt: skip
            if r == 0:
                ax.set_title(title, color="white", fontsize=8)
            if c == 0:
                label = {"forecast": f"mean forecast ({plane})", "uncertainty": "SD over samples",
                         "change": "volume change %"}[kind]  # fmt: skip
                ax.text(0.02, 0.98, label, color="yellow", fontsize=6, va="top",
                        transform=ax.transAxes)  # fmt: skip
    fig.subplots_adjust(left=0, right=1 - 0.9 / fig.get_figwidth(), top=0.93, bottom=0,
                        wspace=0.02, hspace=0.02)  # fmt: skip
    for r, (kind, _) in enumerate(rows):
        if kind in images:
            pos = axes[r, -1].get_position()
            cax = fig.add_axes((pos.x1 + 0.01, pos.y0 + 0.1 * pos.height, 0.012, 0.8 * pos.height))
            cb = fig.colorbar(images[kind], cax=cax)  # type: ignore[arg-type]
            cb.ax.tick_params(labelsize=6, colors="white")
    return fig


def _rgb(sl: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    g = np.clip((sl - vmin) / (vmax - vmin if vmax > vmin else 1.0), 0, 1)
    return np.repeat(g[..., None], 3, axis=-1)


def slice_tiles(
    volumes: Sequence[np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    planes: Sequence[str] = ("axial", "coronal"),
    n_slices: int = 5,
    overlays: Sequence[np.ndarray | None] | None = None,
    overlay_threshold: float = 0.0,
    overlay_range: tuple[float, float] | None = None,
    overlay_cmap: str = "autumn",
    slice_fraction: tuple[float, float] = (0.25, 0.75),
    scale: float = 0.02,
) -> Figure:
    """A slice mosaic drawn as one image (fast for reports): a row per (volume, plane).

    Same layout and conventions as :func:`neurocast.report.figures.mosaic` (RAS+ arrays,
    superior/anterior up, the first volume's robust intensity limits shared by all; overlay values
    at or below ``overlay_threshold`` transparent), but the slices are composited into one RGB
    array and shown in a single axes, which is several times faster to draw and save.
    """
    import matplotlib as mpl

    from neurocast.report.figures import PLANES

    if not volumes or any(np.ndim(v) != 3 for v in volumes):
        raise ValueError("slice_tiles needs 3-D volumes")
    vmin, vmax = _robust_limits(np.asarray(volumes[0], float))
    cmap = mpl.colormaps[overlay_cmap]
    rows, labels = [], []
    for i, vol in enumerate(volumes):
        vol = np.asarray(vol, float)
        ov = None if overlays is None or overlays[i] is None else np.asarray(overlays[i], float)
        if ov is not None:
            above = ov[ov > overlay_threshold]
            lo, hi = overlay_range or (
                overlay_threshold, float(np.percentile(above, 99)) if above.size else 1.0
            )
        for plane in planes:
            axis = PLANES[plane]
            n = vol.shape[axis]
            idx = np.linspace(slice_fraction[0] * (n - 1), slice_fraction[1] * (n - 1), n_slices)
            tiles = []
            for k in idx.round().astype(int):
                tile = _rgb(_slice(vol, axis, int(k)), vmin, vmax)
                if ov is not None:
                    o = _slice(ov, axis, int(k))
                    col = cmap(np.clip((o - lo) / (hi - lo if hi > lo else 1.0), 0, 1))[..., :3]
                    a = 0.7 * (o > overlay_threshold)[..., None]
                    tile = tile * (1 - a) + col * a
                tiles.append(tile)
            h = max(t.shape[0] for t in tiles)
            tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 1), (0, 0))) for t in tiles]
            rows.append(np.concatenate(tiles, axis=1))
            labels.append(f"{titles[i]} ({plane})" if titles is not None else plane)
    w = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 1), (0, w - r.shape[1]), (0, 0))) for r in rows]
    image = np.concatenate(rows, axis=0)
    fig = Figure(figsize=(image.shape[1] * scale, image.shape[0] * scale), facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    y = 0
    for r, text in zip(rows, labels, strict=True):
        ax.text(2, y + 2, text, color="yellow", fontsize=7, va="top")
        y += r.shape[0]
    return fig


def _pick_regions(regions: Sequence[str], change: pd.Series, n: int) -> list[str]:
    names = list(dict.fromkeys(str(r) for r in regions))
    first = [r for r in names if "hippocamp" in r.lower()]
    first += [
        r for r in names if "lateral-ventricle" in r.lower() or "lateral_ventricle" in r.lower()
    ]
    rest = [r for r in change.abs().sort_values(ascending=False).index if r not in first]
    return list(dict.fromkeys(first + rest))[:n]


def regional_trajectories(
    table: pd.DataFrame,
    *,
    regions: Sequence[str] | None = None,
    n_regions: int = 6,
    title: str | None = None,
) -> Figure:
    """Forecast regional volume change over horizons with a band (10th-90th percentile of samples).

    Args:
        table: the forecast TSV of one participant, columns ``horizon_years``, ``region``,
            ``baseline_volume_mm3``, ``mean_mm3``, ``q10_mm3``, ``q90_mm3`` (and
            ``change_percent_mean``, else computed from the means).
        regions: regions to draw (default: hippocampi, lateral ventricles, then the regions with
            the largest change, ``n_regions`` in all).
    """
    need = ["horizon_years", "region", "baseline_volume_mm3", "mean_mm3", "q10_mm3", "q90_mm3"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"forecast table lacks columns {missing}")
    t = table.copy()
    for c in [*need[2:], "horizon_years"]:
        t[c] = pd.to_numeric(t[c], errors="coerce")
    base = t["baseline_volume_mm3"].where(t["baseline_volume_mm3"] > 0)
    t["mean_pct"] = (t["mean_mm3"] / base - 1) * 100
    t["lo_pct"] = (t["q10_mm3"] / base - 1) * 100
    t["hi_pct"] = (t["q90_mm3"] / base - 1) * 100
    t["region"] = t["region"].astype(str)
    last = t[t["horizon_years"] == t["horizon_years"].max()].set_index("region")["mean_pct"]
    chosen = list(regions) if regions is not None else _pick_regions(t["region"], last, n_regions)
    chosen = [r for r in chosen if r in set(t["region"])] or list(dict.fromkeys(t["region"]))[:1]
    ncol = min(3, len(chosen))
    nrow = int(np.ceil(len(chosen) / ncol))
    fig = Figure(figsize=(3.0 * ncol, 2.4 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, region in enumerate(chosen):
        ax = axes[i // ncol, i % ncol]
        d = t[t["region"] == region].sort_values("horizon_years")
        x = np.concatenate([[0.0], d["horizon_years"].to_numpy(float)])
        m = np.concatenate([[0.0], d["mean_pct"].to_numpy(float)])
        lo = np.concatenate([[0.0], d["lo_pct"].to_numpy(float)])
        hi = np.concatenate([[0.0], d["hi_pct"].to_numpy(float)])
        col = COLOURS[i % len(COLOURS)]
        ax.fill_between(x, lo, hi, color=col, alpha=0.25, lw=0, label="10-90 %")
        ax.plot(x, m, "o-", color=col, lw=1.6, ms=3, label="mean")
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_title(region, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i % ncol == 0:
            ax.set_ylabel("change from baseline (%)", fontsize=7)
        if i // ncol == nrow - 1:
            ax.set_xlabel("years from baseline", fontsize=7)
    for j in range(len(chosen), nrow * ncol):
        axes[j // ncol, j % ncol].set_axis_off()
    axes[0, 0].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["forecast_strip", "regional_trajectories", "slice_tiles"]
