"""Goodput: the highest arrival rate whose simulated SLO attainment meets a target (bisection)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from costmodel.simulator.result import SimResult
from costmodel.simulator.run import Setup, run
from costmodel.workload_dist import Draw

EXPANSIONS = 6  # doublings of the upper bracket before giving up


@dataclass(frozen=True)
class Goodput:
    """Result of a goodput search; `rate_rps` is for the whole deployment (all replicas)."""

    rate_rps: float
    attainment: float  # at rate_rps
    target: float
    rel_tol: float
    evaluations: tuple[tuple[float, float | None], ...]  # (rate, attainment; None when stopped early)
    seconds: float
    result: SimResult | None  # the run at rate_rps

    def as_dict(self) -> dict[str, object]:
        return {"goodput_rps": round(self.rate_rps, 4), "attainment": round(self.attainment, 4),
                "target": self.target, "rel_tol": self.rel_tol, "seconds": round(self.seconds, 3),
                "evaluations": [[round(r, 4), None if a is None else round(a, 4)] for r, a in self.evaluations]}


def find_goodput(s: Setup, draw: Draw, slo_ms: dict[str, float], target: float = 0.9, hint_rps: float = 1.0,
                 rel_tol: float = 0.02, on_eval: Callable[[float, float | None], None] | None = None) -> Goodput:
    """Bisection on the rate between 0 and a bracket grown from `hint_rps` until attainment fails.

    The same requests (lengths and unit-rate arrival pattern) are replayed at every rate, so
    attainment falls with rate as it should. A run stops as soon as too many requests missed the
    SLO for the target to be reachable. The answer is within `rel_tol` (relative); a goodput below
    `rel_tol` x `hint_rps` is reported as 0 (the SLO is missed even nearly unloaded)."""
    started = time.monotonic()
    limit = math.floor((1.0 - target) * draw.n + 1e-9)
    evals: list[tuple[float, float | None]] = []
    passed: dict[float, SimResult] = {}

    def ok(rate: float) -> bool:
        res = run(s, draw, rate, slo_ms, fail_limit=limit)
        att = None if res.stopped_early else res.attainment(slo_ms)
        evals.append((rate, att))
        if on_eval is not None:
            on_eval(rate, att)
        good = att is not None and att >= target
        if good:
            passed[rate] = res
        return good

    hi = max(hint_rps, 1e-6)
    lo = 0.0
    for _ in range(EXPANSIONS):
        if not ok(hi):
            break
        lo, hi = hi, hi * 2
    else:
        best = passed[lo]
        return Goodput(lo, best.attainment(slo_ms), target, rel_tol, tuple(evals), time.monotonic() - started, best)
    floor = max(hint_rps, 1e-6) * rel_tol  # below this share of the bracket, goodput counts as zero
    while hi - lo > rel_tol * hi and not (lo == 0.0 and hi < floor):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    if lo == 0.0:  # even a trickle misses the SLO
        return Goodput(0.0, 0.0, target, rel_tol, tuple(evals), time.monotonic() - started, None)
    best = passed[lo]
    return Goodput(lo, best.attainment(slo_ms), target, rel_tol, tuple(evals), time.monotonic() - started, best)
