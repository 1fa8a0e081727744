"""Trust (issue 9): nothing unpickles, nothing runs a shell or evaluates strings, nothing reaches the
network, and no output escapes the output folder.

The network test (commands run with sockets blocked) is in ``test_hardening_offline.py``.
"""

from __future__ import annotations

import ast
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hardening_helpers import run_cli, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nc_testutils import make_bids
from neurocast.errors import EXIT_CODES, OutputError
from neurocast.io.derivatives import DerivativesWriter

SRC = Path(__file__).resolve().parents[2] / "src" / "neurocast"

UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
"""Modules whose loading functions unpickle (or run code from data)."""
NETWORK_MODULES = {"requests", "urllib.request", "http.client", "httpx", "aiohttp", "ftplib",
                   "smtplib", "urllib3", "torch.hub"}  # fmt: skip
"""Modules that exist to reach the network; nothing at run time may import them."""


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module or object name, from the module's imports."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """(line, what) for every unpickling, shell, eval or network use in Python ``source``."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for m in mods:
                if any(m == n or m.startswith(n + ".") for n in NETWORK_MODULES):
                    found.append((node.lineno, f"imports {m} (network)"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        head, _, last = name.rpartition(".")
        if head.split(".")[0] in UNPICKLERS and ("load" in last or last in ("Unpickler", "open")):
            found.append((node.lineno, f"{name}() unpickles"))
        elif last == "read_pickle":
            found.append((node.lineno, f"{name}() unpickles"))
        elif (
            name in ("torch.load", "torch.serialization.load")
            and _kw(node, "weights_only") is not True
        ):
            found.append((node.lineno, f"{name}() without weights_only=True unpickles"))
        elif name == "torch.jit.load":
            found.append((node.lineno, "torch.jit.load() runs code from the file"))
        elif name in ("numpy.load", "np.load") and _kw(node, "allow_pickle") not in (None, False):
            found.append((node.lineno, f"{name}(allow_pickle=...) may unpickle"))
        elif head.split(".")[0] == "yaml" and last in (
            "load",
            "load_all",
            "unsafe_load",
            "full_load",
        ):
            found.append((node.lineno, f"{name}() can build arbitrary objects (use safe_load)"))
        elif name in ("eval", "exec"):
            found.append((node.lineno, f"{name}() of a string"))
        elif name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                      "asyncio.create_subprocess_shell") or name.startswith("os.spawn"):  # fmt: skip
            found.append((node.lineno, f"{name}() runs a shell"))
        elif _kw(node, "shell") not in (None, False):
            found.append((node.lineno, f"{name}(shell=...) runs a shell"))
        elif last.startswith("fetch_") and "nilearn" in name:
            found.append((node.lineno, f"{name}() downloads"))
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(b'')",
        "from pickle import load as l\nl(f)",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import pandas as pd\npd.read_pickle('x')",
        "import joblib\njoblib.load('x')",
        "import subprocess\nsubprocess.run('ls ' + label, shell=True)",
        "import os\nos.system('rm ' + label)",
        "eval(text)",
        "import yaml\nyaml.load(text)",
        "import requests",
        "from urllib.request import urlopen",
        "from nilearn import datasets\ndatasets.fetch_atlas_aal()",
    ],
)
def test_the_scanner_catches_each_unsafe_pattern(snippet: str) -> None:
    assert unsafe_calls(snippet), snippet


def test_safe_patterns_are_not_flagged() -> None:
    ok = (
        "import torch\nimport numpy as np\nimport subprocess\n"
        "torch.load('x', weights_only=True)\nnp.load('x.npz', allow_pickle=False)\n"
        "subprocess.run(['ants', path], check=True)\nmodel.eval()\nre.compile('x')\n"
        "import json\njson.loads(s)\n"
    )
    assert unsafe_calls(ok) == []


