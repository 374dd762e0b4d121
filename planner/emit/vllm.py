"""vLLM 0.11 (`vllm serve`): one server per instance, Ray or vLLM's data-parallel flags across nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hardware.errors import PlannerInputError
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

TEMPLATE = "vllm-0.11.yaml"
KV_DTYPES = {"bf16": None, "fp8": "fp8"}  # vLLM CacheDType; "auto" (no flag) keeps the model's 16-bit dtype
QUANTIZATION = {"fp8": "fp8"}  # online dynamic FP8 from a 16-bit checkpoint; others need a quantized checkpoint
# KVTransferConfig of both pools of a disaggregated plan (vllm/config/kv_transfer.py): NIXL moves each prompt's
# KV cache from the prefill server to the decode server; kv_both lets one connector config serve either role.
KV_TRANSFER = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":"))
# Each instance's NIXL handshake listener: its own port block from the node's table, and the address the
# other pool reaches this host on (vllm/envs.py defaults it to localhost, which only works on one node).
NIXL_ENV = {"VLLM_NIXL_SIDE_CHANNEL_PORT": "$NIXL_PORT",
            "VLLM_NIXL_SIDE_CHANNEL_HOST": "${HOST_IP:-$(hostname -I | awk '{print $1}')}"}
ROUTER_NOTE = ("vLLM 0.11's `vllm` command has no prefill/decode router: put a KV-transfer-aware proxy in front of "
               "the two pools (one that sends each request to a prefill server with max_tokens=1, then to a decode "
               "server with the returned kv_transfer_params), or emit `dynamo`, whose frontend routes both pools; "
               "point bench.sh's ENDPOINT at that proxy.")


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
            "max_model_len": d.max_model_len, "nodes": d.nodes_per_instance(p),
            # vLLM schedules each data-parallel rank on its own: the plan's instance batch split over them
            "max_num_seqs": per_rank(p.max_num_seqs, p),
            "kv_transfer": KV_TRANSFER if p.role != "aggregated" else None}


def per_rank(instance_cap: int, p: Pool) -> int:
    """An instance-wide batch cap as the cap of each of its attention-data-parallel ranks."""
    return max(1, -(-instance_cap // p.attention_dp))


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
    if not d.disaggregated:
        return write_files(out, _pool_files(d, d.pool, tpl, engine, notes(d)), tpl["flags"])
    per_pool = {p.role: _pool_files(d, p, pool_template(tpl, p), engine, []) for p in d.pools}
    how = ("bash launch-prefill.sh   # on the prefill nodes (REPLICA / NODE_RANK as each script's header says)\n"
           "bash launch-decode.sh    # on the decode nodes\n"
           "# then start a prefill/decode proxy in front of both pools (see the note below)")
    return write_files(out, disagg_files(d, per_pool, how, [*notes(d), ROUTER_NOTE]), tpl["flags"])


def _pool_files(d: Deployment, p: Pool, tpl: dict[str, Any], engine: str, note_lines: list[str]) -> dict[str, str]:
    opts = options(d, p, engine)
    nodes = opts["nodes"]
    frags = fragments(d, p, tpl, opts, head="$HEAD_IP", node_var="NODE_RANK",
                      port=str(tpl["port"]) if nodes > 1 else "$PORT")
    title = f"{tpl['engine']} {tpl['version']} launch of {d.model}" + (f" ({p.role} pool)" if d.disaggregated else "")
    return common_files(d, p, frags, tpl, title=title, engine_title=f"{engine} {tpl['version']} (`vllm serve`)",
                        nodes=nodes, env={}, notes=note_lines, bench_tool="`vllm bench serve`",
                        slot_env=NIXL_ENV if d.disaggregated else {},
                        port_kinds=("http", "nixl") if d.disaggregated else ("http",))


def check_vendor(d: Deployment, allowed: tuple[str, ...], engine: str, fix: str) -> None:
    if d.vendor not in allowed:
        raise PlannerInputError(f"plan #{d.rank} runs on {d.device} ({d.vendor}); {engine} emits for "
                                f"{', '.join(allowed)} devices; {fix}")
