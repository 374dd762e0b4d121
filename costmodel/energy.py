"""Device power, energy per token / request / hour, and how a power cap slows the roofline.

Power of one op. A device draws its loaded-idle power plus a share of (TDP - idle) set by what the
op keeps busy: `compute_frac x a_c x s + memory_frac x a_m`, where `a_c` is tensor-core activity
(achieved FLOP rate over the large-GEMM rate the profile allows, so a big GEMM is 1), `a_m` is HBM
activity (achieved over streaming bandwidth) and `s` is the SM clock relative to the clock the
profile's efficiencies were measured at (the default power limit, TDP). Dynamic power goes as
f x V^2 and the voltage falls with the clock over the upper DVFS range, so compute power per unit
of activity scales as `s` (total compute power as s^2, between s^1 with voltage pinned and s^3
with voltage proportional to f). The split makes phases differ without a phase switch: prefill
GEMMs run the tensor cores flat out and draw about TDP; decode streams weights and KV cache and
draws far less (Splitwise, Patel et al., ISCA 2024, arXiv 2311.18677, sec. III: the token phase
draws much less power than the prompt phase and hardly slows under a power cap).

Power caps. Under a cap the clock drops until the op's power fits. Compute-bound time grows as
1/s; memory time does not depend on the SM clock, so a memory-bound op keeps its speed until the
clock falls to its ridge point, and only then slows. Both regimes have closed forms (quadratic and
linear in s), so capped timing stays vectorised. A cap at or above what an op draws changes
nothing, which is why a cap at TDP reproduces the uncapped times exactly.

Everything else a plan powers (host CPUs, NICs, NVSwitch chips) is a per-device constant below,
each with its source; the calibration profile's `power` map overrides any of them with measured
values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from costmodel.calibration.profile import Profile
from costmodel.ops import Batch, Num, Op, lm_head_op, op_time_s
from costmodel.precision import Precision
from costmodel.workload import Workload
from hardware.errors import PlannerInputError
from hardware.specs import Accelerator, NodeGroup

if TYPE_CHECKING:  # instance imports this module for capped timing; no runtime cycle
    from costmodel.estimate import Estimate
    from costmodel.instance import Instance

TINY_S = 1e-30  # floor for a missing roofline side, so the closed forms never divide by zero
PROBE_BYTES = 1e-9  # a transfer too small to take measurable time: timing it leaves the fixed latency
LARGE_M = 1e9  # an extent past every fit's half point: the family's large-shape efficiency

# ---- sourced constants -------------------------------------------------------------------------
COMPUTE_FRAC = 1.0
MEMORY_FRAC = 0.35
DEVICE_SOURCES = {
    "tdp_w": "accelerator spec (hardware/data/accelerators/*.yaml, datasheet TDP)",
    "idle_w": "accelerator spec (hardware/data/accelerators/*.yaml, loaded-idle draw)",
    "compute_frac": "dense GEMMs hold Hopper/Ampere boards at their power limit (the reason MLPerf MaxQ "
                    "runs cap power: MLPerf Inference v4.1 Llama-2-70B 8xH200 loses 19% of its offline "
                    "throughput at 500 W); a large GEMM is taken to draw the full dynamic range",
    "memory_frac": "memory-bound decode on an H200 draws 137-300 W of its 700 W TDP across GQA, MLA and "
                   "linear-attention models (Ma et al., 'The Illusion of Power Capping in LLM Decode', "
                   "arXiv 2605.11999): streaming HBM at full bandwidth costs at most (300-90)/(700-90) "
                   "~= 0.34 of the dynamic range; 0.35 taken",
    "clock_exponent": "uncertain: compute power ~ f V^2 with V falling with f; exponent 2 (between 1, voltage "
                      "pinned, and 3, V proportional to f) is a model assumption, checked against the "
                      "MLPerf v4.1 MaxQ ratio in tests/test_energy.py",
}


@dataclass(frozen=True)
class Platform:
    """Power a device brings along besides its own board, per device, in watts."""

    host_w: float  # CPUs, DRAM, fans: the node's share per accelerator
    nic_w: float  # scale-out NIC (one per device in every catalog cluster)
    switch_w: float  # scale-up switch chips' share per device
    sources: dict[str, str]


_XEON_8480 = ("2 x Intel Xeon Platinum 8480C per 8 GPUs (NVIDIA DGX H100/H200 user guide); Intel ARK Xeon "
              "Platinum 8480+: TDP 350 W; CPUs at TDP stand in for CPUs, DRAM and fans together "
              "(uncertain), 2 x 350 / 8 = 87.5 W per GPU")
_CX7 = ("uncertain: NVIDIA ConnectX-7 400 Gb/s single-port OSFP adapter, board power about 20 W by its user "
        "manual's specifications (typical, passive cable) plus an optical OSFP transceiver; 25 W taken")
_NVSWITCH = ("uncertain: the first-generation NVSwitch was presented at about 100 W per chip (Hot Chips 30, "
             "2018); later generations taken the same. Chips per GPU from the systems: ")
HOSTS: dict[str, tuple[float, str]] = {
    "h100-sxm": (87.5, _XEON_8480),
    "h200-sxm": (87.5, _XEON_8480),
    "b200": (87.5, "2 x Intel Xeon Platinum 8570 per 8 GPUs (NVIDIA DGX B200 datasheet); Intel ARK: TDP 350 W; "
                   "CPUs at TDP stand in for the host (uncertain), 87.5 W per GPU"),
    "a100-sxm-80gb": (56.25, "2 x AMD EPYC 7742 per 8 GPUs (NVIDIA DGX A100 user guide); AMD: TDP 225 W; "
                             "CPUs at TDP stand in for the host (uncertain), 56.25 W per GPU"),
    "a100-sxm-40gb": (56.25, "2 x AMD EPYC 7742 per 8 GPUs (NVIDIA DGX A100 user guide); AMD: TDP 225 W; "
                             "CPUs at TDP stand in for the host (uncertain), 56.25 W per GPU"),
    "gb200": (125.0, "one Grace CPU per 2 GPUs (NVIDIA GB200 NVL72: 36 Grace, 72 Blackwell); NVIDIA Grace CPU "
                     "Superchip (2 Grace) 500 W with memory, so 250 W per Grace, 125 W per GPU (uncertain)"),
}
GENERIC_HOST = (87.5, "uncertain: no platform figure for this device; a dual-socket 350 W-TDP host per 8 "
                      "devices (as DGX H100) assumed")
NICS: dict[str, tuple[float, str]] = {
    "ib-ndr400": (25.0, _CX7),
    "roce-400g": (25.0, _CX7 + " (same 400 Gb/s class)"),
    "ib-hdr200": (20.0, "uncertain: NVIDIA ConnectX-6 HDR 200 Gb/s adapter with transceiver, about 20 W"),
    "roce-200g": (5.0, "Ascend 910B integrates its 200GE RoCE ports on the die (power inside the NPU's TDP); "
                       "5 W for the pluggable 200G module (uncertain)"),
}
GENERIC_NIC = (25.0, "uncertain: a 400 Gb/s-class NIC with transceiver assumed")
SWITCHES: dict[str, tuple[float, str]] = {
    "nvlink4": (50.0, _NVSWITCH + "4 NVSwitch3 chips per 8 GPUs (HGX H100/H200 baseboard), 0.5 x 100 W"),
    "nvlink3": (75.0, _NVSWITCH + "6 NVSwitch2 chips per 8 GPUs (DGX A100), 0.75 x 100 W"),
    "nvlink5": (25.0, _NVSWITCH + "2 NVSwitch4 chips per 8 GPUs (DGX B200) and 18 per 72 (GB200 NVL72), "
                                  "0.25 x 100 W"),
    "infinity-fabric": (0.0, "AMD MI300X platform: GPUs meshed directly over Infinity Fabric, no switch chip"),
    "hccs": (0.0, "Atlas 800T A2: the 8 x 910B form a direct HCCS mesh, no switch chip"),
}
GENERIC_SWITCH = (50.0, "uncertain: scale-up switch share per device taken as for HGX H100 (0.5 x 100 W)")

POWER_KEYS = ("idle_w", "compute_frac", "memory_frac", "host_w", "nic_w", "switch_w")


@dataclass(frozen=True)
class PowerModel:
    """Board power parameters of one device (after profile overrides)."""

    tdp_w: float
    idle_w: float
    compute_frac: float = COMPUTE_FRAC
    memory_frac: float = MEMORY_FRAC

    @property
    def dynamic_w(self) -> float:
        return self.tdp_w - self.idle_w


def _overrides(profile: Profile) -> dict[str, float]:
    return dict(getattr(profile, "power", None) or {})


def power_model(acc: Accelerator, profile: Profile) -> PowerModel:
    """The device's power parameters: spec TDP and idle, sourced fractions, measured overrides."""
    o = _overrides(profile)
    idle = o.get("idle_w", acc.idle_w)
    if not 0 < idle < acc.tdp_w:
        raise PlannerInputError(f"profile power.idle_w={idle:g} must lie between 0 and {acc.name}'s TDP "
                                f"{acc.tdp_w:g} W; fix the profile's measured idle power")
    return PowerModel(acc.tdp_w, idle, o.get("compute_frac", COMPUTE_FRAC), o.get("memory_frac", MEMORY_FRAC))


