"""Conversions between ANTs (LPS) affine transforms and 4x4 RAS matrices; resampling; matrix algebra."""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np
import pytest

from neurocast.registration.transforms import (
    LPS_RAS_FLIP,
    anti_alias_sigma,
    ants_affine,
    ants_to_matrix,
    ants_to_nib,
    decompose,
    displacement_error,
    downsample_blocks,
    itk_parameters_to_matrix,
    lps_to_ras,
    matrix_to_ants,
    mean_transform,
    nearest_rigid,
    nib_to_ants,
    random_affine,
    ras_to_lps,
    read_ants_affine,
    resample,
    rigid_matrix,
    write_ants_affine,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def oblique_affine() -> np.ndarray:
    """A voxel-to-world affine with anisotropic voxels and an oblique, flipped orientation."""
    r = rigid_matrix((12.0, -7.0, 20.0))[:3, :3]
    a = np.eye(4)
    a[:3, :3] = r @ np.diag([-0.9, 1.1, 3.0])
    a[:3, 3] = [100.0, -110.0, -60.0]
    return a


def test_lps_ras_is_an_involution(rng):
    m = random_affine(rng)
    assert np.allclose(lps_to_ras(ras_to_lps(m)), m)
    assert np.allclose(ras_to_lps(m), LPS_RAS_FLIP @ m @ LPS_RAS_FLIP)


def test_matrix_to_ants_round_trip(rng):
    for _ in range(5):
        m = random_affine(rng, max_rotation_deg=30, max_translation_mm=40, max_scaling=0.2)
        assert np.allclose(ants_to_matrix(matrix_to_ants(m)), m, atol=1e-10)
        # any centre gives the same mapping
        c = rng.normal(size=3) * 50
        assert np.allclose(ants_to_matrix(matrix_to_ants(m, center_ras=c)), m, atol=1e-9)


def test_ants_transform_acts_on_lps_points(rng):
    m = random_affine(rng, max_rotation_deg=20, max_translation_mm=20)
    tx = matrix_to_ants(m)
    p_ras = np.array([12.0, -30.0, 45.0])
    expected_ras = (m @ np.r_[p_ras, 1])[:3]
    p_lps = LPS_RAS_FLIP[:3, :3] @ p_ras
    out_lps = np.array(tx.apply_to_point(tuple(p_lps)))
    assert np.allclose(LPS_RAS_FLIP[:3, :3] @ out_lps, expected_ras, atol=1e-6)


def test_itk_parameters_match_ants(rng):
    a = rng.normal(size=(3, 3)) * 0.1 + np.eye(3)
    t = rng.normal(size=3) * 5
    c = rng.normal(size=3) * 20
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="double",
        dimension=3,
        matrix=a,
        translation=t,
        center=c,
    )
    m_lps = itk_parameters_to_matrix(tx.parameters, tx.fixed_parameters)
    p = np.array([3.0, -4.0, 5.0])
    assert np.allclose((m_lps @ np.r_[p, 1])[:3], tx.apply_to_point(tuple(p)), atol=1e-9)
    with pytest.raises(ValueError):
        itk_parameters_to_matrix(np.zeros(6), c)


def test_rigid_transform_types_are_read_by_probing():
    tx = ants.create_ants_transform(
        transform_type="Euler3DTransform", precision="double", dimension=3
    )
    tx.set_parameters(np.array([0.1, -0.05, 0.2, 3.0, -2.0, 1.0]))
    m = ants_to_matrix(tx)
    p_ras = np.array([10.0, 20.0, 30.0])
    out = LPS_RAS_FLIP[:3, :3] @ np.array(tx.apply_to_point(tuple(LPS_RAS_FLIP[:3, :3] @ p_ras)))
    assert np.allclose((m @ np.r_[p_ras, 1])[:3], out, atol=1e-6)


def test_write_read_file_round_trip(tmp_path, rng):
    m = random_affine(rng)
    path = write_ants_affine(m, tmp_path / "sub-01_from-T1w_to-X_mode-image_xfm.mat")
    assert path.is_file()
    assert np.allclose(read_ants_affine(path), m, atol=1e-10)
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"
    with pytest.raises(FileNotFoundError):
        read_ants_affine(tmp_path / "missing.mat")


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError):
        matrix_to_ants(np.eye(3))
    bad = np.eye(4)
    bad[3, 0] = 1
    with pytest.raises(ValueError):
        matrix_to_ants(bad)
    with pytest.raises(ValueError):
        matrix_to_ants(np.diag([1.0, 0.0, 1.0, 1.0]))
    nan = np.eye(4)
    nan[0, 3] = np.nan
    with pytest.raises(ValueError):
        matrix_to_ants(nan)


def test_nib_ants_image_round_trip():
    aff = oblique_affine()
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, aff)
    a = nib_to_ants(img)
    assert np.allclose(ants_affine(a), aff, atol=1e-5)
    back = ants_to_nib(a)
    assert np.allclose(back.affine, aff, atol=1e-5)
    assert np.array_equal(np.asarray(back.dataobj), data)
    # the world position of a voxel agrees between ANTs (LPS) and nibabel (RAS)
    idx = (1, 2, 3)
    p_lps = np.array(ants.transform_index_to_physical_point(a, idx))
    assert np.allclose(LPS_RAS_FLIP[:3, :3] @ p_lps, nib.affines.apply_affine(aff, idx), atol=1e-4)


