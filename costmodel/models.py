"""Model specs: the architecture facts the cost model needs, loaded from HF `config.json`.

Supported `model_type`s: llama, mistral, qwen2, qwen3 (dense, GQA); mixtral, qwen2_moe, qwen3_moe,
gpt_oss (MoE); deepseek_v2 / deepseek_v3 (MLA + MoE with shared experts and first dense layers).
Parameter counts are derived here so tests can hold them against published figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hardware.errors import PlannerInputError
from hardware.loading import validation_sentence


class _Spec(BaseModel):
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
    sliding_window: int | None = Field(default=None, ge=1, description="Window of local layers.")
    sliding_layers: int = Field(default=0, ge=0, description="How many layers use the window.")
    moe: MoESpec | None = None
    mla: MLASpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.sliding_layers > self.num_layers:
            raise ValueError("sliding_layers exceeds num_layers")
        if self.moe and self.moe.first_dense_layers > self.num_layers:
            raise ValueError("first_dense_layers exceeds num_layers")
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> ModelSpec:
        """A copy with `update` applied, re-validated: pydantic's copy would carry over the cached
        parameter counts (`cached_property` values live in the instance dict) and skip the checks."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self).model_validate({**self.model_dump(), **update})

    # ---- layer counts ------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def moe_layers(self) -> int:
        return self.num_layers - self.moe.first_dense_layers if self.moe else 0

    @property
    def dense_layers(self) -> int:
        return self.num_layers - self.moe_layers

    # ---- parameters per block ----------------------------------------------------------
    @cached_property
    def attention_params(self) -> int:
        """Parameters of one attention block (projections, biases, norms inside attention)."""
        h = self.hidden_size
        if self.mla:
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            q = (h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * self.num_heads * qk
                 if m.q_lora_rank else h * self.num_heads * qk)
            kv = (h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
                  + m.kv_lora_rank * self.num_heads * (m.qk_nope_head_dim + m.v_head_dim))
            return q + kv + self.num_heads * m.v_head_dim * h
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        n = h * (q_out + 2 * kv_out) + q_out * h
        n += (q_out + 2 * kv_out) if self.qkv_bias else 0
        n += h if self.o_bias else 0
        n += 2 * self.head_dim if self.qk_norm else 0
        n += self.num_heads if self.attention_sinks else 0
        return n

    @property
    def dense_mlp_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def expert_params(self) -> int:
        """One routed expert (gate, up, down; biases for gpt-oss)."""
        if not self.moe:
            return 0
        h, i = self.hidden_size, self.moe.intermediate_size
        return 3 * h * i + ((2 * i + h) if self.moe.expert_bias else 0)

    @property
    def shared_expert_params(self) -> int:
        if not self.moe:
            return 0
        return 3 * self.hidden_size * self.moe.shared_intermediate_size * self.moe.num_shared_experts

    @property
    def router_params(self) -> int:
        if not self.moe:
            return 0
        return self.hidden_size * self.moe.num_experts + (self.moe.num_experts if self.moe.expert_bias else 0)

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
        n = self.embedding_params + self.lm_head_params + self.norm_params
        n += self.num_layers * self.attention_params + self.dense_layers * self.dense_mlp_params
        if self.moe:
            per_layer = (self.moe.num_experts * self.expert_params + self.shared_expert_params
                         + self.router_params)
            n += self.moe_layers * per_layer
        return n

    @cached_property
    def active_params(self) -> int:
        """Parameters one token computes with: total minus the skipped routed experts and the
        input embedding (a lookup, no FLOPs) - the convention of the DeepSeek-V3 and gpt-oss
        reports ("36.6B activated", "5.13B active")."""
        skipped = 0
        if self.moe:
            skipped = (self.moe.num_experts - self.moe.top_k) * self.expert_params * self.moe_layers
        return self.total_params - skipped - self.embedding_params

    # ---- KV cache ------------------------------------------------------------------------
    @property
    def kv_elems_per_token_layer(self) -> int:
        """Cached elements per token per layer (K and V, or MLA's latent plus RoPE key)."""
        if self.mla:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    def kv_elems_per_token(self, context: int | None = None) -> float:
        """Cached elements per token over all layers; sliding layers hold at most the window."""
        full = self.num_layers - self.sliding_layers
        if not self.sliding_layers or context is None or self.sliding_window is None:
            return self.kv_elems_per_token_layer * self.num_layers
        share = min(1.0, self.sliding_window / max(context, 1))
        return self.kv_elems_per_token_layer * (full + self.sliding_layers * share)


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def _need(cfg: dict[str, Any], key: str, where: str) -> Any:
    if cfg.get(key) is None:
        raise PlannerInputError(f"{where}: field '{key}' is missing; it is needed for this architecture")
    return cfg[key]


