"""NVIDIA Dynamo 0.4: a DynamoGraphDeployment with a Frontend and vLLM workers, a prefill and a decode worker
service for disaggregated plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.emit import vllm
from planner.emit.base import (
    Fragments,
    common_files,
    dump_yaml,
    pool_rows,
    render,
    template,
    unsupported,
    write_files,
)
from planner.emit.deployment import Deployment, Pool

TEMPLATE = "dynamo-0.4.yaml"
API = "nvidia.com/v1alpha1"
WORKDIR = "/workspace/components/backends/vllm"  # as in the Dynamo 0.4 vLLM deploy examples


SERVICE = {"aggregated": "VllmDecodeWorker", "decode": "VllmDecodeWorker", "prefill": "VllmPrefillWorker"}


def _main(tpl: dict[str, Any], args: str) -> dict[str, Any]:
    return {"name": "main", "image": tpl["image"], "workingDir": WORKDIR, "command": ["/bin/sh", "-c"], "args": [args]}


def _worker(d: Deployment, p: Pool, tpl: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One pool's worker service (a prefill pool's runs `--is-prefill-worker`) and its vLLM options."""
    opts = vllm.options(d, p, "dynamo")
    nodes = opts["nodes"]
    if nodes > 1 and (opts["mode"] != "ray" or p.instance_devices % d.devices_per_node):
        raise unsupported(d, "dynamo", "the operator's multinode vLLM worker spreads one TP x PP group over whole "
                          "nodes, and this instance is attention-data-parallel over nodes",
                          "emit sglang, or pick a plan whose tp x pp fills whole nodes")
    per_pod = d.devices_per_node if nodes > 1 else p.instance_devices
    worker: dict[str, Any] = {
        "dynamoNamespace": d.name, "envFromSecret": "hf-token-secret", "componentType": "worker",
        "replicas": p.replicas, "resources": {"limits": {"gpu": str(per_pod)}, "requests": {"gpu": str(per_pod)}},
        "extraPodSpec": {"mainContainer": _main(tpl, render(tpl["worker"], d=d, p=p, port=tpl["port"], **opts))}}
    if nodes > 1:
        worker["multinode"] = {"nodeCount": nodes}
    return worker, opts


def graph(d: Deployment) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The DynamoGraphDeployment: a Frontend and one worker service per pool (prefill and decode when
    disaggregated, as in Dynamo's disagg examples), the template and the decode pool's options."""
    tpl = template(TEMPLATE)
    services: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for p in d.pools:
        services[SERVICE[p.role]], opts = _worker(d, p, tpl)
    ctx = {"d": d, "port": tpl["port"], **opts}
    frontend = {"dynamoNamespace": d.name, "componentType": "frontend", "replicas": 1,
                "extraPodSpec": {"mainContainer": _main(tpl, render(tpl["frontend"], **ctx))}}
    dgd = {"apiVersion": API, "kind": "DynamoGraphDeployment", "metadata": {"name": d.name},
           "spec": {"backendFramework": "vllm", "services": {"Frontend": frontend, **services}}}
    return dgd, tpl, opts


def emit(d: Deployment, out: Path) -> list[Path]:
    vllm.check_vendor(d, ("nvidia",), "dynamo", "Dynamo's vLLM runtime image targets NVIDIA GPUs")
    p = d.pools[-1]  # the decode pool of a disaggregated plan: bench and README describe what serves tokens
    dgd, tpl, opts = graph(d)
    bench = render(tpl["bench"], d=d, p=p, bench_backend="openai", **opts)
    frags = Fragments(serve="", serve_worker="", bench=bench)
    files = common_files(d, p, frags, tpl, title=f"Dynamo {tpl['version']} graph of {d.model}",
                         engine_title=f"NVIDIA Dynamo {tpl['version']} (vLLM workers)", nodes=1, env={},
                         notes=["`kubectl apply -f dynamo.yaml` needs the Dynamo operator (its CRDs and platform "
                                "chart) in the namespace, and a Secret `hf-token-secret` holding HF_TOKEN.",
                                *(["the graph runs the prefill pool as `VllmPrefillWorker` (`--is-prefill-worker`) and "
                                   "the decode pool as `VllmDecodeWorker`; the Frontend routes each request through "
                                   "both. Pools:\n\n" + pool_rows(d)] if d.disaggregated else [])],
                         bench_tool="`vllm bench serve` against the Dynamo frontend")
    files.pop("launch.sh")
    files["README.md"] = files["README.md"].replace(
        files["README.md"].split("## Launch\n\n```\n", 1)[1].split("```", 1)[0], "kubectl apply -f dynamo.yaml\n", 1)
    files["dynamo.yaml"] = dump_yaml([dgd])
    return write_files(out, files, tpl["flags"])
