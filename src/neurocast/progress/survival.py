"""Time to conversion with lifelines: Cox and Weibull AFT models, Kaplan–Meier curves, validation.

:class:`ConversionModel` wraps lifelines' ``CoxPHFitter`` and ``WeibullAFTFitter`` behind one
fitter-like API (``fit`` returns ``self``; fitted attributes end in ``_``) that works on the tidy
events table of :mod:`neurocast.progress.events` (``duration_years``, ``event`` and covariate
columns) plus any extra feature columns (e.g. forecast-derived atrophy from
:func:`neurocast.progress.cohort.forecast_features`):

- features are encoded the same way at fit and predict time: numbers and booleans as they are,
  text (sex, diagnosis) one-hot against a reference level (the first of CN/MCI/AD, F/M, else the
  first in sorted order); columns constant in the training data are dropped (recorded);
- rows with a missing feature, duration or event are dropped (counted in ``n_dropped_``);
- ``hazard_ratios_`` is one table for both kinds: for Cox ``exp(coef)``; for the Weibull AFT
  model, whose hazard ratio of a covariate is ``exp(-beta * rho)``, with a delta-method interval
  from the joint covariance of ``beta`` and ``log(rho)``; the AFT time ratio ``exp(beta)`` is given
  too;
- :func:`cross_validated_concordance` is stratified k-fold (events spread over folds) with a
  fixed seed: each fold's model is fitted on the rest and scored on it with Harrell's C;
- :meth:`ConversionModel.check_proportional_hazards` runs lifelines' Schoenfeld-residual
  ``proportional_hazard_test`` (for a Weibull model, on a Cox model with the same design, since
  the Weibull model is a proportional-hazards model too);
- :func:`kaplan_meier` fits one ``KaplanMeierFitter`` per group and returns a tidy curve table, a
  per-group summary and the log-rank test.

Example:
    >>> from neurocast.progress.survival import ConversionModel, simulate_survival_table
    >>> table = simulate_survival_table(300, hazard_ratio=2.0, seed=0)
    >>> m = ConversionModel("cox").fit(table, ["carrier", "age"])
    >>> hr = m.hazard_ratios_.set_index("feature").loc["carrier"]
    >>> bool(hr.hazard_ratio_lower < 2.0 < hr.hazard_ratio_upper)
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

KINDS = ("cox", "weibull_aft")
DURATION_COL = "duration_years"
EVENT_COL = "event"
KNOWN_LEVELS = {"diagnosis": ["CN", "MCI", "AD"], "sex": ["F", "M"]}
"""Reference order of text levels (the first present level is the reference)."""

HR_COLUMNS = (
    "model",
    "feature",
    "coef",
    "se",
    "hazard_ratio",
    "hazard_ratio_lower",
    "hazard_ratio_upper",
    "time_ratio",
    "time_ratio_lower",
    "time_ratio_upper",
    "z",
    "p",
)


def _exp(x: float) -> float:
    """``exp`` that gives ``inf`` (not OverflowError) for a diverged fit's huge coefficients."""
    x = float(x)
    if math.isnan(x):
        return math.nan
    return math.inf if x >= 709.0 else math.exp(x) if x > -745.0 else 0.0


def _lifelines():
    import lifelines

    return lifelines


# --------------------------------------------------------------------------------------------
# Feature encoding


