"""Sampling speed of progression-size 3-D backbones on CPU (the forecast speed target).

The target: one subject, 8 samples x 3 horizons in <= 10 s on 2 CPU cores. One "forecast" here is
exactly what the forecaster will run: :func:`neurocast.backbone.sample` with the baseline image
(1 channel) on the field grid as condition, 3 horizons as covariates (plus age, sex, diagnosis,
APOE4, MMSE), ``num_samples=8``, i.e. 24 velocity fields (3 channels) denoised together by DDIM.
Network weights are random (speed does not depend on them).

For each configuration it times, in one process after a warm-up call: the whole ``sample`` call
(median of ``--repeats``), and from it the time per DDIM step; for configurations whose single
call would take long, it times ``--probe-steps`` steps and extrapolates linearly to the full
step count (sampling time is setup + steps x per-step time; the table says which rows are
extrapolated). Timings depend on the machine *and on what else runs on it*: the script records
the load average before and after each row, and the process's CPU seconds per step (with
``--threads 1`` that is the single-core work, which a busy machine inflates much less than wall
time; with 2+ threads it includes OpenMP spin-waits).

Run from the project root:

    python benchmarks/backbone_speed.py                 # default: 2 threads, full table
    python benchmarks/backbone_speed.py --quick         # a few rows, 1 repeat
    python benchmarks/backbone_speed.py --json out.json # also write the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from neurocast.backbone import BackboneConfig, CovariateSpec, build_backbone, sample

GRIDS = {  # working_grid(spacing).shape of neurocast.registration.template
    "4mm": (40, 49, 43),
    "6mm": (27, 33, 29),
    "8mm": (21, 25, 22),
}

COVARIATES = (
    CovariateSpec.continuous("years", 2.5, 1.6),
    CovariateSpec.continuous("age", 72.0, 7.0),
    CovariateSpec.categorical("sex", ["F", "M"]),
    CovariateSpec.categorical("diagnosis", ["CN", "MCI", "AD"]),
    CovariateSpec.categorical("apoe4", [0, 1, 2]),
    CovariateSpec.continuous("mmse", 27.0, 3.0),
)

# name, grid, channels, num_res_blocks, DDIM steps, guidance, channels_last
FULL = [
    ("4mm-16.32.64-s10", "4mm", (16, 32, 64), 1, 10, 1.0, True),
    ("6mm-16.32.64-s10", "6mm", (16, 32, 64), 1, 10, 1.0, True),
    ("4mm-8.16.32-s10", "4mm", (8, 16, 32), 1, 10, 1.0, True),
    ("6mm-8.16.32-s10", "6mm", (8, 16, 32), 1, 10, 1.0, True),
    ("8mm-16.32.64-s10", "8mm", (16, 32, 64), 1, 10, 1.0, True),
    ("8mm-16.32.64-s10-ncdhw", "8mm", (16, 32, 64), 1, 10, 1.0, False),
    ("8mm-8.16.32-s10", "8mm", (8, 16, 32), 1, 10, 1.0, True),
    ("8mm-8.16.32-s20", "8mm", (8, 16, 32), 1, 20, 1.0, True),
    ("8mm-8.16.32-s10-cfg", "8mm", (8, 16, 32), 1, 10, 2.0, True),
    ("8mm-16.32.32-s8", "8mm", (16, 32, 32), 1, 8, 1.0, True),
]
QUICK = [r for r in FULL if r[0] in ("8mm-16.32.64-s10", "8mm-8.16.32-s10", "8mm-8.16.32-s10-cfg")]


def build(channels: tuple[int, ...], num_res_blocks: int) -> torch.nn.Module:
    cfg = BackboneConfig(
        spatial_dims=3,
        target_channels=3,
        image_condition_channels=1,
        channels=channels,
        num_res_blocks=num_res_blocks,
        covariates=COVARIATES,
        covariate_embed_dim=32,
        prediction_type="v_prediction",
    )
    torch.manual_seed(0)
    return build_backbone(cfg)


def forecast_inputs(grid: tuple[int, int, int]) -> tuple[torch.Tensor, dict]:
    baseline = torch.randn(1, 1, *grid).expand(3, -1, -1, -1, -1)  # one subject, 3 horizons
    covs = {
        "years": [1.0, 2.0, 5.0],
        "age": 74.0,
        "sex": "F",
        "diagnosis": "MCI",
        "apoe4": 1,
        "mmse": 26.0,
    }
    return baseline, covs


def time_row(row, repeats: int, probe_steps: int, max_seconds: float) -> dict:
    name, grid_name, channels, nres, steps, guidance, channels_last = row
    grid = GRIDS[grid_name]
    model = build(channels, nres)
    baseline, covs = forecast_inputs(grid)

    cpu_times: list[float] = []

    def run(n_steps: int) -> float:
        c0, t0 = time.process_time(), time.perf_counter()
        out = sample(
            model,
            condition=baseline,
            covariates=covs,
            num_samples=8,
            num_inference_steps=n_steps,
            guidance_scale=guidance,
            seed=0,
            channels_last=channels_last,
        )
        dt = time.perf_counter() - t0
        cpu_times.append((time.process_time() - c0) / n_steps)
        assert out.shape == (3, 8, 3, *grid)
        return dt

    load_before = os.getloadavg()[0]
    warm = run(1)  # warm-up (oneDNN primitive creation) and a first estimate of one step
    extrapolated = warm * steps > max_seconds
    if extrapolated:
        k = max(1, min(probe_steps, steps))
        times = [run(k) for _ in range(repeats)]
        per_step = statistics.median(times) / k
        total = per_step * steps
    else:
        times = [run(steps) for _ in range(repeats)]
        total = statistics.median(times)
        per_step = total / steps
    return {
        "name": name,
        "grid": grid_name,
        "shape": list(grid),
        "channels": list(channels),
        "num_res_blocks": nres,
        "ddim_steps": steps,
        "guidance_scale": guidance,
        "channels_last": channels_last,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_forecast": round(total, 3),
        "seconds_per_step": round(per_step, 4),
        # CPU seconds of this process per DDIM step (all threads; includes OpenMP spin-waits)
        "cpu_seconds_per_step": round(statistics.median(cpu_times[1:] or cpu_times), 4),
        "extrapolated": extrapolated,
        "repeats": repeats,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe-steps", type=int, default=2)
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="extrapolate rows whose full call would take longer than this",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", help="row names to run")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = QUICK if args.quick else FULL
    if args.only:
        rows = [r for r in FULL if r[0] in set(args.only)]
    repeats = 1 if args.quick else args.repeats
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible"
    )
    print(
        "| config | grid | channels | DDIM steps | guidance | params | s / forecast (24 fields) "
        "| s / step | CPU s / step | extrapolated | load before/after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for row in rows:
        r = time_row(row, repeats, args.probe_steps, args.max_seconds)
        results.append(r)
        print(
            f"| {r['name']} | {r['grid']} {tuple(r['shape'])} | {tuple(r['channels'])} "
            f"| {r['ddim_steps']} | {r['guidance_scale']} | {r['parameters'] / 1e6:.2f} M "
            f"| {r['seconds_per_forecast']:.2f} | {r['seconds_per_step']:.3f} "
            f"| {r['cpu_seconds_per_step']:.3f} "
            f"| {'yes' if r['extrapolated'] else 'no'} | {r['load_before']} / {r['load_after']} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "results": results,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
