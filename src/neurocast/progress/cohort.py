"""Cohort arrays: every subject's regional forecast (and measured volumes) in one xarray Dataset.

**Per-subject forecast (input contract).** What the forecaster produces for one subject is an
:class:`xarray.Dataset` with

- ``participant_id``: a scalar coordinate or an attribute (``sub-<label>``);
- dimensions ``horizon`` (years after baseline, float), ``region`` (atlas region names, text) and
  either ``sample`` (int: Monte Carlo samples) or ``quantile`` (float levels in (0, 1));
- ``volume`` (horizon, region, sample|quantile) in mm³ and ``baseline_volume`` (region) in mm³;
- covariates ``age``, ``sex``, ``diagnosis``, ``apoe4``, ``mmse`` as scalar coordinates or
  attributes (any may be missing); attribute ``units`` (``"mm3"``).

**Cohort Dataset** (:func:`gather_forecasts`): dimensions ``subject`` (participant ids, sorted),
``horizon``, ``region``, ``sample`` (or ``quantile``); ``volume`` (subject, horizon, region, sample)
and ``baseline_volume`` (subject, region) in mm³; covariates as coordinates along ``subject``
(``age``, ``apoe4``, ``mmse`` float with NaN for missing; ``sex``, ``diagnosis`` text with
``"n/a"`` for missing, so they survive netCDF); attributes ``units``, ``title``, ``stochastic_dim``,
``neurocast_version`` and ``provenance`` (a JSON text: the inputs' own attributes per subject plus
whatever the caller adds). :func:`save_cohort` / :func:`load_cohort` round-trip it exactly through
netCDF-4 (``xr.testing.assert_identical`` holds).

**Observed trajectories** (:func:`observed_trajectories`): the regional volumes measured at real
visits (the registration module's long table: participant_id, session_id, time_years or age,
region, volume_mm3) as dimensions ``subject``, ``visit`` (0 = baseline, padded with NaN), ``region``,
with ``session_id`` and ``time_years`` coordinates along (subject, visit). Where the regions
include the lateral ventricles and an intracranial-volume region, the Dataset also holds
``ventricles`` (sum of the lateral ventricles, mm³), ``icv`` and ``ventricles_percent_icv`` (the
TADPOLE convention: ventricle volume as % of intracranial volume).

**Tidy tables** (schemas in ``data_specs``): :func:`to_tidy` (``cohort_forecasts``: one row per
subject × horizon × region with mean, SD and 5/50/95 % quantiles), :func:`group_summary`
(``cohort_summary``: per group × horizon × region, group mean with its confidence interval and a
predictive band), :func:`observed_to_tidy` (``cohort_observed``) and :func:`compare_to_observed`
(``cohort_comparison``: forecast against measurement at each follow-up visit).

Example:
    >>> from neurocast.progress.cohort import gather_forecasts, synthetic_forecast
    >>> ds = gather_forecasts([synthetic_forecast(f"sub-{i:02d}", seed=i) for i in range(3)])
    >>> dict(ds.sizes)
    {'subject': 3, 'horizon': 3, 'region': 6, 'sample': 8}
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from neurocast._version import __version__
from neurocast.io.atomic import atomic_path

COVARIATES: tuple[str, ...] = ("age", "sex", "diagnosis", "apoe4", "mmse")
TEXT_COVARIATES = ("sex", "diagnosis")
NUMERIC_COVARIATES = ("age", "apoe4", "mmse")
MISSING_TEXT = "n/a"
STOCHASTIC_DIMS = ("sample", "quantile")
NETCDF_ENGINE = "netcdf4"

COVARIATE_ATTRS = {
    "age": {"long_name": "age at baseline", "units": "years"},
    "sex": {"long_name": "sex", "categories": "F M"},
    "diagnosis": {"long_name": "baseline diagnosis", "categories": "CN MCI AD"},
    "apoe4": {"long_name": "number of APOE e4 alleles", "units": "1"},
    "mmse": {"long_name": "MMSE at baseline", "units": "points"},
}

HIPPOCAMPUS_PATTERN = r"hippocamp"
LATERAL_VENTRICLE_PATTERN = r"lat[a-z]*[-_ ]*vent|vent[a-z]*[-_ ]*lat|inf[-_ ]*lat"
"""Lateral ventricles, including the inferior (temporal) horns, as FreeSurfer's TADPOLE
``Ventricles`` measure; where no region name matches it, any name with ``ventric`` is used
except the third and fourth ventricles."""
ANY_VENTRICLE_PATTERN = r"ventric"
NOT_LATERAL_PATTERN = r"3rd|4th|third|fourth|5th|fifth"
ICV_PATTERN = r"intracran|\bicv\b|^icv|_icv\b|\betiv\b|^etiv"

FORECAST_FEATURES: dict[str, tuple[str, float]] = {
    "pred_hippocampus_atrophy": (HIPPOCAMPUS_PATTERN, -1.0),
    "pred_ventricle_expansion": (LATERAL_VENTRICLE_PATTERN, 1.0),
}
"""Default forecast-derived features: name -> (region pattern, sign of the percent change)."""


# --------------------------------------------------------------------------------------------
# Region names


def match_regions(names: Iterable[str], pattern: str, exclude: str | None = None) -> list[str]:
    """Region names matching a regular expression (case-insensitive; ``_``/``-`` read as spaces
    for word boundaries), minus those matching ``exclude``."""
    out = []
    for n in names:
        text = str(n).lower()
        spaced = re.sub(r"[_\-]+", " ", text)
        if re.search(pattern, text) or re.search(pattern, spaced):
            if exclude and (re.search(exclude, text) or re.search(exclude, spaced)):
                continue
            out.append(str(n))
    return out


HEMISPHERE_PATTERN = r"(^|[^a-z])(left|right|lh|rh)([^a-z]|$)"


def without_composites(names: Sequence[str]) -> list[str]:
    """Drop bilateral composites when their hemispheres are listed too (no double counting).

    Atlases such as neurocast's default list ``Left-Hippocampus``, ``Right-Hippocampus`` *and*
    the composite ``Hippocampus``; summing all three would count the volume twice. Where some of
    ``names`` carry a hemisphere (left/right/lh/rh), only those are kept; otherwise all are.
    """
    lateral = [n for n in names if re.search(HEMISPHERE_PATTERN, str(n).lower().replace("_", " "))]
    return lateral if lateral else list(names)


def select_regions(names: Iterable[str], pattern: str, exclude: str | None = None) -> list[str]:
    """The regions to sum for a structure: :func:`match_regions` then :func:`without_composites`."""
    return without_composites(match_regions(names, pattern, exclude))


def ventricle_regions(names: Iterable[str]) -> list[str]:
    """The lateral-ventricle regions among ``names`` (see :data:`LATERAL_VENTRICLE_PATTERN`):
    lateral ventricles and their inferior horns, left and right (composites dropped where the
    hemispheres are listed), as FreeSurfer's TADPOLE ``Ventricles``."""
    names = list(names)
    lat = select_regions(names, LATERAL_VENTRICLE_PATTERN, exclude=ICV_PATTERN)
    if lat:
        return lat
    return select_regions(names, ANY_VENTRICLE_PATTERN, exclude=NOT_LATERAL_PATTERN + "|" + ICV_PATTERN)


