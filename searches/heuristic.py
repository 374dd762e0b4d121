"""Heuristics for spaces too big to solve exactly, and the rule-of-thumb baseline.

- `pack` turns instance totals into a placement-valid allocation: chunks of cross-domain
  instances first, then in-domain instances first-fit over domains in an order that interleaves
  prefill and decode, so most domains hold both and ship KV cache over their scale-up link.
- `greedy` picks the configs with the best goodput per device in each pool and adds instances to
  whichever pool binds (rate matching) until the cluster is full or the target is met.
- `anneal` (simulated annealing, seeded, a fixed number of moves; wall clock only as a safety
  limit) walks from the greedy start: swap a pool's layout, add or remove an instance, open or
  close a pool; worse moves pass with probability exp(-loss / T) as T cools.
- `rule_of_thumb` is what people deploy without a planner: the largest TP inside a node, pipeline
  stages only when the model does not fit, replicas for the rest.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

from costmodel.layout import Layout
from searches.allocate import Solved, register
from searches.base import Budget
from searches.placement import Allocation, Problem, Value, best_local, chunks_of, evaluate, nodes_of

PENALTY = 2**60  # objective of a state that misses the target or cannot be placed


def _interleaved(problem: Problem, totals: dict[int, int]) -> list[int]:
    """In-domain instances to place, largest first within a role, roles interleaved by share."""
    slots: list[tuple[float, int, int]] = []
    for i, n in totals.items():
        if problem.kind(i) == "cross":
            continue
        for j in range(n):
            slots.append(((j + 0.5) / n, -problem.configs[i].devices, i))
    return [i for _, _, i in sorted(slots)]


def pack(problem: Problem, totals: dict[int, int]) -> Allocation | None:
    """A placement-valid allocation holding `totals` instances per config, or None when they do not fit."""
    free = {(gi, k): g.domain_nodes for gi, g in enumerate(problem.groups) for k in range(g.num_domains)}
    small = dict.fromkeys(free, 0)
    counts: dict[tuple[int, int], int] = {}
    cross: dict[int, int] = {}
    for i, n in sorted(totals.items()):
        if problem.kind(i) != "cross" or not n:
            continue
        c, g = problem.configs[i], problem.shape(i)
        size, need = nodes_of(c, g), n * chunks_of(c, g)
        for k in range(g.num_domains):
            take = min(need, free[(c.group, k)] // size)
            if take:
                counts[(i, k)] = take
                free[(c.group, k)] -= take * size
                need -= take
        if need:
            return None
        cross[i] = n
    for i in _interleaved(problem, totals):
        c, g = problem.configs[i], problem.shape(i)
        for k in range(g.num_domains):
            key = (c.group, k)
            if problem.kind(i) == "small":
                fits = -(-(small[key] + c.devices) // g.devices_per_node) <= free[key]
            else:
                fits = nodes_of(c, g) + -(-small[key] // g.devices_per_node) <= free[key]
            if fits:
                if problem.kind(i) == "small":
                    small[key] += c.devices
                else:
                    free[key] -= nodes_of(c, g)
                counts[(i, k)] = counts.get((i, k), 0) + 1
                break
        else:
            return None
    return best_local(problem, Allocation(counts, cross))


def _score(problem: Problem, totals: dict[int, int]) -> tuple[int, Allocation | None, Value | None]:
    alloc = pack(problem, {i: n for i, n in totals.items() if n})
    if alloc is None:
        return -PENALTY * 2, None, None
    value = evaluate(problem, alloc)
    if not value.feasible:
        return -PENALTY + value.goodput, alloc, value
    return value.objective, alloc, value


def _per_device(problem: Problem, members: Sequence[int]) -> list[int]:
    return sorted(members, key=lambda i: (-problem.configs[i].rate / problem.configs[i].devices, i))


def _fill(problem: Problem, picks: list[int], start: dict[int, int] | None = None) -> dict[int, int]:
    """Add instances of `picks` one at a time to the binding pool until nothing fits or the target is met."""
    totals = {i: (start or {}).get(i, 0) for i in picks}
    cfg = problem.configs
    stuck: set[int] = set()
    while len(stuck) < len(picks):
        value = _score(problem, totals)[2]
        if problem.goal.target and value is not None and value.feasible and problem.goal.kind != "goodput":
            break
        if problem.mode == "disagg":
            pre = sum(cfg[i].rate_out * n for i, n in totals.items() if cfg[i].role == "prefill")
            dec = sum(cfg[i].rate * n for i, n in totals.items() if cfg[i].role == "decode")
            want = "prefill" if pre <= dec else "decode"
            order = [i for i in picks if cfg[i].role == want] + [i for i in picks if cfg[i].role != want]
        else:
            order = _per_device(problem, picks)
        for i in order:
            if i in stuck:
                continue
            totals[i] += 1
            if pack(problem, totals) is not None:
                break
            totals[i] -= 1
            stuck.add(i)
        else:
            break
    return {i: n for i, n in totals.items() if n}


def _pick_sets(problem: Problem, width: int) -> list[list[int]]:
    pools = problem.pools()
    if problem.mode == "agg":
        return [[_per_device(problem, members)[0] for members in pools.values()]]
    pre = _per_device(problem, pools.get(("prefill", -1), []))[:width]
    dec = _per_device(problem, pools.get(("decode", -1), []))[:width]
    return [[p, d] for p in pre for d in dec]


def greedy(problem: Problem, width: int = 3) -> Solved | None:
    """Best of greedy fills from the top configs per pool (top `width` prefill x decode pairs)."""
    started = time.monotonic()
    best: tuple[int, Allocation, Value] | None = None
    for picks in _pick_sets(problem, width):
        if not picks:
            continue
        score, alloc, value = _score(problem, _fill(problem, picks))
        if alloc is not None and value is not None and value.feasible and (best is None or score > best[0]):
            best = (score, alloc, value)
    if best is None:
        return None
    return Solved(best[1], best[2], "greedy", time.monotonic() - started, first_feasible_s=time.monotonic() - started)


def anneal(problem: Problem, budget: Budget, top: int, start: dict[int, int] | None = None,
           max_steps: int | None = None) -> list[Solved]:
    """Simulated annealing over instance totals, seeded; stops at the time budget or after `max_steps`
    moves (with a step limit and time to spare, the walk is the same on every run)."""
    started = time.monotonic()
    rng = random.Random(budget.seed)
    pools = list(problem.pools().values())
    state = dict(start or {})
    score, alloc, value = _score(problem, state)
    best: dict[frozenset[int], tuple[int, Allocation, Value]] = {}
    first: float | None = None

    def keep(s: int, a: Allocation | None, v: Value | None) -> None:
        nonlocal first
        if a is None or v is None or not v.feasible:
            return
        first = first if first is not None else time.monotonic() - started
        key = a.chosen(problem)
        if key not in best or s > best[key][0]:
            best[key] = (s, a, v)

    keep(score, alloc, value)
    scale = max(abs(score), 1) if score > -PENALTY else 1
    steps = 0
    while time.monotonic() - started < budget.time_s and pools and (max_steps is None or steps < max_steps):
        steps += 1
        progress = steps / max_steps if max_steps else (time.monotonic() - started) / budget.time_s
        temp = 0.05 * scale * (1 - min(progress, 1.0)) + 1e-9
        cand = _neighbour(problem, state, pools, rng)
        s, a, v = _score(problem, cand)
        if s >= score or rng.random() < math.exp(max((s - score) / temp, -700)):
            state, score = cand, s
            keep(s, a, v)
            if s > -PENALTY:
                scale = max(scale, abs(s))
    seconds = time.monotonic() - started
    ranked = sorted(best.values(), key=lambda t: -t[0])[:top]
    notes: dict[str, float | str] = {"steps": float(steps)}
    if max_steps is not None and steps < max_steps and pools:
        notes["cut"] = "wall_clock"
    return [Solved(a, v, "heuristic", seconds, first_feasible_s=first, notes=notes)
            for _, a, v in ranked]


def _neighbour(problem: Problem, state: dict[int, int], pools: list[list[int]],
               rng: random.Random) -> dict[int, int]:
    out = dict(state)
    members = pools[rng.randrange(len(pools))]
    current = [i for i in members if out.get(i)]
    move = rng.random()
    if not current:
        out[members[rng.randrange(len(members))]] = 1
    elif move < 0.35:
        i = current[0]
        j = members[rng.randrange(len(members))]
        n = out.pop(i)
        out[j] = max(1, round(n * problem.configs[i].devices / problem.configs[j].devices))
    elif move < 0.65:
        out[current[0]] += 1
    elif move < 0.95:
        out[current[0]] -= 1
    else:
        out.pop(current[0])
    return {i: n for i, n in out.items() if n > 0}


@register("heuristic")
def heuristic(problem: Problem, budget: Budget, top: int) -> list[Solved]:
    """Greedy construction, then `budget.steps` moves of simulated annealing from it."""
    start = greedy(problem)
    found = anneal(problem, budget, top, start.allocation.instances(problem) if start else None, budget.steps)
    if start is not None:
        found.append(Solved(start.allocation, start.value, "heuristic", start.seconds,
                            first_feasible_s=start.first_feasible_s))
    return found


def rule_of_thumb(layouts: Sequence[Layout], devices_per_node: int) -> list[Layout]:
    """The rule-of-thumb layouts in the order people try them: the largest TP inside a node, no
    attention-DP, the fewest pipeline stages (then the fewest expert ranks); the first that fits wins."""
    inside = [lay for lay in layouts if lay.tp <= devices_per_node and lay.attention_dp == 1]
    if not inside:
        return []
    tp = max(lay.tp for lay in inside)
    return sorted((lay for lay in inside if lay.tp == tp), key=lambda lay: (lay.pp, lay.ep))
