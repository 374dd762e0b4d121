"""StepFun Step-3.7 (`step3p7`): GQA with one full-attention layer per four and sliding-window
layers between (`layer_types`, `sliding_window`), leading dense layers then MoE with a shared expert
(`share_expert_dim`), and MTP modules."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, get, layer_types, mtp, need, windowed
from costmodel.models import MoESpec

MODEL_TYPES = ("step3p7",)
ARCHITECTURES = ("Step3p7FlashForCausalLM",)
FAMILY = "step3p7"


def read(cfg: Config, where: str) -> Fields:
    fields = attention(cfg, where, FAMILY, **mtp(cfg))
    n = fields["num_layers"]
    dense = int(get(cfg, "first_k_dense_replace", default=0))
    shared = int(get(cfg, "share_expert_dim", default=0))
    fields["moe"] = MoESpec(num_experts=need(cfg, "num_experts", where, FAMILY),
                            top_k=need(cfg, "num_experts_per_tok", where, FAMILY),
                            intermediate_size=need(cfg, "moe_intermediate_size", where, FAMILY),
                            num_shared_experts=int(get(cfg, "n_shared_experts", default=1 if shared else 0)),
                            shared_intermediate_size=shared, first_dense_layers=dense)
    ffn = ["dense" if i < dense else "moe" for i in range(n)]
    fields["layers"] = windowed(layer_types(cfg, n, where, FAMILY), cfg.get("sliding_window"), ffn, where)
    return fields
