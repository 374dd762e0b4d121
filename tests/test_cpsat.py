"""CP-SAT allocation: optimal against brute force, deterministic, time-limited, valid placements."""

import subprocess
import sys

import pytest

from costmodel.layout import Layout
from hardware import cluster
from hardware.specs import Cluster
from hardware.topology import domain_of
from searches import Budget, allocate
from searches.cpsat import Model, solve_top
from searches.heuristic import greedy
from searches.instances import random_problem
from searches.placement import (
    Allocation,
    Config,
    Goal,
    GroupShape,
    Problem,
    evaluate,
    place,
    placeable,
    placement_violations,
    shapes,
)


def _instances(count: int) -> list[Problem]:
    """The first `count` seeded problems brute force finds a non-trivial optimum for."""
    out, seed = [], 0
    while len(out) < count:
        p = random_problem(seed)
        best = allocate(p, Budget(time_s=60), "exhaustive", top=1)
        if best and best[0].value.goodput > 0:
            out.append(p)
        seed += 1
    return out


def test_cpsat_optimum_equals_brute_force_on_random_instances():
    problems = _instances(55)
    assert {p.mode for p in problems} == {"agg", "disagg"}
    assert {p.goal.kind for p in problems} == {"goodput", "devices", "energy", "cost"}
    assert any(len(p.groups) == 2 for p in problems)
    for p in problems:
        brute = allocate(p, Budget(time_s=60), "exhaustive", top=1)[0]
        solved = allocate(p, Budget(time_s=20), "cpsat", top=1)[0]
        assert brute.optimal and solved.optimal
        assert solved.value.objective == brute.value.objective, p
        again = evaluate(p, solved.allocation)  # the solver's answer, re-valued independently
        assert again.feasible and again.objective == solved.value.objective
        assert not placement_violations(p, solved.allocation, place(p, solved.allocation))


def test_runner_ups_differ_in_configs_and_rank_below():
    p = next(p for p in _instances(20) if len(p.configs) >= 3)
    found = allocate(p, Budget(time_s=20), "cpsat", top=3)
    brute = allocate(p, Budget(time_s=60), "exhaustive", top=3)
    assert [s.value.objective for s in found] == [s.value.objective for s in brute]
    assert len({s.allocation.chosen(p) for s in found}) == len(found)


def test_cpsat_is_deterministic_for_a_seed():
    p = _big_problem()
    a = solve_top(p, Budget(time_s=30, seed=7), 1)[0]
    b = solve_top(p, Budget(time_s=30, seed=7), 1)[0]
    assert a.allocation == b.allocation and a.value == b.value


def _big_problem() -> Problem:
    """A 4-domain disaggregated problem with every small layout in both pools."""
    g = GroupShape("h100-sxm", 4, 8, 1)
    configs = []
    for role in ("prefill", "decode"):
        for tp in (1, 2, 4, 8):
            for pp in (1, 2, 4):
                lay = Layout(tp=tp, pp=pp)
                rate = (9000 - 900 * pp + 500 * tp) * lay.instance_devices // (2 if role == "decode" else 1)
                configs.append(Config(role, 0, lay, rate, int(rate * 0.9) if role == "prefill" else rate, 700.0))
    return Problem((g,), tuple(c for c in configs if placeable(c, g)), "disagg", Goal("goodput"))


def test_work_limit_returns_best_found_with_a_bound_and_says_it_cut():
    p = _big_problem()
    model = Model(p)
    model.hint(greedy(p).allocation)  # a feasible start, as the cpsat strategy gives it
    solved = model.solve(work=0.02, time_s=600, seed=0)[0]
    assert solved is not None and solved.value.feasible
    assert solved.bound is not None and solved.bound >= solved.value.objective
    gap = solved.gap(p)
    assert gap is not None and 0 <= gap < 1
    assert solved.optimal or solved.notes["cut"] == "work"


def test_a_cut_short_solve_is_the_same_twice():
    """A deterministic-time limit, not the wall clock, decides where CP-SAT stops."""
    p = _big_problem()
    a = solve_top(p, Budget(time_s=600, seed=3, solver_work=0.05), 2)
    b = solve_top(p, Budget(time_s=600, seed=3, solver_work=0.05), 2)
    assert [(s.allocation, s.value) for s in a] == [(s.allocation, s.value) for s in b]


