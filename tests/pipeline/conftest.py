"""Fast stand-ins for registration, so that study runs can be tested in seconds.

``stub_registration`` replaces the two expensive calls of the real registration workflows: the
preprocessing of one scan (``preprocess_t1w``) and the longitudinal registration of one participant
(``register_participant``). Both still read every input scan with neurocast's own loader, so a
corrupt scan fails exactly as it would in a real run; everything around them (dataset discovery,
``preprocess_dataset``/``register_dataset``, skipping complete outputs, failure isolation, the
locks, the reports) is the real code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

GRID_SHAPE = (12, 14, 10)


def _grid():
    from neurocast.registration.template import Grid

    return Grid(GRID_SHAPE, np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.fixture
def stub_registration(monkeypatch):
    """Fast preprocess/register stand-ins; yields the list of calls ``(step, scan or label)``."""
    import neurocast.registration.preprocess as pp
    import neurocast.registration.workflows as wf
    from neurocast.io.batch import Skipped
    from neurocast.io.nifti import load_image

    calls: list[tuple[str, str]] = []

    def fake_preprocess(path, **kwargs):
        calls.append(("preprocess", Path(path).name))
        img = load_image(path)  # a corrupt scan fails here, as in a real run
        grid = _grid()
        data = np.asarray(img.dataobj, np.float32)[
            : GRID_SHAPE[0], : GRID_SHAPE[1], : GRID_SHAPE[2]
        ]
        vol = np.zeros(GRID_SHAPE, np.float32)
        vol[: data.shape[0], : data.shape[1], : data.shape[2]] = data
        image = grid.image(vol)
        mask = grid.image((vol > vol.mean()).astype(np.uint8))
        qc = {"passed": True, "similarity": 0.8, "mask_volume_ml": 1400.0, "reasons": []}
        return pp.PreprocessResult(image, mask, image, mask, np.eye(4), False, qc, grid, {})

    def fake_register(participant, writer, *, seed=0, force=False, **kwargs):
        sub = participant.participant_id
        inputs = [s.t1w[0] for s in participant.sessions]
        prov = {"inputs": inputs, "parameters": {"step": "register"}, "seed": seed}
        rel = f"{sub}/anat/{sub}_desc-longitudinal_qc.json"
        if not force and writer.is_complete(rel, **prov):
            raise Skipped("complete")
        calls.append(("register", participant.label))
        images = [load_image(p) for p in inputs]
        grid = _grid()
        followups = []
        for k, (ses, img) in enumerate(zip(participant.sessions, images, strict=True)):
            folder = f"{sub}/{ses.entity}/anat" if ses.label else f"{sub}/anat"
            pre = f"{sub}_{ses.entity}" if ses.label else sub
            vol = np.zeros(GRID_SHAPE, np.float32)
            d = np.asarray(img.dataobj, np.float32)[
                : GRID_SHAPE[0], : GRID_SHAPE[1], : GRID_SHAPE[2]
            ]
            vol[: d.shape[0], : d.shape[1], : d.shape[2]] = d
            writer.write_nifti(
                f"{folder}/{pre}_space-MNI152NLin2009aSym_res-2_desc-longitudinal_T1w.nii.gz",
                grid.image(vol), **prov,
            )  # fmt: skip
            if k:
                followups.append({"session_id": ses.entity, "ncc_before": 0.9, "ncc_after": 0.95,
                                  "folding": 0.0})  # fmt: skip
        summary = {"participant_id": sub, "passed": True, "followups": followups}
        writer.write_json(rel, {"summary": summary, "qc": {"passed": True}}, **prov)
        return summary

    monkeypatch.setattr(pp, "preprocess_t1w", fake_preprocess)
    monkeypatch.setattr(wf, "register_participant", fake_register)
    return calls


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A tiny BIDS dataset: three participants, one of them with a corrupt follow-up scan."""
    from nc_testutils import make_bids

    root = make_bids(tmp_path / "bids", {"01": ["bl", "m12"], "02": ["bl", "m12"], "03": ["bl"]})
    corrupt(root)
    return root


def corrupt(root: Path) -> Path:
    """Replace sub-02's follow-up scan by bytes that are not a NIfTI image."""
    bad = root / "sub-02" / "ses-m12" / "anat" / "sub-02_ses-m12_T1w.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a NIfTI image")
    return bad
