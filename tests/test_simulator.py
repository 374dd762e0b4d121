"""The iteration-level simulator against the cost model, the analytic steady state and queueing laws."""

import json
import math

import numpy as np
import pytest

from costmodel.calibration.profile import profile_for
from costmodel.catalog import model as load_model
from costmodel.engines import engine as load_engine
from costmodel.estimate import build_instance
from costmodel.layout import Layout
from costmodel.precision import precision
from costmodel.simulator import Percentiles, SchedulerConfig
from costmodel.simulator.steptable import TOLERANCE, build, check, exact_pass_s
from costmodel.workload_dist import LengthDist, SimWorkload, draw
from hardware.catalog import cluster
from planner import PlannerInputError, estimate, goodput, plan, simulate
from planner.cli import main

SMALL = {"model": "llama-3.1-8b", "cluster": "dgx-h100", "layout": {"tp": 1}}


def _instance(model: str, layout: Layout, where: str = "dgx-h100", prec: str = "bf16", engine: str = "vllm"):
    group = cluster(where).groups[0]
    return build_instance(load_model(model), layout, precision(prec), group, profile_for(group.device.name),
                          load_engine(engine))


@pytest.mark.parametrize(("model", "layout", "where", "engine"), [
    ("llama-3.1-70b", Layout(tp=4), "dgx-h100", "vllm"),
    ("gpt-oss-120b", Layout(tp=2), "hgx-h200", "trtllm"),  # sliding-window layers, MoE
    ("llama-3.1-70b", Layout(tp=2, pp=2), "dgx-h100", "sglang"),
])
def test_step_table_agrees_with_step_s(model, layout, where, engine):
    inst = _instance(model, layout, where, "fp8", engine)
    table = build(inst, 256, 8192)
    assert not table.exact and table.max_rel_err <= TOLERANCE
    # fresh random batches (another seed) and a few by hand, against the cost model itself
    assert check(table, seed=7) <= TOLERANCE
    for b, ctx, p, span, s in ((1, 100, 0, 0, 0), (256, 3000, 0, 0, 0), (37, 900, 1200, 600, 1), (0, 0, 8192, 4096, 2)):
        exact = exact_pass_s(inst, b, b * ctx, p, p * span, s)
        assert table.step_s(b, b * ctx, p, p * span, s) == pytest.approx(exact, rel=TOLERANCE)


