"""Ground floor: figures (mosaics, overlays, trajectories, survival curves) and HTML reports.

Figures are drawn with matplotlib's object API on the Agg backend (no display needed) and saved
as PNG atomically. This package imports only :mod:`neurocast.io` helpers and plotting libraries.
"""

from neurocast.report.figures import mosaic, save_figure

__all__ = ["mosaic", "save_figure"]
