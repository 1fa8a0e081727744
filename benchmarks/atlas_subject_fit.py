"""The subject atlas fit of ``neurocast register`` (``atlas_to_subject``): schedules compared.

Simulates a cohort (one visit per subject), aligns each baseline with ``neurocast register``
(``--atlas-labels template``, so that no subject fit runs there), then fits the atlas to every
aligned baseline with each schedule and compares the labels with the simulator's true labels
(brought onto the same grid through the true and the found transforms, nearest neighbour): Dice
per region, and the volume error of the hippocampus, lateral ventricles and amygdala. Every fit
runs on one thread, ``--jobs`` subjects at a time (as ``neurocast demo`` runs its participants).

Schedules: ``before`` (affine refinement down to 2 mm, SyN with correlation radius 2: the
schedule until 2026-12-06) and ``now`` (:func:`neurocast.registration.volumes.subject_syn_params`).

    python benchmarks/atlas_subject_fit.py --n-subjects 8 --seed 7 --jobs 2 --work W
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REGIONS = {"hippocampus": (47, 48), "lateral ventricles": (51, 52), "amygdala": (31, 32)}


def schedules() -> dict:
    from neurocast.registration.volumes import (
        SUBJECT_SYN_ITERATIONS,
        native_syn_params,
        subject_syn_params,
    )

    return {"before": native_syn_params(SUBJECT_SYN_ITERATIONS), "now": subject_syn_params()}


def fit_one(task: tuple[str, str, list[str]]) -> list[dict]:
    """Fit the atlas to one aligned baseline with each schedule; Dice and volumes vs the truth."""
    work, sub, names = task
    from neurocast.registration.threads import set_threads

    set_threads(1)
    import nibabel as nib

    from neurocast.registration.atlas import load_atlas
    from neurocast.registration.template import working_grid
    from neurocast.registration.volumes import atlas_to_subject

    sys.path.insert(0, str(HERE))
    from simulate_truth_check_variants import truth_labels_on_grid

    root = Path(work)
    atlas, grid = load_atlas(), working_grid(2.0)
    image = sorted((root / "out").glob(f"{sub}/**/*desc-longitudinal_T1w.nii.gz"))[0]
    mask = Path(str(image).replace("desc-longitudinal_T1w", "desc-longitudinal_mask"))
    truth = truth_labels_on_grid(root / "bids", root / "out", sub, grid)
    rows = []
    for name in names:
        params = schedules()[name]
        t = time.perf_counter()
        labels = np.asarray(
            atlas_to_subject(nib.load(image), nib.load(mask), atlas, params=params).dataobj
        )
        seconds = time.perf_counter() - t
        values = [int(v) for v in np.unique(truth) if v > 0]
        dice = {
            v: float(
                2
                * np.sum((labels == v) & (truth == v))
                / (np.sum(labels == v) + np.sum(truth == v))
            )
            for v in values
        }
        volumes = {v: [int(np.sum(labels == v)), int(np.sum(truth == v))] for v in values}
        rows.append({"subject": sub, "schedule": name, "seconds": seconds, "dice": dice,
                     "voxels": volumes})  # fmt: skip
    return rows


def summarise(rows: list[dict], names: list[str]) -> list[str]:
    def volume_error(r: dict, labels: tuple[int, ...]) -> float:
        fit = sum(r["voxels"][v][0] for v in labels)
        true = sum(r["voxels"][v][1] for v in labels)
        return 100.0 * abs(fit - true) / true

    lines = [
        "| schedule | seconds per subject (median) | Dice hippocampus | Dice lateral ventricles | "
        "Dice, mean over regions | volume error hippocampus | lateral ventricles | amygdala |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rs = [r for r in rows if r["schedule"] == name]
        hip = np.mean([np.mean([r["dice"][47], r["dice"][48]]) for r in rs])
        ven = np.mean([np.mean([r["dice"][51], r["dice"][52]]) for r in rs])
        every = np.mean([np.mean([d for v, d in r["dice"].items() if v != 1]) for r in rs])
        errs = [np.mean([volume_error(r, labs) for r in rs]) for labs in REGIONS.values()]
        lines.append(
            f"| {name} | {np.median([r['seconds'] for r in rs]):.1f} | {hip:.3f} | {ven:.3f} | "
            f"{every:.3f} | {errs[0]:.1f} % | {errs[1]:.1f} % | {errs[2]:.1f} % |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-subjects", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, required=True, help="working folder (kept; reused)")
    ap.add_argument("--schedules", nargs="+", default=["before", "now"], choices=["before", "now"])
    ap.add_argument("--out", type=Path, default=HERE / "atlas_subject_fit.md")
    args = ap.parse_args()

    from neurocast.registration.workflows import register_dataset
    from neurocast.simulate import SimulationConfig, simulate_cohort

    bids, out = args.work / "bids", args.work / "out"
    if not (bids / "participants.tsv").is_file():
        simulate_cohort(bids, args.n_subjects, args.seed,
                        SimulationConfig(n_visits=(1, 1), n_jobs=args.jobs), progress=False)  # fmt: skip
    register_dataset(bids, out, atlas_labels="template", n_workers=args.jobs, progress=False)
    subjects = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
    tasks = [(str(args.work), s, args.schedules) for s in subjects]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [r for part in pool.map(fit_one, tasks) for r in part]
    (args.work / "fits.json").write_text(json.dumps(rows, indent=1))
    table = summarise(rows, args.schedules)
    text = "\n".join([
        "# Subject atlas fit: schedules compared (`benchmarks/atlas_subject_fit.py`)", "",
        f"Command: `python benchmarks/atlas_subject_fit.py --n-subjects {args.n_subjects} "
        f"--seed {args.seed} --jobs {args.jobs} --work W`; {len(subjects)} simulated subjects, one "
        f"thread per fit, {args.jobs} fits at a time; labels against the simulator's true labels.",
        "", *table, "",
    ])  # fmt: skip
    notes = ""
    if args.out.exists() and "\n## Notes" in (old := args.out.read_text()):
        notes = "\n" + old[old.index("\n## Notes") + 1 :]  # kept across runs
    args.out.write_text(text + notes)
    print(text)


if __name__ == "__main__":
    main()
