"""Model families read from real config.json files (tests/fixtures/configs, sources in its README):
parameter counts against published figures, KV and state bytes against hand counts from the
config, each layer kind's rule, checkpoint precision, and every family estimated and planned."""

import json
import math
from pathlib import Path

import pytest

from costmodel.calibration.profile import profile_for
from costmodel.catalog import model
from costmodel.engines import engine
from costmodel.estimate import build_instance
from costmodel.families import FAMILIES, from_hf_config, supported
from costmodel.layout import Layout
from costmodel.memory import memory_breakdown, weight_bytes_per_device
from costmodel.models import LayerSpec
from costmodel.precision import precision, resolve
from hardware.catalog import cluster
from hardware.errors import PlannerInputError
from planner.api import estimate, plan

FIXTURES = Path(__file__).parent / "fixtures" / "configs"


def raw(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def spec(name: str, **kw):
    return from_hf_config(raw(name), name=name, where=name, **kw)


# Published (total B, active B, active counts the embedding?) and where each figure is published; a
# figure given to one or two significant digits ("10B") is met within half its last digit or 3%.
PUBLISHED = {
    "deepseek-ai--DeepSeek-V4-Flash": (284, 13, False),  # DeepSeek-V4 model card: 284B params, 13B activated
    "deepseek-ai--DeepSeek-V4-Pro": (1600, 49, False),  # DeepSeek-V4 model card: 1.6T params, 49B activated
    "deepseek-ai--DeepSeek-V3.2": (671, 37, False),  # V3.2-Exp report: V3.1's 671B / 37B plus the indexer
    "zai-org--GLM-5": (744, 40, False),  # Z.ai GLM-5 release: 744B parameters, 40B active
    "moonshotai--Kimi-K2-Instruct": (1000, 32, False),  # Kimi-K2 card: 1T total, 32B activated
    "moonshotai--Kimi-K2.5": (1000, 32, False),  # Kimi-K2.5 card: the K2 language model (1T / 32B)
    "Qwen--Qwen3.5-397B-A17B": (397, 17, True),  # the model name: 397B total, A17B activated
    "Qwen--Qwen3.5-35B-A3B": (35, 3, True),
    "Qwen--Qwen3.5-27B": (27, None, True),
    "Qwen--Qwen3-Next-80B-A3B-Thinking": (80, None, True),  # "A3B" is the series label, not a count
    "meta-llama--Llama-4-Scout-17B-16E-Instruct": (109, 17, True),  # Meta Llama 4 card: 109B total, 17B active
    "meta-llama--Llama-4-Maverick-17B-128E-Instruct": (400, 17, True),  # 400B total, 17B active
    "google--gemma-4-26B-A4B": (26, 4, True),  # the model name: 26B total, A4B active
    "nvidia--Gemma-4-31B-IT-NVFP4": (31, None, True),
    "nvidia--Nemotron-H-56B-Base-8K": (56, None, True),
    "nvidia--NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": (31.6, 3.6, True),  # NVIDIA card: 31.6B total, 3.6B with embeddings
    "MiniMaxAI--MiniMax-M2.5": (230, 10, False),  # MiniMax-M2 card: 230B total, 10B active
    "openai--gpt-oss-120b": (116.8, 5.1, False),  # arXiv:2508.10925 Table 1
    "microsoft--Phi-3-medium-4k-instruct": (14, None, True),  # Phi-3 report, arXiv:2404.14219: phi-3-medium 14B
    "nvidia--NVIDIA-Nemotron-3-Super-120B-A12B-FP8": (120, 12, False),  # the model name: 120B total, A12B active
}


def within(value: float, published: float) -> bool:
    digits = len(f"{published:g}".replace(".", "").lstrip("0"))
    half_unit = 0.5 * 10 ** (math.floor(math.log10(published)) - digits + 1)
    return abs(value - published) <= max(0.03 * published, half_unit)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    total, active, with_embedding = PUBLISHED[name]
    m = spec(name)
    assert within((m.total_params + m.vision_params) / 1e9, total)
    if active:
        assert within((m.active_params + (m.embedding_params if with_embedding else 0)) / 1e9, active)


# KV elements per token over all layers with no window cap, by hand from each config.
KV = {
    "Qwen--Qwen3.5-397B-A17B": 15 * 2 * 2 * 256,  # 60 layers, every 4th full attention
    "Qwen--Qwen3-Next-80B-A3B-Thinking": 12 * 2 * 2 * 256,
    "zai-org--GLM-5": 78 * (512 + 64 + 128),  # MLA latent + RoPE key + DSA index key
    "deepseek-ai--DeepSeek-V3.2": 61 * (512 + 64 + 128),
    # 2 window-only layers; 21 ratio-4 (entry + index key per 4 tokens) and 20 ratio-128, all with a window
    "deepseek-ai--DeepSeek-V4-Flash": 2 * 512 + 21 * ((512 + 128) / 4 + 512) + 20 * (512 / 128 + 512),
    "google--gemma-4-26B-A4B": 25 * 2 * 8 * 256 + 5 * 2 * 512,  # global layers: 2 KV heads of 512, K = V
    "meta-llama--Llama-4-Scout-17B-16E-Instruct": 48 * 2 * 8 * 128,
    "nvidia--Nemotron-H-56B-Base-8K": 10 * 2 * 8 * 128,  # ten '*' blocks
    "nvidia--NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": 6 * 2 * 2 * 128,
    "MiniMaxAI--MiniMax-M2.5": 62 * 2 * 8 * 128,
    "moonshotai--Kimi-K2.5": 61 * (512 + 64),
    "stepfun-ai--Step-3.7-Flash": 45 * 2 * 8 * 128,
    "openai--gpt-oss-120b": 36 * 2 * 8 * 64,
    "microsoft--Phi-3-medium-4k-instruct": 40 * 2 * 10 * 128,
    "nvidia--NVIDIA-Nemotron-3-Super-120B-A12B-FP8": 8 * 2 * 2 * 128,  # eight '*' blocks
}
# ... and at 128k tokens of context, where windows and chunks hold only their own span
LONG = 131072
KV_LONG = {
    "deepseek-ai--DeepSeek-V4-Flash": 2 * 512 * 128 / LONG + 21 * ((512 + 128) / 4 + 512 * 128 / LONG)
    + 20 * (512 / 128 + 512 * 128 / LONG),
    "google--gemma-4-26B-A4B": 25 * 2 * 8 * 256 * 1024 / LONG + 5 * 2 * 512,
    "meta-llama--Llama-4-Scout-17B-16E-Instruct": 36 * 2 * 8 * 128 * 8192 / LONG + 12 * 2 * 8 * 128,
    "stepfun-ai--Step-3.7-Flash": 33 * 2 * 8 * 128 * 512 / LONG + 12 * 2 * 8 * 128,
    "openai--gpt-oss-120b": 18 * 2 * 8 * 64 * 128 / LONG + 18 * 2 * 8 * 64,
    "zai-org--GLM-5": 78 * (512 + 64 + 128),
    "microsoft--Phi-3-medium-4k-instruct": 40 * 2 * 10 * 128 * 2047 / LONG,  # every layer a 2,047 window
}
# Per-sequence state elements: heads x k x v plus (conv kernel - 1) x conv channels, per state layer.
STATE = {
    "Qwen--Qwen3-Next-80B-A3B-Thinking": 36 * (32 * 128 * 128 + 3 * (2 * 16 * 128 + 32 * 128)),
    "nvidia--Nemotron-H-56B-Base-8K": 54 * (256 * 256 * 64 + 3 * (256 * 64 + 2 * 8 * 256)),
    "nvidia--NVIDIA-Nemotron-3-Super-120B-A12B-FP8": 40 * (128 * 128 * 64 + 3 * (128 * 64 + 2 * 8 * 128)),
}


@pytest.mark.parametrize("name", sorted(KV))
def test_kv_elements_per_token_match_a_hand_count(name):
    assert spec(name).kv_elems_per_token() == pytest.approx(KV[name])


@pytest.mark.parametrize("name", sorted(KV_LONG))
def test_windows_cap_the_cache_at_long_context(name):
    assert spec(name).kv_elems_per_token(LONG) == pytest.approx(KV_LONG[name])


@pytest.mark.parametrize("name", sorted(STATE))
def test_state_per_sequence_matches_a_hand_count(name):
    assert spec(name).state_elems_per_seq() == STATE[name]


# One model per layer kind: dropping that kind's rule (its layers costed as plain full attention)
# moves the figures the hand-count tests above hold, so each rule is needed.
KINDS = {
    "sliding": "openai--gpt-oss-120b", "chunked": "meta-llama--Llama-4-Scout-17B-16E-Instruct",
    "linear": "Qwen--Qwen3-Next-80B-A3B-Thinking", "mamba": "nvidia--Nemotron-H-56B-Base-8K",
    "sparse": "zai-org--GLM-5", "compressed": "deepseek-ai--DeepSeek-V4-Flash",
    "none": "nvidia--Nemotron-H-56B-Base-8K",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_removing_a_kind_rule_fails_the_hand_counts(kind):
    m = spec(KINDS[kind])
    assert any(layer.attention == kind for layer in m.layer_list)
    plain = tuple(LayerSpec(ffn=layer.ffn) if layer.attention == kind else layer for layer in m.layer_list)
    dropped = m.model_copy(update={"layers": plain})
    name = KINDS[kind]
    expected_long = KV_LONG.get(name, KV[name])
    assert m.kv_elems_per_token(LONG) == pytest.approx(expected_long)
    assert dropped.kv_elems_per_token(LONG) != pytest.approx(expected_long)


def test_every_family_has_a_fixture_and_the_registry_maps_labels():
    families = {spec(p.stem).family for p in FIXTURES.glob("*.json") if "hf_quant" not in p.name}
    assert {"gemma4", "llama4", "qwen3_next", "qwen3_5", "qwen3_5_moe", "nemotron_h", "deepseek_v32",
            "glm_moe_dsa", "deepseek_v4", "kimi_k2", "minimax_m2", "step3p7", "gpt_oss", "phi3"} <= families
    for fam in FAMILIES:
        assert callable(fam.read) and fam.MODEL_TYPES
    assert len(supported()) == len(set(supported()))


def test_unknown_model_type_names_the_closest_family():
    cfg = {**raw("Qwen--Qwen3-Next-80B-A3B-Thinking"), "model_type": "qwen3_nxt"}
    with pytest.raises(PlannerInputError, match="closest supported family is 'qwen3_next'"):
        from_hf_config(cfg)


@pytest.mark.parametrize("name, key", [
    ("Qwen--Qwen3-Next-80B-A3B-Thinking", "linear_num_value_heads"),
    ("deepseek-ai--DeepSeek-V4-Flash", "compress_ratios"),
    ("nvidia--Nemotron-H-56B-Base-8K", "hybrid_override_pattern"),
    ("zai-org--GLM-5", "index_topk"),
    ("meta-llama--Llama-4-Scout-17B-16E-Instruct", "attention_chunk_size"),
])
def test_missing_key_of_a_known_family_is_named(name, key):
    cfg = raw(name)
    (cfg.get("text_config") or cfg).pop(key)
    with pytest.raises(PlannerInputError, match=f"'{key}' is missing"):
        from_hf_config(cfg)


def test_vision_tower_counts_in_memory_unless_left_out():
    with_tower, text_only = spec("google--gemma-4-26B-A4B"), spec("google--gemma-4-26B-A4B", vision=False)
    assert 0.3e9 < with_tower.vision_params < 0.6e9 and text_only.vision_params == 0
    lay, bf16 = Layout(), precision("bf16")
    extra = weight_bytes_per_device(with_tower, lay, bf16) - weight_bytes_per_device(text_only, lay, bf16)
    assert extra == pytest.approx(with_tower.vision_params * 2)


# ---- checkpoint precision -----------------------------------------------------------------
@pytest.mark.parametrize("quant, expected", [
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, ("fp8", "fp8 block 128x128")),
    ({"quant_method": "mxfp4"}, ("fp4", "mxfp4")),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, ("fp4", "modelopt NVFP4")),
    ({"quant_method": "awq", "bits": 4}, ("int4", "awq")),
    ({"quant_method": "gptq", "bits": 8}, ("int8", "gptq int8")),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int"}}}},
     ("int4", "compressed-tensors int4 (pack-quantized)")),
    ({"quant_method": "compressed-tensors", "format": "float-quantized",
      "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}},
     ("fp8", "compressed-tensors float8 (float-quantized)")),
])
def test_quantization_config_sets_the_checkpoint_precision(quant, expected):
    m = from_hf_config({**raw("Qwen--Qwen3-Next-80B-A3B-Thinking"), "quantization_config": quant})
    assert (m.checkpoint_precision, m.checkpoint_quant) == expected


