"""vllm-ascend 0.11 on Ascend NPUs: vLLM's own CLI with the Ascend platform plugin, counted in dies."""

from __future__ import annotations

from pathlib import Path

from planner.emit import vllm
from planner.emit.base import template, unsupported
from planner.emit.deployment import Deployment

TEMPLATE = "vllm-ascend-0.11.yaml"


def image(d: Deployment) -> str:
    tpl = template(TEMPLATE)
    return tpl["images_by_device"].get(d.device, tpl["image"])


def emit(d: Deployment, out: Path) -> list[Path]:
    vllm.check_vendor(d, ("huawei",), "ascend", "use --emit vllm, sglang or trtllm for GPU clusters")
    if d.weights == "fp8" or d.kv == "fp8":
        raise unsupported(d, "vllm-ascend", "Ascend 910 NPUs have no FP8 path", "plan with --precision bf16 or int8")
    if d.disaggregated:
        raise unsupported(d, "vllm-ascend", "its prefill/decode KV transfer is not vLLM's NixlConnector and is not "
                          "among the recorded flags", "plan with modes=('agg',) for Ascend")
    return vllm.emit_with(d, out, TEMPLATE, "vllm-ascend")
