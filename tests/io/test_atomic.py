"""Atomic writes leave either the complete file or nothing, even when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neurocast.errors import OutputError
from neurocast.io.atomic import (
    atomic_path,
    remove_stale_temporaries,
    write_json_atomic,
    write_nifti_atomic,
    write_text_atomic,
)


def test_exception_inside_block_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_when_rewrite_fails(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new but broken")
        raise RuntimeError
    assert target.read_text() == "old"


def test_nifti_roundtrip_keeps_compression(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    out = write_nifti_atomic(tmp_path / "a" / "x.nii.gz", img)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert nib.load(str(out)).shape == (4, 4, 4)


def test_json_is_stable(tmp_path: Path) -> None:
    a = write_json_atomic(tmp_path / "a.json", {"b": 1, "a": np.float32(2.5)}).read_bytes()
    b = write_json_atomic(tmp_path / "b.json", {"a": 2.5, "b": 1}).read_bytes()
    assert a == b


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")  # a file where a folder should be: fails even for root
        with pytest.raises(OutputError, match="cannot create output folder"):
            write_text_atomic(blocker / "sub" / "out.txt", "x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(OutputError, match="not writable"):
            write_text_atomic(ro / "out.txt", "x")


def test_killed_writer_leaves_no_partial_output(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    code = (
        "import sys, time\n"
        "from neurocast.io.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    fh = open(tmp, 'wb')\n"
        "    fh.write(b'x' * 1000); fh.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    time.sleep(0.05)
    assert not target.exists()
    leftovers = remove_stale_temporaries(tmp_path)
    assert len(leftovers) == 1 and not any(tmp_path.iterdir())
