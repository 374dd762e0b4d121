"""Heterogeneous sequence-parallel groups for a batch of prompts of mixed lengths (FlexSP-style MILP).

One static SP degree is a poor fit for a long-tailed length mix: a degree big enough for the longest
prompts wastes devices on the short ones (per-rank shards too small to keep a device busy, plus the
SP traffic), a small one cannot hold the long prompts or makes them the makespan. As FlexSP
(Wang et al., ASPLOS'25, arXiv 2412.01523) does for training, a MILP picks how many SP groups of
each degree to form from the devices and which length buckets each group prefills, to minimise the
makespan under the memory limit (a bucket may only go to a degree whose ranks hold its prompts).

    min T
    s.t. sum_{d,j} d y[d,j] <= N                      (devices; y[d,j] = group j of degree d is formed)
         sum_{d,j} x[b,d,j] = n_b                     (every prompt of bucket b is prefilled)
         x[b,d,j] <= n_b y[d,j]                       (only formed groups get work)
         T >= sum_b x[b,d,j] t(b, d)                  (each group runs its prompts one after another)
         y[d,j] >= y[d,j+1], load[d,j] >= load[d,j+1] (symmetry: groups of one degree are interchangeable)
         x[b,d,j] = 0 where degree d cannot hold bucket b's prompts

x is integer, y binary; solved with OR-Tools' linear solver (SCIP, else CBC). Times and memory fit
come from the cost model (`problem_for`), or any table for tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ortools.linear_solver import pywraplp

from costmodel import sp
from costmodel.instance import Instance
from hardware.errors import PlannerInputError


@dataclass(frozen=True)
class Bucket:
    """`count` prompts of (about) `length` tokens."""

    length: int
    count: int


@dataclass(frozen=True)
class SPProblem:
    """Buckets to prefill on `devices` devices (in SP ranks) with SP groups of the given degrees.

    `time_s[b][i]` is the prefill latency of one prompt of bucket b on a group of degree
    `degrees[i]`; `fits[b][i]` whether such a group's ranks hold it.
    """

    buckets: tuple[Bucket, ...]
    devices: int
    degrees: tuple[int, ...]
    time_s: tuple[tuple[float, ...], ...]
    fits: tuple[tuple[bool, ...], ...]

    def __post_init__(self) -> None:
        if self.devices < 1 or not self.degrees or min(self.degrees) < 1:
            raise PlannerInputError("SP problem: give at least one device and degrees of 1 or more")
        shape = (len(self.buckets), len(self.degrees))
        for name, table in (("time_s", self.time_s), ("fits", self.fits)):
            if len(table) != shape[0] or any(len(row) != shape[1] for row in table):
                raise PlannerInputError(f"SP problem: {name} must be one row per bucket, one column per degree")
        for b, row in zip(self.buckets, self.fits, strict=True):
            if b.count > 0 and not any(ok and d <= self.devices for ok, d in zip(row, self.degrees, strict=True)):
                raise PlannerInputError(f"SP problem: no SP degree up to {self.devices} devices holds a "
                                        f"{b.length}-token prompt; add devices or allow larger degrees")


@dataclass(frozen=True)
class SPSplit:
    """Groups formed (their degrees) and how many prompts of each bucket each group prefills."""

    groups: tuple[int, ...]
    assignment: tuple[tuple[int, ...], ...]  # [group][bucket] prompt counts
    makespan_s: float
    bound_s: float  # the solver's proven lower bound on the makespan (= makespan_s when optimal)
    optimal: bool  # proven optimal; False = the time limit stopped the solver first

    @property
    def devices(self) -> int:
        return sum(self.groups)

    def label(self) -> str:
        counts = {d: self.groups.count(d) for d in sorted(set(self.groups), reverse=True)}
        return " + ".join(f"{n} x sp{d}" for d, n in counts.items())


def group_loads(problem: SPProblem, groups: Sequence[int], assignment: Sequence[Sequence[int]]) -> list[float]:
    """Seconds each group spends on its prompts."""
    col = {d: i for i, d in enumerate(problem.degrees)}
    return [sum(n * problem.time_s[b][col[d]] for b, n in enumerate(row)) for d, row in zip(groups, assignment,
                                                                                           strict=True)]


def solve(problem: SPProblem, allowed: Iterable[int] | None = None, time_limit_s: float = 30.0) -> SPSplit:
    """The makespan-optimal split (within the solver's limit), over `allowed` degrees (default: all)."""
    degrees = [d for d in problem.degrees if allowed is None or d in set(allowed)]
    col = {d: problem.degrees.index(d) for d in degrees}
    solver = pywraplp.Solver.CreateSolver("SCIP") or pywraplp.Solver.CreateSolver("CBC")
    if solver is None:
        raise RuntimeError("OR-Tools has neither SCIP nor CBC; reinstall ortools")
    solver.SetTimeLimit(int(time_limit_s * 1000))
    horizon = sum(b.count * max((t for t, ok in zip(problem.time_s[i], problem.fits[i], strict=True) if ok),
                                default=0.0) for i, b in enumerate(problem.buckets))
    makespan = solver.NumVar(0.0, max(horizon, 1e-9), "makespan")
    slots = [(d, j) for d in degrees for j in range(problem.devices // d)]
    y = {s: solver.BoolVar(f"y_{s[0]}_{s[1]}") for s in slots}
    x: dict[tuple[int, int, int], pywraplp.Variable] = {}
    for b, bucket in enumerate(problem.buckets):
        for d, j in slots:
            if problem.fits[b][col[d]] and bucket.count > 0:
                x[b, d, j] = solver.IntVar(0, bucket.count, f"x_{b}_{d}_{j}")
                solver.Add(x[b, d, j] <= bucket.count * y[d, j])
    solver.Add(sum(d * y[d, j] for d, j in slots) <= problem.devices)
    for b, bucket in enumerate(problem.buckets):
        if bucket.count > 0:
            terms = [v for (bb, _, _), v in x.items() if bb == b]
            if not terms:
                raise PlannerInputError(f"SP problem: no allowed degree holds the {bucket.length}-token prompts")
            solver.Add(sum(terms) == bucket.count)
    load = {(d, j): sum(x[b, d, j] * problem.time_s[b][col[d]] for b in range(len(problem.buckets))
                        if (b, d, j) in x) for d, j in slots}
    for d, j in slots:
        solver.Add(makespan >= load[d, j])
        if j > 0:  # groups of one degree are interchangeable: form them, and load them, in order
            solver.Add(y[d, j - 1] >= y[d, j])
            solver.Add(load[d, j - 1] >= load[d, j])
    # valid cuts that tighten the LP bound: the devices must supply every prompt's cheapest
    # device-seconds, and no group finishes before the slowest prompt at its best degree
    best = [[d * problem.time_s[b][col[d]] for d in degrees if problem.fits[b][col[d]]]
            for b in range(len(problem.buckets))]
    solver.Add(problem.devices * makespan >= sum(bucket.count * min(c) for bucket, c in zip(problem.buckets, best,
                                                                                          strict=True) if c))
    for b, bucket in enumerate(problem.buckets):
        fast = [problem.time_s[b][col[d]] for d in degrees if problem.fits[b][col[d]]]
        if bucket.count and fast:
            solver.Add(makespan >= min(fast))
    solver.Minimize(makespan)
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        raise PlannerInputError("SP problem: the prompts fit no split of the devices; add devices or degrees")
    groups, rows = [], []
    for d, j in slots:
        if y[d, j].solution_value() > 0.5:
            groups.append(d)
            rows.append(tuple(round(x[b, d, j].solution_value()) if (b, d, j) in x else 0
                              for b in range(len(problem.buckets))))
    split = _split(problem, groups, rows)
    bound = solver.Objective().BestBound() if status == pywraplp.Solver.FEASIBLE else split.makespan_s
    return replace(split, bound_s=min(bound, split.makespan_s), optimal=status == pywraplp.Solver.OPTIMAL)


def _split(problem: SPProblem, groups: Sequence[int], rows: Sequence[Sequence[int]]) -> SPSplit:
    loads = group_loads(problem, groups, rows)
    makespan = max(loads, default=0.0)
    return SPSplit(tuple(groups), tuple(tuple(r) for r in rows), makespan, makespan, True)


def best_static(problem: SPProblem, time_limit_s: float = 30.0) -> tuple[int, SPSplit]:
    """The best single SP degree: every group of one degree, prompts placed optimally among them."""
    best: tuple[int, SPSplit] | None = None
    for d in problem.degrees:
        if d > problem.devices or not all(problem.fits[b][problem.degrees.index(d)]
                                          for b, bucket in enumerate(problem.buckets) if bucket.count):
            continue
        split = solve(problem, allowed=(d,), time_limit_s=time_limit_s)
        if best is None or split.makespan_s < best[1].makespan_s:
            best = (d, split)
    if best is None:
        raise PlannerInputError("SP problem: no single degree holds every prompt; allow larger degrees")
    return best


def _partitions(devices: int, degrees: Sequence[int]) -> Iterable[tuple[int, ...]]:
    """Every multiset of degrees whose sum is at most `devices`, largest first."""
    def grow(left: int, top: int) -> Iterable[tuple[int, ...]]:
        yield ()
        for d in sorted(degrees, reverse=True):
            if d <= min(left, top):
                for rest in grow(left - d, d):
                    yield (d, *rest)
    return (p for p in grow(devices, max(degrees)) if p)


def brute_force(problem: SPProblem) -> SPSplit:
    """Exhaustive reference for small problems: every group multiset, every prompt-to-group mapping."""
    prompts = [b for b, bucket in enumerate(problem.buckets) for _ in range(bucket.count)]
    col = {d: i for i, d in enumerate(problem.degrees)}
    best: SPSplit | None = None
    for groups in _partitions(problem.devices, problem.degrees):
        for choice in itertools.product(range(len(groups)), repeat=len(prompts)):
            if any(not problem.fits[b][col[groups[g]]] for b, g in zip(prompts, choice, strict=True)):
                continue
            rows = [[0] * len(problem.buckets) for _ in groups]
            for b, g in zip(prompts, choice, strict=True):
                rows[g][b] += 1
            split = _split(problem, groups, rows)
            if best is None or split.makespan_s < best.makespan_s - 1e-12:
                best = split
    if best is None:
        raise PlannerInputError("SP problem: the prompts fit no split of the devices")
    return best


def problem_for(inst: Instance, buckets: Sequence[Bucket], ranks: int, degrees: Sequence[int] | None = None,
                method: str = "auto") -> SPProblem:
    """An SP problem whose ranks are copies of `inst` (its layout's devices each): prefill times and
    memory fit of every bucket at every degree from the cost model (`costmodel.sp`)."""
    if ranks < 1:
        raise PlannerInputError(f"ranks={ranks} must be at least 1 copy of the instance's layout")
    degs = tuple(degrees) if degrees else tuple(2**i for i in range(int(math.log2(ranks)) + 1))
    times = tuple(tuple(sp.prefill_s(inst, b.length, d, method) for d in degs) for b in buckets)
    fits = tuple(tuple(sp.prefill_fits(inst, b.length, d) for d in degs) for b in buckets)
    return SPProblem(tuple(buckets), ranks, degs, times, fits)