def icv_region(names: Iterable[str]) -> str | None:
    """The intracranial-volume region among ``names`` (``intracranial``, ``ICV``, ``eTIV``)."""
    found = match_regions(names, ICV_PATTERN)
    return found[0] if found else None


# --------------------------------------------------------------------------------------------
# Gathering forecasts


def _scalar(v: Any) -> Any:
    if isinstance(v, xr.DataArray):
        v = v.values
    if isinstance(v, np.ndarray):
        if v.size != 1:
            raise ValueError(f"expected a scalar, got an array of shape {v.shape}")
        v = v.reshape(()).item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    return v


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v == MISSING_TEXT or v == ""


def _covariate(ds: xr.Dataset, name: str) -> Any:
    if name in ds.coords and ds.coords[name].ndim == 0:
        v = _scalar(ds.coords[name])
    elif name in ds.data_vars and ds[name].ndim == 0:
        v = _scalar(ds[name])
    else:
        v = ds.attrs.get(name)
    if name in TEXT_COVARIATES:
        return MISSING_TEXT if _missing(v) else str(v)
    try:
        return math.nan if _missing(v) else float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"covariate {name}={v!r} is not a number") from exc


def forecast_participant(ds: xr.Dataset) -> str:
    """The ``participant_id`` of a per-subject forecast (scalar coordinate or attribute)."""
    if "participant_id" in ds.coords:
        pid = _scalar(ds.coords["participant_id"])
    elif "participant_id" in ds.attrs:
        pid = _scalar(ds.attrs["participant_id"])
    else:
        raise ValueError("forecast has no participant_id (scalar coordinate or attribute)")
    pid = str(pid)
    if not re.match(r"^sub-[A-Za-z0-9]+$", pid):
        raise ValueError(f"forecast participant_id {pid!r} is not sub-<label>")
    return pid


def stochastic_dim(ds: xr.Dataset) -> str:
    """``"sample"`` or ``"quantile"``: the dimension that carries a forecast's uncertainty."""
    dims = [d for d in STOCHASTIC_DIMS if d in ds["volume"].dims]
    if len(dims) != 1:
        raise ValueError(f"volume needs exactly one of the dimensions {STOCHASTIC_DIMS}; it has {ds['volume'].dims}")
    return dims[0]


def check_forecast(ds: xr.Dataset) -> tuple[str, str]:
    """Check a per-subject forecast against the contract; returns (participant_id, stochastic dim).

    Raises:
        ValueError: naming what is missing or wrong.
    """
    pid = forecast_participant(ds)
    if "volume" not in ds or "baseline_volume" not in ds:
        raise ValueError(f"{pid}: forecast needs data variables 'volume' and 'baseline_volume'")
    sdim = stochastic_dim(ds)
    want = {"horizon", "region", sdim}
    if set(ds["volume"].dims) != want:
        raise ValueError(f"{pid}: volume has dims {ds['volume'].dims}, expected {sorted(want)}")
    if ds["baseline_volume"].dims != ("region",):
        raise ValueError(f"{pid}: baseline_volume has dims {ds['baseline_volume'].dims}, expected ('region',)")
    h = np.asarray(ds["horizon"].values, dtype=float)
    if h.size == 0 or np.any(~np.isfinite(h)) or np.any(h <= 0) or np.any(np.diff(h) <= 0):
        raise ValueError(f"{pid}: horizons must be positive, finite and increasing, got {h}")
    regions = [str(r) for r in ds["region"].values]
    if len(set(regions)) != len(regions):
        raise ValueError(f"{pid}: region names repeat")
    if sdim == "quantile":
        q = np.asarray(ds["quantile"].values, dtype=float)
        if np.any((q <= 0) | (q >= 1)) or np.any(np.diff(q) <= 0):
            raise ValueError(f"{pid}: quantile levels must be increasing in (0, 1), got {q}")
    units = ds.attrs.get("units", ds["volume"].attrs.get("units", "mm3"))
    if str(units).replace("³", "3").lower() not in ("mm3", "mm^3", "cubic millimetre", "cubic millimeter"):
        raise ValueError(f"{pid}: volume units {units!r}, expected mm3")
    return pid, sdim