def test_hf_quant_config_json_beside_the_config(tmp_path):
    (tmp_path / "config.json").write_text((FIXTURES / "Qwen--Qwen3.5-397B-A17B.json").read_text())
    (tmp_path / "hf_quant_config.json").write_text(
        (FIXTURES / "nvidia--Qwen3.5-397B-A17B-NVFP4.hf_quant_config.json").read_text())
    assert model(str(tmp_path)).checkpoint_precision == "fp4"


def test_unknown_quant_method_names_the_field():
    with pytest.raises(PlannerInputError, match="quant_method"):
        from_hf_config({**raw("openai--gpt-oss-120b"), "quantization_config": {"quant_method": "hqq"}})


def test_explicit_precision_overrides_with_a_note():
    assert resolve(None, "fp4")[0].weights == "fp4" and resolve(None, None)[0].weights == "bf16"
    prec, note = resolve("bf16", "fp4")
    assert prec.weights == "bf16" and "overrides the checkpoint's fp4" in note
    assert resolve("fp4", "fp4")[1] == "" and resolve("bf16", None)[1] == ""


def test_gpt_oss_fits_one_h100_at_its_mxfp4_checkpoint_precision():
    wl = {"isl": 1024, "osl": 256, "concurrency": 8}
    e = estimate("gpt-oss-120b", "dgx-h100", layout={"tp": 1}, workload=wl)
    # Hopper has no FP4 math: the MXFP4 weights run weight-only (GEMMs in bf16), as vLLM's Marlin kernels do
    assert e.fits and e.precision == "fp4" and e.notes == (
        "h100-sxm has no fp4 math: the checkpoint's fp4 weights are costed weight-only, GEMMs in bf16",)
    forced = estimate("gpt-oss-120b", "dgx-h100", layout={"tp": 1}, workload=wl, precision="bf16")
    assert not forced.fits and "overrides the checkpoint's fp4" in forced.notes[0]


