"""Context parallelism for prefill (ring, Ulysses) and the SP-group MILP against brute force."""

import random

import pytest

from costmodel import sp
from costmodel.calibration.profile import profile_for
from costmodel.catalog import model
from costmodel.engines import engine
from costmodel.estimate import build_instance
from costmodel.layout import Layout
from costmodel.ops import Batch
from costmodel.precision import precision
from hardware import PlannerInputError, cluster
from planner import estimate
from searches.sp_milp import Bucket, SPProblem, best_static, brute_force, group_loads, problem_for, solve


def _base(name="llama-3.1-8b", clu="dgx-h100", tp=1, prec="bf16"):
    group = cluster(clu).groups[0]
    return build_instance(model(name), Layout(tp=tp), precision(prec), group, profile_for(group.device.name),
                          engine("vllm"))


def test_ulysses_widths_and_head_rule_by_hand():
    m = model("llama-3.1-8b")  # 32 query heads, 8 KV heads of 128
    assert sp.ulysses_widths(m, 1) == (4096, 1024, 1024, 4096)
    assert sp.ulysses_widths(m, 4) == (1024, 256, 256, 1024)
    assert sp.ulysses_fits(m, 1, 8) and not sp.ulysses_fits(m, 8, 8)  # 4 heads per TP rank over 8 ranks
    ds = model("deepseek-v3")  # MLA: K/V expanded per head (192 and 128 wide) for prefill; ring moves the latent
    assert sp.ulysses_widths(ds, 1) == (128 * 192, 128 * 192, 128 * 128, 128 * 128)
    assert sp.kv_block_elems(ds, 8) == 576 and sp.kv_block_elems(m, 1) == 2048 and sp.kv_block_elems(m, 2) == 1024


def test_ulysses_bytes_by_hand():
    inst = sp.context_parallel(_base(), 4, "ulysses")
    tokens = 8192.0
    link = cluster("dgx-h100").groups[0].scaleup
    fit = inst._fit("all_to_all", link)
    # four all-to-alls of 8192 tokens x (4096, 1024, 1024, 4096) 16-bit elements, 3/4 of each leaving the rank
    moved = sum(tokens * w * 2 * 3 / 4 for w in (4096, 1024, 1024, 4096))
    by_hand = moved / (link.gbps * 1e9 * fit.eff) + 4 * (fit.alpha_us + 3 * fit.step_us) * 1e-6
    assert sp.ulysses_s(inst, tokens) == pytest.approx(by_hand)


def test_ring_hides_behind_attention_on_nvlink_and_shows_across_nodes():
    b = Batch(prefill_tokens=65536, prefill_span=32768, prefill_seqs=1)
    long_nvlink = sp.context_parallel(_base(), 8, "ring").breakdown(b)
    assert long_nvlink["sp_ring"] == 0.0 and long_nvlink["attn_prefill"] > 0
    short = Batch(prefill_tokens=4096, prefill_span=2048, prefill_seqs=1)
    across = sp.context_parallel(_base(clu="dgx-h100x2"), 16, "ring").breakdown(short)
    assert across["sp_ring"] > 0


def test_method_choice_and_errors():
    b = Batch(prefill_tokens=16384, prefill_span=8192, prefill_seqs=1)
    wide = _base(clu="dgx-h100x8", tp=8)  # 4 heads per TP rank
    assert "sp_ulysses" in sp.context_parallel(wide, 4, "ulysses").breakdown(b)
    with pytest.raises(PlannerInputError, match="ring"):
        sp.context_parallel(wide, 8, "ulysses").breakdown(b)  # 4 heads do not split over 8 ranks
    assert "sp_ring" in sp.context_parallel(wide, 8).breakdown(b)  # auto falls back to the ring
    with pytest.raises(PlannerInputError, match="unknown"):
        sp.context_parallel(_base(), 2, "zigzag")
    auto = sp.context_parallel(_base(), 4).breakdown(b)
    ring = sp.context_parallel(_base(), 4, "ring").breakdown(b)
    uly = sp.context_parallel(_base(), 4, "ulysses").breakdown(b)
    assert sum(auto.values()) == pytest.approx(min(sum(ring.values()), sum(uly.values())))


