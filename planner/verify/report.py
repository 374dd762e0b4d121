"""`planner verify`: run the top plans for real, compare with the prediction, write the report.

For each of the `top` plans of a plans folder the runner (torch on this machine, or a deployed
endpoint per plan) measures TTFT, TPOT and output throughput. The report gives predicted vs
measured and the absolute percentage error per plan, and whether the predicted order held:
plans are ordered by measured SLO-meeting output tokens per second per device (the measured
counterpart of the planner's score), compared with the predicted rank by Kendall's tau. Each pair
of plans is also judged against the error band the predictions came with (the one `planner plan`
explains its ranking with): a pair predicted closer than the band that measures the other way round
is a swap within band, not a miss. It is written atomically as verify.json, verify.md and runs.csv (silicon columns, for
`planner calibrate --from-runs`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardware.catalog import cluster as load_cluster
from hardware.errors import PlannerInputError
from hardware.loading import read_mapping, write_atomic
from hardware.local import LOCAL, calibrated_profile
from planner.verify.measured import Measured, median_of
from planner.verify.sizing import LocalRun, local_run, replanned

METRICS = ("ttft_ms", "tpot_ms", "output_tok_s")
SILICON = ("model_path", "system", "backend", "precision", "mode", "isl", "osl", "batch_size", "tp_size", "pp_size",
           "attention_dp_size", "moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms")
# after the silicon columns, per instance: the open-loop arrival rate (batch_size, the closed-loop clients,
# is then empty), the engine the runner stood in for, the measured output and request rates (requests
# completed per second: the output rate over the output length), TTFT and TPOT
# percentiles over the measured requests, and which plan ran with how many replicas and measured requests
RUN_COLUMNS = ("request_rate_rps", "engine", "silicon_output_tok_s", "silicon_request_rate_rps",
               "silicon_ttft_p50_ms", "silicon_ttft_p90_ms", "silicon_ttft_p99_ms", "silicon_tpot_p50_ms",
               "silicon_tpot_p90_ms", "silicon_tpot_p99_ms", "replicas", "plan", "requests")
# catalog cluster -> the silicon CSV's `system` name (costmodel.calibration.silicon.SYSTEMS, reversed)
SYSTEM_OF = {"dgx-h100": "h100_sxm", "hgx-h200": "h200_sxm", "dgx-b200": "b200_sxm", "gb200-nvl72": "gb200",
             "dgx-a100": "a100_sxm"}


def system_of(cluster: str) -> str:
    """The silicon `system` of a catalog cluster name (an `xN` suffix is the same system)."""
    return SYSTEM_OF.get(cluster) or SYSTEM_OF.get(re.sub(r"x[1-9][0-9]*$", "", cluster)) or cluster


def ape(predicted: float, measured: float) -> float:
    if not (math.isfinite(predicted) and math.isfinite(measured)) or measured <= 0:
        return math.nan
    return abs(predicted - measured) / measured * 100.0


def kendall_tau(predicted_rank: Sequence[int], measured_score: Sequence[float]) -> float:
    """Kendall's tau-a between the predicted order (rank 1 best) and the measured scores (higher best)."""
    n = len(predicted_rank)
    if n < 2:
        return math.nan
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            pred = (predicted_rank[j] > predicted_rank[i]) - (predicted_rank[j] < predicted_rank[i])
            meas = (measured_score[i] > measured_score[j]) - (measured_score[i] < measured_score[j])
            s += pred * meas
    return s / (n * (n - 1) / 2)


@dataclass(frozen=True)
class Row:
    run: LocalRun
    measured: Measured
    devices: int

    @property
    def measured_score(self) -> float:
        """SLO-meeting output tokens per second per device."""
        slo = self.run.slo
        return self.measured.slo_tok_s(slo.ttft_ms, slo.tpot_ms) / self.devices if self.measured.ok else 0.0

    def error(self, metric: str) -> float:
        return ape(self.run.predicted[metric], getattr(self.measured, metric))

    def as_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return round(v, 4) if math.isfinite(v) else None

        return {"rank": self.run.rank, "label": self.run.label, "devices": self.devices,
                "as_planned": self.run.as_planned, "notes": list(self.run.notes),
                "predicted": {k: num(v) for k, v in self.run.predicted.items()},
                "measured": self.measured.as_dict(),
                "error_pct": {k: num(self.error(k)) for k in METRICS},
                "predicted_score": num(self.run.predicted_score), "measured_score": num(self.measured_score)}


