"""Longitudinal alignment: a known rigid motion between two visits is removed without favouring one."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from neurocast.registration.longitudinal import align_subject
from neurocast.registration.template import working_grid
from neurocast.registration.transforms import (
    decompose,
    displacement_error,
    downsample_blocks,
    resample,
    rigid_matrix,
)


def two_visits(shared_data):
    """IXI015 at 4 mm as visit 1; visit 2 = the same head moved rigidly (6 deg, 8 mm) on another grid."""
    from neurocast.io import load_image

    img = load_image(shared_data / "ixi" / "IXI015-HH-1258-T1_ds.nii.gz")
    d, a = downsample_blocks(img.get_fdata(dtype=np.float32), img.affine, (2, 2, 2))
    v1 = nib.Nifti1Image(d, a)
    centre = nib.affines.apply_affine(a, np.array(d.shape) / 2)
    motion = rigid_matrix((6.0, -3.0, 2.0), (8.0, -5.0, 3.0), center=centre)
    a2 = np.diag([3.0, 3.0, 3.0, 1.0])  # another grid: 3 mm voxels, shifted origin
    a2[:3, 3] = a[:3, 3] - 10
    shape2 = tuple(int(n * 4 / 3) + 6 for n in d.shape)
    d2 = resample(d, a, shape2, a2, np.linalg.inv(motion))
    return v1, nib.Nifti1Image(d2, a2), motion


@pytest.fixture(scope="module")
def aligned(shared_data):
    v1, v2, motion = two_visits(shared_data)
    al = align_subject(
        {"ses-01": v1, "ses-02": v2},
        grid=working_grid(4.0),
        field_spacing_mm=8.0,
        fit_options={"levels": 2, "iterations": [30, 15]},
    )
    return al, motion


@pytest.mark.slow
def test_rigid_motion_is_recovered_and_split_halfway(aligned):
    al, motion = aligned
    assert al.qc["passed"], al.qc["reasons"]
    # visit 2 -> template composed with the truth (visit 1 -> visit 2) must equal visit 1 -> template
    pts = np.argwhere(np.asarray(al.brain_mask.dataobj) > 0)
    pts_mm = nib.affines.apply_affine(al.grid.affine, pts)
    t1 = np.linalg.inv(al.native_to_template["ses-01"])
    t2 = np.linalg.inv(al.native_to_template["ses-02"])
    err = displacement_error(t2, motion @ t1, pts_mm)
    assert err.mean() < 1.0
    # midpoint: each visit moves about half-way (neither is the reference)
    r1 = decompose(al.visit_to_midpoint["ses-01"])["rotation_deg"]
    r2 = decompose(al.visit_to_midpoint["ses-02"])["rotation_deg"]
    assert r1 == pytest.approx(r2, abs=0.5)
    assert r1 > 1.0
    assert np.allclose(
        al.native_to_template["ses-01"], al.midpoint_to_template @ al.visit_to_midpoint["ses-01"]
    )


@pytest.mark.slow
def test_outputs_on_grids_and_qc(aligned, tmp_path):
    al, _ = aligned
    grid = working_grid(4.0)
    assert al.sessions == ["ses-01", "ses-02"] and al.baseline == "ses-01"
    assert al.follow_ups == ["ses-02"]
    for s in al.sessions:
        assert al.images[s].shape == grid.shape
        assert al.masks[s].get_data_dtype() == np.uint8
    assert tuple(al.velocities["ses-02"].shape) == (1, 3, *al.field_grid.shape)
    assert al.field_grid.shape == working_grid(8.0).shape
    pair = al.qc["pairs"]["ses-02"]
    # the same head: after rigid alignment the visits already agree closely
    assert pair["ncc_before"] > 0.9
    assert pair["ncc_after"] >= pair["ncc_before"] - 0.02
    assert pair["folding"] == 0.0
    # consistent intensities: same white-matter level in the common mask
    m = np.asarray(al.brain_mask.dataobj) > 0
    p1 = np.percentile(np.asarray(al.images["ses-01"].dataobj)[m], 75)
    p2 = np.percentile(np.asarray(al.images["ses-02"].dataobj)[m], 75)
    assert p1 == pytest.approx(p2, rel=0.05)
    paths = al.save(tmp_path, "01")
    assert (
        tmp_path / "sub-01_ses-02_space-MNI152NLin2009aSym_res-8_desc-velocity_xfm.nii.gz"
    ).is_file()
    assert all(p.is_file() for p in paths.values())
    v = nib.load(paths["ses-02:velocity"])
    assert v.shape == (*al.field_grid.shape, 3)


@pytest.mark.slow
def test_shrinkage_between_visits_is_not_absorbed_by_the_rigid_step(shared_data):
    """A follow-up whose head shrank by 6 % per axis keeps that shrinkage after alignment.

    Each visit's template affine scales its own head to the template; the rigid step between
    visits must not inherit that scaling, or the atrophy to be measured is cancelled.
    """
    from neurocast.io import load_image

    img = load_image(shared_data / "ixi" / "IXI015-HH-1258-T1_ds.nii.gz")
    d, a = downsample_blocks(img.get_fdata(dtype=np.float32), img.affine, (2, 2, 2))
    centre = nib.affines.apply_affine(a, np.array(d.shape) / 2)
    scale = 0.94
    shrink = np.eye(4)
    shrink[:3, :3] *= scale
    shrink[:3, 3] = centre - scale * centre  # about the centre
    d2 = resample(d, a, d.shape, a, np.linalg.inv(shrink))
    al = align_subject(
        {"ses-01": nib.Nifti1Image(d, a), "ses-02": nib.Nifti1Image(d2, a)},
        grid=working_grid(4.0),
        fit_velocity=False,
    )
    for s in al.sessions:
        assert np.linalg.det(al.visit_to_midpoint[s][:3, :3]) == pytest.approx(1.0, abs=1e-3)
    # one scaling for both visits, so the follow-up's anatomy reaches the template still shrunk:
    # template -> visit 1 -> (the shrinkage) -> visit 2 -> template changes volume by scale**3
    t1, t2 = (al.native_to_template[s] for s in al.sessions)
    through = t2 @ shrink @ np.linalg.inv(t1)
    assert np.linalg.det(through[:3, :3]) == pytest.approx(scale**3, rel=0.01)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        align_subject({})
    with pytest.raises(ValueError, match="baseline"):
        align_subject({"a": "x.nii.gz"}, baseline="b")
    with pytest.raises(ValueError, match="multiple"):
        align_subject({"a": "x.nii.gz"}, field_spacing_mm=5.0)
    with pytest.raises(ValueError, match="on_fail"):
        align_subject({"a": "x.nii.gz"}, on_fail="maybe")
    with pytest.raises(ValueError, match="fit_margin_mm"):
        align_subject({"a": "x.nii.gz"}, fit_margin_mm=-2.0)


@pytest.mark.slow
def test_the_velocity_fit_sees_the_brain_and_a_margin_only(shared_data, monkeypatch):
    """Far non-brain tissue is hidden from the fit; the margin around the brain is not."""
    from scipy import ndimage

    import neurocast.registration.svf as svf

    real_fit = svf.fit_velocity_field
    seen: dict[str, np.ndarray] = {}

    def spy(base, follow, **kw):
        seen["base"] = base.numpy().copy()
        return real_fit(base, follow, **{**kw, "levels": 1, "iterations": [2]})

    monkeypatch.setattr(svf, "fit_velocity_field", spy)
    v1, v2, _ = two_visits(shared_data)
    visits = {"ses-01": v1, "ses-02": v2}
    grid = working_grid(4.0)
    al = align_subject(visits, grid=grid, field_spacing_mm=8.0, fit_margin_mm=8.0)
    common = np.asarray(al.brain_mask.dataobj) > 0
    distance = ndimage.distance_transform_edt(~common, sampling=4.0)
    base = seen["base"]
    assert np.array_equal(base[common], np.asarray(al.images["ses-01"].dataobj)[common])
    assert not base[distance > 8.0].any()
    assert base[(distance > 0) & (distance <= 8.0)].any()  # the margin is seen

    align_subject(visits, grid=grid, field_spacing_mm=8.0, fit_margin_mm=None)
    assert seen["base"][distance > 8.0].any()  # the whole grid: the head outside the brain


def test_brain_with_margin_grows_by_distance_in_mm():
    from neurocast.registration.longitudinal import brain_with_margin

    m = np.zeros((11, 11, 3), bool)
    m[5, 5, 1] = True
    grown = brain_with_margin(m, (1.0, 2.0, 1.0), 2.0)
    assert grown[3:8, 5, 1].all() and not grown[2, 5, 1]  # 2 mm = 2 voxels along x
    assert grown[5, 4:7, 1].all() and not grown[5, 3, 1]  # 2 mm = 1 voxel along y
    assert np.array_equal(brain_with_margin(m, 2.0, 0.0), m)
    with pytest.raises(ValueError, match="margin_mm"):
        brain_with_margin(m, 2.0, -1.0)
