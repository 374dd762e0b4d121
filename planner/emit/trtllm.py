"""TensorRT-LLM 1.1 (`trtllm-serve`, PyTorch backend) plus its extra LLM-API YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.emit.base import Fragments, common_files, render, template, unsupported, write_files
from planner.emit.deployment import Deployment, Pool
from planner.emit.vllm import check_vendor, per_rank

TEMPLATE = "trtllm-1.1.yaml"
KV_DTYPES = {"bf16": None, "fp8": "fp8"}  # KvCacheConfig.dtype; None renders "auto"


def options(d: Deployment, p: Pool) -> dict[str, Any]:
    if d.disaggregated:
        raise unsupported(d, "trtllm", "its prefill/decode serving (`trtllm-serve disaggregated` and the cache "
                          "transceiver config) is not among the recorded flags", "emit vllm, sglang or dynamo")
    if d.kv not in KV_DTYPES:
        raise unsupported(d, "trtllm", f"the PyTorch backend has no {d.kv} KV cache", "plan with fp8 or auto KV")
    if p.attention_dp > 1 and p.tp > 1:
        raise unsupported(d, "trtllm", f"enable_attention_dp runs attention with TP 1, and the plan has attention "
                          f"TP {p.tp} x DP {p.attention_dp}", "emit sglang, whose --dp-size splits the TP group")
    nodes = d.nodes_per_instance(p)
    if nodes > 1:
        raise unsupported(d, "trtllm", f"one instance spans {nodes} nodes and the emitted launch is single-node",
                          "emit dynamo or sglang for multi-node instances")
    # trtllm-serve's max_batch_size is per rank, and with attention DP each rank batches on its own
    return {"kv_dtype": KV_DTYPES[d.kv], "nodes": nodes, "max_batch_size": per_rank(p.max_num_seqs, p)}


def fragments(d: Deployment, p: Pool, tpl: dict[str, Any], opts: dict[str, Any], *, port: str) -> Fragments:
    ctx = {"d": d, "p": p, "port": port, **opts}
    serve = render(tpl["serve"], **ctx)
    return Fragments(serve=serve, serve_worker=serve, bench=render(tpl["bench"], **ctx))


def extra_llm_api(d: Deployment, p: Pool, opts: dict[str, Any]) -> str:
    return render(template(TEMPLATE)["extra_llm_api"], d=d, p=p, **opts) + "\n"


def notes(d: Deployment) -> list[str]:
    if d.weights != "bf16":
        return [f"the plan assumes {d.weights} weights: set MODEL to a {d.weights} checkpoint of {d.hf_id} "
                "(e.g. one quantized with NVIDIA ModelOpt); trtllm-serve reads its quantization from the checkpoint."]
    return []


def emit(d: Deployment, out: Path) -> list[Path]:
    check_vendor(d, ("nvidia",), "trtllm", "TensorRT-LLM runs on NVIDIA GPUs only")
    tpl = template(TEMPLATE)
    opts = options(d, d.pools[0])
    p = d.pool
    frags = fragments(d, p, tpl, opts, port="$PORT")
    files = common_files(d, p, frags, tpl, title=f"TensorRT-LLM {tpl['version']} launch of {d.model}",
                         engine_title=f"TensorRT-LLM {tpl['version']} (`trtllm-serve`)", nodes=1, env={},
                         notes=notes(d), bench_tool="TensorRT-LLM's `benchmark_serving`",
                         port_kinds=("http",))
    # launch.sh runs from its own folder so trtllm-serve finds extra-llm-api.yaml beside it
    files["launch.sh"] = files["launch.sh"].replace("set -euo pipefail\n",
                                                    'set -euo pipefail\ncd "$(dirname "$0")"\n', 1)
    files["extra-llm-api.yaml"] = extra_llm_api(d, p, opts)
    return write_files(out, files, tpl["flags"])
