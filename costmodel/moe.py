"""MoE at scale: expert-parallel groups and their tier, dispatch/combine all-to-alls, routing skew,
redundant experts (EPLB) and micro-batch overlap of communication with compute.

Conventions (see `costmodel.layout`): the routed experts of a MoE layer are spread over `ep` ranks of
the instance's `tp x attention_dp` group, each slice `moe_tp` ways; attention-DP ranks with EP (DEP)
each bring their own tokens, so every device dispatches `tokens / attention_dp` tokens to the ranks
holding their top-k experts and gets their outputs back (combine). Shared experts run where the
token is (dense, sharded over tp), so they add no traffic.

Routing skew is the busiest rank's load over the mean. Its default is what the calibration measured
on fused-MoE kernels under power-law routing (`Profile.moe_skew`, the `power_law_*` rows of
shared/data/ops/*/moe.csv.gz). Redundant experts let an EPLB-style balancer replicate the hottest
experts and re-pack the replicas, trading expert memory for balance (`eplb_skew`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from costmodel import comm
from costmodel.calibration.profile import CommFit, Profile, shipped
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.ops import Batch, Num
from costmodel.precision import Precision
from hardware.loading import read_mapping
from hardware.specs import Link, NodeGroup
from hardware.topology import contiguous_tier

A2A_KERNELS = Path(__file__).parent / "data" / "a2a_kernels.yaml"

SKEWED_PREFIX = "power_law"  # routing distributions the calibration data measured besides "balanced"
QUANTIZED_DISPATCH = ("fp8", "int8")  # GEMM dtypes whose engines move tokens already quantized


# ---- routing skew ------------------------------------------------------------------------------
def _skews(profile: Profile) -> list[float]:
    return [v for k, v in profile.moe_skew.items() if k.startswith(SKEWED_PREFIX)]


def default_skew(profile: Profile) -> float:
    """Busiest/mean expert load to assume when nobody says: the most skewed routing the profile measured.

    A spec-default profile (no kernels fitted, e.g. Ascend) borrows the median over the shipped fitted
    profiles: skew is a property of the router and the traffic more than of the device.
    """
    own = _skews(profile)
    if own:
        return max(own)
    fitted = [max(s) for p in shipped().values() if (s := _skews(p))]
    return float(np.median(fitted)) if fitted else 1.0


@lru_cache(maxsize=256)
def _popularity(num_experts: int, exponent: float) -> np.ndarray:
    """Zipf expert popularity in a fixed random order (placement uncorrelated with popularity)."""
    loads = (np.arange(num_experts) + 1.0) ** -exponent
    return np.random.default_rng(0).permutation(loads) / loads.sum() * num_experts


def _static_skew(loads: np.ndarray, ep: int) -> float:
    """Busiest rank over the mean when experts sit in contiguous blocks of E/ep (no balancer)."""
    per_rank = loads.reshape(ep, -1).sum(axis=1)
    return float(per_rank.max() / per_rank.mean())


@lru_cache(maxsize=1024)
def _matching_exponent(num_experts: int, ep: int, skew: float) -> float:
    """Zipf exponent whose static placement over `ep` ranks shows `skew` (bisection)."""
    lo, hi = 0.0, 4.0
    if _static_skew(_popularity(num_experts, hi), ep) <= skew:
        return hi
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _static_skew(_popularity(num_experts, mid), ep) < skew else (lo, mid)
    return (lo + hi) / 2


def _replicate(loads: np.ndarray, redundant: int) -> np.ndarray:
    """Replica counts: each extra copy goes to the expert with the highest load per copy (EPLB)."""
    copies = np.ones(len(loads), dtype=int)
    for _ in range(redundant):
        copies[np.argmax(loads / copies)] += 1
    return copies


def _pack(loads: np.ndarray, copies: np.ndarray, ep: int) -> float:
    """Greedy balanced packing of replicas, heaviest first, onto ranks with equal slot counts."""
    weights = np.repeat(loads / copies, copies)
    slots = len(weights) // ep
    rank_load = np.zeros(ep)
    free = np.full(ep, slots)
    for w in np.sort(weights)[::-1]:
        open_ranks = np.flatnonzero(free > 0)
        r = open_ranks[np.argmin(rank_load[open_ranks])]
        rank_load[r] += w
        free[r] -= 1
    return float(rank_load.max() / rank_load.mean())


@lru_cache(maxsize=1024)
def eplb_skew(skew: float, num_experts: int, ep: int, redundant: int) -> float:
    """Busiest/mean rank load after an EPLB balancer with `redundant` extra expert slots.

    The expert popularity is the Zipf law whose static placement reproduces `skew` on `ep` ranks;
    the balancer then replicates the hottest experts (`redundant` copies in all) and packs the
    replicas greedily, as DeepSeek's EPLB does (github.com/deepseek-ai/EPLB: replicate by load per
    copy, then balanced packing).
    """
    if ep <= 1 or skew <= 1.0:
        return 1.0
    if (num_experts + redundant) % ep:
        raise ValueError(f"experts + redundant ({num_experts} + {redundant}) must divide over ep={ep}")
    # static placement needs whole blocks of experts: fit the law on the largest divisor up to ep
    ep_fit = max(d for d in range(1, ep + 1) if num_experts % d == 0)
    loads = _popularity(num_experts, _matching_exponent(num_experts, ep_fit, skew))
    balanced = _pack(loads, _replicate(loads, redundant), ep)
    # where whole experts fill the ranks the balancer may keep the static placement; otherwise ranks
    # holding only unreplicated experts carry more than the mean whatever the routing (EP144: 2 of 1.78)
    return min(skew, balanced) if num_experts % ep == 0 else balanced


def effective_skew(model: ModelSpec, lay: Layout, skew: float, redundant: int = 0) -> float:
    """The skew the busiest EP rank sees: none without EP, reduced by EPLB when it has spare slots."""
    if model.moe is None or lay.ep <= 1:
        return 1.0
    if redundant <= 0:
        return skew
    return eplb_skew(round(skew, 6), model.moe.num_experts, lay.ep, redundant)


# ---- expert parallel groups, traffic and memory ------------------------------------------------
def ep_link(group: NodeGroup, lay: Layout) -> Link:
    """The tier an EP group spans: NVLink / HCCS / UB inside a scale-up domain, the RDMA NIC across."""
    return contiguous_tier(group, lay.tp * lay.attention_dp)


def slots_per_rank(model: ModelSpec, lay: Layout, redundant: int = 0) -> float:
    """Expert copies one EP rank holds (routed experts plus its share of the redundant ones)."""
    assert model.moe is not None
    return (model.moe.num_experts + redundant) / lay.ep


def expert_bytes_per_device(model: ModelSpec, lay: Layout, prec: Precision, redundant: int = 0) -> float:
    """Routed-expert weights on one device over all of its stage's MoE layers (first stage)."""
    if model.moe is None:
        return 0.0
    layers = -(-model.num_layers // lay.pp) * model.moe_layers / model.num_layers
    per_layer = (model.moe.num_experts + redundant) * model.expert_params / (lay.tp * lay.attention_dp)
    return layers * per_layer * prec.weight_bytes


def dispatch_elem_bytes(prec: Precision) -> float:
    """Bytes per hidden element on the dispatch path: FP8/INT8 engines quantize tokens before sending
    (DeepSeek's inference overview: "dispatch transmissions adopt the FP8 format"; CloudMatrix-Infer
    quantizes to INT8 before UB dispatch, arXiv 2506.12708), others send 16-bit."""
    return 1.0 if prec.gemm in QUANTIZED_DISPATCH else prec.act_bytes


def a2a_buffer_bytes(model: ModelSpec, lay: Layout, tokens: Num, elem_bytes: float, skew: float) -> Num:
    """Per-device all-to-all buffer: every token of the rank goes to its top-k experts; the busiest
    rank receives `skew` times the mean, and it sets the pace."""
    k = model.moe.top_k if model.moe else 1
    return tokens / lay.attention_dp * k * model.hidden_size * elem_bytes * skew


def one_shot_all_to_all_s(size_bytes: Num, n: int, link: Link, fit: CommFit) -> Num:
    """All-to-all as DeepEP and CloudMatrix's FusedDispatch run it: every rank writes to all peers at
    once, so it pays one link hop plus the fitted per-peer issue cost, not n-1 sequential hops.

    With a fitted per-step latency (NCCL's grouped send/recv measured inside a node) this is
    `comm.all_to_all_s` unchanged; without one, the n-1 steps share a single link latency.
    """
    if n > 1 and fit.step_us is None:
        fit = fit.model_copy(update={"step_us": link.latency_us / (n - 1)})
    return comm.all_to_all_s(size_bytes, n, link, fit)


class A2AKernel(BaseModel):
    """A published dispatch/combine kernel: the bottleneck bandwidth it reached on a link of `link_gbps`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kernel: str
    link_gbps: float = Field(gt=0)
    dispatch_gbps: float = Field(gt=0)
    combine_gbps: float = Field(gt=0)
    source: str

    def share(self, op: str) -> float:
        """The kernel's share of its link for `op` ("dispatch" or "combine")."""
        return (self.dispatch_gbps if op == "dispatch" else self.combine_gbps) / self.link_gbps


@lru_cache(maxsize=1)
def a2a_kernels() -> dict[str, dict[str, A2AKernel]]:
    """Published kernels by tier (`scaleout`, or a scale-up link's name) and phase (costmodel/data/a2a_kernels.yaml)."""
    return {tier: {phase: A2AKernel(**k) for phase, k in phases.items()}
            for tier, phases in read_mapping(A2A_KERNELS).items()}


def _kernel_s(size_bytes: Num, link: Link, kernel: A2AKernel, op: str) -> Num:
    """One hop plus the buffer at the kernel's measured share of the link."""
    return link.latency_us * 1e-6 + size_bytes / (link.gbps * 1e9 * kernel.share(op))


def _rdma_s(size_bytes: Num, span: int, group: NodeGroup, fit: CommFit, op: str, prefill: Num) -> Num:
    """A dispatch or combine over EP ranks in several scale-up domains, DeepEP-style: the pairs bound for
    other domains leave through the NIC at the measured kernel share (low-latency kernels for decode-only
    steps, normal ones for steps with prompts), the rest go over the scale-up link at the same time."""
    kernels = a2a_kernels()["scaleout"]
    remote = 1.0 - group.domain_size / span
    nic = np.where(np.asarray(prefill) > 0, _kernel_s(remote * size_bytes, group.scaleout, kernels["prefill"], op),
                   _kernel_s(remote * size_bytes, group.scaleout, kernels["decode"], op))
    local = one_shot_all_to_all_s((1.0 - remote) * size_bytes, group.domain_size, group.scaleup, fit)
    return np.maximum(nic, local)


def exchange_s(size_bytes: Num, lay: Layout, group: NodeGroup, fit: CommFit, op: str, prefill: Num) -> Num:
    """One MoE dispatch or combine of a `size_bytes` per-rank buffer over the EP group, by the tier its
    `tp x attention_dp` devices span: a published kernel for the scale-up link where one is known (UB),
    else the profile's fitted NCCL all-to-all (`fit`) over the `ep` peers; across domains the RDMA path."""
    span = lay.tp * lay.attention_dp
    link = contiguous_tier(group, span)
    if link is not group.scaleup:
        return _rdma_s(size_bytes, span, group, fit, op, prefill)
    known = a2a_kernels().get(link.name)
    if known:
        return _kernel_s(size_bytes, link, known["any"], op)
    return one_shot_all_to_all_s(size_bytes, lay.ep, link, fit)


def dispatch_combine_s(model: ModelSpec, lay: Layout, prec: Precision, b: Batch, group: NodeGroup, fit: CommFit,
                       skew: float) -> dict[str, Num]:
    """Seconds of one MoE layer's dispatch and combine on the busiest rank (`fit`: the scale-up
    all-to-all fit)."""
    if lay.ep <= 1:
        return {}
    dispatch = a2a_buffer_bytes(model, lay, b.tokens, dispatch_elem_bytes(prec), skew)
    combine = a2a_buffer_bytes(model, lay, b.tokens, prec.act_bytes, skew)
    return {"ep_dispatch": exchange_s(dispatch, lay, group, fit, "dispatch", b.prefill_tokens),
            "ep_combine": exchange_s(combine, lay, group, fit, "combine", b.prefill_tokens)}


# ---- micro-batch overlap -----------------------------------------------------------------------
def exposed_comm(compute_s: Num, comms: dict[str, Num], m: int, layers: int = 1) -> dict[str, Num]:
    """Communication left on the critical path of one of `layers` consecutive layers when `m`
    micro-batches alternate compute and comm.

    The two streams (compute, communication) stay staggered from one layer to the next, so in steady
    state a layer takes max(C, A); the stagger is set up once per pass, a min(C, A) / m share of one
    layer, spread here over the `layers` layers. The exposed communication is that minus C, shared out
    over the collectives in proportion to their time (DeepSeek's dual micro-batch overlap, its decode
    pipeline running across layers; CloudMatrix-Infer's microbatch pipelining).
    """
    if m <= 1 or not comms:
        return comms
    total = sum(comms.values())
    exposed = np.maximum(total - compute_s, 0.0) + np.minimum(total, compute_s) / (m * layers)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(np.asarray(total) > 0, exposed / np.maximum(total, 1e-30), 0.0)
    return {k: v * share for k, v in comms.items()}
