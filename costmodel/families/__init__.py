"""HF `config.json` -> ModelSpec, one module per model family.

Each family module names the `model_type` labels and `architectures` it reads (MODEL_TYPES,
ARCHITECTURES) and has `read(cfg, where) -> fields of ModelSpec`; a new family is one module and
its line in FAMILIES. Multimodal wrappers (`text_config` beside a `vision_config`) are unwrapped
here, the tower's weights counted (`vision=False` leaves them out), and the checkpoint's
quantization read as its weight precision (costmodel.families.quant).
"""

from __future__ import annotations

import difflib
import math
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from costmodel.families import (
    deepseek,
    deepseek_v4,
    dense,
    gemma,
    glm4_moe,
    gpt_oss,
    hunyuan,
    llama4,
    minimax,
    mixtral,
    nemotron_h,
    qwen3_next,
    step,
)
from costmodel.families.quant import checkpoint_precision
from costmodel.families.vision import tower_params
from costmodel.models import ModelSpec
from hardware.errors import PlannerInputError
from hardware.loading import validation_sentence

FAMILIES: tuple[ModuleType, ...] = (dense, mixtral, gpt_oss, deepseek, gemma, llama4, qwen3_next, nemotron_h,
                                    deepseek_v4, minimax, step, hunyuan, glm4_moe)

BY_TYPE: dict[str, ModuleType] = {t: f for f in FAMILIES for t in f.MODEL_TYPES}
BY_ARCH: dict[str, ModuleType] = {a: f for f in FAMILIES for a in f.ARCHITECTURES}


def supported() -> list[str]:
    """Every model_type label a family module reads."""
    return sorted(BY_TYPE)


def family_of(cfg: dict[str, Any], where: str) -> tuple[ModuleType, str]:
    """The family module and model_type label for a (text) config: by model_type, or by its
    architectures name when it states no model_type; an unknown label names the closest supported one."""
    label = cfg.get("model_type")
    if label in BY_TYPE:
        return BY_TYPE[label], label
    arch = next((a for a in cfg.get("architectures") or [] if a in BY_ARCH), None)
    if label is None and arch is not None:
        fam = BY_ARCH[arch]
        return fam, fam.MODEL_TYPES[0]
    close = difflib.get_close_matches(str(label), supported(), n=1, cutoff=0.0)
    hint = f"the closest supported family is {close[0]!r}; " if close else ""
    raise PlannerInputError(
        f"{where}: field 'model_type' is {label!r}, which no family module reads; {hint}supported are "
        f"{', '.join(supported())} (a new family is one module in costmodel/families/)"
    )


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: a multimodal wrapper's `text_config` (its keys win; the wrapper
    keeps the quantization and the tied-embedding flag some checkpoints only state outside)."""
    inner = cfg.get("text_config")
    if not isinstance(inner, dict):
        return cfg
    outer = {k: v for k, v in cfg.items() if k not in ("text_config", "vision_config", "audio_config")}
    labels = [inner.get("model_type"), outer.get("model_type")]
    return {**outer, **inner, "model_type": next((t for t in labels if t in BY_TYPE), labels[0] or labels[1])}


# HF config keys read as counts or sizes: `true` there is a typo for a number, never a count of 1 (the
# spec's own fields refuse booleans too, hardware.loading.Checked; this names the config's key)
COUNT_KEYS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size", "moe_intermediate_size", "num_local_experts", "num_experts",
              "num_experts_per_tok", "experts_per_token", "shared_expert_intermediate_size", "n_routed_experts",
              "n_shared_experts", "first_k_dense_replace", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
              "qk_rope_head_dim", "v_head_dim", "sliding_window", "max_position_embeddings")


def _counts_are_numbers(cfg: dict[str, Any], where: str) -> None:
    """Booleans, NaN and infinity in count keys, named before a family's arithmetic trips on them."""
    for scope, fields in (("", cfg), ("text_config.", cfg.get("text_config"))):
        for key, value in (fields.items() if isinstance(fields, dict) else ()):
            if key not in COUNT_KEYS:
                continue
            if isinstance(value, bool):
                raise PlannerInputError(f"{where}: field '{scope}{key}' is {str(value).lower()}, a boolean; "
                                        "give the number the architecture has")
            if isinstance(value, float) and not math.isfinite(value):
                raise PlannerInputError(f"{where}: field '{scope}{key}' is {value}; give the number the "
                                        "architecture has")


def from_hf_config(cfg: dict[str, Any], name: str = "", hf_id: str = "", where: str = "config",
                   vision: bool = True, quant: dict[str, Any] | None = None) -> ModelSpec:
    """A ModelSpec from a Hugging Face `config.json` mapping; bad fields raise one sentence.

    `vision=False` leaves a multimodal checkpoint's vision/audio tower out of memory; `quant` is a
    separate `hf_quant_config.json` (ModelOpt checkpoints) when the caller found one."""
    _counts_are_numbers(cfg, where)
    try:
        text = text_config(cfg)
        fam, label = family_of(text, where)
        fields = fam.read({**text, "model_type": label}, where)
        prec, quant_label = checkpoint_precision(cfg, quant, where)
        family = label.removesuffix("_text")
        return ModelSpec(
            name=name or hf_id or family, hf_id=hf_id, family=family,
            vision_params=tower_params(cfg) if vision else 0,
            checkpoint_precision=prec, checkpoint_quant=quant_label, max_context=text.get("max_position_embeddings"),
            **fields,
        )
    except PlannerInputError:
        raise
    except ValidationError as exc:
        raise PlannerInputError(validation_sentence(exc, where)) from None
    except (TypeError, ValueError, ArithmeticError, KeyError) as exc:
        raise PlannerInputError(f"{where}: {exc}; check the config's numeric fields") from None
