"""Group-level analyses behind ``neurocast cohort`` and ``neurocast survival``.

:func:`cohort_report` gathers the per-subject forecasts (and the measured regional volumes,
where there are any) of an output folder into the cohort arrays of
:mod:`neurocast.progress.cohort` and writes, under ``OUTPUT_DIR/group/cohort/``:

==============================  ============================================================
``cohort_forecasts.nc``         cohort Dataset (netCDF-4; reads back identically)
``cohort_forecasts.tsv``        tidy forecasts (schema ``cohort_forecasts``)
``cohort_summary.tsv``          group trajectories with bands (schema ``cohort_summary``)
``cohort_observed.nc`` / .tsv   measured volumes at real visits (schema ``cohort_observed``)
``cohort_comparison.tsv``       forecast against measurement (schema ``cohort_comparison``)
``cohort_trajectories_<by>.png`` group trajectories by diagnosis / sex / APOE4
``cohort_comparison.png``       forecast against measured change
``cohort_section.html``         the cohort section of the HTML report
==============================  ============================================================

:func:`survival_analysis` derives conversion events from the BIDS dataset's ``sessions.tsv``
(or reads a given events table), adds forecast-derived features where a cohort file exists, and
writes under ``OUTPUT_DIR/group/survival/``: ``survival_events.tsv``, ``survival_excluded.tsv``,
``survival_kaplan_meier.tsv`` and ``survival_kaplan_meier_summary.tsv``,
``survival_hazard_ratios.tsv``, ``survival_concordance.tsv``, ``survival_ph_test.tsv`` (each with
its schema of the same name in ``data_specs``; the events table's is ``conversion_events``),
``survival_km_<group>.png``, ``survival_forest.png``, ``survival_concordance.png`` and
``survival_section.html``.

Every file is written atomically through :class:`~neurocast.io.derivatives.DerivativesWriter`
with a provenance sidecar, and every table is validated against its schema before it is written.
"""

from __future__ import annotations

import html
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from neurocast.errors import InputError
from neurocast.io.atomic import write_json_atomic
from neurocast.io.derivatives import DerivativesWriter, provenance, sha256_file, sidecar_path
from neurocast.io.tables import read_table, validate_frame
from neurocast.progress import cohort as C
from neurocast.progress import events as E
from neurocast.progress import survival as S
from neurocast.report.figures import save_figure
from neurocast.report.survival_plots import (
    plot_concordance,
    plot_forecast_vs_observed,
    plot_forest,
    plot_group_trajectories,
    plot_survival_curves,
)

COHORT_DIR = Path("group") / "cohort"
SURVIVAL_DIR = Path("group") / "survival"
FORECAST_GLOB = "sub-*/**/*_desc-forecast_volumes.nc"
"""Where :func:`cohort_report` looks for per-subject forecasts in an output folder."""
OBSERVED_GLOB = "sub-*/**/*_desc-regional_volumes.tsv"
"""Where :func:`cohort_report` looks for measured regional volumes in an output folder."""
DEFAULT_BY: tuple[tuple[str, ...], ...] = (("diagnosis",), ("sex",), ("apoe4",))
DEFAULT_FEATURES = ("age", "sex", "apoe4", "mmse")
DEFAULT_KM_GROUPS = ("apoe4", "sex")


# --------------------------------------------------------------------------------------------
# Writing helpers


def _check_table(table: pd.DataFrame, schema: str) -> None:
    """Validate a table exactly as it will be read back from TSV."""
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False, na_values=[])
    validate_frame(frame, schema)


def _write_table(writer: DerivativesWriter, rel: Path, table: pd.DataFrame, schema: str, prov: dict) -> Path:
    _check_table(table, schema)
    return writer.write_tsv(rel, table, **prov)


def _finish(writer: DerivativesWriter, out: Path, prov: dict) -> Path:
    """Provenance sidecar for a file written outside the writer's own methods."""
    record = dict(provenance(**prov), OutputSHA256=sha256_file(out))
    write_json_atomic(sidecar_path(out), record)
    return out