def test_hf_id_resolves_from_the_local_hf_cache(tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--acme--Hybrid-80B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((FIXTURES / "Qwen--Qwen3-Next-80B-A3B-Thinking.json").read_text())
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    m = model("acme/Hybrid-80B")
    assert m.hf_id == "acme/Hybrid-80B" and m.family == "qwen3_next"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    with pytest.raises(PlannerInputError, match="local Hugging Face cache"):
        model("acme/Hybrid-80B")


# ---- what the layer kinds do to serving -----------------------------------------------------
def _instance(m, tp: int = 8, device: str = "hgx-h200"):
    g = cluster(device).groups[0]
    return build_instance(m, Layout(tp=tp), precision("fp8"), g, profile_for(g.device.name), engine("vllm"))


def test_dsa_decode_grows_less_with_context_than_full_attention():
    """DeepSeek-V3.2 is V3 plus DSA: from 8k to 128k tokens of context its decode step grows less."""
    dsa, full = _instance(spec("deepseek-ai--DeepSeek-V3.2")), _instance(model("deepseek-v3"))
    growth = {k: float(i.decode_s(32, 131072) / i.decode_s(32, 8192)) for k, i in (("dsa", dsa), ("full", full))}
    assert growth["dsa"] < growth["full"] and growth["full"] > 1.5


def test_linear_hybrid_holds_several_times_the_sequences_at_long_context():
    """Qwen3-Next against the same model with every layer full attention, at 128k tokens a sequence."""
    hybrid = spec("Qwen--Qwen3-Next-80B-A3B-Thinking")
    full = hybrid.model_copy(update={"layers": tuple(LayerSpec(ffn="moe") for _ in hybrid.layer_list)})
    acc = cluster("dgx-h100").groups[0].device
    seqs = {}
    for key, m in (("hybrid", hybrid), ("full", full)):
        mem = memory_breakdown(m, Layout(tp=4), precision("bf16"), acc, engine("vllm"), 126976, 4096, 8192)
        seqs[key] = mem.kv_tokens / LONG
    assert seqs["hybrid"] > 3 * seqs["full"] > 0


def test_state_layers_cost_state_reads_not_context():
    inst = _instance(spec("Qwen--Qwen3-Next-80B-A3B-Thinking"), tp=4)
    parts = {ctx: inst.breakdown(inst_batch(ctx)) for ctx in (8192, 131072)}
    assert parts[8192]["state_decode"] == pytest.approx(parts[131072]["state_decode"])
    assert parts[131072]["attn_decode"] > 4 * parts[8192]["attn_decode"]


def inst_batch(ctx: int):
    from costmodel.ops import Batch

    return Batch(decode_seqs=16.0, decode_ctx=float(ctx))


# ---- every family estimates and plans -------------------------------------------------------
ONE_PER_FAMILY = sorted({spec(p.stem).family: p.stem for p in sorted(FIXTURES.glob("*.json"))
                         if "hf_quant" not in p.name}.values())


def _cluster_for(m) -> str:
    """The smallest H100 / H200 cluster whose memory holds the weights at the checkpoint precision."""
    need_gib = (m.total_params + m.vision_params) * resolve(None, m.checkpoint_precision)[0].weight_bytes / 2**30
    for name in ("dgx-h100", "hgx-h200", "hgx-h200x2", "hgx-h200x4"):
        c = cluster(name)
        if need_gib < 0.6 * c.groups[0].num_devices * c.groups[0].device.hbm_gib:
            return name
    raise AssertionError(f"{m.name} needs {need_gib:.0f} GiB")


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_family_estimates_and_plans_where_it_fits(name):
    path = str(FIXTURES / f"{name}.json")
    m = model(path)
    where = _cluster_for(m)
    wl = {"isl": 2048, "osl": 256, "concurrency": 8}
    nodes = cluster(where).groups[0].num_nodes
    e = estimate(path, where, layout={"tp": 8, "pp": nodes}, workload=wl)
    assert e.fits and e.ttft_ms > 0 and e.tpot_ms > 0
    result = plan(path, where, slo={"ttft_ms": 60000, "tpot_ms": 1000}, workload=wl, budget_s=20)
    assert result.best is not None and result.best.layout.total_devices <= cluster(where).groups[0].num_devices


def test_every_fixture_cites_its_source():
    readme = (FIXTURES / "README.md").read_text()
    for path in FIXTURES.glob("*.json"):
        assert f"`{path.name}`" in readme and json.loads(path.read_text())


def test_mtp_modules_are_read_and_load_only_for_drafting():
    """DeepSeek-V3's checkpoint holds 685B parameters (its Hub page): the 671B model and its MTP module."""
    v3 = model("deepseek-v3")
    assert v3.mtp_layers == 1 and within((v3.total_params + v3.mtp_params) / 1e9, 685)
    assert 13e9 < v3.mtp_params < 14.5e9
    lay, fp8 = Layout(tp=8), precision("fp8")
    extra = weight_bytes_per_device(v3, lay, fp8, mtp=True) - weight_bytes_per_device(v3, lay, fp8)
    assert extra == pytest.approx(v3.mtp_params / 8)


def test_lightning_attention_layers_follow_attn_type_list():
    """MiniMax-M1's `attn_type_list` (0 = lightning linear attention, 1 = softmax), on M2.5's dimensions."""
    cfg = {**raw("MiniMaxAI--MiniMax-M2.5"), "model_type": "minimax_m1", "attn_type_list": [0] * 7 + [1] + [0] * 54}
    m = from_hf_config(cfg)
    assert [layer.attention for layer in m.layer_list].count("linear") == 61
    assert m.state is not None and m.state.elems_per_seq == 48 * 128 * 128
    assert m.kv_elems_per_token() == 2 * 8 * 128


@pytest.mark.parametrize("family, globals_at", [("gemma2", [1, 3, 5]), ("gemma3_text", [5, 11])])
def test_gemma_local_global_patterns_without_layer_types(family, globals_at):
    text = {k: v for k, v in raw("nvidia--Gemma-4-31B-IT-NVFP4")["text_config"].items() if k != "layer_types"}
    m = from_hf_config({**text, "model_type": family, "num_hidden_layers": 12})
    assert [i for i, layer in enumerate(m.layer_list) if layer.attention == "full"][:len(globals_at)] == globals_at


def test_cli_lists_new_families_and_accelerators_and_drops_the_tower(capsys):
    from planner.cli import main

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {rows[n]["family"] for n in ("deepseek-v4-flash", "glm-5", "qwen3.5-397b-a17b", "llama-4-scout")} == \
        {"deepseek_v4", "glm_moe_dsa", "qwen3_5_moe", "llama4"}
    assert rows["gpt-oss-120b"]["weights"] == "fp4" and rows["qwen3-next-80b-a3b"]["layers"] == "36 linear + 12 full"
    assert main(["clusters"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("gb300-nvl72", "hgx-b300", "mi355x-node", "hgx-h20", "atlas-950-superpod"))
    weights = {}
    for flag in ((), ("--text-only",)):
        assert main(["estimate", "--model", "gemma-4-26b-a4b", "--cluster", "dgx-h100", "--isl", "1024", "--osl",
                     "128", "--concurrency", "4", "--json", *flag]) == 0
        weights[flag] = json.loads(capsys.readouterr().out)["memory_gib"]["weights"]
    assert weights[()] - weights[("--text-only",)] == pytest.approx(0.42e9 * 2 / 2**30, rel=0.05)


def test_latent_moe_experts_work_on_the_latent():
    """Nemotron-3 Super: 512 experts of 2 x 1024 x 2688 (ReLU^2 up/down on the 1,024-wide latent), the latent
    projections 2 x 4096 x 1024 once per MoE layer; with the hidden width its experts would be 4x larger."""
    m = spec("nvidia--NVIDIA-Nemotron-3-Super-120B-A12B-FP8")
    assert m.expert_params == 2 * 1024 * 2688 and m.latent_proj_params == 2 * 4096 * 1024
    plain = m.model_copy(update={"moe": {**m.moe.model_dump(), "latent_size": 0}})
    assert plain.total_params > 3 * m.total_params / 2
