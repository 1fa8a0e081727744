"""The shipped demo detector on real healthy scans it was neither trained nor calibrated on."""

from __future__ import annotations

import pytest

from neurocast.anomaly.scan import prepare_scan
from neurocast.anomaly.workflow import load_detector


@pytest.fixture(scope="module")
def shipped():
    return load_detector(None)


def test_the_shipped_calibration_takes_the_noise_level_out_of_the_artefact_features(
    shipped,
) -> None:
    lines = shipped.calibration_.noise_lines
    assert set(lines) == {"residual_median", "residual_p90", "cjv"}
    assert all(line["slope"] > 0 for line in lines.values())  # noisier healthy scans read higher


def test_a_real_healthy_scan_from_another_scanner_passes(shipped, shared_data) -> None:
    """chris_t1 (0.88 mm, uint8, another scanner) has a noisier residual than any reference; the
    issue asks that real healthy scans held out of training and calibration are not flagged."""
    scan = prepare_scan(shared_data / "chris_t1" / "chris_t1.nii.gz", grid=shipped.grid_)
    result = shipped.score(scan)
    assert result.flag == "pass", result.summary()
    assert result.noise_sd > 0.03  # the reason it was flagged before: finer detail, more noise
    assert result.artefact_score < shipped.calibration_.artefact_threshold - 1.0
