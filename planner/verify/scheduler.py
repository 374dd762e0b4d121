"""Continuous batching for the torch runner: who runs in each iteration, and when requests arrive.

Per iteration every running sequence decodes one token and waiting prompts are admitted, as KV
slots allow, into the rest of the token budget (chunked when a prompt does not fit), the way vLLM
V1 schedules. Closed-loop clients send their next request when the last one ends; their first
requests are spread over one request's length in iterations, so the loop runs in its steady mix
of decode and piggy-backed prefill rather than in lock-step waves. Open-loop arrivals follow a
seeded Poisson process. Pure Python: every tensor-parallel rank runs an identical copy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Request:
    rid: int  # the prompt's identity: the same client's n-th request has the same prompt in every layout
    client: int
    submit_s: float
    slot: int = -1
    prefilled: int = 0
    token_s: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def generated(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Chunk:
    req: Request
    start: int
    n: int
    emits: bool


@dataclass(frozen=True)
class Step:
    decode: list[Request]
    chunks: list[Chunk]

    @property
    def tokens(self) -> int:
        return len(self.decode) + sum(c.n for c in self.chunks)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.chunks


@dataclass(frozen=True)
class ClosedLoop:
    clients: int
    requests_per_client: int


@dataclass(frozen=True)
class OpenLoop:
    rate_rps: float
    requests: int
    seed: int = 0

    def arrivals(self) -> list[float]:
        """Arrival offsets in seconds: seeded exponential gaps, scaled so that their mean is exactly
        1 / rate. A run offers tens of requests, and an unscaled draw's own rate strays from the planned
        one by its sampling error (20 arrivals: about 22%), which a measured throughput would inherit."""
        rng = random.Random(self.seed)
        gaps = [rng.expovariate(self.rate_rps) for _ in range(self.requests - 1)]
        scale = len(gaps) / self.rate_rps / sum(gaps) if gaps else 1.0
        t, out = 0.0, [0.0] if self.requests else []
        for g in gaps:
            t += g * scale
            out.append(t)
        return out


class Scheduler:
    """One engine's queue, running set and KV slots."""

    def __init__(self, isl: int, osl: int, slots: int, budget: int, load: ClosedLoop | OpenLoop,
                 client_base: int = 0, slot_base: int = 0) -> None:
        self.isl, self.osl, self.budget = isl, osl, budget
        self.load = load
        self.slots = slots
        self.free = list(range(slot_base + slots - 1, slot_base - 1, -1))  # pop() hands out the lowest first
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.finished: list[Request] = []
        self.iteration = 0
        self.client_base = client_base
        self.sent: dict[int, int] = {}
        self.t0 = 0.0
        if isinstance(load, ClosedLoop):
            self.left = [load.requests_per_client] * load.clients
            # client i's first request enters at iteration i * osl / clients: an even spread over one request
            self.start_at = [i * osl // max(load.clients, 1) for i in range(load.clients)]
        else:
            self.offsets = load.arrivals()
            self.submitted = 0

    def start(self, now: float) -> None:
        self.t0 = now

    def _submit(self, client: int, at: float) -> None:
        n = self.sent.get(client, 0)
        self.sent[client] = n + 1
        self.waiting.append(Request((self.client_base + client) * 100_000 + n, client, at))

    def due(self, now: float) -> int:
        """Open-loop arrivals whose time has come (0 for a closed loop)."""
        if isinstance(self.load, ClosedLoop):
            return 0
        k = self.submitted
        while k < len(self.offsets) and self.t0 + self.offsets[k] <= now:
            k += 1
        return k - self.submitted

    def admit(self, arrivals: int, now: float) -> None:
        """Enqueue this iteration's new requests (`arrivals` open-loop ones, or closed-loop starters)."""
        if isinstance(self.load, ClosedLoop):
            for c, it in enumerate(self.start_at):
                if it == self.iteration and self.left[c] > 0:
                    self.left[c] -= 1
                    self._submit(c, now)
            return
        for _ in range(arrivals):
            self._submit(self.submitted, self.t0 + self.offsets[self.submitted])
            self.submitted += 1

    def next_step(self) -> Step:
        """The batch of this iteration: all running decodes, then prompt chunks within the budget."""
        while self.waiting and self.free:
            req = self.waiting.pop(0)
            req.slot = self.free.pop()
            self.running.append(req)
        decode = [r for r in self.running if r.prefilled == self.isl and 0 < r.generated < self.osl]
        room = self.budget - len(decode)
        chunks = []
        for r in self.running:
            if r.prefilled < self.isl and room > 0:
                n = min(self.isl - r.prefilled, room)
                chunks.append(Chunk(r, r.prefilled, n, r.prefilled + n == self.isl))
                room -= n
        return Step(decode, chunks)

    def complete(self, step: Step, tokens: list[int], now: float) -> None:
        """Record the tokens `step` produced (decodes first, then prompt ends) at time `now`."""
        emitted = step.decode + [c.req for c in step.chunks if c.emits]
        assert len(tokens) == len(emitted), (len(tokens), len(emitted))
        for c in step.chunks:
            c.req.prefilled += c.n
        for r, tok in zip(emitted, tokens, strict=True):
            r.token_s.append(now)
            r.token_ids.append(tok)
        self.iteration += 1
        for r in [r for r in self.running if r.generated >= self.osl]:
            self.running.remove(r)
            self.free.append(r.slot)
            self.finished.append(r)
            if isinstance(self.load, ClosedLoop) and self.left[r.client] > 0:
                self.left[r.client] -= 1
                self._submit(r.client, now)

    def next_arrival(self) -> float | None:
        """When the next open-loop request arrives, if nothing is queued or running until then (None:
        a closed loop, work in hand, or every request sent)."""
        if isinstance(self.load, ClosedLoop) or self.waiting or self.running or self.submitted >= len(self.offsets):
            return None
        return self.t0 + self.offsets[self.submitted]

    def tick_idle(self) -> None:
        """An iteration with nothing to run still advances the closed-loop start schedule."""
        self.iteration += 1

    @property
    def done(self) -> bool:
        if self.waiting or self.running:
            return False
        if isinstance(self.load, ClosedLoop):
            return not any(self.left)
        return self.submitted >= len(self.offsets)
