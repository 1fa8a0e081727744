"""`neurocast preprocess` and `neurocast register` on a BIDS tree built from the shared real scans."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from neurocast.cli.main import cli
from neurocast.registration.atlas import load_atlas


@pytest.fixture(scope="module")
def real_bids(shared_data: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("realbids")
    src = shared_data / "ixi" / "IXI014-HH-1236-T1_ds.nii.gz"
    for ses in ("bl", "m12"):  # the same real scan twice: a subject with no change
        d = root / "sub-ixi14" / f"ses-{ses}" / "anat"
        d.mkdir(parents=True)
        shutil.copy(src, d / f"sub-ixi14_ses-{ses}_T1w.nii.gz")
    bad = root / "sub-broken" / "ses-bl" / "anat"
    bad.mkdir(parents=True)
    (bad / "sub-broken_ses-bl_T1w.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\nsub-ixi14\t38\tF\nsub-broken\tn/a\tn/a\n"
    )
    (root / "dataset_description.json").write_text('{"Name": "real", "BIDSVersion": "1.9.0"}')
    return root


@pytest.mark.slow
def test_preprocess_then_register_real_scans(real_bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = CliRunner().invoke(cli, ["preprocess", str(real_bids), str(out), "participant", "-q"])
    assert run.exit_code == 3, run.output  # the broken participant failed, the other finished
    qc = pd.read_csv(out / "group_desc-preproc_qc.tsv", sep="\t")
    assert list(qc["session_id"]) == ["ses-bl", "ses-m12"] and qc["passed"].all()
    assert "sub-broken" in (out / "logs" / "failures.tsv").read_text()

    run = CliRunner().invoke(
        cli,
        ["register", str(real_bids), str(out), "participant", "--participant-label", "ixi14", "-q"],
    )
    assert run.exit_code == 0, run.output
    anat = out / "sub-ixi14" / "ses-m12" / "anat"
    change = pd.read_csv(anat / "sub-ixi14_ses-m12_desc-regionalchange_volumes.tsv", sep="\t")
    hippo = change.set_index("region").loc["Hippocampus", "volume_change_percent"]
    assert abs(hippo) < 1.0  # identical scans: no change
    side = json.loads(
        (
            anat / "sub-ixi14_ses-m12_space-MNI152NLin2009aSym_res-2_desc-longitudinal_T1w.json"
        ).read_text()
    )
    assert {i["path"].rsplit("/", 1)[-1] for i in side["Inputs"]} >= {"sub-ixi14_ses-bl_T1w.nii.gz"}
    # the regions were fitted to this participant: its labels differ from the template atlas, yet
    # every region is still there, inside the brain
    labels = nib.load(
        out
        / "sub-ixi14/ses-bl/anat/sub-ixi14_ses-bl_space-MNI152NLin2009aSym_res-2_atlas-neurocast_desc-subject_dseg.nii.gz"
    )
    atlas = load_atlas()
    subject, template = np.asarray(labels.dataobj), np.asarray(atlas.labels.dataobj)
    assert subject.shape == template.shape and (subject != template).mean() > 0.01
    assert set(np.unique(template)) == set(np.unique(subject))
    base = pd.read_csv(
        out / "sub-ixi14/anat/sub-ixi14_space-MNI152NLin2009aSym_desc-atlas_volumes.tsv", sep="\t"
    )
    hippo_ml = base.set_index("region").loc["Hippocampus", "volume_mm3"] / 1000
    hippo_labels = atlas.regions.set_index("name").loc["Hippocampus", "source_labels"]
    assert hippo_ml == pytest.approx(np.isin(subject, hippo_labels).sum() * 8 / 1000, rel=1e-6)
    run = CliRunner().invoke(
        cli,
        ["register", str(real_bids), str(out), "participant", "--participant-label", "ixi14", "-q"],
    )
    assert run.exit_code == 0 and "1 skipped" in run.output  # resumed, nothing recomputed
