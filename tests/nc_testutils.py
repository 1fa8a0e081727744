"""Helpers for tests: tiny synthetic scans and BIDS trees (imported as ``nc_testutils``)."""

from __future__ import annotations

from pathlib import Path


def write_small_t1w(path: Path, seed: int = 0, shape: tuple[int, int, int] = (12, 14, 10)) -> Path:
    """Write a tiny synthetic T1w-like NIfTI (a bright ellipsoid on a dark background)."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    data = (np.sum(grid**2, axis=0) < 0.6).astype(np.float32) * 100 + rng.normal(0, 2, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def make_bids(
    root: Path,
    subjects: dict[str, list[str] | None],
    participants_tsv: str | None = "default",
    sessions_tsv: bool = True,
) -> Path:
    """Build a tiny BIDS dataset.

    Args:
        root: dataset folder.
        subjects: label -> list of session labels (or ``None`` for a dataset without sessions).
        participants_tsv: table text, ``"default"`` for a valid one, ``None`` for none.
        sessions_tsv: write a sessions.tsv with ages for each subject with sessions.
    """
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.9.0"})
    )
    for i, (sub, sessions) in enumerate(sorted(subjects.items())):
        if sessions is None:
            write_small_t1w(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz", seed=i)
            continue
        for j, ses in enumerate(sessions):
            write_small_t1w(
                root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz",
                seed=10 * i + j,
            )
        if sessions_tsv:
            rows = "".join(f"ses-{ses}\t{70 + j * 1.5}\n" for j, ses in enumerate(sessions))
            (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tage\n" + rows)
    if participants_tsv == "default":
        rows = "".join(
            f"sub-{s}\t{70 + k}\t{'MF'[k % 2]}\t{['CN', 'MCI', 'AD'][k % 3]}\t{k % 3}\t{28 - k}\n"
            for k, s in enumerate(sorted(subjects))
        )
        participants_tsv = "participant_id\tage\tsex\tdiagnosis\tapoe4\tmmse\n" + rows
    if participants_tsv is not None:
        (root / "participants.tsv").write_text(participants_tsv)
    return root


UNPICKLED_MARKER = "UNPICKLED"
"""File that :func:`make_bad_checkpoints`' pickle payload creates if anything ever unpickles it."""

BAD_CHECKPOINT_MESSAGES = {
    "truncated": r"model\.safetensors: \d+ bytes but the model card says \d+ \(truncated",
    "mismatched_config": r"model\.safetensors: weights do not match the model config",
    "pickle": r"model\.safetensors: not a safetensors file \(a pickle",
    "torch_save": r"model\.safetensors: not a safetensors file \(a zip archive",
    "no_card": r"model_card\.json: no model card",
}
"""Regex each kind of :func:`make_bad_checkpoints` must raise (as a CheckpointError) when loaded."""


class _UnpicklePayload:
    """Unpickling this opens (creates) a marker file: proof that something unpickled it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _forge_card(ckpt: Path, name: str) -> None:
    """Rewrite the card's hash and size of ``name``, as an attacker would: only content checks
    can catch the file then."""
    import hashlib
    import json

    card = json.loads((ckpt / "model_card.json").read_text())
    data = (ckpt / name).read_bytes()
    card["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (ckpt / "model_card.json").write_text(json.dumps(card))


def make_bad_checkpoints(tmp_path: Path, good: Path | None = None) -> dict[str, Path]:
    """Checkpoint folders that every loader must refuse with a CheckpointError naming the file.

    Args:
        tmp_path: where to write them (``tmp_path/bad_checkpoints/<kind>``).
        good: a valid checkpoint folder to spoil (default: a tiny 2-D backbone saved here), so a
            forecaster's or anomaly model's own checkpoint can be spoiled the same way.

    Returns:
        kind -> checkpoint folder, for the kinds of :data:`BAD_CHECKPOINT_MESSAGES`:
        ``truncated`` (weights cut in half), ``mismatched_config`` (the card's config no longer
        fits the weights), ``pickle`` (weights replaced by a pickle whose unpickling creates
        ``tmp_path / UNPICKLED_MARKER``; the card is forged to match its hash and size),
        ``torch_save`` (a zip archive like ``torch.save`` writes, card forged too), ``no_card``.
    """
    import json
    import pickle
    import shutil
    import zipfile

    base = tmp_path / "bad_checkpoints"
    base.mkdir(parents=True, exist_ok=True)
    if good is None:
        import torch

        from neurocast.backbone import BackboneConfig, build_backbone, save_checkpoint

        torch.manual_seed(0)
        net = build_backbone(BackboneConfig(spatial_dims=2, target_channels=1, channels=(8, 16)))
        good = save_checkpoint(base / "good", net, seed=0)
    out = {kind: base / kind for kind in BAD_CHECKPOINT_MESSAGES}
    for path in out.values():
        shutil.copytree(good, path, dirs_exist_ok=True)

    weights = out["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    card_path = out["mismatched_config"] / "model_card.json"
    card = json.loads(card_path.read_text())
    card["config"]["channels"] = [c * 2 for c in card["config"]["channels"]]
    card_path.write_text(json.dumps(card))

    marker = str(tmp_path / UNPICKLED_MARKER)
    (out["pickle"] / "model.safetensors").write_bytes(
        pickle.dumps({"weight": _UnpicklePayload(marker)}, protocol=4)
    )
    _forge_card(out["pickle"], "model.safetensors")

    with zipfile.ZipFile(out["torch_save"] / "model.safetensors", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": _UnpicklePayload(marker)}))
    _forge_card(out["torch_save"], "model.safetensors")

    (out["no_card"] / "model_card.json").unlink()
    return out
