"""The QA picture's planes go through the main finding, or through the brain when there is none."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from neurocast.anomaly import overlay
from neurocast.anomaly import workflow as qa_workflow


def test_largest_cluster_centre_ignores_a_small_bright_spot_far_away() -> None:
    amap = np.zeros((40, 12, 12), np.float32)
    amap[3:9, 3:9, 3:9] = 2.0  # the finding: 216 voxels, excess 1 (mass 216)
    amap[36:38, 5:7, 5:7] = 20.0  # a small bright spot at the other end (mass 152)
    centre = overlay.largest_cluster_centre(amap, 1.0)
    assert centre is not None
    assert np.allclose(centre, (5.5, 5.5, 5.5))
    # the centre over every supra-threshold voxel would have left the cluster
    idx = np.argwhere(amap > 1.0)
    assert np.average(idx[:, 0], weights=amap[amap > 1.0] - 1.0) > 9


def test_no_cluster_gives_none_and_the_brain_centre_is_the_non_zero_centre() -> None:
    assert overlay.largest_cluster_centre(np.zeros((8, 8, 8)), 0.5) is None
    img = np.zeros((20, 20, 20), np.float32)
    img[4:10, 6:16, 2:12] = 1.0
    assert overlay.image_centre(img) == pytest.approx((6.5, 10.5, 6.5))
    assert overlay.image_centre(np.zeros((5, 7, 9))) == (2.0, 3.0, 4.0)


def test_qa_figure_of_a_scan_without_findings_goes_through_the_brain_centre(monkeypatch) -> None:
    img = np.zeros((30, 30, 30), np.float32)
    img[5:25, 5:25, 5:25] = 1.0
    amap = np.zeros_like(img)
    amap[6, 6, 6] = 9.0  # a voxel above threshold that post-processing dropped (no component)
    seen = {}

    def fake_overlay_png(image, reconstruction, anomaly_map, *, threshold, centre):
        seen["centre"] = centre
        return b"png"

    monkeypatch.setattr(overlay, "overlay_png", fake_overlay_png)
    scan = SimpleNamespace(image=img)
    clean = SimpleNamespace(components=[], reconstruction=img, anomaly_map=amap)
    assert qa_workflow._figure_png(scan, clean, threshold=1.0) == b"png"
    assert seen["centre"] == pytest.approx((14.5, 14.5, 14.5))

    found = SimpleNamespace(centroid=(6.0, 7.0, 8.0))
    flagged = SimpleNamespace(components=[found], reconstruction=img, anomaly_map=amap)
    qa_workflow._figure_png(scan, flagged, threshold=1.0)
    assert seen["centre"] == (6.0, 7.0, 8.0)
