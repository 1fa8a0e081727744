"""Training loop: AdamW, EMA weights, gradient clipping, mixed precision on CUDA, DDP, resume.

:func:`train` fits a :class:`~neurocast.backbone.network.DiffusionBackbone` on a dataset whose
items are mappings::

    {"target": Tensor (C, *spatial),            # required, data units
     "condition": Tensor (Cc, *spatial),        # when the config has image condition channels
     "covariates": {"age": 71.0, "sex": "F"}}   # optional; missing names / None = missing

(:func:`collate` stacks such items; encoded ``(n,)`` covariate tensors work too.)

What it does, in order, every step: draw timesteps, noise and the condition-dropout mask from a
seeded generator; compute the loss (under ``torch.autocast``: bf16/fp16 on CUDA; on CPU fp32
unless bf16 is asked for); backward (with a ``GradScaler`` for fp16); clip the gradient norm;
AdamW step with the learning rate of the warm-up schedule; update the EMA copy (torch's
``AveragedModel`` with an EMA whose decay warms up as ``min(decay, (1 + n) / (10 + n))``).

**Determinism and resume.** Data order comes from ``DistributedSampler(seed=seed)`` per epoch
(also in a single process), the diffusion noise from a generator seeded with ``seed + rank``.
A checkpoint stores the raw and EMA weights, the optimizer state, the step, the position in the
epoch and every RNG state (all as safetensors tensors + JSON, see
:mod:`neurocast.backbone.checkpoint`), so on CPU a run of N steps, saved, reloaded and continued
for M steps ends with the same parameters, bit for bit, as an uninterrupted run of N + M steps.
(With a user-built ``DataLoader`` instead of a dataset, the data order after a resume is whatever
that loader gives: only the dataset path is exact.)

**Distributed.** Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is
initialised from the environment variables (NCCL on GPUs, Gloo on CPU), each rank gets its shard of
every epoch, gradients are averaged by ``DistributedDataParallel``, and only rank 0 writes logs and
checkpoints. Otherwise everything runs in one process with no process group.

Example:
    >>> import torch
    >>> from neurocast.backbone import BackboneConfig, build_backbone, train
    >>> data = [{"target": torch.randn(1, 16, 16)} for _ in range(8)]
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = build_backbone(BackboneConfig(spatial_dims=2, target_channels=1, channels=(8, 16)))
    >>> result = train(net, data, n_steps=3, batch_size=4, progress=False)
    >>> result.step, len(result.history)
    (3, 3)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from neurocast.backbone.checkpoint import (
    TrainingState,
    load_training_state,
    save_checkpoint,
)
from neurocast.backbone.diffusion import diffusion_loss, make_train_scheduler
from neurocast.backbone.network import DiffusionBackbone

log = logging.getLogger(__name__)

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]


def _out_of_time(t_start: float, max_seconds: float, use_ddp: bool, device: torch.device) -> bool:
    """Whether the wall-clock budget is spent (rank 0 decides under DDP, so all ranks agree)."""
    over = torch.tensor([float(time.perf_counter() - t_start >= max_seconds)], device=device)
    if use_ddp:
        dist.broadcast(over, src=0)
    return bool(over.item())


# --------------------------------------------------------------------------- data
def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into a batch: ``target``/``condition`` tensors, covariates as a list.

    Covariates stay a list of mappings (or become a stacked tensor if every item holds an encoded
    tensor); the model encodes them.
    """
    if not items:
        raise ValueError("empty batch")
    batch: dict[str, Any] = {}
    for key in ("target", "condition"):
        vals = [it.get(key) for it in items]
        if all(v is None for v in vals):
            continue
        if any(v is None for v in vals):
            raise ValueError(f"some items have {key!r} and some do not")
        batch[key] = torch.stack(
            [
                torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).float()
                for v in vals
            ]
        )
    if "target" not in batch:
        raise ValueError("dataset items need a 'target'")
    covs = [it.get("covariates") for it in items]
    if any(c is not None for c in covs):
        if all(isinstance(c, torch.Tensor) for c in covs):
            batch["covariates"] = torch.stack([c.float().reshape(-1) for c in covs])  # type: ignore[union-attr]
        else:
            batch["covariates"] = [c if c is not None else {} for c in covs]
    return batch


