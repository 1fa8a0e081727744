"""HTML reports: sections from what exists, escaping of hostile names, images present, browser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import make_output

from neurocast.report.html import build_reports, environment, referenced_files, render


@pytest.fixture
def full_output(tmp_path: Path) -> Path:
    return make_output(tmp_path)


XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


def _tags(text: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag of a page with its attributes, as a browser's tokenizer sees them."""
    from html.parser import HTMLParser

    tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, attrs))

    P().feed(text)
    return tags


def _assert_all_referenced_files_exist(page: Path) -> list[tuple[str, Path]]:
    refs = referenced_files(page)
    missing = [str(p) for _, p in refs if not p.is_file()]
    assert not missing, f"{page.name} references missing files: {missing}"
    return refs


def test_full_participant_page(full_output: Path) -> None:
    paths = build_reports(full_output)
    page = (full_output / "sub-01.html").read_text()
    for section in ('id="registration"', 'id="forecast"', 'id="qa"', 'id="provenance"'):
        assert section in page
    assert "0.9120" in page and "0.9570" in page  # NCC before / after
    assert "review-lesion" in page and "99.2" in page and "812.500" in page  # nested record
    assert "snr_total" in page and "calibration lesion_threshold" in page
    assert "artefact evidence: ghost_ratio (robust z)" in page  # why the artefact score is what it is
    assert "<td>noise_sd</td><td>0.022</td>" in page  # the noise level the features were read against
    assert "lesion evidence: peak" in page and "21.75" in page  # and the lesion score
    assert "42.0" in page and "IQM snr" in page  # the flat record
    assert "+5.0 y" in page and "Left-Hippocampus" in page
    assert "progress-demo-v1" in page and "abababababababab" in page  # model card id and hash
    assert "MCI" in page and "71.5" in page  # covariates from the source participants.tsv
    refs = _assert_all_referenced_files_exist(paths.participants["01"])
    imgs = {p.name for tag, p in refs if tag == "img"}
    assert {"sub-01_desc-visits_mosaic.png", "sub-01_desc-atrophy_mosaic.png",
            "sub-01_ses-m12_desc-forecast_strip.png", "sub-01_ses-m12_desc-forecast_trajectories.png",
            "sub-01_ses-m12_desc-anomaly_overlay.png"} <= imgs  # fmt: skip
    index = (full_output / "index.html").read_text()
    assert 'href="sub-01.html"' in index and "review-lesion" in index
    _assert_all_referenced_files_exist(paths.index)


def test_figures_are_not_redrawn_when_their_sources_did_not_change(full_output: Path) -> None:
    build_reports(full_output)
    strip = full_output / "sub-01" / "figures" / "sub-01_ses-m12_desc-forecast_strip.png"
    before = strip.stat().st_mtime_ns
    build_reports(full_output)
    assert strip.stat().st_mtime_ns == before


def test_sections_render_only_what_exists(tmp_path: Path) -> None:
    out = make_output(tmp_path, forecast=False, qa=False)
    build_reports(out)
    page = (out / "sub-01.html").read_text()
    assert 'id="registration"' in page
    assert 'id="forecast"' not in page and 'id="qa"' not in page
    out2 = make_output(tmp_path / "b", registration=False, qa=False)
    build_reports(out2)
    page = (out2 / "sub-01.html").read_text()
    assert 'id="forecast"' in page and 'id="registration"' not in page
    _assert_all_referenced_files_exist(out2 / "sub-01.html")
    # a participant known only from the failure log still gets a page
    (out / "logs").mkdir(exist_ok=True)
    pd.DataFrame([{"participant_id": "sub-09", "step": "preprocess", "error": "bad scan",
                   "log": "sub-09_preprocess.log"}]).to_csv(out / "logs" / "failures.tsv", sep="\t",
                                                            index=False)  # fmt: skip
    (out / "logs" / "sub-09_preprocess.log").write_text("traceback")
    build_reports(out)
    page = (out / "sub-09.html").read_text()
    assert "bad scan" in page and "No outputs" not in page
    _assert_all_referenced_files_exist(out / "sub-09.html")
    _assert_all_referenced_files_exist(out / "index.html")


def test_the_qa_overlay_of_the_anomaly_module_is_used_when_present(tmp_path: Path) -> None:
    out = make_output(tmp_path, forecast=False, registration=False, overlay_png=True)
    build_reports(out)
    imgs = [p.name for tag, p in referenced_files(out / "sub-01.html") if tag == "img"]
    assert "sub-01_ses-m12_desc-anomaly_mosaic.png" in imgs  # the QA step's own figure
    assert not list((out / "sub-01" / "figures").glob("*_desc-anomaly_overlay.png"))  # none drawn


