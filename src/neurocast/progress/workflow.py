"""Dataset-level forecasting and training: what ``neurocast forecast`` and ``neurocast train progress`` run.

**Forecast** (:func:`forecast_dataset`), one task per participant. The forecast starts from the
participant's latest session (or ``from_session``). Where ``neurocast register`` outputs exist in
``registration_dir`` (default: the output folder itself, as ``neurocast run`` writes them), the
session's ``desc-longitudinal_T1w`` is the image and the velocity from the first visit is the
observed history; otherwise the raw T1w is preprocessed on the fly. Outputs, in
``OUTPUT_DIR/sub-X/[ses-Y/]anat/`` with ``<prefix>`` = ``sub-X[_ses-Y]``:

========================================================================  ===========================
``<prefix>_space-MNI152NLin2009aSym_res-2_desc-forecast_T1w.nii.gz``      4-D (x, y, z, horizon) mean forecast
``<prefix>_space-MNI152NLin2009aSym_res-2_desc-uncertainty_T1w.nii.gz``   4-D per-voxel SD over samples
``<prefix>_space-MNI152NLin2009aSym_res-2_desc-jacobian_map.nii.gz``      4-D mean volume-change ratio
``<prefix>_desc-forecast_volumes.nc``                                     xarray (horizon, region, sample), mm³
``<prefix>_desc-forecast_volumes.tsv``                                    tidy table (``data_specs/forecast_volumes``)
========================================================================  ===========================

Every NIfTI sidecar lists ``Horizons`` (years). Each file has a provenance sidecar (inputs and their
hashes, model card hash, seed, parameters); a rerun skips participants whose outputs are complete.

**Training** (:func:`train_progress`): subjects from a simulated cohort's truth (``source="truth"``)
or from a BIDS dataset with ``neurocast register`` outputs (``source="registration"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from neurocast.io.batch import BatchSummary, Skipped, run_participants
from neurocast.io.bids import Participant, Session, anat_folder, discover, file_prefix
from neurocast.io.derivatives import DerivativesWriter
from neurocast.progress.visits import session_covariates

SPACE = "space-MNI152NLin2009aSym"


def forecast_subject_for(
    participant: Participant,
    session: Session,
    registration_dir: str | os.PathLike[str] | None,
    *,
    seed: int = 0,
) -> tuple[Any, list[str]]:
    """The :class:`~neurocast.progress.forecast.ForecastSubject` of one session, and its input files."""
    import nibabel as nib

    from neurocast.progress.forecast import ForecastSubject
    from neurocast.registration.transforms import read_velocity

    cov = session_covariates(participant, session)
    sub = participant.participant_id
    if registration_dir is not None:
        folder = Path(registration_dir) / anat_folder(participant, session)
        pre = file_prefix(participant, session)
        image = next(folder.glob(f"{pre}_{SPACE}_res-*_desc-longitudinal_T1w.nii.gz"), None)
        if image is not None:
            subject = ForecastSubject(nib.load(str(image)), cov, sub, session.entity)
            inputs = [str(image)]
            vel = next(folder.glob(f"{pre}_from-*_desc-velocity_xfm.nii.gz"), None)
            first = participant.sessions[0]
            if vel is not None and session.time_years is not None and first.time_years is not None:
                years = float(session.time_years) - float(first.time_years)
                if years > 0:
                    subject.history_velocity = read_velocity(vel)
                    subject.history_years = years
                    inputs.append(str(vel))
            return subject, inputs
    subject = ForecastSubject.from_scan(session.t1w[0], cov, participant_id=sub, session_id=session.entity, seed=seed)
    return subject, [str(session.t1w[0])]


def forecast_participant(
    participant: Participant,
    writer: DerivativesWriter,
    *,
    model: Any,
    horizons: Sequence[float],
    n_samples: int,
    covariate_overrides: Mapping[str, Any] | None,
    registration_dir: str | os.PathLike[str] | None,
    from_session: str | None = None,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Forecast one participant and write its outputs (see the module docstring)."""
    import numpy as np

    from neurocast.backbone import checkpoint_id
    from neurocast.progress.forecast import forecast

    sessions = [s for s in participant.sessions if s.t1w]
    if from_session is not None:
        label = from_session.removeprefix("ses-")
        sessions = [s for s in sessions if s.label == label]
        if not sessions:
            from neurocast.errors import EmptySelectionError

            raise EmptySelectionError(f"{participant.participant_id}: no session {from_session!r} with a T1w scan")
    session = sessions[-1]
    folder, pre = anat_folder(participant, session), file_prefix(participant, session)
    model_id = checkpoint_id(model.path_) if getattr(model, "path_", None) else "in-memory"
    params = {
        "step": "forecast", "horizons": [float(h) for h in horizons], "n_samples": int(n_samples),
        "covariate_overrides": dict(covariate_overrides or {}), "model": model_id,
        "session": session.entity,
    }  # fmt: skip
    tsv_rel = f"{folder}/{pre}_desc-forecast_volumes.tsv"
    raw_inputs = [str(session.t1w[0])]
    if not force and writer.is_complete(tsv_rel, inputs=raw_inputs, parameters=params, seed=seed):
        raise Skipped({"participant_id": participant.participant_id, "session_id": session.entity})
    subject, inputs = forecast_subject_for(participant, session, registration_dir, seed=seed)
    fc = forecast(subject, horizons, n_samples, seed, covariate_overrides, model=model)
    prov = {"inputs": inputs, "parameters": params, "seed": seed}
    extra = {"Horizons": [float(h) for h in horizons], "HorizonUnits": "years", "Samples": int(n_samples),
             "CovariateOverrides": dict(covariate_overrides or {}), "ModelCheckpoint": model_id}  # fmt: skip
    res = "res-" + f"{float(np.sqrt(np.sum(np.asarray(subject.image.affine)[:3, 0] ** 2))):g}".replace(".", "p")
    for var, desc, what in (
        ("t1w_mean", "forecast_T1w", "mean forecast T1w (baseline warped by the mean velocity)"),
        ("t1w_sd", "uncertainty_T1w", "per-voxel SD of the forecast T1w over samples"),
        ("jacobian_mean", "jacobian_map", "mean volume-change ratio (forecast / current) of the tissue at each voxel"),
    ):
        writer.write_nifti(f"{folder}/{pre}_{SPACE}_{res}_desc-{desc}.nii.gz", fc.nifti(var), **prov,
                           extra={**extra, "Description": what})  # fmt: skip
    ds = fc.volumes.copy()
    ds.attrs = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in ds.attrs.items()}
    writer.write_with(f"{folder}/{pre}_desc-forecast_volumes.nc", lambda tmp: ds.to_netcdf(tmp), **prov)
    from neurocast.registration.volumes import validate_table

    table = fc.table()
    validate_table(table, "forecast_volumes")
    # the TSV is written last: its provenance marks the participant complete
    writer.write_tsv(tsv_rel, table, inputs=raw_inputs, parameters=params, seed=seed)
    hip = table[(table.region == "Hippocampus")]
    return {
        "participant_id": participant.participant_id, "session_id": session.entity,
        "hippocampus_change_percent": {float(r.horizon_years): round(float(r.change_percent_mean), 3) for r in hip.itertuples()},
        "max_folding": float(fc.folding.max()),
    }  # fmt: skip