def test_source_never_unpickles_runs_a_shell_or_reaches_the_network() -> None:
    """Every module of the package: no unpickling (torch.load, pickle, joblib, np.load with
    pickles...), no shell (shell=True, os.system, os.popen), no eval/exec, no network client."""
    offenders = [
        f"{py.relative_to(SRC.parent)}:{line}: {what}"
        for py in sorted(SRC.rglob("*.py"))
        for line, what in unsafe_calls(py.read_text(encoding="utf-8"))
    ]
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------------------------ confinement
def test_symlink_in_the_output_folder_cannot_lead_outside(
    tmp_path: Path, stand_in_registration: set[str]
) -> None:
    """A participant folder in the output that links elsewhere: that participant fails with a
    clear error, the other finishes, and nothing is written where the link points."""
    root = make_bids(tmp_path / "ds", {"a": ["bl"], "b": ["bl"]})
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "sub-a")
    res = run_cli("preprocess", root, out, "participant", "-q")
    assert res.exit_code == EXIT_CODES["participant_failed"], res.output
    failures = pd.read_csv(out / "logs" / "failures.tsv", sep="\t")
    assert list(failures["participant_id"]) == ["sub-a"]
    assert "escapes the output folder" in failures["error"][0]
    assert (out / "sub-b" / "ses-bl" / "anat" / "sub-b_ses-bl_desc-preproc_qc.json").is_file()
    assert list(elsewhere.iterdir()) == []


def test_logs_link_out_of_the_output_folder_is_refused(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds", {"a": ["bl"]})
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "logs")
    res = run_cli("preprocess", root, out, "participant", "-q")
    assert res.exit_code == EXIT_CODES["output"], res.output
    assert "logs folder is a link out of the output folder" in res.output
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("command", ["preprocess", "register"])
@pytest.mark.parametrize(
    "label",
    [
        "../../escape",
        "sub-../x",
        "a/../../b",
        "/etc",
        "..",
        "<img src=x>",
        "$(touch pwned)",
        "sub-a;rm",
    ],
)
def test_labels_cannot_name_paths(tmp_path: Path, command: str, label: str) -> None:
    """Labels are refused before anything is created: no output folder, no file anywhere."""
    root = make_bids(tmp_path / "ds", {"a": ["bl"]})
    before = snapshot(tmp_path)
    res = run_cli(command, root, tmp_path / "out", "participant", "--participant-label", label)
    assert res.exit_code == EXIT_CODES["usage"], res.output
    assert "invalid sub label" in res.output
    assert snapshot(tmp_path) == before


segment = st.sampled_from(
    ["..", ".", "sub-01", "anat", "a b", "ü", "~", "", "...", "%2e%2e", "<b>", "x.json"]
)
relpaths = st.one_of(
    st.lists(segment, min_size=1, max_size=6).map("/".join),
    st.lists(segment, min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
    st.text(max_size=12),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rel=relpaths, method=st.sampled_from(["json", "text", "tsv", "with"]))
def test_writer_never_writes_outside_its_folder(rel: str, method: str) -> None:
    """Any relative path: written inside the folder (temporaries included) or an OutputError."""
    import contextlib
    from unittest import mock

    import neurocast.io.atomic as atomic
    import neurocast.io.derivatives as derivatives

    real = atomic.atomic_path
    touched: list[Path] = []

    @contextlib.contextmanager
    def spy(path):
        with real(path) as tmp:
            touched.append(Path(tmp))
            yield tmp

    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        (base / "out").mkdir()
        writer = DerivativesWriter(base / "out")
        before = snapshot(base, exclude=writer.root)
        with (
            mock.patch.object(atomic, "atomic_path", spy),
            mock.patch.object(derivatives, "atomic_path", spy),
        ):
            try:
                if method == "json":
                    writer.write_json(rel, {"a": 1})
                elif method == "text":
                    writer.write_text(rel, "<p>x</p>")
                elif method == "tsv":
                    writer.write_tsv(rel, pd.DataFrame({"a": [1]}))
                else:
                    writer.write_with(rel, lambda tmp: Path(tmp).write_bytes(b"x"))
            except OutputError as exc:
                assert str(exc)
            except (IsADirectoryError, NotADirectoryError, FileExistsError):
                pass  # a path inside the folder that names a folder: refused by the OS, inside
        assert snapshot(base, exclude=writer.root) == before
        for tmp in touched:
            assert writer.root in tmp.resolve().parents, f"temporary file outside: {tmp}"
