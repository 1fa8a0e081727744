"""Dataset validation: what neurocast will use from a BIDS dataset, and every problem found.

Example:
    >>> from neurocast.io.validate import validate_dataset  # doctest: +SKIP
    >>> report = validate_dataset("/data/study")  # doctest: +SKIP
    >>> report.ok, len(report.errors)  # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from neurocast.errors import InputError, NeurocastError
from neurocast.io.bids import BIDSDataset, discover
from neurocast.io.nifti import load_image, read_info


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`.

    Attributes:
        root: the dataset folder.
        dataset: the discovered dataset (``None`` if discovery itself failed).
        scans: one row per T1w scan: participant, session, path, shape, voxel size, status.
        errors: problems that stop processing of the dataset or of a scan.
        warnings: problems neurocast works around.
        exit_code: 0 if the dataset can be processed, else the code of the first fatal error.
    """

    root: Path
    dataset: BIDSDataset | None
    scans: pd.DataFrame
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        """True when every selected scan is usable and the tables are valid."""
        return not self.errors


def validate_dataset(
    bids_dir: str | os.PathLike[str],
    participant_label: Iterable[str] | None = None,
    session_label: Iterable[str] | None = None,
    deep: bool = False,
) -> ValidationReport:
    """Check a BIDS dataset the way every neurocast command will read it.

    Args:
        bids_dir: the dataset's root folder.
        participant_label: restrict to these participants (with or without ``sub-``).
        session_label: restrict to these sessions (with or without ``ses-``).
        deep: also read every voxel (finds NaN/Inf, constant and truncated images; slower).
            Without it only headers are read.

    Returns:
        A :class:`ValidationReport`; it never raises for problems in the data.
    """
    root = Path(bids_dir)
    cols = ["participant_id", "session_id", "path", "shape", "voxel_size_mm", "status"]
    try:
        ds = discover(root, participant_label, session_label)
    except NeurocastError as exc:
        return ValidationReport(
            root, None, pd.DataFrame(columns=cols), [str(exc)], [], exc.exit_code
        )
    except ValueError as exc:  # invalid label
        return ValidationReport(root, None, pd.DataFrame(columns=cols), [str(exc)], [], 2)
    rows, errors = [], []
    exit_code = 0
    for p in ds.participants:
        for s in p.sessions:
            for path in s.t1w:
                row = {
                    "participant_id": p.participant_id,
                    "session_id": s.entity or "n/a",
                    "path": str(path),
                }
                try:
                    info = read_info(path)
                    if deep:
                        load_image(path)
                    row.update(
                        shape="x".join(map(str, info.shape)),
                        voxel_size_mm="x".join(f"{v:.2f}" for v in info.voxel_size_mm),
                        status="ok",
                    )
                except InputError as exc:
                    errors.append(str(exc))
                    exit_code = exit_code or exc.exit_code
                    row.update(shape="n/a", voxel_size_mm="n/a", status=f"error: {exc.problem}")
                rows.append(row)
    return ValidationReport(
        root, ds, pd.DataFrame(rows, columns=cols), errors, list(ds.warnings), exit_code
    )
