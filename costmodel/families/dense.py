"""Dense GQA decoders: Llama, Mistral, Qwen2, Qwen3, Phi-3 / Phi-4 (fused QKV and gate-up weights hold
the same parameters as split ones; long-rope scaling and partial rotary change no weights)."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, get
from costmodel.models import LayerSpec

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                 "Phi3ForCausalLM")


def sliding(cfg: Config, layers: int) -> tuple[LayerSpec, ...]:
    """Sliding-window layers where the config turns them on: Mistral and Phi-3 window every layer when
    `sliding_window` is set; Qwen2/3 only with `use_sliding_window`, from `max_window_layers` on."""
    window = cfg.get("sliding_window")
    family = cfg["model_type"]
    if not window or (family.startswith("qwen") and not cfg.get("use_sliding_window")):
        return ()
    start = int(get(cfg, "max_window_layers", default=0)) if family.startswith("qwen") else 0
    return tuple(LayerSpec(attention="sliding", window=window) if i >= start else LayerSpec()
                 for i in range(layers))


def read(cfg: Config, where: str) -> Fields:
    family = cfg["model_type"]
    fields = attention(cfg, where, family, qkv_bias=bool(cfg.get("attention_bias", family == "qwen2")),
                       qk_norm=family == "qwen3")
    fields["layers"] = sliding(cfg, fields["num_layers"])
    return fields
