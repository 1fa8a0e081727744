"""Truth is what the images show: registration on simulated raw images vs the simulator's truth.

Simulates a cohort, runs ``neurocast register`` on its raw T1w images (never the truth files),
and compares the measured regional volume change of every follow-up (from the Jacobian of the
fitted velocity field, on the atlas regions fitted to each subject's baseline: ``register``'s
default ``--atlas-labels subject``) with the true change written by the simulator. The hand-written
notes of the report (from ``## Notes`` on) are kept when it is rewritten.

Target (issue 4): mean absolute difference <= 10 % of the mean absolute true change, for the
hippocampus and the lateral ventricles (bilateral composites).

Usage::

    python benchmarks/simulate_truth_check.py --n-subjects 6 --seed 11 --work /tmp/truthcheck
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REGIONS = ("Hippocampus", "Lateral-Ventricles")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-subjects", type=int, default=6)
    ap.add_argument("--seed", type=int, default=11)
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
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("simulate_truth_check.md"))
    args = ap.parse_args()
    from neurocast.registration.svf import REGIONAL_CHANGE_REGULARIZATION

    reg = REGIONAL_CHANGE_REGULARIZATION if args.regularization is None else args.regularization
    study, out = args.work / "study", args.work / "out"
    t0 = time.perf_counter()
    if not (study / "participants.tsv").exists():
        subprocess.run([sys.executable, "-m", "neurocast.cli.main", "simulate", str(study), "--n-subjects",
                        str(args.n_subjects), "--seed", str(args.seed), "-q",
                        *(["--base-scans", str(args.base_scans)] if args.base_scans else [])], check=True)  # fmt: skip
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "neurocast.cli.main", "register", str(study), str(out),
                    "participant", "-q", "--seed", "0", "--grid-spacing-mm", str(args.grid_spacing_mm),
                    "--field-spacing-mm", str(args.field_spacing_mm),
                    "--regularization", str(reg), "--atlas-labels", args.atlas_labels],
                   check=False)  # fmt: skip
    t_reg = time.perf_counter() - t0

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
    both["true_change_pct"] = 100 * (both["ratio_to_baseline"] - 1)
    both["measured_change_pct"] = 100 * (both["volume_ratio"] - 1)
    both["abs_diff_pct"] = (both["measured_change_pct"] - both["true_change_pct"]).abs()

    lines = [
        "# Simulated truth vs registration (issue 4)",
        "",
        f"Command: `python benchmarks/simulate_truth_check.py --n-subjects {args.n_subjects} --seed {args.seed}"
        f"{'' if args.grid_spacing_mm == 2 else f' --grid-spacing-mm {args.grid_spacing_mm:g}'}"
        f" --field-spacing-mm {args.field_spacing_mm:g}"
        f"{'' if args.regularization is None else f' --regularization {reg:g}'}"
        f"{'' if args.atlas_labels == 'subject' else ' --atlas-labels template'}"
        f"{' --base-scans ' + str(args.base_scans) if args.base_scans else ''}`; machine: {os.cpu_count()}-core CPU, "
        f"date {datetime.date.today().isoformat()}.",
        f"`neurocast register` with `--grid-spacing-mm {args.grid_spacing_mm:g}"
        f" --field-spacing-mm {args.field_spacing_mm:g} --regularization {reg:g}"
        f" --atlas-labels {args.atlas_labels}`. "
        f"Simulation {t_sim:.0f} s, registration of {args.n_subjects} subjects {t_reg:.0f} s. "
        f"{len(both)} (follow-up, region) pairs.",
        "",
        "Change = follow-up volume / baseline volume - 1, in percent of the baseline volume. "
        "Ratio = mean |measured - true| / mean |true| (target <= 0.10).",
        "",
        "| region | pairs | mean true change % | mean measured change % | mean abs diff (points) | ratio to mean abs true change | slope measured/true | target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for region, g in both.groupby("region"):
        ratio = g["abs_diff_pct"].mean() / g["true_change_pct"].abs().mean()
        slope = (g["measured_change_pct"] * g["true_change_pct"]).sum() / (
            g["true_change_pct"] ** 2
        ).sum()
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
    print("\n".join(lines[:14]))


if __name__ == "__main__":
    main()
