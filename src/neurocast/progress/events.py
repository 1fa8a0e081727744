"""Conversion events (e.g. MCI to AD) derived from per-visit diagnoses, as a tidy table.

A subject's diagnostic history is the ``diagnosis`` column of its ``sub-<label>_sessions.tsv`` at
the visits :func:`neurocast.io.bids.discover` finds, placed in time by ``Session.time_years``
(years since the first visit). :func:`derive_events` turns it into one row per subject at risk
of a transition ``FROM->TO`` (default ``MCI->AD``), with the rules below (also in
``data_specs/README.md``, section *Conversion events*):

- **States are ordered** CN < MCI < AD. A visit is *converted* when its diagnosis is at or beyond
  the target (so a CN subject first seen as AD has converted to MCI-or-worse for ``CN->MCI``).
  Visits without a diagnosis (``n/a``) or without a time are ignored.
- **Baseline state**: the diagnosis of the first visit with one (at time 0 as a rule); where the
  first visit has none, ``participants.tsv``'s ``diagnosis``. Subjects whose baseline state is
  already at or beyond the target are **excluded** (``in target state at baseline``); so are
  subjects in another state than ``FROM`` (e.g. CN for ``MCI->AD``), subjects without any
  diagnosis, and subjects without a visit after baseline (nothing is known about their risk).
  Every exclusion is listed with its reason in ``table.attrs["excluded"]``.
- **Event time** (``event_time="first_visit"``, the default): the time of the first converted
  visit. The conversion really happened at some time in ``(last_negative_years,
  first_positive_years]``, the interval between the last visit before it and that visit; both
  bounds are columns of the table, so interval-censored models can use them.
  ``event_time="midpoint"`` uses the middle of that interval instead (less biased when visits
  are far apart, but it assumes the conversion is uniformly likely within the interval).
- **Censoring**: a subject never seen converted is censored (``event = 0``) at the last visit
  with a diagnosis.
- **Reverters** (converted, then seen below the target again, e.g. MCI -> AD -> MCI):
  ``reversion="first"`` (default) counts the first conversion and flags the subject
  (``reverted = true``); ``reversion="sustained"`` counts only a conversion that holds at every
  later visit with a diagnosis (event at the first visit of that final run); a subject whose last
  diagnosed visit is below the target is then censored there. A conversion seen at the last visit
  only is counted by both rules (nothing contradicts it yet).

A table of events made elsewhere can be read with :func:`read_events` (same schema,
``data_specs/conversion_events.schema.json``).

Example:
    >>> import pandas as pd
    >>> from neurocast.progress.events import events_from_visits
    >>> visits = pd.DataFrame({
    ...     "participant_id": ["sub-1"] * 3 + ["sub-2"] * 2,
    ...     "time_years": [0.0, 1.0, 2.0, 0.0, 1.5],
    ...     "diagnosis": ["MCI", "MCI", "AD", "MCI", "MCI"]})
    >>> events_from_visits(visits)[["participant_id", "duration_years", "event"]]
      participant_id  duration_years  event
    0          sub-1             2.0      1
    1          sub-2             1.5      0
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from neurocast.errors import InputError
from neurocast.io.bids import COVARIATES, BIDSDataset, discover
from neurocast.io.tables import read_table, validate_frame

STATES: tuple[str, ...] = ("CN", "MCI", "AD")
"""Diagnostic states in order of severity."""
RANK = {s: i for i, s in enumerate(STATES)}

EVENT_TIMES = ("first_visit", "midpoint")
REVERSIONS = ("first", "sustained")

EVENT_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "from_state",
    "to_state",
    "duration_years",
    "event",
    "last_negative_years",
    "first_positive_years",
    "n_visits",
    "reverted",
    *COVARIATES,
)
"""Columns of the events table, in order (schema: ``conversion_events``)."""

EXCLUDED_COLUMNS = ("participant_id", "reason")


def parse_transition(transition: str | Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Parse ``"MCI->AD"`` (also ``"MCI:AD"``, ``"CN,MCI->AD"``) into (from states, to state).

    Raises:
        ValueError: unknown states, or a target not beyond every starting state.
    """
    if isinstance(transition, str):
        parts = re.split(r"\s*(?:->|:|>|→)\s*", transition.strip())
        if len(parts) != 2:
            raise ValueError(f"transition {transition!r}: expected FROM->TO, e.g. MCI->AD")
        frm = tuple(p.strip().upper() for p in re.split(r"[,+|]", parts[0]) if p.strip())
        to = parts[1].strip().upper()
    else:
        seq = list(transition)
        if len(seq) != 2:
            raise ValueError(f"transition {transition!r}: expected (from, to)")
        frm = (seq[0],) if isinstance(seq[0], str) else tuple(seq[0])
        frm = tuple(str(s).upper() for s in frm)
        to = str(seq[1]).upper()
    for s in (*frm, to):
        if s not in RANK:
            raise ValueError(f"transition {transition!r}: unknown state {s!r}; use {STATES}")
    if not frm or any(RANK[f] >= RANK[to] for f in frm):
        raise ValueError(f"transition {transition!r}: the target must be beyond every start state")
    return frm, to


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v == "n/a"


