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


class RooflineFit(BaseModel):
    """t = max(FLOPs / (peak x compute_eff x m/(m + m_half)), bytes / (bw x mem_eff)) + t0.

    `m` is the op's parallel extent: GEMM rows (tokens), prefill sequence length, or
    tokens per expert for fused MoE; m_half = 0 means no shape dependence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute_eff: float = Field(gt=0, le=1.5, description="Large-shape fraction of dense peak.")
    m_half: float = Field(default=0.0, ge=0, description="Extent at which compute efficiency halves.")
    mem_eff: float = Field(gt=0, le=1.5, description="Achieved fraction of HBM bandwidth.")
    t0_us: float = Field(default=0.0, ge=0, description="Fixed latency per call (launch, tail).")

    def compute(self, m: float | np.ndarray) -> float | np.ndarray:
        if self.m_half <= 0:
            return self.compute_eff
        m = np.maximum(m, 1.0)
        return self.compute_eff * m / (m + self.m_half)


class CommFit(BaseModel):
    """A collective's achieved fraction of link bandwidth and its fixed latency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eff: float = Field(gt=0, le=1.5, description="Achieved fraction of the tier's per-direction bandwidth.")
    alpha_us: float = Field(ge=0, description="Fixed latency per call, on top of per-step link latency.")


class FitError(BaseModel):
    """How well a family's fit reproduces its measurements."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(ge=0)
    train_mdape: float = Field(description="Median absolute percentage error on the rows fitted.")
    leaveout_mdape: float = Field(description="Median APE on rows held out of the fit (5-fold).")
    source: str = Field(default="", description="Data file(s) the rows came from.")


def _fits(**kw: tuple[float, float, float, float]) -> dict[str, RooflineFit]:
    return {k: RooflineFit(compute_eff=c, m_half=m, mem_eff=e, t0_us=t) for k, (c, m, e, t) in kw.items()}


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(default=2, description="Profile format version.")
    device: str = Field(default="*", description="Accelerator name it was fitted on; '*' = any.")
    trust: Literal["spec-default", "fitted", "measured-here"] = "spec-default"
    source: str = Field(
        default="spec-derived defaults: typical fractions of datasheet peaks, not fitted",
        description="Where the numbers came from.",
    )
    gemm: dict[str, RooflineFit] = Field(
        default_factory=lambda: _fits(bf16=(0.75, 48, 0.8, 3), fp8=(0.6, 96, 0.7, 4), int8=(0.6, 96, 0.7, 4),
                                      fp4=(0.55, 128, 0.7, 4)),
        description="GEMM fits by GEMM dtype.",
    )
    attn_prefill: dict[str, RooflineFit] = Field(
        default_factory=lambda: _fits(bf16=(0.55, 256, 0.7, 5)),
        description="Prefill attention by KV dtype; m = prompt length, FLOPs at bf16 peak.",
    )
    attn_decode: dict[str, RooflineFit] = Field(
        default_factory=lambda: _fits(bf16=(0.3, 0, 0.7, 5)),
        description="Decode attention by KV dtype; bytes = the KV cache read.",
    )
    moe: dict[str, RooflineFit] = Field(
        default_factory=lambda: _fits(bf16=(0.6, 64, 0.7, 20), fp8=(0.45, 128, 0.6, 25)),
        description="Fused MoE by weight dtype; m = tokens per touched expert.",
    )
    elementwise_mem_eff: float = Field(default=0.6, gt=0, le=1, description="Norms, RoPE, activations.")
    comm: dict[str, CommFit] = Field(
        default_factory=lambda: {k: CommFit(eff=0.7, alpha_us=8.0) for k in
                                 ("all_reduce", "all_gather", "all_to_all", "send_recv")},
        description="Collectives inside a scale-up domain by kind.",
    )
    scaleout_eff: float = Field(default=0.6, gt=0, le=1.5, description="Bandwidth share across domains.")
    moe_skew: dict[str, float] = Field(
        default_factory=lambda: {"balanced": 1.0},
        description="Busiest-device load over the mean, by routing distribution.",
    )
    fit_error: dict[str, FitError] = Field(default_factory=dict, description="Per op family fit quality.")
    error_band: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"ttft_ms": (0.6, 1.6), "tpot_ms": (0.75, 1.3)},
        description="p10/p90 of measured/predicted per metric, from calibration residuals.",
    )

    @staticmethod
    def _pick(table: dict[str, RooflineFit], key: str) -> RooflineFit:
        return table.get(key) or table.get("bf16") or next(iter(table.values()))

    def gemm_fit(self, dtype: str) -> RooflineFit:
        return self._pick(self.gemm, dtype)

    def moe_fit(self, dtype: str) -> RooflineFit:
        return self._pick(self.moe, dtype)

    def attn_fit(self, phase: str, kv_dtype: str) -> RooflineFit:
        return self._pick(self.attn_prefill if phase == "prefill" else self.attn_decode, kv_dtype)

    def comm_fit(self, kind: str) -> CommFit:
        return self.comm.get(kind) or self.comm["all_reduce"]


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
