"""Checkpoints: safetensors weights + a JSON model card; loading verifies and never unpickles.

A checkpoint is a directory::

    model_card.json              format, version, config, covariate encoding, training data summary
                                 and hash, package version, seed, metrics, sha256 + size of every file
    model.safetensors            EMA weights: what inference loads
    raw_model.safetensors        raw (non-EMA) weights          } only in training checkpoints,
    optimizer.safetensors        AdamW state tensors            } needed to resume
    training_state.safetensors   RNG states (torch, numpy)      }
    training_state.json          step, epoch position, optimizer structure, GradScaler, python RNG
    extra.safetensors            tensors of the card's ``extra`` section (optional; e.g. an anomaly
                                 detector's healthy reference maps)

Loading (:func:`load_backbone`, :func:`load_training_state`, :func:`verify_checkpoint`) refuses, with
a :class:`~neurocast.errors.CheckpointError` naming the file:

* a missing or unparsable model card, or one of an unknown format (version);
* a listed file that is missing, has another size (truncated) or another sha256 (tampered);
* a file that is not safetensors, e.g. a pickle / ``torch.save`` archive renamed ``.safetensors``
  (detected from its first bytes, then by the safetensors parser, which never unpickles);
* weights that do not fit the card's config (missing / unexpected keys, shape mismatch).

``torch.load`` is used nowhere.

Example:
    >>> import tempfile, torch
    >>> from neurocast.backbone import BackboneConfig, build_backbone, save_checkpoint, load_backbone
    >>> net = build_backbone(BackboneConfig(spatial_dims=2, target_channels=1, channels=(8, 16)))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = save_checkpoint(f"{d}/ckpt", net, seed=0, metrics={"val_loss": 0.1})
    ...     again = load_backbone(path)
    >>> all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    True
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from neurocast._version import __version__
from neurocast.backbone.config import BackboneConfig
from neurocast.backbone.network import DiffusionBackbone, build_backbone
from neurocast.errors import CheckpointError

FORMAT = "neurocast-backbone"
FORMAT_VERSION = 1
CARD = "model_card.json"
MODEL_FILE = "model.safetensors"
RAW_FILE = "raw_model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"
EXTRA_FILE = "extra.safetensors"

_ROLES = {
    MODEL_FILE: "EMA weights (inference)",
    RAW_FILE: "raw training weights (resume)",
    OPTIMIZER_FILE: "AdamW state tensors (resume)",
    STATE_TENSORS_FILE: "RNG states (resume)",
    STATE_JSON_FILE: "training position, optimizer structure, scaler, python RNG (resume)",
    EXTRA_FILE: "tensors of the card's extra section (e.g. an anomaly calibration's reference maps)",
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class TrainingState:
    """The non-weight state a training run needs to resume exactly.

    Attributes:
        step: optimizer steps done.
        epoch, batch_in_epoch: position in the data order.
        scaler: ``GradScaler.state_dict()`` (empty when unused).
        noise_generator: state of the generator that draws timesteps, noise and dropout masks.
        global_rng: torch (CPU, CUDA), numpy and python global RNG states.
        ema_n_averaged: updates the EMA has seen (drives its decay warm-up).
        hyper: the training hyper-parameters (for the record).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    scaler: dict[str, Any] = field(default_factory=dict)
    noise_generator: torch.Tensor | None = None
    global_rng: dict[str, Any] | None = None
    ema_n_averaged: int = 0
    hyper: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- low level
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sniff_safetensors(path: Path) -> None:
    """Refuse anything that does not start like a safetensors file (before any parsing).

    safetensors = 8-byte little-endian header length n, then an n-byte JSON header, then raw data.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
    if (
        n is not None
        and len(head) >= 9
        and n <= _MAX_HEADER
        and 8 + n <= size
        and head[8:9] == b"{"
    ):
        return
    if head[:2] == b"PK":
        why = "a zip archive, as torch.save writes (it holds a pickle)"
    elif head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        why = f"a pickle (protocol {head[1]})"
    elif n is not None and n <= _MAX_HEADER and head[8:9] == b"{":
        why = f"truncated: its header needs {8 + n} bytes, the file has {size}"
    elif size < 9:
        why = f"truncated: only {size} bytes"
    else:
        why = "no safetensors header"
    raise CheckpointError(
        f"{path}: not a safetensors file ({why}); refusing to load it "
        "(neurocast never unpickles checkpoints)"
    )


def load_safetensors(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a dict of tensors; anything else is a ``CheckpointError``.

    Never unpickles: the first bytes are checked, then the safetensors parser (which only reads a
    JSON header and raw buffers) does the rest.
    """
    p = Path(path)
    _sniff_safetensors(p)
    try:
        return load_file(str(p), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: corrupt or truncated safetensors file ({exc})") from exc


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], kind: str) -> None:
    clean = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    data = save(clean, metadata={"format": "pt", "neurocast": kind})
    path.write_bytes(canonical_safetensors(data))


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes the header's metadata map in an arbitrary order (a Rust hash map), so two
    saves of the same tensors can differ in bytes and in sha256. Sorting the keys changes no
    character count, so the header keeps its length and the tensor data its offsets.
    """
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    canon = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(canon) > n:  # cannot happen for ASCII names; keep what safetensors wrote
        return data
    return data[:8] + canon + b" " * (n - len(canon)) + data[8 + n :]


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple | set):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- optimizer state
def _flatten_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                key = f"state.{idx}.{k}"
                tensors[key] = v
                entry[k] = {"tensor": key}
            else:
                entry[k] = {"value": v}
        state[str(idx)] = entry
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(
    tensors: Mapping[str, torch.Tensor], structure: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in structure["state"].items():
        st: dict[str, Any] = {}
        for k, spec in entry.items():
            if "tensor" in spec:
                if spec["tensor"] not in tensors:
                    raise CheckpointError(f"{OPTIMIZER_FILE}: missing tensor {spec['tensor']!r}")
                st[k] = tensors[spec["tensor"]]
            else:
                st[k] = spec["value"]
        state[int(idx)] = st
    groups = [dict(g) for g in structure["param_groups"]]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- save
def _atomic_dir_swap(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: DiffusionBackbone,
    *,
    raw_model: DiffusionBackbone | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    training_state: TrainingState | None = None,
    seed: int | None = None,
    data_summary: Mapping[str, Any] | None = None,
    data_sha256: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    card_extra: Mapping[str, Any] | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory (atomically: a reader never sees a half-written one).

    Args:
        path: the checkpoint directory (replaced if it exists).
        model: the weights to ship for inference (the EMA model when training).
        raw_model, optimizer, training_state: add what resuming needs.
        seed: the training seed.
        data_summary: description of the training data (JSON-serialisable).
        data_sha256: hash of the training data (default: ``data_summary["sha256"]``, else the sha256
            of the summary's canonical JSON, marked as such).
        metrics: measured metrics (JSON-serialisable).
        card_extra: more JSON for the card, under ``"extra"``.
        extra_tensors: tensors that go with ``card_extra``, written to ``extra.safetensors``
            (read back with :func:`load_extra_tensors`).

    Returns:
        The checkpoint directory.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        files = {MODEL_FILE: model.state_dict()}
        _save_tensors(tmp / MODEL_FILE, files[MODEL_FILE], "backbone-ema-weights")
        if raw_model is not None:
            if raw_model.config != model.config:
                raise ValueError("raw_model and model have different configs")
            _save_tensors(tmp / RAW_FILE, raw_model.state_dict(), "backbone-raw-weights")
        if extra_tensors:
            _save_tensors(tmp / EXTRA_FILE, extra_tensors, "card-extra-tensors")
        state_json: dict[str, Any] | None = None
        if optimizer is not None:
            opt_tensors, structure = _flatten_optimizer(optimizer.state_dict())
            _save_tensors(tmp / OPTIMIZER_FILE, opt_tensors, "adamw-state")
            state_json = {"optimizer": structure}
        if training_state is not None:
            ts = training_state
            rng_tensors: dict[str, torch.Tensor] = {}
            rng_json: dict[str, Any] = {}
            if ts.noise_generator is not None:
                rng_tensors["rng.noise_generator"] = ts.noise_generator
            if ts.global_rng is not None:
                g = ts.global_rng
                rng_tensors["rng.torch_cpu"] = g["torch_cpu"]
                for i, s in enumerate(g.get("torch_cuda", [])):
                    rng_tensors[f"rng.torch_cuda.{i}"] = s
                rng_tensors["rng.numpy_keys"] = g["numpy"]["keys"]
                rng_json = {
                    "numpy": {k: v for k, v in g["numpy"].items() if k != "keys"},
                    "python": [g["python"][0], list(g["python"][1]), g["python"][2]],
                    "n_cuda": len(g.get("torch_cuda", [])),
                }
            _save_tensors(tmp / STATE_TENSORS_FILE, rng_tensors, "rng-states")
            state_json = dict(state_json or {})
            state_json.update(
                {
                    "step": ts.step,
                    "epoch": ts.epoch,
                    "batch_in_epoch": ts.batch_in_epoch,
                    "scaler": ts.scaler,
                    "ema_n_averaged": ts.ema_n_averaged,
                    "hyper": ts.hyper,
                    "rng": rng_json,
                }
            )
        if state_json is not None:
            (tmp / STATE_JSON_FILE).write_text(
                json.dumps(state_json, default=_json_default, indent=1)
            )

        summary = json.loads(json.dumps(dict(data_summary or {}), default=_json_default))
        data_hash = data_sha256 or summary.get("sha256")
        hash_of = "data"
        if data_hash is None and summary:
            data_hash = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()
            hash_of = "summary"
        card = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "neurocast_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": model.config.to_dict(),
            "covariate_encoding": (
                model.covariate_encoder.encoding() if model.covariate_encoder is not None else []
            ),
            "n_parameters": model.num_parameters(),
            "seed": seed,
            "training": {
                "step": training_state.step if training_state is not None else None,
                "data_summary": summary,
                "data_sha256": data_hash,
                "data_sha256_of": hash_of if data_hash is not None else None,
            },
            "metrics": json.loads(json.dumps(dict(metrics or {}), default=_json_default)),
            "files": {
                name: {
                    "sha256": sha256_file(tmp / name),
                    "bytes": (tmp / name).stat().st_size,
                    "content": _ROLES[name],
                }
                for name in _ROLES
                if (tmp / name).exists()
            },
        }
        if card_extra:
            card["extra"] = json.loads(json.dumps(dict(card_extra), default=_json_default))
        (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        _atomic_dir_swap(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------- load
def read_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model_card.json`` of a checkpoint directory (format checked, hashes not)."""
    p = Path(path)
    card_path = p / CARD if p.is_dir() else p
    if not card_path.exists():
        raise CheckpointError(f"{card_path}: no model card (is {p} a neurocast checkpoint?)")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{card_path}: unreadable model card ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{card_path}: not a {FORMAT} model card")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{card_path}: format version {version!r} is not supported (this neurocast reads up to "
            f"{FORMAT_VERSION}; upgrade neurocast)"
        )
    if not isinstance(card.get("files"), dict) or MODEL_FILE not in card["files"]:
        raise CheckpointError(f"{card_path}: the card lists no {MODEL_FILE}")
    return card


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file the card lists (present, size, sha256, safetensors); return the card."""
    p = Path(path)
    card = read_model_card(p)
    for name, meta in card["files"].items():
        f = p / name
        if Path(name).name != name or name not in _ROLES:
            raise CheckpointError(f"{p / CARD}: unexpected file entry {name!r}")
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in the model card)")
        size = f.stat().st_size
        if name.endswith(".safetensors"):
            _sniff_safetensors(f)
        if size != meta.get("bytes"):
            raise CheckpointError(
                f"{f}: {size} bytes but the model card says {meta.get('bytes')} "
                "(truncated or modified)"
            )
        digest = sha256_file(f)
        if digest != meta.get("sha256"):
            raise CheckpointError(
                f"{f}: sha256 {digest[:16]}... differs from the model card's "
                f"{str(meta.get('sha256'))[:16]}... (file modified after the checkpoint was written)"
            )
    return card


def config_from_card(
    card: Mapping[str, Any], where: str | os.PathLike[str] = CARD
) -> BackboneConfig:
    """The :class:`BackboneConfig` stored in a model card (``CheckpointError`` if invalid)."""
    try:
        return BackboneConfig.from_dict(dict(card["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: invalid config in model card ({exc})") from exc


def load_state_into(model: torch.nn.Module, file: str | os.PathLike[str]) -> None:
    """Load a safetensors state dict into ``model``, refusing any key or shape mismatch."""
    f = Path(file)
    tensors = load_safetensors(f)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shape = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shape:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shape),
        ):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label} [{len(items)}]: " + ", ".join(items[:8]) + more)
        raise CheckpointError(f"{f}: weights do not match the model config: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)


def load_backbone(
    path: str | os.PathLike[str],
    *,
    weights: str = "ema",
    device: str | torch.device = "cpu",
) -> DiffusionBackbone:
    """Load a verified checkpoint as a :class:`DiffusionBackbone` in eval mode.

    Args:
        path: the checkpoint directory.
        weights: ``"ema"`` (``model.safetensors``, for inference) or ``"raw"``.
        device: where to put the model.

    Building the network does not touch torch's global RNG.
    """
    p = Path(path)
    card = verify_checkpoint(p)
    cfg = config_from_card(card, p / CARD)
    name = {"ema": MODEL_FILE, "raw": RAW_FILE}.get(weights)
    if name is None:
        raise ValueError("weights must be 'ema' or 'raw'")
    if name not in card["files"]:
        raise CheckpointError(f"{p}: no {name} in this checkpoint (saved without raw weights)")
    with torch.random.fork_rng(devices=[]):
        model = build_backbone(cfg)
    load_state_into(model, p / name)
    return model.to(device).eval()


def load_extra_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors saved with ``save_checkpoint(..., extra_tensors=...)`` (verified; ``{}`` when the
    checkpoint has none)."""
    p = Path(path)
    card = verify_checkpoint(p)
    if EXTRA_FILE not in card["files"]:
        return {}
    return load_safetensors(p / EXTRA_FILE)


