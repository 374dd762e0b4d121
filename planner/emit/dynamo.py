"""NVIDIA Dynamo 0.4: a DynamoGraphDeployment with a Frontend and vLLM workers (aggregated plans)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.emit import vllm
from planner.emit.base import Fragments, common_files, dump_yaml, render, template, unsupported, write_files
from planner.emit.deployment import Deployment, Pool

TEMPLATE = "dynamo-0.4.yaml"
API = "nvidia.com/v1alpha1"
WORKDIR = "/workspace/components/backends/vllm"  # as in the Dynamo 0.4 vLLM deploy examples


def graph(d: Deployment, p: Pool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    tpl = template(TEMPLATE)
    opts = vllm.options(d, p, "dynamo")
    nodes = opts["nodes"]
    if nodes > 1 and (opts["mode"] != "ray" or p.instance_devices % d.devices_per_node):
        raise unsupported(d, "dynamo", "the operator's multinode vLLM worker spreads one TP x PP group over whole "
                          "nodes, and this instance is attention-data-parallel over nodes",
                          "emit sglang, or pick a plan whose tp x pp fills whole nodes")
    ctx = {"d": d, "p": p, "port": tpl["port"], **opts}
    per_pod = d.devices_per_node if nodes > 1 else p.instance_devices

    def main(args: str) -> dict[str, Any]:
        return {"name": "main", "image": tpl["image"], "workingDir": WORKDIR, "command": ["/bin/sh", "-c"],
                "args": [args]}

    worker: dict[str, Any] = {
        "dynamoNamespace": d.name, "envFromSecret": "hf-token-secret", "componentType": "worker",
        "replicas": p.replicas, "resources": {"limits": {"gpu": str(per_pod)}, "requests": {"gpu": str(per_pod)}},
        "extraPodSpec": {"mainContainer": main(render(tpl["worker"], **ctx))}}
    if nodes > 1:
        worker["multinode"] = {"nodeCount": nodes}
    dgd = {"apiVersion": API, "kind": "DynamoGraphDeployment", "metadata": {"name": d.name},
           "spec": {"backendFramework": "vllm", "services": {
               "Frontend": {"dynamoNamespace": d.name, "componentType": "frontend", "replicas": 1,
                            "extraPodSpec": {"mainContainer": main(render(tpl["frontend"], **ctx))}},
               "VllmDecodeWorker": worker}}}
    return dgd, tpl, opts


def emit(d: Deployment, out: Path) -> list[Path]:
    vllm.check_vendor(d, ("nvidia",), "dynamo", "Dynamo's vLLM runtime image targets NVIDIA GPUs")
    p = d.pool
    dgd, tpl, opts = graph(d, p)
    bench = render(tpl["bench"], d=d, p=p, bench_backend="openai", **opts)
    frags = Fragments(serve="", serve_worker="", bench=bench)
    files = common_files(d, p, frags, tpl, title=f"Dynamo {tpl['version']} graph of {d.model}",
                         engine_title=f"NVIDIA Dynamo {tpl['version']} (vLLM workers)", nodes=1, env={},
                         notes=["`kubectl apply -f dynamo.yaml` needs the Dynamo operator (its CRDs and platform "
                                "chart) in the namespace, and a Secret `hf-token-secret` holding HF_TOKEN."],
                         bench_tool="`vllm bench serve` against the Dynamo frontend")
    files.pop("launch.sh")
    files["README.md"] = files["README.md"].replace(
        files["README.md"].split("## Launch\n\n```\n", 1)[1].split("```", 1)[0], "kubectl apply -f dynamo.yaml\n", 1)
    files["dynamo.yaml"] = dump_yaml([dgd])
    return write_files(out, files, tpl["flags"])
