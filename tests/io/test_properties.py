"""Property-based tests of the readers: arbitrary headers and table content never crash with
anything but the documented errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurocast.errors import InvalidImageError, InvalidTableError
from neurocast.io import load_image
from neurocast.io.tables import read_table, validate_frame

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    zooms=st.lists(floats, min_size=3, max_size=3),
    offset=st.lists(floats, min_size=3, max_size=3),
    rot=st.lists(st.floats(-1, 1), min_size=9, max_size=9),
    dtype=st.sampled_from(["u1", "i2", ">i2", "<f4", ">f8", "i4"]),
    slope=st.one_of(st.none(), floats),
    fill=st.sampled_from(["ramp", "const", "nan"]),
)
def test_arbitrary_headers_load_or_raise_invalid_image(
    shape, zooms, offset, rot, dtype, slope, fill
) -> None:
    n = int(np.prod(shape))
    data = {"ramp": np.arange(n), "const": np.ones(n), "nan": np.full(n, np.nan)}[fill].reshape(
        shape
    )
    if np.dtype(dtype).kind in "iu":
        data = np.nan_to_num(data).astype(dtype)
    else:
        data = data.astype(dtype)
    affine = np.eye(4)
    affine[:3, :3] = np.array(rot).reshape(3, 3) @ np.diag(
        np.nan_to_num(zooms, nan=1.0, posinf=1e30, neginf=-1e30)
    )
    affine[:3, 3] = offset
    img = nib.Nifti1Image(data, None)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(None, code=0)
    if slope is not None:
        img.header["scl_slope"] = slope
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.nii"
        nib.save(img, str(path))
        try:
            out = load_image(path)
        except InvalidImageError as exc:
            assert str(path) in str(exc)
        else:
            assert out.ndim == 3 and np.isfinite(out.get_fdata()).all()
            assert nib.aff2axcodes(out.affine) == ("R", "A", "S")


cells = st.one_of(
    st.text(max_size=8), st.sampled_from(["n/a", "", "CN", "AD", "1", "-1", "70.5", "1e400", "nan"])
)


@SETTINGS
@given(
    rows=st.lists(st.tuples(cells, cells, cells, cells, cells), min_size=0, max_size=6),
    prefix=st.booleans(),
)
def test_arbitrary_participant_tables_validate_or_raise(rows, prefix) -> None:
    frame = pd.DataFrame(
        [((f"sub-{r[0]}" if prefix else r[0]), *r[1:]) for r in rows],
        columns=["participant_id", "age", "diagnosis", "apoe4", "mmse"],
    )
    try:
        out = validate_frame(frame, "participants")
    except InvalidTableError as exc:
        assert exc.problems and all("message" in p for p in exc.problems)
    else:
        assert len(out) == len(rows)
        for v in out["age"]:
            assert v is None or (isinstance(v, float) and 0 <= v <= 120)


@SETTINGS
@given(text=st.text(max_size=200))
def test_arbitrary_file_text_never_crashes_reader(text) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "participants.tsv"
        path.write_text(text, encoding="utf-8")
        try:
            read_table(path, "participants")
        except InvalidTableError:
            pass
