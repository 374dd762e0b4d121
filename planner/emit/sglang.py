"""SGLang 0.5 (`python3 -m sglang.launch_server`): one server per instance, --nnodes across nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.emit.base import (
    Fragments,
    common_files,
    disagg_files,
    pool_template,
    render,
    template,
    unsupported,
    write_files,
)
from planner.emit.deployment import Deployment, Pool
from planner.emit.vllm import check_vendor

TEMPLATE = "sglang-0.5.yaml"
KV_DTYPES = {"bf16": None, "fp8": "fp8_e4m3"}  # SGLang spells FP8 KV as fp8_e4m3 / fp8_e5m2, never plain fp8
QUANTIZATION = {"fp8": "fp8"}  # online FP8 (MoE + linear); other precisions need a quantized checkpoint
TRANSFER_BACKEND = "mooncake"  # server_args.py's default disaggregation transfer backend, written out
BOOTSTRAP_PORT = 8998  # server_args.py's default prefill bootstrap port; replica slot r on a node uses 8998 + r


def options(d: Deployment, p: Pool) -> dict[str, Any]:
    if d.kv not in KV_DTYPES:
        raise unsupported(d, "sglang", f"SGLang has no {d.kv} KV cache dtype", "plan with --kv-cache-dtype fp8 or auto")
    return {"kv_dtype": KV_DTYPES[d.kv], "quantization": QUANTIZATION.get(d.weights),
            "nodes": d.nodes_per_instance(p), "transfer_backend": TRANSFER_BACKEND}


def fragments(d: Deployment, p: Pool, tpl: dict[str, Any], opts: dict[str, Any], *, head: str, node_var: str,
              port: str) -> Fragments:
    # one-node replicas may share a node: each takes its bootstrap port from the node's table (placement.py)
    boot = "$BOOTSTRAP_PORT" if port == "$PORT" else str(BOOTSTRAP_PORT)
    ctx = {"d": d, "p": p, "head": head, "node": f"${node_var}", "port": port, "bootstrap_port": boot, **opts}
    serve = render(tpl["serve"], **ctx)
    return Fragments(serve=serve, serve_worker=serve, bench=render(tpl["bench"], **ctx))


def notes(d: Deployment) -> list[str]:
    if d.weights in ("int8", "int4", "fp4"):
        return [f"the plan assumes {d.weights} weights: set MODEL to a {d.weights} checkpoint of {d.hf_id}."]
    return []


def router_script(d: Deployment, tpl: dict[str, Any]) -> str:
    """router.sh: sglang_router in prefill/decode mode over every instance of both pools, addresses from env."""
    prefill, decode = d.pools
    pre_port = pool_template(tpl, prefill)["port"]
    pre = [(f"${{PREFILL_URL_{i}:-http://prefill-{i}:{pre_port}}}", f"${{PREFILL_BOOTSTRAP_{i}:-{BOOTSTRAP_PORT}}}")
           for i in range(prefill.replicas)]
    dec = [f"${{DECODE_URL_{i}:-http://decode-{i}:{tpl['port']}}}" for i in range(decode.replicas)]
    cmd = render(tpl["router"], port=tpl["port"], prefill=[(f'"{u}"', f'"{b}"') for u, b in pre],
                 decode=[f'"{u}"' for u in dec])
    return ("#!/usr/bin/env bash\n"
            f"# Plan #{d.rank}: SGLang's prefill/decode router in front of {prefill.replicas} prefill and "
            f"{decode.replicas} decode server(s).\n"
            "# Set PREFILL_URL_<i> / DECODE_URL_<i> to each server's http://host:port and PREFILL_BOOTSTRAP_<i> to a\n"
            f"# prefill server's bootstrap port ({BOOTSTRAP_PORT} + its replica slot on its node).\n"
            f"set -euo pipefail\n{cmd}\n")


def emit(d: Deployment, out: Path) -> list[Path]:
    check_vendor(d, ("nvidia", "amd"), "sglang", "use --emit ascend for Ascend clusters")
    tpl = template(TEMPLATE)
    if not d.disaggregated:
        return write_files(out, _pool_files(d, d.pool, tpl, notes(d)), tpl["flags"])
    per_pool = {p.role: _pool_files(d, p, pool_template(tpl, p), []) for p in d.pools}
    how = ("bash launch-prefill.sh   # on the prefill nodes (REPLICA / NODE_RANK as each script's header says)\n"
           "bash launch-decode.sh    # on the decode nodes\n"
           "PREFILL_URL_0=http://<prefill host>:<port> DECODE_URL_0=http://<decode host>:<port> bash router.sh")
    files = disagg_files(d, per_pool, how, [*notes(d), "bench.sh measures through the router (its port is the "
                                            "decode pool's, so run the router on a host of its own)."])
    files["router.sh"] = router_script(d, tpl)
    return write_files(out, files, tpl["flags"])


def _pool_files(d: Deployment, p: Pool, tpl: dict[str, Any], note_lines: list[str]) -> dict[str, str]:
    opts = options(d, p)
    nodes = opts["nodes"]
    frags = fragments(d, p, tpl, opts, head="$HEAD_IP", node_var="NODE_RANK",
                      port=str(tpl["port"]) if nodes > 1 else "$PORT")
    role = f" ({p.role} pool)" if d.disaggregated else ""
    return common_files(d, p, frags, tpl, title=f"SGLang {tpl['version']} launch of {d.model}{role}",
                        engine_title=f"SGLang {tpl['version']} (`sglang.launch_server`)", nodes=nodes, env={},
                        notes=note_lines, bench_tool="`python3 -m sglang.bench_serving`",
                        port_kinds=("http", "bootstrap") if d.disaggregated else ("http",))
