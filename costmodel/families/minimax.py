"""MiniMax-M1 / Text-01 (lightning attention: linear-attention layers with a softmax layer every
eighth, `attn_type_list` 0 = linear, 1 = softmax) and MiniMax-M2 / M2.5 (all softmax GQA with QK
norms and partial rotary, MTP modules); MoE everywhere."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, get, mtp, need
from costmodel.models import LayerSpec, MoESpec, StateSpec

MODEL_TYPES = ("minimax_m1", "minimax_text_01", "minimax", "minimax_m2")
ARCHITECTURES = ("MiniMaxM1ForCausalLM", "MiniMaxText01ForCausalLM", "MiniMaxForCausalLM", "MiniMaxM2ForCausalLM")


def lightning(heads: int, head_dim: int) -> StateSpec:
    """Lightning attention as MiniMax's modeling code builds it: qkv_proj and output_gate from the
    hidden state, a norm over all heads, out_proj; a head_dim x head_dim state per head, no conv."""
    width = heads * head_dim
    return StateSpec(heads=heads, k_dim=head_dim, v_dim=head_dim, in_width=4 * width, extra_params=width)


def read(cfg: Config, where: str) -> Fields:
    family = cfg["model_type"]
    fields = attention(cfg, where, family, qk_norm=bool(cfg.get("use_qk_norm", family == "minimax_m2")), **mtp(cfg))
    shared = int(get(cfg, "shared_intermediate_size", default=0))
    fields["moe"] = MoESpec(num_experts=need(cfg, "num_local_experts", where, family),
                            top_k=need(cfg, "num_experts_per_tok", where, family),
                            intermediate_size=need(cfg, "intermediate_size", where, family),
                            num_shared_experts=1 if shared else 0, shared_intermediate_size=shared)
    kinds = cfg.get("attn_type_list")
    if kinds and 0 in kinds:
        fields["layers"] = tuple(LayerSpec(attention="full" if k else "linear", ffn="moe")
                                 for k in kinds[: fields["num_layers"]])
        fields["state"] = lightning(fields["num_heads"], fields["head_dim"])
    else:
        fields["layers"] = (LayerSpec(ffn="moe"),) * fields["num_layers"]
    return fields
