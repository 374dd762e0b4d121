"""Analytic serving estimates for one instance: closed loop, open loop, capacity and goodput.

Steady state of continuous batching with fixed lengths. Per iteration the running decode batch
`B` and, on average, `P` prompt tokens share one forward pass (weights are read once, which is
why piggy-backed prefill is cheap while decode is memory-bound). In steady state the arrival
rate `lam` sets both: `B = lam (osl-1) tpot` and `P = lam isl tpot`; `tpot` is the iteration time
of that mix. The three are solved as a fixed point in `tpot`, bracketing it with vectorised
evaluations of the cost model.

TTFT = wait for admission (KV cache or `max_num_seqs` full: Little's law on the clients left
outside) + the wait for the next iteration boundary (half an iteration for a request that arrives
over HTTP at a random point of one; none where the client resubmits inside the scheduler, as the
torch runner's do: the engine constant `resubmit_wait_iterations`) + the iteration that prefills it
+ the prompt's own prefill + the share of its closed-loop wave it waits behind, or, in an open loop,
M/D/1 queueing on the instance's capacity.
Closed-loop clients with fixed lengths stay in step, so a share of the prompts (the engine
constant `closed_loop_wave`, fitted) arrives in bursts: half of a burst's prefill lengthens TTFT,
the other half the decode steps of the burst's members that already have their first token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from costmodel.instance import Instance
from costmodel.ops import Batch


@dataclass(frozen=True)
class Steady:
    """A solved steady state of one instance."""

    ttft_s: float
    tpot_s: float
    requests_per_s: float
    decode_batch: float
    prefill_tokens_per_step: float
    admitted: float  # requests inside the engine (prefilling or decoding)
    queue_s: float  # mean wait before admission
    osl: int
    stable: bool = True

    @property
    def output_tok_s(self) -> float:
        return self.requests_per_s * self.osl if self.stable else 0.0


def max_running(inst: Instance, kv_tokens: int, isl: int, osl: int, max_num_seqs: int | None = None) -> int:
    """Sequences the instance can hold at once: KV capacity at the mean context, or the cap
    (each attention-DP rank schedules its own sequences, so the cap applies per rank)."""
    cap = (max_num_seqs or inst.engine.max_num_seqs) * inst.layout.attention_dp
    return int(min(cap, kv_tokens // max(isl + osl // 2, 1)))


def prompt_prefill_s(inst: Instance, isl: int, budget: int) -> float:
    """Amortised prefill time of one prompt when prompts are batched up to the token budget."""
    seqs = max(1.0, budget / isl)
    return float(inst.prefill_s(isl, seqs)) / seqs


def _mixed_step(inst: Instance, b: np.ndarray, p: np.ndarray, isl: int, osl: int) -> np.ndarray:
    """Time per output token of `b` decoding sequences with prompts arriving at `p` tokens per output
    token: one iteration over `tokens_per_step` (> 1 with speculative decoding), which is that many
    output tokens long, so it carries that many times `p`."""
    k = inst.tokens_per_step
    return np.asarray(inst.step_s(Batch(decode_seqs=b, decode_ctx=isl + osl / 2, prefill_tokens=p * k,
                                        prefill_span=isl / 2, prefill_seqs=p * k / isl)), dtype=float) / k


def fixed_point(g: Callable[[np.ndarray], np.ndarray], t_lo: float, refinements: int = 3) -> float:
    """The T with g(T) = T, for g increasing slower than T (one crossing above `t_lo`, where
    g(t_lo) > t_lo). Every candidate of a bracket is evaluated in one vectorised cost-model
    call: a geometric grid over four decades, then finer linear grids inside the bracket."""
    grid = t_lo * np.geomspace(1.0, 1e4, 64)
    for _ in range(refinements + 1):
        gap = g(grid) - grid
        below = np.nonzero(gap <= 0)[0]
        if len(below) == 0:
            return math.inf
        i = max(int(below[0]), 1)
        lo, hi = grid[i - 1], grid[i]
        g_lo, g_hi = gap[i - 1], gap[i]
        grid = np.linspace(lo, hi, 24)
    return float(lo + (hi - lo) * g_lo / (g_lo - g_hi)) if g_lo != g_hi else float(hi)


def closed_loop(inst: Instance, isl: int, osl: int, clients: int, running_cap: int,
                budget: int | None = None) -> Steady:
    """Steady state of `clients` closed-loop clients, at most `running_cap` admitted at once."""
    budget = budget or inst.engine.max_num_batched_tokens
    n = float(min(clients, running_cap))
    x = prompt_prefill_s(inst, isl, budget)
    # A share `w` of the prompts arrive in lock-step waves. A wave's prefill is split between its
    # members' TTFT and their decode: on average a member waits behind half the rest of its wave, and
    # the other half is prefilled in iterations it already decodes in (which run slower). The rest of
    # the prompts arrive spread out, and all of their prefill rides along in decode iterations (TPOT).
    w = inst.engine.closed_loop_wave
    wave = w * (n - 1) / 2 * x
    riding = 1 - w / 2  # share of the prompts' prefill that runs inside decode iterations
    k = inst.tokens_per_step  # t below is the time per output token; an iteration is k of them

    def pre(t: np.ndarray) -> np.ndarray:
        # the wait for the iteration that prefills the new prompt, that iteration, and the prompt's own prefill
        return (inst.engine.resubmit_wait_iterations + 1.0) * k * t + x + wave

    def g(t: np.ndarray) -> np.ndarray:
        lam = n / (pre(t) + (osl - 1) * t)
        return _mixed_step(inst, lam * (osl - 1) * t, riding * lam * isl * t, isl, osl)

    tpot = fixed_point(g, 0.5 * float(inst.decode_s(1.0, isl + osl / 2)) / k)
    if not math.isfinite(tpot):  # no steady iteration time: unstable, as open_loop says (not 0/0 or inf x 0)
        return Steady(math.inf, math.inf, 0.0, 0.0, 0.0, n, math.inf, osl, stable=False)
    ttft = float(pre(np.asarray(tpot)))
    lam = n / (ttft + (osl - 1) * tpot)
    queue = max(clients - n, 0.0) / lam
    return Steady(ttft_s=queue + ttft + inst.engine.ttft_overhead_ms * 1e-3, tpot_s=tpot, requests_per_s=lam,
                  decode_batch=lam * (osl - 1) * tpot, prefill_tokens_per_step=riding * lam * isl * k * tpot,
                  admitted=n, queue_s=queue, osl=osl)


def capacity_rps(inst: Instance, isl: int, osl: int, running_cap: int) -> float:
    """Highest sustainable request rate: a closed loop with the engine full."""
    return closed_loop(inst, isl, osl, running_cap, running_cap).requests_per_s


def open_loop(inst: Instance, isl: int, osl: int, rate_rps: float, running_cap: int,
              budget: int | None = None, capacity: float | None = None) -> Steady:
    """Steady state under Poisson-like arrivals at `rate_rps`; unstable at or past capacity."""
    budget = budget or inst.engine.max_num_batched_tokens
    cap = capacity if capacity is not None else capacity_rps(inst, isl, osl, running_cap)
    rho = rate_rps / cap if cap > 0 else math.inf
    if rho >= 1.0:
        return Steady(math.inf, math.inf, cap, running_cap, 0.0, running_cap, math.inf, osl, stable=False)
    x = prompt_prefill_s(inst, isl, budget)
    k = inst.tokens_per_step
    tpot = fixed_point(lambda t: _mixed_step(inst, rate_rps * (osl - 1) * t, rate_rps * isl * t, isl, osl),
                       0.5 * float(inst.decode_s(1.0, isl + osl / 2)) / k)
    if not math.isfinite(tpot):
        return Steady(math.inf, math.inf, cap, running_cap, 0.0, running_cap, math.inf, osl, stable=False)
    it = k * tpot  # one iteration
    service = 0.5 * it + x + it + inst.engine.ttft_overhead_ms * 1e-3
    queue = rho / (2 * (1 - rho)) * (x + it)
    b = rate_rps * (osl - 1) * tpot
    return Steady(ttft_s=queue + service, tpot_s=tpot, requests_per_s=rate_rps, decode_batch=b,
                  prefill_tokens_per_step=rate_rps * isl * it,
                  admitted=rate_rps * (service + queue + (osl - 1) * tpot), queue_s=queue, osl=osl)


def goodput_rps(inst: Instance, isl: int, osl: int, running_cap: int, ttft_s: float | None,
                tpot_s: float | None, rel_tol: float = 0.01) -> float:
    """Highest open-loop rate whose mean TTFT and TPOT meet the objectives (bisection; 0 if none)."""
    hi = capacity_rps(inst, isl, osl, running_cap)

    def ok(rate: float) -> bool:
        s = open_loop(inst, isl, osl, rate, running_cap, capacity=hi)
        return s.stable and (ttft_s is None or s.ttft_s <= ttft_s) and (tpot_s is None or s.tpot_s <= tpot_s)

    lo = hi * 1e-3
    if not ok(lo):
        return 0.0
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
