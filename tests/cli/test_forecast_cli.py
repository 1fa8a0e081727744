"""``neurocast train progress`` and ``neurocast forecast`` end to end on a tiny simulated cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from neurocast.cli.main import cli

TINY = {
    "grid_spacing_mm": 4.0, "field_spacing_mm": 8.0, "n_visits": [3, 3],
    "native_voxel_sizes": [[3.0, 3.0, 3.0]], "tumour_fraction": 0.0, "artefact_fraction": 0.0,
    "skull_stripped_fraction": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def cohort_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("forecast_cli")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    runner = CliRunner()
    res = runner.invoke(cli, ["simulate", str(root / "bids"), "--n-subjects", "2", "--seed", "4", "--config", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["train", "progress", str(root / "bids"), str(root / "model"), "--steps", "2",
                              "--batch-size", "4", "--channels", "8,16", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return root / "bids", root / "model"


def test_train_writes_a_model_card_saying_synthetic(cohort_and_model: tuple[Path, Path]) -> None:
    _, model = cohort_and_model
    card = json.loads((model / "model_card.json").read_text())
    assert "synthetic" in card["extra"]["note"].lower()
    assert (model / "model.safetensors").is_file()
    assert "train progress" in json.dumps(card)


def test_forecast_writes_derivatives_and_resumes(cohort_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    bids, model = cohort_and_model
    out = tmp_path / "out"
    args = ["forecast", str(bids), str(out), "participant", "--model", str(model), "--horizons", "0,1,2",
            "--samples", "2", "--participant-label", "001", "--set", "diagnosis=AD"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    tsv = next(out.glob("sub-001/ses-*/anat/*_desc-forecast_volumes.tsv"))
    table = pd.read_csv(tsv, sep="\t")
    assert sorted(table.horizon_years.unique()) == [0.0, 1.0, 2.0]
    assert (table[table.horizon_years == 0].change_percent_mean.abs() < 1e-9).all()
    ds = xr.open_dataset(next(out.glob("sub-001/ses-*/anat/*_desc-forecast_volumes.nc")))
    assert ds["volume"].dims == ("horizon", "region", "sample") and ds.attrs["diagnosis"] == "AD"
    ds.close()
    img = next(out.glob("sub-001/ses-*/anat/*_desc-forecast_T1w.nii.gz"))
    side = json.loads(img.with_name(img.name.replace(".nii.gz", ".json")).read_text())
    assert side["Horizons"] == [0.0, 1.0, 2.0] and side["CovariateOverrides"] == {"diagnosis": "AD"}
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "1 skipped" in again.output
    assert not list(out.rglob("*.tmp*"))


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--set", "colour=blue"], 2, "NAME=VALUE"),
        (["--set", "diagnosis=flu"], 2, "CN, MCI or AD"),
        (["--horizons", "1,x"], 2, "comma"),
        (["--horizons", "-1"], 2, "between 0 and 30"),
    ],
)
def test_forecast_refuses_bad_options(cohort_and_model: tuple[Path, Path], tmp_path: Path, extra, code, message) -> None:
    bids, model = cohort_and_model
    res = CliRunner().invoke(cli, ["forecast", str(bids), str(tmp_path / "o"), "participant", "--model", str(model), *extra])
    assert res.exit_code == code
    assert message in res.output


def test_forecast_refuses_a_missing_or_broken_model(cohort_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    bids, model = cohort_and_model
    res = CliRunner().invoke(cli, ["forecast", str(bids), str(tmp_path / "o"), "participant", "--model", str(tmp_path / "nope")])
    assert res.exit_code == 68 and "no progression model" in res.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_card.json").write_text((model / "model_card.json").read_text())
    (broken / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:100])
    res = CliRunner().invoke(cli, ["forecast", str(bids), str(tmp_path / "o2"), "participant", "--model", str(broken)])
    assert res.exit_code == 68
    assert "broken" in res.output


def test_train_calibrate_stores_the_spread_in_the_card(cohort_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    bids, model = cohort_and_model
    out = tmp_path / "calibrated"
    res = CliRunner().invoke(cli, ["train", "calibrate", str(model), str(bids), "--output-model-dir", str(out),
                                   "--samples", "3", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "spread" in res.output and "coverage" in res.output
    card = json.loads((out / "model_card.json").read_text())
    cal = card["extra"]["spread_calibration"]
    assert card["extra"]["sample_spread"] == pytest.approx(cal["spread"]) and cal["spread"] > 0
    assert cal["n_subjects"] == 2 and cal["n_cases"] == 2 * 2 * 4  # 2 subjects x 2 follow-ups x 4 regions
    assert "synthetic" in card["extra"]["note"].lower()  # the training note survives
    assert len(pd.read_csv(out / "calibration_cases.tsv", sep="\t")) == cal["n_cases"]
    # the original model is untouched
    original = json.loads((model / "model_card.json").read_text())["extra"]
    assert original["sample_spread"] == 1.0 and "spread_calibration" not in original


def test_train_refuses_channels_the_network_cannot_take_before_reading_data(tmp_path: Path) -> None:
    run = CliRunner().invoke(cli, ["train", "progress", str(tmp_path), str(tmp_path / "model"), "--channels", "12,24", "-q"])
    assert run.exit_code == 2 and "multiple of norm_num_groups=8" in run.output, run.output
    assert not (tmp_path / "model").exists()
