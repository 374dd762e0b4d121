"""Quick start: estimate one layout, then plan Llama-3.1-70B on two DGX H100 nodes.

    python examples/quickstart.py [out_dir]
"""

from __future__ import annotations

import sys

from planner import estimate, plan


def main(out_dir: str = "plans") -> None:
    e = estimate("meta-llama/Llama-3.1-70B", "dgx-h100", layout={"tp": 4},
                 workload={"isl": 1024, "osl": 1024, "concurrency": 64}, precision="fp8", engine="vllm")
    print(f"tp4 fp8, 64 clients: TTFT {e.ttft_ms:.0f} ms, TPOT {e.tpot_ms:.1f} ms, "
          f"{e.output_tok_s:.0f} output tok/s, weights {e.memory['weights']:.1f} GiB/device "
          f"(profile {e.profile})")
    r = plan("llama-3.1-70b", "dgx-h100x2", slo={"ttft_ms": 1000, "tpot_ms": 50},
             workload={"isl": 2048, "osl": 256, "rate_rps": 20}, precision="fp8")
    for p in r.plans[:3]:
        print(p.explain())
    print(f"wrote {r.save(out_dir)}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
