"""BIDS derivatives output: dataset description, confined paths, provenance sidecars.

Every file neurocast writes into an output folder goes through a :class:`DerivativesWriter`:

- the folder gets a ``dataset_description.json`` (``DatasetType: derivative``, ``GeneratedBy``);
- every path is resolved and must stay inside the output folder (no ``../`` escapes);
- every output is written atomically and gets a JSON sidecar (``<name>.json`` beside it, or
  ``<stem>_provenance.json`` for JSON/TSV outputs) with its provenance: inputs and their SHA-256,
  parameters, seed, model card hash, package version, and the SHA-256 of the output itself, so a
  rerun can tell a complete, valid output from a stale one (:meth:`DerivativesWriter.is_complete`).

Example:
    >>> import tempfile
    >>> from neurocast.io.derivatives import DerivativesWriter
    >>> w = DerivativesWriter(tempfile.mkdtemp())
    >>> p = w.write_json("sub-01/anat/sub-01_qc.json", {"passed": True}, parameters={"x": 1}, seed=0)
    >>> w.is_complete("sub-01/anat/sub-01_qc.json", parameters={"x": 1}, seed=0)
    True
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd

from neurocast._version import __version__
from neurocast.errors import OutputError
from neurocast.io.atomic import (
    atomic_path,
    write_json_atomic,
    write_nifti_atomic,
    write_text_atomic,
    write_tsv_atomic,
)

BIDS_VERSION = "1.9.0"
PIPELINE_NAME = "neurocast"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the provenance sidecar of an output lives."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    stem = name.rsplit(".", 1)[0]
    return path.with_name(stem + "_provenance.json")


def provenance(
    inputs: Iterable[str | os.PathLike[str]] = (),
    parameters: dict[str, Any] | None = None,
    seed: int | None = None,
    model_card_sha256: str | None = None,
) -> dict[str, Any]:
    """The provenance record of an output (without the output's own hash).

    Args:
        inputs: files the output was computed from; each is hashed.
        parameters: the options that shaped the output (JSON-serialisable).
        seed: the random seed, where one was used.
        model_card_sha256: hash of the model card of the model used, if any.
    """
    return {
        "GeneratedBy": {"Name": PIPELINE_NAME, "Version": __version__},
        "Inputs": [{"path": str(Path(p)), "sha256": sha256_file(p)} for p in inputs],
        "Parameters": parameters or {},
        "Seed": seed,
        "ModelCardSHA256": model_card_sha256,
    }


class DerivativesWriter:
    """Writes outputs into a BIDS derivatives folder, atomically and with provenance.

    Args:
        root: the output folder (created if needed).
        name: pipeline name for ``GeneratedBy``.
        source_datasets: optional BIDS URIs or paths of the source datasets.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str = PIPELINE_NAME,
        source_datasets: Iterable[str] = (),
    ) -> None:
        self.root = Path(root).resolve()
        self.name = name
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(self.root, f"cannot create output folder ({exc.strerror})") from exc
        if not os.access(self.root, os.W_OK):
            raise OutputError(self.root, "output folder is not writable")
        desc = self.root / "dataset_description.json"
        if not desc.exists():
            write_json_atomic(
                desc,
                {
                    "Name": f"{name} derivatives",
                    "BIDSVersion": BIDS_VERSION,
                    "DatasetType": "derivative",
                    "GeneratedBy": [{"Name": name, "Version": __version__}],
                    "SourceDatasets": [{"URL": s} for s in source_datasets],
                },
            )

    def path(self, relpath: str | os.PathLike[str]) -> Path:
        """The absolute path of ``relpath`` inside the output folder.

        Raises:
            OutputError: the path is absolute or escapes the output folder.
        """
        rel = Path(relpath)
        if rel.is_absolute():
            raise OutputError(rel, "output paths must be relative to the output folder")
        try:
            full = (self.root / rel).resolve()
        except (ValueError, OSError) as exc:  # a NUL byte, a symlink loop
            raise OutputError(repr(os.fspath(rel)), f"not a usable output path ({exc})") from exc
        if full != self.root and self.root not in full.parents:
            raise OutputError(rel, f"output path escapes the output folder {self.root}")
        return full

    def _file(self, relpath: str | os.PathLike[str]) -> Path:
        """:meth:`path` for a file to write: also refuses the output folder itself (whose
        temporary file would land beside, outside the folder)."""
        full = self.path(relpath)
        if full == self.root:
            raise OutputError(relpath, "output path names the output folder itself, not a file")
        return full

    def _finish(self, out: Path, prov: dict[str, Any]) -> Path:
        prov = dict(prov, OutputSHA256=sha256_file(out))
        write_json_atomic(sidecar_path(out), prov)
        return out

    def write_nifti(
        self,
        relpath: str | os.PathLike[str],
        img: nib.spatialimages.SpatialImage,
        *,
        inputs: Iterable[str | os.PathLike[str]] = (),
        parameters: dict[str, Any] | None = None,
        seed: int | None = None,
        model_card_sha256: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write a NIfTI output and its JSON sidecar (provenance plus ``extra`` BIDS fields)."""
        out = write_nifti_atomic(self._file(relpath), img)
        prov = provenance(inputs, parameters, seed, model_card_sha256)
        return self._finish(out, {**(extra or {}), **prov})

    def write_tsv(self, relpath: str | os.PathLike[str], table: pd.DataFrame, **prov: Any) -> Path:
        """Write a TSV output and its provenance sidecar (keywords as :func:`provenance`)."""
        out = write_tsv_atomic(self._file(relpath), table)
        return self._finish(out, provenance(**prov))

    def write_json(self, relpath: str | os.PathLike[str], obj: Any, **prov: Any) -> Path:
        """Write a JSON output and its provenance sidecar (keywords as :func:`provenance`)."""
        out = write_json_atomic(self._file(relpath), obj)
        return self._finish(out, provenance(**prov))

    def write_text(self, relpath: str | os.PathLike[str], text: str, **prov: Any) -> Path:
        """Write a text output (e.g. HTML) and its provenance sidecar."""
        out = write_text_atomic(self._file(relpath), text)
        return self._finish(out, provenance(**prov))

    def write_with(
        self, relpath: str | os.PathLike[str], writer: Callable[[Path], Any], **prov: Any
    ) -> Path:
        """Write an output with a function that writes to a given path (e.g. an ANTs transform).

        ``writer(tmp_path)`` writes to a temporary path that is renamed onto the output once it
        returns; the provenance sidecar follows (keywords as :func:`provenance`).
        """
        out = self._file(relpath)
        with atomic_path(out) as tmp:
            writer(tmp)
        return self._finish(out, provenance(**prov))

    def is_complete(
        self,
        relpath: str | os.PathLike[str],
        *,
        inputs: Iterable[str | os.PathLike[str]] = (),
        parameters: dict[str, Any] | None = None,
        seed: int | None = None,
        model_card_sha256: str | None = None,
    ) -> bool:
        """Whether an output exists, matches its sidecar's hash and was made from these settings.

        A rerun uses this to skip finished work: the output must exist, its bytes must hash to
        the recorded ``OutputSHA256``, and the recorded inputs, parameters, seed and model card
        must equal the ones given. Inputs are compared by file name and content hash, in order,
        not by the path as written: a dataset reached through a symbolic link, another relative
        path or after a move is still recognised, and an input whose bytes changed is not.
        """
        import json

        out = self.path(relpath)
        side = sidecar_path(out)
        if not out.is_file() or not side.is_file():
            return False
        try:
            recorded = json.loads(side.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return False
        if recorded.get("OutputSHA256") != sha256_file(out):
            return False
        expected = provenance(inputs, parameters, seed, model_card_sha256)
        expected = json.loads(json.dumps(expected, sort_keys=True, default=str))
        got_inputs = recorded.get("Inputs")
        if not isinstance(got_inputs, list) or _input_keys(got_inputs) != _input_keys(
            expected.pop("Inputs")
        ):
            return False
        return all(recorded.get(k) == v for k, v in expected.items())


def _input_keys(inputs: list[Any]) -> list[tuple[str, str]] | None:
    """(file name, sha256) of each recorded input; ``None`` for a malformed record."""
    try:
        return [(Path(i["path"]).name, str(i["sha256"])) for i in inputs]
    except (KeyError, TypeError):
        return None


VOLATILE_KEYS = frozenset({"seconds"})
"""Keys of JSON records that hold wall-clock durations (they differ between any two runs)."""


def _strip_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


def output_hashes(root: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """Content hashes of every output under a derivatives folder, to compare two runs.

    Logs (``logs/``) and the lock file are left out. Returns ``relpath -> (sha256 of the bytes,
    sha256 ignoring wall-clock fields)``: for JSON files the second hash drops ``seconds`` entries
    (timings) and, in the provenance sidecar of a JSON output, the output's own hash (which covers
    those timings); for other files both are the same.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.json").write_text('{"x": 1, "seconds": 2.5}')
        >>> _ = (d / "b.json").write_text('{"x": 1, "seconds": 9.1}')
        >>> h = output_hashes(d)
        >>> h["a.json"][0] != h["b.json"][0], h["a.json"][1] == h["b.json"][1]
        (True, True)
    """
    import json

    base = Path(root)
    out: dict[str, tuple[str, str]] = {}
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base).as_posix()
        if not p.is_file() or rel.startswith("logs/") or rel == ".neurocast.lock":
            continue
        data = p.read_bytes()
        raw = hashlib.sha256(data).hexdigest()
        norm = raw
        if p.suffix == ".json":
            try:
                obj = _strip_volatile(json.loads(data))
            except ValueError:
                obj = None
            if obj is not None:
                if (
                    isinstance(obj, dict)
                    and p.name.endswith("_provenance.json")
                    and p.with_name(p.name[: -len("_provenance.json")] + ".json").is_file()
                ):
                    obj.pop("OutputSHA256", None)
                norm = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        out[rel] = (raw, norm)
    return out
