"""Speed of the cohort arrays and survival models on a synthetic cohort.

A cohort of 200 synthetic per-subject forecasts (the forecaster's contract, made by
:func:`neurocast.progress.cohort.synthetic_forecast`: 3 horizons, 15 regions, 8 samples; diagnosis
CN/MCI/AD 30/50/20 %) and an MCI->AD events table of its MCI subjects whose hazard rises with the
forecast 2-year hippocampal atrophy (:func:`neurocast.progress.analysis.synthetic_cohort`). Timed,
each the median of ``--repeats`` runs in one process (imports excluded):

- gather the 200 Datasets into one cohort Dataset;
- save it as netCDF-4 and load it back (checked identical);
- tidy table, group summary by diagnosis, forecast-derived features;
- Cox and Weibull AFT fits with baseline covariates + forecast features, the PH check;
- 5-fold cross-validated concordance (Cox), Kaplan–Meier by APOE4;
- the whole ``cohort_report`` + ``survival_analysis`` pipeline into a temporary folder
  (tables, figures, HTML), once.

Run from the project root:

    python benchmarks/survival_speed.py              # writes benchmarks/cohort_survival.md
    python benchmarks/survival_speed.py --quick      # fewer repeats, no file
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from neurocast.progress import cohort as C
from neurocast.progress.analysis import cohort_report, survival_analysis, synthetic_cohort
from neurocast.progress.survival import ConversionModel, cross_validated_concordance, kaplan_meier

ROOT = Path(__file__).resolve().parents[1]
REGIONS = (
    *(
        f"{name}_{side}"
        for name in ("hippocampus", "amygdala", "lateral_ventricle", "entorhinal", "thalamus", "caudate", "putamen")
        for side in ("left", "right")
    ),
    "intracranial_volume",
)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "cohort_survival.md")
    ap.add_argument("--machine", default=os.environ.get("NEUROCAST_MACHINE", "shared, 2 cores"))
    ap.add_argument("--date", default=_dt.date.today().isoformat())
    args = ap.parse_args(argv)
    reps = 2 if args.quick else args.repeats
    assert len(REGIONS) == 15

    t0 = time.perf_counter()
    dss, events = synthetic_cohort(args.subjects, seed=args.seed, regions=REGIONS)
    t_make = time.perf_counter() - t0
    res: list[tuple[str, float]] = [("make 200 synthetic forecasts + events (not part of neurocast's work)", t_make)]

    t, ds = timed(lambda: C.gather_forecasts(dss), reps)
    res.append(("gather_forecasts (200 Datasets -> one cohort Dataset)", t))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cohort.nc"
        t, _ = timed(lambda: C.save_cohort(ds, path), reps)
        res.append((f"save_cohort (netCDF-4, zlib 4; {path.stat().st_size / 1e6:.2f} MB)", t))
        t, back = timed(lambda: C.load_cohort(path), reps)
        xr.testing.assert_identical(ds, back)
        res.append(("load_cohort (identical to the saved Dataset)", t))
    t, tidy = timed(lambda: C.to_tidy(ds), reps)
    res.append((f"to_tidy ({len(tidy)} rows)", t))
    t, _ = timed(lambda: C.group_summary(ds, by=("diagnosis",)), reps)
    res.append(("group_summary by diagnosis", t))
    t, feats = timed(lambda: C.forecast_features(ds, horizon=2.0), reps)
    res.append(("forecast_features (2-year hippocampal atrophy, ventricle expansion)", t))

    table = events.merge(feats, on="participant_id")
    features = ["age", "sex", "apoe4", "mmse", *feats.columns[1:]]
    n, ne = len(table), int(table["event"].sum())
    t, cox = timed(lambda: ConversionModel("cox", penalizer=0.01).fit(table, features), reps)
    res.append((f"Cox fit ({n} MCI subjects, {ne} events, {len(features)} features)", t))
    t, _ = timed(lambda: ConversionModel("weibull_aft", penalizer=0.01).fit(table, features), reps)
    res.append(("Weibull AFT fit (same data)", t))
    t, _ = timed(lambda: cox.check_proportional_hazards(), reps)
    res.append(("proportional-hazards check (Cox)", t))
    t, cv = timed(lambda: cross_validated_concordance(table, features, k=5, seed=0, penalizer=0.01), reps)
    res.append((f"5-fold cross-validated concordance, Cox (C = {cv.mean:.3f} ± {cv.std:.3f})", t))
    t, _ = timed(lambda: kaplan_meier(table, "apoe4"), reps)
    res.append(("Kaplan–Meier by APOE4 (+ log-rank)", t))

    with tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp) / "events.tsv"
        events.to_csv(ev, sep="\t", index=False, na_rep="n/a")
        t0 = time.perf_counter()
        cohort_report(Path(tmp) / "out", forecasts=dss)
        t_cr = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = survival_analysis(Path(tmp) / "out", events_table=ev, k=5, seed=0)
        t_sa = time.perf_counter() - t0
        n_png = len(list((Path(tmp) / "out").rglob("*.png")))
    res.append(("cohort_report (nc, 2 TSV, 3 figures, HTML), once", t_cr))
    res.append(("survival_analysis (2 feature sets x 2 models, CV, KM, 7 TSV, figures, HTML), once", t_sa))

    hr = cox.hazard_ratios_.set_index("feature")
    conc = rep.concordance.set_index(["feature_set", "model"])
    lines = [
        "# Cohort arrays and survival models: speed",
        "",
        f"Machine: {args.machine} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs visible), Python {sys.version.split()[0]}, date {args.date}. "
        f"Command: `python benchmarks/survival_speed.py` (median of {reps} runs per step, one process, "
        "imports excluded).",
        "",
        f"Cohort: {args.subjects} synthetic per-subject forecasts following the forecaster's contract "
        f"(3 horizons 1/2/5 years, {len(REGIONS)} regions, 8 samples; CN/MCI/AD 30/50/20 %), made by "
        "`neurocast.progress.cohort.synthetic_forecast`; events: the MCI subjects, exponential times "
        "with log hazard ratio 0.7 per SD of forecast 2-year hippocampal atrophy and 0.3 per APOE4 "
        "allele, uniform censoring 1-6 years (`neurocast.progress.analysis.synthetic_cohort`). "
        "These are synthetic forecasts, not the forecaster's: the numbers measure speed, not "
        "forecast quality.",
        "",
        "| step | seconds |",
        "|---|---:|",
        *[f"| {name} | {sec:.3f} |" for name, sec in res],
        "",
        f"Cox hazard ratio of forecast 2-year hippocampal atrophy (per percentage point): "
        f"{hr.loc['pred_hippocampus_atrophy_2y', 'hazard_ratio']:.2f} "
        f"({hr.loc['pred_hippocampus_atrophy_2y', 'hazard_ratio_lower']:.2f}-"
        f"{hr.loc['pred_hippocampus_atrophy_2y', 'hazard_ratio_upper']:.2f}); it is nearly collinear "
        "with the ventricle expansion feature (both follow one subject rate in the synthetic data), "
        "so the two share the signal.",
        "",
        "Cross-validated concordance of the pipeline run (5 folds, seed 0): baseline covariates "
        f"{conc.loc[('baseline', 'cox'), 'concordance_cv_mean']:.3f} (Cox), "
        f"{conc.loc[('baseline', 'weibull_aft'), 'concordance_cv_mean']:.3f} (Weibull AFT); "
        "baseline + forecast features "
        f"{conc.loc[('baseline+forecast', 'cox'), 'concordance_cv_mean']:.3f} (Cox), "
        f"{conc.loc[('baseline+forecast', 'weibull_aft'), 'concordance_cv_mean']:.3f} (Weibull AFT). "
        f"The pipeline wrote {n_png} PNG figures. The baseline set is below 0.5 because it carries "
        "almost no signal here (only APOE4, weakly) and the cross-validated concordance of an "
        "uninformative model on ~90 subjects scatters widely around 0.5 and leans below it (a fold "
        "model fitted to noise ranks the held-out fold against that noise); lifelines' own "
        "`k_fold_cross_validation` gives the same on these data. The forecast features add a "
        "real signal by construction.",
        "",
        f"Total for the gather + fit path (gather, Cox fit): "
        f"{res[1][1] + res[7][1]:.2f} s for {args.subjects} subjects.",
        "",
        "Where the pipeline's time goes: in `survival_analysis`, mostly the Weibull AFT fits of the "
        "cross-validation (lifelines fits the AFT model by automatic differentiation, several times "
        "slower than Cox) and drawing the PNG figures (about 0.5-1.5 s each on this machine); in "
        "`cohort_report`, the figures.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        args.out.write_text(text, encoding="utf-8")
        print(f"written to {args.out}")
    assert np.isfinite(cv.mean)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
