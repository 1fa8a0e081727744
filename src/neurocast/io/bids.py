"""BIDS discovery: which participants, sessions and T1w scans a dataset holds.

:func:`discover` walks a BIDS dataset at the fixed depths BIDS defines (``sub-*/anat`` and
``sub-*/ses-*/anat``; it never recurses, so symlink loops cannot trap it), reads
``participants.tsv`` and each ``sub-*_sessions.tsv`` against their schemas in ``data_specs``, and
applies participant / session filters given with or without their ``sub-`` / ``ses-`` prefix, as
BIDS Apps accept. Problems that do not stop processing (a session without a T1w, a participant
missing from ``participants.tsv``) are collected as warnings on the result.

Example:
    >>> from neurocast.io.bids import discover  # doctest: +SKIP
    >>> ds = discover("/data/study", participant_label=["01", "sub-02"])  # doctest: +SKIP
    >>> [(p.label, [s.label for s in p.sessions]) for p in ds.participants]  # doctest: +SKIP
    [('01', ['bl', 'm12']), ('02', ['bl'])]
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from neurocast.errors import EmptySelectionError, InvalidDatasetError, InvalidTableError
from neurocast.io.tables import read_table

LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
T1W_RE = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)(_ses-(?P<ses>[A-Za-z0-9]+))?"
    r"(_acq-(?P<acq>[A-Za-z0-9]+))?(_ce-[A-Za-z0-9]+)?(_rec-(?P<rec>[A-Za-z0-9]+))?"
    r"(_run-(?P<run>[0-9]+))?_T1w\.nii(\.gz)?$"
)
COVARIATES = ("age", "sex", "diagnosis", "apoe4", "mmse")
"""Covariate columns read from participants.tsv (each may be missing)."""


def normalise_label(label: str, prefix: str) -> str:
    """Strip an optional BIDS prefix (``sub-``/``ses-``) and check the label is alphanumeric.

    Raises:
        ValueError: the label is empty or holds anything but letters and digits (which also
            rules out path traversal such as ``../``).
    """
    text = str(label).strip()
    if text.startswith(f"{prefix}-"):
        text = text[len(prefix) + 1 :]
    if not LABEL_RE.match(text):
        raise ValueError(
            f"invalid {prefix} label {label!r}: BIDS labels hold only letters and digits"
        )
    return text


@dataclass
class Session:
    """One visit of a participant.

    Attributes:
        label: session label without ``ses-`` (``None`` in a dataset without sessions).
        t1w: T1w scans of the visit (usually one; several runs are kept in order).
        time_years: time since the participant's first visit in years, where known.
        age: age at the visit in years, where known.
        info: the visit's row of ``sessions.tsv`` (typed), or an empty dict.
    """

    label: str | None
    t1w: list[Path]
    time_years: float | None = None
    age: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def entity(self) -> str:
        """``ses-<label>`` or an empty string for datasets without sessions."""
        return f"ses-{self.label}" if self.label else ""


@dataclass
class Participant:
    """One participant: label (without ``sub-``), sessions in time order, covariates."""

    label: str
    sessions: list[Session]
    covariates: dict[str, Any] = field(default_factory=dict)

    @property
    def participant_id(self) -> str:
        """``sub-<label>``."""
        return f"sub-{self.label}"


def file_prefix(participant: Participant, session: Session) -> str:
    """The BIDS file-name prefix of a participant's session.

    Example:
        >>> file_prefix(Participant("01", []), Session("bl", []))
        'sub-01_ses-bl'
        >>> file_prefix(Participant("01", []), Session(None, []))
        'sub-01'
    """
    sub = participant.participant_id
    return f"{sub}_{session.entity}" if session.label else sub


def anat_folder(participant: Participant, session: Session) -> str:
    """The session's ``anat`` folder, relative to a dataset's (or derivatives') root.

    Example:
        >>> anat_folder(Participant("01", []), Session("bl", []))
        'sub-01/ses-bl/anat'
    """
    sub = participant.participant_id
    return f"{sub}/{session.entity}/anat" if session.label else f"{sub}/anat"


@dataclass
class BIDSDataset:
    """What :func:`discover` found: the participants to process and the warnings met on the way."""

    root: Path
    participants: list[Participant]
    participants_table: pd.DataFrame | None
    warnings: list[str] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def n_scans(self) -> int:
        """Number of T1w scans selected."""
        return sum(len(s.t1w) for p in self.participants for s in p.sessions)

    def participant(self, label: str) -> Participant:
        """The participant with this label (with or without ``sub-``)."""
        label = normalise_label(label, "sub")
        for p in self.participants:
            if p.label == label:
                return p
        raise KeyError(f"sub-{label} is not among the selected participants")


def _listdir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, False for symlink loops and unreadable entries (never raises)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _find_t1w(anat: Path, sub: str, ses: str | None, warnings: list[str]) -> list[Path]:
    found = []
    for entry in _listdir(anat):
        m = T1W_RE.match(entry.name)
        if not m:
            continue
        if m["sub"] != sub or (m["ses"] or None) != ses:
            warnings.append(f"{anat / entry.name}: file name does not match its folder; ignored")
            continue
        try:
            is_file = entry.is_file()
        except OSError:  # a symlink loop
            is_file = False
        if not is_file:  # broken symlink, folder, loop
            warnings.append(f"{anat / entry.name}: not a readable file; ignored")
            continue
        found.append(anat / entry.name)
    return found


def _parse_date(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace(" ", "T"))


def _known(value: Any) -> Any:
    """``None`` for a missing cell: pandas turns the ``None`` of a numeric column into NaN."""
    return None if isinstance(value, float) and value != value else value


def _visit_times(sessions: list[Session]) -> None:
    """Fill ``time_years`` from acq_time (preferred) or age; sort sessions by time."""
    dates = [s.info.get("acq_time") for s in sessions]
    if sessions and all(dates):
        parsed = [_parse_date(d) for d in dates]  # type: ignore[arg-type]
        t0 = min(parsed)
        for s, d in zip(sessions, parsed, strict=True):
            s.time_years = (d - t0).total_seconds() / (365.25 * 86400)
    ages = [s.info.get("age") for s in sessions]
    if sessions and all(a is not None for a in ages):
        a0 = min(ages)  # type: ignore[type-var]
        for s, a in zip(sessions, ages, strict=True):
            s.age = float(a)  # type: ignore[arg-type]
            if s.time_years is None:
                s.time_years = float(a) - float(a0)  # type: ignore[arg-type]
    if all(s.time_years is not None for s in sessions):
        sessions.sort(key=lambda s: (s.time_years, s.label or ""))


def discover(
    bids_dir: str | os.PathLike[str],
    participant_label: Iterable[str] | None = None,
    session_label: Iterable[str] | None = None,
) -> BIDSDataset:
    """Find the participants, sessions and T1w scans of a BIDS dataset.

    Args:
        bids_dir: the dataset's root folder.
        participant_label: keep only these participants (``"01"`` or ``"sub-01"``).
        session_label: keep only these sessions (``"bl"`` or ``"ses-bl"``).

    Returns:
        A :class:`BIDSDataset`; participants sorted by label, sessions in time order where
        ``sessions.tsv`` gives times (else by label). Participants without any T1w are dropped
        with a warning.

    Raises:
        InvalidDatasetError: the folder does not exist or holds no ``sub-*`` folder.
        InvalidTableError: ``participants.tsv`` or a ``sessions.tsv`` breaks its schema.
        EmptySelectionError: a requested label does not exist, or nothing is left to process.
        ValueError: a label is not a valid BIDS label (e.g. contains ``/`` or ``..``).
    """
    root = Path(bids_dir)
    if not root.exists():
        raise InvalidDatasetError(root, "BIDS folder does not exist")
    if not root.is_dir():
        raise InvalidDatasetError(root, "BIDS path is not a folder")
    warnings: list[str] = []
    description: dict[str, Any] = {}
    desc_path = root / "dataset_description.json"
    if desc_path.is_file():
        import json

        try:
            description = json.loads(desc_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            warnings.append(f"{desc_path}: not valid JSON ({exc}); ignored")
    else:
        warnings.append(f"{desc_path}: missing (BIDS requires it); continuing")

    subs_wanted = (
        None
        if participant_label is None
        else [normalise_label(x, "sub") for x in participant_label]
    )
    sess_wanted = (
        None if session_label is None else [normalise_label(x, "ses") for x in session_label]
    )

    sub_dirs: dict[str, Path] = {}
    for e in _listdir(root):
        if not e.name.startswith("sub-"):
            continue
        if not _is_dir(e):
            if e.is_symlink():
                warnings.append(f"{e.path}: symlink to no readable folder (a loop?); ignored")
        elif not LABEL_RE.match(e.name[4:]):
            warnings.append(
                f"{os.fspath(root / e.name)!r}: not a valid BIDS participant folder (the label "
                "may hold only letters and digits); ignored"
            )
        else:
            sub_dirs[e.name[4:]] = Path(e.path)
    if not sub_dirs:
        raise InvalidDatasetError(root, "no sub-<label> folders found: is this a BIDS dataset?")

    ptable = None
    covariates: dict[str, dict[str, Any]] = {}
    ppath = root / "participants.tsv"
    if ppath.is_file():
        ptable = read_table(ppath, "participants")
        for rec in ptable.to_dict(orient="records"):
            label = rec["participant_id"][4:]
            covariates[label] = {k: _known(rec.get(k)) for k in COVARIATES}
        for label in sorted(set(covariates) - set(sub_dirs)):
            warnings.append(f"{ppath}: sub-{label} is listed but has no folder")
    else:
        warnings.append(
            f"{ppath}: missing; covariates (age, sex, diagnosis, apoe4, mmse) are unknown"
        )

    if subs_wanted is not None:
        missing = [s for s in subs_wanted if s not in sub_dirs]
        if missing:
            raise EmptySelectionError(
                "participant(s) not found in "
                f"{root}: {', '.join('sub-' + m for m in missing)}; available: "
                f"{', '.join('sub-' + s for s in sorted(sub_dirs)[:20])}"
            )

    participants: list[Participant] = []
    found_sessions: set[str] = set()
    for label, sdir in sorted(sub_dirs.items()):
        if subs_wanted is not None and label not in subs_wanted:
            continue
        if ptable is not None and label not in covariates:
            warnings.append(f"{ppath}: sub-{label} has a folder but no row; covariates unknown")
        ses_dirs = [
            e
            for e in _listdir(sdir)
            if e.name.startswith("ses-") and _is_dir(e) and LABEL_RE.match(e.name[4:])
        ]
        sessions: list[Session] = []
        if ses_dirs:
            for e in ses_dirs:
                ses = e.name[4:]
                found_sessions.add(ses)
                t1w = _find_t1w(Path(e.path) / "anat", label, ses, warnings)
                if not t1w:
                    warnings.append(f"{e.path}: session has no T1w scan; skipped")
                    continue
                sessions.append(Session(ses, t1w))
        else:
            t1w = _find_t1w(sdir / "anat", label, None, warnings)
            if t1w:
                sessions.append(Session(None, t1w))
        spath = sdir / f"sub-{label}_sessions.tsv"
        if spath.is_file() and ses_dirs:
            stable = read_table(spath, "sessions")
            rows = {
                r["session_id"][4:]: {k: _known(v) for k, v in r.items()}
                for r in stable.to_dict(orient="records")
            }
            for s in sessions:
                if s.label in rows:
                    s.info = rows[s.label]
                else:
                    warnings.append(f"{spath}: no row for ses-{s.label}; its time is unknown")
        try:
            _visit_times(sessions)
        except ValueError as exc:
            raise InvalidTableError(
                spath, [{"column": "acq_time", "message": f"bad date ({exc})"}]
            ) from exc
        if spath.is_file() and ses_dirs and any(s.time_years is None for s in sessions):
            warnings.append(
                f"{spath}: visit times unknown (every session needs acq_time or age); "
                "sessions kept in label order"
            )
        if sess_wanted is not None:
            sessions = [s for s in sessions if s.label in sess_wanted]
        if not sessions:
            if sess_wanted is None:
                warnings.append(f"{sdir}: no T1w scan found; participant skipped")
            continue
        participants.append(Participant(label, sessions, covariates.get(label, {})))

    if sess_wanted is not None:
        missing = [s for s in sess_wanted if s not in found_sessions]
        if missing:
            raise EmptySelectionError(
                f"session(s) not found in {root}: {', '.join('ses-' + m for m in missing)}"
            )
    if not participants:
        raise EmptySelectionError(f"{root}: the selection holds no participant with a T1w scan")
    return BIDSDataset(root, participants, ptable, warnings, description)
