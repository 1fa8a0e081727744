"""Issue 5's figures: the progression model on held-out simulated subjects, IXI scenarios, speed.

Scores a trained model (``--model``) on a cohort simulated with another seed (``--test``), against
its truth files, side by side with two baselines computed in the same run:

(a) no change (the baseline scan), (b) the population's mean regional rate per baseline diagnosis,
fitted on the training cohort's truth (``--train``): ``log ratio = rate_dx,region * t`` (least
squares through the origin).

The forecaster starts from the truth's clean baseline image in template space with the subject's
own baseline labels (so the figure measures the forecaster, not the atlas); horizons are the actual
times of the visits nearest to 1, 2 and 4 years (within 0.5 y).

Run (the numbers in benchmarks/forecast.md)::

    neurocast simulate train_s1000 --n-subjects 90 --seed 1000 --visits 3 5
    neurocast simulate test_s2000 --n-subjects 30 --seed 2000 --visits 3 5
    neurocast train progress train_s1000 progress-demo --steps 3000
    python benchmarks/forecast_benchmark.py --model progress-demo --train train_s1000 \\
        --test test_s2000 --ixi ../shared/data/real/ixi --out benchmarks/forecast_results.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

REGIONS = ("Hippocampus", "Amygdala", "Lateral-Ventricles", "Brain-Parenchyma")
TARGET_YEARS = (1.0, 2.0, 4.0)


def population_rates(train_root: Path) -> pd.DataFrame:
    """Baseline (b): mean annual log volume ratio per baseline diagnosis and region."""
    truth = train_root / "derivatives" / "neurocast-truth"
    rv = pd.read_csv(truth / "regional_volumes.tsv", sep="\t")
    subj = pd.read_csv(truth / "subjects.tsv", sep="\t")[["participant_id", "diagnosis"]]
    rv = rv[(rv.time_years > 0) & rv.region.isin(REGIONS)].merge(subj, on="participant_id")
    rv["logr"] = np.log(rv.ratio_to_baseline)
    g = rv.groupby(["diagnosis", "region"])
    return (g.apply(lambda d: float((d.logr * d.time_years).sum() / (d.time_years**2).sum()), include_groups=False)
            .rename("rate").reset_index())  # fmt: skip


def ssim_in_mask(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (skimage, 3-D, data range of b) over the mask."""
    from skimage.metrics import structural_similarity

    rng = float(b.max() - b.min()) or 1.0
    _, smap = structural_similarity(a, b, data_range=rng, full=True)
    return float(smap[mask].mean())


def test_cases(test_root: Path) -> list[dict]:
    truth = test_root / "derivatives" / "neurocast-truth"
    visits = pd.read_csv(truth / "visits.tsv", sep="\t")
    subjects = pd.read_csv(truth / "subjects.tsv", sep="\t").set_index("participant_id")
    cases = []
    for pid, rows in visits.groupby("participant_id"):
        bl = rows[rows.visit_index == 0].iloc[0]
        fu = rows[rows.visit_index > 0]
        chosen = {}
        for target in TARGET_YEARS:
            d = (fu.time_years - target).abs()
            if len(d) and d.min() <= 0.5:
                chosen[target] = fu.loc[d.idxmin()]
        if chosen:
            cases.append({"pid": pid, "bl": bl, "followups": chosen, "subject": subjects.loc[pid], "rows": rows})
    return cases


