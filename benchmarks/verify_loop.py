"""The measure-and-learn loop on this machine: how far `planner verify` finds the predictions, uncalibrated,
after `planner calibrate --quick`, and after `planner calibrate --from-runs` learned from verified runs.

In a fresh scratch state folder (`LLM_PLANNER_HOME`), for tiny-llama on `--cluster local`, an open loop
(the issue's `--isl 128 --osl 32 --rate 1`) and a closed loop (`--concurrency 4`):

1. plan, then verify with `--no-calibrate`: the uncalibrated estimate;
2. `calibrate --quick` (once, timed), then verify the same plans (predicted again with its profile);
3. `calibrate --from-runs` on step 2's runs of both loops; plan with the learned profile when it was kept
   (the current one otherwise) and verify again: new runs, which the learning never saw.

Printed: per loop and stage the median TTFT / TPOT / throughput error of the verified plans, the verify
wall time, and what learning kept (held-out error before and after).

    python benchmarks/verify_loop.py [--top 2] [--repeats 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout

from planner.api import plan
from planner.calibrate.from_runs import fit_runs
from planner.calibrate.run import calibrate
from planner.verify.report import Report, verify

LOOPS = {"open": {"isl": 128, "osl": 32, "rate_rps": 1.0}, "closed": {"isl": 128, "osl": 32, "concurrency": 4}}
SLO = {"ttft_ms": 5000, "tpot_ms": 1000}
METRICS = ("ttft_ms", "tpot_ms", "output_tok_s")


def _plan(folder: Path, workload: dict[str, float], profile: Path | None = None) -> Path:
    plan("tiny-llama", "local", slo=SLO, workload=workload, profile=profile).save(folder)
    return folder


def _verify(folder: Path, top: int, repeats: int, calibrate_first: bool = False) -> tuple[Report, float]:
    t = time.monotonic()
    rep = verify(folder, top=top, repeats=repeats, calibrate_first=calibrate_first)
    rep.save(folder)
    return rep, time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per plan (verify's default)")
    ap.add_argument("--keep", help="keep the scratch folder here instead of a temporary one")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="verify-loop-"))
    os.environ["LLM_PLANNER_HOME"] = str(root / "home")
    print(f"scratch {root}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    table: list[tuple[str, str, Report, float]] = []
    for loop, wl in LOOPS.items():
        rep, s = _verify(_plan(root / f"{loop}-uncalibrated", wl), a.top, a.repeats)
        table.append((loop, "uncalibrated", rep, s))
    t = time.monotonic()
    cal = calibrate(quick=True)
    cal_s = time.monotonic() - t
    runs = []
    for loop, wl in LOOPS.items():
        folder = _plan(root / f"{loop}-calibrated", wl)
        rep, s = _verify(folder, a.top, a.repeats)
        table.append((loop, "calibrate --quick", rep, s))
        runs.append(folder / "runs.csv")
    t = time.monotonic()
    learned = fit_runs(runs)
    learn_s = time.monotonic() - t
    for loop, wl in LOOPS.items():
        rep, s = _verify(_plan(root / f"{loop}-learned", wl, learned.path), a.top, a.repeats)
        table.append((loop, "learned from runs" if learned.kept else "learning not kept", rep, s))

    print(f"\ncalibrate --quick: {cal_s:.0f} s (profile {cal.profile_path})")
    print(f"calibrate --from-runs on {len(learned.rows)} runs: {learn_s:.1f} s; {learned.reason}")
    print(f"\n{'loop':<7}{'stage':<20}{'TTFT err %':>11}{'TPOT err %':>11}{'tok/s err %':>12}{'verify s':>10}  plans")
    for loop, stage, rep, s in table:
        errs = "".join(f"{rep.median_error(k):>{11 if k != 'output_tok_s' else 12}.1f}" for k in METRICS)
        plans = ", ".join(f"{r.run.label.split(' ')[0]} {r.error('tpot_ms'):.0f}%" for r in rep.rows)
        print(f"{loop:<7}{stage:<20}{errs}{s:>10.1f}  TPOT err {plans}")
    print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
