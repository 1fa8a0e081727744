"""`neurocast train anomaly` and `neurocast qa` on tiny simulated datasets with a tiny model.

Preprocessing (N4 and ANTs registration, ~15 s a scan) is replaced by a fast stand-in that uses
the simulation's *true* transform and brain mask, so the test runs in seconds; everything else
(BIDS discovery, training, calibration, priors, scoring, derivatives, qa.tsv, resume, exit codes)
is the real code. The real preprocessing path is exercised by ``benchmarks/anomaly_benchmark.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from neurocast.anomaly.calibration import COMPACT_SHARE
from neurocast.cli.main import cli

SIM_CONFIG = {
    "native_voxel_sizes": [[3.0, 3.0, 3.0]],
    "skull_stripped_fraction": 0.5,
    "field_spacing_mm": 8.0,
}


def _simulate(root: Path, seed: int, *extra: str) -> Path:
    cfg = root.parent / f"{root.name}_config.json"
    cfg.write_text(json.dumps(SIM_CONFIG))
    run = CliRunner().invoke(cli, [
        "simulate", str(root), "--n-subjects", "2", "--seed", str(seed), "--visits", "2", "2",
        "--grid-spacing-mm", "4", "--config", str(cfg), "-q", *extra,
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    return root


def fast_preprocess(image, *, grid=None, skull_stripped=None, seed=0, work_dir=None,
                    on_fail="raise", **_):  # fmt: skip
    """Stand-in for preprocess_t1w on simulated scans: the true transform and brain mask."""
    from neurocast.io import load_image
    from neurocast.registration.preprocess import PreprocessResult, normalise_intensity
    from neurocast.registration.transforms import resample

    path = Path(image)
    sub, ses = path.name.split("_")[:2]
    bids = path.parents[3]
    truth = bids / "derivatives" / "neurocast-truth" / sub / ses / "anat"
    n2t = np.array(json.loads(
        (truth / f"{sub}_{ses}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json").read_text()
    )["native_to_template"])  # fmt: skip
    img = load_image(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask_img = nib.load(str(truth / f"{sub}_{ses}_desc-brain_mask.nii.gz"))
    nmask = resample(np.asarray(mask_img.dataobj, np.float32), mask_img.affine, data.shape, img.affine) > 0.5
    norm, _ = normalise_intensity(data, nmask)
    inv = np.linalg.inv(n2t)
    out = resample(norm, img.affine, grid.shape, grid.affine, inv)
    tmask = resample(nmask.astype(np.float32), img.affine, grid.shape, grid.affine, inv) > 0.5
    visits = pd.read_csv(bids / "derivatives" / "neurocast-truth" / "visits.tsv", sep="\t", dtype=str)
    row = visits[(visits.participant_id == sub) & (visits.session_id == ses)].iloc[0]
    return PreprocessResult(
        image=grid.image((out * tmask).astype(np.float32)),
        brain_mask=grid.image(tmask.astype(np.uint8), dtype=np.uint8),
        native=nib.Nifti1Image(norm, img.affine),
        native_brain_mask=nib.Nifti1Image(nmask.astype(np.uint8), img.affine),
        native_to_template=n2t,
        skull_stripped=row["skull_stripped"].lower() == "true",
        qc={"passed": True, "reasons": [], "similarity": 1.0},
        grid=grid,
        params={"source": str(path)},
    )


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("anomaly_cli")
    return {
        "train": _simulate(root / "train", 1),
        "screen": _simulate(root / "screen", 2, "--tumour-fraction", "1.0"),
    }


@pytest.fixture(autouse=True)
def _fast_preprocessing(monkeypatch) -> list[str]:
    """The stand-in, counting the scans it preprocesses."""
    import neurocast.registration.preprocess as pp

    calls: list[str] = []

    def counted(image, **kwargs):
        calls.append(Path(image).name)
        return fast_preprocess(image, **kwargs)

    monkeypatch.setattr(pp, "preprocess_t1w", counted)
    return calls


def test_train_then_screen_a_simulated_dataset(datasets, tmp_path, _fast_preprocessing) -> None:
    model = tmp_path / "model"
    run = CliRunner().invoke(cli, [
        "train", "anomaly", str(datasets["train"]), str(model), "--steps", "50", "--max-minutes", "1e-6",
        "--channels", "8,16", "--noise-levels", "0.3", "--inference-steps", "1",
        "--grid-spacing-mm", "4", "--batch-size", "8", "--seed", "1", "-q",
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "calibrated on 2" in run.output
    card = json.loads((model / "model_card.json").read_text())
    assert card["extra"]["anomaly"]["calibration"]["n_references"] == 2
    assert card["extra"]["anomaly"]["grid_spacing_mm"] == [4.0, 4.0, 4.0]
    # the time budget stopped training after its first step, and the card says so
    assert card["extra"]["anomaly"]["params"]["n_steps"] == 1
    assert card["extra"]["anomaly"]["training"]["steps"] == 1

    # a site's own healthy scans recalibrate the trained weights (here: all four training visits)
    site = tmp_path / "site-model"
    run = CliRunner().invoke(cli, [
        "train", "anomaly", str(datasets["train"]), str(site), "--calibrate-only", "--model", str(model),
        "--fpr", "0.1", "-q",
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "calibrated on 4 healthy scan(s) at FPR 0.1" in run.output
    site_card = json.loads((site / "model_card.json").read_text())
    assert site_card["files"]["model.safetensors"] == card["files"]["model.safetensors"]
    summary = site_card["extra"]["anomaly"]["training"]["data_summary"]
    assert summary["calibrated_on"]["participants"] == ["sub-001", "sub-002"]
    assert site_card["extra"]["anomaly"]["normative"]["n_references"] == 4
    # two participants: each reference was scored against the other participant's scans
    assert site_card["extra"]["anomaly"]["calibration"]["extra"]["left_out"] == "group"
    run = CliRunner().invoke(cli, ["train", "anomaly", str(datasets["train"]), str(site), "--model", str(model)])
    assert run.exit_code == 2 and "--calibrate-only" in run.output
    # fine-tuning starts from the model's weights, with its network and grid (not the defaults)
    tuned = tmp_path / "tuned"
    run = CliRunner().invoke(cli, [
        "train", "anomaly", str(datasets["train"]), str(tuned), "--fine-tune", "--model", str(model),
        "--steps", "2", "--batch-size", "8", "--mixed-precision", "bf16", "--seed", "1", "-q",
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    tuned_anomaly = json.loads((tuned / "model_card.json").read_text())["extra"]["anomaly"]
    assert tuned_anomaly["params"]["channels"] == [8, 16]
    assert tuned_anomaly["params"]["noise_levels"] == [0.3]
    assert tuned_anomaly["params"]["mixed_precision"] == "bf16"
    assert tuned_anomaly["grid_spacing_mm"] == [4.0, 4.0, 4.0]
    assert tuned_anomaly["training"]["steps"] == 2
    assert tuned_anomaly["training"]["init"]["steps"] == 1
    run = CliRunner().invoke(cli, [
        "train", "anomaly", str(datasets["train"]), str(tuned), "--fine-tune", "--calibrate-only",
    ])  # fmt: skip
    assert run.exit_code == 2 and "exclude each other" in run.output
    # the Python API calibrates a copy: the caller's detector keeps its calibration
    from neurocast.anomaly import AnomalyDetector
    from neurocast.anomaly.workflow import calibrate_detector

    mine = AnomalyDetector.load(model)
    again = calibrate_detector(datasets["train"], tmp_path / "copy", model=mine)
    assert mine.calibration_.n_references == 2 and again.calibration_.n_references == 4

    out = tmp_path / "qa"
    args = ["qa", str(datasets["screen"]), str(out), "participant", "--model", str(model), "-q"]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0, run.output
    anat = out / "sub-001" / "ses-bl" / "anat"
    for name in (
        "sub-001_ses-bl_space-MNI152NLin2009aSym_res-4_desc-anomaly_map.nii.gz",
        "sub-001_ses-bl_space-MNI152NLin2009aSym_res-4_desc-anomaly_mask.nii.gz",
        "sub-001_ses-bl_space-T1w_desc-anomaly_map.nii.gz",
        "sub-001_ses-bl_desc-qa.json",
        "sub-001_ses-bl_space-MNI152NLin2009aSym_res-4_desc-anomaly_map.json",  # provenance
    ):
        assert (anat / name).is_file(), name
    assert (out / "sub-001" / "figures" / "sub-001_ses-bl_desc-anomaly_mosaic.png").is_file()
    sidecar = json.loads((anat / "sub-001_ses-bl_space-MNI152NLin2009aSym_res-4_desc-anomaly_map.json").read_text())
    assert sidecar["Units"] == "healthy standard deviations"  # trained and calibrated: standardised
    native = nib.load(str(anat / "sub-001_ses-bl_space-T1w_desc-anomaly_map.nii.gz"))
    raw = nib.load(str(datasets["screen"] / "sub-001" / "ses-bl" / "anat" / "sub-001_ses-bl_T1w.nii.gz"))
    assert native.shape == raw.shape and np.allclose(native.affine, raw.affine, atol=1e-4)

    from neurocast.io.tables import read_table

    table = read_table(out / "qa.tsv", "anomaly_qa")
    assert len(table) == 4 and set(table["flag"]) <= {"pass", "review-lesion", "review-artefact"}
    flagged = list(table["flag"] != "pass")
    assert flagged == sorted(flagged, reverse=True)  # flagged scans first
    for r in table.itertuples():  # the flag names one of the scores over their thresholds
        over = [] if pd.isna(r.over_threshold) else str(r.over_threshold).split(";")
        assert (r.flag == "pass") == (not over)
        findings = {"spike": "artefact"}  # an RF spike over its threshold is an artefact finding
        found = {findings.get(name, name) for name in over}
        assert r.flag == "pass" or r.flag.removeprefix("review-") in found
        if len(found) == 2:  # both over: a compact finding is a lesion, scattered evidence an artefact
            assert (r.flag == "review-lesion") == (r.largest_cluster_share >= COMPACT_SHARE)
        assert pd.isna(r.largest_cluster_share) == (r.n_clusters == 0)
    record = json.loads((anat / "sub-001_ses-bl_desc-qa.json").read_text())
    assert record["row"]["used_prior"] is False and "iqms" in record["result"]
    share, row_share = record["result"]["largest_cluster_share"], record["row"]["largest_cluster_share"]
    assert (share is None and row_share is None) or share == pytest.approx(row_share)
    # the lesion score and what it is made of: each reading over its healthy threshold
    scales, evidence = record["calibration"]["lesion_scales"], record["result"]["lesion_evidence"]
    assert record["result"]["lesion_score"] == pytest.approx(
        max(evidence[k] / max(scales[k], 1e-6) for k in ("mass", "peak"))
    )
    later = table[table["session_id"] != "ses-bl"]
    first = table[table["session_id"] == "ses-bl"].set_index("participant_id")["flag"]
    for r in later.itertuples():  # a follow-up is conditioned on its baseline iff that passed
        assert bool(r.used_prior) == (first[r.participant_id] == "pass")
    stripped = table[table["skull_stripped"] == True]  # noqa: E712
    assert all("skull-stripped" in str(u) for u in stripped["iqm_undefined"])
    # the ghost ratio is read from the T1w as acquired (the qa workflow hands it over)
    assert "ghost_ratio" in table.columns
    whole_head = table[table["skull_stripped"] == False]  # noqa: E712
    assert all("before bias correction" not in str(u) for u in whole_head["iqm_undefined"])

    run = CliRunner().invoke(cli, args)  # resume: nothing recomputed
    assert run.exit_code == 0 and "2 skipped" in run.output, run.output
    # each scan's preprocessing was written once (as `neurocast preprocess` writes it) and is
    # read back when the screening itself is redone
    assert (anat / "sub-001_ses-bl_desc-preproc_T1w.nii.gz").is_file()
    for record_file in out.glob("sub-*/ses-*/anat/*_desc-qa.json"):
        record_file.unlink()
    _fast_preprocessing.clear()
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0 and "2 done" in run.output, run.output
    assert _fast_preprocessing == []
    assert read_table(out / "qa.tsv", "anomaly_qa").equals(table)
    run = CliRunner().invoke(cli, ["qa", str(datasets["screen"]), str(out), "group", "-q"])
    assert run.exit_code == 0 and "4 scan(s)" in run.output, run.output


def test_qa_without_a_model_says_how_to_get_one(datasets, tmp_path) -> None:
    run = CliRunner().invoke(
        cli, ["qa", str(datasets["screen"]), str(tmp_path / "o"), "participant", "--model",
              str(tmp_path / "nothing"), "-q"],
    )  # fmt: skip
    assert run.exit_code == 68 and "model_card.json" in run.output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "-1"], "lr must be a positive number"),
        (["--channels", "12,24"], "multiple of norm_num_groups=8"),
        (["--noise-levels", "0.2,1.5"], "noise levels must be in (0, 1)"),
    ],
)
def test_train_refuses_bad_settings_before_reading_any_scan(
    datasets, tmp_path, _fast_preprocessing, option, message
) -> None:
    model = tmp_path / "model"
    args = ["train", "anomaly", str(datasets["train"]), str(model), "--steps", "1", "-q", *option]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 2 and message in run.output, run.output
    assert _fast_preprocessing == [] and not model.exists()
