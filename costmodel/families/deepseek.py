"""DeepSeek-V2 / V3 / R1 and the models built on their shape: MLA attention over DeepSeek MoE with
shared experts and leading dense layers. Kimi-K2 / K2.5 (`kimi_k2`, `kimi_k25`) are V3-shaped;
DeepSeek-V3.2 (`deepseek_v32`) and GLM-5 (`glm_moe_dsa`) add DSA: a lightning indexer scores every
cached token and the attention reads only `index_topk` of them."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, indexer, mla_fields, need
from costmodel.models import LayerSpec

MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "kimi_k2", "deepseek_v32", "glm_moe_dsa")
ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM",
                 "GlmMoeDsaForCausalLM")
SPARSE = ("deepseek_v32", "glm_moe_dsa")


def read(cfg: Config, where: str) -> Fields:
    family = cfg["model_type"]
    fields = mla_fields(cfg, where, family)
    if family in SPARSE:
        topk = need(cfg, "index_topk", where, family)
        m = fields["mla"]
        fields["indexer"] = indexer(cfg, where, family, m.q_lora_rank or fields["hidden_size"])
        dense = fields["moe"].first_dense_layers
        fields["layers"] = tuple(LayerSpec(attention="sparse", topk=topk, ffn="dense" if i < dense else "moe")
                                 for i in range(fields["num_layers"]))
    return fields
