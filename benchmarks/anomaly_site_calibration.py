"""Site calibration: does calibrating on the site's own healthy scans stop a held-out healthy scan
from that site being flagged?

The shipped detector's references are 24 simulated visits and two healthy IXI adults (Guy's /
Hammersmith). The third held-out IXI adult (IXI034) is flagged. Here the same weights are
calibrated on other reference sets, from the cache of ``anomaly_benchmark.py --work WORK``:

* ``shipped``: the ``calib`` cohort and the two calibration IXI adults (as the benchmark);
* ``site+sim``: the ``calib`` cohort and all five other IXI adults (three of them were seen in
  training, whose residuals are lower than a new scan's: a stricter calibration, not a looser);
* ``site``: the five other IXI adults only (what ``neurocast train anomaly SITE_BIDS MODEL_DIR
  --calibrate-only`` does with a site's five healthy scans).

Each is scored on IXI034, on chris_t1 (another scanner) and on the test cohort's healthy and
tumour visits (no prior, so the three share the inputs)::

    python benchmarks/anomaly_site_calibration.py --work WORK --model src/neurocast/weights/anomaly-demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    from neurocast.anomaly import AnomalyDetector

    args = B.cache_script_args(__doc__, argv, "anomaly_site_calibration.json")
    torch.set_num_threads(args.threads)
    work = args.work / "full"

    def scan(key: str) -> Any:
        return B.load_scan(work / "scans" / f"{key}.npz")[0]

    calib = []
    v = B.simulate(work, "calib", 0, 0, 2.0, (2, 3))
    for _, g in v.sort_values(["participant_id", "visit_index"]).groupby("participant_id"):
        prev = None
        for r in g.itertuples():
            s = scan(f"calib_{r.participant_id}_{r.session_id}")
            if not s.qc.get("passed", True):
                prev = None
                continue
            calib.append(s.with_prior(prev) if prev is not None else s)
            prev = s
    site = [scan(k) for k in (*B.IXI_TRAIN, *B.IXI_CALIB)]
    test = B.simulate(work, "test", 0, 0, 2.0, (2, 3))
    test = test[test["artefact"].astype(str) != "motion"]
    screened = {
        f"test_{r.participant_id}_{r.session_id}": bool(r.tumour_present) for r in test.itertuples()
    }
    references = {
        "shipped": calib + [scan(k) for k in B.IXI_CALIB],
        "site+sim": calib + site,
        "site": site,
    }
    results: dict[str, Any] = {}
    for name, refs in references.items():
        det = AnomalyDetector.load(args.model)
        det.calibrate(refs)
        out: dict[str, Any] = {"n_references": len(refs)}
        for key in ("IXI034-HH-1260-T1", "chris_t1"):
            r = det.score(scan(key))
            out[key] = {"flag": r.flag, "lesion_percentile": r.lesion_percentile,
                        "artefact_percentile": r.artefact_percentile}  # fmt: skip
        flags = {k: det.score(scan(k), use_prior=False).flag for k in screened}
        healthy = [f for k, f in flags.items() if not screened[k]]
        tumour = [f for k, f in flags.items() if screened[k]]
        out["test_healthy_flagged"] = f"{sum(f != 'pass' for f in healthy)}/{len(healthy)}"
        out["test_tumour_flagged"] = f"{sum(f != 'pass' for f in tumour)}/{len(tumour)}"
        results[name] = out
        print(name, json.dumps(out), flush=True)
    args.out.write_text(json.dumps({"model": str(args.model), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
