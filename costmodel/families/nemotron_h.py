"""Nemotron-H / Nemotron-3 (`nemotron_h`): one mixer per block as `hybrid_override_pattern` spells
it - 'M' Mamba-2, '*' attention, '-' squared-ReLU MLP, 'E' MoE - so a block is a token mixer or an
FFN, not both. Mamba-2 keeps heads x d_state x head_dim of SSM state and a conv cache per sequence.
Nemotron-3 Super's latent MoE (`moe_latent_size`) runs its routed experts on a narrower latent."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, get, need
from costmodel.models import LayerSpec, MoESpec, StateSpec

MODEL_TYPES = ("nemotron_h",)
ARCHITECTURES = ("NemotronHForCausalLM",)
BLOCKS = {"M": LayerSpec(attention="mamba", ffn="none"), "*": LayerSpec(ffn="none"),
          "-": LayerSpec(attention="none", ffn="dense"), "E": LayerSpec(attention="none", ffn="moe")}


def mamba2(cfg: Config, where: str, h: int) -> StateSpec:
    """Mamba-2 as transformers' NemotronHMamba2Mixer builds it: in_proj to z, x, B, C and dt, a
    biased conv over x, B, C, per-head dt_bias / A_log / D, a gated norm over d_inner, out_proj."""
    heads = need(cfg, "mamba_num_heads", where, "nemotron_h")
    head_dim = need(cfg, "mamba_head_dim", where, "nemotron_h")
    d_state = need(cfg, "ssm_state_size", where, "nemotron_h")
    groups = int(get(cfg, "n_groups", default=1))
    inner = heads * head_dim
    conv_dim = inner + 2 * groups * d_state
    bias = conv_dim if cfg.get("use_conv_bias", True) else 0
    return StateSpec(heads=heads, k_dim=d_state, v_dim=head_dim, conv_kernel=int(get(cfg, "conv_kernel", default=4)),
                     conv_dim=conv_dim, in_width=2 * inner + 2 * groups * d_state + heads,
                     extra_params=bias + 3 * heads + inner)


def read(cfg: Config, where: str) -> Fields:
    pattern = str(need(cfg, "hybrid_override_pattern", where, "nemotron_h"))
    bad = sorted(set(pattern) - set(BLOCKS))
    if bad:
        raise ValueError(f"hybrid_override_pattern has {bad[0]!r}; blocks are M, *, - and E")
    fields = attention(cfg, where, "nemotron_h", num_layers=len(pattern), mlp_matrices=2,
                       head_dim=get(cfg, "head_dim", "attention_head_dim",
                                    default=cfg["hidden_size"] // cfg["num_attention_heads"]))
    fields["layers"] = tuple(BLOCKS[c] for c in pattern)
    fields["state"] = mamba2(cfg, where, fields["hidden_size"])
    if "E" in pattern:
        shared = int(get(cfg, "moe_shared_expert_intermediate_size", default=0))
        fields["moe"] = MoESpec(num_experts=need(cfg, "n_routed_experts", where, "nemotron_h"),
                                top_k=need(cfg, "num_experts_per_tok", where, "nemotron_h"),
                                intermediate_size=need(cfg, "moe_intermediate_size", where, "nemotron_h"),
                                num_shared_experts=int(get(cfg, "n_shared_experts", default=1 if shared else 0)),
                                shared_intermediate_size=shared,
                                latent_size=int(get(cfg, "moe_latent_size", default=0)))
    return fields
