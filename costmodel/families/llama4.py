"""Llama 4 Scout / Maverick: chunked local attention (`attention_chunk_size`) on the three of four
layers that use RoPE, a global NoPE layer every fourth (`no_rope_layers`); MoE layers every
`interleave_moe_layer_step` (Scout: all, Maverick: every other), each with one shared expert as wide
as a routed one; the dense layers use `intermediate_size_mlp`."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, need
from costmodel.models import LayerSpec, MoESpec

MODEL_TYPES = ("llama4", "llama4_text")
ARCHITECTURES = ("Llama4ForConditionalGeneration", "Llama4ForCausalLM")


def read(cfg: Config, where: str) -> Fields:
    family = "llama4"
    fields = attention(cfg, where, family)
    n = fields["num_layers"]
    width = need(cfg, "intermediate_size", where, family)
    step = int(cfg.get("interleave_moe_layer_step") or 1)
    moe_layers = set(cfg.get("moe_layers") or range(step - 1, n, step))
    rope = cfg.get("no_rope_layers") or [int((i + 1) % 4 != 0) for i in range(n)]
    chunk = need(cfg, "attention_chunk_size", where, family)
    fields["layers"] = tuple(
        LayerSpec(attention="chunked" if rope[i] else "full", window=chunk if rope[i] else None,
                  ffn="moe" if i in moe_layers else "dense")
        for i in range(n))
    fields["intermediate_size"] = cfg.get("intermediate_size_mlp") or width
    fields["moe"] = MoESpec(num_experts=need(cfg, "num_local_experts", where, family),
                            top_k=need(cfg, "num_experts_per_tok", where, family), intermediate_size=width,
                            num_shared_experts=1, shared_intermediate_size=width)
    return fields
