"""A scan's preprocessing is written once to the derivatives folder and read back exactly by the
later steps (``neurocast.registration.preprocessed``), and only when it was made the same way."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import neurocast.registration.preprocess as pp
from nc_testutils import make_bids
from neurocast.io.bids import discover
from neurocast.io.derivatives import DerivativesWriter
from neurocast.registration.preprocessed import (
    load_preprocessed,
    preprocess_or_load,
    save_preprocessed,
)
from neurocast.registration.template import Grid, working_grid

SPACING = 8.0  # a standard working grid, small enough to write in milliseconds


def _native(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # as preprocess_t1w sets it: through the header
    img.set_sform(affine, code=1)
    return img


def _result(passed: bool = True, seed: int = 0) -> pp.PreprocessResult:
    """A preprocessing result on a rotated, anisotropic native grid with an odd origin."""
    rng = np.random.default_rng(seed)
    grid = working_grid(SPACING)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot * 1.2
    affine[:3, 3] = [-90.123456789012, 101.98765432101, -70.5555555555]
    native = _native(rng.normal(1, 0.3, (9, 11, 8)).astype(np.float32), affine)
    native_mask = _native((rng.random((9, 11, 8)) > 0.4).astype(np.uint8), affine)
    n2t = np.eye(4)
    n2t[:3, :3] += rng.normal(0, 0.01, (3, 3))
    n2t[:3, 3] = rng.normal(0, 3, 3)
    qc = {"passed": passed, "similarity": 0.81234567891, "mask_volume_ml": 1400.5,
          "scales": [1.01, 0.99, 1.02], "reasons": [] if passed else ["similarity 0.1 < 0.5"]}  # fmt: skip
    return pp.PreprocessResult(
        image=grid.image(rng.random(grid.shape).astype(np.float32)),
        brain_mask=grid.image((rng.random(grid.shape) > 0.5).astype(np.uint8), dtype=np.uint8),
        native=native, native_brain_mask=native_mask, native_to_template=n2t,
        skull_stripped=True, qc=qc, grid=grid, params={"seed": 0, "source": "x"},
    )  # fmt: skip


@pytest.fixture
def dataset(tmp_path: Path):
    root = make_bids(tmp_path / "ds", {"01": ["bl", "m12"]})
    participant = discover(root).participants[0]
    writer = DerivativesWriter(tmp_path / "out", source_datasets=[str(root)])
    return participant, writer


def test_a_saved_preprocessing_reads_back_bit_for_bit(dataset) -> None:
    participant, writer = dataset
    session = participant.sessions[0]
    saved = _result()
    row = save_preprocessed(writer, participant, session, saved, skull_stripped=None, seed=3)
    assert row["passed"] and row["session_id"] == "ses-bl"
    got = load_preprocessed(writer, participant, session, grid=working_grid(SPACING), seed=3)
    assert got is not None
    for key in ("image", "brain_mask", "native", "native_brain_mask"):
        a, b = np.asarray(getattr(saved, key).dataobj), np.asarray(getattr(got, key).dataobj)
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    assert np.array_equal(got.native.affine, saved.native.affine)
    assert np.array_equal(got.native_brain_mask.affine, saved.native.affine)
    assert np.array_equal(got.native_to_template, saved.native_to_template)
    assert got.qc == saved.qc and got.params == saved.params
    assert got.skull_stripped is True and got.grid == saved.grid
    assert got.native.header.get_zooms() == saved.native.header.get_zooms()


def test_reuse_is_refused_unless_made_the_same_way_from_the_same_bytes(dataset) -> None:
    participant, writer = dataset
    bl, m12 = participant.sessions
    grid = working_grid(SPACING)
    save_preprocessed(writer, participant, bl, _result(), skull_stripped=None, seed=0)
    assert load_preprocessed(writer, participant, bl, grid=grid) is not None
    assert load_preprocessed(writer, participant, bl, grid=grid, seed=1) is None
    assert load_preprocessed(writer, participant, bl, grid=grid, skull_stripped=True) is None
    assert load_preprocessed(writer, participant, bl, grid=working_grid(4.0)) is None
    shifted = grid.affine.copy()
    shifted[0, 3] += 1.0  # same spacing, another box: not a grid the preprocess step writes
    assert load_preprocessed(writer, participant, bl, grid=Grid(grid.shape, shifted)) is None
    assert load_preprocessed(writer, participant, m12, grid=grid) is None  # never saved

    # a failed scan keeps its QC record only, and is never reused
    row = save_preprocessed(
        writer, participant, m12, _result(passed=False), skull_stripped=None, seed=0
    )
    assert not row["passed"]
    assert not list(writer.path("sub-01/ses-m12/anat").glob("*.nii.gz"))
    assert load_preprocessed(writer, participant, m12, grid=grid) is None

    # a damaged output, then changed input bytes
    native = writer.path("sub-01/ses-bl/anat/sub-01_ses-bl_desc-preproc_T1w.nii.gz")
    good = native.read_bytes()
    native.write_bytes(good[:-10])
    assert load_preprocessed(writer, participant, bl, grid=grid) is None
    native.write_bytes(good)
    assert load_preprocessed(writer, participant, bl, grid=grid) is not None
    src = bl.t1w[0]
    img = nib.load(src)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1.0, img.affine), str(src))
    assert load_preprocessed(writer, participant, bl, grid=grid) is None


def test_preprocess_or_load_preprocesses_once(dataset, monkeypatch) -> None:
    participant, writer = dataset
    calls = []

    def fake(path, **kwargs):
        calls.append(Path(path).name)
        return _result()

    monkeypatch.setattr(pp, "preprocess_t1w", fake)
    session = participant.sessions[1]
    first, reused = preprocess_or_load(writer, participant, session, grid=working_grid(SPACING))
    assert not reused and calls == ["sub-01_ses-m12_T1w.nii.gz"]
    again, reused = preprocess_or_load(writer, participant, session, grid=working_grid(SPACING))
    assert reused and len(calls) == 1
    assert np.array_equal(np.asarray(again.native.dataobj), np.asarray(first.native.dataobj))
    # a failed result is returned, not saved: the next call preprocesses again
    monkeypatch.setattr(
        pp, "preprocess_t1w", lambda path, **kw: calls.append(path) or _result(False)
    )
    bad, reused = preprocess_or_load(
        writer, participant, participant.sessions[0], grid=working_grid(SPACING)
    )
    assert not reused and not bad.qc["passed"]
    preprocess_or_load(writer, participant, participant.sessions[0], grid=working_grid(SPACING))
    assert len(calls) == 3


def test_register_reuses_the_preprocess_step_and_leaves_its_own_for_the_next(tmp_path, monkeypatch):
    """After ``preprocess``, ``register`` preprocesses nothing; run first, it writes what
    ``preprocess`` would, so that ``preprocess`` (and ``qa``) then find every scan done."""
    from types import SimpleNamespace

    import neurocast.registration.longitudinal as longitudinal
    from neurocast.registration.workflows import preprocess_dataset, register_dataset

    grid = working_grid(SPACING)
    calls, given = [], []

    def fake_preprocess(path, **kwargs):
        calls.append(Path(path).name)
        return _result(seed=len(calls))

    def fake_align(visits, *, preprocessed=None, **kwargs):
        keys = list(visits)
        given.append(sorted(preprocessed or {}))
        done = dict(preprocessed or {})
        for k in (k for k in keys if k not in done):
            done[k] = pp.preprocess_t1w(visits[k])
        image = grid.image(np.ones(grid.shape, np.float32))
        mask = grid.image(np.ones(grid.shape, np.uint8), dtype=np.uint8)
        return SimpleNamespace(
            sessions=keys, baseline=keys[0], images=dict.fromkeys(keys, image),
            masks=dict.fromkeys(keys, mask), native_to_template=dict.fromkeys(keys, np.eye(4)),
            velocities={}, fits={}, qc={"passed": True}, preprocessing=done,
        )  # fmt: skip

    monkeypatch.setattr(pp, "preprocess_t1w", fake_preprocess)
    monkeypatch.setattr(longitudinal, "align_subject", fake_align)
    root = make_bids(tmp_path / "ds", {"01": ["bl", "m12"], "02": ["bl"]})
    first = tmp_path / "first"
    preprocess_dataset(root, first, grid_spacing_mm=SPACING, progress=False)
    assert len(calls) == 3
    calls.clear()
    summary = register_dataset(root, first, grid_spacing_mm=SPACING, atlas_labels="template",
                               progress=False)  # fmt: skip
    assert summary.n_done == 2 and calls == [] and given == [["bl", "m12"], ["bl"]]

    given.clear()
    other = tmp_path / "other"
    register_dataset(root, other, grid_spacing_mm=SPACING, atlas_labels="template", progress=False)
    assert len(calls) == 3 and given == [[], []]
    calls.clear()
    summary, qc = preprocess_dataset(root, other, grid_spacing_mm=SPACING, progress=False)
    assert calls == [] and summary.n_skipped == 2 and len(qc) == 3 and qc["passed"].all()
    # register's own outputs (its per-visit mask included) leave the preprocessing intact
    writer = DerivativesWriter(other)
    for participant in discover(root).participants:
        for session in participant.sessions:
            assert load_preprocessed(writer, participant, session, grid=grid) is not None
    anat = other / "sub-01" / "ses-bl" / "anat"
    assert (
        anat / "sub-01_ses-bl_space-MNI152NLin2009aSym_res-8_desc-longitudinal_mask.nii.gz"
    ).is_file()
