"""The bad-input corpus (issue 9): every kind of broken or unusual input, through the command line.

One table, one parametrised test, one case id per kind (``pytest tests/hardening -k corpus`` shows
the count). Every case starts from a tiny BIDS dataset with two participants, ``sub-good`` and
``sub-bad``, spoils it in one way, and runs ``neurocast validate --deep`` and ``neurocast
preprocess`` (and ``neurocast register`` where it says so), ``neurocast qa`` and ``neurocast run
--steps preprocess,qa`` (with a tiny anomaly model) on it. Each case asserts:

* the exit code documented in :data:`neurocast.errors.EXIT_CODES` / ``neurocast --help``;
* a clear message that names the file (or label, or folder) and the problem;
* for a broken scan, that ``sub-good`` still finishes and ``sub-bad`` is listed in
  ``logs/failures.tsv``; for a broken table or option, that nothing is processed;
* no partial output: no temporaries anywhere, every output complete per its sidecar's hash, and
  no file written outside the output folder.

The registration itself is replaced by a stand-in that still reads the scan with the real loader
(so every input check runs) but skips the minutes of ANTs work; the "not a brain" cases run the
real registration on ``sub-bad``, and ``test_hardening_offline.py`` runs the real pipeline on a
simulated brain mixed with broken scans. Checkpoint cases go through
:func:`neurocast.backbone.load_backbone` and ``neurocast forecast --model`` (refused with exit code
68 before any participant starts), and the same spoiled checkpoints as anomaly models through
``neurocast qa --model``.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hardening_helpers import (
    assert_no_partial_output,
    crash_text,
    run_cli,
    snapshot,
)

from nc_testutils import (
    BAD_CHECKPOINT_MESSAGES,
    UNPICKLED_MARKER,
    make_bad_checkpoints,
    make_bids,
    write_small_t1w,
)
from neurocast.errors import EXIT_CODES, CheckpointError

OK = EXIT_CODES["ok"]
USAGE = EXIT_CODES["usage"]
FAILED = EXIT_CODES["participant_failed"]
INPUT = EXIT_CODES["invalid_input"]
DATASET = EXIT_CODES["invalid_dataset"]
EMPTY = EXIT_CODES["empty_selection"]
CKPT = EXIT_CODES["checkpoint"]
OUTPUT = EXIT_CODES["output"]
SHAPE = (12, 14, 10)
NOT_A_BRAIN = "failed its checks|brain mask is empty"


# ------------------------------------------------------------------------------------ scenes
@dataclass
class Scene:
    """A tiny dataset (``sub-good`` and ``sub-bad``, one session each) and where outputs go.

    A case's ``spoil`` changes it; ``offending`` is what the error message must name (default:
    the scan of ``sub-bad``); ``args`` are extra options for every command.
    """

    tmp: Path
    root: Path
    out: Path
    offending: Path | str | None = None
    args: list[str] = field(default_factory=list)

    @property
    def bad_scan(self) -> Path:
        return self.root / "sub-bad" / "ses-bl" / "anat" / "sub-bad_ses-bl_T1w.nii.gz"

    def table(self, text: str, name: str = "participants.tsv") -> None:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        self.offending = path


def _blob(shape=SHAPE, seed: int = 1) -> np.ndarray:
    """A bright ellipsoid with noise: a usable (if tiny) scan."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    return (np.sum(grid**2, axis=0) < 0.6) * 100.0 + rng.normal(0, 2, shape) + 10


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Store ``affine`` raw in the sform (as broken pipelines do: nibabel refuses singular
    qforms); the qform is left unset."""
    img = nib.Nifti1Image(data, None)
    img.header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine, code=1)
    img.header.set_qform(None, code=0)
    nib.save(img, str(path))


def scan(
    data: Callable[[], np.ndarray] | None = None, affine: np.ndarray | None = None, dtype=None
) -> Callable[[Scene], None]:
    """A spoiler that replaces sub-bad's scan by ``data()`` (default: the blob) with ``affine``."""

    def spoil(s: Scene) -> None:
        arr = _blob() if data is None else data()
        _save(s.bad_scan, arr if dtype is None else arr.astype(dtype), affine)

    return spoil


