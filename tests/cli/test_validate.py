"""`neurocast validate` prints what will be used and exits non-zero on unusable datasets."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from nc_testutils import make_bids
from neurocast.cli.main import cli
from neurocast.errors import EXIT_CODES


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_commands() -> None:
    result = _run("--help")
    assert result.exit_code == 0
    assert "validate" in result.output


def test_valid_dataset(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl", "m12"], "02": ["bl"]})
    result = _run("validate", str(root), "--tsv", str(tmp_path / "scans.tsv"))
    assert result.exit_code == 0, result.output
    assert "2 participant(s), 3 session(s), 3 T1w scan(s)" in result.output
    assert "sub-01: ses-bl @ 0.00 y, ses-m12 @ 1.50 y" in result.output
    assert "dataset is valid" in result.output
    assert (tmp_path / "scans.tsv").read_text().count("\tok\n") == 3


def test_corrupt_scan_fails_with_its_name(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl"], "02": ["bl"]})
    bad = root / "sub-02" / "ses-bl" / "anat" / "sub-02_ses-bl_T1w.nii.gz"
    bad.write_text("not an image")
    result = _run("validate", str(root))
    assert result.exit_code == EXIT_CODES["invalid_input"]
    assert str(bad) in result.output


def test_bad_table_and_missing_dataset_and_empty_filter(tmp_path: Path) -> None:
    root = make_bids(
        tmp_path / "ds", {"01": ["bl"]}, participants_tsv="participant_id\tage\nsub-01\t-5\n"
    )
    result = _run("validate", str(root))
    assert result.exit_code == EXIT_CODES["invalid_input"]
    assert "participants.tsv" in result.output and "age" in result.output
    assert _run("validate", str(tmp_path / "nope")).exit_code == EXIT_CODES["invalid_dataset"]
    good = make_bids(tmp_path / "ok", {"01": ["bl"]})
    result = _run("validate", str(good), "--participant-label", "07")
    assert result.exit_code == EXIT_CODES["empty_selection"]
    assert "sub-07" in result.output


def test_deep_check_reads_voxels(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    root = make_bids(tmp_path / "ds", {"01": ["bl"]})
    path = root / "sub-01" / "ses-bl" / "anat" / "sub-01_ses-bl_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), np.eye(4)), str(path))
    assert _run("validate", str(root)).exit_code == 0  # header looks fine
    result = _run("validate", str(root), "--deep")
    assert result.exit_code == EXIT_CODES["invalid_input"] and "constant" in result.output
