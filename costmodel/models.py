"""Model specs: the architecture facts the cost model needs, as a list of layers by kind.

Each decoder layer says what its token mixer is (`LayerSpec.attention`: full, sliding window,
chunked, linear/state, Mamba, sparse top-k, compressed, none) and what its FFN is (dense, MoE,
none). KV and state bytes per sequence, parameters, and the keys a query reads come from the kind,
summed per layer; a uniform model (every layer full attention, leading dense layers then MoE) is the
special case and leaves `layers` empty. Family modules in `costmodel.families` read HF configs
into this spec; nothing downstream knows families. Parameter counts are derived here so tests can
hold them against published figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from hardware.loading import Checked

Num = float | np.ndarray
AttentionKind = Literal["full", "sliding", "chunked", "linear", "mamba", "sparse", "compressed", "none"]
FFNKind = Literal["dense", "moe", "none"]
STATE_KINDS = ("linear", "mamba")  # a fixed-size state per sequence instead of a KV cache
# Linear-attention and SSM states stay in the model dtype whatever the KV cache dtype (vLLM's
# mamba_ssm_cache_dtype and mamba_cache_dtype default to the model's 16-bit dtype).
STATE_BYTES = 2.0


class _Spec(Checked):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MoESpec(_Spec):
    """Routed experts (and optional always-on shared experts)."""

    num_experts: int = Field(ge=1, description="Routed experts per MoE layer.")
    top_k: int = Field(ge=1, description="Experts each token is routed to.")
    intermediate_size: int = Field(ge=1, description="FFN width of one routed expert.")
    num_shared_experts: int = Field(default=0, ge=0, description="Always-on shared experts.")
    shared_intermediate_size: int = Field(default=0, ge=0, description="FFN width of one shared expert.")
    first_dense_layers: int = Field(default=0, ge=0, description="Leading layers with a dense MLP.")
    expert_bias: bool = Field(default=False, description="Experts and router carry biases (gpt-oss).")
    latent_size: int = Field(default=0, ge=0, description=(
        "Routed experts work on a latent of this width, projected from and back to the hidden state once "
        "per layer (Nemotron-3's latent MoE); 0 = on the hidden state."))

    @model_validator(mode="after")
    def _topk_le_experts(self) -> MoESpec:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        return self


class MLASpec(_Spec):
    """Multi-head latent attention (DeepSeek-V2/V3): a compressed, shared KV cache."""

    q_lora_rank: int | None = Field(description="Query compression rank; None = full-rank Q.")
    kv_lora_rank: int = Field(ge=1, description="Compressed KV width cached per token and layer.")
    qk_nope_head_dim: int = Field(ge=1, description="Per-head query/key width without RoPE.")
    qk_rope_head_dim: int = Field(ge=1, description="Per-head decoupled RoPE width (also cached).")
    v_head_dim: int = Field(ge=1, description="Per-head value width.")


class LayerSpec(_Spec):
    """One decoder layer's kind: its token mixer and its FFN."""

    attention: AttentionKind = Field(default="full", description="Token mixer of the layer.")
    window: int | None = Field(default=None, ge=1, description=(
        "sliding: keys a query sees; chunked: the chunk a query attends within; compressed: the "
        "uncompressed sliding window kept beside the compressed entries (None = none)."))
    topk: int | None = Field(default=None, ge=1, description=(
        "sparse: cached tokens each query reads (DSA index_topk); compressed: compressed entries each "
        "query reads (None = all)."))
    ratio: int | None = Field(default=None, ge=1, description="compressed: tokens folded into one cached entry.")
    ffn: FFNKind = Field(default="dense", description="FFN of the layer.")
    head_dim: int | None = Field(default=None, ge=1, description="This layer's head width (None = the model's).")
    kv_heads: int | None = Field(default=None, ge=1, description="This layer's KV heads (None = the model's).")
    shared_kv: bool | None = Field(default=None, description="This layer caches K = V (None = the model's).")

    @model_validator(mode="after")
    def _kind_fields(self) -> LayerSpec:
        if self.attention in ("sliding", "chunked") and self.window is None:
            raise ValueError(f"a {self.attention} layer needs its window")
        if self.attention == "sparse" and self.topk is None:
            raise ValueError("a sparse layer needs topk")
        if self.attention == "compressed" and self.ratio is None:
            raise ValueError("a compressed layer needs its ratio")
        return self

    @property
    def indexed(self) -> bool:
        """A lightning indexer scores the cached entries and the attention reads its top-k."""
        return self.attention == "sparse" or (self.attention == "compressed" and self.topk is not None)

    @property
    def cached(self) -> bool:
        """The layer keeps a per-token KV cache."""
        return self.attention not in (*STATE_KINDS, "none")


