"""Shared helpers of the hardening tests: the CLI runner, a fast stand-in for the registration,
and the checks every run must pass (no partial output, nothing written outside the output folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from click.testing import CliRunner, Result

from neurocast.cli.main import cli
from neurocast.io.atomic import TMP_MARKER
from neurocast.io.derivatives import sha256_file, sidecar_path


def run_cli(*args: str | os.PathLike[str]) -> Result:
    """``neurocast ARGS`` in-process; exceptions other than SystemExit are kept on the result."""
    return CliRunner().invoke(cli, [os.fspath(a) for a in args])


def crash_text(result: Result) -> str:
    """A readable description of an unexpected exception (for assertion messages)."""
    import traceback

    if result.exception is None or isinstance(result.exception, SystemExit):
        return result.output
    return result.output + "".join(traceback.format_exception(result.exception))


def fake_preprocess_result():
    """What ``preprocess_t1w`` returns for a passing scan, on a 4^3 grid (no registration run)."""
    import neurocast.registration.preprocess as pp
    from neurocast.registration.template import Grid

    grid = Grid((4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    img = grid.image(np.ones(grid.shape, np.float32))
    mask = grid.image(np.ones(grid.shape, np.uint8))
    qc = {"passed": True, "similarity": 0.8, "mask_volume_ml": 1400.0, "reasons": []}
    return pp.PreprocessResult(img, mask, img, mask, np.eye(4), False, qc, grid, {})


def snapshot(root: Path, exclude: Path | tuple[Path, ...] = ()) -> dict[str, float]:
    """Every file under ``root`` (not following symlinks) with its mtime, except under ``exclude``
    (one folder or several)."""
    skip = {exclude} if isinstance(exclude, Path) else set(exclude)
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) in skip:
            dirnames.clear()
            continue
        for name in filenames:
            p = Path(dirpath) / name
            try:
                found[str(p)] = p.lstat().st_mtime_ns
            except OSError:
                continue
    return found


def assert_no_partial_output(out: Path, *also: Path) -> None:
    """No temporaries anywhere; every NIfTI/TSV/JSON output is complete per its sidecar's hash."""
    for folder in (out, *also):
        if not folder.exists():
            continue
        temps = [p for p in folder.rglob("*") if TMP_MARKER in p.name or ".tmp-" in p.name]
        assert not temps, f"temporary files left behind: {temps}"
    if not out.is_dir():
        return
    for p in out.rglob("*"):
        if not p.is_file() or p.is_symlink() or "logs" in p.relative_to(out).parts:
            continue
        name = p.name
        if name.startswith(".") or name == "dataset_description.json":
            continue
        if name.endswith((".nii.gz", ".nii")) or name.endswith(("_qc.json", ".tsv", ".mat")):
            side = sidecar_path(p)
            assert side.is_file(), f"{p} has no provenance sidecar"
            recorded = json.loads(side.read_text())
            assert recorded["OutputSHA256"] == sha256_file(p), (
                f"{p} is not the file its sidecar describes"
            )
            if name.endswith((".nii.gz", ".nii")):
                nib.load(str(p)).get_fdata()  # readable to the end