def platform(group: NodeGroup, profile: Profile) -> Platform:
    """Host, NIC and scale-up switch power per device of `group`, each with its source."""
    o = _overrides(profile)
    host = HOSTS.get(group.device.name, GENERIC_HOST)
    nic = NICS.get(group.scaleout.name, GENERIC_NIC)
    switch = SWITCHES.get(group.scaleup.name, GENERIC_SWITCH)
    parts = {"host_w": host, "nic_w": nic, "switch_w": switch}
    values = {k: o.get(k, v[0]) for k, v in parts.items()}
    sources = {k: ("calibration profile (measured)" if k in o else v[1]) for k, v in parts.items()}
    return Platform(values["host_w"], values["nic_w"], values["switch_w"], sources)


def check_power_cap(acc: Accelerator, cap_w: float | None, profile: Profile | None = None) -> None:
    """Raise PlannerInputError unless `cap_w` is None or lies above idle and at most TDP."""
    if cap_w is None:
        return
    idle = power_model(acc, profile or Profile()).idle_w
    if not (math.isfinite(cap_w) and idle < cap_w <= acc.tdp_w):
        raise PlannerInputError(
            f"power_caps: {cap_w:g} W is outside what a {acc.name} can be capped to; give caps above its "
            f"idle draw ({idle:g} W) and at most its TDP ({acc.tdp_w:g} W), or None for uncapped")