def gather_forecasts(
    datasets: Iterable[xr.Dataset],
    *,
    provenance: Mapping[str, Any] | None = None,
    join: str = "exact",
) -> xr.Dataset:
    """Gather per-subject forecasts into one cohort Dataset (see the module docstring).

    Args:
        datasets: per-subject forecasts (the contract above); each participant once.
        provenance: extra provenance recorded in the ``provenance`` attribute (JSON-able).
        join: ``"exact"`` (default): every forecast must have the same horizons and region set;
            ``"outer"``: the union, with NaN where a subject lacks a horizon or region.

    Raises:
        ValueError: a forecast breaks the contract, a participant repeats, forecasts mix samples
            and quantiles, or (``join="exact"``) horizons or regions differ.
    """
    if join not in ("exact", "outer"):
        raise ValueError(f"join must be 'exact' or 'outer', got {join!r}")
    parts: dict[str, dict[str, Any]] = {}
    covs: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, Any]] = {}
    sdims = set()
    dtype = None
    for ds in datasets:
        pid, sdim = check_forecast(ds)
        if pid in parts:
            raise ValueError(f"{pid} appears twice among the forecasts")
        sdims.add(sdim)
        covs[pid] = {c: _covariate(ds, c) for c in COVARIATES}
        sources[pid] = {k: v for k, v in ds.attrs.items() if k not in COVARIATES and k != "participant_id"}
        vol = ds["volume"].variable.transpose("horizon", "region", sdim)
        parts[pid] = {
            "volume": np.asarray(vol.values),
            "baseline": np.asarray(ds["baseline_volume"].values),
            "horizon": np.asarray(ds["horizon"].values, dtype=float),
            "region": [str(r) for r in ds["region"].values],
            "stoch": np.asarray(ds[sdim].values),
        }
        dtype = np.result_type(dtype, vol.dtype) if dtype is not None else vol.dtype
    if not parts:
        raise ValueError("no forecasts to gather")
    if len(sdims) > 1:
        raise ValueError("forecasts mix 'sample' and 'quantile' dimensions")
    sdim = sdims.pop()
    ids = sorted(parts)
    first = parts[ids[0]]
    if join == "exact":
        horizons, regions, stoch = first["horizon"], first["region"], first["stoch"]
        for pid in ids[1:]:
            p = parts[pid]
            if set(p["region"]) != set(regions):
                diff = sorted(set(p["region"]) ^ set(regions))
                raise ValueError(f"{pid}: regions differ from {ids[0]}'s ({diff[:6]}); use join='outer'")
            if not np.array_equal(p["horizon"], horizons):
                raise ValueError(
                    f"{pid}: horizons {p['horizon']} differ from {ids[0]}'s {horizons}; use join='outer'"
                )
            if len(p["stoch"]) != len(stoch) or (sdim == "quantile" and not np.allclose(p["stoch"], stoch)):
                what = "quantile levels" if sdim == "quantile" else "number of samples"
                raise ValueError(f"{pid}: {what} differ from {ids[0]}'s")
    else:
        horizons = np.array(sorted({float(h) for p in parts.values() for h in p["horizon"]}))
        regions = list(first["region"])
        for pid in ids[1:]:
            regions += [r for r in parts[pid]["region"] if r not in regions]
        stoch = first["stoch"]
        for pid in ids[1:]:
            if len(parts[pid]["stoch"]) != len(stoch) or (
                sdim == "quantile" and not np.allclose(parts[pid]["stoch"], stoch)
            ):
                raise ValueError(f"{pid}: {sdim} coordinates differ from {ids[0]}'s")
    H, R, K = len(horizons), len(regions), len(stoch)
    fill = np.nan if np.issubdtype(dtype, np.floating) else 0
    vol = np.full((len(ids), H, R, K), fill, dtype=dtype)
    base = np.full((len(ids), R), fill, dtype=dtype)
    hpos = {float(h): i for i, h in enumerate(horizons)}
    rpos = {r: j for j, r in enumerate(regions)}
    for i, pid in enumerate(ids):
        p = parts[pid]
        hi = np.array([hpos[float(h)] for h in p["horizon"]])
        ri = np.array([rpos[r] for r in p["region"]])
        vol[i][np.ix_(hi, ri)] = p["volume"]
        base[i, ri] = p["baseline"]
    cohort = xr.Dataset(
        {
            "volume": (("subject", "horizon", "region", sdim), vol),
            "baseline_volume": (("subject", "region"), base),
        },
        coords={
            "subject": np.array(ids, dtype=str),
            "horizon": horizons,
            "region": np.array(regions, dtype=str),
            sdim: stoch,
        },
    )
    cohort = _with_covariates(cohort, ids, covs)
    cohort = _annotate(cohort, sdim)
    prov = {
        "GeneratedBy": {"Name": "neurocast", "Version": __version__},
        "step": "neurocast.progress.cohort.gather_forecasts",
        "join": join,
        "inputs": {pid: sources[pid] for pid in ids},
    }
    prov.update(dict(provenance or {}))
    cohort.attrs = {
        "title": "neurocast cohort regional volume forecasts",
        "units": "mm3",
        "stochastic_dim": sdim,
        "neurocast_version": __version__,
        "provenance": json.dumps(prov, sort_keys=True, default=str),
    }
    return cohort


def _with_covariates(ds: xr.Dataset, ids: Sequence[str], covs: Mapping[str, Mapping[str, Any]]) -> xr.Dataset:
    coords = {}
    for c in COVARIATES:
        vals = [covs.get(pid, {}).get(c) for pid in ids]
        if c in TEXT_COVARIATES:
            arr = np.array([MISSING_TEXT if _missing(v) else str(v) for v in vals], dtype=str)
        else:
            arr = np.array([math.nan if _missing(v) else float(v) for v in vals], dtype=float)
        coords[c] = xr.Variable(("subject",), arr, attrs=dict(COVARIATE_ATTRS[c]))
    return ds.assign_coords(coords)


def _annotate(ds: xr.Dataset, sdim: str | None) -> xr.Dataset:
    ds["subject"].attrs = {"long_name": "participant_id"}
    ds["region"].attrs = {"long_name": "atlas region"}
    if "horizon" in ds.dims:
        ds["horizon"].attrs = {"long_name": "time after baseline", "units": "years"}
    if sdim == "sample":
        ds["sample"].attrs = {"long_name": "forecast sample"}
    elif sdim == "quantile":
        ds["quantile"].attrs = {"long_name": "quantile level of the forecast distribution"}
    if "volume" in ds:
        ds["volume"].attrs = {"long_name": "regional volume", "units": "mm3"}
    if "baseline_volume" in ds:
        ds["baseline_volume"].attrs = {"long_name": "regional volume at baseline", "units": "mm3"}
    return ds


def covariate_table(ds: xr.Dataset) -> pd.DataFrame:
    """participant_id and covariates (None for missing) from a cohort Dataset's coordinates."""
    out = pd.DataFrame({"participant_id": [str(s) for s in ds["subject"].values]})
    for c in COVARIATES:
        if c not in ds.coords:
            out[c] = None
            continue
        vals = ds.coords[c].values
        if c in TEXT_COVARIATES:
            out[c] = [None if _missing(str(v)) else str(v) for v in vals]
        else:
            out[c] = np.asarray(vals, dtype=float)
    return out


# --------------------------------------------------------------------------------------------
# netCDF


def save_cohort(ds: xr.Dataset, path: str | os.PathLike[str], *, complevel: int = 4) -> Path:
    """Write a cohort Dataset to netCDF-4 atomically (zlib-compressed data variables).

    Text arrays are written as variable-length strings; missing text must be ``"n/a"`` (as
    :func:`gather_forecasts` makes it), not ``None``. Attributes must be text or numbers.

    Raises:
        ValueError: an attribute cannot be stored in netCDF (e.g. a dict or a bool).
    """
    path = Path(path)
    for name, attrs in [("<dataset>", ds.attrs)] + [(str(k), v.attrs) for k, v in ds.variables.items()]:
        for k, v in attrs.items():
            if isinstance(v, (bool, np.bool_, dict)) or v is None:
                raise ValueError(f"attribute {name}.{k}={v!r} cannot be stored in netCDF; use text")
    for k, v in ds.variables.items():
        if v.dtype == object and any(x is None for x in np.ravel(v.values)):
            raise ValueError(f"variable {k} holds None; use {MISSING_TEXT!r} for missing text")
    encoding = {
        str(k): {"zlib": True, "complevel": int(complevel)}
        for k, v in ds.data_vars.items()
        if np.issubdtype(v.dtype, np.number)
    }
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine=NETCDF_ENGINE, format="NETCDF4", encoding=encoding)
    return path


