"""Disaggregated serving: what one prefill-only or decode-only instance can carry under the SLO,
the KV-cache transfer between the pools, and the operating point of a rate-matched xPyD plan.

A prefill instance batches whole prompts up to the engine's token budget (at least one prompt)
into one iteration, emits each prompt's first token and ships its KV cache to a decode instance.
Its mean TTFT is the iteration (plus half an iteration to the next boundary), M/D/1 queueing on
that iteration, the KV transfer and the engine's request handling; its rate is the highest one
that keeps that under the TTFT objective, and no more than the transfer lanes can ship.
A decode instance runs a pure decode batch; its rate is the largest batch whose iteration meets
the TPOT objective and that the KV cache (and `max_num_seqs`) admits, over the `osl - 1` steps
each request stays (the prefill pool made the first token). This is DistServe's split (Zhong et
al., OSDI 2024, arXiv 2401.09670: goodput per pool, rate matching, KV transfer on the link
between the pools) on the same roofline iterations the aggregated estimate uses.

KV transfer: every device of the prefill instance holds its shard of the prompt's cache and ships
it over its own link (NVLink / HCCS / UB inside a scale-up domain, the RDMA NIC across), so a
prompt's transfer is a point-to-point send of (cache bytes / prefill devices) on that tier, with
the calibration profile's send/recv fit. The transfer counts in TTFT (the first decode step waits
for it) and bounds the rate at one transfer at a time per lane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from costmodel import comm
from costmodel.energy import iteration_power_w, platform, power_model, serving_energy
from costmodel.estimate import estimate_instance, instance_memory
from costmodel.instance import Instance
from costmodel.models import ModelSpec
from costmodel.ops import Batch
from costmodel.precision import Precision
from costmodel.serving import goodput_rps, max_running, open_loop
from costmodel.workload import SLO, Workload
from hardware.specs import Link

ROLES = ("agg", "prefill", "decode")
RHO_MAX = 0.99  # utilisation ceiling without a TTFT objective: M/D/1 queues diverge at 1


@dataclass(frozen=True)
class RoleCapacity:
    """The highest per-instance request rate one instance sustains in `role` under the SLO."""

    role: str
    rate_rps: float  # prefill: with the KV cache shipped inside the scale-up domain
    rate_out_rps: float  # prefill: with the KV cache shipped over the scale-out network; else = rate_rps
    binding: str  # what bounds the rate: ttft_ms, tpot_ms, kv_cache, max_num_seqs, kv_transfer, throughput, memory
    detail: str  # one sentence on why
    power_w: float  # the instance at that rate: boards plus host, NIC and switch shares
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.rate_rps > 0


def kv_transfer_bytes(model: ModelSpec, prec: Precision, isl: int) -> float:
    """Bytes of KV cache one prompt of `isl` tokens leaves behind (all layers, the whole instance)."""
    return model.cache_bytes_per_token(prec.kv_bytes, isl) * isl


def kv_transfer_s(inst: Instance, isl: int, link: Link) -> float:
    """Seconds to ship one prompt's KV cache from `inst` (a prefill instance) over `link`."""
    lanes = inst.layout.instance_devices
    shard = kv_transfer_bytes(inst.model, inst.prec, isl) / lanes
    return float(comm.send_recv_s(shard, link, inst._fit("send_recv", link)))


def _infeasible(role: str, binding: str, detail: str, metrics: dict[str, float] | None = None) -> RoleCapacity:
    return RoleCapacity(role, 0.0, 0.0, binding, detail, 0.0, metrics or {})


def _extra_w(inst: Instance) -> float:
    plat = platform(inst.group, inst.profile)
    return plat.host_w + plat.nic_w + plat.switch_w


def prefill_iteration(inst: Instance, isl: int, kv_tokens: int | None = None) -> tuple[float, float]:
    """(seconds, prompts) of one prefill-only iteration: whole prompts up to the token budget, and no
    more than the KV cache (`kv_tokens`, when known) holds at once."""
    tokens = max(inst.engine.max_num_batched_tokens, isl)
    prompts = tokens // isl if kv_tokens is None else max(min(tokens, kv_tokens) // isl, 1)
    b = Batch(prefill_tokens=prompts * isl, prefill_span=isl / 2, prefill_seqs=prompts)
    return float(inst.step_s(b)), float(prompts)


