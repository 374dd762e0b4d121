"""Plan search over pools: capacity tables from the cost model, then an allocation strategy per mode.

`run` is what `planner.plan(..., modes=..., search=...)` drives:
1. the rule-of-thumb layout of each group is evaluated first, so a feasible plan (the baseline)
   exists within a second or two whatever the space;
2. the per-instance capacity table - every layout in every role the modes need - is computed in
   parallel (joblib, or Ray): prefill and decode rows first (cheap), then aggregated rows in order
   of an optimistic bound (an aggregated instance carries no more than the same layout as a pure
   decode instance). A row whose bound cannot beat the best aggregated plan found so far is pruned
   (the bound proves it cannot win); `Budget.rows` caps the rows (a work budget: the same answer
   on any machine), and the wall clock (`Budget.time_s`) is only a safety limit, reported in
   `stats["cut"]` when it bites;
3. one `Problem` per mode is solved with the chosen strategy; the LP relaxation, with the
   optimistic bound standing in for rows pruned or left out, bounds the optimum over every layout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from costmodel.disagg import RoleCapacity
from costmodel.layout import Layout
from searches.allocate import Solved, allocate
from searches.base import Budget
from searches.heuristic import greedy, rule_of_thumb
from searches.lp import relax
from searches.parallel import parallel_map
from searches.placement import UNIT_RPS, Config, Goal, GroupShape, Problem, placeable, scaled

Item = tuple[int, Layout, str]  # (variant index, layout, role)
CapacityFn = Callable[[Item], RoleCapacity]
SAFETY_TABLE = 0.8  # of the wall-clock limit the capacity table may use if that limit bites
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


def _optimistic(skipped: Sequence[Item], bounds: dict[tuple[int, Layout], float],
                variants: Sequence[Variant]) -> list[Config]:
    """Stand-ins at their optimistic bound for aggregated rows left out or pruned (for the LP bound)."""
    out = []
    for vi, lay, _ in skipped:
        rate = scaled(bounds.get((vi, lay), 0.0))
        if rate > 0:
            out.append(Config("agg", variants[vi].group, lay, rate, rate, 0.0, "optimistic", "", variants[vi].tag))
    return out


def _bounds(rows: Sequence[Row]) -> dict[tuple[int, Layout], float]:
    """Optimistic per-instance rate of each layout's aggregated row: the same layout's pure-decode rate,
    with slack. An aggregated instance's decode steps also carry prefill, so its largest batch meeting
    TPOT (and the KV cache) is no larger and no faster than a pure decode instance's; OPTIMISM covers
    the bisection's tolerance. Without a decode row (osl = 1) there is no bound."""
    return {(r.variant, r.layout): r.cap.rate_rps * OPTIMISM for r in rows
            if r.role == "decode" and r.cap.binding != "osl"}


def _agg_order(items: list[Item], bounds: dict[tuple[int, Layout], float]) -> list[Item]:
    def per_device(it: Item) -> float:
        return bounds.get((it[0], it[1]), math.inf) / it[1].instance_devices

    return sorted(items, key=lambda it: (-per_device(it), it[1].instance_devices, it[1].label()))


def _prunable(item: Item, bounds: dict[tuple[int, Layout], float], incumbent: dict[int, float],
              groups: tuple[GroupShape, ...], variants: Sequence[Variant], goal: Goal) -> bool:
    """Whether an aggregated row provably cannot beat the best aggregated plan found so far: a pool
    of its layout filling its whole group carries at most its optimistic per-device rate times the
    group's devices. (Goodput goal only; minimisation goals keep every row.)"""
    if goal.kind != "goodput":
        return False
    vi, lay, _ = item
    g = groups[variants[vi].group]
    best = bounds.get((vi, lay), math.inf) / lay.instance_devices * g.num_devices
    return best < incumbent.get(variants[vi].group, 0.0)


def _incumbent(rows: Sequence[Row], variants: Sequence[Variant], groups: tuple[GroupShape, ...],
               goal: Goal) -> dict[int, float]:
    """Goodput (req/s) per device group of the greedy aggregated plan over the rows so far."""
    p = problem_of(rows, variants, groups, "agg", Goal("goodput"))
    found = greedy(p) if p.configs else None
    out: dict[int, float] = {}
    if found is not None:
        for i, n in found.allocation.instances(p).items():
            c = p.configs[i]
            out[c.group] = out.get(c.group, 0.0) + c.rate * n * UNIT_RPS
    return out


