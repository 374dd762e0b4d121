"""Parallel candidate evaluation: joblib processes here, or a Ray cluster through joblib's Ray backend.

`backend="ray"` needs the `[ray]` extra; it registers Ray's joblib backend
(`ray.util.joblib.register_ray`) and runs the same calls as Ray tasks on whatever cluster
`ray.init()` connected to (`address`, or a local instance when none is running). Results come back in input order,
so a search is the same whichever backend ran it. Work is sent in chunks and stops between chunks
once the deadline has passed: the caller gets the results finished so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from joblib import Parallel, delayed, parallel_backend

from hardware.errors import PlannerInputError

T = TypeVar("T")
R = TypeVar("R")
BACKENDS = ("loky", "threading", "ray")


def _ray_backend(address: str | None = None) -> None:
    try:
        import ray
        from ray.util.joblib import register_ray
    except ImportError:
        raise PlannerInputError("backend='ray' needs Ray; install the extra with pip install "
                                "'llm-planner[ray]' or use backend='loky'") from None
    if not ray.is_initialized():  # join the cluster at `address`, or start a local instance
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    register_ray()


def parallel_map(fn: Callable[[T], R], items: Sequence[T], n_jobs: int = 1, backend: str = "loky",
                 deadline: float | None = None, chunk: int = 32, address: str | None = None) -> list[R]:
    """`[fn(x) for x in items]` on `n_jobs` workers, in order, stopping between chunks after `deadline`
    (a `time.monotonic()` instant)."""
    if backend not in BACKENDS:
        raise PlannerInputError(f"backend '{backend}' is unknown; use one of {', '.join(BACKENDS)}")
    if backend == "ray":
        _ray_backend(address)
    out: list[R] = []
    if n_jobs == 1 and backend != "ray":
        for x in items:
            out.append(fn(x))
            if deadline is not None and time.monotonic() > deadline:
                break
        return out
    with parallel_backend(backend, n_jobs=n_jobs), Parallel() as pool:
        for start in range(0, len(items), chunk):
            out += pool(delayed(fn)(x) for x in items[start:start + chunk])
            if deadline is not None and time.monotonic() > deadline:
                break
    return out
