"""Study runs: failure isolation, resume, the lock, step registry, command line, reports."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from neurocast.errors import EmptySelectionError, OutputError
from neurocast.io.batch import output_lock, run_participants
from neurocast.pipeline import STEPS, StepUnavailableError, check_steps, run_study
from neurocast.pipeline import steps as steps_mod
from neurocast.report.html import referenced_files

REG = ("preprocess", "register")


def _statuses(summary) -> dict[str, dict[str, str]]:
    return {step: {r.participant: r.status for r in s.results} for step, s in summary.steps.items()}


def test_corrupt_scan_is_isolated_then_resumed(
    study: Path, tmp_path: Path, stub_registration
) -> None:
    calls = stub_registration
    out = tmp_path / "out"
    s = run_study(study, out, "participant", steps=REG, n_workers=1, progress=False)
    assert _statuses(s) == {
        "preprocess": {"01": "done", "02": "failed", "03": "done"},
        "register": {"01": "done", "02": "failed", "03": "done"},
    }
    assert s.exit_code == 3 and s.failed_participants == ["02"]
    assert (s.n_done, s.n_skipped, s.n_failed) == (4, 0, 2)
    failures = pd.read_csv(out / "logs" / "failures.tsv", sep="\t")
    assert sorted(zip(failures["participant_id"], failures["step"], strict=True)) == [
        ("sub-02", "preprocess"), ("sub-02", "register"),
    ]  # fmt: skip
    assert "sub-02_ses-m12_T1w.nii.gz" in failures["error"][0]
    assert (out / "logs" / "sub-02_preprocess.log").is_file()
    # the reports: an index linking every participant, a page per participant, every image there
    index = (out / "index.html").read_text()
    for label in ("01", "02", "03"):
        assert f'href="sub-{label}.html"' in index and (out / f"sub-{label}.html").is_file()
    page = (out / "sub-02.html").read_text()
    assert "Failed steps" in page and "logs/sub-02_preprocess.log" in page
    assert 'id="forecast"' not in page and 'id="qa"' not in page  # no such step ran
    assert 'id="registration"' in (out / "sub-01.html").read_text()
    for html in (out / "index.html", out / "sub-01.html", out / "sub-02.html"):
        refs = referenced_files(html)
        assert refs and all(p.exists() for _, p in refs), [p for _, p in refs if not p.exists()]
    assert any(tag == "img" for tag, _ in referenced_files(out / "sub-01.html"))

    # rerun: complete participants are skipped, the failed one is retried (and fails again)
    calls.clear()
    s = run_study(study, out, "participant", steps=REG, n_workers=1, progress=False)
    assert _statuses(s)["register"] == {"01": "skipped", "02": "failed", "03": "skipped"}
    assert {c[1] for c in calls} <= {"sub-02_ses-bl_T1w.nii.gz", "sub-02_ses-m12_T1w.nii.gz", "02"}
    assert s.exit_code == 3

    # the scan is repaired: the participant finishes and its failure rows are cleared
    from nc_testutils import write_small_t1w

    write_small_t1w(study / "sub-02" / "ses-m12" / "anat" / "sub-02_ses-m12_T1w.nii.gz", seed=5)
    s = run_study(study, out, "participant", steps=REG, n_workers=1, progress=False)
    assert _statuses(s)["register"] == {"01": "skipped", "02": "done", "03": "skipped"}
    assert s.exit_code == 0
    assert pd.read_csv(out / "logs" / "failures.tsv", sep="\t").empty
    assert "Failed steps" not in (out / "sub-02.html").read_text()


def test_a_second_run_on_the_same_output_is_refused(
    study: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    started, release = threading.Event(), threading.Event()

    def slow_step(ctx):
        def one(label: str) -> str:
            started.set()
            assert release.wait(30)
            return label

        return run_participants(["01"], one, ctx.output_dir, step="slow", progress=False)

    monkeypatch.setitem(STEPS, "preprocess", slow_step)
    result: dict[str, object] = {}
    first = threading.Thread(
        target=lambda: result.update(
            s=run_study(
                study, out, steps=["preprocess"], n_workers=1, progress=False, reports=False
            )
        )
    )
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(OutputError, match="in use by another neurocast run"):
            run_study(study, out, steps=["preprocess"], n_workers=1, progress=False)
    finally:
        release.set()
        first.join(30)
    assert result["s"].steps["preprocess"].n_done == 1  # type: ignore[attr-defined]
    # once the first run is over, the folder is free again
    assert run_study(study, out, steps=["preprocess"], n_workers=1, progress=False).exit_code == 0


def test_steps_registry_order_and_plugging(study: Path, tmp_path: Path, monkeypatch) -> None:
    assert check_steps("qa,preprocess") == ["preprocess", "qa"]
    assert check_steps(["register"]) == ["register"]
    for bad in ("preprocess,nope", "", "register,register"):
        with pytest.raises(ValueError):
            check_steps(bad)
    seen: list[str] = []

    def fake(name):
        def step(ctx):
            seen.append(name)
            return run_participants(["01"], lambda label: label, ctx.output_dir, step=name,
                                    progress=False)  # fmt: skip

        return step

    monkeypatch.setitem(STEPS, "register", fake("register"))
    monkeypatch.setitem(STEPS, "preprocess", fake("preprocess"))
    s = run_study(study, tmp_path / "o", steps="register,preprocess", n_workers=1, progress=False)
    assert seen == ["preprocess", "register"] and list(s.steps) == ["preprocess", "register"]


def test_missing_step_module_and_empty_selection(study: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(steps_mod.STEP_MODULES, "forecast", "neurocast.progress._no_such_module")
    with pytest.raises(StepUnavailableError, match="forecast"):
        run_study(study, tmp_path / "o", steps=("preprocess", "forecast"), n_workers=1)
    assert not (tmp_path / "o" / "sub-01").exists()  # refused before any work
    with pytest.raises(EmptySelectionError):
        run_study(study, tmp_path / "o", steps=REG, participant_label=["99"], n_workers=1)


def test_group_level_without_forecasts_writes_the_index(study: Path, tmp_path: Path) -> None:
    s = run_study(study, tmp_path / "o", "group", n_workers=1, progress=False)
    assert s.exit_code == 0 and not s.steps
    assert any("no forecasts" in n for n in s.notes)
    assert "no forecasts" in (tmp_path / "o" / "index.html").read_text()


def test_command_line(study: Path, tmp_path: Path, stub_registration, monkeypatch) -> None:
    from neurocast.cli.main import cli

    out = tmp_path / "out"
    runner = CliRunner()
    args = ["run", str(study), str(out), "participant", "--steps", "preprocess,register",
            "--n-workers", "1", "-q"]  # fmt: skip
    r = runner.invoke(cli, args)
    assert r.exit_code == 3, r.output
    assert "preprocess: 2 done, 0 skipped, 1 failed" in r.output
    assert "participant: 3 participant(s), 4 done, 0 skipped, 2 failed" in r.output
    assert "sub-02" in r.output and f"report: {out.resolve() / 'index.html'}" in r.output

    # usage errors exit 2, an empty selection 67, a locked folder 73
    assert runner.invoke(cli, [*args[:5], "preprocess,warp"]).exit_code == 2
    assert runner.invoke(cli, [*args, "--participant-label", "../x"]).exit_code == 2
    assert runner.invoke(cli, [*args, "--memory-limit", "lots"]).exit_code == 2
    assert runner.invoke(cli, [*args, "--participant-label", "99"]).exit_code == 67
    monkeypatch.setitem(steps_mod.STEP_MODULES, "qa", "neurocast.anomaly._no_such_module")
    r = runner.invoke(cli, [*args[:5], "preprocess,qa", "-q"])
    assert r.exit_code == 2 and "not available" in r.output
    with output_lock(out):
        r = runner.invoke(cli, args)
    assert r.exit_code == 73 and "in use by another neurocast run" in r.output


def test_group_level_with_forecasts_writes_the_group_pages(study: Path, tmp_path: Path) -> None:
    from neurocast.progress.cohort import NETCDF_ENGINE, synthetic_forecast

    out = tmp_path / "o"
    for k, label in enumerate(("01", "02", "03")):
        ds = synthetic_forecast(f"sub-{label}", diagnosis=["CN", "MCI", "AD"][k], seed=k,
                                n_samples=4)  # fmt: skip
        folder = out / f"sub-{label}" / "ses-bl" / "anat"
        folder.mkdir(parents=True)
        ds.to_netcdf(folder / f"sub-{label}_ses-bl_desc-forecast_volumes.nc", engine=NETCDF_ENGINE)
    s = run_study(study, out, "group", n_workers=1, progress=False)
    assert s.exit_code == 0
    assert set(s.group) >= {"cohort"} and (out / "group" / "cohort" / "cohort.html").is_file()
    assert any("survival" in n for n in s.notes)  # too few conversions in 3 subjects: a note
    index = (out / "index.html").read_text()
    assert 'href="group/cohort/cohort.html"' in index
    page = out / "group" / "cohort" / "cohort.html"
    refs = referenced_files(page)
    assert any(tag == "img" for tag, _ in refs) and all(p.exists() for _, p in refs)
    assert 'href="../../index.html"' in page.read_text()


def test_default_steps_leave_out_a_model_step_without_a_model(study: Path, tmp_path: Path, monkeypatch) -> None:
    import neurocast.pipeline.steps as steps_mod
    from neurocast.pipeline.study import DEFAULT_STEPS

    seen: list[str] = []

    def fake(name):
        def step(ctx):
            seen.append(name)
            return run_participants(["01"], lambda label: label, ctx.output_dir, step=name, progress=False)

        return step

    for name in DEFAULT_STEPS:
        monkeypatch.setitem(STEPS, name, fake(name))
    monkeypatch.setattr(steps_mod, "shipped_model", lambda step: None if step == "qa" else tmp_path / "m")
    s = run_study(study, tmp_path / "o", steps=DEFAULT_STEPS, n_workers=1, progress=False)
    assert seen == ["preprocess", "register", "forecast"]
    assert any("'qa' left out" in n and "--anomaly-model" in n for n in s.notes)
    # asked for explicitly, the step runs (and would fail loudly without its model)
    seen.clear()
    run_study(study, tmp_path / "o2", steps="qa", n_workers=1, progress=False)
    assert seen == ["qa"]


def test_a_group_analysis_that_cannot_run_is_one_note_not_a_warning_too(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """The note is printed at the end of the run; a console warning as well said it twice."""
    import logging
    from types import SimpleNamespace

    from neurocast.errors import InputError
    from neurocast.pipeline.study import _group_analyses
    from neurocast.progress import analysis

    forecast = tmp_path / "sub-01" / "ses-01" / "sub-01_ses-01_desc-forecast_volumes.nc"
    forecast.parent.mkdir(parents=True)
    forecast.touch()

    def no_conversions(*args, **kwargs):
        raise InputError(None, "no conversions in participants.tsv")

    monkeypatch.setattr(analysis, "cohort_report", lambda *a, **k: SimpleNamespace(notes=["small"]))
    monkeypatch.setattr(analysis, "survival_analysis", no_conversions)
    notes: list[str] = []
    with caplog.at_level(logging.INFO, logger="neurocast"):
        _group_analyses(tmp_path, tmp_path, 0, notes)
    assert notes == [
        "cohort: small",
        "survival analysis not written: no conversions in participants.tsv",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("survival analysis not written" in r.getMessage() for r in caplog.records)
