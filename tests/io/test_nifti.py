"""NIfTI loading: every real scan loads to RAS+; every kind of unusable file gets its own error."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neurocast.errors import InvalidImageError
from neurocast.io import load_image, read_info, voxel_size


def _real_scans(shared_data: Path) -> list[Path]:
    scans = sorted(p for p in shared_data.rglob("*.nii*") if p.is_file())
    assert len(scans) >= 20, "expected the shared real scans"
    return scans


def test_every_real_scan_loads_to_canonical_ras(shared_data: Path) -> None:
    for path in _real_scans(shared_data):
        info = read_info(path)
        img = load_image(path)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S"), path
        assert img.get_data_dtype() == np.float32, path
        assert np.isfinite(img.get_fdata()).all()
        # reorientation permutes axes but keeps the physical field of view
        stored = sorted(round(e, 3) for e in info.extent_mm)
        loaded = sorted(round(n * z, 3) for n, z in zip(img.shape, voxel_size(img), strict=True))
        assert stored == pytest.approx(loaded, abs=1e-2), path
        # world coordinates of the volume's centre do not move
        centre_before = nib.affines.apply_affine(
            nib.load(str(path)).affine, (np.array(info.shape) - 1) / 2
        )
        centre_after = nib.affines.apply_affine(img.affine, (np.array(img.shape) - 1) / 2)
        np.testing.assert_allclose(centre_before, centre_after, atol=1e-3)


def test_orientation_and_dtype_variety_is_handled(shared_data: Path) -> None:
    psr = read_info(shared_data / "ixi" / "IXI012-HH-1211-T1_ds.nii.gz")
    assert psr.orientation == ("P", "S", "R")
    big_endian = read_info(shared_data / "nibabel" / "anatomical.nii")
    assert big_endian.dtype.byteorder == ">"
    img = load_image(shared_data / "nibabel" / "anatomical.nii")
    raw = np.asanyarray(nib.load(str(shared_data / "nibabel" / "anatomical.nii")).dataobj)
    assert img.get_fdata().sum() == pytest.approx(float(raw.astype(np.float64).sum()), rel=1e-6)
    aniso = read_info(shared_data / "open_ms_long" / "patient01_study1_T1W.nii.gz")
    assert aniso.voxel_size_mm[2] == pytest.approx(3.0, abs=0.01)
    assert aniso.voxel_size_mm[0] < 1.0


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(data, None)
    # store the affine raw in the sform (nibabel refuses singular ones as a qform), as broken
    # pipelines do; the qform is left unset so readers use the sform
    img.header.set_sform(np.eye(4) if affine is None else affine, code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, str(path))
    return path


def _vol(shape=(8, 9, 10), dtype=np.float32) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape).astype(dtype)


@pytest.mark.parametrize(
    ("name", "maker", "message"),
    [
        ("missing.nii.gz", None, "does not exist"),
        ("empty.nii.gz", lambda p: p.write_bytes(b""), "empty"),
        ("text.nii.gz", lambda p: p.write_text("hello, not an image"), "not a readable NIfTI"),
        ("notgz.nii.gz", lambda p: p.write_bytes(gzip.compress(b"x" * 400)), "NIfTI"),
        ("plain.txt", lambda p: p.write_text("x"), "not a NIfTI file name"),
        ("flat.nii.gz", lambda p: _save(p, _vol((8, 9))), "2-D"),
        ("slice.nii.gz", lambda p: _save(p, _vol((8, 9, 1))), "2-D"),
        ("fourd.nii.gz", lambda p: _save(p, _vol((8, 9, 10, 3))), "4-D with 3 volumes"),
        (
            "nan.nii.gz",
            lambda p: _save(p, np.where(_vol() > 5, _vol(), np.nan).astype(np.float32)),
            "NaN or Inf",
        ),
        (
            "inf.nii.gz",
            lambda p: _save(p, np.where(_vol() > 5, _vol(), np.inf).astype(np.float32)),
            "NaN or Inf",
        ),
        ("zeros.nii.gz", lambda p: _save(p, np.zeros((8, 9, 10), np.float32)), "constant"),
        ("singular.nii.gz", lambda p: _save(p, _vol(), np.diag([1.0, 0.0, 1.0, 1.0])), "singular"),
        (
            "nanaffine.nii.gz",
            lambda p: _save(p, _vol(), np.diag([1.0, np.nan, 1.0, 1.0])),
            "NaN or Inf",
        ),
        (
            "tinyvox.nii.gz",
            lambda p: _save(p, _vol(), np.diag([1e-4, 1e-4, 1e-4, 1.0])),
            "voxel size",
        ),
        (
            "hugevox.nii.gz",
            lambda p: _save(p, _vol(), np.diag([100.0, 1.0, 1.0, 1.0])),
            "voxel size",
        ),
    ],
)
def test_bad_images_get_specific_errors(tmp_path: Path, name: str, maker, message: str) -> None:
    path = tmp_path / name
    if maker is not None:
        maker(path)
    with pytest.raises(InvalidImageError) as excinfo:
        load_image(path)
    assert message in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    good = _save(
        tmp_path / "good.nii.gz", np.random.default_rng(0).random((30, 30, 30)).astype(np.float32)
    )
    data = good.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="truncated|corrupt"):
        load_image(bad)


def test_truncated_uncompressed_is_refused(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.nii", _vol((20, 20, 20)))
    bad = tmp_path / "trunc.nii"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(InvalidImageError, match=str(bad)):
        load_image(bad)


def test_enormous_dimensions_refused_from_header_alone(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_data_dtype(np.uint8)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as fh:  # header only: the data would be 64 GB
        fh.write(hdr.binaryblock + b"\x00" * 4)
    with pytest.raises(InvalidImageError, match="too large"):
        read_info(path)


def test_4d_with_one_volume_and_left_handed_affine_load(tmp_path: Path) -> None:
    data = _vol((8, 9, 10, 1))
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS: left-handed storage
    img = load_image(_save(tmp_path / "one.nii.gz", data, affine))
    assert img.shape == (8, 9, 10)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(img.get_fdata()[::-1], data[..., 0])


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float64, ">i2", ">f4"]
)
def test_dtypes_and_endianness_give_same_values(tmp_path: Path, dtype) -> None:
    data = _vol().astype(dtype)
    img = load_image(_save(tmp_path / "d.nii", data))
    np.testing.assert_array_equal(img.get_fdata(), data.astype(np.float64))


def test_scaling_is_applied(tmp_path: Path) -> None:
    img = nib.Nifti1Image(_vol().astype(np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    loaded = load_image(tmp_path / "s.nii.gz")
    assert loaded.get_fdata().min() == pytest.approx(10.0)
