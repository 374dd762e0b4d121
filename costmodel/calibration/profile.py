"""A calibration profile: the efficiencies and fixed latencies the roofline is scaled by.

Defaults are spec-derived starting points (stated as such in `source`), used for any device
without a fitted profile; fitted profiles live in `costmodel/data/profiles/*.json`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hardware.loading import build, read_mapping

PROFILES = Path(__file__).parent.parent / "data" / "profiles"


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(default=1, description="Profile format version.")
    device: str = Field(default="*", description="Accelerator name it was fitted on; '*' = any.")
    trust: Literal["spec-default", "fitted", "measured-here"] = "spec-default"
    source: str = Field(
        default="spec-derived defaults: typical fractions of datasheet peaks, not fitted",
        description="Where the numbers came from.",
    )
    gemm_peak_eff: dict[str, float] = Field(
        default_factory=lambda: {"bf16": 0.75, "fp8": 0.65, "int8": 0.65, "fp4": 0.6},
        description="Large-GEMM fraction of dense peak per GEMM dtype.",
    )
    gemm_m_half: float = Field(default=48.0, gt=0, description="GEMM rows at half the peak efficiency.")
    mem_eff: float = Field(default=0.8, gt=0, le=1, description="Achieved fraction of HBM bandwidth, streaming.")
    attn_prefill_eff: float = Field(default=0.5, gt=0, le=1, description="Prefill attention fraction of bf16 peak.")
    attn_decode_mem_eff: float = Field(default=0.7, gt=0, le=1, description="Decode attention, HBM share.")
    attn_decode_compute_eff: float = Field(
        default=0.3, gt=0, le=1, description="Decode attention fraction of bf16 peak.")
    kernel_overhead_us: float = Field(default=2.0, ge=0, description="Fixed latency added per kernel.")
    comm_eff: float = Field(default=0.7, gt=0, le=1, description="Achieved fraction of link bandwidth in collectives.")
    comm_overhead_us: float = Field(default=8.0, ge=0, description="Fixed software latency per collective.")
    error_band: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"ttft_ms": (0.6, 1.6), "tpot_ms": (0.75, 1.3)},
        description="p10/p90 of measured/predicted per metric, from calibration residuals.",
    )

    def gemm_eff(self, dtype: str, m: float | np.ndarray) -> float | np.ndarray:
        peak = self.gemm_peak_eff.get(dtype, self.gemm_peak_eff["bf16"])
        m = np.maximum(m, 1.0)
        return peak * m / (m + self.gemm_m_half)


@cache
def shipped() -> dict[str, Profile]:
    """Profiles shipped with the project, by device name."""
    out = {}
    for f in sorted(PROFILES.glob("*.json")):
        p = build(Profile, read_mapping(f), f"profile {f.name}")
        out[p.device] = p
    return out


def profile_for(device: str, path: str | Path | None = None) -> Profile:
    """The profile at `path`, else the shipped one for `device`, else spec defaults."""
    if path is not None:
        return build(Profile, read_mapping(path), f"profile {path}")
    return shipped().get(device, Profile())