def raw_bytes(make: Callable[[Scene], bytes]) -> Callable[[Scene], None]:
    def spoil(s: Scene) -> None:
        s.bad_scan.write_bytes(make(s))

    return spoil


def _truncated_gz(s: Scene) -> bytes:
    _save(s.bad_scan, np.random.default_rng(0).random((30, 30, 30)).astype(np.float32))
    data = s.bad_scan.read_bytes()
    return data[: len(data) // 2]


def _truncated_nii(s: Scene) -> None:
    s.bad_scan.unlink()
    path = s.bad_scan.with_name("sub-bad_ses-bl_T1w.nii")
    _save(path, _blob().astype(np.float32))
    path.write_bytes(path.read_bytes()[:1000])
    s.offending = path


def _header_only(shape: tuple[int, ...], dtype=np.uint8) -> Callable[[Scene], bytes]:
    """A header that promises ``shape`` voxels, and no data: nothing may be allocated."""

    def make(s: Scene) -> bytes:
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(shape)
        hdr.set_data_dtype(dtype)
        hdr.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
        hdr["vox_offset"] = 352
        return gzip.compress(hdr.binaryblock + b"\x00" * 4)

    return make


def _zero_pixdim(s: Scene) -> None:
    """pixdim (2, 0, 2) and no sform or qform: nibabel would quietly make the 0 a 1 mm."""
    img = nib.Nifti1Image(_blob().astype(np.float32), None)  # no affine: no sform, no qform
    img.header.set_zooms((2.0, 2.0, 2.0))
    plain = s.bad_scan.with_name("plain.nii")
    nib.save(img, str(plain))
    raw = bytearray(plain.read_bytes())
    plain.unlink()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)), check=False)
    hdr["pixdim"][2] = 0.0
    raw[:348] = hdr.binaryblock
    s.bad_scan.write_bytes(gzip.compress(bytes(raw)))


def _nifti2(s: Scene) -> None:
    nib.save(nib.Nifti2Image(_blob().astype(np.float32), np.diag([2.0, 2, 2, 1])), str(s.bad_scan))


def _rgb(s: Scene) -> None:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = _blob().clip(0, 255).astype(np.uint8)
    nib.save(nib.Nifti1Image(rgb, np.diag([2.0, 2, 2, 1])), str(s.bad_scan))


def _oblique() -> np.ndarray:
    a = np.radians(30)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([2.0, 2.0, 2.0])
    return aff


def _singular() -> np.ndarray:
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 1] = aff[:3, 0]  # two voxel axes along the same direction
    return aff


def _noise() -> np.ndarray:
    """Uniform noise in a head-sized box (4 mm voxels: the registration's cost is the template's)."""
    return np.random.default_rng(3).random((40, 48, 40))[::2, ::2, ::2].astype(np.float32) * 100


def _cube() -> np.ndarray:
    data = np.zeros((20, 24, 20), np.float32)
    data[5:15, 6:18, 5:15] = 100.0
    return data + np.random.default_rng(4).normal(0, 1, data.shape).astype(np.float32)


FOUR_MM = np.diag([4.0, 4.0, 4.0, 1.0])


def _as_dir(s: Scene) -> None:
    s.bad_scan.unlink()
    s.bad_scan.mkdir()


def _broken_symlink(s: Scene) -> None:
    s.bad_scan.unlink()
    os.symlink("nowhere.nii.gz", s.bad_scan)


def _no_participants_tsv(s: Scene) -> None:
    (s.root / "participants.tsv").unlink()
    s.offending = s.root / "participants.tsv"


def _session_without_t1w(s: Scene) -> None:
    (s.root / "sub-bad" / "ses-m12" / "anat").mkdir(parents=True)
    (s.root / "sub-bad" / "ses-m12" / "anat" / "sub-bad_ses-m12_T2w.nii.gz").write_bytes(b"")
    s.offending = s.root / "sub-bad" / "ses-m12"


def _spaces_and_unicode(s: Scene) -> None:
    new_root = s.tmp / "my study ü é 研究"
    s.root.rename(new_root)
    s.root = new_root
    s.out = s.tmp / "dérivés out"
    s.offending = None


