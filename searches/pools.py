"""Plan search over pools: capacity tables from the cost model, then an allocation strategy per mode.

`run` is what `planner.plan(..., modes=..., search=...)` drives:
1. the rule-of-thumb layout of each group is evaluated first, so a feasible plan (the baseline)
   exists within a second or two whatever the space;
2. the per-instance capacity table - every layout in every role the modes need - is computed in
   parallel (joblib, or Ray) until its share of the budget is spent: prefill and decode rows first
   (cheap), then aggregated rows in order of an optimistic bound (an aggregated instance carries
   no more than the same layout does as a pure decode or pure prefill instance), so what the
   budget leaves out is the least promising;
3. one `Problem` per mode is solved with the chosen strategy; the LP relaxation, with the
   optimistic bound standing in for rows left out, bounds the optimum honestly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from costmodel.disagg import RoleCapacity
from costmodel.layout import Layout
from searches.allocate import Solved, allocate, space_size
from searches.base import Budget
from searches.heuristic import greedy, rule_of_thumb
from searches.lp import relax
from searches.parallel import parallel_map
from searches.placement import UNIT_RPS, Config, Goal, GroupShape, Problem, placeable, scaled

Item = tuple[int, Layout, str]  # (variant index, layout, role)
CapacityFn = Callable[[Item], RoleCapacity]
TABLE_SHARE = 0.6  # of the budget the capacity table may use before the solvers get the rest
OPTIMISM = 1.05  # slack on the optimistic bound (the goodput bisection stops within 1%)


@dataclass(frozen=True)
class Variant:
    """A device group as the search sees it, possibly at a power cap (`tag`)."""

    group: int
    tag: str
    layouts: tuple[Layout, ...]


@dataclass(frozen=True)
class Row:
    variant: int
    layout: Layout
    role: str
    cap: RoleCapacity


@dataclass
class PoolSearch:
    problems: dict[str, Problem]
    solved: dict[str, list[Solved]]
    rows: list[Row]
    baseline: Solved | None
    baseline_problem: Problem | None
    stats: dict[str, float | str | None] = field(default_factory=dict)


def _config(row: Row, variants: Sequence[Variant]) -> Config:
    v = variants[row.variant]
    c = row.cap
    return Config(row.role, v.group, row.layout, scaled(c.rate_rps), scaled(c.rate_out_rps), c.power_w,
                  c.binding, c.detail, v.tag, dict(c.metrics))


def problem_of(rows: Sequence[Row], variants: Sequence[Variant], groups: tuple[GroupShape, ...], mode: str,
               goal: Goal) -> Problem:
    roles = ("agg",) if mode == "agg" else ("prefill", "decode")
    configs = [_config(r, variants) for r in rows if r.role in roles and r.cap.feasible]
    return Problem(groups, tuple(c for c in configs if c.rate > 0 and placeable(c, groups[c.group])), mode, goal)


def _optimistic(rows: Sequence[Row], skipped: Sequence[Item], variants: Sequence[Variant]) -> list[Config]:
    """Stand-ins for aggregated rows left out: the same layout's pure-decode or pure-prefill rate, if lower."""
    by = {(r.variant, r.layout, r.role): r.cap for r in rows}
    out = []
    for vi, lay, _ in skipped:
        pre, dec = by.get((vi, lay, "prefill")), by.get((vi, lay, "decode"))
        rates = [c.rate_rps for c in (pre, dec) if c is not None]
        if not rates or min(rates) <= 0:
            continue
        rate = scaled(min(rates) * OPTIMISM)
        out.append(Config("agg", variants[vi].group, lay, rate, rate, 0.0, "optimistic", "", variants[vi].tag))
    return out


def _agg_order(items: list[Item], rows: Sequence[Row]) -> list[Item]:
    by = {(r.variant, r.layout, r.role): r.cap.rate_rps for r in rows}

    def bound(it: Item) -> float:
        vi, lay, _ = it
        rates = [by[(vi, lay, role)] for role in ("prefill", "decode") if (vi, lay, role) in by]
        return (min(rates) if rates else math.inf) / lay.instance_devices

    return sorted(items, key=lambda it: (-bound(it), it[1].instance_devices, it[1].label()))


