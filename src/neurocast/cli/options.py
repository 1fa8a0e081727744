"""Options shared by every command, so that they read the same everywhere (BIDS-App style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def _split_labels(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[str] | None:
    labels = [x for v in value for x in v.replace(",", " ").split() if x]
    return labels or None


def participant_filters(f: F) -> F:
    """``--participant-label`` and ``--session-label`` (repeatable, space/comma separated)."""
    f = click.option(
        "--session-label",
        multiple=True,
        callback=_split_labels,
        help="Sessions to process, with or without 'ses-' (default: all).",
    )(f)
    return click.option(
        "--participant-label",
        multiple=True,
        callback=_split_labels,
        help="Participants to process, with or without 'sub-' (default: all).",
    )(f)


def seed_option(f: F) -> F:
    """``--seed``: same input, seed and machine give the same output."""
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def threads_option(f: F) -> F:
    """``--n-threads``: threads for ITK (ANTs) and torch."""
    return click.option(
        "--n-threads",
        type=click.IntRange(1, 256),
        default=None,
        help="Threads for ANTs/ITK and torch (default: all cores).",
    )(f)


def verbosity_options(f: F) -> F:
    """``--quiet`` and ``--verbose``."""
    f = click.option("-v", "--verbose", is_flag=True, help="Print more detail.")(f)
    return click.option(
        "-q", "--quiet", is_flag=True, help="Print only errors and the final summary."
    )(f)


def analysis_level(f: F) -> F:
    """The BIDS-App positional ``{participant,group}`` argument."""
    return click.argument("analysis_level", type=click.Choice(["participant", "group"]))(f)
