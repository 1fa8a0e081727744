"""Shared fixtures: where the real scans live, and small synthetic volumes.

The real scans in the project's shared folder are found through :func:`shared_data_dir` only
(environment variable ``NEUROCAST_SHARED_DATA``, default ``../shared/data`` beside the project).
Tests that need them skip, with the reason, where the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The shared real-data folder (may not exist)."""
    return Path(os.environ.get("NEUROCAST_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips the test where it is absent."""
    root = shared_data_dir()
    if not (root / "real").is_dir():
        pytest.skip(f"shared real data not found at {root} (set NEUROCAST_SHARED_DATA)")
    return root / "real"
