"""Simulate a cohort: the orchestration of subjects, anatomy, progression, acquisition and writing.

:func:`simulate_cohort` is the public entry point; :func:`simulate_subject` does one subject
(independently of every other, so subjects can run in parallel processes and subject ``i`` is the
same whatever the cohort size).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurocast.simulate.config import REGION_GROUPS, SimulationConfig


@dataclass
class CohortTruth:
    """What :func:`simulate_cohort` made.

    Attributes:
        root: the BIDS dataset folder.
        truth_root: the truth derivatives folder (``root/derivatives/neurocast-truth``).
        seed: the seed used.
        config: the configuration used.
        participants: the raw ``participants.tsv`` table.
        sessions: every subject's ``sessions.tsv`` rows, with a ``participant_id`` column.
        subjects: the truth per subject (``subjects.tsv``).
        visits: the truth per visit (``visits.tsv``).
        regional_volumes: true regional volumes per visit (``regional_volumes.tsv``).
    """

    root: Path
    truth_root: Path
    seed: int
    config: SimulationConfig
    participants: pd.DataFrame
    sessions: pd.DataFrame
    subjects: pd.DataFrame
    visits: pd.DataFrame
    regional_volumes: pd.DataFrame
    files: list[Path] = field(default_factory=list)

    def raw_t1w(self, participant_id: str, session_id: str) -> Path:
        """Path of a raw T1w image."""
        sub, ses = participant_id.removeprefix("sub-"), session_id.removeprefix("ses-")
        return self.root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz"

    def truth_file(self, participant_id: str, session_id: str, suffix: str) -> Path:
        """Path of a truth file ``sub-X_ses-Y_<suffix>``."""
        sub, ses = participant_id.removeprefix("sub-"), session_id.removeprefix("ses-")
        return self.truth_root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_{suffix}"


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


def simulate_subject(
    seed: int, index: int, n_subjects: int, config: SimulationConfig, root: str | Path
) -> dict[str, Any]:
    """Simulate one subject and write its files; returns its table rows.

    Returns:
        dict with ``participant`` (row dict), ``sessions`` (list of row dicts), ``subject``
        (truth row), ``visits`` (truth rows) and ``volumes`` (truth rows).
    """
    with _single_thread():
        return _simulate_subject(seed, index, n_subjects, config, Path(root))


def _simulate_subject(seed: int, index: int, n_subjects: int, config: SimulationConfig, root: Path) -> dict[str, Any]:
    import torch

    from neurocast.registration.deformation import (
        compose,
        integrate_velocity,
        volume_change_map,
        warp,
    )
    from neurocast.simulate import acquisition as acqm
    from neurocast.simulate import anomalies as anom
    from neurocast.simulate.anatomy import make_anatomy, make_head, template_assets
    from neurocast.simulate.conversion import (
        assign_visit_states,
        draw_conversion,
        rate_multiplier_path,
    )
    from neurocast.simulate.progression import draw_rates, subject_velocity, time_warp
    from neurocast.simulate.subjects import draw_subject
    from neurocast.simulate.writer import CohortWriter, grid_image, json_cell, velocity_image

    writer = CohortWriter(root, config.grid_spacing_mm, config.effective_field_spacing_mm)
    prov = {"seed": seed, "config_sha256": config_hash(config)}

    subject = draw_subject(seed, index, n_subjects, config)
    rates = draw_rates(seed, subject, config)
    conversion = draw_conversion(seed, subject, rates, config)
    assign_visit_states(seed, subject, conversion, config)
    accelerations = rate_multiplier_path(conversion, config)
    times = [v.time_years for v in subject.visits]
    s_times = np.atleast_1d(time_warp(np.asarray(times), accelerations, config.conversion_transition_years))

    assets = template_assets(config.grid_spacing_mm, config.effective_field_spacing_mm)
    scanner = acqm.draw_scanner(seed, index, subject.sex == "M", config)
    if config.base_scans:
        from neurocast.simulate.anatomy import make_base_anatomy

        anatomy = make_base_anatomy(seed, subject, rates, assets, config)
    else:
        anatomy = make_anatomy(seed, subject, rates, assets, config)
    head = make_head(seed, subject, anatomy, assets, scanner.skull_stripped)
    v_annual, _linear = subject_velocity(anatomy.groups, anatomy.balance, rates, assets.field_shape)

    shape, aff = assets.shape, assets.affine
    voxel_volume = assets.grid.voxel_volume_mm3
    native_scale = float(np.prod(scanner.head_scale))
    vent_mask = anatomy.groups.get("ventricles", np.zeros(shape, bool))
    tumour = anom.draw_tumour(seed, index, times, anatomy.brain_mask, vent_mask, aff, config)

    base_img_t = torch.from_numpy(anatomy.image)[None, None]
    base_lab_t = torch.from_numpy(anatomy.labels.astype(np.int32))[None, None]
    base_brain_t = torch.from_numpy(anatomy.brain_mask.astype(np.float32))[None, None]
    lab_flat = anatomy.labels.ravel().astype(np.int64)
    label_values = np.array(sorted(assets.groups_of_labels), dtype=int)
    nbins = max(int(lab_flat.max()), int(label_values.max()) if len(label_values) else 0) + 1
    base_counts = np.bincount(lab_flat, minlength=nbins) * voxel_volume
    brain_labels = np.array([v for v, g in assets.groups_of_labels.items() if g is not None and g != "ventricles" and v < nbins], dtype=int)
    region_rows = [
        (int(r["label"]), str(r["name"]), r["group"], bool(r["composite"]),
         np.array([v for v in r["source_labels"] if v < nbins], dtype=int))
        for _, r in assets.regions.iterrows()
    ]

    sub = subject.label
    visit_rows: list[dict[str, Any]] = []
    volume_rows: list[dict[str, Any]] = []
    session_rows: list[dict[str, Any]] = []
    tumour_onset_session = None
    for k, visit in enumerate(subject.visits):
        ses = visit.label
        s = float(s_times[k])
        v_k = v_annual * s
        u_k = integrate_velocity(v_k)
        jac = volume_change_map(v_k, shape)[0, 0]
        labels_k = warp(base_lab_t, u_k, mode="nearest")[0, 0].numpy().astype(np.int16)
        vols = np.bincount(lab_flat, weights=jac.numpy().ravel().astype(np.float64), minlength=nbins) * voxel_volume

        maps = anom.tumour_maps(tumour, visit.time_years, shape, aff, anatomy.brain_mask) if tumour else None
        if maps is not None:
            if tumour_onset_session is None:
                tumour_onset_session = f"ses-{ses}"
            u_total = compose(u_k, maps["displacement"])
            img = warp(base_img_t, u_total)[0, 0].numpy()
            img = anom.paint_tumour(img, maps, tumour, anatomy.white_matter)  # type: ignore[arg-type]
        else:
            u_total = u_k
            img = warp(base_img_t, u_k)[0, 0].numpy()
        img = np.asarray(img, dtype=np.float32)
        # this visit's brain (atrophy and mass effect move its outline), as a stripping tool finds it;
        # kept fractional so that the outline moves by less than a voxel of the working grid (the
        # native resampling thresholds it); a zero field is skipped, as its warp is not bit-exact
        brain_k = warp(base_brain_t, u_total)[0, 0].numpy() if torch.any(u_total) else base_brain_t[0, 0].numpy()

        # acquisition
        acq = acqm.draw_visit_acquisition(seed, index, k, scanner, head.centre_mm, head.outline_mm, config)
        canvas = head.compose(img)
        grid = acqm.sampling_grid(head.canvas_shape, head.canvas_affine, acq)
        native = acqm.sample_voxel_average(canvas, grid, config.partial_volume_samples)
        artefact = anom.draw_artefact(seed, index, k, config)
        stored = acqm.apply_intensities(native, acq, anatomy.white_matter, artefact)
        brain_native = acqm.sample(head.embed(brain_k), grid) > 0.5
        if scanner.skull_stripped:
            stored = acqm.skull_strip(stored, brain_native)
        raw = acqm.native_image(stored, acq)
        writer.raw_t1w(sub, ses, raw, {
            "Manufacturer": "neurocast-simulate",
            "ProtocolName": f"sim-protocol-{acq.protocol}",
            "SkullStripped": bool(scanner.skull_stripped),
            "AcquisitionVoxelSize": [float(x) for x in acq.voxel_mm],
            "ImageOrientation": acq.orientation,
        })

        # truth
        tparams = prov
        if config.write_clean_images:
            writer.write_truth_nifti(sub, ses, writer.template_name("desc-clean_T1w"), grid_image(img, aff, np.float32),
                                     tparams, seed, {"Description": "Template-space image before acquisition effects "
                                                     "(noise-free, brain only, template intensity units)."})
        writer.write_truth_nifti(sub, ses, writer.template_name("atlas-neurocast_dseg"), grid_image(labels_k, aff, np.int16),
                                 tparams, seed, {"Description": "Atlas labels of the subject at this visit "
                                                 "(baseline labels warped by the true deformation, nearest)."})
        writer.write_truth_nifti(
            sub, ses, writer.template_name("desc-jacobian_map"), grid_image(jac.numpy(), aff, np.float32), tparams, seed,
            {"Description": "True volume change of baseline tissue (follow-up / baseline volume), the Jacobian "
             "determinant of exp(-v) on the baseline grid (neurocast.registration.deformation.volume_change_map).",
             "Units": "ratio"})
        writer.write_truth_nifti(
            sub, ses, f"from-ses{subject.visits[0].label}_to-ses{ses}_" + writer.template_name("desc-velocity_xfm", writer.field_res),
            velocity_image(v_k, assets.field_affine), tparams, seed,
            {"Description": "True stationary velocity field from the baseline to this visit: visit(x) = "
             "baseline(x + u(x)) with u = integrate_velocity(v) (scaling and squaring, 7 steps); channel c is "
             "the displacement along voxel axis c of THIS grid (voxel units). The field grid shares its box "
             "with the image grid (first/last voxel centres coincide).",
             "Units": "voxel", "ProgressionTimeYears": s, "TimeYears": visit.time_years})
        writer.write_transform(sub, ses, acq.native_to_template, tparams, seed)
        writer.write_truth_nifti(sub, ses, "desc-brain_mask.nii.gz", grid_image(brain_native.numpy().astype(np.uint8), acq.native_affine, code=1),
                                 tparams, seed, {"Description": "This visit's brain mask on the raw image's grid (the baseline's carried by "
                                  "the visit's deformation); a skull-stripped image is 0 outside it."})
        tumour_info: dict[str, Any] = {}
        if maps is not None:
            writer.write_truth_nifti(sub, ses, writer.template_name("desc-tumour_dseg"), grid_image(maps["labels"], aff, np.uint8),
                                     tparams, seed, {"Description": "Tumour compartments in template space.",
                                                     "Labels": {str(k): v for k, v in anom.TUMOUR_LABELS.items()}})
            tn = acqm.sample(head.embed(maps["labels"].astype(np.float32)), grid, mode="nearest").numpy()
            writer.write_truth_nifti(sub, ses, "desc-tumour_dseg.nii.gz", grid_image(tn.astype(np.uint8), acq.native_affine, code=1),
                                     tparams, seed, {"Description": "Tumour compartments on the raw image's grid.",
                                                     "Labels": {str(k): v for k, v in anom.TUMOUR_LABELS.items()}})
            tumour_info = {
                "tumour_radius_mm": _r(maps["radius_mm"], 4),
                "tumour_volume_mm3": _r(maps["volume_necrosis_mm3"] + maps["volume_enhancing_mm3"], 3),
                "oedema_volume_mm3": _r(maps["volume_oedema_mm3"], 3),
                "tumour_volume_native_mm3": _r((maps["volume_necrosis_mm3"] + maps["volume_enhancing_mm3"]) * native_scale, 3),
            }

        session_rows.append({
            "session_id": f"ses-{ses}", "acq_time": visit.acq_time, "age": visit.age,
            "diagnosis": visit.diagnosis, "mmse": visit.mmse,
        })
        brain_vol = float(vols[brain_labels].sum())
        visit_rows.append({
            "participant_id": subject.participant_id,
            "session_id": f"ses-{ses}",
            "visit_index": k,
            "time_years": _r(visit.time_years, 8),
            "nominal_years": visit.nominal_years,
            "age": visit.age,
            "diagnosis": visit.diagnosis,
            "mmse": visit.mmse,
            "progression_time_years": _r(s, 8),
            "brain_volume_mm3": _r(brain_vol, 3),
            "protocol": acq.protocol,
            "voxel_size_mm": "x".join(f"{x:g}" for x in acq.voxel_mm),
            "orientation": acq.orientation,
            "native_shape": "x".join(str(n) for n in acq.native_shape),
            "head_rotation_deg": json_cell([_r(x, 4) for x in acq.head_rotation_deg]),
            "head_translation_mm": json_cell([_r(x, 4) for x in acq.head_translation_mm]),
            "grid_tilt_deg": json_cell([_r(x, 4) for x in acq.grid_tilt_deg]),
            "gamma": _r(acq.gamma, 6),
            "bias_coefficients": json_cell([_r(x, 6) for x in acq.bias_coefficients]),
            "noise_sd_fraction": _r(acq.noise_sd_fraction, 6),
            "gain": _r(acq.gain, 4),
            "skull_stripped": bool(scanner.skull_stripped),
            "artefact": artefact.kind if artefact else "none",
            "artefact_severity": artefact.severity if artefact else None,
            "artefact_parameters": json_cell(artefact.parameters) if artefact else None,
            "tumour_present": maps is not None,
            "tumour_radius_mm": tumour_info.get("tumour_radius_mm"),
            "tumour_volume_mm3": tumour_info.get("tumour_volume_mm3"),
            "tumour_volume_native_mm3": tumour_info.get("tumour_volume_native_mm3"),
            "oedema_volume_mm3": tumour_info.get("oedema_volume_mm3"),
        })
        for label, name, group, composite, values in region_rows:
            base = float(base_counts[values].sum()) if len(values) else 0.0
            if base == 0:
                continue
            vol = float(vols[values].sum())
            volume_rows.append({
                "participant_id": subject.participant_id,
                "session_id": f"ses-{ses}",
                "time_years": _r(visit.time_years, 8),
                "label": label,
                "region": name,
                "group": group,
                "composite": composite,
                "volume_mm3": _r(vol, 4),
                "volume_native_mm3": _r(vol * native_scale, 4),
                "ratio_to_baseline": _r(vol / base, 8),
            })
        if k == 0:
            writer.write_truth_nifti(sub, ses, writer.template_name("desc-brain_mask"),
                                     grid_image(anatomy.brain_mask.astype(np.uint8), aff), tparams, seed,
                                     {"Description": "Subject brain mask in template space (baseline)."})

    writer.sessions_tsv(sub, pd.DataFrame(session_rows, columns=list(session_rows[0])))
    to_state, t_conv = conversion.first_event
    observed_session = None
    if to_state is not None:
        for v in subject.visits:
            if v.diagnosis != subject.diagnosis:
                observed_session = f"ses-{v.label}"
                break
    subj_row: dict[str, Any] = {
        "participant_id": subject.participant_id,
        "age": subject.age,
        "sex": subject.sex,
        "diagnosis": subject.diagnosis,
        "apoe4": subject.apoe4,
        "mmse": subject.mmse,
        "n_visits": len(subject.visits),
        "followup_years": _r(subject.last_visit_years, 8),
        "anatomy_source": anatomy.parameters.get("source", "template"),
        "skull_stripped": bool(scanner.skull_stripped),
        "protocol": scanner.protocol,
        "orientation": scanner.orientation,
        "head_scale": json_cell([_r(x, 6) for x in scanner.head_scale]),
        "ventricle_log_scale": _r(anatomy.parameters.get("ventricle_log_scale"), 6),
        "subject_rate_effect": _r(rates.subject_effect, 6),
        "subject_rate_effect_sd": _r(rates.subject_effect_sd_units, 6),
        "covariate_rate_effect": _r(rates.covariate_effect, 6),
    }
    for g in REGION_GROUPS:
        subj_row[f"rate_{g}_pct_per_year"] = _r(rates.percent_per_year.get(g, 0.0), 6)
    subj_row.update({
        "conversion_to": to_state,
        "conversion_time_years": _r(_finite(t_conv), 6),
        "event_observed": bool(conversion.event_observed) if to_state else False,
        "censoring_time_years": _r(subject.last_visit_years, 8),
        "observed_conversion_session": observed_session,
        "time_to_mci_years": _r(_finite(conversion.to_mci_years), 6),
        "time_to_ad_years": _r(_finite(conversion.to_ad_years), 6),
        "hazard_linear_predictor": _r(conversion.linear_predictor, 6),
        "cognition_baseline": _r(subject.cognition, 6),
        "cognition_decline_per_year": _r(conversion.cognition_decline_per_year, 6),
        "tumour": tumour is not None,
        "tumour_onset_session": tumour_onset_session,
        "tumour_centre_mm": json_cell([_r(x, 3) for x in tumour.centre_mm]) if tumour else None,
        "tumour_growth_mm_per_year": _r(tumour.growth_mm_per_year, 4) if tumour else None,
    })
    participant = {"participant_id": subject.participant_id, "age": subject.age, "sex": subject.sex,
                   "diagnosis": subject.diagnosis, "apoe4": subject.apoe4, "mmse": subject.mmse}
    return {"participant": participant, "sessions": session_rows, "subject": subj_row,
            "visits": visit_rows, "volumes": volume_rows}


def _prepare_output(root: Path, n_subjects: int) -> None:
    """Refuse a non-empty folder that is not an earlier simulation; in an earlier simulation,
    remove the subjects this cohort will not write (so no stale subject survives)."""
    import shutil

    from neurocast.errors import OutputError
    from neurocast.simulate.subjects import subject_label
    from neurocast.simulate.writer import TRUTH_DIR

    if root.exists() and not root.is_dir():
        raise OutputError(root, "output path exists and is not a folder")
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / TRUTH_DIR / "simulation.json").is_file():
        raise OutputError(root, "output folder is not empty and does not hold an earlier neurocast simulation; "
                          "choose an empty or new folder")
    keep = {f"sub-{subject_label(i, n_subjects)}" for i in range(n_subjects)}
    for base in (root, root / TRUTH_DIR):
        for d in base.glob("sub-*"):
            if d.is_dir() and d.name not in keep:
                shutil.rmtree(d)


def config_hash(config: SimulationConfig) -> str:
    """SHA-256 of the configuration's canonical JSON."""
    return hashlib.sha256(json.dumps(config.model_dict(), sort_keys=True).encode()).hexdigest()


