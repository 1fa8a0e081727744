"""Writing the simulated cohort: a raw BIDS dataset and, beside it, the truth as BIDS derivatives.

Layout (``OUTPUT_DIR``)::

    dataset_description.json  README  participants.tsv  participants.json
    sub-001/sub-001_sessions.tsv
    sub-001/ses-bl/anat/sub-001_ses-bl_T1w.nii.gz (+ .json)
    derivatives/neurocast-truth/
        dataset_description.json  simulation.json (config, seed)
        subjects.tsv  visits.tsv  regional_volumes.tsv      (schemas: data_specs/simulate_*.schema.json)
        sub-001/ses-m12/anat/
            sub-001_ses-m12_space-MNI152NLin2009aSym_res-2_desc-clean_T1w.nii.gz
            sub-001_ses-m12_space-MNI152NLin2009aSym_res-2_atlas-neurocast_dseg.nii.gz
            sub-001_ses-m12_space-MNI152NLin2009aSym_res-2_desc-jacobian_map.nii.gz
            sub-001_ses-m12_from-sesbl_to-sesm12_space-MNI152NLin2009aSym_res-4_desc-velocity_xfm.nii.gz
            sub-001_ses-m12_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat  (+ _xfm.json)
            sub-001_ses-m12_desc-brain_mask.nii.gz                 (native grid)
            sub-001_ses-m12_desc-tumour_dseg.nii.gz                (native grid, tumour visits)
            sub-001_ses-m12_space-MNI152NLin2009aSym_res-2_desc-tumour_dseg.nii.gz

Every file is written atomically (:mod:`neurocast.io.atomic`, through
:class:`neurocast.io.derivatives.DerivativesWriter` for the truth, which adds provenance
sidecars); gzip headers carry no time stamp and no JSON holds a wall-clock time, so the same seed
and configuration give byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from neurocast._version import __version__
from neurocast.io.atomic import (
    write_json_atomic,
    write_nifti_atomic,
    write_text_atomic,
    write_tsv_atomic,
)
from neurocast.registration.transforms import read_velocity

TEMPLATE_SPACE = "MNI152NLin2009aSym"
TRUTH_DIR = Path("derivatives") / "neurocast-truth"
BIDS_VERSION = "1.9.0"
INTENT_VECTOR = 1007  # NIFTI_INTENT_VECTOR


def res_label(spacing_mm: float) -> str:
    """BIDS ``res-`` label of a grid spacing: ``2``, ``4``, ``2p5``."""
    s = float(spacing_mm)
    return str(int(s)) if s.is_integer() else f"{s:g}".replace(".", "p")


def grid_image(data: np.ndarray, affine: np.ndarray, dtype: type | None = None, code: int = 4) -> nib.Nifti1Image:
    """A NIfTI image in template space (xform code 4 = MNI152) or scanner space (code 1)."""
    arr = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    img.set_data_dtype(arr.dtype)
    return img


def velocity_image(velocity: Any, affine: np.ndarray) -> nib.Nifti1Image:
    """A (1, 3, x, y, z) torch velocity as a 4-D (x, y, z, 3) NIfTI vector image, voxel units."""
    v = velocity.detach().cpu().numpy()[0] if hasattr(velocity, "detach") else np.asarray(velocity)[0]
    data = np.ascontiguousarray(np.moveaxis(v, 0, -1).astype(np.float32))
    img = grid_image(data, affine)
    img.header.set_intent(INTENT_VECTOR, (), name="velocity")
    return img


class CohortWriter:
    """Paths and writers of one simulated cohort (raw BIDS + truth derivatives)."""

    def __init__(self, root: str | Path, grid_spacing_mm: float, field_spacing_mm: float) -> None:
        from neurocast.io.derivatives import DerivativesWriter

        self.root = Path(root).resolve()
        self.truth_root = self.root / TRUTH_DIR
        self.res = res_label(grid_spacing_mm)
        self.field_res = res_label(field_spacing_mm)
        self.root.mkdir(parents=True, exist_ok=True)
        self._truth_description()
        self.truth = DerivativesWriter(self.truth_root, name="neurocast")

    # --- dataset-level files --------------------------------------------------------------------

    def _truth_description(self) -> None:
        write_json_atomic(
            self.truth_root / "dataset_description.json",
            {
                "Name": "neurocast simulation ground truth",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "neurocast", "Version": __version__,
                                 "Description": "neurocast.simulate: synthetic longitudinal cohort"}],
                "SourceDatasets": [{"URL": "../../"}],
            },
        )

    def write_dataset_files(self, seed: int, n_subjects: int, config: dict[str, Any]) -> None:
        """dataset_description.json, README and participants.json of the raw dataset, and the
        truth's simulation.json (configuration and seed)."""
        write_json_atomic(
            self.root / "dataset_description.json",
            {
                "Name": f"neurocast synthetic longitudinal cohort (seed {seed}, {n_subjects} subjects)",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw",
                "License": "CC0",
                "Authors": ["neurocast simulate"],
                "GeneratedBy": [{"Name": "neurocast", "Version": __version__}],
            },
        )
        write_text_atomic(
            self.root / "README",
            "Synthetic longitudinal T1w dataset made by `neurocast simulate` (neurocast "
            f"{__version__}, seed {seed}). Subjects are not real people; anatomy comes from the "
            "MNI152NLin2009aSym template (or the base scans given). The ground truth (velocity "
            "fields, Jacobians, regional volumes, conversion times, tumour masks, artefacts, "
            "transforms) is in derivatives/neurocast-truth/. See the module documentation of "
            "neurocast.simulate for the generative model.\n",
        )
        write_json_atomic(self.root / "participants.json", PARTICIPANTS_JSON)
        write_json_atomic(self.truth_root / "simulation.json", {"seed": int(seed), "n_subjects": int(n_subjects),
                                                              "config": config, "neurocast_version": __version__})

    def write_tables(self, participants: pd.DataFrame, subjects: pd.DataFrame, visits: pd.DataFrame,
                     volumes: pd.DataFrame, parameters: dict[str, Any], seed: int) -> None:
        """participants.tsv (raw) and the truth tables."""
        write_tsv_atomic(self.root / "participants.tsv", participants)
        prov = {"parameters": parameters, "seed": seed}
        self.truth.write_tsv("subjects.tsv", subjects, **prov)
        self.truth.write_tsv("visits.tsv", visits, **prov)
        self.truth.write_tsv("regional_volumes.tsv", volumes, **prov)

    # --- per subject ----------------------------------------------------------------------------

    def sessions_tsv(self, sub: str, table: pd.DataFrame) -> Path:
        """Write ``sub-<label>/sub-<label>_sessions.tsv``."""
        return write_tsv_atomic(self.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", table)

    def raw_t1w(self, sub: str, ses: str, img: nib.Nifti1Image, sidecar: dict[str, Any]) -> Path:
        """Write the raw T1w and its BIDS JSON sidecar."""
        base = self.root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T1w"
        write_nifti_atomic(base.with_name(base.name + ".nii.gz"), img)
        write_json_atomic(base.with_name(base.name + ".json"), sidecar)
        return base.with_name(base.name + ".nii.gz")

    def truth_rel(self, sub: str, ses: str, suffix: str) -> str:
        """Relative truth path ``sub-X/ses-Y/anat/sub-X_ses-Y_<suffix>``."""
        return f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_{suffix}"

    def template_name(self, what: str, res: str | None = None) -> str:
        """``space-MNI152NLin2009aSym_res-<r>_<what>``."""
        return f"space-{TEMPLATE_SPACE}_res-{res or self.res}_{what}"

    def write_truth_nifti(self, sub: str, ses: str, suffix: str, img: nib.Nifti1Image,
                          parameters: dict[str, Any], seed: int, extra: dict[str, Any] | None = None) -> Path:
        """Write one truth image (with provenance sidecar); ``.nii.gz`` is added if missing."""
        if not suffix.endswith((".nii.gz", ".nii")):
            suffix = suffix + ".nii.gz"
        return self.truth.write_nifti(self.truth_rel(sub, ses, suffix), img, parameters=parameters, seed=seed,
                                      extra=extra)

    def write_transform(self, sub: str, ses: str, native_to_template: np.ndarray,
                        parameters: dict[str, Any], seed: int) -> Path:
        """The true native <-> template transform: ANTs ``.mat`` (image mode: maps template points
        to T1w points) and a JSON with both 4x4 RAS matrices."""
        rel = self.truth_rel(sub, ses, f"from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm")
        n2t = np.asarray(native_to_template, dtype=float)
        t2n = np.linalg.inv(n2t)
        try:
            from neurocast.registration.transforms import write_ants_affine

            write_ants_affine(t2n, self.truth.path(rel + ".mat"))
        except ImportError:  # pragma: no cover - ANTsPy is a core dependency
            pass
        self.truth.write_json(
            rel + ".json",
            {
                "Description": "True transform between this visit's raw T1w (scanner RAS mm) and the "
                "template (MNI152NLin2009aSym RAS mm). native_to_template maps a point of the raw "
                "image's world space to template space; template_to_native is its inverse (what "
                "the .mat file holds, ANTs/ITK LPS convention, image mode: it resamples the T1w "
                "onto a template grid).",
                "native_to_template": np.round(n2t, 10).tolist(),
                "template_to_native": np.round(t2n, 10).tolist(),
            },
            parameters=parameters,
            seed=seed,
        )
        return self.truth.path(rel + ".json")


PARTICIPANTS_JSON: dict[str, Any] = {
    "participant_id": {"Description": "Participant label."},
    "age": {"Description": "Age at the baseline visit.", "Units": "year"},
    "sex": {"Description": "Sex.", "Levels": {"M": "male", "F": "female"}},
    "diagnosis": {
        "Description": "Baseline diagnosis.",
        "Levels": {"CN": "cognitively normal", "MCI": "mild cognitive impairment", "AD": "Alzheimer's disease"},
    },
    "apoe4": {"Description": "Number of APOE e4 alleles (0, 1 or 2)."},
    "mmse": {"Description": "Mini-Mental State Examination score at baseline (0-30)."},
}

SESSIONS_COLUMNS = ("session_id", "acq_time", "age", "diagnosis", "mmse")


def json_cell(value: Any) -> str:
    """A compact, key-sorted JSON string for a TSV cell."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


__all__ = [
    "TEMPLATE_SPACE",
    "TRUTH_DIR",
    "CohortWriter",
    "grid_image",
    "json_cell",
    "read_velocity",
    "res_label",
    "velocity_image",
]
