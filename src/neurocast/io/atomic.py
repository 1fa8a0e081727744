"""Atomic writes: an output either exists complete or not at all.

Everything neurocast writes goes through :func:`atomic_path`: the content is written to a hidden
temporary file in the destination folder, flushed to disk, then renamed over the destination
(``os.replace`` is atomic on POSIX file systems). A process killed mid-write leaves at most a
``.*.tmp-*`` file, which :func:`remove_stale_temporaries` cleans up, never a truncated output.

Example:
    >>> import tempfile, pathlib
    >>> from neurocast.io.atomic import write_text_atomic
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_text_atomic(d / "hello.txt", "hi")
    PosixPath('...hello.txt')
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd

from neurocast.errors import OutputError

TMP_MARKER = ".tmp-"


def _suffixes(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".tsv.gz", ".tar.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the destination's suffix (so ``.nii.gz`` writers still compress). On
    an exception the temporary file is removed and the destination is left untouched.

    Args:
        path: the final destination; its parent folders are created.

    Raises:
        OutputError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(path.parent, f"cannot create output folder ({exc.strerror})") from exc
    if not os.access(path.parent, os.W_OK):
        raise OutputError(path.parent, "output folder is not writable")
    tmp = (
        path.parent
        / f".{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}{_suffixes(path)}"
    )
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(path, "writer produced no file")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable bytes for stable input)."""
    return write_text_atomic(
        path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    )


def write_tsv_atomic(path: str | os.PathLike[str], table: pd.DataFrame) -> Path:
    """Write a table as BIDS-style TSV (tab separated, ``n/a`` for missing) atomically."""
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    return write_text_atomic(path, text)


def write_nifti_atomic(path: str | os.PathLike[str], img: nib.spatialimages.SpatialImage) -> Path:
    """Write a NIfTI image atomically (compressed when ``path`` ends with ``.nii.gz``)."""
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left under ``folder`` by interrupted writes; returns what was removed."""
    removed = []
    for p in Path(folder).rglob(f".*{TMP_MARKER}*"):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
