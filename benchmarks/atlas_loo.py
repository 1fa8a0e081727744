"""Leave-one-out benchmark of the default atlas and of native-space regional volumes.

For each of the six IXI adults of the shared data (T1w whole head, 2 mm, with DLMUSE label maps):

1. an atlas is built from the *other five* exactly as :mod:`neurocast.registration.build_atlas`
   builds the shipped one (skull-strip with the label map, N4, affine + SyN to the template, soft
   majority vote on the 2 mm working grid);
2. the held-out T1w goes through the product path, knowing nothing of its labels:
   :func:`neurocast.registration.preprocess.preprocess_t1w` (whole head: its own brain mask and
   affine) then :func:`neurocast.registration.volumes.native_regional_volumes` (the atlas
   carried to the native grid by affine + SyN of the skull-stripped scan, labels outside the brain
   mask dropped);
3. every region's volume is compared with the volume in the subject's own label map.

The per-subject registrations to the template (step 1) do not depend on the fold and are done once.

Run from the project root (about 5-10 minutes on 2 cores):

    python benchmarks/atlas_loo.py                 # writes benchmarks/atlas_loo.md
    python benchmarks/atlas_loo.py --out /tmp/x.md --subjects 3

Target: mean absolute error of hippocampus and lateral-ventricle volumes within 15 %.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from neurocast.registration.atlas import Atlas, default_region_table, template_on_grid
from neurocast.registration.build_atlas import (
    default_data_dir,
    find_pairs,
    fuse_votes,
    load_labels,
    register_subject,
)
from neurocast.registration.template import working_grid
from neurocast.registration.threads import set_threads
from neurocast.registration.volumes import native_regional_volumes, regional_volumes

TARGET_REGIONS = ("Left-Hippocampus", "Right-Hippocampus", "Left-Lateral-Ventricle", "Right-Lateral-Ventricle")
TARGET_PERCENT = 15.0


class _Scan:
    """A PreprocessResult-like object with another brain mask (for the oracle-mask variant)."""

    def __init__(self, result, mask_img):
        self.native = result.native
        self.native_brain_mask = mask_img
        self.native_to_template = result.native_to_template


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("atlas_loo.md"))
    ap.add_argument("--subjects", type=int, default=0, help="hold out only the first N subjects (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build-syn-iterations", type=int, nargs=3, default=None, metavar=("COARSE", "MID", "FINE"),
                    help="SyN iterations per level (8, 4, 2 mm) of the atlas building (default: the "
                         "shipped atlas's recipe, SynParams())")
    ap.add_argument("--native-syn-iterations", type=int, nargs=3, default=None, metavar=("COARSE", "MID", "FINE"),
                    help="SyN iterations per level of atlas_to_native (default: its own, "
                         "neurocast.registration.volumes.NATIVE_SYN_ITERATIONS)")
    ap.add_argument("--oracle-mask", action="store_true",
                    help="also measure with the subject's own label mask as brain mask (isolates mask errors)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from dataclasses import replace

    from neurocast.registration._syn import SynParams
    from neurocast.registration.preprocess import preprocess_t1w
    from neurocast.registration.volumes import native_syn_params

    build_params = SynParams()  # the shipped atlas's recipe
    if args.build_syn_iterations:
        build_params = replace(build_params, syn_iterations=tuple(args.build_syn_iterations))
    native_params = native_syn_params(tuple(args.native_syn_iterations)) if args.native_syn_iterations else native_syn_params()
    args.build_params, args.native_params = build_params, native_params

    t_start = time.perf_counter()
    pairs = find_pairs(args.data_dir or default_data_dir())
    grid = working_grid(2.0)
    fixed = template_on_grid(grid)
    rows, timing, qc = [], [], []
    with tempfile.TemporaryDirectory(prefix="neurocast_loo_") as tmp:
        subjects = []
        for name, t1, lab in pairs:
            s = register_subject(name, t1, lab, fixed_img=fixed, work_dir=Path(tmp), seed=args.seed,
                                 params=build_params)
            print(f"registered {name} to the template in {s.seconds:.1f} s", flush=True)
            subjects.append(s)
        held = pairs if not args.subjects else pairs[: args.subjects]
        for h, (name, t1, lab) in enumerate(held):
            others = [s for i, s in enumerate(subjects) if i != h]
            fused = fuse_votes(others, grid.shape)
            atlas = Atlas(grid.image(fused.astype(np.int16), dtype=np.int16), default_region_table(np.unique(fused).tolist()))
            own = load_labels(lab)
            ref = regional_volumes(own, atlas.regions)
            t0 = time.perf_counter()
            result = preprocess_t1w(t1, seed=args.seed, work_dir=tmp, on_fail="report")
            t_pre = time.perf_counter() - t0
            t0 = time.perf_counter()
            est = native_regional_volumes(result, atlas, seed=args.seed, work_dir=tmp, params=native_params)
            t_nat = time.perf_counter() - t0
            variants = {"product": est}
            if args.oracle_mask:
                own_mask = own.__class__((np.asarray(own.dataobj) > 0).astype(np.uint8), own.affine)
                variants["oracle_mask"] = native_regional_volumes(_Scan(result, own_mask), atlas, seed=args.seed,
                                                                    work_dir=tmp, params=native_params)
            for variant, table in variants.items():
                for r_est, r_ref in zip(table.itertuples(), ref.itertuples(), strict=True):
                    rows.append({
                        "subject": name.split("-T1")[0], "variant": variant, "region": r_ref.region,
                        "reference_mm3": r_ref.volume_mm3, "estimate_mm3": r_est.volume_mm3,
                        "error_percent": 100.0 * (r_est.volume_mm3 - r_ref.volume_mm3) / r_ref.volume_mm3
                        if r_ref.volume_mm3 else np.nan,
                    })
            brain_mask_ml = float(np.asarray(result.native_brain_mask.dataobj).sum()) * float(
                abs(np.linalg.det(result.native.affine[:3, :3]))) / 1000
            qc.append({"subject": name.split("-T1")[0], "preprocess_passed": result.qc.get("passed"),
                       "similarity": result.qc.get("similarity"), "brain_mask_ml": brain_mask_ml,
                       "label_icv_ml": float((np.asarray(own.dataobj) > 0).sum()) * 8 / 1000})
            timing.append({"subject": name.split("-T1")[0], "preprocess_s": t_pre, "atlas_to_native_s": t_nat})
            print(f"{name}: preprocess {t_pre:.1f} s, atlas to native {t_nat:.1f} s", flush=True)
    df = pd.DataFrame(rows)
    write_report(df, pd.DataFrame(timing), pd.DataFrame(qc), subjects, args, time.perf_counter() - t_start)
    prod = df[df.variant == "product"]
    mean_abs = prod[prod.region.isin(TARGET_REGIONS)].groupby("region")["error_percent"].apply(lambda e: e.abs().mean())
    ok = bool((mean_abs <= TARGET_PERCENT).all())
    print(mean_abs.round(1).to_string())
    print("target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def write_report(df: pd.DataFrame, timing: pd.DataFrame, qc: pd.DataFrame, subjects, args, seconds: float) -> None:
    lines = [
        "# Atlas leave-one-out benchmark",
        "",
        f"Generated by `benchmarks/atlas_loo.py` on {_dt.date.today().isoformat()} "
        f"({platform.machine()}, {args.threads} threads, seed {args.seed}); total {seconds / 60:.1f} min.",
        "",
        "Each of the six IXI adults is held out in turn: an atlas is fused from the other five "
        "(the shipped atlas's recipe: label-mask skull strip, N4, rigid + affine + SyN to the template, "
        "soft majority vote on the 2 mm working grid), the held-out whole-head T1w goes through "
        "`preprocess_t1w` (its own brain mask and affine) and `native_regional_volumes` (affine + SyN of "
        "the skull-stripped scan to the template, atlas pulled to the native grid with `genericLabel`, "
        "labels outside the brain mask dropped), and each region's volume is compared with the volume in "
        "the subject's own DLMUSE label map. Error = (estimate - reference) / reference.",
        "",
        f"Target: mean absolute error of hippocampus and lateral ventricle volumes <= {TARGET_PERCENT:.0f} %.",
        "",
        f"SyN iterations per level (8, 4, 2 mm): atlas building {list(args.build_params.syn_iterations)}, "
        f"atlas to native {list(args.native_params.syn_iterations)}.",
        "",
    ]
    for variant in df.variant.unique():
        d = df[df.variant == variant]
        summary = d.groupby("region", sort=False).agg(
            reference_mean_ml=("reference_mm3", lambda v: v.mean() / 1000),
            estimate_mean_ml=("estimate_mm3", lambda v: v.mean() / 1000),
            mean_error_percent=("error_percent", "mean"),
            mean_abs_error_percent=("error_percent", lambda e: e.abs().mean()),
            max_abs_error_percent=("error_percent", lambda e: e.abs().max()),
        )
        title = {"product": "Product path (preprocess_t1w brain mask)",
                 "oracle_mask": "With the subject's own label mask as brain mask (isolates registration error)"}[variant]
        lines += [f"## {title}", "", "### Mean over held-out subjects", ""]
        lines += _md(summary.reset_index(), floatfmt=1)
        lines += ["", "### Error per subject (%)", ""]
        per = d.pivot(index="region", columns="subject", values="error_percent").reindex(summary.index)
        lines += _md(per.reset_index(), floatfmt=1)
        lines += [""]
        t = summary.loc[[r for r in TARGET_REGIONS if r in summary.index], "mean_abs_error_percent"]
        verdict = "met" if (t <= TARGET_PERCENT).all() else "MISSED"
        lines += ["Target regions: " + ", ".join(f"{r} {v:.1f} %" for r, v in t.items()) + f" -> target {verdict}.", ""]
    lines += ["## Preprocessing QC of the held-out scans", ""]
    lines += _md(qc, floatfmt=3)
    lines += ["", "## Time (s)", ""]
    reg = pd.DataFrame({"subject": [s.name.split("-T1")[0] for s in subjects],
                        "registration_to_template_s": [s.seconds for s in subjects]})
    lines += _md(reg.merge(timing, on="subject", how="left"), floatfmt=1)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def _md(frame: pd.DataFrame, floatfmt: int = 1) -> list[str]:
    cols = list(frame.columns)
    out = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for rec in frame.itertuples(index=False):
        cells = []
        for v in rec:
            if isinstance(v, float | np.floating):
                cells.append("n/a" if not np.isfinite(v) else f"{v:.{floatfmt}f}")
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    sys.exit(main())
