"""kill -9 at random points of a batch run, then a rerun: the outputs of an uninterrupted run.

The run is the real ``neurocast preprocess`` batch (discovery, per-participant tasks, atomic
writes with provenance, resume, the lock, the group QC table) with a fast stand-in for the
registration itself (``kill_runner.py``), so several kill points fit in CI. The full-size trial
with the real registration and Dask workers is ``benchmarks/kill_trial.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurocast.io.derivatives import output_hashes

RUNNER = Path(__file__).with_name("kill_runner.py")
N_SUBJECTS = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kill") / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "kill trial", "BIDSVersion": "1.9.0"}')
    ids = [f"sub-{i:02d}" for i in range(1, N_SUBJECTS + 1)]
    pd.DataFrame({"participant_id": ids, "age": 70, "sex": "F"}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    rng = np.random.default_rng(0)
    for sub in ids:
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        data = rng.random((16, 16, 12)).astype(np.float32) * 100
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), anat / f"{sub}_T1w.nii.gz")
    return root


def _command(bids: Path, out: Path) -> list[str]:
    return [sys.executable, str(RUNNER), "preprocess", str(bids), str(out), "participant", "-q"]


def _env() -> dict[str, str]:
    return {**os.environ, "NEUROCAST_TEST_DELAY": "0.3"}  # seconds per scan: kills land mid-run


def _run(bids: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(bids, out), capture_output=True, text=True, env=_env(), timeout=600
    )


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, float]:
    """The uninterrupted run: its output hashes and wall time (s)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    t0 = time.perf_counter()
    res = _run(dataset, out)
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    return output_hashes(out), seconds


@pytest.mark.parametrize("seed", [0, 1, 5, 7])
def test_kill_then_resume_gives_the_uninterrupted_outputs(dataset: Path, reference: tuple[dict, float],
                                                          tmp_path: Path, seed: int) -> None:  # fmt: skip
    ref, _ = reference
    out = tmp_path / "out"
    # the kill point: once the seed's number of participants have finished (0: during start-up)
    rng = random.Random(seed)
    after_done = rng.randint(0, N_SUBJECTS - 2)
    extra = rng.uniform(0.0, 0.25)
    proc = subprocess.Popen(_command(dataset, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), start_new_session=True)  # fmt: skip
    t0 = time.perf_counter()
    while (
        proc.poll() is None and len(list(out.glob("sub-*/**/*_desc-preproc_qc.json"))) < after_done
    ):
        time.sleep(0.02)
    time.sleep(extra if after_done else 1.0 + extra)
    delay = time.perf_counter() - t0
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_mid_run = proc.returncode == -signal.SIGKILL
    finished = {p: p.stat().st_mtime_ns for p in out.glob("sub-*/**/*") if p.is_file()
                and any(q.parent == p.parent for q in out.glob("sub-*/**/*_desc-preproc_qc.json"))}  # fmt: skip
    res = _run(dataset, out)
    assert res.returncode == 0, res.stdout + res.stderr
    got = output_hashes(out)
    assert sorted(got) == sorted(ref), "the rerun wrote a different set of files"
    differ = [k for k in ref if got[k][1] != ref[k][1]]
    assert not differ, f"outputs differ from the uninterrupted run: {differ}"
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    # what a finished participant wrote before the kill is kept, not recomputed
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert killed_mid_run, "the run finished before the kill: not a trial"
    print(
        f"seed {seed}: killed after {delay:.1f} s ({after_done} participants asked) with {len(finished)} finished file(s)"
    )
