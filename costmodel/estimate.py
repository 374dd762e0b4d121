"""`Estimate`: predicted serving metrics of a layout for a workload, with memory and breakdown."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from costmodel.calibration.profile import Profile
from costmodel.engines import Engine
from costmodel.instance import Instance
from costmodel.layout import Layout, check_layout
from costmodel.memory import MemoryBreakdown, memory_breakdown
from costmodel.models import ModelSpec
from costmodel.ops import Batch
from costmodel.precision import Precision
from costmodel.serving import Steady, closed_loop, max_running, open_loop
from costmodel.workload import Workload
from hardware.specs import NodeGroup


@dataclass(frozen=True)
class Estimate:
    """Metrics for the whole layout (all `dp` replicas); memory is per device."""

    model: str
    device: str
    layout: Layout
    workload: Workload
    precision: str
    engine: str
    fits: bool
    ttft_ms: float
    tpot_ms: float
    output_tok_s: float
    requests_per_s: float
    decode_batch: float
    max_running: int
    queue_ms: float
    stable: bool
    memory: dict[str, float]
    breakdown_ms: dict[str, float]
    profile: str
    profile_trust: str
    band: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def devices(self) -> int:
        return self.layout.total_devices

    @property
    def output_tok_s_per_device(self) -> float:
        return self.output_tok_s / self.devices

    def as_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return None if not math.isfinite(v) else round(v, 4)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, tuple):
                return [clean(x) for x in v]
            return v

        return {
            "model": self.model, "device": self.device, "layout": self.layout.model_dump(),
            "workload": self.workload.model_dump(exclude_none=True), "precision": self.precision,
            "engine": self.engine, "fits": self.fits, "ttft_ms": clean(self.ttft_ms),
            "tpot_ms": clean(self.tpot_ms), "output_tok_s": clean(self.output_tok_s),
            "requests_per_s": clean(self.requests_per_s), "decode_batch": clean(self.decode_batch),
            "max_running": self.max_running, "queue_ms": clean(self.queue_ms), "stable": self.stable,
            "memory_gib": clean(self.memory), "breakdown_ms": clean(self.breakdown_ms),
            "profile": self.profile, "profile_trust": self.profile_trust,
            "band": {k: list(v) for k, v in self.band.items()}, "notes": list(self.notes),
        }


def build_instance(model: ModelSpec, layout: Layout, prec: Precision, group: NodeGroup,
                   profile: Profile, engine: Engine, redundant_experts: int = 0, micro_batches: int = 1) -> Instance:
    """A checked Instance; MoE routing skew defaults to the profile's measured one (costmodel.moe)."""
    check_layout(model, layout, redundant_experts)
    return Instance(model, layout, prec, group, profile, engine, redundant_experts=redundant_experts,
                    micro_batches=micro_batches)


def instance_memory(inst: Instance, wl: Workload, budget: int) -> MemoryBreakdown:
    return memory_breakdown(inst.model, inst.layout, inst.prec, inst.acc, inst.engine, wl.isl, wl.osl, budget,
                            inst.redundant_experts)


def estimate_instance(inst: Instance, wl: Workload, max_num_seqs: int | None = None,
                      max_num_batched_tokens: int | None = None) -> Estimate:
    """Predict `wl` on `inst` replicated `layout.dp` times behind a balanced router."""
    lay = inst.layout
    budget = max_num_batched_tokens or inst.engine.max_num_batched_tokens
    mem = instance_memory(inst, wl, budget)
    cap = max_running(inst, mem.kv_tokens, wl.isl, wl.osl, max_num_seqs)
    notes: list[str] = []
    if wl.osl == 1:
        notes.append("osl=1: TPOT is undefined (no token follows the first); tpot_ms is the iteration time a second "
                     "token would take, and no TPOT objective applies")
    share = wl.per_replica(lay.dp)
    fits = mem.fits and cap >= 1
    if not mem.fits:
        notes.append(f"weights need {mem.weights_gib:.1f} GiB per device of {mem.capacity_gib:.1f} usable; "
                     "no room for a KV cache")
    elif cap < 1:
        notes.append(f"the KV cache holds {mem.kv_tokens} tokens, fewer than one request's "
                     f"{wl.isl + wl.osl}")
    if not fits:
        steady = Steady(math.inf, math.inf, 0.0, 0.0, 0.0, 0.0, math.inf, wl.osl, stable=False)
    elif share.concurrency is not None:
        steady = closed_loop(inst, wl.isl, wl.osl, share.concurrency, cap, budget)
        if share.concurrency > cap:
            bound = "max_num_seqs" if cap == (max_num_seqs or inst.engine.max_num_seqs) else "KV cache"
            notes.append(f"{share.concurrency} clients per replica exceed the {cap} the {bound} admits; "
                         "the rest queue")
    else:
        steady = open_loop(inst, wl.isl, wl.osl, share.rate_rps or 0.0, cap, budget)
        if not steady.stable:
            notes.append(f"rate {share.rate_rps:.2f} req/s per replica exceeds capacity "
                         f"{steady.requests_per_s:.2f} req/s; queues grow without bound")
    ctx = wl.isl + wl.osl / 2
    batch = Batch(decode_seqs=max(steady.decode_batch, 1.0) if math.isfinite(steady.decode_batch) else 1.0,
                  decode_ctx=ctx, prefill_tokens=steady.prefill_tokens_per_step,
                  prefill_span=wl.isl / 2, prefill_seqs=steady.prefill_tokens_per_step / wl.isl)
    breakdown = {k: float(v) * 1e3 for k, v in inst.breakdown(batch).items()} if fits else {}
    memory = {"weights": mem.weights_gib, "activations": mem.activations_gib, "reserve": mem.reserve_gib,
              "kv_cache": mem.kv_cache_gib, "capacity": mem.capacity_gib, "hbm": inst.acc.hbm_gib,
              "kv_tokens": float(mem.kv_tokens)}
    return Estimate(
        model=inst.model.name, device=inst.acc.name, layout=lay, workload=wl,
        precision=inst.prec.label, engine=inst.engine.name, fits=fits,
        ttft_ms=steady.ttft_s * 1e3, tpot_ms=steady.tpot_s * 1e3,
        output_tok_s=steady.output_tok_s * lay.dp, requests_per_s=steady.requests_per_s * lay.dp,
        decode_batch=steady.decode_batch, max_running=cap, queue_ms=steady.queue_s * 1e3,
        stable=steady.stable, memory=memory, breakdown_ms=breakdown,
        profile=f"{inst.profile.device}:{inst.profile.trust}", profile_trust=inst.profile.trust,
        band=dict(inst.profile.error_band), notes=tuple(notes),
    )
