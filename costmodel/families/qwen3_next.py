"""Qwen3-Next and Qwen3.5 / 3.6 (dense `qwen3_5`, MoE `qwen3_5_moe`): gated DeltaNet linear-attention
layers (a fixed heads x k x v state and a short conv cache per sequence, compute linear in tokens)
with a gated full-attention layer every `full_attention_interval` (or as `layer_types` lists)."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, get, layer_types, mtp, need
from costmodel.families.mixtral import qwen_moe
from costmodel.models import LayerSpec, StateSpec

MODEL_TYPES = ("qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text")
ARCHITECTURES = ("Qwen3NextForCausalLM", "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration",
                 "Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM")


def delta_net(cfg: Config, where: str, family: str) -> StateSpec:
    """Gated DeltaNet as Qwen3-Next's modeling code builds it: in_proj_qkvz (2 key + 2 value widths)
    and in_proj_ba (2 per value head), a bias-free conv over q, k, v, dt_bias and A_log per value head,
    a norm of one value head's width, out_proj; the state is value heads x key dim x value dim."""
    nk, nv = need(cfg, "linear_num_key_heads", where, family), need(cfg, "linear_num_value_heads", where, family)
    dk, dv = need(cfg, "linear_key_head_dim", where, family), need(cfg, "linear_value_head_dim", where, family)
    key, value = nk * dk, nv * dv
    return StateSpec(heads=nv, k_dim=dk, v_dim=dv, conv_kernel=need(cfg, "linear_conv_kernel_dim", where, family),
                     conv_dim=2 * key + value, in_width=2 * key + 2 * value + 2 * nv, extra_params=2 * nv + dv)


def read(cfg: Config, where: str) -> Fields:
    family = cfg["model_type"].removesuffix("_text")
    fields = attention(cfg, where, family, qk_norm=True, attn_output_gate=True, **mtp(cfg))
    n = fields["num_layers"]
    interval = int(get(cfg, "full_attention_interval", default=4))
    types = layer_types(cfg, n, where, family,
                        ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)])
    moe = family != "qwen3_5"
    if moe:
        fields["moe"] = qwen_moe(cfg, where, family)
    ffn = "moe" if moe else "dense"
    fields["layers"] = tuple(LayerSpec(attention="linear" if t == "linear_attention" else "full", ffn=ffn)
                             for t in types)
    fields["state"] = delta_net(cfg, where, family)
    return fields
