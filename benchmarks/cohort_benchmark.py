"""Issue 8's figures: the forecaster on a whole simulated cohort, ventricles (% ICV) and conversion.

A cohort simulated with a seed never used in training (``--cohort``) is forecast with a trained
model (``--model``) from a *landmark* visit: each subject's second visit, with the change observed
since the first as history (what a clinic has after one follow-up). Against the simulation's truth:

1. **Ventricles (% ICV) at every later visit**: forecast = the landmark's %ICV x the forecast
   ventricle volume ratio (mean over samples). Baselines in the same run: a per-diagnosis linear
   trend of %ICV per year fitted on the training cohort's truth (``--train``; TADPOLE's
   "constant-rate" benchmark) applied from the landmark, and no change.
2. **Time to MCI -> AD conversion from the landmark** (subjects MCI at the landmark; events and
   censoring from the visits' diagnoses with :func:`neurocast.progress.events.events_from_visits`):
   5-fold cross-validated C-index of Cox with the landmark covariates (age, sex, APOE4, MMSE)
   against the same plus the forecast features (2-year hippocampal atrophy and ventricle
   expansion, :func:`neurocast.progress.cohort.forecast_features`).
3. The netCDF round trip of the gathered cohort (exact), and the time to gather and fit.

    neurocast simulate train_s1000 --n-subjects 90 --seed 1000 --visits 3 5
    neurocast simulate cohort_s4000 --n-subjects 200 --seed 4000 --visits 3 5 \\
        --proportions CN=0.2,MCI=0.7,AD=0.1
    python benchmarks/cohort_benchmark.py --model src/neurocast/weights/progress-demo \\
        --train train_s1000 --cohort cohort_s4000 --out benchmarks/cohort_results.json

The cohort is synthetic: these numbers are on simulated data, not on ADNI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import pandas as pd
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from forecast_benchmark import truth_file

VENTRICLES = "Lateral-Ventricles"
ICV = "Intracranial"


def truth_tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    truth = root / "derivatives" / "neurocast-truth"
    visits = pd.read_csv(truth / "visits.tsv", sep="\t")
    subjects = pd.read_csv(truth / "subjects.tsv", sep="\t")
    rv = pd.read_csv(truth / "regional_volumes.tsv", sep="\t")
    return visits, subjects, rv


def percent_icv(rv: pd.DataFrame) -> pd.Series:
    """Truth lateral ventricles as % of intracranial volume, per (participant, session)."""
    v = rv[rv.region == VENTRICLES].set_index(["participant_id", "session_id"]).volume_mm3
    icv = rv[rv.region == ICV].set_index(["participant_id", "session_id"]).volume_mm3
    return (v / icv * 100.0).rename("pct_icv")


def linear_trend(train_root: Path) -> pd.Series:
    """Per baseline diagnosis: least-squares slope of %ICV change per year (through the origin)."""
    visits, subjects, rv = truth_tables(train_root)
    pct = percent_icv(rv).reset_index().merge(visits[["participant_id", "session_id", "time_years"]])
    pct = pct.merge(subjects[["participant_id", "diagnosis"]])
    base = pct[pct.time_years == 0].set_index("participant_id").pct_icv
    pct["delta"] = pct.pct_icv - pct.participant_id.map(base)
    later = pct[pct.time_years > 0]
    return later.groupby("diagnosis").apply(
        lambda d: float((d.delta * d.time_years).sum() / (d.time_years**2).sum()), include_groups=False
    )


def landmark_events(visits: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame:
    """MCI -> AD events counted from each subject's second visit (the landmark)."""
    from neurocast.progress.events import events_from_visits

    subj = subjects.set_index("participant_id")
    parts, covs = [], []
    for pid, g in visits.groupby("participant_id"):
        g = g.sort_values("time_years")
        if len(g) < 2:
            continue
        lm = g.iloc[1]
        after = g[g.time_years >= lm.time_years - 1e-9].copy()
        after["time_years"] = after.time_years - lm.time_years
        parts.append(after[["participant_id", "time_years", "diagnosis"]])
        covs.append({"participant_id": pid, "age": float(lm.age), "sex": subj.loc[pid, "sex"],
                     "diagnosis": lm.diagnosis, "apoe4": int(subj.loc[pid, "apoe4"]), "mmse": float(lm.mmse)})  # fmt: skip
    return events_from_visits(pd.concat(parts), pd.DataFrame(covs), "MCI->AD")


