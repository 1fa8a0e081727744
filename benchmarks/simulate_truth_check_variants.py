"""Where the truth check loses the hippocampal change: refit its pairs with other registrations.

Runs on the work folder of ``benchmarks/simulate_truth_check.py`` (the simulated study and what
``neurocast register`` wrote for it). For every follow-up it takes the two aligned images that
``register`` wrote (``desc-longitudinal_T1w``, template space, ``--grid-spacing-mm``), fits the non-linear
registration baseline -> follow-up again with each variant, and averages the fitted volume-change
map over two label sets:

* ``truth``: the subject's own baseline labels from the simulator's truth, brought into the
  aligned space through the true native <-> template transform and the one ``register`` found
  (nearest neighbour), i.e. perfect labels;
* ``atlas``: the template atlas (``register --atlas-labels template``);
* ``subject``: the atlas fitted to the subject's baseline, as ``register`` does by default, when
  its ``desc-subject_dseg`` is in the work folder.

Variants (JSON object, name -> options):

* ``{"method": "registered"}``: no refit, the Jacobian map ``register`` wrote;
* ``{"method": "svf", ...}``: :func:`neurocast.registration.svf.fit_velocity_field` with these
  keyword options (e.g. ``"field_factor": 1, "regularization": 0.05``);
* ``{"method": "svf_symmetric", ...}``: the same fit both ways (baseline -> follow-up and back),
  the velocities averaged in the log domain (``(v_forward - v_backward) / 2``, since the inverse
  of ``exp(v)`` is ``exp(-v)``), so neither visit is the template of the other;
* ``{"method": "ants", "iterations": [60, 40, 20]}``: ANTsPy's symmetric SyN (``SyNOnly``,
  cross-correlation radius 2, flow sigma 3, no total-field smoothing), the volume change taken as
  the Jacobian determinant of its inverse warp on the baseline grid;
* ``"images": "clean"`` in any variant fits the simulator's clean template-space images (truth
  ``desc-clean_T1w``, no acquisition effects) instead, on the truth labels only; with
  ``"blur_sigma": s`` both clean images are first blurred by a Gaussian of ``s`` voxels;
* ``"images": "roundtrip"`` fits the clean images after a trip through each visit's scanner grid
  and back, nothing else (no noise, bias, contrast or head-pose error): each clean image is read on
  the visit's raw-image grid through the true template -> native transform
  (:func:`neurocast.simulate.acquisition.sample_voxel_average` with ``"samples_per_axis": n``,
  default 2 as the simulator; 1 = the voxel centre only), then resampled back onto the template
  grid (trilinear), on the truth labels only. It isolates what the native resolution costs;
* ``"denoise": "Rician"`` (or ``"Gaussian"``) in any variant denoises both images first with ANTs'
  non-local means (``ants.denoise_image``) inside the fitting mask; ``"pre_sigma": s`` smooths
  both with a Gaussian of ``s`` voxels (neither helped, 2026-12-05);
* ``"mask": "common"`` fits with ``register``'s mask (the majority of the visits' own masks, so
  the refit reproduces ``register``'s fit); by default the baseline's own mask;
* ``"noise_sd": s`` in any variant adds independent Gaussian noise of SD ``s`` times the white-matter
  level (the 75th percentile inside the fitting mask) to both images before fitting (fixed seed).

Ratio = mean |measured - true| / mean |true| (the truth check's figure), slope = least-squares
slope of measured on true change (1 = unbiased).

Usage::

    python benchmarks/simulate_truth_check.py --seed 11 --work /tmp/tc   # once: simulate + register
    python benchmarks/simulate_truth_check_variants.py --work /tmp/tc/seed-11 \\
        --variants '{"registered": {"method": "registered"}, "syn": {"method": "ants"}}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from neurocast.registration.atlas import load_atlas, parse_labels
from neurocast.registration.deformation import volume_change_map
from neurocast.registration.svf import fit_velocity_field
from neurocast.registration.template import working_grid
from neurocast.registration.transforms import read_ants_affine, resample

REGIONS = ("Hippocampus", "Lateral-Ventricles")
VARIANT_KEYS = frozenset(
    ("method", "images", "iterations", "blur_sigma", "noise_sd", "samples_per_axis", "mask",
     "denoise", "pre_sigma")
)  # fmt: skip
"""A variant's own options; the rest are passed to the fit."""