class _Table:
    """The capacity table as it fills: rows, what the work budget and the wall clock left out, progress."""

    def __init__(self, capacity: CapacityFn, budget: Budget, deadline: float,
                 progress: Callable[[int, int], None] | None, total: int) -> None:
        self.capacity, self.budget, self.deadline, self.progress = capacity, budget, deadline, progress
        self.total = total
        self.rows: list[Row] = []
        self.left_by_work: list[Item] = []
        self.left_by_clock: list[Item] = []

    def room(self) -> int | None:
        return None if self.budget.rows is None else max(self.budget.rows - len(self.rows), 0)

    def add(self, items: Sequence[Item]) -> None:
        room = self.room()
        take = list(items) if room is None else list(items[:room])
        self.left_by_work += list(items[len(take):])
        if time.monotonic() > self.deadline:
            self.left_by_clock += take
            return
        chunk = max(4 * self.budget.n_jobs, 8)
        for start in range(0, len(take), chunk):
            part = take[start:start + chunk]
            got = parallel_map(self.capacity, part, self.budget.n_jobs, self.budget.backend,
                               address=self.budget.address)
            self.rows += [Row(vi, lay, role, cap) for (vi, lay, role), cap in zip(part, got, strict=True)]
            if self.progress is not None:
                self.progress(len(self.rows), self.total)
            if time.monotonic() > self.deadline:
                self.left_by_clock += take[start + chunk:]
                return


def run(groups: tuple[GroupShape, ...], variants: Sequence[Variant], capacity: CapacityFn, modes: Sequence[str],
        goal: Goal, strategy: str, budget: Budget, top: int = 3,
        progress: Callable[[int, int], None] | None = None) -> PoolSearch:
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
    # 2. capacity tables: prefill and decode rows, then aggregated rows by optimistic bound, pruned by it
    fast = [(vi, lay, role) for role in ("prefill", "decode") for vi, v in enumerate(variants) for lay in v.layouts]
    slow = [(vi, lay, "agg") for vi, v in enumerate(variants) for lay in v.layouts
            if "agg" in modes and (vi, lay, "agg") not in done]
    # the wall clock is a safety limit only; the table stops at SAFETY_TABLE of it so the solvers keep time
    table = _Table(capacity, budget, started + SAFETY_TABLE * budget.time_s, progress,
                   len(rows) + len(fast) + len(slow))
    table.rows = rows
    table.add(fast)
    pd_left = len(table.left_by_work) + len(table.left_by_clock)
    bounds = _bounds(table.rows)
    pruned: list[Item] = []
    if slow:
        order = _agg_order(slow, bounds)
        step = max(4 * budget.n_jobs, 8)
        for start in range(0, len(order), step):
            incumbent = _incumbent(table.rows, variants, groups, goal)
            part = [it for it in order[start:start + step] if not _prunable(it, bounds, incumbent, groups,
                                                                               variants, goal)]
            pruned += [it for it in order[start:start + step] if it not in part]
            table.add(part)
    rows = table.rows
    skipped = table.left_by_work + table.left_by_clock
    table_s = time.monotonic() - started
    # 3. solve each mode
    problems = {m: problem_of(rows, variants, groups, m, goal) for m in modes}
    solved: dict[str, list[Solved]] = {}
    stats: dict[str, float | str | None] = {"table_s": round(table_s, 3), "rows": float(len(rows)),
                                            "rows_pruned": float(len(pruned)),
                                            "rows_skipped": float(len(skipped)),
                                            "pd_rows_skipped": float(pd_left), "first_feasible_s": first}
    cuts: list[str] = []
    if table.left_by_clock:
        cuts.append(f"the wall-clock limit ({budget.time_s:g} s) stopped the capacity table at "
                    f"{SAFETY_TABLE * budget.time_s:g} s with "
                    f"{len(table.left_by_clock)} rows left out")
    if table.left_by_work:
        cuts.append(f"the row budget ({budget.rows}) left {len(table.left_by_work)} rows out")
    for m in modes:
        p = problems[m]
        left = max(deadline - time.monotonic(), 0.05)
        offset = time.monotonic() - started
        solved[m] = allocate(p, replace(budget, time_s=left), strategy, top) if p.configs else []
        stats[f"{m}_strategy"] = strategy
        stats[f"{m}_solve_s"] = round(time.monotonic() - started - offset, 3)
        if solved[m]:
            best = solved[m][0]
            at = offset + (best.first_feasible_s if best.first_feasible_s is not None else best.seconds)
            first = at if first is None else min(first, at)
            stats[f"{m}_gap"] = best.gap(p)
            cut = best.notes.get("cut")
            if cut:
                what = "wall-clock limit" if cut == "wall_clock" else "solver work budget"
                gap = stats[f"{m}_gap"]
                cuts.append(f"the {what} stopped the {m} solve before it proved the optimum"
                            + (f" (proven gap {gap * 100:.2f}%)" if isinstance(gap, float) else ""))
        stats[f"{m}_lp_bound_rps"] = _lp_bound_rps(p, _optimistic([it for it in skipped + pruned if it[2] == "agg"],
                                                              bounds, variants) if m == "agg" else [])
    stats["lp_bound_covers"] = "every layout" if not pd_left else "the layouts evaluated"
    stats["cut"] = "; ".join(cuts) if cuts else None
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
