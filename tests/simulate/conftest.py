"""Fixtures of the simulate tests: small cohorts on a coarse grid, simulated once per session.

The cohorts use a 4 mm working grid, 3 visits and 3 mm raw images so that the whole folder runs
in about a minute on two cores. ``small_cohort`` has tumours and artefacts switched on;
``small_cohort_again`` is the same seed (determinism) and ``other_seed_cohort`` another seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neurocast.simulate import SimulationConfig, simulate_cohort

SEED = 13
N_SUBJECTS = 3


def small_config(**changes) -> SimulationConfig:
    """The coarse, fast configuration of the tests."""
    base = dict(
        grid_spacing_mm=4.0,
        field_spacing_mm=8.0,
        n_visits=(3, 3),
        native_voxel_sizes=((3.0, 3.0, 3.0), (2.5, 2.5, 3.5)),
        tumour_fraction=0.5,
        artefact_fraction=0.4,
        skull_stripped_fraction=0.3,
        # faster decline, so the per-visit diagnoses change within 3 visits
        cognition_decline_per_year={"CN": 2.0, "MCI": 2.5, "AD": 2.5},
        diagnosis_proportions={"CN": 0.34, "MCI": 0.33, "AD": 0.33},
    )
    base.update(changes)
    return SimulationConfig(**base)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cohort") / "bids"
    return simulate_cohort(root, N_SUBJECTS, seed=SEED, config=small_config(), progress=False)


@pytest.fixture(scope="session")
def small_cohort_again(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cohort_again") / "bids"
    return simulate_cohort(root, N_SUBJECTS, seed=SEED, config=small_config(), progress=False)


@pytest.fixture(scope="session")
def other_seed_cohort(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cohort_other") / "bids"
    return simulate_cohort(root, 1, seed=SEED + 1, config=small_config(), progress=False)


@pytest.fixture(scope="session")
def single_subject_cohort(tmp_path_factory: pytest.TempPathFactory):
    """Subject 1 of the same seed in a cohort of one (subjects do not depend on the cohort size)."""
    root = tmp_path_factory.mktemp("cohort_single") / "bids"
    return simulate_cohort(root, 1, seed=SEED, config=small_config(), progress=False)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
