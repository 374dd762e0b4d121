"""Speed of the iteration-level simulator, against calling `step_s` per iteration in the same run.

    python benchmarks/simulator_speed.py [--requests 10000] [--baseline-requests 500]
    python benchmarks/simulator_speed.py --silicon [--waves 5] [--min-concurrency 64]

Llama-3.1-70B TP4 on a DGX H100 (bf16, vLLM defaults), ISL 1000 / OSL 1000, Poisson arrivals at
80% of the analytic capacity. Prints the table build, the run, simulated requests per second,
and a goodput search (TTFT 1000 ms, TPOT 50 ms, 90% attainment). The baseline is the same
simulator with `exact=True` (step_s for every iteration, no table, no decode jumps) on the first
`--baseline-requests` requests; the ratio compares time per simulated request.

`--silicon` instead replays the measured closed-loop agg rows of
`../shared/data/serving/aiconfigurator_silicon_visible.csv` on H100/H200 with at least
`--min-concurrency` clients (where TTFT includes queueing), each as `--waves` x concurrency
requests all starting at once, and prints the median absolute percentage error of the simulated
and of the analytic (`estimate`) mean TTFT and TPOT against the measured ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from costmodel.calibration.profile import profile_for  # noqa: E402
from costmodel.calibration.silicon import PRECISION, SYSTEMS, ape, load_rows, predict, supported  # noqa: E402
from costmodel.catalog import model as load_model  # noqa: E402
from costmodel.engines import engine as load_engine  # noqa: E402
from costmodel.estimate import build_instance  # noqa: E402
from costmodel.layout import Layout  # noqa: E402
from costmodel.precision import precision  # noqa: E402
from costmodel.serving import capacity_rps, max_running  # noqa: E402
from costmodel.simulator import SchedulerConfig, find_goodput, run, setup  # noqa: E402
from costmodel.workload_dist import SimWorkload, draw  # noqa: E402
from hardware.catalog import cluster  # noqa: E402

SLO = {"ttft_ms": 1000.0, "tpot_ms": 50.0}
DATA = ROOT.parent / "shared" / "data" / "serving" / "aiconfigurator_silicon_visible.csv"


def silicon(waves: int, min_concurrency: int) -> int:
    """Simulated vs analytic closed-loop TTFT/TPOT against measured high-concurrency runs."""
    import statistics

    rows = [r for r in load_rows(DATA) if r.system in ("h100_sxm", "h200_sxm") and supported(r)
            and r.concurrency >= min_concurrency]
    errs: dict[str, list[float]] = {"sim_ttft": [], "ana_ttft": [], "sim_tpot": [], "ana_tpot": []}
    closer = 0
    t0 = time.perf_counter()
    for r in rows:
        group = cluster(SYSTEMS[r.system]).groups[0]
        inst = build_instance(load_model(r.model), r.layout, precision(PRECISION[r.precision]), group,
                              profile_for(group.device.name), load_engine(r.backend))
        est = predict(r)
        drawn = draw(SimWorkload(isl=r.isl, osl=r.osl, concurrency=r.concurrency,
                                 num_requests=waves * r.concurrency))
        res = run(setup(inst, SchedulerConfig(), drawn), drawn)
        sim_e, ana_e = ape(res.ttft_ms.mean, r.ttft_ms), ape(est.ttft_ms, r.ttft_ms)
        errs["sim_ttft"].append(sim_e)
        errs["ana_ttft"].append(ana_e)
        errs["sim_tpot"].append(ape(res.tpot_ms.mean, r.tpot_ms))
        errs["ana_tpot"].append(ape(est.tpot_ms, r.tpot_ms))
        closer += sim_e < ana_e
    elapsed = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in errs.items()}
    print(f"{len(rows)} agg rows on h100_sxm/h200_sxm with concurrency >= {min_concurrency}, {waves} waves each, "
          f"simulated in {elapsed:.1f} s")
    print(f"TTFT MdAPE: simulator {med['sim_ttft']:.1f}%, analytic {med['ana_ttft']:.1f}% "
          f"(simulator closer on {closer} of {len(rows)} rows; ratio {med['sim_ttft'] / med['ana_ttft']:.2f})")
    print(f"TPOT MdAPE: simulator {med['sim_tpot']:.1f}%, analytic {med['ana_tpot']:.1f}%")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--baseline-requests", type=int, default=500)
    ap.add_argument("--load", type=float, default=0.8, help="arrival rate as a share of analytic capacity")
    ap.add_argument("--silicon", action="store_true", help="compare closed-loop TTFT with measured runs instead")
    ap.add_argument("--waves", type=int, default=5, help="--silicon: requests per run as a multiple of clients")
    ap.add_argument("--min-concurrency", type=int, default=64, help="--silicon: smallest concurrency compared")
    args = ap.parse_args()
    if args.silicon:
        return silicon(args.waves, args.min_concurrency)
    group = cluster("dgx-h100").groups[0]
    inst = build_instance(load_model("llama-3.1-70b"), Layout(tp=4), precision("bf16"), group,
                          profile_for(group.device.name), load_engine("vllm"))
    probe = draw(SimWorkload(isl=1000, osl=1000, rate_rps=1.0, num_requests=args.requests), seed=0)
    t0 = time.perf_counter()
    s = setup(inst, SchedulerConfig(), probe)
    t_setup = time.perf_counter() - t0
    cap = capacity_rps(inst, 1000, 1000, max_running(inst, s.kv_blocks * s.sched.block_size, 1000, 1000))
    rate = args.load * cap
    t0 = time.perf_counter()
    res = run(s, probe, rate)
    t_run = time.perf_counter() - t0
    iters = len(res.iterations["start_s"])
    print(f"step table: {t_setup:.3f} s to build, max error {res.step_table_error:.3%} against step_s")
    print(f"{args.requests:,} requests at {rate:.3f} req/s ({args.load:.0%} of analytic capacity {cap:.3f}): "
          f"{t_run:.3f} s wall, {args.requests / t_run:,.0f} simulated requests/s, {iters:,} iterations "
          f"({iters / t_run:,.0f}/s); simulated {res.duration_s:,.0f} s, TTFT p50/p99 "
          f"{res.ttft_ms.p50:.0f}/{res.ttft_ms.p99:.0f} ms, TPOT p50/p99 {res.tpot_ms.p50:.1f}/"
          f"{res.tpot_ms.p99:.1f} ms")
    print(f"target: under 2 s for the run -> {'met' if t_run < 2 else 'MISSED'}")

    base = draw(SimWorkload(isl=1000, osl=1000, rate_rps=1.0, num_requests=args.baseline_requests), seed=0)
    t0 = time.perf_counter()
    ref = run(s, base, rate, exact=True)
    t_base = time.perf_counter() - t0
    fast = run(s, base, rate)
    per_base, per_fast = t_base / base.n, t_run / probe.n
    print(f"baseline (step_s per iteration, {base.n} requests): {t_base:.3f} s, {base.n / t_base:,.0f} requests/s; "
          f"speed-up {per_base / per_fast:.1f}x per request; TTFT mean {fast.ttft_ms.mean:.1f} vs "
          f"{ref.ttft_ms.mean:.1f} ms, TPOT mean {fast.tpot_ms.mean:.2f} vs {ref.tpot_ms.mean:.2f} ms (fast vs exact)")

    t0 = time.perf_counter()
    g = find_goodput(s, probe, SLO, target=0.9, hint_rps=cap * 1.2, rel_tol=0.02)
    t_good = time.perf_counter() - t0
    print(f"goodput search ({args.requests:,} requests per run, SLO {SLO}, 90% attainment, 2% tolerance): "
          f"{g.rate_rps:.3f} req/s at {g.attainment:.1%} attainment, {len(g.evaluations)} runs "
          f"({sum(a is None for _, a in g.evaluations)} stopped early) in {t_good:.2f} s; "
          f"{t_good / t_run:.1f}x one run")
    print(f"target: under 20 s for the search -> {'met' if t_good < 20 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
