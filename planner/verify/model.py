"""A decoder-only transformer in torch of a plan's family, holding one rank's shard of it.

Llama-family attention (GQA with rotary embeddings and a bf16 KV cache) and SwiGLU MLPs or routed
top-k experts (Mixtral / Qwen-MoE), built from a `ModelSpec` with random weights. One instance holds
the layers of one pipeline stage, with heads, FFN columns and the LM head's vocabulary split over
tensor-parallel ranks and experts over expert-parallel ranks (`Shard`); the collectives between
ranks come from a `planner.verify.parallel.Comm`. Unsharded (`Shard()`), `forward(input_ids)` is a
plain traceable module: `costmodel.torch_import` traces it back into a ModelSpec.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.fx
import torch.nn.functional as F  # noqa: N812 - the torch convention
from torch import nn

from costmodel.models import ModelSpec
from planner.verify.kernels import (
    STORE,
    apply_rope,
    decode_attention,
    linear,
    prefill_attention,
    rms_norm,
    rope_tables,
)
from planner.verify.support import supported

if TYPE_CHECKING:
    from planner.verify.parallel import Comm

torch.fx.wrap("linear")  # a leaf in traced graphs: its dtype branch is not traceable, its shapes are

INIT_STD = 0.02
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class Shard:
    """Which part of the model one rank holds."""

    tp: int = 1
    tp_rank: int = 0
    layers: tuple[int, int] | None = None  # [first, last) layer of this pipeline stage; None = all
    first: bool = True  # stage holds the embedding
    last: bool = True  # stage holds the final norm and LM head
    ep: int = 1  # experts split over `ep` ranks of the stage's tp x attention_dp group
    ep_rank: int = 0
    moe_tp: int = 1  # each expert's width split this many ways
    moe_tp_rank: int = 0


class Init:
    """Random weights that do not depend on the sharding: each tensor is drawn whole from its own
    seed and sliced, so a tp=2 or pp=2 model computes what the unsharded one does."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device

    def full(self, key: str, *shape: int) -> torch.Tensor:
        # drawn on the device: an 8B model's weights drawn on one CPU thread took over a minute
        gen = torch.Generator(device=self.device).manual_seed(zlib.crc32(f"{self.seed}:{key}".encode()))
        return torch.randn(*shape, generator=gen, dtype=torch.float32, device=self.device) * INIT_STD

    def param(self, t: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(t.to(device=self.device, dtype=STORE).contiguous(), requires_grad=False)

    def ones(self, *shape: int) -> nn.Parameter:
        return self.param(torch.ones(*shape))


def _part(t: torch.Tensor, parts: int, i: int, dim: int = 0) -> torch.Tensor:
    return t.tensor_split(parts, dim=dim)[i]


def mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """SwiGLU with the gate and up projections fused in one [2i, h] weight."""
    gate, up = linear(x, gate_up).chunk(2, dim=-1)
    return linear(F.silu(gate) * up, down)


def route(x: torch.Tensor, router: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token and their renormalised softmax weights (Mixtral / Qwen-MoE)."""
    weights, experts = torch.topk(linear(x, router).float(), top_k, dim=-1)
    return F.softmax(weights, dim=-1).to(x.dtype), experts


def run_experts(x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor, count: int, skip_empty: bool = True) -> torch.Tensor:
    """Sum over each token's routed experts of weight x expert(x); `experts` [N, k] are local indices
    into the `count` experts of `gate_up` [E, 2w, h] and `down` [E, h, w] (others are routed elsewhere)."""
    out = torch.zeros_like(x)
    for e in range(count):
        rows, slot = torch.where(experts == e)
        if skip_empty and rows.numel() == 0:  # the traced graph keeps every expert; serving skips idle ones
            continue
        y = mlp(x[rows], gate_up[e], down[e]) * weights[rows, slot][:, None]
        out = out.index_add(0, rows, y)
    return out


@dataclass
class StepMeta:
    """One iteration's batch on one rank: decoding sequences first, then prompt chunks, packed."""

    dec_slots: torch.Tensor  # [B] KV-cache slot of each decoding sequence
    dec_lens: torch.Tensor  # [B] context length including the token being decoded
    # the longest of dec_lens, known on the host: read from the device tensor it cost a device sync in
    # every layer, so the GPU could never run ahead of the launches
    dec_span: int
    chunks: list[tuple[int, int, int, bool]] = field(default_factory=list)  # (slot, start, n, emits a token)

    @property
    def n_dec(self) -> int:
        return int(self.dec_slots.shape[0])

    @property
    def tokens(self) -> int:
        return self.n_dec + sum(c[2] for c in self.chunks)

    def positions(self) -> torch.Tensor:
        dev = self.dec_lens.device
        parts = [self.dec_lens - 1] + [torch.arange(s, s + n, device=dev) for _, s, n, _ in self.chunks]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=dev)

    def emit_rows(self) -> torch.Tensor:
        """Rows that produce a token: every decoding sequence and each chunk that ends its prompt."""
        rows = list(range(self.n_dec))
        off = self.n_dec
        for _, _, n, emits in self.chunks:
            off += n
            if emits:
                rows.append(off - 1)
        return torch.tensor(rows, dtype=torch.long, device=self.dec_slots.device)

    def pack(self) -> torch.Tensor:
        """As one int64 tensor, to send down the pipeline (see `unpack`)."""
        cols = [list(x) for x in zip(*self.chunks, strict=True)] if self.chunks else [[], [], [], []]
        extra = torch.tensor([v for c in cols for v in c], dtype=torch.long)
        return torch.cat([self.dec_slots.cpu(), self.dec_lens.cpu(), extra])

    @staticmethod
    def unpack(t: torch.Tensor, n_dec: int, n_chunks: int, device: torch.device) -> StepMeta:
        vals = t.tolist()
        b, p = n_dec, n_chunks
        cols = [vals[2 * b + i * p: 2 * b + (i + 1) * p] for i in range(4)]
        chunks = [(s, st, n, bool(e)) for s, st, n, e in zip(*cols, strict=True)]
        return StepMeta(t[:b].to(device), t[b:2 * b].to(device), max(vals[b:2 * b], default=0), chunks)


class Block(nn.Module):
    """One decoder layer (this rank's shard): attention, then a SwiGLU MLP or routed experts."""

    def __init__(self, spec: ModelSpec, shard: Shard, index: int, moe_layer: bool, init: Init) -> None:
        super().__init__()
        h, d, tp, r = spec.hidden_size, spec.head_dim, shard.tp, shard.tp_rank
        heads, kv = spec.num_heads, spec.num_kv_heads
        self.heads, self.head_dim = heads // tp, d
        self.kv_heads = max(1, kv // tp)  # KV heads replicate once tp exceeds them
        kv_first = r * self.kv_heads if kv >= tp else r * kv // tp
        self.eps = 1e-5

        def qkv_rows(t: torch.Tensor) -> torch.Tensor:
            q, k, v = t.split([heads * d, kv * d, kv * d])
            kv_rows = slice(kv_first * d, (kv_first + self.kv_heads) * d)
            return torch.cat([_part(q, tp, r), k[kv_rows], v[kv_rows]])

        name = f"layer{index}"
        self.attn_norm = init.ones(h)
        self.qkv = init.param(qkv_rows(init.full(f"{name}.qkv", (heads + 2 * kv) * d, h)))
        self.qkv_bias = init.param(qkv_rows(init.full(f"{name}.qkv_bias", (heads + 2 * kv) * d))) \
            if spec.qkv_bias else None
        self.q_norm = init.ones(d) if spec.qk_norm else None
        self.k_norm = init.ones(d) if spec.qk_norm else None
        self.o = init.param(_part(init.full(f"{name}.o", h, heads * d), tp, r, dim=1))
        self.mlp_norm = init.ones(h)
        self.moe = moe_layer
        if moe_layer:
            assert spec.moe is not None
            m = spec.moe
            local = m.num_experts // shard.ep
            self.top_k, self.local_experts, self.expert_base = m.top_k, local, shard.ep_rank * local
            self.router = init.param(init.full(f"{name}.router", m.num_experts, h))
            mine = slice(shard.ep_rank * local, (shard.ep_rank + 1) * local)
            gu = init.full(f"{name}.experts_gate_up", m.num_experts, 2 * m.intermediate_size, h)[mine]
            self.experts_gate_up = init.param(torch.cat([_part(x, shard.moe_tp, shard.moe_tp_rank, dim=1)
                                                         for x in gu.chunk(2, dim=1)], dim=1))
            dn = init.full(f"{name}.experts_down", m.num_experts, h, m.intermediate_size)[mine]
            self.experts_down = init.param(_part(dn, shard.moe_tp, shard.moe_tp_rank, dim=2))
            shared = m.num_shared_experts * m.shared_intermediate_size
            self.shared_gate_up = self.shared_down = None
            if shared:
                sgu = init.full(f"{name}.shared_gate_up", 2 * shared, h)
                self.shared_gate_up = init.param(torch.cat([_part(x, tp, r) for x in sgu.chunk(2)]))
                self.shared_down = init.param(_part(init.full(f"{name}.shared_down", h, shared), tp, r, dim=1))
        else:
            i = spec.intermediate_size
            gu = init.full(f"{name}.gate_up", 2 * i, h)
            self.gate_up = init.param(torch.cat([_part(x, tp, r) for x in gu.chunk(2)]))
            self.down = init.param(_part(init.full(f"{name}.down", h, i), tp, r, dim=1))

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q [.., H, d], k and v [.., KV, d] of normed `x` [.., h], rotated by cos/sin [tokens, d/2]."""
        d = self.head_dim
        qkv = linear(rms_norm(x, self.attn_norm, self.eps), self.qkv)
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias.to(qkv.dtype)
        q, k, v = qkv.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q = q.unflatten(-1, (self.heads, d))
        k = k.unflatten(-1, (self.kv_heads, d))
        v = v.unflatten(-1, (self.kv_heads, d))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = rms_norm(q, self.q_norm, self.eps), rms_norm(k, self.k_norm, self.eps)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Whole prompts `x` [B, T, h], no cache: the traceable path."""
        q, k, v = self._qkv(x, cos, sin)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, enable_gqa=True)
        x = x + linear(att.transpose(1, 2).flatten(2), self.o)
        h = rms_norm(x, self.mlp_norm, self.eps)
        if not self.moe:
            return x + mlp(h, self.gate_up, self.down)
        flat = h.flatten(0, 1)
        weights, experts = route(flat, self.router, self.top_k)
        y = run_experts(flat, experts, weights, self.experts_gate_up, self.experts_down, self.local_experts,
                        skip_empty=False)
        if self.shared_gate_up is not None and self.shared_down is not None:
            y = y + mlp(flat, self.shared_gate_up, self.shared_down)
        return x + y.view_as(x)

    # ---- serving ---------------------------------------------------------------------------
    def attend(self, x: torch.Tensor, meta: StepMeta, cos: torch.Tensor, sin: torch.Tensor,
               cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Attention output [T, H*d] of a packed batch, writing its keys and values to `cache`."""
        kc, vc = cache
        q, k, v = self._qkv(x, cos, sin)
        out = x.new_empty(x.shape[0], self.heads * self.head_dim)
        b = meta.n_dec
        if b:
            pos = meta.dec_lens - 1
            kc[meta.dec_slots, :, pos] = k[:b].to(STORE)
            vc[meta.dec_slots, :, pos] = v[:b].to(STORE)
            span = meta.dec_span
            out[:b] = decode_attention(q[:b], kc[meta.dec_slots, :, :span], vc[meta.dec_slots, :, :span],
                                       meta.dec_lens)
        off = b
        for slot, start, n, _ in meta.chunks:
            rows = slice(off, off + n)
            kc[slot, :, start:start + n] = k[rows].transpose(0, 1).to(STORE)
            vc[slot, :, start:start + n] = v[rows].transpose(0, 1).to(STORE)
            if start == 0:
                out[rows] = prefill_attention(q[rows], k[rows], v[rows])
            else:
                out[rows] = prefill_attention(q[rows], kc[slot, :, :start + n].transpose(0, 1),
                                              vc[slot, :, :start + n].transpose(0, 1), start)
            off += n
        return out

    def step(self, x: torch.Tensor, meta: StepMeta, cos: torch.Tensor, sin: torch.Tensor,
             cache: tuple[torch.Tensor, torch.Tensor], comm: Comm | None) -> torch.Tensor:
        att = linear(self.attend(x, meta, cos, sin, cache), self.o)
        x = x + (comm.tp_all_reduce(att) if comm else att)
        h = rms_norm(x, self.mlp_norm, self.eps)
        if not self.moe:
            y = mlp(h, self.gate_up, self.down)
            return x + (comm.tp_all_reduce(y) if comm else y)
        if comm is None:
            weights, experts = route(h, self.router, self.top_k)
            y = run_experts(h, experts, weights, self.experts_gate_up, self.experts_down, self.local_experts)
            if self.shared_gate_up is not None and self.shared_down is not None:
                y = y + mlp(h, self.shared_gate_up, self.shared_down)
            return x + y
        return x + comm.moe(self, h)


class Transformer(nn.Module):
    """This rank's shard of the model; `forward` is the unsharded, cache-free, traceable path."""

    def __init__(self, spec: ModelSpec, shard: Shard | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, max_positions: int = 4096) -> None:
        super().__init__()
        supported(spec)
        shard = shard or Shard()
        self.spec, self.shard = spec, shard
        dev = torch.device(device)
        init = Init(seed, dev)
        first, last = shard.layers or (0, spec.num_layers)
        dense = spec.dense_layers
        self.layers = nn.ModuleList(Block(spec, shard, i, i >= dense, init) for i in range(first, last))
        h, vocab = spec.hidden_size, spec.vocab_size
        # Every rank that needs the embedding holds all of it, so a lookup needs no all-reduce; the LM
        # head is vocab-parallel over tp (a view into the embedding when the two are tied).
        need_embed = shard.first or (shard.last and spec.tie_embeddings)
        self.embed = init.param(init.full("embed", vocab, h)) if need_embed else None
        bounds = torch.linspace(0, vocab, shard.tp + 1).round().long().tolist()
        self.vocab_start, self.vocab_end = bounds[shard.tp_rank], bounds[shard.tp_rank + 1]
        self.norm = init.ones(h) if shard.last else None
        self.head = (init.param(init.full("lm_head", vocab, h)[self.vocab_start:self.vocab_end])
                     if shard.last and not spec.tie_embeddings else None)
        self.compute = torch.bfloat16 if dev.type == "cuda" else torch.float32
        cos, sin = rope_tables(max_positions, spec.head_dim, ROPE_THETA, dev, self.compute)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def lm_head(self) -> torch.Tensor:
        if self.head is not None:
            return self.head
        assert self.embed is not None
        return self.embed[self.vocab_start:self.vocab_end]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] of the last position of each prompt `input_ids` [B, T] (a prefill)."""
        assert self.embed is not None and self.norm is not None
        x = F.embedding(input_ids, self.embed).to(self.compute)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        for blk in self.layers:
            x = blk(x, cos, sin)
        return linear(rms_norm(x[:, -1], self.norm), self.lm_head())

    # ---- serving ---------------------------------------------------------------------------
    def allocate_cache(self, slots: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A bf16 KV cache per layer of this stage: [slots, local KV heads, max_len, head_dim] for K and V."""
        dev = self.cos.device
        out = []
        for blk in self.layers:
            shape = (slots, blk.kv_heads, max_len, blk.head_dim)
            out.append((torch.zeros(shape, dtype=STORE, device=dev), torch.zeros(shape, dtype=STORE, device=dev)))
        return out

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        assert self.embed is not None
        return F.embedding(ids, self.embed).to(self.compute)

    def run_layers(self, x: torch.Tensor, meta: StepMeta, cache: list[tuple[torch.Tensor, torch.Tensor]],
                   comm: Comm | None) -> torch.Tensor:
        pos = meta.positions()
        cos, sin = self.cos[pos], self.sin[pos]
        for blk, kv in zip(self.layers, cache, strict=True):
            x = blk.step(x, meta, cos, sin, kv, comm)
        return x

    def sample(self, x: torch.Tensor, meta: StepMeta, comm: Comm | None) -> torch.Tensor:
        """Greedy next tokens of the rows that emit one (vocab-parallel argmax over tp)."""
        assert self.norm is not None
        rows = x[meta.emit_rows()]
        logits = linear(rms_norm(rows, self.norm), self.lm_head())
        if comm is None:
            return logits.argmax(dim=-1)
        return comm.argmax(logits, self.vocab_start)
