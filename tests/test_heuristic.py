"""Heuristics, LP bounds, Melange mixes, the rule-of-thumb baseline and parallel evaluation."""

import importlib.util
import math

import pytest

from costmodel.catalog import model
from hardware import cluster
from hardware.errors import PlannerInputError
from searches import Budget, Space, allocate
from searches.heuristic import anneal, greedy, pack, rule_of_thumb
from searches.instances import random_problem
from searches.lp import Offer, lp, melange, relax
from searches.parallel import parallel_map
from searches.placement import best_local, evaluate, place, placement_violations


def _problems(count: int):
    out, seed = [], 100
    while len(out) < count:
        p = random_problem(seed)
        best = allocate(p, Budget(time_s=30), "exhaustive", top=1)
        if best and best[0].value.goodput > 0:
            out.append((p, best[0]))
        seed += 1
    return out


def test_heuristics_are_feasible_and_never_beat_the_optimum():
    for p, opt in _problems(25):
        start = greedy(p)
        walked = anneal(p, Budget(time_s=30, seed=3), 1, start.allocation.instances(p) if start else None,
                        max_steps=300)
        for s in ([start] if start else []) + walked:
            assert s.value.feasible and s.value.objective <= opt.value.objective
            assert evaluate(p, s.allocation) == s.value
            assert not placement_violations(p, s.allocation, place(p, s.allocation))
        if start and walked:
            assert walked[0].value.objective >= start.value.objective


def test_annealing_is_deterministic_with_a_step_limit():
    p, _ = _problems(3)[-1]
    a = anneal(p, Budget(time_s=60, seed=11), 2, max_steps=400)
    b = anneal(p, Budget(time_s=60, seed=11), 2, max_steps=400)
    assert [(s.allocation, s.value) for s in a] == [(s.allocation, s.value) for s in b]


def test_lp_relaxation_bounds_every_integer_plan():
    for p, opt in _problems(25):
        rel = relax(p)
        assert rel.feasible
        assert rel.objective_bound(p) >= opt.value.objective - 1e-6
        rounded = lp(p, Budget(), 1)
        if rounded:
            assert rounded[0].value.objective <= opt.value.objective
            assert rounded[0].bound >= opt.value.objective - 1e-6


def test_best_local_split_matches_enumeration():
    for p, _ in _problems(25):
        if p.mode != "disagg":
            continue
        alloc = best_local(p, pack(p, greedy(p).allocation.instances(p)) or greedy(p).allocation)
        prefill = [(key, n) for key, n in alloc.counts.items() if p.configs[key[0]].role == "prefill"
                   and p.kind(key[0]) != "cross"]
        best = evaluate(p, alloc).goodput
        for key, n in prefill:  # no other local count in one domain does better
            for u in range(n + 1):
                other = type(alloc)(alloc.counts, alloc.cross, {**alloc.local, key: u})
                assert evaluate(p, other).goodput <= best


def test_rule_of_thumb_takes_the_largest_tp_inside_a_node():
    g = cluster("dgx-h100x2").groups[0]
    order = rule_of_thumb(Space(model("llama-3.1-70b"), g).layouts(), g.devices_per_node)
    assert order and all(lay.tp == 8 and lay.attention_dp == 1 for lay in order)
    assert [lay.pp for lay in order] == sorted(lay.pp for lay in order)


def test_melange_mixes_device_types_at_least_cost():
    demand = [10.0, 4.0, 1.0]  # short, medium, long requests
    capacity = [[8.0, 3.0], [2.0, 1.5], [0.5, 0.0]]  # per instance: fast type, cheap type
    offers = [Offer("h100", 4.0), Offer("a100", 1.0)]
    mix = melange(demand, capacity, offers)
    for b, row in enumerate(mix.share):
        assert sum(row.values()) == pytest.approx(1)
        assert row["a100"] == pytest.approx(0) or capacity[b][1] > 0
    for t, o in enumerate(offers):
        load = sum(mix.share[b][o.name] * demand[b] / capacity[b][t] for b in range(3) if capacity[b][t] > 0)
        assert load <= mix.instances[o.name] + 1e-6
    only_fast = sum(d / c[0] for d, c in zip(demand, capacity, strict=True)) * 4.0
    assert mix.cost_per_hour <= only_fast + 1e-6 and mix.integer_cost_per_hour >= mix.cost_per_hour - 1e-6
    assert mix.instances["a100"] > 0  # the cheap type takes some load
    with pytest.raises(PlannerInputError, match="bucket 2"):
        melange(demand, [[8.0, 3.0], [2.0, 1.5], [0.0, 0.0]], offers)


def test_parallel_map_keeps_order_and_matches_serial():
    items = list(range(40))  # a library function: worker processes (and Ray workers) import it by name
    assert parallel_map(math.factorial, items, n_jobs=2, chunk=7) == [math.factorial(x) for x in items]
    with pytest.raises(PlannerInputError, match="backend"):
        parallel_map(math.factorial, items, backend="spark")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (extra [ray])")
def test_parallel_map_on_a_local_ray_instance():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = parallel_map(math.factorial, list(range(20)), n_jobs=2, backend="ray")
        assert got == [math.factorial(x) for x in range(20)]
    finally:
        ray.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (extra [ray])")
def test_plan_on_a_local_ray_instance_gives_the_same_plans():
    import ray

    from planner import plan

    kw = {"slo": {"ttft_ms": 1000, "tpot_ms": 50}, "workload": {"isl": 1024, "osl": 128, "rate_rps": 10}}
    here = plan("llama-3.1-8b", "dgx-h100", **kw)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        there = plan("llama-3.1-8b", "dgx-h100", backend="ray", n_jobs=2, budget_s=600, **kw)  # Ray starts slowly
    finally:
        ray.shutdown()
    assert [p.label() for p in there.plans] == [p.label() for p in here.plans]


def test_plan_rejects_an_unknown_backend():
    from planner import plan

    with pytest.raises(PlannerInputError, match="backend='spark'"):
        plan("llama-3.1-8b", "dgx-h100", workload={"isl": 128, "osl": 16, "rate_rps": 1}, backend="spark")
