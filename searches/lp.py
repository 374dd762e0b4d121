"""Linear programs (OR-Tools GLOP, or PDLP for very large ones): a fast upper bound, the
prefill/decode ratio planner, LP-rounding plans, and Melange's heterogeneous-fleet question.

The relaxation drops what makes allocation hard - whole instances, one layout per pool, domains
and nodes - and keeps each device group's device count and rate matching. Its optimum bounds
every integer plan (goodput from above; devices, energy or cost from below), and its fractional
pool sizes are the prefill:decode ratio DistServe balances by hand.

Melange (Griggs et al., 2024, arXiv 2404.14527) asks which device types should serve which
request-size buckets at the least cost while every bucket's load is met under the SLO: choose
instances per type and the share of each bucket each type serves, a type's load (bucket rate
over the per-instance rate it manages for that bucket) within its instances.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from hardware.errors import PlannerInputError
from searches.allocate import Solved, register
from searches.base import Budget
from searches.heuristic import _fill, pack
from searches.placement import Problem, evaluate

PDLP_ABOVE = 20_000  # variables past which the first-order PDLP solver replaces simplex (GLOP)


@dataclass(frozen=True)
class Relaxation:
    """The fractional optimum: goodput, the goal's own quantity, and instances per config."""

    goodput: float  # UNIT_RPS
    primary: float  # devices, watts or milli-USD per hour for min goals; goodput for the goodput goal
    instances: dict[int, float]
    feasible: bool

    def objective_bound(self, problem: Problem) -> float:
        """A bound on `placement.objective_value` (which every strategy maximises)."""
        if problem.goal.kind == "goodput":
            return self.goodput * (problem.total_devices + 1)
        return problem.max_goodput - self.primary * (problem.max_goodput + 1)

    def ratio(self, problem: Problem) -> float | None:
        """Prefill instances per decode instance at the fractional optimum (disagg only)."""
        pre = sum(n for i, n in self.instances.items() if problem.configs[i].role == "prefill")
        dec = sum(n for i, n in self.instances.items() if problem.configs[i].role == "decode")
        return pre / dec if dec > 0 else None


def _solver(size: int) -> pywraplp.Solver:
    return pywraplp.Solver.CreateSolver("PDLP" if size > PDLP_ABOVE else "GLOP")


def relax(problem: Problem) -> Relaxation:
    """Solve the LP relaxation of `problem`."""
    cfg = problem.configs
    s = _solver(len(cfg))
    x = [s.NumVar(0, problem.groups[c.group].num_devices / c.devices, f"x{i}") for i, c in enumerate(cfg)]
    for gi, g in enumerate(problem.groups):
        s.Add(sum(c.devices * x[i] for i, c in enumerate(cfg) if c.group == gi) <= g.num_devices)
    good = s.NumVar(0, s.infinity(), "goodput")
    if problem.mode == "agg":
        s.Add(good <= sum(c.rate * x[i] for i, c in enumerate(cfg)))
    else:
        s.Add(good <= sum(max(c.rate, c.rate_out) * x[i] for i, c in enumerate(cfg) if c.role == "prefill"))
        s.Add(good <= sum(c.rate * x[i] for i, c in enumerate(cfg) if c.role == "decode"))
    if problem.goal.target:
        s.Add(good >= problem.goal.target)
    if problem.goal.kind == "goodput":
        s.Maximize(good)
        primary = None
    else:
        primary = {"devices": sum(c.devices * x[i] for i, c in enumerate(cfg)),
                   "energy": sum(round(c.power_w) * x[i] for i, c in enumerate(cfg)),
                   "cost": sum(problem.price_milli(i) * x[i] for i in range(len(cfg)))}[problem.goal.kind]
        s.Minimize(primary)
    status = s.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return Relaxation(0.0, math.inf, {}, False)
    inst = {i: v.solution_value() for i, v in enumerate(x) if v.solution_value() > 1e-9}
    value = s.Objective().Value()
    return Relaxation(good.solution_value(), value, inst, True)