# ---- one op: roofline sides, clock under a cap, power ------------------------------------------
@dataclass(frozen=True)
class _Sides:
    compute_s: Num  # at the profile's clock
    memory_s: Num
    overhead_s: Num
    active: Num  # the op has any work (inactive ops take no time)
    activity: Num  # tensor-core activity when compute-bound (shape efficiency over large-GEMM efficiency)


def _sides(op: Op, acc: Accelerator, prec: Precision, prof: Profile) -> _Sides:
    """Split `op_time_s` into its compute side, memory side and fixed latency by timing each alone,
    so whatever family fit `op_time_s` applies is the one the cap and the power model see."""
    flops, nbytes = np.asarray(op.flops, dtype=float), np.asarray(op.bytes, dtype=float)
    has_f, has_b = flops > 0, nbytes > 0
    active = has_f | has_b
    no_f, no_b = 0.0 * flops, 0.0 * nbytes
    fixed = op_time_s(replace(op, flops=no_f, bytes=np.where(active, PROBE_BYTES, 0.0)), acc, prec, prof)
    f_fixed = np.where(has_f, fixed, 0.0)
    compute = op_time_s(replace(op, bytes=no_b), acc, prec, prof) - f_fixed
    memory = op_time_s(replace(op, flops=no_f), acc, prec, prof) - np.where(has_b, fixed, 0.0)
    compute = np.maximum(compute, TINY_S)
    # tensor-core activity: the op's compute rate over the same family's rate with many rows (m)
    large = op_time_s(replace(op, bytes=no_b, m=LARGE_M), acc, prec, prof) - f_fixed
    activity = np.where(has_f, np.minimum(np.maximum(large, 0.0) / compute, 1.0), 0.0)
    return _Sides(compute, np.maximum(memory, TINY_S), np.where(active, fixed, 0.0), active, activity)


