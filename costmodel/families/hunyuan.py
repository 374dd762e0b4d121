"""Hunyuan-A13B (`hunyuan_v1_moe`): GQA with QK norms, every layer MoE with a shared expert; the
per-layer lists (`moe_topk`, `num_shared_expert`, `moe_intermediate_size`) are uniform in the
published checkpoints and read from their first entry."""

from __future__ import annotations

from typing import Any

from costmodel.families.common import Config, Fields, attention, get, need
from costmodel.models import MoESpec

MODEL_TYPES = ("hunyuan_v1_moe",)
ARCHITECTURES = ("HunYuanMoEV1ForCausalLM",)


def first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def read(cfg: Config, where: str) -> Fields:
    family = "hunyuan_v1_moe"
    fields = attention(cfg, where, family, qk_norm=bool(cfg.get("use_qk_norm", False)),
                       head_dim=get(cfg, "head_dim", "attention_head_dim",
                                    default=cfg["hidden_size"] // cfg["num_attention_heads"]),
                       tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))
    width = first(need(cfg, "moe_intermediate_size", where, family))
    shared = int(first(get(cfg, "num_shared_expert", default=0)))
    fields["moe"] = MoESpec(num_experts=need(cfg, "num_experts", where, family),
                            top_k=first(need(cfg, "moe_topk", where, family)), intermediate_size=width,
                            num_shared_experts=shared, shared_intermediate_size=width if shared else 0)
    return fields
