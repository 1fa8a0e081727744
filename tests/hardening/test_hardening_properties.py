"""Property-based tests (issue 9): readers and deformation utilities never crash on any input.

Complements ``tests/io/test_properties.py`` (well-formed headers written by nibabel, participant
frames): here the NIfTI header is fuzzed at the byte level (every field set straight into the
348-byte header, inconsistent with each other and with the data that follows), table files get
random headers (duplicates, unicode), cells, line endings and byte-order marks, and the deformation
utilities get random small fields. The only exceptions allowed are the documented ones:
:class:`~neurocast.errors.InvalidImageError` / :class:`~neurocast.errors.InvalidTableError` from
the readers, ``ValueError`` from the deformation utilities (malformed tensors).
"""

from __future__ import annotations

import gzip
import os
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from neurocast.errors import InvalidImageError, InvalidTableError
from neurocast.io import load_image, read_info
from neurocast.io.tables import read_table
from neurocast.registration.deformation import (
    compose,
    folding_fraction,
    integrate_velocity,
    jacobian_determinant,
    volume_change_map,
    warp,
)

SETTINGS = settings(
    # CI runs 40 examples a test; set NEUROCAST_FUZZ_EXAMPLES for a long fuzzing run
    max_examples=int(os.environ.get("NEUROCAST_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 1e-12, 1e12, float("nan"), float("inf")]),
)
# NIfTI-1 datatype codes: the real ones, and nonsense
DATATYPES = [
    0,
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    768,
    1024,
    1280,
    1536,
    1792,
    2048,
    2304,
    7,
    999,
]
VALID_DTYPES = [
    np.uint8,
    np.int8,
    np.int16,
    np.uint16,
    np.int32,
    np.float32,
    np.float64,
    ">i2",
    ">f4",
]


def sometimes(fuzz: st.SearchStrategy) -> st.SearchStrategy:
    """``None`` (keep the valid value) three times in four, else a value from ``fuzz``."""
    return st.one_of(st.none(), st.none(), st.none(), fuzz)


# ------------------------------------------------------------------------------------ NIfTI
@SETTINGS
@given(
    shape=st.one_of(
        st.lists(st.integers(2, 9), min_size=3, max_size=3),
        st.lists(st.integers(2, 9), min_size=3, max_size=3),
        st.lists(st.integers(1, 9), min_size=2, max_size=5),
    ),
    dtype=st.sampled_from(VALID_DTYPES),
    zooms=st.lists(st.floats(0.3, 8.0), min_size=3, max_size=3),
    fill=st.sampled_from(["noise", "nan", "inf", "constant", "huge"]),
    dim=sometimes(st.lists(st.integers(-2, 12), min_size=8, max_size=8)),
    pixdim=sometimes(st.lists(any_float, min_size=8, max_size=8)),
    datatype=sometimes(st.sampled_from(DATATYPES)),
    bitpix=sometimes(st.sampled_from([0, 8, 16, 32, 64, 128, 256, 7])),
    codes=st.tuples(st.integers(-1, 5), st.integers(-1, 5)),  # qform, sform
    quatern=sometimes(st.lists(any_float, min_size=6, max_size=6)),
    srow=sometimes(st.lists(any_float, min_size=12, max_size=12)),
    scaling=st.tuples(any_float, any_float),
    vox_offset=sometimes(st.sampled_from([0.0, 348.0, 353.0, 1e9, -4.0, float("nan")])),
    payload=st.sampled_from(["exact", "exact", "short", "none", "long"]),
    compressed=st.booleans(),
)
def test_fuzzed_nifti_headers_load_or_raise_invalid_image(
    shape, dtype, zooms, fill, dim, pixdim, datatype, bitpix, codes, quatern, srow, scaling,
    vox_offset, payload, compressed,
) -> None:  # fmt: skip
    """A valid small scan whose header fields are then overwritten raw (no consistency fixes)."""
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    data = rng.normal(100, 30, shape)
    if fill == "nan":
        data.flat[::5] = np.nan
    elif fill == "inf":
        data.flat[::7] = -np.inf
    elif fill == "constant":
        data[:] = 3.0
    elif fill == "huge":
        data *= 1e36
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        data = np.clip(np.nan_to_num(data), info.min, info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        data = data.astype(dt)
    affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dt)
    raw = img.header.structarr
    raw["vox_offset"] = 352
    for name, value in (("dim", dim), ("pixdim", pixdim), ("datatype", datatype),
                        ("bitpix", bitpix), ("vox_offset", vox_offset)):  # fmt: skip
        if value is not None:
            raw[name] = value
    raw["dim"][0] = min(max(int(raw["dim"][0]), -1), 8)
    raw["qform_code"], raw["sform_code"] = codes
    if quatern is not None:
        for name, v in zip(("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"), quatern, strict=True):  # fmt: skip
            raw[name] = v
    if srow is not None:
        raw["srow_x"], raw["srow_y"], raw["srow_z"] = srow[:4], srow[4:8], srow[8:]
    raw["scl_slope"], raw["scl_inter"] = scaling
    body = data.tobytes(order="F")
    body = {"exact": body, "short": body[: len(body) // 2], "none": b"", "long": body * 2}[payload]
    blob = raw.tobytes() + b"\x00" * 4 + body
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("x.nii.gz" if compressed else "x.nii")
        path.write_bytes(gzip.compress(blob) if compressed else blob)
        for reader in (read_info, load_image):
            try:
                out = reader(path)
            except InvalidImageError as exc:
                assert str(path) in str(exc) and exc.problem
                event(f"{reader.__name__}: refused ({exc.problem.split('(')[0].strip()[:40]})")
            else:
                event(f"{reader.__name__}: read")
                if reader is load_image:
                    arr = np.asarray(out.dataobj)
                    assert arr.ndim == 3 and arr.dtype == np.float32
                    assert np.isfinite(arr).all() and np.isfinite(out.affine).all()
                    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
                else:
                    assert len(out.shape) == 3 and all(v > 0 for v in out.voxel_size_mm)


# ------------------------------------------------------------------------------------ tables
fuzz_cell = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        ["", "n/a", "N/A", "sub-ü", "1e400", "nan", "inf", "-1", '"quoted', "2021-02-30",
         " 71 ", "sub-<b>x</b>", "a\tb", "ses-", "sub-01"]
    ),
)  # fmt: skip
VALID_CELLS = {
    "participant_id": st.sampled_from(["sub-01", "sub-02", "sub-03", "sub-A7"]),
    "session_id": st.sampled_from(["ses-bl", "ses-m12", "ses-m24"]),
    "age": st.sampled_from(["70", "70.5", "n/a", "", "101"]),
    "sex": st.sampled_from(["M", "F", "female", "n/a"]),
    "diagnosis": st.sampled_from(["CN", "MCI", "AD", "n/a"]),
    "apoe4": st.sampled_from(["0", "1", "2", "n/a"]),
    "mmse": st.sampled_from(["30", "24.5", "0", "n/a"]),
    "acq_time": st.sampled_from(["2020-01-01", "2021-06-30T10:00:00", "n/a"]),
}


@st.composite
def tables(draw, key: str) -> tuple[list[str], list[list[str]]]:
    """A header of known and unknown columns (the key column usually there, sometimes a column
    twice), and rows of mostly valid cells (one in eight fuzzed, some rows short or long)."""
    others = draw(st.lists(st.sampled_from(list(VALID_CELLS)), max_size=5, unique=True))
    columns = ([key] if draw(st.integers(0, 3)) else []) + [c for c in others if c != key]
    columns += draw(st.lists(st.text(max_size=6), max_size=1))
    if columns and draw(st.integers(0, 5)) == 0:
        columns.append(draw(st.sampled_from(columns)))
    columns = draw(st.permutations(columns))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = [draw(VALID_CELLS.get(c, fuzz_cell)) if draw(st.integers(0, 7)) else draw(fuzz_cell)
               for c in columns]  # fmt: skip
        if draw(st.integers(0, 9)) == 0:
            row = row[: draw(st.integers(0, len(row)))]
        if draw(st.integers(0, 9)) == 0:
            row += draw(st.lists(fuzz_cell, min_size=1, max_size=2))
        rows.append(row)
    return columns, rows


@st.composite
def schema_and_table(draw):
    schema = draw(st.sampled_from(["participants", "sessions"]))
    key = "participant_id" if schema == "participants" else "session_id"
    return schema, draw(tables(key))


@SETTINGS
@given(
    schema_table=schema_and_table(),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
    csv=st.booleans(),
)
def test_fuzzed_tables_read_or_raise_invalid_table(schema_table, newline, bom, csv) -> None:
    schema, (header, rows) = schema_table
    sep = "," if csv else "\t"
    text = newline.join(sep.join(r) for r in [header, *rows]) + newline
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("t.csv" if csv else "t.tsv")
        path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
        try:
            out = read_table(path, schema)
        except InvalidTableError as exc:
            assert str(path) in str(exc)
            assert exc.problems and all(p.get("message") for p in exc.problems)
            event("refused")
            return
    event("read")
    key = "participant_id" if schema == "participants" else "session_id"
    prefix = "sub" if schema == "participants" else "ses"
    assert key in out.columns and not out.columns.duplicated().any()
    ids = [i for i in out[key] if i is not None]
    assert all(re.fullmatch(rf"{prefix}-[A-Za-z0-9]+", i) for i in ids)
    assert len(set(ids)) == len(ids)
    # typed columns: a number in the schema's range, or missing (None, or NaN in a float column)
    if "age" in out.columns:
        assert all(a is None or a != a or 0 <= a <= 120 for a in out["age"])
    if schema == "participants" and "apoe4" in out.columns:
        assert all(a is None or a != a or a in (0, 1, 2) for a in out["apoe4"])


# ------------------------------------------------------------------------------------ deformation
shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7))
dtypes = st.sampled_from([torch.float32, torch.float64])