def _symlink_loops(s: Scene) -> None:
    os.symlink("sub-x", s.root / "sub-x")  # a link to itself: ELOOP
    os.symlink(".", s.root / "sub-loop")  # the dataset inside itself
    os.symlink("..", s.root / "sub-bad" / "ses-loop")
    anat = s.root / "sub-bad" / "ses-bl" / "anat"
    os.symlink("../anat", anat / "anat")
    os.symlink("sub-bad_ses-bl_run-2_T1w.nii.gz", anat / "sub-bad_ses-bl_run-2_T1w.nii.gz")
    s.offending = s.root / "sub-x"


def _html_folder(s: Scene) -> None:
    (s.root / "sub-<script>alert(1)<").mkdir()
    s.offending = "sub-<script>alert(1)<"


def _not_bids(s: Scene) -> None:
    for sub in ("sub-good", "sub-bad"):
        (s.root / sub).rename(s.root / sub.replace("sub-", "subject_"))
    s.offending = s.root


def _labels(*args: str) -> Callable[[Scene], None]:
    def spoil(s: Scene) -> None:
        s.args = list(args)
        s.offending = args[-1]

    return spoil


def _output_is_a_file(s: Scene) -> None:
    (s.tmp / "a_file").write_text("x")
    s.out = s.tmp / "a_file" / "out"
    s.offending = s.out


def _unwritable_output(s: Scene) -> None:
    s.out.mkdir()
    s.out.chmod(0o500)
    s.offending = s.out


def _table(text: str, name: str = "participants.tsv") -> Callable[[Scene], None]:
    return lambda s: s.table(text, name)


def _sessions_table(text: str) -> Callable[[Scene], None]:
    def spoil(s: Scene) -> None:
        write_small_t1w(s.root / "sub-bad" / "ses-m12" / "anat" / "sub-bad_ses-m12_T1w.nii.gz")
        s.table(text, "sub-bad/sub-bad_sessions.tsv")

    return spoil


def _latin1(s: Scene) -> None:
    path = s.root / "participants.tsv"
    path.write_bytes(
        "participant_id\tsex\tsite\nsub-bad\tM\tZürich\nsub-good\tF\tx\n".encode("latin-1")
    )
    s.offending = path