def prefill_ttft_s(inst: Instance, isl: int, rate_rps: float, transfer_s: float,
                   kv_tokens: int | None = None) -> float:
    """Mean TTFT of a prefill instance at `rate_rps` (inf at or past its capacity)."""
    x, prompts = prefill_iteration(inst, isl, kv_tokens)
    rho = rate_rps * x / prompts
    if rho >= 1:
        return math.inf
    return 1.5 * x + rho / (2 * (1 - rho)) * x + transfer_s + inst.engine.ttft_overhead_ms * 1e-3


def _prefill_rate(inst: Instance, isl: int, slo: SLO, transfer_s: float,
                  kv_tokens: int | None = None) -> tuple[float, str, float]:
    """(rate, binding, ratio) of a prefill instance whose prompts' KV take `transfer_s` to ship."""
    x, prompts = prefill_iteration(inst, isl, kv_tokens)
    fixed = 1.5 * x + transfer_s + inst.engine.ttft_overhead_ms * 1e-3
    rho, binding = RHO_MAX, "throughput"
    if slo.ttft_ms is not None:
        limit = slo.ttft_ms * 1e-3
        if fixed >= limit:
            return 0.0, "ttft_ms", fixed / limit
        q = (limit - fixed) / x
        if 2 * q / (1 + 2 * q) < RHO_MAX:
            rho, binding = 2 * q / (1 + 2 * q), "ttft_ms"
    rate = rho * prompts / x
    if transfer_s > 0 and 1.0 / transfer_s < rate:
        rate, binding = 1.0 / transfer_s, "kv_transfer"
    return rate, binding, 1.0


