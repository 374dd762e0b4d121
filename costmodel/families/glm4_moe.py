"""GLM-4.5 / 4.6 / 4.7 (`glm4_moe`): GQA with biased QKV and partial RoPE over DeepSeek-style MoE
(routed + shared experts, leading dense layers) and an MTP module."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, deepseek_moe, mtp

MODEL_TYPES = ("glm4_moe",)
ARCHITECTURES = ("Glm4MoeForCausalLM",)


def read(cfg: Config, where: str) -> Fields:
    fields = attention(cfg, where, "glm4_moe", qk_norm=bool(cfg.get("use_qk_norm", False)), **mtp(cfg))
    fields["moe"] = deepseek_moe(cfg, where, "glm4_moe")
    return fields
