"""``neurocast cohort`` and ``neurocast survival``: group-level analyses of an output folder."""

from __future__ import annotations

from pathlib import Path

import click

from neurocast.cli.options import seed_option


def _level(f):
    return click.argument("analysis_level", type=click.Choice(["group"]))(f)


@click.command()
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_level
@click.option(
    "--bids-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Source dataset for covariates (default: from dataset_description.json).",
)
@click.option(
    "--band",
    type=click.FloatRange(0.5, 0.99),
    default=0.9,
    show_default=True,
    help="Width of the bands.",
)
def cohort(output_dir: Path, analysis_level: str, bids_dir: Path | None, band: float) -> None:
    """Gather forecasts and measured volumes of OUTPUT_DIR into cohort arrays, tables and figures.

    Writes OUTPUT_DIR/group/cohort/: cohort_forecasts.nc/.tsv, cohort_observed.nc/.tsv,
    group summaries by diagnosis, sex and APOE4 with bands, trajectory figures and an HTML section.
    """
    from neurocast.progress.analysis import cohort_report

    report = cohort_report(output_dir, bids_dir=bids_dir, band=band)
    for note in report.notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    for key, path in sorted(report.paths.items()):
        click.echo(f"{key}: {path}")


@click.command()
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_level
@click.option(
    "--event", default="MCI->AD", show_default=True, help="Transition, e.g. MCI->AD or CN->MCI."
)
@click.option(
    "--events-table",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A ready events table (see data_specs/conversion_events.schema.json) instead of sessions.tsv.",
)
@click.option(
    "--features", default=None, help="Comma-separated covariate columns (default: all usable)."
)
@click.option(
    "--bids-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Source dataset (default: from dataset_description.json).",
)
@click.option(
    "--folds",
    type=click.IntRange(2, 20),
    default=5,
    show_default=True,
    help="Cross-validation folds.",
)
@seed_option
def survival(
    output_dir: Path,
    analysis_level: str,
    event: str,
    events_table: Path | None,
    features: str | None,
    bids_dir: Path | None,
    folds: int,
    seed: int,
) -> None:
    """Time to conversion: Kaplan-Meier, Cox and Weibull AFT models, cross-validated C-index.

    Events come from the per-visit diagnoses in sessions.tsv (or --events-table). Forecast-derived
    features are added where forecasts exist in OUTPUT_DIR. Writes OUTPUT_DIR/group/survival/.
    """
    from neurocast.progress.analysis import survival_analysis

    feats = [f.strip() for f in features.split(",") if f.strip()] if features else None
    report = survival_analysis(
        output_dir,
        bids_dir=bids_dir,
        event=event,
        events_table=events_table,
        features=feats,
        k=folds,
        seed=seed,
    )
    for note in report.notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    if report.concordance is not None:
        click.echo(report.concordance.to_string(index=False))
    for key, path in sorted(report.paths.items()):
        click.echo(f"{key}: {path}")
