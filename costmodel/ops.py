"""Per-device ops of one decoder layer for an iteration's batch, and their roofline times.

Every formula is elementwise numpy arithmetic, so a `Batch` may hold arrays (many iterations at
once, as the simulator and the closed-loop solver want) as well as scalars.

Sharding (per device): attention heads over `tp` (KV heads replicate once `tp` exceeds them);
attention tokens over `attention_dp`; dense MLPs over `tp` with tokens over `attention_dp`;
routed experts over `ep`, each sliced `moe_tp` ways, seeing the tokens of all `attention_dp` ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.calibration.profile import Profile
from costmodel.layout import Layout
from costmodel.models import STATE_BYTES, STATE_KINDS, LayerSpec, ModelSpec, indexed_keys, keys_read
from costmodel.precision import Precision
from hardware.specs import Accelerator

Num = float | np.ndarray


@dataclass(frozen=True)
class Batch:
    """One iteration of one instance: decoding sequences plus prefill (chunk) tokens."""

    decode_seqs: Num = 0.0
    decode_ctx: Num = 0.0  # mean tokens already cached per decoding sequence
    prefill_tokens: Num = 0.0
    prefill_span: Num = 0.0  # mean keys each prefill token attends to (isl/2 for whole prompts)
    prefill_seqs: Num = 0.0  # prompts in the chunk (each emits one token at its end)
    # tokens each decoding sequence runs this step: 1, or 1 + draft tokens when a speculative step
    # verifies them (costmodel/speculative.py); they share one read of the sequence's KV cache
    decode_queries: Num = 1.0

    @property
    def decode_tokens(self) -> Num:
        return self.decode_seqs * self.decode_queries

    @property
    def tokens(self) -> Num:
        return self.decode_tokens + self.prefill_tokens

    def split(self, n: int) -> Batch:
        """One of `n` equal parts (pipeline or overlap micro-batches): counts shrink, lengths stay."""
        return Batch(self.decode_seqs / n, self.decode_ctx, self.prefill_tokens / n, self.prefill_span,
                     self.prefill_seqs / n, self.decode_queries)


@dataclass(frozen=True)
class Op:
    """Work of one op on one device: FLOPs, bytes moved, and which efficiency applies."""

    name: str
    kind: str  # gemm | attn_prefill | attn_decode | moe | elementwise
    flops: Num
    bytes: Num
    m: Num = 1.0  # parallel extent for the shape-dependent efficiency (see RooflineFit)
    k: Num = 0.0  # reduction depth (GEMMs), 0 = not applicable
    family: str = ""  # a kernel family with its own fitted scale (MLA attention), "" = none
    # Expected launches per iteration (<= 1): a prompt-only kernel runs only in the iterations that
    # carry a prompt chunk, so in a mean-field batch with a fraction of a prompt per step its fixed
    # latency is paid that fraction of the time (its FLOPs and bytes are already averaged).
    calls: Num = 1.0
    # Work items of a decode-attention kernel, its (sequence x KV head) streams: each costs setup and
    # a split-K reduction, and few of them cannot keep HBM busy (RooflineFit.item_ns, items_half).
    items: Num = 0.0


def _gemm(name: str, m: Num, n: float, k: float, prec: Precision, calls: Num = 1.0) -> Op:
    """y[m,n] = x[m,k] @ W[k,n]: weights in the weight dtype, activations 16-bit."""
    weights = np.where(np.asarray(m) > 0, n * k * prec.weight_bytes, 0.0)
    return Op(name, "gemm", 2.0 * m * n * k, weights + m * (n + k) * prec.act_bytes, m * n, k, calls=calls)


def prompt_calls(b: Batch, ranks: int = 1) -> Num:
    """Share of iterations that run prompt-only kernels on one of `ranks` attention-DP ranks:
    the prompts per step (a batch built without a prompt count is taken to carry a whole one)."""
    seqs = np.asarray(b.prefill_seqs, dtype=float) / ranks
    return np.where(seqs > 0, np.minimum(seqs, 1.0), 1.0)


def attention_ops(model: ModelSpec, lay: Layout, prec: Precision, b: Batch, layer: LayerSpec | None = None) -> list[Op]:
    """One layer's token mixer on one device: QKV, core attention (prefill and decode, over the keys
    the layer's kind reads: `models.keys_read`), its indexer if any, and the output projection; a
    state layer's ops (`state_ops`); nothing for a layer without a mixer. `layer` defaults to the
    model's first layer."""
    layer = layer or model.layer_list[0]
    if layer.attention == "none":
        return []
    if layer.attention in STATE_KINDS:
        return state_ops(model, lay, prec, b)
    ops = _attention_core(model, lay, prec, b, layer)
    return ops + indexer_ops(model, lay, prec, b, layer) if layer.indexed else ops


