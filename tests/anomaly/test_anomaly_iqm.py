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
    ghost_ratio,
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
    assert set(v) == set(METRICS)
    # the phantom's air is too close to its head for the ghost ratio: undefined, with the reason
    assert set(out.undefined) == {"ghost_ratio"} and "field of view" in out.undefined["ghost_ratio"]
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


def test_ghost_ratio_finds_ghosts_along_one_axis_and_ignores_the_noise_level() -> None:
    rng = np.random.default_rng(5)
    shape = (64, 72, 56)
    img = np.abs(rng.normal(0.0, 3.0, shape) + 1j * rng.normal(0.0, 3.0, shape))  # Rayleigh air
    head = np.zeros(shape, bool)
    head[22:42, 26:46, 18:38] = True
    img[head] = 100.0
    air = ~head
    clean, _ = ghost_ratio(img, head, air)
    assert abs(clean) < 0.03  # stationary noise: 0 within sampling error
    # scale-free: a scanner's gain or noise level does not move it
    assert ghost_ratio(img * 7.0, head, air)[0] == pytest.approx(clean)
    ghosted = img.copy()
    ghosted[22:42, :, 18:38] += 4.0  # energy in line with the head along axis 1 only
    value, axis = ghost_ratio(ghosted, head, air)
    assert axis == 1 and value > 0.3
    # stronger ghosts, larger ratio
    ghosted[22:42, :, 18:38] += 4.0
    assert ghost_ratio(ghosted, head, air)[0] > value
    # a field of view that hugs the head leaves no air on one side: undefined
    assert math.isnan(ghost_ratio(img[18:46, 22:50, 14:42], head[18:46, 22:50, 14:42],
                                  air[18:46, 22:50, 14:42])[0])  # fmt: skip


def test_skull_stripped_input_gives_undefined_background_metrics_with_a_reason() -> None:
    img, brain, tissues, _head, _air = _phantom()
    stripped = np.where(brain, img, 0.0)
    out = compute_iqms(stripped, brain, tissues=tissues, skull_stripped=True)
    for name in (*BACKGROUND_METRICS, "ghost_ratio"):
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


def test_the_ghost_ratio_is_measured_before_bias_correction() -> None:
    """N4's field, extrapolated into the air, scales it unevenly; the scan as acquired does not."""
    from types import SimpleNamespace

    import nibabel as nib

    from neurocast.anomaly.scan import Scan
    from neurocast.registration.template import Grid

    rng = np.random.default_rng(11)
    shape = (64, 72, 56)
    raw = np.abs(rng.normal(0.0, 3.0, shape) + 1j * rng.normal(0.0, 3.0, shape)).astype(np.float32)
    brain = np.zeros(shape, bool)
    brain[22:42, 26:46, 18:38] = True
    raw[brain] = rng.normal(100.0, 5.0, int(brain.sum()))
    y = np.arange(shape[1])
    field = (1.25 - 0.5 * ((y - 36) / 36.0) ** 2).astype(np.float32)[None, :, None]  # a smooth "N4" field
    affine = np.eye(4)
    result = SimpleNamespace(
        native=nib.Nifti1Image(raw * field, affine),
        native_brain_mask=nib.Nifti1Image(brain.astype(np.uint8), affine),
        image=nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), affine),
        brain_mask=nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), affine),
        grid=Grid((8, 8, 8), affine),
        native_to_template=np.eye(4),
        skull_stripped=False,
        params={"source": "<in-memory image>"},
        qc={"passed": True},
    )
    corrected_only = compute_iqms(raw * field, brain).get("ghost_ratio")
    assert corrected_only > 0.1  # the field alone looks like ghosting
    scan = Scan.from_preprocessed(result, raw=nib.Nifti1Image(raw, affine))
    assert abs(scan.iqms.get("ghost_ratio")) < 0.03
    # without the scan as acquired it is undefined, with the reason, never taken from the N4 image
    blind = Scan.from_preprocessed(result)
    assert math.isnan(blind.iqms.get("ghost_ratio"))
    assert "before bias correction" in blind.iqms.undefined["ghost_ratio"]
    assert math.isfinite(blind.iqms.get("cjv"))


def test_cjv_does_not_depend_on_how_much_extracerebral_csf_the_mask_holds() -> None:
    """A skull-stripped input's mask holds the CSF around the brain, a template mask does not; the
    tissue classes come from the brain's core, so both masks give the same CJV."""
    import scipy.ndimage as ndi

    from neurocast.anomaly.iqm import brain_core

    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:64, :64, :64] - 32.0
    r = np.sqrt(x**2 + y**2 + z**2)
    # ventricle, WM, GM, then a CSF shell that only the intracranial mask holds; blurred (partial volume)
    img = np.select([r < 8, r < 16, r < 24, r < 28], [25.0, 100.0, 60.0, 25.0], 0.0)
    img = ndi.gaussian_filter(img, 1.0) + rng.normal(0.0, 2.0, img.shape)
    brain, intracranial = r < 24.5, r < 28.5

    def cjv_of(mask: np.ndarray, core_mm: float) -> float:
        seg = segment_tissues(img, mask, core_mm=core_mm)
        return compute_iqms(img, mask, tissues=seg, skull_stripped=True).values["cjv"]

    whole = abs(cjv_of(intracranial, 0.0) - cjv_of(brain, 0.0))
    core = abs(cjv_of(intracranial, 3.0) - cjv_of(brain, 3.0))
    assert whole > 0.03 and core < 0.015
    # the default is the core, and compute_iqms segments with the scan's voxel size
    assert compute_iqms(img, intracranial, skull_stripped=True).values["cjv"] == pytest.approx(
        cjv_of(intracranial, 3.0)
    )
    coarse = segment_tissues(img, intracranial, spacing=(2.0, 2.0, 2.0))
    assert (coarse > 0).sum() > (segment_tissues(img, intracranial) > 0).sum()  # 3 mm = 1.5 voxels
    # the rim is unlabelled; a mask too thin for a core is segmented whole
    assert not segment_tissues(img, intracranial)[intracranial & ~brain_core(intracranial)].any()
    thin = np.zeros(img.shape, bool)
    thin[30:34, 10:50, 10:50] = True
    assert brain_core(thin).sum() == thin.sum()
