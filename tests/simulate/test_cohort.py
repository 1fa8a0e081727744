"""A small simulated cohort: BIDS layout, truth consistent with the images, determinism."""

from __future__ import annotations

import itertools
import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from tests.simulate.conftest import N_SUBJECTS, files_under

from neurocast.io.bids import discover
from neurocast.io.tables import read_table
from neurocast.registration.deformation import integrate_velocity, volume_change_map, warp
from neurocast.simulate import read_velocity

TEMPLATE = "space-MNI152NLin2009aSym"


def _truth(cohort, pid, sid, pattern):
    sub, ses = pid[4:], sid[4:]
    folder = cohort.truth_root / pid / sid / "anat"
    found = sorted(folder.glob(f"sub-{sub}_ses-{ses}_*{pattern}"))
    assert len(found) == 1, f"{folder}: expected one file matching {pattern}, found {found}"
    return found[0]


def _array(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_bids_dataset_is_complete_and_valid(small_cohort):
    root = small_cohort.root
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["DatasetType"] == "raw"
    participants = read_table(root / "participants.tsv", "participants")
    assert list(participants.columns) == ["participant_id", "age", "sex", "diagnosis", "apoe4", "mmse"]
    assert len(participants) == N_SUBJECTS
    ds = discover(root)
    assert not [w for w in ds.warnings if "missing" in w]
    assert len(ds.participants) == N_SUBJECTS
    visits = small_cohort.visits
    for p in ds.participants:
        sessions = read_table(root / p.participant_id / f"{p.participant_id}_sessions.tsv", "sessions")
        assert list(sessions.columns) == ["session_id", "acq_time", "age", "diagnosis", "mmse"]
        truth = visits[visits.participant_id == p.participant_id]
        assert [s.entity for s in p.sessions] == truth.session_id.tolist()
        for s, (_, row) in zip(p.sessions, truth.iterrows(), strict=True):
            assert s.time_years == pytest.approx(row.time_years, abs=1e-6)
            assert len(s.t1w) == 1 and s.t1w[0].is_file()
            assert json.loads(s.t1w[0].with_name(s.t1w[0].name.replace(".nii.gz", ".json")).read_text())
        assert p.covariates["diagnosis"] in ("CN", "MCI", "AD")


def test_truth_tables_match_their_schemas(small_cohort):
    truth = small_cohort.truth_root
    assert json.loads((truth / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    subjects = read_table(truth / "subjects.tsv", "simulate_subjects")
    visits = read_table(truth / "visits.tsv", "simulate_visits")
    volumes = read_table(truth / "regional_volumes.tsv", "simulate_regional_volumes")
    assert len(subjects) == N_SUBJECTS
    assert len(visits) == 3 * N_SUBJECTS
    assert set(volumes.session_id) == set(visits.session_id)
    assert {"hippocampus", "ventricles"} <= set(volumes["group"].dropna())


def test_raw_images_are_native_scans_not_template_space(small_cohort):
    visits = small_cohort.visits
    for _, row in visits.iterrows():
        img = nib.load(str(small_cohort.raw_t1w(row.participant_id, row.session_id)))
        assert img.get_data_dtype() == np.int16
        assert "".join(nib.aff2axcodes(img.affine)) == row.orientation
        assert "x".join(str(n) for n in img.shape) == row.native_shape
        zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
        assert np.allclose(zooms, [float(x) for x in row.voxel_size_mm.split("x")])
        # oblique: the voxel axes are not aligned with the world axes
        cosines = np.abs(img.affine[:3, :3] / zooms)
        assert cosines.max(axis=0).min() < 0.99999


def test_native_to_template_transform_is_true(small_cohort):
    """Resampling a raw image into template space with the truth transform lands on the clean image."""
    from neurocast.registration.transforms import read_ants_affine, resample

    visits = small_cohort.visits
    for _, row in visits.iterrows():
        raw = nib.load(str(small_cohort.raw_t1w(row.participant_id, row.session_id)))
        clean_img = nib.load(str(_truth(small_cohort, row.participant_id, row.session_id, "desc-clean_T1w.nii.gz")))
        xfm = json.loads(_truth(small_cohort, row.participant_id, row.session_id, "mode-image_xfm.json").read_text())
        n2t = np.asarray(xfm["native_to_template"])
        assert np.allclose(n2t @ np.asarray(xfm["template_to_native"]), np.eye(4), atol=1e-8)
        mat = _truth(small_cohort, row.participant_id, row.session_id, "mode-image_xfm.mat")
        assert np.allclose(read_ants_affine(mat), np.linalg.inv(n2t), atol=1e-5)
        clean = np.asarray(clean_img.dataobj)
        mask = clean > 0.2 * clean.max()
        data = np.asarray(raw.dataobj, np.float32)

        def corr(world_to_native, data=data, raw=raw, clean_img=clean_img, clean=clean, mask=mask):
            moved = resample(data, raw.affine, clean_img.shape, clean_img.affine, world_matrix=world_to_native)
            return np.corrcoef(moved[mask], clean[mask])[0, 1]

        r_true = corr(np.linalg.inv(n2t))
        assert r_true > (0.4 if row.artefact != "none" else 0.6), (row.participant_id, row.session_id, r_true)
        for axis in range(3):  # a 4 mm shift of the transform fits worse than the truth
            shift = np.eye(4)
            shift[axis, 3] = 4.0
            assert corr(np.linalg.inv(n2t) @ shift) < r_true


def test_visit_is_the_baseline_warped_by_the_truth_field(small_cohort):
    visits = small_cohort.visits
    checked = 0
    for pid, rows in visits.groupby("participant_id"):
        base = _array(_truth(small_cohort, pid, rows.session_id.iloc[0], "desc-clean_T1w.nii.gz"))
        labels0 = _array(_truth(small_cohort, pid, rows.session_id.iloc[0], "atlas-neurocast_dseg.nii.gz"))
        for _, row in rows.iloc[1:].iterrows():
            v = read_velocity(_truth(small_cohort, pid, row.session_id, "desc-velocity_xfm.nii.gz"))
            u = integrate_velocity(v)
            jac = _array(_truth(small_cohort, pid, row.session_id, "desc-jacobian_map.nii.gz"))
            assert np.allclose(jac, volume_change_map(v, base.shape)[0, 0].numpy(), atol=1e-5)
            assert jac[labels0 > 0].mean() < 1.0  # the brain shrinks
            if row.tumour_present:
                continue
            visit = _array(_truth(small_cohort, pid, row.session_id, "desc-clean_T1w.nii.gz"))
            expected = warp(torch.from_numpy(base)[None, None], u)[0, 0].numpy()
            assert np.abs(visit - expected).max() < 1e-4
            assert np.abs(visit - base).max() > 1e-3  # and it did change
            checked += 1
    assert checked >= 1


def test_truth_volumes_are_the_volumes_of_the_warped_atlas(small_cohort):
    from neurocast.simulate.anatomy import template_assets

    cfg = small_cohort.config
    regions = template_assets(cfg.grid_spacing_mm, cfg.effective_field_spacing_mm).regions
    source = dict(zip(regions["label"], regions["source_labels"], strict=True))
    vols = small_cohort.regional_volumes
    for (pid, sid), rows in vols.groupby(["participant_id", "session_id"]):
        first = small_cohort.visits[small_cohort.visits.participant_id == pid].session_id.iloc[0]
        labels0 = _array(_truth(small_cohort, pid, first, "atlas-neurocast_dseg.nii.gz"))
        jac = _array(_truth(small_cohort, pid, sid, "desc-jacobian_map.nii.gz"))
        v = read_velocity(_truth(small_cohort, pid, sid, "desc-velocity_xfm.nii.gz"))
        u = integrate_velocity(v)
        voxel = float(np.prod(nib.load(str(_truth(small_cohort, pid, sid, "desc-jacobian_map.nii.gz"))).header.get_zooms()[:3]))
        for _, r in rows.iterrows():
            region = np.isin(labels0, source[r.label])
            # exactly the sum of the volume change over the baseline region
            assert r.volume_mm3 == pytest.approx(float(jac[region].astype(np.float64).sum()) * voxel, rel=1e-5)
            # and the volume of the region warped with the truth deformation (partial volumes)
            warped = warp(torch.from_numpy(region.astype(np.float32))[None, None], u)[0, 0].numpy().sum() * voxel
            tol = 0.004 if region.sum() > 2000 else 0.08
            assert warped / (region.sum() * voxel) == pytest.approx(r.ratio_to_baseline, abs=tol), r.region


def test_atrophy_is_region_specific(small_cohort):
    vols = small_cohort.regional_volumes
    last = small_cohort.visits.groupby("participant_id").tail(1)
    for _, row in last.iterrows():
        v = vols[(vols.participant_id == row.participant_id) & (vols.session_id == row.session_id)]
        ratio = v.set_index("region").ratio_to_baseline  # composite regions of the default atlas
        assert ratio["Hippocampus"] < ratio["Brain-Parenchyma"] < 1.0
        assert ratio["Lateral-Ventricles"] > 1.0


def test_conversion_times_agree_with_visit_diagnoses(small_cohort):
    subjects, visits = small_cohort.subjects, small_cohort.visits
    changed = 0
    for _, s in subjects.iterrows():
        rows = visits[visits.participant_id == s.participant_id]
        t_mci = s.time_to_mci_years if pd.notna(s.time_to_mci_years) else math.inf
        t_ad = s.time_to_ad_years if pd.notna(s.time_to_ad_years) else math.inf
        for _, v in rows.iterrows():
            expected = "AD" if v.time_years >= t_ad else "MCI" if v.time_years >= t_mci else s.diagnosis
            assert v.diagnosis == expected
        assert s.censoring_time_years == pytest.approx(rows.time_years.max())
        if s.diagnosis == "AD":
            assert pd.isna(s.conversion_to) and not s.event_observed
            continue
        assert s.event_observed == (s.conversion_time_years <= s.censoring_time_years)
        if s.event_observed:
            first = rows[rows.diagnosis != s.diagnosis].session_id.iloc[0]
            assert s.observed_conversion_session == first
            changed += 1
        else:
            assert (rows.diagnosis == s.diagnosis).all()
        # acceleration after conversion: progression time runs faster than clock time
        if s.conversion_time_years < rows.time_years.max():
            last = rows.iloc[-1]
            assert last.progression_time_years > last.time_years
    assert changed >= 1, "pick a seed with an observed conversion in tests/simulate/conftest.py"


def test_tumour_is_present_and_grows(small_cohort):
    tumour_subjects = small_cohort.subjects[small_cohort.subjects.tumour.astype(bool)]
    assert len(tumour_subjects) >= 1, "pick a seed with a tumour in tests/simulate/conftest.py"
    grew = 0
    for pid in tumour_subjects.participant_id:
        rows = small_cohort.visits[(small_cohort.visits.participant_id == pid) & small_cohort.visits.tumour_present.astype(bool)]
        volumes = []
        for _, row in rows.iterrows():
            tmask = _array(_truth(small_cohort, pid, row.session_id, f"{TEMPLATE}_res-4_desc-tumour_dseg.nii.gz"))
            native = _array(small_cohort.truth_file(pid, row.session_id, "desc-tumour_dseg.nii.gz"))
            assert set(np.unique(tmask)) >= {0, 1, 2, 3} and native.max() >= 2
            volumes.append(int(np.isin(tmask, (1, 2)).sum()))
            assert row.tumour_volume_mm3 == pytest.approx(volumes[-1] * 64.0)
        # grows until it reaches tumour_max_radius_mm, never shrinks
        assert all(b >= a for a, b in itertools.pairwise(volumes))
        radii = rows.tumour_radius_mm.tolist()
        assert all(b > a for a, b in itertools.pairwise(radii) if a < small_cohort.config.tumour_max_radius_mm)
        grew += len(volumes) >= 2 and volumes[-1] > volumes[0]
    assert grew >= 1, "pick a seed where a tumour is seen at two visits"


def test_artefacts_are_recorded_with_severity_and_parameters(small_cohort):
    visits = small_cohort.visits
    with_artefact = visits[visits.artefact != "none"]
    assert len(with_artefact) >= 1
    for _, row in with_artefact.iterrows():
        assert row.artefact_severity in ("mild", "moderate", "severe")
        params = json.loads(row.artefact_parameters)
        assert params
    clean = visits[visits.artefact == "none"]
    assert clean.artefact_severity.isna().all()


def test_each_subject_draws_its_own_follow_up_acquisitions(small_cohort):
    """Visit k of one subject and visit k of another get independent scanner settings.

    (A loop variable once shadowed the subject index, so every subject's follow-ups shared one
    draw: same noise, same protocol change, same artefact.)
    """
    visits = small_cohort.visits
    for k, group in visits.groupby("visit_index"):
        assert group.noise_sd_fraction.nunique() == len(group), f"visit {k}: noise shared"
        assert group.head_rotation_deg.nunique() == len(group), f"visit {k}: pose shared"


def test_same_seed_gives_identical_bytes(small_cohort, small_cohort_again):
    a, b = files_under(small_cohort.root), files_under(small_cohort_again.root)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"files differ between two runs with the same seed: {different[:5]}"


def test_different_seed_gives_different_data(small_cohort, other_seed_cohort):
    a = small_cohort.raw_t1w("sub-001", small_cohort.visits.session_id.iloc[0]).read_bytes()
    other = other_seed_cohort.raw_t1w("sub-001", other_seed_cohort.visits.session_id.iloc[0]).read_bytes()
    assert a != other
    assert not small_cohort.participants.iloc[:1].equals(other_seed_cohort.participants)


def test_a_subject_does_not_depend_on_the_cohort_size(small_cohort, single_subject_cohort):
    a = {k: v for k, v in files_under(small_cohort.root).items() if "sub-001" in k}
    b = {k: v for k, v in files_under(single_subject_cohort.root).items() if "sub-001" in k}
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)


@pytest.mark.slow
def test_parallel_processes_give_the_same_bytes(small_cohort, tmp_path):
    from tests.simulate.conftest import SEED, small_config

    from neurocast.simulate import simulate_cohort

    parallel = simulate_cohort(tmp_path / "bids", N_SUBJECTS, seed=SEED, config=small_config(n_jobs=2), progress=False)
    a, b = files_under(small_cohort.root), files_under(parallel.root)
    assert sorted(a) == sorted(b)
    assert not [k for k in a if a[k] != b[k]]


def test_a_skull_stripped_delivery_is_the_whole_head_acquisition_stripped(tmp_path):
    # Stripping comes after the acquisition: inside the brain the stripped image is the whole-head
    # one (motion ghosts of the scalp included), outside it is exactly 0 (no noise background).
    from tests.simulate.conftest import SEED, small_config

    from neurocast.simulate import simulate_cohort

    def one_visit(stripped: bool):
        config = small_config(
            skull_stripped_fraction=float(stripped),
            artefact_fraction=1.0,
            tumour_fraction=0.0,
            n_visits=(1, 1),
        )
        return simulate_cohort(tmp_path / str(stripped), 1, seed=SEED, config=config, progress=False)

    cohorts = {stripped: one_visit(stripped) for stripped in (False, True)}
    row = cohorts[True].visits.iloc[0]
    assert bool(row.skull_stripped) and row.artefact != "none"
    assert not bool(cohorts[False].visits.iloc[0].skull_stripped)
    whole = _array(cohorts[False].raw_t1w(row.participant_id, row.session_id))
    stripped = _array(cohorts[True].raw_t1w(row.participant_id, row.session_id))
    sub, ses = row.participant_id, row.session_id
    brain_file = cohorts[True].truth_root / sub / ses / "anat" / f"{sub}_{ses}_desc-brain_mask.nii.gz"
    brain = _array(brain_file) > 0
    assert stripped.shape == whole.shape
    assert np.array_equal(stripped[brain], whole[brain])
    assert not stripped[~brain].any()
    assert whole[~brain].astype(float).mean() > 0.05 * whole[brain].astype(float).mean()


def test_a_skull_stripped_follow_up_is_stripped_with_its_own_shrunken_brain(tmp_path):
    # A stripping tool follows each visit's brain: with atrophy the mask shrinks with the brain
    # instead of keeping the baseline's outline (which would leave a rim of CSF inside it).
    from tests.simulate.conftest import SEED, small_config

    from neurocast.simulate import simulate_cohort
    from neurocast.simulate.config import DEFAULT_ANNUAL_RATES

    # eight times the default tissue loss, so that the outline moves by more than a voxel of the 4 mm grid
    rates = {g: {dx: 8 * r if r > 0 else r for dx, r in by_dx.items()} for g, by_dx in DEFAULT_ANNUAL_RATES.items()}
    config = small_config(
        skull_stripped_fraction=1.0, tumour_fraction=0.0, artefact_fraction=0.0, n_visits=(2, 2), annual_rates=rates
    )
    cohort = simulate_cohort(tmp_path, 1, seed=SEED, config=config, progress=False)
    mask_ml = []
    for row in cohort.visits.itertuples():
        sub, ses = row.participant_id, row.session_id
        img = nib.load(str(cohort.truth_root / sub / ses / "anat" / f"{sub}_{ses}_desc-brain_mask.nii.gz"))
        brain = np.asarray(img.dataobj) > 0
        assert not _array(cohort.raw_t1w(sub, ses))[~brain].any()
        mask_ml.append(brain.sum() * float(np.prod(img.header.get_zooms())) / 1000)
    true_ratio = cohort.visits.brain_volume_mm3.iloc[1] / cohort.visits.brain_volume_mm3.iloc[0]
    assert true_ratio < 0.9
    assert mask_ml[1] / mask_ml[0] == pytest.approx(true_ratio, abs=0.03)
