"""Context (sequence) parallelism for prefill: one long prompt split over `sp` ranks.

The `sp` ranks are attention-DP ranks of the instance (`Layout.sp` divides `tp x attention_dp`):
each holds every weight and `1/sp` of the prompt's tokens, placed zig-zag so causal attention work
is even, and its queries still attend over the whole prompt (the ops already split tokens over
attention-DP ranks; this module adds the traffic that makes that legal). Two ways to see all keys:

- ring attention (Liu et al., arXiv 2310.01889): K/V blocks travel round the ring, `sp - 1` hops
  per layer, each hidden behind the attention on the block in hand; only the excess is exposed;
- Ulysses (DeepSpeed-Ulysses, arXiv 2309.14509): all-to-alls swap the sequence split for a head
  split before attention (Q, K, V) and back after it (the output); it needs the heads of a TP rank
  to divide over `sp`.

`method="auto"` takes the cheaper, as NCCL picks between ring and tree.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from costmodel import comm
from costmodel.layout import Layout
from costmodel.memory import memory_breakdown
from costmodel.models import ModelSpec
from costmodel.ops import Batch, Num
from hardware.errors import PlannerInputError
from hardware.topology import contiguous_tier

if TYPE_CHECKING:
    from costmodel.instance import Instance

METHODS = ("auto", "ring", "ulysses")


def ulysses_fits(model: ModelSpec, tp: int, sp: int) -> bool:
    """Ulysses gives each rank whole heads: a TP rank's heads must divide over `sp`."""
    return (model.num_heads // tp) % sp == 0


def kv_block_elems(model: ModelSpec, tp: int) -> float:
    """K/V elements per token and layer one device holds (MLA: the shared latent, expanded locally),
    the mean over the model's layer kinds (a state layer passes none)."""
    return model.kv_elems_per_token(None, tp) / model.num_layers


def ulysses_widths(model: ModelSpec, tp: int) -> tuple[float, float, float, float]:
    """Per-token widths of Q, K, V and the attention output on one TP rank (MLA: per-head K/V)."""
    heads = model.num_heads / tp
    if model.mla:
        qk = model.mla.qk_nope_head_dim + model.mla.qk_rope_head_dim
        v = model.mla.v_head_dim
        return heads * qk, heads * qk, heads * v, heads * v
    kv = max(1.0, model.num_kv_heads / tp) * model.head_dim
    return heads * model.head_dim, kv, kv, heads * model.head_dim


def ring_s(inst: Instance, tokens_rank: Num, attn_s: Num) -> Num:
    """Exposed seconds of one layer's ring passes: sp - 1 hops, each behind 1/sp of the attention."""
    lay = inst.layout
    link = contiguous_tier(inst.group, lay.tp * lay.sp)
    block = tokens_rank * kv_block_elems(inst.model, lay.tp) * inst.prec.act_bytes
    hop = comm.send_recv_s(block, link, inst._fit("send_recv", link))
    return (lay.sp - 1) * np.maximum(hop - attn_s / lay.sp, 0.0)


def ulysses_s(inst: Instance, tokens_rank: Num) -> Num:
    """Seconds of one layer's four Ulysses all-to-alls (Q, K, V in; output back)."""
    lay = inst.layout
    link = contiguous_tier(inst.group, lay.tp * lay.sp)
    fit = inst._fit("all_to_all", link)
    return sum(comm.all_to_all_s(tokens_rank * w * inst.prec.act_bytes, lay.sp, link, fit)
               for w in ulysses_widths(inst.model, lay.tp))


def layer_comm_s(inst: Instance, b: Batch, attn_s: Num) -> dict[str, Num]:
    """Context-parallel traffic of one layer for batch `b` whose prefill attention takes `attn_s`."""
    lay = inst.layout
    if lay.sp <= 1:
        return {}
    tokens_rank = b.prefill_tokens / lay.attention_dp
    method = inst.sp_method
    ring = ring_s(inst, tokens_rank, attn_s) if method in ("auto", "ring") else None
    uly = ulysses_s(inst, tokens_rank) if method in ("auto", "ulysses") and ulysses_fits(inst.model, lay.tp,
                                                                                     lay.sp) else None
    if ring is None and uly is None:
        raise PlannerInputError(f"sp_method='ulysses' needs the {inst.model.num_heads // lay.tp} heads per TP "
                                f"rank to divide over sp={lay.sp}; use sp_method='ring' or a divisor")
    if uly is None or (ring is not None and np.all(np.asarray(ring) <= np.asarray(uly))):
        return {"sp_ring": ring}
    return {"sp_ulysses": uly}


def context_parallel(inst: Instance, degree: int, method: str = "auto") -> Instance:
    """`degree` copies of `inst`'s ranks cooperating on one prompt: attention-DP x degree, sp = degree."""
    if method not in METHODS:
        raise PlannerInputError(f"sp_method '{method}' is unknown; use one of {', '.join(METHODS)}")
    lay = inst.layout
    cp = Layout(tp=lay.tp, pp=lay.pp, ep=lay.ep, attention_dp=lay.attention_dp * degree, sp=lay.sp * degree)
    return replace(inst, layout=cp, sp_method=method)


def prefill_s(inst: Instance, length: int, degree: int, method: str = "auto") -> float:
    """Latency of prefilling one prompt of `length` tokens over `degree` copies of `inst`'s ranks."""
    return float(context_parallel(inst, degree, method).prefill_s(length, 1.0))


def prefill_fits(inst: Instance, length: int, degree: int) -> bool:
    """Whether each rank holds the weights, its 1/degree of the prompt's KV and its activations."""
    cp = context_parallel(inst, degree)
    mem = memory_breakdown(cp.model, cp.layout, cp.prec, cp.acc, cp.engine, length, 0, length,
                           cp.redundant_experts)
    return mem.kv_tokens >= length