def load_training_state(
    path: str | os.PathLike[str],
    model: DiffusionBackbone,
    *,
    ema: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    device: str | torch.device = "cpu",
) -> TrainingState:
    """Restore raw weights into ``model``, EMA weights into ``ema`` (an ``AveragedModel``) and the
    optimizer state; return the :class:`TrainingState` (step, RNG states...).

    The checkpoint's config must equal ``model.config``.
    """
    p = Path(path)
    card = verify_checkpoint(p)
    cfg = config_from_card(card, p / CARD)
    if cfg != model.config:
        mine, theirs = model.config.to_dict(), cfg.to_dict()
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise CheckpointError(
            f"{p / CARD}: config differs from the model's in {diff}; cannot resume"
        )
    for needed in (RAW_FILE, OPTIMIZER_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE):
        if needed not in card["files"]:
            raise CheckpointError(f"{p}: not a training checkpoint (no {needed}); cannot resume")
    load_state_into(model, p / RAW_FILE)
    model.to(device)
    if ema is not None:
        target = ema.module if hasattr(ema, "module") else ema
        load_state_into(target, p / MODEL_FILE)
        target.to(device)
    try:
        sj = json.loads((p / STATE_JSON_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p / STATE_JSON_FILE}: unreadable ({exc})") from exc
    if ema is not None and hasattr(ema, "n_averaged"):
        ema.n_averaged.fill_(int(sj.get("ema_n_averaged", 0)))
    if optimizer is not None:
        opt_tensors = load_safetensors(p / OPTIMIZER_FILE)
        try:
            optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, sj["optimizer"]))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{p / OPTIMIZER_FILE}: optimizer state does not fit ({exc})"
            ) from exc
    rng_t = load_safetensors(p / STATE_TENSORS_FILE)
    rng_j = sj.get("rng") or {}
    global_rng = None
    if "rng.torch_cpu" in rng_t:
        global_rng = {
            "torch_cpu": rng_t["rng.torch_cpu"],
            "torch_cuda": [
                rng_t[f"rng.torch_cuda.{i}"] for i in range(int(rng_j.get("n_cuda", 0)))
            ],
            "numpy": {**rng_j["numpy"], "keys": rng_t["rng.numpy_keys"]},
            "python": rng_j["python"],
        }
    return TrainingState(
        step=int(sj["step"]),
        epoch=int(sj["epoch"]),
        batch_in_epoch=int(sj["batch_in_epoch"]),
        scaler=dict(sj.get("scaler") or {}),
        noise_generator=rng_t.get("rng.noise_generator"),
        global_rng=global_rng,
        ema_n_averaged=int(sj.get("ema_n_averaged", 0)),
        hyper=dict(sj.get("hyper") or {}),
    )


def checkpoint_id(path: str | os.PathLike[str]) -> str:
    """sha256 of the model card: one hash that pins the config and (via their hashes) all weights.

    Use it in provenance sidecars.
    """
    return sha256_file(Path(path) / CARD)
