"""``neurocast preprocess`` and ``neurocast register``: registration over a BIDS dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from neurocast.cli.options import (
    bids_app_arguments,
    execution_options,
    finish,
    participant_filters,
    seed_option,
    setup_run,
    threads_option,
    verbosity_options,
)


def _grid_option(more: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--grid-spacing-mm`` option, its help followed by ``more``."""
    return click.option(
        "--grid-spacing-mm",
        type=click.FloatRange(1.0, 8.0),
        default=2.0,
        show_default=True,
        help="Voxel size of the template-space working grid." + more,
    )


@click.command()
@bids_app_arguments
@participant_filters
@_grid_option()
@click.option(
    "--skull-stripped/--whole-head",
    default=None,
    help="Say whether inputs are skull-stripped (default: detected per scan).",
)
@seed_option
@threads_option
@execution_options
@verbosity_options
def preprocess(
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    participant_label: list[str] | None,
    session_label: list[str] | None,
    grid_spacing_mm: float,
    skull_stripped: bool | None,
    seed: int,
    n_threads: int | None,
    work_dir: Path | None,
    n_workers: int,
    dask_scheduler: str | None,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Preprocess T1w scans: N4, affine to MNI152NLin2009aSym, brain mask, normalisation.

    Writes per session the preprocessed image and brain mask (template and native space), the
    transforms both ways (ANTs .mat) and a QC record; at group level the QC table
    group_desc-preproc_qc.tsv. A scan whose registration fails its checks is reported as failed.
    """
    from neurocast.registration.workflows import preprocess_dataset

    setup_run(output_dir, n_threads, quiet, verbose)
    summary, qc = preprocess_dataset(
        bids_dir,
        output_dir,
        participant_label=participant_label,
        session_label=session_label,
        grid_spacing_mm=grid_spacing_mm,
        skull_stripped=skull_stripped,
        seed=seed,
        work_dir=work_dir,
        n_workers=n_workers,
        scheduler=dask_scheduler,
        progress=not quiet,
        force=force,
    )
    if len(qc) and not quiet:
        click.echo(
            qc[
                ["participant_id", "session_id", "passed", "similarity", "mask_volume_ml"]
            ].to_string(index=False)
        )
    finish(summary)


@click.command()
@bids_app_arguments
@participant_filters
@_grid_option(
    " 1 measures the change of small structures closer to the truth than 2 (mean hippocampal"
    " error 10.1 % of the true change against 12.2 % on six simulated cohorts), at about twice"
    " the time (benchmarks/simulate_truth_check.md)."
)
@click.option(
    "--field-spacing-mm",
    type=click.FloatRange(2.0, 16.0),
    default=4.0,
    show_default=True,
    help="Voxel size of the velocity-field grid (a multiple of --grid-spacing-mm).",
)
@click.option(
    "--regularization",
    type=click.FloatRange(0.0, 100.0),
    default=0.01,
    show_default=True,
    help="Bending weight of the velocity fit. The default is tuned for regional volume change; "
    "0.3 gives smoother voxel-wise Jacobian maps but shrinks the change of small structures. "
    "The fit's similarity window is 8 mm on any --grid-spacing-mm.",
)
@click.option(
    "--atlas-labels",
    type=click.Choice(["subject", "template"]),
    default="subject",
    show_default=True,
    help="Regions for the regional volume change: the atlas fitted to each participant's "
    "baseline (affine + SyN, about 20 s more per participant), or the template atlas as it is.",
)
@click.option("--skull-stripped/--whole-head", default=None, help="Default: detected per scan.")
@seed_option
@threads_option
@execution_options
@verbosity_options
def register(
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    participant_label: list[str] | None,
    session_label: list[str] | None,
    grid_spacing_mm: float,
    field_spacing_mm: float,
    regularization: float,
    atlas_labels: str,
    skull_stripped: bool | None,
    seed: int,
    n_threads: int | None,
    work_dir: Path | None,
    n_workers: int,
    dask_scheduler: str | None,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Align all sessions of each participant and measure change from the baseline.

    Writes per visit the aligned image, mask and transform; per follow-up the stationary velocity
    field, the Jacobian (volume change) map and the regional volume change on the default atlas,
    fitted to the participant's baseline (written as its atlas-neurocast_desc-subject dseg).
    """
    from neurocast.registration.workflows import register_dataset

    setup_run(output_dir, n_threads, quiet, verbose)
    summary = register_dataset(
        bids_dir, output_dir, participant_label=participant_label, session_label=session_label,
        grid_spacing_mm=grid_spacing_mm, field_spacing_mm=field_spacing_mm,
        regularization=regularization, atlas_labels=atlas_labels,
        skull_stripped=skull_stripped, seed=seed,
        work_dir=work_dir, n_workers=n_workers,
        scheduler=dask_scheduler, progress=not quiet, force=force,
    )  # fmt: skip
    finish(summary)
