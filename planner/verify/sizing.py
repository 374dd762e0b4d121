"""What the torch runner runs for a plan, and what the cost model predicts for exactly that.

A plan made for `--cluster local` runs as planned and is held to its prediction, made again with the
profile `local` has now (or the one the plan named), since the machine may have been calibrated or
have learned from runs since it was planned. A plan made
for another cluster cannot run there from here, so it runs on this machine as a scaled copy:
the same family, layout and per-replica load, with as many replicas as fit, fewer layers (and,
if one layer per stage is still too heavy for a short run, half the width, repeatedly) and
shorter requests; the cost model re-predicts that copy on `local`, so the comparison still tests
the model on hardware at hand. Each change is stated in the run's notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from costmodel.catalog import model as load_model
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.workload import SLO, Workload
from hardware.catalog import cluster as load_cluster
from hardware.errors import PlannerInputError
from hardware.local import LOCAL
from planner.verify.support import check_runnable, supported

STEP_BUDGET_S = 0.025  # weights a device may read per decode step of a scaled copy, in time at its bandwidth
MAX_VOCAB = 32768
MAX_ISL, MAX_OSL, MAX_CLIENTS = 512, 128, 32  # per replica, for scaled copies


@dataclass(frozen=True)
class LocalRun:
    """One plan as the runner will run it, with the prediction to hold it to."""

    rank: int
    label: str
    spec: ModelSpec
    layout: Layout  # dp = replicas run
    workload: Workload
    slo: SLO
    precision: str
    engine: str
    predicted: dict[str, float]  # ttft_ms, tpot_ms, output_tok_s
    predicted_score: float
    as_planned: bool
    notes: tuple[str, ...] = ()


def plan_layout(plan: dict[str, Any]) -> Layout:
    """A plans.json entry's instance layout with its replica count as dp."""
    return Layout(**{**plan["layout"], "dp": max(int(plan.get("replicas") or 1), 1)})


def plan_model(request: dict[str, Any]) -> ModelSpec:
    if "model_spec" in request:
        return ModelSpec.model_validate(request["model_spec"])
    return load_model(request["model"])


def _layer_bytes(spec: ModelSpec, lay: Layout, weight_bytes: float) -> float:
    per = spec.attention_params / lay.tp
    if spec.moe:
        per += (spec.moe.num_experts * spec.expert_params / (lay.tp * lay.attention_dp) + spec.router_params
                + spec.shared_expert_params / lay.tp)
    else:
        per += spec.dense_mlp_params / lay.tp
    return per * weight_bytes


