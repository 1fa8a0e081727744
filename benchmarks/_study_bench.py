"""Helpers shared by the study benchmarks (throughput.py, kill_trial.py): simulate a study, run
``neurocast run`` as a child process in its own process group while sampling the memory of every
process of its tree, and hash an output folder."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def simulate(root: Path, n_subjects: int, visits: int, seed: int) -> tuple[Path, int]:
    """A simulated BIDS study (reused when already there); returns it and its number of scans."""
    from neurocast.simulate import SimulationConfig, simulate_cohort

    bids = root / "bids"
    if not (bids / "participants.tsv").is_file():
        cfg = SimulationConfig(n_visits=(visits, visits), n_jobs=min(2, n_subjects))
        simulate_cohort(bids, n_subjects, seed, cfg, progress=False)
    n_scans = len(list(bids.glob("sub-*/ses-*/anat/*_T1w.nii.gz")))
    return bids, n_scans


def command(bids: Path, out: Path, steps: str, n_workers: int, seed: int = 0) -> list[str]:
    return [sys.executable, "-m", "neurocast.cli.main", "run", str(bids), str(out), "participant",
            "--steps", steps, "--n-workers", str(n_workers), "--seed", str(seed), "-q"]  # fmt: skip


@dataclass
class RunResult:
    """A ``neurocast run`` child process: exit code, wall time, output, peak memory per process."""

    returncode: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""
    peak_rss: dict[int, int] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    killed: bool = False

    def peaks(self, role: str) -> list[int]:
        return [v for pid, v in self.peak_rss.items() if self.roles.get(pid) == role]


def _role(proc, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "main"
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return "other"
    if "resource_tracker" in cmd or "semaphore_tracker" in cmd:
        return "other"
    if "spawn_main" in cmd or "forkserver" in cmd or "distributed" in cmd:
        return "worker"
    return "other"


def run(
    cmd: list[str], *, kill_when=None, poll: float = 0.25, timeout: float = 6 * 3600
) -> RunResult:
    """Run a command in a new process group, sampling RSS; ``kill_when()`` -> True sends SIGKILL
    to the whole group (the run, its Dask workers, everything)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    res = RunResult(None, 0.0)
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            res.peak_rss[p.pid] = max(res.peak_rss.get(p.pid, 0), rss)
            if p.pid not in res.roles:
                res.roles[p.pid] = _role(p, proc.pid)
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, 9)
            res.killed = True
            break
        if time.perf_counter() - t0 > timeout:
            os.killpg(proc.pid, 9)
            break
        time.sleep(poll)
    out, err = proc.communicate()
    res.returncode = proc.returncode
    res.seconds = time.perf_counter() - t0
    res.stdout, res.stderr = out, err
    if res.killed:  # orphans of the group (workers) die with it; wait until they are gone
        for _ in range(100):
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    return res


def hashes(root: Path) -> dict[str, tuple[str, str]]:
    """See :func:`neurocast.io.derivatives.output_hashes`."""
    from neurocast.io.derivatives import output_hashes

    return output_hashes(root)


def machine() -> str:
    load = os.getloadavg()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.machine()}, {cpus} CPUs, Python {platform.python_version()}, "
            f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")  # fmt: skip


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"
