"""Cohort arrays: construction (dims, coords, units), netCDF round trip, tidy tables, summaries,
observed trajectories, ventricles as % ICV, forecast against observation, the group reports."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from neurocast.io.tables import read_table, validate_frame
from neurocast.progress import cohort as C
from neurocast.progress.cohort import (
    compare_to_observed,
    forecast_features,
    gather_forecasts,
    group_summary,
    load_cohort,
    observed_to_tidy,
    observed_trajectories,
    save_cohort,
    synthetic_forecast,
    to_tidy,
    ventricle_percent_icv,
)


def cohort_inputs(n: int = 6, **kw) -> list[xr.Dataset]:
    return [
        synthetic_forecast(
            f"sub-{i:02d}", diagnosis=["CN", "MCI", "AD"][i % 3], sex="FM"[i % 2],
            apoe4=None if i == 4 else i % 3, mmse=None if i == 5 else 28.0 - i, age=70.0 + i, seed=i, **kw,
        )
        for i in reversed(range(n))
    ]


def as_tsv_frame(table: pd.DataFrame) -> pd.DataFrame:
    text = table.to_csv(sep="\t", index=False, na_rep="n/a")
    return pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)


def test_gather_dims_coords_units():
    dss = cohort_inputs()
    ds = gather_forecasts(dss, provenance={"run": "test"})
    assert ds["volume"].dims == ("subject", "horizon", "region", "sample")
    assert ds["baseline_volume"].dims == ("subject", "region")
    assert dict(ds.sizes) == {"subject": 6, "horizon": 3, "region": 6, "sample": 8}
    assert list(ds["subject"].values) == [f"sub-{i:02d}" for i in range(6)]  # sorted
    assert list(ds["horizon"].values) == [1.0, 2.0, 5.0] and ds["horizon"].attrs["units"] == "years"
    assert list(ds["region"].values) == list(C.SYNTHETIC_REGIONS)
    assert ds.attrs["units"] == "mm3" and ds.attrs["stochastic_dim"] == "sample"
    assert ds["volume"].attrs["units"] == "mm3" and ds["baseline_volume"].attrs["units"] == "mm3"
    for c in C.COVARIATES:
        assert ds.coords[c].dims == ("subject",)
    assert list(ds["diagnosis"].values) == ["CN", "MCI", "AD", "CN", "MCI", "AD"]
    assert list(ds["sex"].values) == ["F", "M", "F", "M", "F", "M"]
    assert ds["age"].attrs["units"] == "years" and list(ds["age"].values) == [70.0 + i for i in range(6)]
    assert math.isnan(ds["apoe4"].values[4]) and ds["apoe4"].values[2] == 2.0
    assert math.isnan(ds["mmse"].values[5])
    # values land in the right place
    src = next(d for d in dss if d.coords["participant_id"].item() == "sub-03")
    np.testing.assert_array_equal(ds["volume"].sel(subject="sub-03").values, src["volume"].values)
    prov = json.loads(ds.attrs["provenance"])
    assert prov["run"] == "test" and prov["inputs"]["sub-03"]["seed"] == 3
    assert prov["GeneratedBy"]["Name"] == "neurocast"


def test_gather_contract_errors():
    good = synthetic_forecast("sub-01")
    with pytest.raises(ValueError, match="twice"):
        gather_forecasts([good, good])
    with pytest.raises(ValueError, match="participant_id"):
        gather_forecasts([good.drop_vars("participant_id")])
    with pytest.raises(ValueError, match="horizons"):
        gather_forecasts([good, synthetic_forecast("sub-02", horizons=(1.0, 3.0))])
    with pytest.raises(ValueError, match="units"):
        gather_forecasts([good.assign_attrs(units="ml")])
    q = good.rename(sample="quantile").assign_coords(quantile=np.linspace(0.05, 0.95, 8))
    with pytest.raises(ValueError, match="mix"):
        gather_forecasts([good, q.assign_coords(participant_id="sub-02")])
    # outer join: the union of horizons, NaN where missing
    ds = gather_forecasts([good, synthetic_forecast("sub-02", horizons=(1.0, 3.0))], join="outer")
    assert list(ds["horizon"].values) == [1.0, 2.0, 3.0, 5.0]
    assert np.isnan(ds["volume"].sel(subject="sub-02", horizon=2.0)).all()
    # region order may differ between subjects
    perm = synthetic_forecast("sub-03").isel(region=[5, 4, 3, 2, 1, 0])
    ds = gather_forecasts([good, perm])
    np.testing.assert_array_equal(
        ds["volume"].sel(subject="sub-03", region="cortex").values,
        perm["volume"].sel(region="cortex").values,
    )


@pytest.mark.parametrize("variant", ["sample64", "sample32", "quantile"])
def test_netcdf_round_trip_identical(tmp_path, variant):
    if variant == "quantile":
        dss = [
            d.rename(sample="quantile").assign_coords(quantile=np.linspace(0.05, 0.95, 8))
            for d in cohort_inputs(4)
        ]
    else:
        dss = cohort_inputs(4, dtype=np.float32 if variant == "sample32" else np.float64)
    ds = gather_forecasts(dss)
    path = save_cohort(ds, tmp_path / "cohort.nc")
    back = load_cohort(path)
    xr.testing.assert_identical(ds, back)
    assert back["volume"].dtype == ds["volume"].dtype
    assert list(back["sex"].values) == list(ds["sex"].values)  # text survives
    assert back["diagnosis"].attrs["categories"] == "CN MCI AD"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_save_rejects_unstorable(tmp_path):
    ds = gather_forecasts(cohort_inputs(2))
    with pytest.raises(ValueError, match="attribute"):
        save_cohort(ds.assign_attrs(flag=True), tmp_path / "x.nc")
    bad = ds.assign_coords(sex=("subject", np.array(["F", None], dtype=object)))
    with pytest.raises(ValueError, match="None"):
        save_cohort(bad, tmp_path / "x.nc")


def test_to_tidy_and_schema():
    ds = gather_forecasts(cohort_inputs())
    t = to_tidy(ds)
    assert list(t.columns) == list(C.TIDY_COLUMNS)
    assert len(t) == 6 * 3 * 6
    r = t[(t.participant_id == "sub-02") & (t.horizon_years == 2.0) & (t.region == "hippocampus_left")].iloc[0]
    v = ds["volume"].sel(subject="sub-02", horizon=2.0, region="hippocampus_left").values
    b = float(ds["baseline_volume"].sel(subject="sub-02", region="hippocampus_left"))
    assert r.volume_mean_mm3 == pytest.approx(v.mean()) and r.volume_sd_mm3 == pytest.approx(v.std(ddof=1))
    assert r.volume_q95_mm3 == pytest.approx(np.quantile(v, 0.95))
    assert r.change_percent_mean == pytest.approx((v / b - 1).mean() * 100)
    assert r.diagnosis == "AD" and r.apoe4 == 2 and r.n_samples == 8
    assert t[t.participant_id == "sub-04"]["apoe4"].isna().all()
    validate_frame(as_tsv_frame(t), "cohort_forecasts")
    q = gather_forecasts([d.rename(sample="quantile").assign_coords(quantile=[0.05, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.95]) for d in cohort_inputs(2)])
    tq = to_tidy(q)
    assert tq["volume_mean_mm3"].isna().all() and tq["n_samples"].isna().all()
    np.testing.assert_allclose(tq["volume_q50_mm3"], q["volume"].sel(quantile=0.5).transpose("subject", "horizon", "region").values.ravel())
    validate_frame(as_tsv_frame(tq), "cohort_forecasts")


def test_group_summary_bands():
    ds = gather_forecasts(cohort_inputs(9))
    s = group_summary(ds, by=("diagnosis",))
    assert list(s["group"].unique()) == ["CN", "MCI", "AD"]
    assert (s["n_subjects"] == 3).all() and len(s) == 3 * 3 * 6
    r = s[(s.group == "AD") & (s.horizon_years == 2.0) & (s.region == "hippocampus_left")].iloc[0]
    sub = ds.sel(subject=ds["diagnosis"] == "AD", horizon=2.0, region="hippocampus_left")
    chg = (sub["volume"] / sub["baseline_volume"] - 1) * 100
    assert r["mean"] == pytest.approx(float(chg.mean("sample").mean()))
    assert r.band_lower == pytest.approx(np.quantile(chg.values, 0.05))
    assert r.mean_lower < r["mean"] < r.mean_upper and r.band_lower < r.band_median < r.band_upper
    hip = s[(s.region == "hippocampus_left") & (s.horizon_years == 5.0)].set_index("group")["mean"]
    assert hip["AD"] < hip["MCI"] < hip["CN"] < 0  # faster atrophy with disease
    two = group_summary(ds, by=("diagnosis", "apoe4"), variable="volume")
    assert two["grouping"].iloc[0] == "diagnosis+apoe4" and (two["units"] == "mm3").all()
    assert "MCI, n/a" in set(two["group"])  # sub-04: apoe4 missing forms its own group
    for table in (s, two):
        validate_frame(as_tsv_frame(table), "cohort_summary")
    with pytest.raises(ValueError):
        group_summary(ds, by=("height",))


def observed_table() -> pd.DataFrame:
    rows = []
    vols = {
        "hippocampus_left": [3000.0, 2900.0, 2800.0],
        "Left-Lateral-Ventricle": [10000.0, 10500.0, 11000.0],
        "Right-Lateral-Ventricle": [9000.0, 9500.0, None],
        "3rd-Ventricle": [1000.0, 1000.0, 1000.0],
        "EstimatedTotalIntraCranialVol": [1.5e6, 1.5e6, 1.5e6],
    }
    for pid, times in (("sub-01", [0.0, 1.0, 2.0]), ("sub-02", [0.0, 1.2])):
        for k, t in enumerate(times):
            for reg, v in vols.items():
                if v[k] is not None:
                    rows.append({"participant_id": pid, "session_id": f"ses-{['bl', 'm12', 'm24'][k]}",
                                 "time_years": t, "region": reg, "volume_mm3": v[k]})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def test_observed_trajectories_and_icv():
    parts = pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "age": [71.0, 68.0], "sex": ["F", None],
                          "diagnosis": ["MCI", "CN"], "apoe4": [1, 0], "mmse": [27.0, 29.0]})
    obs = observed_trajectories(observed_table(), parts)
    assert obs["volume"].dims == ("subject", "visit", "region")
    assert dict(obs.sizes) == {"subject": 2, "visit": 3, "region": 5}
    assert list(obs["session_id"].sel(subject="sub-02").values) == ["ses-bl", "ses-m12", "n/a"]
    assert np.isnan(obs["time_years"].sel(subject="sub-02", visit=2))
    assert list(obs["sex"].values) == ["F", "n/a"] and obs["volume"].attrs["units"] == "mm3"
    assert obs.attrs["ventricle_regions"] == "Left-Lateral-Ventricle Right-Lateral-Ventricle"  # not the 3rd
    assert obs.attrs["icv_region"] == "EstimatedTotalIntraCranialVol"
    pct = obs["ventricles_percent_icv"].sel(subject="sub-01").values
    assert pct[0] == pytest.approx(19000 / 1.5e6 * 100) and pct[1] == pytest.approx(20000 / 1.5e6 * 100)
    assert np.isnan(pct[2])  # right ventricle missing at m24
    assert obs["ventricles_percent_icv"].attrs["units"] == "percent"
    t = observed_to_tidy(obs)
    assert len(t) == (3 + 2) * 6  # 5 regions + the derived ventricle total, padding dropped
    v = t[(t.region == C.VENTRICLES_ROW) & (t.session_id == "ses-m12") & (t.participant_id == "sub-01")].iloc[0]
    assert v.volume_mm3 == 20000 and v.change_percent == pytest.approx(20000 / 19000 * 100 - 100)
    assert v.percent_icv == pytest.approx(20000 / 1.5e6 * 100) and v.age == 71.0
    validate_frame(as_tsv_frame(t), "cohort_observed")
    # times from ages when time_years is absent
    ages = observed_table().drop(columns="time_years").assign(age=lambda d: 70 + d["session_id"].map({"ses-bl": 0.0, "ses-m12": 1.0, "ses-m24": 2.0}))
    obs2 = observed_trajectories(ages)
    assert list(obs2["time_years"].sel(subject="sub-01").values) == [0.0, 1.0, 2.0]
    assert obs2["age"].sel(subject="sub-01").item() == 70.0
    with pytest.raises(ValueError, match="twice"):
        observed_trajectories(pd.concat([observed_table(), observed_table().iloc[:1]]))


def test_observed_round_trip(tmp_path):
    obs = observed_trajectories(observed_table())
    xr.testing.assert_identical(obs, load_cohort(save_cohort(obs, tmp_path / "obs.nc")))


def test_region_matching():
    names = ["Left-Lateral-Ventricle", "Left-Inf-Lat-Vent", "4th-Ventricle", "lateral_ventricle_right",
             "hippocampus_left", "ICV", "intracranial_volume"]
    assert C.ventricle_regions(names) == ["Left-Lateral-Ventricle", "Left-Inf-Lat-Vent", "lateral_ventricle_right"]
    assert C.ventricle_regions(["ventricles", "4th ventricle"]) == ["ventricles"]
    assert C.icv_region(names) == "ICV"
    assert C.icv_region(["cortex"]) is None
    # the default atlas lists hemispheres and bilateral composites: never count a volume twice
    atlas = ["3rd-Ventricle", "Right-Hippocampus", "Left-Hippocampus", "Right-Inf-Lat-Vent", "Left-Inf-Lat-Vent",
             "Right-Lateral-Ventricle", "Left-Lateral-Ventricle", "Hippocampus", "Lateral-Ventricles",
             "Ventricles", "CSF", "Intracranial"]
    assert C.select_regions(atlas, C.HIPPOCAMPUS_PATTERN) == ["Right-Hippocampus", "Left-Hippocampus"]
    assert C.ventricle_regions(atlas) == ["Right-Inf-Lat-Vent", "Left-Inf-Lat-Vent", "Right-Lateral-Ventricle",
                                          "Left-Lateral-Ventricle"]
    assert C.icv_region(atlas) == "Intracranial"
    assert C.select_regions(["Hippocampus", "cortex"], C.HIPPOCAMPUS_PATTERN) == ["Hippocampus"]


def deterministic_forecast(pid: str, rate_percent: float) -> xr.Dataset:
    h = np.array([1.0, 2.0, 3.0])
    regions = ["hippocampus_left", "hippocampus_right", "lateral_ventricle_left", "intracranial"]
    base = np.array([3000.0, 3200.0, 12000.0, 1.4e6])
    rates = np.array([-rate_percent, -rate_percent, 2 * rate_percent, 0.0]) / 100
    spread = np.array([0.99, 1.0, 1.01])
    vol = base[None, :, None] * (1 + rates[None, :, None] * h[:, None, None]) * spread[None, None, :]
    return xr.Dataset(
        {"volume": (("horizon", "region", "sample"), vol), "baseline_volume": (("region",), base)},
        coords={"horizon": h, "region": regions, "sample": [0, 1, 2], "participant_id": pid},
        attrs={"units": "mm3", "diagnosis": "MCI"},
    )


def test_forecast_features_and_icv_percent():
    ds = gather_forecasts([deterministic_forecast("sub-1", 2.0), deterministic_forecast("sub-2", 4.0)])
    f = forecast_features(ds, horizon=2.0)
    assert list(f.columns) == ["participant_id", "pred_hippocampus_atrophy_2y", "pred_ventricle_expansion_2y"]
    np.testing.assert_allclose(f["pred_hippocampus_atrophy_2y"], [4.0, 8.0])  # mean over samples = 1.0 factor
    np.testing.assert_allclose(f["pred_ventricle_expansion_2y"], [8.0, 16.0])
    f15 = forecast_features(ds, horizon=0.5)  # interpolated from (0, ratio 1)
    np.testing.assert_allclose(f15["pred_hippocampus_atrophy_0p5y"], [1.0, 2.0])
    with pytest.raises(ValueError):
        forecast_features(ds, horizon=4.0)
    pct = ventricle_percent_icv(ds).sel(sample=1, horizon=1.0)
    np.testing.assert_allclose(pct.values, [12000 * 1.04 / 1.4e6 * 100, 12000 * 1.08 / 1.4e6 * 100])


def test_compare_to_observed():
    ds = gather_forecasts([deterministic_forecast("sub-1", 2.0)])
    rows = []
    for k, t in enumerate([0.0, 1.5, 4.0]):  # 4.0 is beyond the last horizon: left out
        for reg, b, r in (("hippocampus_left", 2900.0, -0.02), ("lateral_ventricle_left", 11000.0, 0.05)):
            rows.append({"participant_id": "sub-1", "session_id": f"ses-v{k}", "time_years": t,
                         "region": reg, "volume_mm3": b * (1 + r * t)})
    obs = observed_trajectories(pd.DataFrame(rows))
    comp = compare_to_observed(ds, obs)
    assert list(comp.columns) == list(C.COMPARISON_COLUMNS) and len(comp) == 2
    hip = comp.set_index("region").loc["hippocampus_left"]
    assert hip.forecast_mean_mm3 == pytest.approx(2900 * (1 - 0.03))  # observed baseline x forecast ratio
    assert hip.error_percent == pytest.approx(0.0, abs=1e-9) and bool(hip.within_band)
    ven = comp.set_index("region").loc["lateral_ventricle_left"]
    assert ven.forecast_change_percent == pytest.approx(6.0) and ven.observed_change_percent == pytest.approx(7.5)
    assert ven.error_percent == pytest.approx(-1.5) and not bool(ven.within_band)
    validate_frame(as_tsv_frame(comp), "cohort_comparison")


def test_cohort_report_and_survival_analysis(tmp_path):
    from neurocast.progress.analysis import cohort_report, survival_analysis, synthetic_cohort

    dss, events = synthetic_cohort(60, seed=2)
    out = tmp_path / "out"
    rows = []
    for d in dss[:10]:
        pid = str(d.coords["participant_id"].item())
        for t, ses in ((0.0, "bl"), (1.0, "m12")):
            for reg in d["region"].values:
                v = float(d["baseline_volume"].sel(region=reg)) if t == 0 else float(d["volume"].sel(region=reg, horizon=1.0).mean())
                rows.append({"participant_id": pid, "session_id": f"ses-{ses}", "time_years": t, "region": str(reg), "volume_mm3": v})
    rep = cohort_report(out, forecasts=dss, observed=pd.DataFrame(rows))
    cdir = out / "group" / "cohort"
    for name, schema in (("cohort_forecasts", "cohort_forecasts"), ("cohort_summary", "cohort_summary"),
                         ("cohort_observed", "cohort_observed"), ("cohort_comparison", "cohort_comparison")):
        read_table(cdir / f"{name}.tsv", schema)
        assert (cdir / f"{name}_provenance.json").is_file()
    xr.testing.assert_identical(load_cohort(cdir / "cohort_forecasts.nc"), rep.forecasts)
    assert (cdir / "cohort_forecasts_provenance.json").is_file()
    for png in ("cohort_trajectories_diagnosis.png", "cohort_trajectories_sex.png", "cohort_comparison.png"):
        assert (cdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<section id='cohort'" in (cdir / "cohort_section.html").read_text()
    comp = read_table(cdir / "cohort_comparison.tsv", "cohort_comparison")
    assert comp["error_percent"].abs().max() < 1e-6  # observed = forecast mean at 1 year

    ev_path = tmp_path / "events.tsv"
    events.to_csv(ev_path, sep="\t", index=False, na_rep="n/a")
    s = survival_analysis(out, events_table=ev_path, k=3, kinds=("cox",))  # cohort file found in out
    sdir = out / "group" / "survival"
    assert set(s.concordance["feature_set"]) == {"baseline", "baseline+forecast"}
    assert "pred_hippocampus_atrophy_2y" in set(s.hazard_ratios["feature"])
    for name, schema in (("survival_events", "conversion_events"), ("survival_excluded", "survival_excluded"),
                         ("survival_kaplan_meier", "survival_kaplan_meier"),
                         ("survival_kaplan_meier_summary", "survival_kaplan_meier_summary"),
                         ("survival_hazard_ratios", "survival_hazard_ratios"),
                         ("survival_concordance", "survival_concordance"), ("survival_ph_test", "survival_ph_test")):
        read_table(sdir / f"{name}.tsv", schema)
    for png in ("survival_km_all.png", "survival_km_apoe4.png", "survival_forest.png", "survival_concordance.png"):
        assert (sdir / png).read_bytes()[:4] == b"\x89PNG"
    assert "Proportional-hazards check" in (sdir / "survival_section.html").read_text()
