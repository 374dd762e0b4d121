"""Heterogeneous SP groups (the FlexSP-style MILP) against the best single static SP degree.

    python benchmarks/sp_split.py [--model llama-3.1-70b] [--cluster dgx-h100x4] [--prompts 256]
                                  [--median 2048] [--sigma 1.3] [--seed 0]

A batch of prompts with long-tailed (log-normal) lengths, clipped to 256..128K tokens and bucketed
to the next power of two, is prefilled on single-device ranks (TP1, FP8 weights). The baseline,
measured in the same run, forms SP groups of one degree only (the best such degree, prompts still
placed optimally among its groups); the MILP also mixes degrees. Both use the same cost-model
times and memory limits (costmodel/sp.py). Prints the makespans and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from costmodel.calibration.profile import profile_for  # noqa: E402
from costmodel.catalog import model as load_model  # noqa: E402
from costmodel.engines import engine  # noqa: E402
from costmodel.estimate import build_instance  # noqa: E402
from costmodel.layout import Layout  # noqa: E402
from costmodel.precision import precision  # noqa: E402
from hardware.catalog import cluster as load_cluster  # noqa: E402
from searches.sp_milp import Bucket, best_static, problem_for, solve  # noqa: E402

MIN_LEN, MAX_LEN = 256, 131072


def long_tailed_buckets(n: int, median: float, sigma: float, seed: int) -> list[Bucket]:
    """`n` log-normal prompt lengths, clipped, counted per power-of-two bucket (rounded up)."""
    lengths = np.clip(np.random.default_rng(seed).lognormal(np.log(median), sigma, n), MIN_LEN, MAX_LEN)
    rounded = 2 ** np.ceil(np.log2(lengths)).astype(int)
    values, counts = np.unique(rounded, return_counts=True)
    return [Bucket(int(v), int(c)) for v, c in zip(values, counts, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.1-70b")
    ap.add_argument("--cluster", default="dgx-h100x4")
    ap.add_argument("--precision", default="fp8")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--median", type=float, default=2048)
    ap.add_argument("--sigma", type=float, default=1.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit-s", type=float, default=10.0, help="MILP solver limit per solve")
    args = ap.parse_args()
    group = load_cluster(args.cluster).groups[0]
    inst = build_instance(load_model(args.model), Layout(tp=1), precision(args.precision), group,
                          profile_for(group.device.name), engine("vllm"))
    buckets = long_tailed_buckets(args.prompts, args.median, args.sigma, args.seed)
    t0 = time.perf_counter()
    problem = problem_for(inst, buckets, group.num_devices)
    t1 = time.perf_counter()
    static_degree, static = best_static(problem, args.time_limit_s)
    t2 = time.perf_counter()
    flex = solve(problem, time_limit_s=args.time_limit_s)
    t3 = time.perf_counter()
    print(f"{args.model} {args.precision} on {args.cluster} ({group.num_devices} x {group.device.name}), "
          f"{args.prompts} prompts, log-normal median {args.median:g} sigma {args.sigma:g}, seed {args.seed}")
    print("bucket tokens x count:", ", ".join(f"{b.length}x{b.count}" for b in buckets))
    print(f"{'degree':>6s} " + " ".join(f"{b.length:>9d}" for b in buckets) + "   (prefill s per prompt; - = OOM)")
    for i, d in enumerate(problem.degrees):
        cells = [f"{problem.time_s[b][i]:9.3f}" if problem.fits[b][i] else f"{'-':>9s}" for b in range(len(buckets))]
        print(f"{d:6d} " + " ".join(cells))
    print(f"best static degree: sp{static_degree} ({static.label()}), makespan {static.makespan_s:.3f} s "
          f"[{t2 - t1:.2f} s to solve every static degree]")
    gap = "optimal" if flex.optimal else f"within {(flex.makespan_s / flex.bound_s - 1) * 100:.2f}% of the bound"
    print(f"MILP split:         {flex.label()}, makespan {flex.makespan_s:.3f} s ({gap}) [{t3 - t2:.2f} s to solve]")
    print(f"gain over the best static degree: {static.makespan_s / flex.makespan_s:.2f}x "
          f"(cost tables built in {t1 - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
