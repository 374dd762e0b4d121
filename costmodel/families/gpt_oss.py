"""gpt-oss: alternating 128-token sliding-window and full-attention layers, attention sinks, biased
experts and router."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, layer_types, need, windowed
from costmodel.models import MoESpec

MODEL_TYPES = ("gpt_oss",)
ARCHITECTURES = ("GptOssForCausalLM",)


def read(cfg: Config, where: str) -> Fields:
    fields = attention(cfg, where, "gpt_oss", o_bias=bool(cfg.get("attention_bias", False)), attention_sinks=True)
    n = fields["num_layers"]
    alternating = ["sliding_attention", "full_attention"] * (n // 2) + ["full_attention"] * (n % 2)
    types = layer_types(cfg, n, where, "gpt_oss", alternating)
    fields["layers"] = windowed(types, cfg.get("sliding_window"), "moe", where)
    fields["moe"] = MoESpec(num_experts=need(cfg, "num_local_experts", where, "gpt_oss"),
                            top_k=need(cfg, "num_experts_per_tok", where, "gpt_oss"),
                            intermediate_size=need(cfg, "intermediate_size", where, "gpt_oss"), expert_bias=True)
    return fields
