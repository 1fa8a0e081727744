"""Survival models of time to conversion: known hazard ratio, concordance, PH check, Kaplan–Meier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurocast.progress.survival import (
    ConversionModel,
    compare_feature_sets,
    cross_validated_concordance,
    kaplan_meier,
    simulate_survival_table,
    stratified_folds,
)

TRUE_HR = 2.0


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    # exponential times, HR 2.0 for carriers, uniform censoring; n = 500, fixed seed
    return simulate_survival_table(500, hazard_ratio=TRUE_HR, age_log_hr_per_year=0.03, seed=0)


@pytest.mark.parametrize("kind", ["cox", "weibull_aft"])
def test_known_hazard_ratio_is_recovered(table, kind):
    m = ConversionModel(kind).fit(table, ["carrier", "age", "sex"])
    assert m.fit(table, ["carrier", "age", "sex"]) is m
    hr = m.hazard_ratios_.set_index("feature")
    assert list(hr.index) == ["carrier", "age", "sex_M"]
    c = hr.loc["carrier"]
    assert c.hazard_ratio_lower < TRUE_HR < c.hazard_ratio_upper
    assert 1.5 < c.hazard_ratio < 2.7
    assert c.hazard_ratio_lower < c.hazard_ratio < c.hazard_ratio_upper
    assert hr.loc["sex_M"].hazard_ratio_lower < 1 < hr.loc["sex_M"].hazard_ratio_upper  # no sex effect
    assert m.n_subjects_ == 500 and m.n_events_ == int(table["event"].sum()) and m.n_dropped_ == 0
    assert 0.55 < m.concordance_ < 0.8
    if kind == "weibull_aft":  # exponential data: shape ~ 1; HR = exp(-coef * rho)
        rho = float(np.exp(m.model_.params_.loc[("rho_", "Intercept")]))
        assert 0.85 < rho < 1.15
        assert c.time_ratio < 1 and c.time_ratio_lower < c.time_ratio < c.time_ratio_upper
    else:
        assert np.isnan(c.time_ratio)


def test_cox_and_weibull_agree_on_exponential_data(table):
    cox = ConversionModel("cox").fit(table, ["carrier"]).hazard_ratios_.hazard_ratio.iloc[0]
    wei = ConversionModel("weibull_aft").fit(table, ["carrier"]).hazard_ratios_.hazard_ratio.iloc[0]
    assert cox == pytest.approx(wei, rel=0.05)


def test_cross_validated_concordance(table):
    cv = cross_validated_concordance(table, ["carrier", "age"], k=5, seed=3)
    assert len(cv.scores) == 5 and all(0.5 < s < 0.8 for s in cv.scores)
    assert cv.n_subjects == 500 and cv.std > 0
    again = ConversionModel("cox").cross_validated_concordance(table, ["carrier", "age"], k=5, seed=3)
    assert again.scores == cv.scores  # same seed, same folds, same scores
    assert list(cv.to_frame().columns) == ["model", "fold", "concordance"]
    null = cross_validated_concordance(table.assign(noise=np.random.default_rng(0).normal(size=500)), ["noise"], k=5)
    assert null.mean < cv.mean
    with pytest.raises(ValueError):
        cross_validated_concordance(table, ["carrier"], k=1)


def test_stratified_folds_spread_events():
    ev = np.array([1] * 10 + [0] * 40)
    f = stratified_folds(ev, 5, seed=0)
    assert all((ev[f == k] == 1).sum() == 2 for k in range(5))
    assert all((f == k).sum() == 10 for k in range(5))


def test_proportional_hazards_check(table):
    for kind in ("cox", "weibull_aft"):
        ph = ConversionModel(kind).fit(table, ["carrier", "age"]).check_proportional_hazards()
        assert list(ph.columns) == ["model", "feature", "time_transform", "test_statistic", "p", "violated"]
        assert sorted(ph["feature"]) == ["age", "carrier"]
        assert ph["p"].between(0, 1).all()
    # a hazard ratio that reverses over time violates the assumption
    rng = np.random.default_rng(1)
    n = 600
    x = rng.integers(0, 2, n)
    early = rng.exponential(1 / np.where(x == 1, 1.0, 0.1))
    t = np.where(x == 1, np.where(early < 1, early, 1 + rng.exponential(1 / 0.05, n)), early)
    bad = pd.DataFrame({"duration_years": np.minimum(t, 8.0), "event": (t < 8).astype(int), "x": x})
    ph = ConversionModel("cox").fit(bad, ["x"]).check_proportional_hazards(["rank", "km"])
    assert set(ph["time_transform"]) == {"rank", "km"} and ph["violated"].all()


def test_encoding_missing_rows_and_constant_columns(table):
    t = table.copy()
    t.loc[:9, "age"] = np.nan
    m = ConversionModel("cox").fit(t, ["carrier", "age", "diagnosis"])  # diagnosis is constant
    assert m.n_dropped_ == 10 and m.n_subjects_ == 490
    assert m.dropped_constant_ == [] and "diagnosis" not in m.design_columns_  # one level: no column
    risk = m.predict_risk(t)
    assert risk[:10].isna().all() and risk[10:].notna().all()
    surv = m.predict_survival(t.iloc[10:13], [1.0, 3.0])
    assert surv.shape == (2, 3) and (surv.values[1] <= surv.values[0]).all()
    with pytest.raises(ValueError):
        ConversionModel("cox").fit(t, ["nope"])
    with pytest.raises(ValueError):
        ConversionModel("lognormal")
    with pytest.raises(RuntimeError):
        ConversionModel().predict_risk(t)


def test_kaplan_meier_by_group(table):
    km = kaplan_meier(table, "carrier")
    assert set(km.fitters) == {"0", "1"}
    c = km.curves
    assert list(c.columns[:3]) == ["grouping", "group", "time_years"]
    for g, cg in c.groupby("group"):
        s = cg.sort_values("time_years")["survival"].to_numpy()
        assert s[0] == 1.0 and np.all(np.diff(s) <= 1e-12)
        assert (cg["survival_lower"] <= cg["survival"] + 1e-12).all() and (cg["survival"] <= cg["survival_upper"] + 1e-12).all()
        np.testing.assert_allclose(s, km.fitters[g].survival_function_.iloc[:, 0].to_numpy())
    summ = km.summary.set_index("group")
    assert summ.loc["1", "survival_2y"] < summ.loc["0", "survival_2y"]  # carriers convert sooner
    assert summ["n"].sum() == 500 and km.logrank["p"] < 0.01
    one = kaplan_meier(table)
    assert set(one.fitters) == {"all"} and one.logrank is None


def test_compare_feature_sets(table):
    t = table.copy()
    t.loc[:4, "carrier"] = np.nan  # complete cases for the union of features: the same rows
    conc, hrs, models = compare_feature_sets(t, {"base": ["age"], "full": ["age", "carrier"]}, kinds=["cox"], k=3)
    assert list(conc["feature_set"]) == ["base", "full"] and (conc["n_subjects"] == 495).all()
    full = conc.set_index("feature_set").loc["full"]
    assert full.concordance_cv_mean > conc.set_index("feature_set").loc["base"].concordance_cv_mean
    assert set(hrs["feature_set"]) == {"base", "full"} and ("full", "cox") in models


def test_interval_coverage_over_replicates():
    # the fixed-seed check above is not a lucky draw: over 40 replicates the 95 % interval of
    # the Cox HR covers the truth about 95 % of the time (200 replicates: 94 %, mean HR 2.04)
    covered = []
    for seed in range(100, 140):
        t = simulate_survival_table(300, hazard_ratio=TRUE_HR, seed=seed)
        hr = ConversionModel("cox").fit(t, ["carrier"]).hazard_ratios_.iloc[0]
        covered.append(hr.hazard_ratio_lower < TRUE_HR < hr.hazard_ratio_upper)
    assert sum(covered) >= 34  # P(fewer | 95 % coverage) < 3 %


def test_a_separating_feature_gives_infinite_bounds_not_a_crash():
    # every event has the feature, no censored subject has it: the Cox fit diverges (found by the
    # cohort benchmark on a 16-subject fold: math.exp overflowed)
    n = 12
    t = pd.DataFrame({"duration_years": np.linspace(1, 5, n), "event": [True, False] * (n // 2),
                      "marker": [50.0, 0.0] * (n // 2), "decades": np.linspace(0.6, 0.8, n)})  # fmt: skip
    m = ConversionModel("cox").fit(t, ["marker", "decades"])
    hr = m.hazard_ratios_.set_index("feature")
    assert hr.loc["decades", "hazard_ratio_upper"] == np.inf  # exp(coef + 1.96 se) > 1e308
    assert np.isfinite(hr.loc["marker", "hazard_ratio"])
