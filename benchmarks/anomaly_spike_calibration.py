"""Give a calibrated anomaly model the RF-spike check, from its own calibration references.

The shipped demo model was calibrated (``anomaly_benchmark.py``) on the benchmark's ``calib``
cohort and two IXI adults, before the scans' IQMs held ``spike_z``. The spike check needs only
the references' raw images, so this script re-simulates that cohort exactly (the benchmark's own
``simulate``, same seed and settings; the simulator is deterministic), checks that its scans are
the model's references one for one, reads their ``spike_z`` and adds the check with
:meth:`neurocast.anomaly.calibration.Calibration.with_spike_references`, by participant as the
calibration was made. Nothing else of the model changes (weights, reference maps, noise lines,
the lesion and artefact thresholds: with 26 references they stay the references' largest scores
at the three-score rate), and the card keeps its metrics.

Usage::

    python benchmarks/anomaly_spike_calibration.py --work /tmp/spike-calib \\
        --model src/neurocast/weights/anomaly-demo --out src/neurocast/weights/anomaly-demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as bench  # noqa: E402

CALIB_SEED_OFFSET = (
    202  # anomaly_benchmark.py: simulate(work, "calib", size["calib"], args.seed + 202, ...)
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the re-simulated cohort")
    ap.add_argument("--model", type=Path, required=True, help="the calibrated model folder")
    ap.add_argument(
        "--out", type=Path, required=True, help="where to write the model (may be --model)"
    )
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's --seed (default 0)")
    args = ap.parse_args(argv)

    from neurocast.anomaly import AnomalyDetector
    from neurocast.anomaly.kspace import spike_peak

    det = AnomalyDetector.load(args.model)
    cal = det.calibration_
    if cal is None:
        raise SystemExit(f"{args.model}: not calibrated")
    size = bench.SIZES["full"]
    calib = bench.simulate(args.work, "calib", size["calib"], args.seed + CALIB_SEED_OFFSET, size["grid"],
                           size["visits"], tumour_fraction=0.0, artefact_fraction=0.0)  # fmt: skip
    names = [
        f"benchmark/cohorts/calib/{p}/{s}/anat/{p}_{s}_T1w.nii.gz"
        for p, s in zip(calib["participant_id"], calib["session_id"], strict=True)
    ]
    names += [f"shared/data/real/ixi/{n}_ds.nii.gz" for n in bench.IXI_CALIB]
    references = cal.extra.get("references", [])
    if names != references:
        raise SystemExit(
            f"the re-simulated references are not the model's: {names[:2]}... vs {references[:2]}..."
        )
    paths = list(calib["path"]) + [
        str(bench.DATA / "ixi" / f"{n}_ds.nii.gz") for n in bench.IXI_CALIB
    ]
    groups = list(calib["participant_id"]) + list(bench.IXI_CALIB)
    values = [spike_peak(np.asanyarray(nib.load(p).dataobj)) for p in paths]
    det.calibration_ = cal.with_spike_references(values, groups=groups)
    metrics = json.loads((args.model / "model_card.json").read_text()).get("metrics")
    tmp = args.out.with_name(args.out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    det.save(tmp, metrics=metrics)
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    new = det.calibration_
    print(json.dumps({
        "references_spike_z": [round(v, 3) for v in values],
        "spike_reference": new.feature_reference["spike_z"],
        "spike_threshold": new.spike_threshold,
        "lesion_threshold": [cal.lesion_threshold, new.lesion_threshold],
        "artefact_threshold": [cal.artefact_threshold, new.artefact_threshold],
        "per_score_rate": [cal.per_score_rate, new.per_score_rate],
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