def load_cohort(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a cohort Dataset written by :func:`save_cohort` (fully loaded; the file is closed)."""
    return xr.load_dataset(Path(path), engine=NETCDF_ENGINE)


# --------------------------------------------------------------------------------------------
# Derived quantities


def change_percent(ds: xr.Dataset, baseline: xr.DataArray | None = None) -> xr.DataArray:
    """Percent change of ``volume`` from ``baseline_volume`` (negative = atrophy)."""
    base = ds["baseline_volume"] if baseline is None else baseline
    out = (ds["volume"] / base - 1.0) * 100.0
    out.attrs = {"long_name": "change from baseline", "units": "percent"}
    return out.rename("change_percent")


def _horizon_label(h: float) -> str:
    return f"{int(h)}y" if float(h).is_integer() else f"{h:g}y".replace(".", "p")


def _interp_horizon(ratio: xr.DataArray, horizon: float) -> xr.DataArray:
    """Linear interpolation of a volume ratio along ``horizon`` with ratio 1 at horizon 0."""
    h = np.asarray(ratio["horizon"].values, dtype=float)
    if not 0 <= horizon <= h.max() + 1e-9:
        raise ValueError(f"horizon {horizon} outside the forecast's range [0, {h.max()}]")
    hh = np.r_[0.0, h]
    j = int(np.clip(np.searchsorted(hh, horizon, side="right") - 1, 0, len(hh) - 2))
    w = (horizon - hh[j]) / (hh[j + 1] - hh[j])
    lo = xr.ones_like(ratio.isel(horizon=0, drop=True)) if j == 0 else ratio.isel(horizon=j - 1, drop=True)
    hi = ratio.isel(horizon=j, drop=True)
    return (1 - w) * lo + w * hi


def forecast_features(
    ds: xr.Dataset,
    horizon: float = 2.0,
    features: Mapping[str, tuple[str, float]] | None = None,
) -> pd.DataFrame:
    """Forecast-derived features per subject, e.g. predicted 2-year hippocampal atrophy.

    For each feature ``name -> (region pattern, sign)``, the volumes of the matching regions are
    summed (e.g. left + right hippocampus; a bilateral composite is used only where the
    hemispheres are not listed, see :func:`without_composites`), the ratio to the summed baseline is interpolated
    linearly to ``horizon`` (ratio 1 at horizon 0), averaged over samples (median over quantile
    levels) and given as ``sign * percent change``: the defaults give hippocampal atrophy (%
    lost, positive = shrinking) and lateral-ventricle expansion (% gained).

    Returns:
        participant_id and one column per feature, named ``<name>_<horizon>`` (e.g.
        ``pred_hippocampus_atrophy_2y``), in percent.

    Raises:
        ValueError: a feature's pattern matches no region, or the horizon is beyond the forecast.
    """
    features = dict(FORECAST_FEATURES if features is None else features)
    regions = [str(r) for r in ds["region"].values]
    sdim = ds.attrs.get("stochastic_dim") or stochastic_dim(ds)
    out = pd.DataFrame({"participant_id": [str(s) for s in ds["subject"].values]})
    for name, (pattern, sign) in features.items():
        sel = ventricle_regions(regions) if pattern == LATERAL_VENTRICLE_PATTERN else select_regions(regions, pattern)
        if not sel:
            raise ValueError(f"feature {name}: no region matches {pattern!r} among {regions[:10]}...")
        vol = ds["volume"].sel(region=sel).sum("region", skipna=False)
        base = ds["baseline_volume"].sel(region=sel).sum("region", skipna=False)
        ratio = _interp_horizon(vol / base, horizon)
        centre = ratio.mean(sdim) if sdim == "sample" else ratio.median(sdim)
        out[f"{name}_{_horizon_label(horizon)}"] = float(sign) * (np.asarray(centre.values, float) - 1.0) * 100.0
    return out


def ventricle_percent_icv(
    ds: xr.Dataset,
    *,
    ventricles: Sequence[str] | None = None,
    icv: str | xr.DataArray | None = None,
) -> xr.DataArray:
    """Lateral-ventricle volume as % of intracranial volume (TADPOLE), for forecasts or visits.

    Args:
        ds: a Dataset with ``volume`` along ``region``.
        ventricles: the regions to sum (default: :func:`ventricle_regions`).
        icv: the ICV region name, or a DataArray of ICV in mm³ (e.g. along ``subject``) to use
            where the forecast has no ICV region (intracranial volume does not change).

    Raises:
        ValueError: no ventricle or ICV region is found and none is given.
    """
    regions = [str(r) for r in ds["region"].values]
    vents = list(ventricles) if ventricles is not None else ventricle_regions(regions)
    if not vents:
        raise ValueError(f"no lateral-ventricle region among {regions[:10]}...")
    if icv is None:
        icv = icv_region(regions)
        if icv is None:
            raise ValueError("no intracranial-volume region (intracranial/ICV/eTIV); pass icv=")
    icv_da = ds["volume"].sel(region=icv) if isinstance(icv, str) else icv
    if "region" in icv_da.coords:
        icv_da = icv_da.drop_vars("region")
    out = ds["volume"].sel(region=vents).sum("region", skipna=False) / icv_da * 100.0
    out.attrs = {"long_name": "lateral ventricles as % of intracranial volume", "units": "percent",
                 "ventricle_regions": " ".join(vents)}
    return out.rename("ventricles_percent_icv")


# --------------------------------------------------------------------------------------------
# Tidy tables

TIDY_COLUMNS = (
    "participant_id",
    "horizon_years",
    "region",
    "baseline_volume_mm3",
    "volume_mean_mm3",
    "volume_sd_mm3",
    "volume_q05_mm3",
    "volume_q50_mm3",
    "volume_q95_mm3",
    "change_percent_mean",
    "change_percent_q05",
    "change_percent_q50",
    "change_percent_q95",
    "n_samples",
    *COVARIATES,
)
LEVELS = (0.05, 0.5, 0.95)


def _quantiles(da: xr.DataArray, sdim: str, levels: Sequence[float]) -> xr.DataArray:
    if sdim == "sample":
        # skipna=False: vectorised (nanquantile loops per row); NaN only fills whole missing rows
        return da.quantile(list(levels), dim="sample", skipna=False).rename(quantile="level")
    q = da["quantile"].values
    inside = [lv for lv in levels if q.min() - 1e-12 <= lv <= q.max() + 1e-12]
    res = da.interp(quantile=list(levels), method="linear")
    res = res.where(xr.DataArray([lv in inside for lv in levels], dims="quantile", coords={"quantile": list(levels)}))
    return res.rename(quantile="level")


def to_tidy(ds: xr.Dataset) -> pd.DataFrame:
    """One row per subject × horizon × region (columns :data:`TIDY_COLUMNS`; schema
    ``cohort_forecasts``). For sample forecasts: mean, SD (ddof 1) and 5/50/95 % sample quantiles;
    for quantile forecasts: the 5/50/95 % levels interpolated (NaN outside the given levels), mean
    and SD missing."""
    sdim = ds.attrs.get("stochastic_dim") or stochastic_dim(ds)
    vol = ds["volume"]
    chg = change_percent(ds)
    qv = _quantiles(vol, sdim, LEVELS)
    qc = _quantiles(chg, sdim, LEVELS)
    if sdim == "sample":
        n = ds.sizes["sample"]
        mean_v, sd_v = vol.mean("sample"), vol.std("sample", ddof=1) if n > 1 else vol.mean("sample") * np.nan
        mean_c = chg.mean("sample")
    else:
        n = None
        mean_v = sd_v = mean_c = vol.isel({sdim: 0}, drop=True) * np.nan
    base = ds["baseline_volume"].broadcast_like(mean_v)
    cols = {
        "baseline_volume_mm3": base,
        "volume_mean_mm3": mean_v,
        "volume_sd_mm3": sd_v,
        "volume_q05_mm3": qv.isel(level=0, drop=True),
        "volume_q50_mm3": qv.isel(level=1, drop=True),
        "volume_q95_mm3": qv.isel(level=2, drop=True),
        "change_percent_mean": mean_c,
        "change_percent_q05": qc.isel(level=0, drop=True),
        "change_percent_q50": qc.isel(level=1, drop=True),
        "change_percent_q95": qc.isel(level=2, drop=True),
    }
    order = ("subject", "horizon", "region")
    frame = pd.DataFrame(
        {k: np.asarray(v.transpose(*order).values, dtype=float).ravel() for k, v in cols.items()}
    )
    subj = np.asarray(ds["subject"].values).astype(str)
    hor = np.asarray(ds["horizon"].values, dtype=float)
    reg = np.asarray(ds["region"].values).astype(str)
    S, H, R = len(subj), len(hor), len(reg)
    frame.insert(0, "participant_id", np.repeat(subj, H * R))
    frame.insert(1, "horizon_years", np.tile(np.repeat(hor, R), S))
    frame.insert(2, "region", np.tile(reg, S * H))
    frame["n_samples"] = n
    cov = covariate_table(ds).set_index("participant_id")
    for c in COVARIATES:
        frame[c] = frame["participant_id"].map(cov[c]).to_numpy()
    return frame[list(TIDY_COLUMNS)]


def _group_labels(ds: xr.Dataset, by: Sequence[str]) -> list[tuple[Any, ...]]:
    cols = []
    for b in by:
        if b not in ds.coords or ds.coords[b].dims != ("subject",):
            raise ValueError(f"cannot group by {b!r}: not a covariate coordinate along subject")
        vals = ds.coords[b].values
        if b in TEXT_COVARIATES or vals.dtype.kind in "OUS":
            cols.append([None if _missing(str(v)) else str(v) for v in vals])
        else:
            cols.append([None if not np.isfinite(v) else (int(v) if float(v).is_integer() else float(v)) for v in np.asarray(vals, float)])
    return list(zip(*cols, strict=True))


def _sort_key(v: Any) -> tuple:
    order = {"CN": 0, "MCI": 1, "AD": 2, "F": 0, "M": 1}
    if v is None:
        return (2, 0, "")
    if isinstance(v, str):
        return (0, order.get(v, 99), v)
    return (1, float(v), "")


def group_summary(
    ds: xr.Dataset,
    by: Sequence[str] = ("diagnosis",),
    *,
    variable: str = "change_percent",
    band: float = 0.9,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Group trajectories: per group × horizon × region, the group mean with its confidence
    interval and a predictive band.

    Each subject's point forecast is its sample mean (median for quantile forecasts). The group
    ``mean`` is the mean of those over the group's subjects, with a t-interval at ``ci``
    (``mean_lower``/``mean_upper``; missing for one subject). The band (``band_lower``,
    ``band_median``, ``band_upper``) is the central ``band`` interval of the pooled samples of all
    the group's subjects (the spread of a random member's forecast, between-subject variation
    and forecast uncertainty together); for quantile forecasts, of the subjects' medians. A
    missing covariate forms its own group (``n/a``).

    Args:
        ds: cohort Dataset (:func:`gather_forecasts`).
        by: covariate coordinates to group by, e.g. ``("diagnosis",)`` or ``("diagnosis", "apoe4")``.
        variable: ``"change_percent"`` (default) or ``"volume"`` (mm³).
        band: width of the predictive band (0.9: 5-95 %).
        ci: confidence level of the group mean's interval.

    Returns:
        Columns: grouping, group, the ``by`` columns, horizon_years, region, variable, units,
        n_subjects, mean, mean_lower, mean_upper, band_level, band_lower, band_median, band_upper
        (schema ``cohort_summary``).
    """
    from scipy import stats

    by = list(by)
    sdim = ds.attrs.get("stochastic_dim") or stochastic_dim(ds)
    if variable == "change_percent":
        da, units = change_percent(ds), "percent"
    elif variable == "volume":
        da, units = ds["volume"], "mm3"
    else:
        raise ValueError(f"variable must be 'change_percent' or 'volume', got {variable!r}")
    if not 0 < band < 1 or not 0 < ci < 1:
        raise ValueError("band and ci must be in (0, 1)")
    arr = np.asarray(da.transpose("subject", "horizon", "region", sdim).values, dtype=float)
    point = np.nanmean(arr, axis=3) if sdim == "sample" else _median_over_quantiles(da, sdim)
    labels = _group_labels(ds, by)
    hor = np.asarray(ds["horizon"].values, float)
    reg = [str(r) for r in ds["region"].values]
    lo_q, hi_q = (1 - band) / 2, 1 - (1 - band) / 2
    rows = []
    for key in sorted(set(labels), key=lambda k: tuple(_sort_key(v) for v in k)):
        idx = np.array([lab == key for lab in labels])
        pts = point[idx]  # (n, H, R)
        n = int(idx.sum())
        pooled = arr[idx] if sdim == "sample" else pts[..., None]
        pooled = np.moveaxis(pooled, 0, 2).reshape(len(hor), len(reg), -1)  # (H, R, n*S)
        with np.errstate(all="ignore"), _quiet():
            mean = np.nanmean(pts, axis=0)
            sd = np.nanstd(pts, axis=0, ddof=1) if n > 1 else np.full_like(mean, np.nan)
            tq = stats.t.ppf(0.5 + ci / 2, n - 1) if n > 1 else np.nan
            half = tq * sd / math.sqrt(n)
            qs = np.nanquantile(pooled, [lo_q, 0.5, hi_q], axis=2)
        gname = ", ".join(MISSING_TEXT if v is None else str(v) for v in key)
        for i, h in enumerate(hor):
            for j, r in enumerate(reg):
                row = {"grouping": "+".join(by), "group": gname}
                row.update({b: v for b, v in zip(by, key, strict=True)})
                row.update(
                    {
                        "horizon_years": float(h),
                        "region": r,
                        "variable": variable,
                        "units": units,
                        "n_subjects": n,
                        "mean": float(mean[i, j]),
                        "mean_lower": float(mean[i, j] - half[i, j]) if n > 1 else math.nan,
                        "mean_upper": float(mean[i, j] + half[i, j]) if n > 1 else math.nan,
                        "band_level": float(band),
                        "band_lower": float(qs[0, i, j]),
                        "band_median": float(qs[1, i, j]),
                        "band_upper": float(qs[2, i, j]),
                    }
                )
                rows.append(row)
    return pd.DataFrame(rows)


def _median_over_quantiles(da: xr.DataArray, sdim: str) -> np.ndarray:
    q = _quantiles(da, sdim, [0.5]).isel(level=0, drop=True)
    return np.asarray(q.transpose("subject", "horizon", "region").values, dtype=float)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return self

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


# --------------------------------------------------------------------------------------------
# Observed trajectories

OBSERVED_COLUMNS = (
    "participant_id",
    "session_id",
    "time_years",
    "region",
    "volume_mm3",
    "change_percent",
    "percent_icv",
    *COVARIATES,
)
VENTRICLES_ROW = "lateral_ventricles_total"
"""Region name of the derived ventricle row in :func:`observed_to_tidy` (sum of the lateral
ventricles)."""


def read_regional_volumes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a long regional-volume table (TSV), validated against ``regional_volumes`` in
    ``data_specs`` where that schema exists, else checked for the columns used here."""
    from neurocast.io.tables import load_schema, read_table

    try:
        load_schema("regional_volumes")
    except ValueError:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        return frame
    return read_table(path, "regional_volumes")


def observed_trajectories(
    table: pd.DataFrame | str | os.PathLike[str],
    participants: pd.DataFrame | None = None,
    *,
    ventricles: Sequence[str] | None = None,
    icv: str | None = None,
) -> xr.Dataset:
    """Measured regional volumes at real visits as a Dataset (subject, visit, region).

    Args:
        table: long table (or its TSV path): ``participant_id``, ``region``, ``volume_mm3``, and
            the visit: ``session_id`` (optional) and its time, ``time_years`` (years since the
            first visit) or else ``age`` (years; differences from the first visit are used).
            Visits are ordered by time; visit 0 is the baseline.
        participants: baseline covariates (``participants.tsv`` as read by
            :func:`neurocast.io.tables.read_table`); otherwise covariate columns of ``table`` are
            used where present (``age``: at the first visit).
        ventricles: lateral-ventricle region names (default: matched by name).
        icv: intracranial-volume region name (default: matched by name).

    Returns:
        Dataset with ``volume`` (subject, visit, region) mm³, ``baseline_volume`` (subject,
        region), coordinates ``session_id`` / ``time_years`` (subject, visit; ``"n/a"`` / NaN
        padding), covariates along subject and, where found, ``ventricles``, ``icv`` and
        ``ventricles_percent_icv`` (subject, visit).

    Raises:
        ValueError: a required column is missing, a (participant, visit, region) repeats, or a
            visit has no time.
    """
    if not isinstance(table, pd.DataFrame):
        table = read_regional_volumes(table)
    t = table.copy()
    for col in ("participant_id", "region", "volume_mm3"):
        if col not in t.columns:
            raise ValueError(f"regional volume table needs {col!r}; it has {list(t.columns)}")
    if "time_years" in t.columns and t["time_years"].notna().all():
        t["_time"] = pd.to_numeric(t["time_years"]).astype(float)
    elif "age" in t.columns and t["age"].notna().all():
        age = pd.to_numeric(t["age"]).astype(float)
        t["_time"] = age - age.groupby(t["participant_id"]).transform("min")
    else:
        raise ValueError("regional volume table needs time_years (or age) for every row")
    if "session_id" not in t.columns:
        t["session_id"] = None
    t["_visit_key"] = t["session_id"].astype(object).where(t["session_id"].notna(), t["_time"].map(lambda x: f"t{x:.6f}"))
    dup = t.duplicated(["participant_id", "_visit_key", "region"])
    if dup.any():
        r = t[dup].iloc[0]
        raise ValueError(f"{r['participant_id']} {r['_visit_key']} {r['region']}: region appears twice at one visit")
    ids = sorted(t["participant_id"].astype(str).unique())
    regions = list(dict.fromkeys(t["region"].astype(str)))
    visits: dict[str, list[tuple[float, str, Any]]] = {}
    for pid, g in t.groupby(t["participant_id"].astype(str)):
        v = g.groupby("_visit_key", sort=False)["_time"].agg(["min", "max"])
        if (v["max"] - v["min"]).abs().max() > 1e-9:
            raise ValueError(f"{pid}: rows of one visit disagree on its time")
        sess = g.drop_duplicates("_visit_key").set_index("_visit_key")["session_id"]
        visits[pid] = sorted((float(v.loc[k, "min"]), str(k), sess.loc[k]) for k in v.index)
    n_vis = max(len(v) for v in visits.values())
    S, V, R = len(ids), n_vis, len(regions)
    vol = np.full((S, V, R), np.nan)
    times = np.full((S, V), np.nan)
    sessions = np.full((S, V), MISSING_TEXT, dtype=object)
    ridx = {r: j for j, r in enumerate(regions)}
    for i, pid in enumerate(ids):
        vidx = {key: k for k, (tm, key, ses) in enumerate(visits[pid])}
        for k, (tm, _key, ses) in enumerate(visits[pid]):
            times[i, k] = tm
            sessions[i, k] = MISSING_TEXT if _missing(ses) else str(ses)
        g = t[t["participant_id"].astype(str) == pid]
        vk = g["_visit_key"].map(vidx).to_numpy(int)
        rk = g["region"].astype(str).map(ridx).to_numpy(int)
        vol[i, vk, rk] = pd.to_numeric(g["volume_mm3"]).to_numpy(float)
    t0 = times[:, :1]
    times = times - t0  # time since each subject's first visit in the table
    ds = xr.Dataset(
        {
            "volume": (("subject", "visit", "region"), vol),
            "baseline_volume": (("subject", "region"), vol[:, 0, :].copy()),
        },
        coords={
            "subject": np.array(ids, dtype=str),
            "visit": np.arange(V),
            "region": np.array(regions, dtype=str),
            "session_id": (("subject", "visit"), sessions.astype(str)),
            "time_years": (("subject", "visit"), times),
        },
    )
    ds = _annotate(ds, None)
    ds["visit"].attrs = {"long_name": "visit index in time order (0 = baseline)"}
    ds["session_id"].attrs = {"long_name": "BIDS session"}
    ds["time_years"].attrs = {"long_name": "time since the first visit", "units": "years"}
    ds["baseline_volume"].attrs = {"long_name": "regional volume at the first visit", "units": "mm3"}
    covs = _observed_covariates(t, ids, participants)
    ds = _with_covariates(ds, ids, covs)
    vents = list(ventricles) if ventricles is not None else ventricle_regions(regions)
    icv_name = icv if icv is not None else icv_region(regions)
    attrs = {
        "title": "neurocast cohort observed regional volumes",
        "units": "mm3",
        "neurocast_version": __version__,
        "ventricle_regions": " ".join(vents),
        "icv_region": icv_name or "",
    }
    if vents:
        ds["ventricles"] = ds["volume"].sel(region=vents).sum("region", skipna=False)
        ds["ventricles"].attrs = {"long_name": "lateral ventricles (sum)", "units": "mm3"}
    if vents and icv_name:
        ds["icv"] = ds["volume"].sel(region=icv_name).drop_vars("region")
        ds["icv"].attrs = {"long_name": "intracranial volume", "units": "mm3"}
        ds["ventricles_percent_icv"] = ds["ventricles"] / ds["icv"] * 100.0
        ds["ventricles_percent_icv"].attrs = {
            "long_name": "lateral ventricles as % of intracranial volume (TADPOLE convention)",
            "units": "percent",
        }
    ds.attrs = attrs
    return ds


def _observed_covariates(
    t: pd.DataFrame, ids: Sequence[str], participants: pd.DataFrame | None
) -> dict[str, dict[str, Any]]:
    covs: dict[str, dict[str, Any]] = {pid: {} for pid in ids}
    if participants is not None:
        for rec in participants.to_dict(orient="records"):
            pid = str(rec.get("participant_id"))
            if pid in covs:
                covs[pid] = {c: rec.get(c) for c in COVARIATES}
    first = t.sort_values("_time", kind="stable").groupby(t["participant_id"].astype(str)).first()
    for pid in ids:
        for c in COVARIATES:
            if _missing(covs[pid].get(c)) and c in first.columns:
                covs[pid][c] = first.loc[pid, c]
    return covs


def observed_to_tidy(obs: xr.Dataset) -> pd.DataFrame:
    """One row per subject × visit × region (schema ``cohort_observed``); padding visits are
    dropped; where the lateral ventricles are known, a derived row ``lateral_ventricles_total``
    (their sum) is added per visit. ``percent_icv`` is the region's volume as % of ICV where an
    ICV region exists."""
    regions = [str(r) for r in obs["region"].values]
    vol = obs["volume"]
    base = obs["baseline_volume"]
    if "ventricles" in obs:
        vol = xr.concat([vol, obs["ventricles"].expand_dims(region=[VENTRICLES_ROW])], dim="region")
        bv = obs["ventricles"].isel(visit=0, drop=True).expand_dims(region=[VENTRICLES_ROW])
        base = xr.concat([base, bv], dim="region")
        regions = [*regions, VENTRICLES_ROW]
    chg = (vol / base - 1.0) * 100.0
    pct = vol / obs["icv"] * 100.0 if "icv" in obs else vol * np.nan
    order = ("subject", "visit", "region")
    frame = pd.DataFrame(
        {
            "volume_mm3": np.asarray(vol.transpose(*order).values, float).ravel(),
            "change_percent": np.asarray(chg.transpose(*order).values, float).ravel(),
            "percent_icv": np.asarray(pct.transpose(*order).values, float).ravel(),
        }
    )
    subj = np.asarray(obs["subject"].values).astype(str)
    S, V, R = len(subj), obs.sizes["visit"], len(regions)
    frame.insert(0, "participant_id", np.repeat(subj, V * R))
    frame.insert(1, "session_id", np.repeat(np.asarray(obs["session_id"].values).astype(str).ravel(), R))
    frame.insert(2, "time_years", np.repeat(np.asarray(obs["time_years"].values, float).ravel(), R))
    frame.insert(3, "region", np.tile(np.asarray(regions, dtype=str), S * V))
    frame = frame[frame["time_years"].notna()].reset_index(drop=True)
    frame["session_id"] = frame["session_id"].where(frame["session_id"] != MISSING_TEXT, None)
    cov = covariate_table(obs).set_index("participant_id")
    for c in COVARIATES:
        frame[c] = frame["participant_id"].map(cov[c]).to_numpy()
    return frame[list(OBSERVED_COLUMNS)]


# --------------------------------------------------------------------------------------------
# Forecast against observation

COMPARISON_COLUMNS = (
    "participant_id",
    "session_id",
    "time_years",
    "region",
    "observed_baseline_mm3",
    "observed_mm3",
    "forecast_mean_mm3",
    "forecast_lower_mm3",
    "forecast_upper_mm3",
    "observed_change_percent",
    "forecast_change_percent",
    "error_percent",
    "band_level",
    "within_band",
)


def compare_to_observed(
    forecast: xr.Dataset, observed: xr.Dataset, *, band: float = 0.9
) -> pd.DataFrame:
    """Forecast against measurement at every follow-up visit, subject by subject.

    The forecast's volume ratio to its own baseline is interpolated linearly in time (ratio 1 at
    horizon 0) to each follow-up visit's ``time_years`` (visits after the last horizon are not
    extrapolated, so they are left out) and applied to the **observed** baseline volume, so a
    difference in how the two baselines were measured does not count as a forecast error.

    Returns:
        One row per (subject, follow-up visit, region) present in both (columns
        :data:`COMPARISON_COLUMNS`; schema ``cohort_comparison``): ``error_percent`` is forecast
        minus observed change (percentage points); ``within_band`` whether the observed volume
        lies in the forecast's central ``band`` interval.
    """
    sdim = forecast.attrs.get("stochastic_dim") or stochastic_dim(forecast)
    subjects = [s for s in map(str, forecast["subject"].values) if s in set(map(str, observed["subject"].values))]
    regions = [r for r in map(str, forecast["region"].values) if r in set(map(str, observed["region"].values))]
    hmax = float(np.max(forecast["horizon"].values))
    lo_q, hi_q = (1 - band) / 2, 1 - (1 - band) / 2
    rows = []
    for pid in subjects:
        f = forecast.sel(subject=pid, region=regions)
        o = observed.sel(subject=pid, region=regions)
        ratio = f["volume"] / f["baseline_volume"]
        for k in range(1, o.sizes["visit"]):
            t = float(o["time_years"].values[k])
            if not np.isfinite(t) or t <= 0 or t > hmax + 1e-9:
                continue
            r_t = _interp_horizon(ratio, t)  # (region, sdim)
            base = np.asarray(o["baseline_volume"].values, float)
            pred = base[:, None] * np.asarray(r_t.transpose("region", sdim).values, float)
            if sdim == "sample":
                mean = pred.mean(axis=1)
                lo, hi = np.quantile(pred, [lo_q, hi_q], axis=1)
            else:
                q = np.asarray(forecast["quantile"].values, float)
                mean = np.array([np.interp(0.5, q, p) for p in pred])
                lo = np.array([np.interp(lo_q, q, p) if q.min() <= lo_q else np.nan for p in pred])
                hi = np.array([np.interp(hi_q, q, p) if q.max() >= hi_q else np.nan for p in pred])
            obs_v = np.asarray(o["volume"].values[k], float)
            ses = str(o["session_id"].values[k])
            for j, reg in enumerate(regions):
                if not np.isfinite(obs_v[j]) or not np.isfinite(base[j]):
                    continue
                oc = (obs_v[j] / base[j] - 1) * 100
                fc = (mean[j] / base[j] - 1) * 100
                rows.append(
                    {
                        "participant_id": pid,
                        "session_id": None if ses == MISSING_TEXT else ses,
                        "time_years": t,
                        "region": reg,
                        "observed_baseline_mm3": float(base[j]),
                        "observed_mm3": float(obs_v[j]),
                        "forecast_mean_mm3": float(mean[j]),
                        "forecast_lower_mm3": float(lo[j]),
                        "forecast_upper_mm3": float(hi[j]),
                        "observed_change_percent": float(oc),
                        "forecast_change_percent": float(fc),
                        "error_percent": float(fc - oc),
                        "band_level": float(band),
                        "within_band": bool(lo[j] <= obs_v[j] <= hi[j]) if np.isfinite(lo[j]) and np.isfinite(hi[j]) else None,
                    }
                )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


# --------------------------------------------------------------------------------------------
# Synthetic forecasts (tests, benchmarks and examples until the forecaster exists)

SYNTHETIC_REGIONS = (
    "hippocampus_left",
    "hippocampus_right",
    "lateral_ventricle_left",
    "lateral_ventricle_right",
    "cortex",
    "intracranial_volume",
)
SYNTHETIC_RATES = {"hippocampus": {"CN": -1.4, "MCI": -3.0, "AD": -4.7}, "ventric": {"CN": 3.0, "MCI": 5.0, "AD": 7.5},
                   "cortex": {"CN": -0.5, "MCI": -1.0, "AD": -2.0}}


def synthetic_forecast(
    participant_id: str,
    *,
    diagnosis: str = "MCI",
    age: float = 72.0,
    sex: str = "F",
    apoe4: int | None = 0,
    mmse: float | None = 27.0,
    horizons: Sequence[float] = (1.0, 2.0, 5.0),
    regions: Sequence[str] = SYNTHETIC_REGIONS,
    n_samples: int = 8,
    seed: int = 0,
    dtype: Any = np.float64,
) -> xr.Dataset:
    """A per-subject forecast that follows the contract, with plausible annual rates by
    diagnosis (hippocampus -1.4/-3.0/-4.7 %/yr in CN/MCI/AD, lateral ventricles +3/+5/+7.5,
    cortex -0.5/-1/-2, everything else constant) and per-sample noise. For tests and benchmarks;
    it is not a model."""
    rng = np.random.default_rng(seed)
    base = np.array([_synthetic_base(r) for r in regions]) * rng.lognormal(0, 0.08, len(regions))
    rates = np.array([_synthetic_rate(r, diagnosis) for r in regions])
    h = np.asarray(horizons, float)
    subj = rng.normal(1.0, 0.25)
    noise = rng.normal(0, 0.004, (len(h), len(regions), n_samples)) * np.sqrt(h)[:, None, None]
    ratio = (1 + rates[None, :, None] / 100 * subj) ** h[:, None, None] + noise
    vol = base[None, :, None] * ratio
    attrs: dict[str, Any] = {"units": "mm3", "model_card_sha256": "synthetic", "seed": int(seed)}
    if apoe4 is not None:
        attrs["apoe4"] = int(apoe4)
    if mmse is not None:
        attrs["mmse"] = float(mmse)
    return xr.Dataset(
        {
            "volume": (("horizon", "region", "sample"), vol.astype(dtype)),
            "baseline_volume": (("region",), base.astype(dtype)),
        },
        coords={
            "horizon": h,
            "region": list(regions),
            "sample": np.arange(n_samples),
            "participant_id": participant_id,
            "age": float(age),
            "sex": sex,
            "diagnosis": diagnosis,
        },
        attrs=attrs,
    )


def _synthetic_base(region: str) -> float:
    r = region.lower()
    if "intracran" in r:
        return 1.45e6
    if "hippocamp" in r:
        return 3500.0
    if "ventric" in r:
        return 15000.0
    if "cortex" in r:
        return 4.5e5
    return 8000.0


def _synthetic_rate(region: str, dx: str) -> float:
    r = region.lower()
    for key, rates in SYNTHETIC_RATES.items():
        if key in r:
            return rates.get(dx, rates["MCI"])
    return 0.0
