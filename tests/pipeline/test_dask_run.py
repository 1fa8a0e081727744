"""A study on a local Dask cluster of two workers: same results as in-process, threads set."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from neurocast.io.batch import Skipped, run_participants
from neurocast.pipeline import STEPS, run_study


def _probe(label: str, output_dir: str) -> dict:
    """One participant's work on a worker: a provenance-tracked output, and what the worker saw."""
    import torch

    from neurocast.io.derivatives import DerivativesWriter
    from neurocast.registration.threads import ITK_ENV

    if label == "02":
        raise RuntimeError("this participant always fails")
    w = DerivativesWriter(output_dir)
    rel = f"sub-{label}/anat/sub-{label}_desc-probe_qc.json"
    if w.is_complete(rel, parameters={"p": 1}, seed=0):
        raise Skipped(label)
    w.write_json(rel, {"label": label}, parameters={"p": 1}, seed=0)
    return {"pid": os.getpid(), "torch": torch.get_num_threads(), "itk": os.environ.get(ITK_ENV),
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "omp": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip


def _probe_step(ctx):
    return run_participants(
        ["01", "02", "03", "04"], functools.partial(_probe, output_dir=str(ctx.output_dir)),
        ctx.output_dir, step="probe", n_workers=ctx.n_workers, scheduler=ctx.scheduler,
        progress=False,
    )  # fmt: skip


@pytest.mark.slow
def test_two_local_workers(tmp_path: Path, monkeypatch) -> None:
    from nc_testutils import make_bids

    bids = make_bids(tmp_path / "bids", {"01": None, "02": None, "03": None, "04": None})
    monkeypatch.setitem(STEPS, "preprocess", _probe_step)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # e.g. left by an earlier cluster in this process
    out = tmp_path / "out"
    s = run_study(bids, out, steps=["preprocess"], n_workers=2, threads_per_worker=2,
                  progress=False)  # fmt: skip
    res = {r.participant: r for r in s.steps["preprocess"].results}
    assert {k: r.status for k, r in res.items()} == {
        "01": "done",
        "02": "failed",
        "03": "done",
        "04": "done",
    }
    assert s.exit_code == 3 and s.n_workers == 2 and "always fails" in res["02"].error
    seen = [r.value for r in res.values() if r.status == "done"]
    assert os.getpid() not in {v["pid"] for v in seen}  # the work ran in the worker processes
    assert all(v["torch"] == 2 and v["itk"] == "2" for v in seen)  # threads follow the setting
    # Dask's MALLOC_TRIM_THRESHOLD_ would halve torch's speed on the workers: left out
    assert all(v["malloc_trim"] is None and v["omp"] == "2" for v in seen), seen
    assert os.environ["OMP_NUM_THREADS"] == "1"  # and this process's own setting is put back
    assert (out / "index.html").is_file() and (out / "sub-01.html").is_file()
    # a rerun (here in-process) skips what the workers completed
    s = run_study(bids, out, steps=["preprocess"], n_workers=1, progress=False)
    assert [r.status for r in s.steps["preprocess"].results] == [
        "skipped",
        "failed",
        "skipped",
        "skipped",
    ]
