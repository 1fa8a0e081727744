"""The ``neurocast`` command: a click group whose commands call the Python API.

Exit codes (see :data:`neurocast.errors.EXIT_CODES`): 0 success, 2 usage error, 3 some
participants failed, 65 invalid input file or table, 66 invalid dataset, 67 filters selected
nothing, 68 bad checkpoint, 69 registration failed, 73 output cannot be written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from neurocast._version import __version__
from neurocast.cli.options import participant_filters
from neurocast.errors import NeurocastError


class NeurocastGroup(click.Group):
    """A click group that turns neurocast's own errors into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except NeurocastError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=NeurocastGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neurocast")
def cli() -> None:
    """neurocast: forecast, screen and register longitudinal brain MRI.

    Commands follow the BIDS-App convention: neurocast COMMAND BIDS_DIR OUTPUT_DIR
    {participant,group} [options]. Run 'neurocast COMMAND --help' for each command.
    """


@cli.command()
@click.argument("bids_dir", type=click.Path(path_type=Path))
@participant_filters
@click.option("--deep", is_flag=True, help="Read every voxel, not only headers (slower).")
@click.option(
    "--tsv", "tsv_out", type=click.Path(path_type=Path), help="Also write the scan table here."
)
def validate(
    bids_dir: Path,
    participant_label: list[str] | None,
    session_label: list[str] | None,
    deep: bool,
    tsv_out: Path | None,
) -> None:
    """Check BIDS_DIR: print what neurocast will use and every problem found.

    Exits 0 when the dataset can be processed, non-zero otherwise.
    """
    from neurocast.io.validate import validate_dataset

    report = validate_dataset(bids_dir, participant_label, session_label, deep=deep)
    ds = report.dataset
    if ds is not None:
        n_ses = sum(len(p.sessions) for p in ds.participants)
        click.echo(
            f"{report.root}: {len(ds.participants)} participant(s), {n_ses} session(s), "
            f"{ds.n_scans} T1w scan(s)"
        )
        for p in ds.participants:
            cov = (
                ", ".join(f"{k}={v}" for k, v in p.covariates.items() if v is not None)
                or "no covariates"
            )
            ses = ", ".join(
                (s.entity or "(no session)")
                + (f" @ {s.time_years:.2f} y" if s.time_years is not None else "")
                for s in p.sessions
            )
            click.echo(f"  {p.participant_id}: {ses}; {cov}")
    for w in report.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    for e in report.errors:
        click.secho(f"error: {e}", fg="red", err=True)
    if tsv_out is not None:
        from neurocast.io.atomic import write_tsv_atomic

        write_tsv_atomic(tsv_out, report.scans)
    if report.ok:
        click.secho("dataset is valid", fg="green")
    sys.exit(report.exit_code)


def _register_commands() -> None:
    from neurocast.cli.anomaly_cmds import qa, train_anomaly
    from neurocast.cli.cohort_cmds import cohort, survival
    from neurocast.cli.forecast_cmds import forecast, train_calibrate, train_progress
    from neurocast.cli.registration_cmds import preprocess, register
    from neurocast.cli.run_cmds import demo, run
    from neurocast.cli.simulate_cmd import simulate
    from neurocast.cli.train_cmds import train

    cli.add_command(simulate)
    cli.add_command(preprocess)
    cli.add_command(register)
    cli.add_command(cohort)
    cli.add_command(survival)
    cli.add_command(run)
    cli.add_command(demo)
    cli.add_command(train)
    cli.add_command(qa)
    train.add_command(train_anomaly, "anomaly")
    cli.add_command(forecast)
    train.add_command(train_progress, "progress")
    train.add_command(train_calibrate, "calibrate")


_register_commands()


def main() -> None:
    """Entry point of the console script."""
    cli(prog_name="neurocast")


if __name__ == "__main__":
    main()
