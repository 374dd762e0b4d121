"""Deployment emitters: every emitted flag is a recorded flag of the pinned engine version with a value of
the right form, every YAML parses, every Kubernetes object validates against its schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from hardware.errors import PlannerInputError
from planner import plan
from planner.cli import main
from planner.emit import TARGETS, argcheck
from planner.emit.base import template
from planner.emit.deployment import split_precision

SCHEMAS = Path(__file__).parents[1] / "planner" / "emit" / "schemas"
K8S_VERSION = "1.30.0"
FLAG_FILES = {"vllm": "vllm-0.11.yaml", "sglang": "sglang-0.5.yaml", "trtllm": "trtllm-1.1.yaml",
              "dynamo": "dynamo-0.4.yaml", "ascend": "vllm-ascend-0.11.yaml"}


@pytest.fixture(scope="module")
def dense():  # one-node instances, two replicas per node (aggregated: plan weighs disagg too by default)
    return plan("llama-3.1-8b", "dgx-h100", slo={"ttft_ms": 1000, "tpot_ms": 50},
                workload={"isl": 1024, "osl": 256, "concurrency": 64}, budget_s=20, modes=("agg",))


@pytest.fixture(scope="module")
def spanning():  # Llama-405B bf16 needs 16 GPUs: instances span two nodes
    return plan("llama-3.1-405b", "dgx-h100x2", workload={"isl": 1024, "osl": 256, "concurrency": 32}, budget_s=20)


@pytest.fixture(scope="module")
def moe_fp8():  # MoE with attention-DP and FP8 weights + FP8 KV, open loop
    return plan("qwen3-235b-a22b", "dgx-h100x2", workload={"isl": 2048, "osl": 512, "rate_rps": 5},
                precision="fp8", kv_cache_dtype="fp8", budget_s=4)


@pytest.fixture(scope="module")
def ascend():  # Atlas 800 A3: 8 x 910C packages = 16 dies
    return plan("qwen3-32b", "atlas-800-a3", workload={"isl": 1024, "osl": 256, "concurrency": 32}, budget_s=20)


def _flag_file(folder: Path) -> str:
    readme = (folder / "README.md").read_text()
    return next(f for f in FLAG_FILES.values() if f"flags/{f}" in readme)


def _check_folder(folder: Path) -> int:
    """Every command and config key in `folder` against the recorded flags; returns commands checked."""
    sp = argcheck.spec(_flag_file(folder))
    checked = 0
    for path in sorted(folder.iterdir()):
        text = path.read_text()
        if path.suffix == ".sh":
            errors, n = argcheck.check_commands(argcheck.commands_in_script(text), sp)
        elif path.suffix == ".yaml":
            docs = [d for d in yaml.safe_load_all(text) if d]  # every YAML parses
            if path.name in sp.configs:
                errors, n = [e for d in docs for e in argcheck.check_config(d, sp.configs[path.name])], 0
            else:
                errors, n = argcheck.check_commands([a for d in docs for a in argcheck.container_argvs(d)], sp)
        else:
            continue
        assert not errors, f"{path}: {errors}"
        checked += n
    return checked


def _at(obj: Any, path: list[str]) -> list[Any]:
    if not path:
        return [obj]
    head, rest = path[0], path[1:]
    if head == "*":
        return [x for v in obj.values() for x in _at(v, rest)]
    return _at(obj[head], rest) if isinstance(obj, dict) and head in obj else []


def _validate_part(obj: dict[str, Any], kind: str) -> None:
    """A sub-object (PodTemplateSpec, Container) against the same strict Kubernetes schema set."""
    from importlib.resources import files

    from referencing import Registry, Resource

    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    schema = json.loads((folder / f"{kind.lower()}-v1.json").read_text())
    defs = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


def validate_k8s(obj: dict[str, Any]) -> None:
    """Built-in kinds against the Kubernetes OpenAPI-derived JSON schema (strict: unknown fields fail);
    CRDs against their CRD schema, with embedded pod templates / containers against Kubernetes'."""
    crd = {"LeaderWorkerSet": "leaderworkerset-v1.json", "DynamoGraphDeployment": "dynamographdeployment-v1alpha1.json"}
    if obj["kind"] not in crd:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    schema = json.loads((SCHEMAS / crd[obj["kind"]]).read_text())
    jsonschema.validate(obj, schema)
    parts = ((schema.get("x-pod-templates", []), "PodTemplateSpec"), (schema.get("x-containers", []), "Container"))
    for paths, kind in parts:
        for p in paths:
            for sub in _at(obj, p):
                _validate_part(sub, kind)


