"""Exact Pareto fronts (non-dominated sets) of plans over two metrics.

A point dominates another when it is at least as good on both metrics and strictly better on one;
the front keeps every point nothing dominates, ties included (two plans with equal metrics are
both on it). Whether a metric is better low or high comes from `HIGHER_IS_BETTER`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from itertools import groupby
from typing import Any, TypeVar

from hardware.errors import PlannerInputError

T = TypeVar("T")

HIGHER_IS_BETTER = frozenset({
    "output_tok_s", "output_tok_s_per_device", "tok_s_per_user", "goodput_rps", "goodput_rps_per_instance",
    "requests_per_s", "score", "max_running", "decode_batch",
})

# The fronts every report shows: (x, y), both read with their own sense.
STANDARD_FRONTS: tuple[tuple[str, str], ...] = (
    ("tpot_ms", "energy_j_per_token"),
    ("ttft_ms", "energy_j_per_token"),
    ("tok_s_per_user", "output_tok_s_per_device"),
    ("tpot_ms", "cost_per_mtok"),
)


def metric(point: Any, key: str) -> float | None:
    """`key` of a Plan (its metrics), a plan dict (its "metrics"), or a flat mapping; None if absent."""
    if isinstance(point, Mapping):
        table = point.get("metrics", point)
    else:
        table = getattr(point, "metrics", None)
        if table is None:
            raise PlannerInputError(f"front: points must be plans or mappings of metrics, not {type(point).__name__}")
    value = table.get(key) if isinstance(table, Mapping) else None
    return None if value is None else float(value)


def _oriented(points: Sequence[T], key: str, maximize: Collection[str]) -> list[float | None]:
    sign = -1.0 if key in maximize else 1.0
    out: list[float | None] = []
    for p in points:
        v = metric(p, key)
        out.append(sign * v if v is not None and math.isfinite(v) else None)
    return out


def front(points: Sequence[T], x: str, y: str, maximize: Collection[str] | None = None) -> list[T]:
    """The points of `points` not dominated on (`x`, `y`), ordered from best `x` to worst.

    `maximize` names the metrics where higher is better (default `HIGHER_IS_BETTER`). Points
    missing either metric, or with a non-finite value, cannot be compared and are left out.
    """
    if x == y:
        raise PlannerInputError(f"front: x and y are both '{x}'; give two different metrics")
    maximize = HIGHER_IS_BETTER if maximize is None else frozenset(maximize)
    xs, ys = _oriented(points, x, maximize), _oriented(points, y, maximize)
    for key in (x, y):
        if points and all(metric(p, key) is None for p in points):
            raise PlannerInputError(f"front: no plan has a metric '{key}'; use one of "
                                    f"{', '.join(metric_names(points))}")
    rows = sorted((xv, yv, i) for i, (xv, yv) in enumerate(zip(xs, ys, strict=True))
                  if xv is not None and yv is not None)
    kept: list[int] = []
    best_y = math.inf
    # sweep x from best to worst; a point survives if its y beats every y seen at a strictly better x
    for _, group in groupby(rows, key=lambda r: r[0]):
        members = list(group)
        group_best = members[0][1]
        if group_best < best_y:
            kept += [i for _, yv, i in members if yv == group_best]
            best_y = group_best
    return [points[i] for i in kept]


def metric_names(points: Sequence[Any]) -> list[str]:
    """Metric names the points carry (from the first point), sorted."""
    if not points:
        return []
    first = points[0]
    table = first.get("metrics", first) if isinstance(first, Mapping) else getattr(first, "metrics", {})
    return sorted(k for k, v in table.items() if isinstance(v, (int, float)))


def dominated_by(a: Any, b: Any, x: str, y: str, maximize: Collection[str] | None = None) -> bool:
    """Whether `b` dominates `a` on (`x`, `y`) (brute-force definition, for checks and reports)."""
    maximize = HIGHER_IS_BETTER if maximize is None else frozenset(maximize)
    (ax,), (ay,), (bx,), (by,) = (_oriented([a], x, maximize), _oriented([a], y, maximize),
                                  _oriented([b], x, maximize), _oriented([b], y, maximize))
    if None in (ax, ay, bx, by):
        return False
    return bool(bx <= ax and by <= ay and (bx < ax or by < ay))  # type: ignore[operator]
