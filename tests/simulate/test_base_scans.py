"""Progression simulated on real anatomy (``base_scans``: the IXI scans of the shared data)."""

from __future__ import annotations

import pytest
from tests.simulate.conftest import small_config

from neurocast.io.tables import read_table
from neurocast.simulate import simulate_cohort


@pytest.mark.slow
def test_real_scans_as_baseline_anatomy(shared_data, tmp_path):
    cfg = small_config(base_scans=str(shared_data / "ixi"), n_visits=(2, 2), tumour_fraction=0.0,
                       artefact_fraction=0.0)
    truth = simulate_cohort(tmp_path / "bids", 1, seed=3, config=cfg, progress=False)
    subjects = read_table(truth.truth_root / "subjects.tsv", "simulate_subjects")
    assert subjects.anatomy_source.iloc[0].startswith("base:IXI")
    vols = truth.regional_volumes
    last = vols[vols.session_id == truth.visits.session_id.iloc[-1]]
    hip = last[last.group == "hippocampus"]
    assert len(hip) >= 1 and (hip.ratio_to_baseline < 1).all()
    assert truth.raw_t1w(truth.visits.participant_id.iloc[0], truth.visits.session_id.iloc[-1]).is_file()
