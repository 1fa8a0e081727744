"""Seconds per training step of the anomaly detector's network on CPU: float32 against bfloat16.

:func:`neurocast.backbone.train` with ``mixed_precision="no"`` (float32, the CPU default) and
``"bf16"`` (bfloat16 autocast in the channels-last layout), on the network of a model folder
(default: the shipped demo model's configuration, freshly initialised: speed does not depend on the
weights), batches of ``--batch-size`` random slices of its grid, with the prior channel and
covariates. Runs alternate (float32, bfloat16, float32, ...) so that a drift of the machine's speed
hits both; each run trains ``--steps`` steps, the first ``--skip`` are dropped as warm-up, and the
time per step is the median of the others (from the loop's own clock, ``history[i]["seconds"]``).
The ratio is float32 / bfloat16 per pair of runs.

Run from the project root (an idle machine)::

    python benchmarks/anomaly_train_speed.py --threads 2 --json benchmarks/anomaly_train_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "src" / "neurocast" / "weights" / "anomaly-demo"


def step_seconds(config, items, *, steps: int, skip: int, batch_size: int, mode: str) -> float:
    """Median seconds per optimizer step of one training run (after ``skip`` warm-up steps)."""
    from neurocast.backbone import build_backbone, train

    torch.manual_seed(0)
    net = build_backbone(config)
    res = train(
        net, items, n_steps=steps, batch_size=batch_size, mixed_precision=mode, progress=False,
        fingerprint_data=False, device="cpu", log_every=1,
    )  # fmt: skip
    t = [h["seconds"] for h in res.history]
    return statistics.median(b - a for a, b in zip(t[skip:], t[skip + 1 :], strict=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="model folder (its network's size)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from neurocast.anomaly import AnomalyDetector
    from neurocast.backbone.training import cpu_bfloat16_flags

    torch.set_num_threads(args.threads)
    det = AnomalyDetector.load(args.model)
    config = det.config_
    nx, ny = det.grid_.shape[:2]
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "target": torch.randn(1, nx, ny, generator=g),
            "condition": torch.randn(1, nx, ny, generator=g),
            "covariates": {"slice_z": float(i - 40), "prior": "present" if i % 2 else None},
        }
        for i in range(2 * args.batch_size)
    ]
    rows = []
    for pair in range(args.pairs):
        row = {"pair": pair}
        for mode in ("no", "bf16"):
            t0 = time.perf_counter()
            row[mode] = step_seconds(config, items, steps=args.steps, skip=args.skip,
                                     batch_size=args.batch_size, mode=mode)  # fmt: skip
            row[f"{mode}_run_s"] = round(time.perf_counter() - t0, 1)
        row["ratio"] = row["no"] / row["bf16"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "what": "seconds per training step, anomaly detector network, random slices",
        "model": str(args.model), "channels": list(config.channels),
        "slice_shape": [nx, ny], "batch_size": args.batch_size, "threads": args.threads,
        "steps_per_run": args.steps, "warmup_steps_dropped": args.skip,
        "float32_s_per_step": statistics.median(r["no"] for r in rows),
        "bfloat16_s_per_step": statistics.median(r["bf16"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "ratio_min": min(r["ratio"] for r in rows), "ratio_max": max(r["ratio"] for r in rows),
        "pairs": rows, "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_bfloat16_flags(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in out.items() if k != "pairs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
