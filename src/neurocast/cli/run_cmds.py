"""``neurocast run`` (a whole study, BIDS to reports) and ``neurocast demo``: thin wrappers over
:mod:`neurocast.pipeline`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from neurocast.cli.options import (
    bids_app_arguments,
    participant_filters,
    seed_option,
    setup_run,
    threads_option,
    verbosity_options,
)


def _steps(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from neurocast.pipeline.steps import check_steps
    from neurocast.pipeline.study import DEFAULT_STEPS

    if value is None:
        return DEFAULT_STEPS  # all steps; a model step without a model is left out with a note
    try:
        return check_steps(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _labels(labels: list[str] | None, prefix: str, option: str) -> list[str] | None:
    from neurocast.io.bids import normalise_label

    if labels is None:
        return None
    try:
        return [normalise_label(x, prefix) for x in labels]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


def _horizons(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        hs = tuple(float(x) for x in value.replace(",", " ").split())
    except ValueError as exc:
        raise click.BadParameter(f"horizons must be numbers of years, got {value!r}") from exc
    if not hs or any(h <= 0 for h in hs):
        raise click.BadParameter(f"horizons must be positive numbers of years, got {value!r}")
    return hs


def _memory(ctx: click.Context, param: click.Parameter, value: str | None) -> str | int | None:
    if value is None:
        return None
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(value))
    except ValueError as exc:
        raise click.BadParameter(f"not a memory size (e.g. 4GB): {value!r}") from exc


@click.command()
@bids_app_arguments
@participant_filters
@click.option(
    "--steps", default=None, callback=_steps,
    help="Comma-separated steps, run in this order: preprocess, register, forecast, qa (default: "
    "all; forecast/qa are left out, with a note, when no model is given or shipped).",
)  # fmt: skip
@click.option(
    "--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
    help="Forecasting model (a checkpoint folder; default: the shipped one).",
)  # fmt: skip
@click.option(
    "--anomaly-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
    help="Anomaly (QA) model (a checkpoint folder; default: the shipped one).",
)  # fmt: skip
@click.option(
    "--horizons", default="1,2,5", show_default=True, callback=_horizons,
    help="Forecast horizons in years, comma-separated.",
)  # fmt: skip
@click.option(
    "--n-samples", type=click.IntRange(1, 256), default=8, show_default=True,
    help="Forecast samples per participant (their spread is the uncertainty).",
)  # fmt: skip
@seed_option
@threads_option
@click.option(
    "--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder for temporary files (default: the system's temporary folder).",
)  # fmt: skip
@click.option(
    "--n-workers", type=click.IntRange(1, 1024), default=None,
    help="Participants processed in parallel on a local Dask cluster (default: one per CPU, "
    "fewer where memory is short; 1 runs in this process).",
)  # fmt: skip
@click.option(
    "--threads-per-worker", type=click.IntRange(1, 256), default=None,
    help="ANTs/ITK and torch threads of each worker (default: --n-threads, else 1, which keeps "
    "reruns bit-identical).",
)  # fmt: skip
@click.option(
    "--memory-limit", default=None, callback=_memory, metavar="SIZE",
    help="Memory of each local worker, e.g. 4GB (default: the machine's memory shared out).",
)  # fmt: skip
@click.option(
    "--dask-scheduler", default=None, metavar="ADDRESS",
    help="Send participants to an existing Dask scheduler (e.g. tcp://host:8786, or a SLURM "
    "cluster started with dask-jobqueue).",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Recompute outputs even where complete ones exist.")
@verbosity_options
def run(
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    participant_label: list[str] | None,
    session_label: list[str] | None,
    steps: list[str],
    model: Path | None,
    anomaly_model: Path | None,
    horizons: tuple[float, ...],
    n_samples: int,
    seed: int,
    n_threads: int | None,
    work_dir: Path | None,
    n_workers: int | None,
    threads_per_worker: int | None,
    memory_limit: int | None,
    dask_scheduler: str | None,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Run a whole study: preprocess, register, forecast and QA every participant, then reports.

    At the participant level the steps run in order over every selected participant (each one a
    task: on a local Dask cluster sized to the machine by default, or on --dask-scheduler), and
    OUTPUT_DIR/index.html links a page per participant. At the group level the cohort and survival
    analyses run on the forecasts in OUTPUT_DIR. A participant that fails is logged
    (logs/failures.tsv) and the others finish (exit code 3); a rerun skips complete outputs.
    """
    from neurocast.pipeline import run_study

    plabels = _labels(participant_label, "sub", "--participant-label")
    slabels = _labels(session_label, "ses", "--session-label")
    setup_run(output_dir, n_threads, quiet, verbose)
    summary = run_study(
        bids_dir, output_dir, analysis_level, steps=steps, participant_label=plabels,
        session_label=slabels, model=model, anomaly_model=anomaly_model, horizons=horizons,
        n_samples=n_samples, seed=seed, work_dir=work_dir, n_workers=n_workers,
        threads_per_worker=threads_per_worker or n_threads, memory_limit=memory_limit,
        scheduler=dask_scheduler, progress=not quiet, force=force,
    )  # fmt: skip
    for line in summary.lines():
        click.echo(line)
    if summary.index is not None:
        click.echo(f"report: {summary.index}")
    if summary.n_failed:
        who = ", ".join(f"sub-{x}" for x in summary.failed_participants)
        click.secho(
            f"{len(summary.failed_participants)} participant(s) failed ({who}): "
            "see logs/failures.tsv",
            fg="red", err=True,
        )  # fmt: skip
    sys.exit(summary.exit_code)


@click.command()
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--n-subjects", type=click.IntRange(1, 100), default=4, show_default=True,
    help="Simulated subjects (two visits each).",
)  # fmt: skip
@seed_option
@click.option(
    "--n-workers", type=click.IntRange(1, 1024), default=None,
    help="Participants in parallel (default: one per CPU).",
)  # fmt: skip
@verbosity_options
def demo(
    output_dir: Path, n_subjects: int, seed: int, n_workers: int | None, quiet: bool, verbose: bool
) -> None:
    """Simulate a small cohort into OUTPUT_DIR/bids, run every step on it, write the reports.

    The outputs go to OUTPUT_DIR/derivatives; open OUTPUT_DIR/derivatives/index.html in a browser.
    Steps whose shipped model is not available in this installation are left out with a note.
    """
    from neurocast.pipeline import run_demo

    setup_run(output_dir / "derivatives", None, quiet, verbose)
    result = run_demo(
        output_dir, n_subjects=n_subjects, seed=seed, progress=not quiet, n_workers=n_workers,
        echo=lambda s: click.echo(s, err=True),
    )  # fmt: skip
    click.secho(f"open {result.index.as_uri()} in a browser", fg="green")
    sys.exit(result.summary.exit_code)
