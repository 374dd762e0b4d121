"""The public API: `estimate` one layout, `plan` over every layout of a cluster."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from costmodel.calibration.profile import Profile, profile_for
from costmodel.catalog import model as load_model
from costmodel.disagg import disagg_point
from costmodel.energy import check_power_cap, platform
from costmodel.engines import Engine
from costmodel.engines import engine as load_engine
from costmodel.estimate import Estimate, build_instance, estimate_instance, instance_memory
from costmodel.instance import Instance
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.precision import Precision, on_device
from costmodel.precision import resolve as resolve_precision
from costmodel.serving import capacity_rps, max_running
from costmodel.simulator import Goodput, SchedulerConfig, SimResult, find_goodput
from costmodel.simulator import Setup as SimSetup
from costmodel.simulator import run as sim_run
from costmodel.simulator import setup as sim_setup
from costmodel.speculative import Speculation
from costmodel.workload import SLO, Workload, check_context
from costmodel.workload_dist import Draw, SimWorkload
from costmodel.workload_dist import draw as draw_requests
from hardware.catalog import cluster as load_cluster
from hardware.errors import PlannerInputError, check_finite
from hardware.loading import build
from hardware.local import LOCAL, calibrated_profile
from hardware.specs import Cluster
from planner.calibrate.state import uncalibrated
from planner.objective import PoolCapacity, ServingObjective
from planner.result import Plan, PlanResult
from searches import Budget, Solved, Space
from searches.lp import relax
from searches.parallel import BACKENDS
from searches.placement import GOALS, MODES, UNIT_RPS, Goal, Problem, place, scaled, shapes
from searches.pools import PoolSearch, Variant
from searches.pools import run as run_pools

ModelRef = str | Path | dict[str, Any] | ModelSpec | Any  # Any: a torch.nn.Module (traced; costmodel.torch_import)
ClusterRef = str | Path | Cluster


class InfeasibleError(PlannerInputError):
    """Nothing meets the request; the message names the binding constraint and by how much."""

    def __init__(self, message: str, result: PlanResult | None = None):
        super().__init__(message)
        self.result = result


def as_layout(layout: Layout | dict[str, Any] | None) -> Layout:
    if isinstance(layout, Layout):
        return layout
    return build(Layout, layout or {}, "layout")


def as_workload(workload: Workload | dict[str, Any] | None) -> Workload:
    if isinstance(workload, Workload):
        return workload
    if workload is None:
        raise PlannerInputError("workload: give isl, osl and either concurrency or rate_rps")
    return build(Workload, workload, "workload")


def as_slo(slo: SLO | dict[str, Any] | None) -> SLO:
    if isinstance(slo, SLO):
        return slo
    return build(SLO, slo or {}, "slo")


def _whole(value: Any, name: str, low: int = 1, example: int = 1) -> None:
    """A whole-number argument at least `low` (bools are not numbers here)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise PlannerInputError(f"{name}={value!r} must be a whole number >= {low}, e.g. {example}")


def _optional_whole(value: Any, name: str, example: int) -> None:
    if value is not None:
        _whole(value, name, 1, example)


ONE_TOKEN_NOTE = ("osl=1: TPOT is undefined (no token follows the first), so the tpot_ms objective does not apply "
                  "and is left out")


def _one_token_slo(slo: SLO, wl: Workload) -> tuple[SLO, list[str]]:
    """With one output token there is no time per output token to hold to an objective: drop it, and say so."""
    if wl.osl == 1 and slo.tpot_ms is not None:
        return slo.model_copy(update={"tpot_ms": None}), [ONE_TOKEN_NOTE]
    return slo, []


def _checked_plans(plans: Sequence[Plan]) -> None:
    """A NaN in a plan's figures is a bug, not a rankable answer (InternalError: the CLI exits 1)."""
    for p in plans:
        check_finite({**p.metrics, "score": p.score}, f"plan {p.label()} metrics")


def _runs_on(clu: Cluster, prec: Precision, explicit: bool) -> tuple[Precision, str]:
    """The precision as every device kind of the cluster runs it (costmodel.precision.on_device), and a note."""
    note = ""
    for group in clu.groups:
        prec, said = on_device(prec, group.device, explicit)
        note = note or said
    return prec, note


def _profile(device: str, profile: str | Path | Profile | None) -> Profile:
    return profile if isinstance(profile, Profile) else profile_for(device, profile)


def as_speculation(spec: Speculation | dict[str, Any] | None) -> Speculation | None:
    """None (off), a Speculation, or its fields ({"draft_tokens": 1, "acceptance": 0.85})."""
    if spec is None or isinstance(spec, Speculation):
        return spec
    return build(Speculation, spec, "speculation")


def _engine(name: str, speculation: Speculation | dict[str, Any] | None) -> Engine:
    """The engine's constants, launched with speculative decoding / MTP when `speculation` is given."""
    eng = load_engine(name)
    spec = as_speculation(speculation)
    return eng if spec is None else eng.model_copy(update={"speculation": spec})


def _local_profile(clu: Cluster, profile: str | Path | Profile | None) -> str | Path | Profile | None:
    """`--cluster local` uses what `planner calibrate` measured here unless a profile is given; unmeasured,
    its profile carries the wide error band of an estimate (planner.calibrate.state)."""
    if profile is not None:
        return profile
    if clu.name == LOCAL and calibrated_profile(clu) is None:
        return uncalibrated(profile_for(clu.groups[0].device.name))
    return calibrated_profile(clu)