# ------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    """One kind of bad input and what neurocast must do with it.

    Attributes:
        id: the kind (the test id).
        spoil: changes the standard scene.
        validate: exit code of ``neurocast validate --deep`` (None: not run).
        preprocess: exit code of ``neurocast preprocess`` (None: not run). ``3`` means sub-bad
            failed and sub-good finished; 0 that every participant finished; any other code that
            nothing was processed.
        message: regex every failing command must print (preprocess: in logs/failures.tsv).
        warning: regex ``validate`` must print as a warning.
        register: exit code of ``neurocast register --participant-label bad`` (None: not run).
        qa: exit code of ``neurocast qa`` and of ``neurocast run --steps preprocess,qa`` (same
            meaning as ``preprocess``; default: the same as ``preprocess``; None: not run).
        real: run the real registration on sub-bad (the stand-in on sub-good).
        checkpoint: a kind of :func:`make_bad_checkpoints` (loaded through the API instead).
        root_skip: skip when running as root, with this reason.
        absent: regex that must not appear in ``validate``'s output.
    """

    id: str
    spoil: Callable[[Scene], None] | None = None
    validate: int | None = OK
    preprocess: int | None = OK
    message: str = ""
    warning: str | None = None
    register: int | None = None
    real: bool = False
    checkpoint: str | None = None
    root_skip: str | None = None
    absent: str | None = None
    qa: int | None = -1

    def __post_init__(self) -> None:
        if self.qa == -1:  # screening refuses and accepts what preprocessing does
            object.__setattr__(self, "qa", None if self.real else self.preprocess)


def _bad_scan(id: str, spoil, message: str, **kw) -> Case:
    """A scan that must be refused: validate 65, preprocess 3 (sub-good finishes)."""
    return Case(id, spoil, INPUT, FAILED, message, **kw)


def _ok_scan(id: str, spoil) -> Case:
    """An unusual scan that is fine: both participants processed."""
    return Case(id, spoil, OK, OK)


def _bad_table(id: str, spoil, message: str) -> Case:
    """A table that breaks its schema: the whole dataset is refused before any work (65)."""
    return Case(id, spoil, INPUT, INPUT, message)


def _usage(id: str, *args: str, message: str = "invalid (sub|ses) label") -> Case:
    return Case(id, _labels(*args), USAGE, USAGE, message, register=USAGE)


CASES = [
    # --- files that are not usable 3-D scans
    _bad_scan("truncated_gz", raw_bytes(_truncated_gz), "truncated|corrupt", register=FAILED),
    _bad_scan("truncated_nii", _truncated_nii, "cannot read image data"),
    _bad_scan("not_nifti_text", raw_bytes(lambda s: b"hello, not an image"), "not a readable NIfTI"),
    _bad_scan("not_nifti_png", raw_bytes(lambda s: b"\x89PNG\r\n\x1a\n" + bytes(600)), "not a readable NIfTI"),
    _bad_scan("empty_file", raw_bytes(lambda s: b""), r"empty \(0 bytes\)"),
    _bad_scan("two_d", scan(lambda: _blob((12, 14))), "2-D"),
    _bad_scan("single_slice", scan(lambda: _blob((12, 14, 1))), "2-D"),
    _bad_scan("four_d", scan(lambda: _blob((12, 14, 10, 3))), "4-D with 3 volumes"),
    _bad_scan("nan_voxels", scan(lambda: np.where(_blob() > 50, np.nan, _blob())), "NaN or Inf voxel"),
    _bad_scan("inf_voxels", scan(lambda: np.where(_blob() > 50, np.inf, _blob())), "NaN or Inf voxel"),
    _bad_scan("all_zero", scan(lambda: np.zeros(SHAPE)), "constant"),
    _bad_scan("enormous_dims", raw_bytes(_header_only((4000, 4000, 4000))), "too large"),
    _bad_scan("header_only", raw_bytes(_header_only((12, 14, 10))), "cannot read image data"),
    _bad_scan("zero_voxel_pixdim", _zero_pixdim, "voxel size .* zero or not finite"),
    _bad_scan("zero_voxel_sform", scan(affine=np.diag([2.0, 0.0, 2.0, 1.0])), "singular"),
    _bad_scan("singular_affine", scan(affine=_singular()), "singular"),
    _bad_scan("nan_affine", scan(affine=np.diag([2.0, np.nan, 2.0, 1.0])), "affine contains NaN"),
    _bad_scan("implausible_voxel", scan(affine=np.diag([2.0, 2.0, 60.0, 1.0])), "implausible voxel size"),
    _bad_scan("complex_dtype", scan(dtype=np.complex64), "complex-valued"),
    _bad_scan("rgb_dtype", _rgb, "RGB"),
    # --- unusual but valid scans: processed
    _ok_scan("left_handed_affine", scan(affine=np.diag([-2.0, 2.0, 2.0, 1.0]))),
    _ok_scan("oblique_affine", scan(affine=_oblique())),
    _ok_scan("big_endian", scan(dtype=">i2")),
    _ok_scan("int8", scan(lambda: _blob() - 60, dtype=np.int8)),
    _ok_scan("uint16", scan(dtype=np.uint16)),
    _ok_scan("float64", scan(dtype=np.float64)),
    _ok_scan("nifti2", _nifti2),
    _ok_scan("thick_slices", scan(lambda: _blob((24, 28, 4)), np.diag([1.0, 1.0, 6.0, 1.0]))),
    # --- scans that are not brains: valid files, refused by the registration's quality checks
    Case("noise_not_brain", scan(_noise, FOUR_MM), OK, FAILED, NOT_A_BRAIN, real=True),
    Case("cube_not_brain", scan(_cube, FOUR_MM), OK, FAILED, NOT_A_BRAIN, real=True),
    # --- the dataset's layout
    Case("scan_is_a_folder", _as_dir, OK, OK, warning="not a readable file; ignored"),
    Case("broken_symlink_scan", _broken_symlink, OK, OK, warning="not a readable file; ignored"),
    Case("missing_participants_tsv", _no_participants_tsv, OK, OK, warning="missing; covariates"),
    Case("session_without_t1w", _session_without_t1w, OK, OK, warning="session has no T1w"),
    Case("spaces_and_non_ascii_paths", _spaces_and_unicode, OK, OK),
    Case("symlink_loops", _symlink_loops, OK, OK, warning="a loop"),
    Case("html_in_folder_name", _html_folder, OK, OK, warning="not a valid BIDS participant"),
    Case("not_a_bids_dataset", _not_bids, DATASET, DATASET, "no sub-<label> folders"),
    # --- tables
    _bad_table("age_not_a_number", _table("participant_id\tage\nsub-bad\tabc\nsub-good\t70\n"), r"'age', row 1, value 'abc'"),
    _bad_table("negative_age", _table("participant_id\tage\nsub-bad\t-3\nsub-good\t70\n"), r"'age', row 1.*minimum is 0"),
    _bad_table("unknown_diagnosis", _table("participant_id\tdiagnosis\nsub-bad\tFTD\nsub-good\tCN\n"), r"'diagnosis', row 1, value 'FTD': must be one of"),
    _bad_table("missing_id_column", _table("subject\tage\nsub-bad\t70\n"), r"'participant_id': required column is missing"),
    _bad_table("duplicate_participant", _table("participant_id\tage\nsub-bad\t70\nsub-bad\t71\n"), "duplicate of row 1"),
    _bad_table("duplicate_column", _table("participant_id\tage\tage\nsub-bad\t70\t71\n"), "'age': column appears twice"),
    _bad_table("ragged_row", _table("participant_id\tage\nsub-bad\t70\t3\t4\n"), "row 1: 4 cells but the header has 2"),
    _bad_table("not_utf8", _latin1, "not UTF-8"),
    _bad_table("html_in_participant_id", _table("participant_id\tage\nsub-<b>bad</b>\t70\n"), r"'sub-<b>bad</b>': does not match"),
    _bad_table("duplicate_sessions", _sessions_table("session_id\tage\nses-bl\t70\nses-bl\t71\nses-m12\t72\n"), "'session_id', row 2, value 'ses-bl': duplicate of row 1"),
    Case("session_age_missing", _sessions_table("session_id\tage\nses-bl\t70\nses-m12\tn/a\n"),
         OK, OK, warning="visit times unknown", absent="nan"),
    _bad_table("impossible_visit_date", _sessions_table("session_id\tacq_time\nses-bl\t2020-02-30\nses-m12\t2021-03-01\n"), "acq_time.*bad date"),
    # --- labels and options
    _usage("participant_label_traversal", "--participant-label", "../good"),
    _usage("participant_label_html", "--participant-label", "<script>alert(1)</script>"),
    _usage("session_label_traversal", "--session-label", "../../etc"),
    Case("unknown_participant", _labels("--participant-label", "nobody"), EMPTY, EMPTY, "sub-nobody"),
    # --- outputs
    Case("output_under_a_file", _output_is_a_file, None, OUTPUT, "cannot (write|create) the output folder", register=OUTPUT),
    Case("unwritable_output", _unwritable_output, None, OUTPUT, "not writable|Permission denied", register=OUTPUT,
         root_skip="root can write into a read-only folder (output_under_a_file covers the error path)"),
    # --- checkpoints (through neurocast.backbone.load_backbone and 'neurocast forecast --model')
    *[Case(f"checkpoint_{k}", None, None, None, BAD_CHECKPOINT_MESSAGES[k], checkpoint=k) for k in BAD_CHECKPOINT_MESSAGES],
]  # fmt: skip


# ------------------------------------------------------------------------------------ the test
def _check_message(case: Case, scene: Scene, text: str) -> None:
    assert re.search(case.message, text), f"expected /{case.message}/ in:\n{text}"
    if scene.offending is not None:
        assert os.fspath(scene.offending) in text, f"the message does not name {scene.offending}"


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    """A calibrated tiny anomaly model on the stand-in registration's 4^3 grid."""
    from hardening_helpers import fake_preprocess_result

    from neurocast.anomaly import AnomalyDetector, Scan

    grid = fake_preprocess_result().grid
    rng = np.random.default_rng(0)
    scans = [
        Scan.from_arrays(1 + rng.normal(0, 0.01, grid.shape).astype(np.float32),
                         np.ones(grid.shape, bool), grid=grid)
        for _ in range(4)
    ]  # fmt: skip
    det = AnomalyDetector(channels=(8, 16), n_steps=2, batch_size=4, noise_levels=(0.2,),
                          min_component_mm3=8, erosion_mm=0.0, median_size=1).fit(scans[:2]).calibrate(scans[2:])  # fmt: skip
    return det.save(tmp_path_factory.mktemp("tiny-anomaly") / "model")


