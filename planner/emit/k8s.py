"""Kubernetes manifests: a Deployment per pool when an instance fits one node, a LeaderWorkerSet when it
spans nodes, a Service in front, and the request's engine (vllm-ascend on Ascend clusters) in the pods.
A disaggregated plan gets a prefill and a decode pool, each its own objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hardware.errors import PlannerInputError
from planner.emit import sglang, trtllm, vllm
from planner.emit.ascend import TEMPLATE as ASCEND_TEMPLATE
from planner.emit.ascend import image as ascend_image
from planner.emit.base import Fragments, common_files, dump_yaml, pool_rows, template, unsupported, write_files
from planner.emit.deployment import Deployment, Pool

LWS_API = "leaderworkerset.x-k8s.io/v1"
LEADER_ADDRESS = "$LWS_LEADER_ADDRESS"  # injected by LWS into every pod of a group (leaderworkerset_types.go)
WORKER_INDEX = "LWS_WORKER_INDEX"  # 0 on the leader, 1..size-1 on workers
SHM_SIZE = "32Gi"  # NCCL/HCCL and engine IPC use /dev/shm; the container default (64 MiB) is too small


def _engine(d: Deployment) -> str:
    return "ascend" if d.vendor == "huawei" else d.plan_engine


def _fragments(d: Deployment, p: Pool, engine: str) -> tuple[dict[str, Any], Fragments, dict[str, Any]]:
    if engine in ("vllm", "ascend"):
        tpl = template(ASCEND_TEMPLATE if engine == "ascend" else vllm.TEMPLATE)
        opts = vllm.options(d, p, engine)
        frags = vllm.fragments(d, p, tpl, opts, head=LEADER_ADDRESS, node_var=WORKER_INDEX, port=str(tpl["port"]))
    elif engine == "sglang":
        tpl = template(sglang.TEMPLATE)
        opts = sglang.options(d, p)
        frags = sglang.fragments(d, p, tpl, opts, head=LEADER_ADDRESS, node_var=WORKER_INDEX, port=str(tpl["port"]))
    elif engine == "trtllm":
        tpl = template(trtllm.TEMPLATE)
        opts = trtllm.options(d, p)
        frags = trtllm.fragments(d, p, tpl, opts, port=str(tpl["port"]))
    else:
        raise PlannerInputError(f"k8s emit has no engine {engine!r}; plan with --engine vllm, sglang or trtllm")
    return tpl, frags, opts


def _container(d: Deployment, image: str, script: str, devices: int, port: int, ready_path: str | None,
               workdir: str | None) -> dict[str, Any]:
    count = str(devices)
    c: dict[str, Any] = {
        "name": "engine", "image": image, "command": ["/bin/sh", "-c"], "args": [script],
        "env": [{"name": "MODEL", "value": d.hf_id},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token",
                                                                    "optional": True}}}],
        "ports": [{"containerPort": port, "name": "http"}],
        "resources": {"limits": {d.resource_name: count}, "requests": {d.resource_name: count}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if workdir:
        c["workingDir"] = workdir
        c["volumeMounts"].append({"name": "engine-config", "mountPath": workdir})
    if ready_path:
        c["readinessProbe"] = {"httpGet": {"path": ready_path, "port": port}, "initialDelaySeconds": 60,
                               "periodSeconds": 10, "failureThreshold": 60}
    return c


def _pod_template(labels: dict[str, str], container: dict[str, Any], config_map: str | None) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}]
    if config_map:
        volumes.append({"name": "engine-config", "configMap": {"name": config_map}})
    return {"metadata": {"labels": labels}, "spec": {"containers": [container], "volumes": volumes}}


def manifests(d: Deployment) -> tuple[list[dict[str, Any]], dict[str, Any], Fragments, dict[str, str]]:
    """The Kubernetes objects of plan `d` (one Deployment or LeaderWorkerSet and one Service per pool), the
    engine template, the last pool's fragments (the decode pool's when disaggregated) and any config files."""
    engine = _engine(d)
    if d.disaggregated and engine in ("ascend", "trtllm"):
        raise unsupported(d, "Kubernetes", f"the {engine} pods have no recorded prefill/decode flags",
                          "plan with --engine vllm or sglang for disaggregated pools")
    objs: list[dict[str, Any]] = []
    extra: dict[str, str] = {}
    for p in d.pools:
        name = d.name if p.role == "aggregated" else f"{d.name}-{p.role}"
        tpl, frags, opts = _fragments(d, p, engine)
        objs += _pool_objects(d, p, engine, tpl, frags, opts, name, extra)
    return objs, tpl, frags, extra


def _pool_objects(d: Deployment, p: Pool, engine: str, tpl: dict[str, Any], frags: Fragments, opts: dict[str, Any],
                  name: str, extra: dict[str, str]) -> list[dict[str, Any]]:
    image = ascend_image(d) if engine == "ascend" else tpl["image"]
    port = int(tpl["port"])
    nodes = d.nodes_per_instance(p)
    objs: list[dict[str, Any]] = []
    config_map = None
    if engine == "trtllm":
        config_map = f"{name}-config"
        extra["extra-llm-api.yaml"] = trtllm.extra_llm_api(d, p, opts)
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": config_map},
                     "data": {"extra-llm-api.yaml": extra["extra-llm-api.yaml"]}})
    workdir = "/config" if config_map else None
    if nodes == 1:
        labels = {"app": name}
        pod = _pod_template(labels, _container(d, image, frags.serve, p.instance_devices, port, tpl["ready_path"],
                                               workdir), config_map)
        objs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                     "spec": {"replicas": p.replicas, "selector": {"matchLabels": labels}, "template": pod}})
        selector = labels
    else:
        if p.instance_devices % d.devices_per_node:
            raise unsupported(d, "Kubernetes", f"an instance of {p.instance_devices} devices does not fill whole "
                              f"{d.devices_per_node}-device nodes", "pick a plan whose instance is whole nodes")
        leader = _pod_template({"app": name, "role": "leader"},
                               _container(d, image, frags.serve, d.devices_per_node, port, tpl["ready_path"], workdir),
                               config_map)
        worker = _pod_template({"app": name, "role": "worker"},
                               _container(d, image, frags.serve_worker, d.devices_per_node, port, None, workdir),
                               config_map)
        objs.append({"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "metadata": {"name": name},
                     "spec": {"replicas": p.replicas, "startupPolicy": "LeaderCreated",
                              "leaderWorkerTemplate": {"size": nodes, "restartPolicy": "RecreateGroupOnPodRestart",
                                                       "leaderTemplate": leader, "workerTemplate": worker}}})
        selector = {"app": name, "role": "leader"}
    objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                 "spec": {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": port}]}})
    return objs


def emit(d: Deployment, out: Path) -> list[Path]:
    objs, tpl, frags, extra = manifests(d)
    p = d.pools[-1]  # the decode pool of a disaggregated plan: bench and README describe what serves tokens
    kinds = sorted({"LeaderWorkerSet" if d.nodes_per_instance(q) > 1 else "Deployment" for q in d.pools})
    kind = " and ".join(kinds)
    services = ", ".join(f"`{o['metadata']['name']}`" for o in objs if o["kind"] == "Service")
    notes = [f"`kubectl apply -f k8s.yaml` creates the {kind}"
             f"{' (install the LeaderWorkerSet controller first)' if 'LeaderWorkerSet' in kinds else ''}"
             f" and Service(s) {services}; a Secret `hf-token` (key `token`) is used if present."]
    if d.disaggregated:
        notes.append("one Deployment/LeaderWorkerSet per pool (prefill and decode) with the engine's "
                     "prefill/decode flags; " + (
                         "route requests with `router.sh` from `--emit sglang`, giving each prefill pod's address "
                         "(pod IPs, not the Service: the decode server pairs with the prefill server that ran the "
                         "prompt) as PREFILL_URL_<i>." if _engine(d) == "sglang" else vllm.ROUTER_NOTE))
        notes.append("prefill/decode pools:\n\n" + pool_rows(d))
    files = common_files(d, p, frags, tpl, title=f"Kubernetes {kind} of {d.model}",
                         engine_title=f"{tpl['engine']} {tpl['version']} on Kubernetes ({kind})", nodes=1, env={},
                         notes=notes, bench_tool="the engine's own benchmark")
    files.pop("launch.sh")
    files["README.md"] = files["README.md"].replace(
        files["README.md"].split("## Launch\n\n```\n", 1)[1].split("```", 1)[0], "kubectl apply -f k8s.yaml\n", 1)
    files["k8s.yaml"] = dump_yaml(objs)
    files.update(extra)
    return write_files(out, files, tpl["flags"])