def _steady(res, concurrency: int) -> tuple[float, float]:
    """Requests/s (Little's law: clients / mean latency) and mean TPOT over the middle half of a run."""
    n = res.num_requests
    mid = slice(n // 4, 3 * n // 4)
    return concurrency / res.e2e_each_ms[mid].mean() * 1e3, float(res.tpot_each_ms[mid].mean())


# Decode-dominated loads: the analytic model spreads each prompt's prefill evenly over the
# iterations, the simulator runs it where it is scheduled; with long prompts that lumpiness (a
# compute-bound prefill iteration instead of cheap piggy-backed tokens) is a real, separate effect.
@pytest.mark.parametrize(("model", "layout", "prec", "isl", "osl", "clients"), [
    ("llama-3.1-8b", {"tp": 1}, "fp8", 128, 1024, 128),
    ("llama-3.1-70b", {"tp": 4}, "fp8", 128, 512, 128),
    ("qwen3-32b", {"tp": 2}, "bf16", 256, 1024, 96),
])
def test_steady_state_agrees_with_analytic_closed_loop(model, layout, prec, isl, osl, clients):
    wl = {"isl": isl, "osl": osl, "concurrency": clients}
    res = simulate(model, "dgx-h100", layout=layout, precision=prec, workload={**wl, "num_requests": 10 * clients})
    est = estimate(model, "dgx-h100", layout=layout, precision=prec, workload=wl)
    rps, tpot = _steady(res, clients)
    assert rps == pytest.approx(est.requests_per_s, rel=0.05)
    assert tpot == pytest.approx(est.tpot_ms, rel=0.05)
    assert res.preemptions == 0 and res.completed.all()


def test_littles_law_on_open_loop_run():
    res = simulate(**SMALL, workload={"isl": 1000, "osl": 300, "rate_rps": 12, "num_requests": 3000}, seed=3)
    it = res.iterations
    lo, hi = np.quantile(res.arrival_s, [0.2, 0.8])
    inside = (it["start_s"] >= lo) & (it["start_s"] < hi)
    # time-average requests in the system, from the engine's own per-iteration queue and batch
    in_system = ((it["waiting"] + it["running"]) * it["dur_s"])[inside].sum() / (hi - lo)
    arrived = (res.arrival_s >= lo) & (res.arrival_s < hi)
    lam = arrived.sum() / (hi - lo)
    wait = res.e2e_each_ms[arrived].mean() / 1e3
    assert in_system == pytest.approx(lam * wait, rel=0.05)


def test_percentiles_ordered_and_weighted_like_repeated_samples():
    res = simulate(**SMALL, workload={"isl": {"dist": "lognormal", "mean": 1500, "sigma": 0.8}, "osl": 200,
                                      "rate_rps": 10, "arrival": "gamma", "cv": 2.0, "num_requests": 1500})
    for pc in (res.ttft_ms, res.tpot_ms, res.itl_ms, res.e2e_ms):
        assert pc.max >= pc.p99 >= pc.p90 >= pc.p50 > 0 and pc.count > 0
    assert res.itl_ms.count == int((res.osl - 1).sum())  # one gap per output token after the first
    assert res.itl_ms.mean == pytest.approx(res.tpot_ms.mean, rel=0.02)
    gaps, weights = np.array([5.0, 1.0, 3.0]), np.array([1, 3, 2])
    w = Percentiles.of(gaps, weights)
    assert (w.p50, w.p90, w.mean, w.count) == (1.0, 5.0, pytest.approx(np.repeat(gaps, weights).mean()), 6)


MIXED = {"isl": {"dist": "empirical", "values": [256, 3900], "weights": [0.8, 0.2]}, "osl": 512}


def test_chunked_prefill_trades_ttft_against_tpot():
    # Against prefill-first scheduling (vLLM V0), chunks never pause decodes: lower TPOT and ITL tail,
    # higher TTFT (Sarathi-Serve's result).
    wl = {**MIXED, "rate_rps": 10, "num_requests": 1200}
    chunked = simulate(**SMALL, workload=wl, scheduler={"policy": "chunked", "chunked_prefill_tokens": 2048})
    first = simulate(**SMALL, workload=wl, scheduler={"policy": "prefill_first", "chunked_prefill_tokens": 2048})
    assert chunked.tpot_ms.mean < first.tpot_ms.mean and chunked.itl_ms.p99 < first.itl_ms.p99
    assert chunked.ttft_ms.mean > first.ttft_ms.mean
    # Against whole prompts beside the decodes (TensorRT-LLM without chunked context), under heavy
    # load a long prompt no longer waits for the budget to clear: lower TTFT tail, higher TPOT.
    # near capacity with the 2026-11-26 profiles (18 req/s with those of 2026-11-25: capacity moves with the
    # fitted prefill and decode costs; at 14 the chunked TTFT p99 is 0.29x the whole-prompt one with
    # vLLM's compute multiplier held at 1 (0.51x with it fitted, 0.34x before the engine-scale prior), at 18
    # both are past capacity)
    wl = {**MIXED, "rate_rps": 14, "num_requests": 1200}
    chunked = simulate(**SMALL, workload=wl, scheduler={"policy": "chunked", "chunked_prefill_tokens": 4096})
    whole = simulate(**SMALL, workload=wl, scheduler={"policy": "whole", "chunked_prefill_tokens": 4096})
    assert chunked.ttft_ms.p99 < 0.8 * whole.ttft_ms.p99
    assert chunked.tpot_ms.mean > 1.1 * whole.tpot_ms.mean


@pytest.mark.parametrize("policy", ["chunked", "whole", "prefill_first"])
def test_preemption_happens_exactly_when_kv_is_exhausted(policy):
    clients, isl, osl = 8, 100, 60
    peak = clients * math.ceil((isl + osl - 1) / 16)  # every sequence's last KV slot, all at once
    wl = {"isl": isl, "osl": osl, "concurrency": clients, "num_requests": clients}
    sched = {"policy": policy, "chunked_prefill_tokens": 2048}
    fits = simulate(**SMALL, workload=wl, scheduler={**sched, "kv_blocks": peak})
    assert fits.preemptions == 0 and fits.completed.all()
    assert fits.iterations["kv_blocks_used"].max() == peak
    short = simulate(**SMALL, workload=wl, scheduler={**sched, "kv_blocks": peak - 1})
    assert short.preemptions >= 1 and short.completed.all()
    assert all(free < need for _, _, _, free, need in short.preemption_events)
    assert short.iterations["kv_blocks_used"].max() <= peak - 1
    # recomputed requests still deliver every token, later than without preemption
    assert short.e2e_ms.max > fits.e2e_ms.max


def test_requests_larger_than_the_kv_cache_are_refused_and_count_as_misses():
    res = simulate(**SMALL, workload={"isl": {"dist": "empirical", "values": [100, 5000]}, "osl": 10,
                                      "rate_rps": 5, "num_requests": 200}, scheduler={"kv_blocks": 100})
    refused = res.isl == 5000
    assert refused.any() and (res.rejected == refused).all()
    assert res.attainment({"ttft_ms": 1e9}) == pytest.approx(1 - refused.mean())
    assert any("refused" in n for n in res.notes)


def test_replicas_behind_round_robin_and_least_loaded_routers():
    wl = {"isl": 500, "osl": 100, "rate_rps": 30, "num_requests": 600}
    rr = simulate(**{**SMALL, "layout": {"tp": 1, "dp": 3}}, workload=wl)
    assert np.bincount(rr.replica, minlength=3).tolist() == [200, 200, 200]
    ll = simulate(**{**SMALL, "layout": {"tp": 1, "dp": 3}}, workload=wl, scheduler={"router": "least_loaded"})
    counts = np.bincount(ll.replica, minlength=3)
    assert counts.sum() == 600 and counts.min() > 150
    one = simulate(**SMALL, workload={**wl, "rate_rps": 10, "num_requests": 200})
    assert rr.tpot_ms.mean == pytest.approx(one.tpot_ms.mean, rel=0.1)  # each replica sees a third


def test_pipeline_stages_keep_micro_batches_in_flight():
    res = simulate("llama-3.1-70b", "dgx-h100", layout={"tp": 2, "pp": 2},
                   workload={"isl": 500, "osl": 200, "concurrency": 32, "num_requests": 200})
    it = res.iterations
    assert res.completed.all() and set(np.unique(it["engine"]).tolist()) == {0, 1}
    # the two virtual engines overlap in time: a pass starts before the other's pass ends
    a, b = (it["engine"] == 0), (it["engine"] == 1)
    starts_b = it["start_s"][b]
    ends_a = it["start_s"][a] + it["dur_s"][a]
    overlap = np.searchsorted(np.sort(ends_a), starts_b) < np.searchsorted(np.sort(it["start_s"][a]), starts_b)
    assert overlap.mean() > 0.9


def test_goodput_bisection_meets_target_and_the_next_step_does_not():
    slo = {"ttft_ms": 300, "tpot_ms": 25}
    wl = {"isl": 1000, "osl": 200, "num_requests": 600}
    g = goodput(**SMALL, workload=wl, slo=slo, target=0.9, rel_tol=0.02)
    assert g.rate_rps > 0 and g.attainment >= 0.9 and g.result is not None
    above = simulate(**SMALL, workload={**wl, "rate_rps": g.rate_rps * 1.06})
    assert above.attainment(slo) < 0.9 or above.attainment(slo) < g.attainment
    assert len(g.evaluations) <= 12
    strict = goodput(**SMALL, workload=wl, slo={"ttft_ms": 1}, target=0.9)
    assert strict.rate_rps == 0.0 and strict.result is None


def test_attainment_is_joint_per_request():
    res = simulate(**SMALL, workload={"isl": 1000, "osl": 200, "rate_rps": 12, "num_requests": 800})
    a = {"ttft_ms": float(np.median(res.ttft_each_ms))}
    b = {"tpot_ms": float(np.median(res.tpot_each_ms))}
    both = res.attainment({**a, **b})
    joint = ((res.ttft_each_ms <= a["ttft_ms"]) & (res.tpot_each_ms <= b["tpot_ms"])).mean()
    assert both == pytest.approx(joint) and both <= min(res.attainment(a), res.attainment(b))
    with pytest.raises(PlannerInputError, match=r"slo\.min_output_tok_s is not a per-request objective"):
        res.attainment({"min_output_tok_s": 10})


def test_chrome_trace_export(tmp_path):
    res = simulate(**SMALL, workload={"isl": 300, "osl": 50, "concurrency": 8, "num_requests": 40},
                   scheduler={"kv_blocks": 60})
    path = res.save_chrome_trace(tmp_path / "trace.json")
    data = json.loads(path.read_text())
    slices = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == len(res.iterations["start_s"])
    assert {e["name"] for e in slices} <= {"decode", "prefill", "mixed"}
    assert sum(e["ph"] == "i" for e in data["traceEvents"]) == res.preemptions > 0
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]  # no temp file left behind


