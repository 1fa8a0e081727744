"""Helpers for tests: tiny synthetic scans and BIDS trees (imported as ``nc_testutils``)."""

from __future__ import annotations

from pathlib import Path


def write_small_t1w(path: Path, seed: int = 0, shape: tuple[int, int, int] = (12, 14, 10)) -> Path:
    """Write a tiny synthetic T1w-like NIfTI (a bright ellipsoid on a dark background)."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    data = (np.sum(grid**2, axis=0) < 0.6).astype(np.float32) * 100 + rng.normal(0, 2, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def make_bids(
    root: Path,
    subjects: dict[str, list[str] | None],
    participants_tsv: str | None = "default",
    sessions_tsv: bool = True,
) -> Path:
    """Build a tiny BIDS dataset.

    Args:
        root: dataset folder.
        subjects: label -> list of session labels (or ``None`` for a dataset without sessions).
        participants_tsv: table text, ``"default"`` for a valid one, ``None`` for none.
        sessions_tsv: write a sessions.tsv with ages for each subject with sessions.
    """
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.9.0"})
    )
    for i, (sub, sessions) in enumerate(sorted(subjects.items())):
        if sessions is None:
            write_small_t1w(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz", seed=i)
            continue
        for j, ses in enumerate(sessions):
            write_small_t1w(
                root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz",
                seed=10 * i + j,
            )
        if sessions_tsv:
            rows = "".join(f"ses-{ses}\t{70 + j * 1.5}\n" for j, ses in enumerate(sessions))
            (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text("session_id\tage\n" + rows)
    if participants_tsv == "default":
        rows = "".join(
            f"sub-{s}\t{70 + k}\t{'MF'[k % 2]}\t{['CN', 'MCI', 'AD'][k % 3]}\t{k % 3}\t{28 - k}\n"
            for k, s in enumerate(sorted(subjects))
        )
        participants_tsv = "participant_id\tage\tsex\tdiagnosis\tapoe4\tmmse\n" + rows
    if participants_tsv is not None:
        (root / "participants.tsv").write_text(participants_tsv)
    return root