@dataclass
class FeatureEncoding:
    """How raw feature columns become numeric design columns (fitted on the training table)."""

    features: list[str]
    levels: dict[str, list[str]] = field(default_factory=dict)
    """Text features: their levels; the first is the reference and gets no column."""

    columns: list[str] = field(default_factory=list)
    """Design columns, in order."""

    @classmethod
    def fit(cls, table: pd.DataFrame, features: Sequence[str]) -> FeatureEncoding:
        features = list(features)
        missing = [f for f in features if f not in table.columns]
        if missing:
            raise ValueError(f"features not in the table: {missing}; it has {list(table.columns)}")
        levels: dict[str, list[str]] = {}
        for f in features:
            col = table[f]
            if _is_text(col):
                present = sorted({str(v) for v in col.dropna()})
                known = KNOWN_LEVELS.get(f, [])
                levels[f] = [v for v in known if v in present] + [v for v in present if v not in known]
        enc = cls(features, levels)
        enc.columns = list(enc._expand(table.iloc[:0]).columns)
        return enc

    def _expand(self, table: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for f in self.features:
            if f in self.levels:
                col = table[f].astype(object)
                for lev in self.levels[f][1:]:
                    out[f"{f}_{lev}"] = np.where(col.isna(), np.nan, (col.astype(str) == lev).astype(float))
            else:
                out[f] = pd.to_numeric(table[f].astype(object).where(table[f].notna(), np.nan), errors="coerce").astype(float)
        return pd.DataFrame(out, index=table.index)

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        """Numeric design matrix (NaN where a feature is missing)."""
        x = self._expand(table)
        return x.reindex(columns=self.columns)


def _is_text(col: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return False
    vals = col.dropna()
    return any(isinstance(v, str) for v in vals)


# --------------------------------------------------------------------------------------------
# The model


class ConversionModel:
    """A survival model of time to conversion (lifelines Cox PH or Weibull AFT).

    Args:
        kind: ``"cox"`` (semi-parametric proportional hazards) or ``"weibull_aft"``.
        penalizer: L2 (elastic net with ``l1_ratio``) penalty on the coefficients; a small value
            (e.g. 0.01) stabilises fits with few events or correlated features.
        l1_ratio: share of L1 in the penalty.
        alpha: 1 - confidence level of the intervals (0.05: 95 %).
        duration_col, event_col: columns of the table.

    Fitted attributes: ``model_`` (the lifelines fitter), ``encoding_``, ``features_``,
    ``design_columns_``, ``dropped_constant_``, ``training_frame_`` (design + duration + event),
    ``n_subjects_``, ``n_events_``, ``n_dropped_``, ``hazard_ratios_``, ``concordance_``,
    ``log_likelihood_``, ``aic_``.
    """

    def __init__(
        self,
        kind: str = "cox",
        penalizer: float = 0.0,
        l1_ratio: float = 0.0,
        alpha: float = 0.05,
        duration_col: str = DURATION_COL,
        event_col: str = EVENT_COL,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.penalizer = float(penalizer)
        self.l1_ratio = float(l1_ratio)
        self.alpha = float(alpha)
        self.duration_col = duration_col
        self.event_col = event_col

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (to make an unfitted copy)."""
        return {
            "kind": self.kind,
            "penalizer": self.penalizer,
            "l1_ratio": self.l1_ratio,
            "alpha": self.alpha,
            "duration_col": self.duration_col,
            "event_col": self.event_col,
        }

    def clone(self) -> ConversionModel:
        """An unfitted model with the same settings."""
        return ConversionModel(**self.get_params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"ConversionModel({args})"

    # -- fitting ------------------------------------------------------------------------------

    def _frame(self, table: pd.DataFrame, enc: FeatureEncoding) -> pd.DataFrame:
        for col in (self.duration_col, self.event_col):
            if col not in table.columns:
                raise ValueError(f"table has no {col!r} column")
        x = enc.transform(table)
        x[self.duration_col] = pd.to_numeric(table[self.duration_col], errors="coerce").astype(float)
        x[self.event_col] = pd.to_numeric(table[self.event_col], errors="coerce").astype(float)
        return x

    def _new_fitter(self):
        ll = _lifelines()
        if self.kind == "cox":
            return ll.CoxPHFitter(penalizer=self.penalizer, l1_ratio=self.l1_ratio, alpha=self.alpha)
        return ll.WeibullAFTFitter(penalizer=self.penalizer, l1_ratio=self.l1_ratio, alpha=self.alpha)

    def fit(self, table: pd.DataFrame, features: Sequence[str]) -> ConversionModel:
        """Fit on an events table with these feature columns; returns ``self``.

        Raises:
            ValueError: a feature is not in the table, or too few subjects/events remain.
        """
        features = list(features)
        if not features:
            raise ValueError("at least one feature is needed (for no features use kaplan_meier)")
        enc = FeatureEncoding.fit(table, features)
        frame = self._frame(table, enc)
        keep = frame.notna().all(axis=1) & (frame[self.duration_col] > 0)
        n_dropped = int((~keep).sum())
        frame = frame[keep]
        constant = [c for c in enc.columns if frame[c].nunique(dropna=True) < 2]
        if constant:
            enc.columns = [c for c in enc.columns if c not in constant]
            frame = frame.drop(columns=constant)
        if not enc.columns:
            raise ValueError(f"every feature of {features} is constant in the fitted rows")
        n_events = int(frame[self.event_col].sum())
        if n_events < 2 or len(frame) < len(enc.columns) + 2:
            raise ValueError(
                f"too little data to fit: {len(frame)} subjects, {n_events} events, "
                f"{len(enc.columns)} design columns"
            )
        fitter = self._new_fitter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lifelines' convergence chatter; checked below
            fitter.fit(frame, duration_col=self.duration_col, event_col=self.event_col)
        self.model_ = fitter
        self.encoding_ = enc
        self.features_ = features
        self.design_columns_ = list(enc.columns)
        self.dropped_constant_ = constant
        self.training_frame_ = frame
        self.n_subjects_ = len(frame)
        self.n_events_ = n_events
        self.n_dropped_ = n_dropped
        self.concordance_ = float(fitter.concordance_index_)
        self.log_likelihood_ = float(fitter.log_likelihood_)
        self.aic_ = float(fitter.AIC_partial_ if self.kind == "cox" else fitter.AIC_)
        self.hazard_ratios_ = self._hazard_ratios()
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("this ConversionModel is not fitted yet; call fit() first")

    def _hazard_ratios(self) -> pd.DataFrame:
        z = stats.norm.ppf(1 - self.alpha / 2)
        m = self.model_
        rows = []
        if self.kind == "cox":
            s = m.summary
            for feat in self.design_columns_:
                r = s.loc[feat]
                rows.append(
                    {
                        "feature": feat,
                        "coef": r["coef"],
                        "se": r["se(coef)"],
                        "hazard_ratio": _exp(r["coef"]),
                        "hazard_ratio_lower": _exp(r["coef"] - z * r["se(coef)"]),
                        "hazard_ratio_upper": _exp(r["coef"] + z * r["se(coef)"]),
                        "time_ratio": math.nan,
                        "time_ratio_lower": math.nan,
                        "time_ratio_upper": math.nan,
                        "z": r["z"],
                        "p": r["p"],
                    }
                )
        else:
            s = m.summary
            cov = m.variance_matrix_
            log_rho = float(m.params_.loc[("rho_", "Intercept")])
            rho = math.exp(log_rho)
            for feat in self.design_columns_:
                key = ("lambda_", feat)
                beta = float(m.params_.loc[key])
                se = float(s.loc[key, "se(coef)"])
                # log HR = -beta * rho; gradient wrt (beta, log rho) = (-rho, -beta * rho)
                g = np.array([-rho, -beta * rho])
                keys = [key, ("rho_", "Intercept")]
                v = cov.loc[keys, keys].to_numpy(dtype=float)
                se_lhr = float(math.sqrt(max(g @ v @ g, 0.0)))
                lhr = -beta * rho
                rows.append(
                    {
                        "feature": feat,
                        "coef": beta,
                        "se": se,
                        "hazard_ratio": _exp(lhr),
                        "hazard_ratio_lower": _exp(lhr - z * se_lhr),
                        "hazard_ratio_upper": _exp(lhr + z * se_lhr),
                        "time_ratio": _exp(beta),
                        "time_ratio_lower": _exp(beta - z * se),
                        "time_ratio_upper": _exp(beta + z * se),
                        "z": float(s.loc[key, "z"]),
                        "p": float(s.loc[key, "p"]),
                    }
                )
        out = pd.DataFrame(rows)
        out.insert(0, "model", self.kind)
        return out.reindex(columns=list(HR_COLUMNS))

    # -- prediction ---------------------------------------------------------------------------

    def design(self, table: pd.DataFrame) -> pd.DataFrame:
        """The design matrix of a table with the fitted encoding (NaN rows where data is missing)."""
        self._check_fitted()
        return self.encoding_.transform(table)

    def predict_risk(self, table: pd.DataFrame) -> pd.Series:
        """A risk score per row (higher = earlier conversion): Cox log partial hazard, or minus
        the log median conversion time of the Weibull model. NaN where a feature is missing."""
        self._check_fitted()
        x = self.design(table)
        ok = x.notna().all(axis=1)
        out = pd.Series(np.nan, index=table.index, dtype=float)
        if ok.any():
            if self.kind == "cox":
                out[ok] = np.asarray(self.model_.predict_log_partial_hazard(x[ok]), dtype=float)
            else:
                out[ok] = -np.log(np.asarray(self.model_.predict_median(x[ok]), dtype=float))
        return out

    def predict_survival(self, table: pd.DataFrame, times: Sequence[float]) -> pd.DataFrame:
        """Probability of not yet having converted at ``times`` (rows: times, columns: table rows)."""
        self._check_fitted()
        x = self.design(table).dropna()
        return self.model_.predict_survival_function(x, times=list(times))

    def score(self, table: pd.DataFrame) -> float:
        """Harrell's concordance index of the model's risk on a (held-out) table."""
        from lifelines.utils import concordance_index

        risk = self.predict_risk(table)
        d = pd.to_numeric(table[self.duration_col], errors="coerce")
        e = pd.to_numeric(table[self.event_col], errors="coerce")
        ok = risk.notna() & d.notna() & e.notna()
        if int(e[ok].sum()) == 0:
            return float("nan")
        return float(concordance_index(d[ok], -risk[ok], e[ok]))

    # -- checks -------------------------------------------------------------------------------

    def check_proportional_hazards(
        self, time_transform: str | Sequence[str] = "rank"
    ) -> pd.DataFrame:
        """Schoenfeld-residual test of the proportional-hazards assumption, per design column.

        Returns:
            A table: ``model``, ``feature``, ``time_transform``, ``test_statistic``, ``p``,
            ``violated`` (``p < alpha``). For a Weibull model, the test is of a Cox model with the
            same design (the Weibull model assumes proportional hazards as well).
        """
        from lifelines.statistics import proportional_hazard_test

        self._check_fitted()
        cox = self.model_
        if self.kind != "cox":
            cox = _lifelines().CoxPHFitter(penalizer=self.penalizer, l1_ratio=self.l1_ratio)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cox.fit(self.training_frame_, duration_col=self.duration_col, event_col=self.event_col)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = proportional_hazard_test(cox, self.training_frame_, time_transform=time_transform)
        s = res.summary.copy()
        rows = []
        transforms = [time_transform] if isinstance(time_transform, str) else list(time_transform)
        for idx, r in s.iterrows():
            if isinstance(idx, tuple):
                feat, tt = idx
            else:
                feat, tt = idx, transforms[0]
            rows.append(
                {
                    "model": self.kind,
                    "feature": str(feat),
                    "time_transform": str(tt),
                    "test_statistic": float(r["test_statistic"]),
                    "p": float(r["p"]),
                    "violated": bool(r["p"] < self.alpha),
                }
            )
        return pd.DataFrame(rows)

    def cross_validated_concordance(
        self, table: pd.DataFrame, features: Sequence[str], k: int = 5, seed: int = 0
    ) -> CVResult:
        """Stratified k-fold concordance with this model's settings (see the module function)."""
        return cross_validated_concordance(table, features, k=k, seed=seed, model=self)


# --------------------------------------------------------------------------------------------
# Cross-validation


@dataclass
class CVResult:
    """Cross-validated concordance: one score per fold, their mean and SD."""

    scores: list[float]
    k: int
    seed: int
    model: str
    features: list[str]
    n_subjects: int
    n_events: int

    @property
    def mean(self) -> float:
        s = [x for x in self.scores if np.isfinite(x)]
        return float(np.mean(s)) if s else float("nan")

    @property
    def std(self) -> float:
        s = [x for x in self.scores if np.isfinite(x)]
        return float(np.std(s, ddof=1)) if len(s) > 1 else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """One row per fold (model, fold, concordance)."""
        return pd.DataFrame(
            {"model": self.model, "fold": range(1, len(self.scores) + 1), "concordance": self.scores}
        )


def stratified_folds(events: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per row: events and non-events are each shuffled and dealt in turn."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(events), dtype=int)
    offset = 0
    for val in (1, 0):
        idx = np.flatnonzero(events == val)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return folds


def cross_validated_concordance(
    table: pd.DataFrame,
    features: Sequence[str],
    k: int = 5,
    seed: int = 0,
    *,
    kind: str = "cox",
    penalizer: float = 0.0,
    model: ConversionModel | None = None,
) -> CVResult:
    """Stratified k-fold cross-validated Harrell's C of a model on an events table.

    Rows with a missing feature are dropped first (so every fold model sees complete data), the
    rest are dealt into ``k`` folds with events spread evenly (seeded), and each fold is scored by
    a model fitted on the other ``k - 1``. A fold without events scores NaN (left out of the mean).

    Args:
        table: events table with the feature columns.
        features: columns to use.
        k: number of folds (2 <= k <= number of events).
        seed: shuffling seed.
        kind, penalizer: model settings (ignored when ``model`` is given).
        model: a template :class:`ConversionModel` whose settings are used.
    """
    template = model.clone() if model is not None else ConversionModel(kind, penalizer=penalizer)
    enc = FeatureEncoding.fit(table, features)
    x = template._frame(table, enc)
    keep = x.notna().all(axis=1) & (x[template.duration_col] > 0)
    data = table.loc[keep].reset_index(drop=True)
    events = pd.to_numeric(data[template.event_col]).to_numpy().astype(int)
    n_events = int(events.sum())
    if k < 2 or k > max(n_events, 2):
        raise ValueError(f"k must be between 2 and the number of events ({n_events}), got {k}")
    folds = stratified_folds(events, k, seed)
    scores = []
    for f in range(k):
        train, test = data[folds != f], data[folds == f]
        m = template.clone().fit(train, features)
        scores.append(m.score(test))
    return CVResult(scores, k, seed, template.kind, list(features), len(data), n_events)


# --------------------------------------------------------------------------------------------
# Kaplan–Meier


@dataclass
class KaplanMeierResult:
    """Kaplan–Meier fits per group.

    Attributes:
        group_col: the grouping column (``None``: everybody in one group ``"all"``).
        fitters: group label -> fitted ``KaplanMeierFitter``.
        curves: tidy curve table (group, time_years, survival, survival_lower, survival_upper,
            at_risk, events, censored).
        summary: one row per group (group, n, events, median_years, survival at 1/2/3/5 years).
        logrank: log-rank test across groups (test_statistic, p, df) or ``None`` for one group.
    """

    group_col: str | None
    fitters: dict[str, Any]
    curves: pd.DataFrame
    summary: pd.DataFrame
    logrank: dict[str, float] | None


def _group_label(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def kaplan_meier(
    table: pd.DataFrame,
    group_col: str | None = None,
    *,
    duration_col: str = DURATION_COL,
    event_col: str = EVENT_COL,
    alpha: float = 0.05,
    summary_times: Sequence[float] = (1.0, 2.0, 3.0, 5.0),
) -> KaplanMeierResult:
    """Kaplan–Meier curves of time to conversion, per value of ``group_col``.

    Rows with a missing group are left out. Group labels are the values as text (``1`` not
    ``1.0``), sorted (CN/MCI/AD and F/M in their usual order).
    """
    ll = _lifelines()
    from lifelines.statistics import multivariate_logrank_test

    d = pd.to_numeric(table[duration_col], errors="coerce")
    e = pd.to_numeric(table[event_col], errors="coerce")
    if group_col is None:
        g = pd.Series("all", index=table.index)
    else:
        if group_col not in table.columns:
            raise ValueError(f"table has no column {group_col!r}")
        g = table[group_col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else _group_label(v))
    ok = d.notna() & e.notna() & g.notna()
    d, e, g = d[ok], e[ok].astype(int), g[ok]
    labels = sorted(set(g))
    known = KNOWN_LEVELS.get(group_col or "", [])
    labels = [x for x in known if x in labels] + [x for x in labels if x not in known]
    fitters: dict[str, Any] = {}
    curve_rows, summary_rows = [], []
    for lab in labels:
        sel = g == lab
        kmf = ll.KaplanMeierFitter(alpha=alpha, label=lab)
        kmf.fit(d[sel], e[sel])
        fitters[lab] = kmf
        sf = kmf.survival_function_.iloc[:, 0]
        ci = kmf.confidence_interval_survival_function_.reindex(sf.index)
        et = kmf.event_table.reindex(sf.index)
        curve_rows.append(
            pd.DataFrame(
                {
                    "group": lab,
                    "time_years": sf.index.to_numpy(dtype=float),
                    "survival": sf.to_numpy(dtype=float),
                    "survival_lower": ci.iloc[:, 0].to_numpy(dtype=float),
                    "survival_upper": ci.iloc[:, 1].to_numpy(dtype=float),
                    "at_risk": et["at_risk"].to_numpy(dtype=int),
                    "events": et["observed"].to_numpy(dtype=int),
                    "censored": et["censored"].to_numpy(dtype=int),
                }
            )
        )
        med = float(kmf.median_survival_time_)
        row = {
            "group": lab,
            "n": int(sel.sum()),
            "events": int(e[sel].sum()),
            "median_years": med if np.isfinite(med) else None,
        }
        for t in summary_times:
            row[f"survival_{_fmt_years(t)}"] = (
                float(kmf.predict(t)) if t <= float(d[sel].max()) else None
            )
        summary_rows.append(row)
    curve_cols = ["group", "time_years", "survival", "survival_lower", "survival_upper", "at_risk", "events", "censored"]
    curves = pd.concat(curve_rows, ignore_index=True) if curve_rows else pd.DataFrame(columns=curve_cols)
    if group_col is not None:
        curves.insert(0, "grouping", group_col)
    summary = pd.DataFrame(summary_rows)
    if group_col is not None:
        summary.insert(0, "grouping", group_col)
    logrank = None
    if len(labels) > 1:
        res = multivariate_logrank_test(d, g, e)
        logrank = {
            "test_statistic": float(res.test_statistic),
            "p": float(res.p_value),
            "df": int(res.degrees_of_freedom),
        }
    return KaplanMeierResult(group_col, fitters, curves, summary, logrank)


def _fmt_years(t: float) -> str:
    return f"{int(t)}y" if float(t).is_integer() else f"{t:g}y".replace(".", "p")


# --------------------------------------------------------------------------------------------
# Comparing feature sets


def compare_feature_sets(
    table: pd.DataFrame,
    feature_sets: dict[str, Sequence[str]],
    *,
    kinds: Sequence[str] = KINDS,
    penalizer: float = 0.0,
    k: int = 5,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], ConversionModel]]:
    """Fit every (feature set, kind) on the same subjects and cross-validate them.

    All sets are evaluated on the rows complete for the union of their features (so the
    concordances compare like with like) and with the same folds (same seed).

    Returns:
        ``(concordance table, hazard-ratio table, fitted models)``. The concordance table has one
        row per (feature_set, model): n_subjects, n_events, apparent concordance, cross-validated
        mean and SD, k, seed. The hazard-ratio table is :data:`HR_COLUMNS` with ``feature_set``.
    """
    union = sorted({f for fs in feature_sets.values() for f in fs})
    missing = [f for f in union if f not in table.columns]
    if missing:
        raise ValueError(f"features not in the table: {missing}")
    complete = table[union].notna().all(axis=1)
    data = table[complete].reset_index(drop=True)
    crows, hrs = [], []
    models: dict[tuple[str, str], ConversionModel] = {}
    for name, feats in feature_sets.items():
        for kind in kinds:
            m = ConversionModel(kind, penalizer=penalizer).fit(data, feats)
            cv = cross_validated_concordance(data, feats, k=k, seed=seed, model=m)
            models[(name, kind)] = m
            crows.append(
                {
                    "feature_set": name,
                    "model": kind,
                    "features": " ".join(feats),
                    "n_subjects": m.n_subjects_,
                    "n_events": m.n_events_,
                    "concordance_apparent": m.concordance_,
                    "concordance_cv_mean": cv.mean,
                    "concordance_cv_sd": cv.std,
                    "k": k,
                    "seed": seed,
                    "aic": m.aic_,
                }
            )
            hrs.extend({"feature_set": name, **r} for r in m.hazard_ratios_.to_dict("records"))
    return pd.DataFrame(crows), pd.DataFrame(hrs), models


# --------------------------------------------------------------------------------------------
# Synthetic data (tests, benchmarks, examples)


def simulate_survival_table(
    n: int = 500,
    hazard_ratio: float = 2.0,
    *,
    baseline_hazard: float = 0.15,
    age_log_hr_per_year: float = 0.0,
    max_follow_up: float = 6.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A synthetic events table with a known hazard ratio of a binary covariate ``carrier``.

    Times are exponential with hazard ``baseline_hazard * hazard_ratio**carrier *
    exp(age_log_hr_per_year * (age - 72))``; censoring is uniform on ``[1, max_follow_up]`` years.
    Columns: participant_id, duration_years, event, carrier (0/1), age, sex, apoe4, diagnosis.
    """
    rng = np.random.default_rng(seed)
    carrier = rng.integers(0, 2, n)
    age = rng.normal(72, 6, n)
    sex = rng.choice(["F", "M"], n)
    rate = baseline_hazard * hazard_ratio**carrier * np.exp(age_log_hr_per_year * (age - 72))
    t = rng.exponential(1 / rate)
    c = rng.uniform(1.0, max_follow_up, n)
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{i:04d}" for i in range(n)],
            "duration_years": np.minimum(t, c),
            "event": (t <= c).astype(int),
            "carrier": carrier,
            "age": age,
            "sex": sex,
            "apoe4": carrier.astype(float),
            "diagnosis": "MCI",
        }
    )
