"""The RF-spike metric: a spike is found in the spectrum, whole head or skull-stripped; healthy
scans, an edge cut by the field of view and the real scans of ../shared/data are not flagged."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from torchio.transforms.augmentation.intensity.random_spike import Spike

from neurocast.anomaly.iqm import compute_iqms
from neurocast.anomaly.kspace import spike_peak
from neurocast.simulate import SimulationConfig, simulate_cohort

HEALTHY_MAX = 5.0  # healthy simulated and real scans measured 2.6-4.9 (kspace docstring)
SPIKE_MIN = 6.0


def _head(
    seed: int = 0, shape: tuple[int, int, int] = (56, 60, 52)
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth ellipsoidal 'head' with a darker core, Rician-like noise around it; its brain mask."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grid, (0.8, 0.85, 0.75), strict=True)))
    head = ndimage.gaussian_filter((r < 1.0) * 80.0 + (r < 0.8) * 40.0 - (r < 0.3) * 60.0, 1.2)
    noisy = np.abs(head + rng.normal(0, 2.5, shape) + 1j * rng.normal(0, 2.5, shape))
    return noisy.astype(np.float32), r < 0.8


def _spiked(
    image: np.ndarray, position: tuple[float, float, float], intensity: float
) -> np.ndarray:
    out = Spike(spikes_positions=np.array([position]), intensity=intensity)(
        torch.from_numpy(image)[None]
    )
    return out[0].numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_mild_spike_stands_out_and_a_healthy_scan_does_not(seed: int) -> None:
    image, _ = _head(seed)
    assert spike_peak(image) < HEALTHY_MAX
    assert spike_peak(_spiked(image, (0.7, 0.3, 0.65), 0.04)) > SPIKE_MIN


def test_a_simulated_spike_is_found_in_skull_stripped_scans(tmp_path) -> None:
    # the simulator acquires the whole head (spike included), then strips it: the same subjects
    # simulated with and without the spike differ only by it
    def scans(fraction: float) -> list[np.ndarray]:
        cfg = SimulationConfig(grid_spacing_mm=4.0, field_spacing_mm=8.0, n_visits=(2, 2),
                               native_voxel_sizes=((2.0, 2.0, 2.0),), skull_stripped_fraction=1.0,
                               artefact_fraction=fraction, artefact_types={"spike": 1.0},
                               artefact_severities={"mild": 1.0})  # fmt: skip
        root = tmp_path / f"bids-{fraction}"
        simulate_cohort(root, 2, seed=5, config=cfg, progress=False)
        return [
            np.asanyarray(nib.load(f).dataobj)
            for f in sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))
        ]

    spiked, clean = scans(1.0), scans(0.0)
    assert all((s == 0).mean() > 0.5 for s in spiked)  # stripped: most of the field of view is 0
    rise = [spike_peak(s) - spike_peak(c) for s, c in zip(spiked, clean, strict=True)]
    # three of the four spikes lie far from the centre of k-space; the fourth (sub-001 ses-bl)
    # is close to it, where the anatomy's own spectrum hides it
    assert sorted(rise)[1] > 1.5, rise


def test_signal_cut_by_the_field_of_view_is_not_a_spike() -> None:
    # a bright neck running off the bottom of the field of view: the FFT's periodic boundary
    # turns it into a cross of energy on the planes through the centre, which are left out
    image, _ = _head(3)
    image[:, :, :6] += 150.0
    assert spike_peak(image) < HEALTHY_MAX


def test_the_metric_is_undefined_for_tiny_or_constant_images_with_a_reason() -> None:
    assert math.isnan(spike_peak(np.ones((40, 40, 40))))
    assert math.isnan(spike_peak(np.random.default_rng(0).random((10, 40, 40))))
    tiny = np.random.default_rng(0).random((12, 12, 12)) + 1.0
    out = compute_iqms(tiny, np.ones(tiny.shape, bool), skull_stripped=True)
    assert math.isnan(out.get("spike_z")) and "too small" in out.undefined["spike_z"]


def test_compute_iqms_reads_the_spike_on_the_scan_before_bias_correction() -> None:
    image, brain = _head(4)
    spiked = _spiked(image, (0.7, 0.3, 0.65), 0.04)
    out = compute_iqms(image, brain, raw_image=spiked, skull_stripped=True)
    assert out.get("spike_z") > SPIKE_MIN and "spike_z" not in out.undefined
    assert compute_iqms(image, brain, skull_stripped=True).get("spike_z") < HEALTHY_MAX


def test_real_healthy_and_tumour_scans_are_not_read_as_spikes(shared_data) -> None:
    files = [*sorted((shared_data / "ixi").glob("IXI0*-T1_ds.nii.gz"))[:2],
             shared_data / "chris_t1" / "chris_t1.nii.gz",
             shared_data / "tumor_progression" / "Pre_Scan_T1.nii.gz"]  # fmt: skip
    for f in files:
        value = spike_peak(np.asanyarray(nib.load(f).dataobj))
        assert value < HEALTHY_MAX, f"{f.name}: {value:.2f}"
