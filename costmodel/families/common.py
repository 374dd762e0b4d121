"""Config-reading pieces the family modules share: required keys, the GQA attention block, MoE and
MLA blocks, per-layer type lists. One place wires each block so families differ only in their keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from costmodel.models import IndexerSpec, LayerSpec, MLASpec, MoESpec
from hardware.errors import PlannerInputError

Config = dict[str, Any]
Fields = dict[str, Any]


def get(cfg: Config, *keys: str, default: Any = None) -> Any:
    """The first of `keys` the config sets (not null), else `default`."""
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def need(cfg: Config, key: str, where: str, family: str = "this architecture") -> Any:
    """`cfg[key]`, or one sentence naming the missing key and the family that needs it."""
    if cfg.get(key) is None:
        raise PlannerInputError(f"{where}: field '{key}' is missing; it is needed for {family}")
    return cfg[key]


def attention(cfg: Config, where: str, family: str, **extra: Any) -> Fields:
    """Hidden size, layer count, GQA heads, vocabulary and biases every decoder config states."""
    h = need(cfg, "hidden_size", where, family)
    heads = need(cfg, "num_attention_heads", where, family)
    return {
        "hidden_size": h,
        "num_layers": need(cfg, "num_hidden_layers", where, family),
        "num_heads": heads,
        "num_kv_heads": get(cfg, "num_key_value_heads", default=heads),
        "head_dim": get(cfg, "head_dim", default=h // heads),
        "intermediate_size": get(cfg, "intermediate_size", default=4 * h),
        "vocab_size": need(cfg, "vocab_size", where, family),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "qkv_bias": bool(cfg.get("attention_bias", False)),
        **extra,
    }


def mtp(cfg: Config) -> Fields:
    """Multi-token-prediction modules the checkpoint ships (DeepSeek, GLM, Qwen3-Next names)."""
    return {"mtp_layers": int(get(cfg, "num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_modules",
                                  default=0))}


def deepseek_moe(cfg: Config, where: str, family: str, **extra: Any) -> MoESpec:
    """DeepSeek-style routed + shared experts with leading dense layers (V2/V3, Kimi, GLM)."""
    width = need(cfg, "moe_intermediate_size", where, family)
    fields = {"num_experts": need(cfg, "n_routed_experts", where, family),
              "top_k": need(cfg, "num_experts_per_tok", where, family), "intermediate_size": width,
              "num_shared_experts": get(cfg, "n_shared_experts", default=0), "shared_intermediate_size": width,
              "first_dense_layers": get(cfg, "first_k_dense_replace", default=0)}
    return MoESpec(**{**fields, **extra})


def mla(cfg: Config, where: str, family: str) -> MLASpec:
    return MLASpec(
        q_lora_rank=cfg.get("q_lora_rank"),
        kv_lora_rank=need(cfg, "kv_lora_rank", where, family),
        qk_nope_head_dim=need(cfg, "qk_nope_head_dim", where, family),
        qk_rope_head_dim=need(cfg, "qk_rope_head_dim", where, family),
        v_head_dim=need(cfg, "v_head_dim", where, family),
    )


def mla_fields(cfg: Config, where: str, family: str) -> Fields:
    """MLA attention over DeepSeek MoE: the V3 shape (V3, R1, Kimi-K2, GLM-5, V3.2)."""
    m = mla(cfg, where, family)
    fields = attention(cfg, where, family)
    fields.update(mla=m, moe=deepseek_moe(cfg, where, family), head_dim=m.qk_nope_head_dim + m.qk_rope_head_dim,
                  num_kv_heads=fields["num_heads"], qkv_bias=False, **mtp(cfg))
    return fields


def indexer(cfg: Config, where: str, family: str, q_in: int) -> IndexerSpec:
    """DSA's lightning indexer: wq_b (q_in -> heads x dim), wk (hidden -> dim) with its LayerNorm,
    and the per-head weights projection (hidden -> heads), as DeepSeek-V3.2's inference code defines it."""
    heads = need(cfg, "index_n_heads", where, family)
    dim = need(cfg, "index_head_dim", where, family)
    h = need(cfg, "hidden_size", where, family)
    return IndexerSpec(heads=heads, head_dim=dim, params=q_in * heads * dim + h * dim + 2 * dim + h * heads)


def layer_types(cfg: Config, layers: int, where: str, family: str, default: Sequence[str] | None = None) -> list[str]:
    """The config's per-layer type list (`layer_types`), or `default` when the config has none."""
    types = cfg.get("layer_types") or default
    if types is None:
        raise PlannerInputError(f"{where}: field 'layer_types' is missing; it is needed for {family}")
    types = list(types)[:layers]
    if len(types) != layers:
        raise PlannerInputError(f"{where}: field 'layer_types' lists {len(types)} layers but num_hidden_layers is "
                                f"{layers}; give one type per layer")
    return types


def windowed(types: Sequence[str], window: int | None, ffn: Sequence[str] | str = "dense",
             where: str = "config") -> tuple[LayerSpec, ...]:
    """Layers from HF layer type names: 'sliding_attention' (needs `window`), 'chunked_attention',
    'full_attention'; `ffn` is one kind for every layer or one per layer."""
    ffns = [ffn] * len(types) if isinstance(ffn, str) else list(ffn)
    out = []
    for t, f in zip(types, ffns, strict=True):
        if t in ("sliding_attention", "chunked_attention"):
            if not window:
                key = "sliding_window" if t == "sliding_attention" else "attention_chunk_size"
                raise PlannerInputError(f"{where}: field '{key}' is missing; it is needed for {t} layers")
            out.append(LayerSpec(attention="sliding" if t == "sliding_attention" else "chunked", window=window,
                                 ffn=f))
        elif t == "full_attention":
            out.append(LayerSpec(ffn=f))
        else:
            raise PlannerInputError(f"{where}: field 'layer_types' has {t!r}; this family knows "
                                    "sliding_attention, chunked_attention and full_attention")
    return tuple(out)