def forecast_dataset(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    model: Any = None,
    horizons: Sequence[float] = (1.0, 2.0, 5.0),
    n_samples: int = 8,
    covariate_overrides: Mapping[str, Any] | None = None,
    participant_label: Iterable[str] | None = None,
    session_label: Iterable[str] | None = None,
    registration_dir: str | os.PathLike[str] | None = None,
    from_session: str | None = None,
    seed: int = 0,
    n_workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> BatchSummary:
    """Forecast every selected participant (see the module docstring).

    Args:
        bids_dir: the BIDS dataset.
        output_dir: where the derivatives go.
        model: a :class:`~neurocast.progress.model.ProgressionModel`, a model folder, or ``None``
            for the shipped demo model.
        horizons: years after the scan.
        n_samples: samples per horizon.
        covariate_overrides: scenario, e.g. ``{"diagnosis": "AD"}`` (write each scenario to its
            own output folder).
        participant_label, session_label: BIDS filters.
        registration_dir: ``neurocast register`` outputs (default: ``output_dir``).
        from_session: forecast from this session instead of the latest.
        seed, n_workers, scheduler, progress, force: as for
            :func:`neurocast.registration.workflows.register_dataset`.

    Returns:
        The :class:`~neurocast.io.batch.BatchSummary`.

    Raises:
        neurocast.errors.CheckpointError: the model cannot be loaded (before any participant runs).
    """
    from neurocast.progress.forecast import load_model

    m = load_model(model)
    ds = discover(bids_dir, participant_label, session_label)
    writer = DerivativesWriter(output_dir, name="neurocast")
    by_label = {p.label: p for p in ds.participants}
    reg = Path(registration_dir) if registration_dir is not None else Path(output_dir)

    def one(label: str) -> dict[str, Any]:
        return forecast_participant(
            by_label[label], writer, model=m, horizons=horizons, n_samples=n_samples,
            covariate_overrides=covariate_overrides, registration_dir=reg, from_session=from_session,
            seed=seed, force=force,
        )  # fmt: skip

    return run_participants(list(by_label), one, output_dir, step="forecast", n_workers=n_workers,
                            scheduler=scheduler, progress=progress)  # fmt: skip


def longitudinal_subjects(
    data_dir: str | os.PathLike[str],
    source: str = "auto",
    registration_dir: str | os.PathLike[str] | None = None,
    participant_label: Iterable[str] | None = None,
) -> tuple[str, Iterator[Any]]:
    """The longitudinal subjects of a simulated cohort's truth or of ``neurocast register`` outputs.

    Args:
        data_dir: a simulated cohort (``source="truth"``) or a BIDS dataset (``"registration"``);
            ``"auto"`` picks the truth when ``derivatives/neurocast-truth`` exists.
        registration_dir: ``neurocast register`` outputs (registration source).
        participant_label: these participants only.

    Returns:
        ``(source, subjects)``: the source used and a lazy iterator of
        :class:`~neurocast.progress.visits.LongitudinalSubject`.

    Raises:
        neurocast.errors.InvalidDatasetError: registration source without ``registration_dir``.
        ValueError: an unknown source.
    """
    from neurocast.errors import InvalidDatasetError
    from neurocast.progress.visits import subjects_from_registration, subjects_from_truth

    data = Path(data_dir)
    if source == "auto":
        source = "truth" if (data / "derivatives" / "neurocast-truth" / "visits.tsv").is_file() else "registration"
    labels = None if participant_label is None else [f"sub-{x.removeprefix('sub-')}" for x in participant_label]
    if source == "truth":
        return source, subjects_from_truth(data, labels)
    if source == "registration":
        if registration_dir is None:
            raise InvalidDatasetError(f"{data}: give the folder of 'neurocast register' outputs (--registration-dir)")
        return source, iter(subjects_from_registration(data, registration_dir, participant_label=participant_label))
    raise ValueError(f"source must be 'auto', 'truth' or 'registration', got {source!r}")


def train_progress(
    data_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    *,
    source: str = "auto",
    registration_dir: str | os.PathLike[str] | None = None,
    participant_label: Iterable[str] | None = None,
    n_steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-3,
    field_spacing_mm: float = 8.0,
    channels: Sequence[int] = (8, 16, 32),
    num_inference_steps: int = 10,
    seed: int = 0,
    work_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Any:
    """Train a progression model and save it (safetensors + model card) to ``model_dir``.

    Args:
        data_dir: a simulated cohort (``source="truth"``) or a BIDS dataset (``"registration"``).
            ``"auto"`` picks the truth when ``derivatives/neurocast-truth`` exists.
        model_dir: the output model folder.
        registration_dir: ``neurocast register`` outputs (registration source).
        participant_label: train on these participants only.
        n_steps, batch_size, lr, field_spacing_mm, channels, num_inference_steps, seed: the model
            and its optimisation (see :class:`~neurocast.progress.model.ProgressionModel`).
        work_dir: cache of prepared subjects and the resumable training checkpoint (default
            ``model_dir`` + ``.work``).
        resume: continue an interrupted training from ``work_dir``.
        progress: progress bars.
        command: the command line, stored in the model card.

    Returns:
        The fitted :class:`~neurocast.progress.model.ProgressionModel`.

    Raises:
        neurocast.errors.InvalidDatasetError: no training data found.
        ValueError: settings the model cannot take (e.g. ``channels``), before any data is read.
    """
    from neurocast.errors import InvalidDatasetError
    from neurocast.progress.model import ProgressionModel

    data = Path(data_dir)
    m = ProgressionModel(field_spacing_mm=field_spacing_mm, channels=channels,
                         num_inference_steps=num_inference_steps, seed=seed)  # fmt: skip
    source, subjects = longitudinal_subjects(data, source, registration_dir, participant_label)
    work = Path(work_dir) if work_dir is not None else Path(str(model_dir) + ".work")
    prepared = m.prepare(subjects, cache_dir=work / "prepared", progress=progress)
    if not prepared:
        raise InvalidDatasetError(f"{data}: no subject with two or more usable visits ({source} source)")
    summary = {"source": source, "data_dir": str(data), "synthetic": source == "truth", "command": command}
    m.fit(prepared, n_steps=n_steps, batch_size=batch_size, lr=lr, out_dir=work / "train",
          resume=resume, data_summary=summary, progress=progress)  # fmt: skip
    note = ("Trained on simulated (synthetic) data only; not for clinical use." if source == "truth"
            else "Trained on registration outputs of the dataset given.")  # fmt: skip
    m.save(model_dir, note=note)
    m.path_ = Path(model_dir)
    return m


__all__ = ["forecast_dataset", "forecast_participant", "forecast_subject_for", "train_progress"]


def calibrate_progress(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    output_model_dir: str | os.PathLike[str] | None = None,
    source: str = "auto",
    registration_dir: str | os.PathLike[str] | None = None,
    participant_label: Iterable[str] | None = None,
    level: float = 0.8,
    n_samples: int = 16,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
) -> Any:
    """Fit a trained model's sample spread on held-out subjects and save it in the model card.

    See :mod:`neurocast.progress.calibration`. The weights are not changed; the card gains
    ``extra.sample_spread`` and ``extra.spread_calibration``, and the per-case table is written
    into the model folder as ``calibration_cases.tsv``.

    Args:
        model_dir: the trained model folder.
        data_dir: subjects never used in training (a simulated cohort of another seed, or a BIDS
            dataset with ``registration_dir``), see :func:`longitudinal_subjects`.
        output_model_dir: where to write the calibrated model (default: replace ``model_dir``,
            atomically).
        level: nominal coverage of the central interval (default the 80 % interval).
        n_samples: samples per forecast.
        seed: sampling seed.
        progress: a progress bar.
        command: the command line, stored in the model card.

    Returns:
        The :class:`~neurocast.progress.calibration.SpreadCalibration`.

    Raises:
        neurocast.errors.CheckpointError: ``model_dir`` is not a progression model.
        ValueError: no subject with a follow-up visit.
    """
    from neurocast.io.atomic import write_tsv_atomic
    from neurocast.progress.calibration import calibrate_spread
    from neurocast.progress.model import ProgressionModel

    model = ProgressionModel.load(model_dir)
    source, subjects = longitudinal_subjects(data_dir, source, registration_dir, participant_label)
    result = calibrate_spread(model, subjects, level=level, n_samples=n_samples, seed=seed, progress=progress)
    model.sample_spread = result.spread
    model.spread_calibration_ = {**result.to_dict(), "data_dir": str(data_dir), "source": source, "command": command}
    out = Path(output_model_dir) if output_model_dir is not None else Path(model_dir)
    model.save(out)
    if result.cases is not None:
        write_tsv_atomic(out / "calibration_cases.tsv", result.cases)
    return result
