"""Derivatives writer: description, confinement, provenance and completeness checks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurocast import __version__
from neurocast.errors import OutputError
from neurocast.io.derivatives import DerivativesWriter, sha256_file, sidecar_path


def test_dataset_description(tmp_path: Path) -> None:
    DerivativesWriter(tmp_path / "out")
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0] == {"Name": "neurocast", "Version": __version__}


def test_outputs_have_provenance_and_completeness(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("input")
    w = DerivativesWriter(tmp_path / "out")
    img = nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4))
    rel = "sub-01/anat/sub-01_desc-x_T1w.nii.gz"
    out = w.write_nifti(
        rel, img, inputs=[src], parameters={"k": [1, 2]}, seed=3, extra={"Units": "mm"}
    )
    side = json.loads(sidecar_path(out).read_text())
    assert sidecar_path(out).name == "sub-01_desc-x_T1w.json"
    assert side["Inputs"][0]["sha256"] == sha256_file(src)
    assert side["Seed"] == 3 and side["Units"] == "mm"
    assert side["OutputSHA256"] == sha256_file(out)
    assert w.is_complete(rel, inputs=[src], parameters={"k": [1, 2]}, seed=3)
    assert not w.is_complete(rel, inputs=[src], parameters={"k": [1, 2]}, seed=4)
    src.write_text("changed input")
    assert not w.is_complete(rel, inputs=[src], parameters={"k": [1, 2]}, seed=3)


def test_moved_or_linked_inputs_with_the_same_bytes_still_count_as_done(tmp_path: Path) -> None:
    first = tmp_path / "a" / "sub-01_T1w.nii.gz"
    first.parent.mkdir()
    first.write_bytes(b"scan")
    w = DerivativesWriter(tmp_path / "out")
    w.write_json("r.json", {"x": 1}, inputs=[first], parameters={}, seed=0)
    moved = tmp_path / "b" / "sub-01_T1w.nii.gz"
    moved.parent.mkdir()
    first.rename(moved)
    assert w.is_complete("r.json", inputs=[moved], parameters={}, seed=0)
    link = tmp_path / "link"
    link.symlink_to(moved.parent)
    assert w.is_complete("r.json", inputs=[link / moved.name], parameters={}, seed=0)
    renamed = moved.with_name("sub-02_T1w.nii.gz")
    moved.rename(renamed)
    assert not w.is_complete("r.json", inputs=[renamed], parameters={}, seed=0)
    renamed.write_bytes(b"another scan")
    renamed.rename(moved)
    assert not w.is_complete("r.json", inputs=[moved], parameters={}, seed=0)


def test_corrupted_output_is_not_complete(tmp_path: Path) -> None:
    w = DerivativesWriter(tmp_path)
    out = w.write_tsv("t.tsv", pd.DataFrame({"a": [1, None]}), parameters={}, seed=0)
    assert out.read_text() == "a\n1.0\nn/a\n"
    assert w.is_complete("t.tsv", seed=0)
    out.write_text("a\n2\n")
    assert not w.is_complete("t.tsv", seed=0)


@pytest.mark.parametrize("rel", ["../escape.json", "/abs/x.json", "sub-01/../../x.json"])
def test_paths_are_confined(tmp_path: Path, rel: str) -> None:
    w = DerivativesWriter(tmp_path / "out")
    with pytest.raises(OutputError):
        w.write_json(rel, {})
