"""The model's parts without images: subjects, visits, conversion, time warp, Poisson fields."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pytest
import torch

from neurocast.registration.deformation import coarse_shape, volume_change_map
from neurocast.simulate import SimulationConfig
from neurocast.simulate.conversion import (
    Conversion,
    assign_visit_states,
    draw_conversion,
    weibull_scale,
)
from neurocast.simulate.fields import calibrated_velocity, poisson_neumann
from neurocast.simulate.progression import draw_rates, time_warp
from neurocast.simulate.subjects import baseline_diagnosis, draw_subject

CFG = SimulationConfig()


def test_diagnoses_follow_the_proportions_for_any_cohort_size():
    props = {"CN": 0.5, "MCI": 0.3, "AD": 0.2}
    dx = [baseline_diagnosis(3, i, props) for i in range(200)]
    for d, p in props.items():
        assert abs(dx.count(d) / 200 - p) < 0.03
    first = [baseline_diagnosis(3, i, props) for i in range(10)]
    assert first[:10] == dx[:10]


def test_subject_does_not_depend_on_cohort_size():
    a = draw_subject(5, 2, 10, CFG)
    b = draw_subject(5, 2, 500, CFG)
    assert (a.age, a.sex, a.diagnosis, a.apoe4, a.mmse) == (b.age, b.sex, b.diagnosis, b.apoe4, b.mmse)
    assert [v.acq_time for v in a.visits] == [v.acq_time for v in b.visits]
    assert draw_subject(6, 2, 10, CFG).age != a.age or draw_subject(6, 2, 10, CFG).visits[0].acq_time != a.visits[0].acq_time


def test_visits_are_irregular_ordered_and_match_their_dates():
    for i in range(40):
        s = draw_subject(11, i, 40, CFG)
        assert CFG.n_visits[0] <= len(s.visits) <= CFG.n_visits[1]
        assert 55 <= s.age <= 90
        times = [v.time_years for v in s.visits]
        assert times[0] == 0 and all(b > a for a, b in itertools.pairwise(times))
        assert times[-1] <= CFG.max_followup_years + 0.05
        t0 = dt.datetime.fromisoformat(s.visits[0].acq_time)
        for v in s.visits:
            t = (dt.datetime.fromisoformat(v.acq_time) - t0).total_seconds() / (365.25 * 86400)
            assert t == pytest.approx(v.time_years, abs=1e-12)
        assert len({v.label for v in s.visits}) == len(s.visits)


def test_weibull_scale_gives_the_annual_conversion_probability():
    rng = np.random.default_rng(0)
    k, p = 1.3, 0.13
    lam = weibull_scale(p, k)
    t = lam * rng.exponential(1.0, 200_000) ** (1 / k)
    assert (t <= 1.0).mean() == pytest.approx(p, abs=0.005)


def test_faster_atrophy_means_earlier_conversion_weibull():
    cfg = SimulationConfig(diagnosis_proportions={"MCI": 1.0}, conversion_model="weibull")
    slow, fast = [], []
    for i in range(400):
        s = draw_subject(1, i, 400, cfg)
        for z, out in ((-1.0, slow), (1.0, fast)):
            out.append(draw_conversion(1, s, z, cfg).to_ad_years)
    # same exponential draws, higher hazard: every fast time is shorter
    assert all(f < sl for f, sl in zip(fast, slow, strict=True))
    ratio = np.median(slow) / np.median(fast)
    assert ratio == pytest.approx(math.exp(2 * cfg.hazard_log_ratio["rate_sd"] / cfg.weibull_shape), rel=1e-6)


def _mci_conversions(n: int, z: float | None = None, **changes) -> list:
    cfg = SimulationConfig(diagnosis_proportions={"MCI": 1.0}, **changes)
    out = []
    for i in range(n):
        s = draw_subject(3, i, n, cfg)
        out.append((s, draw_conversion(3, s, z if z is not None else draw_rates(3, s, cfg), cfg)))
    return out


def test_threshold_model_faster_atrophy_means_earlier_conversion():
    slow = [c.to_ad_years for _, c in _mci_conversions(200, -1.0)]
    fast = [c.to_ad_years for _, c in _mci_conversions(200, 1.0)]
    # same Brownian path, steeper drift: the threshold is never reached later
    assert all(f <= sl for f, sl in zip(fast, slow, strict=True))
    assert np.median(fast) < 0.7 * np.median(slow)


def test_threshold_model_conversion_rates_are_plausible():
    times = np.array([c.to_ad_years for _, c in _mci_conversions(1500)])
    # MCI -> AD about 10-15 % a year (Risacher 2009): 1 year and 3 years cumulative
    assert 0.05 < (times <= 1).mean() < 0.2
    assert 0.25 < (times <= 3).mean() < 0.5


def test_threshold_model_path_reaches_the_threshold_at_conversion():
    cfg = SimulationConfig()
    for s, c in _mci_conversions(50):
        assert c.cognition_at(0.0) == pytest.approx(s.cognition)
        if np.isfinite(c.to_ad_years):
            assert c.cognition_at(c.to_ad_years) == pytest.approx(cfg.cognition_threshold["MCI"], abs=0.05)
            assert c.cognition_at(c.to_ad_years - 0.05) > cfg.cognition_threshold["MCI"] - 0.05
        assert c.linear_predictor == pytest.approx(
            math.log(c.cognition_decline_per_year / (s.cognition - cfg.cognition_threshold["MCI"]))
        )


def test_threshold_model_baseline_mmse_measures_the_latent_score():
    pairs = [(s.mmse, s.cognition) for s, _ in _mci_conversions(400)]
    mmse, latent = np.array(pairs).T
    assert np.all((mmse >= 24) & (mmse <= 30) & (mmse == np.round(mmse)))
    assert np.corrcoef(mmse, latent)[0, 1] > 0.6
    assert 0.3 < np.std(mmse - latent) < 1.2  # visit noise 0.8 plus rounding, less clipping


def test_visit_mmse_follow_the_latent_path():
    cfg = SimulationConfig(diagnosis_proportions={"MCI": 1.0}, n_visits=(5, 5), mmse_visit_sd=0.0)
    s = draw_subject(4, 0, 1, cfg)
    c = draw_conversion(4, s, draw_rates(4, s, cfg), cfg)
    assign_visit_states(4, s, c, cfg)
    for v in s.visits[1:]:
        assert v.mmse == float(np.clip(round(c.cognition_at(v.time_years)), 0, 30))


def test_unknown_conversion_model_is_refused():
    with pytest.raises(ValueError, match="conversion_model"):
        SimulationConfig(conversion_model="cox")


def test_visit_diagnoses_follow_the_conversion_times():
    s = draw_subject(2, 0, 1, SimulationConfig(diagnosis_proportions={"CN": 1.0}, n_visits=(5, 5)))
    times = [v.time_years for v in s.visits]
    conv = Conversion("CN", to_mci_years=(times[1] + times[2]) / 2, to_ad_years=(times[3] + times[4]) / 2,
                      linear_predictor=0.0, censoring_years=times[-1])
    assign_visit_states(2, s, conv, CFG)
    assert [v.diagnosis for v in s.visits] == ["CN", "CN", "MCI", "MCI", "AD"]
    assert s.visits[0].mmse == s.mmse
    assert conv.event_observed


def test_time_warp_is_identity_without_conversion_and_accelerates_after():
    t = np.array([0.0, 1.0, 2.5])
    assert np.allclose(time_warp(t, [], 0.5), t)
    s = time_warp(np.linspace(0, 5, 51), [(2.0, 1.5)], 0.25)
    slope = np.diff(s) / 0.1
    assert slope[:10].mean() == pytest.approx(1.0, abs=0.02)
    assert slope[-10:].mean() == pytest.approx(1.5, abs=0.02)
    assert np.all(np.diff(s) > 0)


def test_rates_depend_on_diagnosis():
    cfg = SimulationConfig(subject_rate_sd=0.0, region_rate_sd=0.0, age_effect_per_decade={}, apoe4_rate_effect=0.0,
                           female_rate_effect=0.0)
    hip = {}
    for i in range(30):
        s = draw_subject(4, i, 30, cfg)
        hip[s.diagnosis] = draw_rates(4, s, cfg).percent_per_year["hippocampus"]
    assert hip["CN"] == pytest.approx(1.41) and hip["AD"] == pytest.approx(4.66)
    assert hip["CN"] < hip["MCI"] < hip["AD"]


def test_poisson_solution_has_the_wanted_laplacian():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((9, 10, 11))
    f -= f.mean()
    psi = poisson_neumann(f)
    p = np.pad(psi, 1, mode="edge")  # mirror (Neumann) boundaries of the DCT-II grid
    lap = sum(np.roll(p, 1, a) + np.roll(p, -1, a) for a in range(3))[1:-1, 1:-1, 1:-1] - 6 * psi
    assert np.allclose(lap, f, atol=1e-9)


def test_calibrated_velocity_realises_regional_volume_changes_on_a_coarse_field():
    shape = (40, 44, 36)
    idx = np.indices(shape).astype(float)

    def ball(c, r):
        return ((idx - np.array(c)[:, None, None, None]) ** 2).sum(0) < r * r

    brain = ball((20, 22, 18), 15)
    small = ball((14, 22, 18), 3.5)
    vent = ball((25, 22, 18), 4)
    groups = {"small": small, "vent": vent & ~small, "brain": brain & ~small & ~vent}
    targets = {"small": math.log(0.95), "vent": math.log(1.07), "brain": math.log(0.99)}
    fshape = coarse_shape(shape, 2)
    v, _ = calibrated_velocity(groups, targets, ~brain, fshape)
    jac = volume_change_map(v, shape)[0, 0].numpy()
    for name, mask in groups.items():
        realised = math.log(jac[mask].mean())
        assert realised == pytest.approx(targets[name], abs=0.006), name
    assert torch.isfinite(v).all()


def test_group_mean_rates_are_the_configured_ones():
    cfg = SimulationConfig()
    rates = {"CN": [], "MCI": [], "AD": []}
    for i in range(3000):
        s = draw_subject(8, i, 3000, cfg)
        rates[s.diagnosis].append(draw_rates(8, s, cfg).percent_per_year["hippocampus"])
    for dx, values in rates.items():
        assert np.mean(values) == pytest.approx(cfg.annual_rates["hippocampus"][dx], rel=0.05), dx