def _attention_core(model: ModelSpec, lay: Layout, prec: Precision, b: Batch, layer: LayerSpec) -> list[Op]:
    h = model.hidden_size
    heads = model.num_heads / lay.tp
    layer_kv_heads, d, shared = model.dims(layer)
    kv_heads = max(1.0, layer_kv_heads / lay.tp)
    adp = lay.attention_dp
    tokens = b.tokens / adp
    dec, pre = b.decode_seqs / adp, b.prefill_tokens / adp
    q_dec = dec * b.decode_queries  # decode query tokens: a verify step's drafts read the same KV
    kv_b = prec.kv_bytes
    prompt_only = prompt_calls(b, adp)
    dec_ctx = keys_read(layer, b.decode_ctx)
    span = keys_read(layer, b.prefill_span)
    if model.mla:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        latent = m.kv_lora_rank + m.qk_rope_head_dim
        q_in = m.q_lora_rank or h
        ops = [_gemm("kv_a_proj", tokens, latent, h, prec)]
        if m.q_lora_rank:
            ops.append(_gemm("q_a_proj", tokens, m.q_lora_rank, h, prec))
        ops.append(_gemm("q_b_proj", tokens, heads * qk, q_in, prec))
        # Prefill expands the latent to per-head K/V; decode absorbs W_kv_b into Q and O
        # (DeepSeek-V2 paper, sec. 2.1.3), attending over the latent directly.
        ops.append(_gemm("kv_b_proj", pre, heads * (m.qk_nope_head_dim + m.v_head_dim),
                         m.kv_lora_rank, prec, calls=prompt_only))
        ops.append(Op("attn_prefill", "attn_prefill",
                      2.0 * pre * span * heads * (qk + m.v_head_dim),
                      pre * heads * (2 * qk + 2 * m.v_head_dim) * prec.act_bytes, 2.0 * span,
                      family="mla_prefill", calls=prompt_only))
        ops.append(_gemm("q_absorb", q_dec, heads * m.kv_lora_rank, m.qk_nope_head_dim, prec))
        # every head reads the one shared latent: a sequence is one work item
        ops.append(Op("attn_decode", "attn_decode",
                      2.0 * q_dec * dec_ctx * heads * (latent + m.kv_lora_rank),
                      dec * dec_ctx * latent * kv_b, family="mla_decode", items=dec))
        ops.append(_gemm("v_absorb", q_dec, heads * m.v_head_dim, m.kv_lora_rank, prec))
        ops.append(_gemm("o_proj", tokens, h, heads * m.v_head_dim, prec))
        return ops
    kv = 1 if shared else 2  # cached tensors per KV head
    q = heads * (2 if model.attn_output_gate else 1)
    if model.attention_block_params is not None:
        # a family-counted block (low-rank projections): its weights as two GEMMs of half each
        half = model.attention_block_params / (2 * h * lay.tp)
        qkv, o = _gemm("qkv_proj", tokens, half, h, prec), _gemm("o_proj", tokens, h, half, prec)
    else:
        qkv = _gemm("qkv_proj", tokens, (q + kv * kv_heads) * d, h, prec)
        o = _gemm("o_proj", tokens, h, heads * d, prec)
    return [
        qkv,
        Op("attn_prefill", "attn_prefill", 4.0 * pre * span * heads * d,
           pre * (heads + 2 * kv_heads) * d * prec.act_bytes * 2, 2.0 * span, calls=prompt_only),
        # the KV read plus Q in and O out, as the fitted kernel rows count it
        Op("attn_decode", "attn_decode", 4.0 * q_dec * dec_ctx * heads * d,
           dec * dec_ctx * kv * kv_heads * d * kv_b + q_dec * heads * d * 2 * prec.act_bytes,
           items=dec * kv_heads),
        o,
    ]


# Chunk length of the chunked (parallel) scan that prefill runs for DeltaNet and Mamba-2 (the FLA
# and mamba_ssm kernels' default 64): within a chunk tokens attend to each other quadratically.
SCAN_CHUNK = 64


