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

from hardware.catalog import accelerators
from hardware.errors import PlannerInputError
from hardware.loading import build, read_mapping

PROFILES = Path(__file__).parent.parent / "data" / "profiles"
Array = float | np.ndarray


class RooflineFit(BaseModel):
    """t = max(FLOPs / (peak x compute_eff x ramp(m) x ramp(k)), bytes / (bw x mem_eff x ramp(B) x ramp(I)))
          + t0 + I x item_ns
    with ramp(x) = x / (x + x_half) (in m: x^p / (x^p + x_half^p)).

    `m` is the op's parallel extent: output elements for a GEMM (rows x columns: too few output
    tiles leave SMs idle), prefill sequence length for attention, output elements per expert for
    fused MoE; `k` the reduction depth (shallow GEMMs are dominated by prologue/epilogue).
    Small transfers do not saturate HBM, hence the ramp in bytes B. `I` counts a decode-attention
    kernel's work items, its (sequence x KV head) streams: each costs a fixed setup and split-K
    reduction, and too few of them cannot keep HBM busy (the measured kernels stream 1 TB/s with 16
    items on an H200, 4 TB/s with 256). A zero half-point or cost disables that term; ops that
    carry no work items (I = 0) never see it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute_eff: float = Field(gt=0, le=1.5, description="Large-shape fraction of dense peak.")
    m_half: float = Field(default=0.0, ge=0, description="Extent at which compute efficiency halves.")
    m_power: float = Field(default=1.0, gt=0, le=5, description="Steepness of the ramp in m (Hill exponent).")
    k_half: float = Field(default=0.0, ge=0, description="Reduction depth at which compute efficiency halves.")
    mem_eff: float = Field(gt=0, le=1.5, description="Achieved fraction of HBM bandwidth.")
    bytes_half: float = Field(default=0.0, ge=0, description="Bytes at which bandwidth efficiency halves.")
    t0_us: float = Field(default=0.0, ge=0, description="Fixed latency per call (launch, tail).")
    item_ns: float = Field(default=0.0, ge=0, description="Latency per work item (ns); 0 = no per-item term.")
    items_half: float = Field(default=0.0, ge=0, description="Work items at which bandwidth efficiency halves.")

    def compute(self, m: float | np.ndarray, k: float | np.ndarray = 0.0) -> float | np.ndarray:
        eff = self.compute_eff
        if self.m_half > 0:
            # m^p / (m^p + m_half^p): FP8 GEMMs leave the ramp more gradually than 16-bit ones
            # (their 5-fold leave-out error drops by a fifth to a third with the exponent fitted)
            ramp = (np.maximum(m, 1.0) / self.m_half) ** self.m_power
            eff = eff * ramp / (ramp + 1.0)
        if self.k_half > 0 and np.any(np.asarray(k) > 0):
            k = np.maximum(k, 1.0)
            eff = eff * k / (k + self.k_half)
        return eff

    def memory(self, nbytes: float | np.ndarray, items: float | np.ndarray = 0.0) -> float | np.ndarray:
        eff = self.mem_eff
        if self.bytes_half > 0:
            nbytes = np.maximum(nbytes, 1.0)
            eff = eff * nbytes / (nbytes + self.bytes_half)
        if self.items_half > 0 and np.any(np.asarray(items) > 0):
            items = np.asarray(items, dtype=float)
            eff = eff * np.where(items > 0, items / (items + self.items_half), 1.0)
        return eff

    def items_s(self, items: float | np.ndarray) -> float | np.ndarray:
        """Per-work-item time of `items` work items (seconds)."""
        return items * self.item_ns * 1e-9

    def time_s(self, flops: Array, nbytes: Array, peak: float, bw: float, m: Array, k: Array = 0.0,
               items: Array = 0.0, calls: Array = 1.0, compute_scale: float = 1.0, memory_scale: float = 1.0,
               fixed_scale: float = 1.0) -> Array:
        """The class docstring's t (seconds) at `peak` FLOP/s and `bw` bytes/s, with an engine's multipliers
        on each side and on the fixed latency, paid once per call (a fit's measured rows are one call each)."""
        compute = flops / (peak * self.compute(m, k)) * compute_scale
        memory = nbytes / (bw * self.memory(nbytes, items)) * memory_scale
        return np.maximum(compute, memory) + calls * self.t0_us * 1e-6 * fixed_scale + self.items_s(items)


class CommFit(BaseModel):
    """A collective's achieved fraction of link bandwidth and its fixed latency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eff: float = Field(gt=0, le=1.5, description="Achieved fraction of the tier's per-direction bandwidth.")
    alpha_us: float = Field(ge=0, description="Fixed latency per call, on top of per-step link latency.")
    step_us: float | None = Field(default=None, ge=0,
                                  description="Measured latency per algorithm step; None = the link's latency.")


class FitError(BaseModel):
    """How well a family's fit reproduces its measurements."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(ge=0)
    train_mdape: float = Field(description="Median absolute percentage error on the rows fitted.")
    leaveout_mdape: float = Field(description="Median APE on rows held out of the fit (5-fold).")
    source: str = Field(default="", description="Data file(s) the rows came from.")


class EngineTuning(BaseModel):
    """What one engine does to the kernels' standalone speed, fitted from end-to-end runs.

    Kernel fits come from isolated micro-benchmarks; inside an engine (CUDA graphs, fused
    epilogues, other kernel choices, a warm L2) the same op runs at a different speed. The
    scales multiply the compute side, the memory side, and fused-MoE and attention time of
    every op (the decode-attention kernel fit, pulled down by the many small measured rows,
    over-predicts the 100 MB+ per-layer KV reads of serving batches 1.3-3.6x; engines also ship
    their own attention kernels: TensorRT-LLM's XQA/FMHA, FlashInfer/FlashMLA in SGLang); the
    rest overrides the engine's constants in `costmodel/data/engines.yaml`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute_scale: float = Field(default=1.0, gt=0, description="Multiplier on compute-bound op time.")
    memory_scale: float = Field(default=1.0, gt=0, description="Multiplier on memory-bound op time.")
    moe_scale: float = Field(default=1.0, gt=0, description="Multiplier on fused-MoE op time.")
    attention_scale: float = Field(default=1.0, gt=0, description="Multiplier on prefill-attention kernel time.")
    decode_attention_scale: float = Field(
        default=1.0, gt=0, description="Multiplier on decode-attention kernel time (the torch runner's own; the "
                                       "public engines' decode steps fit the kernel model unscaled).")
    fixed_scale: float = Field(default=1.0, ge=0, description="Multiplier on kernel fixed latency.")
    iteration_overhead_ms: float | None = Field(default=None, ge=0)
    per_seq_overhead_us: float | None = Field(default=None, ge=0)
    closed_loop_wave: float | None = Field(default=None, ge=0, le=1)
    resubmit_wait_iterations: float | None = Field(default=None, ge=0, le=1)
    ttft_overhead_ms: float | None = Field(default=None, ge=0)
    eager_kernel_overhead_us: float | None = Field(
        default=None, ge=0, description="Launch cost per kernel outside graphs (the torch runner's: 0, its dispatch "
                                        "is in fixed_scale at every batch size).")
    fitted_on: str = Field(default="", description="Rows the tuning was fitted on, and the held-out error.")
    error_band: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="p10/p90 of measured/predicted on this engine's rows.")

    def engine_updates(self) -> dict[str, float]:
        names = ("iteration_overhead_ms", "per_seq_overhead_us", "closed_loop_wave", "resubmit_wait_iterations",
                 "ttft_overhead_ms", "eager_kernel_overhead_us")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


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
        default_factory=lambda: _fits(bf16=(0.75, 3e5, 0.8, 3), fp8=(0.6, 6e5, 0.7, 4), int8=(0.6, 6e5, 0.7, 4),
                                      fp4=(0.55, 8e5, 0.7, 4)),
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
        default_factory=lambda: _fits(bf16=(0.6, 1e5, 0.7, 20), fp8=(0.45, 2e5, 0.6, 25)),
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
    family_scale: dict[str, float] = Field(
        default_factory=dict,
        description="Multiplier on kernels with their own measured modules (e.g. MLA attention), by family.")
    family_t0_us: dict[str, float] = Field(default_factory=dict, description="Extra fixed latency by family.")
    compute_scale: float = Field(default=1.0, gt=0, description="Active engine's multiplier on compute time.")
    memory_scale: float = Field(default=1.0, gt=0, description="Active engine's multiplier on memory time.")
    moe_scale: float = Field(default=1.0, gt=0, description="Active engine's multiplier on fused-MoE time.")
    attention_scale: float = Field(default=1.0, gt=0,
                                   description="Active engine's multiplier on prefill-attention time.")
    decode_attention_scale: float = Field(default=1.0, gt=0,
                                          description="Active engine's multiplier on decode-attention time.")
    fixed_scale: float = Field(default=1.0, ge=0, description="Active engine's multiplier on kernel fixed latency.")
    engines: dict[str, EngineTuning] = Field(default_factory=dict, description="Per-engine end-to-end tuning.")
    error_band: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"ttft_ms": (0.6, 1.6), "tpot_ms": (0.75, 1.3)},
        description="p10/p90 of measured/predicted per metric, from calibration residuals.",
    )
    power: dict[Literal["idle_w", "compute_frac", "memory_frac", "host_w", "nic_w", "switch_w"], float] = Field(
        default_factory=dict,
        description="Measured power constants overriding costmodel/energy.py's sourced defaults (W, or a "
                    "fraction of TDP - idle for *_frac).",
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

    def for_engine(self, engine: str) -> Profile:
        """This profile with `engine`'s fitted scales active (unchanged when none were fitted)."""
        t = self.engines.get(engine)
        if t is None:
            return self
        update = {"compute_scale": t.compute_scale, "memory_scale": t.memory_scale, "moe_scale": t.moe_scale,
                  "attention_scale": t.attention_scale, "decode_attention_scale": t.decode_attention_scale,
                  "fixed_scale": t.fixed_scale}
        if t.error_band:
            update["error_band"] = t.error_band
        return self.model_copy(update=update)


@cache
def shipped() -> dict[str, Profile]:
    """Profiles shipped with the project, by device name."""
    out = {}
    for f in sorted(PROFILES.glob("*.json")):
        p = build(Profile, read_mapping(f), f"profile {f.name}")
        out[p.device] = p
    return out


# Devices without measurements of their own borrow the efficiencies (fractions of datasheet peak
# and bandwidth) and engine tuning of the nearest measured device of the same vendor, as
# AIConfigurator scales speed-of-light by the nearest measured efficiency; the result stays
# marked "spec-default" because its absolute numbers come from the device's datasheet.
NEAREST = {"nvidia": "h200-sxm"}


PROFILE_KEYS = ("device", "source")


def profile_for(device: str, path: str | Path | None = None) -> Profile:
    """The profile at `path`, else the shipped one for `device`, else the nearest measured
    device's efficiencies on this device's datasheet, else plain spec defaults."""
    if path is not None:
        raw = read_mapping(path, "profile")
        # every profile `planner calibrate` writes names its device and source; a file without them
        # (`{}`, a stray JSON) would silently cost with spec defaults instead of failing
        missing = [k for k in PROFILE_KEYS if k not in raw]
        if missing:
            raise PlannerInputError(f"profile {path}: field '{missing[0]}' is missing; give a profile written by "
                                    "`planner calibrate` (it states its device and source)")
        return build(Profile, raw, f"profile {path}")
    own = shipped().get(device)
    if own is not None:
        return own
    vendor = _vendor(device)
    donor = shipped().get(NEAREST.get(vendor, ""))
    if donor is None:
        return Profile()
    return donor.model_copy(update={
        "device": device, "trust": "spec-default", "fit_error": {},
        "source": f"{device} datasheet peaks x efficiencies fitted on {donor.device} (no measurements of {device})",
    })


def _vendor(device: str) -> str:
    acc = accelerators().get(device)
    return acc.vendor if acc else ""
