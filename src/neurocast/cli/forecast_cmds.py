"""``neurocast forecast`` and ``neurocast train progress``: the progression model from the command line."""

from __future__ import annotations

import shlex
import sys
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

SETTABLE = ("age", "sex", "diagnosis", "apoe4", "mmse")


def _horizons(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    try:
        out = [float(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give years separated by commas, e.g. 1,2,5") from None
    if not out or any(not (0 <= h <= 30) for h in out):
        raise click.BadParameter(f"{value!r}: horizons must be between 0 and 30 years")
    return out


def _overrides(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in value:
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in SETTABLE:
            raise click.BadParameter(f"{item!r}: use NAME=VALUE with NAME one of {', '.join(SETTABLE)}")
        raw = raw.strip()
        if raw.lower() in {"", "n/a", "unknown"}:
            out[name] = None
        elif name in {"age", "mmse"}:
            try:
                out[name] = float(raw)
            except ValueError:
                raise click.BadParameter(f"{item!r}: {name} must be a number") from None
        elif name == "apoe4":
            if raw not in {"0", "1", "2"}:
                raise click.BadParameter(f"{item!r}: apoe4 must be 0, 1 or 2")
            out[name] = int(raw)
        elif name == "diagnosis":
            if raw.upper() not in {"CN", "MCI", "AD"}:
                raise click.BadParameter(f"{item!r}: diagnosis must be CN, MCI or AD")
            out[name] = raw.upper()
        else:
            if raw.upper() not in {"M", "F"}:
                raise click.BadParameter(f"{item!r}: sex must be M or F")
            out[name] = raw.upper()
    return out


def model_option(f: Any) -> Any:
    """``--model DIR``: a progression model folder (default: the shipped demo model)."""
    return click.option(
        "--model", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Progression model folder (safetensors + model_card.json); default: the shipped demo model.",
    )(f)  # fmt: skip


@click.command()
@bids_app_arguments
@participant_filters
@model_option
@click.option("--horizons", default="1,2,5", show_default=True, callback=_horizons,
              help="Years after the starting session, comma separated (0 returns the scan itself).")
@click.option("--samples", "n_samples", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Monte Carlo samples per horizon (uncertainty and quantiles).")
@click.option("--set", "overrides", multiple=True, callback=_overrides, metavar="NAME=VALUE",
              help="Scenario: replace a covariate (age, sex, diagnosis, apoe4, mmse), e.g. --set diagnosis=AD. "
                   "Repeatable; 'n/a' makes it unknown. Write each scenario to its own OUTPUT_DIR.")
@click.option("--from-session", default=None, help="Start from this session (default: the latest).")
@click.option("--registration-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Outputs of 'neurocast register' (default: OUTPUT_DIR); without them scans are preprocessed.")
@seed_option
@threads_option
@execution_options
@verbosity_options
def forecast(
    bids_dir: Path, output_dir: Path, analysis_level: str, participant_label: list[str] | None,
    session_label: list[str] | None, model: Path | None, horizons: list[float], n_samples: int,
    overrides: dict[str, Any], from_session: str | None, registration_dir: Path | None, seed: int,
    n_threads: int | None, work_dir: Path | None, n_workers: int, dask_scheduler: str | None,
    force: bool, quiet: bool, verbose: bool,
) -> None:  # fmt: skip
    """Forecast each participant's brain at future horizons with uncertainty.

    Writes per participant the mean forecast T1w, the per-voxel uncertainty and the mean Jacobian
    (volume change) map as 4-D images over horizons, and the regional volumes per sample (netCDF)
    with quantiles (TSV). The group level gathers nothing by itself: run 'neurocast cohort'.
    """
    from neurocast.progress.forecast import load_model
    from neurocast.progress.workflow import forecast_dataset

    setup_run(output_dir, n_threads, quiet, verbose)
    if analysis_level == "group":
        click.echo("forecast has no group level; use 'neurocast cohort BIDS_DIR OUTPUT_DIR group'")
        sys.exit(2)
    m = load_model(model)
    summary = forecast_dataset(
        bids_dir, output_dir, model=m, horizons=horizons, n_samples=n_samples,
        covariate_overrides=overrides or None, participant_label=participant_label,
        session_label=session_label, registration_dir=registration_dir, from_session=from_session,
        seed=seed, n_workers=n_workers, scheduler=dask_scheduler, progress=not quiet, force=force,
    )  # fmt: skip
    if not quiet:
        for r in summary.results:
            if r.status == "done" and isinstance(r.value, dict):
                hip = ", ".join(f"{h:g} y: {c:+.1f} %" for h, c in r.value.get("hippocampus_change_percent", {}).items())
                click.echo(f"  {r.participant}: hippocampus {hip}")
    finish(summary)


@click.command("progress")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--source", type=click.Choice(["auto", "truth", "registration"]), default="auto", show_default=True,
              help="Targets: a simulated cohort's exact fields (truth) or 'neurocast register' outputs.")
@click.option("--registration-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Outputs of 'neurocast register' (registration source).")
@participant_filters
@click.option("--steps", "n_steps", type=click.IntRange(1, 10_000_000), default=2000, show_default=True,
              help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(1e-7, 1.0), default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--field-spacing-mm", type=click.FloatRange(2.0, 16.0), default=8.0, show_default=True,
              help="Grid of the generated velocity fields.")
@click.option("--channels", default="8,16,32", show_default=True, help="UNet channels per level.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache and resumable checkpoint (default: MODEL_DIR.work).")
@click.option("--resume", is_flag=True, help="Continue an interrupted training from --work-dir.")
@seed_option
@threads_option
@verbosity_options
def train_progress(
    data_dir: Path, model_dir: Path, source: str, registration_dir: Path | None,
    participant_label: list[str] | None, session_label: list[str] | None, n_steps: int,
    batch_size: int, lr: float, field_spacing_mm: float, channels: str, work_dir: Path | None,
    resume: bool, seed: int, n_threads: int | None, quiet: bool, verbose: bool,
) -> None:  # fmt: skip
    """Train the progression model on DATA_DIR and save it to MODEL_DIR.

    DATA_DIR is a cohort written by 'neurocast simulate' (exact truth fields) or a BIDS dataset
    with 'neurocast register' outputs (--registration-dir). Training resumes with --resume.
    """
    from neurocast.progress.workflow import train_progress as run

    try:
        chans = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise click.BadParameter(f"{channels!r}: give integers separated by commas", param_hint="--channels") from None
    from neurocast.backbone.config import check_channels

    try:
        check_channels(chans)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--channels") from exc
    from neurocast.registration.threads import set_threads

    set_threads(n_threads or 2)
    m = run(
        data_dir, model_dir, source=source, registration_dir=registration_dir,
        participant_label=participant_label, n_steps=n_steps, batch_size=batch_size, lr=lr,
        field_spacing_mm=field_spacing_mm, channels=chans, seed=seed, work_dir=work_dir, resume=resume,
        progress=not quiet, command=shlex.join([
            "neurocast", "train", "progress", str(data_dir), str(model_dir), "--source", source,
            "--steps", str(n_steps), "--batch-size", str(batch_size), "--lr", f"{lr:g}",
            "--field-spacing-mm", f"{field_spacing_mm:g}", "--channels", channels, "--seed", str(seed),
        ]),
    )  # fmt: skip
    click.echo(f"trained on {m.training_summary_['n_subjects']} subject(s), {m.training_summary_['n_pairs']} pair(s); model in {model_dir}")


@click.command("calibrate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output-model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the calibrated model here (default: update MODEL_DIR in place, atomically).")
@click.option("--source", type=click.Choice(["auto", "truth", "registration"]), default="auto", show_default=True,
              help="Truth of change: a simulated cohort's exact fields or 'neurocast register' outputs.")
@click.option("--registration-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Outputs of 'neurocast register' (registration source).")
@participant_filters
@click.option("--level", type=click.FloatRange(0.5, 0.99), default=0.8, show_default=True,
              help="Nominal coverage of the forecast's central interval.")
@click.option("--samples", "n_samples", type=click.IntRange(2, 256), default=16, show_default=True,
              help="Samples per forecast.")
@seed_option
@threads_option
@verbosity_options
def train_calibrate(
    model_dir: Path, data_dir: Path, output_model_dir: Path | None, source: str, registration_dir: Path | None,
    participant_label: list[str] | None, session_label: list[str] | None, level: float, n_samples: int,
    seed: int, n_threads: int | None, quiet: bool, verbose: bool,
) -> None:  # fmt: skip
    """Calibrate the uncertainty of the forecaster in MODEL_DIR on the subjects of DATA_DIR.

    DATA_DIR must hold subjects never used in training (e.g. 'neurocast simulate' with another
    seed). Fits the factor on each sample's deviation from the mean so that the forecast's central
    interval holds the true regional change at the nominal rate; the weights are unchanged and the
    factor goes into the model card.
    """
    from neurocast.progress.workflow import calibrate_progress
    from neurocast.registration.threads import set_threads

    set_threads(n_threads or 2)
    res = calibrate_progress(
        model_dir, data_dir, output_model_dir=output_model_dir, source=source, registration_dir=registration_dir,
        participant_label=participant_label, level=level, n_samples=n_samples, seed=seed, progress=not quiet,
        command=shlex.join(["neurocast", "train", "calibrate", str(model_dir), str(data_dir), "--level", f"{level:g}",
                            "--samples", str(n_samples), "--seed", str(seed)]),
    )  # fmt: skip
    click.echo(
        f"spread {res.spread:.3g} from {res.n_subjects} subject(s), {res.n_cases} case(s): coverage of the "
        f"{res.level:.0%} interval {res.coverage_raw:.0%} -> {res.coverage_fitted:.0%}; "
        f"model in {output_model_dir or model_dir}"
    )
