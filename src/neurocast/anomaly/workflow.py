"""Dataset-level QA screening and detector training: what ``neurocast qa`` and
``neurocast train anomaly`` run.

:func:`qa_dataset` screens every selected T1w session of a BIDS dataset, one participant per
task (:func:`neurocast.io.batch.run_participants`), and writes BIDS derivatives with provenance
sidecars (:class:`neurocast.io.derivatives.DerivativesWriter`). Per session, in
``sub-<label>/ses-<label>/anat/`` (``res`` from the detector's grid):

* ``<prefix>_space-MNI152NLin2009aSym_res-2_desc-anomaly_map.nii.gz``: the anomaly map (float32;
  the reconstruction residual standardised against the detector's healthy references, in healthy
  standard deviations; the sidecar's ``Units`` says which);
* ``<prefix>_space-MNI152NLin2009aSym_res-2_desc-anomaly_mask.nii.gz``: the map above the
  calibrated voxel threshold, small clusters removed, grown into the voxels above the grow
  threshold and dilated by the detector's ``mask_dilation_mm`` inside the brain (uint8);
* ``<prefix>_space-T1w_desc-anomaly_map.nii.gz``: the map on the scan's own grid;
* ``<prefix>_desc-qa.json``: flag, percentile, scores, clusters, IQMs (with the reasons of the
  undefined ones), the prior used, the preprocessing QC; written last, it marks the session done;

and ``sub-<label>/figures/<prefix>_desc-anomaly_mosaic.png``: the input, the reconstruction and
the anomaly overlay in three planes through the largest cluster (:mod:`neurocast.anomaly.overlay`). At the top of the output folder, ``qa.tsv`` has one row per
screened scan (schema ``data_specs/anomaly_qa.schema.json``), flagged scans first; it is rebuilt
from the ``*_desc-qa.json`` files after every run (:func:`write_qa_table`, also the group level).

**Subject conditioning.** Sessions of a participant are screened in time order; a session's prior
is the latest earlier session that was flagged ``pass`` and preprocessed cleanly, so an anomaly
that appeared at one visit is still flagged at the next ones.

**Preprocessing once.** A session's preprocessing is read back from the output folder where
``neurocast preprocess`` or ``neurocast register`` wrote it with the same grid, seed and
skull-stripping setting, and written there otherwise
(:func:`neurocast.registration.preprocessed.preprocess_or_load`).

**Resume.** A session whose ``desc-qa.json`` is complete for the same inputs (scan and prior),
parameters, seed and model card is skipped; a participant whose sessions are all complete is
reported as skipped.

Example:
    >>> from neurocast.anomaly.workflow import qa_dataset  # doctest: +SKIP
    >>> summary = qa_dataset("/data/study", "/data/derivatives/neurocast",
    ...                      model="models/anomaly")  # doctest: +SKIP
    >>> summary.line()  # doctest: +SKIP
    'qa: 12 done, 0 skipped, 0 failed in 310.4 s'
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurocast.anomaly.calibration import Calibration
from neurocast.anomaly.model import AnomalyDetector, AnomalyResult
from neurocast.anomaly.scan import Scan
from neurocast.errors import CheckpointError, InvalidDatasetError
from neurocast.io.batch import BatchSummary, Skipped, run_participants
from neurocast.io.bids import Participant, anat_folder, discover, file_prefix
from neurocast.io.derivatives import DerivativesWriter
from neurocast.registration.template import Grid

log = logging.getLogger(__name__)

TEMPLATE_SPACE = "MNI152NLin2009aSym"
QA_TABLE = "qa.tsv"
QA_SCHEMA = "anomaly_qa"
IQM_COLUMNS = ("cjv", "cnr", "snr_total", "snrd_total", "efc", "fber", "qi1", "wm2max", "ghost_ratio", "spike_z")
"""IQMs copied into ``qa.tsv`` (all of them are in each session's ``desc-qa.json``)."""
QA_COLUMNS = [
    "participant_id", "session_id", "flag", "percentile", "lesion_score", "lesion_percentile",
    "artefact_score", "artefact_percentile", "over_threshold", "anomaly_volume_mm3", "n_clusters",
    "largest_cluster_mm3", "largest_cluster_share", "used_prior", "prior_session_id", "skull_stripped",
    "preprocessing_passed", *IQM_COLUMNS, "iqm_undefined", "source",
]  # fmt: skip
"""Columns of ``qa.tsv``, in order."""
_FLAG_ORDER = {"review-lesion": 0, "review-artefact": 1, "pass": 2}


DEMO_MODEL = "anomaly-demo"
"""Name of the shipped demo detector in :mod:`neurocast.weights`."""


def default_model_dir() -> Path:
    """Where the shipped demo detector lives (``neurocast/weights/anomaly-demo``)."""
    from neurocast.weights import shipped_model_dir

    return shipped_model_dir(DEMO_MODEL)


@functools.lru_cache(maxsize=4)
def _load_detector(path: str, stamp: tuple[int, int]) -> AnomalyDetector:
    # ``stamp`` (the card's mtime and size) makes a model rewritten in place load afresh
    return AnomalyDetector.load(path)


def load_detector(model: str | os.PathLike[str] | AnomalyDetector | None) -> AnomalyDetector:
    """The detector to screen with: an instance, a checkpoint folder, or ``None`` for the shipped
    demo model.

    Raises:
        CheckpointError: no model there, or it is not calibrated.
    """
    if isinstance(model, AnomalyDetector):
        det = model
    else:
        path = default_model_dir() if model is None else Path(model)
        if not (path / "model_card.json").is_file():
            hint = (
                "no demo anomaly model is shipped with this installation; train one with "
                "'neurocast train anomaly BIDS_DIR MODEL_DIR' and pass --model MODEL_DIR"
                if model is None
                else "not a model folder (no model_card.json)"
            )
            raise CheckpointError(f"{path}: {hint}")
        st = (path / "model_card.json").stat()
        det = _load_detector(str(path.resolve()), (st.st_mtime_ns, st.st_size))
    if getattr(det, "calibration_", None) is None:
        raise CheckpointError("the anomaly model is not calibrated (run its calibrate step first)")
    return det


def output_names(prefix: str, res: str) -> dict[str, str]:
    """File names of one session's QA outputs (relative to its ``anat`` folder, figure aside)."""
    space = f"space-{TEMPLATE_SPACE}_res-{res}"
    return {
        "map": f"{prefix}_{space}_desc-anomaly_map.nii.gz",
        "mask": f"{prefix}_{space}_desc-anomaly_mask.nii.gz",
        "native_map": f"{prefix}_space-T1w_desc-anomaly_map.nii.gz",
        "qa": f"{prefix}_desc-qa.json",
        "figure": f"{prefix}_desc-anomaly_mosaic.png",
    }


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def qa_row(
    participant_id: str,
    session_id: str,
    result: AnomalyResult,
    *,
    scan: Scan,
    prior_session_id: str | None,
    preprocessing_passed: bool,
) -> dict[str, Any]:
    """One ``qa.tsv`` row (see :data:`QA_COLUMNS`)."""
    comps = result.components
    iq = result.iqms
    row: dict[str, Any] = {
        "participant_id": participant_id,
        "session_id": session_id or "n/a",
        "flag": result.flag,
        "percentile": _num(result.percentile),
        "lesion_score": _num(result.lesion_score),
        "lesion_percentile": _num(result.lesion_percentile),
        "artefact_score": _num(result.artefact_score),
        "artefact_percentile": _num(result.artefact_percentile),
        "over_threshold": ";".join(result.over_threshold) or None,
        "anomaly_volume_mm3": float(result.mask.sum() * result.grid.voxel_volume_mm3),
        "n_clusters": len(comps),
        "largest_cluster_mm3": comps[0].volume_mm3 if comps else 0.0,
        "largest_cluster_share": _num(result.largest_share),
        "used_prior": bool(result.used_prior),
        "prior_session_id": prior_session_id,
        "skull_stripped": scan.skull_stripped,
        "preprocessing_passed": bool(preprocessing_passed),
    }
    for name in IQM_COLUMNS:
        row[name] = _num(iq.get(name)) if iq is not None else None
    row["iqm_undefined"] = (
        "; ".join(f"{k}: {v}" for k, v in sorted(iq.undefined.items())) if iq and iq.undefined else None
    )
    row["source"] = scan.source
    return row


def in_source_orientation(img: Any, source: str | os.PathLike[str]) -> Any:
    """A RAS+ image on the scan's grid, with its voxels stored in the source file's orientation.

    Preprocessing reorients scans to RAS+ by permuting voxels (no resampling); this undoes the
    permutation, so the native map has exactly the shape and affine of the T1w it describes.
    """
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    src = nib.load(os.fspath(source))
    target = io_orientation(src.affine)
    out = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), target))
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    return out