def _tp_groups_stay_in_domains(clu: Cluster, p: Problem, alloc: Allocation) -> None:
    placed = place(p, alloc)
    assert not placement_violations(p, alloc, placed)
    for inst in placed:
        c, group = p.configs[inst.config], clu.groups[inst.group]
        assert group.device.name == p.groups[c.group].device
        for start in range(0, len(inst.devices), c.unit):
            assert len({domain_of(group, d) for d in inst.devices[start:start + c.unit]}) == 1
        if c.devices > group.devices_per_node:  # multi-node instances take whole nodes
            nodes = {d // group.devices_per_node for d in inst.devices}
            assert len(nodes) * group.devices_per_node == c.devices


@pytest.mark.parametrize("name, layouts", [
    ("gb200-nvl72x2", [(8, 1, 1), (2, 64, 1), (4, 2, 1), (1, 1, 2), (8, 16, 1)]),
    ("dgx-h100x4", [(4, 4, 1), (8, 2, 1), (2, 1, 1), (1, 1, 4), (8, 1, 1)]),
])
def test_placement_never_splits_a_tp_group_across_domains(name, layouts):
    clu = cluster(name)
    groups = shapes(clu)
    for goal in (Goal("goodput"), Goal("devices", 200_000)):
        configs = [Config("agg", 0, Layout(tp=tp, pp=pp, attention_dp=adp), 10_000 * tp * pp * adp + 7 * pp,
                          10_000 * tp * pp * adp + 7 * pp, 500.0) for tp, pp, adp in layouts]
        for pick in range(len(configs)):  # each layout alone, so cross-domain ones get placed too
            p = Problem(groups, (configs[pick],), "agg", goal)
            found = allocate(p, Budget(time_s=10), "cpsat", top=1)
            if found:
                _tp_groups_stay_in_domains(clu, p, found[0].allocation)
        p = Problem(groups, tuple(configs), "agg", goal)
        _tp_groups_stay_in_domains(clu, p, allocate(p, Budget(time_s=10), "cpsat", top=1)[0].allocation)


def test_mixed_fleet_respects_device_types():
    h100, a100 = cluster("dgx-h100x2").groups[0], cluster("dgx-a100x2").groups[0]
    clu = Cluster(name="h100-a100", groups=[h100, a100])
    groups = shapes(clu, {"h100-sxm": 2.5, "a100-sxm-80gb": 1.2})
    configs = (Config("prefill", 0, Layout(tp=4), 60_000, 50_000, 2800.0),
               Config("prefill", 1, Layout(tp=4), 30_000, 25_000, 1600.0),
               Config("decode", 0, Layout(tp=2), 20_000, 20_000, 1200.0),
               Config("decode", 1, Layout(tp=8), 45_000, 45_000, 2400.0))
    for goal in (Goal("goodput"), Goal("cost", 80_000)):
        p = Problem(groups, configs, "disagg", goal)
        best = allocate(p, Budget(time_s=10), "cpsat", top=1)[0]
        assert best.value.objective == allocate(p, Budget(time_s=60), "exhaustive", top=1)[0].value.objective
        _tp_groups_stay_in_domains(clu, p, best.allocation)


def test_unknown_allocator():
    with pytest.raises(ValueError, match="unknown"):
        allocate(random_problem(0), strategy="magic")


def _busy() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_same_seed_same_plans_on_a_busy_machine():
    from planner import plan

    kw = {"slo": {"ttft_ms": 1000, "tpot_ms": 50}, "workload": {"isl": 2048, "osl": 256, "rate_rps": 20},
          "precision": "fp8", "goal": "goodput", "seed": 5}
    quiet = plan("llama-3.1-70b", "dgx-h100x2", **kw)
    burner = _busy()  # a CPU-bound neighbour: only the wall clock changes, not the work budgets
    try:
        loaded = plan("llama-3.1-70b", "dgx-h100x2", **kw)
    finally:
        burner.kill()
        burner.wait()
    assert [(p.label(), p.metrics["goodput_rps"]) for p in quiet.plans] == \
        [(p.label(), p.metrics["goodput_rps"]) for p in loaded.plans]
    assert quiet.search["cut"] is None and loaded.search["cut"] is None


def test_auto_is_never_worse_than_cpsat_on_the_benchmark_problems():
    """benchmarks/search.py's medium case: the same capacity table, each mode solved by auto and by CP-SAT."""
    from costmodel.calibration.profile import profile_for
    from costmodel.catalog import model
    from costmodel.engines import engine
    from costmodel.precision import precision
    from costmodel.workload import SLO, Workload
    from planner.objective import PoolCapacity, ServingObjective
    from searches import Space
    from searches.pools import Variant, run

    clu = cluster("dgx-h100x4")
    g, spec = clu.groups[0], model("llama-3.1-70b")
    obj = ServingObjective(spec, g, precision("fp8"), profile_for(g.device.name, None), engine("vllm"),
                           Workload(isl=2048, osl=256, rate_rps=1.0), SLO(ttft_ms=1000, tpot_ms=50))
    found = run(shapes(clu), [Variant(0, "", tuple(Space(spec, g).layouts()))], PoolCapacity((obj,), g.scaleout),
                ("agg", "disagg"), Goal("goodput"), "lp", Budget())
    for p in found.problems.values():
        cp = allocate(p, Budget(time_s=600), "cpsat", top=1)[0]
        auto = allocate(p, Budget(time_s=600), "auto", top=1)[0]
        assert auto.value.objective >= cp.value.objective