def state_ops(model: ModelSpec, lay: Layout, prec: Precision, b: Batch) -> list[Op]:
    """A linear-attention or Mamba-2 layer on one device (heads over tp): input projection, the
    recurrence, output projection. Decode reads and writes each sequence's state once per token;
    prefill runs the chunked scan, a k x v state update per token plus attention inside each chunk."""
    s = model.state
    assert s is not None
    shards = min(lay.tp, s.heads)
    heads = s.heads / shards
    adp = lay.attention_dp
    tokens, dec, pre = b.tokens / adp, b.decode_seqs / adp, b.prefill_tokens / adp
    state = (heads * s.k_dim * s.v_dim + max(s.conv_kernel - 1, 0) * s.conv_dim / shards) * STATE_BYTES
    width = s.in_width / shards
    per_token = heads * 4.0 * s.k_dim * s.v_dim
    return [
        _gemm("state_in_proj", tokens, width, model.hidden_size, prec),
        Op("state_prefill", "attn_prefill", pre * (per_token + heads * 2.0 * SCAN_CHUNK * (s.k_dim + s.v_dim)),
           pre * width * prec.act_bytes * 2 + b.prefill_seqs / adp * state * 2, 2.0 * SCAN_CHUNK,
           calls=prompt_calls(b, adp)),
        # a verify step's drafts update the state one after another, reading and writing it once
        Op("state_decode", "attn_decode", dec * b.decode_queries * per_token,
           dec * (state * 2 + b.decode_queries * width * prec.act_bytes), items=dec * heads),
        _gemm("state_out_proj", tokens, model.hidden_size, heads * s.v_dim, prec),
    ]


# DSA caches its index keys in FP8 (DeepSeek-V3.2's inference code quantizes them with one scale per
# 128 values), whatever the KV cache dtype.
INDEX_KEY_BYTES = 1.0 + 4.0 / 128


def indexer_ops(model: ModelSpec, lay: Layout, prec: Precision, b: Batch, layer: LayerSpec) -> list[Op]:
    """The lightning indexer of a sparse or indexed-compressed layer on one device (replicated over
    tp, as DeepSeek-V3.2's inference code holds it): its projections, then every query scores every
    indexed entry with each of its heads (FP8 math, the 16-bit attention fit). This is the part of a
    DSA layer's decode that still grows with context, at index_head_dim FP8 bytes per entry."""
    ix = model.indexer
    assert ix is not None
    adp = lay.attention_dp
    tokens, dec, pre = b.tokens / adp, b.decode_seqs / adp, b.prefill_tokens / adp
    dec_keys, span_keys = indexed_keys(layer, b.decode_ctx), indexed_keys(layer, b.prefill_span)
    return [
        # wq_b reads the query latent, wk and the head weights the hidden state: one GEMM of the same size
        _gemm("index_proj", tokens, ix.params / model.hidden_size, model.hidden_size, prec),
        Op("index_prefill", "attn_prefill", 2.0 * pre * span_keys * ix.heads * ix.head_dim,
           pre * ix.head_dim * INDEX_KEY_BYTES * 2, 2.0 * span_keys, calls=prompt_calls(b, adp)),
        Op("index_decode", "attn_decode", 2.0 * dec * b.decode_queries * dec_keys * ix.heads * ix.head_dim,
           dec * dec_keys * ix.head_dim * INDEX_KEY_BYTES, items=dec),
    ]


def dense_mlp_ops(model: ModelSpec, lay: Layout, prec: Precision, b: Batch) -> list[Op]:
    h, i = model.hidden_size, model.intermediate_size / lay.tp
    tokens = b.tokens / lay.attention_dp
    return [_gemm("gate_up_proj", tokens, (model.mlp_matrices - 1) * i, h, prec),
            _gemm("down_proj", tokens, h, i, prec)]


def experts_touched(tokens: Num, top_k: int, experts: int) -> Num:
    """Expected distinct experts hit by `tokens` tokens routing uniformly to `top_k` each."""
    return experts * (1.0 - (1.0 - 1.0 / experts) ** (tokens * top_k))


# Fused-MoE kernels sort, permute and un-permute every routed (token, expert) pair on each rank
# before filtering to local experts (vLLM 0.19 fused_moe); the measured kernels fit best with
# about four 16-bit hidden-sized passes per routed pair (shared/data/ops/*/moe.csv.gz; see
# costmodel/calibration/kernels.py), a cost that does not shrink with EP.
ROUTED_PASSES = 4.0


