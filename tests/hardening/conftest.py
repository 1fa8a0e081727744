"""Fixtures of the hardening tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hardening_helpers import fake_preprocess_result


def pytest_collection_modifyitems(config, items) -> None:
    """Every CliRunner call sets the thread count again in this one process and ITK keeps its
    first: the warning that says so is expected here."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(
                pytest.mark.filterwarnings("ignore:ITK/ANTs already ran:RuntimeWarning")
            )


@pytest.fixture
def stand_in_registration(monkeypatch) -> set[str]:
    """Replace ``preprocess_t1w`` by a stand-in that runs the real loader and skips ANTs.

    The stand-in reads every scan with the real loader (so every input check runs) and returns a
    passing result on a 4^3 grid. Scans whose path is added to the returned set get the real
    preprocessing.
    """
    import neurocast.registration.preprocess as pp

    real = pp.preprocess_t1w
    use_real: set[str] = set()

    def stand_in(image, **kwargs):
        if os.fspath(image) in use_real:
            return real(image, **kwargs)
        pp.as_ras_image(image)
        return fake_preprocess_result()

    monkeypatch.setattr(pp, "preprocess_t1w", stand_in)
    return use_real