def _manifests(folder: Path) -> list[dict[str, Any]]:
    out = []
    for name in ("k8s.yaml", "dynamo.yaml"):
        if (folder / name).exists():
            out += [d for d in yaml.safe_load_all((folder / name).read_text()) if d]
    return out


@pytest.mark.parametrize("target", ["vllm", "sglang", "trtllm", "dynamo", "k8s"])
def test_every_target_emits_checked_files_for_a_gpu_plan(dense, tmp_path, target):
    paths = dense.emit(target, tmp_path, top=2)
    folders = sorted({p.parent for p in paths})
    assert [f.name for f in folders] == ["plan-1", "plan-2"]
    for folder in folders:
        assert (folder / "README.md").exists() and (folder / "bench.sh").exists()
        assert _check_folder(folder) >= 1
        for obj in _manifests(folder):
            validate_k8s(obj)
    readme = (folders[0] / "README.md").read_text()
    assert f"{dense.plans[0].metrics['tpot_ms']:.1f} ms" in readme  # says what the plan predicts


def test_vllm_launch_carries_the_plan(dense, tmp_path):
    best = dense.plans[0]
    dense.emit("vllm", tmp_path)
    script = (tmp_path / "vllm" / "plan-1" / "launch.sh").read_text()
    argv = next(a for a in argcheck.commands_in_script(script) if a[:2] == ["vllm", "serve"])
    assert argv[argv.index("--tensor-parallel-size") + 1] == str(best.layout.tp)
    assert argv[argv.index("--max-num-seqs") + 1] == str(int(best.metrics["max_running"]))
    assert "--enable-chunked-prefill" in argv
    bench = argcheck.commands_in_script((tmp_path / "vllm" / "plan-1" / "bench.sh").read_text())[-1]
    assert bench[bench.index("--max-concurrency") + 1] == "64"
    assert bench[bench.index("--random-input-len") + 1] == "1024"


def test_multinode_instances_use_leaderworkerset_and_node_ranks(spanning, tmp_path):
    best = spanning.plans[0]
    assert best.layout.instance_devices > 8
    spanning.emit("k8s", tmp_path)
    objs = _manifests(tmp_path / "k8s" / "plan-1")
    lws = next(o for o in objs if o["kind"] == "LeaderWorkerSet")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == best.layout.instance_devices // 8
    for obj in objs:
        validate_k8s(obj)
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert "ray start --address=$LWS_LEADER_ADDRESS:6379 --block" in worker["args"][0]
    spanning.emit("sglang", tmp_path)
    script = (tmp_path / "sglang" / "plan-1" / "launch.sh").read_text()
    argv = next(a for a in argcheck.commands_in_script(script) if a[:3] == ["python3", "-m", "sglang.launch_server"])
    assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--node-rank") + 1] == "$NODE_RANK"
    assert spanning.emit("trtllm", tmp_path, top=1) == [tmp_path / "trtllm" / "SKIPPED.md"]
    assert "spans 2 nodes" in (tmp_path / "trtllm" / "SKIPPED.md").read_text()


