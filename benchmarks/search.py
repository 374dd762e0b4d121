"""Search strategies against each other on the allocation problems `plan(modes=..., search=...)` solves.

Medium instances (Llama-3.1-70B and Qwen3-235B-A22B, FP8, on dgx-h100x4, agg and disagg): the
capacity table is built once (timed apart), then exhaustive enumeration, CP-SAT and auto solve the
same problem; printed: the times as ratios against CP-SAT, auto's and CP-SAT's objective against
the exhaustive optimum, and the winner's goodput over the rule-of-thumb baseline's. Targets: the
whole default `plan()` (agg + disagg, auto) for Qwen3-235B on dgx-h100x4, Llama-3.1-70B on
dgx-h100x2 and DeepSeek-R1 on cloudmatrix384: seconds, gap to the proven bound, the rule of thumb.
Large instances (DeepSeek-R1 on
cloudmatrix384, Llama-3.1-405B on gb200-nvl72x2, a mixed H100 + A100 fleet): the whole budgeted
search, printed: time to the first feasible plan, total time, CP-SAT's own gap, and the gap to the
LP bound (which also covers table rows the budget left out).

    python benchmarks/search.py [--medium-only | --targets-only | --large-only] [--budget-s 55]
        [--exhaustive-cap-s 600]
"""

from __future__ import annotations

import argparse
import time

from costmodel.calibration.profile import profile_for
from costmodel.catalog import model
from costmodel.engines import engine
from costmodel.precision import precision
from costmodel.workload import SLO, Workload
from hardware import cluster
from hardware.specs import Cluster
from planner.objective import PoolCapacity, ServingObjective
from searches import Budget, Space, allocate
from searches.placement import UNIT_RPS, Goal, shapes
from searches.pools import Variant, run

WL = Workload(isl=2048, osl=256, rate_rps=1.0)  # rates are solved for; the goal is cluster goodput
SLO_ = SLO(ttft_ms=1000, tpot_ms=50)


def mixed_fleet() -> Cluster:
    """Four DGX H100 and four DGX A100 nodes, from the catalog's groups."""
    return Cluster(name="h100x4+a100x4", description="mixed fleet",
                   groups=[cluster("dgx-h100x4").groups[0], cluster("dgx-a100x4").groups[0]])


def search(name: str, clu: Cluster, prec: str, modes: tuple[str, ...], strategy: str, budget_s: float):
    spec = model(name)
    objectives, variants = [], []
    for gi, g in enumerate(clu.groups):
        objectives.append(ServingObjective(spec, g, precision(prec), profile_for(g.device.name, None),
                                           engine("vllm"), WL, SLO_))
        variants.append(Variant(gi, "", tuple(Space(spec, g).layouts())))
    out = min((g.scaleout for g in clu.groups), key=lambda link: link.gbps)
    return run(shapes(clu), variants, PoolCapacity(tuple(objectives), out), modes, Goal("goodput"), strategy,
               Budget(time_s=budget_s, n_jobs=2), top=1)


def medium(cap_s: float) -> None:
    print("medium: table once, then exhaustive, CP-SAT and auto on the same problem (goal: cluster goodput)")
    print(f"{'model':18} {'mode':6} {'configs':>7} {'cpsat s':>8} {'exh/cpsat':>9} {'auto/cpsat':>10} "
          f"{'cpsat gap %':>11} {'auto gap %':>10}  winner")
    for name in ("llama-3.1-70b", "qwen3-235b-a22b"):
        found = search(name, cluster("dgx-h100x4"), "fp8", ("agg", "disagg"), "lp", 600)
        best_goodput = 0.0
        for mode, p in found.problems.items():
            times, got = {}, {}
            for strategy, budget in (("exhaustive", Budget(time_s=cap_s)), ("cpsat", Budget(time_s=600)),
                                     ("auto", Budget(time_s=600))):
                t = time.monotonic()
                sol = allocate(p, budget, strategy, top=1)
                times[strategy], got[strategy] = time.monotonic() - t, sol[0]
            opt = got["exhaustive"].value.goodput
            done = "" if got["exhaustive"].optimal else " (exhaustive stopped at the cap)"
            best_goodput = max(best_goodput, got["auto"].value.goodput * UNIT_RPS)
            gap = {k: (opt - got[k].value.goodput) / opt * 100 if opt else 0.0 for k in ("cpsat", "auto")}
            print(f"{name:18} {mode:6} {len(p.configs):7d} {times['cpsat']:8.2f} "
                  f"{times['exhaustive'] / times['cpsat']:8.1f}x {times['auto'] / times['cpsat']:9.2f}x "
                  f"{gap['cpsat']:11.2f} {gap['auto']:10.2f}  {got['auto'].value.goodput * UNIT_RPS:.2f} req/s{done}")
        base = found.baseline.value.goodput * UNIT_RPS if found.baseline else 0.0
        print(f"{name:18} baseline (rule of thumb) {base:.2f} req/s; winner / baseline = "
              f"{best_goodput / base if base else float('nan'):.2f}x")


