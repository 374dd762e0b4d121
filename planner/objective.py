"""The serving objective the searches maximise: goodput (or throughput) per device under the SLO."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from costmodel.calibration.profile import Profile
from costmodel.disagg import RoleCapacity, kv_bounded_rps, role_capacity
from costmodel.energy import serving_energy
from costmodel.engines import Engine
from costmodel.estimate import Estimate, estimate_instance, instance_memory
from costmodel.instance import Instance
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.precision import Precision
from costmodel.serving import goodput_rps, max_running, open_loop
from costmodel.workload import SLO, Workload
from hardware.specs import Link, NodeGroup
from searches.base import Evaluated


@dataclass(frozen=True)
class ServingObjective:
    model: ModelSpec
    group: NodeGroup
    prec: Precision
    profile: Profile
    engine: Engine
    workload: Workload
    slo: SLO
    power_cap_w: float | None = None  # board power limit every device of the plan runs at
    usd_per_device_hour: float = 1.0  # price for cost_per_mtok (1.0: device-hours per million tokens)
    redundant_experts: int = 0  # EPLB expert copies per MoE layer (their weights take memory)
    micro_batches: int = 1  # two-batch overlap of dispatch/combine with compute

    def _metrics(self, inst: Instance, wl: Workload, replicas: int) -> dict[str, float]:
        placed = replace(inst, layout=inst.layout.model_copy(update={"dp": replicas}))
        e = estimate_instance(placed, wl)
        return {"ttft_ms": e.ttft_ms, "tpot_ms": e.tpot_ms, "output_tok_s": e.output_tok_s,
                "requests_per_s": e.requests_per_s, "decode_batch": e.decode_batch,
                "weights_gib": e.memory["weights"], "kv_cache_gib": e.memory["kv_cache"],
                "max_running": float(e.max_running), **self._energy_metrics(placed, wl, e)}

    def _energy_metrics(self, inst: Instance, wl: Workload, e: Estimate) -> dict[str, float]:
        """Power, energy and cost of the placed plan, and the per-device and per-user rates of the fronts."""
        out = serving_energy(inst, wl, e).metrics()
        devices = inst.layout.total_devices
        out["output_tok_s_per_device"] = e.output_tok_s / devices
        out["tok_s_per_user"] = 1e3 / e.tpot_ms if 0 < e.tpot_ms < math.inf else 0.0
        tokens_per_hour = e.output_tok_s * 3600.0
        out["cost_per_mtok"] = (self.usd_per_device_hour * devices / tokens_per_hour * 1e6
                                if tokens_per_hour > 0 else math.inf)
        if self.power_cap_w is not None:
            out["power_cap_w"] = self.power_cap_w
        return out

    def details(self, layout: Layout) -> dict[str, dict[str, float]]:
        """Per-op time (ms per iteration) and per-device memory (GiB) of a placed layout, for reports."""
        e = estimate_instance(self.instance(layout), self.workload)
        return {"breakdown_ms": dict(e.breakdown_ms), "memory_gib": dict(e.memory)}

    def instance(self, layout: Layout) -> Instance:
        return Instance(self.model, layout, self.prec, self.group, self.profile, self.engine,
                        power_cap_w=self.power_cap_w, redundant_experts=self.redundant_experts,
                        micro_batches=self.micro_batches)

    def capacity(self, layout: Layout, role: str, out_link: Link | None = None) -> RoleCapacity:
        """What one instance of `layout` carries in `role` (agg, prefill, decode) under the SLO; prefill
        ships its KV cache over the group's scale-up link inside a domain and over `out_link` (default:
        the group's scale-out network) across."""
        return role_capacity(self.instance(layout), self.workload, self.slo, role, self.group.scaleup,
                             out_link or self.group.scaleout)

    def __call__(self, layout: Layout) -> Evaluated:
        inst = Instance(self.model, layout, self.prec, self.group, self.profile, self.engine,
                        power_cap_w=self.power_cap_w)
        wl = self.workload
        mem = instance_memory(inst, wl, self.engine.max_num_batched_tokens)
        cap = max_running(inst, mem.kv_tokens, wl.isl, wl.osl)
        if not mem.fits or cap < 1:
            need = mem.weights_gib + mem.activations_gib + mem.reserve_gib
            return Evaluated(layout, 0.0, False, {"weights_gib": mem.weights_gib}, "memory",
                             f"needs {need:.1f} GiB per device before any KV cache, "
                             f"{mem.capacity_gib:.1f} GiB usable", {"ratio": need / mem.capacity_gib})
        available = self.group.num_devices // layout.instance_devices
        if wl.rate_rps is not None:
            return self._open(inst, cap, available)
        return self._closed(inst, available)

    def _open(self, inst: Instance, cap: int, available: int) -> Evaluated:
        wl, slo, lay = self.workload, self.slo, inst.layout
        per_instance = goodput_rps(inst, wl.isl, wl.osl, cap,
                                   slo.ttft_ms / 1e3 if slo.ttft_ms else None,
                                   slo.tpot_ms / 1e3 if slo.tpot_ms else None)
        if per_instance > 0:  # memory is a hard constraint: the running batch stays inside the KV cache
            per_instance = kv_bounded_rps(inst, wl.isl, wl.osl, cap, per_instance)
        score = per_instance / lay.instance_devices
        if per_instance <= 0:
            idle = open_loop(inst, wl.isl, wl.osl, 1e-3, cap)
            worst = slo.violations(idle.ttft_s * 1e3, idle.tpot_s * 1e3, math.inf)
            key, ratio = max(worst.items(), key=lambda kv: kv[1]) if worst else ("ttft_ms", 1.0)
            achieved = {"ttft_ms": idle.ttft_s * 1e3, "tpot_ms": idle.tpot_s * 1e3}[key]
            return Evaluated(lay, 0.0, False, {"ttft_ms": idle.ttft_s * 1e3, "tpot_ms": idle.tpot_s * 1e3},
                             key, f"{key} is {achieved:.1f} even unloaded, {ratio:.2f}x the objective",
                             {"ratio": ratio})
        needed = max(1, math.ceil(wl.rate_rps / per_instance - 1e-9))
        replicas = min(needed, available)
        metrics = self._metrics(inst, wl, replicas)
        metrics["goodput_rps"] = per_instance * replicas
        metrics["goodput_rps_per_instance"] = per_instance
        extra = {"replicas": replicas, "ratio": needed / available}
        if needed > available:
            return Evaluated(lay.model_copy(update={"dp": replicas}), score, False, metrics, "devices",
                             f"needs {needed} replicas ({needed * lay.instance_devices} devices) for "
                             f"{wl.rate_rps:g} req/s; the cluster has {self.group.num_devices}", extra)
        return Evaluated(lay.model_copy(update={"dp": replicas}), score, True, metrics, "", "", extra)

    def _closed(self, inst: Instance, available: int) -> Evaluated:
        lay, slo = inst.layout, self.slo
        replicas = max(1, min(available, self.workload.concurrency or 1))
        metrics = self._metrics(inst, self.workload, replicas)
        devices = replicas * lay.instance_devices
        score = metrics["output_tok_s"] / devices
        bad = slo.violations(metrics["ttft_ms"], metrics["tpot_ms"], metrics["output_tok_s"])
        metrics["goodput_rps"] = 0.0 if bad else metrics["requests_per_s"]
        placed = lay.model_copy(update={"dp": replicas})
        if bad:
            key, ratio = max(bad.items(), key=lambda kv: kv[1])
            return Evaluated(placed, score, False, metrics, key,
                             f"{key} is {metrics.get(key, 0.0):.1f}, {ratio:.2f}x the objective",
                             {"replicas": replicas, "ratio": ratio})
        return Evaluated(placed, score, True, metrics, "", "", {"replicas": replicas})


@dataclass(frozen=True)
class PoolCapacity:
    """Picklable `(variant, layout, role) -> RoleCapacity` over one objective per variant, for parallel tables."""

    objectives: tuple[ServingObjective, ...]
    out_link: Link | None = None

    def __call__(self, item: tuple[int, Layout, str]) -> RoleCapacity:
        variant, layout, role = item
        return self.objectives[variant].capacity(layout, role, self.out_link)
