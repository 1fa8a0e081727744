"""Train the anomaly detector from a bundle of preprocessed healthy scans (on a GPU if there is one).

Preprocessing needs ANTs and takes ~15 s per scan on 2 CPU cores, training wants a GPU: the two
steps can run on different machines. ``anomaly_benchmark.py --export-training BUNDLE`` writes the
benchmark's healthy training scans (simulated visits with their priors, plus the training IXI
scans) into one ``.npz`` bundle; this script trains :class:`neurocast.anomaly.AnomalyDetector` on
it and saves the model folder (safetensors + model card), which ``anomaly_benchmark.py --model``
calibrates, scores and measures.

Bundle (``numpy.savez_compressed``; nothing pickled): ``images`` ``(N, X, Y, Z)`` float16
(normalised intensities, white matter 1; float16 keeps the bundle small, its rounding of
~0.05 % is far below the scans' noise), ``masks`` ``(N, X, Y, Z)`` bool, ``prior_index`` ``(N,)``
int (row of the scan's prior in the bundle, -1 for none), ``sources`` ``(N,)`` str,
``grid_shape`` ``(3,)``, ``grid_affine`` ``(4, 4)``.

Run (the shipped ``anomaly-demo`` model, see its model card)::

    python benchmarks/anomaly_benchmark.py --export-training bundle.npz
    python benchmarks/anomaly_train.py bundle.npz model_dir --channels 64 128 128 \\
        --batch-size 64 --max-minutes 7

On a CPU with AMX, ``--mixed-precision bf16`` trains about 2.7x faster than float32 (the shipped
model's last 1381 steps were trained so, from its earlier weights, see BENCHMARKS.md)::

    python benchmarks/anomaly_train.py bundle.npz models/cpu-ft --channels 32 64 64 \\
        --batch-size 64 --device cpu --mixed-precision bf16 --steps 1700 --max-minutes 58 \\
        --init src/neurocast/weights/anomaly-demo
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_bundle(scans: Sequence[Any], path: str | Path) -> Path:
    """Write healthy training :class:`~neurocast.anomaly.Scan` objects (priors kept) as a bundle.

    A scan's prior must be the image of another scan in ``scans`` (it is stored as an index).
    """
    images = [np.asarray(s.image, dtype=np.float32) for s in scans]
    prior_index = []
    for s in scans:
        if s.prior is None:
            prior_index.append(-1)
            continue
        hits = [i for i, im in enumerate(images) if im.shape == s.prior.shape and np.array_equal(im, s.prior)]
        if not hits:
            raise ValueError(f"{s.source}: its prior is not one of the bundled scans")
        prior_index.append(hits[0])
    grid = scans[0].grid
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.npz")
    np.savez_compressed(
        tmp,
        images=np.stack(images).astype(np.float16),
        masks=np.stack([np.asarray(s.brain_mask, bool) for s in scans]),
        prior_index=np.asarray(prior_index, dtype=np.int64),
        sources=np.asarray([str(s.source or f"scan {i}") for i, s in enumerate(scans)]),
        grid_shape=np.asarray(grid.shape, dtype=np.int64),
        grid_affine=np.asarray(grid.affine, dtype=float),
    )
    tmp.replace(out)
    return out


def read_bundle(path: str | Path) -> list[Any]:
    """The scans of a bundle written by :func:`write_bundle` (priors restored)."""
    from neurocast.anomaly import Scan
    from neurocast.registration.template import Grid

    d = np.load(path, allow_pickle=False)
    grid = Grid(tuple(int(v) for v in d["grid_shape"]), d["grid_affine"])  # type: ignore[arg-type]
    images = d["images"].astype(np.float32)
    masks = d["masks"]
    scans = [
        Scan(images[i], masks[i], grid, source=str(d["sources"][i])) for i in range(len(images))
    ]
    return [
        s.with_prior(scans[j]) if j >= 0 else s
        for s, j in zip(scans, d["prior_index"].tolist(), strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path, help="model folder to write")
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    ap.add_argument("--num-res-blocks", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--steps", type=int, default=20_000, help="optimizer steps (an upper bound with --max-minutes)")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--mixed-precision", choices=["auto", "bf16", "no"], default="auto",
                    help="bf16 also trains in bfloat16 on CPU (about 2.7x faster with AMX)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this trained model's weights (fine-tuning, same sizes)")
    args = ap.parse_args(argv)

    import torch

    from neurocast.anomaly import AnomalyDetector

    scans = read_bundle(args.bundle)
    det = AnomalyDetector(
        channels=args.channels, num_res_blocks=args.num_res_blocks, n_steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        mixed_precision=args.mixed_precision,
    )  # fmt: skip
    t0 = time.perf_counter()
    init = AnomalyDetector.load(args.init) if args.init else None
    det.fit(
        scans,
        init=init,
        data_summary={"bundle": args.bundle.name, "command": " ".join(["anomaly_train.py", *(argv or sys.argv[1:])])},
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )
    seconds = time.perf_counter() - t0
    steps = det.training_["steps"]
    det.save(args.out)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    info = {"steps": steps, "seconds": round(seconds, 1), "steps_per_second": round(steps / seconds, 2),
            "final_loss": det.history_[-1]["loss"], "device": dev, "n_scans": len(scans),
            "n_slices": det.training_["data_summary"]["n_slices"]}  # fmt: skip
    print(json.dumps(info, indent=2))
    info["loss"] = [[h["step"], round(h["loss"], 6)] for h in det.history_]
    (args.out / "training_run.json").write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
