"""SimulationConfig: defaults, validation, round trip, and that every parameter is documented."""

from __future__ import annotations

import dataclasses

import pytest

import neurocast.simulate as simulate
from neurocast.simulate import DEFAULT_ANNUAL_RATES, SimulationConfig


def test_defaults_validate_and_round_trip():
    cfg = SimulationConfig()
    again = SimulationConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_default_hippocampal_rates_are_the_published_ones():
    # Barnes et al. 2009 meta-analysis: 1.41 %/yr controls, 4.66 %/yr AD
    assert DEFAULT_ANNUAL_RATES["hippocampus"]["CN"] == pytest.approx(1.41)
    assert DEFAULT_ANNUAL_RATES["hippocampus"]["AD"] == pytest.approx(4.66)
    assert DEFAULT_ANNUAL_RATES["hippocampus"]["MCI"] == pytest.approx(2.55)  # Jack et al. 2000, stable MCI


@pytest.mark.parametrize(
    "changes",
    [
        {"diagnosis_proportions": {"CN": 1.0, "XX": 1.0}},
        {"age_range": (90.0, 55.0)},
        {"n_visits": (0, 3)},
        {"grid_spacing_mm": 20.0},
        {"field_spacing_mm": 0.1},
        {"tumour_fraction": 1.5},
        {"artefact_fraction": -0.1},
        {"annual_rates": {"nonsense": {"CN": 1.0}}},
        {"native_voxel_sizes": ((1.0, 1.0),)},
        {"orientations": ("RRA",)},
        {"n_jobs": 0},
        {"partial_volume_samples": 0},
        {"partial_volume_samples": 1.5},
        {"noise_fraction_range": (0.05, 0.01)},
        {"intensity_scale_range": (0.0, 100.0)},
        {"tumour_radius_mm": (12.0, 6.0)},
        {"tumour_oedema_extent": (0.8, 1.2)},
        {"gamma_visit_sd": -0.1},
        {"rotation_sd_degrees": -1.0},
        {"max_followup_years": 0.0},
        {"bias_field_max_coefficient": -0.3},
    ],
)
def test_invalid_values_are_refused(changes):
    with pytest.raises(ValueError):
        SimulationConfig(**changes)


def test_unknown_field_in_dict_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        SimulationConfig.from_dict({"not_a_field": 1})


def test_every_parameter_is_documented_in_the_module_docstring():
    doc = simulate.__doc__
    missing = [f.name for f in dataclasses.fields(SimulationConfig) if f.name not in doc]
    assert not missing, f"parameters missing from neurocast.simulate's docstring: {missing}"


def test_refuses_a_folder_that_is_not_a_simulation(tmp_path):
    from neurocast.errors import OutputError
    from neurocast.simulate import simulate_cohort

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        simulate_cohort(tmp_path, 1, seed=0, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_largest_simulated_head_passes_the_preprocessing_mask_check():
    # A skull-stripped head's estimated mask measured up to 7 % above its true intracranial
    # volume (40 simulated heads); the simulator's largest head must still pass the QC.
    import numpy as np

    from neurocast.registration.preprocess import MASK_VOLUME_RANGE_ML
    from neurocast.registration.template import load_template

    mask = load_template("brain_mask", 2)
    voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000.0
    template_ml = float((np.asarray(mask.dataobj) > 0).sum() * voxel_ml)
    lo_ratio, hi_ratio = SimulationConfig().head_volume_ratio_range
    lo, hi = MASK_VOLUME_RANGE_ML
    assert 1800 < template_ml < 1950, template_ml
    assert hi_ratio * template_ml * 1.07 < hi
    assert lo < lo_ratio * template_ml * 0.93


@pytest.mark.parametrize(
    ("config", "options", "message"),
    [
        ('{"noise_fraction_range": [0.05, 0.01]}', [], "noise_fraction_range"),
        ('{"bogus": 1}', [], "unknown SimulationConfig field"),
        ('{"noise_fraction_range": [0.01, 0.05]', [], "not valid JSON"),
        ("[1, 2]", [], "JSON object"),
        ('{"noise_fraction_range": "abc"}', [], "must be a pair (min, max) of numbers"),
        ("{}", ["--visits", "5", "2"], "n_visits"),
    ],
)
def test_cli_refuses_a_bad_config_with_a_message_and_writes_nothing(
    tmp_path, config, options, message
):
    from click.testing import CliRunner

    from neurocast.cli.main import cli

    cfg = tmp_path / "config.json"
    cfg.write_text(config)
    out = tmp_path / "out"
    args = ["simulate", str(out), "--n-subjects", "1", "--config", str(cfg), "-q", *options]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()
