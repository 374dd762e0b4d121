"""Seeded random allocation problems, small enough to enumerate: for solver tests and benchmarks.

Rates and powers are synthetic (they exercise the solvers, not the cost model); shapes follow the
catalog's: powers-of-two nodes, one- or two-node domains, one or two device groups.
"""

from __future__ import annotations

import random

from costmodel.layout import Layout
from searches.placement import Config, Goal, GroupShape, Problem, placeable


def random_problem(seed: int) -> Problem:
    rng = random.Random(seed)
    groups = []
    for gi in range(rng.choice([1, 1, 2])):
        per_node, per_domain, domains = rng.choice([2, 4]), rng.choice([1, 2]), rng.choice([1, 2])
        groups.append(GroupShape(f"dev{gi}", per_domain * domains, per_node, per_domain, rng.choice([1.0, 2.5])))
    mode = rng.choice(["agg", "disagg"])
    configs = []
    for gi, g in enumerate(groups):
        for role in ("agg",) if mode == "agg" else ("prefill", "decode"):
            for _ in range(rng.randint(1, 2)):
                lay = Layout(tp=rng.choice([1, 2, 4]), pp=rng.choice([1, 1, 2]))
                rate = rng.randint(1000, 9000) * lay.instance_devices
                out = int(rate * rng.choice([1.0, 0.8, 0.6])) if role == "prefill" else rate
                c = Config(role, gi, lay, rate, out, power_w=rng.randint(300, 900) * lay.instance_devices)
                if placeable(c, g):
                    configs.append(c)
    kind = rng.choice(["goodput", "devices", "energy", "cost"])
    target = 0 if kind == "goodput" else rng.randint(1000, 20000)
    return Problem(tuple(groups), tuple(configs), mode, Goal(kind, target))
