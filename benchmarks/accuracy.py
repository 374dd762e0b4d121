"""Accuracy of `estimate` on measured serving runs: leave-one-group-out first, the fitted set beside it.

    python benchmarks/accuracy.py [--data ../shared/data/serving/aiconfigurator_silicon_visible.csv]
                                  [--systems h100_sxm,h200_sxm,b200_sxm,gb200] [--kv measured|auto|fp8]
                                  [--jobs 2]

Uses the agg (aggregated) rows whose model, system and precision the catalog knows. The headline is
leave-one-group-out (`costmodel.calibration.logo`): each (model, system, engine, precision) group is
predicted by its engine's tuning refitted without it (the first run fits one tuning per group, cached
under .cache/logo/; later runs with the same code and data reuse them). Beside it, the same rows with
the shipped profiles (fitted on every group but one per engine: `ship.HELDOUT`), and a plain roofline
(no efficiencies, no engine overhead, no queueing). Errors are median absolute percentage errors
(MdAPE); TTFT is also given on the unsaturated rows (measured TTFT < 5 s: the rest queue for KV cache).
Layout pairs (same group and load, different layout) are ordered by TPOT and by output tok/s per device
and compared with the measured order. Last, the published max-load throughput rows
(`costmodel.calibration.maxload`) against the model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from costmodel.calibration import logo  # noqa: E402
from costmodel.calibration.maxload import ROWS as MAX_LOAD  # noqa: E402
from costmodel.calibration.maxload import predict_max_load  # noqa: E402
from costmodel.calibration.profile import CommFit, Profile, RooflineFit  # noqa: E402
from costmodel.calibration.silicon import ape, load_rows, predict, supported  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "data" / "serving" / "aiconfigurator_silicon_visible.csv"
IDEAL = RooflineFit(compute_eff=1.0, mem_eff=1.0)
ROOFLINE = Profile(gemm={"bf16": IDEAL}, attn_prefill={"bf16": IDEAL}, attn_decode={"bf16": IDEAL},
                   moe={"bf16": IDEAL}, elementwise_mem_eff=1.0, scaleout_eff=1.0,
                   comm={"all_reduce": CommFit(eff=1.0, alpha_us=0.0)}, source="ideal roofline")
SATURATED_MS = 5000.0  # measured TTFT at or above this: the run queued for KV cache


def errors(preds: Sequence[logo.Prediction]) -> tuple[int, float, float, float]:
    """(rows, TTFT MdAPE, TTFT MdAPE on unsaturated rows, TPOT MdAPE)."""
    if not preds:
        return 0, float("nan"), float("nan"), float("nan")
    ttft = [ape(p.ttft_ms, p.row.ttft_ms) for p in preds]
    unsat = [x for x, p in zip(ttft, preds, strict=True) if p.row.ttft_ms < SATURATED_MS] or [float("nan")]
    return len(preds), statistics.median(ttft), statistics.median(unsat), statistics.median(
        ape(p.tpot_ms, p.row.tpot_ms) for p in preds)


def fit_missing(rows: Sequence, train: Sequence, cache: logo.FitCache, jobs: int) -> int:
    """Fit (in `jobs` processes) every tuning the LOGO of `rows` needs and the cache lacks, on `train`;
    donors first. Returns the fits run."""
    todo = [j for j in logo.fit_jobs(rows) if cache.get(*j) is None]
    for engine, held in [j for j in todo if j[1] == logo.ALL]:
        logo.tuning_without(engine, held, train, cache)
    rest = [j for j in todo if j[1] != logo.ALL]
    if rest:
        from joblib import Parallel, delayed

        Parallel(n_jobs=jobs)(delayed(logo.tuning_without)(e, g, train, cache) for e, g in rest)
    return len(todo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--systems", default="h100_sxm,h200_sxm,b200_sxm,gb200")
    ap.add_argument("--kv", default="measured", choices=["measured", "auto", "fp8"],
                    help="KV-cache dtype: measured = FP8 for the FP8 rows, 16-bit for the rest (see "
                         "costmodel.calibration.silicon.kv_for); auto = 16-bit for every row; fp8 = FP8 for every row")
    ap.add_argument("--jobs", type=int, default=2, help="processes for the leave-one-group-out fits")
    ap.add_argument("--fitted-only", action="store_true",
                    help="skip leave-one-group-out (its columns then repeat the fitted figures): a quick look only")
    args = ap.parse_args()
    systems = set(args.systems.split(","))
    every = [r for r in load_rows(args.data) if supported(r)]
    rows = [r for r in every if r.system in systems]
    t0 = time.perf_counter()
    cache = logo.FitCache(logo.code_digest([Path(args.data)]))
    fitted_now = 0 if args.fitted_only else fit_missing(rows, every, cache, args.jobs)
    t_fit = time.perf_counter() - t0
    shipped = logo.predict_shipped(rows, args.kv)
    held = shipped if args.fitted_only else logo.predict_logo(rows, every, cache, args.kv)
    by_group: dict[str, tuple[list, list]] = {}
    for h, s in zip(held, shipped, strict=True):
        pair = by_group.setdefault(h.row.group, ([], []))
        pair[0].append(h)
        pair[1].append(s)
    head = (f"{'group':62s} {'rows':>4s} | {'LOGO TTFT':>9s} {'<5s':>6s} {'TPOT':>6s} | {'fitted TTFT':>11s} "
            f"{'<5s':>6s} {'TPOT':>6s}")
    print(head)
    print("-" * len(head))

    def line(label: str, a: Sequence[logo.Prediction], b: Sequence[logo.Prediction]) -> None:
        n, t, tu, p = errors(a)
        _, ft, ftu, fp = errors(b)
        print(f"{label:62s} {n:4d} | {t:9.1f} {tu:6.1f} {p:6.1f} | {ft:11.1f} {ftu:6.1f} {fp:6.1f}")

    for g in sorted(by_group):
        a, b = by_group[g]
        line(g + ("" if a[0].fitted else " (never fitted)"), a, b)
    print("-" * len(head))
    for label, keep in (("pooled, groups the tuning is fitted on (H100, H200)", lambda p: p.fitted),
                        ("pooled, never fitted on (B200/GB200; newer families)", lambda p: not p.fitted),
                        ("pooled, every row", lambda p: True)):
        a = [p for p in held if keep(p)]
        if a:
            line(label, a, [p for p in shipped if keep(p)])
    fitted_groups = {p.row.group for p in held if p.fitted}
    worst = max(((errors(by_group[g][0])[3], g) for g in fitted_groups), default=(float("nan"), ""))
    print(f"worst fitted group by LOGO TPOT: {worst[1]} {worst[0]:.1f}%")
    for label, preds in (("LOGO", held), ("fitted", shipped)):
        for gap in (0.0, 0.1):
            agree = logo.pair_agreement(preds, gap)
            parts = [f"{k} {a}/{n} = {100 * a / n:.1f}%" if n else f"{k} no pairs" for k, (a, n) in agree.items()]
            print(f"layout-pair order agreement, {label}, measured gap >= {gap:.0%}: {'; '.join(parts)}")
    base = [(ape(e.ttft_ms, r.ttft_ms), ape(e.tpot_ms, r.tpot_ms))
            for r in rows for e in [predict(r, args.kv, ROOFLINE)]]
    if base:
        print(f"baseline, ideal roofline, same {len(base)} rows: TTFT {statistics.median(x for x, _ in base):.1f}% "
              f"TPOT {statistics.median(y for _, y in base):.1f}%")
    ratios = []
    for row in MAX_LOAD:
        p = predict_max_load(row)
        ratios.append(p.ratio)
        print(f"max load {row.model} on {row.cluster} TP{row.tp} {row.isl}/{row.osl} {row.engine} {row.precision}: "
              f"{p.output_tok_s:,.0f} vs {row.output_tok_s:,.0f} tok/s published ({p.ratio:.2f}x, {p.running} running)")
    print(f"max load: median {statistics.median(ratios):.2f}x, lowest {min(ratios):.2f}x of published")
    print(f"{len(rows)} rows; {fitted_now} leave-one-group-out fits run in {t_fit:.0f} s (the rest cached in "
          f"{cache.folder.relative_to(ROOT)}); predictions {time.perf_counter() - t0 - t_fit:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