def _field(shape, seed: int, amplitude: float, smooth: bool, dtype, batch: int = 1) -> torch.Tensor:
    """A random velocity/displacement (voxels): smooth (upsampled from 3^3) or voxel-wise noise,
    scaled so its largest vector is ``amplitude`` voxels."""
    gen = torch.Generator().manual_seed(seed)
    if smooth:
        low = torch.randn((batch, 3, 3, 3, 3), generator=gen, dtype=torch.float64)
        v = torch.nn.functional.interpolate(low, size=shape, mode="trilinear", align_corners=True)
    else:
        v = torch.randn((batch, 3, *shape), generator=gen, dtype=torch.float64)
    norm = float(v.norm(dim=1).max())
    return (v * (amplitude / norm if norm > 0 else 0.0)).to(dtype)


@SETTINGS
@given(
    shape=shapes,
    seed=st.integers(0, 2**16),
    amplitude=st.floats(0.0, 6.0),
    smooth=st.booleans(),
    dtype=dtypes,
    batch=st.integers(1, 2),
    n_steps=st.integers(0, 8),
)
def test_deformation_utilities_on_random_fields_are_finite(
    shape, seed, amplitude, smooth, dtype, batch, n_steps
) -> None:
    v = _field(shape, seed, amplitude, smooth, dtype, batch)
    u = integrate_velocity(v, n_steps=n_steps)
    assert u.shape == v.shape and u.dtype == dtype and torch.isfinite(u).all()
    jac = jacobian_determinant(u)
    assert jac.shape == (batch, 1, *shape) and torch.isfinite(jac).all()
    fold = folding_fraction(u)
    assert fold.shape == (batch,) and bool(((fold >= 0) & (fold <= 1)).all())
    change = volume_change_map(v, n_steps=n_steps)
    assert change.shape == (batch, 1, *shape) and torch.isfinite(change).all()
    finer = tuple(2 * n - 1 for n in shape)
    assert torch.isfinite(volume_change_map(v, shape=finer)).all()
    image = torch.randn((batch, 2, *shape), generator=torch.Generator().manual_seed(seed + 1))
    warped = warp(image.to(dtype), u)
    assert warped.shape == image.shape and torch.isfinite(warped).all()
    # trilinear interpolation with border padding never leaves the image's range
    lo, hi = float(image.min()), float(image.max())
    assert float(warped.min()) >= lo - 1e-4 and float(warped.max()) <= hi + 1e-4
    assert torch.isfinite(compose(u, u)).all()