@pytest.mark.parametrize("payload", XSS)
def test_hostile_labels_values_and_file_names_are_escaped(tmp_path: Path, payload: str) -> None:
    # a value read from the inputs (participants.tsv, the QA record) and a participant folder
    # whose name carries markup (only the second payload can be a file name: no '/')
    label = "x" + payload if "/" not in payload else "01"
    out = make_output(tmp_path, label=label, covariates={"diagnosis": payload}, qa_flag=payload)
    paths = build_reports(out)
    for page in (paths.index, *paths.participants.values()):
        text = page.read_text()
        assert payload not in text
        tags = _tags(text)
        assert not [t for t, _ in tags if t == "script"]
        assert not [(t, a) for t, attrs in tags for a, _ in attrs if a.startswith("on")]
        assert not [
            v for t, attrs in tags for a, v in attrs if t == "img" and a == "src" and v == "x"
        ]
        _assert_all_referenced_files_exist(page)
    text = next(iter(paths.participants.values())).read_text()
    assert "&lt;" in text  # shown, as text
    if "/" not in payload:  # the hostile folder name: linked percent-encoded, and reachable
        assert (
            "sub-x%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.html"
            in paths.index.read_text()
        )
    # the templates escape whatever they are given
    html = render(
        "participant.html",
        root_prefix="",
        participant_id=payload,
        covariates=[],
        failures=[{"step": payload, "error": payload, "log": payload}],
        registration=None,
        report_error=payload,
        forecasts=[],
        qa=[],
        provenance=[],
    )
    assert payload not in html and "<script>" not in html


def test_an_unreadable_output_leaves_a_page_that_says_so(tmp_path: Path) -> None:
    out = make_output(tmp_path, qa=False)
    make_output(tmp_path, label="02", qa=False)
    bad = next((out / "sub-01").glob("**/*_desc-forecast_T1w.nii.gz"))
    bad.write_bytes(b"not a NIfTI")  # as if someone overwrote it by hand
    paths = build_reports(out)
    assert "This page is incomplete" in paths.participants["01"].read_text()
    assert 'id="forecast"' in paths.participants["02"].read_text()  # the others are whole
    _assert_all_referenced_files_exist(paths.index)


def test_autoescape_is_always_on() -> None:
    env = environment()
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    assert env.get_template("index.html").environment.autoescape  # type: ignore[truthy-function]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_pages_render_in_headless_chromium(full_output: Path, tmp_path: Path) -> None:
    paths = build_reports(full_output)
    pages = [paths.index, paths.participants["01"]]
    for page in pages:  # checked with or without a browser
        _assert_all_referenced_files_exist(page)
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not found on PATH (chromium / chromium-browser); "
                    "install Debian's 'chromium' package to run this browser test")  # fmt: skip
    for page in pages:
        shot = tmp_path / f"{page.stem}.png"
        run = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
             f"--screenshot={shot}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert shot.is_file() and shot.stat().st_size > 10_000, run.stderr[-2000:]
        console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
        assert not console, console  # the page logged nothing (no script errors)


def test_qa_scores_show_when_the_residual_was_scaled_down():
    from neurocast.report.html import _qa_fields

    rec = {"row": {"flag": "review-artefact", "percentile": 100.0},
           "result": {"lesion_score": 621.2, "artefact_score": 2.66, "level_scale": 1.44}}  # fmt: skip
    fields = _qa_fields(rec)
    assert fields["flag"] == "review-artefact"
    assert ("level_scale", 1.44) in fields["scores"]
    assert [k for k, _ in fields["scores"]][:2] == ["lesion_score", "artefact_score"]


def test_qa_facts_name_every_score_over_its_threshold():
    from neurocast.report.html import _qa_fields

    rec = {"row": {"flag": "review-lesion", "over_threshold": "lesion;artefact"},
           "result": {"lesion_score": 4.8, "artefact_score": 2.2, "over_threshold": ["lesion", "artefact"]}}  # fmt: skip
    assert ("over_threshold", "lesion, artefact") in _qa_fields(rec)["other"]
    rec["result"]["over_threshold"] = []  # a pass: nothing over
    assert ("over_threshold", "none") in _qa_fields(rec)["other"]