def estimate(model: ModelRef, cluster: ClusterRef, layout: Layout | dict[str, Any] | None = None,
             workload: Workload | dict[str, Any] | None = None, precision: str | None = None,
             engine: str = "vllm", kv_cache_dtype: str = "auto", profile: str | Path | Profile | None = None,
             max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
             redundant_experts: int = 0, micro_batches: int = 1,
             speculation: Speculation | dict[str, Any] | None = None) -> Estimate:
    """Predict TTFT, TPOT, throughput and per-device memory of one layout for a workload.

    MoE options: `redundant_experts` extra expert copies per layer balanced by EPLB (memory for
    balance), `micro_batches=2` to overlap communication with compute (costmodel/moe.py).
    `speculation` turns on speculative decoding / MTP ({"draft_tokens": 1, "acceptance": 0.85};
    costmodel/speculative.py): steps verify the drafts and emit the accepted tokens."""
    spec = load_model(model)
    clu = load_cluster(cluster)
    profile = _local_profile(clu, profile)
    lay, wl = as_layout(layout), as_workload(workload)
    check_context(spec.name, spec.max_context, wl.isl, wl.osl)
    prec, note = resolve_precision(precision, spec.checkpoint_precision, kv_cache_dtype)
    prec, weight_only = _runs_on(clu, prec, precision is not None)
    _optional_whole(max_num_seqs, "max_num_seqs", 256)
    _optional_whole(max_num_batched_tokens, "max_num_batched_tokens", 8192)
    _whole(redundant_experts, "redundant_experts", 0, 32)
    _whole(micro_batches, "micro_batches", 1, 2)
    group = clu.groups[0]
    if lay.total_devices > group.num_devices:
        raise PlannerInputError(
            f"layout needs {lay.total_devices} devices (tp x attention_dp x pp x dp); cluster "
            f"{clu.name} has {group.num_devices} {group.device.name}; use a larger cluster (e.g. "
            f"{clu.name}x{-(-lay.total_devices // group.num_devices)}) or a smaller layout"
        )
    inst = build_instance(spec, lay, prec, group, _profile(group.device.name, profile), _engine(engine, speculation),
                          redundant_experts, micro_batches)
    est = estimate_instance(inst, wl, max_num_seqs, max_num_batched_tokens)
    check_finite({k: getattr(est, k) for k in ("ttft_ms", "tpot_ms", "output_tok_s", "requests_per_s",
                                               "decode_batch", "queue_ms", "memory", "breakdown_ms")}, "estimate")
    said = tuple(n for n in (note, weight_only) if n)
    return dataclasses.replace(est, notes=(*said, *est.notes)) if said else est


def plan(model: ModelRef, cluster: ClusterRef, slo: SLO | dict[str, Any] | None = None,
         workload: Workload | dict[str, Any] | None = None, precision: str | None = None, engine: str = "vllm",
         kv_cache_dtype: str = "auto", profile: str | Path | Profile | None = None,
         search: str = "auto", budget_s: float = 60.0, n_jobs: int = 1,
         cross_domain_tp: bool = False, seed: int = 0, power_caps: Sequence[float | None] = (None,),
         usd_per_device_hour: float = 1.0, progress: Callable[[int, int], None] | None = None,
         simulate_top: int = 0, modes: Sequence[str] = MODES, goal: str = "auto",
         speculation: Speculation | dict[str, Any] | None = None, backend: str = "loky",
         ray_address: str | None = None) -> PlanResult:
    """Whole deployments of `model` on `cluster` under `slo`, ranked: aggregated pools and
    prefill/decode-disaggregated ones (`modes`, both by default) with every instance placed on
    devices and the rule-of-thumb baseline beside the winner (see `_plan_pools`).

    `search` picks the allocation strategy ("auto", "exhaustive", "cpsat", "lp", "heuristic");
    `goal` is what it optimises: "goodput" for the cluster, or the fewest "devices", least "energy"
    or "cost" that carries the workload's rate ("auto": the latter for an open loop, goodput otherwise).
    With `power_caps` (watts per device; None = uncapped) every layout is also evaluated at each
    cap, so the plans span the energy-latency trade-off (`result.pareto`). `usd_per_device_hour`
    prices `cost_per_mtok`; `progress(done, total)` is called as the capacity table fills.
    With `simulate_top=K` the K best plans are re-ranked by the iteration-level simulator
    (simulated goodput at 90% SLO attainment, or simulated throughput for a closed loop), so
    queueing and batching dynamics the analytic screen averages away decide among them.
    `speculation` plans every layout with speculative decoding / MTP on (see `estimate`).
    `backend` runs the capacity table on joblib workers ("loky", "threading") or a Ray cluster ("ray",
    joining `ray_address`, or a local instance); the answer is the same whichever ran it.
    Raises InfeasibleError (naming what binds and by how much) when no plan qualifies.
    """
    if backend not in BACKENDS:
        raise PlannerInputError(f"backend='{backend}' is unknown; use one of {', '.join(BACKENDS)}")
    spec = load_model(model)
    clu = load_cluster(cluster)
    profile = _local_profile(clu, profile)
    slo_, wl = as_slo(slo), as_workload(workload)
    check_context(spec.name, spec.max_context, wl.isl, wl.osl)
    slo_, notes = _one_token_slo(slo_, wl)
    prec, weight_only = _runs_on(clu, resolve_precision(precision, spec.checkpoint_precision, kv_cache_dtype)[0],
                                 precision is not None)
    notes += [weight_only] if weight_only else []
    eng = _engine(engine, speculation)
    caps = _power_caps(power_caps, clu, profile)
    if not (isinstance(budget_s, (int, float)) and not isinstance(budget_s, bool) and 0 < budget_s < math.inf):
        raise PlannerInputError(f"budget_s={budget_s!r} must be a positive number of seconds, e.g. 60")
    if n_jobs != -1:  # -1: joblib's every core
        _whole(n_jobs, "n_jobs", 1, 4)
    _whole(seed, "seed", 0, 0)
    if not (isinstance(usd_per_device_hour, (int, float)) and 0 < usd_per_device_hour < math.inf):
        raise PlannerInputError(f"usd_per_device_hour={usd_per_device_hour!r} must be a positive price per "
                                "device-hour, e.g. 2.5")
    if not isinstance(simulate_top, int) or isinstance(simulate_top, bool) or simulate_top < 0:
        raise PlannerInputError(f"simulate_top={simulate_top!r} must be a whole number >= 0 (plans to simulate)")
    budget = Budget(time_s=budget_s, seed=seed, n_jobs=n_jobs, backend=backend, address=ray_address)
    return _plan_pools(spec, clu, slo_, wl, prec, eng, caps, profile, modes, search, goal, budget,
                       cross_domain_tp, usd_per_device_hour, notes, progress, simulate_top)


