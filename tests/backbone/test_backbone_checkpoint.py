"""Checkpoints: round trip, model card, and refusal of tampered / pickled / truncated / mismatched files."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neurocast import __version__
from neurocast.backbone import (
    build_backbone,
    checkpoint_id,
    load_backbone,
    load_safetensors,
    read_model_card,
    sample,
    save_checkpoint,
    verify_checkpoint,
)
from neurocast.backbone.checkpoint import load_state_into
from neurocast.errors import CheckpointError

COV = {"years": 3.0, "age": 68.0, "sex": "F", "diagnosis": "CN"}
SRC = Path(__file__).resolve().parents[2] / "src" / "neurocast"


@pytest.fixture
def ckpt(tmp_path, tiny3d):
    return save_checkpoint(
        tmp_path / "ckpt",
        tiny3d,
        seed=7,
        metrics={"val_loss": 0.25},
        data_summary={"n_subjects": 3, "inputs": ["a.nii.gz"]},
    )


def _rewrite_card_for(path: Path, name: str) -> None:
    """An attacker who also fixes the card's hash and size: only content checks can catch it."""
    card = json.loads((path / "model_card.json").read_text())
    data = (path / name).read_bytes()
    card["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    card["files"][name]["bytes"] = len(data)
    (path / "model_card.json").write_text(json.dumps(card))


def test_round_trip_gives_identical_samples(ckpt, tiny3d):
    cond = torch.randn(2, 1, 8, 8, 8)
    before = sample(tiny3d, condition=cond, covariates=COV, num_samples=2, seed=1)
    loaded = load_backbone(ckpt)
    after = sample(loaded, condition=cond, covariates=COV, num_samples=2, seed=1)
    assert torch.equal(before, after)
    assert loaded.config == tiny3d.config


def test_loading_does_not_touch_the_global_rng(ckpt):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backbone(ckpt)
    assert torch.equal(torch.rand(3), expected)


def test_model_card_contents(ckpt, tiny3d):
    card = read_model_card(ckpt)
    assert card["format"] == "neurocast-backbone" and card["format_version"] == 1
    assert card["neurocast_version"] == __version__
    assert card["config"] == tiny3d.config.to_dict()
    assert card["seed"] == 7 and card["metrics"] == {"val_loss": 0.25}
    enc = {e["name"]: e for e in card["covariate_encoding"]}
    assert enc["age"]["mean"] == 72.0 and enc["diagnosis"]["categories"] == ["CN", "MCI", "AD"]
    assert card["training"]["data_summary"]["n_subjects"] == 3
    assert len(card["training"]["data_sha256"]) == 64
    meta = card["files"]["model.safetensors"]
    assert meta["sha256"] == hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert meta["bytes"] == (ckpt / "model.safetensors").stat().st_size
    assert len(checkpoint_id(ckpt)) == 64
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "model_card.json"]


def test_save_replaces_atomically(ckpt, tiny3d):
    save_checkpoint(ckpt, tiny3d, seed=8)
    assert read_model_card(ckpt)["seed"] == 8
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt"]  # no temporaries left