def truth_file(test_root: Path, pid: str, ses: str, pattern: str) -> Path:
    folder = test_root / "derivatives" / "neurocast-truth" / pid / ses / "anat"
    return next(folder.glob(f"{pid}_{ses}_{pattern}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, type=Path)
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--ixi", type=Path, default=None)
    ap.add_argument("--ixi-only", action="store_true", help="only the IXI scenarios (needs --ixi)")
    ap.add_argument("--samples", type=int, default=16, help="samples per horizon for the scores (calibration)")
    ap.add_argument("--max-subjects", type=int, default=None)
    ap.add_argument("--compare-raw", action="store_true",
                    help="also forecast with the raw samples (spread 1) to report their coverage in the same run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/forecast_results.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from neurocast.progress.forecast import ForecastSubject, forecast, load_model
    from neurocast.registration.atlas import load_atlas
    from neurocast.registration.template import working_grid
    from neurocast.registration.transforms import read_velocity

    model = load_model(args.model)
    if args.ixi_only:
        result = {"ixi": ixi_scenarios(args.ixi, model, args.seed)}
        args.out.write_text(json.dumps(result, indent=2, default=float))
        return
    regions = load_atlas(working_grid(model.grid_spacing_mm)).regions
    rates = population_rates(args.train).set_index(["diagnosis", "region"]).rate
    truth_rv = pd.read_csv(args.test / "derivatives" / "neurocast-truth" / "regional_volumes.tsv", sep="\t")
    truth_rv = truth_rv.set_index(["participant_id", "session_id", "region"]).ratio_to_baseline
    cases = test_cases(args.test)[: args.max_subjects]
    rows, image_rows, hist_rows = [], [], []
    t_start = time.time()
    for c in cases:
        pid, bl, subj = c["pid"], c["bl"], c["subject"]
        img = nib.load(str(truth_file(args.test, pid, "ses-bl", "space-*_desc-clean_T1w.nii.gz")))
        labels = nib.load(str(truth_file(args.test, pid, "ses-bl", "space-*_dseg.nii.gz")))
        cov = {"age": float(bl.age), "sex": subj["sex"], "diagnosis": bl.diagnosis, "apoe4": int(subj["apoe4"]),
               "mmse": float(bl.mmse)}  # fmt: skip
        fs = ForecastSubject(img, cov, pid, "ses-bl", labels=labels, regions=regions)
        targets = sorted(c["followups"].items())
        horizons = [float(v.time_years) for _, v in targets]
        fc = forecast(fs, horizons, args.samples, args.seed, model=model)
        ratio = fc.volumes["volume"] / fc.volumes["baseline_volume"]
        raw = None
        if args.compare_raw:
            fr = forecast(fs, horizons, args.samples, args.seed, model=model, sample_spread=1.0)
            raw = fr.volumes["volume"] / fr.volumes["baseline_volume"]
        mask = np.asarray(nib.load(str(truth_file(args.test, pid, "ses-bl", "space-*_desc-brain_mask.nii.gz"))).dataobj) > 0
        base_img = np.asarray(img.dataobj, dtype=np.float32)
        for (nominal, v), h in zip(targets, horizons, strict=True):
            for region in REGIONS:
                true = float(truth_rv[(pid, v.session_id, region)])
                s = ratio.sel(horizon=h, region=region).values
                lo, hi = np.quantile(s, [0.1, 0.9])
                pop = math.exp(float(rates.get((bl.diagnosis, region), 0.0)) * h)
                row = {"pid": pid, "dx": bl.diagnosis, "nominal": nominal, "years": h, "region": region,
                       "true": true, "model": float(s.mean()), "lo": float(lo), "hi": float(hi), "popb": pop}
                if raw is not None:
                    rlo, rhi = np.quantile(raw.sel(horizon=h, region=region).values, [0.1, 0.9])
                    row["covered_raw"] = bool(rlo <= true <= rhi)
                rows.append(row)
            follow = np.asarray(nib.load(str(truth_file(args.test, pid, v.session_id, "space-*_desc-clean_T1w.nii.gz"))).dataobj, dtype=np.float32)
            pred = fc.images["t1w_mean"].sel(horizon=h).values
            image_rows.append({"pid": pid, "nominal": nominal, "ssim_model": ssim_in_mask(pred, follow, mask),
                               "ssim_nochange": ssim_in_mask(base_img, follow, mask),
                               "folding_max": float(fc.folding.sel(horizon=h).max())})  # fmt: skip
        # With history: start from the visit nearest 1 year, predict the later target visits.
        if 1.0 in c["followups"] and len(targets) > 1:
            j = c["followups"][1.0]
            later = [(n, v) for n, v in targets if v.time_years > j.time_years + 0.25]
            if later:
                jimg = nib.load(str(truth_file(args.test, pid, j.session_id, "space-*_desc-clean_T1w.nii.gz")))
                vel = read_velocity(truth_file(args.test, pid, j.session_id, "from-*_desc-velocity_xfm.nii.gz"))
                jcov = {**cov, "age": float(j.age), "diagnosis": j.diagnosis, "mmse": float(j.mmse)}
                hz = [float(v.time_years - j.time_years) for _, v in later]
                for with_hist in (False, True):
                    fsj = ForecastSubject(jimg, jcov, pid, j.session_id, labels=labels, regions=regions,
                                          history_velocity=vel if with_hist else None,
                                          history_years=float(j.time_years) if with_hist else None)  # fmt: skip
                    fcj = forecast(fsj, hz, args.samples, args.seed, model=model)
                    rj = fcj.volumes["volume"] / fcj.volumes["baseline_volume"]
                    for (_, v), h in zip(later, hz, strict=True):
                        for region in REGIONS:
                            # truth of visit k relative to visit j (both relative to baseline)
                            true = float(truth_rv[(pid, v.session_id, region)]) / float(truth_rv[(pid, j.session_id, region)])
                            hist_rows.append({"pid": pid, "region": region, "history": with_hist, "years": h,
                                              "true": true, "model": float(rj.sel(horizon=h, region=region).mean())})  # fmt: skip
        print(f"{pid}: done ({time.time() - t_start:.0f} s)", flush=True)

    df = pd.DataFrame(rows)
    df["err_model"] = (df.model - df.true).abs()
    df["err_a"] = (1.0 - df.true).abs()
    df["err_b"] = (df.popb - df.true).abs()
    df["covered"] = (df.lo <= df.true) & (df.true <= df.hi)
    by_region = df.groupby("region")[["err_model", "err_a", "err_b", "covered"]].mean()
    by_region["ratio_a"] = by_region.err_model / by_region.err_a
    by_region["ratio_b"] = by_region.err_model / by_region.err_b
    by_h = df.groupby(["nominal", "region"])[["err_model", "err_a", "err_b", "covered"]].mean()
    imgs = pd.DataFrame(image_rows)
    result = {
        "n_test_subjects": len(cases), "n_rows": len(df), "samples": args.samples,
        "by_region": by_region.round(5).reset_index().to_dict(orient="records"),
        "by_horizon": by_h.round(5).reset_index().to_dict(orient="records"),
        "coverage_80_overall": float(df.covered.mean()),
        "sample_spread": float(model.sample_spread),
        "coverage_80_by_region": df.groupby("region").covered.mean().round(4).to_dict(),
        "coverage_80_raw_samples": float(df.covered_raw.mean()) if "covered_raw" in df else None,
        "ssim_model_mean": float(imgs.ssim_model.mean()), "ssim_model_min": float(imgs.ssim_model.min()),
        "ssim_nochange_mean": float(imgs.ssim_nochange.mean()),
        "folding_max": float(imgs.folding_max.max()),
    }  # fmt: skip
    if hist_rows:
        h = pd.DataFrame(hist_rows)
        h["err"] = (h.model - h.true).abs()
        result["history"] = h.groupby(["region", "history"]).err.mean().round(5).reset_index().to_dict(orient="records")
        result["history_n_subjects"] = int(h.pid.nunique())

    # Speed: one subject, 8 samples x 3 horizons (the CLI default), median of 3 after a warm-up.
    fs = ForecastSubject(img, cov, pid, "ses-bl")
    forecast(fs, [1, 2, 5], 8, 0, model=model)
    times = []
    for r in range(3):
        t = time.perf_counter()
        forecast(fs, [1, 2, 5], 8, r, model=model)
        times.append(time.perf_counter() - t)
    result["speed_s_8x3_median"] = statistics.median(times)
    result["speed_s_all"] = times

    if args.ixi is not None:
        result["ixi"] = ixi_scenarios(args.ixi, model, args.seed)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=2, default=float))


def ixi_scenarios(ixi: Path, model, seed: int) -> list[dict]:
    """CN vs AD at 5 years on each real IXI scan; change grows with horizon; zero horizon."""
    from neurocast.progress.forecast import ForecastSubject, forecast

    demo = pd.read_csv(ixi / "demographics.csv") if (ixi / "demographics.csv").is_file() else None
    out = []
    for scan in sorted(ixi.glob("IXI*-T1_ds.nii.gz")):
        sid = scan.name.split("-")[0]
        age, sex = 70.0, None
        if demo is not None:
            row = demo[demo.astype(str).apply(lambda r, s=sid: r.str.contains(s).any(), axis=1)]
            if len(row):
                r = row.iloc[0]
                age = float(next((r[c] for c in r.index if c.lower().startswith("age")), age))
                sx = next((r[c] for c in r.index if c.lower().startswith("sex")), None)
                sex = {"1": "M", "2": "F", "M": "M", "F": "F"}.get(str(sx).strip().upper()[:1], None) if sx is not None else None
        subj = ForecastSubject.from_scan(scan, {"age": age, "sex": sex, "apoe4": 0, "mmse": 29.0}, participant_id=f"sub-{sid}")
        res = {"scan": scan.name, "age": age}
        for dx in ("CN", "AD"):
            fc = forecast(subj, [0, 1, 2, 5], 8, seed, {"diagnosis": dx}, model=model)
            ch = fc.change_percent().mean("sample")
            res[dx] = {r: [round(float(x), 3) for x in ch.sel(region=r).values] for r in REGIONS}
            res[f"{dx}_zero_max_abs_J_minus_1"] = float(abs(fc.images["jacobian_mean"].sel(horizon=0.0) - 1).max())
        lv_cn, lv_ad = res["CN"]["Lateral-Ventricles"], res["AD"]["Lateral-Ventricles"]
        res["ventricles_AD_gt_CN_at_5y"] = bool(lv_ad[-1] > lv_cn[-1])
        res["grows_with_horizon"] = bool(all(np.diff(np.abs(res[d]["Lateral-Ventricles"])).min() > 0 for d in ("CN", "AD")))
        print(res, flush=True)
        out.append(res)
    return out


if __name__ == "__main__":
    main()
