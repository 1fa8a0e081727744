"""The shipped atlas, user atlases and the label fusion of the atlas builder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurocast.errors import InvalidImageError, InvalidTableError
from neurocast.io.atomic import write_nifti_atomic, write_tsv_atomic
from neurocast.registration.atlas import (
    ATLAS_DSEG,
    ATLAS_JSON,
    ATLAS_TSV,
    Atlas,
    atlas_dir,
    default_region_table,
    load_atlas,
    parse_labels,
)
from neurocast.registration.build_atlas import SubjectVotes, fuse_votes
from neurocast.registration.template import working_grid
from neurocast.registration.volumes import regional_volumes

REQUIRED = [
    "Left-Hippocampus", "Right-Hippocampus", "Left-Amygdala", "Right-Amygdala",
    "Left-Lateral-Ventricle", "Right-Lateral-Ventricle", "Left-Thalamus", "Right-Thalamus",
    "Left-Caudate", "Right-Caudate", "Left-Putamen", "Right-Putamen",
    "Grey-Matter", "White-Matter", "CSF", "Intracranial",
]  # fmt: skip

# plausible adult volumes in ml, for a head of 1500 ml intracranial volume (MNI152 space is about
# 25 % larger in volume than an average adult head, so template-space volumes are rescaled first)
RANGES_ML = {
    "Left-Hippocampus": (2.5, 5.5),
    "Right-Hippocampus": (2.5, 5.5),
    "Left-Amygdala": (0.7, 2.5),
    "Right-Amygdala": (0.7, 2.5),
    "Left-Lateral-Ventricle": (2.0, 30.0),
    "Right-Lateral-Ventricle": (2.0, 30.0),
    "Left-Thalamus": (5.0, 12.0),
    "Right-Thalamus": (5.0, 12.0),
    "Left-Caudate": (2.0, 6.0),
    "Right-Caudate": (2.0, 6.0),
    "Left-Putamen": (3.0, 8.0),
    "Right-Putamen": (3.0, 8.0),
    "Grey-Matter": (550.0, 950.0),
    "White-Matter": (350.0, 750.0),
    "CSF": (60.0, 350.0),
}
TEMPLATE_ICV_ML = (1600.0, 2100.0)


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return load_atlas()


def test_shipped_files_are_small_and_complete():
    d = atlas_dir()
    for name in (ATLAS_DSEG, ATLAS_TSV, ATLAS_JSON):
        assert (d / name).is_file(), name
    assert (d / ATLAS_DSEG).stat().st_size < 400_000


def test_shipped_atlas_grid_and_regions(atlas):
    assert atlas.grid == working_grid(2.0)
    assert atlas.labels.get_data_dtype() == np.int16
    assert atlas.data.dtype == np.int16
    missing = [r for r in REQUIRED if r not in atlas.names]
    assert not missing
    assert atlas.regions["index"].is_unique and atlas.regions["name"].is_unique
    assert set(atlas.regions["hemisphere"]) <= {"left", "right", "bilateral", "midline"}


def test_shipped_volumes_are_plausible(atlas):
    vols = regional_volumes(atlas.labels, atlas.regions).set_index("region")["volume_mm3"] / 1000
    assert TEMPLATE_ICV_ML[0] <= vols["Intracranial"] <= TEMPLATE_ICV_ML[1]
    scale = 1500.0 / vols["Intracranial"]
    for region, (lo, hi) in RANGES_ML.items():
        assert lo <= vols[region] * scale <= hi, (region, vols[region] * scale)
    # composites are unions: GM + WM + brainstem = parenchyma, parenchyma + CSF + chiasm = ICV
    assert vols["Grey-Matter"] + vols["White-Matter"] + vols["Brain-Stem"] == pytest.approx(vols["Brain-Parenchyma"])
    assert vols["Brain-Parenchyma"] + vols["CSF"] <= vols["Intracranial"] + 1e-6
    assert vols["Hippocampus"] == pytest.approx(vols["Left-Hippocampus"] + vols["Right-Hippocampus"])
    # left structures lie on the left (x < 0 in RAS template space)
    xs = np.nonzero(atlas.mask("Left-Hippocampus"))[0]
    x_mm = atlas.labels.affine[0, 0] * xs.mean() + atlas.labels.affine[0, 3]
    assert x_mm < -10


def test_region_lookup(atlas):
    assert atlas.source_labels("left-hippocampus") == (48,)
    assert atlas.source_labels("lHip") == (48,)
    assert atlas.region("Hippocampus")["source_labels"] == (47, 48)
    with pytest.raises(KeyError, match="Left-Hippocampus"):
        atlas.region("Left-Hipocampus")


def test_load_atlas_on_another_grid(atlas):
    g4 = working_grid(4.0)
    coarse = load_atlas(g4)
    assert coarse.grid == g4 and coarse.data.dtype == np.int16
    v2 = regional_volumes(atlas.labels, atlas.regions).set_index("region")["volume_mm3"]
    v4 = regional_volumes(coarse.labels, coarse.regions).set_index("region")["volume_mm3"]
    for region in ("Intracranial", "White-Matter", "Left-Thalamus"):
        assert v4[region] == pytest.approx(v2[region], rel=0.15)


def test_from_files_round_trip(atlas, tmp_path):
    dseg, tsv = tmp_path / "a_dseg.nii.gz", tmp_path / "a_dseg.tsv"
    write_nifti_atomic(dseg, atlas.labels)
    write_tsv_atomic(tsv, atlas.table_for_tsv())
    back = Atlas.from_files(dseg, tsv)
    assert back.names == atlas.names
    assert np.array_equal(back.data, atlas.data)
    assert back.source_labels("Grey-Matter") == atlas.source_labels("Grey-Matter")


def _user_atlas(tmp_path, table_text: str):
    data = np.zeros((6, 6, 6), np.int16)
    data[1:3, 1:3, 1:3] = 1
    data[3:5, 3:5, 3:5] = 2
    dseg = tmp_path / "u_dseg.nii.gz"
    write_nifti_atomic(dseg, working_grid(2.0).image(np.pad(data, ((0, 73), (0, 91), (0, 78))), dtype=np.int16))
    tsv = tmp_path / "u_dseg.tsv"
    tsv.write_text(table_text)
    return dseg, tsv


def test_user_atlas_minimal_table(tmp_path):
    dseg, tsv = _user_atlas(tmp_path, "index\tname\tsource_labels\n1\tone\t1\n2\ttwo\tn/a\n10\tboth\t1 2\n")
    a = Atlas.from_files(dseg, tsv)
    vols = regional_volumes(a.labels, a.regions).set_index("region")["volume_mm3"]
    assert vols.to_dict() == pytest.approx({"one": 64.0, "two": 64.0, "both": 128.0})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("idx\tname\n1\tone\n", "'index'.*required column is missing"),
        ("index\tname\tsource_labels\n1\tone\t1\n2\tone\t2\n", "'name'.*duplicate"),
        ("index\tname\tsource_labels\n1\tone\t1\n2\ttwo\t7\n", r"label value\(s\) \[7\] do not occur"),
        ("index\tname\tsource_labels\nx\tone\t1\n", "'index'.*expected an integer"),
        ("index\tname\tsource_labels\n1\tone\tleft\n", "'source_labels'.*separated by spaces"),
        ("index\tname\tsource_labels\themisphere\n1\tone\t1\tup\n", "'hemisphere'.*must be one of"),
        ("index\tname\tsource_labels\n", "no regions"),
    ],
)
def test_user_atlas_bad_table_is_refused_clearly(tmp_path, text, match):
    dseg, tsv = _user_atlas(tmp_path, text)
    with pytest.raises(InvalidTableError, match=match) as info:
        Atlas.from_files(dseg, tsv)
    assert str(tsv) in str(info.value)


def test_user_atlas_bad_image_is_refused(tmp_path):
    import nibabel as nib

    _, tsv = _user_atlas(tmp_path, "index\tname\n1\tone\n")
    bad = tmp_path / "float_dseg.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4)), bad)
    with pytest.raises(InvalidImageError, match="not integer-valued"):
        Atlas.from_files(bad, tsv)
    with pytest.raises(InvalidImageError, match="does not exist"):
        Atlas.from_files(tmp_path / "missing.nii.gz", tsv)
    with pytest.raises(InvalidTableError, match="does not exist"):
        Atlas.from_files(_user_atlas(tmp_path, "index\tname\n1\tone\n")[0], tmp_path / "nope.tsv")


def test_parse_labels():
    assert parse_labels("1 2,3;4") == (1, 2, 3, 4)
    assert parse_labels((5, 6)) == (5, 6)
    with pytest.raises(ValueError):
        parse_labels("1.5")


def test_default_region_table_composites():
    present = [0, 1, 4, 11, 31, 32, 35, 46, 47, 48, 49, 50, 51, 52, 69, 81, 100, 101]
    t = default_region_table(present).set_index("name")
    assert t.loc["Intracranial", "source_labels"] == tuple(v for v in present if v > 0)
    assert t.loc["CSF", "source_labels"] == (1, 4, 11, 46, 49, 50, 51, 52)
    assert 100 in t.loc["Grey-Matter", "source_labels"] and 81 not in t.loc["Grey-Matter", "source_labels"]
    assert "Left-Thalamus" not in t.index  # label 60 absent: no one-label row for it


def test_fuse_votes_identity_and_majority():
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    base = rng.integers(0, 4, size=shape).astype(np.int16)
    coords = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    same = [SubjectVotes(f"s{i}", base, coords, 0.0) for i in range(3)]
    assert np.array_equal(fuse_votes(same, shape), base)
    other = np.where(base == 1, 3, base).astype(np.int16)
    votes = [SubjectVotes("a", base, coords, 0.0), SubjectVotes("b", base, coords, 0.0),
             SubjectVotes("c", other, coords, 0.0)]
    assert np.array_equal(fuse_votes(votes, shape), base)  # 2 against 1
    outside = np.full_like(coords, -1.0)
    assert not fuse_votes([SubjectVotes("d", base, outside, 0.0)], shape).any()


def test_region_table_round_trips_through_tsv(atlas, tmp_path):
    p = tmp_path / "t.tsv"
    write_tsv_atomic(p, atlas.table_for_tsv())
    back = pd.read_csv(p, sep="\t", dtype=str)
    assert list(back.columns) == ["index", "name", "abbreviation", "hemisphere", "source_labels"]
