"""SGLang 0.5 (`python3 -m sglang.launch_server`): one server per instance, --nnodes across nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.emit.base import Fragments, common_files, render, template, unsupported, write_files
from planner.emit.deployment import Deployment, Pool
from planner.emit.vllm import check_vendor

TEMPLATE = "sglang-0.5.yaml"
KV_DTYPES = {"bf16": None, "fp8": "fp8_e4m3"}  # SGLang spells FP8 KV as fp8_e4m3 / fp8_e5m2, never plain fp8
QUANTIZATION = {"fp8": "fp8"}  # online FP8 (MoE + linear); other precisions need a quantized checkpoint


def options(d: Deployment, p: Pool) -> dict[str, Any]:
    if d.kv not in KV_DTYPES:
        raise unsupported(d, "sglang", f"SGLang has no {d.kv} KV cache dtype", "plan with --kv-cache-dtype fp8 or auto")
    return {"kv_dtype": KV_DTYPES[d.kv], "quantization": QUANTIZATION.get(d.weights),
            "nodes": d.nodes_per_instance(p)}


def fragments(d: Deployment, p: Pool, tpl: dict[str, Any], opts: dict[str, Any], *, head: str, node_var: str,
              port: str) -> Fragments:
    ctx = {"d": d, "p": p, "head": head, "node": f"${node_var}", "port": port, **opts}
    serve = render(tpl["serve"], **ctx)
    return Fragments(serve=serve, serve_worker=serve, bench=render(tpl["bench"], **ctx))


def notes(d: Deployment) -> list[str]:
    if d.weights in ("int8", "int4", "fp4"):
        return [f"the plan assumes {d.weights} weights: set MODEL to a {d.weights} checkpoint of {d.hf_id}."]
    return []


def emit(d: Deployment, out: Path) -> list[Path]:
    check_vendor(d, ("nvidia", "amd"), "sglang", "use --emit ascend for Ascend clusters")
    tpl = template(TEMPLATE)
    p = d.pool
    opts = options(d, p)
    nodes = opts["nodes"]
    frags = fragments(d, p, tpl, opts, head="$HEAD_IP", node_var="NODE_RANK",
                      port=str(tpl["port"]) if nodes > 1 else "$PORT")
    files = common_files(d, p, frags, tpl, title=f"SGLang {tpl['version']} launch of {d.model}",
                         engine_title=f"SGLang {tpl['version']} (`sglang.launch_server`)", nodes=nodes, env={},
                         notes=notes(d), bench_tool="`python3 -m sglang.bench_serving`")
    return write_files(out, files, tpl["flags"])
