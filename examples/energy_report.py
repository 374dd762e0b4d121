"""Energy-vs-latency report: Llama-3.1-70B (FP8) on two DGX H100 nodes, every layout at four power caps.

    python examples/energy_report.py [out_dir]

Writes plans.json, report.html, summary.md and front_*.png into out_dir (default plans-energy/) and
prints the energy ratio between the latency-optimal and the energy-optimal plan on the
energy-per-token vs TPOT front.
"""

from __future__ import annotations

import sys

from planner import plan
from planner.report import load, write_report


def main(out_dir: str = "plans-energy") -> None:
    r = plan("llama-3.1-70b", "dgx-h100x2", slo={"ttft_ms": 1000, "tpot_ms": 50},
             workload={"isl": 2048, "osl": 256, "rate_rps": 10}, precision="fp8",
             power_caps=(700, 600, 500, 400), usd_per_device_hour=2.5, budget_s=600)
    r.save(out_dir)
    written = write_report(out_dir)
    print(f"{r.search['feasible']} feasible plans of {r.search['evaluated']} evaluated in {r.search['seconds']} s")
    for p in r.pareto:
        m = p.metrics
        print(f"  front: {p.label():40s} TPOT {m['tpot_ms']:5.1f} ms  {m['energy_j_per_token']:.3f} J/token  "
              f"{m['power_w'] / 1e3:5.2f} kW  ${m['cost_per_mtok']:.2f}/M tok")
    ratio = load(out_dir).energy_ratio()
    if ratio is not None:
        print(f"latency-optimal {ratio.latency_optimal['label']} uses {ratio.ratio:.2f}x the energy per token of "
              f"energy-optimal {ratio.energy_optimal['label']} ({ratio.saving:.0%} less)")
    print("wrote " + ", ".join(str(p) for p in written.values()))


if __name__ == "__main__":
    main(*sys.argv[1:2])
