"""From volumes to the backbone's 2-D training items and back: axial slices, intensities, the prior.

The detector's backbone is a 2-D model of axial slices of the working grid (see
:mod:`neurocast.anomaly.model` for why). This module holds the conversions both training and
inference use:

* **Intensities.** Preprocessed images have white matter at 1 and the background at 0; the network
  sees ``(x - 0.5) / 0.5`` (background -1, white matter +1), :func:`to_model` / :func:`from_model`.
* **Slices.** Slice ``k`` of a volume ``(X, Y, Z)`` is ``volume[:, :, k]``, an ``(X, Y)`` image;
  its position enters as the covariate ``slice_z`` (the slice's template z coordinate in mm, so
  the encoding does not depend on the grid spacing).
* **The prior** (the subject's earlier scan, same grid) is the one image-condition channel. Where
  there is none, the channel is zero and the categorical covariate ``prior`` is missing, so the
  network gets its learned *null* embedding: "no prior" is said explicitly, never guessed from a
  black image. :class:`SliceDataset` also drops the prior of a share ``prior_drop_prob`` of the
  slices that have one (fixed per slice by the seed), so one network serves both cases.

Example:
    >>> import numpy as np
    >>> from neurocast.anomaly.scan import Scan
    >>> from neurocast.anomaly.training import SliceDataset
    >>> vol = np.zeros((8, 8, 6), np.float32); vol[2:6, 2:6, 1:5] = 1.0
    >>> ds = SliceDataset([Scan.from_arrays(vol, vol > 0, prior=vol)], prior_drop_prob=1.0)
    >>> len(ds), ds[0]["target"].shape, ds[0]["covariates"]["prior"]
    (8, torch.Size([1, 8, 8]), 'present')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from neurocast.anomaly.scan import Scan
from neurocast.backbone.config import CovariateSpec

INTENSITY_CENTRE = 0.5
INTENSITY_HALF_RANGE = 0.5
PRIOR_PRESENT = "present"
SLICE_Z_STD_MM = 50.0


def covariate_specs() -> tuple[CovariateSpec, ...]:
    """The detector's covariates: ``slice_z`` (continuous, mm) and ``prior`` (categorical flag).

    Neither is hidden by the backbone's random condition dropout (``drop_prob=0``): the prior is
    dropped together with its image by :class:`SliceDataset`.
    """
    return (
        CovariateSpec.continuous("slice_z", 0.0, SLICE_Z_STD_MM, drop_prob=0.0),
        CovariateSpec.categorical("prior", [PRIOR_PRESENT], drop_prob=0.0),
    )


def to_model(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Normalised intensities (WM = 1, background 0) to network units (WM +1, background -1)."""
    return (x - INTENSITY_CENTRE) / INTENSITY_HALF_RANGE


def from_model(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`to_model`."""
    return x * INTENSITY_HALF_RANGE + INTENSITY_CENTRE


def slice_positions(scan: Scan) -> np.ndarray:
    """Template z coordinate (mm) of every axial slice of the scan's grid, ``(Z,)``."""
    aff = scan.grid.affine
    k = np.arange(scan.image.shape[2], dtype=float)
    return aff[2, 2] * k + aff[2, 3]


def brain_slices(mask: np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
    """Indices of the axial slices whose brain share is above ``min_fraction`` (any brain if 0)."""
    m = np.asarray(mask, dtype=bool)
    frac = m.reshape(-1, m.shape[2]).mean(axis=0)
    return np.flatnonzero(frac > min_fraction)


def slice_inputs(
    scan: Scan, indices: Sequence[int] | np.ndarray, *, use_prior: bool = True
) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[Any]]]:
    """Network inputs for some axial slices of a scan.

    Returns:
        ``(x, condition, covariates)``: ``x`` and ``condition`` are ``(n, 1, X, Y)`` float32 in
        network units (the condition is zero without a prior), ``covariates`` maps ``slice_z`` and
        ``prior`` to per-slice lists.
    """
    idx = np.asarray(indices, dtype=int)
    x = torch.from_numpy(
        np.ascontiguousarray(np.moveaxis(to_model(scan.image[:, :, idx]), -1, 0))
    ).unsqueeze(1)
    has_prior = use_prior and scan.prior is not None
    if has_prior:
        assert scan.prior is not None
        cond = torch.from_numpy(
            np.ascontiguousarray(np.moveaxis(to_model(scan.prior[:, :, idx]), -1, 0))
        ).unsqueeze(1)
    else:
        cond = torch.zeros_like(x)
    z = slice_positions(scan)[idx]
    covs = {
        "slice_z": [float(v) for v in z],
        "prior": [PRIOR_PRESENT if has_prior else None] * len(idx),
    }
    return x.float(), cond.float(), covs


class SliceDataset(Dataset):
    """Axial slices of healthy training scans as backbone training items.

    Every slice with more than ``min_brain_fraction`` brain gives one item with its prior (or
    without, if the scan has none); a slice *with* a prior also gives, with probability
    ``prior_drop_prob`` (drawn once per slice from ``seed``), a second item without it. Items are
    ``{"target": (1, X, Y), "condition": (1, X, Y), "covariates": {"slice_z", "prior"}}``.

    Args:
        scans: healthy training scans on one grid.
        min_brain_fraction: slices with less brain than this share are not used.
        prior_drop_prob: see above.
        seed: seeds the prior dropout.
    """

    def __init__(
        self,
        scans: Sequence[Scan],
        *,
        min_brain_fraction: float = 0.02,
        prior_drop_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        if not scans:
            raise ValueError("no training scans")
        grid = scans[0].grid
        for s in scans:
            if s.grid != grid:
                raise ValueError("all training scans must lie on one grid")
        self.scans = list(scans)
        rng = np.random.default_rng(seed)
        items: list[tuple[int, int, bool]] = []
        for i, s in enumerate(self.scans):
            for k in brain_slices(s.brain_mask, min_brain_fraction):
                items.append((i, int(k), s.has_prior))
                if s.has_prior and rng.random() < prior_drop_prob:
                    items.append((i, int(k), False))
        if not items:
            raise ValueError("the training scans hold no brain slices")
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, k, with_prior = self.items[index]
        x, cond, covs = slice_inputs(self.scans[i], [k], use_prior=with_prior)
        return {
            "target": x[0],
            "condition": cond[0],
            "covariates": {name: values[0] for name, values in covs.items()},
        }

    @property
    def n_with_prior(self) -> int:
        """Items that carry a prior."""
        return sum(1 for _, _, p in self.items if p)