def test_workload_distributions_and_arrivals():
    rng = np.random.default_rng(0)
    logn = LengthDist(dist="lognormal", mean=1500, sigma=0.8).sample(200_000, rng)
    assert logn.mean() == pytest.approx(1500, rel=0.02) and logn.min() >= 1
    d = draw(SimWorkload(isl=100, osl=10, rate_rps=4, arrival="gamma", cv=3.0, num_requests=50_000), seed=1)
    gaps = np.diff(d.arrival_s)
    assert gaps.mean() == pytest.approx(0.25, rel=0.05) and gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)
    assert np.allclose(np.diff(draw(SimWorkload(isl=1, osl=1, rate_rps=2, arrival="constant")).arrival_s), 0.5)
    assert d.arrivals_at(8.0)[-1] == pytest.approx(d.arrival_s[-1] / 2)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"workload": {"isl": 10, "osl": 10}}, "give 'concurrency', 'rate_rps' or a 'trace'"),
    ({"workload": {"isl": {"dist": "lognormal", "mean": 10}, "osl": 10, "rate_rps": 1}}, "needs 'sigma'"),
    ({"workload": {"isl": 10, "osl": 10, "rate_rps": 1, "burst": 2}}, "'burst': unknown field"),
    ({"workload": {"isl": 10, "osl": 10, "rate_rps": 1},
      "scheduler": {"chunked_prefill_tokens": 64, "max_num_seqs": 128}}, "at least max_num_seqs"),
    ({"workload": {"isl": 10, "osl": 10, "rate_rps": 1}, "layout": {"tp": 16}}, "layout needs 16 devices"),
])
def test_bad_input_is_one_sentence(kwargs, words):
    with pytest.raises(PlannerInputError, match=words) as exc:
        simulate("llama-3.1-8b", "dgx-h100", **kwargs)
    assert "\n" not in str(exc.value)


