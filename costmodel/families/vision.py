"""Weights of a multimodal checkpoint's vision / audio tower and its projector into the language
model. They sit in memory beside the decoder; a prompt's images also cost prefill FLOPs through the
tower, which the text-only workloads here do not send (hence a count, not ops)."""

from __future__ import annotations

from typing import Any

from costmodel.families.common import get

TOWERS = ("vision_config", "audio_config")


def _tower(t: dict[str, Any], text_hidden: int) -> int:
    """A ViT-style encoder: attention (4 h^2 and biases) and a 2-matrix MLP per layer, the patch
    embedding, and a projector from the (merged) patch width to the language model's hidden size."""
    h = int(get(t, "hidden_size", "vt_hidden_size", "embed_dim", "width", "d_model", default=0))
    layers = int(get(t, "num_hidden_layers", "vt_num_hidden_layers", "depth", "num_layers", "encoder_layers",
                     default=0))
    if not h or not layers:
        return 0
    inner = int(get(t, "intermediate_size", "vt_intermediate_size", "encoder_ffn_dim", default=4 * h))
    patch = int(get(t, "patch_size", default=14))
    merge = get(t, "spatial_merge_size", "merge_kernel_size", default=1)
    merged = int(merge[0]) * int(merge[-1]) if isinstance(merge, list) else int(merge) ** 2
    per_layer = 4 * h * h + 4 * h + 2 * h * inner + inner + h + 4 * h
    embed = int(get(t, "num_channels", default=3)) * patch * patch * int(get(t, "temporal_patch_size", default=1)) * h
    out = int(get(t, "out_hidden_size", "projection_dim", "text_hidden_size", default=text_hidden))
    return layers * per_layer + embed + h * merged * out + out * text_hidden


def tower_params(cfg: dict[str, Any]) -> int:
    """Weights of every encoder tower a multimodal config describes (0 for a text-only config)."""
    text = cfg.get("text_config") or cfg
    text_hidden = int(get(text, "hidden_size", default=0))
    return sum(_tower(cfg[k], text_hidden) for k in TOWERS if isinstance(cfg.get(k), dict))
