"""DeepSeek-V4 (`deepseek_v4`): one shared 512-wide KV head (K = V) per layer, and per layer a
compression ratio (`compress_ratios`): 0 = sliding window only, 4 = compressed sparse attention
(CSA: every 4 tokens folded into one entry, an indexer picks `index_topk` of them), 128 = heavily
compressed attention (HCA: every entry read); every layer also keeps the last `sliding_window`
tokens uncompressed. Queries go through a low-rank `q_lora_rank`, outputs through grouped low-rank
`o_lora_rank` projections; MoE everywhere (the first `num_hash_layers` route by token hash).
Hyper-connections (`hc_mult` residual streams) add a few mixing weights per layer and
elementwise work, not counted here."""

from __future__ import annotations

from costmodel.families.common import Config, Fields, attention, deepseek_moe, get, mtp, need
from costmodel.models import IndexerSpec, LayerSpec

MODEL_TYPES = ("deepseek_v4",)
ARCHITECTURES = ("DeepseekV4ForCausalLM",)
FAMILY = "deepseek_v4"


def compressor_params(h: int, head_dim: int, ratio: int) -> int:
    """A layer's KV compressor: KV and gate projections (doubled for the overlapping ratio-4
    windows), a position bias per slot and a norm."""
    coff = 2 if ratio == 4 else 1
    return 2 * h * coff * head_dim + ratio * coff * head_dim + head_dim if ratio else 0


def read(cfg: Config, where: str) -> Fields:
    fields = attention(cfg, where, FAMILY, shared_kv=True, attention_sinks=True, **mtp(cfg))
    h, heads, layers = fields["hidden_size"], fields["num_heads"], fields["num_layers"]
    d = fields["head_dim"]
    q_rank = need(cfg, "q_lora_rank", where, FAMILY)
    o_rank, groups = need(cfg, "o_lora_rank", where, FAMILY), need(cfg, "o_groups", where, FAMILY)
    ratios = list(need(cfg, "compress_ratios", where, FAMILY))[:layers]  # trailing entries describe MTP
    if len(ratios) != layers:
        raise ValueError(f"compress_ratios lists {len(ratios)} layers but num_hidden_layers is {layers}")
    window = need(cfg, "sliding_window", where, FAMILY)
    topk = need(cfg, "index_topk", where, FAMILY)
    fields["layers"] = tuple(
        LayerSpec(attention="sliding", window=window, ffn="moe") if not r
        else LayerSpec(attention="compressed", ratio=r, window=window, topk=topk if r == 4 else None, ffn="moe")
        for r in ratios)
    # wq_a, wq_b, wkv, grouped wo_a, wo_b and their norms; the compressors' weights spread evenly
    block = h * q_rank + q_rank * heads * d + h * d + o_rank * heads * d + groups * o_rank * h + q_rank + d
    block += sum(compressor_params(h, d, r) for r in ratios) // layers
    fields["attention_block_params"] = block + heads  # + one attention sink per head
    ix_heads, ix_dim = need(cfg, "index_n_heads", where, FAMILY), need(cfg, "index_head_dim", where, FAMILY)
    # the indexer's own query projection and head weights, and its compressor (ratio 4)
    fields["indexer"] = IndexerSpec(heads=ix_heads, head_dim=ix_dim,
                                    params=q_rank * ix_heads * ix_dim + h * ix_heads + compressor_params(h, ix_dim, 4))
    fields["moe"] = deepseek_moe(cfg, where, FAMILY, first_dense_layers=0)
    fields["intermediate_size"] = get(cfg, "intermediate_size",
                                      default=need(cfg, "moe_intermediate_size", where, FAMILY))
    return fields