def test_cli_simulate(tmp_path, capsys):
    trace = tmp_path / "t.json"
    rc = main(["simulate", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "lognormal:800:0.5",
               "--osl", "100", "--rate", "5", "--num-requests", "200", "--ttft-ms", "500", "--json",
               "--chrome-trace", str(trace)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["completed"] == 200 and 0 <= out["attainment"] <= 1 and trace.exists()
    assert main(["simulate", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "lognormal:800",
                 "--osl", "100", "--rate", "5"]) == 2
    assert "not a length" in capsys.readouterr().err
    assert main(["simulate", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "100", "--osl", "10",
                 "--rate", "5", "--goodput"]) == 2
    assert "needs an objective" in capsys.readouterr().err


def test_plan_simulate_top_reranks_only_the_best_k():
    kw = {"slo": {"ttft_ms": 2000, "tpot_ms": 60}, "workload": {"isl": 1000, "osl": 200, "rate_rps": 20},
          "precision": "fp8", "goal": "goodput"}
    with pytest.raises(PlannerInputError, match="simulate_top"):
        plan("llama-3.1-8b", "dgx-h100", simulate_top=-1, **kw)
    analytic = plan("llama-3.1-8b", "dgx-h100", **kw)
    r = plan("llama-3.1-8b", "dgx-h100", simulate_top=3, **kw)
    assert r.search["simulated"] == 3 and len(r.plans) > 3
    top, rest = r.plans[:3], r.plans[3:]
    assert [p.label() for p in rest] == [p.label() for p in analytic.plans[3:]]  # below K: the analytic order
    assert {p.label() for p in top} == {p.label() for p in analytic.plans[:3]}
    agg = [p for p in top if p.mode == "agg"]
    assert agg and all(p.metrics["sim_goodput_rps"] > 0 and "sim_ttft_p99_ms" in p.metrics for p in agg)
    goodputs = [p.metrics["sim_goodput_rps"] for p in agg]
    assert goodputs == sorted(goodputs, reverse=True)  # aggregated plans re-rank among their slots
    for p, q in zip(top, analytic.plans[:3], strict=True):  # a disaggregated plan (no simulator) keeps its slot
        assert (p.mode == "disagg") == (q.mode == "disagg")
        if p.mode == "disagg":
            assert p.label() == q.label() and "sim_goodput_rps" not in p.metrics
    assert all("sim_goodput_rps" not in p.metrics for p in rest)
    if len(agg) > 1 and agg[0].rank + 1 == agg[1].rank:
        assert "more simulated goodput" in agg[0].why  # like compared with like


def test_scheduler_defaults_follow_the_engine():
    vllm = SchedulerConfig().resolve(load_engine("vllm"))
    trt = SchedulerConfig().resolve(load_engine("trtllm"))
    assert (vllm.policy, vllm.chunked_prefill_tokens, vllm.max_num_seqs) == ("chunked", 8192, 256)
    assert trt.policy == "whole" and trt.max_num_seqs <= trt.chunked_prefill_tokens


def test_fast_path_matches_exact_per_iteration_simulation():
    """Step table plus decode jumps against step_s called for every single iteration."""
    from costmodel.simulator import run, setup

    inst = _instance("llama-3.1-8b", Layout(tp=1))
    wl = SimWorkload(isl=LengthDist(dist="uniform", low=100, high=3000), osl=LengthDist(dist="uniform", low=20,
                     high=200), rate_rps=15, num_requests=300)
    drawn = draw(wl, seed=2)
    s = setup(inst, SchedulerConfig(chunked_prefill_tokens=2048), drawn)
    fast, exact = run(s, drawn), run(s, drawn, exact=True)
    for name in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms"):
        f, e = getattr(fast, name), getattr(exact, name)
        assert f.mean == pytest.approx(e.mean, rel=0.01) and f.p99 == pytest.approx(e.p99, rel=0.02)
    assert len(fast.iterations["start_s"]) == pytest.approx(len(exact.iterations["start_s"]), rel=0.01)