def moe_ops(model: ModelSpec, lay: Layout, prec: Precision, b: Batch, skew: float = 1.0,
            redundant: int = 0) -> list[Op]:
    """Router, routed experts on the busiest device (`skew` = max/mean load) and shared experts.

    `redundant` extra expert copies (EPLB) spread the same pairs over more local weights: a touched
    expert's copies all get a share of its tokens.
    """
    moe = model.moe
    assert moe is not None
    h = model.expert_width  # the hidden state, or a latent MoE's latent
    tokens_all = b.tokens  # every attention-DP rank's tokens meet in the MoE layer
    copies = (moe.num_experts + redundant) / moe.num_experts
    local_experts = moe.num_experts * copies / lay.ep
    width = moe.intermediate_size / lay.moe_tp
    pairs = tokens_all * moe.top_k / lay.ep * skew  # (token, expert) pairs on this device
    # The kernel's sort/permute passes run over the tokens it is handed: with EP, the dispatch hands
    # a rank only the tokens with one of its experts among their top-k (all tokens when ep = 1).
    seen = np.minimum(tokens_all, tokens_all * (1.0 - (1.0 - 1.0 / lay.ep) ** moe.top_k) * skew)
    touched = np.minimum(local_experts, experts_touched(tokens_all, moe.top_k, moe.num_experts) * copies / lay.ep)
    ops = [
        _gemm("router", b.tokens / lay.attention_dp, moe.num_experts, model.hidden_size, prec),
        Op("experts", "moe", 2.0 * pairs * model.mlp_matrices * h * width,
           touched * model.mlp_matrices * h * width * prec.weight_bytes
           + pairs * (2 * h + model.mlp_matrices * width) * prec.act_bytes
           + ROUTED_PASSES * seen * moe.top_k * h * prec.act_bytes,
           pairs / np.maximum(touched, 1.0) * 2 * width, h),
    ]
    tokens = b.tokens / lay.attention_dp
    if moe.num_shared_experts:
        shared = moe.num_shared_experts * moe.shared_intermediate_size / lay.tp
        hidden = model.hidden_size
        ops += [_gemm("shared_gate_up", tokens, (model.mlp_matrices - 1) * shared, hidden, prec),
                _gemm("shared_down", tokens, hidden, shared, prec)]
    if moe.latent_size:
        latent = moe.latent_size / lay.tp
        ops += [_gemm("latent_in", tokens, latent, model.hidden_size, prec),
                _gemm("latent_out", tokens, model.hidden_size, latent, prec)]
    return ops


def elementwise_op(model: ModelSpec, lay: Layout, b: Batch) -> Op:
    """Norms, RoPE, residual adds and activations: ~12 hidden-sized 16-bit passes per token."""
    tokens = b.tokens / lay.attention_dp
    return Op("elementwise", "elementwise", 0.0, 12.0 * tokens * model.hidden_size * 2.0)


def lm_head_op(model: ModelSpec, lay: Layout, prec: Precision, b: Batch) -> Op:
    """Logits for every sequence that emits a token this iteration (vocab split over tp)."""
    rows = (b.decode_tokens + b.prefill_seqs) / lay.attention_dp
    return _gemm("lm_head", rows, model.vocab_size / lay.tp, model.hidden_size, prec)


def op_time_s(op: Op, acc: Accelerator, prec: Precision, prof: Profile) -> Num:
    """Roofline time at the calibrated efficiency of the op's family, plus its fixed latency.

    GEMMs run at the GEMM dtype's peak, fused MoE at the weight dtype's fit, attention at the
    16-bit peak with the KV dtype's fit (FP8 KV halves the bytes, not the math).
    """
    if op.kind == "elementwise":
        return op.bytes / (acc.hbm_gbps * 1e9 * prof.elementwise_mem_eff) * prof.memory_scale
    if op.kind == "gemm":
        fit, peak = prof.gemm_fit(prec.gemm), acc.flops(prec.gemm)
    elif op.kind == "moe":
        fit, peak = prof.moe_fit(prec.weights), acc.flops(prec.gemm)
    else:
        fit = prof.attn_fit("prefill" if op.kind == "attn_prefill" else "decode", prec.kv)
        peak = acc.flops("bf16")
    active = np.where(np.asarray(op.flops + op.bytes) > 0, op.calls, 0.0)
    t = fit.time_s(op.flops, op.bytes, peak, acc.hbm_gbps * 1e9, op.m, op.k, op.items, calls=active,
                   compute_scale=prof.compute_scale, memory_scale=prof.memory_scale, fixed_scale=prof.fixed_scale)
    if op.family:
        extra = active * prof.family_t0_us.get(op.family, 0.0) * 1e-6
        t = t * prof.family_scale.get(op.family, 1.0) + extra
    if op.kind == "moe":
        return t * prof.moe_scale
    # Prefill and decode attention have separate multipliers: with its per-work-item cost the decode kernel
    # fit predicts the public engines' decode steps unscaled (one shared multiplier was fitted to 0.3-0.45,
    # dragging prefill along), while the torch runner's gathered-cache decode needs its own.
    if op.kind == "attn_prefill":
        return t * prof.attention_scale
    return t * prof.decode_attention_scale if op.kind == "attn_decode" else t
