"""HTML reports of an output folder: ``index.html``, one page per participant, the group pages.

Ground floor: this module *reads* the files the other steps wrote into a neurocast output
(derivatives) folder and never imports the modules that wrote them. It writes, fMRIPrep style:

=====================================  ===================================================
``OUTPUT_DIR/index.html``              every participant (status per step, QA flags), links to
                                       the participant and group pages
``OUTPUT_DIR/sub-<label>.html``        a participant: registration QC (NCC before/after,
                                       mosaics), forecasts as image strips over horizons with
                                       uncertainty, regional trajectories with bands, QA (flag,
                                       scores, overlay), provenance, failures
``OUTPUT_DIR/sub-<label>/figures/``    the PNG figures of that page (with provenance sidecars:
                                       a figure whose sources did not change is not redrawn)
``group/cohort/cohort.html``,          the cohort and survival sections written by
``group/survival/survival.html``       ``neurocast cohort`` / ``neurocast survival``, wrapped
=====================================  ===================================================

Every section renders only what exists: a study run with the steps preprocess and register has
no forecast or QA section. Pages are Jinja2 templates (``neurocast/report/templates``) rendered
with autoescaping always on, so a participant label, a file name or a value read from a JSON file
can never inject markup; links and image sources are percent-encoded and relative to the page, so
the folder can be moved or served as it is. Every file is written atomically.

Example:
    >>> from neurocast.report.html import build_reports  # doctest: +SKIP
    >>> paths = build_reports("/data/derivatives/neurocast")  # doctest: +SKIP
    >>> paths.index  # doctest: +SKIP
    PosixPath('/data/derivatives/neurocast/index.html')
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from neurocast._version import __version__
from neurocast.io.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from neurocast.io.derivatives import DerivativesWriter, sha256_file, sidecar_path

logger = logging.getLogger("neurocast")

FIGURE_VERSION = 2
"""Bumped when a figure's drawing changes, so that existing figures are redrawn."""
GROUP_PAGES = {
    "cohort": ("group/cohort", "cohort_section.html", "cohort.html", "Cohort trajectories"),
    "survival": ("group/survival", "survival_section.html", "survival.html", "Time to conversion"),
}
"""Group pages: folder, the section file the analysis wrote, the page wrapping it, its title."""
FLAG_ORDER = {"pass": 0, "review-artefact": 1, "review-lesion": 2}


# --------------------------------------------------------------------------------------------
# Templates


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for people: 3 significant decimals, ``n/a`` for missing."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "n/a"
        if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
            return f"{v:.{max(digits, 1)}g}"
        return f"{v:.{digits}f}"
    return str(value)


def _url(path: str | os.PathLike[str]) -> str:
    """Percent-encode a relative path for ``href``/``src`` (``/`` kept)."""
    return urllib.parse.quote(Path(path).as_posix(), safe="/")


