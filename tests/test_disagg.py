"""Disaggregated serving: per-role capacity, KV transfer tiers, rate matching, and pool plans."""

import pytest

from costmodel.calibration.profile import Profile
from costmodel.catalog import model
from costmodel.disagg import (
    decode_capacity,
    disagg_point,
    kv_transfer_bytes,
    kv_transfer_s,
    matched_rate,
    prefill_capacity,
    prefill_ttft_s,
)
from costmodel.engines import engine
from costmodel.estimate import instance_memory
from costmodel.instance import Instance
from costmodel.layout import Layout
from costmodel.precision import precision
from costmodel.workload import SLO, Workload
from hardware import cluster
from planner import InfeasibleError, plan
from planner.cli import main

WL = Workload(isl=2048, osl=256, rate_rps=10)


def _inst(tp: int = 2, name: str = "llama-3.1-8b", clu: str = "dgx-h100x2") -> Instance:
    g = cluster(clu).groups[0]
    return Instance(model(name), Layout(tp=tp), precision("bf16"), g, Profile(), engine("vllm"))


def test_kv_transfer_is_slower_across_domains_and_scales_with_the_prompt():
    inst = _inst()
    g = inst.group
    assert kv_transfer_s(inst, 2048, g.scaleout) > kv_transfer_s(inst, 2048, g.scaleup) > 0
    assert kv_transfer_bytes(inst.model, inst.prec, 4096) == pytest.approx(2 * kv_transfer_bytes(inst.model,
                                                                                                 inst.prec, 2048))


def test_prefill_capacity_meets_ttft_and_prefers_the_scaleup_link():
    inst = _inst()
    slo = SLO(ttft_ms=300)
    cap = prefill_capacity(inst, WL, slo, inst.group.scaleup, inst.group.scaleout)
    assert cap.feasible and cap.rate_rps >= cap.rate_out_rps > 0
    ttft = prefill_ttft_s(inst, WL.isl, cap.rate_rps, kv_transfer_s(inst, WL.isl, inst.group.scaleup))
    assert ttft * 1e3 <= 300 * (1 + 1e-9)
    looser = prefill_capacity(inst, WL, SLO(ttft_ms=3000), inst.group.scaleup, inst.group.scaleout)
    assert looser.rate_rps >= cap.rate_rps
    hopeless = prefill_capacity(inst, WL, SLO(ttft_ms=0.01), inst.group.scaleup, inst.group.scaleout)
    assert not hopeless.feasible and hopeless.binding == "ttft_ms"


def test_decode_capacity_meets_tpot_and_kv_limits():
    inst = _inst()
    cap = decode_capacity(inst, WL, SLO(tpot_ms=20))
    assert cap.feasible and cap.metrics["tpot_ms"] <= 20
    assert cap.metrics["decode_batch"] <= cap.metrics["max_running"]
    tighter = decode_capacity(inst, WL, SLO(tpot_ms=10))
    assert tighter.rate_rps <= cap.rate_rps
    free = decode_capacity(inst, WL, SLO())
    assert free.binding in ("kv_cache", "max_num_seqs")
    assert not decode_capacity(inst, Workload(isl=10, osl=1, rate_rps=1), SLO()).feasible


def test_rate_matched_point_stays_within_the_slo():
    pre, dec = _inst(1), _inst(2)
    slo = SLO(ttft_ms=500, tpot_ms=30)
    p = prefill_capacity(pre, WL, slo, pre.group.scaleup, pre.group.scaleout)
    d = decode_capacity(dec, WL, slo)
    x, y = 2, 1
    rate = matched_rate(x * p.rate_rps, y * d.rate_rps)
    point = disagg_point(pre, x, dec, y, WL, rate, pre.group.scaleup)
    assert point.ttft_ms <= 500 * 1.001 and point.tpot_ms <= 30 * 1.01
    assert point.output_tok_s == pytest.approx(rate * WL.osl) and point.power_w > 0