DENSE = {"llama", "mistral", "qwen2", "qwen3"}
MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "deepseek_v2", "deepseek_v3"}


def from_hf_config(cfg: dict[str, Any], name: str = "", hf_id: str = "", where: str = "config") -> ModelSpec:
    """A ModelSpec from a Hugging Face `config.json` mapping; bad fields raise one sentence."""
    try:
        return _from_hf_config(cfg, name, hf_id, where)
    except ValidationError as exc:
        raise PlannerInputError(validation_sentence(exc, where)) from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise PlannerInputError(f"{where}: {exc}; check the config's numeric fields") from None


def _from_hf_config(cfg: dict[str, Any], name: str, hf_id: str, where: str) -> ModelSpec:
    if "text_config" in cfg and "model_type" not in cfg.get("text_config", {}):
        cfg = {**cfg, **cfg["text_config"]}
    family = cfg.get("model_type")
    if family not in DENSE | MOE:
        known = ", ".join(sorted(DENSE | MOE))
        raise PlannerInputError(
            f"{where}: field 'model_type' is {family!r}; supported architectures are {known}"
        )
    h = _need(cfg, "hidden_size", where)
    heads = _need(cfg, "num_attention_heads", where)
    layers = _need(cfg, "num_hidden_layers", where)
    kv_heads = _get(cfg, "num_key_value_heads", default=heads)
    head_dim = _get(cfg, "head_dim", default=h // heads)
    moe = None
    mla = None
    sliding_layers = 0
    window = cfg.get("sliding_window") if family == "gpt_oss" else None
    if family == "gpt_oss":
        types = cfg.get("layer_types") or ["sliding_attention", "full_attention"] * (layers // 2)
        sliding_layers = sum(t == "sliding_attention" for t in types)
    if family in {"mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"}:
        moe = MoESpec(
            num_experts=_get(cfg, "num_local_experts", "num_experts"),
            top_k=_get(cfg, "num_experts_per_tok", "experts_per_token"),
            intermediate_size=(cfg["intermediate_size"] if family in {"mixtral", "gpt_oss"}
                               else _need(cfg, "moe_intermediate_size", where)),
            num_shared_experts=1 if cfg.get("shared_expert_intermediate_size") else 0,
            shared_intermediate_size=_get(cfg, "shared_expert_intermediate_size", default=0),
            first_dense_layers=len(cfg.get("mlp_only_layers") or []),
            expert_bias=family == "gpt_oss",
        )
    if family in {"deepseek_v2", "deepseek_v3"}:
        moe = MoESpec(
            num_experts=_need(cfg, "n_routed_experts", where),
            top_k=_need(cfg, "num_experts_per_tok", where),
            intermediate_size=_need(cfg, "moe_intermediate_size", where),
            num_shared_experts=_get(cfg, "n_shared_experts", default=0),
            shared_intermediate_size=_need(cfg, "moe_intermediate_size", where),
            first_dense_layers=_get(cfg, "first_k_dense_replace", default=0),
        )
        mla = MLASpec(
            q_lora_rank=cfg.get("q_lora_rank"),
            kv_lora_rank=_need(cfg, "kv_lora_rank", where),
            qk_nope_head_dim=_need(cfg, "qk_nope_head_dim", where),
            qk_rope_head_dim=_need(cfg, "qk_rope_head_dim", where),
            v_head_dim=_need(cfg, "v_head_dim", where),
        )
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        kv_heads = heads
    return ModelSpec(
        name=name or hf_id or family,
        hf_id=hf_id,
        family=family,
        hidden_size=h,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_get(cfg, "intermediate_size", default=4 * h),
        vocab_size=_need(cfg, "vocab_size", where),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", family == "qwen2")),
        o_bias=bool(cfg.get("attention_bias", False)) and family == "gpt_oss",
        qk_norm=family in {"qwen3", "qwen3_moe"},
        attention_sinks=family == "gpt_oss",
        sliding_window=window,
        sliding_layers=sliding_layers,
        moe=moe,
        mla=mla,
    )

