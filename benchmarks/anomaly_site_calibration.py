"""Site calibration: does calibrating on the site's own healthy scans stop a held-out healthy scan
from that site being flagged?

The shipped detector's references are 24 simulated visits and two healthy IXI adults (Guy's /
Hammersmith); the third IXI adult (IXI034) is held out. Here the same weights are calibrated on
other reference sets, from the cache of ``anomaly_benchmark.py --work WORK``:

* ``shipped``: the ``calib`` cohort and the two calibration IXI adults (as the benchmark);
* ``sim``: the ``calib`` cohort only: the simulated "site" calibrated on its own healthy scans;
* ``site+sim``: the ``calib`` cohort and all five other IXI adults (three of them were seen in
  training, whose residuals are lower than a new scan's: a stricter calibration, not a looser);
* ``site``: the five other IXI adults only (what ``neurocast train anomaly SITE_BIDS MODEL_DIR
  --calibrate-only`` does with a site's five healthy scans);
* ``sim-large`` (with ``--more-healthy N``): the ``calib`` cohort and the first half of ``N``
  more simulated healthy subjects (cohort ``healthy2``, simulated and preprocessed here), enough
  references for thresholds inside their range (:func:`neurocast.anomaly.calibration.min_references`);
  the other half of ``healthy2`` joins the held-out healthy visits.

Each is scored on IXI034, on chris_t1 (another scanner), on the test cohort's healthy, tumour and
motion visits, and on the healthy visits of the two development cohorts (``dev``, ``lrtrain``:
never calibration references), all without a prior, so the sets share the inputs. Visits with
both a tumour and motion are left out. Flag counts are per reference set: a healthy visit flagged
is a false positive, a motion visit counts when flagged ``review-artefact``::

    python benchmarks/anomaly_site_calibration.py --work WORK --model src/neurocast/weights/anomaly-demo
    python benchmarks/anomaly_site_calibration.py --work WORK --model src/neurocast/weights/anomaly-demo \
        --more-healthy 30 --sets sim sim-large --out benchmarks/anomaly_site_calibration_large.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anomaly_benchmark as B  # noqa: E402

MORE_HEALTHY_SEED = 606
"""Seed offset of the extra healthy cohort (``healthy2``), after the benchmark's 101-505."""


def _options(ap: Any) -> None:
    ap.add_argument("--more-healthy", type=int, default=0, metavar="N",
                    help="simulate (or reuse) N more healthy subjects (cohort healthy2): the first "
                    "half add references (set sim-large: calib + them), the second half add "
                    "held-out healthy visits")  # fmt: skip
    ap.add_argument("--sets", nargs="+", default=None, help="reference sets to run (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="preprocessing processes for healthy2")


def main(argv: list[str] | None = None) -> int:
    import torch

    from neurocast.anomaly import AnomalyDetector

    args = B.cache_script_args(__doc__, argv, "anomaly_site_calibration.json", more=_options)
    torch.set_num_threads(args.threads)
    work = args.work / "full"

    def scan(key: str) -> Any:
        return B.load_scan(work / "scans" / f"{key}.npz")[0]

    def with_priors(v: Any, cohort: str, participants: set[str] | None = None) -> list[Any]:
        """A healthy cohort's visits as references, each with its previous visit as the prior."""
        out = []
        for pid, g in v.sort_values(["participant_id", "visit_index"]).groupby("participant_id"):
            if participants is not None and pid not in participants:
                continue
            prev = None
            for r in g.itertuples():
                key = f"{cohort}_{r.participant_id}_{r.session_id}"
                if not (work / "scans" / f"{key}.npz").is_file():
                    continue
                s = scan(key)
                if not s.qc.get("passed", True):
                    prev = None
                    continue
                out.append(s.with_prior(prev) if prev is not None else s)
                prev = s
        return out

    calib = with_priors(B.simulate(work, "calib", 0, 0, 2.0, (2, 3)), "calib")
    more_refs: list[Any] = []
    more_held: set[str] = set()
    if args.more_healthy:
        v2 = B.healthy_cohort(work, "healthy2", args.more_healthy, MORE_HEALTHY_SEED, args.threads, args.jobs)
        pids = sorted(set(v2["participant_id"]))
        first = set(pids[: len(pids) // 2])
        more_refs = with_priors(v2, "healthy2", first)
        more_held = {k for k, p in zip(v2["key"], v2["participant_id"], strict=True) if p not in first}
    site = [scan(k) for k in (*B.IXI_TRAIN, *B.IXI_CALIB)]
    groups: dict[str, str] = {}  # visit key -> group
    for cohort in ("test", "dev", "lrtrain"):
        for r in B.simulate(work, cohort, 0, 0, 2.0, (2, 3)).itertuples():
            group = B.visit_group(r.tumour_present, r.artefact, r.artefact_severity)
            if group is None or (cohort != "test" and group != "healthy"):
                continue
            groups[f"{cohort}_{r.participant_id}_{r.session_id}"] = f"{cohort}_{group}" if cohort != "test" else group
    groups.update(dict.fromkeys(more_held, "healthy2_healthy"))
    groups = {k: g for k, g in groups.items() if (work / "scans" / f"{k}.npz").is_file()}
    references = {
        "shipped": calib + [scan(k) for k in B.IXI_CALIB],
        "sim": calib,
        "site+sim": calib + site,
        "site": site,
    }
    if more_refs:
        references["sim-large"] = calib + more_refs
    results: dict[str, Any] = {}
    for name, refs in references.items():
        if args.sets and name not in args.sets:
            continue
        det = AnomalyDetector.load(args.model)
        det.calibrate(refs)
        out: dict[str, Any] = {"n_references": len(refs)}
        for key in ("IXI034-HH-1260-T1", "chris_t1"):
            r = det.score(scan(key))
            out[key] = {"flag": r.flag, "lesion_percentile": r.lesion_percentile,
                        "artefact_percentile": r.artefact_percentile}  # fmt: skip
        flags = {k: det.score(scan(k), use_prior=False).flag for k in groups}
        for group in sorted(set(groups.values())):
            f = [flags[k] for k, g in groups.items() if g == group]
            hit = [B.caught(group, x) for x in f]
            out[f"{group}_flagged"] = f"{sum(hit)}/{len(f)}"
            if group.startswith("motion"):
                out[f"{group}_flagged_any"] = f"{sum(x != 'pass' for x in f)}/{len(f)}"
        held = [flags[k] for k, g in groups.items() if g.endswith("healthy")]
        out["all_held_out_healthy_flagged"] = f"{sum(x != 'pass' for x in held)}/{len(held)}"
        results[name] = out
        print(name, json.dumps(out), flush=True)
    args.out.write_text(json.dumps({"model": str(args.model), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