@SETTINGS
@given(
    shape=shapes,
    dtype=dtypes,
    batch=st.integers(1, 2),
    n_steps=st.integers(0, 8),
    seed=st.integers(0, 99),
)
def test_zero_velocity_is_the_identity(shape, dtype, batch, n_steps, seed) -> None:
    v = torch.zeros((batch, 3, *shape), dtype=dtype)
    u = integrate_velocity(v, n_steps=n_steps)
    assert torch.equal(u, torch.zeros_like(u))
    torch.testing.assert_close(jacobian_determinant(u), torch.ones((batch, 1, *shape), dtype=dtype))
    torch.testing.assert_close(volume_change_map(v), torch.ones((batch, 1, *shape), dtype=dtype))
    assert float(folding_fraction(u).max()) == 0.0
    image = torch.randn((batch, 1, *shape), generator=torch.Generator().manual_seed(seed)).to(dtype)
    torch.testing.assert_close(warp(image, u), image, atol=1e-5, rtol=1e-5)
    labels = torch.randint(0, 5, (batch, 1, *shape), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(warp(labels, u, mode="nearest"), labels)


@SETTINGS
@given(
    shape=st.tuples(st.integers(6, 10), st.integers(6, 10), st.integers(6, 10)),
    seed=st.integers(0, 2**16),
    amplitude=st.floats(0.0, 0.5),
)
def test_inverse_by_negation_for_small_smooth_fields(shape, seed, amplitude) -> None:
    """exp(-v) undoes exp(v) up to interpolation error (measured: at most 13 % of the largest
    motion on these coarse 6-10 voxel grids, where the field bends within 3 voxels)."""
    v = _field(shape, seed, amplitude, smooth=True, dtype=torch.float64)
    fwd, inv = integrate_velocity(v), integrate_velocity(-v)
    for residual in (compose(fwd, inv), compose(inv, fwd)):
        inner = residual[..., 1:-1, 1:-1, 1:-1]  # the border is clamped by the padding
        assert float(inner.abs().max()) <= 0.2 * amplitude + 1e-9
    jac = jacobian_determinant(fwd) * jacobian_determinant(inv)
    assert float(jac[..., 1:-1, 1:-1, 1:-1].sub(1).abs().max()) < 0.1


@SETTINGS
@given(
    b=st.integers(0, 2),
    c=st.integers(0, 4),
    shape=st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)),
    extra_dim=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.int64, torch.float16, torch.bool]),
)
def test_malformed_fields_raise_value_error_only(b, c, shape, extra_dim, dtype) -> None:
    size = (b, c, *shape, 2) if extra_dim else (b, c, *shape)
    t = torch.zeros(size, dtype=dtype)
    for call in (
        lambda: integrate_velocity(t),
        lambda: jacobian_determinant(t),
        lambda: folding_fraction(t),
        lambda: volume_change_map(t),
        lambda: warp(torch.zeros((max(b, 1), 1, 3, 3, 3)), t),
        lambda: compose(t, t),
    ):
        try:
            out = call()
        except ValueError as exc:
            assert str(exc)
        else:
            assert torch.isfinite(out.float()).all()