def run(groups: tuple[GroupShape, ...], variants: Sequence[Variant], capacity: CapacityFn, modes: Sequence[str],
        goal: Goal, strategy: str, budget: Budget, top: int = 3) -> PoolSearch:
    """Tables, baseline, and the `top` best allocations per mode (see the module docstring)."""
    started = time.monotonic()
    deadline = started + budget.time_s
    # 1. the baseline: rule-of-thumb layout per variant, the first of its candidates that fits
    rows: list[Row] = []
    done: set[Item] = set()
    for vi, v in enumerate(variants):
        for lay in rule_of_thumb(v.layouts, groups[v.group].devices_per_node):
            cap = capacity((vi, lay, "agg"))
            rows.append(Row(vi, lay, "agg", cap))
            done.add((vi, lay, "agg"))
            if cap.feasible:
                break
    baseline_problem = problem_of(rows, variants, groups, "agg", goal)
    baseline = greedy(baseline_problem) if baseline_problem.configs else None
    first = time.monotonic() - started if baseline is not None else None
    # 2. capacity tables
    table_deadline = started + TABLE_SHARE * budget.time_s
    fast = [(vi, lay, role) for role in ("prefill", "decode") for vi, v in enumerate(variants) for lay in v.layouts]
    got_fast = parallel_map(capacity, fast, budget.n_jobs, budget.backend, table_deadline)
    rows += [Row(vi, lay, role, cap) for (vi, lay, role), cap in zip(fast, got_fast, strict=False)]
    fast_skipped = len(fast) - len(got_fast)  # prefill/decode rows the budget left out (not covered by the LP bound)
    skipped: list[Item] = []
    if "agg" in modes:
        slow = _agg_order([(vi, lay, "agg") for vi, v in enumerate(variants) for lay in v.layouts
                           if (vi, lay, "agg") not in done], rows)
        got = parallel_map(capacity, slow, budget.n_jobs, budget.backend, table_deadline)
        rows += [Row(vi, lay, role, cap) for (vi, lay, role), cap in zip(slow, got, strict=False)]
        skipped = slow[len(got):]
    table_s = time.monotonic() - started
    # 3. solve each mode
    problems = {m: problem_of(rows, variants, groups, m, goal) for m in modes}
    solved: dict[str, list[Solved]] = {}
    stats: dict[str, float | str | None] = {"table_s": round(table_s, 3), "rows": float(len(rows)),
                                            "rows_skipped": float(len(skipped) + fast_skipped),
                                            "pd_rows_skipped": float(fast_skipped), "first_feasible_s": first}
    for n, m in enumerate(modes):
        p = problems[m]
        left = max((deadline - time.monotonic()) / (len(modes) - n), 0.05)
        name = strategy
        if strategy == "auto":
            name = "exhaustive" if space_size(p) <= 20_000 else "cpsat"
        offset = time.monotonic() - started
        solved[m] = allocate(p, Budget(left, budget.seed, budget.n_jobs, budget.backend), name, top) \
            if p.configs else []
        stats[f"{m}_strategy"] = name
        stats[f"{m}_solve_s"] = round(time.monotonic() - started - offset, 3)
        if solved[m]:
            best = solved[m][0]
            at = offset + (best.first_feasible_s if best.first_feasible_s is not None else best.seconds)
            first = at if first is None else min(first, at)
            stats[f"{m}_gap"] = best.gap(p)
        stats[f"{m}_lp_bound_rps"] = _lp_bound_rps(p, _optimistic(rows, skipped, variants) if m == "agg" else [])
    stats["first_feasible_s"] = None if first is None else round(first, 3)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return PoolSearch(problems, solved, rows, baseline, baseline_problem, stats)


def _lp_bound_rps(p: Problem, extra: list[Config]) -> float | None:
    """Goodput bound of the mode (LP relaxation with stand-ins for rows left out), req/s."""
    full = Problem(p.groups, p.configs + tuple(c for c in extra if placeable(c, p.groups[c.group])), p.mode,
                   Goal("goodput"))
    if not full.configs:
        return None
    rel = relax(full)
    return rel.goodput * UNIT_RPS if rel.feasible else None