def map_sidecar(det: AnomalyDetector) -> dict[str, str]:
    """``Units`` and ``Description`` of the anomaly map's JSON sidecar for this detector."""
    described = (
        "reconstruction residual of the neurocast anomaly detector, median filtered, inside the "
        "eroded brain mask"
    )
    if getattr(det, "normative_", None) is None:
        return {"Units": "normalised intensity (white-matter peak = 1)", "Description": described}
    return {
        "Units": "healthy standard deviations",
        "Description": f"{described}, standardised voxel by voxel against the detector's healthy "
        "references: max(residual - mean, 0) / (sd + floor)",
    }


def _mask_description(det: AnomalyDetector, cal: Calibration) -> str:
    text = (
        f"anomaly map > {cal.voxel_threshold:.4g} (calibrated voxel threshold), clusters < "
        f"{det.min_component_mm3:g} mm3 removed"
    )
    if math.isfinite(cal.grow_threshold):
        text += f", grown into the connected voxels > {cal.grow_threshold:.4g} (grow threshold)"
    if det.mask_dilation_mm > 0:
        text += f", dilated by {det.mask_dilation_mm:g} mm inside the brain mask"
    return text


def _figure_png(scan: Scan, result: AnomalyResult, threshold: float) -> bytes:
    from neurocast.anomaly.overlay import image_centre, overlay_png

    # through the main finding; on a scan without one, through the brain's centre (not through
    # stray voxels above the threshold that post-processing dropped, often at the brain's edge)
    centre = result.components[0].centroid if result.components else image_centre(scan.image)
    return overlay_png(
        scan.image, result.reconstruction, result.anomaly_map, threshold=threshold, centre=centre
    )


