"""Gemma 2 / 3 / 4: local sliding-window layers interleaved with global ones (Gemma 2 alternates;
Gemma 3 and 4 have five local per global, `sliding_window_pattern` or `layer_types`), QK norms from
Gemma 3 on, tied embeddings by default; logit soft-capping changes no weights. Gemma 4's global
layers have their own shape (`global_head_dim`, `num_global_key_value_heads`, K = V with
`attention_k_eq_v`), and its MoE variant runs a dense MLP beside the routed experts in every layer.
The multimodal wrappers carry the text model in `text_config` beside a `vision_config`."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, get, layer_types, need, windowed
from costmodel.models import LayerSpec, MoESpec
from hardware.errors import PlannerInputError

MODEL_TYPES = ("gemma2", "gemma3", "gemma3_text", "gemma4", "gemma4_text")
ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "Gemma4ForCausalLM",
                 "Gemma4ForConditionalGeneration")


def default_types(family: str, layers: int, pattern: int) -> list[str]:
    """Gemma 2: even layers local (`is_sliding = not layer_idx % 2`); Gemma 3: every `pattern`-th global."""
    if family == "gemma2":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]


def gemma4(cfg: Config, fields: Fields, types: list[str], where: str) -> Fields:
    """Gemma 4's global layers with their own head shape, and its MoE block (routed experts beside a
    dense MLP, costed as an always-on shared expert)."""
    for key in ("hidden_size_per_layer_input", "num_kv_shared_layers"):
        if cfg.get(key):
            raise PlannerInputError(f"{where}: field '{key}' is {cfg[key]}; per-layer embeddings and KV shared "
                                    "across layers (Gemma 4's E-models) are not modelled here")
    moe = bool(cfg.get("enable_moe_block"))
    if moe:
        fields["moe"] = MoESpec(num_experts=need(cfg, "num_experts", where, "gemma4"),
                                top_k=need(cfg, "top_k_experts", where, "gemma4"),
                                intermediate_size=get(cfg, "moe_intermediate_size", "expert_intermediate_size"),
                                num_shared_experts=1, shared_intermediate_size=fields["intermediate_size"])
    ffn = "moe" if moe else "dense"
    glob = LayerSpec(ffn=ffn, head_dim=get(cfg, "global_head_dim"), kv_heads=get(cfg, "num_global_key_value_heads"),
                     shared_kv=bool(cfg.get("attention_k_eq_v", False)))
    local = LayerSpec(attention="sliding", window=need(cfg, "sliding_window", where, "gemma4"), ffn=ffn)
    fields["layers"] = tuple(glob if t == "full_attention" else local for t in types)
    return fields


def read(cfg: Config, where: str) -> Fields:
    family = cfg["model_type"].removesuffix("_text")
    fields = attention(cfg, where, family, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                       qk_norm=family != "gemma2")
    n = fields["num_layers"]
    types = layer_types(cfg, n, where, family, default_types(family, n, int(cfg.get("sliding_window_pattern", 6))))
    if family == "gemma4":
        return gemma4(cfg, fields, types, where)
    fields["layers"] = windowed(types, need(cfg, "sliding_window", where, family), "dense", where)
    return fields
