"""Pareto fronts: exact non-dominated sets, checked against a brute-force filter."""

from __future__ import annotations

import random

import pytest

from costmodel.layout import Layout
from hardware.errors import PlannerInputError
from planner import plan
from planner.pareto import HIGHER_IS_BETTER, dominated_by, front
from planner.result import Plan, PlanResult


def brute_force(points: list[dict], x: str, y: str) -> list[int]:
    """Indices of points no other point dominates (the definition, O(n^2))."""
    return [i for i, p in enumerate(points)
            if not any(dominated_by(p, q, x, y) for j, q in enumerate(points) if j != i)]


def synthetic(rng: random.Random, n: int, grid: int) -> list[dict]:
    # a small value grid forces ties and exact duplicates, the cases sweeps get wrong
    return [{"tpot_ms": float(rng.randint(1, grid)), "energy_j_per_token": float(rng.randint(1, grid)),
             "output_tok_s_per_device": float(rng.randint(1, grid)), "tag": i} for i in range(n)]


@pytest.mark.parametrize("seed", range(40))
def test_front_equals_brute_force_on_random_sets(seed):
    rng = random.Random(seed)
    pts = synthetic(rng, rng.randint(0, 60), rng.choice([3, 8, 1000]))
    for x, y in (("tpot_ms", "energy_j_per_token"), ("output_tok_s_per_device", "energy_j_per_token"),
                 ("tpot_ms", "output_tok_s_per_device")):
        got = front(pts, x, y)
        assert sorted(p["tag"] for p in got) == brute_force(pts, x, y)
        # non-dominated among themselves, and ordered from best x to worst
        assert not any(dominated_by(a, b, x, y) for a in got for b in got)
        sign = -1 if x in HIGHER_IS_BETTER else 1
        assert [sign * p[x] for p in got] == sorted(sign * p[x] for p in got)


def test_every_point_off_the_front_is_dominated_by_one_on_it():
    rng = random.Random(7)
    pts = synthetic(rng, 200, 50)
    on = front(pts, "tpot_ms", "energy_j_per_token")
    for p in pts:
        if all(p is not q for q in on):
            assert any(dominated_by(p, q, "tpot_ms", "energy_j_per_token") for q in on)


def test_duplicates_and_single_points():
    a = {"tpot_ms": 1.0, "energy_j_per_token": 2.0}
    b = dict(a)
    c = {"tpot_ms": 1.0, "energy_j_per_token": 3.0}  # same x, worse y: dominated
    d = {"tpot_ms": 2.0, "energy_j_per_token": 2.0}  # worse x, same y: dominated
    assert front([a, b, c, d], "tpot_ms", "energy_j_per_token") == [a, b]
    assert front([c], "tpot_ms", "energy_j_per_token") == [c]
    assert front([], "tpot_ms", "energy_j_per_token") == []


def test_non_finite_values_are_left_out_and_unknown_metrics_are_errors():
    pts = [{"tpot_ms": 1.0, "energy_j_per_token": float("inf")}, {"tpot_ms": 2.0, "energy_j_per_token": 1.0}]
    assert front(pts, "tpot_ms", "energy_j_per_token") == [pts[1]]
    with pytest.raises(PlannerInputError, match="watts_per_joule"):
        front(pts, "tpot_ms", "watts_per_joule")
    with pytest.raises(PlannerInputError, match="two different"):
        front(pts, "tpot_ms", "tpot_ms")


def _plan(tpot: float, joules: float, feasible: bool = True) -> Plan:
    return Plan(layout=Layout(), replicas=1, device="h100-sxm", score=1.0, feasible=feasible,
                metrics={"tpot_ms": tpot, "energy_j_per_token": joules, "ttft_ms": 10.0})


def test_result_pareto_ignores_rejected_plans():
    kept = [_plan(10, 5), _plan(20, 2), _plan(30, 3)]
    # a rejected plan that would dominate everything must not appear on any front
    r = PlanResult(request={}, plans=kept, rejected=[_plan(1, 1, feasible=False)])
    assert r.pareto == kept[:2]
    assert r.front("ttft_ms", "energy_j_per_token") == [kept[1]]


def test_pareto_of_a_real_plan_with_power_caps():
    r = plan("llama-3.1-8b", "dgx-h100", workload={"isl": 512, "osl": 512, "concurrency": 64}, precision="fp8",
             power_caps=(None, 450))
    pts = r.pareto
    assert pts and all(p.feasible for p in pts)
    dicts = [p.metrics for p in r.plans]
    on = {id(p.metrics) for p in pts}
    assert {i for i, d in enumerate(dicts) if id(d) in on} == set(brute_force(dicts, "tpot_ms", "energy_j_per_token"))
    assert r.front("tok_s_per_user", "output_tok_s_per_device")
