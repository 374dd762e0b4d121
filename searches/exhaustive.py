"""Exhaustive search: evaluate every layout (in parallel with joblib), stop at the time budget."""

from __future__ import annotations

import time

from joblib import Parallel, delayed

from searches.base import Budget, Evaluated, Objective, register
from searches.space import Space

CHUNK = 32


@register("exhaustive")
def exhaustive(space: Space, objective: Objective, budget: Budget) -> list[Evaluated]:
    layouts = space.layouts()
    deadline = time.monotonic() + budget.time_s
    out: list[Evaluated] = []
    with Parallel(n_jobs=budget.n_jobs) as pool:
        for start in range(0, len(layouts), CHUNK):
            out += pool(delayed(objective)(lay) for lay in layouts[start:start + CHUNK])
            if time.monotonic() > deadline:
                break
    return out
