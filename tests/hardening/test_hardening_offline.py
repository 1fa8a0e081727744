"""No network at run time (issue 9), and the real pipeline on a dataset mixing good and bad scans.

The commands of :data:`OFFLINE_COMMANDS` run one after the other, in this process, with every
socket connection and name lookup refused (a refused attempt is recorded even where a library would
swallow the error). The dataset is a simulated subject (a real brain-like scan, really
preprocessed) plus participants with broken scans, added after ``simulate``.

To put another command under the same guard, add one line to :data:`OFFLINE_COMMANDS`. The demo
runs with one worker in this process (a local Dask cluster talks over loopback TCP, which the guard
would refuse).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hardening_helpers import assert_no_partial_output, crash_text, run_cli, snapshot

from neurocast.errors import EXIT_CODES


@dataclass(frozen=True)
class Paths:
    """Where the commands read and write: ``bids`` (simulated), ``out`` (derivatives), ``tmp``."""

    tmp: Path
    bids: Path
    out: Path


OFFLINE_COMMANDS: list[tuple[str, Callable[[Paths], list], int]] = [
    ("simulate", lambda p: ["simulate", p.bids, "--n-subjects", "1", "--visits", "1", "1",
                            "--grid-spacing-mm", "4", "--seed", "0", "-q"], EXIT_CODES["ok"]),
    # sub-001 is processed, the broken participants fail: exit 3
    ("preprocess", lambda p: ["preprocess", p.bids, p.out, "participant", "-q"],
     EXIT_CODES["participant_failed"]),
    # the shipped forecaster on the simulated subject (preprocessed on the way)
    ("forecast", lambda p: ["forecast", p.bids, p.out, "participant", "--participant-label", "001",
                            "--samples", "2", "--horizons", "0,1", "-q"], EXIT_CODES["ok"]),
    # the whole demo (simulate, register, forecast, reports), one subject, in this process
    ("demo", lambda p: ["demo", p.tmp / "demo", "--n-subjects", "1", "--n-workers", "1", "-q"], EXIT_CODES["ok"]),
]  # fmt: skip
"""(name, argv of ``neurocast`` from the paths, expected exit code), run in this order."""

BROKEN = {
    "truncated": "truncated or corrupt",
    "notnifti": "not a readable NIfTI",
}
"""Participants added after ``simulate`` with a broken scan, and the error each must get."""


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse every IP connection and name lookup; yields the list of attempts."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(what: str, *args) -> OSError:
        attempts.append(f"{what}{args!r}")
        return OSError(f"network access is blocked in this test ({what})")

    def connect(self, address):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise refuse("connect", address)

    def connect_ex(self, address):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect_ex(self, address)
        raise refuse("connect_ex", address)

    def sendto(self, *args):
        raise refuse("sendto", args[-1])

    def lookup(*args, **kwargs):
        raise refuse("getaddrinfo", *args[:2])

    def create_connection(address, *args, **kwargs):
        raise refuse("create_connection", address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket.socket, "sendto", sendto)
        mp.setattr(socket, "getaddrinfo", lookup)
        mp.setattr(socket, "gethostbyname", lookup)
        mp.setattr(socket, "create_connection", create_connection)
        yield attempts


def test_the_guard_blocks_and_records() -> None:
    with no_network() as attempts:
        with pytest.raises(OSError, match="blocked"):
            socket.create_connection(("example.org", 80), timeout=1)
        with pytest.raises(OSError, match="blocked"):
            socket.getaddrinfo("example.org", 443)
        with pytest.raises(OSError, match="blocked"), socket.socket() as s:
            s.connect(("127.0.0.1", 9))
    assert len(attempts) == 3


def _add_broken_participants(bids: Path) -> dict[str, Path]:
    scan = next(bids.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))
    paths = {}
    for label in BROKEN:
        p = bids / f"sub-{label}" / "ses-bl" / "anat" / f"sub-{label}_ses-bl_T1w.nii.gz"
        p.parent.mkdir(parents=True)
        paths[label] = p
    data = scan.read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 3])
    paths["notnifti"].write_bytes(gzip.compress(b"<html>not a scan</html>" * 50))
    table = bids / "participants.tsv"
    text = table.read_text().rstrip("\n").split("\n")
    extra = [
        "\t".join([f"sub-{label}"] + ["n/a"] * (len(text[0].split("\t")) - 1)) for label in BROKEN
    ]
    table.write_text("\n".join(text + extra) + "\n")
    return paths


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("offline")
    paths = Paths(tmp, tmp / "bids", tmp / "out")
    results, broken = {}, {}
    with no_network() as attempts:
        for name, argv, _ in OFFLINE_COMMANDS:
            results[name] = run_cli(*argv(paths))
            if name == "simulate" and results[name].exit_code == 0:
                broken = _add_broken_participants(paths.bids)
    outside = snapshot(tmp)
    return {"paths": paths, "results": results, "attempts": attempts, "broken": broken,
            "files": outside}  # fmt: skip


@pytest.mark.slow
def test_commands_run_with_the_network_blocked(offline_run: dict) -> None:
    for name, _, expected in OFFLINE_COMMANDS:
        res = offline_run["results"][name]
        assert res.exit_code == expected, f"{name}: {crash_text(res)}"
    assert offline_run["attempts"] == [], "network access attempted"
    demo = offline_run["paths"].tmp / "demo" / "derivatives"
    assert (demo / "index.html").is_file() and list(
        demo.glob("sub-*/ses-*/anat/*_desc-forecast_T1w.nii.gz")
    )


@pytest.mark.slow
def test_good_participant_finishes_beside_broken_ones(offline_run: dict) -> None:
    p: Paths = offline_run["paths"]
    failures = pd.read_csv(p.out / "logs" / "failures.tsv", sep="\t", dtype=str)
    assert sorted(failures["participant_id"]) == sorted(f"sub-{b}" for b in BROKEN)
    for label, message in BROKEN.items():
        error = failures.set_index("participant_id").loc[f"sub-{label}", "error"]
        assert message in error and str(offline_run["broken"][label]) in error
        assert not (p.out / f"sub-{label}").exists()
    qc = pd.read_csv(p.out / "group_desc-preproc_qc.tsv", sep="\t")
    assert list(qc["participant_id"]) == ["sub-001"] and qc["passed"].all()
    anat = p.out / "sub-001" / "ses-bl" / "anat"
    record = json.loads((anat / "sub-001_ses-bl_desc-preproc_qc.json").read_text())
    assert record["row"]["passed"]
    preproc = [f for f in anat.glob("*.nii.gz") if "forecast" not in f.name and "jacobian" not in f.name
               and "uncertainty" not in f.name]  # fmt: skip
    assert len(preproc) == 4  # image and mask, template and native space
    forecasts = {f.name.split("desc-")[1] for f in anat.glob("*desc-*")}
    assert {"forecast_T1w.nii.gz", "forecast_volumes.tsv", "jacobian_map.nii.gz"} <= forecasts, (
        forecasts
    )
    assert len(list(anat.glob("*_xfm.mat"))) == 2


@pytest.mark.slow
def test_no_partial_output_and_nothing_outside(offline_run: dict) -> None:
    p: Paths = offline_run["paths"]
    assert_no_partial_output(p.out, p.bids, p.tmp / "demo")
    written = {Path(f) for f in offline_run["files"]}
    allowed = (p.out, p.bids, p.tmp / "demo")
    stray = [f for f in written if not any(a in f.parents for a in allowed)]
    assert not stray, f"files written outside the output folders: {stray}"


@pytest.mark.slow
def test_rerun_offline_skips_finished_work(offline_run: dict) -> None:
    """Resuming: the finished participant is skipped, the broken ones are tried (and fail) again."""
    p: Paths = offline_run["paths"]
    with no_network() as attempts:
        res = run_cli("preprocess", p.bids, p.out, "participant", "-q")
    assert res.exit_code == EXIT_CODES["participant_failed"], crash_text(res)
    assert "1 skipped" in res.output and f"{len(BROKEN)} failed" in res.output
    assert attempts == []
    shutil.rmtree(p.out / "logs")  # the logs may go; the outputs stay complete
    assert_no_partial_output(p.out)
