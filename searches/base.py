"""The one search interface: `search(space, objective, budget) -> ranked candidates`.

An objective maps a layout to an `Evaluated` (score: higher is better; feasible or not, and
why). Strategies register under a name; every one is deterministic for a seed, honours the
time budget and returns the best found so far when it runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from costmodel.layout import Layout
from searches.space import Space


@dataclass(frozen=True)
class Evaluated:
    layout: Layout
    score: float
    feasible: bool
    metrics: dict[str, float] = field(default_factory=dict)
    binding: str = ""  # the constraint that binds (memory, ttft_ms, tpot_ms, devices) or ""
    detail: str = ""  # one sentence on why
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    """What a search may spend. The work limits (`rows`, `solver_work`, `steps`) decide the answer, so
    the same seed gives the same plans on a fast or a loaded machine; `time_s` is wall clock, an outer
    safety limit only, and a search reports when it bit."""

    time_s: float = 60.0
    seed: int = 0
    n_jobs: int = 1
    backend: str = "loky"  # joblib backend for candidate evaluation: loky, threading, or ray (extra [ray])
    rows: int | None = None  # capacity-table rows at most (None: every row the bounds do not prune)
    solver_work: float = 5.0  # CP-SAT deterministic time per solve (its work units, about seconds on one core)
    steps: int = 20_000  # simulated-annealing moves
    address: str | None = None  # Ray cluster to join (backend="ray"); None: a running or local instance


class Objective(Protocol):
    def __call__(self, layout: Layout) -> Evaluated: ...


Strategy = Callable[[Space, Objective, Budget], list[Evaluated]]
STRATEGIES: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    def wrap(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn
    return wrap


def rank(evaluated: list[Evaluated]) -> list[Evaluated]:
    """Feasible first, by score (higher first); ties broken by fewer devices, then layout label."""
    return sorted(evaluated, key=lambda e: (not e.feasible, -e.score,
                                            e.layout.instance_devices, e.layout.label()))


def search(space: Space, objective: Objective, budget: Budget | None = None,
           strategy: str = "exhaustive") -> list[Evaluated]:
    if strategy not in STRATEGIES:
        raise ValueError(f"search strategy '{strategy}' is unknown; use one of {', '.join(sorted(STRATEGIES))}")
    return rank(STRATEGIES[strategy](space, objective, budget or Budget()))