@dataclass(frozen=True)
class Pair:
    """Two verified plans, `better` predicted ahead of `worse`, and what the runs said about them."""

    better: Row
    worse: Row
    band: tuple[float, float] | None  # p10/p90 of measured / predicted TPOT (the plan explanations' band)

    @property
    def predicted_gap_pct(self) -> float:
        b, w = self.better.run.predicted_score, self.worse.run.predicted_score
        return (b / w - 1) * 100 if w > 0 else math.inf

    @property
    def within_band(self) -> bool:
        """Predicted closer than the error band spans, as `planner plan` explains it: their order is uncertain."""
        lo, hi = self.band or (1.0, 1.0)
        return self.better.run.predicted_score <= self.worse.run.predicted_score * hi / lo

    @property
    def held(self) -> bool:
        return self.better.measured_score >= self.worse.measured_score

    @property
    def rounds_overlap(self) -> bool:
        """The two plans' rounds overlap in output tokens per second per device (the run cannot tell them apart)."""
        a = [t / self.better.devices for t in self.better.measured.round_tok_s]
        b = [t / self.worse.devices for t in self.worse.measured.round_tok_s]
        return bool(a and b) and min(a) <= max(b) and min(b) <= max(a)

    def describe(self) -> str:
        b, w = self.better.run.rank, self.worse.run.rank
        head = (f"#{b} over #{w}: predicted {self.predicted_gap_pct:.0f}% ahead, measured "
                f"{(self.better.measured_score / self.worse.measured_score - 1) * 100:+.0f}%"
                if self.worse.measured_score > 0 else f"#{b} over #{w}: predicted {self.predicted_gap_pct:.0f}% ahead")
        band = (f"within the calibration's x{self.band[0]:.2f}-x{self.band[1]:.2f} error band" if self.within_band
                and self.band else "beyond the error band")
        rounds = "; their rounds overlap" if self.rounds_overlap else "; their rounds do not overlap"
        return f"{head} ({'held' if self.held else 'swapped'}, {band}{rounds})"


