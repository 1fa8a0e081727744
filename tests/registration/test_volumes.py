"""Regional volumes, volume change, the atlas in native space, and the volume tables."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from neurocast.errors import InvalidTableError
from neurocast.io.tables import read_table
from neurocast.registration._syn import SynParams
from neurocast.registration.atlas import Atlas, load_atlas, template_on_grid
from neurocast.registration.template import load_template, working_grid
from neurocast.registration.transforms import resample
from neurocast.registration.volumes import (
    SUBJECT_CC_RADIUS,
    SUBJECT_SYN_ITERATIONS,
    atlas_to_native,
    atlas_to_subject,
    change_table,
    regional_volume_change,
    regional_volumes,
    subject_syn_params,
    volumes_table,
    write_volumes_tsv,
)

REGIONS = pd.DataFrame({
    "index": [1, 2, 3, 100],
    "name": ["a", "b", "absent", "a+b"],
    "hemisphere": ["left", "right", "midline", "bilateral"],
    "source_labels": [(1,), (2,), (3,), (1, 2)],
})


def _labels(affine=None) -> nib.Nifti1Image:
    data = np.zeros((10, 8, 6), np.int16)
    data[1:4, 1:3, 1:5] = 1  # 3*2*4 = 24 voxels
    data[5:9, 4:7, 2:3] = 2  # 4*3*1 = 12 voxels
    return nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0]) if affine is None else affine)


def test_volumes_are_hand_counts_times_voxel_volume():
    v = regional_volumes(_labels(), REGIONS).set_index("region")
    assert v.loc["a", "n_voxels"] == 24 and v.loc["a", "volume_mm3"] == 24 * 6.0
    assert v.loc["b", "volume_mm3"] == 12 * 6.0
    assert v.loc["absent", "volume_mm3"] == 0.0
    assert v.loc["a+b", "volume_mm3"] == 36 * 6.0
    assert list(v.reset_index().columns) == ["region", "index", "hemisphere", "n_voxels", "volume_mm3"]


def test_volumes_with_rotated_affine_mask_and_plain_array():
    aff = np.array([[0, 0, 2.0, 0], [-1.5, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    v = regional_volumes(_labels(aff), REGIONS).set_index("region")["volume_mm3"]
    assert v["a"] == pytest.approx(24 * 3.0)
    mask = np.zeros((10, 8, 6), bool)
    mask[:2] = True  # keeps x = 1 only: 2*4 = 8 voxels of region a
    vm = regional_volumes(_labels(), REGIONS, mask=mask).set_index("region")["volume_mm3"]
    assert vm["a"] == 8 * 6.0 and vm["b"] == 0
    arr = np.asarray(_labels().dataobj)
    assert regional_volumes(arr, REGIONS, voxel_volume_mm3=0.5)["volume_mm3"].tolist() == [12.0, 6.0, 0.0, 18.0]
    with pytest.raises(ValueError, match="voxel_volume_mm3"):
        regional_volumes(arr, REGIONS)


def test_uniform_jacobian_gives_the_scaling():
    labels = _labels()
    jac = np.full(labels.shape, 0.9)
    ch = regional_volume_change(jac, labels, REGIONS).set_index("region")
    assert ch.loc["a", "volume_ratio"] == pytest.approx(0.9)
    assert ch.loc["a", "baseline_volume_mm3"] == 144.0
    assert ch.loc["a", "volume_change_mm3"] == pytest.approx(-14.4)
    assert ch.loc["a+b", "followup_volume_mm3"] == pytest.approx(0.9 * 216.0)
    assert ch.loc["b", "volume_change_percent"] == pytest.approx(-10.0)
    assert np.isnan(ch.loc["absent", "volume_ratio"])
    # a torch map as volume_change_map returns it, (1, 1, X, Y, Z)
    t = torch.full((1, 1, *labels.shape), 1.2, dtype=torch.float32)
    ch2 = regional_volume_change(t, labels, REGIONS).set_index("region")
    assert ch2.loc["a+b", "volume_ratio"] == pytest.approx(1.2, rel=1e-6)
    assert ch2.loc["a+b", "volume_change_mm3"] == pytest.approx(0.2 * 216.0, rel=1e-6)


def test_regional_change_is_the_mean_over_the_region():
    labels = _labels()
    jac = np.ones(labels.shape)
    jac[1:4, 1:3, 1:3] = 0.5  # half of region a's 24 voxels
    ch = regional_volume_change(jac, labels, REGIONS).set_index("region")
    assert ch.loc["a", "volume_ratio"] == pytest.approx(0.75)
    assert ch.loc["b", "volume_ratio"] == pytest.approx(1.0)


def test_volume_change_checks_its_inputs():
    labels = _labels()
    with pytest.raises(ValueError, match="does not match"):
        regional_volume_change(np.ones((5, 5, 5)), labels, REGIONS)
    bad = np.ones(labels.shape)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        regional_volume_change(bad, labels, REGIONS)


def test_tables_are_written_and_validated(tmp_path):
    v = volumes_table(regional_volumes(_labels(), REGIONS), "sub-01", "ses-1")
    p = write_volumes_tsv(tmp_path / "sub-01_ses-1_volumes.tsv", v)
    back = read_table(p, "regional_volumes")
    assert back["volume_mm3"].tolist() == v["volume_mm3"].tolist()
    assert list(back.columns[:3]) == ["participant_id", "session_id", "region"]
    ch = change_table(regional_volume_change(np.full((10, 8, 6), 0.95), _labels(), REGIONS),
                      "sub-01", "ses-2", "ses-1")
    p2 = write_volumes_tsv(tmp_path / "change.tsv", ch)
    back2 = read_table(p2, "regional_volume_change")
    assert back2.loc[back2.region == "absent", "volume_ratio"].isna().all()  # n/a for an empty region
    assert back2["baseline_session_id"].eq("ses-1").all()
    no_ses = volumes_table(regional_volumes(_labels(), REGIONS), "sub-01")
    write_volumes_tsv(tmp_path / "nos.tsv", no_ses)
    with pytest.raises(InvalidTableError, match="participant_id"):
        write_volumes_tsv(tmp_path / "bad.tsv", volumes_table(regional_volumes(_labels(), REGIONS), "01"))
    assert not (tmp_path / "bad.tsv").exists()


class _Scan:
    def __init__(self, native, mask, native_to_template):
        self.native, self.native_brain_mask, self.native_to_template = native, mask, native_to_template


@pytest.mark.slow
def test_atlas_to_native_recovers_a_shifted_template(tmp_path):
    """The template itself as 'native' scan (3 mm grid, shifted 6 mm): the atlas lands where it was."""
    atlas = load_atlas(working_grid(4.0))
    g3 = working_grid(3.0)
    shift = np.eye(4)
    shift[:3, 3] = [6.0, -4.0, 3.0]  # native world = template world + shift
    native_aff = shift @ g3.affine
    tpl = template_on_grid(g3)
    native = nib.Nifti1Image(np.asarray(tpl.dataobj, np.float32), native_aff)
    m1 = load_template("brain_mask", 1)
    mask = resample(np.asarray(m1.dataobj, np.float32), m1.affine, g3.shape, g3.affine) > 0.5
    scan = _Scan(native, nib.Nifti1Image(mask.astype(np.uint8), native_aff), np.linalg.inv(shift))
    quick = SynParams(linear=("Affine",), linear_iterations=(50, 20, 0), syn_iterations=(20, 10, 0))
    lab = atlas_to_native(scan, atlas, params=quick, work_dir=tmp_path)
    assert lab.shape == g3.shape and np.allclose(lab.affine, native_aff)
    assert not list(tmp_path.iterdir())  # temporary files removed
    expected = Atlas(nib.Nifti1Image(
        resample(atlas.data, atlas.labels.affine, g3.shape, g3.affine, order=0).astype(np.int16), g3.affine),
        atlas.regions)
    got = regional_volumes(lab, atlas.regions).set_index("region")["volume_mm3"]
    ref = regional_volumes(expected.labels, atlas.regions).set_index("region")["volume_mm3"]
    for region in ("Intracranial", "White-Matter", "Left-Thalamus", "Right-Putamen"):
        assert got[region] == pytest.approx(ref[region], rel=0.2), region
    a = np.asarray(lab.dataobj)
    b = np.asarray(expected.labels.dataobj)
    dice = 2 * np.sum((a == 60) & (b == 60)) / (np.sum(a == 60) + np.sum(b == 60))
    assert dice > 0.7
    assert not a[~mask].any()  # restricted to the brain mask


def _default_schedule(monkeypatch, fit) -> SynParams:
    """The SyN schedule ``fit(image, mask, atlas)`` hands to ANTs (which is never run), on 8 mm."""
    import neurocast.registration._syn as syn

    seen = {}

    def fake_register_syn(fixed, moving, *, params, **kwargs):
        seen["params"] = params
        raise RuntimeError("stop here")

    monkeypatch.setattr(syn, "register_syn", fake_register_syn)
    g = working_grid(8.0)
    img = nib.Nifti1Image(np.ones(g.shape, np.float32), g.affine)
    with pytest.raises(RuntimeError, match="stop here"):
        fit(img, nib.Nifti1Image(np.ones(g.shape, np.uint8), g.affine), load_atlas(g))
    return seen["params"]


def test_atlas_to_native_default_schedule_reaches_the_atlas_grid(monkeypatch, tmp_path):
    """By default SyN also iterates at the atlas's own resolution (the 4 mm stop left the
    ventricles' edges loose: atlas leave-one-out error 24 % instead of 14 %)."""

    def fit(img, mask, atlas):
        atlas_to_native(_Scan(img, mask, np.eye(4)), atlas, work_dir=tmp_path)

    params = _default_schedule(monkeypatch, fit)
    assert params.syn_shrink[-1] == 1 and params.syn_iterations[-1] > 0
    assert params.linear == ("Affine",)
    assert not list(tmp_path.iterdir())  # the temporary folder is removed on failure too


