"""One scan's preprocessing in a derivatives folder: written once, reused by every later step.

``neurocast preprocess``, ``neurocast register`` and ``neurocast qa`` all start from
:func:`~neurocast.registration.preprocess.preprocess_t1w` (N4, template affine, brain mask; about
11 s per simulated demo scan on one thread, profiled 2026-12-06). Within one output folder the
first step to preprocess a session writes the result under the preprocess step's names
(:func:`save_preprocessed`), with a provenance sidecar; the later steps find it (:func:`load_preprocessed`) and read it back instead of
preprocessing again. A ``neurocast run`` with the default steps therefore preprocesses each scan
once instead of three times.

Reuse is exact: the images are float32 and uint8 NIfTI whose geometry preprocessing already set
through the header (so nothing is rounded on the way back), and the transform is kept in the QC
record as JSON (float64 written with ``repr``, read back bit for bit): a step gives the same
numbers whether it preprocessed the scan itself or read it back. A record is
reused only when every file is present, hashes to its sidecar and was made from the same input
bytes, working grid, skull-stripping setting and seed, and when the scan passed preprocessing QC;
anything else is preprocessed again.

Example:
    >>> from neurocast.registration.preprocessed import preprocess_or_load  # doctest: +SKIP
    >>> result, reused = preprocess_or_load(writer, participant, session, grid=working_grid(2.0))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Any

import nibabel as nib
import numpy as np

from neurocast.io.bids import Participant, Session, anat_folder, file_prefix
from neurocast.io.derivatives import DerivativesWriter
from neurocast.registration import preprocess as _preprocess
from neurocast.registration.preprocess import PreprocessResult, output_names
from neurocast.registration.template import Grid, working_grid
from neurocast.registration.transforms import write_ants_affine

IMAGE_KEYS = ("image", "brain_mask", "native", "native_brain_mask")
"""The NIfTI outputs of a preprocessed scan (template space, then native grid)."""


def preprocess_provenance(
    source: str | os.PathLike[str],
    *,
    grid_spacing_mm: float,
    skull_stripped: bool | None,
    seed: int,
) -> dict[str, Any]:
    """The provenance every preprocessing output of ``source`` is written and looked up with."""
    params = {
        "grid_spacing_mm": float(grid_spacing_mm),
        "skull_stripped": skull_stripped,
        "step": "preprocess",
    }
    return {"inputs": [source], "parameters": params, "seed": seed}


def _session_provenance(
    session: Session, grid: Grid, skull_stripped: bool | None, seed: int
) -> dict[str, Any]:
    return preprocess_provenance(
        session.t1w[0], grid_spacing_mm=grid.spacing_mm[0], skull_stripped=skull_stripped,
        seed=seed,
    )  # fmt: skip


def qc_row(participant: Participant, session: Session, result: PreprocessResult) -> dict[str, Any]:
    """The session's row of ``group_desc-preproc_qc.tsv``."""
    qc = result.qc
    return {
        "participant_id": participant.participant_id,
        "session_id": session.entity or "n/a",
        "source": str(session.t1w[0]),
        "passed": bool(qc.get("passed")),
        "similarity": qc.get("similarity"),
        "mask_volume_ml": qc.get("mask_volume_ml"),
        "skull_stripped": result.skull_stripped,
        "reasons": "; ".join(qc.get("reasons", [])) or "n/a",
    }


def _relpaths(participant: Participant, session: Session, grid: Grid) -> dict[str, str]:
    """The session's preprocessing outputs, by key, relative to the derivatives folder."""
    folder = anat_folder(participant, session)
    names = output_names(file_prefix(participant, session), grid)
    return {k: f"{folder}/{v}" for k, v in names.items()}


def save_preprocessed(
    writer: DerivativesWriter,
    participant: Participant,
    session: Session,
    result: PreprocessResult,
    *,
    skull_stripped: bool | None,
    seed: int,
) -> dict[str, Any]:
    """Write one session's preprocessing (the images and transforms only if it passed QC).

    The QC record is written last: its presence, with a matching hash, marks the session done.

    Args:
        writer: the derivatives folder.
        participant, session: whose scan (its first T1w run).
        result: the preprocessing of ``session.t1w[0]``.
        skull_stripped, seed: the settings it was preprocessed with (provenance).

    Returns:
        The session's QC row (:func:`qc_row`).
    """
    prov = _session_provenance(session, result.grid, skull_stripped, seed)
    rel = _relpaths(participant, session, result.grid)
    row = qc_row(participant, session, result)
    if row["passed"]:
        for key in IMAGE_KEYS:
            writer.write_nifti(rel[key], getattr(result, key), **prov)
        writer.write_with(
            rel["xfm_to_template"], lambda tmp: write_ants_affine(result.template_to_native, tmp),
            **prov,
        )  # fmt: skip
        writer.write_with(
            rel["xfm_to_native"], lambda tmp: write_ants_affine(result.native_to_template, tmp),
            **prov,
        )  # fmt: skip
    record = {
        "row": row,
        "qc": result.qc,
        "params": result.params,
        "native_to_template": result.native_to_template,
    }
    writer.write_json(rel["qc"], record, **prov)
    return row