def _profile_names(clu: Cluster, profile: str | Path | Profile | None) -> dict[str, str | None]:
    """The profile a plan was predicted with: its file, when one was named (`planner verify` predicts with it
    again), and a name for reports."""
    prof = _profile(clu.groups[0].device.name, profile)
    path = str(profile) if isinstance(profile, (str, Path)) else None
    return {"profile": path, "profile_name": f"{prof.device}:{prof.trust}" + (f" ({path})" if path else "")}


def _power_caps(caps: Sequence[float | None], clu: Cluster,
                profile: str | Path | Profile | None) -> tuple[float | None, ...]:
    """The distinct caps in order, each checked against every device kind of the cluster."""
    if isinstance(caps, (str, bytes)) or not isinstance(caps, Sequence) or not caps:
        raise PlannerInputError("power_caps: give a list of watts per device, e.g. (None, 600, 500), "
                                "None meaning uncapped")
    out: list[float | None] = []
    for cap in caps:
        if cap is not None and not isinstance(cap, (int, float)):
            raise PlannerInputError(f"power_caps: {cap!r} is not a number of watts; use e.g. 500 or None")
        value = None if cap is None else float(cap)
        for group in clu.groups:
            check_power_cap(group.device, value, _profile(group.device.name, profile))
        if value not in out:
            out.append(value)
    return tuple(out)


def _cluster_shape(clu: Cluster) -> list[dict[str, Any]]:
    """The device grid of each node group, so a report can draw plans onto it."""
    return [{"accelerator": g.device.name, "num_nodes": g.num_nodes, "devices_per_node": g.devices_per_node,
             "nodes_per_domain": g.nodes_per_domain, "scaleup": g.scaleup.name, "scaleout": g.scaleout.name}
            for g in clu.groups]


def _slo_margin(p: Plan, slo: SLO) -> str:
    """The objective closest to binding and its margin, at the load the plan is ranked on (and at the
    offered rate where that differs); or that no latency objective was set."""
    m = p.metrics
    limits = [(k, limit) for k, limit in (("ttft_ms", slo.ttft_ms), ("tpot_ms", slo.tpot_ms)) if limit]
    if not limits:
        return "No latency objective was set; ranked on throughput alone."
    margins = {k: 1 - m[k] / limit for k, limit in limits}
    key = min(margins, key=lambda k: margins[k])
    load = f" at {m['ranked_rps']:.2f} req/s (the load it is ranked on)" if "ranked_rps" in m else ""
    out = f"Binding objective{load}: {key} {m[key]:.1f} of {getattr(slo, key):g} ({margins[key] * 100:.0f}% margin)."
    if f"offered_{key}" in m:
        offered = m[f"offered_{key}"]
        out += (f" At the offered {p.metrics.get('offered_rps', 0.0) or 0.0:.2f} req/s: {key} {offered:.1f} "
                f"({(1 - offered / getattr(slo, key)) * 100:.0f}% margin).")
    return out


def _why_nothing(model: str, cluster: str, rejected: list[Plan], slo: SLO) -> str:
    """One sentence: which constraint bound the closest candidate, and by how much."""
    if not rejected:
        return f"no layout of {model} exists on {cluster}; check the model's heads and the cluster size"
    by_kind: dict[str, int] = {}
    for p in rejected:
        by_kind[p.binding] = by_kind.get(p.binding, 0) + 1
    if set(by_kind) == {"memory"}:
        closest = min(rejected, key=lambda p: p.metrics.get("weights_gib", float("inf")))
        return (f"{model} fits nowhere on {cluster}: every layout runs out of memory (the largest, "
                f"{closest.label()}, {closest.detail}); use more devices, a smaller precision or a bigger device")
    fits = [p for p in rejected if p.binding != "memory"]
    best = max(fits, key=lambda p: p.score)
    counts = ", ".join(f"{n} by {k}" for k, n in sorted(by_kind.items()))
    fix = {"devices": "add devices or lower the rate", "memory": "add devices"}.get(
        best.binding, f"relax {best.binding} or add devices")
    return (f"no layout of {model} on {cluster} meets the request ({counts}); the closest, {best.label()}, "
            f"fails on {best.binding}: {best.detail}; {fix}")


# ---- simulation ----------------------------------------------------------------------------------
SIM_PLAN_REQUESTS = 1000  # requests per simulated run when `plan` re-ranks its top plans
SIM_TARGET = 0.9  # SLO attainment a simulated plan must reach


def as_sim_workload(workload: SimWorkload | Workload | dict[str, Any] | None) -> SimWorkload:
    if isinstance(workload, SimWorkload):
        return workload
    if isinstance(workload, Workload):
        return SimWorkload.from_workload(workload)
    if workload is None:
        raise PlannerInputError("workload: give isl, osl and concurrency, rate_rps or a trace")
    return build(SimWorkload, workload, "workload")


def as_scheduler(scheduler: SchedulerConfig | dict[str, Any] | None) -> SchedulerConfig:
    if isinstance(scheduler, SchedulerConfig):
        return scheduler
    return build(SchedulerConfig, scheduler or {}, "scheduler")