def qa_participant(
    participant: Participant,
    writer: DerivativesWriter,
    detector: AnomalyDetector,
    *,
    seed: int = 0,
    use_prior: bool = True,
    skull_stripped: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    figures: bool = True,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Screen the sessions of one participant in time order (see the module docstring).

    Returns:
        One ``qa.tsv`` row per session, each with ``skipped`` True when complete outputs were
        reused.

    Raises:
        Exception: the first error of a session, after the other sessions were screened (so that
            the participant is reported as failed, with its log).
    """
    from neurocast.registration.preprocess import resolution_label
    from neurocast.registration.preprocessed import preprocess_or_load

    det = detector
    grid = det.grid_
    res = resolution_label(grid)
    cal = det.calibration_
    assert cal is not None
    card_sha = getattr(det, "model_card_sha256_", None)
    sub = participant.participant_id
    rows: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    done: dict[str, Scan] = {}  # sessions preprocessed in this call, by label
    prior_label: str | None = None  # latest earlier session that passed
    for ses in participant.sessions:
        label = ses.label or ""
        source = ses.t1w[0]
        prefix, folder = file_prefix(participant, ses), anat_folder(participant, ses)
        names = output_names(prefix, res)
        prior_ses = None
        if use_prior and prior_label is not None:
            prior_ses = next(s for s in participant.sessions if (s.label or "") == prior_label)
        inputs = [source] + ([prior_ses.t1w[0]] if prior_ses is not None else [])
        params = {
            "step": "qa",
            "use_prior": use_prior,
            "prior_session": prior_ses.entity if prior_ses is not None else None,
            "skull_stripped": skull_stripped,
            "grid_spacing_mm": list(grid.spacing_mm),
        }
        prov = {"inputs": inputs, "parameters": params, "seed": seed, "model_card_sha256": card_sha}
        qa_rel = f"{folder}/{names['qa']}"
        try:
            if not force and writer.is_complete(qa_rel, **prov):
                record = json.loads(writer.path(qa_rel).read_text())
                row = record["row"]
                rows.append({**row, "skipped": True})
                if row["flag"] == "pass" and row["preprocessing_passed"]:
                    prior_label = label
                continue
            result_pp, _ = preprocess_or_load(
                writer, participant, ses, grid=grid, skull_stripped=skull_stripped, seed=seed,
                work_dir=work_dir,
            )  # fmt: skip
            pp_passed = bool(result_pp.qc.get("passed"))
            scan = Scan.from_preprocessed(result_pp, raw=source)
            scan.source = str(source)
            done[label] = scan
            if prior_ses is not None:
                prior_scan = done.get(prior_label or "")
                if prior_scan is None:  # the prior session was skipped: preprocess it again
                    prior_pp, _ = preprocess_or_load(
                        writer, participant, prior_ses, grid=grid, skull_stripped=skull_stripped,
                        seed=seed, work_dir=work_dir,
                    )  # fmt: skip
                    prior_scan = Scan.from_preprocessed(prior_pp, iqms=False)
                    done[prior_label or ""] = prior_scan
                scan = scan.with_prior(prior_scan)
            result = det.score(scan, use_prior=use_prior)
            row = qa_row(
                sub, ses.entity, result, scan=scan,
                prior_session_id=prior_ses.entity if prior_ses is not None else None,
                preprocessing_passed=pp_passed,
            )  # fmt: skip
            extra = map_sidecar(det)
            writer.write_nifti(f"{folder}/{names['map']}", result.map_image(), **prov, extra=extra)
            writer.write_nifti(
                f"{folder}/{names['mask']}", result.mask_image(), **prov,
                extra={"Description": _mask_description(det, cal)},
            )  # fmt: skip
            if result.native_map is not None:
                native = in_source_orientation(result.native_map, source)
                writer.write_nifti(f"{folder}/{names['native_map']}", native, **prov, extra=extra)
            if figures:
                png = _figure_png(scan, result, cal.voxel_threshold)
                writer.write_with(
                    f"{sub}/figures/{names['figure']}", lambda tmp, b=png: tmp.write_bytes(b), **prov
                )
            record = {
                "row": row,
                "result": result.summary(),
                "calibration": {
                    "fpr": cal.fpr,
                    "lesion_threshold": _num(cal.lesion_threshold),
                    "artefact_threshold": _num(cal.artefact_threshold),
                    "voxel_threshold": _num(cal.voxel_threshold),
                    "grow_threshold": _num(cal.grow_threshold),
                    "lesion_scales": cal.lesion_scales,  # what the lesion evidence is divided by
                    "spike_threshold": _num(cal.spike_threshold),  # of the spike_z robust z
                    "n_references": cal.n_references,
                },
                "preprocessing_qc": {
                    "passed": pp_passed,
                    "reasons": result_pp.qc.get("reasons", []),
                    "similarity": result_pp.qc.get("similarity"),
                },
                "outputs": {k: v for k, v in names.items() if k != "qa"},
            }
            writer.write_json(qa_rel, record, **prov)  # last: marks the session done
            rows.append({**row, "skipped": False})
            if result.flag == "pass" and pp_passed:
                prior_label = label
        except Exception as exc:  # keep screening the other sessions, fail the participant after
            log.error("%s %s: QA failed: %s", sub, ses.entity, exc)
            errors.append(exc)
    if errors:
        raise errors[0]
    return rows


def _text_frame(table: pd.DataFrame) -> pd.DataFrame:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "n/a"
        if isinstance(v, bool | np.bool_):
            return "true" if v else "false"
        return str(v)

    return pd.DataFrame({c: [cell(v) for v in table[c]] for c in table.columns})


def sort_qa_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Flagged scans first (lesion, then artefact), by decreasing percentile within a flag."""
    if table.empty:
        return table
    order = table["flag"].map(_FLAG_ORDER).fillna(3)
    pct = pd.to_numeric(table["percentile"], errors="coerce").fillna(-1)
    keyed = table.assign(_o=order, _p=-pct)
    return (
        keyed.sort_values(["_o", "_p", "participant_id", "session_id"], kind="mergesort")
        .drop(columns=["_o", "_p"])
        .reset_index(drop=True)
    )


def collect_qa_rows(output_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every session's ``qa.tsv`` row, from the ``*_desc-qa.json`` files of a derivatives folder."""
    root = Path(output_dir)
    rows = []
    for f in sorted(root.glob("sub-*/**/anat/*_desc-qa.json")):
        try:
            rows.append(json.loads(f.read_text())["row"])
        except (OSError, ValueError, KeyError):
            log.warning("%s: unreadable QA record, left out of %s", f, QA_TABLE)
    return pd.DataFrame(rows, columns=QA_COLUMNS)


def write_qa_table(
    writer: DerivativesWriter, *, seed: int | None = None, model_card_sha256: str | None = None
) -> pd.DataFrame:
    """Rebuild ``qa.tsv`` from the session records (validated against its schema), flagged first."""
    from neurocast.io.tables import validate_frame

    table = sort_qa_rows(collect_qa_rows(writer.root))
    if len(table):
        validate_frame(_text_frame(table), QA_SCHEMA)
        writer.write_tsv(
            QA_TABLE, table, parameters={"step": "qa-group"}, seed=seed,
            model_card_sha256=model_card_sha256,
        )  # fmt: skip
    return table


def qa_dataset(
    bids_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | AnomalyDetector | None = None,
    participant_label: Iterable[str] | None = None,
    session_label: Iterable[str] | None = None,
    seed: int = 0,
    n_workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
    use_prior: bool = True,
    skull_stripped: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    figures: bool = True,
) -> BatchSummary:
    """Screen every selected T1w session of a BIDS dataset for lesions and artefacts.

    Args:
        bids_dir: the BIDS dataset.
        output_dir: the derivatives folder (created).
        model: a trained, calibrated detector folder (or instance); ``None``: the shipped demo.
        participant_label, session_label: selection (with or without ``sub-``/``ses-``).
        seed: preprocessing (ANTs) seed; the reconstruction noise comes from the model's seed.
        n_workers, scheduler: parallel participants (local Dask cluster / existing scheduler).
        progress: show a progress bar.
        force: recompute complete outputs.
        use_prior: condition on the latest earlier passing session of the participant.
        skull_stripped: say whether inputs are skull-stripped (``None``: detected per scan).
        work_dir: parent folder of temporary files.
        figures: write the PNG mosaics.

    Returns:
        The batch summary; ``output_dir/qa.tsv`` holds one row per screened scan.

    Raises:
        CheckpointError: the model is missing, damaged or not calibrated.
    """
    detector = load_detector(model)
    ds = discover(bids_dir, participant_label, session_label)
    writer = DerivativesWriter(output_dir, source_datasets=[str(Path(bids_dir).resolve())])
    by_label = {p.label: p for p in ds.participants}
    model_arg: Any = detector if n_workers <= 1 and scheduler is None else (
        model if model is not None else default_model_dir()
    )  # fmt: skip

    def one(label: str) -> list[dict[str, Any]]:
        det = load_detector(model_arg)
        rows = qa_participant(
            by_label[label], writer, det, seed=seed, use_prior=use_prior,
            skull_stripped=skull_stripped, work_dir=work_dir, figures=figures, force=force,
        )  # fmt: skip
        if rows and all(r["skipped"] for r in rows):
            raise Skipped(rows)
        return rows

    summary = run_participants(
        list(by_label), one, output_dir, step="qa", n_workers=n_workers, scheduler=scheduler,
        progress=progress,
    )  # fmt: skip
    write_qa_table(writer, seed=seed, model_card_sha256=getattr(detector, "model_card_sha256_", None))
    return summary


# --------------------------------------------------------------------------------------------------
# training


def _healthy_sessions(bids_dir: Path) -> set[tuple[str, str]] | None:
    """Healthy (participant_id, session_id) pairs from a simulation's truth, or ``None``."""
    truth = bids_dir / "derivatives" / "neurocast-truth" / "visits.tsv"
    if not truth.is_file():
        return None
    v = pd.read_csv(truth, sep="\t", dtype=str, keep_default_na=False)
    ok = (v["artefact"] == "none") & (v["tumour_present"].str.lower() != "true")
    return set(zip(v.loc[ok, "participant_id"], v.loc[ok, "session_id"], strict=True))


def _healthy_from(bids: Path) -> str:
    return "simulation truth" if _healthy_sessions(bids) is not None else "all scans"


def _healthy_scans(
    bids: Path,
    participant_label: Iterable[str] | None,
    grid: Grid,
    seed: int,
    skull_stripped: bool | None,
    work_dir: str | os.PathLike[str] | None,
) -> dict[str, list[Scan]]:
    """The healthy scans of a dataset, preprocessed, per participant label, in time order; each
    after the first has the previous one as prior (an anomalous or failed session breaks the chain).

    Healthy: the simulation truth's visits without tumour and artefact where the dataset has it,
    otherwise every selected scan.
    """
    from neurocast.anomaly.scan import prepare_scan

    ds = discover(bids, participant_label)
    healthy = _healthy_sessions(bids)
    if healthy is None:
        log.warning("%s: no simulation truth; every selected scan is taken as healthy", bids)
    per_subject: dict[str, list[Scan]] = {}
    for p in ds.participants:
        scans: list[Scan] = []
        prev: Scan | None = None
        for s in p.sessions:
            if healthy is not None and (p.participant_id, s.entity) not in healthy:
                prev = None  # an anomalous visit breaks the chain of priors
                continue
            try:
                scan = prepare_scan(
                    s.t1w[0], grid=grid, skull_stripped=skull_stripped, seed=seed, work_dir=work_dir
                )
            except Exception as exc:
                log.warning("%s %s left out: %s", p.participant_id, s.entity, exc)
                prev = None
                continue
            scans.append(scan.with_prior(prev) if prev is not None else scan)
            prev = scan
        if scans:
            per_subject[p.label] = scans
    return per_subject


def calibrate_detector(
    bids_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | AnomalyDetector | None = None,
    participant_label: Iterable[str] | None = None,
    fpr: float | None = None,
    seed: int = 0,
    skull_stripped: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> AnomalyDetector:
    """Calibrate a trained detector on a site's own healthy scans and save it (weights unchanged).

    A detector's thresholds, and the voxel-wise reference maps its anomaly map is standardised
    against (:mod:`neurocast.anomaly.normative`), fit scans like its calibration references. On
    another scanner or protocol, calibrate it on healthy scans from there first: every selected
    healthy scan of ``bids_dir`` becomes a reference (healthy as in :func:`train_detector`).

    Args:
        bids_dir: a BIDS dataset of healthy scans (at least two).
        model_dir: the checkpoint folder to write (replaced).
        model: the detector to calibrate (folder, or an object, which is copied; default: the
            shipped demo model); it needs not be calibrated.
        participant_label: participants to use.
        fpr: false-positive rate (default: the detector's).
        seed: preprocessing seed.
        skull_stripped: say whether inputs are skull-stripped (``None``: detected).
        work_dir: parent folder of temporary files.

    Returns:
        The calibrated detector (also saved in ``model_dir``).

    Raises:
        InvalidDatasetError: fewer than two healthy scans could be preprocessed.
    """
    import copy

    bids = Path(bids_dir)
    if isinstance(model, AnomalyDetector):
        det = copy.deepcopy(model)  # the caller's detector keeps its calibration
    else:  # loaded afresh, never the cached screening detector
        det = AnomalyDetector.load(default_model_dir() if model is None else Path(model))
    per_subject = _healthy_scans(bids, participant_label, det.grid_, seed, skull_stripped, work_dir)
    refs = [s for lab in sorted(per_subject) for s in per_subject[lab]]
    if len(refs) < 2:
        raise InvalidDatasetError(bids, "calibration needs at least two healthy scans that preprocess")
    det.calibrate(refs, fpr=fpr, groups=_participant_groups(per_subject, sorted(per_subject)))
    det.training_.setdefault("data_summary", {})["calibrated_on"] = {
        "bids_dir": str(bids.resolve()),
        "participants": [f"sub-{x}" for x in sorted(per_subject)],
        "n_scans": len(refs),
        "healthy_from": _healthy_from(bids),
    }
    det.save(model_dir)
    return det


def train_detector(
    bids_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    *,
    participant_label: Iterable[str] | None = None,
    calibration_fraction: float = 0.3,
    grid_spacing_mm: float = 2.0,
    seed: int = 0,
    skull_stripped: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    max_seconds: float | None = None,
    init: str | os.PathLike[str] | AnomalyDetector | None = None,
    **detector_kwargs: Any,
) -> AnomalyDetector:
    """Train a detector on a dataset's healthy scans, calibrate it on held-out ones, save it.

    With ``init`` it fine-tunes a trained detector instead of training from scratch: the network
    (its size, noise levels, reconstruction steps and grid) is the given detector's, training
    starts from its weights, and ``detector_kwargs`` set the rest (steps, learning rate...). Do
    this with a site's own healthy scans when its scanner's contrast is unlike the training data
    (calibration alone moves the thresholds, not what the network can reconstruct).

    Healthy scans: where ``BIDS_DIR/derivatives/neurocast-truth/visits.tsv`` exists (a
    simulated cohort), the visits without artefact and tumour; otherwise every scan is taken as
    healthy (say so by selecting participants). Participants are split at random (``seed``) into
    training and calibration (a share ``calibration_fraction``, at least one); within a
    participant, each healthy session after the first gets the previous one as prior.

    Args:
        bids_dir: the BIDS dataset.
        model_dir: the checkpoint folder to write (replaced).
        participant_label: participants to use.
        calibration_fraction: share of participants held out for calibration.
        grid_spacing_mm: working-grid spacing of the model.
        seed: split, preprocessing and training seed.
        skull_stripped: say whether inputs are skull-stripped (``None``: detected).
        work_dir: parent folder of temporary files.
        progress: show progress.
        max_seconds: wall-clock budget of the training (see :meth:`AnomalyDetector.fit`).
        init: a trained detector (folder or object) to fine-tune; ``grid_spacing_mm`` is then its
            grid's.
        detector_kwargs: :class:`AnomalyDetector` settings (``n_steps``, ``channels``...).

    Returns:
        The fitted, calibrated detector (also saved in ``model_dir``).

    Raises:
        ValueError: settings the detector cannot take (``detector_kwargs``), before any work.
        InvalidDatasetError: fewer than two participants with healthy scans.
    """
    from neurocast.registration.template import working_grid

    bids = Path(bids_dir)
    start = init if isinstance(init, AnomalyDetector) or init is None else AnomalyDetector.load(init)
    if start is not None:
        start._check_fitted()
        arch = ("channels", "num_res_blocks", "noise_levels", "num_inference_steps")
        detector_kwargs = {**detector_kwargs, **{k: getattr(start, k) for k in arch}}
    det = AnomalyDetector(seed=seed, progress=progress, **detector_kwargs)  # bad settings: before any work
    grid = start.grid_ if start is not None else working_grid(grid_spacing_mm)
    per_subject = _healthy_scans(bids, participant_label, grid, seed, skull_stripped, work_dir)
    labels = sorted(per_subject)
    if len(labels) < 2:
        raise InvalidDatasetError(
            bids, "training and calibration need healthy scans of at least two participants"
        )
    rng = np.random.default_rng(seed)
    order = [labels[i] for i in rng.permutation(len(labels))]
    n_cal = min(len(labels) - 1, max(1, round(calibration_fraction * len(labels))))
    cal_labels, train_labels = sorted(order[:n_cal]), sorted(order[n_cal:])
    train_scans = [s for lab in train_labels for s in per_subject[lab]]
    cal_scans = [s for lab in cal_labels for s in per_subject[lab]]
    if len(cal_scans) < 2:  # calibration needs two references: borrow a training participant
        extra = train_labels.pop()
        cal_labels.append(extra)
        cal_scans += per_subject[extra]
        train_scans = [s for lab in train_labels for s in per_subject[lab]]
        if not train_scans:
            raise InvalidDatasetError(bids, "too few healthy scans to both train and calibrate")
    det.fit(
        train_scans,
        data_summary={
            "bids_dir": str(bids.resolve()),
            "train_participants": [f"sub-{x}" for x in train_labels],
            "calibration_participants": [f"sub-{x}" for x in cal_labels],
            "healthy_from": _healthy_from(bids),
        },
        max_seconds=max_seconds,
        init=start,
    )
    det.calibrate(cal_scans, groups=_participant_groups(per_subject, cal_labels))
    det.save(model_dir)
    return det


def _participant_groups(per_subject: dict[str, list[Scan]], labels: Sequence[str]) -> list[str] | None:
    """Each reference's participant, in the order ``labels`` lists their scans, so that the
    calibration scores a reference against the other participants' scans
    (:meth:`AnomalyDetector.calibrate`); ``None`` (each scan alone) with a single participant."""
    groups = [lab for lab in labels for _ in per_subject[lab]]
    return groups if len(set(groups)) > 1 else None
