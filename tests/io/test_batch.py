"""Participant runner: failures isolated and logged, lock held, Dask path gives the same results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from neurocast.errors import InvalidImageError, OutputError
from neurocast.io.batch import Skipped, output_lock, run_participants


def _work(label: str) -> str:
    if label == "bad":
        raise InvalidImageError(f"sub-{label}_T1w.nii.gz", "image is 2-D")
    if label == "crash":
        raise ZeroDivisionError("boom")
    if label == "old":
        raise Skipped("cached")
    return label.upper()


def test_failures_are_isolated_and_logged(tmp_path: Path) -> None:
    s = run_participants(
        ["a", "bad", "crash", "old", "b"], _work, tmp_path, step="t", progress=False
    )
    assert [r.status for r in s.results] == ["done", "failed", "failed", "skipped", "done"]
    assert (s.n_done, s.n_failed, s.n_skipped) == (2, 2, 1)
    failures = pd.read_csv(tmp_path / "logs" / "failures.tsv", sep="\t")
    assert list(failures["participant_id"]) == ["sub-bad", "sub-crash"]
    assert "image is 2-D" in failures["error"][0] and "sub-bad_T1w.nii.gz" in failures["error"][0]
    assert "ZeroDivisionError" in (tmp_path / "logs" / "sub-crash_t.log").read_text()
    # a rerun where the participant now succeeds clears its failure row
    run_participants(["bad"], lambda label: 1, tmp_path, step="t", progress=False)
    failures = pd.read_csv(tmp_path / "logs" / "failures.tsv", sep="\t")
    assert list(failures["participant_id"]) == ["sub-crash"]


def test_lock_refuses_a_second_run(tmp_path: Path) -> None:
    with output_lock(tmp_path), pytest.raises(OutputError, match="in use by another neurocast run"):
        run_participants(["a"], _work, tmp_path, step="t", progress=False)
    assert run_participants(["a"], _work, tmp_path, step="t", progress=False).n_done == 1


@pytest.mark.slow
def test_local_dask_cluster_gives_same_results(tmp_path: Path) -> None:
    labels = ["a", "bad", "b", "c"]
    local = run_participants(labels, _work, tmp_path / "l", step="t", progress=False)
    dask = run_participants(labels, _work, tmp_path / "d", step="t", n_workers=2, progress=False)
    assert [
        (r.participant, r.status, r.value if r.status == "done" else None) for r in dask.results
    ] == [(r.participant, r.status, r.value if r.status == "done" else None) for r in local.results]
