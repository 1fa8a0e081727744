"""Figures of cohort trajectories and time to conversion, drawn from tidy tables.

Every function takes a plain :class:`pandas.DataFrame` with the columns named in its docstring
(the tables :mod:`neurocast.progress.cohort` and :mod:`neurocast.progress.survival` write, so this
module never imports them) and returns a matplotlib :class:`~matplotlib.figure.Figure` built
with the object API on the Agg backend; save it with :func:`neurocast.report.figures.save_figure`.

Example:
    >>> import pandas as pd
    >>> from neurocast.report.survival_plots import plot_survival_curves
    >>> curves = pd.DataFrame({"group": ["a"] * 3, "time_years": [0, 1, 2],
    ...                        "survival": [1, 0.8, 0.6], "survival_lower": [1, 0.7, 0.5],
    ...                        "survival_upper": [1, 0.9, 0.7]})
    >>> fig = plot_survival_curves(curves, title="demo")
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def plot_survival_curves(
    curves: pd.DataFrame,
    *,
    title: str | None = None,
    group_col: str = "group",
    xlabel: str = "years since baseline",
    ylabel: str = "not yet converted",
    at_risk: bool = True,
) -> Figure:
    """Kaplan–Meier step curves with their confidence bands, one colour per group.

    Args:
        curves: columns ``group``, ``time_years``, ``survival``, ``survival_lower``,
            ``survival_upper`` and optionally ``at_risk`` (the table of
            :func:`neurocast.progress.survival.kaplan_meier`).
        at_risk: print the number at risk at whole years under the axis.
    """
    _need(curves, [group_col, "time_years", "survival", "survival_lower", "survival_upper"])
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.subplots()
    groups = list(dict.fromkeys(curves[group_col].astype(str)))
    tmax = float(curves["time_years"].max()) if len(curves) else 1.0
    risk_lines = []
    for i, g in enumerate(groups):
        c = curves[curves[group_col].astype(str) == g].sort_values("time_years")
        col = _colour(i)
        ax.step(c["time_years"], c["survival"], where="post", color=col, lw=1.8, label=f"{g} (n={_n(c)})")
        ax.fill_between(
            c["time_years"], c["survival_lower"], c["survival_upper"], step="post", color=col, alpha=0.18, lw=0
        )
        if at_risk and "at_risk" in c.columns:
            ticks = np.arange(0, np.floor(tmax) + 1)
            # number at risk just before each whole year: that of the first row at or after it
            counts = []
            for t in ticks:
                after = c[c["time_years"] >= t]
                counts.append(int(after["at_risk"].iloc[0]) if len(after) else 0)
            risk_lines.append((g, col, ticks, counts))
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, max(tmax, 1e-6))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if groups:
        ax.legend(fontsize=8, frameon=False, loc="lower left")
    if risk_lines:
        text = "at risk:  " + "   ".join(
            f"{g}: " + " ".join(str(n) for n in counts) for g, _, _, counts in risk_lines
        )
        fig.text(0.01, 0.005, text + f"  (at years {', '.join(str(int(t)) for t in risk_lines[0][2])})",
                 fontsize=6, va="bottom")
        fig.subplots_adjust(bottom=0.17)
    return fig


def _n(c: pd.DataFrame) -> str:
    return str(int(c["at_risk"].iloc[0])) if "at_risk" in c.columns and len(c) else "?"


def plot_forest(
    table: pd.DataFrame,
    *,
    estimate: str = "hazard_ratio",
    lower: str = "hazard_ratio_lower",
    upper: str = "hazard_ratio_upper",
    label_col: str = "feature",
    group_cols: Sequence[str] = ("feature_set", "model"),
    title: str | None = "Hazard ratios (95 % CI)",
    reference: float = 1.0,
) -> Figure:
    """Forest plot of ratios with intervals on a log axis, one row per (group, feature).

    Args:
        table: columns ``estimate``, ``lower``, ``upper``, ``label_col`` and any of
            ``group_cols`` (e.g. the hazard-ratio table of
            :func:`neurocast.progress.survival.compare_feature_sets`).
    """
    _need(table, [estimate, lower, upper, label_col])
    groups = [g for g in group_cols if g in table.columns]
    t = table.dropna(subset=[estimate]).reset_index(drop=True)
    n = len(t)
    fig = Figure(figsize=(6.5, 0.9 + 0.28 * max(n, 1)), layout="constrained")
    ax = fig.subplots()
    keys = t[groups].astype(str).agg(" / ".join, axis=1) if groups else pd.Series([""] * n)
    uniq = list(dict.fromkeys(keys))
    y = np.arange(n)[::-1]
    for i, row in t.iterrows():
        col = _colour(uniq.index(keys[i]))
        ax.plot([row[lower], row[upper]], [y[i], y[i]], color=col, lw=1.6)
        ax.plot([row[estimate]], [y[i]], "o", color=col, ms=4.5)
    ax.axvline(reference, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    _log_ticks(ax, t[[lower, upper, estimate]].to_numpy(float), reference)
    labels = [f"{row[label_col]}" + (f"  [{keys[i]}]" if groups else "") for i, row in t.iterrows()]
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(estimate.replace("_", " "))
    ax.grid(alpha=0.3, axis="x")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_concordance(table: pd.DataFrame, *, title: str | None = "Concordance (Harrell's C)") -> Figure:
    """Bars of cross-validated concordance (mean ± SD over folds) with the apparent value marked.

    Args:
        table: columns ``feature_set``, ``model``, ``concordance_cv_mean``,
            ``concordance_cv_sd`` and optionally ``concordance_apparent``.
    """
    _need(table, ["feature_set", "model", "concordance_cv_mean", "concordance_cv_sd"])
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    sets = list(dict.fromkeys(table["feature_set"].astype(str)))
    models = list(dict.fromkeys(table["model"].astype(str)))
    width = 0.8 / max(len(models), 1)
    for j, m in enumerate(models):
        sub = table[table["model"].astype(str) == m].set_index(table["feature_set"].astype(str)[table["model"].astype(str) == m])
        x = np.arange(len(sets)) + (j - (len(models) - 1) / 2) * width
        means = [float(sub.loc[s, "concordance_cv_mean"]) if s in sub.index else np.nan for s in sets]
        sds = [float(sub.loc[s, "concordance_cv_sd"]) if s in sub.index else np.nan for s in sets]
        ax.bar(x, means, width * 0.9, yerr=sds, color=_colour(j), alpha=0.8, label=f"{m} (cross-validated)", capsize=3)
        if "concordance_apparent" in sub.columns:
            app = [float(sub.loc[s, "concordance_apparent"]) if s in sub.index else np.nan for s in sets]
            ax.plot(x, app, "k_", ms=12, mew=2, label="apparent" if j == 0 else None)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(sets)))
    ax.set_xticklabels(sets, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("concordance index")
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_group_trajectories(
    summary: pd.DataFrame,
    *,
    regions: Sequence[str] | None = None,
    title: str | None = None,
    origin: bool = True,
    max_regions: int = 6,
) -> Figure:
    """Group-mean trajectories per region with the mean's CI (dark band) and the predictive band
    (light band), one panel per region.

    Args:
        summary: columns ``group``, ``horizon_years``, ``region``, ``mean``, ``mean_lower``,
            ``mean_upper``, ``band_lower``, ``band_upper`` and optionally ``units`` and
            ``variable`` (the table of :func:`neurocast.progress.cohort.group_summary`).
        regions: the panels (default: the first ``max_regions`` regions of the table).
        origin: start each curve at (0, 0) (right for percent change from baseline).
    """
    _need(summary, ["group", "horizon_years", "region", "mean", "mean_lower", "mean_upper", "band_lower", "band_upper"])
    regions = list(regions) if regions is not None else list(dict.fromkeys(summary["region"].astype(str)))[:max_regions]
    n = max(len(regions), 1)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig = Figure(figsize=(3.4 * ncol, 2.8 * nrow + 0.4))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    groups = list(dict.fromkeys(summary["group"].astype(str)))
    units = str(summary["units"].iloc[0]) if "units" in summary.columns and len(summary) else ""
    variable = str(summary["variable"].iloc[0]) if "variable" in summary.columns and len(summary) else "value"
    for k, reg in enumerate(regions):
        ax = axes[k]
        s = summary[summary["region"].astype(str) == reg]
        for i, g in enumerate(groups):
            c = s[s["group"].astype(str) == g].sort_values("horizon_years")
            if c.empty:
                continue
            h = c["horizon_years"].to_numpy(float)
            cols = {k2: c[k2].to_numpy(float) for k2 in ("mean", "mean_lower", "mean_upper", "band_lower", "band_upper")}
            if origin:
                h = np.r_[0.0, h]
                cols = {k2: np.r_[0.0, v] for k2, v in cols.items()}
            col = _colour(i)
            nsub = int(c["n_subjects"].iloc[0]) if "n_subjects" in c.columns else None
            prefix = f"{c['grouping'].iloc[0]} = " if "grouping" in c.columns else ""
            ax.plot(h, cols["mean"], color=col, lw=1.8, label=f"{prefix}{g}" + (f" (n={nsub})" if nsub else ""))
            ax.fill_between(h, cols["mean_lower"], cols["mean_upper"], color=col, alpha=0.3, lw=0)
            ax.fill_between(h, cols["band_lower"], cols["band_upper"], color=col, alpha=0.1, lw=0)
        ax.set_title(reg, fontsize=9)
        ax.set_xlabel("years", fontsize=8)
        ax.set_ylabel(f"{variable.replace('_', ' ')} ({units})" if units else variable, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[len(regions):]:
        ax.set_axis_off()
    if len(regions):
        axes[0].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    _grid_margins(fig, nrow)
    return fig


def plot_forecast_vs_observed(
    comparison: pd.DataFrame,
    *,
    regions: Sequence[str] | None = None,
    title: str | None = "Forecast against measured change",
    max_regions: int = 6,
) -> Figure:
    """Observed against forecast percent change at follow-up visits, one panel per region, with
    the forecast band as vertical bars and the identity line.

    Args:
        comparison: columns ``region``, ``observed_change_percent``, ``forecast_change_percent``
            and optionally ``observed_baseline_mm3``, ``forecast_lower_mm3``,
            ``forecast_upper_mm3`` (the table of :func:`neurocast.progress.cohort.compare_to_observed`).
    """
    _need(comparison, ["region", "observed_change_percent", "forecast_change_percent"])
    regions = list(regions) if regions is not None else list(dict.fromkeys(comparison["region"].astype(str)))[:max_regions]
    n = max(len(regions), 1)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig = Figure(figsize=(3.2 * ncol, 3.0 * nrow + 0.4))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    has_band = {"observed_baseline_mm3", "forecast_lower_mm3", "forecast_upper_mm3"} <= set(comparison.columns)
    for k, reg in enumerate(regions):
        ax = axes[k]
        c = comparison[comparison["region"].astype(str) == reg]
        x = c["observed_change_percent"].to_numpy(float)
        y = c["forecast_change_percent"].to_numpy(float)
        if has_band:
            b = c["observed_baseline_mm3"].to_numpy(float)
            lo = (c["forecast_lower_mm3"].to_numpy(float) / b - 1) * 100
            hi = (c["forecast_upper_mm3"].to_numpy(float) / b - 1) * 100
            ax.vlines(x, lo, hi, color=_colour(0), alpha=0.35, lw=1)
        ax.plot(x, y, "o", color=_colour(0), ms=3)
        finite = np.r_[x, y][np.isfinite(np.r_[x, y])]
        if finite.size:
            lim = (float(finite.min()) - 1, float(finite.max()) + 1)
            ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_title(reg, fontsize=9)
        ax.set_xlabel("observed change (%)", fontsize=8)
        ax.set_ylabel("forecast change (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[len(regions):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    _grid_margins(fig, nrow)
    return fig


def _log_ticks(ax, values: np.ndarray, reference: float) -> None:
    """Readable ticks on a log axis: 1-2-5 steps inside the data range, no minor labels."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    v = values[np.isfinite(values) & (values > 0)]
    lo, hi = (min(v.min(), reference), max(v.max(), reference)) if v.size else (0.5, 2.0)
    cands = [m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5)]
    ticks = [c for c in cands if lo / 1.05 <= c <= hi * 1.05] or [reference]
    if len(ticks) > 8:
        ticks = [c for c in ticks if str(c).lstrip("0.").startswith("1")] or ticks[::2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels([f"{c:g}" for c in ticks], fontsize=7)


def _grid_margins(fig: Figure, nrow: int) -> None:
    """Fixed margins for panel grids (a layout engine costs seconds per figure)."""
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.55 / h, top=1 - 0.75 / h,
                        wspace=0.38, hspace=0.75 / max(h / nrow, 1e-6) * 1.6)


def _need(table: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks the columns {missing}; it has {list(table.columns)}")