def _dynamic(sides: _Sides, pm: PowerModel, dyn_budget: float) -> tuple[Num, Num]:
    """Clock fraction `s` that keeps the op within `dyn_budget` (a fraction of TDP - idle; 1 = TDP),
    and the op's dynamic power fraction at that clock."""
    kc, km, a = pm.compute_frac, pm.memory_frac, sides.activity
    ratio = sides.compute_s / sides.memory_s  # >= 1: compute-bound at the profile clock
    compute_w = kc * a * ratio  # compute power while memory-bound, per unit clock
    at_profile = np.where(ratio >= 1, kc * a + km / ratio, compute_w + km)
    # the profile's own state draws at most TDP: scale the model so it does
    target = dyn_budget * np.maximum(1.0, at_profile)
    memory_bound = (compute_w > 0) & (ratio < 1) & (compute_w * ratio + km <= target)
    s_memory = (target - km) / np.maximum(compute_w, TINY_S)
    lin = km / ratio
    s_compute = 2 * target / (lin + np.sqrt(lin * lin + 4 * kc * a * target))
    s = np.where(at_profile <= target, 1.0, np.where(memory_bound, s_memory, s_compute))
    s = np.minimum(np.maximum(s, TINY_S), 1.0)
    return s, np.minimum(at_profile, target) / np.maximum(1.0, at_profile)


def capped_op_time_s(op: Op, acc: Accelerator, prec: Precision, prof: Profile, cap_w: float) -> Num:
    """Roofline time of `op` on a device capped at `cap_w`: compute slows with the clock, memory does not."""
    pm = power_model(acc, prof)
    sides = _sides(op, acc, prec, prof)
    s, _ = _dynamic(sides, pm, _budget(pm, cap_w))
    return np.where(sides.active, np.maximum(sides.compute_s / s, sides.memory_s), 0.0) + sides.overhead_s


def _budget(pm: PowerModel, cap_w: float | None) -> float:
    cap = pm.tdp_w if cap_w is None else min(cap_w, pm.tdp_w)
    return (cap - pm.idle_w) / pm.dynamic_w


def op_power_w(op: Op, acc: Accelerator, prec: Precision, prof: Profile, cap_w: float | None = None) -> Num:
    """Mean board power while `op` runs (its launch gap at idle power)."""
    pm = power_model(acc, prof)
    sides = _sides(op, acc, prec, prof)
    s, dyn = _dynamic(sides, pm, _budget(pm, cap_w))
    busy = np.where(sides.active, np.maximum(sides.compute_s / s, sides.memory_s), 0.0)
    total = busy + sides.overhead_s
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, busy / total, 0.0)
    return pm.idle_w + pm.dynamic_w * dyn * share


# ---- one iteration, one serving steady state ---------------------------------------------------
def _stage_batch(inst: Instance, b: Batch) -> Batch:
    """The micro-batch `Instance.step_s` times for `b` (pp micro-batches keep every stage busy)."""
    pp = inst.layout.pp
    if pp == 1:
        return b
    return b.split(pp)


def _comm_power_w(inst: Instance, pm: PowerModel) -> float:
    """A collective keeps a few SMs busy and streams HBM at about twice the link rate (read + write)."""
    streaming = min(1.0, 2.0 * inst.tp_link.gbps / inst.acc.hbm_gbps)
    return pm.idle_w + pm.dynamic_w * pm.memory_frac * streaming


def iteration_power_w(inst: Instance, b: Batch) -> Num:
    """Mean board power of every device of `inst` over one iteration of batch `b`.

    Times come from `inst.breakdown` (so a cap is already in them); each op's power from its
    roofline sides. Ops of the same name are the same op in dense and MoE layers, so weighting
    each name's total time by its op's power is exact. Collectives draw the HBM traffic they
    cause; the engine's CPU-side overhead leaves the device at loaded idle. With pipeline stages
    of unequal work the iteration (`inst.step_s`) outlasts the device time of its micro-batches
    (pp times the slowest stage): the other stages wait that difference out at idle.
    """
    stage = _stage_batch(inst, b)
    acc, prof, prec = inst.acc, inst.profile, inst.prec
    pm = power_model(acc, prof)
    ops: dict[str, Op] = {}
    m = inst.model
    for kind, _ in m.layer_kinds:
        ops.update({op.name: op for op in inst._ops(stage, kind)})
    ops["lm_head"] = lm_head_op(m, inst.layout, inst.prec, stage)
    comm_w = _comm_power_w(inst, pm)
    energy: Num = 0.0
    seconds: Num = 0.0
    for name, t in inst.breakdown(stage).items():
        if name in ops:
            p = op_power_w(ops[name], acc, prec, prof, inst.power_cap_w)
        elif name == "engine_overhead":
            p = pm.idle_w
        else:
            p = comm_w
        energy = energy + t * p
        seconds = seconds + t
    # every device runs pp micro-batches of its stage per iteration: together they are busy for one
    # pass (`seconds`) out of each step, and wait the rest at idle; without stages the step is that pass
    # (`step_s` would sum the same breakdown again)
    step = np.maximum(inst.step_s(b), seconds) if inst.layout.pp > 1 else seconds
    energy = energy + (step - seconds) * pm.idle_w
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(step) > 0, energy / np.maximum(step, TINY_S), pm.idle_w)