def _one(folder: Path, pattern: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if not hits:
        raise FileNotFoundError(f"no {pattern} under {folder}")
    return hits[0]


def truth_labels_on_grid(study: Path, out: Path, sub: str, grid) -> np.ndarray:
    """The subject's true baseline labels resampled (nearest) onto ``register``'s aligned grid."""
    truth = study / "derivatives" / "neurocast-truth" / sub / "ses-bl" / "anat"
    labels = nib.load(_one(truth, "*atlas-neurocast_dseg.nii.gz"))
    true_t2n = read_ants_affine(_one(truth, "*mode-image_xfm.mat"))
    found_t2n = read_ants_affine(_one(out / sub, f"**/{sub}_ses-bl_*desc-longitudinal_xfm.mat"))
    return resample(
        np.asarray(labels.dataobj), labels.affine, grid.shape, grid.affine,
        np.linalg.inv(true_t2n) @ found_t2n, order=0,
    )  # fmt: skip


def scanner_round_trip(
    clean: nib.Nifti1Image,
    raw: nib.Nifti1Image,
    template_to_native: np.ndarray,
    samples_per_axis: int,
) -> np.ndarray:
    """A template-space image read on a raw image's grid (as the simulator does) and back."""
    from types import SimpleNamespace

    import torch

    from neurocast.simulate.acquisition import sample_voxel_average, sampling_grid

    acq = SimpleNamespace(
        native_to_template=np.linalg.inv(template_to_native),
        native_affine=raw.affine,
        native_shape=raw.shape[:3],
    )
    data = np.asarray(clean.dataobj, np.float32)
    with torch.no_grad():
        grid = sampling_grid(data.shape, clean.affine, acq)  # type: ignore[arg-type]
        native = sample_voxel_average(data, grid, samples_per_axis).numpy()
    return resample(native, raw.affine, data.shape, clean.affine, template_to_native, order=1)


def volume_change(
    variant: dict, base: np.ndarray, follow: np.ndarray, mask: np.ndarray, jac_file: Path | None
) -> np.ndarray:
    """The variant's volume-change map (follow-up / baseline volume) on the baseline grid."""
    options = {k: v for k, v in variant.items() if k not in VARIANT_KEYS}
    method = variant.get("method", "svf")
    if method == "registered":
        if jac_file is None:
            raise ValueError('"method": "registered" reads what register wrote, not clean images')
        return np.asarray(nib.load(jac_file).dataobj, np.float64)
    if method == "svf":
        fit = fit_velocity_field(base, follow, mask=mask.astype(np.float32), **options)
        return volume_change_map(fit.velocity, shape=base.shape)[0, 0].numpy()
    if method == "svf_symmetric":
        forward = fit_velocity_field(base, follow, mask=mask.astype(np.float32), **options).velocity
        backward = fit_velocity_field(
            follow, base, mask=mask.astype(np.float32), **options
        ).velocity
        return volume_change_map(0.5 * (forward - backward), shape=base.shape)[0, 0].numpy()
    if method == "ants":
        import ants

        reg = ants.registration(
            ants.from_numpy(follow), ants.from_numpy(base), type_of_transform="SyNOnly",
            syn_metric="CC", syn_sampling=2, reg_iterations=tuple(variant.get("iterations", (60, 40, 20))),
            flow_sigma=3, total_sigma=0, random_seed=1, initial_transform="Identity",
        )  # fmt: skip
        inverse = next(t for t in reg["invtransforms"] if t.endswith("InverseWarp.nii.gz"))
        return ants.create_jacobian_determinant_image(ants.from_numpy(base), inverse).numpy()
    raise ValueError(f"unknown method {method!r}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--work",
        type=Path,
        required=True,
        help="one cohort's folder of simulate_truth_check.py (WORK/seed-N)",
    )
    ap.add_argument("--variants", required=True, help="JSON object: name -> options")
    ap.add_argument(
        "--pairs", default=None, help="comma-separated sub-XXX:ses-YYY (default: all follow-ups)"
    )
    ap.add_argument(
        "--grid-spacing-mm", type=float, default=2.0, help="the grid register used (default 2)"
    )
    ap.add_argument("--csv", type=Path, default=None, help="also write the per-pair table here")
    ap.add_argument(
        "--regions", nargs="+", default=list(REGIONS), help="atlas regions (default: the issue's two)"
    )
    args = ap.parse_args()
    variants = json.loads(args.variants)
    study, out = args.work / "study", args.work / "out"
    truth_dir = study / "derivatives" / "neurocast-truth"
    true_vol = pd.read_csv(truth_dir / "regional_volumes.tsv", sep="\t")
    grid = working_grid(args.grid_spacing_mm)
    atlas = load_atlas(grid)
    atlas_labels = np.asarray(atlas.labels.dataobj).astype(int)
    sources = {
        r: list(
            parse_labels(atlas.regions.loc[atlas.regions["name"] == r, "source_labels"].iloc[0])
        )
        for r in args.regions
    }
    if args.pairs:
        pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    else:
        fu = true_vol[(true_vol["region"] == args.regions[0]) & (true_vol["session_id"] != "ses-bl")]
        pairs = list(zip(fu["participant_id"], fu["session_id"], strict=True))

    rows = []
    for sub, ses in pairs:
        for name, variant in variants.items():
            if variant.get("images") in ("clean", "roundtrip"):
                folder = truth_dir / sub
                jac_file = None
                cleans = {
                    s: nib.load(_one(folder / s / "anat", "*desc-clean_T1w.nii.gz"))
                    for s in ("ses-bl", ses)
                }
                if variant["images"] == "roundtrip":
                    base, follow = (
                        scanner_round_trip(
                            cleans[s],
                            nib.load(_one(study / sub / s / "anat", f"{sub}_{s}_*T1w.nii.gz")),
                            read_ants_affine(_one(folder / s / "anat", "*mode-image_xfm.mat")),
                            int(variant.get("samples_per_axis", 2)),
                        )
                        for s in ("ses-bl", ses)
                    )
                else:
                    base, follow = (
                        np.asarray(cleans[s].dataobj, np.float32) for s in ("ses-bl", ses)
                    )
                labels = {
                    "truth": np.asarray(
                        nib.load(
                            _one(folder / "ses-bl" / "anat", "*atlas-neurocast_dseg.nii.gz")
                        ).dataobj
                    )
                }
                fit_mask = labels["truth"] > 0
                if variant.get("blur_sigma"):  # Gaussian blur of both, in voxels
                    sigma = float(variant["blur_sigma"])
                    base, follow = (ndimage.gaussian_filter(x, sigma) for x in (base, follow))
            else:  # what register wrote (needs its outputs in WORK/out)
                truth_labels = truth_labels_on_grid(study, out, sub, grid)
                if variant.get("mask") == "common":  # register's: majority of the visits' masks
                    visit_masks = [
                        np.asarray(nib.load(f).dataobj) > 0
                        for f in sorted((out / sub).glob(f"**/{sub}_ses-*_*desc-longitudinal_mask.nii.gz"))
                    ]
                    mask = np.mean(visit_masks, axis=0) > 0.5
                else:  # the baseline's own mask
                    mask = (
                        np.asarray(
                            nib.load(
                                _one(out / sub, f"**/{sub}_ses-bl_*desc-longitudinal_mask.nii.gz")
                            ).dataobj
                        )
                        > 0
                    )
                jac_file = _one(out / sub, f"**/{sub}_{ses}_*desc-jacobian_map.nii.gz")
                base, follow = (
                    np.asarray(
                        nib.load(
                            _one(out / sub, f"**/{sub}_{s}_*desc-longitudinal_T1w.nii.gz")
                        ).dataobj,
                        np.float32,
                    )
                    for s in ("ses-bl", ses)
                )
                labels = {"truth": truth_labels, "atlas": atlas_labels}
                fitted = sorted((out / sub).glob(f"**/{sub}_ses-bl_*desc-subject_dseg.nii.gz"))
                if fitted:  # register's atlas fitted to the subject (--atlas-labels subject)
                    labels["subject"] = np.asarray(nib.load(fitted[0]).dataobj).astype(int)
                fit_mask = mask
            if variant.get("denoise"):  # ANTs non-local means on both images, inside the fit mask
                import ants

                ants_mask = ants.from_numpy((fit_mask > 0).astype(np.float32))
                base, follow = (
                    ants.denoise_image(
                        ants.from_numpy(x), ants_mask, noise_model=str(variant["denoise"])
                    )
                    .numpy()
                    .astype(np.float32)
                    for x in (base, follow)
                )
            if variant.get("pre_sigma"):  # Gaussian smoothing of both images, in voxels
                base, follow = (
                    ndimage.gaussian_filter(x, float(variant["pre_sigma"])) for x in (base, follow)
                )
            if variant.get("noise_sd"):  # ablation: how much image noise costs
                rng = np.random.default_rng(0)
                level = float(np.percentile(base[fit_mask > 0], 75))
                base, follow = (
                    (x + rng.normal(0.0, float(variant["noise_sd"]) * level, x.shape)).astype(
                        np.float32
                    )
                    for x in (base, follow)
                )
            t0 = time.perf_counter()
            jac = volume_change(variant, base, follow, fit_mask, jac_file)
            seconds = time.perf_counter() - t0
            for region, labs in sources.items():
                true = true_vol.loc[
                    (true_vol["participant_id"] == sub)
                    & (true_vol["session_id"] == ses)
                    & (true_vol["region"] == region),
                    "ratio_to_baseline",
                ].iloc[0]
                for lab_name, lab in labels.items():
                    rows.append({
                        "participant_id": sub, "session_id": ses, "region": region, "variant": name,
                        "labels": lab_name, "true_change_pct": 100 * (true - 1),
                        "measured_change_pct": 100 * (float(jac[np.isin(lab, labs)].mean()) - 1), "seconds": seconds,
                    })  # fmt: skip
            print(f"{sub} {ses} {name}: {seconds:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(
        "\n| variant | labels | region | pairs | ratio | slope | median s per pair |\n|---|---|---|---|---|---|---|"
    )
    for (name, lab_name, region), g in df.groupby(["variant", "labels", "region"], sort=False):
        t, m = g["true_change_pct"], g["measured_change_pct"]
        print(
            f"| {name} | {lab_name} | {region} | {len(g)} | {(m - t).abs().mean() / t.abs().mean():.3f} | "
            f"{(m * t).sum() / (t**2).sum():.2f} | {g['seconds'].median():.1f} |"
        )


if __name__ == "__main__":
    main()