def keys_read(layer: LayerSpec, ctx: Num) -> Num:
    """Cached entries one query of `layer` reads with `ctx` tokens before it (elementwise)."""
    kind = layer.attention
    if kind in ("sliding", "chunked"):
        return np.minimum(ctx, layer.window)
    if kind == "sparse":
        return np.minimum(ctx, layer.topk)
    if kind == "compressed":
        entries = np.asarray(ctx, dtype=float) / layer.ratio
        read = np.minimum(entries, layer.topk) if layer.topk else entries
        return read + (np.minimum(ctx, layer.window) if layer.window else 0.0)
    if kind == "full":
        return ctx
    return 0.0 * np.asarray(ctx, dtype=float)


def indexed_keys(layer: LayerSpec, ctx: Num) -> Num:
    """Entries the layer's indexer scores per query: every cached token (DSA) or compressed entry."""
    if not layer.indexed:
        return 0.0 * np.asarray(ctx, dtype=float)
    return ctx if layer.attention == "sparse" else np.asarray(ctx, dtype=float) / layer.ratio


class StateSpec(_Spec):
    """The fixed-size per-sequence state of linear-attention (gated DeltaNet, lightning) or Mamba-2
    layers: a heads x k_dim x v_dim recurrent state plus a short causal-convolution cache."""

    heads: int = Field(ge=1, description="State heads (DeltaNet value heads, Mamba heads).")
    k_dim: int = Field(ge=1, description="Key width per head (Mamba: d_state).")
    v_dim: int = Field(ge=1, description="Value width per head (Mamba: head_dim).")
    conv_kernel: int = Field(default=0, ge=0, description="Causal conv width; its cache holds kernel - 1 steps.")
    conv_dim: int = Field(default=0, ge=0, description="Channels of the causal conv.")
    in_width: int = Field(ge=1, description="Output width of the block's input projection(s).")
    extra_params: int = Field(default=0, ge=0, description="Per-head scalars, conv bias and norms of the block.")

    @property
    def elems_per_seq(self) -> int:
        return self.heads * self.k_dim * self.v_dim + max(self.conv_kernel - 1, 0) * self.conv_dim

    def params(self, hidden: int) -> int:
        return hidden * self.in_width + self.conv_dim * self.conv_kernel + self.heads * self.v_dim * hidden \
            + self.extra_params


class IndexerSpec(_Spec):
    """DSA's lightning indexer (DeepSeek-V3.2, GLM-5, DeepSeek-V4): a few FP8 heads score every
    cached entry against its own cached key; only the top-k entries reach the attention."""

    heads: int = Field(ge=1, description="index_n_heads.")
    head_dim: int = Field(ge=1, description="index_head_dim (also the cached index key width).")
    params: int = Field(ge=0, description="Weights of one layer's indexer (projections and norm).")


