"""vLLM 0.11 (`vllm serve`): one server per instance, Ray or vLLM's data-parallel flags across nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hardware.errors import PlannerInputError
from planner.emit.base import Fragments, common_files, render, template, unsupported, write_files
from planner.emit.deployment import Deployment, Pool

TEMPLATE = "vllm-0.11.yaml"
KV_DTYPES = {"bf16": None, "fp8": "fp8"}  # vLLM CacheDType; "auto" (no flag) keeps the model's 16-bit dtype
QUANTIZATION = {"fp8": "fp8"}  # online dynamic FP8 from a 16-bit checkpoint; others need a quantized checkpoint


def mode(d: Deployment, p: Pool, engine: str) -> str:
    """single: one node; dp_multinode: attention-DP ranks over nodes; ray: one rank's TP x PP over nodes."""
    group = p.tp * p.pp
    if group > d.devices_per_node:
        if p.attention_dp > 1:
            raise unsupported(d, engine, f"tp x pp = {group} spans nodes and attention-DP is {p.attention_dp}",
                              "pick a plan whose tp x pp fits one node, or emit sglang")
        return "ray"
    if p.instance_devices > d.devices_per_node:
        if d.devices_per_node % group:
            raise unsupported(d, engine, f"tp x pp = {group} does not divide a node's {d.devices_per_node} devices",
                              "pick a plan whose tp x pp divides the node")
        return "dp_multinode"
    return "single"


def options(d: Deployment, p: Pool, engine: str) -> dict[str, Any]:
    """Flag values a vLLM-family template needs, or a PlannerInputError saying what vLLM cannot express."""
    if d.moe and p.ep not in (1, p.tp * p.attention_dp):
        raise unsupported(d, engine, f"vLLM runs experts over all tp x dp = {p.tp * p.attention_dp} ranks or none, "
                          f"and the plan has ep={p.ep}", "emit sglang or trtllm, which take --ep-size")
    if d.kv not in KV_DTYPES:
        raise unsupported(d, engine, f"vLLM 0.11 has no {d.kv} KV cache dtype",
                          "plan with --kv-cache-dtype fp8 or auto")
    m = mode(d, p, engine)
    return {"mode": m, "expert_parallel": d.moe and p.ep > 1, "kv_dtype": KV_DTYPES[d.kv],
            "quantization": QUANTIZATION.get(d.weights), "dp_local": d.devices_per_node // (p.tp * p.pp),
            "max_model_len": d.isl + d.osl, "nodes": d.nodes_per_instance(p)}


def notes(d: Deployment) -> list[str]:
    out = []
    if d.weights in ("int8", "int4", "fp4"):
        out.append(f"the plan assumes {d.weights} weights: set MODEL to a {d.weights} checkpoint of {d.hf_id} "
                   "(vLLM reads the quantization method from its config.json).")
    if d.weights == "fp8":
        out.append("--quantization fp8 quantizes the 16-bit checkpoint to FP8 at load time; an FP8 checkpoint in "
                   "MODEL works too.")
    return out


def fragments(d: Deployment, p: Pool, tpl: dict[str, Any], opts: dict[str, Any], *, head: str, node_var: str,
              port: str, bench_backend: str = "vllm") -> Fragments:
    ctx = {"d": d, "p": p, "head": head, "node_var": node_var, "node": f"${node_var}", "port": port,
           "bench_backend": bench_backend, **opts}
    return Fragments(serve=render(tpl["serve"], worker=False, **ctx),
                     serve_worker=render(tpl["serve"], worker=True, **ctx),
                     bench=render(tpl["bench"], **ctx))


def emit(d: Deployment, out: Path) -> list[Path]:
    check_vendor(d, ("nvidia", "amd"), "vllm", "use --emit ascend for Ascend clusters")
    return emit_with(d, out, TEMPLATE, "vllm")


def emit_with(d: Deployment, out: Path, template_file: str, engine: str) -> list[Path]:
    """The vLLM-family folder for `d` from one template file (vLLM itself or a platform plugin's)."""
    tpl = template(template_file)
    p = d.pool
    opts = options(d, p, engine)
    nodes = opts["nodes"]
    frags = fragments(d, p, tpl, opts, head="$HEAD_IP", node_var="NODE_RANK",
                      port=str(tpl["port"]) if nodes > 1 else "$PORT")
    title = f"{tpl['engine']} {tpl['version']} launch of {d.model}"
    files = common_files(d, p, frags, tpl, title=title, engine_title=f"{engine} {tpl['version']} (`vllm serve`)",
                         nodes=nodes, env={}, notes=notes(d), bench_tool="`vllm bench serve`")
    return write_files(out, files, tpl["flags"])


def check_vendor(d: Deployment, allowed: tuple[str, ...], engine: str, fix: str) -> None:
    if d.vendor not in allowed:
        raise PlannerInputError(f"plan #{d.rank} runs on {d.device} ({d.vendor}); {engine} emits for "
                                f"{', '.join(allowed)} devices; {fix}")