def test_fp8_and_moe_values_take_each_engines_spelling(moe_fp8, tmp_path):
    assert split_precision(moe_fp8.request["precision"]) == ("fp8", "fp8")
    for target in ("vllm", "sglang", "trtllm"):
        moe_fp8.emit(target, tmp_path, top=3)
    sg = (tmp_path / "sglang" / "plan-1" / "launch.sh").read_text()
    assert "--kv-cache-dtype fp8_e4m3" in sg and "--quantization fp8" in sg  # SGLang has no plain "fp8" KV
    vl = (tmp_path / "vllm").glob("plan-*/launch.sh")
    assert all("--kv-cache-dtype fp8 " in p.read_text() for p in vl)
    extra = yaml.safe_load((tmp_path / "trtllm" / "plan-1" / "extra-llm-api.yaml").read_text())
    assert extra["kv_cache_config"]["dtype"] == "fp8"
    bench = (tmp_path / "sglang" / "plan-1" / "bench.sh").read_text()
    assert "--request-rate 5.0" in bench
    for folder in (tmp_path / "trtllm").glob("plan-*"):
        _check_folder(folder)


def test_ascend_counts_dies_and_uses_the_ascend_resource(ascend, tmp_path):
    best = ascend.plans[0]
    ascend.emit("ascend", tmp_path)
    script = (tmp_path / "ascend" / "plan-1" / "launch.sh").read_text()
    argv = next(a for a in argcheck.commands_in_script(script) if a[:2] == ["vllm", "serve"])
    assert argv[argv.index("--tensor-parallel-size") + 1] == str(best.layout.tp * 2)  # 910C = 2 dies
    assert "ASCEND_RT_VISIBLE_DEVICES" in script
    _check_folder(tmp_path / "ascend" / "plan-1")
    ascend.emit("k8s", tmp_path)
    objs = _manifests(tmp_path / "k8s" / "plan-1")
    for obj in objs:
        validate_k8s(obj)
    dep = next(o for o in objs if o["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"huawei.com/Ascend910": str(best.layout.instance_devices * 2)}
    assert c["image"].endswith("-a3")
    ascend.emit("vllm", tmp_path)  # a GPU engine on an Ascend cluster: skipped, with the reason
    assert "huawei" in (tmp_path / "vllm" / "SKIPPED.md").read_text()


def test_checker_rejects_unknown_flags_and_malformed_values():
    sp = argcheck.spec("vllm-0.11.yaml")
    serve = sp.commands["vllm serve"]
    assert argcheck.check_argv(["vllm", "serve", "m", "--tensor-parallel-size", "2"], serve) == []
    assert argcheck.check_argv(["vllm", "serve", "m", "--tensor-paralel-size", "2"], serve)
    assert argcheck.check_argv(["vllm", "serve", "m", "--tensor-parallel-size", "two"], serve)
    assert argcheck.check_argv(["vllm", "serve", "m", "--kv-cache-dtype", "fp4"], serve)
    assert argcheck.check_argv(["vllm", "serve", "m", "--enable-expert-parallel=true"], serve)
    assert argcheck.check_argv(["vllm", "serve", "m", "--no-enable-chunked-prefill"], serve) == []
    assert argcheck.check_argv(["vllm", "serve", "--max-num-seqs", "8"], serve)  # model missing
    assert argcheck.check_argv(["vllm", "serve", "m", "--gpu-memory-utilization", "most"], serve)
    sg = argcheck.spec("sglang-0.5.yaml").commands["python3 -m sglang.launch_server"]
    assert argcheck.check_argv(["python3", "-m", "sglang.launch_server", "--kv-cache-dtype", "fp8"], sg)
    keys = argcheck.spec("trtllm-1.1.yaml").configs["extra-llm-api.yaml"]
    assert argcheck.check_config({"enable_attention_dp": "yes"}, keys)
    assert argcheck.check_config({"kv_cache_config": {"dtyp": "fp8"}}, keys)
    assert argcheck.check_config({"kv_cache_config": {"dtype": "fp8"}, "enable_attention_dp": True}, keys) == []


def test_every_recorded_flag_names_its_source_and_templates_pin_their_flags():
    for name in FLAG_FILES.values():
        sp = argcheck.spec(name)
        for cmd in sp.commands.values():
            assert cmd.flags and all(f.source for f in cmd.flags.values())
    for tpl in ("vllm-0.11.yaml", "vllm-ascend-0.11.yaml", "sglang-0.5.yaml", "trtllm-1.1.yaml", "dynamo-0.4.yaml"):
        assert template(tpl)["flags"] in FLAG_FILES.values()


def test_schemas_reject_what_kubernetes_would(tmp_path, dense):
    dense.emit("k8s", tmp_path)
    dep = next(o for o in _manifests(tmp_path / "k8s" / "plan-1") if o["kind"] == "Deployment")
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(dep)
    lws = {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": {"name": "x"},
           "spec": {"leaderWorkerTemplate": {"size": 2, "workerTemplate": {}}, "startupPolicy": "Eager"}}
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(lws)


def test_skips_what_an_engine_cannot_express_and_says_why(tmp_path):
    # Ascend NPUs have no FP8 path in vllm-ascend: every plan is one the engine cannot express (FP8 weights
    # are refused by the planner itself, the 910B having no FP8 math; an FP8 KV cache is left to the engine)
    r = plan("llama-3.1-8b", "atlas-800t-a2", workload={"isl": 1024, "osl": 256, "concurrency": 64},
             precision="int8", kv_cache_dtype="fp8", budget_s=2)
    assert r.emit("ascend", tmp_path, top=1) == [tmp_path / "ascend" / "SKIPPED.md"]
    assert "cannot run on vllm-ascend" in (tmp_path / "ascend" / "SKIPPED.md").read_text()
    with pytest.raises(PlannerInputError, match="unknown"):
        r.emit("tgi", tmp_path)


def test_cli_emit_writes_folders_and_rejects_bad_targets(tmp_path, capsys):
    args = ["plan", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "512", "--osl", "128",
            "--concurrency", "16", "--budget-s", "10"]
    assert main([*args, "--out", str(tmp_path), "--emit", "vllm,k8s", "--emit-top", "1"]) == 0
    assert (tmp_path / "vllm" / "plan-1" / "launch.sh").exists() and (tmp_path / "k8s" / "plan-1" / "k8s.yaml").exists()
    assert main([*args, "--out", str(tmp_path), "--emit", "vllm,nope"]) == 2
    assert main([*args, "--emit", "vllm"]) == 2
    assert "error:" in capsys.readouterr().err
    assert set(TARGETS) == {"vllm", "sglang", "trtllm", "dynamo", "k8s", "ascend"}


@pytest.fixture(scope="module")
def pd():  # aggregated and prefill/decode plans side by side; the disaggregated ones have two pools
    return plan("llama-3.1-8b", "dgx-h100x2", slo={"ttft_ms": 1000, "tpot_ms": 50},
                workload={"isl": 1024, "osl": 256, "rate_rps": 20}, modes=("agg", "disagg"), budget_s=5)


def _argvs(folder: Path) -> dict[str, list[list[str]]]:
    """Every command line in a folder, by file: shell scripts parsed, manifests' containers walked."""
    out: dict[str, list[list[str]]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".sh":
            out[path.name] = argcheck.commands_in_script(path.read_text())
        elif path.name in ("k8s.yaml", "dynamo.yaml"):
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            out[path.name] = [a for d in docs for a in argcheck.container_argvs(d)]
    return out


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("target", ["vllm", "sglang", "dynamo", "k8s"])
def test_disaggregated_plans_emit_a_prefill_and_a_decode_pool(pd, tmp_path, target):
    disagg = [p for p in pd.plans if p.mode == "disagg"]
    assert disagg and any(p.mode == "agg" for p in pd.plans)
    pd.emit(target, tmp_path, top=len(pd.plans))
    for p in disagg:
        folder = tmp_path / target / f"plan-{p.rank}"
        assert _check_folder(folder) >= 2  # every flag against the recorded lists
        objs = _manifests(folder)
        for obj in objs:
            validate_k8s(obj)
        argvs = _argvs(folder)
        readme = (folder / "README.md").read_text()
        assert "prefill:" in readme and "decode:" in readme
        if target == "vllm":
            for role in ("prefill", "decode"):
                serve = next(a for a in argvs[f"launch-{role}.sh"] if a[:2] == ["vllm", "serve"])
                kv = json.loads(_value(serve, "--kv-transfer-config"))
                assert kv == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
                assert 'export VLLM_NIXL_SIDE_CHANNEL_PORT="$NIXL_PORT"' in (folder / f"launch-{role}.sh").read_text()
            prefill = next(a for a in argvs["launch-prefill.sh"] if a[:2] == ["vllm", "serve"])
            assert _value(prefill, "--tensor-parallel-size") == str(p.prefill_layout.tp)
        elif target == "sglang":
            for role in ("prefill", "decode"):
                serve = next(a for a in argvs[f"launch-{role}.sh"] if "sglang.launch_server" in a)
                assert _value(serve, "--disaggregation-mode") == role
                assert ("--disaggregation-bootstrap-port" in serve) == (role == "prefill")
            router = next(a for a in argvs["router.sh"] if a[:3] == ["python3", "-m", "sglang_router.launch_router"])
            assert "--pd-disaggregation" in router
            assert router.count("--prefill") == p.prefill_instances and router.count("--decode") == p.replicas
        elif target == "dynamo":
            services = objs[0]["spec"]["services"]
            assert services["VllmPrefillWorker"]["replicas"] == p.prefill_instances
            assert services["VllmDecodeWorker"]["replicas"] == p.replicas
            workers = {a[a.index("--model") + 1:].count("--is-prefill-worker") for a in argvs["dynamo.yaml"]
                       if a[:3] == ["python3", "-m", "dynamo.vllm"]}
            assert workers == {0, 1}  # one worker service is the prefill one
        else:
            deps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
            name = next(iter(deps)).rsplit("-", 1)[0]
            assert deps[f"{name}-prefill"]["spec"]["replicas"] == p.prefill_instances
            assert deps[f"{name}-decode"]["spec"]["replicas"] == p.replicas
            assert {o["metadata"]["name"] for o in objs if o["kind"] == "Service"} == set(deps)
            assert all("--kv-transfer-config" in a for a in argvs["k8s.yaml"] if a[:2] == ["vllm", "serve"])
    agg = next(p for p in pd.plans if p.mode == "agg")
    assert not any((tmp_path / target / f"plan-{agg.rank}").glob("launch-*.sh"))  # aggregated plans unchanged


def test_disaggregated_plans_are_skipped_where_no_flags_are_recorded(pd, tmp_path):
    pd.emit("trtllm", tmp_path, top=len(pd.plans))
    skipped = (tmp_path / "trtllm" / "SKIPPED.md").read_text()
    assert all(f"plan #{p.rank} " in skipped for p in pd.plans if p.mode == "disagg")
    router = argcheck.spec("sglang-0.5.yaml").commands["python3 -m sglang_router.launch_router"]
    ok = ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation", "--prefill", "http://p:30100", "8998",
          "--decode", "http://d:30000"]
    assert argcheck.check_argv(ok, router) == []
    assert argcheck.check_argv(ok[:6] + ok[7:], router)  # --prefill takes a URL and a bootstrap port
    sg = argcheck.spec("sglang-0.5.yaml").commands["python3 -m sglang.launch_server"]
    assert argcheck.check_argv(["python3", "-m", "sglang.launch_server", "--disaggregation-mode", "both"], sg)
