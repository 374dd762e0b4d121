"""What a run measured: TTFT, TPOT and throughput from per-request token timestamps.

Shared by the torch runner and the endpoint runner. For a closed loop the window starts once every
client's first request (the warm-up, and the staggered start) has ended and closes when the first
client runs out of requests (after that fewer clients are in flight); requests wholly inside it
are measured, and throughput counts the tokens emitted inside it. An open loop measures every
request, and its throughput over the span from the first arrival to the last: the tokens emitted
while the planned load arrived (the last requests' tails, past the last arrival, would stretch the
span by a request's length).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Timed:
    """One request: its client, when it was sent, and when each output token arrived (seconds)."""

    client: int
    submit: float
    tokens: tuple[float, ...]  # arrival of each token, or of each streamed chunk
    count: int = 0  # output tokens when a server reports more than it streamed chunks (usage); 0 = len(tokens)

    @property
    def n(self) -> int:
        return max(self.count, len(self.tokens))

    @property
    def ttft(self) -> float:
        return self.tokens[0] - self.submit

    @property
    def tpot(self) -> float:
        return (self.tokens[-1] - self.tokens[0]) / (self.n - 1) if self.n > 1 else math.nan


@dataclass(frozen=True)
class Measured:
    """Mean TTFT and TPOT of the measured requests and the output rate; failures counted by kind."""

    ttft_ms: float
    tpot_ms: float
    output_tok_s: float
    requests: int  # measured
    completed: int  # all that finished, warm-up included
    window_s: float
    failures: dict[str, int] = field(default_factory=dict)
    error: str = ""
    notes: tuple[str, ...] = ()
    per_request: tuple[tuple[float, float], ...] = ()  # (ttft_s, tpot_s) of each measured request
    round_tok_s: tuple[float, ...] = ()  # output rate of every successful round (see median_of)
    round_tpot_ms: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.error and self.requests > 0

    def slo_tok_s(self, ttft_ms: float | None, tpot_ms: float | None) -> float:
        """Output tokens per second of the requests that met the latency objectives (goodput in tokens)."""
        if not self.per_request:
            return 0.0
        met = sum(1 for ttft, tpot in self.per_request
                  if (ttft_ms is None or ttft * 1e3 <= ttft_ms) and (tpot_ms is None or tpot * 1e3 <= tpot_ms))
        return self.output_tok_s * met / len(self.per_request)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_request")
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def median_of(rounds: Sequence[Measured]) -> Measured:
    """Repeated runs of one plan as one measurement: the round with the median output rate (the lower
    middle one for an even count), with every round's failures counted and every round's rate and
    TPOT kept (`round_tok_s`, `round_tpot_ms`) so a report can say how far apart rounds fell.

    The median, not the best round: a tensor-parallel or pipelined plan waits at every collective for
    whichever rank was held up, so its rounds spread wider than a data-parallel plan's, and the best
    round would flatter whichever plan varies most."""
    ok = [m for m in rounds if m.ok]
    if not ok:
        return rounds[0]
    fails: dict[str, int] = {}
    for m in rounds:
        for k, v in m.failures.items():
            fails[k] = fails.get(k, 0) + v
    notes = tuple(dict.fromkeys(n for m in ok for n in m.notes))
    if len(ok) < len(rounds):
        notes = (*notes, f"{len(rounds) - len(ok)} of {len(rounds)} rounds failed: "
                         f"{next(m.error for m in rounds if not m.ok) or 'see log'}")
    ranked = sorted(ok, key=lambda m: -m.output_tok_s)
    mid = ranked[(len(ranked) - 1) // 2]
    if len(rounds) > 1:
        tpots = ", ".join(f"{m.tpot_ms:.2f}" for m in ok)
        spread = (max(m.output_tok_s for m in ok) - min(m.output_tok_s for m in ok)) / max(mid.output_tok_s, 1e-9)
        notes = (*notes, f"median of {len(ok)} rounds (TPOT ms {tpots}; output rate spread {spread * 100:.0f}%)")
    return replace(mid, failures=fails, notes=notes, round_tok_s=tuple(m.output_tok_s for m in ok),
                   round_tpot_ms=tuple(m.tpot_ms for m in ok))


def failed(error: str, failures: dict[str, int] | None = None) -> Measured:
    return Measured(math.nan, math.nan, 0.0, 0, 0, 0.0, failures or {}, error)


def summarize(reqs: Sequence[Timed], closed_loop: bool, failures: dict[str, int] | None = None,
              notes: Sequence[str] = ()) -> Measured:
    """Window the requests (see module doc) and average them."""
    done = [r for r in reqs if r.tokens]
    if not done:
        return failed("no request completed", failures)
    if closed_loop:
        by_client: dict[int, list[Timed]] = {}
        for r in sorted(done, key=lambda r: r.submit):
            by_client.setdefault(r.client, []).append(r)
        start = max(rs[0].tokens[-1] for rs in by_client.values())
        end = min(rs[-1].tokens[-1] for rs in by_client.values())
        inside = [r for r in done if r.submit >= start and r.tokens[-1] <= end]
        if not inside or end <= start:  # too few requests per client for a steady window: all but the first
            inside = [r for rs in by_client.values() for r in rs[1:]] or done
            start = min(r.submit for r in inside)
            end = max(r.tokens[-1] for r in inside)
            notes = (*notes, "no steady window (too few requests per client): measured all but each client's first")
    else:  # every request, and the tokens emitted while requests arrived (the planned load's span)
        inside = done
        start, end = min(r.submit for r in done), max(r.submit for r in done)
        if end <= start:  # one arrival: to its last token
            end = max(r.tokens[-1] for r in done)
    span = max(end - start, 1e-9)
    emitted = sum(r.n / len(r.tokens) for r in done for t in r.tokens if start <= t <= end)
    tpots = [r.tpot for r in inside if math.isfinite(r.tpot)]
    return Measured(
        ttft_ms=statistics.fmean(r.ttft for r in inside) * 1e3,
        tpot_ms=statistics.fmean(tpots) * 1e3 if tpots else math.nan,
        output_tok_s=emitted / span, requests=len(inside), completed=len(done), window_s=span,
        failures=dict(failures or {}), notes=tuple(notes),
        per_request=tuple((r.ttft, r.tpot if math.isfinite(r.tpot) else 0.0) for r in inside))
