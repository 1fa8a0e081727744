"""BIDS discovery on small trees built here: with and without sessions, filters, warnings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nc_testutils import make_bids
from neurocast.errors import EmptySelectionError, InvalidDatasetError, InvalidTableError
from neurocast.io.bids import discover, normalise_label


def test_dataset_with_sessions(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl", "m12"], "02": ["bl"]})
    ds = discover(root)
    assert [p.label for p in ds.participants] == ["01", "02"]
    p1 = ds.participant("sub-01")
    assert [s.label for s in p1.sessions] == ["bl", "m12"]
    assert [s.time_years for s in p1.sessions] == [0.0, 1.5]
    assert p1.covariates["diagnosis"] == "CN" and p1.covariates["apoe4"] == 0
    assert ds.n_scans == 3
    assert ds.warnings == []


def test_dataset_without_sessions(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"a1": None, "b2": None})
    ds = discover(root)
    assert [(p.label, p.sessions[0].label, p.sessions[0].entity) for p in ds.participants] == [
        ("a1", None, ""),
        ("b2", None, ""),
    ]


def test_sessions_ordered_by_time_not_name(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["b", "a"]}, sessions_tsv=False)
    (root / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-a\t2021-06-01\nses-b\t2020-06-01\n"
    )
    sessions = discover(root).participants[0].sessions
    assert [s.label for s in sessions] == ["b", "a"]
    assert sessions[1].time_years == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("labels", [["01"], ["sub-01"], ["sub-01", "03"]])
def test_participant_filter_accepts_prefix_or_not(tmp_path: Path, labels) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl"], "02": ["bl"], "03": ["bl"]})
    got = [p.label for p in discover(root, participant_label=labels).participants]
    assert got == sorted(normalise_label(x, "sub") for x in labels)


def test_session_filter(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl", "m12"], "02": ["bl"]})
    ds = discover(root, session_label=["ses-m12"])
    assert [(p.label, [s.label for s in p.sessions]) for p in ds.participants] == [("01", ["m12"])]


def test_filters_that_select_nothing(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl"]})
    with pytest.raises(EmptySelectionError, match="sub-99"):
        discover(root, participant_label=["99"])
    with pytest.raises(EmptySelectionError, match="ses-x"):
        discover(root, session_label=["x"])


@pytest.mark.parametrize("label", ["../etc", "sub-01/../../x", "a b", "", "01;rm"])
def test_malicious_or_invalid_labels_are_refused(tmp_path: Path, label: str) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl"]})
    with pytest.raises(ValueError, match="invalid sub label"):
        discover(root, participant_label=[label])


def test_not_a_bids_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError, match="does not exist"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDatasetError, match="no sub-<label> folders"):
        discover(tmp_path / "empty")


def test_missing_participants_tsv_is_a_warning(tmp_path: Path) -> None:
    ds = discover(make_bids(tmp_path / "ds", {"01": ["bl"]}, participants_tsv=None))
    assert ds.participants[0].covariates == {}
    assert any("participants.tsv: missing" in w for w in ds.warnings)


def test_invalid_participants_tsv_is_an_error(tmp_path: Path) -> None:
    root = make_bids(
        tmp_path / "ds", {"01": ["bl"]}, participants_tsv="participant_id\tage\nsub-01\tabc\n"
    )
    with pytest.raises(InvalidTableError, match="'abc'"):
        discover(root)


def test_session_without_t1w_and_mismatched_names(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"01": ["bl", "m12"]})
    (root / "sub-01" / "ses-m12" / "anat" / "sub-01_ses-m12_T1w.nii.gz").unlink()
    stray = root / "sub-01" / "ses-bl" / "anat" / "sub-02_ses-bl_T1w.nii.gz"
    stray.write_bytes(b"")
    ds = discover(root)
    assert [s.label for s in ds.participants[0].sessions] == ["bl"]
    assert any("no T1w" in w for w in ds.warnings)
    assert any("does not match its folder" in w for w in ds.warnings)


def test_symlink_loop_and_spaces_and_unicode_paths(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "my data ü", {"01": ["bl"]})
    os.symlink(root / "sub-01", root / "sub-01" / "ses-bl" / "anat" / "loop")
    os.symlink(
        "sub-01_ses-bl_T1w.nii.gz",
        root / "sub-01" / "ses-bl" / "anat" / "sub-01_ses-bl_run-2_T1w.nii.gz",
    )
    os.symlink(
        "nowhere.nii.gz", root / "sub-01" / "ses-bl" / "anat" / "sub-01_ses-bl_run-3_T1w.nii.gz"
    )
    ds = discover(root)
    t1w = ds.participants[0].sessions[0].t1w
    assert [p.name for p in t1w] == ["sub-01_ses-bl_T1w.nii.gz", "sub-01_ses-bl_run-2_T1w.nii.gz"]
    assert any("not a readable file" in w for w in ds.warnings)
