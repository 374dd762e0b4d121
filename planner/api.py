"""The public API: `estimate` one layout, `plan` over every layout of a cluster."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from costmodel.calibration.profile import Profile, profile_for
from costmodel.catalog import model as load_model
from costmodel.energy import check_power_cap
from costmodel.engines import engine as load_engine
from costmodel.estimate import Estimate, build_instance, estimate_instance
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.precision import precision as load_precision
from costmodel.workload import SLO, Workload
from hardware.catalog import cluster as load_cluster
from hardware.errors import PlannerInputError
from hardware.loading import build
from hardware.specs import Cluster
from planner.objective import ServingObjective
from planner.result import Plan, PlanResult
from searches import Budget, Space, rank, search

ModelRef = str | Path | dict[str, Any] | ModelSpec
ClusterRef = str | Path | Cluster


class InfeasibleError(PlannerInputError):
    """Nothing meets the request; the message names the binding constraint and by how much."""

    def __init__(self, message: str, result: PlanResult):
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


def _profile(device: str, profile: str | Path | Profile | None) -> Profile:
    return profile if isinstance(profile, Profile) else profile_for(device, profile)


def estimate(model: ModelRef, cluster: ClusterRef, layout: Layout | dict[str, Any] | None = None,
             workload: Workload | dict[str, Any] | None = None, precision: str = "bf16",
             engine: str = "vllm", kv_cache_dtype: str = "auto", profile: str | Path | Profile | None = None,
             max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None) -> Estimate:
    """Predict TTFT, TPOT, throughput and per-device memory of one layout for a workload."""
    spec = load_model(model)
    clu = load_cluster(cluster)
    lay, wl = as_layout(layout), as_workload(workload)
    group = clu.groups[0]
    if lay.total_devices > group.num_devices:
        raise PlannerInputError(
            f"layout needs {lay.total_devices} devices (tp x attention_dp x pp x dp); cluster "
            f"{clu.name} has {group.num_devices} {group.device.name}; use a larger cluster (e.g. "
            f"{clu.name}x{-(-lay.total_devices // group.num_devices)}) or a smaller layout"
        )
    inst = build_instance(spec, lay, load_precision(precision, kv_cache_dtype), group,
                          _profile(group.device.name, profile), load_engine(engine))
    return estimate_instance(inst, wl, max_num_seqs, max_num_batched_tokens)


def plan(model: ModelRef, cluster: ClusterRef, slo: SLO | dict[str, Any] | None = None,
         workload: Workload | dict[str, Any] | None = None, precision: str = "bf16", engine: str = "vllm",
         kv_cache_dtype: str = "auto", profile: str | Path | Profile | None = None,
         search_strategy: str = "exhaustive", budget_s: float = 60.0, n_jobs: int = 1,
         cross_domain_tp: bool = False, seed: int = 0, power_caps: Sequence[float | None] = (None,),
         usd_per_device_hour: float = 1.0, progress: Callable[[int, int], None] | None = None) -> PlanResult:
    """Every valid layout of `model` on `cluster`, ranked by goodput per device under `slo`.

    With `power_caps` (watts per device; None = uncapped) every layout is also evaluated at each
    cap, so the plans span the energy-latency trade-off (`result.pareto`). `usd_per_device_hour`
    prices `cost_per_mtok`; `progress(done, total)` is called after each cap and device group.
    Raises InfeasibleError (naming what binds and by how much) when no layout qualifies.
    """
    spec = load_model(model)
    clu = load_cluster(cluster)
    slo_, wl = as_slo(slo), as_workload(workload)
    prec = load_precision(precision, kv_cache_dtype)
    eng = load_engine(engine)
    caps = _power_caps(power_caps, clu, profile)
    if not (isinstance(usd_per_device_hour, (int, float)) and 0 < usd_per_device_hour < math.inf):
        raise PlannerInputError(f"usd_per_device_hour={usd_per_device_hour!r} must be a positive price per "
                                "device-hour, e.g. 2.5")
    started = time.monotonic()
    evaluated = []
    steps = [(cap, group) for cap in caps for group in clu.groups]
    for step, (cap, group) in enumerate(steps):
        objective = ServingObjective(spec, group, prec, _profile(group.device.name, profile), eng, wl, slo_,
                                     power_cap_w=cap, usd_per_device_hour=usd_per_device_hour)
        space = Space(spec, group, cross_domain_tp=cross_domain_tp)
        left = max(budget_s - (time.monotonic() - started), 1e-3)
        found = search(space, objective, Budget(time_s=left, seed=seed, n_jobs=n_jobs), search_strategy)
        evaluated += [((group.device.name, objective), e) for e in found]
        if progress is not None:
            progress(step + 1, len(steps))
    ordered = rank([e for _, e in evaluated])
    device_of = {id(e): d for d, e in evaluated}
    plans, rejected = [], []
    for e in ordered:
        device, objective = device_of[id(e)]
        details = objective.details(e.layout) if e.feasible else {}
        p = Plan(layout=e.layout, replicas=e.layout.dp, device=device, metrics=e.metrics,
                 score=e.score, feasible=e.feasible, binding=e.binding, detail=e.detail,
                 power_cap_w=objective.power_cap_w, **details)
        (plans if e.feasible else rejected).append(p)
    plans = _with_reasons(plans, slo_)
    request = {"model": spec.name, "cluster": clu.name, "devices": clu.num_devices,
               "slo": slo_.model_dump(exclude_none=True), "workload": wl.model_dump(exclude_none=True),
               "precision": prec.label, "engine": eng.name, "power_caps": list(caps),
               "usd_per_device_hour": usd_per_device_hour, "cluster_shape": _cluster_shape(clu)}
    stats = {"strategy": search_strategy, "evaluated": len(ordered), "feasible": len(plans),
             "seconds": round(time.monotonic() - started, 3),
             "objective": "goodput_rps per device" if wl.rate_rps else "output tok/s per device"}
    result = PlanResult(request=request, plans=plans, rejected=rejected, search=stats)
    if not plans:
        raise InfeasibleError(_why_nothing(spec.name, clu.name, rejected, slo_), result)
    return result


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


def _with_reasons(plans: list[Plan], slo: SLO) -> list[Plan]:
    """Number the plans and say why each beat the next one down."""
    out = []
    for i, p in enumerate(plans):
        margin = _slo_margin(p, slo)
        if i + 1 < len(plans):
            nxt = plans[i + 1]
            gap = (p.score / nxt.score - 1) * 100 if nxt.score > 0 else float("inf")
            why = f"Beats #{i + 2} ({nxt.label()}) by {gap:.1f}% in score. {margin}"
        else:
            why = margin
        out.append(Plan(**{**p.__dict__, "rank": i + 1, "why": why.strip()}))
    return out


def _slo_margin(p: Plan, slo: SLO) -> str:
    """The objective closest to binding, and its margin; or that no latency objective was set."""
    margins = {k: 1 - p.metrics[k] / limit for k, limit in (("ttft_ms", slo.ttft_ms), ("tpot_ms", slo.tpot_ms))
               if limit}
    if not margins:
        return "No latency objective was set; ranked on throughput alone."
    key = min(margins, key=lambda k: margins[k])
    limit = getattr(slo, key)
    return f"Binding objective: {key} {p.metrics[key]:.1f} of {limit:g} ({margins[key] * 100:.0f}% margin)."


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