def _write_figure(writer: DerivativesWriter, rel: Path, fig: Any, prov: dict) -> Path:
    out = writer.path(rel)
    save_figure(fig, out)
    return _finish(writer, out, prov)


def _write_netcdf(writer: DerivativesWriter, rel: Path, ds: xr.Dataset, prov: dict) -> Path:
    out = writer.path(rel)
    C.save_cohort(ds, out)
    return _finish(writer, out, prov)


def _html_table(table: pd.DataFrame, max_rows: int = 30, digits: int = 3) -> str:
    t = table.head(max_rows).copy()
    for c in t.columns:
        if pd.api.types.is_float_dtype(t[c]):
            t[c] = t[c].map(lambda v: "n/a" if pd.isna(v) else f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}")
    body = t.to_html(index=False, escape=True, na_rep="n/a", border=0, classes="neurocast-table")
    more = f"<p class='note'>First {max_rows} of {len(table)} rows.</p>" if len(table) > max_rows else ""
    return body + more


def _img(path: Path, base: Path, alt: str) -> str:
    src = os.path.relpath(path, base)
    return f"<figure><img src='{html.escape(src)}' alt='{html.escape(alt)}' style='max-width:100%'><figcaption>{html.escape(alt)}</figcaption></figure>"


def _source_bids(output_dir: Path) -> Path | None:
    """The source BIDS folder named in the output's dataset_description.json, if it is local."""
    desc = output_dir / "dataset_description.json"
    try:
        info = json.loads(desc.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for src in info.get("SourceDatasets", []) or []:
        url = str(src.get("URL", "")) if isinstance(src, dict) else str(src)
        url = url.removeprefix("file://")
        if url and Path(url).is_dir():
            return Path(url)
    return None


def _participants(bids_dir: Path | None) -> pd.DataFrame | None:
    if bids_dir is None:
        return None
    p = Path(bids_dir) / "participants.tsv"
    return read_table(p, "participants") if p.is_file() else None


# --------------------------------------------------------------------------------------------
# Cohort report


@dataclass
class CohortReport:
    """What :func:`cohort_report` computed and wrote."""

    forecasts: xr.Dataset | None
    observed: xr.Dataset | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    html: str = ""
    notes: list[str] = field(default_factory=list)


def _load_forecasts(items: Iterable[xr.Dataset | str | os.PathLike[str]]) -> tuple[list[xr.Dataset], list[Path]]:
    dss, paths = [], []
    for it in items:
        if isinstance(it, xr.Dataset):
            dss.append(it)
        else:
            p = Path(it)
            try:
                dss.append(xr.load_dataset(p, engine=C.NETCDF_ENGINE))
            except (OSError, ValueError) as exc:
                raise InputError(p, f"cannot read forecast ({exc})") from exc
            paths.append(p)
    return dss, paths


def _load_observed(obs: Any, output_dir: Path) -> tuple[pd.DataFrame | None, list[Path]]:
    if obs is None:
        files = sorted(output_dir.glob(OBSERVED_GLOB))
        if not files:
            return None, []
        obs = files
    if isinstance(obs, pd.DataFrame):
        return obs, []
    files = [Path(obs)] if isinstance(obs, (str, os.PathLike)) else [Path(p) for p in obs]
    frames = [C.read_regional_volumes(p) for p in files]
    return pd.concat(frames, ignore_index=True), files


def cohort_report(
    output_dir: str | os.PathLike[str],
    *,
    forecasts: Iterable[xr.Dataset | str | os.PathLike[str]] | None = None,
    observed: pd.DataFrame | str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    bids_dir: str | os.PathLike[str] | None = None,
    participants: pd.DataFrame | None = None,
    by: Sequence[Sequence[str]] = DEFAULT_BY,
    band: float = 0.9,
    regions: Sequence[str] | None = None,
    html_base: str | os.PathLike[str] | None = None,
) -> CohortReport:
    """Gather forecasts (and measured volumes) of a cohort and write tables, figures and HTML.

    Args:
        output_dir: the neurocast output (derivatives) folder; results go to ``group/cohort/``.
        forecasts: per-subject forecast Datasets or netCDF paths (default: the files matching
            :data:`FORECAST_GLOB` in ``output_dir``).
        observed: measured regional volumes: a long table, a TSV path or paths (default: the
            files matching :data:`OBSERVED_GLOB` in ``output_dir``; none is fine).
        bids_dir: the source BIDS dataset (default: from ``dataset_description.json``), for
            the covariates of the observed subjects (``participants.tsv``).
        participants: the covariate table itself (overrides ``bids_dir``).
        by: the groupings of the summaries (default diagnosis, sex, APOE4).
        band: width of the predictive band (0.9: 5-95 %).
        regions: regions to plot (default: hippocampus, lateral ventricles, then the rest).
        html_base: folder the HTML section will be shown from (image links are relative to it;
            default ``group/cohort``).

    Raises:
        InputError: there are neither forecasts nor measured volumes.
    """
    out_root = Path(output_dir)
    writer = DerivativesWriter(out_root)
    report = CohortReport(None, None)
    base = Path(html_base) if html_base is not None else writer.path(COHORT_DIR)
    if forecasts is None:
        forecasts = sorted(writer.root.glob(FORECAST_GLOB))
    dss, fpaths = _load_forecasts(forecasts)
    obs_table, opaths = _load_observed(observed, writer.root)
    if not dss and obs_table is None:
        raise InputError(writer.root, f"no forecasts ({FORECAST_GLOB}) and no regional volumes ({OBSERVED_GLOB}) to report")
    bids = Path(bids_dir) if bids_dir is not None else _source_bids(writer.root)
    if participants is None:
        participants = _participants(bids)
    params = {"by": [list(b) for b in by], "band": band}
    parts_html: list[str] = ["<section id='cohort' class='neurocast-section'>", "<h2>Cohort trajectories</h2>"]

    if dss:
        ds = C.gather_forecasts(dss, provenance={"files": [str(p) for p in fpaths]}, join="outer")
        report.forecasts = ds
        prov = {"inputs": fpaths, "parameters": params}
        report.paths["forecasts_nc"] = _write_netcdf(writer, COHORT_DIR / "cohort_forecasts.nc", ds, prov)
        tidy = C.to_tidy(ds)
        report.tables["forecasts"] = tidy
        report.paths["forecasts_tsv"] = _write_table(writer, COHORT_DIR / "cohort_forecasts.tsv", tidy, "cohort_forecasts", prov)
        summaries = [C.group_summary(ds, by=list(b), band=band) for b in by]
        summary = _concat_summaries(summaries)
        report.tables["summary"] = summary
        report.paths["summary_tsv"] = _write_table(writer, COHORT_DIR / "cohort_summary.tsv", summary, "cohort_summary", prov)
        plot_regions = list(regions) if regions is not None else _default_regions(ds)
        parts_html.append(
            f"<p>{ds.sizes['subject']} subjects, horizons {', '.join(f'{h:g}' for h in ds['horizon'].values)} years, "
            f"{ds.sizes['region']} regions, {ds.sizes[ds.attrs['stochastic_dim']]} {ds.attrs['stochastic_dim']}s per forecast. "
            "Lines: group mean of the subjects' mean forecasts (percent change from baseline); dark band: its "
            f"95 % confidence interval; light band: {band:.0%} predictive band of a group member.</p>"
        )
        for b, s in zip(by, summaries, strict=True):
            name = "_".join(b)
            fig = plot_group_trajectories(s, regions=plot_regions, title=f"Forecast change by {', '.join(b)}")
            p = _write_figure(writer, COHORT_DIR / f"cohort_trajectories_{name}.png", fig, prov)
            report.paths[f"trajectories_{name}"] = p
            parts_html.append(_img(p, base, f"Forecast regional change by {', '.join(b)}"))
        parts_html.append("<h3>Group summary (first rows)</h3>" + _html_table(summary.drop(columns=["grouping"])))
    if obs_table is not None:
        obs = C.observed_trajectories(obs_table, participants)
        report.observed = obs
        prov = {"inputs": opaths, "parameters": params}
        report.paths["observed_nc"] = _write_netcdf(writer, COHORT_DIR / "cohort_observed.nc", obs, prov)
        otidy = C.observed_to_tidy(obs)
        report.tables["observed"] = otidy
        report.paths["observed_tsv"] = _write_table(writer, COHORT_DIR / "cohort_observed.tsv", otidy, "cohort_observed", prov)
        msg = f"<p>Measured volumes: {obs.sizes['subject']} subjects, up to {obs.sizes['visit']} visits."
        if "ventricles_percent_icv" in obs:
            v = obs["ventricles_percent_icv"].isel(visit=0).values
            msg += f" Baseline lateral ventricles {np.nanmean(v):.2f} % of ICV on average (TADPOLE convention)."
        else:
            report.notes.append("ventricles as % ICV not computed: no lateral-ventricle or ICV region found")
        parts_html.append(msg + "</p>")
        if report.forecasts is not None:
            comp = C.compare_to_observed(report.forecasts, obs, band=band)
            report.tables["comparison"] = comp
            prov = {"inputs": [*fpaths, *opaths], "parameters": params}
            report.paths["comparison_tsv"] = _write_table(writer, COHORT_DIR / "cohort_comparison.tsv", comp, "cohort_comparison", prov)
            if len(comp):
                fig = plot_forecast_vs_observed(comp, regions=[r for r in _default_regions(report.forecasts) if r in set(comp["region"])])
                p = _write_figure(writer, COHORT_DIR / "cohort_comparison.png", fig, prov)
                report.paths["comparison_png"] = p
                inside = comp["within_band"].dropna()
                parts_html.append(
                    f"<p>Forecast against measurement: {len(comp)} (subject, visit, region) pairs; mean absolute "
                    f"error {comp['error_percent'].abs().mean():.2f} percentage points; {inside.mean():.0%} of "
                    f"measurements inside the {band:.0%} forecast band.</p>"
                )
                parts_html.append(_img(p, base, "Forecast against measured change at follow-up visits"))
            else:
                report.notes.append("no follow-up visit within the forecast horizons: nothing to compare")
    for n in report.notes:
        parts_html.append(f"<p class='note'>{html.escape(n)}</p>")
    parts_html.append("</section>")
    report.html = "\n".join(parts_html)
    report.paths["html"] = writer.write_text(
        COHORT_DIR / "cohort_section.html", report.html, inputs=[*fpaths, *opaths], parameters=params
    )
    return report


def _concat_summaries(summaries: Sequence[pd.DataFrame]) -> pd.DataFrame:
    cols: list[str] = []
    for s in summaries:
        cols += [c for c in s.columns if c not in cols]
    rows = [r for s in summaries for r in s.to_dict("records")]
    out = pd.DataFrame(rows, columns=cols)
    head = ["grouping", "group", *[c for c in C.COVARIATES if c in out.columns]]
    return out[head + [c for c in out.columns if c not in head]]


def _default_regions(ds: xr.Dataset, n: int = 6) -> list[str]:
    names = [str(r) for r in ds["region"].values]
    first = C.select_regions(names, C.HIPPOCAMPUS_PATTERN) + C.ventricle_regions(names)
    icv = C.icv_region(names)
    rest = [r for r in names if r not in first and r != icv]
    return (first + rest)[:n]


# --------------------------------------------------------------------------------------------
# Survival analysis


@dataclass
class SurvivalReport:
    """What :func:`survival_analysis` computed and wrote."""

    events: pd.DataFrame
    kaplan_meier: dict[str, S.KaplanMeierResult] = field(default_factory=dict)
    concordance: pd.DataFrame | None = None
    hazard_ratios: pd.DataFrame | None = None
    ph_test: pd.DataFrame | None = None
    models: dict[tuple[str, str], S.ConversionModel] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    html: str = ""
    notes: list[str] = field(default_factory=list)


def _usable(table: pd.DataFrame, col: str, min_share: float = 0.8) -> bool:
    if col not in table.columns:
        return False
    vals = table[col].dropna()
    return len(vals) >= min_share * len(table) and vals.nunique() > 1


def _km_group_column(table: pd.DataFrame, col: str) -> tuple[pd.DataFrame, str]:
    """Continuous columns are split at their median (``<= median`` / ``> median``)."""
    vals = pd.to_numeric(table[col], errors="coerce") if col not in C.TEXT_COVARIATES else None
    if vals is not None and vals.notna().any() and vals.dropna().nunique() > 5:
        med = float(vals.median())
        name = f"{col}_vs_median"
        t = table.copy()
        t[name] = np.where(vals.isna(), None, np.where(vals > med, f"> {med:.3g}", f"<= {med:.3g}"))
        return t, name
    return table, col


def survival_analysis(
    output_dir: str | os.PathLike[str],
    *,
    bids_dir: str | os.PathLike[str] | None = None,
    event: str = "MCI->AD",
    events_table: str | os.PathLike[str] | None = None,
    features: Sequence[str] | None = None,
    forecast_features: Sequence[str] | str | None = "auto",
    cohort: xr.Dataset | str | os.PathLike[str] | None = None,
    horizon: float = 2.0,
    kinds: Sequence[str] = S.KINDS,
    penalizer: float = 0.01,
    k: int = 5,
    seed: int = 0,
    event_time: str = "first_visit",
    reversion: str = "first",
    km_groups: Sequence[str] = DEFAULT_KM_GROUPS,
    participant_label: Iterable[str] | None = None,
    html_base: str | os.PathLike[str] | None = None,
) -> SurvivalReport:
    """Time-to-conversion analysis of a cohort; writes tables, figures and an HTML section.

    Args:
        output_dir: the neurocast output folder; results go to ``group/survival/``.
        bids_dir: the BIDS dataset whose ``sessions.tsv`` diagnoses give the events (default:
            the source dataset named in the output's ``dataset_description.json``).
        event: the transition, e.g. ``"MCI->AD"`` (default) or ``"CN->MCI"``.
        events_table: a ready events table (schema ``conversion_events``) instead of deriving it.
        features: baseline covariates of the models (default: those of age, sex, apoe4, mmse
            known for at least 80 % of the subjects and not constant).
        forecast_features: forecast-derived features added in a second model set
            (``baseline+forecast``): ``"auto"`` (default) uses :data:`~neurocast.progress.cohort.FORECAST_FEATURES`
            at ``horizon`` when a cohort forecast exists; a list names them; ``None`` skips them.
        cohort: the cohort forecasts (Dataset or netCDF path; default
            ``group/cohort/cohort_forecasts.nc`` when present).
        horizon: forecast horizon of the features (years).
        kinds: models to fit (``"cox"``, ``"weibull_aft"``).
        penalizer: L2 penalty of the models.
        k, seed: cross-validation folds and seed.
        event_time, reversion: event rules (see :mod:`neurocast.progress.events`).
        km_groups: Kaplan–Meier groupings (continuous columns are split at the median).
        participant_label: restrict to these participants.
        html_base: folder the HTML section will be shown from (default ``group/survival``).

    Raises:
        InputError: no BIDS dataset or events table, or too few events to fit.
    """
    bad = [kd for kd in kinds if kd not in S.KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be among {S.KINDS}, got {list(kinds)}")
    writer = DerivativesWriter(Path(output_dir))
    base = Path(html_base) if html_base is not None else writer.path(SURVIVAL_DIR)
    inputs: list[Path] = []
    if events_table is not None:
        participants = None
        bids = Path(bids_dir) if bids_dir is not None else _source_bids(writer.root)
        if bids is not None:
            participants = _participants(bids)
        table = E.read_events(events_table, participants)
        inputs.append(Path(events_table))
        source = f"events table {events_table}"
    else:
        bids = Path(bids_dir) if bids_dir is not None else _source_bids(writer.root)
        if bids is None:
            raise InputError(writer.root, "no BIDS dataset given or named in dataset_description.json (SourceDatasets); pass bids_dir or an events table")
        table = E.derive_events(bids, event, event_time=event_time, reversion=reversion, participant_label=participant_label)
        inputs += sorted(bids.glob("sub-*/sub-*_sessions.tsv")) + ([bids / "participants.tsv"] if (bids / "participants.tsv").is_file() else [])
        source = f"sessions.tsv diagnoses of {bids}"
    excluded = E.excluded_table(table)
    rules = dict(table.attrs.get("rules", {}))
    report = SurvivalReport(table)
    n_events = int(table["event"].sum()) if len(table) else 0
    if n_events < 2:
        raise InputError(None, f"{source}: {len(table)} subjects at risk and {n_events} conversions; at least 2 are needed")

    # forecast-derived features
    fsets: dict[str, list[str]] = {}
    base_feats = list(features) if features is not None else [f for f in DEFAULT_FEATURES if _usable(table, f)]
    fc_feats: list[str] = []
    if forecast_features is not None:
        ds = None
        if isinstance(cohort, xr.Dataset):
            ds = cohort
        else:
            path = Path(cohort) if cohort is not None else writer.path(COHORT_DIR / "cohort_forecasts.nc")
            if path.is_file():
                ds = C.load_cohort(path)
                inputs.append(path)
            elif cohort is not None or forecast_features != "auto":
                raise InputError(path, "cohort forecasts not found (run the cohort step first)")
        if ds is not None:
            ff = C.forecast_features(ds, horizon=horizon)
            wanted = list(ff.columns[1:]) if forecast_features == "auto" else list(forecast_features)
            missing = [f for f in wanted if f not in ff.columns]
            if missing:
                raise InputError(None, f"forecast features {missing} not available; have {list(ff.columns[1:])}")
            table = table.merge(ff[["participant_id", *wanted]], on="participant_id", how="left")
            table.attrs = report.events.attrs
            fc_feats = wanted
            without = int(table[wanted].isna().any(axis=1).sum())
            if without:
                report.notes.append(f"{without} subjects at risk have no forecast; they are left out of every model")
        elif forecast_features == "auto":
            report.notes.append("no cohort forecasts found: models use baseline covariates only")
    report.events = table
    if base_feats:
        fsets["baseline"] = base_feats
    if fc_feats:
        fsets["baseline+forecast" if base_feats else "forecast"] = base_feats + fc_feats
    params = {
        "rules": rules, "features": fsets, "kinds": list(kinds), "penalizer": penalizer, "k": k,
        "horizon": horizon, "km_groups": list(km_groups),
    }
    prov = {"inputs": inputs, "parameters": params, "seed": seed}
    d = SURVIVAL_DIR
    report.paths["events"] = _write_table(writer, d / "survival_events.tsv", table, "conversion_events", prov)
    report.paths["excluded"] = _write_table(writer, d / "survival_excluded.tsv", excluded, "survival_excluded", prov)

    # Kaplan–Meier
    parts = ["<section id='survival' class='neurocast-section'>", "<h2>Time to conversion</h2>",
             f"<p>Events from {html.escape(source)}: {len(table)} subjects at risk of "
             f"{html.escape(rules.get('transition', event))}, {n_events} conversions, "
             f"{len(table) - n_events} censored; {len(excluded)} subjects excluded "
             f"(reasons in survival_excluded.tsv). Event time: {html.escape(str(rules.get('event_time', 'given')))}; "
             f"reverters: {html.escape(str(rules.get('reversion', 'given')))}.</p>"]
    curves, ksum = [], []
    overall = S.kaplan_meier(table)
    report.kaplan_meier["all"] = overall
    curves.append(overall.curves.assign(grouping="all")[["grouping", *overall.curves.columns]])
    ksum.append(overall.summary.assign(grouping="all")[["grouping", *overall.summary.columns]])
    for g in [*km_groups, *fc_feats]:
        if g not in table.columns or table[g].dropna().nunique() < 2:
            continue
        t2, col = _km_group_column(table, g)
        km = S.kaplan_meier(t2, col)
        report.kaplan_meier[col] = km
        curves.append(km.curves)
        s = km.summary.copy()
        if km.logrank:
            s["logrank_p"] = km.logrank["p"]
        ksum.append(s)
        fig = plot_survival_curves(km.curves, title=f"Time to {rules.get('transition', event)} by {col}"
                                   + (f"\n(log-rank p = {km.logrank['p']:.3g})" if km.logrank else ""))
        p = _write_figure(writer, d / f"survival_km_{col}.png", fig, prov)
        report.paths[f"km_{col}"] = p
        parts.append(_img(p, base, f"Kaplan–Meier curves by {col}"))
    fig = plot_survival_curves(overall.curves, title=f"Time to {rules.get('transition', event)} (all subjects at risk)")
    p = _write_figure(writer, d / "survival_km_all.png", fig, prov)
    report.paths["km_all"] = p
    parts.insert(3, _img(p, base, "Kaplan–Meier curve, all subjects at risk"))
    kmc = pd.concat(curves, ignore_index=True)
    kms = pd.DataFrame([r for s in ksum for r in s.to_dict("records")])
    report.paths["km_curves"] = _write_table(writer, d / "survival_kaplan_meier.tsv", kmc, "survival_kaplan_meier", prov)
    report.paths["km_summary"] = _write_table(writer, d / "survival_kaplan_meier_summary.tsv", kms, "survival_kaplan_meier_summary", prov)
    parts.append("<h3>Kaplan–Meier summary</h3>" + _html_table(kms))

    # models
    if fsets:
        kk = max(2, min(k, n_events))
        try:
            conc, hrs, models = S.compare_feature_sets(table, fsets, kinds=kinds, penalizer=penalizer, k=kk, seed=seed)
        except ValueError as exc:
            raise InputError(None, f"cannot fit the survival models: {exc}") from exc
        report.concordance, report.hazard_ratios, report.models = conc, hrs, models
        ph = []
        for (name, kind), m in models.items():
            if kind != "cox":
                continue
            t = m.check_proportional_hazards()
            t.insert(0, "feature_set", name)
            ph.append(t)
        report.ph_test = pd.concat(ph, ignore_index=True) if ph else pd.DataFrame(
            columns=["feature_set", "model", "feature", "time_transform", "test_statistic", "p", "violated"])
        report.paths["hazard_ratios"] = _write_table(writer, d / "survival_hazard_ratios.tsv", hrs, "survival_hazard_ratios", prov)
        report.paths["concordance"] = _write_table(writer, d / "survival_concordance.tsv", conc, "survival_concordance", prov)
        report.paths["ph_test"] = _write_table(writer, d / "survival_ph_test.tsv", report.ph_test, "survival_ph_test", prov)
        p = _write_figure(writer, d / "survival_forest.png", plot_forest(hrs), prov)
        report.paths["forest"] = p
        p2 = _write_figure(writer, d / "survival_concordance.png", plot_concordance(conc), prov)
        report.paths["concordance_png"] = p2
        parts.append(
            f"<h3>Models</h3><p>Cox proportional hazards and Weibull AFT models (penalizer {penalizer:g}); "
            f"concordance cross-validated with {kk} stratified folds (seed {seed}) on the subjects "
            "complete for every feature set. Hazard ratios with 95 % intervals; for the Weibull model "
            "exp(-coef·rho), delta-method interval.</p>"
        )
        parts.append(_html_table(conc.drop(columns=["k", "seed"])))
        parts.append(_img(p2, base, "Concordance: cross-validated (bars) and apparent"))
        parts.append(_img(p, base, "Hazard ratios with 95 % intervals"))
        parts.append("<h3>Hazard ratios</h3>" + _html_table(hrs.drop(columns=["time_ratio", "time_ratio_lower", "time_ratio_upper"]), max_rows=60))
        viol = report.ph_test[report.ph_test["violated"]]
        parts.append(
            "<h3>Proportional-hazards check</h3><p>Schoenfeld-residual test (rank time transform): "
            + ("no feature violates the assumption at p < 0.05." if viol.empty else
               f"{len(viol)} feature(s) with p < 0.05: {html.escape(', '.join(sorted(set(viol['feature']))))}; "
               "their hazard ratios are time-averaged.")
            + "</p>" + _html_table(report.ph_test, max_rows=40)
        )
    else:
        report.notes.append("no usable feature: only Kaplan–Meier curves")
    for n in report.notes:
        parts.append(f"<p class='note'>{html.escape(n)}</p>")
    parts.append("</section>")
    report.html = "\n".join(parts)
    report.paths["html"] = writer.write_text(d / "survival_section.html", report.html, **prov)
    return report


def synthetic_cohort(
    n: int = 200,
    *,
    seed: int = 0,
    horizons: Sequence[float] = (1.0, 2.0, 5.0),
    n_samples: int = 8,
    regions: Sequence[str] | None = None,
) -> tuple[list[xr.Dataset], pd.DataFrame]:
    """Synthetic per-subject forecasts (CN/MCI/AD 30/50/20 %) and an MCI->AD events table of the
    MCI subjects, whose hazard of converting rises with their forecast 2-year hippocampal
    atrophy (log HR 0.7 per SD among them) and APOE4 (0.3 per allele); for benchmarks and demos."""
    rng = np.random.default_rng(seed)
    regions = list(regions) if regions is not None else list(C.SYNTHETIC_REGIONS)
    dss, rows = [], []
    for i in range(n):
        pid = f"sub-{i:04d}"
        dx = rng.choice(["CN", "MCI", "AD"], p=[0.3, 0.5, 0.2])
        ds = C.synthetic_forecast(
            pid, diagnosis=str(dx), age=float(rng.normal(73, 6)), sex=str(rng.choice(["F", "M"])),
            apoe4=int(rng.choice([0, 1, 2], p=[0.55, 0.35, 0.1])), mmse=float(np.clip(rng.normal(27, 2), 10, 30)),
            horizons=horizons, regions=regions, n_samples=n_samples, seed=seed * 100003 + i,
        )
        dss.append(ds)
    feats = C.forecast_features(C.gather_forecasts(dss), horizon=min(2.0, max(horizons)))
    atro = feats.iloc[:, 1].to_numpy(float)
    mci = np.array([str(ds.coords["diagnosis"].item()) == "MCI" for ds in dss])
    ref = atro[mci] if mci.sum() > 1 else atro
    z = (atro - ref.mean()) / (ref.std() + 1e-12)  # SD units among the subjects at risk
    for i, ds in enumerate(dss):
        if str(ds.coords["diagnosis"].item()) != "MCI":
            continue  # only MCI subjects are at risk of MCI -> AD
        rate = 0.15 * np.exp(0.7 * z[i] + 0.3 * float(ds.attrs.get("apoe4", 0)))
        t = rng.exponential(1 / rate)
        c = rng.uniform(1.0, 6.0)
        rows.append({
            "participant_id": str(ds.coords["participant_id"].item()),
            "from_state": "MCI", "to_state": "AD",
            "duration_years": float(min(t, c)), "event": int(t <= c),
            "last_negative_years": None, "first_positive_years": None, "n_visits": None, "reverted": False,
            "age": float(ds.coords["age"].item()), "sex": str(ds.coords["sex"].item()), "diagnosis": "MCI",
            "apoe4": float(ds.attrs.get("apoe4", np.nan)), "mmse": float(ds.attrs.get("mmse", np.nan)),
        })
    return dss, pd.DataFrame(rows, columns=list(E.EVENT_COLUMNS))


__all__ = [
    "COHORT_DIR",
    "FORECAST_GLOB",
    "OBSERVED_GLOB",
    "SURVIVAL_DIR",
    "CohortReport",
    "SurvivalReport",
    "cohort_report",
    "survival_analysis",
    "synthetic_cohort",
]
