"""The RF-spike metric (``spike_z``, :mod:`neurocast.anomaly.kspace`) on simulated and real scans,
and the artefact score of ``neurocast qa`` broken down by artefact kind.

1. Simulates two cohorts (cached under ``--work``): ``spikes`` (mild TorchIO spikes in 70 % of the
   visits, half of the subjects skull-stripped) and ``stripped`` (every subject skull-stripped,
   artefacts of every kind and severity in 60 % of the visits, the simulator's default mix).
2. Reads ``spike_z`` on every raw scan, and on the real scans of ../shared/data, and reports its
   range per artefact kind and delivery (whole head or skull-stripped).
3. With ``--qa``, runs ``neurocast qa`` (the shipped demo model) on both cohorts and reports the
   AUROC of its artefact score per artefact kind and severity against the cohort's healthy visits
   (the issue's motion figure is TorchIO ``Motion`` alone; this shows the other kinds as well).

Usage::

    python benchmarks/anomaly_spike_check.py --work /tmp/spike --qa --out benchmarks/anomaly_spike_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from neurocast.anomaly.kspace import spike_peak

HERE = Path(__file__).resolve().parent
DATA = (
    Path(os.environ.get("NEUROCAST_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "real"
)
COHORTS = {
    "spikes": dict(n=16, seed=3232, artefact_fraction=0.7, stripped=0.5, visits=(2, 2),
                   config={"artefact_types": {"spike": 1.0}, "artefact_severities": {"mild": 1.0}}),
    "stripped": dict(n=30, seed=3131, artefact_fraction=0.6, stripped=1.0, visits=(2, 3), config={}),
}  # fmt: skip
REAL = ("chris_t1/chris_t1.nii.gz", "tumor_progression/Pre_Scan_T1.nii.gz",
        "tumor_progression/Post_Scan_T1.nii.gz", "open_ms_long/patient01_study1_T1W.nii.gz",
        "open_ms_long/patient01_study2_T1W.nii.gz")  # fmt: skip


def simulate(work: Path, name: str, spec: dict) -> Path:
    out = work / name
    if (out / "derivatives" / "neurocast-truth" / "visits.tsv").exists():
        return out
    cfg = work / f"{name}.json"
    cfg.write_text(json.dumps(spec["config"]))
    cmd = ["neurocast", "simulate", str(out), "--n-subjects", str(spec["n"]), "--seed", str(spec["seed"]),
           "--artefact-fraction", str(spec["artefact_fraction"]), "--skull-stripped-fraction", str(spec["stripped"]),
           "--visits", *map(str, spec["visits"]), "--config", str(cfg), "--n-jobs", "2", "-q"]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


def visits(bids: Path) -> pd.DataFrame:
    v = pd.read_csv(bids / "derivatives" / "neurocast-truth" / "visits.tsv", sep="\t")
    v["path"] = [
        str(next((bids / p / s / "anat").glob("*_T1w.nii.gz")))
        for p, s in zip(v.participant_id, v.session_id, strict=True)
    ]
    return v


def spike_table(v: pd.DataFrame) -> pd.DataFrame:
    t0 = time.perf_counter()
    v = v.copy()
    secs = []
    for p in v["path"]:
        x = np.asanyarray(nib.load(p).dataobj)
        t = time.perf_counter()
        v.loc[v.path == p, "spike_z"] = spike_peak(x)
        secs.append(time.perf_counter() - t)
    v.attrs["seconds_median"] = float(np.median(secs))
    v.attrs["wall"] = time.perf_counter() - t0
    return v


def summary(v: pd.DataFrame) -> list[dict]:
    g = v.groupby(["artefact", "skull_stripped"])["spike_z"]
    return [{"artefact": k[0], "skull_stripped": bool(k[1]), "n": int(s.size), "min": round(float(s.min()), 2),
             "median": round(float(s.median()), 2), "max": round(float(s.max()), 2)} for k, s in g]  # fmt: skip


def qa_auroc(bids: Path, work: Path, v: pd.DataFrame, model: Path | None) -> list[dict]:
    out = work / (f"qa-{bids.name}" if model is None else f"qa-{bids.name}-{model.name}")
    if not (out / "qa.tsv").exists():
        subprocess.run(
            [
                "neurocast",
                "qa",
                str(bids),
                str(out),
                "participant",
                "--no-figures",
                "--n-workers",
                "2",
                "-q",
                *(["--model", str(model)] if model is not None else []),
            ],
            check=True,
        )
    q = pd.read_csv(out / "qa.tsv", sep="\t")
    q = q.drop(columns=[c for c in ("spike_z",) if c in q]).merge(
        v, on=["participant_id", "session_id"]
    )
    healthy = q[q.artefact == "none"]
    rows = []
    for (kind, sev), g in q[q.artefact != "none"].groupby(["artefact", "artefact_severity"]):
        y = [0] * len(healthy) + [1] * len(g)
        rows.append({"artefact": kind, "severity": sev, "n": len(g), "n_healthy": len(healthy),
                     "auroc_artefact_score": round(float(roc_auc_score(y, list(healthy.artefact_score) + list(g.artefact_score))), 3),
                     "auroc_spike_z": round(float(roc_auc_score(y, list(healthy.spike_z) + list(g.spike_z))), 3),
                     "flagged": int((g.flag != "pass").sum())})  # fmt: skip
    rows.append(
        {"artefact": "none", "flagged": int((healthy.flag != "pass").sum()), "n": len(healthy)}
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument(
        "--qa", action="store_true", help="also run neurocast qa and break its scores down by kind"
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    ap.add_argument(
        "--model", type=Path, default=None, help="anomaly model for qa (default: the shipped one)"
    )
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "model": str(args.model) if args.model else "the shipped demo model",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
    }
    for name, spec in COHORTS.items():
        bids = simulate(args.work, name, spec)
        v = spike_table(visits(bids))
        res[name] = {
            "spike_z": summary(v),
            "seconds_per_scan_median": round(v.attrs["seconds_median"], 3),
        }
        print(name, json.dumps(res[name]["spike_z"], indent=1), flush=True)
        if args.qa:
            res[name]["qa_by_kind"] = qa_auroc(bids, args.work, v, args.model)
            print(pd.DataFrame(res[name]["qa_by_kind"]).to_string(), flush=True)
    real = {}
    for rel in (
        *REAL,
        *(f"ixi/{p.name}" for p in sorted((DATA / "ixi").glob("IXI0*-T1_ds.nii.gz"))),
    ):
        if (DATA / rel).exists():
            real[rel] = round(spike_peak(np.asanyarray(nib.load(DATA / rel).dataobj)), 2)
    res["real"] = real
    print(json.dumps(real, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
