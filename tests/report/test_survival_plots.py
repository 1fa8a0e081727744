"""Survival and trajectory figures draw from tidy tables and save as PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurocast.report.figures import save_figure
from neurocast.report.survival_plots import (
    plot_concordance,
    plot_forecast_vs_observed,
    plot_forest,
    plot_group_trajectories,
    plot_survival_curves,
)


def test_figures_save_as_png(tmp_path):
    curves = pd.DataFrame(
        {
            "group": ["a"] * 3 + ["b"] * 3,
            "time_years": [0, 1, 2] * 2,
            "survival": [1, 0.8, 0.6, 1, 0.9, 0.85],
            "survival_lower": [1, 0.7, 0.5, 1, 0.8, 0.7],
            "survival_upper": [1, 0.9, 0.7, 1, 1.0, 0.95],
            "at_risk": [10, 8, 5, 10, 9, 8],
        }
    )
    hr = pd.DataFrame(
        {
            "feature_set": ["base"] * 2,
            "model": ["cox"] * 2,
            "feature": ["age", "apoe4"],
            "hazard_ratio": [1.02, 1.8],
            "hazard_ratio_lower": [0.99, 1.2],
            "hazard_ratio_upper": [1.05, 2.7],
        }
    )
    conc = pd.DataFrame(
        {
            "feature_set": ["base", "full"],
            "model": ["cox", "cox"],
            "concordance_cv_mean": [0.6, 0.7],
            "concordance_cv_sd": [0.05, 0.04],
            "concordance_apparent": [0.62, 0.73],
        }
    )
    summ = pd.DataFrame(
        {
            "grouping": "diagnosis",
            "group": ["CN", "CN", "AD", "AD"],
            "horizon_years": [1.0, 2.0] * 2,
            "region": "hippocampus",
            "mean": [-1, -2, -4, -8],
            "mean_lower": [-1.2, -2.3, -4.5, -9],
            "mean_upper": [-0.8, -1.7, -3.5, -7],
            "band_lower": [-2, -4, -6, -12],
            "band_upper": [0, 0, -2, -4],
            "units": "percent",
            "variable": "change_percent",
            "n_subjects": 5,
        }
    )
    comp = pd.DataFrame(
        {
            "region": ["hippocampus"] * 3,
            "observed_change_percent": [-1.0, -2.0, -3.0],
            "forecast_change_percent": [-1.2, -1.9, -3.5],
            "observed_baseline_mm3": [3000.0] * 3,
            "forecast_lower_mm3": [2940.0, 2920.0, 2870.0],
            "forecast_upper_mm3": [2990.0, 2960.0, 2930.0],
        }
    )
    figs = {
        "km": plot_survival_curves(curves, title="t"),
        "forest": plot_forest(hr),
        "conc": plot_concordance(conc),
        "traj": plot_group_trajectories(summ),
        "comp": plot_forecast_vs_observed(comp),
    }
    for name, fig in figs.items():
        path = save_figure(fig, tmp_path / f"{name}.png")
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    labels = [t.get_text() for t in figs["traj"].axes[0].get_legend().get_texts()]
    assert labels == ["diagnosis = CN (n=5)", "diagnosis = AD (n=5)"]
    ticks = [float(t) for t in figs["forest"].axes[0].get_xticks()]
    assert 1.0 in ticks and np.all(np.array(ticks) > 0)
    with pytest.raises(ValueError, match="lacks the columns"):
        plot_survival_curves(curves.drop(columns="survival"))