def _sim_setup(model: ModelRef, cluster: ClusterRef, layout: Layout | dict[str, Any] | None, wl: SimWorkload,
               precision: str | None, engine: str, kv_cache_dtype: str, profile: str | Path | Profile | None,
               scheduler: SchedulerConfig | dict[str, Any] | None, seed: int,
               speculation: Speculation | dict[str, Any] | None = None) -> tuple[SimSetup, Draw]:
    spec = load_model(model)
    clu = load_cluster(cluster)
    profile = _local_profile(clu, profile)
    lay = as_layout(layout)
    group = clu.groups[0]
    if lay.total_devices > group.num_devices:
        raise PlannerInputError(
            f"layout needs {lay.total_devices} devices (tp x attention_dp x pp x dp); cluster {clu.name} has "
            f"{group.num_devices} {group.device.name}; use a larger cluster or a smaller layout")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PlannerInputError(f"seed={seed!r} must be a whole number, e.g. 0")
    prec = _runs_on(clu, resolve_precision(precision, spec.checkpoint_precision, kv_cache_dtype)[0],
                    precision is not None)[0]
    inst = build_instance(spec, lay.model_copy(update={"dp": 1}), prec, group, _profile(group.device.name, profile),
                          _engine(engine, speculation))
    drawn = draw_requests(wl, seed)
    longest = int(np.argmax(drawn.isl + drawn.osl))
    check_context(spec.name, spec.max_context, int(drawn.isl[longest]), int(drawn.osl[longest]))
    return sim_setup(inst, as_scheduler(scheduler), drawn, replicas=lay.dp), drawn