def test_atlas_to_subject_default_schedule_is_the_subject_schedule(monkeypatch, tmp_path):
    """The subject fit starts from an image already aligned to the template: its affine
    refinement stops at 4 mm and SyN correlates over the narrow window
    (``benchmarks/atlas_subject_fit.md``)."""

    def fit(img, mask, atlas):
        atlas_to_subject(img, mask, atlas, work_dir=tmp_path)

    params = _default_schedule(monkeypatch, fit)
    assert params == subject_syn_params() and params.cc_radius == SUBJECT_CC_RADIUS == 1
    assert params.linear_iterations[-1] == 0 and params.syn_iterations == SUBJECT_SYN_ITERATIONS


def test_atlas_to_subject_follows_a_non_linear_change_of_anatomy(tmp_path):
    """A template brain bent by a smooth non-linear warp: the fitted labels follow the bend, so
    they disagree with the bent atlas far less than the template atlas does."""
    g = working_grid(4.0)
    atlas = load_atlas(g)
    ijk = np.indices(g.shape).astype(np.float64)
    centre = (np.array(g.shape) - 1)[:, None, None, None] / 2
    bump = np.exp(-(((ijk - centre) * 4.0) ** 2).sum(0) / (2 * 22.0**2))
    coords = ijk.copy()
    coords[1] -= 2.5 * bump  # up to 10 mm forwards in the middle, none at the edges

    def bend(a: np.ndarray, order: int) -> np.ndarray:
        return ndimage.map_coordinates(a, coords, order=order, mode="constant")

    subject = bend(np.asarray(template_on_grid(g).dataobj, np.float32), 1)
    truth = bend(atlas.data, 0)
    image = nib.Nifti1Image(subject.astype(np.float32), g.affine)
    mask = nib.Nifti1Image((truth > 0).astype(np.uint8), g.affine)
    quick = SynParams(linear=("Affine",), linear_iterations=(50, 20, 0), syn_iterations=(40, 20, 0),
                      cc_radius=SUBJECT_CC_RADIUS)  # fmt: skip
    lab = atlas_to_subject(image, mask, atlas, params=quick, work_dir=tmp_path)
    assert lab.shape == g.shape and np.allclose(lab.affine, g.affine)
    assert not list(tmp_path.iterdir())  # temporary files removed
    fitted = np.asarray(lab.dataobj)
    inside = truth > 0
    wrong_fitted = np.mean(fitted[inside] != truth[inside])  # 0.009 when written
    wrong_template = np.mean(atlas.data[inside] != truth[inside])  # 0.047
    assert wrong_fitted < 0.4 * wrong_template, (wrong_fitted, wrong_template)
    assert not fitted[~inside].any()  # restricted to the brain mask
