"""Exceptions neurocast raises on purpose.

Every error that a user can meet names the file (or table, or option) and the problem, so that a
message in a batch log is enough to act on. The command line maps each family to an exit code
(see :data:`EXIT_CODES`).

Example:
    >>> from neurocast.errors import InvalidImageError
    >>> err = InvalidImageError("scan.nii.gz", "image is 4-D with 3 volumes")
    >>> str(err)
    'scan.nii.gz: image is 4-D with 3 volumes'
"""

from __future__ import annotations

import os


class NeurocastError(Exception):
    """Base class of every error neurocast raises on purpose."""

    exit_code = 1


class InputError(NeurocastError):
    """An input file or table cannot be used. ``path`` names it, ``problem`` says why."""

    exit_code = 65  # EX_DATAERR

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InvalidImageError(InputError):
    """A file is not a usable 3-D scan (wrong dimensionality, non-finite values, bad affine...)."""


class InvalidTableError(InputError):
    """A TSV/CSV table does not match its schema in ``data_specs``.

    ``problems`` lists every problem found, each a dict with ``column``, ``row`` (1-based data
    row, or ``None`` for whole-table problems), ``value`` and ``message``.
    """

    def __init__(self, path: str | os.PathLike[str] | None, problems: list[dict]) -> None:
        self.problems = problems
        lines = []
        for p in problems:
            where = [
                text
                for key, text in (
                    ("column", f"column {p.get('column')!r}"),
                    ("row", f"row {p.get('row')}"),
                    ("value", f"value {p.get('value')!r}"),
                )
                if p.get(key) is not None
            ]
            lines.append("  - " + (", ".join(where) + ": " if where else "") + p["message"])
        super().__init__(path, f"{len(problems)} problem(s) in table:\n" + "\n".join(lines))


class InvalidDatasetError(InputError):
    """A BIDS dataset cannot be processed (missing files, no T1w scans, bad layout)."""

    exit_code = 66  # EX_NOINPUT


class EmptySelectionError(NeurocastError):
    """Participant or session filters selected nothing."""

    exit_code = 67


class CheckpointError(NeurocastError):
    """A model checkpoint is missing, truncated, tampered with or unsafe (e.g. carries a pickle)."""

    exit_code = 68


class RegistrationFailedError(NeurocastError):
    """A registration ran but its quality checks failed (low similarity, implausible mask)."""

    exit_code = 69


class InsufficientMemoryError(NeurocastError):
    """A job would need more memory than the machine has free (e.g. a training batch too large).

    The message says how much it needs, how much is free, and what to change.
    """

    exit_code = 1


class OutputError(NeurocastError):
    """An output cannot be written (unwritable folder, path escaping the output folder).

    Raised as ``OutputError(path, problem)`` (message ``"<path>: <problem>"``) or with one message.
    """

    exit_code = 73  # EX_CANTCREAT

    def __init__(self, path: str | os.PathLike[str] | None, problem: str | None = None) -> None:
        if problem is None:  # one argument: the whole message
            self.path, self.problem = None, str(path)
        else:
            self.path = None if path is None else os.fspath(path)
            self.problem = problem
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "participant_failed": 3,
    "invalid_input": InputError.exit_code,
    "invalid_dataset": InvalidDatasetError.exit_code,
    "empty_selection": EmptySelectionError.exit_code,
    "checkpoint": CheckpointError.exit_code,
    "registration_failed": RegistrationFailedError.exit_code,
    "output": OutputError.exit_code,
}
"""Exit codes of the command line, by what happened."""
