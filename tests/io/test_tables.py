"""Tables are validated against data_specs and every problem is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurocast.errors import InvalidTableError
from neurocast.io.tables import load_schema, read_table


def _write(tmp_path: Path, text: str, name: str = "participants.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_participants_are_typed(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "participant_id\tage\tsex\tdiagnosis\tapoe4\tmmse\tsite\nsub-01\t71.5\tF\tMCI\t1\t27\tA\nsub-02\tn/a\tn/a\tn/a\tn/a\tn/a\tB\n",
    )
    table = read_table(path, "participants")
    assert table.loc[0, "age"] == 71.5
    assert table.loc[0, "apoe4"] == 1
    assert table.loc[1, "age"] is None or table["age"].isna()[1]
    assert list(table["site"]) == ["A", "B"]  # extra columns are kept


def test_only_participant_id_is_required(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path, "participant_id\nsub-01\n"), "participants")
    assert list(table.columns) == ["participant_id"]


def test_every_problem_is_reported_with_column_row_value(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "participant_id\tage\tdiagnosis\tapoe4\tmmse\n"
        "sub-01\tabc\tCN\t0\t29\n"
        "sub-02\t-4\tDementia\t1\t28\n"
        "sub-01\t70\tAD\t3\t45\n"
        "01\t70\tAD\t1\t20\n",
    )
    with pytest.raises(InvalidTableError) as excinfo:
        read_table(path, "participants")
    problems = {(p["column"], p["row"]) for p in excinfo.value.problems}
    assert ("age", 1) in problems  # "abc"
    assert ("age", 2) in problems  # negative
    assert ("diagnosis", 2) in problems  # unknown diagnosis
    assert ("apoe4", 3) in problems  # 3 alleles
    assert ("mmse", 3) in problems  # 45 > 30
    assert ("participant_id", 3) in problems  # duplicate
    assert ("participant_id", 4) in problems  # missing sub- prefix
    msg = str(excinfo.value)
    assert str(path) in msg and "'abc'" in msg and "Dementia" in msg


def test_missing_required_column(tmp_path: Path) -> None:
    with pytest.raises(InvalidTableError, match="participant_id.*required column is missing"):
        read_table(_write(tmp_path, "subject\tage\nsub-01\t70\n"), "participants")


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidTableError, match="does not exist"):
        read_table(tmp_path / "nope.tsv", "participants")
    with pytest.raises(InvalidTableError, match="empty"):
        read_table(_write(tmp_path, ""), "participants")


def test_sessions_schema_dates_and_duplicates(tmp_path: Path) -> None:
    ok = _write(
        tmp_path,
        "session_id\tacq_time\tdiagnosis\nses-bl\t2020-01-02\tMCI\nses-m12\t2021-01-05T10:00:00\tAD\n",
        "s.tsv",
    )
    assert len(read_table(ok, "sessions")) == 2
    bad = _write(tmp_path, "session_id\tacq_time\nses-bl\tyesterday\nses-bl\t2020-01-01\n", "b.tsv")
    with pytest.raises(InvalidTableError) as excinfo:
        read_table(bad, "sessions")
    cols = [p["column"] for p in excinfo.value.problems]
    assert cols.count("acq_time") == 1 and cols.count("session_id") == 1


def test_schemas_are_valid_json_schema() -> None:
    for name in ("participants", "sessions"):
        schema = load_schema(name)
        assert schema["required"]
