"""``neurocast qa`` and ``neurocast train anomaly``: QA screening for lesions and artefacts."""

from __future__ import annotations

from pathlib import Path

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


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError as exc:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from exc


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace(",", " ").split())
    except ValueError as exc:
        raise click.BadParameter(f"expected integers separated by commas, got {value!r}") from exc


@click.command()
@bids_app_arguments
@participant_filters
@click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Trained anomaly model folder (default: the shipped demo model).",
)
@click.option(
    "--no-prior", is_flag=True, help="Do not condition on the participant's earlier sessions."
)
@click.option("--skull-stripped/--whole-head", default=None, help="Default: detected per scan.")
@click.option("--no-figures", is_flag=True, help="Do not write the PNG mosaics.")
@seed_option
@threads_option
@execution_options
@verbosity_options
def qa(
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    participant_label: list[str] | None,
    session_label: list[str] | None,
    model_dir: Path | None,
    no_prior: bool,
    skull_stripped: bool | None,
    no_figures: bool,
    seed: int,
    n_threads: int | None,
    work_dir: Path | None,
    n_workers: int,
    dask_scheduler: str | None,
    force: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Screen T1w scans for lesions (tumours) and artefacts (motion) with the anomaly detector.

    participant: per session the anomaly map (template and native space), its mask at the
    calibrated threshold, a QA record (flag, percentile, scores, IQMs) and a mosaic; then qa.tsv.
    group: rebuild OUTPUT_DIR/qa.tsv (one row per scan, flagged first) from the QA records.
    """
    from neurocast.anomaly.workflow import qa_dataset, write_qa_table
    from neurocast.io.derivatives import DerivativesWriter

    setup_run(output_dir, n_threads, quiet, verbose)
    if analysis_level == "group":
        table = write_qa_table(DerivativesWriter(output_dir))
        n_flag = int((table["flag"] != "pass").sum()) if len(table) else 0
        click.echo(f"qa group: {len(table)} scan(s), {n_flag} flagged -> {output_dir / 'qa.tsv'}")
        return
    summary = qa_dataset(
        bids_dir, output_dir, model=model_dir, participant_label=participant_label,
        session_label=session_label, seed=seed, n_workers=n_workers, scheduler=dask_scheduler,
        progress=not quiet, force=force, use_prior=not no_prior, skull_stripped=skull_stripped,
        work_dir=work_dir, figures=not no_figures,
    )  # fmt: skip
    table_path = output_dir / "qa.tsv"
    if table_path.is_file() and not quiet:
        import pandas as pd

        table = pd.read_csv(table_path, sep="\t", keep_default_na=False)
        cols = ["participant_id", "session_id", "flag", "percentile", "lesion_score", "artefact_score",
                "over_threshold"]  # fmt: skip
        click.echo(table[[c for c in cols if c in table.columns]].to_string(index=False))
    finish(summary)


@click.command("anomaly")
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--participant-label", multiple=True, help="Participants to use (default: all).")
@click.option("--steps", type=click.IntRange(1), default=2000, show_default=True, help="Training steps.")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop training after this long even if --steps are not done.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Slices per step.")
@click.option("--lr", type=float, default=2e-4, show_default=True, help="AdamW learning rate.")
@click.option(
    "--mixed-precision", type=click.Choice(["auto", "bf16", "no"]), default="auto", show_default=True,
    help="Training precision. auto: bfloat16/float16 on a GPU, float32 on CPU. bf16 also on CPU: "
    "about 2.7x faster per step on CPUs with AMX (recent Intel Xeon), slower on CPUs without.",
)  # fmt: skip
@click.option(
    "--channels", callback=_ints, default="16,32,64", show_default=True,
    help="UNet channels per level (multiples of 8).",
)  # fmt: skip
@click.option(
    "--noise-levels", callback=_floats, default="0.2,0.4", show_default=True,
    help="Partial-noising levels (fractions of the diffusion chain).",
)  # fmt: skip
@click.option("--inference-steps", type=click.IntRange(1), default=1, show_default=True,
              help="DDIM steps per noise level.")  # fmt: skip
@click.option(
    "--grid-spacing-mm", type=click.FloatRange(1.0, 8.0), default=2.0, show_default=True,
    help="Voxel size of the working grid the model sees.",
)  # fmt: skip
@click.option("--fpr", type=click.FloatRange(0.001, 0.5), default=0.05, show_default=True,
              help="Per-scan false-positive rate of the calibration.")  # fmt: skip
@click.option("--calibration-fraction", type=click.FloatRange(0.05, 0.9), default=0.3,
              show_default=True, help="Share of participants held out for calibration.")  # fmt: skip
@click.option("--skull-stripped/--whole-head", default=None, help="Default: detected per scan.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for temporary files.")  # fmt: skip
@click.option(
    "--calibrate-only", is_flag=True,
    help="Do not train: calibrate the weights of --model (default: the shipped demo model) on "
    "every selected healthy scan of BIDS_DIR, e.g. a site's own healthy scans, and save to MODEL_DIR.",
)  # fmt: skip
@click.option(
    "--fine-tune", is_flag=True,
    help="Start training from the weights of --model (default: the shipped demo model), with its "
    "network size, noise levels and grid, e.g. on healthy scans of a scanner whose contrast it "
    "does not reconstruct well; then calibrate as usual.",
)  # fmt: skip
@click.option(
    "--model", "source_model", type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None, help="With --calibrate-only or --fine-tune: the trained model folder to start from.",
)  # fmt: skip
@seed_option
@threads_option
@verbosity_options
def train_anomaly(
    bids_dir: Path,
    model_dir: Path,
    participant_label: tuple[str, ...],
    steps: int,
    max_minutes: float | None,
    batch_size: int,
    lr: float,
    mixed_precision: str,
    channels: tuple[int, ...],
    noise_levels: tuple[float, ...],
    inference_steps: int,
    grid_spacing_mm: float,
    fpr: float,
    calibration_fraction: float,
    skull_stripped: bool | None,
    work_dir: Path | None,
    calibrate_only: bool,
    fine_tune: bool,
    source_model: Path | None,
    seed: int,
    n_threads: int | None,
    quiet: bool,
    verbose: bool,
) -> None:
    """Train the anomaly detector on the healthy scans of BIDS_DIR and calibrate it; save to MODEL_DIR.

    Healthy scans: a simulated cohort's visits without tumour or artefact (from its truth),
    otherwise every selected scan. Participants are split into training and calibration.

    With --calibrate-only, an already trained model is calibrated on all of them instead: do this
    with healthy scans from your own scanner and protocol before screening its scans. With
    --fine-tune, training starts from a trained model's weights (on CPU, add --mixed-precision bf16
    where the CPU supports it).
    """
    from neurocast.anomaly.model import AnomalyDetector
    from neurocast.anomaly.workflow import calibrate_detector, default_model_dir, train_detector
    from neurocast.registration.threads import set_threads

    set_threads(n_threads or 1)
    labels = [x for v in participant_label for x in v.replace(",", " ").split() if x] or None
    if calibrate_only and fine_tune:
        raise click.UsageError("--calibrate-only and --fine-tune exclude each other")
    if source_model is not None and not (calibrate_only or fine_tune):
        raise click.UsageError(
            "--model goes with --calibrate-only or --fine-tune (training starts from scratch)"
        )
    try:  # the detector refuses settings it cannot train with: say so before preprocessing
        AnomalyDetector(
            n_steps=steps, batch_size=batch_size, lr=lr, mixed_precision=mixed_precision,
            channels=channels, noise_levels=noise_levels, num_inference_steps=inference_steps,
            fpr=fpr,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if calibrate_only:
        det = calibrate_detector(
            bids_dir, model_dir, model=source_model, participant_label=labels, fpr=fpr, seed=seed,
            skull_stripped=skull_stripped, work_dir=work_dir,
        )  # fmt: skip
        cal = det.calibration_
        assert cal is not None
        click.echo(
            f"calibrated on {cal.n_references} healthy scan(s) at FPR {cal.fpr:g}: lesion > "
            f"{cal.lesion_threshold:.4g}, artefact > {cal.artefact_threshold:.4g} -> {model_dir}"
        )
        return
    init = (source_model or default_model_dir()) if fine_tune else None
    det = train_detector(
        bids_dir, model_dir, participant_label=labels, calibration_fraction=calibration_fraction,
        grid_spacing_mm=grid_spacing_mm, seed=seed, skull_stripped=skull_stripped,
        work_dir=work_dir, progress=not quiet, n_steps=steps, batch_size=batch_size, lr=lr,
        mixed_precision=mixed_precision, channels=channels, noise_levels=noise_levels,
        num_inference_steps=inference_steps, fpr=fpr,
        max_seconds=max_minutes * 60 if max_minutes else None, init=init,
    )  # fmt: skip
    cal = det.calibration_
    assert cal is not None
    summary = det.training_["data_summary"]
    click.echo(
        f"trained on {summary['n_scans']} scan(s) ({summary['n_slices']} slices, {steps} steps), "
        f"calibrated on {cal.n_references} at FPR {cal.fpr:g}: lesion > {cal.lesion_threshold:.4g}, "
        f"artefact > {cal.artefact_threshold:.4g} -> {model_dir}"
    )