def _beside(out: Path, command: str) -> Path:
    """The output folder of another command: beside the case's (so an unwritable one stays so)."""
    return out.with_name(f"{out.name}-{command}")


def _run_qa(case: Case, scene: Scene, model: Path) -> None:
    """``neurocast qa`` and ``neurocast run --steps preprocess,qa``: what preprocess does, and the
    screening of the participants that can be read."""
    for name, args in (
        ("qa", ["qa", scene.root, _beside(scene.out, "qa"), "participant", "--model", model]),
        ("run", ["run", scene.root, _beside(scene.out, "run"), "participant", "--steps",
                 "preprocess,qa", "--anomaly-model", model, "--n-workers", "1"]),
    ):  # fmt: skip
        out = Path(args[2])
        res = run_cli(*args, "-q", *scene.args)
        assert res.exit_code == case.qa, f"{name}: {crash_text(res)}"
        if case.qa in (OK, FAILED):
            qa_json = list((out / "sub-good").rglob("*_desc-qa.json"))
            assert qa_json, f"{name}: the good participant was not screened"
            table = pd.read_csv(
                out / "logs" / "failures.tsv", sep="\t", dtype=str, keep_default_na=False
            )
            if case.qa == FAILED:  # run lists sub-bad once per step (preprocess, qa)
                assert set(table["participant_id"]) == {"sub-bad"}, table
                for error in table["error"]:
                    _check_message(case, scene, error)
                assert not list((out / "sub-bad").rglob("*.nii*")), f"{name}: partial output"
            else:
                assert table.empty, table
        else:
            _check_message(case, scene, res.output)
            assert not list(out.glob("sub-*")), (
                f"{name}: work started although the input is refused"
            )
        assert_no_partial_output(out, scene.root)