def simulate(model: ModelRef, cluster: ClusterRef, layout: Layout | dict[str, Any] | None = None,
             workload: SimWorkload | Workload | dict[str, Any] | None = None, precision: str | None = None,
             engine: str = "vllm", kv_cache_dtype: str = "auto", profile: str | Path | Profile | None = None,
             scheduler: SchedulerConfig | dict[str, Any] | None = None, seed: int = 0,
             progress: Callable[[int, int], None] | None = None,
             speculation: Speculation | dict[str, Any] | None = None) -> SimResult:
    """Simulate serving `workload` on `layout` iteration by iteration (continuous batching, chunked
    prefill, KV blocks and preemption; `dp` replicas behind `scheduler.router`).

    `workload` takes `isl`/`osl` as numbers or distributions ({"dist": "lognormal", "mean": 1500,
    "sigma": 0.8}), and `concurrency` (closed loop), `rate_rps` with `arrival` poisson | gamma (with
    `cv`) | constant, or a `trace` file (BurstGPT, Azure or Mooncake). `progress(done, total)` is
    called as requests complete."""
    wl = as_sim_workload(workload)
    s, drawn = _sim_setup(model, cluster, layout, wl, precision, engine, kv_cache_dtype, profile, scheduler, seed,
                          speculation)
    res = sim_run(s, drawn, progress=progress)
    check_finite({"output_tok_s": res.output_tok_s, "requests_per_s": res.requests_per_s, "duration_s": res.duration_s,
                  **{k: vars(getattr(res, k)) for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")}}, "simulation")
    return res


def _slo_ms(slo: SLO | dict[str, Any] | None) -> dict[str, float]:
    if isinstance(slo, SLO):
        raw: dict[str, Any] = {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms}
    elif isinstance(slo, dict):
        raw = dict(slo)
    else:
        raise PlannerInputError("slo: give per-request objectives, e.g. {'ttft_ms': 500, 'tpot_ms': 50}")
    out = {}
    for k, v in raw.items():
        if k not in ("ttft_ms", "tpot_ms", "e2e_ms"):
            raise PlannerInputError(f"slo.{k} is not a per-request objective; use ttft_ms, tpot_ms or e2e_ms")
        if v is None:
            continue
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf):
            raise PlannerInputError(f"slo.{k}={v!r} must be a positive number of milliseconds")
        out[k] = float(v)
    if not out:
        raise PlannerInputError("slo: give at least one of ttft_ms, tpot_ms or e2e_ms")
    return out


def goodput(model: ModelRef, cluster: ClusterRef, layout: Layout | dict[str, Any] | None = None,
            workload: SimWorkload | Workload | dict[str, Any] | None = None, slo: SLO | dict[str, Any] | None = None,
            target: float = 0.9, precision: str | None = None, engine: str = "vllm", kv_cache_dtype: str = "auto",
            profile: str | Path | Profile | None = None, scheduler: SchedulerConfig | dict[str, Any] | None = None,
            seed: int = 0, rel_tol: float = 0.02,
            on_eval: Callable[[float, float | None], None] | None = None) -> Goodput:
    """The highest open-loop arrival rate (whole layout, all replicas) at which at least `target` of the
    requests meet every objective in `slo` (DistServe's per-request attainment), by bisection on
    simulated runs to `rel_tol`. `workload` gives the lengths and arrival process; its `rate_rps`,
    if any, is ignored (the search sets the rate)."""
    slo_ms = _slo_ms(slo)
    if not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise PlannerInputError(f"target={target!r} must be a share of requests in (0, 1], e.g. 0.9")
    if not (isinstance(rel_tol, (int, float)) and 0 < rel_tol < 1):
        raise PlannerInputError(f"rel_tol={rel_tol!r} must be in (0, 1), e.g. 0.02")
    raw = workload.model_dump(exclude_none=True) if isinstance(workload, (SimWorkload, Workload)) else workload
    if isinstance(raw, dict):
        if raw.get("concurrency") is not None:
            raise PlannerInputError("workload.concurrency: goodput searches the open-loop rate; drop concurrency "
                                    "(and give an arrival process instead)")
        raw = {**raw, "rate_rps": raw.get("rate_rps") or 1.0}
    wl = as_sim_workload(raw)
    s, drawn = _sim_setup(model, cluster, layout, wl, precision, engine, kv_cache_dtype, profile, scheduler, seed)
    isl, osl = int(np.mean(drawn.isl)), int(np.mean(drawn.osl))
    cap = max_running(s.inst, s.kv_blocks * s.sched.block_size, isl, osl, s.sched.max_num_seqs)
    hint = capacity_rps(s.inst, isl, osl, max(cap, 1)) * s.replicas if cap >= 1 else 1.0
    return find_goodput(s, drawn, slo_ms, target, hint_rps=hint * 1.2, rel_tol=rel_tol, on_eval=on_eval)


def _simulate_top(plans: list[Plan], k: int, spec: ModelSpec, clu: Cluster, prec: Any, eng: Any,
                  profile: str | Path | Profile | None, wl: Workload, slo: SLO, seed: int) -> list[Plan]:
    """Re-rank the first `k` plans by the simulator: every pool of an aggregated plan is simulated (one
    instance at its share of the load: goodput at SIM_TARGET attainment for an open loop, throughput
    for a closed loop), the pools' results summed. There is no disaggregated simulator, so a
    disaggregated plan keeps its analytic numbers and its slot; the aggregated plans re-rank among
    the slots they held, so every comparison is simulated against simulated or analytic against analytic."""
    slo_ms = {key: v for key, v in (("ttft_ms", slo.ttft_ms), ("tpot_ms", slo.tpot_ms)) if v}
    top = plans[:k]
    simulated = {i: _simulated(p, spec, clu, prec, eng, profile, wl, slo_ms, seed)
                 for i, p in enumerate(top) if p.mode == "agg"}
    order = sorted(simulated, key=lambda i: (simulated[i].metrics["sim_attainment"] < SIM_TARGET,
                                             -simulated[i].metrics["sim_goodput_rps"]))
    slots = iter(order)
    return [simulated[next(slots)] if i in simulated else p for i, p in enumerate(top)] + plans[k:]


def _simulated(p: Plan, spec: ModelSpec, clu: Cluster, prec: Any, eng: Any, profile: str | Path | Profile | None,
               wl: Workload, slo_ms: dict[str, float], seed: int) -> Plan:
    """`p` with simulated metrics (sim_*), summed over its pools."""
    groups = {g.device.name: g for g in clu.groups}
    total = sum(pool["instances"] * pool["rate_rps"] for pool in p.pools) or 1.0
    good, tokens, worst = 0.0, 0.0, 1.0
    m = dict(p.metrics)
    for pool in p.pools:
        group = groups[pool["device"]]
        inst = Instance(spec, Layout(**pool["layout_fields"]), prec, group, _profile(group.device.name, profile), eng,
                        power_cap_w=p.power_cap_w)
        n = pool["instances"]
        share = pool["rate_rps"] / total  # of the plan's load, per instance of this pool
        if wl.rate_rps is not None:
            per = wl.model_copy(update={"rate_rps": (wl.rate_rps if p.metrics.get("goodput_rps") is None
                                                     else min(wl.rate_rps, p.metrics["goodput_rps"])) * share})
        else:
            per = wl.model_copy(update={"concurrency": max(1, round((wl.concurrency or 1) * share))})
        drawn = draw_requests(SimWorkload.from_workload(per, num_requests=SIM_PLAN_REQUESTS), seed)
        s = sim_setup(inst, SchedulerConfig(), drawn)
        if wl.rate_rps is not None and slo_ms:
            cap = max_running(inst, s.kv_blocks * s.sched.block_size, wl.isl, wl.osl, s.sched.max_num_seqs)
            hint = capacity_rps(inst, wl.isl, wl.osl, max(cap, 1)) * 1.2
            good += find_goodput(s, drawn, slo_ms, SIM_TARGET, hint_rps=hint, rel_tol=0.05).rate_rps * n
            res = sim_run(s, drawn, per.rate_rps)
        else:
            res = sim_run(s, drawn)
            good += res.requests_per_s * n if (res.attainment(slo_ms) if slo_ms else 1.0) >= SIM_TARGET else 0.0
        tokens += res.output_tok_s * n
        worst = min(worst, res.attainment(slo_ms) if slo_ms else 1.0)
        for key, value in (("sim_ttft_p50_ms", res.ttft_ms.p50), ("sim_ttft_p99_ms", res.ttft_ms.p99),
                           ("sim_tpot_p50_ms", res.tpot_ms.p50), ("sim_tpot_p99_ms", res.tpot_ms.p99)):
            m[key] = max(m.get(key, 0.0), value)
    m.update({"sim_goodput_rps": good, "sim_output_tok_s": tokens, "sim_attainment": worst,
              "sim_score": good / p.devices if p.devices else 0.0})
    return Plan(**{**p.__dict__, "metrics": m})


# ---- pool plans: aggregated and disaggregated deployments from capacity tables and a solver -------------
SEARCHES = ("auto", "exhaustive", "cpsat", "lp", "heuristic")


def _plan_pools(spec: ModelSpec, clu: Cluster, slo: SLO, wl: Workload, prec: Any, eng: Any,
                caps: tuple[float | None, ...], profile: str | Path | Profile | None, modes: Sequence[str],
                strategy: str, goal: str, budget: Budget, cross_domain_tp: bool, usd_per_device_hour: float,
                notes: list[str], progress: Callable[[int, int], None] | None = None,
                simulate_top: int = 0) -> PlanResult:
    """Plans with pools (see searches/pools.py); the winner, runner-ups and the rule-of-thumb baseline."""
    mode_list = _modes(modes)
    if strategy not in SEARCHES:
        raise PlannerInputError(f"search='{strategy}' is unknown; use one of {', '.join(SEARCHES)}")
    if goal not in ("auto", *GOALS):
        raise PlannerInputError(f"goal='{goal}' is unknown; use one of auto, {', '.join(GOALS)}")
    kind = goal if goal != "auto" else ("devices" if wl.rate_rps else "goodput")
    if kind != "goodput" and not wl.rate_rps:
        raise PlannerInputError(f"goal='{kind}' minimises for a target rate; give workload rate_rps or use "
                                "goal='goodput'")
    objectives, variants = [], []
    for cap in caps:
        for gi, group in enumerate(clu.groups):
            space = Space(spec, group, cross_domain_tp=cross_domain_tp)
            for redundant, micro in space.knobs():  # EPLB slots and two-batch overlap (wide EP only)
                objectives.append(ServingObjective(spec, group, prec, _profile(group.device.name, profile), eng, wl,
                                                   slo, power_cap_w=cap, usd_per_device_hour=usd_per_device_hour,
                                                   redundant_experts=redundant, micro_batches=micro))
                knob = (f"r{redundant}" if redundant else "") + (f"mb{micro}" if micro > 1 else "")
                tag = " ".join(t for t in ("" if cap is None else f"{cap:g}W", knob) if t)
                layouts = space.layouts() if not redundant else space.redundant_layouts(redundant)
                variants.append(Variant(gi, tag, tuple(layouts)))
    out_link = min((g.scaleout for g in clu.groups), key=lambda link: link.gbps)
    groups = shapes(clu, {g.device.name: usd_per_device_hour for g in clu.groups})
    target = scaled(wl.rate_rps) if kind != "goodput" and wl.rate_rps else 0
    found = run_pools(groups, variants, PoolCapacity(tuple(objectives), out_link), mode_list, Goal(kind, target),
                      strategy, budget, progress=progress)
    key = {(v.group, v.tag): i for i, v in enumerate(variants)}
    plans = [_pool_plan(found.problems[m], s, objectives, key, clu, wl, out_link)
             for m in mode_list for s in found.solved[m]]
    plans.sort(key=lambda p: _rank_key(p, kind))
    base = (_pool_plan(found.baseline_problem, found.baseline, objectives, key, clu, wl, out_link)
            if found.baseline is not None and found.baseline_problem is not None else None)
    sim_started = time.monotonic()
    if simulate_top and plans:
        plans = _simulate_top(plans, simulate_top, spec, clu, prec, eng, profile, wl, slo, budget.seed)
    band = _profile(clu.groups[0].device.name, profile).for_engine(eng.name).error_band.get("tpot_ms")
    plans = _pool_reasons(plans, slo, kind, base, band)
    _checked_plans(plans)
    rejected = [Plan(layout=r.layout, replicas=0, device=clu.groups[variants[r.variant].group].device.name,
                     metrics=dict(r.cap.metrics), score=0.0, feasible=False, binding=r.cap.binding,
                     detail=r.cap.detail, mode="agg" if r.role == "agg" else "disagg",
                     power_cap_w=objectives[r.variant].power_cap_w)
                for r in found.rows if not r.cap.feasible]
    stats: dict[str, Any] = {"strategy": strategy, "modes": list(mode_list), "goal": kind, **found.stats,
                             "evaluated": len(found.rows), "feasible": len(plans),
                             "objective": {"goodput": "cluster goodput_rps"}.get(kind, f"fewest {kind} for the rate")}
    if simulate_top:
        stats.update({"simulated": min(simulate_top, len(plans)),
                      "simulation_seconds": round(time.monotonic() - sim_started, 3)})
    if base is not None:
        stats["baseline"] = {"label": base.label(), "devices": base.devices,
                             "goodput_rps": base.metrics.get("goodput_rps", 0.0)}
        if plans and base.metrics.get("goodput_rps", 0.0) > 0:
            stats["baseline_ratio"] = plans[0].metrics["goodput_rps"] / base.metrics["goodput_rps"]
            stats["baseline_devices_ratio"] = base.devices / plans[0].devices if plans[0].devices else None
    request = {"model": spec.name, "cluster": clu.name, "devices": clu.num_devices, "notes": notes,
               "slo": slo.model_dump(exclude_none=True), "workload": wl.model_dump(exclude_none=True),
               "precision": prec.label, "engine": eng.name, "power_caps": list(caps),
               "usd_per_device_hour": usd_per_device_hour, "cluster_shape": _cluster_shape(clu),
               "model_spec": spec.model_dump(),  # lets `planner verify` rebuild a model given by path or module
               **_profile_names(clu, profile)}
    candidates = [{"role": r.role, "device": clu.groups[variants[r.variant].group].device.name,
                   "layout": r.layout.label(), "layout_fields": r.layout.model_dump(),
                   "redundant_experts": objectives[r.variant].redundant_experts,
                   "micro_batches": objectives[r.variant].micro_batches,
                   "power_cap_w": objectives[r.variant].power_cap_w, "feasible": r.cap.feasible,
                   "rate_rps": r.cap.rate_rps, "binding": r.cap.binding, "detail": r.cap.detail,
                   "metrics": {k: v for k, v in r.cap.metrics.items()
                               if k in ("ttft_ms", "tpot_ms", "decode_batch", "running", "max_running")}}
                  for r in found.rows]
    result = PlanResult(request=request, plans=plans, rejected=rejected, search=stats, candidates=candidates)
    if not plans:
        raise InfeasibleError(_why_no_pool(spec.name, clu.name, found, rejected, slo, wl), result)
    return result


def _modes(modes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = tuple(m.strip() for m in modes.split(","))
    out = tuple(dict.fromkeys(modes))
    if not out or any(m not in MODES for m in out):
        raise PlannerInputError(f"modes={list(modes)!r}: give one or both of {', '.join(MODES)}, "
                                "e.g. ('agg', 'disagg')")
    return out


def _rank_key(p: Plan, kind: str) -> tuple[float, float]:
    g = p.metrics.get("goodput_rps", 0.0)
    if kind == "goodput":
        return (-round(g, 4), p.devices)
    primary = {"devices": p.devices, "energy": p.metrics.get("power_w", 0.0),
               "cost": p.metrics.get("cost_per_hour", 0.0)}[kind]
    return (primary, -g)


def _pool_plan(problem: Problem, solved: Solved, objectives: Sequence[ServingObjective],
               variant_of: dict[tuple[int, str], int], clu: Cluster, wl: Workload, out_link: Any) -> Plan:
    """A Plan for one allocation: pools, placement and metrics at the operating rate."""
    inst = solved.allocation.instances(problem)
    goodput = solved.value.goodput * UNIT_RPS
    pools, parts = [], []
    for i, n in sorted(inst.items(), key=lambda t: ("prefill", "agg", "decode").index(problem.configs[t[0]].role)):
        c = problem.configs[i]
        obj = objectives[variant_of[(c.group, c.tag)]]
        knobs = (f"-r{obj.redundant_experts}" if obj.redundant_experts else "") + (
            f"-mb{obj.micro_batches}" if obj.micro_batches > 1 else "")
        per_rank = int(c.metrics.get("max_running", 0.0)) // max(c.layout.attention_dp, 1)
        seqs = max(1, min(per_rank, obj.engine.max_num_seqs)) if per_rank else obj.engine.max_num_seqs
        pools.append({"role": c.role, "device": clu.groups[c.group].device.name,
                      "layout": c.layout.model_copy(update={"dp": 1}).label() + knobs, "instances": n,
                      "devices": n * c.devices, "rate_rps": c.rate * UNIT_RPS, "binding": c.binding,
                      "detail": c.detail, "power_cap": "" if obj.power_cap_w is None else f"{obj.power_cap_w:g}W",
                      "layout_fields": c.layout.model_copy(update={"dp": 1}).model_dump(),
                      "redundant_experts": obj.redundant_experts, "micro_batches": obj.micro_batches,
                      # engine knobs an emitter sets for this pool: the sequences its KV cache admits
                      # (per attention-DP rank), the token budget per iteration the plan was costed at
                      "engine": {"max_num_seqs": seqs,
                                 "max_num_batched_tokens": obj.engine.max_num_batched_tokens,
                                 "chunked_prefill": obj.engine.chunked_prefill},
                      # sequences one instance runs at its rated load, and what its KV cache admits
                      "running": c.metrics.get("running", 0.0),
                      "max_running": c.metrics.get("max_running", 0.0)})
        parts.append((c, n, obj))
    placed = tuple({"role": problem.configs[p.config].role, "device": clu.groups[p.group].device.name,
                    "group": p.group, "devices": list(p.devices), "local_kv": p.local_kv}
                   for p in place(problem, solved.allocation))
    ranked = goodput if problem.goal.kind == "goodput" else min(goodput, wl.rate_rps or goodput)
    if problem.mode == "disagg":
        (pc, x, pobj), (dc, y, dobj) = parts[0], parts[-1]
        local = sum(n for (j, _), n in solved.allocation.local.items() if problem.configs[j] is pc) == x
        link = pobj.group.scaleup if local and pc.group == dc.group else out_link

        def at(rate: float) -> dict[str, float]:
            point = disagg_point(pobj.instance(pc.layout), x, dobj.instance(dc.layout), y, wl, rate, link)
            out = point.metrics()
            extra_w = x * pc.devices + y * dc.devices
            busy = (x * pc.devices * min(rate / max(x * pc.rate * UNIT_RPS, 1e-12), 1.0) + y * dc.devices) / extra_w
            mems = [instance_memory(o.instance(c.layout), wl, max(o.engine.max_num_batched_tokens, wl.isl))
                    for c, o in ((pc, pobj), (dc, dobj))]
            mem = max(mems, key=lambda mb: mb.weights_gib + mb.kv_cache_gib)  # the fuller device
            return out | {"max_running": dc.metrics.get("max_running", 0.0), "busy_fraction": busy,
                          "weights_gib": mem.weights_gib, "kv_cache_gib": mem.kv_cache_gib,
                          "device_power_w": out["power_w"] / extra_w - _platform_w(pobj)}
        lay, replicas, device, cap = dc.layout.model_copy(update={"dp": y}), y, pools[-1]["device"], dobj.power_cap_w
        extra: dict[str, Any] = {"prefill_layout": pc.layout, "prefill_instances": x,
                                 "prefill_device": pools[0]["device"]}
    else:
        def at(rate: float) -> dict[str, float]:
            return _agg_pool_metrics(parts, rate, wl, solved.value.goodput)
        c, n, obj = max(parts, key=lambda t: t[1] * t[0].devices)
        lay, replicas, cap = c.layout.model_copy(update={"dp": n}), n, obj.power_cap_w
        device = clu.groups[c.group].device.name
        extra = {}
        details = obj.details(lay)
        extra |= {"breakdown_ms": details["breakdown_ms"], "memory_gib": details["memory_gib"]}
    # latencies at the load the plan is ranked on (its goodput, or the target rate it is sized for),
    # and at the offered rate, labelled offered_*, where that differs and the plan carries it
    metrics = at(ranked)
    metrics["ranked_rps"] = ranked
    if wl.rate_rps and abs(wl.rate_rps - ranked) > 1e-9 * ranked and wl.rate_rps <= goodput:
        offered = at(wl.rate_rps)
        metrics |= {f"offered_{k}": offered[k] for k in ("ttft_ms", "tpot_ms", "output_tok_s", "power_w")}
        metrics["offered_rps"] = wl.rate_rps
    devices = solved.value.devices
    price = sum(problem.shape(i).price_per_device_hour * problem.configs[i].devices * n for i, n in inst.items())
    tokens = metrics.get("output_tok_s", 0.0)
    metrics |= {"goodput_rps": goodput, "devices": float(devices), "cost_per_hour": price,
                "output_tok_s_per_device": tokens / devices if devices else 0.0,
                "cost_per_mtok": price / (tokens * 3600) * 1e6 if tokens > 0 else math.inf,
                "prefill_rps": solved.value.prefill * UNIT_RPS, "decode_rps": solved.value.decode * UNIT_RPS}
    score = goodput if problem.goal.kind == "goodput" else (problem.goal.target * UNIT_RPS) / max(
        {"devices": devices, "energy": metrics.get("power_w", 0.0), "cost": price}[problem.goal.kind], 1e-9)
    return Plan(layout=lay, replicas=replicas, device=device, metrics=metrics, score=score, power_cap_w=cap,
                mode=problem.mode, pools=tuple(pools), placement=placed, **extra)


def _platform_w(obj: ServingObjective) -> float:
    """Host, NIC and switch watts per device (what `power_w` holds beyond the boards)."""
    plat = platform(obj.group, obj.profile)
    return plat.host_w + plat.nic_w + plat.switch_w


ADDITIVE = ("output_tok_s", "requests_per_s", "power_w", "energy_kwh_per_hour")
WORST = ("ttft_ms", "tpot_ms", "decode_batch")


def _agg_pool_metrics(parts: list[tuple[Any, int, ServingObjective]], rate: float, wl: Workload,
                      goodput_units: int) -> dict[str, float]:
    """Aggregated pools share the rate in proportion to capacity; latencies are the worst pool's, sums
    are summed, and the rest (memory, running sequences) are the largest pool's."""
    out: dict[str, float] = {}
    devices = 0
    for c, n, obj in sorted(parts, key=lambda t: t[1] * t[0].devices):
        share = rate * c.rate * n / max(goodput_units, 1)
        m = obj._metrics(obj.instance(c.layout), wl.model_copy(update={"rate_rps": share, "concurrency": None}), n)
        out |= {k: v for k, v in m.items() if k not in ADDITIVE + WORST}
        for k in WORST:
            out[k] = max(out.get(k, 0.0), m.get(k, 0.0))
        for k in ADDITIVE:
            out[k] = out.get(k, 0.0) + m.get(k, 0.0)
        devices += n * c.devices
    tokens, rps = out.get("output_tok_s", 0.0), out.get("requests_per_s", 0.0)
    out["energy_j_per_token"] = out["power_w"] / tokens if tokens > 0 else math.inf
    out["energy_j_per_request"] = out["power_w"] / rps if rps > 0 else math.inf
    out["tok_s_per_user"] = 1e3 / out["tpot_ms"] if 0 < out.get("tpot_ms", 0.0) < math.inf else 0.0
    if len(parts) > 1:
        out["device_power_w"] = out["power_w"] / devices - _platform_w(parts[-1][2])
    return out


def _what_binds(p: Plan) -> str:
    """The constraint that holds the plan back: the pool that limits goodput and what limits its instances."""
    m = p.metrics
    if p.mode == "disagg":
        pre, dec = m.get("prefill_rps", 0.0), m.get("decode_rps", 0.0)
        pool = p.pools[0] if pre <= dec else p.pools[-1]
        return (f"the {pool['role']} pool binds ({min(pre, dec):.2f} of {max(pre, dec):.2f} req/s matched), its "
                f"instances limited by {pool['binding']} ({pool['detail']})")
    pool = max(p.pools, key=lambda q: q["devices"])
    return (f"at its capacity ({m.get('goodput_rps', 0.0):.2f} req/s) its {pool['layout']} instances are limited "
            f"by {pool['binding']} ({pool['detail']})")


def _pool_reasons(plans: list[Plan], slo: SLO, kind: str, base: Plan | None,
                  band: tuple[float, float] | None = None) -> list[Plan]:
    """Rank numbers and why: the winner's binding constraint and SLO margin, how it beat the next one
    (simulated goodput against simulated where both were simulated), and whether that lead is within
    the calibration's p10-p90 error band (then their order is uncertain)."""
    out = []
    for i, p in enumerate(plans):
        why = f"Binds: {_what_binds(p)}. {_slo_margin(p, slo)}"
        if i + 1 < len(plans):
            nxt = plans[i + 1]
            sim = "sim_goodput_rps" in p.metrics and "sim_goodput_rps" in nxt.metrics
            key = "sim_goodput_rps" if sim else "goodput_rps"
            g, h = p.metrics[key], nxt.metrics[key]
            what = "simulated goodput" if sim else "goodput"
            primary, other = _rank_key(p, kind)[0], _rank_key(nxt, kind)[0]
            if kind == "goodput" or sim:
                edge = f"{(g / h - 1) * 100:.1f}% more {what}" if h > 0 else f"{what} where it has none"
                close = band is not None and h > 0 and g <= h * band[1] / band[0]
            elif primary < other:
                unit = {"devices": "devices", "energy": "W", "cost": "USD/h"}[kind]
                edge = f"less {kind} ({primary:g} {unit} against {other:g})"
                close = band is not None and other <= primary * band[1] / band[0] and kind != "devices"
            else:
                edge = f"as little {kind} and {g:.2f} against {h:.2f} req/s of headroom"
                close = band is not None and h > 0 and g <= h * band[1] / band[0]
            why += f" Beats #{i + 2} ({nxt.label()}) with {edge}"
            if close and band is not None:
                why += (f", within the model's p10-p90 error band (x{band[0]:.2f}-x{band[1]:.2f}), so their "
                        "order is uncertain")
            why += f"; #{i + 2} loses because {_what_binds(nxt)}."
        if i == 0 and base is not None and base.metrics.get("goodput_rps", 0) > 0:
            why += (f" Rule of thumb ({base.label()}): {base.metrics['goodput_rps']:.2f} req/s on {base.devices} "
                    f"devices; this plan {p.metrics['goodput_rps'] / base.metrics['goodput_rps']:.2f}x its goodput "
                    f"on {p.devices / base.devices:.2f}x its devices.")
        out.append(Plan(**{**p.__dict__, "rank": i + 1, "why": why.strip()}))
    return out


def _why_no_pool(model: str, cluster: str, found: PoolSearch, rejected: list[Plan], slo: SLO, wl: Workload) -> str:
    """What binds when no pool plan qualifies: per-instance constraints, or the cluster's size for the rate."""
    if not any(r.cap.feasible for r in found.rows):
        return _why_nothing(model, cluster, rejected, slo)
    roles = {"agg": ("agg",), "disagg": ("prefill", "decode")}
    missing = [next((role for role in roles[m] if not any(r.cap.feasible for r in found.rows if r.role == role)),
                    None) for m in found.problems]
    if all(missing):
        role = missing[-1]
        same = [p for p, r in zip(rejected, (r for r in found.rows if not r.cap.feasible), strict=True)
                if r.role == role]
        return f"no {role} instance qualifies: " + _why_nothing(model, cluster, same, slo)
    most = max((relax(Problem(p.groups, p.configs, p.mode, Goal("goodput"))).goodput * UNIT_RPS
                for p in found.problems.values() if p.configs), default=0.0)
    return (f"no plan of {model} on {cluster} carries {wl.rate_rps:g} req/s under the SLO: devices bind - the "
            f"cluster carries at most {most:.2f} req/s (LP bound over every layout and mode); add devices or "
            "lower the rate")
