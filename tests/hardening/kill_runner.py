"""Run the neurocast CLI with a fast stand-in for ``preprocess_t1w`` (for the kill -9 trials).

``python kill_runner.py ARGS...`` is ``neurocast ARGS...`` except that preprocessing one scan reads
it with the real loader, waits ``NEUROCAST_TEST_DELAY`` seconds (default 0.3, so that a kill lands
mid-run) and returns a small result computed from the scan's data. Everything else (discovery, the
batch runner, atomic writes, provenance, skipping complete outputs, the lock, the QC table) is the
real code.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def _stand_in(image, **kwargs):
    import neurocast.registration.preprocess as pp
    from neurocast.registration.template import Grid

    ras, _ = pp.as_ras_image(image)
    time.sleep(float(os.environ.get("NEUROCAST_TEST_DELAY", "0.3")))
    data = np.asarray(ras.dataobj, np.float32)[:6, :6, :6]
    grid = Grid(data.shape, np.diag([2.0, 2.0, 2.0, 1.0]))
    img = grid.image(data / max(float(data.max()), 1e-6))
    mask = grid.image((data > data.mean()).astype(np.uint8))
    qc = {"passed": True, "similarity": 0.8, "mask_volume_ml": 1400.0, "reasons": []}
    return pp.PreprocessResult(img, mask, img, mask, np.eye(4), False, qc, grid, {})


def main() -> None:
    import neurocast.registration.preprocess as pp
    from neurocast.cli.main import cli

    pp.preprocess_t1w = _stand_in
    cli.main(args=sys.argv[1:], prog_name="neurocast")


if __name__ == "__main__":
    main()
