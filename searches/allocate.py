"""Allocation strategies behind one interface: `allocate(problem, budget, strategy) -> ranked solutions`.

Every strategy returns `Solved` allocations, best first, each with a distinct set of chosen
configs (so the second one is the runner-up plan, not the same plan with one instance fewer),
and honours the time budget. `exhaustive` enumerates every allocation (domains of one group are
interchangeable, so it enumerates multisets of per-domain patterns); `cpsat`, `lp` and `heuristic`
live in their own modules; `auto` is CP-SAT, then annealing from its best where it was not proven.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from searches.base import Budget
from searches.placement import (
    Allocation,
    GroupShape,
    Problem,
    Value,
    best_local,
    chunks_of,
    evaluate,
    nodes_of,
)


@dataclass(frozen=True)
class Solved:
    """One allocation with its value, and what the strategy knows about optimality."""

    allocation: Allocation
    value: Value
    strategy: str
    seconds: float
    bound: float | None = None  # best bound on Value.objective (an upper bound: objectives are maximised)
    optimal: bool = False
    first_feasible_s: float | None = None
    notes: dict[str, float | str] = field(default_factory=dict)

    def gap(self, problem: Problem) -> float | None:
        """Relative gap on the goal's own quantity (goodput, devices, energy or cost); 0 when proven."""
        if self.optimal:
            return 0.0
        if self.bound is None or not self.value.feasible:
            return None
        if problem.goal.kind == "goodput":
            best = (self.bound + problem.total_devices) / (problem.total_devices + 1)
            return max(best - self.value.goodput, 0.0) / best if best > 0 else 0.0
        weight = problem.max_goodput + 1
        low = -self.bound / weight
        primary = {"devices": self.value.devices, "energy": self.value.power_w,
                   "cost": self.value.cost_milli}[problem.goal.kind]
        return max(primary - low, 0.0) / primary if primary > 0 else 0.0


Allocator = Callable[[Problem, Budget, int], list[Solved]]
ALLOCATORS: dict[str, Allocator] = {}


def register(name: str) -> Callable[[Allocator], Allocator]:
    def wrap(fn: Allocator) -> Allocator:
        ALLOCATORS[name] = fn
        return fn
    return wrap


def allocate(problem: Problem, budget: Budget | None = None, strategy: str = "auto", top: int = 3) -> list[Solved]:
    """The `top` best allocations with distinct config choices, best first (feasible ones only)."""
    if strategy not in ALLOCATORS:
        raise ValueError(f"search strategy '{strategy}' is unknown; use one of {', '.join(sorted(ALLOCATORS))}")
    found = ALLOCATORS[strategy](problem, budget or Budget(), top)
    best: dict[frozenset[int], Solved] = {}
    for s in sorted((s for s in found if s.value.feasible), key=lambda s: -s.value.objective):
        best.setdefault(s.allocation.chosen(problem), s)
    return list(best.values())[:top]