def visits_from_bids(dataset: BIDSDataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The visits (participant_id, session_id, time_years, diagnosis, age, mmse) and baseline
    covariates (participant_id + ``COVARIATES``) of a discovered dataset."""
    vrows, crows = [], []
    for p in dataset.participants:
        for s in p.sessions:
            vrows.append(
                {
                    "participant_id": p.participant_id,
                    "session_id": s.entity or None,
                    "time_years": s.time_years,
                    "diagnosis": s.info.get("diagnosis"),
                    "age": s.age,
                    "mmse": s.info.get("mmse"),
                }
            )
        crows.append({"participant_id": p.participant_id, **{k: p.covariates.get(k) for k in COVARIATES}})
    visits = pd.DataFrame(
        vrows, columns=["participant_id", "session_id", "time_years", "diagnosis", "age", "mmse"]
    )
    covs = pd.DataFrame(crows, columns=["participant_id", *COVARIATES])
    return visits, covs


def events_from_visits(
    visits: pd.DataFrame,
    covariates: pd.DataFrame | None = None,
    transition: str | Sequence[str] = "MCI->AD",
    *,
    event_time: str = "first_visit",
    reversion: str = "first",
) -> pd.DataFrame:
    """Derive conversion events from a long table of visits (the rules of the module docstring).

    Args:
        visits: one row per visit with ``participant_id``, ``time_years`` (years since the first
            visit) and ``diagnosis`` (CN/MCI/AD or missing); optional ``age`` and ``mmse`` (used
            as baseline covariates where ``covariates`` lacks them).
        covariates: baseline covariates per participant (``participant_id`` and any of age, sex,
            diagnosis, apoe4, mmse), e.g. ``participants.tsv``.
        transition: ``"MCI->AD"`` (default), ``"CN->MCI"``, ``"CN->AD"``, ``"CN,MCI->AD"``...
        event_time: ``"first_visit"`` or ``"midpoint"`` (see the module docstring).
        reversion: ``"first"`` or ``"sustained"``.

    Returns:
        The events table (columns :data:`EVENT_COLUMNS`, one row per subject at risk, sorted by
        participant_id); ``table.attrs["excluded"]`` lists the excluded subjects with reasons and
        ``table.attrs["rules"]`` the settings.
    """
    frm, to = parse_transition(transition)
    if event_time not in EVENT_TIMES:
        raise ValueError(f"event_time must be one of {EVENT_TIMES}, got {event_time!r}")
    if reversion not in REVERSIONS:
        raise ValueError(f"reversion must be one of {REVERSIONS}, got {reversion!r}")
    for col in ("participant_id", "time_years", "diagnosis"):
        if col not in visits.columns:
            raise ValueError(f"visits table needs a {col!r} column; it has {list(visits.columns)}")
    cov_by_id: dict[str, dict[str, Any]] = {}
    if covariates is not None:
        for rec in covariates.to_dict(orient="records"):
            cov_by_id[str(rec["participant_id"])] = rec
    target = RANK[to]
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, str]] = []
    ids = sorted(set(visits["participant_id"].astype(str)) | set(cov_by_id))
    groups = {str(k): g for k, g in visits.groupby(visits["participant_id"].astype(str), sort=False)}
    for pid in ids:
        cov = cov_by_id.get(pid, {})
        g = groups.get(pid)
        if g is None:
            excluded.append({"participant_id": pid, "reason": "no visits"})
            continue
        g = g.copy()
        g["time_years"] = pd.to_numeric(g["time_years"], errors="coerce")
        g = g[g["time_years"].notna()].sort_values("time_years", kind="stable")
        if g.empty:
            excluded.append({"participant_id": pid, "reason": "no visit with a known time"})
            continue
        first = g.iloc[0]
        dx_rows = g[[not _is_missing(d) for d in g["diagnosis"]]]
        for d in dx_rows["diagnosis"]:
            if str(d) not in RANK:
                raise InputError(None, f"{pid}: unknown diagnosis {d!r} (expected {STATES})")
        if not _is_missing(first["diagnosis"]):
            baseline = str(first["diagnosis"])
        elif not _is_missing(cov.get("diagnosis")):
            baseline = str(cov["diagnosis"])
        else:
            excluded.append({"participant_id": pid, "reason": "no baseline diagnosis"})
            continue
        if RANK[baseline] >= target:
            excluded.append(
                {"participant_id": pid, "reason": f"in target state at baseline ({baseline})"}
            )
            continue
        if baseline not in frm:
            excluded.append(
                {"participant_id": pid, "reason": f"baseline state {baseline} is not {'/'.join(frm)}"}
            )
            continue
        t0 = float(first["time_years"])
        dx_rows = dx_rows[dx_rows["time_years"] > t0]  # the baseline visit is known negative
        times = [t0, *(float(t) for t in dx_rows["time_years"])]
        positive = [False, *(RANK[str(d)] >= target for d in dx_rows["diagnosis"])]
        if len(times) < 2:
            excluded.append({"participant_id": pid, "reason": "no diagnosed visit after baseline"})
            continue
        first_pos = next((i for i, p in enumerate(positive) if p), None)
        reverted = first_pos is not None and not all(positive[first_pos:])
        conv = first_pos
        if reversion == "sustained" and conv is not None:
            if not positive[-1]:
                conv = None
            else:
                conv = max(i for i, p in enumerate(positive) if not p) + 1
        if conv is None:
            duration = times[-1] - t0
            event, lo, hi = 0, None, None
        else:
            lo, hi = times[conv - 1] - t0, times[conv] - t0
            duration = hi if event_time == "first_visit" else 0.5 * (lo + hi)
            event = 1
        base_cov = {k: cov.get(k) for k in COVARIATES}
        for k in ("age", "mmse"):
            if _is_missing(base_cov.get(k)) and k in g.columns and not _is_missing(first.get(k)):
                base_cov[k] = float(first[k])
        base_cov = {k: (None if _is_missing(v) else v) for k, v in base_cov.items()}
        base_cov["diagnosis"] = baseline
        rows.append(
            {
                "participant_id": pid,
                "from_state": baseline,
                "to_state": to,
                "duration_years": float(duration),
                "event": int(event),
                "last_negative_years": lo,
                "first_positive_years": hi,
                "n_visits": len(times),
                "reverted": bool(reverted),
                **base_cov,
            }
        )
    table = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    table = _typed(table)
    table.attrs["excluded"] = excluded
    table.attrs["rules"] = {
        "transition": f"{','.join(frm)}->{to}",
        "event_time": event_time,
        "reversion": reversion,
    }
    return table


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    for col in ("duration_years", "last_negative_years", "first_positive_years", "age", "mmse", "apoe4"):
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    out["event"] = out["event"].astype(int)
    out["n_visits"] = out["n_visits"].astype(int)
    out["reverted"] = out["reverted"].astype(bool)
    for col in ("sex", "diagnosis"):
        if col in out.columns:
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


def derive_events(
    bids: str | os.PathLike[str] | BIDSDataset,
    transition: str | Sequence[str] = "MCI->AD",
    *,
    event_time: str = "first_visit",
    reversion: str = "first",
    participant_label: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Conversion events of a BIDS dataset from its ``sessions.tsv`` per-visit diagnoses.

    Args:
        bids: a BIDS folder or a :class:`~neurocast.io.bids.BIDSDataset` already discovered.
        transition, event_time, reversion: see :func:`events_from_visits`.
        participant_label: restrict to these participants.

    Returns:
        The events table (see :func:`events_from_visits`). Only sessions that
        :func:`~neurocast.io.bids.discover` keeps (those with a T1w scan) are used.
    """
    ds = bids if isinstance(bids, BIDSDataset) else discover(bids, participant_label)
    visits, covs = visits_from_bids(ds)
    return events_from_visits(
        visits, covs, transition, event_time=event_time, reversion=reversion
    )


def excluded_table(events: pd.DataFrame) -> pd.DataFrame:
    """The excluded subjects of an events table (participant_id, reason)."""
    return pd.DataFrame(events.attrs.get("excluded", []), columns=list(EXCLUDED_COLUMNS))


def events_to_text_frame(events: pd.DataFrame) -> pd.DataFrame:
    """The events table with every cell as text (``n/a`` for missing), as it is written to TSV."""

    def cell(v: Any) -> Any:
        if _is_missing(v):
            return None
        if isinstance(v, (bool, np.bool_)):
            return "true" if v else "false"
        if isinstance(v, (float, np.floating)) and float(v).is_integer() and abs(v) < 1e15:
            return repr(float(v))
        return str(v)

    return events.apply(lambda col: col.map(cell)).astype(object)


def validate_events(events: pd.DataFrame) -> pd.DataFrame:
    """Check an events table against ``conversion_events.schema.json`` (raises InvalidTableError)."""
    return validate_frame(events_to_text_frame(events), "conversion_events")


def read_events(
    path: str | os.PathLike[str],
    covariates: pd.DataFrame | Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Read a given events table (``conversion_events`` schema) and add missing covariates.

    The table needs ``participant_id``, ``duration_years`` (> 0) and ``event`` (0/1); other columns
    of the schema are optional. Covariates missing from it are taken from ``covariates`` (e.g. the
    participants table) where given.

    Raises:
        InvalidTableError: the table breaks the schema.
        InputError: a duration is not positive.
    """
    table = read_table(path, "conversion_events")
    if (table["duration_years"].astype(float) <= 0).any():
        bad = table.loc[table["duration_years"].astype(float) <= 0, "participant_id"].tolist()
        raise InputError(path, f"duration_years must be > 0 (rows of {bad[:5]})")
    if covariates is not None:
        cov = (
            covariates
            if isinstance(covariates, pd.DataFrame)
            else pd.DataFrame([{"participant_id": k, **v} for k, v in covariates.items()])
        )
        cov = cov.set_index("participant_id")
        for k in COVARIATES:
            if k not in cov.columns:
                continue
            fill = table["participant_id"].map(cov[k])
            if k not in table.columns:
                table[k] = fill
            else:
                table[k] = table[k].where(table[k].notna(), fill)
    for col in EVENT_COLUMNS:
        if col not in table.columns:
            table[col] = None
    if table["reverted"].isna().all():
        table["reverted"] = False
    out = table[list(EVENT_COLUMNS) + [c for c in table.columns if c not in EVENT_COLUMNS]]
    out = out.copy()
    for col in ("duration_years", "last_negative_years", "first_positive_years", "age", "mmse", "apoe4"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    out["event"] = out["event"].astype(int)
    out.attrs["excluded"] = []
    out.attrs["rules"] = {"source": str(path)}
    return out