def test_resample_agrees_with_ants_apply_transforms(rng):
    """Our scipy resampling through a RAS matrix equals antsApplyTransforms with the converted file."""
    aff = oblique_affine()
    x, y, z = np.mgrid[:30, :28, :12].astype(np.float32)
    data = (np.sin(x / 4) + np.cos(y / 5) + z / 6).astype(np.float32)
    src = nib.Nifti1Image(data, aff)
    m = random_affine(
        rng,
        max_rotation_deg=5,
        max_translation_mm=3,
        max_scaling=0.03,
        center=nib.affines.apply_affine(aff, [15, 14, 6]),
    )
    ref_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    ref_aff[:3, 3] = nib.affines.apply_affine(aff, [15, 14, 6]) - 10
    ref_shape = (10, 10, 10)
    ours = resample(data, aff, ref_shape, ref_aff, m)
    ref = nib_to_ants(nib.Nifti1Image(np.zeros(ref_shape, np.float32), ref_aff))
    tx = matrix_to_ants(m)
    theirs = ants.apply_ants_transform_to_image(
        tx, nib_to_ants(src), ref, interpolation="linear"
    ).numpy()
    inside = ours != 0
    assert inside.mean() > 0.5
    assert np.allclose(ours[inside], theirs[inside], atol=1e-3)


def test_resample_identity_and_nearest():
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    assert np.allclose(resample(data, aff, data.shape, aff), data)
    labels = (data > 0.5).astype(np.uint8)
    out = resample(labels, aff, data.shape, aff, order=0)
    assert out.dtype == np.uint8 and np.array_equal(out, labels)


def test_anti_aliased_resampling_evens_out_and_lowers_noise():
    """1 mm white noise read on a 2 mm grid at two sub-voxel offsets: point reads keep the full
    noise at voxel centres and less between them; anti-aliased reads are lower and alike."""
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(64, 64, 64)).astype(np.float32)
    src_aff = np.eye(4)
    sds = {}
    for offset in (0.0, 0.5):
        tgt_aff = np.diag([2.0, 2.0, 2.0, 1.0])
        tgt_aff[:3, 3] = 8.0 + offset
        for aa in (False, True):
            out = resample(noise, src_aff, (20, 20, 20), tgt_aff, anti_alias=aa)
            sds[offset, aa] = float(out.std())
    assert sds[0.0, False] == pytest.approx(1.0, abs=0.05)
    assert sds[0.5, False] < 0.5  # the mean of 8 neighbours: 1 / sqrt(8)
    assert max(sds[0.0, True], sds[0.5, True]) < 0.5
    assert sds[0.0, True] / sds[0.5, True] < 1.6  # against 2.8 for point reads


def test_anti_aliased_resampling_keeps_smooth_images_and_fine_grids():
    x = np.arange(40, dtype=np.float32)
    ramp = np.broadcast_to(x[:, None, None], (40, 40, 40)).copy()
    tgt_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    tgt_aff[:3, 3] = 6.0
    out = resample(ramp, np.eye(4), (12, 12, 12), tgt_aff, anti_alias=True)
    assert np.allclose(out, 6.0 + 2.0 * np.arange(12)[:, None, None], atol=1e-3)
    # upsampling, or the same spacing: nothing to smooth
    assert anti_alias_sigma(np.diag([0.5, 1.0, 1.0, 1.0])) == (0.0, 0.0, 0.0)
    rot = rigid_matrix((20.0, -15.0, 30.0))
    assert np.allclose(anti_alias_sigma(rot @ np.diag([2.0, 2.0, 2.0, 1.0])), 0.7355, atol=1e-3)


def test_downsample_blocks_keeps_world_positions():
    aff = oblique_affine()
    x = np.arange(12, dtype=np.float32)
    data = np.broadcast_to(x[:, None, None], (12, 8, 6)).copy()
    low, low_aff = downsample_blocks(data, aff, (3, 2, 1))
    assert low.shape == (4, 4, 6)
    # voxel 1 of the result averages source voxels 3, 4, 5 -> value 4 at source index 4
    assert low[1, 0, 0] == pytest.approx(4.0)
    assert np.allclose(
        nib.affines.apply_affine(low_aff, [1, 0, 0]), nib.affines.apply_affine(aff, [4, 0.5, 0])
    )


def test_mean_transform_is_unbiased(rng):
    m = random_affine(rng, max_scaling=0.0)
    assert np.allclose(mean_transform([m, np.linalg.inv(m)]), np.eye(4), atol=1e-8)
    half = mean_transform([np.eye(4), m])
    assert np.allclose(half @ half, m, atol=1e-8)
    r = rigid_matrix((4.0, -3.0, 2.0), (5.0, 1.0, -2.0))
    assert np.allclose(
        nearest_rigid(mean_transform([np.eye(4), r])), mean_transform([np.eye(4), r]), atol=1e-8
    )
    with pytest.raises(ValueError):
        mean_transform([])
    with pytest.raises(ValueError):
        mean_transform([m, m], weights=[0.2, 0.2])


def test_decompose_and_random_affine_limits(rng):
    for _ in range(20):
        m = random_affine(rng, max_rotation_deg=10, max_translation_mm=10, max_scaling=0.05)
        d = decompose(m)
        assert np.all(np.abs(d["scales"] - 1) <= 0.05 + 1e-9)
        assert d["rotation_deg"] <= np.sqrt(3) * 10 + 1e-6
    r = rigid_matrix((0, 0, 30), (1, 2, 3))
    d = decompose(r)
    assert d["rotation_deg"] == pytest.approx(30)
    assert np.allclose(d["scales"], 1)
    assert d["determinant"] == pytest.approx(1)


def test_displacement_error():
    a = np.eye(4)
    b = np.eye(4)
    b[:3, 3] = [3, 4, 0]
    pts = np.zeros((5, 3))
    assert np.allclose(displacement_error(a, b, pts), 5.0)
