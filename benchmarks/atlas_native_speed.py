"""Time of :func:`neurocast.registration.volumes.native_regional_volumes` on one IXI scan.

Preprocesses one whole-head IXI T1w (``preprocess_t1w``), then brings the default atlas to its
native grid with the given SyN schedule and prints both times. Run it as a whole process, twice,
to compare schedules (the atlas builder's 4 mm stop against the default with a 2 mm level)::

    /usr/bin/time -v python benchmarks/atlas_native_speed.py --syn-iterations 50 30 0
    /usr/bin/time -v python benchmarks/atlas_native_speed.py            # NATIVE_SYN_ITERATIONS
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", type=Path, default=None, help="T1w scan (default: the first IXI scan of ../shared/data)")
    ap.add_argument("--syn-iterations", type=int, nargs=3, default=None, metavar=("COARSE", "MID", "FINE"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from neurocast.registration.threads import set_threads

    set_threads(args.threads)
    from neurocast.registration.build_atlas import default_data_dir, find_pairs
    from neurocast.registration.preprocess import preprocess_t1w
    from neurocast.registration.volumes import (
        NATIVE_SYN_ITERATIONS,
        native_regional_volumes,
        native_syn_params,
    )

    scan = args.scan or find_pairs(default_data_dir())[0][1]
    iters = tuple(args.syn_iterations) if args.syn_iterations else NATIVE_SYN_ITERATIONS
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = preprocess_t1w(scan, seed=0, work_dir=tmp)
        t_pre = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = native_regional_volumes(result, seed=0, work_dir=tmp, params=native_syn_params(iters))
        t_nat = time.perf_counter() - t0
    vent = table.set_index("region").loc["Lateral-Ventricles", "volume_mm3"] / 1000
    print(f"{Path(scan).name}: preprocess {t_pre:.1f} s, atlas to native {t_nat:.1f} s "
          f"(SyN {list(iters)}; lateral ventricles {vent:.2f} ml)")


if __name__ == "__main__":
    main()
