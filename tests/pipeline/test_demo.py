"""``neurocast demo``: simulation, the steps that are available, notes for the others, reports.

The simulation and the registration are replaced by fast stand-ins (the real demo takes minutes;
its wall time is measured in BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from neurocast.pipeline import run_demo
from neurocast.pipeline import steps as steps_mod


@pytest.fixture
def fast_demo(monkeypatch, stub_registration):
    import neurocast.simulate as sim
    from nc_testutils import make_bids

    def fake_simulate(root, n_subjects, seed=0, config=None, *, progress=True):
        assert config.n_visits == (2, 2)
        make_bids(Path(root), {f"{i:03d}": ["bl", "m12"] for i in range(1, n_subjects + 1)})

    monkeypatch.setattr(sim, "simulate_cohort", fake_simulate)
    # the forecaster and the anomaly detector are not installed here (whatever the checkout holds)
    monkeypatch.setitem(steps_mod.STEP_MODULES, "forecast", "neurocast.progress._absent_workflow")
    monkeypatch.setitem(steps_mod.STEP_MODULES, "qa", "neurocast.anomaly._absent_workflow")
    return stub_registration


def test_demo_runs_what_is_available_and_says_what_is_not(tmp_path: Path, fast_demo) -> None:
    said: list[str] = []
    res = run_demo(tmp_path / "demo", n_subjects=2, n_workers=1, progress=False, echo=said.append)
    assert res.index == (tmp_path / "demo" / "derivatives" / "index.html").resolve()
    assert res.index.is_file() and (res.index.parent / "sub-001.html").is_file()
    # register preprocesses each visit itself: the demo runs no separate preprocess step
    assert list(res.summary.steps) == ["register"] and res.summary.exit_code == 0
    assert any("'forecast' left out" in s for s in said) and any("'qa' left out" in s for s in said)
    assert "left out" in res.index.read_text()
    # a second demo on the same folder skips what is done
    res = run_demo(tmp_path / "demo", n_subjects=2, n_workers=1, progress=False, echo=said.append)
    assert res.summary.n_done == 0 and res.summary.n_skipped == 2


def test_demo_command(tmp_path: Path, fast_demo) -> None:
    from neurocast.cli.main import cli

    r = CliRunner().invoke(
        cli, ["demo", str(tmp_path / "d"), "--n-subjects", "1", "--n-workers", "1", "-q"]
    )
    assert r.exit_code == 0, r.output
    assert "open file://" in r.output and "derivatives/index.html" in r.output


def test_a_shipped_model_that_cannot_be_loaded_is_left_out(
    tmp_path: Path, fast_demo, monkeypatch
) -> None:
    import importlib

    from neurocast.errors import CheckpointError
    from neurocast.pipeline import STEPS

    def broken(ctx):
        raise CheckpointError(f"{ctx.model}: model.safetensors is truncated")

    monkeypatch.setitem(steps_mod.STEP_MODULES, "forecast", "neurocast.io.batch")  # "installed"
    monkeypatch.setitem(STEPS, "forecast", broken)
    demo_mod = importlib.import_module("neurocast.pipeline.demo")  # the module, not the function
    monkeypatch.setattr(demo_mod, "shipped_model", lambda step: tmp_path / f"{step}-demo")
    said: list[str] = []
    res = run_demo(tmp_path / "demo", n_subjects=1, n_workers=1, progress=False, echo=said.append)
    # register preprocesses each visit itself: the demo runs no separate preprocess step
    assert list(res.summary.steps) == ["register"] and res.summary.exit_code == 0
    assert any("'forecast' left out" in s and "truncated" in s for s in said)
    assert "truncated" in res.index.read_text()
