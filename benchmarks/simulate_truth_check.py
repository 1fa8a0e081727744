"""Truth is what the images show: registration on simulated raw images vs the simulator's truth.

Simulates a cohort, runs ``neurocast register`` on its raw T1w images (never the truth files),
and compares the measured regional volume change of every follow-up (from the Jacobian of the
fitted velocity field, on the atlas regions fitted to each subject's baseline: ``register``'s
default ``--atlas-labels subject``) with the true change written by the simulator. The hand-written
notes of the report (from ``## Notes`` on) are kept when it is rewritten.

Target (issue 4): mean absolute difference <= 10 % of the mean absolute true change, for the
hippocampus and the lateral ventricles (bilateral composites).

Several ``--seed`` values give several cohorts (each in ``WORK/seed-N``: ``study`` and ``out``),
scored one by one and pooled over all their follow-ups. A cohort already simulated is reused, and
``register`` resumes, so cohorts can be run in parallel first (one command per seed, same
``--work``) and pooled afterwards.

Usage::

    python benchmarks/simulate_truth_check.py --n-subjects 6 --seed 11 23 37 41 53 59 --work /tmp/tc
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REGIONS = ("Hippocampus", "Lateral-Ventricles")


def run_cohort(
    args: argparse.Namespace, seed: int, reg: float
) -> tuple[pd.DataFrame, float, float]:
    """Simulate (unless done) and register one cohort; its (follow-up, region) pairs and timings."""
    work = args.work / f"seed-{seed}"
    study, out = work / "study", work / "out"
    t_sim = t_reg = float("nan")
    if not args.score_only:
        t0 = time.perf_counter()
        if not (study / "participants.tsv").exists():
            subprocess.run([sys.executable, "-m", "neurocast.cli.main", "simulate", str(study), "--n-subjects",
                            str(args.n_subjects), "--seed", str(seed), "-q",
                            *(["--base-scans", str(args.base_scans)] if args.base_scans else [])], check=True)  # fmt: skip
        t_sim = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "neurocast.cli.main", "register", str(study), str(out),
                        "participant", "-q", "--seed", "0", "--grid-spacing-mm", str(args.grid_spacing_mm),
                        "--field-spacing-mm", str(args.field_spacing_mm),
                        "--regularization", str(reg), "--atlas-labels", args.atlas_labels],
                       check=False)  # fmt: skip
        t_reg = time.perf_counter() - t0
    want = {"grid_spacing_mm": args.grid_spacing_mm, "field_spacing_mm": args.field_spacing_mm,
            "regularization": reg, "atlas_labels": args.atlas_labels}  # fmt: skip
    for side in sorted(out.glob("sub-*/anat/*_desc-longitudinal_qc_provenance.json")):
        got = json.loads(side.read_text())["Parameters"]
        if any(got.get(k) != v for k, v in want.items()):
            sys.exit(f"{side}: registered with {got}, not with the settings asked for ({want})")

    truth = pd.read_csv(
        study / "derivatives" / "neurocast-truth" / "regional_volumes.tsv", sep="\t"
    )
    truth = truth[truth["region"].isin(REGIONS)][
        ["participant_id", "session_id", "region", "ratio_to_baseline"]
    ]
    measured = pd.concat(
        [
            pd.read_csv(f, sep="\t")
            for f in sorted(
                glob.glob(str(out / "sub-*/ses-*/anat/*_desc-regionalchange_volumes.tsv"))
            )
        ],
        ignore_index=True,
    )
    measured = measured[measured["region"].isin(REGIONS)][
        ["participant_id", "session_id", "region", "volume_ratio"]
    ]
    both = truth.merge(measured, on=["participant_id", "session_id", "region"])
    both.insert(0, "seed", seed)
    both["true_change_pct"] = 100 * (both["ratio_to_baseline"] - 1)
    both["measured_change_pct"] = 100 * (both["volume_ratio"] - 1)
    both["abs_diff_pct"] = (both["measured_change_pct"] - both["true_change_pct"]).abs()
    return both, t_sim, t_reg


def scores(g: pd.DataFrame) -> tuple[float, float]:
    """Mean |measured - true| / mean |true|, and the least-squares slope of measured on true."""
    ratio = g["abs_diff_pct"].mean() / g["true_change_pct"].abs().mean()
    slope = (g["measured_change_pct"] * g["true_change_pct"]).sum() / (
        g["true_change_pct"] ** 2
    ).sum()
    return float(ratio), float(slope)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-subjects", type=int, default=6)
    ap.add_argument("--seed", type=int, nargs="+", default=[11], help="one cohort per seed")
    ap.add_argument("--work", type=Path, default=Path("/tmp/neurocast-truthcheck"))
    ap.add_argument(
        "--grid-spacing-mm",
        type=float,
        default=2.0,
        help="working grid of neurocast register (default 2, as the CLI)",
    )
    ap.add_argument(
        "--field-spacing-mm",
        type=float,
        default=4.0,
        help="velocity-field grid of neurocast register (default 4, as the CLI)",
    )
    ap.add_argument(
        "--regularization",
        type=float,
        default=None,
        help="velocity-fit penalty of neurocast register (default: register's own, "
        "REGIONAL_CHANGE_REGULARIZATION)",
    )
    ap.add_argument(
        "--atlas-labels",
        choices=("subject", "template"),
        default="subject",
        help="regions of neurocast register (default: subject, as the CLI)",
    )
    ap.add_argument(
        "--base-scans",
        type=Path,
        default=None,
        help="simulate on real anatomy (neurocast simulate --base-scans), e.g. ../shared/data/real/ixi",
    )
    ap.add_argument(
        "--score-only",
        action="store_true",
        help="score the cohorts already in WORK (simulated and registered by earlier runs of this "
        "script with the same settings) without running anything",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("simulate_truth_check.md"))
    args = ap.parse_args()
    from neurocast.registration.svf import REGIONAL_CHANGE_REGULARIZATION

    reg = REGIONAL_CHANGE_REGULARIZATION if args.regularization is None else args.regularization
    runs = [run_cohort(args, seed, reg) for seed in args.seed]
    both = pd.concat([r[0] for r in runs], ignore_index=True)
    seeds = " ".join(str(s) for s in args.seed)
    n_fu = both.groupby(["seed", "participant_id", "session_id"]).ngroups
    lines = [
        "# Simulated truth vs registration (issue 4)",
        "",
        f"Command: `python benchmarks/simulate_truth_check.py --n-subjects {args.n_subjects} --seed {seeds}"
        f"{'' if args.grid_spacing_mm == 2 else f' --grid-spacing-mm {args.grid_spacing_mm:g}'}"
        f" --field-spacing-mm {args.field_spacing_mm:g}"
        f"{'' if args.regularization is None else f' --regularization {reg:g}'}"
        f"{'' if args.atlas_labels == 'subject' else ' --atlas-labels template'}"
        f"{' --base-scans ' + str(args.base_scans) if args.base_scans else ''}`; machine: {os.cpu_count()}-core CPU, "
        f"date {datetime.date.today().isoformat()}.",
        f"`neurocast register` with `--grid-spacing-mm {args.grid_spacing_mm:g}"
        f" --field-spacing-mm {args.field_spacing_mm:g} --regularization {reg:g}"
        f" --atlas-labels {args.atlas_labels}`. {len(args.seed)} cohort(s) of {args.n_subjects} subjects, "
        f"{n_fu} follow-ups, {len(both)} (follow-up, region) pairs.",
        "",
        "Change = follow-up volume / baseline volume - 1, in percent of the baseline volume. "
        "Ratio = mean |measured - true| / mean |true| (target <= 0.10); slope = least-squares "
        "measured / true.",
        "",
        "Per cohort (simulation and registration times of this run; a reused cohort or a resumed "
        "registration shows less, and --score-only none):",
        "",
        "| seed | follow-ups | "
        + " | ".join(f"{r} ratio (slope)" for r in REGIONS)
        + " | simulation s | registration s |",
        "|---|---|" + "---|" * len(REGIONS) + "---|---|",
    ]
    for seed, (g, t_sim, t_reg) in zip(args.seed, runs, strict=True):
        cells = []
        for region in REGIONS:
            ratio, slope = scores(g[g["region"] == region])
            cells.append(f"{ratio:.3f} ({slope:.2f})")
        n = g.groupby(["participant_id", "session_id"]).ngroups
        lines.append(
            f"| {seed} | {n} | "
            + " | ".join(cells)
            + " | "
            + " | ".join("n/a" if math.isnan(t) else f"{t:.0f}" for t in (t_sim, t_reg))
            + " |"
        )
    lines += [
        "",
        "Pooled:",
        "",
        "| region | pairs | mean true change % | mean measured change % | mean abs diff (points) | ratio to mean abs true change | slope measured/true | target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for region, g in both.groupby("region"):
        ratio, slope = scores(g)
        lines.append(
            f"| {region} | {len(g)} | {g['true_change_pct'].mean():.2f} | {g['measured_change_pct'].mean():.2f} | "
            f"{g['abs_diff_pct'].mean():.2f} | {ratio:.3f} | {slope:.2f} | {'yes' if ratio <= 0.10 else 'no'} |"
        )
    lines += ["", "Per pair:", "", "```\n" + both.round(3).to_string(index=False) + "\n```"]
    notes = ""
    if args.out.exists():
        old = args.out.read_text()
        if "\n## Notes" in old:
            notes = "\n" + old[old.index("\n## Notes") + 1 :]
    args.out.write_text("\n".join(lines) + "\n" + notes)
    print("\n".join(lines[: lines.index("Per pair:")]))


if __name__ == "__main__":
    main()