def oracle(cohort: Path) -> dict:
    """The ceiling: concordance of the simulation's own hazard linear predictor (and of the subject
    rate effect) with the landmark events, no fitting and no cross-validation."""
    from lifelines.utils import concordance_index

    visits, subjects, _ = truth_tables(cohort)
    ev = landmark_events(visits, subjects)
    s = subjects.set_index("participant_id").loc[ev.participant_id]
    out = {"n_at_risk": len(ev), "n_events": int(ev.event.sum())}
    for col in ("hazard_linear_predictor", "subject_rate_effect"):
        out[f"concordance_true_{col}"] = float(concordance_index(ev.duration_years, -s[col].astype(float).to_numpy(), ev.event))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped demo model)")
    ap.add_argument("--train", required=True, type=Path, help="the training cohort (linear-trend baseline)")
    ap.add_argument("--cohort", required=True, type=Path, help="a cohort simulated with another seed")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--feature-horizon", type=float, default=2.0)
    ap.add_argument("--max-subjects", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/cohort_results.json"))
    ap.add_argument("--oracle-only", action="store_true",
                    help="only add the ceiling (the simulation's own hazard) to an existing --out file")
    args = ap.parse_args()
    if args.oracle_only:
        result = json.loads(args.out.read_text())
        result["oracle"] = oracle(args.cohort)
        args.out.write_text(json.dumps(result, indent=2, default=float))
        print(json.dumps(result["oracle"], indent=2))
        return
    torch.set_num_threads(args.threads)

    from neurocast.progress.cohort import (
        forecast_features,
        gather_forecasts,
        load_cohort,
        save_cohort,
    )
    from neurocast.progress.forecast import ForecastSubject, forecast, load_model
    from neurocast.progress.survival import compare_feature_sets
    from neurocast.registration.atlas import load_atlas
    from neurocast.registration.template import working_grid
    from neurocast.registration.transforms import read_velocity

    model = load_model(args.model)
    regions = load_atlas(working_grid(model.grid_spacing_mm)).regions
    trend = linear_trend(args.train)
    visits, subjects, rv = truth_tables(args.cohort)
    pct = percent_icv(rv)
    subj = subjects.set_index("participant_id")
    ids = sorted(visits.participant_id.unique())[: args.max_subjects]

    rows, forecasts = [], []
    t0 = time.time()
    for pid in ids:
        g = visits[visits.participant_id == pid].sort_values("time_years")
        if len(g) < 2:
            continue
        lm = g.iloc[1]
        t1 = float(lm.time_years)
        s = subj.loc[pid]
        cov = {"age": float(lm.age), "sex": s["sex"], "diagnosis": lm.diagnosis, "apoe4": int(s["apoe4"]),
               "mmse": float(lm.mmse)}  # fmt: skip
        img = nib.load(str(truth_file(args.cohort, pid, lm.session_id, "space-*_desc-clean_T1w.nii.gz")))
        labels = nib.load(str(truth_file(args.cohort, pid, lm.session_id, "space-*_dseg.nii.gz")))
        vel = read_velocity(truth_file(args.cohort, pid, lm.session_id, "from-*_desc-velocity_xfm.nii.gz"))
        later = g[g.time_years > t1 + 1e-6]
        horizons = sorted({round(float(t - t1), 6) for t in later.time_years} | {args.feature_horizon})
        fs = ForecastSubject(img, cov, pid, lm.session_id, labels=labels, regions=regions,
                             history_velocity=vel, history_years=t1)  # fmt: skip
        fc = forecast(fs, horizons, args.samples, args.seed, model=model)
        forecasts.append(fc.volumes.sel(horizon=[args.feature_horizon]))
        ratio = (fc.volumes["volume"] / fc.volumes["baseline_volume"]).sel(region=VENTRICLES).mean("sample")
        base_pct = float(pct[(pid, lm.session_id)])
        dx0 = g.iloc[0].diagnosis
        for v in later.itertuples():
            h = round(float(v.time_years - t1), 6)
            rows.append({"pid": pid, "dx": dx0, "years_from_landmark": h, "true": float(pct[(pid, v.session_id)]),
                         "model": base_pct * float(ratio.sel(horizon=h)),
                         "trend": base_pct + float(trend.get(dx0, 0.0)) * h, "nochange": base_pct})  # fmt: skip
        print(f"{pid}: done ({time.time() - t0:.0f} s)", flush=True)
    forecast_seconds = time.time() - t0

    df = pd.DataFrame(rows)
    for k in ("model", "trend", "nochange"):
        df[f"err_{k}"] = (df[k] - df.true).abs()
    icv_result = {
        "n_subjects": int(df.pid.nunique()), "n_visits": len(df),
        "mae_pct_icv": {k: float(df[f"err_{k}"].mean()) for k in ("model", "trend", "nochange")},
        "mae_by_diagnosis": df.groupby("dx")[["err_model", "err_trend", "err_nochange"]].mean().round(4).to_dict(orient="index"),
        "trend_slopes_pct_icv_per_year": {k: round(float(v), 4) for k, v in trend.items()},
    }  # fmt: skip

    # Gather, round trip, features.
    t = time.perf_counter()
    cohort = gather_forecasts(forecasts)
    gather_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = save_cohort(cohort, Path(tmp) / "cohort.nc")
        back = load_cohort(path)
        nc_s = time.perf_counter() - t
        identical = bool(back.identical(cohort)) if hasattr(back, "identical") else False
        back.close()
    feats = forecast_features(cohort, args.feature_horizon)
    fcols = [c for c in feats.columns if c != "participant_id"]

    # Events from the landmark: MCI at the landmark -> AD.
    ev = landmark_events(visits[visits.participant_id.isin(ids)], subjects)
    table = ev.merge(feats, on="participant_id")
    base_set = ["age", "sex", "apoe4", "mmse"]
    t = time.perf_counter()
    conc, hrs, _ = compare_feature_sets(table, {"baseline": base_set, "baseline+forecast": base_set + fcols},
                                        kinds=("cox",), k=5, seed=args.seed)  # fmt: skip
    fit_s = time.perf_counter() - t
    c = conc.set_index("feature_set").concordance_cv_mean
    result = {
        "model": str(getattr(model, "path_", args.model)), "cohort": str(args.cohort), "samples": args.samples,
        "forecast_seconds": forecast_seconds, "ventricles_pct_icv": icv_result,
        "survival": {
            "n_at_risk": len(table), "n_events": int(table.event.sum()),
            "concordance": conc.round(4).to_dict(orient="records"),
            "hazard_ratios": hrs.round(4).to_dict(orient="records"),
            "gain": float(c["baseline+forecast"] - c["baseline"]),
        },
        "netcdf_round_trip_identical": identical, "gather_seconds": gather_s, "netcdf_seconds": nc_s,
        "cox_cv_seconds": fit_s, "n_forecasts_gathered": int(cohort.sizes.get("subject", 0)),
        "oracle": oracle(args.cohort),
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    xr.set_options(keep_attrs=True)
    main()
