import json

import pytest

from costmodel.catalog import by_name, entries, model
from costmodel.graph import layer_graph
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.ops import Batch
from costmodel.precision import precision
from hardware.errors import PlannerInputError, UnknownNameError

# Published totals / active counts (B), checked independently of the catalog files.
PUBLISHED = {
    "llama-3.1-8b": (8.03, None), "llama-3.1-70b": (70.6, None), "llama-3.1-405b": (405.9, None),
    "qwen2.5-72b": (72.7, None), "qwen3-32b": (32.8, None), "qwen3-235b-a22b": (235.0, 22.0),
    "mixtral-8x7b": (46.7, 12.9), "deepseek-v3": (671.0, 37.0), "deepseek-r1": (671.0, 37.0),
    "gpt-oss-120b": (116.8, 5.1),
}

# KV elements per token over all layers, computed by hand from each published config:
# GQA: 2 x kv_heads x head_dim x layers; MLA: (kv_lora_rank + qk_rope_head_dim) x layers.
KV_ELEMS = {
    "llama-3.1-8b": 2 * 8 * 128 * 32, "llama-3.1-70b": 2 * 8 * 128 * 80, "llama-3.1-405b": 2 * 8 * 128 * 126,
    "qwen2.5-72b": 2 * 8 * 128 * 80, "qwen3-32b": 2 * 8 * 128 * 64, "qwen3-235b-a22b": 2 * 4 * 128 * 94,
    "mixtral-8x7b": 2 * 8 * 128 * 32, "deepseek-v3": (512 + 64) * 61, "deepseek-r1": (512 + 64) * 61,
    "gpt-oss-120b": 2 * 8 * 64 * 36, "tiny-llama": 2 * 4 * 32 * 4, "tiny-moe": 2 * 4 * 32 * 4,
}


def test_catalog_covers_the_issue_models():
    assert set(PUBLISHED) | {"tiny-llama", "tiny-moe"} <= set(entries())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    total, active = PUBLISHED[name]
    m = model(name)
    assert m.total_params / 1e9 == pytest.approx(total, rel=0.01)
    if active:
        assert m.active_params / 1e9 == pytest.approx(active, rel=0.03)


@pytest.mark.parametrize("name", sorted(KV_ELEMS))
def test_kv_elements_per_token(name):
    assert model(name).kv_elems_per_token() == KV_ELEMS[name]


def test_gpt_oss_sliding_layers_cap_the_cache():
    m = model("gpt-oss-120b")
    assert m.sliding_layers == 18 and m.sliding_window == 128
    long = m.kv_elems_per_token(context=128_000)
    assert long == pytest.approx(2 * 8 * 64 * (18 + 18 * 128 / 128_000))


@pytest.mark.parametrize("ref", ["LLAMA-3.1-70B", "meta-llama/Llama-3.1-70B", "meta-llama/llama-3.1-70b-instruct"])
def test_lookup_is_case_insensitive_by_name_hf_id_or_alias(ref):
    assert model(ref).name == "llama-3.1-70b"


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match=r"did you mean 'llama-3\.1-70b'"):
        model("llama-3.1-7b")


def test_config_json_path_and_dict(tmp_path):
    raw = {k: v for k, v in entries()["qwen3-32b"].items() if k != "_catalog"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    assert model(str(path)).total_params == by_name("qwen3-32b").total_params
    assert model(str(tmp_path)).total_params == by_name("qwen3-32b").total_params
    assert model(raw).num_kv_heads == 8


@pytest.mark.parametrize("mutate, field", [
    (lambda c: c.update(model_type="bert"), "model_type"),
    (lambda c: c.pop("hidden_size"), "hidden_size"),
    (lambda c: c.update(num_key_value_heads=5), "num_key_value_heads|num_attention_heads"),
    (lambda c: c.update(num_hidden_layers=-2), "num_layers"),
])
def test_malformed_configs_name_the_field(mutate, field):
    raw = {k: v for k, v in entries()["llama-3.1-8b"].items() if k != "_catalog"}
    mutate(raw)
    with pytest.raises(PlannerInputError, match=field):
        model(raw)


def test_not_json_is_one_sentence(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(PlannerInputError, match="not valid JSON"):
        model(str(path))


@pytest.mark.parametrize("name", ["llama-3.1-70b", "mixtral-8x7b", "deepseek-v3"])
def test_spec_round_trip(name):
    m = model(name)
    assert ModelSpec.model_validate_json(m.model_dump_json()) == m
    assert "properties" in ModelSpec.model_json_schema()


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss-120b"])
def test_op_graph_flops_are_two_per_active_param_per_token(name):
    """At batch 1 with no context, one token's FLOPs are 2 x the weights it multiplies."""
    m = model(name)
    lay = Layout()
    b = Batch(decode_seqs=1.0, decode_ctx=0.0)
    flops = 0.0
    for moe_layer, count in ((False, m.dense_layers), (True, m.moe_layers)):
        if count:
            g = layer_graph(m, lay, precision("bf16"), b, moe_layer)
            flops += count * sum(d["flops"] for _, d in g.nodes(data=True))
    flops += 2 * m.hidden_size * m.vocab_size  # lm head
    weights = m.active_params - m.norm_params  # MLA decode absorbs W_kv_b: the same weights, once each
    assert flops == pytest.approx(2 * weights, rel=0.01)


def test_model_copy_recomputes_cached_counts_and_checks_the_update():
    spec = model("tiny-moe")
    assert spec.total_params > 0  # caches the derived counts on this instance
    fewer = spec.model_copy(update={"num_layers": 1, "moe": {**spec.moe.model_dump(), "first_dense_layers": 0}})
    assert fewer.total_params == ModelSpec.model_validate(fewer.model_dump()).total_params < spec.total_params
    assert fewer.active_params < spec.active_params and spec.model_copy() == spec
    with pytest.raises(ValueError, match="multiple of"):
        spec.model_copy(update={"num_kv_heads": 3})