def saved_qc_record(
    writer: DerivativesWriter,
    participant: Participant,
    session: Session,
    *,
    grid: Grid,
    skull_stripped: bool | None,
    seed: int,
) -> dict[str, Any] | None:
    """The session's QC record if it is complete for these settings (passed or not), else None."""
    prov = _session_provenance(session, grid, skull_stripped, seed)
    rel = _relpaths(participant, session, grid)
    if not writer.is_complete(rel["qc"], **prov):
        return None
    try:
        return json.loads(writer.path(rel["qc"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_preprocessed(
    writer: DerivativesWriter,
    participant: Participant,
    session: Session,
    *,
    grid: Grid,
    skull_stripped: bool | None = None,
    seed: int = 0,
) -> PreprocessResult | None:
    """The session's saved preprocessing, read back exactly, or ``None`` if there is none to reuse.

    ``None`` when the record is missing, incomplete, made with other settings or from other
    input bytes, or failed QC, or when ``grid`` is not the standard working grid of its spacing
    (the only grids the preprocess step writes).
    """
    if grid != working_grid(grid.spacing_mm[0]):
        return None
    record = saved_qc_record(
        writer, participant, session, grid=grid, skull_stripped=skull_stripped, seed=seed
    )
    if record is None or not record.get("row", {}).get("passed"):
        return None
    prov = _session_provenance(session, grid, skull_stripped, seed)
    rel = _relpaths(participant, session, grid)
    if not all(writer.is_complete(rel[k], **prov) for k in IMAGE_KEYS):
        return None
    try:
        images = {k: nib.load(writer.path(rel[k])) for k in IMAGE_KEYS}
        data = {k: np.asarray(img.dataobj) for k, img in images.items()}
    except (OSError, ValueError, nib.filebasedimages.ImageFileError):
        return None
    affine = np.asarray(images["native"].affine, dtype=float)
    if (
        data["image"].shape != grid.shape
        or data["brain_mask"].shape != grid.shape
        or data["native"].shape != data["native_brain_mask"].shape
    ):
        return None

    def native(arr: np.ndarray) -> nib.Nifti1Image:
        img = nib.Nifti1Image(arr, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        return img

    return PreprocessResult(
        image=grid.image(data["image"].astype(np.float32, copy=False)),
        brain_mask=grid.image(data["brain_mask"].astype(np.uint8, copy=False), dtype=np.uint8),
        native=native(data["native"].astype(np.float32, copy=False)),
        native_brain_mask=native(data["native_brain_mask"].astype(np.uint8, copy=False)),
        native_to_template=np.asarray(record["native_to_template"], dtype=float),
        skull_stripped=bool(record["row"]["skull_stripped"]),
        qc=record["qc"],
        grid=grid,
        params=record.get("params") or {},
    )


def preprocess_or_load(
    writer: DerivativesWriter,
    participant: Participant,
    session: Session,
    *,
    grid: Grid,
    skull_stripped: bool | None = None,
    seed: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
    save: bool = True,
) -> tuple[PreprocessResult, bool]:
    """The session's preprocessing: read back when saved (:func:`load_preprocessed`), else run.

    A scan preprocessed here is saved for the next step (``save=True``) when it passed QC and
    ``grid`` is a standard working grid. QC failures are returned, not raised
    (``on_fail="report"``): the caller decides.

    Returns:
        ``(result, reused)``.
    """
    found = load_preprocessed(
        writer, participant, session, grid=grid, skull_stripped=skull_stripped, seed=seed
    )
    if found is not None:
        return found, True
    result = _preprocess.preprocess_t1w(  # looked up at call time (tests replace it)
        session.t1w[0], grid=grid, skull_stripped=skull_stripped, seed=seed, work_dir=work_dir,
        on_fail="report",
    )  # fmt: skip
    if save and result.qc.get("passed") and grid == working_grid(grid.spacing_mm[0]):
        save_preprocessed(
            writer, participant, session, result, skull_stripped=skull_stripped, seed=seed
        )
    return result, False


__all__ = [
    "IMAGE_KEYS",
    "load_preprocessed",
    "preprocess_or_load",
    "preprocess_provenance",
    "qc_row",
    "save_preprocessed",
    "saved_qc_record",
]
