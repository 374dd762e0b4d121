"""The checkpoint's weight precision from its `quantization_config` (or a ModelOpt
`hf_quant_config.json`), as one of costmodel.precision's names: what the weights ship as is what the
planner costs them at unless the caller asks for another precision."""

from __future__ import annotations

from typing import Any

from hardware.errors import PlannerInputError

# quant_method (transformers' QuantizationMethod) -> precision, where the method fixes it
METHODS = {"fp8": "fp8", "fbgemm_fp8": "fp8", "mxfp4": "fp4", "awq": "int4", "gptq": "int4", "bitnet": "int4"}
# ModelOpt quant_algo -> precision (NVFP4 and MXFP4 are 4-bit floats with block scales)
ALGOS = {"FP8": "fp8", "FP8_BLOCKWISE": "fp8", "NVFP4": "fp4", "MXFP4": "fp4", "W4A16_AWQ": "int4",
         "W4A8_AWQ": "int4", "INT8_SQ": "int8", "W8A8_SQ_PER_CHANNEL": "int8", "NVFP4_AWQ": "fp4"}


def _compressed_tensors(q: dict[str, Any], where: str) -> tuple[str, str]:
    """compressed-tensors: the widest weight scheme over its config groups (int4 pack-quantized,
    fp8 float-quantized, nvfp4)."""
    groups = [g.get("weights") or {} for g in (q.get("config_groups") or {}).values() if isinstance(g, dict)]
    if not groups:
        raise PlannerInputError(f"{where}: field 'quantization_config.config_groups' is missing; a "
                                "compressed-tensors checkpoint states its weight scheme there")
    w = max(groups, key=lambda g: g.get("num_bits", 16))
    bits, kind = int(w.get("num_bits", 16)), w.get("type", "int")
    name = {(4, "int"): "int4", (8, "int"): "int8", (8, "float"): "fp8", (4, "float"): "fp4"}.get((bits, kind))
    if name is None:
        raise PlannerInputError(f"{where}: compressed-tensors weights of {bits}-bit {kind} have no precision here; "
                                "give precision explicitly")
    return name, f"compressed-tensors {kind}{bits} ({q.get('format', 'unspecified format')})"


def checkpoint_precision(cfg: dict[str, Any], quant_file: dict[str, Any] | None, where: str) -> tuple[str | None, str]:
    """(precision name, the quantization as stated) of a checkpoint; (None, "") for 16-bit weights."""
    q = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
    if quant_file and not q:
        q = {"quant_method": "modelopt", **(quant_file.get("quantization") or quant_file)}
    if not q:
        return None, ""
    if not isinstance(q, dict):
        raise PlannerInputError(f"{where}: field 'quantization_config' must be a mapping")
    method = str(q.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        return _compressed_tensors(q, where)
    if method in ("modelopt", "") and q.get("quant_algo"):
        algo = str(q["quant_algo"]).upper()
        if algo not in ALGOS:
            raise PlannerInputError(f"{where}: quant_algo {algo!r} has no precision here; known are "
                                    f"{', '.join(sorted(ALGOS))}, or give precision explicitly")
        return ALGOS[algo], f"modelopt {algo}"
    if method in ("awq", "gptq") and int(q.get("bits", 4)) == 8:
        return "int8", f"{method} int8"
    if method in METHODS:
        block = q.get("weight_block_size")
        label = method + (f" block {block[0]}x{block[1]}" if block else "")
        # DeepSeek-V4 ships its routed experts (nearly all of its weights) in FP4 beside FP8 attention
        if str(cfg.get("expert_dtype") or q.get("expert_dtype") or "").lower() == "fp4":
            return "fp4", f"{label}, fp4 experts"
        return METHODS[method], label
    known = ", ".join(sorted({*METHODS, "compressed-tensors", "modelopt"}))
    raise PlannerInputError(f"{where}: field 'quantization_config.quant_method' is {method!r}, which has no "
                            f"precision here; known are {known}, or give precision explicitly")