def _worker(args: tuple[int, int, int, dict[str, Any], str]) -> dict[str, Any]:
    seed, index, n, cfg, root = args
    return simulate_subject(seed, index, n, SimulationConfig.from_dict(cfg), root)


def simulate_cohort(
    output_dir: str | os.PathLike[str],
    n_subjects: int,
    seed: int = 0,
    config: SimulationConfig | None = None,
    *,
    progress: bool = True,
) -> CohortTruth:
    """Simulate a longitudinal cohort and write it as a BIDS dataset with its ground truth.

    Args:
        output_dir: the dataset folder: new, empty, or an earlier simulation (whose files are
            replaced and whose extra subjects are removed).
        n_subjects: number of subjects (>= 1).
        seed: random seed; the same seed and configuration give byte-identical files.
        config: simulation parameters (:class:`SimulationConfig` defaults if ``None``).
        progress: show a tqdm progress bar over subjects.

    Returns:
        A :class:`CohortTruth` with the tables written and the paths.
    """
    from tqdm.auto import tqdm

    from neurocast.simulate.writer import CohortWriter

    if int(n_subjects) < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    config = config or SimulationConfig()
    config.validate()
    n = int(n_subjects)
    seed = int(seed)
    root = Path(output_dir).resolve()
    _prepare_output(root, n)
    writer = CohortWriter(root, config.grid_spacing_mm, config.effective_field_spacing_mm)
    writer.write_dataset_files(seed, n, config.model_dict())

    results: list[dict[str, Any]] = [None] * n  # type: ignore[list-item]
    bar = tqdm(total=n, desc="simulate", unit="subject", disable=not progress)
    try:
        if config.n_jobs > 1 and n > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            cfg = config.to_dict()
            with ProcessPoolExecutor(max_workers=min(config.n_jobs, n), mp_context=ctx) as pool:
                futures = {pool.submit(_worker, (seed, i, n, cfg, str(root))): i for i in range(n)}
                from concurrent.futures import as_completed

                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
        else:
            for i in range(n):
                results[i] = simulate_subject(seed, i, n, config, root)
                bar.update(1)
    finally:
        bar.close()

    participants = pd.DataFrame([r["participant"] for r in results],
                                columns=["participant_id", "age", "sex", "diagnosis", "apoe4", "mmse"])
    sessions = pd.DataFrame([dict(s, participant_id=r["participant"]["participant_id"]) for r in results for s in r["sessions"]])
    subjects = pd.DataFrame([r["subject"] for r in results])
    visits = pd.DataFrame([v for r in results for v in r["visits"]])
    volumes = pd.DataFrame([v for r in results for v in r["volumes"]])
    parameters = {"config_sha256": config_hash(config), "n_subjects": n}
    writer.write_tables(participants, subjects, visits, volumes, parameters, seed)
    return CohortTruth(root, writer.truth_root, seed, config, participants, sessions, subjects, visits, volumes)


__all__ = ["CohortTruth", "config_hash", "simulate_cohort", "simulate_subject"]