def _halve_width(spec: ModelSpec, lay: Layout) -> ModelSpec | None:
    heads, kv = spec.num_heads // 2, max(1, spec.num_kv_heads // 2)
    if heads < lay.tp or heads % lay.tp or heads % kv or spec.hidden_size < 128:
        return None
    update: dict[str, Any] = {"num_heads": heads, "num_kv_heads": kv, "hidden_size": spec.hidden_size // 2,
                              "intermediate_size": max(1, spec.intermediate_size // 2)}
    if spec.moe:
        width = spec.moe.intermediate_size // 2
        if width % lay.moe_tp:
            return None
        update["moe"] = {**spec.moe.model_dump(), "intermediate_size": width,
                         "shared_intermediate_size": spec.moe.shared_intermediate_size // 2}
    return spec.model_copy(update=update)


def size_model(spec: ModelSpec, lay: Layout, gbps: float, layers: int | None = None,
               weight_bytes: float = 2.0) -> tuple[ModelSpec, list[str]]:
    """A copy of `spec` whose decode step on one device reads about STEP_BUDGET_S of weights: half
    the width while one layer alone is heavier, a vocabulary whose LM head takes at most half the
    budget, then as many layers as the rest allows (at least one per pipeline stage) or `layers`."""
    budget = gbps * 1e9 * STEP_BUDGET_S
    while _layer_bytes(spec, lay, weight_bytes) > budget:
        smaller = _halve_width(spec, lay)
        if smaller is None:
            break
        spec = smaller
    head_room = budget / 2 * lay.tp / (spec.hidden_size * weight_bytes)
    vocab = int(min(spec.vocab_size, MAX_VOCAB, max(1024, head_room)))
    if layers is None:
        rest = budget - vocab * spec.hidden_size * weight_bytes / lay.tp
        layers = min(spec.num_layers, max(lay.pp, int(rest * lay.pp // max(_layer_bytes(spec, lay, weight_bytes), 1))))
    if layers < lay.pp:
        raise PlannerInputError(f"--layers {layers} is fewer than the plan's {lay.pp} pipeline stages; give at least "
                                f"{lay.pp}")
    update: dict[str, Any] = {"num_layers": layers, "vocab_size": vocab, "name": f"{spec.name}-scaled"}
    if spec.moe:
        update["moe"] = {**spec.moe.model_dump(), "first_dense_layers": min(spec.moe.first_dense_layers, layers - 1)}
    scaled = spec.model_copy(update=update)
    return scaled, [f"scaled copy: {scaled.num_layers} layers, hidden {scaled.hidden_size}, {scaled.num_heads} heads, "
                    f"vocab {scaled.vocab_size}"]


def replanned(request: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    """A `--cluster local` request planned again with the profile `local` has now (or the one it named):
    its plans by label, and that profile's name. Nothing when no plan is feasible now."""
    from planner.api import InfeasibleError, plan

    weights, _, kv = request.get("precision", "bf16").partition("+kv-")
    try:
        res = plan(plan_model(request), LOCAL, slo=request.get("slo"), workload=request["workload"],
                   precision=weights, kv_cache_dtype=kv or "auto", engine=request.get("engine", "vllm"),
                   profile=request.get("profile"), power_caps=request.get("power_caps") or (None,))
    except InfeasibleError:
        return {}, ""
    return {p.label(): p.as_dict() for p in res.plans}, res.request.get("profile_name", "")


def local_run(request: dict[str, Any], plan: dict[str, Any], layers: int | None = None,
              fresh: dict[str, dict[str, Any]] | None = None, profile_name: str = "") -> LocalRun:
    """The run for one plans.json entry (see module doc); `fresh`: the request planned again (`replanned`)."""
    from planner.api import estimate  # planner.api imports the searches; keep `import planner.verify` light

    spec = plan_model(request)
    supported(spec)
    lay = plan_layout(plan)
    check_runnable(lay)
    wl = Workload(**request["workload"])
    slo = SLO(**request.get("slo", {}))
    precision, engine = request.get("precision", "bf16"), request.get("engine", "vllm")
    weights, _, kv = precision.partition("+kv-")
    predicted = {k: float(plan["metrics"][k]) for k in ("ttft_ms", "tpot_ms", "output_tok_s")}
    base = dict(rank=plan["rank"], label=plan["label"], slo=slo, precision=weights, engine=engine)
    if request["cluster"] == LOCAL and layers is None:
        now = (fresh or {}).get(plan["label"], plan)  # the same layout planned again with today's profile
        notes = []
        if now is not plan and any(not math.isclose(float(now["metrics"][k]), v, rel_tol=0.005)
                                   for k, v in predicted.items()):
            notes.append(f"predicted again with {profile_name} (plans.json said TTFT {predicted['ttft_ms']:.3g} ms, "
                         f"TPOT {predicted['tpot_ms']:.3g} ms)")
        return LocalRun(spec=spec, layout=lay, workload=wl, predicted={k: float(now["metrics"][k]) for k in predicted},
                        predicted_score=now["score"], as_planned=True, notes=tuple(notes), **base)
    here = load_cluster(LOCAL)
    n = here.num_devices
    if lay.instance_devices > n:
        raise PlannerInputError(f"plan #{plan['rank']} ({plan['label']}) needs {lay.instance_devices} devices per "
                                f"instance and this machine offers {n}; run it with --runner endpoint on its cluster")
    replicas = min(lay.dp, n // lay.instance_devices)
    small, notes = size_model(spec, lay, here.groups[0].device.hbm_gbps, layers)
    per = wl.per_replica(lay.dp)
    isl, osl = min(wl.isl, MAX_ISL), min(wl.osl, MAX_OSL)
    if per.concurrency is not None:
        clients = min(per.concurrency, MAX_CLIENTS)
        run_wl = Workload(isl=isl, osl=osl, concurrency=clients * replicas)
    else:
        run_wl = Workload(isl=isl, osl=osl, rate_rps=(per.rate_rps or 0.0) * replicas)
    if (isl, osl) != (wl.isl, wl.osl) or run_wl.concurrency not in (None, (per.concurrency or 0) * replicas):
        notes.append(f"workload shortened to isl {isl}, osl {osl}" + (
            f", {run_wl.concurrency} clients" if run_wl.concurrency else ""))
    if replicas < lay.dp:
        notes.append(f"{replicas} of {lay.dp} replicas (this machine has {n} devices)")
    run_lay = lay.model_copy(update={"dp": replicas})
    e = estimate(small, LOCAL, layout=run_lay, workload=run_wl, precision=weights,
                 kv_cache_dtype=kv or "auto", engine=engine)
    notes.append("prediction re-made for this machine (`--cluster local`)")
    score = e.output_tok_s / run_lay.total_devices if math.isfinite(e.output_tok_s) else 0.0
    return LocalRun(spec=small, layout=run_lay, workload=run_wl, predicted={
        "ttft_ms": e.ttft_ms, "tpot_ms": e.tpot_ms, "output_tok_s": e.output_tok_s}, predicted_score=score,
        as_planned=False, notes=tuple(notes), **base)