def _run_checkpoint_case(case: Case, tmp_path: Path) -> None:
    from neurocast.backbone import load_backbone, verify_checkpoint

    bad = make_bad_checkpoints(tmp_path)[case.checkpoint]
    with pytest.raises(CheckpointError) as excinfo:
        load_backbone(bad)
    assert re.search(case.message, str(excinfo.value)), str(excinfo.value)
    assert str(bad) in str(excinfo.value)
    assert excinfo.value.exit_code == CKPT
    if case.checkpoint != "mismatched_config":  # its files are intact; only loading can tell
        with pytest.raises(CheckpointError):
            verify_checkpoint(bad)
    # and through the command that takes a model: refused before any participant starts
    bids = make_bids(tmp_path / "ds", {"good": ["bl"]})
    out = tmp_path / "out"
    res = run_cli("forecast", bids, out, "participant", "--model", bad, "-q")
    assert res.exit_code == CKPT, crash_text(res)
    assert re.search(case.message, res.output.replace("\n", " ")), res.output
    assert not list(out.glob("sub-*")), "a participant started with a refused model"
    assert not (tmp_path / UNPICKLED_MARKER).exists(), "something unpickled the payload"


def _run_anomaly_checkpoint_case(case: Case, tmp_path: Path, model: Path) -> None:
    """The same damage done to an anomaly model: ``neurocast qa --model`` refuses it (68)."""
    bad = make_bad_checkpoints(tmp_path / "anomaly", good=model)[case.checkpoint]
    bids = make_bids(tmp_path / "ds-qa", {"good": ["bl"]})
    out = tmp_path / "out-qa"
    res = run_cli("qa", bids, out, "participant", "--model", bad, "-q")
    assert res.exit_code == CKPT, crash_text(res)
    assert str(bad) in res.output.replace("\n", ""), res.output
    assert not list(out.glob("sub-*")), "a participant started with a refused model"
    assert not (tmp_path / "anomaly" / UNPICKLED_MARKER).exists(), "something unpickled the payload"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.real else []) for c in CASES]
)
def test_bad_input_corpus(
    case: Case, tmp_path: Path, stand_in_registration: set[str], tiny_detector: Path
) -> None:
    if case.root_skip and os.geteuid() == 0:
        pytest.skip(case.root_skip)
    if case.checkpoint:
        _run_checkpoint_case(case, tmp_path)
        _run_anomaly_checkpoint_case(case, tmp_path, tiny_detector)
        return
    scene = Scene(
        tmp_path, make_bids(tmp_path / "ds", {"bad": ["bl"], "good": ["bl"]}), tmp_path / "out"
    )
    scene.offending = scene.bad_scan
    if case.spoil is not None:
        case.spoil(scene)
    if case.real:
        stand_in_registration.add(os.fspath(scene.bad_scan))
    outputs = (scene.out, _beside(scene.out, "qa"), _beside(scene.out, "run"))
    before = snapshot(tmp_path, exclude=outputs)

    if case.validate is not None:
        res = run_cli("validate", scene.root, "--deep", *scene.args)
        assert res.exit_code == case.validate, crash_text(res)
        if case.validate != OK:
            _check_message(case, scene, res.output)
        if case.warning:
            assert re.search(case.warning, res.output), res.output
            assert os.fspath(scene.offending) in res.output
        if case.absent:
            assert not re.search(case.absent, res.output), res.output

    if case.preprocess is not None:
        res = run_cli("preprocess", scene.root, scene.out, "participant", "-q", *scene.args)
        assert res.exit_code == case.preprocess, crash_text(res)
        failures = scene.out / "logs" / "failures.tsv"
        if case.preprocess in (OK, FAILED):
            table = pd.read_csv(failures, sep="\t", dtype=str, keep_default_na=False)
            qc_good = (
                scene.out / "sub-good" / "ses-bl" / "anat" / "sub-good_ses-bl_desc-preproc_qc.json"
            )
            assert qc_good.is_file(), "the good participant did not finish"
            if case.preprocess == FAILED:
                assert list(table["participant_id"]) == ["sub-bad"], table
                _check_message(case, scene, table["error"][0])
                left = list((scene.out / "sub-bad").rglob("*.nii*"))
                assert not left, f"outputs of a failed participant: {left}"
            else:
                assert table.empty, table
        else:
            _check_message(case, scene, res.output)
            assert not list(scene.out.glob("sub-*")), "work started although the input is refused"

    if case.register is not None:
        args = ["--participant-label", "bad"] if not scene.args else scene.args
        res = run_cli("register", scene.root, scene.out, "participant", "-q", *args)
        assert res.exit_code == case.register, crash_text(res)
        if case.register == FAILED:
            table = pd.read_csv(scene.out / "logs" / "failures.tsv", sep="\t", dtype=str)
            row = table[table["step"] == "register"]
            assert list(row["participant_id"]) == ["sub-bad"]
            _check_message(case, scene, row["error"].iloc[0])
        else:
            _check_message(case, scene, res.output)

    if case.qa is not None:
        _run_qa(case, scene, tiny_detector)

    assert_no_partial_output(scene.out, scene.root)
    after = snapshot(tmp_path, exclude=outputs)
    assert set(after) == set(before), (
        f"written outside the output folder: {set(after) ^ set(before)}"
    )


