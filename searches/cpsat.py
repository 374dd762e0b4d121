"""CP-SAT allocation and placement (OR-Tools `ortools.sat.python.cp_model`).

One integer model per `Problem` (see searches/placement.py for the rules it encodes):
- `use[i]` (bool) picks config i; at most one per pool; `total[i] >= use[i]` and
  `total[i] <= most * use[i]` tie instances to the pick;
- `n[i,k]` instances of an in-domain config in domain k, `m[i,k]` chunks of a cross-domain one,
  `sum_k m[i,k] = chunks * total[i]`;
- per domain, small instances fill `small[g,k]` nodes (`dpn * small >= devices`, exact because
  instance sizes divide the node), and small + whole-node instances + chunks fit the domain;
- goodput: agg sums the rates; disagg rate-matches with flows - `f[g,k]` served inside domain k
  (at most the local senders' rate and the domain's decode rate), the rest shipped over the
  network (at most the remote senders' rate), all of it at most the decode pool's rate.
The objective is `placement.objective_value`, the integer every strategy maximises. With one
worker and a fixed seed, and a deterministic-time limit (CP-SAT's own work units), the search is the
same on any machine; it stops at that limit (or at the wall-clock safety limit, which is then
reported) with the best solution found and CP-SAT's bound on the optimum (the gap). Runner-up plans come from re-solving
with a cut that forbids each earlier choice of configs.
"""

from __future__ import annotations

import time

from ortools.sat.python import cp_model

from searches.allocate import Solved, register
from searches.base import Budget
from searches.placement import Allocation, Problem, chunks_of, evaluate, nodes_of


class _FirstSolution(cp_model.CpSolverSolutionCallback):
    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started
        self.first: float | None = None

    def on_solution_callback(self) -> None:
        if self.first is None:
            self.first = time.monotonic() - self.started