class _SkipSampler(Sampler[int]):
    """A DistributedSampler's order for one epoch, minus the first ``skip`` indices (resume)."""

    def __init__(self, base: DistributedSampler, skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def _dataset_fingerprint(dataset: Dataset) -> tuple[str, dict[str, Any]]:
    """sha256 over every item's tensors and covariates, and a small summary of the data."""
    h = hashlib.sha256()
    n = len(dataset)  # type: ignore[arg-type]
    shapes: dict[str, list[int]] = {}
    for i in range(n):
        item = dataset[i]
        for key in ("target", "condition"):
            v = item.get(key)
            if v is None:
                continue
            arr = np.ascontiguousarray(np.asarray(v, dtype=np.float32))
            shapes.setdefault(key, list(arr.shape))
            h.update(key.encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        c = item.get("covariates")
        if c is not None:
            if isinstance(c, torch.Tensor):
                h.update(np.asarray(c, dtype=np.float32).tobytes())
            else:
                h.update(
                    json.dumps(
                        {k: (None if v is None else str(v)) for k, v in dict(c).items()},
                        sort_keys=True,
                    ).encode()
                )
    return h.hexdigest(), {"n_items": n, "shapes": shapes}


# --------------------------------------------------------------------------- EMA
def _ema_avg_fn(decay: float):
    @torch.no_grad()
    def fn(ema_params, params, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        for e, p in zip(ema_params, params, strict=True):
            e.lerp_(p.detach().to(e.dtype), 1.0 - d)

    return fn


def make_ema(model: DiffusionBackbone, decay: float | None = None) -> AveragedModel:
    """An EMA shadow of ``model`` (torch ``AveragedModel``; its ``.module`` is a backbone)."""
    d = model.config.ema_decay if decay is None else decay
    return AveragedModel(model, multi_avg_fn=_ema_avg_fn(d), use_buffers=True)


# --------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained raw weights (unwrapped from DDP).
        ema_model: the EMA weights; sample with this one.
        step: optimizer steps done (including those before a resume).
        history: one dict per logged step (``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``,
            ``seconds``), also written to ``out_dir/metrics.jsonl``.
        checkpoint: the final checkpoint directory (``None`` without ``out_dir``).
    """

    model: DiffusionBackbone
    ema_model: DiffusionBackbone
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


# --------------------------------------------------------------------------- helpers
def _dist_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def cpu_bfloat16_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> list[str]:
    """The CPU's bfloat16 instruction flags (``amx_bf16``, ``avx512_bf16``...; Linux only).

    An empty list where the CPU has none or ``cpuinfo`` cannot be read. Where it has some,
    ``mixed_precision="bf16"`` makes CPU training several times faster.

    Example:
        >>> isinstance(cpu_bfloat16_flags(), list)
        True
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return sorted({f for f in line.partition(":")[2].split() if f.endswith("bf16")})


def _amp_settings(
    device: torch.device, mixed_precision: MixedPrecision
) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler).

    On CPU only an explicit ``"bf16"`` turns autocast on: ``"auto"`` stays fp32 there, because
    bfloat16 is only fast on CPUs with AMX / AVX512-BF16 and a model's last bits should not
    depend on which CPU trained it unless asked; fp16 autocast is not offered on CPU.
    """
    if mixed_precision == "no":
        return None, False
    if device.type != "cuda":
        if mixed_precision == "bf16":
            return torch.bfloat16, False
        if mixed_precision == "fp16":
            log.info("mixed precision fp16 ignored on %s: training in fp32", device.type)
        elif device.type == "cpu" and mixed_precision == "auto" and (flags := cpu_bfloat16_flags()):
            log.info("training in fp32; this CPU has bfloat16 units (%s): mixed_precision='bf16' "
                     "trains several times faster", ", ".join(flags))  # fmt: skip
        return None, False
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mixed_precision == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


def _lr_at(step: int, lr: float, warmup_steps: int) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for k in ("target", "condition"):
        if k in out:
            out[k] = out[k].to(device, non_blocking=True)
    if isinstance(out.get("covariates"), torch.Tensor):
        out["covariates"] = out["covariates"].to(device)
    return out


def _global_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - saving the legacy global state on purpose
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def _set_global_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and state.get("torch_cuda"):
        cuda = list(state["torch_cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - restoring the legacy global state on purpose
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# --------------------------------------------------------------------------- train
def estimate_training_bytes(model: DiffusionBackbone, item: Mapping[str, Any], batch_size: int) -> int:
    """Memory (bytes) one training step needs for ``batch_size`` items like ``item``.

    The activations of one item are measured with forward hooks on every leaf module (one forward
    pass without gradients, on the CPU), doubled for their gradients and scaled to the batch; the
    parameters count four times (weights, gradients, AdamW's two moments) plus once for the EMA.
    A lower bound in practice (temporary buffers are not counted): it is used to refuse batches
    that cannot fit, not to promise that others will.

    Example:
        >>> from neurocast.backbone import BackboneConfig, build_backbone
        >>> net = build_backbone(BackboneConfig(spatial_dims=2, target_channels=1, channels=(8, 16)))
        >>> item = {"target": torch.zeros(1, 16, 16)}
        >>> estimate_training_bytes(net, item, 64) > estimate_training_bytes(net, item, 1)
        True
    """
    sizes: list[int] = []

    def hook(_module: torch.nn.Module, _inp: Any, out: Any) -> None:
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * t.element_size())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    cpu_state = torch.random.get_rng_state()
    try:
        batch = collate([item])
        scheduler = make_train_scheduler(model.config)
        with torch.no_grad():
            diffusion_loss(model, batch["target"], scheduler, condition=batch.get("condition"),
                           covariates=batch.get("covariates"), generator=torch.Generator().manual_seed(0))  # fmt: skip
    finally:
        for h in handles:
            h.remove()
        torch.random.set_rng_state(cpu_state)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(2 * sum(sizes) * batch_size + 5 * params)


def _check_training_memory(model: DiffusionBackbone, item: Mapping[str, Any], batch_size: int) -> None:
    """Refuse a CPU training batch that cannot fit in the free memory (InsufficientMemoryError)."""
    import psutil

    from neurocast.errors import InsufficientMemoryError

    need = estimate_training_bytes(model, item, batch_size)
    free = int(psutil.virtual_memory().available)
    if need > free:
        per_item = max(1, (need - estimate_training_bytes(model, item, 0)) // max(1, batch_size))
        fits = max(1, int(0.8 * free) // per_item)
        raise InsufficientMemoryError(
            f"a training batch of {batch_size} needs at least {need / 2**30:.1f} GiB but "
            f"{free / 2**30:.1f} GiB are free; use a batch size of at most {fits} (--batch-size)"
        )


def train(
    model: DiffusionBackbone,
    data: Dataset | Sequence[Mapping[str, Any]] | DataLoader,
    *,
    n_steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 8,
    lr: float = 2e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    warmup_steps: int = 0,
    grad_clip: float | None = 1.0,
    ema_decay: float | None = None,
    mixed_precision: MixedPrecision = "auto",
    seed: int = 0,
    device: str | torch.device | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | os.PathLike[str] = False,
    log_every: int = 1,
    progress: bool = True,
    num_workers: int = 0,
    data_summary: Mapping[str, Any] | None = None,
    fingerprint_data: bool = True,
    metrics: Mapping[str, Any] | None = None,
    distributed: bool | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train ``model`` (in place) on ``data`` and return raw and EMA weights.

    Args:
        model: a :class:`DiffusionBackbone` (its current weights are the starting point).
        data: a map-style dataset (or list) of item mappings (see module docstring), or a
            ``DataLoader`` yielding :func:`collate`-style batches.
        n_steps / epochs: how long to train (exactly one of them). Steps count optimizer steps,
            including those done before a resume.
        batch_size: per process (ignored for a ``DataLoader``).
        lr, weight_decay, betas, warmup_steps: AdamW and a linear warm-up to ``lr``.
        grad_clip: max gradient norm (``None``: no clipping).
        ema_decay: EMA decay (default ``config.ema_decay``).
        mixed_precision: ``"auto"`` (on CUDA bf16 where supported, else fp16 with a GradScaler;
            on CPU fp32), ``"bf16"``, ``"fp16"`` (CUDA only) or ``"no"``. ``"bf16"`` on CPU
            trains under bfloat16 autocast in the channels-last layout: about 2.7x faster per
            step on CPUs with AMX (the anomaly detector's 2-D UNet, 79 x 97 slices, batch 64, 2
            threads: 2.4 s against 6.7 s, ``benchmarks/anomaly_train_speed.py``), slower on CPUs
            without bfloat16 units. Weights, optimizer and EMA stay float32.
        seed: seeds data order, noise, dropout masks (and torch's global RNG).
        device: default CUDA (``cuda:LOCAL_RANK`` under DDP) if available, else CPU.
        out_dir: where ``metrics.jsonl`` and the checkpoint (``out_dir/checkpoint``) go.
        checkpoint_every: also checkpoint every this many steps (needs ``out_dir``).
        resume: ``True`` resumes from ``out_dir/checkpoint`` if it exists; a path resumes from that
            checkpoint (whose config must match the model's).
        log_every: record the mean loss every this many steps.
        progress: show a tqdm bar (rank 0 only).
        num_workers: DataLoader workers.
        data_summary: your description of the training data (inputs, their hashes...), stored in the
            model card; its ``"sha256"`` key, if any, is used as the data hash.
        fingerprint_data: hash every dataset item once (for the model card) when no hash is given.
        metrics: measured metrics to store in the final model card.
        distributed: force DDP on/off; default: on iff ``WORLD_SIZE > 1``.
        max_seconds: wall-clock budget (s) of this call: training stops after the first step that
            ends past it, saving and returning as at the end (the learning rate is constant after
            the warm-up, so a run stopped early is a shorter run, not a truncated schedule).
            ``TrainResult.step`` says how far it got. Under DDP rank 0's clock decides.

    Returns:
        A :class:`TrainResult`.
    """
    if (n_steps is None) == (epochs is None):
        raise ValueError("give exactly one of n_steps and epochs")
    rank, world, local_rank = _dist_env()
    use_ddp = (world > 1) if distributed is None else bool(distributed)
    own_group = False
    if use_ddp and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        own_group = True
    if use_ddp:
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    is_main = rank == 0

    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    cfg = model.config
    amp_dtype, use_scaler = _amp_settings(device, mixed_precision)

    if device.type == "cpu" and not isinstance(data, DataLoader) and len(data) > 0:  # type: ignore[arg-type]
        _check_training_memory(model, data[0], batch_size)  # type: ignore[index]
    torch.manual_seed(seed)
    model.to(device)
    model.train()
    cpu_bf16 = device.type == "cpu" and amp_dtype == torch.bfloat16
    layout_before = model._channels_last
    if cpu_bf16:
        model.use_channels_last(True)  # oneDNN's bfloat16 convolutions want channels-last
    ema = make_ema(model, ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(seed * 1000 + rank)

    # ---------------------------------------------------------------- data
    loader_given = isinstance(data, DataLoader)
    dataset: Dataset | None = None if loader_given else data  # type: ignore[assignment]
    if loader_given:
        batches_per_epoch = len(data)  # type: ignore[arg-type]
    else:
        n_items = len(dataset)  # type: ignore[arg-type]
        if n_items == 0:
            raise ValueError("the dataset is empty")
        per_rank = math.ceil(n_items / world)
        batches_per_epoch = math.ceil(per_rank / batch_size)
    total_steps = int(n_steps) if n_steps is not None else int(epochs) * batches_per_epoch  # type: ignore[arg-type]

    summary: dict[str, Any] = dict(data_summary or {})
    data_hash = summary.get("sha256")
    if data_hash is None and dataset is not None and fingerprint_data and is_main:
        data_hash, auto = _dataset_fingerprint(dataset)
        for k, v in auto.items():
            summary.setdefault(k, v)
    summary.setdefault("batch_size", batch_size)
    summary.setdefault("world_size", world)

    # ---------------------------------------------------------------- resume
    out_path = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out_path / "checkpoint" if out_path is not None else None
    resume_from: Path | None = None
    if resume is True:
        if ckpt_dir is not None and (ckpt_dir / "model_card.json").exists():
            resume_from = ckpt_dir
    elif resume:
        resume_from = Path(resume)  # type: ignore[arg-type]
    step, epoch, batch_in_epoch = 0, 0, 0
    if resume_from is not None:
        state = load_training_state(resume_from, model, ema=ema, optimizer=optimizer, device=device)
        step, epoch, batch_in_epoch = state.step, state.epoch, state.batch_in_epoch
        if state.scaler:
            scaler.load_state_dict(state.scaler)
        if state.noise_generator is not None:
            noise_gen.set_state(state.noise_generator)
        if state.global_rng is not None:
            _set_global_rng_state(state.global_rng)
        if is_main:
            log.info("resumed from %s at step %d", resume_from, step)

    train_model: torch.nn.Module = model
    if use_ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    scheduler = make_train_scheduler(cfg)
    history: list[dict[str, Any]] = []
    metrics_file = None
    if out_path is not None and is_main:
        out_path.mkdir(parents=True, exist_ok=True)
        mpath = out_path / "metrics.jsonl"
        if resume_from is not None and mpath.exists():  # drop lines after the resumed step
            kept = [
                ln
                for ln in mpath.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step
            ]
            mpath.write_text("".join(k + "\n" for k in kept))
        elif resume_from is None and mpath.exists():
            mpath.unlink()
        metrics_file = mpath.open("a")

    def epoch_batches(ep: int, skip_batches: int) -> Iterable[dict[str, Any]]:
        if loader_given:
            sampler = getattr(data, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(ep)
            it = iter(data)  # type: ignore[call-overload]
            for _ in range(skip_batches):
                next(it, None)
            return it
        base = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        base.set_epoch(ep)
        loader_gen = torch.Generator()
        loader_gen.manual_seed(seed * 100003 + ep * 101 + rank)
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=batch_size,
            generator=loader_gen,
            sampler=_SkipSampler(base, skip_batches * batch_size),
            collate_fn=collate,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            drop_last=False,
        )

    def save(tag_metrics: Mapping[str, Any] | None) -> Path | None:
        if ckpt_dir is None:
            return None
        if is_main:
            save_checkpoint(
                ckpt_dir,
                ema.module,  # type: ignore[arg-type]
                raw_model=model,
                optimizer=optimizer,
                training_state=TrainingState(
                    step=step,
                    epoch=epoch,
                    batch_in_epoch=batch_in_epoch,
                    scaler=scaler.state_dict() if use_scaler else {},
                    noise_generator=noise_gen.get_state(),
                    global_rng=_global_rng_state(),
                    ema_n_averaged=int(ema.n_averaged.item()),
                    hyper={
                        "lr": lr,
                        "weight_decay": weight_decay,
                        "betas": list(betas),
                        "warmup_steps": warmup_steps,
                        "grad_clip": grad_clip,
                        "batch_size": batch_size,
                        "total_steps": total_steps,
                        "mixed_precision": str(amp_dtype) if amp_dtype else "fp32",
                    },
                ),
                seed=seed,
                data_summary=summary,
                data_sha256=data_hash,
                metrics=tag_metrics,
            )
        if use_ddp:
            dist.barrier()
        return ckpt_dir

    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="training", dynamic_ncols=True)

    t_start = time.perf_counter()
    window: list[float] = []
    last_grad_norm = float("nan")
    try:
        while step < total_steps:
            finished_epoch = True
            for batch in epoch_batches(epoch, batch_in_epoch):
                batch = _to_device(batch, device)
                for g in optimizer.param_groups:
                    g["lr"] = _lr_at(step, lr, warmup_steps)
                autocast = (
                    torch.autocast(device_type=device.type, dtype=amp_dtype)
                    if amp_dtype is not None
                    else contextlib.nullcontext()
                )
                with autocast:
                    loss = diffusion_loss(
                        model,
                        batch["target"],
                        scheduler,
                        condition=batch.get("condition"),
                        covariates=batch.get("covariates"),
                        generator=noise_gen,
                        forward=train_model,
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if grad_clip is not None:
                    scaler.unscale_(optimizer)
                    last_grad_norm = float(
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    )
                scaler.step(optimizer)
                scaler.update()
                ema.update_parameters(model)
                step += 1
                batch_in_epoch += 1
                window.append(float(loss.detach()))
                if max_seconds is not None and _out_of_time(t_start, max_seconds, use_ddp, device):
                    total_steps = step
                if step % max(1, log_every) == 0 or step == total_steps:
                    rec = {
                        "step": step,
                        "epoch": epoch,
                        "loss": float(np.mean(window)),
                        "lr": optimizer.param_groups[0]["lr"],
                        "grad_norm": last_grad_norm,
                        "seconds": round(time.perf_counter() - t_start, 4),
                    }
                    window = []
                    history.append(rec)
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(rec) + "\n")
                        metrics_file.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if bar is not None:
                    bar.update(1)
                if batch_in_epoch >= batches_per_epoch:
                    epoch += 1
                    batch_in_epoch = 0
                    finished_epoch = False  # already advanced
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    save(None)
                if step >= total_steps:
                    finished_epoch = False
                    break
                if batch_in_epoch == 0:
                    break  # the epoch is complete; start the next one with a fresh order
            if finished_epoch:  # the loader ran dry early (a user DataLoader shorter than len())
                epoch += 1
                batch_in_epoch = 0
        final_metrics = dict(metrics or {})
        if history:
            final_metrics.setdefault("final_loss", history[-1]["loss"])
        final_metrics.setdefault("steps", step)
        final_metrics.setdefault("train_seconds", round(time.perf_counter() - t_start, 3))
        checkpoint = save(final_metrics)
    finally:
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()

    model.eval()
    ema_model = ema.module
    ema_model.eval()
    if cpu_bf16:  # hand the models back in the layout they came in
        model.use_channels_last(layout_before)
        ema_model.use_channels_last(layout_before)  # type: ignore[operator]
    return TrainResult(model, ema_model, step, history, checkpoint)  # type: ignore[arg-type]
