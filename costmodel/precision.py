"""Numeric precision of weights, GEMMs and the KV cache, stated explicitly.

"fp8" in a published measurement may mean FP8 weights only or FP8 weights plus FP8 KV cache and
attention. Here `precision` sets weights and GEMM math; `kv_cache_dtype` is separate and defaults
to "auto" = 16-bit KV (vLLM's `--kv-cache-dtype auto`), so FP8 KV is always an explicit choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.errors import PlannerInputError

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