def test_tampered_weights_are_refused(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in a weight
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256"):
        load_backbone(ckpt)


class _Payload:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_named_safetensors_is_refused_and_never_unpickled(ckpt, tmp_path):
    marker = tmp_path / "UNPICKLED"
    f = ckpt / "model.safetensors"
    f.write_bytes(pickle.dumps({"unet.conv_in.conv.weight": _Payload(str(marker))}, protocol=4))
    # the plain hash check catches it first...
    with pytest.raises(CheckpointError, match="pickle"):
        load_backbone(ckpt)
    # ...and with a card forged to match, the content check refuses it
    _rewrite_card_for(ckpt, "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: not a safetensors file \(a pickle"
    ):
        load_backbone(ckpt)
    with pytest.raises(CheckpointError, match="pickle"):
        load_safetensors(f)
    # safetensors' own parser refuses it too, without unpickling
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        load_file(str(f))
    assert not marker.exists()


def test_torch_save_archive_is_refused(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    with zipfile.ZipFile(f, "w") as z:  # the layout torch.save writes
        z.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    _rewrite_card_for(ckpt, "model.safetensors")
    with pytest.raises(CheckpointError, match="zip archive"):
        load_backbone(ckpt)


@pytest.mark.parametrize("forge_card", [False, True])
@pytest.mark.parametrize("keep", [4, 100, -64])
def test_truncated_file_is_refused(ckpt, forge_card, keep):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:keep])
    if forge_card:
        _rewrite_card_for(ckpt, "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_backbone(ckpt)


def test_mismatched_config_is_refused(ckpt):
    card = json.loads((ckpt / "model_card.json").read_text())
    card["config"]["channels"] = [8, 24]  # weights were saved for (8, 16)
    (ckpt / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_backbone(ckpt)
    card["config"]["channels"] = [8, 16, 16]  # one level more: missing keys
    card["config"]["attention_levels"] = [False, False, False]
    (ckpt / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_backbone(ckpt)
    card["config"]["covariates"] = []  # no covariate encoder: unexpected keys
    card["config"]["channels"] = [8, 16]
    card["config"]["attention_levels"] = [False, False]
    (ckpt / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="unexpected keys.*covariate_encoder"):
        load_backbone(ckpt)
    card["config"]["channels"] = [8, 13]  # invalid config altogether
    (ckpt / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_backbone(ckpt)


def test_weights_into_other_model_are_refused(ckpt, make_config):
    other = build_backbone(make_config(3, target_channels=2))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_state_into(other, ckpt / "model.safetensors")


def test_missing_or_foreign_cards_are_refused(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="no model card"):
        load_backbone(tmp_path / "nothing")
    card = json.loads((ckpt / "model_card.json").read_text())
    (ckpt / "model_card.json").write_text(json.dumps({**card, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        verify_checkpoint(ckpt)
    (ckpt / "model_card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        verify_checkpoint(ckpt)
    (ckpt / "model_card.json").write_text(json.dumps(card))
    os.remove(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        verify_checkpoint(ckpt)


def test_torch_load_is_used_nowhere():
    offenders = []
    for py in SRC.rglob("*.py"):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "load"
                and getattr(node.value, "id", None) == "torch"
            ):
                offenders.append(f"{py}:{node.lineno}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("loads", "load")
                and getattr(node.value, "id", None) == "pickle"
            ):
                offenders.append(f"{py}:{node.lineno}")
    assert not offenders, offenders


def test_extra_tensors_travel_with_the_checkpoint_and_are_verified(tmp_path, tiny3d) -> None:
    from neurocast.backbone import load_extra_tensors

    net = tiny3d
    plain = save_checkpoint(tmp_path / "plain", net, seed=0)
    assert load_extra_tensors(plain) == {}
    extra = {"maps.mean": torch.arange(6, dtype=torch.float16).reshape(2, 3)}
    path = save_checkpoint(tmp_path / "ckpt", net, seed=0, extra_tensors=extra)
    got = load_extra_tensors(path)
    assert set(got) == {"maps.mean"} and torch.equal(got["maps.mean"], extra["maps.mean"])
    data = bytearray((path / "extra.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "extra.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_extra_tensors(path)


def test_the_same_weights_always_give_the_same_bytes(tmp_path, tiny3d) -> None:
    """safetensors writes its metadata map in an arbitrary order; the files must not depend on it."""
    from safetensors.torch import load, save

    from neurocast.backbone.checkpoint import canonical_safetensors

    paths = [save_checkpoint(tmp_path / f"c{i}", tiny3d, seed=0) / "model.safetensors" for i in range(8)]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1
    tensors = {"b": torch.ones(2), "a": torch.zeros(3, dtype=torch.float16)}
    raw = {save(tensors, metadata={"format": "pt", "neurocast": "x", "z": "1"}) for _ in range(20)}
    canon = {canonical_safetensors(r) for r in raw}
    assert len(canon) == 1
    again = load(next(iter(canon)))
    assert torch.equal(again["a"], tensors["a"]) and torch.equal(again["b"], tensors["b"])