@dataclass(frozen=True)
class Energy:
    """Power and energy of a plan (all its replicas) in steady state."""

    device_power_w: float  # mean board power per device, busy and idle time together
    power_w: float  # the whole plan: boards plus host, NIC and switch shares
    energy_j_per_token: float  # per output token
    energy_j_per_request: float
    energy_kwh_per_hour: float
    busy_fraction: float  # share of time the engine is running iterations

    def metrics(self) -> dict[str, float]:
        return {"power_w": self.power_w, "device_power_w": self.device_power_w,
                "energy_j_per_token": self.energy_j_per_token, "energy_j_per_request": self.energy_j_per_request,
                "energy_kwh_per_hour": self.energy_kwh_per_hour, "busy_fraction": self.busy_fraction}


def busy_fraction(wl: Workload, requests_per_s: float, ttft_s: float, tpot_s: float) -> float:
    """Share of time an instance has work: 1 in a closed loop; in an open loop, 1 - P(empty) with
    Poisson occupancy at Little's-law mean (requests in the system = rate x time in the system)."""
    if wl.closed_loop:
        return 1.0
    in_system = requests_per_s * (ttft_s + (wl.osl - 1) * tpot_s)
    return float(min(1.0, max(0.0, -math.expm1(-in_system))))


def serving_energy(inst: Instance, wl: Workload, est: Estimate) -> Energy:
    """Energy of `est` (an estimate of `inst` with `layout.dp` replicas serving `wl`)."""
    devices = est.layout.total_devices
    pm = power_model(inst.acc, inst.profile)
    plat = platform(inst.group, inst.profile)
    per_device_extra = plat.host_w + plat.nic_w + plat.switch_w
    replicas = est.layout.dp
    rps = est.requests_per_s / replicas
    tpot_s, ttft_s = est.tpot_ms / 1e3, est.ttft_ms / 1e3
    if not (est.fits and est.stable and rps > 0 and math.isfinite(tpot_s) and math.isfinite(ttft_s)):
        idle = devices * (pm.idle_w + per_device_extra)
        return Energy(pm.idle_w, idle, math.inf, math.inf, idle / 1e3, 0.0)
    busy = busy_fraction(wl, rps, ttft_s, tpot_s)
    # while busy, the iteration holds the steady-state mix concentrated into the busy time
    decode = max(est.decode_batch / max(busy, 1e-9), 1.0)
    prefill = rps * wl.isl * tpot_s / max(busy, 1e-9)
    batch = Batch(decode_seqs=decode, decode_ctx=wl.isl + wl.osl / 2, prefill_tokens=prefill,
                  prefill_span=wl.isl / 2, prefill_seqs=prefill / wl.isl)
    active = float(iteration_power_w(inst, batch))
    device_w = busy * active + (1 - busy) * pm.idle_w
    power = devices * (device_w + per_device_extra)
    return Energy(device_power_w=device_w, power_w=power,
                  energy_j_per_token=power / est.output_tok_s if est.output_tok_s > 0 else math.inf,
                  energy_j_per_request=power / est.requests_per_s, energy_kwh_per_hour=power / 1e3,
                  busy_fraction=busy)


def power_sources(group: NodeGroup, profile: Profile) -> dict[str, str]:
    """Every power constant used for `group`, with where it came from (for reports)."""
    o = _overrides(profile)
    out = {k: ("calibration profile (measured)" if k in o else v) for k, v in DEVICE_SOURCES.items()}
    out.update(platform(group, profile).sources)
    return out
