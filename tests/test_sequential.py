"""Sequential certification: the plan's schedule, decisions, replay, serialisation and exact error rates."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from robust_api.results import ABSTAIN
from robust_api.sequential import SequentialPlan, certify_sequential, operating_characteristics
from robust_api.smoothing import lower_confidence_bound

SIGMA, ALPHA = 0.25, 0.001


@pytest.fixture(scope="module")
def plan() -> SequentialPlan:
    return SequentialPlan(120, ALPHA, SIGMA, target_radius=0.3)


def test_alpha_is_spent_at_a_fixed_schedule_that_sums_to_alpha(plan):
    assert plan.looks[-1] == 120
    spent = {n: a for n, a in zip(plan.looks, plan.alphas) if a > 0}
    # First certification look: the smallest n where unanimous votes certify 0.3 at alpha/2.
    q = norm.cdf(0.3 / SIGMA)
    assert min(spent) == math.ceil(math.log(ALPHA / 2) / math.log(q)) == 63
    assert sum(plan.alphas) == pytest.approx(ALPHA, rel=1e-12)
    assert spent[120] == pytest.approx(ALPHA / 2)


def test_without_a_target_all_alpha_goes_to_the_final_look():
    plan = SequentialPlan(100, 0.01, SIGMA)
    assert [a for a in plan.alphas if a > 0] == [0.01]
    assert plan.alphas[-1] == 0.01
    # No early certificate even with unanimous votes; the final look is Cohen's fixed-N test.
    for n in plan.looks[:-1]:
        assert plan.decide(n, n, "cat").action == "continue"
    final = plan.decide(100, 100, "cat")
    assert final.action == "certify"
    assert final.radius == pytest.approx(SIGMA * norm.ppf(lower_confidence_bound(100, 100, 0.01)))


def test_unanimous_votes_certify_the_target_at_the_first_certification_look(plan):
    d = plan.decide(63, 63, "cat")
    assert d.action == "certify" and d.label == "cat" and d.radius >= 0.3
    assert d.p_lower == pytest.approx(lower_confidence_bound(63, 63, ALPHA / 2))
    assert plan.decide(63, 62, "cat").action == "continue"  # one miss: not yet 0.3


def test_hopeless_images_stop_early_to_abstain(plan):
    d = plan.decide(5, 0, "cat")
    assert d.action == "abstain" and d.label == ABSTAIN and d.radius == 0.0 and d.reason == "futility"
    assert plan.decide(15, 4, "cat").action == "abstain"
    assert plan.decide(5, 5, "cat").action == "continue"


def test_final_look_certifies_whatever_radius_is_reached(plan):
    d = plan.decide(120, 100, "cat")
    assert d.action == "certify"
    assert d.radius == pytest.approx(SIGMA * norm.ppf(lower_confidence_bound(100, 120, ALPHA / 2)))
    assert 0 < d.radius < 0.3
    assert plan.decide(120, 60, "cat").action == "abstain"


def test_min_radius_abstains_once_it_is_out_of_reach():
    plan = SequentialPlan(120, ALPHA, SIGMA, target_radius=0.3, min_radius=0.2)
    n_final, certify_from, _ = plan.boundaries[-1]
    r = SIGMA * norm.ppf(lower_confidence_bound(certify_from, n_final, plan.alphas[-1]))
    r_below = SIGMA * norm.ppf(lower_confidence_bound(certify_from - 1, n_final, plan.alphas[-1]))
    assert r >= 0.2 > r_below
    assert plan.decide(120, certify_from - 1, "cat").action == "abstain"
    # An image at 80 % agreement could certify ~0.13 but never 0.2: abandoned long before the end.
    assert plan.decide(45, 36, "cat").action == "abstain"
    assert SequentialPlan(120, ALPHA, SIGMA, 0.3).decide(45, 36, "cat").action == "continue"


def test_boundaries_agree_with_decide(plan):
    for n, certify_from, abstain_to in plan.boundaries:
        for k in range(n + 1):
            action = plan.decide(n, k).action
            expected = "certify" if k >= certify_from else "abstain" if k <= abstain_to else "continue"
            assert action == expected


def test_replay_reproduces_the_online_stop_and_ignores_later_labels(plan):
    labels = ["cat"] * 63 + ["dog"] * 57
    out = certify_sequential(plan, "cat", labels)
    assert out.complete and out.n_used == 63 and out.counts == {"cat": 63}
    assert out.as_tuple() == ("cat", plan.decide(63, 63, "cat").radius)

    hopeless = ["dog", "cat", "fox", "dog", "dog"] + ["cat"] * 115
    out = certify_sequential(plan, "cat", hopeless)
    assert out.n_used == 5 and out.decision.action == "abstain" and out.as_tuple() == (ABSTAIN, 0.0)


def test_replay_of_a_truncated_log_is_incomplete(plan):
    out = certify_sequential(plan, "cat", ["cat"] * 40)
    assert not out.complete and out.decision.action == "continue" and out.as_tuple() == (ABSTAIN, 0.0)


def test_plan_round_trips_through_json_and_decides_identically(plan):
    text = json.dumps(plan.to_dict())
    again = SequentialPlan.from_dict(json.loads(text))
    assert again == plan and again.boundaries == plan.boundaries
    assert again.to_dict()["mode"] == "sequential"


def test_explicit_schedules_must_not_overspend_alpha():
    with pytest.raises(ValueError, match="exceed alpha"):
        SequentialPlan(100, 0.05, SIGMA, 0.25, looks=[20, 50, 100], alphas=[0.05, 0.05, 0.05])
    with pytest.raises(ValueError):
        SequentialPlan(100, 0.05, SIGMA, 0.25, looks=[20, 50, 90], alphas=[0.01, 0.01, 0.03])
    with pytest.raises(ValueError):
        SequentialPlan.from_dict({"mode": "sequential", "version": 99})


@pytest.mark.parametrize(
    "args",
    [(0, 0.05, 0.25), (100, 0.0, 0.25), (100, 0.05, -1.0), (100, 0.05, 0.25, -0.1)],
)
def test_bad_settings_raise_value_error(args):
    with pytest.raises(ValueError):
        SequentialPlan(*args)


def test_decide_rejects_counts_off_the_schedule(plan):
    with pytest.raises(ValueError):
        plan.decide(64, 10)
    with pytest.raises(ValueError):
        plan.decide(63, 64)


def test_unreachable_target_falls_back_to_one_look():
    plan = SequentialPlan(30, 0.001, SIGMA, target_radius=0.3)  # unanimous 30 samples reach only ~0.17
    assert [a for a in plan.alphas if a > 0] == [0.001]


@pytest.mark.parametrize("args", [(120, 0.001, 0.25, 0.3), (100, 0.05, 0.25, 0.25), (60, 0.1, 0.5, None)])
def test_exact_probability_of_a_wrong_certificate_is_at_most_alpha(args):
    plan = SequentialPlan(*args)
    worst = max(operating_characteristics(plan, p)["p_wrong"] for p in np.linspace(0.3, 1.0, 71))
    assert worst <= plan.alpha


def test_documented_expected_calls(plan):
    calls = {p: operating_characteristics(plan, p)["expected_calls"] for p in (0.1, 0.3, 0.5, 0.99, 1.0)}
    assert calls[1.0] == pytest.approx(63)
    assert calls[0.99] < 92 and calls[0.5] < 35 and calls[0.3] < 12 and calls[0.1] < 7