def environment() -> Environment:
    """The Jinja2 environment of the reports: package templates, autoescaping always on."""
    env = Environment(
        loader=PackageLoader("neurocast.report", "templates"),
        autoescape=select_autoescape(("html", "htm", "xml"), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["url"] = _url
    return env


def render(template: str, **context: Any) -> str:
    """Render one of the report templates (``index.html``, ``participant.html``, ``group.html``)."""
    return environment().get_template(template).render(version=__version__, **context)


# --------------------------------------------------------------------------------------------
# Reading the output folder


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_tsv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _num(v: Any) -> Any:
    """A TSV cell as a number where it is one."""
    if v is None:
        return None
    if isinstance(v, str):
        if v in ("", "n/a", "nan", "NaN"):
            return None
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return v


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _session_of(path: Path, sub_dir: Path) -> str:
    parts = path.relative_to(sub_dir).parts
    return parts[0] if parts and parts[0].startswith("ses-") else ""


def _prefix_of(name: str) -> str:
    """``sub-01_ses-bl`` from ``sub-01_ses-bl_space-..._desc-forecast_T1w.nii.gz``."""
    keep = []
    for part in name.split("_"):
        if part.startswith(("sub-", "ses-")):
            keep.append(part)
        else:
            break
    return "_".join(keep)


def source_dataset(output_dir: str | os.PathLike[str]) -> Path | None:
    """The local source BIDS folder named in the output's ``dataset_description.json``."""
    info = _read_json(Path(output_dir) / "dataset_description.json") or {}
    for src in info.get("SourceDatasets", []) or []:
        url = str(src.get("URL", "")) if isinstance(src, dict) else str(src)
        url = url.removeprefix("file://")
        if url and Path(url).is_dir():
            return Path(url)
    return None


def _covariates(bids_dir: Path | None) -> dict[str, dict[str, Any]]:
    if bids_dir is None:
        return {}
    table = _read_tsv(bids_dir / "participants.tsv")
    if table is None or "participant_id" not in table.columns:
        return {}
    out = {}
    for rec in table.to_dict("records"):
        pid = str(rec.pop("participant_id"))
        out[pid] = {k: v for k, v in rec.items() if v not in ("", "n/a")}
    return out


def _failures(root: Path) -> pd.DataFrame:
    table = _read_tsv(root / "logs" / "failures.tsv")
    cols = ["participant_id", "step", "error", "log"]
    if table is None or any(c not in table.columns for c in cols):
        return pd.DataFrame(columns=cols)
    return table


def list_participants(output_dir: str | os.PathLike[str]) -> list[str]:
    """Labels (without ``sub-``) of the participants with outputs or failures in a folder."""
    root = Path(output_dir)
    labels = {p.name[4:] for p in root.glob("sub-*") if p.is_dir() and len(p.name) > 4}
    labels |= {str(x)[4:] for x in _failures(root)["participant_id"] if str(x).startswith("sub-")}
    return sorted(x for x in labels if x and "/" not in x and "\0" not in x)


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Figures


@dataclass
class _Figures:
    """Draws a participant's figures into ``sub-X/figures``, skipping those already up to date."""

    writer: DerivativesWriter
    folder: str
    base: Path

    def record(self, name: str, inputs: Sequence[Path], params: dict[str, Any]) -> dict[str, Any]:
        """The provenance of a figure; input paths relative to the output folder (so that the
        record, like the folder, does not depend on where the folder is)."""
        return {
            "GeneratedBy": {"Name": "neurocast", "Version": __version__},
            "Inputs": [
                {"path": _rel(Path(p), self.writer.root), "sha256": sha256_file(p)} for p in inputs
            ],
            "Parameters": {"figure": name, "figure_version": FIGURE_VERSION, **params},
        }

    def draw(
        self, name: str, inputs: Sequence[Path], params: dict[str, Any], make: Callable[[], Any]
    ) -> str | None:
        """Draw ``make()`` into ``<folder>/<name>`` unless an up-to-date copy exists; returns the
        figure's path relative to the page (``None`` when there is nothing to draw)."""
        import io

        out = self.writer.path(f"{self.folder}/{name}")
        side = sidecar_path(out)
        record = self.record(name, inputs, params)
        old = _read_json(side) if out.is_file() else None
        if old is not None and old.pop("OutputSHA256", None) == sha256_file(out):
            if json.loads(json.dumps(record)) == old:
                return _rel(out, self.base)
        fig = make()
        if fig is None:
            return None
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, facecolor=fig.get_facecolor())
        write_bytes_atomic(out, buf.getvalue())
        write_json_atomic(side, {**record, "OutputSHA256": sha256_file(out)})
        return _rel(out, self.base)


def _mosaic_of(
    images: Sequence[Path], titles: Sequence[str], overlays: Sequence[Path | None] | None = None
):
    from neurocast.report.participant_figures import slice_tiles

    vols = [_load(p) for p in images]
    shapes = {v.shape for v in vols}
    if len(shapes) != 1 or any(v.ndim != 3 for v in vols):
        return None
    ovs = None
    if overlays is not None:
        ovs = [None if o is None else _load(o) for o in overlays]
        ovs = [o if o is not None and o.shape == vols[0].shape else None for o in ovs]
    return slice_tiles(vols, titles=list(titles), planes=("axial", "coronal"), overlays=ovs)


# --------------------------------------------------------------------------------------------
# One participant


def _registration(sub_dir: Path, pid: str, figs: _Figures) -> dict[str, Any] | None:
    preproc = []
    for p in sorted(sub_dir.glob(f"**/{pid}*_desc-preproc_qc.json")):
        rec = _read_json(p) or {}
        row = rec.get("row") or {}
        preproc.append({
            "session": row.get("session_id") or _session_of(p, sub_dir) or "n/a",
            "passed": row.get("passed"), "similarity": row.get("similarity"),
            "mask_volume_ml": row.get("mask_volume_ml"), "skull_stripped": row.get("skull_stripped"),
            "reasons": row.get("reasons") or "n/a",
        })  # fmt: skip
    longitudinal = None
    lq = _read_json(sub_dir / "anat" / f"{pid}_desc-longitudinal_qc.json")
    if lq is not None:
        summary = lq.get("summary") or {}
        qc = lq.get("qc") or {}
        motion = qc.get("rigid_motion") or {}
        followups = []
        for f in summary.get("followups") or []:
            key = str(f.get("session_id") or "").removeprefix("ses-")
            m = motion.get(key) or {}
            followups.append({**f, "translation_mm": m.get("translation_mm"),
                              "rotation_deg": m.get("rotation_deg")})  # fmt: skip
        longitudinal = {
            "passed": summary.get("passed"),
            "followups": followups,
            "reasons": "; ".join(map(str, qc.get("reasons") or [])) or None,
        }
    images = sorted(sub_dir.glob(f"**/{pid}*_space-*_desc-longitudinal_T1w.nii.gz"))
    kind = "aligned visits (within-subject template space)"
    if not images:
        images = sorted(sub_dir.glob(f"**/{pid}*_space-*_desc-preproc_T1w.nii.gz"))
        kind = "preprocessed visits (template space)"
    figures = []
    if images:
        titles = [_session_of(p, sub_dir) or pid for p in images]
        src = figs.draw(f"{pid}_desc-visits_mosaic.png", images, {"kind": kind},
                        lambda: _mosaic_of(images, titles))  # fmt: skip
        if src:
            figures.append(
                {"src": src, "caption": f"{kind.capitalize()}: axial and coronal slices"}
            )
        jacs = sorted(sub_dir.glob(f"**/{pid}*_from-*_desc-jacobian_map.nii.gz"))
        if jacs and len(images) > 1:
            base_img = images[0]

            stem = f"{_prefix_of(base_img.name)}_space-*"
            masks = sorted(base_img.parent.glob(f"{stem}_desc-longitudinal_mask.nii.gz")) or sorted(
                base_img.parent.glob(f"{stem}_desc-brain_mask.nii.gz")
            )

            def atrophy():
                from neurocast.report.participant_figures import slice_tiles

                base = _load(base_img)
                mask = _load(masks[0]) > 0 if masks else np.ones(base.shape, bool)
                if mask.shape != base.shape:
                    mask = np.ones(base.shape, bool)
                vols, ovs = [], []
                for j in jacs:
                    jac = _load(j)
                    if jac.shape != base.shape:
                        return None
                    vols.append(base)
                    ovs.append(np.clip((1.0 - jac) * 100.0, 0, None) * mask)
                return slice_tiles(vols, titles=[_session_of(j, sub_dir) for j in jacs],
                                   planes=("axial",), overlays=ovs, overlay_threshold=1.0)  # fmt: skip

            src = figs.draw(
                f"{pid}_desc-atrophy_mosaic.png", [base_img, *masks[:1], *jacs], {}, atrophy
            )
            if src:
                figures.append(
                    {
                        "src": src,
                        "caption": "Measured volume loss from the baseline "
                        "(percent, > 1 % shown) at each follow-up, on the baseline image",
                    }
                )
    if not preproc and longitudinal is None and not figures:
        return None
    return {"preproc": preproc, "longitudinal": longitudinal, "figures": figures}


def _forecasts(sub_dir: Path, pid: str, figs: _Figures) -> list[dict[str, Any]]:
    out = []
    for fpath in sorted(sub_dir.glob(f"**/{pid}*_desc-forecast_T1w.nii.gz")):
        folder, prefix = fpath.parent, _prefix_of(fpath.name)
        side = _read_json(sidecar_path(fpath)) or {}
        tsv = folder / f"{prefix}_desc-forecast_volumes.tsv"
        table = _read_tsv(tsv) if tsv.is_file() else None
        horizons = side.get("Horizons")
        if not horizons and table is not None and "horizon_years" in table.columns:
            horizons = sorted({float(h) for h in table["horizon_years"]})

        def first(pattern: str, folder: Path = folder, prefix: str = prefix) -> Path | None:
            found = sorted(folder.glob(f"{prefix}_space-*_{pattern}"))
            return found[0] if found else None

        unc, jac = first("desc-uncertainty_T1w.nii.gz"), first("desc-jacobian_map.nii.gz")
        base = first("desc-longitudinal_T1w.nii.gz") or first("desc-preproc_T1w.nii.gz")
        entry: dict[str, Any] = {
            "session": _session_of(fpath, sub_dir) or "n/a",
            "horizons": [float(h) for h in horizons] if horizons else [],
            "files": [_rel(p, figs.base) for p in (fpath, unc, jac, tsv) if p is not None and p.exists()],
            "strip": None, "trajectories": None, "table": [],
        }  # fmt: skip

        def strip(fpath: Path = fpath, unc: Path | None = unc, jac: Path | None = jac,
                  base: Path | None = base, horizons: Any = horizons):  # fmt: skip
            from neurocast.report.participant_figures import forecast_strip

            fc = _load(fpath)
            n = fc.shape[3] if fc.ndim == 4 else 1
            hs = list(horizons)[:n] if horizons and len(horizons) >= n else list(range(1, n + 1))
            u = _load(unc) if unc is not None else None
            j = _load(jac) if jac is not None else None
            b = _load(base) if base is not None else None
            if b is not None and b.shape != fc.shape[:3]:
                b = None
            if u is not None and u.shape != fc.shape:
                u = None
            if j is not None and j.shape != fc.shape:
                j = None
            return forecast_strip(fc, horizons=hs, uncertainty=u, jacobian=j, baseline=b)

        inputs = [p for p in (fpath, unc, jac, base) if p is not None]
        entry["strip"] = figs.draw(f"{prefix}_desc-forecast_strip.png", inputs, {}, strip)
        if table is not None and len(table):

            def traj(table: pd.DataFrame = table, prefix: str = prefix):
                from neurocast.report.participant_figures import regional_trajectories

                return regional_trajectories(table, title=f"{prefix}: forecast regional change")

            try:
                entry["trajectories"] = figs.draw(
                    f"{prefix}_desc-forecast_trajectories.png", [tsv], {}, traj
                )
            except ValueError:
                entry["trajectories"] = None
            if "horizon_years" in table.columns:
                hmax = max(table["horizon_years"], key=lambda h: _num(h) or 0)
                last = table[table["horizon_years"] == hmax].copy()
                if "change_percent_mean" in last.columns:
                    last["_abs"] = [abs(_num(v) or 0) for v in last["change_percent_mean"]]
                    last = last.sort_values("_abs", ascending=False)
                cols = ["region", "horizon_years", "baseline_volume_mm3", "mean_mm3", "q10_mm3",
                        "q90_mm3", "change_percent_mean"]  # fmt: skip
                entry["table"] = [
                    {c: _num(r.get(c)) for c in cols} for r in last.head(12).to_dict("records")
                ]
        out.append(entry)
    return out


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        items = []
        for k, v in d.items():
            items += _flatten(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
        return items
    if isinstance(d, list) and all(not isinstance(x, (dict, list)) for x in d) and len(d) <= 8:
        return [(prefix, ", ".join(_fmt(x) for x in d))]
    if isinstance(d, (dict, list)):
        return [(prefix, json.dumps(d)[:200])]
    return [(prefix, d)]


QA_SCORE_KEYS = (
    "lesion_score", "lesion_percentile", "artefact_score", "artefact_percentile",
    "anomaly_volume_mm3", "n_clusters", "largest_cluster_mm3", "largest_cluster_share",
    "level_scale",
)  # fmt: skip
"""Scores of a QA record shown first (as written by ``neurocast.anomaly.workflow``); ``level_scale``
above 1 says the scan's residual was raised all over, beyond every healthy reference, and a low
``largest_cluster_share`` that the supra-threshold evidence is scattered (motion) rather than one
compact finding."""


def _qa_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """Flag, percentile, scores, IQMs and other facts of a ``desc-qa.json`` record.

    Reads the anomaly workflow's record (``row``: the ``qa.tsv`` row; ``result``: flag,
    percentiles, scores, clusters, IQMs; ``calibration``; ``preprocessing_qc``) as well as a flat
    record (``flag``, ``percentile``, ``scores``, ``iqms`` at the top).
    """
    row = rec.get("row") if isinstance(rec.get("row"), dict) else {}
    res = rec.get("result") if isinstance(rec.get("result"), dict) else {}

    def pick(key: str) -> Any:
        for src in (res, row, rec):
            if key in src and src[key] is not None:
                return src[key]
        return None

    scores = rec.get("scores") if isinstance(rec.get("scores"), dict) else None
    score_items = (
        _flatten(scores) if scores is not None
        else [(k, pick(k)) for k in QA_SCORE_KEYS if pick(k) is not None]
    )  # fmt: skip
    if scores is None and not isinstance(rec.get("scores"), (dict, list, type(None))):
        score_items.insert(0, ("score", rec["scores"]))
    evidence = pick("lesion_evidence")
    if isinstance(evidence, dict):  # what the lesion score is made of
        score_items += [(f"lesion evidence: {k}", v) for k, v in evidence.items()]
    feature_z = pick("artefact_feature_z")
    if isinstance(feature_z, dict):  # what the artefact score is made of, in healthy SDs
        score_items += [(f"artefact evidence: {k} (robust z)", v) for k, v in feature_z.items()]
    iqms = pick("iqms") or pick("IQMs") or pick("image_quality")
    other: list[tuple[str, Any]] = []
    for key in ("over_threshold", "used_prior", "prior_session_id", "skull_stripped", "noise_sd"):
        value = pick(key)
        if isinstance(value, list):  # the scores above their thresholds
            value = ", ".join(map(str, value)) or "none"
        if value is not None:
            other.append((key, value))
    if isinstance(rec.get("calibration"), dict):
        other += [(f"calibration {k}", v) for k, v in _flatten(rec["calibration"])]
    if isinstance(rec.get("preprocessing_qc"), dict):
        pq = rec["preprocessing_qc"]
        other += [("preprocessing passed", pq.get("passed")),
                  ("preprocessing similarity", pq.get("similarity"))]  # fmt: skip
    known = {"flag", "scores", "iqms", "IQMs", "image_quality", "percentile", "row", "result",
             "calibration", "preprocessing_qc", "outputs"}  # fmt: skip
    other += [(k, v) for k, v in sorted(rec.items())
              if k not in known and not isinstance(v, (dict, list))]  # fmt: skip
    flag = pick("flag")
    return {
        "flag": None if flag is None else str(flag),
        "percentile": pick("percentile"),
        "scores": score_items,
        "iqms": _flatten(iqms) if isinstance(iqms, dict) else [],
        "other": other,
    }


def _qa(sub_dir: Path, pid: str, figs: _Figures) -> list[dict[str, Any]]:
    out = []
    for qpath in sorted(sub_dir.glob(f"**/{pid}*_desc-qa.json")):
        if "figures" in qpath.relative_to(sub_dir).parts:
            continue
        rec = _read_json(qpath) or {}
        folder, prefix = qpath.parent, _prefix_of(qpath.name)
        fields = _qa_fields(rec)
        # the anomaly module's own figure (sub-X/figures/<prefix>_desc-anomaly_mosaic.png), or a
        # PNG beside the record, or else an overlay drawn here from the anomaly map
        pngs = sorted((sub_dir / "figures").glob(f"{prefix}_desc-anomaly_mosaic.png"))
        pngs += sorted(folder.glob(f"{prefix}_*.png"))
        overlay = _rel(pngs[0], figs.base) if pngs else None
        if overlay is None:
            amap = sorted(folder.glob(f"{prefix}_space-*_desc-anomaly_map.nii.gz"))
            base = sorted(folder.glob(f"{prefix}_space-*_desc-longitudinal_T1w.nii.gz")) or sorted(
                folder.glob(f"{prefix}_space-*_desc-preproc_T1w.nii.gz")
            )
            if amap and base:
                overlay = figs.draw(f"{prefix}_desc-anomaly_overlay.png", [base[0], amap[0]], {},
                                    lambda b=base[0], a=amap[0], t=prefix: _mosaic_of([b], [t], [a]))  # fmt: skip
        out.append({
            "session": _session_of(qpath, sub_dir) or "n/a",
            **fields,
            "flag_class": _flag_class(fields["flag"]),
            "overlay": overlay,
            "file": _rel(qpath, figs.base),
        })  # fmt: skip
    return out


def _flag_class(flag: str | None) -> str:
    """A CSS class for a QA flag: one of the known flags, never a value read from a file."""
    return f"flag-{flag}" if flag in FLAG_ORDER else "flag-other"


def _model_id(rec: dict[str, Any]) -> str | None:
    """The model a provenance record names: ``ModelCheckpoint`` (the forecaster), any other
    ``ModelCard*`` text field, a ``Model`` entry, or the ``model`` parameter."""
    for key, value in rec.items():
        if key.startswith(("ModelCheckpoint", "ModelCard")) and key != "ModelCardSHA256":
            if isinstance(value, str) and value:
                return value
    model = rec.get("Model")
    if isinstance(model, dict):
        model = model.get("id") or model.get("name")
    if isinstance(model, str) and model:
        return model
    params = rec.get("Parameters") if isinstance(rec.get("Parameters"), dict) else {}
    value = params.get("model")
    return value if isinstance(value, str) and value else None


def _provenance(sub_dir: Path, pid: str, base: Path) -> list[dict[str, Any]]:
    wanted = [
        ("preprocess", f"**/{pid}*_desc-preproc_qc.json"),
        ("register", f"anat/{pid}_desc-longitudinal_qc.json"),
        ("forecast", f"**/{pid}*_desc-forecast_T1w.nii.gz"),
        ("qa", f"**/{pid}*_desc-qa.json"),
    ]
    rows = []
    for step, pattern in wanted:
        for out in sorted(sub_dir.glob(pattern)):
            rec = _read_json(sidecar_path(out))
            if rec is None:
                continue
            gen = rec.get("GeneratedBy") or {}
            card_id = _model_id(rec)
            rows.append({
                "step": step, "output": _rel(out, base),
                "version": gen.get("Version") if isinstance(gen, dict) else None,
                "seed": rec.get("Seed"), "model_card_sha256": rec.get("ModelCardSHA256"),
                "model_card_id": card_id or None,
                "parameters": json.dumps(rec.get("Parameters") or {}, sort_keys=True),
                "inputs": [{"path": str(i.get("path")), "sha256": str(i.get("sha256", ""))[:12]}
                           for i in rec.get("Inputs") or [] if isinstance(i, dict)],
            })  # fmt: skip
    return rows


def _empty_context(
    label: str, covariates: dict[str, Any] | None, failures: pd.DataFrame
) -> dict[str, Any]:
    pid = f"sub-{label}"
    fails = failures[failures["participant_id"] == pid]
    return {
        "participant_id": pid,
        "covariates": sorted((covariates or {}).items()),
        "failures": [
            {
                "step": r["step"],
                "error": r["error"],
                "log": f"logs/{r['log']}" if r["log"] else None,
            }
            for r in fails.to_dict("records")
        ],
        "registration": None,
        "forecasts": [],
        "qa": [],
        "provenance": [],
        "report_error": None,
    }


def collect_participant(
    output_dir: str | os.PathLike[str],
    label: str,
    *,
    covariates: dict[str, Any] | None = None,
    failures: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Everything a participant page shows, read from the output folder (figures drawn).

    Returns:
        The page's context: ``participant_id``, ``covariates``, ``failures`` and the sections
        ``registration`` (or ``None``), ``forecasts``, ``qa`` and ``provenance`` (lists, empty
        when absent).
    """
    root = Path(output_dir)
    writer = DerivativesWriter(root)
    pid = f"sub-{label}"
    sub_dir = writer.root / pid
    figs = _Figures(writer, f"{pid}/figures", writer.root)
    ctx = _empty_context(
        label, covariates, _failures(writer.root) if failures is None else failures
    )
    if sub_dir.is_dir():
        ctx["registration"] = _registration(sub_dir, pid, figs)
        ctx["forecasts"] = _forecasts(sub_dir, pid, figs)
        ctx["qa"] = _qa(sub_dir, pid, figs)
        ctx["provenance"] = _provenance(sub_dir, pid, writer.root)
    return ctx


def _status(ctx: dict[str, Any]) -> dict[str, Any]:
    """One row of the index table from a participant's page context."""
    failed = {f["step"] for f in ctx["failures"]}
    reg = ctx["registration"] or {}

    def state(step: str, ok: bool | None) -> str:
        if step in failed:
            return "failed"
        return {None: "", True: "done", False: "failed"}[ok]

    pre = reg.get("preproc") or []
    lon = reg.get("longitudinal")
    flags = [q["flag"] for q in ctx["qa"] if q["flag"]]
    worst = max(flags, key=lambda f: FLAG_ORDER.get(f, 3)) if flags else None
    covs = dict(ctx["covariates"])
    return {
        "participant_id": ctx["participant_id"],
        "page": f"{ctx['participant_id']}.html",
        "diagnosis": covs.get("diagnosis"),
        "age": covs.get("age"),
        "preprocess": state("preprocess", all(r["passed"] for r in pre) if pre else None),
        "register": state("register", lon["passed"] if lon else None),
        "forecast": state("forecast", True if ctx["forecasts"] else None),
        "qa": state("qa", True if ctx["qa"] else None),
        "qa_flag": worst,
        "qa_flag_class": _flag_class(worst),
        "n_failures": len(ctx["failures"]),
    }


def participant_report(
    output_dir: str | os.PathLike[str], label: str, *, context: dict[str, Any] | None = None
) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>.html`` (figures drawn as needed); returns its path."""
    root = Path(output_dir).resolve()
    if context is None:
        covs = _covariates(source_dataset(root)).get(f"sub-{label}", {})
        context = collect_participant(root, label, covariates=covs)
    html = render("participant.html", root_prefix="", **context)
    return write_text_atomic(root / f"sub-{label}.html", html)


# --------------------------------------------------------------------------------------------
# Group pages and the index


def group_pages(output_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Wrap the group sections the analyses wrote (cohort, survival) into pages; returns them."""
    root = Path(output_dir).resolve()
    pages = {}
    for key, (folder, section, page, title) in GROUP_PAGES.items():
        src = root / folder / section
        if not src.is_file():
            continue
        # the section is written by neurocast's own analyses, which escape what they insert; it is
        # embedded as it is (its image links are relative to its folder, where the page is too)
        body = Markup(src.read_text(encoding="utf-8"))
        prefix = "../" * len(Path(folder).parts)
        html = render("group.html", title=title, body=body, root_prefix=prefix)
        pages[key] = write_text_atomic(root / folder / page, html)
    return pages


def _qa_table(root: Path) -> str | None:
    for cand in (root / "qa.tsv", root / "group" / "qa.tsv", root / "group" / "qa" / "qa.tsv"):
        if cand.is_file():
            return _rel(cand, root)
    return None


def index_report(
    output_dir: str | os.PathLike[str],
    rows: Iterable[dict[str, Any]],
    *,
    title: str = "neurocast report",
    notes: Sequence[str] = (),
    group: dict[str, Path] | None = None,
) -> Path:
    """Write ``OUTPUT_DIR/index.html`` from the index rows of the participants; returns its path."""
    root = Path(output_dir).resolve()
    rows = list(rows)
    group = group if group is not None else {}
    links = [{"href": _rel(p, root), "title": GROUP_PAGES[k][3]} for k, p in sorted(group.items())]
    tables = []
    for rel, name in (("group_desc-preproc_qc.tsv", "Preprocessing QC table"),
                      (_qa_table(root), "QA table")):  # fmt: skip
        if rel and (root / rel).is_file():
            tables.append({"href": rel, "title": name})
    counts = {
        step: {s: sum(r[step] == s for r in rows) for s in ("done", "failed")}
        for step in ("preprocess", "register", "forecast", "qa")
    }
    steps = [s for s, c in counts.items() if c["done"] or c["failed"]]
    flags: dict[tuple[str, str], int] = {}
    for r in rows:
        if r["qa_flag"]:
            key = (r["qa_flag"], r["qa_flag_class"])
            flags[key] = flags.get(key, 0) + 1
    html = render(
        "index.html",
        title=title,
        rows=rows,
        steps=steps,
        counts=counts,
        group_links=links,
        tables=tables,
        show_covariates=any(r.get("diagnosis") or r.get("age") for r in rows),
        flags=sorted(flags.items()),
        notes=list(notes),
        root_prefix="",
        has_failures=any(r["n_failures"] for r in rows),
    )
    return write_text_atomic(root / "index.html", html)


@dataclass
class ReportPaths:
    """What :func:`build_reports` wrote."""

    index: Path
    participants: dict[str, Path] = field(default_factory=dict)
    group: dict[str, Path] = field(default_factory=dict)


def build_reports(
    output_dir: str | os.PathLike[str],
    *,
    participants: Iterable[str] | None = None,
    bids_dir: str | os.PathLike[str] | None = None,
    title: str = "neurocast report",
    notes: Sequence[str] = (),
    progress: bool = False,
) -> ReportPaths:
    """Write the participant pages, the group pages and ``index.html`` of an output folder.

    Args:
        output_dir: the neurocast output folder.
        participants: labels to (re)write pages for (default: every participant with outputs or
            failures); the index always lists every participant of the folder.
        bids_dir: the source BIDS dataset, for the covariates shown (default: the one named in
            ``dataset_description.json``).
        title: the index page's title.
        notes: lines shown at the top of the index (e.g. steps that were skipped).
        progress: show a progress bar over participants.
    """
    from tqdm.auto import tqdm

    root = Path(output_dir).resolve()
    everyone = list_participants(root)
    todo = set(everyone if participants is None else participants)
    covs = _covariates(Path(bids_dir) if bids_dir is not None else source_dataset(root))
    fails = _failures(root)
    paths = ReportPaths(root / "index.html")
    rows = []
    for label in tqdm(everyone, desc="reports", unit="participant", disable=not progress):
        try:
            ctx = collect_participant(
                root, label, covariates=covs.get(f"sub-{label}"), failures=fails
            )
        except Exception as exc:  # a report never stops the others (nor the run that wrote them)
            logger.warning("report of sub-%s incomplete: %s: %s", label, type(exc).__name__, exc)
            ctx = _empty_context(label, covs.get(f"sub-{label}"), fails)
            ctx["report_error"] = f"{type(exc).__name__}: {exc}"
        if label in todo or not (root / f"sub-{label}.html").is_file():
            paths.participants[label] = participant_report(root, label, context=ctx)
        rows.append(_status(ctx))
    paths.group = group_pages(root)
    paths.index = index_report(root, rows, title=title, notes=notes, group=paths.group)
    return paths


def referenced_files(html_path: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """Local files a page links or shows (``<img src>``, ``<a href>``), as (tag, path) pairs.

    Used by tests and by anyone checking that a report folder is complete: every returned path
    should exist. External (``http:``, ``mailto:``) and in-page (``#``) links are left out.
    """
    from html.parser import HTMLParser

    page = Path(html_path)
    found: list[tuple[str, Path]] = []

    class _Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            for name, value in attrs:
                if value is None or (tag, name) not in (("img", "src"), ("a", "href")):
                    continue
                target = urllib.parse.urlsplit(value)
                if target.scheme or target.netloc or not target.path:
                    continue
                found.append((tag, page.parent / urllib.parse.unquote(target.path)))

    _Parser().feed(page.read_text(encoding="utf-8"))
    return found


__all__ = [
    "FIGURE_VERSION",
    "GROUP_PAGES",
    "ReportPaths",
    "build_reports",
    "collect_participant",
    "environment",
    "group_pages",
    "index_report",
    "list_participants",
    "participant_report",
    "referenced_files",
    "render",
    "source_dataset",
]
