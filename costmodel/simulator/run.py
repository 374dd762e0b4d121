"""Simulate one layout for a workload: KV capacity, the step table, the run, and its result."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from costmodel.instance import Instance
from costmodel.memory import memory_breakdown
from costmodel.simulator.config import SchedulerConfig
from costmodel.simulator.core import Simulation
from costmodel.simulator.result import SimResult
from costmodel.simulator.steptable import StepTable, build
from costmodel.workload_dist import Draw
from hardware.errors import PlannerInputError


@dataclass(frozen=True)
class Setup:
    """What a run of `inst` needs besides its requests: resolved scheduler, KV blocks, step table."""

    inst: Instance
    sched: SchedulerConfig
    kv_blocks: int
    table: StepTable
    replicas: int

    @property
    def pp(self) -> int:
        return self.inst.layout.pp


def kv_blocks(inst: Instance, sched: SchedulerConfig, isl: int, osl: int) -> int:
    """KV-cache blocks of one instance from the memory model (`memory_breakdown`)."""
    mem = memory_breakdown(inst.model, inst.layout, inst.prec, inst.acc, inst.engine, isl, osl,
                           int(sched.chunked_prefill_tokens or inst.engine.max_num_batched_tokens))
    return mem.kv_tokens // sched.block_size


def setup(inst: Instance, sched: SchedulerConfig, draw: Draw, replicas: int = 1) -> Setup:
    """Resolve the scheduler, size the KV cache for `draw`'s lengths and build the step table."""
    sched = sched.resolve(inst.engine)
    isl_med, osl_med = int(np.median(draw.isl)), int(np.median(draw.osl))
    blocks = sched.kv_blocks or kv_blocks(inst, sched, isl_med, osl_med)
    if blocks < 1:
        mem = memory_breakdown(inst.model, inst.layout, inst.prec, inst.acc, inst.engine, isl_med, osl_med,
                               int(sched.chunked_prefill_tokens))  # type: ignore[arg-type]
        raise PlannerInputError(
            f"layout {inst.layout.label()} of {inst.model.name} leaves no KV cache on {inst.acc.name} "
            f"(weights {mem.weights_gib:.1f} GiB of {mem.capacity_gib:.1f} usable); use more devices or a "
            "smaller precision")
    pp = inst.layout.pp
    per_engine_seqs = -(-int(sched.max_num_seqs) // pp)  # type: ignore[arg-type]
    b_max = max(1, min(per_engine_seqs, blocks // pp))
    longest = int((draw.isl + draw.osl).max())
    budget = int(sched.chunked_prefill_tokens)  # type: ignore[arg-type]
    t_max = budget if sched.policy == "chunked" else max(budget, b_max + longest)
    table = build(inst, b_max, t_max, len_max=max(longest, 2048))
    return Setup(inst, sched, blocks, table, replicas)


def decode_steps(osl: np.ndarray, tokens_per_step: float) -> np.ndarray:
    """Iterations each request is scheduled for: its first token comes with its prefill, the rest at
    `tokens_per_step` per decode step (speculative decoding / MTP verifies drafts: more than one).

    With speculation the simulator runs these steps and the result counts the requests' tokens, so TPOT
    and throughput are per token; a step's KV grows by one slot per sequence (the accepted drafts'
    slots, (k - 1) / k of the generated tokens, are not reserved), and an ITL sample is the gap between
    steps, each delivering `tokens_per_step` tokens on average."""
    if tokens_per_step == 1.0:
        return osl
    steps = 1 + np.ceil((osl - 1) / tokens_per_step)
    return np.where(osl > 1, steps, osl).astype(osl.dtype)


def run(s: Setup, draw: Draw, rate_rps: float | None = None, slo_ms: dict[str, float] | None = None,
        fail_limit: int | None = None, progress: Callable[[int, int], None] | None = None,
        exact: bool = False) -> SimResult:
    """Simulate `draw` (its arrivals rescaled to `rate_rps` when given) on `s`.

    With `slo_ms` and `fail_limit`, stop as soon as more than `fail_limit` requests miss the SLO
    (the goodput search only needs to know that attainment fell short). `exact` calls `step_s`
    for every iteration, one at a time (no table, no jumps): the reference the fast path is held to."""
    arrivals = draw.arrivals_at(rate_rps)
    slo_s = {k.replace("_ms", "_s"): v / 1e3 for k, v in (slo_ms or {}).items() if v is not None}
    table = replace(s.table, max_rel_err=math.inf) if exact else s.table
    steps = decode_steps(draw.osl, s.inst.tokens_per_step)
    sim = Simulation(table, s.sched, s.kv_blocks, s.replicas, s.pp, draw.isl, steps, arrivals,
                     draw.concurrency, slo_s, fail_limit, progress, jumps=not exact, tokens=draw.osl)
    log = sim.run()
    notes = []
    if s.table.exact and not exact:
        notes.append(f"step table off by {s.table.max_rel_err:.1%} against step_s; every iteration used step_s")
    if draw.trace is not None and draw.trace.excluded:
        notes.append(f"{len(draw.trace.excluded)} trace requests excluded (first: line "
                     f"{draw.trace.excluded[0][0]}, {draw.trace.excluded[0][1]})")
    rejected = np.asarray(log.rejected)
    if rejected.any():
        notes.append(f"{int(rejected.sum())} requests need more KV cache than the instance has and were refused")
    f = np.asarray
    inst = s.inst
    return SimResult(
        model=inst.model.name, device=inst.acc.name, layout=inst.layout.label(), engine=inst.engine.name,
        scheduler=s.sched.model_dump(), replicas=s.replicas, pipeline_engines=s.pp, kv_blocks=s.kv_blocks,
        arrival_s=f(log.arrival, dtype=float), first_token_s=f(log.first, dtype=float),
        finish_s=f(log.finish, dtype=float), isl=draw.isl.copy(), osl=draw.osl.copy(),
        preemptions_per_request=f(log.preempts, dtype=np.int64), replica=f(log.replica, dtype=np.int64),
        rejected=rejected, iterations=log.iterations(), itl_samples=log.itl(),
        preemption_events=tuple(log.preemptions), step_table_error=s.table.max_rel_err,
        stopped_early=sim.aborted, notes=tuple(notes))
