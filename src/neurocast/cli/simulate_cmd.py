"""``neurocast simulate``: write a synthetic longitudinal cohort with its ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import click

from neurocast.cli.options import seed_option


def _proportions(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, float] | None:
    if value is None:
        return None
    out: dict[str, float] = {}
    for part in value.split(","):
        key, _, num = part.partition("=")
        key = key.strip().upper()
        if key not in ("CN", "MCI", "AD") or not num:
            raise click.BadParameter(f"expected e.g. CN=0.4,MCI=0.4,AD=0.2, got {value!r}")
        try:
            out[key] = float(num)
        except ValueError as exc:
            raise click.BadParameter(f"{num!r} is not a number") from exc
    if any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise click.BadParameter("proportions must be non-negative and not all zero")
    return out


@click.command()
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-subjects", type=click.IntRange(1, 100_000), default=10, show_default=True)
@seed_option
@click.option(
    "--proportions",
    callback=_proportions,
    help="Baseline diagnosis mix as weights, e.g. CN=0.4,MCI=0.4,AD=0.2 (the default); they are "
    "normalised to sum to 1, and a group not named gets none.",
)
@click.option(
    "--visits",
    type=(int, int),
    default=None,
    help="Fewest and most visits per subject (default 2 5).",
)
@click.option(
    "--max-followup-years",
    type=click.FloatRange(0.1, 20),
    default=None,
    help="Last possible visit (default 5).",
)
@click.option(
    "--grid-spacing-mm",
    type=click.FloatRange(1, 8),
    default=None,
    help="Template-space grid of the truth maps (default 2).",
)
@click.option(
    "--base-scans",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of real T1w scans to use as subject anatomy (e.g. healthy IXI scans).",
)
@click.option(
    "--tumour-fraction",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of subjects with a growing tumour (default 0).",
)
@click.option(
    "--artefact-fraction",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of visits with a motion artefact (default 0).",
)
@click.option(
    "--skull-stripped-fraction",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of subjects whose scans are skull-stripped.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file with any SimulationConfig fields (options given here override it).",
)
@click.option(
    "--n-jobs", type=click.IntRange(1, 256), default=None, help="Parallel processes (default 1)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def simulate(
    output_dir: Path,
    n_subjects: int,
    seed: int,
    proportions: dict[str, float] | None,
    visits: tuple[int, int] | None,
    max_followup_years: float | None,
    grid_spacing_mm: float | None,
    base_scans: Path | None,
    tumour_fraction: float | None,
    artefact_fraction: float | None,
    skull_stripped_fraction: float | None,
    config_file: Path | None,
    n_jobs: int | None,
    quiet: bool,
) -> None:
    """Simulate a longitudinal cohort with known ground truth into OUTPUT_DIR (a BIDS dataset).

    The truth (velocity fields, Jacobians, regional volumes, conversion times, tumour masks,
    artefact severities) is written to OUTPUT_DIR/derivatives/neurocast-truth. The generative
    model and every parameter's default and source: see `python -m pydoc neurocast.simulate`.
    """
    from neurocast.simulate import SimulationConfig, simulate_cohort

    try:
        base = json.loads(config_file.read_text()) if config_file else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{config_file}: not valid JSON ({exc})", param_hint="--config"
        ) from exc
    if not isinstance(base, dict):
        raise click.BadParameter(
            f"{config_file}: expected a JSON object of SimulationConfig fields",
            param_hint="--config",
        )
    try:
        config = SimulationConfig.from_dict(base) if base else SimulationConfig()
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(f"{config_file}: {exc}", param_hint="--config") from exc
    overrides = {
        "diagnosis_proportions": proportions,
        "n_visits": visits,
        "max_followup_years": max_followup_years,
        "grid_spacing_mm": grid_spacing_mm,
        "base_scans": str(base_scans) if base_scans else None,
        "tumour_fraction": tumour_fraction,
        "artefact_fraction": artefact_fraction,
        "skull_stripped_fraction": skull_stripped_fraction,
        "n_jobs": n_jobs,
    }
    try:
        config = config.with_updates(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    truth = simulate_cohort(output_dir, n_subjects, seed, config, progress=not quiet)
    n_visits = len(truth.visits)
    click.echo(f"wrote {n_subjects} subject(s), {n_visits} visit(s) to {truth.root}")
    click.echo(f"ground truth in {truth.truth_root}")