def targets() -> None:
    from planner import plan

    print("targets: the default plan() (agg + disagg, auto), FP8/INT8, 2048/256 tokens, TTFT 1 s, TPOT 50 ms")
    print("(budget_s=600: the wall clock is a safety limit; on a shared machine CPU seconds are the fair figure)")
    print(f"{'instance':34} {'wall s':>7} {'cpu s':>6} {'rows':>5} {'pruned':>6} {'gap %':>6} {'x rule':>7}  best")
    for name, clu, prec in (("qwen3-235b-a22b", "dgx-h100x4", "fp8"), ("llama-3.1-70b", "dgx-h100x2", "fp8"),
                            ("deepseek-r1", "cloudmatrix384", "int8")):
        t, cpu = time.monotonic(), time.process_time()
        r = plan(name, clu, slo={"ttft_ms": 1000, "tpot_ms": 50}, workload={"isl": 2048, "osl": 256, "rate_rps": 1.0},
                 precision=prec, goal="goodput", budget_s=600)
        cpu = time.process_time() - cpu
        s = r.search
        gaps = [s[f"{m}_gap"] for m in s["modes"] if s.get(f"{m}_gap") is not None]
        print(f"{name + ' on ' + clu:34} {time.monotonic() - t:7.1f} {cpu:6.1f} {int(s['rows']):5d} "
              f"{int(s['rows_pruned']):6d} "
              f"{max(gaps) * 100 if gaps else float('nan'):6.2f} {s.get('baseline_ratio', float('nan')):7.2f}  "
              f"{r.best.label()} ({r.best.metrics['goodput_rps']:.2f} req/s){' CUT: ' + s['cut'] if s['cut'] else ''}")


def large(budget_s: float) -> None:
    print(f"large: the whole budgeted search ({budget_s:g} s, 2 jobs, CP-SAT, agg + disagg)")
    print(f"{'instance':32} {'first feasible s':>16} {'total s':>8} {'rows':>6} {'skipped':>7} {'cpsat gap %':>11} "
          f"{'LP gap %':>8}  best")
    cases = (("deepseek-r1", "cloudmatrix384", "int8"), ("llama-3.1-405b", "gb200-nvl72x2", "fp8"),
             ("llama-3.1-70b", mixed_fleet(), "fp8"))
    for name, clu_ref, prec in cases:
        clu = cluster(clu_ref) if isinstance(clu_ref, str) else clu_ref
        found = search(name, clu, prec, ("agg", "disagg"), "cpsat", budget_s)
        s = found.stats
        best = max((sol[0] for sol in found.solved.values() if sol), key=lambda x: x.value.goodput, default=None)
        got = best.value.goodput * UNIT_RPS if best else 0.0
        mode = next(m for m, sol in found.solved.items() if sol and sol[0] is best) if best else "-"
        bound = max(b for b in (s.get("agg_lp_bound_rps"), s.get("disagg_lp_bound_rps")) if b is not None)
        gaps = [s.get(f"{m}_gap") for m in found.solved if s.get(f"{m}_gap") is not None]
        print(f"{name + ' on ' + clu.name:32} {s['first_feasible_s']:16.2f} {s['seconds']:8.1f} "
              f"{int(s['rows']):6d} {int(s['rows_skipped']):7d} {max(gaps) * 100 if gaps else float('nan'):11.2f} "
              f"{(bound - got) / bound * 100:8.2f}  {got:.2f} req/s ({mode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medium-only", action="store_true")
    ap.add_argument("--targets-only", action="store_true")
    ap.add_argument("--large-only", action="store_true")
    ap.add_argument("--budget-s", type=float, default=55.0)
    ap.add_argument("--exhaustive-cap-s", type=float, default=600.0)
    a = ap.parse_args()
    if not (a.large_only or a.targets_only):
        medium(a.exhaustive_cap_s)
    if not (a.medium_only or a.large_only):
        targets()
    if not (a.medium_only or a.targets_only):
        large(a.budget_s)


if __name__ == "__main__":
    main()
