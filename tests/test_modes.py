"""The mode registry: one entry per mode, read by engine, replay, planner; certify is the statistics'."""
from __future__ import annotations

import pytest

from robust_api import smoothing
from robust_api.errors import ConfigError, LogError
from robust_api.modes import MODES, CertifyParams, ModeOptions, Samples, get_mode
from robust_api.planner import calls_per_image
from robust_api.results import ABSTAIN
from robust_api.sequential import SequentialPlan, certify_sequential


def test_registry_lists_each_mode_once_and_rejects_unknown_names():
    assert tuple(MODES) == ("fixed", "clean", "sequential")
    assert all(get_mode(name).name == name for name in MODES)
    with pytest.raises(ConfigError, match="choose one of fixed, clean, sequential"):
        CertifyParams(sigma=0.25, mode="magic")


def test_fixed_mode_is_cohens_certify_on_the_same_counts():
    samples = Samples("cat", ["cat"] * 18 + ["dog"] * 2, ["cat"] * 95 + ["dog"] * 5)
    verdict = get_mode("fixed").certify(ModeOptions(0.001), 0.25, samples)
    assert (verdict.label, verdict.radius) == smoothing.certify({"cat": 18, "dog": 2}, {"cat": 95, "dog": 5}, 0.25, 0.001)
    assert verdict.p_lower == smoothing.lower_confidence_bound(95, 100, 0.001)
    assert verdict.counts_selection == {"cat": 18, "dog": 2} and verdict.n_estimation_used == 100


def test_fixed_mode_candidate_comes_from_selection_not_from_the_clean_label():
    samples = Samples("dog", ["cat"] * 10, ["cat"] * 100)
    assert get_mode("fixed").certify(ModeOptions(0.001), 0.25, samples).label == "cat"
    assert get_mode("clean").certify(ModeOptions(0.001), 0.25, samples).label == ABSTAIN


def test_modes_abstain_and_say_why_when_labels_are_missing():
    fixed = get_mode("fixed").certify(ModeOptions(0.01), 0.25, Samples("cat", [], ["cat"] * 20))
    clean = get_mode("clean").certify(ModeOptions(0.01), 0.25, Samples(None, [], ["cat"] * 20))
    assert (fixed.label, fixed.radius, fixed.missing) == (ABSTAIN, 0.0, "0 selection / 20 estimation samples")
    assert (clean.label, clean.missing) == (ABSTAIN, "no clean label or no estimation samples")


def test_sequential_mode_replays_the_logged_plan_and_reports_incomplete_runs():
    params = CertifyParams(sigma=0.25, n0=20, n=100, alpha=0.001, mode="sequential", target_radius=0.3)
    mode = get_mode("sequential")
    plan_dict = mode.log_extra(params)["plan"]
    plan = SequentialPlan.from_dict(plan_dict)
    labels = ["cat"] * 120
    verdict = mode.certify(mode.options(params), 0.25, Samples("cat", [], labels))
    expected = certify_sequential(plan, "cat", labels)
    assert (verdict.label, verdict.radius, verdict.n_estimation_used) == (*expected.as_tuple(), expected.n_used)
    assert verdict.complete and verdict.n_estimation_used == plan.looks[plan.alphas.index(max(plan.alphas[:-1]))]
    short = mode.certify(mode.options(params), 0.25, Samples("cat", [], labels[:3]))
    assert not short.complete and short.label == ABSTAIN
    # replay takes the plan's alpha, whatever alpha it was asked for: the log fixed it
    assert mode.options_from_log(0.05, plan_dict).alpha == 0.001
    with pytest.raises(ConfigError, match="no sequential plan"):
        mode.certify(ModeOptions(0.001, None), 0.25, Samples("cat", [], labels))
    with pytest.raises(LogError, match="unreadable sequential plan"):
        mode.certify(ModeOptions(0.001, {"mode": "sequential", "version": 1}), 0.25, Samples("cat", [], labels))


def test_looks_and_selection_sizes_are_what_each_mode_asks_the_engine_for():
    fixed, clean = CertifyParams(sigma=0.25, n0=7, n=30), CertifyParams(sigma=0.25, n0=7, n=30, mode="clean")
    seq = CertifyParams(sigma=0.25, n0=20, n=100, mode="sequential", max_queries=120, target_radius=0.3)
    assert (get_mode("fixed").selection_size(fixed), get_mode("fixed").looks(fixed)) == (7, (30,))
    assert (get_mode("clean").selection_size(clean), get_mode("clean").looks(clean)) == (0, (30,))
    looks = get_mode("sequential").looks(seq)
    assert looks[-1] == 120 and list(looks) == sorted(set(looks)) and get_mode("sequential").selection_size(seq) == 0


def test_planner_bills_come_from_the_registry():
    assert calls_per_image(100, "fixed", 20) == get_mode("fixed").calls_per_image(100, 20) == 121
    assert calls_per_image(100, "clean") == calls_per_image(100, "sequential") == 101
    with pytest.raises(ValueError, match="unknown mode"):
        calls_per_image(10, "magic")


def test_invalid_parameters_fail_at_construction():
    with pytest.raises(ConfigError, match="n0 >= 1 in fixed mode"):
        CertifyParams(sigma=0.25, n0=0)
    CertifyParams(sigma=0.25, n0=0, mode="clean")  # clean needs no selection samples
    with pytest.raises(ConfigError, match="sequential plan"):
        CertifyParams(sigma=0.25, mode="sequential", max_queries=0)
