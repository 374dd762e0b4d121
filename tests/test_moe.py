"""MoE at scale: expert memory, routing skew, EPLB, dispatch/combine tiers, micro-batch overlap."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from costmodel import comm, moe
from costmodel.calibration.profile import CommFit, Profile, profile_for, shipped
from costmodel.catalog import model
from costmodel.engines import engine
from costmodel.estimate import build_instance
from costmodel.instance import Instance
from costmodel.layout import Layout, check_layout
from costmodel.memory import kv_bytes_per_token_device, weight_bytes_per_device
from costmodel.ops import Batch, moe_ops
from costmodel.precision import precision
from hardware import PlannerInputError, cluster
from planner import estimate

NETWORK = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "network"
MIB, GIB = 2.0**20, 2.0**30
V3 = model("deepseek-v3")
FP8 = precision("fp8")
# DeepSeek-V3: 58 MoE layers (61 - 3 dense) of 256 experts, each gate/up/down 7168 x 2048 = 42 MiB in FP8
EXPERT_MIB = 3 * 7168 * 2048 / MIB
EP_LAYOUTS = {  # EP8 and EP32 as DEP, EP320 as the DeepSeek-V3 report's decode unit (TP4 x DP80, EP320)
    8: (Layout(tp=1, attention_dp=8, ep=8), 0),
    32: (Layout(tp=1, attention_dp=32, ep=32), 0),
    320: (Layout(tp=4, attention_dp=80, ep=320), 64),  # 256 routed + 64 redundant/shared slots = 1 per GPU
}


def _inst(name, clu, lay, prec="fp8", **kw):
    group = cluster(clu).groups[0]
    return build_instance(model(name), lay, precision(prec), group, profile_for(group.device.name), engine("vllm"),
                          **kw)


@pytest.mark.parametrize("ep, experts_per_device, gib", [(8, 32, 76.125), (32, 8, 19.03125), (320, 1, 2.37890625)])
def test_deepseek_v3_expert_memory_per_device_by_hand(ep, experts_per_device, gib):
    assert EXPERT_MIB == 42.0
    lay, redundant = EP_LAYOUTS[ep]
    check_layout(V3, lay, redundant)
    by_hand = 58 * experts_per_device * EXPERT_MIB * MIB
    assert by_hand / GIB == gib
    assert moe.expert_bytes_per_device(V3, lay, FP8, redundant) == pytest.approx(by_hand, rel=1e-12)
    # the redundant copies are what the full weight count adds: 64 / 320 of an expert per layer, 487.2 MiB
    extra = weight_bytes_per_device(V3, lay, FP8, redundant) - weight_bytes_per_device(V3, lay, FP8)
    assert extra == pytest.approx(58 * redundant / (lay.tp * lay.attention_dp) * EXPERT_MIB * MIB, rel=1e-9)


def test_deepseek_v3_weights_differ_between_ep8_and_ep32_by_the_experts_alone():
    (l8, _), (l32, _) = EP_LAYOUTS[8], EP_LAYOUTS[32]
    gap = weight_bytes_per_device(V3, l8, FP8) - weight_bytes_per_device(V3, l32, FP8)
    assert gap / GIB == pytest.approx(76.125 - 19.03125, rel=1e-12)


@pytest.mark.parametrize("ep", [8, 32, 320])
@pytest.mark.parametrize("kv, per_token", [("auto", 70_272), ("fp8", 35_136)])
def test_deepseek_v3_kv_per_device_by_hand(ep, kv, per_token):
    # MLA caches the 512-wide latent plus the 64-wide RoPE key per layer: 576 x 61 elements per token,
    # the same on every TP rank and for every EP degree (attention-DP ranks hold their own sequences)
    lay, _ = EP_LAYOUTS[ep]
    assert (512 + 64) * 61 * (2 if kv == "auto" else 1) == per_token
    assert kv_bytes_per_token_device(V3, lay, precision("fp8", kv)) == per_token
    # 96 sequences of 4K context on one attention-DP rank, as CloudMatrix decodes, take 25.7 GiB in 16 bits
    assert 96 * 4096 * kv_bytes_per_token_device(V3, lay, precision("fp8", kv)) / GIB == pytest.approx(
        96 * 4096 * per_token / GIB)


def test_redundant_experts_must_fill_the_ep_ranks():
    with pytest.raises(PlannerInputError, match="redundant"):
        check_layout(V3, Layout(tp=1, attention_dp=144, ep=144))
    check_layout(V3, Layout(tp=1, attention_dp=144, ep=144), redundant_experts=32)  # DeepSeek's decode
    with pytest.raises(PlannerInputError, match="320"):
        check_layout(V3, EP_LAYOUTS[320][0], redundant_experts=32)
    with pytest.raises(PlannerInputError, match="redundant_experts"):
        Instance(V3, Layout(tp=8, ep=8), FP8, cluster("dgx-h100").groups[0], Profile(), engine("vllm"),
                 redundant_experts=-1)


def test_default_skew_is_the_measured_power_law_skew():
    h100 = profile_for("h100-sxm")
    measured = max(v for k, v in h100.moe_skew.items() if k.startswith("power_law"))
    assert measured > 1.0
    inst = _inst("deepseek-v3", "dgx-h100", Layout(tp=1, attention_dp=8, ep=8))
    assert inst.moe_skew == measured and inst.routed_skew == measured
    # without EP no rank holds more experts than another: no imbalance
    assert _inst("deepseek-v3", "dgx-h100", Layout(tp=8, pp=2)).routed_skew == 1.0
    # a device without fitted kernels borrows the median of the shipped fits
    fitted = [max(v for k, v in p.moe_skew.items() if k.startswith("power_law")) for p in shipped().values()
              if any(k.startswith("power_law") for k in p.moe_skew)]
    assert moe.default_skew(Profile()) == pytest.approx(float(np.median(fitted)))
    explicit = Instance(V3, Layout(tp=1, attention_dp=8, ep=8), FP8, cluster("dgx-h100").groups[0], h100,
                        engine("vllm"), moe_skew=1.5)
    assert explicit.routed_skew == 1.5


def test_skew_slows_the_busiest_rank():
    lay = Layout(tp=1, attention_dp=8, ep=8)
    b = Batch(prefill_tokens=16384, prefill_span=1024, prefill_seqs=16)
    even = Instance(V3, lay, FP8, cluster("dgx-h100").groups[0], profile_for("h100-sxm"), engine("vllm"), moe_skew=1.0)
    hot = Instance(V3, lay, FP8, cluster("dgx-h100").groups[0], profile_for("h100-sxm"), engine("vllm"), moe_skew=1.5)
    assert hot.breakdown(b)["experts"] > even.breakdown(b)["experts"]
    assert hot.breakdown(b)["ep_combine"] > even.breakdown(b)["ep_combine"]


def test_eplb_trades_memory_for_balance():
    for ep in (8, 32):
        static = moe.eplb_skew(1.3, 256, ep, 0)
        assert 1.0 <= static <= 1.3
        with_copies = [moe.eplb_skew(1.3, 256, ep, r) for r in (32, 64, 256)]
        assert with_copies[0] < 1.3 and with_copies[-1] <= with_copies[0] + 1e-9
        assert all(s >= 1.0 for s in with_copies)
    # EP144 with 288 slots: ranks holding two unreplicated experts carry about 2 of a mean 256/144 = 1.78,
    # more imbalance than the routing itself shows
    assert moe.eplb_skew(1.03, 256, 144, 32) > 1.1
    lay = Layout(tp=1, attention_dp=8, ep=8)
    base = _inst("deepseek-v3", "dgx-h100", lay)
    copies = _inst("deepseek-v3", "dgx-h100", lay, redundant_experts=32)
    assert copies.routed_skew < base.routed_skew
    # compute-bound prefill: the busiest rank got lighter; memory-bound decode: the extra copies are read
    prefill = Batch(prefill_tokens=65536, prefill_span=2048, prefill_seqs=16)
    assert copies.breakdown(prefill)["experts"] < base.breakdown(prefill)["experts"]
    decode = Batch(decode_seqs=2048, decode_ctx=2048)
    assert copies.breakdown(decode)["experts"] > base.breakdown(decode)["experts"]


def test_redundant_copies_are_read_when_touched():
    lay = Layout(tp=1, attention_dp=8, ep=8)
    big = Batch(decode_seqs=4096, decode_ctx=1024)
    plain = next(op for op in moe_ops(V3, lay, FP8, big) if op.name == "experts")
    more = next(op for op in moe_ops(V3, lay, FP8, big, redundant=32) if op.name == "experts")
    assert more.bytes > plain.bytes and more.flops == plain.flops


def test_shared_experts_run_where_the_token_is():
    names = {op.name: op for op in moe_ops(V3, Layout(tp=2, attention_dp=4, ep=8), FP8, Batch(decode_seqs=64))}
    shared = names["shared_gate_up"]
    # 64 tokens over 4 attention-DP ranks, 2 x 2048 columns split over tp=2: 16 x 2048 x 7168 x 2 FLOPs
    assert shared.flops == pytest.approx(2 * 16 * 2048 * 7168)


def test_ep_group_tier_follows_the_domain():
    assert moe.ep_link(cluster("dgx-h100").groups[0], Layout(tp=1, attention_dp=8, ep=8)).name == "nvlink4"
    assert moe.ep_link(cluster("dgx-h100x2").groups[0], Layout(tp=1, attention_dp=16, ep=16)).name == "ib-ndr400"
    assert moe.ep_link(cluster("cloudmatrix384").groups[0], Layout(tp=1, attention_dp=256, ep=256)).name == "ub"
    b = Batch(decode_seqs=1024, decode_ctx=1024)
    inside = _inst("deepseek-v3", "dgx-h100x2", Layout(tp=1, attention_dp=8, ep=8)).breakdown(b)
    across = _inst("deepseek-v3", "dgx-h100x2", Layout(tp=1, attention_dp=16, ep=16)).breakdown(b)
    assert across["ep_dispatch"] > inside["ep_dispatch"]


def test_quantized_dispatch_and_16_bit_combine():
    lay = Layout(tp=1, attention_dp=8, ep=8)
    group = cluster("dgx-h100").groups[0]
    fit = CommFit(eff=0.5, alpha_us=0.0, step_us=0.0)
    b = Batch(decode_seqs=4096)
    fp8 = moe.dispatch_combine_s(V3, lay, FP8, b, group, fit, 1.0)
    bf16 = moe.dispatch_combine_s(V3, lay, precision("bf16"), b, group, fit, 1.0)
    assert fp8["ep_dispatch"] == pytest.approx(fp8["ep_combine"] / 2)
    assert bf16["ep_dispatch"] == pytest.approx(bf16["ep_combine"]) == pytest.approx(fp8["ep_combine"])
    # by hand: 512 tokens per rank x 8 experts x 7168 x 1 byte, 7/8 of it over 450 GB/s x 0.5
    assert fp8["ep_dispatch"] == pytest.approx(512 * 8 * 7168 * 7 / 8 / 225e9)
    assert moe.dispatch_combine_s(V3, Layout(tp=8), FP8, b, group, fit, 1.0) == {}


def test_one_shot_all_to_all_pays_one_hop_not_n():
    link = cluster("cloudmatrix384").groups[0].scaleup
    unfitted = CommFit(eff=0.7, alpha_us=8.0)
    small = 1024.0
    wide, narrow = (moe.one_shot_all_to_all_s(small, n, link, unfitted) for n in (256, 8))
    assert wide == pytest.approx(narrow, rel=0.01)
    assert wide < comm.all_to_all_s(small, 256, link, unfitted) / 20  # 255 sequential hops would be 485 us
    fitted = profile_for("h100-sxm").comm_fit("all_to_all")
    assert moe.one_shot_all_to_all_s(1e6, 8, link, fitted) == comm.all_to_all_s(1e6, 8, link, fitted)


def test_micro_batch_overlap_by_hand():
    assert moe.exposed_comm(10.0, {"a": 4.0}, 2)["a"] == pytest.approx(2.0)  # hidden but the first half
    out = moe.exposed_comm(4.0, {"a": 6.0, "b": 4.0}, 2)  # comm-bound: 10 - 4 + 4 / 2 = 8, shared 6:4
    assert out["a"] == pytest.approx(4.8) and out["b"] == pytest.approx(3.2)
    assert moe.exposed_comm(4.0, {"a": 6.0}, 1) == {"a": 6.0}
    lay = Layout(tp=1, attention_dp=16, ep=16)
    b = Batch(prefill_tokens=65536, prefill_span=2048, prefill_seqs=32)
    serial = _inst("deepseek-v3", "dgx-h100x2", lay, micro_batches=1).breakdown(b)
    overlap = _inst("deepseek-v3", "dgx-h100x2", lay, micro_batches=2).breakdown(b)
    assert overlap["ep_dispatch"] < serial["ep_dispatch"]
    assert sum(overlap.values()) < sum(serial.values())


@pytest.mark.parametrize("gpu, clu", [("H100-SXM-80GB", "dgx-h100"), ("H200-SXM-141GB", "hgx-h200")])
def test_all_to_all_against_apex_measurements(gpu, clu):
    """comm.all_to_all_s with the fitted H100 all-to-all CommFit against apex_plus's NCCL all-to-all
    inside one node (per-rank buffer `size(kb)`, 2/4/8 GPUs, half precision).

    Stated tolerance: median absolute error under 30% over all sizes; every point up to 4 MB per rank
    (where MoE dispatch lives: a decode step moves 0.1-4 MB) within a factor of 1.7; larger buffers
    within 2.5x, over-predicted because the fit's efficiency comes from the vLLM NCCL rows, which run
    at about half apex's bandwidth at the same nominal size.
    """
    path = NETWORK / f"apex_{gpu}_alltoall.csv"
    if not path.exists():
        pytest.skip("shared/data is not beside this checkout")
    df = pd.read_csv(path)
    df = df[df["dtype"] == "half"]
    link = cluster(clu).groups[0].scaleup
    fit = profile_for("h100-sxm").comm_fit("all_to_all")
    pred = np.array([comm.all_to_all_s(kb * 1024.0, int(n), link, fit)
                     for kb, n in zip(df["size(kb)"], df["num_gpus_per_node"], strict=True)])
    ratio = pred / (df["time(us)"].to_numpy(float) * 1e-6)
    assert np.median(np.abs(ratio - 1)) < 0.30
    small = (df["size(kb)"] <= 4096).to_numpy()
    assert np.all((ratio[small] > 1 / 1.7) & (ratio[small] < 1.7))
    assert np.all((ratio > 1 / 2.5) & (ratio < 2.5))


def test_estimate_takes_the_moe_options():
    kw = {"layout": {"tp": 1, "attention_dp": 16, "ep": 16}, "precision": "fp8",
          "workload": {"isl": 1024, "osl": 256, "concurrency": 256}}
    base = estimate("deepseek-v3", "dgx-h100x2", **kw)
    eplb = estimate("deepseek-v3", "dgx-h100x2", redundant_experts=16, **kw)
    # one more expert per device per MoE layer: 58 x 42 MiB
    assert (eplb.memory["weights"] - base.memory["weights"]) * 1024 == pytest.approx(58 * EXPERT_MIB)
    with pytest.raises(PlannerInputError, match="micro_batches"):
        estimate("deepseek-v3", "dgx-h100x2", micro_batches=0, **kw)
    with pytest.raises(PlannerInputError, match="redundant"):
        estimate("deepseek-v3", "dgx-h100x2", redundant_experts=3, **kw)


def test_moe_tp_under_tensor_parallel_attention_is_one_all_reduce():
    """With attention TP every rank holds every token: the expert slices' partial sums meet in one
    all-reduce, costed like a dense MLP's; only attention-DP ranks gather and scatter tokens."""
    b = Batch(decode_seqs=8.0, decode_ctx=2048.0)
    tp = _inst("qwen3-235b-a22b", "dgx-h100", Layout(tp=8))
    parts = tp.breakdown(b)
    assert "moe_allgather" not in parts and "moe_reducescatter" not in parts
    assert parts["moe_tp_allreduce"] == pytest.approx(parts["tp_allreduce_attn"])
    adp = _inst("qwen3-235b-a22b", "dgx-h100", Layout(tp=1, attention_dp=8))
    gathered = adp.breakdown(b)
    assert gathered["moe_allgather"] > 0 and gathered["moe_reducescatter"] > 0
