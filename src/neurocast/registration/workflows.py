"""Dataset-level registration steps: what ``neurocast preprocess`` and ``neurocast register`` run.

Each step takes a BIDS dataset and an output folder, runs one participant per task through
:func:`neurocast.io.batch.run_participants` (failures isolated and logged), writes BIDS derivatives
with provenance sidecars, and skips participants whose outputs are complete and were made from the
same inputs and settings (so an interrupted run resumes).

Example:
    >>> from neurocast.registration.workflows import preprocess_dataset  # doctest: +SKIP
    >>> summary, qc = preprocess_dataset("/data/study", "/data/derivatives/neurocast")  # doctest: +SKIP
    >>> summary.line()  # doctest: +SKIP
    'preprocess: 12 done, 0 skipped, 0 failed in 301.2 s'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from neurocast.io.batch import BatchSummary, Skipped, run_participants
from neurocast.io.bids import BIDSDataset, Participant, Session, discover
from neurocast.io.derivatives import DerivativesWriter

QC_COLUMNS = [
    "participant_id",
    "session_id",
    "source",
    "passed",
    "similarity",
    "mask_volume_ml",
    "skull_stripped",
    "reasons",
]


def _prefix(p: Participant, s: Session) -> str:
    return f"{p.participant_id}_{s.entity}" if s.label else p.participant_id


def _anat_dir(p: Participant, s: Session) -> str:
    return f"{p.participant_id}/{s.entity}/anat" if s.label else f"{p.participant_id}/anat"


def preprocess_session(
    participant: Participant,
    session: Session,
    writer: DerivativesWriter,
    *,
    grid_spacing_mm: float = 2.0,
    skull_stripped: bool | None = None,
    seed: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Preprocess the first T1w run of one session and write its derivatives.

    Returns:
        The session's QC row (see :data:`QC_COLUMNS`), with ``skipped`` True when complete
        outputs were found and reused.

    Raises:
        RegistrationFailedError: the registration failed its quality checks (the QC record is
            still written, with ``passed = false`` and the reasons).
    """
    from neurocast.registration.preprocess import preprocess_t1w
    from neurocast.registration.template import working_grid
    from neurocast.registration.transforms import write_ants_affine

    source = session.t1w[0]
    params = {
        "grid_spacing_mm": grid_spacing_mm,
        "skull_stripped": skull_stripped,
        "step": "preprocess",
    }
    prov = {"inputs": [source], "parameters": params, "seed": seed}
    prefix, folder = _prefix(participant, session), _anat_dir(participant, session)
    qc_rel = f"{folder}/{prefix}_desc-preproc_qc.json"
    if not force and writer.is_complete(qc_rel, **prov):
        import json

        record = json.loads(writer.path(qc_rel).read_text())
        return {**record["row"], "skipped": True}

    result = preprocess_t1w(
        source,
        grid=working_grid(grid_spacing_mm),
        skull_stripped=skull_stripped,
        seed=seed,
        work_dir=work_dir,
        on_fail="report",
    )
    qc = result.qc
    row = {
        "participant_id": participant.participant_id,
        "session_id": session.entity or "n/a",
        "source": str(source),
        "passed": bool(qc.get("passed")),
        "similarity": qc.get("similarity"),
        "mask_volume_ml": qc.get("mask_volume_ml"),
        "skull_stripped": result.skull_stripped,
        "reasons": "; ".join(qc.get("reasons", [])) or "n/a",
    }
    if row["passed"]:
        names = result.output_names(prefix)
        writer.write_nifti(f"{folder}/{names['image']}", result.image, **prov)
        writer.write_nifti(f"{folder}/{names['brain_mask']}", result.brain_mask, **prov)
        writer.write_nifti(f"{folder}/{names['native']}", result.native, **prov)
        writer.write_nifti(
            f"{folder}/{names['native_brain_mask']}", result.native_brain_mask, **prov
        )
        writer.write_with(
            f"{folder}/{names['xfm_to_template']}",
            lambda tmp: write_ants_affine(result.template_to_native, tmp),
            **prov,
        )
        writer.write_with(
            f"{folder}/{names['xfm_to_native']}",
            lambda tmp: write_ants_affine(result.native_to_template, tmp),
            **prov,
        )
    # the QC record is written last: its presence (with a matching hash) marks the session done
    writer.write_json(
        qc_rel, {"row": row, "qc": qc, "native_to_template": result.native_to_template}, **prov
    )
    if not row["passed"]:
        from neurocast.errors import RegistrationFailedError

        raise RegistrationFailedError(
            f"{source}: preprocessing failed its checks ({row['reasons']})"
        )
    return {**row, "skipped": False}


def _select(
    bids_dir: str | os.PathLike[str],
    participant_label: Iterable[str] | None,
    session_label: Iterable[str] | None,
) -> BIDSDataset:
    return discover(bids_dir, participant_label, session_label)


def preprocess_dataset(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    participant_label: Iterable[str] | None = None,
    session_label: Iterable[str] | None = None,
    grid_spacing_mm: float = 2.0,
    skull_stripped: bool | None = None,
    seed: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
    n_workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> tuple[BatchSummary, pd.DataFrame]:
    """Preprocess every selected T1w session of a BIDS dataset into ``output_dir``.

    Args:
        bids_dir: the BIDS dataset.
        output_dir: the derivatives folder (created).
        participant_label: participants to process (with or without ``sub-``); default all.
        session_label: sessions to process (with or without ``ses-``); default all.
        grid_spacing_mm: working-grid spacing of the template-space outputs.
        skull_stripped: say whether inputs are skull-stripped; ``None`` detects it per scan.
        seed: ANTs random seed.
        work_dir: parent folder of temporary files.
        n_workers: parallel participants (Dask local cluster when > 1).
        scheduler: address of an existing Dask scheduler.
        progress: show a progress bar.
        force: recompute even complete outputs.

    Returns:
        The batch summary and the QC table (one row per session; also written to
        ``output_dir/group_desc-preproc_qc.tsv``).
    """
    ds = _select(bids_dir, participant_label, session_label)
    writer = DerivativesWriter(output_dir, source_datasets=[str(Path(bids_dir).resolve())])
    by_label = {p.label: p for p in ds.participants}

    def one(label: str) -> list[dict[str, Any]]:
        p = by_label[label]
        rows = [
            preprocess_session(
                p,
                s,
                writer,
                grid_spacing_mm=grid_spacing_mm,
                skull_stripped=skull_stripped,
                seed=seed,
                work_dir=work_dir,
                force=force,
            )
            for s in p.sessions
        ]
        if all(r["skipped"] for r in rows):
            raise Skipped(rows)
        return rows

    summary = run_participants(
        list(by_label),
        one,
        output_dir,
        step="preprocess",
        n_workers=n_workers,
        scheduler=scheduler,
        progress=progress,
    )
    rows = [r for res in summary.results if res.status in ("done", "skipped") for r in res.value]
    qc = pd.DataFrame(rows, columns=QC_COLUMNS)
    if len(qc):
        writer.write_tsv(
            "group_desc-preproc_qc.tsv", qc, parameters={"step": "preprocess"}, seed=seed
        )
    return summary, qc