def test_plan_ranks_aggregated_and_disaggregated_plans_together():
    r = plan("llama-3.1-8b", "dgx-h100x2", slo={"ttft_ms": 600, "tpot_ms": 25},
             workload={"isl": 2048, "osl": 256, "concurrency": 64}, modes=("agg", "disagg"), search="cpsat",
             budget_s=60)
    assert {p.mode for p in r.plans} == {"agg", "disagg"}
    goodputs = [p.metrics["goodput_rps"] for p in r.plans]
    assert goodputs == sorted(goodputs, reverse=True)
    dis = next(p for p in r.plans if p.mode == "disagg")
    assert dis.prefill_layout is not None and dis.prefill_instances >= 1 and dis.decode_instances >= 1
    assert dis.devices == (dis.prefill_layout.instance_devices * dis.prefill_instances
                           + dis.layout.instance_devices * dis.replicas) <= 16
    assert len(dis.placement) == dis.prefill_instances + dis.decode_instances
    for p in r.plans:
        assert sum(len(x["devices"]) for x in p.placement) == p.devices
    best = r.best
    assert "Binds:" in best.why and "Rule of thumb" in best.why and "Beats #2" in best.why
    assert r.search["baseline_ratio"] >= 1 - 1e-9  # the optimum is never worse than the baseline
    assert r.search["agg_gap"] == 0 and r.search["disagg_gap"] == 0


def test_every_search_agrees_on_feasibility_and_auto_matches_cpsat():
    kw = {"slo": {"ttft_ms": 1000, "tpot_ms": 50}, "workload": {"isl": 1024, "osl": 128, "rate_rps": 30}}
    best = {}
    for name in ("cpsat", "lp", "heuristic", "auto", "exhaustive"):
        r = plan("llama-3.1-8b", "dgx-h100", modes=("agg",), search=name, budget_s=60, **kw)
        assert r.best.metrics["goodput_rps"] >= 30 and r.search["goal"] == "devices"
        best[name] = r.best.devices
    assert best["cpsat"] == best["auto"] == best["exhaustive"] <= min(best["lp"], best["heuristic"])


def test_default_plan_weighs_aggregated_against_disaggregated():
    r = plan("llama-3.1-8b", "dgx-h100", slo={"ttft_ms": 600, "tpot_ms": 25},
             workload={"isl": 2048, "osl": 256, "concurrency": 64})
    assert r.search["modes"] == ["agg", "disagg"] and r.search["strategy"] == "auto"
    assert {p.mode for p in r.plans} == {"agg", "disagg"}
    with pytest.raises(TypeError):
        plan("llama-3.1-8b", "dgx-h100", search_strategy="cpsat")  # one parameter for the strategy: `search`


def test_infeasible_pool_plans_say_what_binds():
    with pytest.raises(InfeasibleError, match=r"devices bind.*at most"):
        plan("llama-3.1-70b", "dgx-h100", slo={"ttft_ms": 2000, "tpot_ms": 50},
             workload={"isl": 2048, "osl": 256, "rate_rps": 500}, precision="fp8", modes=("agg", "disagg"),
             search="cpsat", budget_s=30)
    with pytest.raises(InfeasibleError, match=r"tpot_ms") as exc:
        plan("llama-3.1-70b", "dgx-h100", slo={"tpot_ms": 1}, workload={"isl": 128, "osl": 128, "rate_rps": 1},
             modes=("agg", "disagg"), search="cpsat", budget_s=30)
    assert all(p.binding for p in exc.value.result.rejected)
    with pytest.raises(InfeasibleError, match=r"memory"):
        plan("llama-3.1-405b", "dgx-a100", slo={}, workload={"isl": 128, "osl": 128, "rate_rps": 1},
             modes=("disagg",), search="heuristic", budget_s=30)


def test_bad_pool_arguments_name_the_field():
    kw = {"slo": {}, "workload": {"isl": 128, "osl": 128, "rate_rps": 1}}
    with pytest.raises(Exception, match="modes"):
        plan("llama-3.1-8b", "dgx-h100", modes=("both",), **kw)
    with pytest.raises(Exception, match="search"):
        plan("llama-3.1-8b", "dgx-h100", search="magic", **kw)
    with pytest.raises(Exception, match="rate_rps"):
        plan("llama-3.1-8b", "dgx-h100", search="cpsat", goal="energy", slo={},
             workload={"isl": 128, "osl": 128, "concurrency": 4})


def test_cli_plans_pools(tmp_path, capsys):
    rc = main(["plan", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "1024", "--osl", "128",
               "--rate", "20", "--ttft-ms", "800", "--tpot-ms", "40", "--modes", "agg,disagg", "--search",
               "cpsat", "--budget-s", "30", "--json", "--out", str(tmp_path)])
    assert rc == 0
    assert (tmp_path / "plans.json").exists()
    capsys.readouterr()
    assert main(["plan", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "1024", "--osl", "128",
                 "--rate", "20", "--ttft-ms", "800", "--tpot-ms", "40", "--modes", "agg", "--simulate-top", "1",
                 "--goal", "goodput"]) == 0
    printed = capsys.readouterr().out
    assert "search auto: agg proven optimal" in printed
    assert main(["plan", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "1", "--osl", "1",
                 "--rate", "1", "--modes", "agg,both"]) == 2
    assert "error:" in capsys.readouterr().err


