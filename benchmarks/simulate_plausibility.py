"""Are the simulated cohorts plausible? Atrophy rates against the literature, and two figures.

1. Annual hippocampal atrophy per baseline group (mean and SD over subjects), measured from the
   *realised* truth volumes (``regional_volumes.tsv``: the volume change of the images, not the
   designed rates): per subject, ``100 * (1 - (V_last / V_0) ** (1 / t_last))`` %/yr, summed
   over both hippocampi. Published values: Barnes et al. 2009 (Neurobiol Aging 30:1711-1723,
   meta-analysis): controls 1.41 %/yr (95 % CI 0.52-2.30), AD 4.66 %/yr (3.92-5.40); MCI: Jack et
   al. 2000 (Neurology 55:484-489) 2.55 %/yr in stable MCI, higher in those who declined.
   Amygdala, grey matter, white matter and whole-brain atrophy (%/yr loss) and lateral-ventricle expansion (%/yr
   growth) are reported beside them.
2. ``benchmarks/simulate_trajectories.png``: regional volume (% of baseline) against time for
   hippocampus, amygdala, grey matter and lateral ventricles, one line per subject, coloured by
   baseline diagnosis.
3. ``benchmarks/simulate_ad_mosaic.png``: the raw visits of one AD subject (three planes, images
   reoriented to RAS for display only) and the template-space clean images with the true volume
   change map.

Run from the project root:

    python benchmarks/simulate_plausibility.py --cohort /tmp/cohort   # a cohort made by simulate_speed.py --keep
    python benchmarks/simulate_plausibility.py                          # simulates 40 x 4 itself

Prints a JSON record (``--json PATH`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
PUBLISHED_HIPPOCAMPUS = {
    "CN": "1.41 (95% CI 0.52-2.30), Barnes 2009",
    "MCI": "2.55 stable MCI, higher in decliners, Jack 2000",
    "AD": "4.66 (95% CI 3.92-5.40), Barnes 2009",
}
COLOURS = {"CN": "tab:green", "MCI": "tab:orange", "AD": "tab:red"}


REGIONS = {
    # summary region -> atlas region name (composite regions of the default neurocast atlas)
    "hippocampus": "Hippocampus",
    "amygdala": "Amygdala",
    "grey_matter": "Grey-Matter",
    "white_matter": "White-Matter",
    "whole_brain": "Brain-Parenchyma",
    "lateral_ventricles": "Lateral-Ventricles",
}


def group_volumes(volumes: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    """Per visit: volume of each summary region, its ratio to baseline, and the visit time."""
    names = {v: k for k, v in REGIONS.items()}
    g = volumes[volumes.region.isin(names)].assign(group=lambda d: d.region.map(names))
    g = g[["participant_id", "session_id", "group", "volume_mm3", "ratio_to_baseline"]]
    g = g.merge(visits[["participant_id", "session_id", "time_years", "visit_index"]], on=["participant_id", "session_id"])
    return g.rename(columns={"ratio_to_baseline": "ratio"})


def annual_rates(g: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame:
    """Annualised percent change per subject and group, from the first and last visit."""
    last = g.sort_values("time_years").groupby(["participant_id", "group"]).tail(1)
    last = last[last.time_years > 0]
    loss = 100.0 * (1.0 - last.ratio ** (1.0 / last.time_years))
    expanding = last.group == "lateral_ventricles"
    last = last.assign(pct_per_year=np.where(expanding, -loss, loss))  # ventricles: expansion %/yr
    return last.merge(subjects[["participant_id", "diagnosis", "event_observed"]], on="participant_id")


def trajectories_figure(g: pd.DataFrame, subjects: pd.DataFrame, path: Path) -> None:
    dx = subjects.set_index("participant_id").diagnosis
    panels = [("hippocampus", "Hippocampus"), ("amygdala", "Amygdala"), ("grey_matter", "Grey matter"),
              ("lateral_ventricles", "Lateral ventricles")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (group, title) in zip(axes, panels, strict=True):
        d = g[g.group == group]
        for pid, rows in d.groupby("participant_id"):
            rows = rows.sort_values("time_years")
            ax.plot(rows.time_years, 100 * rows.ratio, "-o", ms=3, lw=1, alpha=0.7, color=COLOURS[dx[pid]])
        ax.set_title(title)
        ax.set_xlabel("years since baseline")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of baseline volume (truth)")
    for name, c in COLOURS.items():
        axes[0].plot([], [], color=c, label=name)
    axes[0].legend(title="baseline")
    fig.suptitle("neurocast.simulate: true regional trajectories by baseline diagnosis")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ad_mosaic(root: Path, subjects: pd.DataFrame, visits: pd.DataFrame, path: Path) -> str:
    ad = subjects[subjects.diagnosis == "AD"]
    if ad.empty:
        ad = subjects
    ad = ad.assign(head=~ad.skull_stripped.astype(bool))  # prefer a whole-head subject
    pid = ad.sort_values(["n_visits", "head"], ascending=False).participant_id.iloc[0]
    rows = visits[visits.participant_id == pid].sort_values("time_years")
    truth = root / "derivatives" / "neurocast-truth"
    fig, axes = plt.subplots(len(rows), 5, figsize=(17, 3.4 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, (_, row) in enumerate(rows.iterrows()):
        sub, ses = pid[4:], row.session_id[4:]
        raw = nib.load(str(root / pid / row.session_id / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz"))
        stored = "".join(nib.aff2axcodes(raw.affine))
        img = nib.as_closest_canonical(raw)
        d = np.asarray(img.dataobj, dtype=np.float32)
        z = img.header.get_zooms()[:3]
        c = [n // 2 for n in d.shape]
        hi = np.percentile(d, 99.5)
        views = [(d[c[0]].T, z[2] / z[1]), (d[:, c[1]].T, z[2] / z[0]), (d[:, :, c[2]].T, z[1] / z[0])]
        for j, (sl, asp) in enumerate(views):
            axes[r, j].imshow(sl, origin="lower", cmap="gray", vmin=0, vmax=hi, aspect=asp)
            axes[r, j].axis("off")
        axes[r, 0].set_title(f"{pid} {row.session_id}: t = {row.time_years:.2f} y, {row.diagnosis}\n"
                             f"raw {row.voxel_size_mm} mm, stored {stored}", fontsize=8, loc="left")
        folder = truth / pid / row.session_id / "anat"
        clean = np.asarray(nib.load(str(next(folder.glob("*desc-clean_T1w.nii.gz")))).dataobj)
        jac = np.asarray(nib.load(str(next(folder.glob("*desc-jacobian_map.nii.gz")))).dataobj)
        zc = clean.shape[2] // 2 - 6  # through the lateral ventricles and the temporal lobes
        axes[r, 3].imshow(clean[:, :, zc].T, origin="lower", cmap="gray")
        axes[r, 3].set_title("template space, clean (truth)", fontsize=8)
        axes[r, 3].axis("off")
        im = axes[r, 4].imshow(jac[:, :, zc].T, origin="lower", cmap="RdBu", vmin=0.8, vmax=1.2)
        axes[r, 4].set_title("true volume change (J)", fontsize=8)
        axes[r, 4].axis("off")
    fig.colorbar(im, ax=axes[:, 4].tolist(), shrink=0.6)
    fig.savefig(path, dpi=75)
    plt.close(fig)
    return pid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, default=None, help="an existing simulated cohort")
    ap.add_argument("--n-subjects", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--figures", type=Path, default=HERE)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    root = args.cohort
    if root is None:
        from neurocast.simulate import SimulationConfig, simulate_cohort

        root = Path(tempfile.mkdtemp(prefix="neurocast-sim-plaus-")) / "cohort"
        simulate_cohort(root, args.n_subjects, seed=args.seed,
                        config=SimulationConfig(n_visits=(4, 4), n_jobs=args.n_jobs))
    truth = root / "derivatives" / "neurocast-truth"
    subjects = pd.read_csv(truth / "subjects.tsv", sep="\t")
    visits = pd.read_csv(truth / "visits.tsv", sep="\t")
    volumes = pd.read_csv(truth / "regional_volumes.tsv", sep="\t")
    g = group_volumes(volumes, visits)
    rates = annual_rates(g, subjects)
    out: dict = {"cohort": str(root), "n_subjects": len(subjects), "groups": {}}
    for dx in ("CN", "MCI", "AD"):
        r = rates[rates.diagnosis == dx]
        entry = {"n": int(r.participant_id.nunique())}
        for group in REGIONS:
            v = r[r.group == group].pct_per_year
            entry[group] = {"mean": round(float(v.mean()), 2), "sd": round(float(v.std(ddof=1)), 2)} if len(v) else None
        entry["hippocampus_published"] = PUBLISHED_HIPPOCAMPUS[dx]
        if dx == "MCI":
            for label, flag in (("converters", True), ("stable", False)):
                v = r[(r.group == "hippocampus") & (r.event_observed == flag)].pct_per_year
                entry[f"hippocampus_{label}"] = {"n": len(v), "mean": round(float(v.mean()), 2) if len(v) else None}
        out["groups"][dx] = entry
    designed = subjects.groupby("diagnosis").rate_hippocampus_pct_per_year.agg(["mean", "std"]).round(2)
    out["designed_hippocampus_rate"] = {k: designed.loc[k].to_dict() for k in designed.index}
    conv = subjects[subjects.diagnosis == "MCI"]
    if len(conv):
        years = conv.censoring_time_years.sum()
        out["mci_to_ad_events_per_person_year"] = round(float(conv.event_observed.sum() / years), 3) if years else None
    args.figures.mkdir(parents=True, exist_ok=True)
    trajectories_figure(g, subjects, args.figures / "simulate_trajectories.png")
    out["mosaic_subject"] = ad_mosaic(root, subjects, visits, args.figures / "simulate_ad_mosaic.png")
    out["figures"] = [str(args.figures / "simulate_trajectories.png"), str(args.figures / "simulate_ad_mosaic.png")]
    print(json.dumps(out, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