@register("lp")
def lp(problem: Problem, budget: Budget, top: int) -> list[Solved]:
    """LP rounding: the relaxation's biggest config per pool, floored, packed, then filled greedily."""
    started = time.monotonic()
    rel = relax(problem)
    if not rel.feasible:
        return []
    picks: dict[tuple[str, int], int] = {}
    for i in sorted(rel.instances, key=lambda i: -rel.instances[i]):
        picks.setdefault(problem.pool(i), i)
    start = {i: math.floor(rel.instances[i]) for i in picks.values()}
    while start and pack(problem, start) is None:  # rounding down can still overfill a domain
        biggest = max(start, key=lambda i: start[i] * problem.configs[i].devices)
        start[biggest] -= 1
    totals = _fill(problem, list(picks.values()), start)
    alloc = pack(problem, totals)
    if alloc is None:
        return []
    value = evaluate(problem, alloc)
    seconds = time.monotonic() - started
    ratio = rel.ratio(problem)
    return [Solved(alloc, value, "lp", seconds, rel.objective_bound(problem), False, seconds,
                   {"lp_goodput_rps": rel.goodput * 1e-4, **({"pd_ratio": ratio} if ratio is not None else {})})]


# ---- Melange: device types per request-size bucket --------------------------------------------------
@dataclass(frozen=True)
class Offer:
    """A device type offered as instances of one layout: price per instance-hour and how many exist."""

    name: str
    price_per_hour: float
    available: float = math.inf


@dataclass(frozen=True)
class Mix:
    """Instances per offer (fractional LP optimum and the rounded-up integer plan) and bucket shares."""

    instances: dict[str, float]
    integer: dict[str, int]
    share: list[dict[str, float]]  # per bucket: offer -> share of its requests
    cost_per_hour: float  # of the LP optimum (a lower bound)
    integer_cost_per_hour: float


def melange(demand_rps: Sequence[float], capacity_rps: Sequence[Sequence[float]], offers: Sequence[Offer]) -> Mix:
    """Least-cost mix of `offers` serving every bucket's `demand_rps`; `capacity_rps[b][t]` is what one
    instance of offer t carries of bucket b under the SLO (0 when it cannot meet it)."""
    if len(capacity_rps) != len(demand_rps) or any(len(row) != len(offers) for row in capacity_rps):
        raise PlannerInputError("capacity_rps: give one row per bucket with one rate per offer")
    for b, row in enumerate(capacity_rps):
        if demand_rps[b] > 0 and not any(r > 0 for r in row):
            raise PlannerInputError(f"bucket {b}: no device type meets the SLO for these requests; relax the "
                                    "SLO or add a faster device type")
    s = _solver(len(offers) * (len(demand_rps) + 1))
    n = [s.NumVar(0, o.available if math.isfinite(o.available) else s.infinity(), o.name) for o in offers]
    share = [[s.NumVar(0, 1 if r > 0 else 0, f"a{b}_{t}") for t, r in enumerate(row)]
             for b, row in enumerate(capacity_rps)]
    for row in share:
        s.Add(sum(row) == 1)
    for t in range(len(offers)):
        s.Add(sum(share[b][t] * (demand_rps[b] / capacity_rps[b][t]) for b in range(len(demand_rps))
                  if capacity_rps[b][t] > 0) <= n[t])
    s.Minimize(sum(o.price_per_hour * n[t] for t, o in enumerate(offers)))
    if s.Solve() != pywraplp.Solver.OPTIMAL:
        raise PlannerInputError("offers: the available instances cannot carry the demand; add instances "
                                "or lower the demand")
    frac = {o.name: n[t].solution_value() for t, o in enumerate(offers)}
    integer = {name: math.ceil(v - 1e-6) for name, v in frac.items()}
    return Mix(frac, integer, [{o.name: share[b][t].solution_value() for t, o in enumerate(offers)}
                               for b in range(len(demand_rps))],
               s.Objective().Value(), sum(o.price_per_hour * integer[o.name] for o in offers))