MEMORY_CASES = [  # (model, cluster, workload, precision, engine): long prompts where KV capacity binds
    ("llama-3.1-8b", "atlas-800t-a2", {"isl": 65536, "osl": 64, "concurrency": 512}, "int4", "trtllm"),
    ("llama-3.1-8b", "dgx-h100", {"isl": 32768, "osl": 512, "rate_rps": 1}, "bf16", "vllm"),
    ("llama-3.1-70b", "dgx-h100x2", {"isl": 16384, "osl": 1024, "concurrency": 256}, "fp8", "sglang"),
]


@pytest.mark.parametrize("name,clu,wl,prec,eng", MEMORY_CASES)
def test_no_pool_runs_more_sequences_than_its_kv_cache_holds(name, clu, wl, prec, eng):
    r = plan(name, clu, workload=wl, precision=prec, engine=eng, search="cpsat", modes=("agg", "disagg"),
             budget_s=60)
    g = cluster(clu).groups[0]
    assert r.plans
    for p in r.plans:
        for pool in p.pools:
            assert pool["max_running"] >= 1 and pool["running"] <= pool["max_running"] * (1 + 1e-6), (p.label(), pool)
        for lay in (p.layout, p.prefill_layout):
            if lay is not None:  # weights, activations and at least one request's KV fit every device
                inst = Instance(model(name), lay.model_copy(update={"dp": 1}), precision(prec), g, Profile(),
                                engine(eng))
                assert instance_memory(inst, Workload(**wl), engine(eng).max_num_batched_tokens).fits


@pytest.mark.parametrize("search", ["heuristic", "cpsat", "lp", "exhaustive", "auto"])
def test_closed_loop_disagg_without_a_decode_pool_says_what_binds(search):
    with pytest.raises(InfeasibleError, match=r"no decode instance qualifies.*osl"):
        plan("llama-3.1-8b", "dgx-h100", workload={"isl": 1024, "osl": 1, "concurrency": 64}, modes=("disagg",),
             search=search, budget_s=2)
    r = plan("llama-3.1-8b", "dgx-h100", workload={"isl": 1024, "osl": 1, "concurrency": 64},
             modes=("agg", "disagg"), search=search, budget_s=2)
    assert r.best.mode == "agg" and r.best.metrics["goodput_rps"] > 0


def _per_device(c: dict) -> float:
    lay = c["layout_fields"]
    return c["rate_rps"] / (lay["tp"] * lay["attention_dp"] * lay["pp"])


def test_wide_ep_space_holds_published_deployments_with_redundant_experts():
    """DeepSeek-R1 on CloudMatrix384: EP144 (256 + 32 redundant) and EP160/320 (256 + 64) decode pools are
    searched, with two-batch overlap, their expert copies costed in memory and their numbers listed."""
    r = plan("deepseek-r1", "cloudmatrix384", slo={"ttft_ms": 1000, "tpot_ms": 50},
             workload={"isl": 2048, "osl": 256, "rate_rps": 1.0}, precision="int8", goal="goodput", modes=("disagg",))
    wide = [c for c in r.candidates if c["role"] == "decode" and c["redundant_experts"] and c["feasible"]]
    eps = {c["layout_fields"]["ep"] for c in wide}
    assert {144, 160, 320} <= eps and all(c["micro_batches"] == 2 for c in wide)
    for c in wide:
        slots = 256 + c["redundant_experts"]
        assert slots % c["layout_fields"]["ep"] == 0 and c["metrics"]["running"] <= c["metrics"]["max_running"]
    ep144 = max((c for c in wide if c["layout_fields"]["ep"] == 144), key=_per_device)
    assert ep144["rate_rps"] > 0 and ep144["binding"]
    assert r.search["disagg_gap"] == 0 and r.search["lp_bound_covers"] == "every layout"


def test_qwen3_moe_lists_the_tp8_ep8_per_node_layout_with_its_numbers():
    r = plan("qwen3-235b-a22b", "dgx-h100x4", slo={"ttft_ms": 1000, "tpot_ms": 50},
             workload={"isl": 2048, "osl": 256, "rate_rps": 1.0}, precision="fp8", goal="goodput", modes=("disagg",))
    rows = {c["role"]: c for c in r.candidates if c["layout"] == "tp8-ep8"}
    assert set(rows) == {"prefill", "decode"}
    assert rows["decode"]["feasible"] and rows["decode"]["metrics"]["tpot_ms"] <= 50 and rows["prefill"]["rate_rps"] > 0
