"""Property-based suite: over catalog models x clusters x precisions x engines x workloads, `estimate`,
`simulate` and `plan` either answer with finite figures that obey the invariants or raise one of the
project's typed errors (PlannerInputError and its InfeasibleError); and the CLI's exit code says which.

Invariants: no NaN anywhere; memory within the device (weights + activations + reserve + KV <= the
engine's share of HBM <= HBM) when a layout fits; output throughput within the FLOP roofline of the
devices (each output token runs the active weights but the LM head at least, two FLOPs a parameter); p50 <= p90 <=
p99 <= max for every simulated latency. Derandomized (the same examples every run) and bounded; run
`PLANNER_FUZZ_SCALE=10 python -m pytest tests/test_properties.py -s` for a ten times larger sweep; `-s`
prints how many cases ended each way.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel import catalog as models
from costmodel.engines import ENGINES
from costmodel.precision import KV_DTYPES, PRECISIONS
from hardware import catalog as hw
from hardware.errors import PlannerInputError
from planner import InfeasibleError, estimate, plan, simulate

ROOT = Path(__file__).resolve().parents[1]
# derandomized: the same examples every run; PLANNER_FUZZ_SCALE=10 runs ten times as many (a larger sweep)
SCALE = int(os.environ.get("PLANNER_FUZZ_SCALE", "1"))
OUTCOMES: dict[str, Counter[str]] = {}

MODELS = sorted(models.entries())
SMALL_MODELS = ["tiny-llama", "tiny-moe", "llama-3.1-8b", "mixtral-8x7b", "qwen3-32b"]
CLUSTERS = sorted(hw.clusters())
# the odd values are the ones that broke things: one and two output tokens, prompts past the context
LENGTHS = st.one_of(st.sampled_from([1, 2, 3, 127, 128, 2048, 4096, 131_072]), st.integers(1, 8192),
                    st.integers(1, 200_000))
LOADS = st.one_of(st.builds(lambda c: {"concurrency": c}, st.integers(1, 1024)),
                  st.builds(lambda r: {"rate_rps": r}, st.floats(1e-3, 1e3)))
LAYOUTS = st.fixed_dictionaries({"tp": st.sampled_from([1, 2, 4, 8]), "pp": st.sampled_from([1, 2]),
                                 "ep": st.sampled_from([1, 2, 8]), "dp": st.sampled_from([1, 2])})


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def outcome(test: str, kind: str) -> None:
    OUTCOMES.setdefault(test, Counter())[kind] += 1


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    for test, counts in OUTCOMES.items():
        print(f"\n{test}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def typed(exc: PlannerInputError) -> str:
    return "infeasible" if isinstance(exc, InfeasibleError) else "input error"


def no_nan(values: dict, where: str) -> None:
    for k, v in values.items():
        if isinstance(v, dict):
            no_nan(v, f"{where}.{k}")
        else:
            assert not (isinstance(v, float) and math.isnan(v)), f"{where}.{k} is NaN"


def roofline_tok_s(model: str, cluster: str, devices: int) -> float:
    spec = models.model(model)
    peak = max(max(g.device.peak_tflops.values()) for g in hw.cluster(cluster).groups) * 1e12
    return devices * peak / (2 * (spec.active_params - spec.lm_head_params))  # (a prompt may skip the LM head)


@examples(150)
@given(model=st.sampled_from(MODELS), cluster=st.sampled_from(CLUSTERS), layout=LAYOUTS, isl=LENGTHS,
       osl=LENGTHS, load=LOADS, precision=st.sampled_from(PRECISIONS), kv=st.sampled_from(KV_DTYPES),
       engine=st.sampled_from(ENGINES))
def test_estimate_is_finite_and_physical_or_a_typed_error(model, cluster, layout, isl, osl, load, precision, kv,
                                                          engine) -> None:
    try:
        e = estimate(model, cluster, layout=layout, workload={"isl": isl, "osl": osl, **load}, precision=precision,
                     kv_cache_dtype=kv, engine=engine)
    except PlannerInputError as exc:  # ours; anything else fails the test
        outcome("estimate", typed(exc))
        return
    no_nan({k: getattr(e, k) for k in ("ttft_ms", "tpot_ms", "output_tok_s", "requests_per_s", "decode_batch",
                                       "queue_ms", "memory", "breakdown_ms")}, "estimate")
    if not e.fits:
        outcome("estimate", "does not fit")
        assert e.output_tok_s == 0
        return
    mem = e.memory
    assert mem["weights"] + mem["activations"] + mem["reserve"] + mem["kv_cache"] <= mem["capacity"] * (1 + 1e-9)
    assert 0 < mem["capacity"] <= mem["hbm"] and mem["activations"] >= 0 and mem["kv_cache"] >= 0
    if not e.stable:
        outcome("estimate", "fits, over capacity")
        assert e.output_tok_s == 0 and math.isinf(e.ttft_ms)
        return
    outcome("estimate", "fits")
    assert 0 < e.ttft_ms < math.inf and 0 < e.tpot_ms < math.inf and e.output_tok_s > 0
    assert e.output_tok_s <= roofline_tok_s(model, cluster, e.devices)


@examples(25)
@given(model=st.sampled_from(SMALL_MODELS), cluster=st.sampled_from(["dgx-h100", "dgx-a100", "atlas-800t-a2"]),
       tp=st.sampled_from([1, 2, 8]), isl=st.one_of(st.sampled_from([1, 2, 64]), st.integers(1, 4096)),
       osl=st.one_of(st.sampled_from([1, 2]), st.integers(1, 256)), load=LOADS,
       precision=st.sampled_from(PRECISIONS), n=st.integers(1, 60), seed=st.integers(0, 3))
def test_simulate_is_finite_and_ordered_or_a_typed_error(model, cluster, tp, isl, osl, load, precision, n,
                                                         seed) -> None:
    try:
        r = simulate(model, cluster, layout={"tp": tp}, workload={"isl": isl, "osl": osl, **load, "num_requests": n},
                     precision=precision, seed=seed)
    except PlannerInputError as exc:  # ours; anything else fails the test
        outcome("simulate", typed(exc))
        return
    outcome("simulate", "all completed" if r.completed.all() else "some not completed")
    assert r.num_requests == n and 0 <= r.output_tok_s < math.inf and not math.isnan(r.duration_s)
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        pc = getattr(r, name)
        no_nan(vars(pc), name)
        assert pc.p50 <= pc.p90 <= pc.p99 <= pc.max, (name, pc)
    if r.completed.any():
        assert r.ttft_ms.p50 > 0 and r.e2e_ms.p50 >= r.ttft_ms.p50
        assert r.output_tok_s <= roofline_tok_s(model, cluster, tp)


@examples(10)
@given(model=st.sampled_from(SMALL_MODELS), cluster=st.sampled_from(["dgx-h100", "dgx-a100", "dgx-b200"]),
       isl=st.one_of(st.sampled_from([1, 2, 512]), st.integers(1, 8192)),
       osl=st.one_of(st.sampled_from([1, 2]), st.integers(1, 1024)), load=LOADS,
       precision=st.sampled_from(PRECISIONS), ttft=st.one_of(st.none(), st.floats(1, 5000)),
       tpot=st.one_of(st.none(), st.floats(0.5, 200)))
def test_plan_ranks_finite_feasible_plans_or_says_why_not(model, cluster, isl, osl, load, precision, ttft,
                                                          tpot) -> None:
    slo = {k: v for k, v in (("ttft_ms", ttft), ("tpot_ms", tpot)) if v is not None}
    try:
        r = plan(model, cluster, slo=slo, workload={"isl": isl, "osl": osl, **load}, precision=precision,
                 budget_s=10)
    except PlannerInputError as exc:  # ours; anything else fails the test
        outcome("plan", typed(exc))
        return
    outcome("plan", "ranked")
    assert [p.rank for p in r.plans] == list(range(1, len(r.plans) + 1)) and all(p.feasible for p in r.plans)
    hbm = {g.device.name: g.device.hbm_gib for g in hw.cluster(cluster).groups}
    for p in r.plans:
        no_nan({**p.metrics, "score": p.score}, f"plan {p.label()}")
        assert math.isfinite(p.metrics["ttft_ms"]) and math.isfinite(p.metrics["tpot_ms"]) and p.score >= 0
        assert p.metrics["weights_gib"] + p.metrics["kv_cache_gib"] <= hbm[p.device]
        assert p.metrics["output_tok_s"] <= roofline_tok_s(model, cluster, p.devices)
        if "ttft_ms" in slo:
            assert p.metrics["ttft_ms"] <= slo["ttft_ms"] * (1 + 1e-9)
        if "tpot_ms" in slo and osl > 1:
            assert p.metrics["tpot_ms"] <= slo["tpot_ms"] * (1 + 1e-9)


# ---- the CLI: exit code 0 answered, 2 bad input or usage, 3 infeasible; never 1 or a traceback ---------
FLAG_VALUES = {"--isl": ["0", "-3", "1", "2", "abc", "1e9", "64"], "--osl": ["0", "1", "2", "nan", "64"],
               "--concurrency": ["0", "4", "inf"], "--rate": ["0", "-1", "nan", "inf", "2.5"],
               "--precision": ["fp8", "fp4", "none", "int4"], "--tp": ["0", "3", "8", "true"],
               "--kv-cache-dtype": ["fp8", "nope"], "--engine": ["vllm", "tgi"]}


@examples(8)
@given(command=st.sampled_from(["estimate", "plan"]),
       model=st.sampled_from(["tiny-llama", "tiny-moe", "llama-3.1-8b", "nope"]),
       cluster=st.sampled_from(["dgx-h100", "dgx-a100", "dgx-h100x0"]),
       flags=st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.integers(0, 6), max_size=3))
def test_cli_exit_codes(command, model, cluster, flags) -> None:
    """A valid request with up to three of its flags replaced by odd values."""
    given_flags = {"--isl": "64", "--osl": "16", "--concurrency": "4"} | {
        flag: FLAG_VALUES[flag][i % len(FLAG_VALUES[flag])] for flag, i in flags.items()
        if not (command == "plan" and flag == "--tp")}
    if "--rate" in given_flags:  # one load flag (argparse refuses both, which is tested elsewhere)
        given_flags.pop("--concurrency")
    argv = [command, "--model", model, "--cluster", cluster, *(["--budget-s", "5"] if command == "plan" else []),
            *(x for kv in given_flags.items() for x in kv)]
    run = subprocess.run([sys.executable, "-m", "planner.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    outcome("cli", f"exit {run.returncode}")
    assert run.returncode in (0, 2, 3), (argv, run.stderr)
    assert "Traceback" not in run.stderr
    if run.returncode:  # one error line, last (a note such as plan's default workload may come before it)
        lines = [x for x in run.stderr.splitlines() if x.strip()]
        assert [x for x in lines if x.startswith("error: ")] == lines[-1:], (argv, run.stderr)