# ---- exhaustive ------------------------------------------------------------------------------------
def _patterns(problem: Problem, g: GroupShape, configs: list[int]) -> list[tuple[int, ...]]:
    """Per-domain instance counts of `configs` (in-domain kinds) that fit one domain's nodes."""
    ranges = []
    for i in configs:
        c = problem.configs[i]
        most = g.domain_devices // c.devices if problem.kind(i) == "small" else g.domain_nodes // nodes_of(c, g)
        ranges.append(range(most + 1))
    out = []
    for counts in itertools.product(*ranges):
        small = sum(n * problem.configs[i].devices for i, n in zip(configs, counts, strict=True)
                    if problem.kind(i) == "small")
        whole = sum(n * nodes_of(problem.configs[i], g) for i, n in zip(configs, counts, strict=True)
                    if problem.kind(i) == "node")
        if whole + -(-small // g.devices_per_node) <= g.domain_nodes:
            out.append(counts)
    return out


def _used_nodes(problem: Problem, g: GroupShape, configs: list[int], counts: tuple[int, ...]) -> int:
    small = sum(n * problem.configs[i].devices for i, n in zip(configs, counts, strict=True)
                if problem.kind(i) == "small")
    whole = sum(n * nodes_of(problem.configs[i], g) for i, n in zip(configs, counts, strict=True)
                if problem.kind(i) == "node")
    return whole + -(-small // g.devices_per_node)


def _spread_chunks(free: list[int], demand: list[tuple[int, int]]) -> list[list[int]] | None:
    """Chunks per domain (one list per demand) placing `count` chunks of `size` nodes each, or None."""
    if not demand:
        return []
    (size, count), rest = demand[0], demand[1:]

    def fill(k: int, left: int, free_now: list[int]) -> Iterator[tuple[list[int], list[int]]]:
        if k == len(free_now):
            if left == 0:
                yield [], free_now
            return
        for take in range(min(left, free_now[k] // size), -1, -1):
            after = [*free_now[:k], free_now[k] - take * size, *free_now[k + 1:]]
            for tail, final in fill(k + 1, left - take, after):
                yield [take, *tail], final

    for mine, after in fill(0, count, list(free)):
        others = _spread_chunks(after, rest)
        if others is not None:
            return [mine, *others]
    return None


def _group_options(problem: Problem, gi: int, chosen: list[int], deadline: float) -> Iterator[Allocation]:
    """Every placement-distinct way to deploy the chosen configs of group `gi` (domains interchangeable)."""
    g = problem.groups[gi]
    inside = [i for i in chosen if problem.configs[i].group == gi and problem.kind(i) != "cross"]
    cross = [i for i in chosen if problem.configs[i].group == gi and problem.kind(i) == "cross"]
    patterns = _patterns(problem, g, inside)
    for multiset in itertools.combinations_with_replacement(patterns, g.num_domains):
        if time.monotonic() > deadline:
            return
        counts = {(i, k): pat[j] for k, pat in enumerate(multiset) for j, i in enumerate(inside) if pat[j]}
        free = [g.domain_nodes - _used_nodes(problem, g, inside, pat) for pat in multiset]
        most = [sum(f // nodes_of(problem.configs[i], g) for f in free) // chunks_of(problem.configs[i], g)
                for i in cross]
        for ns in itertools.product(*(range(m + 1) for m in most)):
            demand = [(nodes_of(problem.configs[i], g), n * chunks_of(problem.configs[i], g))
                      for i, n in zip(cross, ns, strict=True)]
            spread = _spread_chunks(free, demand)
            if spread is None:
                continue
            placed = dict(counts)
            for i, per_domain in zip(cross, spread, strict=True):
                placed.update({(i, k): m for k, m in enumerate(per_domain) if m})
            yield Allocation(placed, {i: n for i, n in zip(cross, ns, strict=True) if n})


def _choices(problem: Problem) -> Iterator[list[int]]:
    pools = list(problem.pools().values())
    for pick in itertools.product(*([None, *members] for members in pools)):
        yield [i for i in pick if i is not None]


@register("exhaustive")
def exhaustive(problem: Problem, budget: Budget, top: int) -> list[Solved]:
    """Enumerate every allocation; keep the best one per distinct set of chosen configs."""
    started = time.monotonic()
    deadline = started + budget.time_s
    best: dict[frozenset[int], tuple[Value, Allocation]] = {}
    first: float | None = None
    complete = True
    for chosen in _choices(problem):
        per_group = [list(_group_options(problem, gi, chosen, deadline)) for gi in range(len(problem.groups))]
        for parts in itertools.product(*per_group):
            alloc = best_local(problem, Allocation({k: v for p in parts for k, v in p.counts.items()},
                                                   {k: v for p in parts for k, v in p.cross.items()}))
            value = evaluate(problem, alloc)
            if not value.feasible:
                continue
            first = first if first is not None else time.monotonic() - started
            key = alloc.chosen(problem)
            if key not in best or value.objective > best[key][0].objective:
                best[key] = (value, alloc)
        if time.monotonic() > deadline:
            complete = False
            break
    seconds = time.monotonic() - started
    ranked = sorted(best.values(), key=lambda va: -va[0].objective)[:top]
    notes: dict[str, float | str] = {} if complete else {"cut": "wall_clock"}
    return [Solved(a, v, "exhaustive", seconds, v.objective if complete else None, complete, first, dict(notes))
            for v, a in ranked]


def space_size(problem: Problem, limit: int = 20_000) -> int:
    """Candidate allocations exhaustive would visit (an estimate; stops counting past `limit`)."""
    total = 0
    for chosen in _choices(problem):
        prod = 1
        for gi, g in enumerate(problem.groups):
            inside = [i for i in chosen if problem.configs[i].group == gi and problem.kind(i) != "cross"]
            cross = [i for i in chosen if problem.configs[i].group == gi and problem.kind(i) == "cross"]
            p = 1  # per-domain patterns, over-estimated by the product of each config's range
            for i in inside:
                c = problem.configs[i]
                p *= 1 + (g.domain_devices // c.devices if problem.kind(i) == "small"
                          else g.domain_nodes // nodes_of(c, g))
            prod *= math.comb(p + g.num_domains - 1, g.num_domains)
            for i in cross:
                prod *= g.num_devices // problem.configs[i].devices + 1
        total += prod
        if total > limit:
            return total
    return total


@register("auto")
def auto(problem: Problem, budget: Budget, top: int) -> list[Solved]:
    """CP-SAT with its work budget; where that did not prove the optimum, simulated annealing walks on
    from CP-SAT's best (`budget.steps` moves) and the better of each choice is kept - never worse than
    CP-SAT alone, and deterministic for a seed."""
    found = ALLOCATORS["cpsat"](problem, budget, top)
    if found and found[0].optimal:
        return found
    from searches.heuristic import anneal  # heuristic imports this module

    start = found[0].allocation.instances(problem) if found else None
    walked = anneal(problem, budget, top, start, budget.steps)
    bound = found[0].bound if found else None
    notes = found[0].notes if found else {}
    return found + [Solved(w.allocation, w.value, "auto", w.seconds, bound, False, w.first_feasible_s,
                           {**notes, **w.notes}) for w in walked]