def test_estimate_with_sp_charges_the_traffic():
    e = estimate("llama-3.1-8b", "dgx-h100x2", layout={"tp": 1, "attention_dp": 16, "sp": 16},
                 workload={"isl": 8192, "osl": 16, "concurrency": 1})
    assert e.fits and any(k.startswith("sp_") for k in e.breakdown_ms)
    with pytest.raises(PlannerInputError, match="sp"):
        estimate("llama-3.1-8b", "dgx-h100", layout={"tp": 2, "sp": 4}, workload={"isl": 8, "osl": 8,
                                                                                   "concurrency": 1})
    with pytest.raises(PlannerInputError, match="attention-DP ranks"):
        estimate("llama-3.1-8b", "dgx-h100", layout={"tp": 8, "sp": 8}, workload={"isl": 8, "osl": 8,
                                                                                   "concurrency": 1})


def test_longer_prompts_need_and_gain_from_more_ranks():
    inst = _base("llama-3.1-70b", "dgx-h100", prec="fp8")
    times = [sp.prefill_s(inst, 65536, d) for d in (1, 2, 4, 8)]
    assert times == sorted(times, reverse=True) and times[0] / times[-1] > 4
    # one H100 holds the FP8 weights and an 8K prompt, not a 16K one; two ranks split its KV and activations
    assert sp.prefill_fits(inst, 8192, 1) and not sp.prefill_fits(inst, 16384, 1) and sp.prefill_fits(inst, 16384, 2)


def _synthetic(rng: random.Random) -> SPProblem:
    devices = rng.choice([4, 6])
    degrees = (1, 2, 4)
    lengths = sorted(rng.sample([512, 2048, 8192, 32768], 3))
    buckets = tuple(Bucket(length, rng.randint(0, 2)) for length in lengths)
    if not any(b.count for b in buckets):
        buckets = (Bucket(lengths[0], 1), *buckets[1:])
    cap = rng.choice([10_000, 20_000, 40_000])
    times = tuple(tuple(1e-9 * length**2 / d + 1e-4 * length / d + rng.uniform(0, 0.02) * (d - 1)
                        for d in degrees) for length in lengths)
    fits = tuple(tuple(length / d <= cap for d in degrees) for length in lengths)
    return SPProblem(buckets, devices, degrees, times, fits)


@pytest.mark.parametrize("seed", range(8))
def test_milp_equals_brute_force_on_small_problems(seed):
    problem = _synthetic(random.Random(seed))
    milp, brute = solve(problem), brute_force(problem)
    assert milp.optimal and milp.makespan_s == pytest.approx(brute.makespan_s, rel=1e-6)
    assert milp.devices <= problem.devices
    assert max(group_loads(problem, milp.groups, milp.assignment)) == pytest.approx(milp.makespan_s)
    for b, bucket in enumerate(problem.buckets):
        assert sum(row[b] for row in milp.assignment) == bucket.count


def test_milp_equals_brute_force_on_cost_model_times():
    inst = _base("llama-3.1-70b", "dgx-h100", prec="fp8")
    problem = problem_for(inst, [Bucket(1024, 2), Bucket(8192, 1), Bucket(16384, 1), Bucket(32768, 1)], ranks=4)
    assert not problem.fits[2][0] and problem.fits[2][1]  # 16K needs two ranks
    milp, brute = solve(problem), brute_force(problem)
    assert milp.makespan_s == pytest.approx(brute.makespan_s, rel=1e-6)
    degree, static = best_static(problem)
    assert degree in problem.degrees and milp.makespan_s <= static.makespan_s * (1 + 1e-9)


def test_bad_sp_problems_say_what_to_fix():
    with pytest.raises(PlannerInputError, match="holds"):
        SPProblem((Bucket(100, 1),), 2, (1, 2), ((1.0, 0.5),), ((False, False),))
    with pytest.raises(PlannerInputError, match="one row per bucket"):
        SPProblem((Bucket(100, 1),), 2, (1, 2), ((1.0,),), ((True, True),))
    with pytest.raises(PlannerInputError, match="ranks"):
        problem_for(_base(), [Bucket(100, 1)], ranks=0)
