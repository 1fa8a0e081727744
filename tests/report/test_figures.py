"""Mosaic figures: right layout, overlays drawn, PNG written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from neurocast.report.figures import mosaic, save_figure


def test_layout_and_png(tmp_path: Path) -> None:
    vols = [np.random.default_rng(i).random((10, 12, 8)) for i in range(2)]
    fig = mosaic(vols, titles=["v0", "v1"], planes=("axial", "coronal"), n_slices=4)
    assert len(fig.axes) == 2 * 2 * 4
    out = save_figure(fig, tmp_path / "m.png")
    img = imread(out)
    assert img.shape[0] > 100 and img.shape[1] > 100


def test_overlay_colours_only_where_above_threshold(tmp_path: Path) -> None:
    vol = np.zeros((16, 16, 16))
    vol[4:12, 4:12, 4:12] = 1.0
    ov = np.zeros_like(vol)
    ov[7:9, 7:9, :] = 5.0
    plain = imread(save_figure(mosaic([vol], planes=("axial",), n_slices=1), tmp_path / "a.png"))
    over = imread(
        save_figure(mosaic([vol], overlays=[ov], planes=("axial",), n_slices=1), tmp_path / "b.png")
    )
    rgb_spread = lambda im: np.abs(im[..., 0] - im[..., 2]).max()  # noqa: E731
    assert rgb_spread(plain) < 0.01  # grey only
    assert rgb_spread(over) > 0.3  # hot colours appear


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="3-D"):
        mosaic([np.zeros((4, 4))])
    with pytest.raises(ValueError, match="at least one"):
        mosaic([])