class Model:
    """The CP-SAT model of a problem, kept so runner-ups can be found by adding cuts."""

    def __init__(self, problem: Problem) -> None:
        self.problem = p = problem
        self.m = m = cp_model.CpModel()
        cfg = p.configs
        self.use = [m.new_bool_var(f"use{i}") for i in range(len(cfg))]
        self.n: dict[tuple[int, int], cp_model.IntVar] = {}
        self.local: dict[tuple[int, int], cp_model.IntVar] = {}
        self.total: list[cp_model.LinearExprT] = []
        self.cross: dict[int, cp_model.IntVar] = {}
        for i, c in enumerate(cfg):
            g = p.shape(i)
            if p.kind(i) == "cross":
                per = g.domain_nodes // nodes_of(c, g)
                for k in range(g.num_domains):
                    self.n[(i, k)] = m.new_int_var(0, per, f"m{i}_{k}")
                most = per * g.num_domains // chunks_of(c, g)
                self.cross[i] = m.new_int_var(0, most, f"N{i}")
                m.add(sum(self.n[(i, k)] for k in range(g.num_domains)) == chunks_of(c, g) * self.cross[i])
                total: cp_model.LinearExprT = self.cross[i]
            else:
                per = g.domain_devices // c.devices if p.kind(i) == "small" else g.domain_nodes // nodes_of(c, g)
                for k in range(g.num_domains):
                    self.n[(i, k)] = m.new_int_var(0, per, f"n{i}_{k}")
                most = per * g.num_domains
                total = sum(self.n[(i, k)] for k in range(g.num_domains))
            m.add(total <= most * self.use[i])
            m.add(total >= self.use[i])
            self.total.append(total)
        for members in p.pools().values():
            m.add_at_most_one(self.use[i] for i in members)
        self._domains()
        self.goodput = self._goodput()
        devices = sum(c.devices * self.total[i] for i, c in enumerate(cfg))
        m.add(self.goodput >= max(p.goal.target, 1))  # an allocation that carries nothing is no plan
        if p.goal.kind == "goodput":
            self.objective = self.goodput * (p.total_devices + 1) - devices
        else:
            primary = {"devices": devices,
                       "energy": sum(round(c.power_w) * self.total[i] for i, c in enumerate(cfg)),
                       "cost": sum(p.price_milli(i) * self.total[i] for i in range(len(cfg)))}[p.goal.kind]
            self.objective = self.goodput - primary * (p.max_goodput + 1)
        m.maximize(self.objective)

    def _domains(self) -> None:
        p, m = self.problem, self.m
        for gi, g in enumerate(p.groups):
            for k in range(g.num_domains):
                small = [(i, c) for i, c in enumerate(p.configs) if c.group == gi and p.kind(i) == "small"]
                whole = [(i, c) for i, c in enumerate(p.configs) if c.group == gi and p.kind(i) != "small"]
                nodes = m.new_int_var(0, g.domain_nodes, f"small{gi}_{k}")
                m.add(g.devices_per_node * nodes >= sum(c.devices * self.n[(i, k)] for i, c in small))
                m.add(nodes + sum(nodes_of(c, g) * self.n[(i, k)] for i, c in whole) <= g.domain_nodes)

    def _goodput(self) -> cp_model.IntVar:
        p, m = self.problem, self.m
        cfg = p.configs
        g_var = m.new_int_var(0, p.max_goodput, "goodput")
        if p.mode == "agg":
            m.add(g_var == sum(c.rate * self.total[i] for i, c in enumerate(cfg)))
            return g_var
        decode_total = sum(c.rate * self.total[i] for i, c in enumerate(cfg) if c.role == "decode")
        remote = []
        local_flows = []
        for i, c in enumerate(cfg):
            if c.role != "prefill":
                continue
            sent_local = []
            if p.kind(i) != "cross" and c.rate > c.rate_out:
                g = p.shape(i)
                for k in range(g.num_domains):
                    decoders = [(j, d) for j, d in enumerate(cfg) if d.role == "decode" and d.group == c.group
                                and p.kind(j) != "cross"]
                    if not decoders:
                        continue
                    u = m.new_int_var(0, g.domain_devices // c.devices, f"local{i}_{k}")
                    m.add(u <= self.n[(i, k)])
                    self.local[(i, k)] = u
                    sent_local.append(u)
                    f = m.new_int_var(0, p.max_goodput, f"flow{i}_{k}")
                    m.add(f <= c.rate * u)
                    m.add(f <= sum(d.rate * self.n[(j, k)] for j, d in decoders))
                    local_flows.append(f)
            remote.append(c.rate_out * (self.total[i] - sum(sent_local)))
        m.add(g_var <= sum(local_flows) + sum(remote))
        m.add(g_var <= decode_total)
        return g_var

    def forbid(self, chosen: frozenset[int]) -> None:
        """Cut off exactly this choice of configs (so the next solve finds a different plan)."""
        inside = [self.use[i] for i in chosen]
        outside = [self.use[i] for i in range(len(self.use)) if i not in chosen]
        self.m.add(sum(inside) - sum(outside) <= len(inside) - 1)

    def hint(self, alloc: Allocation) -> None:
        self.m.clear_hints()
        chosen = alloc.chosen(self.problem)
        for i, v in enumerate(self.use):
            self.m.add_hint(v, i in chosen)
        for key, var in self.n.items():
            self.m.add_hint(var, alloc.counts.get(key, 0))
        for i, var in self.cross.items():
            self.m.add_hint(var, alloc.cross.get(i, 0))
        for key, var in self.local.items():
            self.m.add_hint(var, alloc.local.get(key, 0))

    def solve(self, work: float, time_s: float, seed: int, workers: int = 1) -> tuple[Solved | None, str]:
        """Solve with `work` units of CP-SAT's deterministic time (the answer depends on it, not on the
        machine's speed) and `time_s` of wall clock as a safety limit; notes["cut"] says which stopped it."""
        solver = cp_model.CpSolver()
        solver.parameters.max_deterministic_time = max(work, 0.01)
        solver.parameters.max_time_in_seconds = max(time_s, 0.01)
        solver.parameters.num_workers = workers
        solver.parameters.random_seed = seed
        started = time.monotonic()
        first = _FirstSolution(started)
        status = solver.solve(self.m, first)
        seconds = time.monotonic() - started
        name = solver.status_name(status)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None, name
        counts = {key: int(solver.value(v)) for key, v in self.n.items() if solver.value(v)}
        cross = {i: int(solver.value(v)) for i, v in self.cross.items() if solver.value(v)}
        local = {key: int(solver.value(v)) for key, v in self.local.items() if solver.value(v)}
        alloc = Allocation(counts, cross, local)
        value = evaluate(self.problem, alloc)
        bound = float(solver.best_objective_bound)
        notes: dict[str, float | str] = {"status": name, "conflicts": float(solver.num_conflicts),
                                         "work": float(solver.deterministic_time)}
        if status != cp_model.OPTIMAL:
            notes["cut"] = "work" if solver.deterministic_time >= 0.99 * work else "wall_clock"
        return Solved(alloc, value, "cpsat", seconds, bound, status == cp_model.OPTIMAL, first.first, notes), name


RUNNER_UP_WORK = 0.25  # of the winner's solver work each runner-up solve gets


def solve_top(problem: Problem, budget: Budget, top: int, hint: Allocation | None = None) -> list[Solved]:
    """The best allocation and up to `top - 1` runner-ups with other config choices: the winner gets
    `budget.solver_work`, each runner-up a quarter of it; `budget.time_s` bounds the wall clock of all."""
    started = time.monotonic()
    model = Model(problem)
    out: list[Solved] = []
    for rank in range(top):
        left = budget.time_s - (time.monotonic() - started)
        if left <= 0:
            break
        if rank == 0 and hint is not None:
            model.hint(hint)
        work = budget.solver_work * (1.0 if rank == 0 else RUNNER_UP_WORK)
        solved, _ = model.solve(work, left, budget.seed)
        if solved is None:
            break
        out.append(solved)
        model.forbid(solved.allocation.chosen(problem))
    return out


@register("cpsat")
def cpsat(problem: Problem, budget: Budget, top: int) -> list[Solved]:
    from searches.heuristic import greedy  # a quick feasible start for the hint

    start = greedy(problem)
    found = solve_top(problem, budget, top, start.allocation if start is not None else None)
    if start is not None and (not found or not found[0].optimal):  # a cut-short solve never loses its hint
        found.append(Solved(start.allocation, start.value, "cpsat", start.seconds, found[0].bound if found else None,
                            False, start.first_feasible_s, dict(found[0].notes) if found else {"cut": "wall_clock"}))
    return found
