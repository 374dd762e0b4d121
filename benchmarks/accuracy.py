"""Median absolute percentage error of `estimate` against measured serving runs.

    python benchmarks/accuracy.py [--data ../shared/data/serving/aiconfigurator_silicon_visible.csv]
                                  [--systems h100_sxm,h200_sxm] [--kv measured|auto|fp8]

Uses the agg (aggregated) rows whose model, system and precision the catalog knows. Besides each
group and all rows, it pools the groups the shipped profiles' engine tuning was not fitted on
(`costmodel.calibration.ship.HELDOUT`) and the rest. The
baseline printed beside the model is a plain roofline (no efficiencies, no engine overhead,
no queueing), evaluated in the same run, so the ratio shows what the model adds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from costmodel.calibration.profile import CommFit, Profile, RooflineFit  # noqa: E402
from costmodel.calibration.ship import FAMILIES, HELDOUT  # noqa: E402
from costmodel.calibration.silicon import ape, group_apes, load_rows, pooled, predict, supported  # noqa: E402
from costmodel.catalog import model as load_model  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "data" / "serving" / "aiconfigurator_silicon_visible.csv"
IDEAL = RooflineFit(compute_eff=1.0, mem_eff=1.0)
ROOFLINE = Profile(gemm={"bf16": IDEAL}, attn_prefill={"bf16": IDEAL}, attn_decode={"bf16": IDEAL},
                   moe={"bf16": IDEAL}, elementwise_mem_eff=1.0, scaleout_eff=1.0,
                   comm={"all_reduce": CommFit(eff=1.0, alpha_us=0.0)}, source="ideal roofline")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--systems", default="h100_sxm,h200_sxm,b200_sxm,gb200")
    ap.add_argument("--kv", default="measured", choices=["measured", "auto", "fp8"],
                    help="KV-cache dtype: measured = FP8 for the FP8 rows, 16-bit for the rest (see "
                         "costmodel.calibration.silicon.kv_for); auto = 16-bit for every row; fp8 = FP8 for every row")
    args = ap.parse_args()
    systems = set(args.systems.split(","))
    rows = [r for r in load_rows(args.data) if r.system in systems and supported(r)]
    t0 = time.perf_counter()
    apes = group_apes(rows, args.kv)
    groups, overall = [pooled(g, apes, (g,)) for g in sorted(apes)], pooled("overall", apes)
    elapsed = time.perf_counter() - t0
    base = [(ape(e.ttft_ms, r.ttft_ms), ape(e.tpot_ms, r.tpot_ms))
            for r in rows for e in [predict(r, args.kv, ROOFLINE)]]
    print(f"{'group':70s} {'rows':>5s} {'TTFT MdAPE%':>12s} {'TPOT MdAPE%':>12s}")
    for g in groups:
        print(f"{g.group:70s} {g.rows:5d} {g.ttft_mape:12.1f} {g.tpot_mape:12.1f}")
    print(f"{'overall':70s} {overall.rows:5d} {overall.ttft_mape:12.1f} {overall.tpot_mape:12.1f}")
    held = {g for groups_of in HELDOUT.values() for g in groups_of}
    newer = {r.group for r in rows if load_model(r.model).family not in FAMILIES}
    for label, part in (("held out of the shipped fit (ship.HELDOUT), pooled", held & apes.keys()),
                        ("fitted on, pooled", apes.keys() - held - newer),
                        ("families newer than the shipped fit (ship.FAMILIES), pooled", newer & apes.keys())):
        if part:
            p = pooled(label, apes, part)
            print(f"{label:70s} {p.rows:5d} {p.ttft_mape:12.1f} {p.tpot_mape:12.1f}")
    if base:
        bt = statistics.median(x for x, _ in base)
        bp = statistics.median(y for _, y in base)
        print(f"{'baseline: ideal roofline, same rows':70s} {len(base):5d} {bt:12.1f} {bp:12.1f}")
        print(f"error ratio model/baseline: TTFT {overall.ttft_mape / bt:.2f}, TPOT {overall.tpot_mape / bp:.2f}")
    print(f"{len(rows)} rows estimated in {elapsed:.2f} s ({len(rows) / elapsed:.0f} rows/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
