"""Preprocessing of real T1w scans: plausible outputs, failures reported, determinism, no temp files."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from neurocast.errors import RegistrationFailedError
from neurocast.registration import preprocess as P
from neurocast.registration._ants import ants_seed
from neurocast.registration.template import working_grid
from neurocast.registration.threads import ITK_ENV, set_threads
from neurocast.registration.transforms import downsample_blocks, read_ants_affine, rigid_matrix


@pytest.fixture(scope="module")
def someones(shared_data) -> Path:
    return shared_data / "nibabel" / "someones_anatomy.nii.gz"


@pytest.fixture(scope="module")
def clean_tmp(tmp_path_factory) -> Path:
    """A private system temp folder: ANTs must leave nothing in it."""
    return tmp_path_factory.mktemp("systemp")


@pytest.fixture(scope="module")
def result(someones, clean_tmp, tmp_path_factory):
    """someones_anatomy preprocessed, with the system temp folder redirected to ``clean_tmp``
    and a separate ``work_dir``; both must be empty afterwards."""
    work = tmp_path_factory.mktemp("work")
    old = tempfile.tempdir
    tempfile.tempdir = str(clean_tmp)
    try:
        res = P.preprocess_t1w(someones, seed=3, work_dir=work)
    finally:
        tempfile.tempdir = old
    return res, work


def test_outputs_are_plausible(result):
    res, _ = result
    grid = working_grid(2.0)
    assert res.grid == grid
    assert res.image.shape == grid.shape and res.image.get_data_dtype() == np.float32
    assert np.allclose(res.image.affine, grid.affine)
    assert res.brain_mask.get_data_dtype() == np.uint8
    assert res.qc["passed"] and res.qc["reasons"] == []
    assert res.qc["similarity"] >= P.MIN_SIMILARITY
    lo, hi = P.MASK_VOLUME_RANGE_ML
    assert lo <= res.qc["mask_volume_ml"] <= hi
    img = np.asarray(res.image.dataobj)
    mask = np.asarray(res.brain_mask.dataobj) > 0
    assert np.all(img[~mask] == 0), "output must be zero outside the brain mask"
    # white-matter peak normalised to 1: the brighter half of the brain sits around 1
    assert 0.8 < np.percentile(img[mask], 75) < 1.2
    assert img.max() <= P.INTENSITY_CLIP
    assert np.allclose(res.native_to_template @ res.template_to_native, np.eye(4))
    assert nib.aff2axcodes(res.native.affine) == ("R", "A", "S")
    assert res.native_brain_mask.shape == res.native.shape
    assert set(res.qc["seconds"]) >= {"n4", "registration", "mask", "total"}


def test_no_ants_files_left_behind(result, clean_tmp):
    _, work = result
    assert list(clean_tmp.iterdir()) == [], "files left in the system temp folder"
    assert list(Path(work).iterdir()) == [], "files left in work_dir"


@pytest.mark.slow
def test_same_seed_gives_identical_outputs(result, someones):
    res, _ = result
    again = P.preprocess_t1w(someones, seed=3)
    assert np.array_equal(res.native_to_template, again.native_to_template)
    assert np.array_equal(np.asarray(res.image.dataobj), np.asarray(again.image.dataobj))
    assert np.array_equal(np.asarray(res.brain_mask.dataobj), np.asarray(again.brain_mask.dataobj))


def test_save_writes_bids_names_and_transforms(result, tmp_path):
    res, _ = result
    paths = res.save(tmp_path, "sub-01_ses-02")
    names = {p.name for p in paths.values()}
    assert "sub-01_ses-02_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz" in names
    assert "sub-01_ses-02_space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz" in names
    assert "sub-01_ses-02_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat" in names
    assert "sub-01_ses-02_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.mat" in names
    assert all(p.is_file() for p in paths.values())
    # the image-mode transform into the template maps template points to T1w points
    assert np.allclose(
        read_ants_affine(paths["xfm_to_template"]), res.template_to_native, atol=1e-6
    )
    assert np.allclose(read_ants_affine(paths["xfm_to_native"]), res.native_to_template, atol=1e-6)
    saved = nib.load(paths["image"])
    assert np.allclose(saved.get_fdata(), np.asarray(res.image.dataobj))
    with pytest.raises(ValueError):
        res.save(tmp_path, "subject 1")


def test_empty_mask_is_refused(result, tmp_path):
    res, _ = result
    empty = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="empty"):
        P.masked_ncc(np.ones((4, 4, 4)), np.ones((4, 4, 4)), empty)
    with pytest.raises(ValueError, match="empty"):
        P.normalise_intensity(np.ones((4, 4, 4)), empty)
    import dataclasses

    hollow = dataclasses.replace(res, brain_mask=res.grid.image(np.zeros(res.grid.shape, np.uint8)))
    with pytest.raises(RegistrationFailedError, match="empty"):
        hollow.save(tmp_path, "sub-01")
    assert not any(tmp_path.iterdir())


def test_noise_is_reported_as_failed():
    rng = np.random.default_rng(0)
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = [-80, -110, -75]
    noise = nib.Nifti1Image(rng.random((40, 50, 40)).astype(np.float32) * 100, aff)
    with pytest.raises(RegistrationFailedError, match="failed quality control"):
        P.preprocess_t1w(noise)


def test_diverged_registration_is_reported(someones):
    """An absurd start (90 degrees, 60 mm off) with no search: the QC must say failed."""
    absurd = rigid_matrix((90.0, 0.0, 45.0), (60.0, -40.0, 30.0))
    res = P.preprocess_t1w(
        someones, initial_transform=absurd, on_fail="report", skull_stripped=True
    )
    assert res.skull_stripped  # the caller's word overrides the detection
    assert not res.qc["passed"]
    assert res.qc["reasons"]
    assert res.qc["similarity"] < P.MIN_SIMILARITY


def ixi_low(shared_data: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """IXI033 at 4 mm (whole head) and the same skull-stripped with its label map."""
    from neurocast.io import load_image

    img = load_image(shared_data / "ixi" / "IXI033-HH-1259-T1_ds.nii.gz")
    lab = load_image(shared_data / "ixi" / "IXI033-HH-1259-T1_ds_DLMUSE.nii.gz").get_fdata() > 0
    brain = ndi.binary_fill_holes(ndi.binary_dilation(lab, iterations=1))
    d, a = downsample_blocks(img.get_fdata(dtype=np.float32), img.affine, (2, 2, 2))
    s, _ = downsample_blocks(img.get_fdata(dtype=np.float32) * brain, img.affine, (2, 2, 2))
    return nib.Nifti1Image(d, a), nib.Nifti1Image(s, a)


@pytest.mark.slow
def test_whole_head_and_skull_stripped_both_give_plausible_masks(shared_data):
    whole, stripped = ixi_low(shared_data)
    lo, hi = P.MASK_VOLUME_RANGE_ML
    rw = P.preprocess_t1w(whole)
    rs = P.preprocess_t1w(stripped)
    assert rw.qc["passed"] and rs.qc["passed"]
    assert not rw.skull_stripped and rw.qc["skull_band_fraction"] > P.SKULL_BAND_THRESHOLD
    assert rs.skull_stripped and rs.qc["skull_band_fraction"] <= P.SKULL_BAND_THRESHOLD
    for r in (rw, rs):
        assert lo <= r.qc["mask_volume_ml"] <= hi
    # the two masks describe the same brain: large overlap in template space
    mw = np.asarray(rw.brain_mask.dataobj) > 0
    ms = np.asarray(rs.brain_mask.dataobj) > 0
    dice = 2 * (mw & ms).sum() / (mw.sum() + ms.sum())
    assert dice > 0.85


def test_helpers():
    rng = np.random.default_rng(1)
    v = np.r_[rng.normal(10, 1, 1000), rng.normal(50, 1, 1000)]
    t = P.otsu_threshold(v)
    assert abs(int((v < t).sum()) - 1000) <= 5
    c = P.kmeans_1d(np.r_[v, rng.normal(90, 1, 1000)], 3)
    assert np.allclose(c, [10, 50, 90], atol=1)
    # the white-matter peak ignores a few very bright outliers
    brain = np.r_[
        rng.normal(0.3, 0.05, 3000), rng.normal(0.65, 0.05, 5000), rng.normal(1.0, 0.04, 5000)
    ]
    peak = P.white_matter_peak(brain)
    assert peak == pytest.approx(1.0, abs=0.05)
    assert P.white_matter_peak(np.r_[brain, np.full(60, 50.0)]) == pytest.approx(peak, abs=0.05)
    m = np.zeros((21, 21, 21), bool)
    m[10, 10, 10] = True
    ball = P.dilate_mm(m, 5.0, (1, 1, 1))
    assert ball.sum() == pytest.approx(4 / 3 * np.pi * 125, rel=0.1)
    assert P.erode_mm(ball, 2.0, (1, 1, 1)).sum() < ball.sum()
    assert P.largest_component(np.zeros((3, 3, 3), bool)).sum() == 0
    assert P.resolution_label(working_grid(1.5)) == "1p5"
    assert P.resolution_label(working_grid(2.0)) == "2"


def test_on_fail_is_checked(someones):
    with pytest.raises(ValueError, match="on_fail"):
        P.preprocess_t1w(someones, on_fail="ignore")


def test_ants_seed_never_zero():
    # ANTs reads --random-seed 0 as "seed from the clock": neurocast's seed 0 must not map to it
    assert ants_seed(0) == 1
    with pytest.raises(ValueError):
        ants_seed(-1)


def test_set_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv(ITK_ENV, raising=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # ITK may already have run in this process
            info = set_threads(1)
        assert info["itk_env"] == "1"
        assert torch.get_num_threads() == 1
        assert info["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        set_threads(-2)


def test_set_threads_warns_only_when_itk_kept_another_count(monkeypatch):
    """Every step of a batch asks for the thread count again: the count ITK already runs with is
    silent, another one gets a warning that names the count ITK kept."""
    import torch

    from neurocast.registration import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_itk_used", True)
    monkeypatch.setattr(threads, "_itk_threads", "1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            assert set_threads(1)["itk_fixed"] is True
        with pytest.warns(RuntimeWarning, match=r"keeps its first thread count \(1\)"):
            set_threads(2)
    finally:
        torch.set_num_threads(before)


def test_mark_itk_used_records_the_count_of_the_first_use_only(monkeypatch):
    from neurocast.registration import threads

    monkeypatch.setattr(threads, "_itk_used", False)
    monkeypatch.setattr(threads, "_itk_threads", None)
    monkeypatch.setenv(ITK_ENV, "3")
    threads.mark_itk_used()
    monkeypatch.setenv(ITK_ENV, "5")
    threads.mark_itk_used()
    assert threads._itk_threads == "3"
