"""MRIQC's anatomical IQMs: hand-computed values on a small synthetic image, undefined metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurocast.anomaly.iqm import (
    BACKGROUND_METRICS,
    DIETRICH_FACTOR,
    METRICS,
    SKULL_STRIPPED_REASON,
    IQMResult,
    compute_iqms,
    efc,
    head_and_air_masks,
    segment_tissues,
)


def _phantom():
    """A 20^3 image: air (noise), a 'head' block with CSF, GM and WM slabs of known values."""
    rng = np.random.default_rng(3)
    img = np.abs(rng.normal(0.0, 2.0, (20, 20, 20)))  # Rayleigh-like air
    tissues = np.zeros(img.shape, np.int8)
    tissues[5:15, 5:15, 5:8] = 1  # CSF
    tissues[5:15, 5:15, 8:11] = 2  # GM
    tissues[5:15, 5:15, 11:15] = 3  # WM
    means = {1: 30.0, 2: 60.0, 3: 100.0}
    for lab, mu in means.items():
        m = tissues == lab
        img[m] = rng.normal(mu, 3.0, int(m.sum()))
    brain = tissues > 0
    head = np.zeros(img.shape, bool)
    head[4:16, 4:16, 4:16] = True
    img[head & ~brain] = 80.0  # "scalp"
    air = np.zeros(img.shape, bool)
    air[:3] = True  # two slabs of air, away from the head
    air[-3:] = True
    return img, brain, tissues, head, air


def test_iqms_match_hand_computed_values() -> None:
    img, brain, tissues, head, air = _phantom()
    out = compute_iqms(img, brain, tissues=tissues, air_mask=air, head_mask=head,
                       skull_stripped=False)  # fmt: skip
    v = out.values
    assert set(v) == set(METRICS) and not out.undefined
    wm, gm, csf, a = img[tissues == 3], img[tissues == 2], img[tissues == 1], img[air]
    assert v["cjv"] == pytest.approx((wm.std() + gm.std()) / abs(wm.mean() - gm.mean()))
    assert v["cnr"] == pytest.approx(
        abs(wm.mean() - gm.mean()) / math.sqrt(a.std() ** 2 + wm.std() ** 2 + gm.std() ** 2)
    )
    n = wm.size
    assert v["snr_wm"] == pytest.approx(wm.mean() / (wm.std() * math.sqrt(n / (n - 1))))
    snrs = [t.mean() / (t.std() * math.sqrt(t.size / (t.size - 1))) for t in (csf, gm, wm)]
    assert v["snr_total"] == pytest.approx(np.mean(snrs))
    assert v["snrd_gm"] == pytest.approx(gm.mean() / (math.sqrt(2 / (4 - math.pi)) * a.std()))
    assert DIETRICH_FACTOR == pytest.approx(1 / math.sqrt(2 / (4 - math.pi)))
    assert v["fber"] == pytest.approx(np.median(img[head] ** 2) / np.median(a**2))
    assert v["wm2max"] == pytest.approx(np.median(wm) / np.percentile(img, 99.95))
    # EFC by its definition, over every voxel (no zero padding here)
    x = img.ravel()
    b = math.sqrt((x**2).sum())
    e = -np.sum((x / b) * np.log(x / b))
    assert v["efc"] == pytest.approx(e / (math.sqrt(x.size) * math.log(math.sqrt(x.size))))
    assert v["qi1"] == 0.0  # clean air: no artefact voxels


def test_qi1_counts_ghosts_in_the_air() -> None:
    img, brain, tissues, head, air = _phantom()
    ghost = img.copy()
    ghost[0:3, 8:14, 8:14] = 200.0  # a bright 3x6x6 ghost in the air
    out = compute_iqms(ghost, brain, tissues=tissues, air_mask=air, head_mask=head,
                       skull_stripped=False)  # fmt: skip
    assert out.values["qi1"] > 0 and out.n_voxels["artefact"] > 0
    assert out.values["qi1"] <= 108 / air.sum() + 1e-12  # never more than the ghost itself


def test_efc_extremes() -> None:
    flat = np.ones((5, 5, 5))
    spike = np.zeros((5, 5, 5))
    spike[2, 2, 2] = 1.0
    assert efc(flat) == pytest.approx(1.0)
    assert efc(spike) == pytest.approx(0.0, abs=1e-12)


def test_skull_stripped_input_gives_undefined_background_metrics_with_a_reason() -> None:
    img, brain, tissues, _head, _air = _phantom()
    stripped = np.where(brain, img, 0.0)
    out = compute_iqms(stripped, brain, tissues=tissues, skull_stripped=True)
    for name in BACKGROUND_METRICS:
        assert math.isnan(out.values[name])
        assert out.undefined[name] == SKULL_STRIPPED_REASON
    assert math.isfinite(out.values["cjv"]) and math.isfinite(out.values["snr_wm"])
    # not told: an all-zero air is detected and explained, not turned into a number
    found = compute_iqms(stripped, brain, tissues=tissues)
    assert all(math.isnan(found.values[n]) for n in BACKGROUND_METRICS)
    assert "zero" in found.undefined["fber"] or "air" in found.undefined["fber"]
    # JSON: NaN becomes None, the reasons travel along
    d = out.to_dict()
    assert d["values"]["fber"] is None and "skull-stripped" in d["undefined"]["fber"]
    back = IQMResult.from_dict(d)
    assert math.isnan(back.get("fber")) and back.get("cjv") == pytest.approx(out.values["cjv"])


def test_tissue_segmentation_and_masks() -> None:
    img, brain, tissues, _head, _air = _phantom()
    seg = segment_tissues(img, brain)
    assert np.mean(seg[brain] == tissues[brain]) > 0.99
    h, a = head_and_air_masks(img, brain, spacing=(1, 1, 1), margin_mm=2.0)
    assert h[brain].all() and not (h & a).any()
    assert a[0, 0, 0] and not a[10, 10, 10]