def prefill_capacity(inst: Instance, wl: Workload, slo: SLO, up: Link, out: Link) -> RoleCapacity:
    """Per-instance rate of a prefill-only instance, with the KV cache shipped over `up` and over `out`."""
    isl = wl.isl
    mem = instance_memory(inst, wl, max(inst.engine.max_num_batched_tokens, isl))
    if not mem.fits or mem.kv_tokens < isl:
        return _infeasible("prefill", "memory", f"holds {mem.kv_tokens} KV tokens, fewer than one "
                           f"{isl}-token prompt", {"weights_gib": mem.weights_gib})
    t_up, t_out = kv_transfer_s(inst, isl, up), kv_transfer_s(inst, isl, out)
    rate_up, binding, ratio = _prefill_rate(inst, isl, slo, t_up, mem.kv_tokens)
    rate_out = _prefill_rate(inst, isl, slo, t_out, mem.kv_tokens)[0]
    x, prompts = prefill_iteration(inst, isl, mem.kv_tokens)
    if rate_up <= 0:
        ttft = 1.5 * x + t_up + inst.engine.ttft_overhead_ms * 1e-3
        return _infeasible("prefill", binding, f"ttft_ms is {ttft * 1e3:.1f} even unloaded, {ratio:.2f}x the "
                           "objective", {"ttft_ms": ttft * 1e3, "ratio": ratio})
    rho = rate_up * x / prompts
    active = float(iteration_power_w(inst, Batch(prefill_tokens=prompts * isl, prefill_span=isl / 2,
                                                 prefill_seqs=prompts)))
    idle = power_model(inst.acc, inst.profile).idle_w
    power = inst.layout.instance_devices * (rho * active + (1 - rho) * idle + _extra_w(inst))
    metrics = {"ttft_ms": prefill_ttft_s(inst, isl, rate_up, t_up, mem.kv_tokens) * 1e3,
               "prefill_iteration_ms": x * 1e3, "kv_transfer_ms": t_up * 1e3, "kv_transfer_out_ms": t_out * 1e3,
               "utilisation": rho, "running": prompts, "max_running": float(mem.kv_tokens // isl)}
    detail = {"ttft_ms": "TTFT objective caps the queue", "throughput": "prompt throughput (queue stability)",
              "kv_transfer": "KV-cache transfer lanes are saturated"}[binding]
    return RoleCapacity("prefill", rate_up, rate_out, binding, detail, power, metrics)


def decode_capacity(inst: Instance, wl: Workload, slo: SLO) -> RoleCapacity:
    """Per-instance rate of a decode-only instance: the largest batch meeting TPOT and the KV cache."""
    isl, osl = wl.isl, wl.osl
    if osl < 2:
        return _infeasible("decode", "osl", "requests of one output token leave a decode pool nothing to do")
    mem = instance_memory(inst, wl, inst.engine.max_num_batched_tokens)
    cap = max_running(inst, mem.kv_tokens, isl, osl)
    if not mem.fits or cap < 1:
        return _infeasible("decode", "memory", f"holds {mem.kv_tokens} KV tokens, fewer than one request's "
                           f"{isl + osl}", {"weights_gib": mem.weights_gib})
    batch = np.arange(1, cap + 1, dtype=float)
    step = np.asarray(inst.decode_s(batch, isl + osl / 2), dtype=float) * np.ones_like(batch)
    ok = np.ones_like(batch, dtype=bool) if slo.tpot_ms is None else step <= slo.tpot_ms * 1e-3
    if not ok.any():
        ratio = step[0] / (slo.tpot_ms * 1e-3)
        return _infeasible("decode", "tpot_ms", f"tpot_ms is {step[0] * 1e3:.1f} even at batch 1, {ratio:.2f}x "
                           "the objective", {"tpot_ms": step[0] * 1e3, "ratio": ratio})
    i = int(np.flatnonzero(ok)[-1])
    b, tpot = float(batch[i]), float(step[i])
    if i + 1 < cap:
        binding, detail = "tpot_ms", f"a batch of {int(b) + 1} would break the TPOT objective"
    elif cap == inst.engine.max_num_seqs:
        binding, detail = "max_num_seqs", f"the engine admits {cap} sequences"
    else:
        binding, detail = "kv_cache", f"the KV cache holds {cap} sequences"
    active = float(iteration_power_w(inst, Batch(decode_seqs=b, decode_ctx=isl + osl / 2)))
    power = inst.layout.instance_devices * (active + _extra_w(inst))
    rate = b / ((osl - 1) * tpot)
    return RoleCapacity("decode", rate, rate, binding, detail, power,
                        {"tpot_ms": tpot * 1e3, "decode_batch": b, "running": b, "max_running": float(cap)})


def running_at(inst: Instance, isl: int, osl: int, rate_rps: float, cap: int) -> float:
    """Sequences holding KV cache at once (prefilling or decoding; queued ones hold none) in the
    open-loop steady state at `rate_rps`; inf where the state is unstable."""
    s = open_loop(inst, isl, osl, rate_rps, cap)
    return s.admitted - rate_rps * s.queue_s if s.stable else math.inf


def kv_bounded_rps(inst: Instance, isl: int, osl: int, cap: int, rate_rps: float, rel_tol: float = 0.01) -> float:
    """The highest rate up to `rate_rps` whose running sequences fit the `cap` the KV cache (and
    `max_num_seqs`) admits: memory is a hard constraint, whatever the latency objectives allow."""
    if running_at(inst, isl, osl, rate_rps, cap) <= cap:
        return rate_rps
    lo, hi = 0.0, rate_rps
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if running_at(inst, isl, osl, mid, cap) <= cap else (lo, mid)
    return lo


def agg_capacity(inst: Instance, wl: Workload, slo: SLO) -> RoleCapacity:
    """Per-instance goodput of an aggregated instance (the open-loop goodput the planner ranks on)."""
    isl, osl = wl.isl, wl.osl
    mem = instance_memory(inst, wl, inst.engine.max_num_batched_tokens)
    cap = max_running(inst, mem.kv_tokens, isl, osl)
    if not mem.fits or cap < 1:
        return _infeasible("agg", "memory", f"holds {mem.kv_tokens} KV tokens, fewer than one request's "
                           f"{isl + osl}", {"weights_gib": mem.weights_gib})
    ttft_s = slo.ttft_ms * 1e-3 if slo.ttft_ms else None
    tpot_s = slo.tpot_ms * 1e-3 if slo.tpot_ms else None
    slo_rate = goodput_rps(inst, isl, osl, cap, ttft_s, tpot_s)
    rate = kv_bounded_rps(inst, isl, osl, cap, slo_rate) if slo_rate > 0 else 0.0
    if rate <= 0:
        idle = open_loop(inst, isl, osl, 1e-3, cap)
        worst = slo.violations(idle.ttft_s * 1e3, idle.tpot_s * 1e3, math.inf)
        key, ratio = max(worst.items(), key=lambda kv: kv[1]) if worst else ("ttft_ms", 1.0)
        return _infeasible("agg", key, f"{key} is {ratio:.2f}x the objective even unloaded",
                           {"ttft_ms": idle.ttft_s * 1e3, "tpot_ms": idle.tpot_s * 1e3, "ratio": ratio})
    at = wl.model_copy(update={"rate_rps": rate, "concurrency": None})
    e = estimate_instance(inst, at)
    margins = {k: 1 - v / lim for k, v, lim in (("ttft_ms", e.ttft_ms, slo.ttft_ms), ("tpot_ms", e.tpot_ms,
                                                                                        slo.tpot_ms)) if lim}
    binding = min(margins, key=lambda k: margins[k]) if margins else "throughput"
    if margins and margins[binding] > 0.05:
        binding = "throughput"
    if rate < slo_rate * 0.999:
        binding = "kv_cache" if cap < inst.engine.max_num_seqs * inst.layout.attention_dp else "max_num_seqs"
    power = serving_energy(inst, at, e).power_w
    return RoleCapacity("agg", rate, rate, binding, {"throughput": "the instance's capacity (queue stability)",
                                                     "kv_cache": f"the KV cache holds {cap} running sequences",
                                                     "max_num_seqs": f"the engine admits {cap} sequences"}
                        .get(binding, f"the {binding} objective caps the rate"), power,
                        {"ttft_ms": e.ttft_ms, "tpot_ms": e.tpot_ms, "decode_batch": e.decode_batch,
                         "running": running_at(inst, isl, osl, rate, cap), "max_running": float(cap)})


def role_capacity(inst: Instance, wl: Workload, slo: SLO, role: str, up: Link, out: Link) -> RoleCapacity:
    """Dispatch on `role` (agg, prefill, decode)."""
    if role == "prefill":
        return prefill_capacity(inst, wl, slo, up, out)
    if role == "decode":
        return decode_capacity(inst, wl, slo)
    return agg_capacity(inst, wl, slo)


def matched_rate(prefill_rps: float, decode_rps: float) -> float:
    """Rate matching: a disaggregated plan serves what its slower pool carries."""
    return min(prefill_rps, decode_rps)


def pd_ratio(prefill_rps: float, decode_rps: float) -> float:
    """Prefill instances per decode instance that balance the pools (DistServe's replica ratio)."""
    return decode_rps / prefill_rps


@dataclass(frozen=True)
class DisaggPoint:
    """A rate-matched xPyD plan serving `rate_rps`: latencies, throughput and power."""

    ttft_ms: float
    tpot_ms: float
    requests_per_s: float
    output_tok_s: float
    decode_batch: float
    power_w: float
    kv_transfer_ms: float

    def metrics(self) -> dict[str, float]:
        tokens = self.output_tok_s
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "requests_per_s": self.requests_per_s,
                "output_tok_s": tokens, "decode_batch": self.decode_batch, "power_w": self.power_w,
                "kv_transfer_ms": self.kv_transfer_ms,
                "energy_j_per_token": self.power_w / tokens if tokens > 0 else math.inf,
                "energy_j_per_request": self.power_w / self.requests_per_s if self.requests_per_s > 0 else math.inf,
                "energy_kwh_per_hour": self.power_w / 1e3,
                "tok_s_per_user": 1e3 / self.tpot_ms if 0 < self.tpot_ms < math.inf else 0.0}


def disagg_point(prefill: Instance, x: int, decode: Instance, y: int, wl: Workload, rate_rps: float,
                 link: Link) -> DisaggPoint:
    """The plan's operating point at `rate_rps` spread evenly over `x` prefill and `y` decode instances,
    KV shipped over `link`."""
    isl, osl = wl.isl, wl.osl
    kv = instance_memory(prefill, wl, max(prefill.engine.max_num_batched_tokens, isl)).kv_tokens
    transfer = kv_transfer_s(prefill, isl, link)
    ttft = prefill_ttft_s(prefill, isl, rate_rps / x, transfer, kv)
    # the decode batch B solves B = r (osl - 1) tpot(B): a damped fixed point like the aggregated solver
    r = rate_rps / y
    b = 1.0
    for _ in range(60):
        tpot = float(decode.decode_s(b, isl + osl / 2))
        b = 0.5 * b + 0.5 * max(r * (osl - 1) * tpot, 1.0)
    tpot = float(decode.decode_s(b, isl + osl / 2))
    px, prompts = prefill_iteration(prefill, isl, kv)
    rho = min(rate_rps / x * px / prompts, 1.0)
    p_active = float(iteration_power_w(prefill, Batch(prefill_tokens=prompts * isl, prefill_span=isl / 2,
                                                      prefill_seqs=prompts)))
    p_idle = power_model(prefill.acc, prefill.profile).idle_w
    d_active = float(iteration_power_w(decode, Batch(decode_seqs=b, decode_ctx=isl + osl / 2)))
    power = (x * prefill.layout.instance_devices * (rho * p_active + (1 - rho) * p_idle + _extra_w(prefill))
             + y * decode.layout.instance_devices * (d_active + _extra_w(decode)))
    return DisaggPoint(ttft * 1e3, tpot * 1e3, rate_rps, rate_rps * osl, b, power, transfer * 1e3)
