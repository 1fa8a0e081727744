"""Conversion events from per-visit diagnoses: event times, censoring, exclusions, reverters."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from nc_testutils import make_bids
from neurocast.errors import InputError, InvalidTableError
from neurocast.io.tables import read_table
from neurocast.progress.events import (
    EVENT_COLUMNS,
    derive_events,
    events_from_visits,
    excluded_table,
    parse_transition,
    read_events,
    validate_events,
)


def visits(rows: dict[str, list[tuple[float, str | None]]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"participant_id": pid, "time_years": t, "diagnosis": dx}
            for pid, vs in rows.items()
            for t, dx in vs
        ]
    )


def row(table: pd.DataFrame, pid: str) -> pd.Series:
    return table.set_index("participant_id").loc[pid]


HISTORIES = {
    "sub-conv": [(0.0, "MCI"), (1.0, "MCI"), (2.0, "AD"), (3.0, "AD")],
    "sub-never": [(0.0, "MCI"), (1.0, "MCI"), (2.5, "MCI")],
    "sub-adbase": [(0.0, "AD"), (1.0, "AD")],
    "sub-cn": [(0.0, "CN"), (1.0, "MCI")],
    "sub-revert": [(0.0, "MCI"), (1.0, "AD"), (2.0, "MCI"), (3.0, "MCI")],
    "sub-revlate": [(0.0, "MCI"), (1.0, "AD"), (2.0, "MCI"), (3.0, "AD")],
    "sub-once": [(0.0, "MCI")],
    "sub-gap": [(0.0, "MCI"), (1.0, None), (2.0, "MCI"), (4.0, None)],
}


def test_event_times_censoring_and_exclusions():
    t = events_from_visits(visits(HISTORIES), transition="MCI->AD")
    assert list(t.columns) == list(EVENT_COLUMNS)
    assert sorted(t["participant_id"]) == ["sub-conv", "sub-gap", "sub-never", "sub-revert", "sub-revlate"]
    conv = row(t, "sub-conv")
    assert (conv.event, conv.duration_years) == (1, 2.0)
    assert (conv.last_negative_years, conv.first_positive_years) == (1.0, 2.0)
    assert conv.from_state == "MCI" and conv.to_state == "AD" and conv.n_visits == 4
    never = row(t, "sub-never")
    assert (never.event, never.duration_years) == (0, 2.5)  # censored at the last visit
    assert math.isnan(never.last_negative_years) and math.isnan(never.first_positive_years)
    gap = row(t, "sub-gap")  # visits without diagnosis are ignored: censored at 2.0, not 4.0
    assert (gap.event, gap.duration_years, gap.n_visits) == (0, 2.0, 2)
    reasons = dict(excluded_table(t).itertuples(index=False))
    assert reasons["sub-adbase"].startswith("in target state at baseline")
    assert "not MCI" in reasons["sub-cn"]
    assert reasons["sub-once"] == "no diagnosed visit after baseline"


def test_reverters_first_and_sustained():
    first = events_from_visits(visits(HISTORIES), reversion="first")
    r = row(first, "sub-revert")
    assert (r.event, r.duration_years, bool(r.reverted)) == (1, 1.0, True)
    assert not bool(row(first, "sub-conv").reverted)
    sus = events_from_visits(visits(HISTORIES), reversion="sustained")
    r = row(sus, "sub-revert")  # reverted and stayed MCI: censored at the last visit
    assert (r.event, r.duration_years) == (0, 3.0)
    late = row(sus, "sub-revlate")  # the final run of AD starts at 3.0
    assert (late.event, late.duration_years, late.last_negative_years) == (1, 3.0, 2.0)
    assert row(sus, "sub-conv").duration_years == 2.0


def test_midpoint_event_time():
    t = events_from_visits(visits(HISTORIES), event_time="midpoint")
    assert row(t, "sub-conv").duration_years == pytest.approx(1.5)
    assert row(t, "sub-never").duration_years == 2.5  # censoring unchanged


def test_ordinal_states_and_baseline_from_participants():
    v = visits({"sub-a": [(0.0, "CN"), (1.5, "AD")], "sub-b": [(0.0, None), (1.0, "AD")],
                "sub-c": [(0.0, None), (1.0, "CN")]})
    t = events_from_visits(v, transition="CN->MCI")
    assert row(t, "sub-a").event == 1  # AD is beyond MCI: converted
    covs = pd.DataFrame({"participant_id": ["sub-b", "sub-c"], "diagnosis": ["MCI", None],
                         "age": [70.0, 71.0], "sex": ["F", "M"], "apoe4": [1, 0]})
    t2 = events_from_visits(v, covs, "MCI->AD")
    b = row(t2, "sub-b")  # first visit without diagnosis: participants.tsv gives the baseline
    assert (b.event, b.duration_years, b.from_state, b.age, b.sex, b.apoe4) == (1, 1.0, "MCI", 70.0, "F", 1.0)
    assert dict(excluded_table(t2).itertuples(index=False))["sub-c"] == "no baseline diagnosis"


def test_parse_transition():
    assert parse_transition("MCI->AD") == (("MCI",), "AD")
    assert parse_transition("cn,mci -> ad") == (("CN", "MCI"), "AD")
    assert parse_transition(("CN", "MCI")) == (("CN",), "MCI")
    for bad in ("AD->MCI", "MCI", "MCI->XX"):
        with pytest.raises(ValueError):
            parse_transition(bad)


def write_sessions(root: Path, sub: str, rows: list[tuple[str, str, str]]) -> None:
    text = "session_id\tacq_time\tdiagnosis\n" + "".join(f"ses-{s}\t{d}\t{dx}\n" for s, d, dx in rows)
    (root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(text)


def test_derive_events_from_bids_sessions(tmp_path):
    root = make_bids(tmp_path / "bids", {"01": ["bl", "m12", "m24"], "02": ["bl", "m12", "m24"],
                                         "03": ["bl", "m12"], "04": ["bl", "m24"]})
    # participants.tsv of make_bids: 01 CN, 02 MCI, 03 AD, 04 CN (baseline); sessions decide
    write_sessions(root, "01", [("bl", "2020-01-01", "MCI"), ("m12", "2021-01-01", "MCI"), ("m24", "2022-01-01", "AD")])
    write_sessions(root, "02", [("bl", "2020-03-01", "MCI"), ("m12", "2021-03-01", "MCI"), ("m24", "2022-03-01", "n/a")])
    write_sessions(root, "03", [("bl", "2020-01-01", "AD"), ("m12", "2021-01-01", "AD")])
    write_sessions(root, "04", [("m24", "2022-01-01", "AD"), ("bl", "2020-01-01", "MCI")])  # unordered rows
    t = derive_events(root, "MCI->AD")
    assert sorted(t["participant_id"]) == ["sub-01", "sub-02", "sub-04"]
    s1 = row(t, "sub-01")
    assert s1.event == 1 and s1.duration_years == pytest.approx(731 / 365.25)
    assert s1.apoe4 == 0 and s1.sex == "M" and s1.age == 70  # covariates from participants.tsv
    s2 = row(t, "sub-02")
    assert s2.event == 0 and s2.duration_years == pytest.approx(365 / 365.25)
    assert row(t, "sub-04").duration_years == pytest.approx(731 / 365.25)
    assert "in target state" in dict(excluded_table(t).itertuples(index=False))["sub-03"]
    # the table conforms to its schema, also after a TSV round trip
    validate_events(t)
    path = tmp_path / "events.tsv"
    t.to_csv(path, sep="\t", index=False, na_rep="n/a")
    back = read_table(path, "conversion_events")
    assert list(back["event"]) == list(t["event"])


def test_read_events_fills_covariates_and_checks(tmp_path):
    p = tmp_path / "ev.tsv"
    p.write_text("participant_id\tduration_years\tevent\nsub-1\t2.5\t1\nsub-2\t3\t0\n")
    cov = pd.DataFrame({"participant_id": ["sub-1", "sub-2"], "age": [70.0, 75.0], "apoe4": [1, None]})
    t = read_events(p, cov)
    assert list(t["age"]) == [70.0, 75.0] and t["apoe4"].iloc[0] == 1.0 and math.isnan(t["apoe4"].iloc[1])
    assert set(EVENT_COLUMNS) <= set(t.columns)
    p.write_text("participant_id\tduration_years\tevent\nsub-1\t0\t1\n")
    with pytest.raises(InvalidTableError):  # duration must be > 0 (schema)
        read_events(p)
    p.write_text("participant_id\tduration_years\tevent\nsub-1\t1\t2\n")
    with pytest.raises(InvalidTableError):
        read_events(p)


def test_unknown_diagnosis_is_an_error():
    with pytest.raises(InputError):
        events_from_visits(visits({"sub-x": [(0.0, "MCI"), (1.0, "Dementia")]}))


def test_survival_analysis_from_bids_sessions(tmp_path):
    from neurocast.io.derivatives import DerivativesWriter
    from neurocast.progress.analysis import survival_analysis

    subs = {f"{i:02d}": ["bl", "m12", "m24"] for i in range(12)}
    root = make_bids(tmp_path / "bids", subs)
    for i, sub in enumerate(subs):
        last = "AD" if i % 2 == 0 else "MCI"
        mid = "AD" if i % 4 == 0 else "MCI"
        write_sessions(root, sub, [("bl", "2020-01-01", "MCI"), ("m12", "2021-01-01", mid), ("m24", "2022-01-01", last)])
    out = tmp_path / "out"
    DerivativesWriter(out, source_datasets=[str(root)])  # the BIDS folder is found from here
    rep = survival_analysis(out, features=["age"], forecast_features=None, kinds=("cox",), k=3)
    ev = read_table(out / "group" / "survival" / "survival_events.tsv", "conversion_events")
    assert len(ev) == 12 and ev["event"].sum() == 6
    assert set(ev.loc[ev["event"] == 1, "duration_years"].round(3)) == {round(366 / 365.25, 3), round(731 / 365.25, 3)}
    assert list(rep.concordance["feature_set"]) == ["baseline"]
    assert "sessions.tsv diagnoses" in (out / "group" / "survival" / "survival_section.html").read_text()
    with pytest.raises(InputError):
        survival_analysis(tmp_path / "elsewhere", forecast_features=None)  # no BIDS dataset known
