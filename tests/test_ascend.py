"""Ascend 910B/910C, CloudMatrix384 as one UB domain, W8A8 INT8, and plans counted in dies."""

import pytest

from costmodel import moe
from costmodel.calibration.profile import Profile
from costmodel.catalog import model
from costmodel.engines import engine
from costmodel.estimate import build_instance
from costmodel.layout import Layout
from costmodel.memory import memory_breakdown
from costmodel.ops import Batch, dense_mlp_ops, op_time_s
from costmodel.precision import precision
from hardware import accelerators, cluster
from planner import estimate
from planner.emit.deployment import deployment
from planner.result import Plan
from searches import Space

R1 = model("deepseek-r1")
W8A8 = precision("int8")
EP320_DIES = Layout(tp=1, attention_dp=160, ep=160)  # 160 packages = 320 dies, CloudMatrix-Infer's decode


def test_910c_is_two_910b_class_dies_with_int8_and_no_fp8():
    c, b = accelerators()["ascend-910c"], accelerators()["ascend-910b"]
    assert c.dies == 2 and b.dies == 1
    assert c.peak_tflops["bf16"] == 752 and c.peak_tflops["int8"] == 2 * c.peak_tflops["bf16"]
    assert c.hbm_gib == 128 and c.hbm_gbps == 3200 and c.scaleup_gbps == 392
    assert "fp8" not in c.peak_tflops and c.flops("fp8") == c.flops("bf16")  # FP8 runs at the 16-bit rate
    assert b.peak_tflops["int8"] > b.peak_tflops["bf16"] and b.hbm_gib == 64
    assert all("uncertain" in c.sources[k] for k in ("tdp_w", "idle_w"))


def test_w8a8_is_int8_weights_and_int8_gemms_with_16_bit_kv():
    assert (W8A8.weights, W8A8.gemm, W8A8.weight_bytes, W8A8.kv) == ("int8", "int8", 1.0, "bf16")
    acc = accelerators()["ascend-910c"]
    big = Batch(prefill_tokens=16384)
    lay = Layout(tp=8)
    bf16 = sum(op_time_s(op, acc, precision("bf16"), Profile()) for op in dense_mlp_ops(R1, lay, precision("bf16"),
                                                                                       big))
    int8 = sum(op_time_s(op, acc, W8A8, Profile()) for op in dense_mlp_ops(R1, lay, W8A8, big))
    assert bf16 / int8 > 1.3  # compute-bound GEMMs on the 1,504 TOPS INT8 cube path


def test_cloudmatrix384_is_one_ub_domain_and_ep_leaves_it_over_roce():
    cm = cluster("cloudmatrix384").groups[0]
    assert cm.num_devices == cm.domain_size == 384 and cm.scaleup.name == "ub"
    assert moe.ep_link(cm, EP320_DIES).name == "ub"
    assert moe.ep_link(cm, Layout(tp=1, attention_dp=256, ep=256)).name == "ub"
    two = cluster("cloudmatrix384x2").groups[0]
    assert moe.ep_link(two, Layout(tp=2, attention_dp=256, ep=512)).name == "roce-400g"


def test_ep320_decode_fits_a_910c_by_hand():
    group = cluster("cloudmatrix384").groups[0]
    inst = build_instance(R1, EP320_DIES, W8A8, group, Profile(), engine("vllm"), redundant_experts=64)
    # 256 routed + 64 redundant slots over 160 packages: two 42 MiB INT8 experts per MoE layer, 58 layers
    assert moe.expert_bytes_per_device(R1, EP320_DIES, W8A8, 64) / 2**30 == 58 * 2 * 42 / 1024
    mem = memory_breakdown(R1, EP320_DIES, W8A8, inst.acc, inst.engine, 4096, 0, 96 * 160, 64)
    assert mem.fits and mem.kv_tokens >= 96 * 160 * 4096  # the paper's 96 sequences per NPU of 4K context
    step = inst.decode_s(96 * 160, 4096)
    assert 0 < step < 1.0 and inst.breakdown(Batch(decode_seqs=96 * 160, decode_ctx=4096))["ep_dispatch"] > 0


def test_ascend_plans_are_emitted_in_dies():
    plan = Plan(layout=EP320_DIES, replicas=1, device="ascend-910c", metrics={"max_running": 256.0}, score=1.0)
    request = {"model": "deepseek-r1", "cluster": "cloudmatrix384", "precision": "int8",
               "workload": {"isl": 4096, "osl": 1024, "concurrency": 256}, "engine": "vllm"}
    d = deployment(plan, request, "ascend")
    assert d.devices == 320 and d.pools[0].ep == 320 and d.pools[0].instance_devices == 320


def test_supernode_moe_space_is_wide_ep_and_small():
    cm = cluster("cloudmatrix384").groups[0]
    layouts = Space(R1, cm).layouts()
    assert 0 < len(layouts) <= 128
    assert all(lay.ep == lay.tp * lay.attention_dp and lay.tp <= cm.devices_per_node for lay in layouts)
    assert max(lay.ep for lay in layouts) == 256
    dense = Space(model("llama-3.1-70b"), cm).layouts()  # dense models keep the whole TP range
    assert max(lay.tp for lay in dense) == 64
    node = Space(R1, cluster("atlas-800-a3").groups[0]).layouts()  # one server: no pruning
    assert any(lay.ep < lay.tp * lay.attention_dp for lay in node)


@pytest.mark.parametrize("name", ["atlas-800t-a2", "atlas-800-a3", "cloudmatrix384"])
def test_ascend_clusters_estimate_w8a8(name):
    lay = {"tp": 8} if name == "atlas-800t-a2" else {"tp": 1, "attention_dp": 8, "ep": 8}
    e = estimate("qwen3-235b-a22b", name, layout=lay, precision="int8",
                 workload={"isl": 1024, "osl": 256, "concurrency": 32})
    assert e.fits and e.tpot_ms > 0 and e.device.startswith("ascend")
