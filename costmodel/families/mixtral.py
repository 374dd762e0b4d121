"""Sparse MoE decoders with GQA attention: Mixtral, Qwen2-MoE, Qwen3-MoE."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, get, need
from costmodel.models import MoESpec

MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")
ARCHITECTURES = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")


def qwen_moe(cfg: Config, where: str, family: str) -> MoESpec:
    """Qwen's MoE block: `num_experts` routed, an optional shared expert, `mlp_only_layers` dense."""
    shared = get(cfg, "shared_expert_intermediate_size", default=0)
    return MoESpec(
        num_experts=need(cfg, "num_experts", where, family),
        top_k=need(cfg, "num_experts_per_tok", where, family),
        intermediate_size=need(cfg, "moe_intermediate_size", where, family),
        num_shared_experts=1 if shared else 0,
        shared_intermediate_size=shared,
        first_dense_layers=len(cfg.get("mlp_only_layers") or []),
    )


def read(cfg: Config, where: str) -> Fields:
    family = cfg["model_type"]
    fields = attention(cfg, where, family, qkv_bias=bool(cfg.get("attention_bias", family == "qwen2_moe")),
                       qk_norm=family == "qwen3_moe")
    if family == "mixtral":
        fields["moe"] = MoESpec(num_experts=need(cfg, "num_local_experts", where, family),
                                top_k=need(cfg, "num_experts_per_tok", where, family),
                                intermediate_size=need(cfg, "intermediate_size", where, family))
    else:
        fields["moe"] = qwen_moe(cfg, where, family)
    return fields