@dataclass(frozen=True)
class Report:
    request: dict[str, Any]
    runner: str
    rows: list[Row]
    seconds: float
    notes: list[str] = field(default_factory=list)
    band: tuple[float, float] | None = None

    @property
    def pairs(self) -> list[Pair]:
        ok = sorted((r for r in self.rows if r.measured.ok), key=lambda r: r.run.rank)
        return [Pair(a, b, self.band) for i, a in enumerate(ok) for b in ok[i + 1:]]

    @property
    def order_held_beyond_band(self) -> bool:
        """Every pair predicted further apart than the error band measured in the predicted order."""
        ok = [r for r in self.rows if r.measured.ok]
        return len(ok) == len(self.rows) and all(p.held or p.within_band for p in self.pairs)

    @property
    def measured_order(self) -> list[int]:
        ok = [r for r in self.rows if r.measured.ok]
        return [r.run.rank for r in sorted(ok, key=lambda r: -r.measured_score)]

    @property
    def order_held(self) -> bool:
        ok = [r for r in self.rows if r.measured.ok]
        return len(ok) == len(self.rows) and self.measured_order == sorted(r.run.rank for r in ok)

    @property
    def tau(self) -> float:
        ok = [r for r in self.rows if r.measured.ok]
        return kendall_tau([r.run.rank for r in ok], [r.measured_score for r in ok])

    def median_error(self, metric: str) -> float:
        errs = [e for r in self.rows if math.isfinite(e := r.error(metric))]
        return statistics.median(errs) if errs else math.nan

    def verdict(self) -> str:
        if self.order_held:
            return "held"
        if self.order_held_beyond_band:
            swapped = [p for p in self.pairs if not p.held]
            return ("did not hold, within band: only " + ", ".join(f"#{p.better.run.rank}/#{p.worse.run.rank}"
                                                               for p in swapped)
                    + " swapped, predicted closer than the error band")
        return "did not hold"

    def as_dict(self) -> dict[str, Any]:
        med = {k: self.median_error(k) for k in METRICS}
        return {"request": {k: v for k, v in self.request.items() if k != "model_spec"}, "runner": self.runner,
                "seconds": round(self.seconds, 2), "plans": [r.as_dict() for r in self.rows],
                "median_error_pct": {k: (round(v, 2) if math.isfinite(v) else None) for k, v in med.items()},
                "kendall_tau": None if math.isnan(self.tau) else round(self.tau, 4), "order_held": self.order_held,
                "order_held_beyond_band": self.order_held_beyond_band, "measured_order": self.measured_order,
                "error_band": list(self.band) if self.band else None,
                "pairs": [{"better": p.better.run.rank, "worse": p.worse.run.rank,
                           "predicted_gap_pct": round(p.predicted_gap_pct, 2), "held": p.held,
                           "within_band": p.within_band, "rounds_overlap": p.rounds_overlap} for p in self.pairs],
                "notes": self.notes}

    def markdown(self) -> str:
        r0 = self.request
        lines = [f"# verify: {r0['model']} on {r0['cluster']} ({self.runner} runner, {self.seconds:.0f} s)", "",
                 "| # | plan | devices | TTFT ms pred | TTFT ms meas | err % | TPOT ms pred | TPOT ms meas | err % "
                 "| tok/s pred | tok/s meas | err % | measured score | notes |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            m = r.measured
            cells = [str(r.run.rank), r.run.label, str(r.devices)]
            for k in METRICS:
                cells += [_f(r.run.predicted[k]), _f(getattr(m, k)), _f(r.error(k), 1)]
            note = m.error or "; ".join([*r.run.notes, *m.notes, *(f"{v} {k}" for k, v in m.failures.items())])
            cells += [_f(r.measured_score, 2), note]
            lines.append("| " + " | ".join(cells) + " |")
        med = {k: _f(self.median_error(k), 1) for k in METRICS}
        lines += ["", f"Median absolute error: TTFT {med['ttft_ms']}%, TPOT {med['tpot_ms']}%, throughput "
                      f"{med['output_tok_s']}%.",
                  f"Predicted order {[r.run.rank for r in self.rows]}, measured order {self.measured_order} "
                  f"(by SLO-meeting output tok/s per device): {self.verdict()}; Kendall tau {_f(self.tau, 2)}."]
        lines += [f"- {p.describe()}" for p in self.pairs]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def runs_csv(self) -> str:
        """The measured runs in the silicon CSV columns, one instance per row (a run's replicas share its
        load evenly), closed and open loop alike, then the columns `RUN_COLUMNS` describes."""
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow((*SILICON, *RUN_COLUMNS))
        for r in self.rows:
            run, m = r.run, r.measured
            if not (m.ok and math.isfinite(m.tpot_ms)):
                continue
            lay, wl = run.layout, run.workload
            system = LOCAL if self.runner == "torch" else system_of(self.request["cluster"])
            model = run.spec.hf_id or (self.request["model"] if run.as_planned else run.spec.name)
            per = wl.per_replica(lay.dp)
            ttft = [t * 1e3 for t, _ in m.per_request]
            tpot = [t * 1e3 for _, t in m.per_request if t > 0]
            w.writerow([model, system, self.backend(run), "" if run.precision == "bf16" else run.precision, "agg",
                        wl.isl, wl.osl, per.concurrency if per.concurrency is not None else "", lay.tp, lay.pp,
                        lay.attention_dp, lay.ep, round(m.ttft_ms, 4), round(m.tpot_ms, 4),
                        _num(per.rate_rps), run.engine, _num(m.output_tok_s / lay.dp),
                        _num(m.output_tok_s / wl.osl / lay.dp),
                        *(_num(_percentile(ttft, q)) for q in (50, 90, 99)),
                        *(_num(_percentile(tpot, q)) for q in (50, 90, 99)), lay.dp, run.label, m.requests])
        return out.getvalue()

    def backend(self, run: LocalRun) -> str:
        """What served the run: the torch runner (standing in for the plan's engine), or the deployed engine."""
        return "torch" if self.runner == "torch" else run.engine

    def unwritten(self) -> list[str]:
        """Why each plan left out of runs.csv is missing from it."""
        return [f"#{r.run.rank} {r.run.label}: {r.measured.error or 'no request measured a TPOT'}"
                for r in self.rows if not (r.measured.ok and math.isfinite(r.measured.tpot_ms))]

    def save(self, out_dir: Path) -> dict[str, Path]:
        return {"json": write_atomic(out_dir / "verify.json", json.dumps(self.as_dict(), indent=2) + "\n"),
                "md": write_atomic(out_dir / "verify.md", self.markdown()),
                "runs": write_atomic(out_dir / "runs.csv", self.runs_csv())}


def _num(v: float | None) -> str | float:
    return round(v, 4) if v is not None and math.isfinite(v) else ""


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def _f(v: float, digits: int = 2) -> str:
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def load_plans(plans_dir: str | Path) -> dict[str, Any]:
    p = Path(plans_dir)
    path = p / "plans.json" if p.is_dir() else p
    if not path.is_file():
        raise PlannerInputError(f"{plans_dir}: no plans.json there; write one with `planner plan ... --out "
                                f"{plans_dir}`")
    data = read_mapping(path)
    if not data.get("plans"):
        raise PlannerInputError(f"{path}: it holds no feasible plan to verify; re-plan with looser objectives")
    return data


Runner = Callable[[LocalRun], Measured]


def verify(plans_dir: str | Path, top: int = 3, runner: str = "torch", endpoints: Sequence[str] = (),
           served_model: str = "", requests: int | None = None, time_limit_s: float = 120.0,
           layers: int | None = None, progress: Callable[[str, int, int], None] | None = None,
           repeats: int = 1, calibrate_first: bool = True) -> Report:
    """Run the `top` best plans of `plans_dir` with `runner` and compare them with their predictions.

    With `repeats` > 1 the plans run in interleaved rounds (1, 2, 3, 1, 2, 3, ...) and each keeps its
    median round, so a burst of load from other processes, or one lucky round, cannot decide the order.
    With `calibrate_first` the torch runner first measures an uncalibrated machine (`planner calibrate
    --quick`, into the cache `--cluster local` reads) and the plans are predicted again with its profile:
    an uncalibrated prediction of `local` is off by 10x and more, and checking it says nothing."""
    if top < 1:
        raise PlannerInputError(f"--top {top} must be at least 1")
    if repeats < 1:
        raise PlannerInputError(f"--repeats {repeats} must be at least 1")
    data = load_plans(plans_dir)
    request, plans = data["request"], data["plans"][:top]
    pools = [p["rank"] for p in plans if p.get("mode", "agg") != "agg"]
    if pools:
        raise PlannerInputError(f"plan #{pools[0]} is disaggregated (prefill and decode pools), which cannot be "
                                f"verified yet; verify fewer plans (--top {pools[0] - 1}) or plan with --modes agg")
    started = time.monotonic()
    notes: list[str] = []
    if runner == "torch":
        from planner.verify.runner import run_torch  # torch: the [verify] extra

        if calibrate_first and not request.get("profile") and calibrated_profile(load_cluster(LOCAL)) is None:
            notes.append(calibrate_here(progress))
        fresh, name = replanned(request) if request["cluster"] == LOCAL and layers is None else ({}, "")
        runs = [local_run(request, p, layers, fresh, name) for p in plans]

        def measure(run: LocalRun) -> Measured:
            return run_torch(run, requests, time_limit_s)
    elif runner == "endpoint":
        from planner.verify.endpoint import Endpoint, run_endpoint

        if len(endpoints) < len(plans):
            raise PlannerInputError(f"--runner endpoint needs one --endpoint URL per verified plan ({len(plans)}), "
                                    f"in rank order; got {len(endpoints)}")
        from costmodel.workload import SLO, Workload
        from planner.verify.sizing import plan_layout, plan_model

        spec = plan_model(request)
        model = served_model or spec.hf_id or request["model"]
        eps = {p["rank"]: Endpoint(u, model) for p, u in zip(plans, endpoints, strict=False)}
        runs = [LocalRun(rank=p["rank"], label=p["label"], spec=spec, layout=plan_layout(p),
                         workload=Workload(**request["workload"]), slo=SLO(**request.get("slo", {})),
                         precision=request.get("precision", "bf16").partition("+kv-")[0],
                         engine=request.get("engine", "vllm"),
                         predicted={k: float(p["metrics"][k]) for k in METRICS}, predicted_score=p["score"],
                         as_planned=True) for p in plans]

        def measure(run: LocalRun) -> Measured:
            return run_endpoint(eps[run.rank], run.workload, requests or 64, time_limit_s, vocab=spec.vocab_size)
    else:
        raise PlannerInputError(f"--runner {runner!r} is unknown; use torch or endpoint")
    rounds: dict[int, list[Measured]] = {run.rank: [] for run in runs}
    total = len(runs) * repeats
    for k in range(repeats):
        for i, run in enumerate(runs):
            if progress is not None:
                progress(f"running #{run.rank} {run.label} (round {k + 1} of {repeats})", k * len(runs) + i, total)
            rounds[run.rank].append(measure(run))
    rows = [Row(run, median_of(rounds[run.rank]), run.layout.total_devices) for run in runs]
    if progress is not None:
        progress("done", total, total)
    report = Report(request, runner, rows, time.monotonic() - started, notes, prediction_band(request, runner))
    notes += [f"not in runs.csv (nothing to learn from): {why}" for why in report.unwritten()]
    return report


def calibrate_here(progress: Callable[[str, int, int], None] | None) -> str:
    """Run `planner calibrate --quick` into the local cache; the note saying so."""
    from planner.calibrate.run import calibrate

    done = calibrate(quick=True, progress=progress)
    return (f"this machine was not calibrated: verify ran `planner calibrate --quick` first ({done.seconds:.0f} s, "
            f"profile {done.profile_path}) and predicted the plans again with it (--no-calibrate to skip)")


def prediction_band(request: dict[str, Any], runner: str) -> tuple[float, float] | None:
    """The TPOT error band (p10/p90 of measured / predicted) of the profile the predictions came from: the
    one the plans named, else this machine's for the torch runner (every run is predicted on `local`; an
    uncalibrated one's band is wide), the planned cluster's otherwise."""
    from planner.calibrate.state import profile_of

    here = load_cluster(LOCAL if runner == "torch" else request["cluster"])
    band = profile_of(here, request.get("profile")).for_engine(request.get("engine", "vllm")).error_band.get("tpot_ms")
    return (float(band[0]), float(band[1])) if band else None
