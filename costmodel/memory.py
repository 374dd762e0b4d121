"""Memory per device: weights, activations, reserve, and what is left for the KV cache."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from costmodel.engines import Engine
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.moe import expert_bytes_per_device
from costmodel.precision import Precision
from hardware.specs import Accelerator

GIB = 2.0**30


@dataclass(frozen=True)
class MemoryBreakdown:
    """Per device of the busiest pipeline stage, in GiB; `kv_tokens` is per instance."""

    weights_gib: float
    activations_gib: float
    reserve_gib: float
    kv_cache_gib: float
    capacity_gib: float
    kv_bytes_per_token: float  # per device
    kv_tokens: int  # tokens of context the instance can cache

    @property
    def used_gib(self) -> float:
        return self.weights_gib + self.activations_gib + self.reserve_gib + self.kv_cache_gib

    @property
    def fits(self) -> bool:
        return self.kv_tokens > 0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def weight_bytes_per_device(model: ModelSpec, lay: Layout, prec: Precision, redundant_experts: int = 0,
                            mtp: bool = False) -> float:
    """Weights on one device of the stage holding the most (the first: embeddings + layers, and a
    multimodal checkpoint's tower); `redundant_experts` extra routed-expert copies per MoE layer (EPLB)
    add to every rank's share; `mtp` loads the MTP modules too (drafting with them)."""
    wb = prec.weight_bytes
    layers = -(-model.num_layers // lay.pp)
    # the mean layer's non-routed weights: its mixer and dense MLP or shared experts split over tp,
    # norms and router whole
    per_kind = 0.0
    for kind, count in model.layer_kinds:
        w = model.mixer_params(kind) / lay.tp + 2 * model.hidden_size
        if kind.ffn == "dense":
            w += model.dense_mlp_params / lay.tp
        elif kind.ffn == "moe":
            w += (model.shared_expert_params + model.latent_proj_params) / lay.tp + model.router_params
        per_kind += count * w
    per_layer = per_kind / model.num_layers
    # Embedding and LM head are vocab-parallel over tp; with pp>1 they sit on different stages.
    vocab = (model.embedding_params + (model.lm_head_params if lay.pp == 1 else 0)) / lay.tp
    extra = (model.vision_params + (model.mtp_params if mtp else 0)) / lay.tp
    if mtp and model.moe and model.layer_list[-1].ffn == "moe":
        # an MTP module's routed experts are spread over the EP ranks as every MoE layer's are
        routed = model.mtp_layers * model.moe.num_experts * model.expert_params
        extra -= routed / lay.tp - routed / (lay.tp * lay.attention_dp)
    return (layers * per_layer + vocab + extra) * wb + expert_bytes_per_device(model, lay, prec, redundant_experts)


def kv_bytes_per_token_device(model: ModelSpec, lay: Layout, prec: Precision, context: int | None = None) -> float:
    """KV cache and state bytes one token of context costs on one device: summed per layer from its
    kind (`ModelSpec.cache_bytes_per_token`: MLA's latent replicated over tp, windows capped, a state
    layer's fixed state spread over the `context` tokens of a sequence)."""
    layers_share = -(-model.num_layers // lay.pp) / model.num_layers
    return model.cache_bytes_per_token(prec.kv_bytes, context, lay.tp) * layers_share


def activation_bytes(model: ModelSpec, lay: Layout, tokens: int) -> float:
    """Peak transient activations for one iteration of `tokens` tokens (16-bit)."""
    width = model.hidden_size * 4 + 2 * (model.moe.intermediate_size * model.moe.top_k if model.moe
                                          else model.intermediate_size) / lay.tp
    logits = model.vocab_size / lay.tp * 4 * min(tokens, 256)
    return tokens / lay.attention_dp * width * 2 + logits


def memory_breakdown(model: ModelSpec, lay: Layout, prec: Precision, acc: Accelerator,
                     eng: Engine, isl: int, osl: int, max_batched_tokens: int,
                     redundant_experts: int = 0) -> MemoryBreakdown:
    """Fit check and KV capacity for one instance (context = isl + osl for sliding layers)."""
    cap = acc.hbm_gib * eng.mem_fraction
    # an engine drafting with the model's MTP modules loads them (costmodel/speculative.py)
    drafting = eng.speculation is not None and eng.speculation.draft_layers > 0
    weights = weight_bytes_per_device(model, lay, prec, redundant_experts, mtp=drafting) / GIB
    acts = activation_bytes(model, lay, max_batched_tokens) / GIB
    reserve = eng.reserve_gib
    free = cap - weights - acts - reserve
    per_tok = kv_bytes_per_token_device(model, lay, prec, isl + osl)
    # attention-DP ranks each hold their own sequences: the instance caches adp x a device's pool
    kv_tokens = int(max(free, 0.0) * GIB / per_tok) * lay.attention_dp if free > 0 else 0
    return MemoryBreakdown(
        weights_gib=weights, activations_gib=acts, reserve_gib=reserve,
        kv_cache_gib=max(free, 0.0), capacity_gib=cap,
        kv_bytes_per_token=per_tok, kv_tokens=kv_tokens,
    )
