"""Options shared by every command, so that they read the same everywhere (BIDS-App style)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

F = Callable[..., Any]


def _split_labels(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[str] | None:
    from neurocast.io.bids import normalise_label

    labels = [x for v in value for x in v.replace(",", " ").split() if x]
    prefix = "ses" if param.name == "session_label" else "sub"
    for label in labels:  # refuse '../x', '<script>' and the like before anything runs
        try:
            normalise_label(label, prefix)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
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
        help="Threads for ANTs/ITK and torch per task (default 1: ITK with more threads is "
        "faster but not bit-reproducible).",
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


def execution_options(f: F) -> F:
    """``--work-dir``, ``--n-workers``, ``--dask-scheduler``, ``--force``."""
    f = click.option(
        "--force", is_flag=True, help="Recompute outputs even where complete ones exist."
    )(f)
    f = click.option(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="Send participants to an existing Dask scheduler (e.g. tcp://host:8786).",
    )(f)
    f = click.option(
        "--n-workers",
        type=click.IntRange(1, 1024),
        default=1,
        show_default=True,
        help="Participants processed in parallel (a local Dask cluster when > 1).",
    )(f)
    return click.option(
        "--work-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder for temporary files (default: the system's temporary folder).",
    )(f)


def bids_app_arguments(f: F) -> F:
    """``BIDS_DIR OUTPUT_DIR {participant,group}``."""
    f = analysis_level(f)
    f = click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))(f)
    return click.argument("bids_dir", type=click.Path(path_type=Path))(f)


def setup_run(output_dir: Path, n_threads: int | None, quiet: bool, verbose: bool) -> None:
    """Thread counts, and logging to the terminal and to ``OUTPUT_DIR/logs/neurocast.log``."""
    import logging

    from neurocast.errors import OutputError
    from neurocast.registration.threads import set_threads

    set_threads(n_threads or 1)
    log_dir = output_dir / "logs"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        if output_dir.resolve() not in log_dir.resolve().parents:
            raise OutputError(log_dir, "logs folder is a link out of the output folder")
        fh = logging.FileHandler(log_dir / "neurocast.log", encoding="utf-8")
    except OSError as exc:
        raise OutputError(
            output_dir, f"cannot write the output folder ({exc.strerror or exc})"
        ) from exc
    logger = logging.getLogger("neurocast")
    logger.setLevel(logging.DEBUG)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh.setLevel(logging.DEBUG)
    sh = logging.StreamHandler()
    sh.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    sh.setLevel(logging.ERROR if quiet else (logging.DEBUG if verbose else logging.WARNING))
    logger.addHandler(fh)
    logger.addHandler(sh)


def finish(summary: Any) -> None:
    """Print a batch summary and exit 3 when a participant failed."""
    import sys

    click.echo(summary.line())
    if summary.n_failed:
        click.secho(
            f"{summary.n_failed} participant(s) failed: see logs/failures.tsv", fg="red", err=True
        )
        sys.exit(3)