def test_corpus_covers_the_issue_list() -> None:
    """The kinds issue 9 names are all in the table (at least 25 kinds)."""
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES) >= 25
    for needed in (
        "truncated_gz", "not_nifti_text", "two_d", "four_d", "nan_voxels", "all_zero",
        "enormous_dims", "zero_voxel_pixdim", "singular_affine", "left_handed_affine",
        "big_endian", "int8", "uint16", "float64", "complex_dtype", "noise_not_brain",
        "cube_not_brain", "thick_slices", "missing_participants_tsv", "age_not_a_number",
        "negative_age", "unknown_diagnosis", "missing_id_column", "duplicate_sessions",
        "session_without_t1w", "spaces_and_non_ascii_paths", "symlink_loops",
        "participant_label_traversal", "unwritable_output", "checkpoint_truncated",
        "checkpoint_mismatched_config", "checkpoint_pickle", "participant_label_html",
    ):  # fmt: skip
        assert needed in ids, needed


def test_troubleshooting_covers_every_exit_code() -> None:
    """README's Troubleshooting table has a row for every exit code the command line uses."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Troubleshooting", 1)[1]
    rows = set(re.findall(r"^\| (\d+) \|", section, flags=re.M))
    assert {str(c) for c in EXIT_CODES.values() if c} <= rows, sorted(rows)
