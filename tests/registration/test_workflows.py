"""Dataset-level preprocessing: outputs, QC table, failure isolation and resume (stubbed registration)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import neurocast.registration.preprocess as pp
from nc_testutils import make_bids
from neurocast.registration.template import Grid
from neurocast.registration.workflows import preprocess_dataset


def _fake_result(passed: bool) -> pp.PreprocessResult:
    grid = Grid((4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    img = grid.image(np.ones(grid.shape, np.float32))
    mask = grid.image(np.ones(grid.shape, np.uint8))
    qc = {"passed": passed, "similarity": 0.8 if passed else 0.1, "mask_volume_ml": 1400.0,
          "reasons": [] if passed else ["similarity 0.10 under 0.5"]}  # fmt: skip
    return pp.PreprocessResult(img, mask, img, mask, np.eye(4), False, qc, grid, {})


@pytest.fixture
def stub(monkeypatch):
    calls: list[str] = []
    outcomes: dict[str, list[bool]] = {}

    def fake(path, **kwargs):
        calls.append(Path(path).name)
        queue = outcomes.get(Path(path).name, [True])
        return _fake_result(queue.pop(0) if len(queue) > 1 else queue[0])

    monkeypatch.setattr(pp, "preprocess_t1w", fake)
    return calls, outcomes


def test_outputs_qc_failure_and_resume(tmp_path: Path, stub) -> None:
    calls, outcomes = stub
    root = make_bids(tmp_path / "ds", {"01": ["bl", "m12"], "02": ["bl"]})
    outcomes["sub-02_ses-bl_T1w.nii.gz"] = [False, True]  # fails once, then passes
    out = tmp_path / "out"
    summary, qc = preprocess_dataset(root, out, progress=False)
    assert (summary.n_done, summary.n_failed) == (1, 1)
    assert list(qc["participant_id"]) == ["sub-01", "sub-01"]
    anat = out / "sub-01" / "ses-bl" / "anat"
    names = {p.name for p in anat.iterdir()}
    assert "sub-01_ses-bl_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz" in names
    assert "sub-01_ses-bl_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat" in names
    assert "sub-01_ses-bl_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.json" in names
    failures = pd.read_csv(out / "logs" / "failures.tsv", sep="\t")
    assert (
        list(failures["participant_id"]) == ["sub-02"]
        and "failed its checks" in failures["error"][0]
    )
    assert not list(
        (out / "sub-02" / "ses-bl" / "anat").glob("*.nii.gz")
    )  # nothing but the QC record

    calls.clear()
    summary, qc = preprocess_dataset(root, out, progress=False)
    assert calls == ["sub-02_ses-bl_T1w.nii.gz"]  # sub-01 reused, failed sub-02 retried
    assert (summary.n_done, summary.n_skipped, summary.n_failed) == (1, 1, 0)
    assert len(qc) == 3 and qc["passed"].all()
    assert not pd.read_csv(out / "logs" / "failures.tsv", sep="\t").shape[0]
    assert nib.load(str(anat / "sub-01_ses-bl_desc-brain_mask.nii.gz")).shape == (4, 4, 4)


def _aligned_baseline_only(grid: Grid):
    """A stand-in for ``align_subject``: every visit a uniform image on ``grid``, no follow-up fits."""
    from types import SimpleNamespace

    def fake_align(visits, **kwargs):
        keys = list(visits)
        image = grid.image(np.ones(grid.shape, np.float32))
        mask = grid.image(np.ones(grid.shape, np.uint8))
        return SimpleNamespace(
            sessions=keys, baseline=keys[0], images=dict.fromkeys(keys, image),
            masks=dict.fromkeys(keys, mask), native_to_template=dict.fromkeys(keys, np.eye(4)),
            velocities={}, fits={}, qc={"passed": True}, preprocessing={},
        )  # fmt: skip

    return fake_align


def test_register_names_the_participant_when_the_atlas_cannot_be_fitted(tmp_path, monkeypatch):
    """A failed atlas fit fails that participant with a message naming the scan and the way out
    (``--atlas-labels template``), which then measures on the template atlas."""
    import neurocast.registration.longitudinal as longitudinal
    import neurocast.registration.volumes as volumes
    from neurocast.registration.template import working_grid
    from neurocast.registration.workflows import register_dataset

    grid = working_grid(2.0)

    def broken_fit(*args, **kwargs):
        raise RuntimeError("antsRegistration failed with exit code 1")

    monkeypatch.setattr(longitudinal, "align_subject", _aligned_baseline_only(grid))
    monkeypatch.setattr(volumes, "atlas_to_subject", broken_fit)
    root = make_bids(tmp_path / "ds", {"01": ["bl"]})
    out = tmp_path / "out"
    summary = register_dataset(root, out, progress=False)
    assert (summary.n_done, summary.n_failed) == (0, 1)
    error = pd.read_csv(out / "logs" / "failures.tsv", sep="\t")["error"][0]
    assert "sub-01" in error and "sub-01_ses-bl_T1w.nii.gz" in error
    assert "--atlas-labels template" in error
    summary = register_dataset(root, out, progress=False, atlas_labels="template")
    assert (summary.n_done, summary.n_failed) == (1, 0)
    volumes_tsv = out / "sub-01" / "anat" / "sub-01_space-MNI152NLin2009aSym_desc-atlas_volumes.tsv"
    assert pd.read_csv(volumes_tsv, sep="\t")["volume_mm3"].gt(0).any()


def test_register_fits_the_atlas_on_its_own_grid_and_writes_labels_on_the_working_grid(
    tmp_path, monkeypatch
):
    """On a working grid other than the atlas's 2 mm, the subject fit still runs against the atlas
    on its own grid (the cost of the SyN is set by that grid), and the labels it returns, on the
    baseline's grid, are what ``register`` writes and measures on."""
    import neurocast.registration.longitudinal as longitudinal
    import neurocast.registration.volumes as volumes
    from neurocast.registration.atlas import load_atlas
    from neurocast.registration.template import working_grid
    from neurocast.registration.workflows import register_dataset

    grid = working_grid(3.0)
    seen = {}

    def fake_fit(image, mask, atlas, **kwargs):
        seen["atlas_grid"] = atlas.grid
        return load_atlas().resample(grid).labels  # labels on the baseline's grid

    monkeypatch.setattr(longitudinal, "align_subject", _aligned_baseline_only(grid))
    monkeypatch.setattr(volumes, "atlas_to_subject", fake_fit)
    root = make_bids(tmp_path / "ds", {"01": ["bl"]})
    out = tmp_path / "out"
    summary = register_dataset(root, out, progress=False, grid_spacing_mm=3.0)
    assert (summary.n_done, summary.n_failed) == (1, 0)
    assert seen["atlas_grid"] == load_atlas().grid != grid
    name = "sub-01_ses-bl_space-MNI152NLin2009aSym_res-3_atlas-neurocast_desc-subject_dseg.nii.gz"
    dseg = out / "sub-01" / "ses-bl" / "anat" / name
    assert nib.load(str(dseg)).shape == grid.shape
