"""Training loop: exact resume, EMA, metrics log, DDP (one process), and learning a trivial task."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from torch.utils.data import DataLoader

from neurocast.backbone import (
    BackboneConfig,
    CovariateSpec,
    build_backbone,
    collate,
    load_backbone,
    read_model_card,
    sample,
    train,
)
from neurocast.errors import CheckpointError

SMALL = BackboneConfig(
    spatial_dims=2,
    target_channels=1,
    image_condition_channels=1,
    channels=(8, 16),
    covariates=(CovariateSpec.continuous("k"), CovariateSpec.categorical("c", ["a", "b"])),
    covariate_embed_dim=16,
    ema_decay=0.9,
    num_inference_steps=4,
)


def _data(n: int = 10, size: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "target": torch.randn(1, size, size, generator=g),
            "condition": torch.randn(1, size, size, generator=g),
            "covariates": {"k": float(i), "c": "ab"[i % 2] if i % 3 else None},
        }
        for i in range(n)
    ]


def _fresh(cfg: BackboneConfig = SMALL):
    torch.manual_seed(0)
    return build_backbone(cfg)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    data = _data()
    kw = dict(batch_size=4, seed=3, progress=False, warmup_steps=3)
    full = train(_fresh(), data, n_steps=9, out_dir=tmp_path / "full", **kw)
    first = train(_fresh(), data, n_steps=5, out_dir=tmp_path / "part", **kw)  # stops mid-epoch
    assert first.step == 5
    rest = train(_fresh(), data, n_steps=9, out_dir=tmp_path / "part", resume=True, **kw)
    assert rest.step == 9
    assert _same(full.model, rest.model)
    assert _same(full.ema_model, rest.ema_model)
    losses = [h["loss"] for h in full.history]
    assert [h["loss"] for h in first.history + rest.history] == losses
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 10))
    assert [r["loss"] for r in lines] == losses
    assert {"step", "epoch", "loss", "lr", "seconds", "grad_norm"} <= set(lines[0])
    card = read_model_card(tmp_path / "part" / "checkpoint")
    assert card["training"]["step"] == 9 and card["seed"] == 3
    assert set(card["files"]) == {
        "model.safetensors",
        "raw_model.safetensors",
        "optimizer.safetensors",
        "training_state.safetensors",
        "training_state.json",
    }
    # the shipped weights are the EMA weights
    assert _same(load_backbone(tmp_path / "part" / "checkpoint"), full.ema_model)
    assert _same(load_backbone(tmp_path / "part" / "checkpoint", weights="raw"), full.model)


def test_a_time_budget_stops_training_early_and_still_saves(tmp_path):
    data = _data()
    kw = dict(batch_size=4, seed=2, progress=False)
    short = train(_fresh(), data, n_steps=50, out_dir=tmp_path / "t", max_seconds=0.0, **kw)
    assert short.step == 1  # the first step always runs, then the budget is spent
    assert [h["step"] for h in short.history] == [1]
    card = read_model_card(tmp_path / "t" / "checkpoint")
    assert card["training"]["step"] == 1 and card["metrics"]["steps"] == 1
    # a budget that is not reached changes nothing
    same = train(_fresh(), data, n_steps=3, max_seconds=3600.0, **kw)
    assert same.step == 3 and _same(same.model, train(_fresh(), data, n_steps=3, **kw).model)


def test_periodic_checkpoint_and_resume_from_a_path(tmp_path):
    data = _data()
    kw = dict(batch_size=4, seed=1, progress=False)
    full = train(_fresh(), data, n_steps=6, **kw)
    periodic = train(_fresh(), data, n_steps=6, out_dir=tmp_path / "a", checkpoint_every=3, **kw)
    assert _same(periodic.model, full.model)
    assert read_model_card(tmp_path / "a" / "checkpoint")["training"]["step"] == 6
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint", "metrics.jsonl"]
    # simulate a crash after step 3: only the periodic checkpoint of step 3 would exist
    crashed = tmp_path / "crashed"
    train(_fresh(), data, n_steps=3, out_dir=crashed, **kw)
    resumed = train(_fresh(), data, n_steps=6, resume=crashed / "checkpoint", **kw)
    assert _same(full.model, resumed.model)


def test_resume_with_another_config_is_refused(tmp_path):
    train(_fresh(), _data(), n_steps=2, batch_size=4, progress=False, out_dir=tmp_path)
    other = _fresh(SMALL.replace(channels=(8, 8)))
    with pytest.raises(CheckpointError, match="config differs"):
        train(
            other, _data(), n_steps=3, batch_size=4, progress=False, out_dir=tmp_path, resume=True
        )


def test_epochs_loader_and_cpu_precision(tmp_path):
    data = _data(10)
    res = train(
        _fresh(),
        data,
        epochs=2,
        batch_size=4,
        progress=False,
        mixed_precision="bf16",
        out_dir=tmp_path,
        data_summary={"source": "unit test"},
    )
    assert res.step == 6  # ceil(10 / 4) batches per epoch
    # bf16 on CPU: autocast only; weights stay float32, handed back in the default layout
    for m in (res.model, res.ema_model):
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert not m._channels_last
        assert m.unet.conv_in.conv.weight.is_contiguous()
    card = read_model_card(tmp_path / "checkpoint")
    hyper = json.loads((tmp_path / "checkpoint" / "training_state.json").read_text())["hyper"]
    assert hyper["mixed_precision"] == "torch.bfloat16"
    assert card["training"]["data_summary"]["source"] == "unit test"
    assert card["training"]["data_summary"]["n_items"] == 10
    assert len(card["training"]["data_sha256"]) == 64
    assert card["metrics"]["steps"] == 6
    loader = DataLoader(data, batch_size=5, shuffle=False, collate_fn=collate)
    res2 = train(_fresh(), loader, epochs=1, progress=False)
    assert res2.step == 2


def test_ema_lags_the_raw_weights():
    res = train(_fresh(), _data(), n_steps=4, batch_size=4, progress=False, lr=1e-2)
    raw, ema = res.model.state_dict(), res.ema_model.state_dict()
    start = _fresh().state_dict()
    k = "unet.conv_in.conv.weight"
    d_raw = (raw[k] - start[k]).norm()
    d_ema = (ema[k] - start[k]).norm()
    assert 0 < d_ema < d_raw


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_path_in_one_process(monkeypatch):
    """DDP initialised from torchrun-style env vars (Gloo, world size 1) matches the plain run."""
    data = _data()
    plain = train(_fresh(), data, n_steps=3, batch_size=4, seed=2, progress=False)
    for k, v in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(k, v)
    ddp = train(_fresh(), data, n_steps=3, batch_size=4, seed=2, progress=False, distributed=True)
    assert not torch.distributed.is_initialized()  # the group it created is torn down
    for a, b in zip(plain.model.parameters(), ddp.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_learns_a_trivial_conditional_task():
    """target = condition image * scalar covariate k: the loss drops and samples match the truth."""
    size = 16
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    g = torch.Generator().manual_seed(0)

    def blobs(n: int) -> torch.Tensor:
        c = torch.rand(n, 2, generator=g) * 1.2 - 0.6
        r = torch.rand(n, 1, 1, generator=g) * 0.3 + 0.3
        inside = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2 < r**2
        return (inside.float() * 2 - 1)[:, None]

    cond = blobs(128)
    ks = torch.rand(128, generator=g) * 2 - 1
    data = [
        {"target": cond[i] * ks[i], "condition": cond[i], "covariates": {"k": float(ks[i])}}
        for i in range(128)
    ]
    cfg = BackboneConfig(
        spatial_dims=2,
        target_channels=1,
        image_condition_channels=1,
        channels=(16, 32),
        covariates=(CovariateSpec.continuous("k", 0.0, 0.6),),
        covariate_embed_dim=16,
        ema_decay=0.99,
        num_inference_steps=10,
        cond_drop_prob=0.0,
        cond_drop_all_prob=0.1,
    )
    torch.manual_seed(0)
    res = train(
        build_backbone(cfg),
        data,
        n_steps=150,
        batch_size=16,
        lr=2e-3,
        seed=0,
        progress=False,
        log_every=25,
    )
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0] / 3, losses
    test_cond = blobs(8)
    test_k = torch.linspace(-1, 1, 8)
    out = sample(res.ema_model, condition=test_cond, covariates={"k": test_k.tolist()}, seed=1)
    truth = test_cond * test_k[:, None, None, None]
    r = torch.corrcoef(torch.stack([out.flatten(), truth.flatten()]))[0, 1]
    assert r > 0.8, float(r)


def test_a_batch_that_cannot_fit_is_refused_before_training(monkeypatch):
    import collections

    import psutil

    from neurocast.backbone.training import estimate_training_bytes
    from neurocast.errors import InsufficientMemoryError

    data = _data()
    net = _fresh()
    one = estimate_training_bytes(net, data[0], 1)
    assert estimate_training_bytes(net, data[0], 8) > 4 * (one - estimate_training_bytes(net, data[0], 0))
    vm = collections.namedtuple("vm", "available total")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm(one * 3, one * 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(InsufficientMemoryError, match=r"batch of 64 needs at least .* GiB .*--batch-size"):
        train(net, data, n_steps=1, batch_size=64, progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing trained


def test_the_memory_check_does_not_change_training(monkeypatch):
    # the check runs one forward pass; the training that follows must be what it was without it
    import neurocast.backbone.training as tr

    a = train(_fresh(), _data(), n_steps=3, batch_size=4, seed=1, progress=False).ema_model
    monkeypatch.setattr(tr, "_check_training_memory", lambda *args: None)
    b = train(_fresh(), _data(), n_steps=3, batch_size=4, seed=1, progress=False).ema_model
    assert _same(a, b)


@pytest.mark.parametrize(("asked", "recorded"), [("auto", "fp32"), ("fp16", "fp32"), ("no", "fp32")])
def test_cpu_training_is_fp32_unless_bf16_is_asked_for(tmp_path, asked, recorded):
    train(_fresh(), _data(4), n_steps=1, batch_size=4, progress=False, mixed_precision=asked,
          out_dir=tmp_path, device="cpu")  # fmt: skip
    hyper = json.loads((tmp_path / "checkpoint" / "training_state.json").read_text())["hyper"]
    assert hyper["mixed_precision"] == recorded


def test_bf16_training_on_cpu_computes_the_same_loss_in_fewer_bits():
    """The same seeded runs: bf16 autocast changes the losses in their last bits only.

    (MONAI zero-initialises the output convolution, so step 1's loss is the same in any
    precision; step 2's is the first that the network's arithmetic shapes.)"""
    data = _data(8)
    kw = {"n_steps": 2, "batch_size": 4, "progress": False, "device": "cpu"}
    fp32 = train(_fresh(), data, mixed_precision="no", **kw)
    bf16 = train(_fresh(), data, mixed_precision="bf16", **kw)
    a, b = fp32.history[1]["loss"], bf16.history[1]["loss"]
    assert a != b  # autocast did run
    assert abs(a - b) < 0.02 * a


def test_cpu_bfloat16_flags_are_read_from_cpuinfo(tmp_path, caplog, monkeypatch):
    from neurocast.backbone import training as tr

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert tr.cpu_bfloat16_flags(info) == ["amx_bf16", "avx512_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert tr.cpu_bfloat16_flags(info) == []
    assert tr.cpu_bfloat16_flags(tmp_path / "missing") == []
    # with such units, a CPU run left at "auto" says how to train faster
    monkeypatch.setattr(tr, "cpu_bfloat16_flags", lambda: ["amx_bf16"])
    with caplog.at_level("INFO", logger=tr.__name__):
        assert tr._amp_settings(torch.device("cpu"), "auto") == (None, False)
    assert "mixed_precision='bf16'" in caplog.text