class ModelSpec(_Spec):
    """A decoder-only transformer, as the cost model sees it."""

    name: str = Field(description="Short catalog name or a user label.")
    hf_id: str = Field(default="", description="Hugging Face repo id, when known.")
    family: str = Field(description="HF model_type, e.g. 'llama', 'qwen3_moe', 'deepseek_v3'.")
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1, description="Dense FFN width (dense layers only for MoE).")
    vocab_size: int = Field(ge=1)
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    attention_sinks: bool = False
    shared_kv: bool = Field(default=False, description="K and V are one cached tensor (DeepSeek-V4's MQA).")
    attn_output_gate: bool = Field(default=False, description=(
        "The query projection also emits a per-head output gate (Qwen3-Next / Qwen3.5 gated attention)."))
    mlp_matrices: int = Field(default=3, ge=2, le=3, description="3 = gated (SwiGLU), 2 = up/down only (ReLU^2).")
    attention_block_params: int | None = Field(default=None, ge=0, description=(
        "Weights of one attention block when its design is neither GQA nor MLA (the family counts them); "
        "None = derived from the head counts."))
    layers: tuple[LayerSpec, ...] = Field(default=(), description=(
        "Each decoder layer's kind, in order; empty = uniform (full attention, leading dense layers "
        "then MoE)."))
    state: StateSpec | None = Field(default=None, description="The state of the linear / Mamba layers.")
    indexer: IndexerSpec | None = Field(default=None, description="The indexer of sparse / indexed layers.")
    mtp_layers: int = Field(default=0, ge=0, description=(
        "Multi-token-prediction modules (num_nextn_predict_layers); loaded only for MTP drafting."))
    vision_params: int = Field(default=0, ge=0, description=(
        "Vision / audio tower and projector weights of a multimodal checkpoint (in memory, not per token)."))
    checkpoint_precision: str | None = Field(default=None, description=(
        "Weight precision the checkpoint ships (from its quantization_config), the default for costing; "
        "None = 16-bit."))
    checkpoint_quant: str = Field(default="", description="The checkpoint's quantization as its config states it.")
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    max_context: int | None = Field(default=None, ge=1, description="Longest sequence (prompt + output) the "
                                    "model was built for: HF max_position_embeddings; None = not stated.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.moe and self.moe.first_dense_layers > self.num_layers:
            raise ValueError("first_dense_layers exceeds num_layers")
        if self.layers and len(self.layers) != self.num_layers:
            raise ValueError(f"layers lists {len(self.layers)} layers but num_layers is {self.num_layers}")
        kinds = {layer.attention for layer in self.layers}
        if kinds & set(STATE_KINDS) and self.state is None:
            raise ValueError("linear or Mamba layers need the state spec")
        if any(layer.indexed for layer in self.layers) and self.indexer is None:
            raise ValueError("sparse layers need the indexer spec")
        if any(layer.ffn == "moe" for layer in self.layers) and self.moe is None:
            raise ValueError("MoE layers need the moe spec")
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> ModelSpec:
        """A copy with `update` applied, re-validated: pydantic's copy would carry over the cached
        parameter counts (`cached_property` values live in the instance dict) and skip the checks."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self).model_validate({**self.model_dump(), **update})

    # ---- layers by kind ----------------------------------------------------------------
    @cached_property
    def layer_list(self) -> tuple[LayerSpec, ...]:
        """Every decoder layer's kind, in order (a uniform model's derived from its MoE spec)."""
        if self.layers:
            return self.layers
        dense = self.moe.first_dense_layers if self.moe else self.num_layers
        return (LayerSpec(),) * dense + (LayerSpec(ffn="moe"),) * (self.num_layers - dense)

    @cached_property
    def layer_kinds(self) -> tuple[tuple[LayerSpec, int], ...]:
        """Each distinct layer kind with how many layers have it, in order of first appearance."""
        return tuple(Counter(self.layer_list).items())

    def kind_of(self, moe_layer: bool) -> LayerSpec:
        """The first layer whose FFN is MoE (True) or not (False): a uniform model's two kinds."""
        return next(layer for layer in self.layer_list if (layer.ffn == "moe") == moe_layer)

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def moe_layers(self) -> int:
        return sum(n for layer, n in self.layer_kinds if layer.ffn == "moe")

    @property
    def dense_layers(self) -> int:
        return sum(n for layer, n in self.layer_kinds if layer.ffn == "dense")

    @property
    def sliding_window(self) -> int | None:
        return next((layer.window for layer in self.layer_list if layer.attention == "sliding"), None)

    @property
    def sliding_layers(self) -> int:
        return sum(n for layer, n in self.layer_kinds if layer.attention == "sliding")

    # ---- parameters per block ----------------------------------------------------------
    def dims(self, layer: LayerSpec | None = None) -> tuple[int, int, bool]:
        """(KV heads, head width, K = V) of `layer`'s attention: its own where it states them."""
        if layer is None:
            return self.num_kv_heads, self.head_dim, self.shared_kv
        return (layer.kv_heads or self.num_kv_heads, layer.head_dim or self.head_dim,
                self.shared_kv if layer.shared_kv is None else layer.shared_kv)

    @cached_property
    def attention_params(self) -> int:
        """Parameters of one attention block (projections, biases, norms inside attention)."""
        return self.layer_attention_params(None)

    def layer_attention_params(self, layer: LayerSpec | None) -> int:
        """Parameters of `layer`'s attention block (None: the model's own head shape)."""
        if self.attention_block_params is not None:
            return self.attention_block_params
        h = self.hidden_size
        if self.mla:
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            q = (h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * self.num_heads * qk
                 if m.q_lora_rank else h * self.num_heads * qk)
            kv = (h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
                  + m.kv_lora_rank * self.num_heads * (m.qk_nope_head_dim + m.v_head_dim))
            return q + kv + self.num_heads * m.v_head_dim * h
        kv_heads, d, shared = self.dims(layer)
        q_out = self.num_heads * d
        kv_out = kv_heads * d * (1 if shared else 2)
        n = h * (q_out * (2 if self.attn_output_gate else 1) + kv_out) + q_out * h
        n += (q_out + kv_out) if self.qkv_bias else 0
        n += h if self.o_bias else 0
        n += 2 * d if self.qk_norm else 0
        n += self.num_heads if self.attention_sinks else 0
        return n

    def mixer_params(self, layer: LayerSpec) -> int:
        """Weights of one layer's token mixer: attention (plus its indexer), a state block, or none."""
        if layer.attention == "none":
            return 0
        if layer.attention in STATE_KINDS:
            assert self.state is not None
            return self.state.params(self.hidden_size)
        own = self.layer_attention_params(layer) if (layer.head_dim or layer.kv_heads or layer.shared_kv is not None) \
            else self.attention_params
        return own + (self.indexer.params if layer.indexed and self.indexer else 0)

    @property
    def dense_mlp_params(self) -> int:
        return self.mlp_matrices * self.hidden_size * self.intermediate_size

    @property
    def expert_width(self) -> int:
        """Width of what a routed expert reads and writes: the hidden state, or the MoE latent."""
        return (self.moe.latent_size if self.moe else 0) or self.hidden_size

    @property
    def expert_params(self) -> int:
        """One routed expert (gate, up, down; biases for gpt-oss)."""
        if not self.moe:
            return 0
        h, i = self.expert_width, self.moe.intermediate_size
        return self.mlp_matrices * h * i + ((2 * i + h) if self.moe.expert_bias else 0)

    @property
    def latent_proj_params(self) -> int:
        """A latent MoE layer's projections of the hidden state into the latent and back."""
        return 2 * self.hidden_size * self.moe.latent_size if self.moe else 0

    @property
    def shared_expert_params(self) -> int:
        if not self.moe:
            return 0
        return self.mlp_matrices * self.hidden_size * self.moe.shared_intermediate_size * self.moe.num_shared_experts

    @property
    def router_params(self) -> int:
        if not self.moe:
            return 0
        return self.hidden_size * self.moe.num_experts + (self.moe.num_experts if self.moe.expert_bias else 0)

    def ffn_params(self, layer: LayerSpec) -> int:
        """Weights of one layer's FFN: dense MLP, or all routed experts plus shared experts and router."""
        if layer.ffn == "dense":
            return self.dense_mlp_params
        if layer.ffn == "moe":
            assert self.moe is not None
            return (self.moe.num_experts * self.expert_params + self.shared_expert_params + self.router_params
                    + self.latent_proj_params)
        return 0

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        """Per-layer RMSNorms (two per layer) plus the final norm."""
        return 2 * self.hidden_size * self.num_layers + self.hidden_size

    @cached_property
    def total_params(self) -> int:
        """Decoder weights: embeddings, layers, norms, LM head (no MTP modules, no vision tower)."""
        n = self.embedding_params + self.lm_head_params + self.norm_params
        return n + sum(count * (self.mixer_params(layer) + self.ffn_params(layer)) for layer, count in self.layer_kinds)

    @cached_property
    def active_params(self) -> int:
        """Parameters one token computes with: total minus the skipped routed experts and the
        input embedding (a lookup, no FLOPs) - the convention of the DeepSeek-V3 and gpt-oss
        reports ("36.6B activated", "5.13B active")."""
        skipped = 0
        if self.moe:
            skipped = (self.moe.num_experts - self.moe.top_k) * self.expert_params * self.moe_layers
        return self.total_params - skipped - self.embedding_params

    @property
    def mtp_params(self) -> int:
        """Weights of the MTP modules: each one decoder layer of the last layer's kind, the projection
        of [embedding; hidden] back to hidden and its norms (DeepSeek-V3 report, sec. 2.2), and the
        embedding and output head the checkpoint stores again inside each module (DeepSeek-V3's
        model.layers.61.embed_tokens / shared_head.head, which vLLM's MTP drafter loads)."""
        last = self.layer_list[-1]
        h = self.hidden_size
        one = self.mixer_params(last) + self.ffn_params(last) + 2 * h * h + 4 * h + 2 * self.vocab_size * h
        return self.mtp_layers * one

    # ---- KV cache and state --------------------------------------------------------------
    @property
    def kv_elems_per_token_layer(self) -> int:
        """Cached elements per token per full-attention layer (K and V, or MLA's latent plus RoPE key)."""
        return self.layer_kv_width(None)

    def layer_kv_width(self, layer: LayerSpec | None) -> int:
        """Cached elements per token of `layer` (None: the model's own head shape)."""
        if self.mla:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        kv_heads, d, shared = self.dims(layer)
        return (1 if shared else 2) * kv_heads * d

    def kv_shards(self, tp: int, layer: LayerSpec | None = None) -> int:
        """Ways one layer's KV cache splits over `tp` ranks (MLA's latent and a single KV head replicate)."""
        return 1 if self.mla else min(tp, self.dims(layer)[0])

    def layer_kv_elems(self, layer: LayerSpec, context: int | None = None, tp: int = 1) -> float:
        """KV elements one token of context costs in `layer` on one of `tp` ranks; a sliding or chunked
        layer (and a compressed layer's window) holds at most its window per sequence, which at
        `context` tokens is window / context of a token's share (None = no cap)."""
        if not layer.cached:
            return 0.0
        base = self.layer_kv_width(layer) / self.kv_shards(tp, layer)

        def capped(window: int) -> float:
            return base * (1.0 if context is None else min(1.0, window / max(context, 1)))

        index = self.indexer.head_dim if layer.indexed and self.indexer else 0  # replicated, not sharded
        if layer.attention in ("sliding", "chunked"):
            return capped(layer.window or 0)
        if layer.attention == "compressed":
            assert layer.ratio is not None
            return (base + index) / layer.ratio + (capped(layer.window) if layer.window else 0.0)
        return base + index

    def kv_elems_per_token(self, context: int | None = None, tp: int = 1) -> float:
        """Cached KV elements per token over all layers (per rank of `tp`); state layers hold none."""
        return sum(n * self.layer_kv_elems(layer, context, tp) for layer, n in self.layer_kinds)

    def state_elems_per_seq(self, tp: int = 1) -> float:
        """State elements one sequence holds over all linear / Mamba layers, per rank of `tp`."""
        if self.state is None:
            return 0.0
        layers = sum(n for layer, n in self.layer_kinds if layer.attention in STATE_KINDS)
        return layers * self.state.elems_per_seq / min(tp, self.state.heads)

    def cache_bytes_per_token(self, kv_bytes: float, context: int | None = None, tp: int = 1) -> float:
        """Bytes of KV cache and state one token of context costs on one of `tp` ranks; the fixed
        per-sequence state is spread over `context` tokens (none when `context` is None)."""
        kv = self.kv_elems_per_token(context, tp) * kv_bytes
        if not context:
            return kv
        return kv + self.state_elems_per_seq(tp) * STATE_BYTES / context
