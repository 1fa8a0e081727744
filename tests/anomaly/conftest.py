"""Fixtures of the anomaly tests: tiny synthetic "brains" and a tiny detector trained once.

Volumes are 16 x 16 x 8 voxels at 2 mm: an ellipsoid of tissue (intensity 0.75 with a gentle
left-right gradient and noise) on a zero background, like a preprocessed scan. The detector has
two UNet levels of 8 and 16 channels and trains for a few dozen steps: enough to reconstruct the
ellipsoid roughly and to miss a bright blob, in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurocast.anomaly import AnomalyDetector, Scan

SHAPE = (16, 16, 8)
BLOB_CENTRE = (6, 9, 4)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads are slower, and results stable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def synthetic_brain(seed: int, *, blob: bool = False, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """``(image, brain_mask)``; with ``blob`` a bright sphere (+1.0, radius ~2.5 voxels) at
    :data:`BLOB_CENTRE`."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    mask = (g**2).sum(axis=0) < 0.8
    img = np.where(mask, 0.75 + 0.1 * g[0], 0.0).astype(np.float32)
    img[mask] += rng.normal(0, 0.02, int(mask.sum())).astype(np.float32)
    if blob:
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
        d2 = sum((idx[i] - BLOB_CENTRE[i]) ** 2 for i in range(3))
        img[(d2 <= 6.5) & mask] += 1.0
    return img, mask


def synthetic_scan(seed: int, *, blob: bool = False) -> Scan:
    img, mask = synthetic_brain(seed, blob=blob)
    return Scan.from_arrays(img, mask)


@pytest.fixture(scope="session")
def tiny_detector() -> AnomalyDetector:
    """A tiny detector fitted on 4 synthetic scans and calibrated on 6 others."""
    det = AnomalyDetector(
        channels=(8, 16), n_steps=40, batch_size=16, noise_levels=(0.3,), num_inference_steps=1,
        erosion_mm=2.0, min_component_mm3=16.0, seed=0,
    )  # fmt: skip
    det.fit([synthetic_scan(i) for i in range(4)])
    return det.calibrate([synthetic_scan(100 + i) for i in range(6)])


@pytest.fixture(scope="session")
def make_scan():
    """The synthetic scan factory: ``make_scan(seed, blob=False) -> Scan``."""
    return synthetic_scan


@pytest.fixture(scope="session")
def make_brain():
    """``make_brain(seed, blob=False) -> (image, mask)``."""
    return synthetic_brain


@pytest.fixture(scope="session")
def blob_centre() -> tuple[int, int, int]:
    """Where the planted blob is (voxel indices)."""
    return BLOB_CENTRE
