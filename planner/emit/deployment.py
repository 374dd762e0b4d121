"""A plan restated in the units a serving engine counts: devices, nodes, batch limits, dtypes.

The cost model counts accelerator packages; Ascend engines count dies (a 910C package is two dies,
each one NPU to CANN, `npu-smi` and the `huawei.com/Ascend910` device plugin), so an Ascend plan's
tensor-parallel and expert-parallel degrees and device counts are multiplied by `Accelerator.dies`
here, once, and every emitter sees engine units.

A deployment is a tuple of pools. Aggregated plans have one pool (role "aggregated"); disaggregated
prefill/decode plans have a "prefill" and a "decode" pool, each rendered by the same emitters.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from costmodel import catalog as model_catalog
from costmodel.engines import ENGINES, Engine
from costmodel.engines import engine as load_engine
from hardware import catalog as hw_catalog
from hardware.errors import PlannerInputError
from planner.result import Plan

# Kubernetes extended-resource names of each vendor's device plugin.
RESOURCE_NAMES = {
    "nvidia": "nvidia.com/gpu",  # NVIDIA k8s-device-plugin
    "amd": "amd.com/gpu",  # ROCm k8s-device-plugin
    "huawei": "huawei.com/Ascend910",  # Ascend mind-cluster device plugin (910B and 910C dies)
}
# Environment variable that restricts a process to some devices, per vendor.
VISIBLE_DEVICES_ENV = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "HIP_VISIBLE_DEVICES",
                       "huawei": "ASCEND_RT_VISIBLE_DEVICES"}
BENCH_SECONDS = 120  # an open-loop replay long enough to reach steady state at the planned rate


@dataclass(frozen=True)
class Pool:
    """One set of identical engine instances: its layout in engine units and its batch limits."""

    role: str
    tp: int
    pp: int
    ep: int
    attention_dp: int
    replicas: int
    max_num_seqs: int
    max_num_batched_tokens: int

    @property
    def instance_devices(self) -> int:
        return self.tp * self.attention_dp * self.pp

    @property
    def attention_tp(self) -> int:
        return self.tp


@dataclass(frozen=True)
class Deployment:
    rank: int
    label: str
    model: str
    hf_id: str
    moe: bool
    cluster: str
    device: str
    vendor: str
    dies: int
    devices_per_node: int
    weights: str
    kv: str
    plan_engine: str
    chunked_prefill: bool
    mem_fraction: float
    isl: int
    osl: int
    concurrency: int | None
    rate_rps: float | None
    metrics: dict[str, float]
    devices: int
    pools: tuple[Pool, ...]
    slo: dict[str, float] = field(default_factory=dict)
    context: int = 0  # the model's longest context (0 = unknown)
    # (role, engine-unit devices of the cluster group) per instance, from the plan's placement; () = pack
    placement: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def max_model_len(self) -> int:
        """ISL + OSL with 10% headroom (tokenizers differ, chat templates add tokens), rounded up to 256,
        never above the model's context."""
        want = -(-math.ceil(1.1 * (self.isl + self.osl)) // 256) * 256
        return min(want, self.context) if self.context else want

    @property
    def pool(self) -> Pool:
        """The only pool of an aggregated plan."""
        if len(self.pools) != 1 or self.pools[0].role != "aggregated":
            raise PlannerInputError(f"plan #{self.rank} has {len(self.pools)} pools; emit handles aggregated plans")
        return self.pools[0]

    @property
    def disaggregated(self) -> bool:
        """A prefill pool and a decode pool (in that order) instead of one aggregated pool."""
        return [p.role for p in self.pools] == ["prefill", "decode"]

    @property
    def resource_name(self) -> str:
        return RESOURCE_NAMES[self.vendor]

    @property
    def visible_devices_env(self) -> str:
        return VISIBLE_DEVICES_ENV[self.vendor]

    def nodes_per_instance(self, pool: Pool) -> int:
        return math.ceil(pool.instance_devices / self.devices_per_node)

    def instances_per_node(self, pool: Pool) -> int:
        return max(1, self.devices_per_node // pool.instance_devices)

    @property
    def num_prompts(self) -> int:
        """Requests a benchmark replays: ten waves of the clients, or two minutes of arrivals."""
        if self.concurrency is not None:
            return max(100, 10 * self.concurrency)
        return max(100, math.ceil((self.rate_rps or 1.0) * BENCH_SECONDS))

    @property
    def name(self) -> str:
        """A DNS-1035 label naming this plan's Kubernetes objects."""
        base = re.sub(r"[^a-z0-9-]+", "-", self.model.lower()).strip("-")
        return f"{base}-plan{self.rank}"[:52].strip("-")


def split_precision(label: str) -> tuple[str, str]:
    """`fp8+kv-fp8` -> ('fp8', 'fp8'); `bf16` -> ('bf16', 'bf16') (see costmodel.precision.Precision.label)."""
    weights, _, kv = label.partition("+kv-")
    return weights, kv or "bf16"


def engine_constants(name: str) -> Engine:
    """The cost model's constants for the engine an emitter targets (vLLM for Dynamo and Ascend)."""
    return load_engine(name if name in ENGINES else "vllm")


def deployment(plan: Plan, request: dict[str, Any], target: str) -> Deployment:
    """Restate `plan` of a PlanResult with `request` in the units of engine `target`."""
    if not plan.feasible:
        raise PlannerInputError(f"plan #{plan.rank} is infeasible ({plan.binding}); emit only feasible plans")
    spec = model_catalog.model(request["model"])
    cluster = hw_catalog.cluster(request["cluster"])
    group = next((g for g in cluster.groups if g.device.name == plan.device), None)
    if group is None:
        raise PlannerInputError(f"plan #{plan.rank} runs on {plan.device}, which cluster {cluster.name} lacks")
    dev = group.device
    eng = engine_constants(target)
    weights, kv = split_precision(request["precision"])
    lay, d = plan.layout, dev.dies
    running = int(plan.metrics.get("max_running", eng.max_num_seqs) or eng.max_num_seqs)
    pool = Pool(role="aggregated", tp=lay.tp * d, pp=lay.pp, ep=lay.ep * d if lay.ep > 1 else 1,
                attention_dp=lay.attention_dp, replicas=plan.replicas,
                max_num_seqs=max(1, min(running, eng.max_num_seqs)),
                max_num_batched_tokens=eng.max_num_batched_tokens)
    pools: tuple[Pool, ...] = (pool,)
    if plan.mode == "disagg" and plan.prefill_layout is not None:
        if plan.prefill_device and plan.prefill_device != plan.device:
            raise PlannerInputError(f"plan #{plan.rank} runs prefill on {plan.prefill_device} and decode on "
                                    f"{plan.device}; emit handles disaggregated plans whose pools share a device")
        pl = plan.prefill_layout
        # a prefill pool runs whole prompts, not a decode batch: the engine's own sequence limit
        prefill = Pool(role="prefill", tp=pl.tp * d, pp=pl.pp, ep=pl.ep * d if pl.ep > 1 else 1,
                       attention_dp=pl.attention_dp, replicas=plan.prefill_instances, max_num_seqs=eng.max_num_seqs,
                       max_num_batched_tokens=eng.max_num_batched_tokens)
        pools = (prefill, dataclasses.replace(pool, role="decode"))
    wl = request["workload"]
    return Deployment(
        rank=plan.rank, label=plan.label(), model=spec.name, hf_id=spec.hf_id or spec.name, moe=spec.moe is not None,
        cluster=cluster.name, device=dev.name, vendor=dev.vendor, dies=d, devices_per_node=group.devices_per_node * d,
        weights=weights, kv=kv, plan_engine=request.get("engine", "vllm"), chunked_prefill=eng.chunked_prefill,
        mem_fraction=eng.mem_fraction, isl=int(wl["isl"]), osl=int(wl["osl"]), concurrency=wl.get("concurrency"),
        rate_rps=wl.get("rate_rps"), metrics=dict(plan.metrics), devices=plan.devices * d, pools=pools,
        slo=dict(request.get("slo", {})), context=_context(spec.name),
        placement=_placement(plan, pools, d))


def _context(name: str) -> int:
    """The catalog config's max_position_embeddings (text_config's for multimodal ones); 0 when absent."""
    raw = model_catalog.entries().get(name, {})
    return int(raw.get("max_position_embeddings") or raw.get("text_config", {}).get("max_position_embeddings") or 0)



def _placement(plan: Plan, pools: tuple[Pool, ...], dies: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The plan's placement in engine units, when it places exactly the pools' instances (else ())."""
    roles = {"agg": "aggregated", "prefill": "prefill", "decode": "decode"}
    placed = [(roles.get(x["role"], x["role"]), tuple(die for dev in x["devices"]
                                                     for die in range(dev * dies, (dev + 1) * dies)))
              for x in plan.placement if x.get("device") == plan.device]
    want = {p.role: p.replicas for p in pools}
    got = {r: sum(1 for role, _ in placed if role == r) for r in want}
    return tuple(placed) if placed and got == want and len(placed) == sum(want.values()) else ()
