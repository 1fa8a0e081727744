"""A small fake output folder with every kind of output the reports read (tiny grids), written by
the file contracts of the steps (imported by the report tests as ``report_fixtures``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SPACE = "space-MNI152NLin2009aSym_res-2"
SHAPE = (12, 14, 10)


def _img(data: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))


def make_output(
    root: Path,
    label: str = "01",
    *,
    forecast: bool = True,
    qa: bool = True,
    registration: bool = True,
    covariates: dict[str, str] | None = None,
    qa_flag: str = "review-lesion",
    overlay_png: bool = False,
) -> Path:
    """Write one participant's outputs by the file contracts of the steps, with sidecars."""
    from neurocast.io.derivatives import DerivativesWriter

    bids = root / "bids"
    bids.mkdir(parents=True, exist_ok=True)
    cov = {
        "participant_id": f"sub-{label}",
        "age": "71.5",
        "diagnosis": "MCI",
        **(covariates or {}),
    }
    pt = bids / "participants.tsv"
    table = pd.read_csv(pt, sep="\t", dtype=str) if pt.is_file() else pd.DataFrame()
    pd.concat([table, pd.DataFrame([cov])]).to_csv(pt, sep="\t", index=False)
    out = root / "out"
    w = DerivativesWriter(out, source_datasets=[str(bids)])
    sub = f"sub-{label}"
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    brain = (np.sum(grid**2, axis=0) < 0.7).astype(np.float32)
    prov = {"parameters": {"x": 1}, "seed": 3}
    for k, ses in enumerate(("ses-bl", "ses-m12")):
        folder, pre = f"{sub}/{ses}/anat", f"{sub}_{ses}"
        vol = brain * (100 + rng.normal(0, 5, SHAPE))
        if registration:
            row = {"participant_id": sub, "session_id": ses, "passed": True, "similarity": 0.81,
                   "mask_volume_ml": 1400.0, "skull_stripped": False, "reasons": "n/a"}  # fmt: skip
            w.write_json(f"{folder}/{pre}_desc-preproc_qc.json", {"row": row, "qc": {}}, **prov)
            w.write_nifti(f"{folder}/{pre}_{SPACE}_desc-preproc_T1w.nii.gz", _img(vol), **prov)
            w.write_nifti(f"{folder}/{pre}_{SPACE}_desc-longitudinal_T1w.nii.gz", _img(vol), **prov)
            w.write_nifti(f"{folder}/{pre}_{SPACE}_desc-longitudinal_mask.nii.gz", _img(brain), **prov)
            if k:
                jac = 1 - 0.05 * brain * rng.random(SHAPE)
                w.write_nifti(f"{folder}/{pre}_from-sesbl_{SPACE}_desc-jacobian_map.nii.gz",
                              _img(jac), **prov)  # fmt: skip
        if qa:
            amap = np.zeros(SHAPE)
            amap[4:7, 5:8, 3:6] = 3.0
            w.write_nifti(f"{folder}/{pre}_{SPACE}_desc-anomaly_map.nii.gz", _img(amap), **prov)
            w.write_nifti(
                f"{folder}/{pre}_{SPACE}_desc-anomaly_mask.nii.gz", _img(amap > 1), **prov
            )
            if k == 0:  # a flat record (the contract's keys at the top)
                rec = {"flag": "pass", "scores": {"lesion": 0.31, "artefact": 0.12},
                       "percentile": 42.0, "iqms": {"snr": 21.4, "cjv": 0.41}}  # fmt: skip
            else:  # the record neurocast.anomaly.workflow writes
                result = {"flag": qa_flag, "percentile": 99.2, "lesion_score": 812.5,
                          "lesion_percentile": 99.2, "artefact_score": 0.4,
                          "artefact_percentile": 61.0, "anomaly_volume_mm3": 216.0,
                          "used_prior": True, "clusters": [{"volume_mm3": 216.0}],
                          "iqms": {"snr_total": 18.2, "cjv": 0.52, "ghost_ratio": 0.004},
                          "artefact_feature_z": {"residual_median": 0.3, "ghost_ratio": 2.5}, "noise_sd": 0.0217,
                          "lesion_evidence": {"mass": 3615.0, "peak": 21.75}}  # fmt: skip
                row = {"participant_id": sub, "session_id": ses, "flag": qa_flag,
                       "n_clusters": 1, "largest_cluster_mm3": 216.0}  # fmt: skip
                rec = {"row": row, "result": result,
                       "calibration": {"fpr": 0.05, "lesion_threshold": 300.0},
                       "preprocessing_qc": {"passed": True, "similarity": 0.8}}  # fmt: skip
            w.write_json(f"{folder}/{pre}_desc-qa.json", rec, **prov)
            if overlay_png:
                from neurocast.report.figures import mosaic, save_figure

                save_figure(mosaic([vol], overlays=[amap], n_slices=2),
                            out / sub / "figures" / f"{pre}_desc-anomaly_mosaic.png")  # fmt: skip
    if registration:
        summary = {"participant_id": sub, "passed": True, "followups": [
            {"session_id": "ses-m12", "ncc_before": 0.912, "ncc_after": 0.957, "folding": 0.0}]}  # fmt: skip
        w.write_json(f"{sub}/anat/{sub}_desc-longitudinal_qc.json",
                     {"summary": summary, "qc": {"rigid_motion": {"m12": {"translation_mm": 3.2,
                      "rotation_deg": 1.1}}}}, **prov)  # fmt: skip
    if forecast:
        folder, pre = f"{sub}/ses-m12/anat", f"{sub}_ses-m12"
        horizons = [1.0, 2.0, 5.0]
        base = brain * 100
        fc = np.stack([base * (1 - 0.01 * h) for h in horizons], axis=-1)
        sd = np.stack([brain * h for h in horizons], axis=-1)
        jac = np.stack([1 - 0.01 * h * brain for h in horizons], axis=-1)
        card = {
            "inputs": [],
            "parameters": {"n_samples": 8},
            "seed": 3,
            "model_card_sha256": "ab" * 32,
        }
        w.write_nifti(f"{folder}/{pre}_{SPACE}_desc-forecast_T1w.nii.gz", _img(fc),
                      extra={"Horizons": horizons, "ModelCardId": "progress-demo-v1"}, **card)  # fmt: skip
        w.write_nifti(f"{folder}/{pre}_{SPACE}_desc-uncertainty_T1w.nii.gz", _img(sd), **card)
        w.write_nifti(f"{folder}/{pre}_{SPACE}_desc-jacobian_map.nii.gz", _img(jac), **card)
        rows = []
        for h in horizons:
            for region, rate in (("Left-Hippocampus", -3.0), ("Right-Lateral-Ventricle", 4.0),
                                 ("Brain-Stem", -0.2)):  # fmt: skip
                b = 4000.0
                m = b * (1 + rate * h / 100)
                rows.append({"participant_id": sub, "session_id": "ses-m12", "horizon_years": h,
                             "region": region, "baseline_volume_mm3": b, "mean_mm3": m,
                             "q10_mm3": m - 20 * h, "q50_mm3": m, "q90_mm3": m + 20 * h,
                             "change_percent_mean": rate * h})  # fmt: skip
        w.write_tsv(f"{folder}/{pre}_desc-forecast_volumes.tsv", pd.DataFrame(rows), **card)
    return out
