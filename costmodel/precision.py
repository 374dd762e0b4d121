"""Numeric precision of weights, GEMMs and the KV cache, stated explicitly.

"fp8" in a published measurement may mean FP8 weights only or FP8 weights plus FP8 KV cache and
attention. Here `precision` sets weights and GEMM math; `kv_cache_dtype` is separate and defaults
to "auto" = 16-bit KV (vLLM's `--kv-cache-dtype auto`), so FP8 KV is always an explicit choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hardware.errors import PlannerInputError
from hardware.specs import Accelerator

BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}
# int4 is weight-only (W4A16) on every engine we emit for; GEMMs run in bf16 after dequant.
GEMM_DTYPE = {"bf16": "bf16", "fp16": "bf16", "fp8": "fp8", "int8": "int8", "int4": "bf16", "fp4": "fp4"}
PRECISIONS = ("bf16", "fp8", "int8", "int4", "fp4")
KV_DTYPES = ("auto", "bf16", "fp8", "int8")


@dataclass(frozen=True)
class Precision:
    weights: str
    gemm: str
    kv: str
    weight_bytes: float
    kv_bytes: float
    act_bytes: float = 2.0

    @property
    def label(self) -> str:
        return self.weights if self.kv in ("bf16",) else f"{self.weights}+kv-{self.kv}"


def precision(name: str = "bf16", kv_cache_dtype: str = "auto") -> Precision:
    if not isinstance(name, str):
        raise PlannerInputError(f"precision={name!r} is not a precision name; use one of {', '.join(PRECISIONS)}")
    if not isinstance(kv_cache_dtype, str):
        raise PlannerInputError(f"kv_cache_dtype={kv_cache_dtype!r} is not a dtype name; use one of "
                                f"{', '.join(KV_DTYPES)}")
    key = name.strip().lower()
    if key not in BYTES:
        raise PlannerInputError(f"precision '{name}' is unknown; use one of {', '.join(PRECISIONS)}")
    kv = kv_cache_dtype.strip().lower()
    if kv not in KV_DTYPES:
        raise PlannerInputError(f"kv_cache_dtype '{kv_cache_dtype}' is unknown; use one of {', '.join(KV_DTYPES)}")
    kv = "bf16" if kv == "auto" else kv
    return Precision(weights=key, gemm=GEMM_DTYPE[key], kv=kv, weight_bytes=BYTES[key], kv_bytes=BYTES[kv])


def resolve(name: str | None, checkpoint: str | None, kv_cache_dtype: str = "auto") -> tuple[Precision, str]:
    """The precision to cost at and a note: `name` when given, else the checkpoint's own weight
    precision (`ModelSpec.checkpoint_precision`, from its quantization_config), else bf16. The note
    says when an explicit precision differs from what the checkpoint ships ("" otherwise)."""
    chosen = name if name is not None else (checkpoint or "bf16")
    prec = precision(chosen, kv_cache_dtype)
    note = ""
    if name is not None and prec.weights != (checkpoint or "bf16") and not (prec.weights == "fp16" and not checkpoint):
        note = (f"precision {prec.weights} overrides the checkpoint's {checkpoint or 'bf16'} weights; "
                "the estimate assumes weights in that precision (requantized or another checkpoint)")
    return prec, note


def supported(acc: Accelerator) -> list[str]:
    """The precisions `acc` runs: those whose GEMM dtype has a peak in its catalog entry (peak_tflops and
    its source are the record of what the silicon does; int4 is W4A16, GEMMs in bf16)."""
    return [p for p in PRECISIONS if GEMM_DTYPE[p] in acc.peak_tflops]


def on_device(prec: Precision, acc: Accelerator, explicit: bool) -> tuple[Precision, str]:
    """`prec` as `acc` runs it, and a note. A precision asked for that the device has no math for (FP8 on
    A100 or Ascend 910B, FP4 on H100) is refused: the roofline would silently cost it at a peak the device
    lacks. A checkpoint's own precision there runs weight-only, GEMMs in bf16 (how vLLM serves gpt-oss's
    MXFP4 on Hopper and FP8 checkpoints on Ampere, with Marlin kernels), and the note says so."""
    if prec.gemm in acc.peak_tflops:
        return prec, ""
    if explicit:
        raise PlannerInputError(
            f"precision '{prec.weights}' needs {GEMM_DTYPE[prec.weights]} math, which {acc.name} does not have "
            f"(its catalog entry lists {', '.join(acc.peak_tflops)}); use one of {', '.join(supported(acc))} "
            "or a device that supports it")
    return replace(prec, gemm="bf16"), (f"{acc.name} has no {prec.gemm} math: the checkpoint's {prec.weights} "
                                        "weights are costed weight-only, GEMMs in bf16")
