"""The `planner` command line: estimate, plan, report, models, clusters.

Exit codes: 0 ok; 2 bad input or usage (one line, `error: ...`, naming the field and the fix); 3 nothing
feasible (the line says what binds); 1 an internal error (one line; `--debug` shows the traceback).
Output paths are checked before any work, and output files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from costmodel import catalog as model_catalog
from costmodel.engines import ENGINES
from costmodel.models import ModelSpec
from costmodel.precision import KV_DTYPES, PRECISIONS
from hardware import catalog as hw_catalog
from hardware.errors import PlannerInputError
from hardware.loading import check_out_dir, check_out_file
from hardware.local import LOCAL
from hardware.topology import tiers_table
from planner.api import InfeasibleError, estimate, goodput, plan, simulate
from planner.emit import parse_targets
from planner.report import write_report
from planner.result import PlanResult

EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 1, 2, 3
EXIT_CODES = ("exit codes: 0 ok, 2 bad input or usage, 3 infeasible (nothing meets the objectives or fits), "
              "1 internal error (rerun with --debug for the traceback)")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _common(p: argparse.ArgumentParser, workload_required: bool = True) -> None:
    p.add_argument("--model", required=True, help="catalog name, HF id, or path to a HF config.json")
    p.add_argument("--text-only", action="store_true", help="leave a multimodal model's vision tower out of memory")
    p.add_argument("--cluster", required=True, help="catalog name (optionally xN, e.g. dgx-h100x4) or YAML path")
    p.add_argument("--isl", type=_positive_int, required=workload_required, help="input tokens per request")
    p.add_argument("--osl", type=_positive_int, required=workload_required, help="output tokens per request")
    load = p.add_mutually_exclusive_group(required=workload_required)
    load.add_argument("--concurrency", type=_positive_int, help="closed-loop clients")
    load.add_argument("--rate", type=_positive_float, help="open-loop arrivals per second")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="weights and GEMM precision (default: the checkpoint's, bf16 for 16-bit weights)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_DTYPES,
                   help="KV cache dtype (auto = 16-bit; fp8 must be asked for)")
    p.add_argument("--engine", default="vllm", choices=ENGINES, help="serving engine whose overheads apply")
    p.add_argument("--mtp", action="store_true",
                   help="decode with multi-token prediction (one draft token at DeepSeek's 85%% acceptance)")
    p.add_argument("--spec-tokens", type=_positive_int,
                   help="speculative decoding: tokens drafted per sequence per step (implies --mtp)")
    p.add_argument("--spec-acceptance", type=_positive_float,
                   help="chance a draft is accepted given the ones before it were (0-1, implies --mtp)")
    p.add_argument("--profile", help="calibration profile (JSON) to use instead of the shipped one")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _model(a: argparse.Namespace) -> str | ModelSpec:
    """The --model reference, loaded without its vision tower when --text-only asks."""
    return model_catalog.model(a.model, vision=False) if a.text_only else a.model


def _speculation(a: argparse.Namespace) -> dict[str, Any] | None:
    """--mtp / --spec-tokens / --spec-acceptance as a Speculation's fields; None when none is given."""
    if not (a.mtp or a.spec_tokens or a.spec_acceptance):
        return None
    spec: dict[str, Any] = {}
    if a.spec_tokens:
        spec["draft_tokens"] = a.spec_tokens
    if a.spec_acceptance:
        spec["acceptance"] = a.spec_acceptance
    return spec


def _workload(a: argparse.Namespace) -> dict[str, Any]:
    wl: dict[str, Any] = {"isl": a.isl, "osl": a.osl}
    wl["concurrency" if a.concurrency else "rate_rps"] = a.concurrency or a.rate
    return wl


# `planner plan` without workload flags: a short closed-loop demo load, small enough that a tiny model's
# top plans verify on a 2-core CPU in about a minute and a half (five interleaved rounds each)
PLAN_WORKLOAD = {"isl": 64, "osl": 64, "concurrency": 8}
PLAN_WORKLOAD_FLAGS = " ".join(f"--{k} {v}" for k, v in PLAN_WORKLOAD.items())


def _fill_workload(a: argparse.Namespace) -> str:
    """With no workload flag at all, PLAN_WORKLOAD, and one line saying so; with some, the rest are required."""
    defaults = PLAN_WORKLOAD_FLAGS
    if all(getattr(a, k) is None for k in ("isl", "osl", "concurrency", "rate")):
        for k, v in PLAN_WORKLOAD.items():
            setattr(a, k, v)
        return f"no workload flags given: using the defaults {defaults}"
    missing = [f"--{k}" for k in ("isl", "osl") if getattr(a, k) is None]
    if missing:
        raise PlannerInputError(f"the following arguments are required: {', '.join(missing)}; give them, or no "
                                f"workload flag at all for the defaults ({defaults})")
    if a.concurrency is None and a.rate is None:
        raise PlannerInputError(f"one of the arguments --concurrency --rate is required; give one, or no workload "
                                f"flag at all for the defaults ({defaults})")
    return ""


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="planner", description="Find the best way to serve an LLM on a cluster.", epilog=EXIT_CODES)
    ap.add_argument("--debug", action="store_true", help="on an internal error, print the traceback")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    e = sub.add_parser("estimate", help="predict one layout")
    _common(e)
    for k in ("tp", "pp", "dp", "ep", "attention-dp", "sp"):
        e.add_argument(f"--{k}", type=_positive_int, default=1, help=f"{k} degree")
    p = sub.add_parser("plan", help=f"search every layout and rank them (no workload flags: {PLAN_WORKLOAD_FLAGS})")
    _common(p, workload_required=False)
    p.add_argument("--ttft-ms", type=_positive_float, help="mean TTFT objective")
    p.add_argument("--tpot-ms", type=_positive_float, help="mean TPOT objective")
    p.add_argument("--budget-s", type=_positive_float, default=60.0, help="search time budget")
    p.add_argument("--jobs", type=_positive_int, default=1, help="parallel workers for candidate evaluation")
    p.add_argument("--search", choices=("auto", "exhaustive", "cpsat", "lp", "heuristic"), default="auto",
                   help="allocation strategy (auto: CP-SAT, then annealing where it was not proven optimal)")
    p.add_argument("--modes", type=_modes, default=("agg", "disagg"),
                   help="deployment modes to rank together: agg, disagg or agg,disagg (default; prefill/decode pools)")
    p.add_argument("--backend", choices=("loky", "threading", "ray"), default="loky",
                   help="where the capacity table runs: joblib workers (--jobs) or a Ray cluster")
    p.add_argument("--ray-address", help="Ray cluster to join with --backend ray (default: a local instance)")
    p.add_argument("--simulate-top", type=int, default=0,
                   help="re-rank the K best plans with the iteration-level simulator")
    p.add_argument("--goal", choices=("auto", "goodput", "devices", "energy", "cost"), default="auto",
                   help="pool plans: maximise goodput, or the fewest devices / least energy / cost for --rate")
    p.add_argument("--top", type=_positive_int, default=10, help="plans to print")
    p.add_argument("--out", help="folder to write plans.json into")
    p.add_argument("--emit", help="deployment files to write under --out for the best plans: a comma list of "
                                  "vllm, sglang, trtllm, dynamo, k8s, ascend")
    p.add_argument("--emit-top", type=_positive_int, default=3, help="how many of the best plans --emit writes")
    p.add_argument("--power-caps", type=_power_caps, default=[None],
                   help="also evaluate every layout at these board power caps, watts per device, e.g. "
                        "700,600,500,400 ('none' = uncapped)")
    p.add_argument("--usd-per-device-hour", type=_positive_float, default=1.0,
                   help="price per device-hour for the cost_per_mtok metric (default 1: device-hours per M tokens)")
    r = sub.add_parser("report", help="write report.html, PNG fronts and summary.md for a plans folder")
    r.add_argument("plans_dir", help="folder holding plans.json (from `planner plan ... --out`)")
    r.add_argument("--out", help="folder to write the report into (default: plans_dir)")
    m = sub.add_parser("models", help="list the model catalog")
    m.add_argument("--json", action="store_true")
    c = sub.add_parser("clusters", help="list the cluster catalog")
    c.add_argument("--json", action="store_true")
    _add_simulate(sub)
    _add_measured(sub)
    for cmd in sub.choices.values():  # `planner plan ... --debug` as well as `planner --debug plan ...`
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        cmd.epilog = EXIT_CODES
    return ap


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, float):
        return "inf" if not math.isfinite(v) else f"{v:,.{digits}f}"
    return str(v)


def _say_if_uncalibrated(cluster: str) -> None:
    """One line on stderr when `cluster` is this machine unmeasured (stdout stays the --json document)."""
    from planner.calibrate.state import note

    if cluster == LOCAL and (line := note(hw_catalog.cluster(cluster))):
        Console(stderr=True).print(f"note: {line}", style="yellow")


def cmd_estimate(a: argparse.Namespace, out: Console) -> int:
    _say_if_uncalibrated(a.cluster)
    layout = {"tp": a.tp, "pp": a.pp, "dp": a.dp, "ep": a.ep, "attention_dp": a.attention_dp, "sp": a.sp}
    e = estimate(_model(a), a.cluster, layout=layout, workload=_workload(a), precision=a.precision,
                 engine=a.engine, kv_cache_dtype=a.kv_cache_dtype, profile=a.profile,
                 speculation=_speculation(a))
    if a.json:
        print(json.dumps(e.as_dict(), indent=2))
        return 0
    t = Table(title=f"{e.model} on {e.device} x{e.devices} ({e.layout.label()}, {e.precision}, {e.engine})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in (("fits", e.fits), ("TTFT ms", e.ttft_ms), ("TPOT ms", e.tpot_ms),
                 ("output tok/s", e.output_tok_s), ("requests/s", e.requests_per_s),
                 ("mean decode batch", e.decode_batch), ("max running seqs", e.max_running),
                 ("queue ms", e.queue_ms), ("profile", e.profile)):
        t.add_row(k, _fmt(v))
    for k, v in e.memory.items():
        if k == "kv_tokens":
            t.add_row("KV capacity (tokens)", f"{int(v):,}")
        else:
            t.add_row(f"memory {k} (GiB)", _fmt(v, 2))
    out.print(t)
    for n in e.notes:
        out.print(f"note: {n}")
    return 0


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    if not modes or any(m not in ("agg", "disagg") for m in modes):
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of modes; give agg, disagg or agg,disagg")
    return modes


def _power_caps(text: str) -> list[float | None]:
    caps: list[float | None] = []
    for part in (x.strip() for x in text.split(",")):
        if part.lower() in ("none", "uncapped"):
            caps.append(None)
            continue
        try:
            caps.append(_positive_float(part))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"'{part}' is not a power cap in watts; give e.g. 700,600,500") from None
    return caps


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (terminals only) fed by `plan(progress=...)`."""
    bar = Progress(TextColumn("searching"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True, disable=not (enabled and sys.stderr.isatty()))
    task = bar.add_task("search", total=None)

    def tick(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield tick


def _plans_table(r: PlanResult, top: int) -> Table:
    t = Table(title=f"{r.request['model']} on {r.request['cluster']}: {r.search['feasible']} feasible of "
                    f"{r.search['evaluated']} layouts in {r.search['seconds']} s (ranked by {r.search['objective']})")
    for col in ("#", "layout", "replicas", "devices", "cap W", "TTFT ms", "TPOT ms", "tok/s", "goodput req/s",
                "J/tok", "score"):
        t.add_column(col, justify="right" if col not in ("layout",) else "left")
    for p in r.plans[:top]:
        m = p.metrics
        layout = p.label() if p.pools else p.layout.model_copy(update={"dp": 1}).label()
        t.add_row(str(p.rank), layout, str(p.replicas), str(p.devices),
                  "-" if p.power_cap_w is None else f"{p.power_cap_w:g}",
                  _fmt(m["ttft_ms"], 0), _fmt(m["tpot_ms"]), _fmt(m["output_tok_s"], 0),
                  _fmt(m["goodput_rps"], 2), _fmt(m.get("energy_j_per_token", math.nan), 3), f"{p.score:.4g}")
    return t


def cmd_plan(a: argparse.Namespace, out: Console) -> int:
    _say_if_uncalibrated(a.cluster)
    slo = {k: v for k, v in (("ttft_ms", a.ttft_ms), ("tpot_ms", a.tpot_ms)) if v}
    targets = parse_targets(a.emit) if a.emit else []
    if targets and not a.out:
        raise PlannerInputError("--emit writes deployment files under --out; give --out FOLDER")
    if a.out:
        check_out_dir(a.out, "--out")
    if defaults := _fill_workload(a):
        Console(stderr=True).print(defaults, style="dim")  # stderr: --json output stays one document
    try:
        with _progress(not a.json) as tick:
            r = plan(_model(a), a.cluster, slo=slo, workload=_workload(a), precision=a.precision, engine=a.engine,
                     kv_cache_dtype=a.kv_cache_dtype, profile=a.profile, budget_s=a.budget_s, n_jobs=a.jobs,
                     modes=a.modes, search=a.search, goal=a.goal, backend=a.backend, ray_address=a.ray_address,
                     simulate_top=a.simulate_top,
                     power_caps=a.power_caps, usd_per_device_hour=a.usd_per_device_hour, progress=tick,
                     speculation=_speculation(a))
    except InfeasibleError as exc:
        if a.out and exc.result is not None:
            exc.result.save(a.out)
        raise
    if a.out:
        path = r.save(a.out)
        out.print(f"wrote {path}", style="dim") if not a.json else None
    for target in targets:
        written = r.emit(target, a.out, top=a.emit_top)
        out.print(f"wrote {len(written)} {target} files under {Path(a.out) / target}", style="dim") \
            if not a.json else None
    if a.json:
        print(json.dumps(r.as_dict(), indent=2))
        return 0
    out.print(_plans_table(r, a.top))
    out.print(r.best.explain())
    for n in r.request.get("notes", []):
        out.print(f"note: {n}")
    out.print(search_summary(r.search), style="dim")
    if r.search.get("cut"):
        out.print(f"note: the search was cut short: {r.search['cut']}", style="yellow")
    return 0


def layer_mix(m: ModelSpec) -> str:
    """Token mixers by kind, e.g. '36 linear + 12 full' (one kind: just its name)."""
    kinds = Counter(layer.attention for layer in m.layer_list)
    return " + ".join(f"{n} {k}" for k, n in kinds.items()) if len(kinds) > 1 else next(iter(kinds))


def search_summary(stats: dict[str, Any]) -> str:
    """One line on how the search went: per mode, proven optimal or the gap; rows pruned by bounds."""
    parts = []
    for m in stats.get("modes", []):
        gap = stats.get(f"{m}_gap")
        state = "proven optimal" if gap == 0 else ("no plan" if gap is None else f"within {gap * 100:.2f}% (proven)")
        parts.append(f"{m} {state}")
    pruned = int(stats.get("rows_pruned", 0) or 0)
    return (f"search {stats.get('strategy')}: {', '.join(parts)}; {int(stats.get('rows', 0))} capacity rows, "
            f"{pruned} more pruned by bounds; LP bound over {stats.get('lp_bound_covers', 'the rows evaluated')}; "
            f"{stats.get('seconds')} s")


def cmd_models(a: argparse.Namespace, out: Console) -> int:
    rows = []
    for short, raw in model_catalog.entries().items():
        m = model_catalog.by_name(short)
        rows.append({"name": short, "hf_id": raw["_catalog"]["hf_id"], "family": m.family,
                     "params_b": round(m.total_params / 1e9, 2), "active_b": round(m.active_params / 1e9, 2),
                     "kv_bytes_per_token_bf16": int(m.kv_elems_per_token() * 2),
                     "layers": layer_mix(m), "weights": m.checkpoint_precision or "bf16"})
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title="model catalog")
    cols = ("name", "hf_id", "family", "params_b", "active_b", "kv_bytes_per_token_bf16", "layers", "weights")
    for col in cols:
        t.add_column(col, justify="right" if col.endswith(("_b", "bf16")) else "left")
    for r in rows:
        t.add_row(*(str(r[c]) for c in cols))
    out.print(t)
    return 0


def cmd_clusters(a: argparse.Namespace, out: Console) -> int:
    rows = []
    for name, c in hw_catalog.clusters().items():
        g = c.groups[0]
        rows.append({"name": name, "devices": c.num_devices, "accelerator": g.device.name,
                     "nodes": g.num_nodes, "domain_size": g.domain_size, "tiers": tiers_table(c),
                     "description": c.description})
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title="cluster catalog (append xN for N of them, e.g. dgx-h100x4)")
    for col in ("name", "devices", "accelerator", "scale-up", "scale-out"):
        t.add_column(col)
    for r in rows:
        up, down = r["tiers"][0], r["tiers"][1]
        t.add_row(r["name"], str(r["devices"]), r["accelerator"],
                  f"{up['link']} {up['gbps']:g} GB/s, {r['domain_size']} per domain",
                  f"{down['link']} {down['gbps']:g} GB/s")
    out.print(t)
    return 0


def cmd_report(a: argparse.Namespace, out: Console) -> int:
    if a.out:
        check_out_dir(a.out, "--out")
    written = write_report(a.plans_dir, a.out)
    for path in written.values():
        out.print(f"wrote {path}", style="dim")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "estimate": cmd_estimate, "plan": cmd_plan, "models": cmd_models, "clusters": cmd_clusters,
}
COMMANDS["report"] = cmd_report


# ---- simulate ------------------------------------------------------------------------------------
SIM_PROGRESS_MIN = 2000  # requests from which `simulate` shows a progress bar


def _length(text: str) -> int | dict[str, Any]:
    """A token count, `lognormal:MEAN:SIGMA` or `uniform:LOW:HIGH`."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return _positive_int(text)
        if parts[0] == "lognormal" and len(parts) == 3:
            return {"dist": "lognormal", "mean": _positive_float(parts[1]), "sigma": _positive_float(parts[2])}
        if parts[0] == "uniform" and len(parts) == 3:
            return {"dist": "uniform", "low": _positive_int(parts[1]), "high": _positive_int(parts[2])}
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"'{text}': {exc}") from None
    raise argparse.ArgumentTypeError(f"'{text}' is not a length; give e.g. 1024, lognormal:1500:0.8 or "
                                     "uniform:100:2000")


def _add_simulate(sub: Any) -> None:
    s = sub.add_parser("simulate", help="simulate one layout iteration by iteration (latency percentiles, "
                                        "attainment, goodput, Chrome trace)")
    s.add_argument("--model", required=True, help="catalog name, HF id, or path to a HF config.json")
    s.add_argument("--text-only", action="store_true", help="leave a multimodal model's vision tower out of memory")
    s.add_argument("--cluster", required=True, help="catalog name (optionally xN) or YAML path")
    for k in ("tp", "pp", "dp", "ep", "attention-dp", "sp"):
        s.add_argument(f"--{k}", type=_positive_int, default=1, help=f"{k} degree (dp = replicas behind the router)")
    s.add_argument("--isl", type=_length, help="input tokens: N, lognormal:MEAN:SIGMA or uniform:LOW:HIGH")
    s.add_argument("--osl", type=_length, help="output tokens: N, lognormal:MEAN:SIGMA or uniform:LOW:HIGH")
    load = s.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive_int, help="closed-loop clients")
    load.add_argument("--rate", type=_positive_float, help="open-loop mean arrivals per second")
    s.add_argument("--trace", help="replay a BurstGPT / Azure CSV or Mooncake JSONL trace (with --rate: rescaled)")
    s.add_argument("--trace-format", choices=("burstgpt", "azure", "mooncake"), help="trace format (default: guess)")
    s.add_argument("--num-requests", type=_positive_int, help="requests to simulate (default 1000 or the trace)")
    s.add_argument("--arrival", default="poisson", choices=("poisson", "gamma", "constant"), help="arrival process")
    s.add_argument("--cv", type=_positive_float, default=1.0, help="gamma arrivals: coefficient of variation")
    s.add_argument("--precision", choices=PRECISIONS,
                   help="weights and GEMM precision (default: the checkpoint's, bf16 for 16-bit weights)")
    s.add_argument("--kv-cache-dtype", default="auto", choices=KV_DTYPES, help="KV cache dtype (auto = 16-bit)")
    s.add_argument("--engine", default="vllm", choices=ENGINES, help="serving engine whose defaults apply")
    s.add_argument("--profile", help="calibration profile (JSON) to use instead of the shipped one")
    s.add_argument("--policy", choices=("chunked", "whole", "prefill_first"), help="batching policy")
    s.add_argument("--chunked-prefill-tokens", type=_positive_int, help="token budget per iteration")
    s.add_argument("--max-num-seqs", type=_positive_int, help="cap on running sequences")
    s.add_argument("--kv-blocks", type=_positive_int, help="KV blocks per instance (default: memory model)")
    s.add_argument("--router", default="round_robin", choices=("round_robin", "least_loaded"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ttft-ms", type=_positive_float, help="per-request TTFT objective for attainment")
    s.add_argument("--tpot-ms", type=_positive_float, help="per-request TPOT objective for attainment")
    s.add_argument("--e2e-ms", type=_positive_float, help="per-request end-to-end objective for attainment")
    s.add_argument("--goodput", action="store_true", help="search the highest rate meeting the SLO for --target")
    s.add_argument("--target", type=_positive_float, default=0.9, help="attainment the goodput must keep")
    s.add_argument("--chrome-trace", help="write the iteration timeline here (open in ui.perfetto.dev)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _sim_request(a: argparse.Namespace) -> dict[str, Any]:
    layout = {"tp": a.tp, "pp": a.pp, "dp": a.dp, "ep": a.ep, "attention_dp": a.attention_dp, "sp": a.sp}
    wl: dict[str, Any] = {k: v for k, v in (("isl", a.isl), ("osl", a.osl), ("concurrency", a.concurrency),
                                            ("rate_rps", a.rate), ("trace", a.trace), ("trace_format", a.trace_format),
                                            ("num_requests", a.num_requests)) if v is not None}
    if a.concurrency is None:
        wl.update({"arrival": a.arrival, "cv": a.cv})
    sched = {k: v for k, v in (("policy", a.policy), ("chunked_prefill_tokens", a.chunked_prefill_tokens),
                               ("max_num_seqs", a.max_num_seqs), ("kv_blocks", a.kv_blocks),
                               ("router", a.router)) if v is not None}
    return {"layout": layout, "workload": wl, "precision": a.precision, "engine": a.engine,
            "kv_cache_dtype": a.kv_cache_dtype, "profile": a.profile, "scheduler": sched, "seed": a.seed}


@contextmanager
def _sim_progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr for long simulations (terminals only)."""
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True, disable=not (enabled and sys.stderr.isatty()))
    task = bar.add_task(label, total=None)

    def tick(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield tick


def cmd_simulate(a: argparse.Namespace, out: Console) -> int:
    _say_if_uncalibrated(a.cluster)
    req = _sim_request(a)
    slo = {k: v for k, v in (("ttft_ms", a.ttft_ms), ("tpot_ms", a.tpot_ms), ("e2e_ms", a.e2e_ms)) if v}
    long_run = (a.num_requests or 1000) >= SIM_PROGRESS_MIN or a.trace is not None
    if a.chrome_trace:
        check_out_file(a.chrome_trace, "--chrome-trace")
    found = None
    if a.goodput:
        if not slo:
            raise PlannerInputError("--goodput needs an objective: give --ttft-ms, --tpot-ms or --e2e-ms")
        if a.target > 1:
            raise PlannerInputError(f"--target {a.target:g} must be a share of requests in (0, 1], e.g. 0.9")
        with _sim_progress("goodput search", not a.json) as tick:
            seen: list[float] = []

            def on_eval(rate: float, att: float | None) -> None:
                seen.append(rate)
                tick(len(seen), len(seen) + 1)

            found = goodput(_model(a), a.cluster, slo=slo, target=a.target, on_eval=on_eval, **req)
        res = found.result
        if res is None:
            raise InfeasibleError(f"no rate meets {slo} for {a.target:.0%} of requests, even unloaded; relax the "
                                  "objectives or use a faster layout")
    else:
        with _sim_progress("simulating", long_run and not a.json) as tick:
            res = simulate(_model(a), a.cluster, progress=tick, **req)
    if a.chrome_trace:
        path = res.save_chrome_trace(a.chrome_trace)
        if not a.json:
            out.print(f"wrote {path}", style="dim")
    summary = res.summary()
    if slo:
        summary["slo"] = slo
        summary["attainment"] = round(res.attainment(slo), 4)
    if found is not None:
        summary["goodput"] = found.as_dict()
    if a.json:
        print(json.dumps(summary, indent=2))
        return 0
    t = Table(title=f"{res.model} on {res.device} ({res.layout} x{res.replicas}, {res.engine}, "
                    f"{res.scheduler['policy']}): {summary['completed']} of {summary['requests']} requests")
    for col in ("latency ms", "p50", "p90", "p99", "mean", "max"):
        t.add_column(col, justify="left" if col == "latency ms" else "right")
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        pc = getattr(res, name)
        t.add_row(name.removesuffix("_ms").upper(), *(_fmt(getattr(pc, k)) for k in ("p50", "p90", "p99", "mean",
                                                                                   "max")))
    out.print(t)
    out.print(f"output {res.output_tok_s:,.0f} tok/s, {res.requests_per_s:.3f} req/s over {res.duration_s:,.1f} s; "
              f"{summary['iterations']:,} iterations, {res.preemptions} preemptions, {res.kv_blocks:,} KV blocks")
    if slo:
        out.print(f"SLO attainment {summary['attainment']:.1%} (every objective of {slo} met per request)")
    if found is not None:
        out.print(f"goodput {found.rate_rps:.3f} req/s at {found.attainment:.1%} attainment (target "
                  f"{found.target:.0%}; {len(found.evaluations)} runs in {found.seconds:.1f} s)")
    for n in res.notes:
        out.print(f"note: {n}")
    return 0


COMMANDS["simulate"] = cmd_simulate


# ---- calibrate and verify: measured runs on real devices (torch: the [verify] extra) -------------
TORCH_REPEATS = 5  # interleaved rounds per plan: the median of five rides out a noisy round or two


def _add_measured(sub: Any) -> None:
    c = sub.add_parser("calibrate", help="measure this machine (kernels, memory, collectives) and fit its profile; "
                                         "or fit engine constants to your own runs (--from-runs)")
    c.add_argument("--quick", action="store_true", help="a short sweep (seconds to a minute) instead of the full one")
    c.add_argument("--out", help="measuring: the folder for profile.json, cluster.yaml and kernels/ (default: the "
                                 "cache `--cluster local` reads, $LLM_PLANNER_HOME/local); --from-runs: the learned "
                                 "profile's file (default: a new file beside the profile it started from)")
    c.add_argument("--from-runs", action="append", help="CSV of your own end-to-end runs in the silicon columns (e.g. "
                                                        "the runs.csv `planner verify` writes; repeat for several): "
                                                        "learn engine constants instead of measuring")
    c.add_argument("--profile", help="with --from-runs: the profile to learn on (default: the device's current one)")
    c.add_argument("--in-place", action="store_true", help="with --from-runs: overwrite that profile instead of "
                                                           "writing a new one")
    c.add_argument("--devices", type=_positive_int, help="CPU-only machines: worker processes that stand for "
                                                         "devices (default: one per core, up to 8)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    v = sub.add_parser("verify", help="run the top plans of a plans folder for real and compare with the prediction")
    v.add_argument("plans_dir", help="folder holding plans.json (from `planner plan ... --out`)")
    v.add_argument("--top", type=_positive_int, default=3, help="how many of the best plans to run")
    v.add_argument("--runner", choices=("torch", "endpoint"), default="torch",
                   help="torch: run each plan's layout on this machine; endpoint: drive deployed servers")
    v.add_argument("--endpoint", action="append", default=[],
                   help="endpoint runner: http://host:port of plan N's OpenAI-compatible server, once per plan in rank "
                        "order (or a comma list)")
    v.add_argument("--served-model", default="", help="endpoint runner: model name the servers expect")
    v.add_argument("--requests", type=_positive_int, help="torch runner: requests per closed-loop client (default 4), "
                                                          "or in all for an open loop (default: 10 s of arrivals, at "
                                                          "most 200); endpoint runner: in all (default 64)")
    v.add_argument("--time-limit-s", type=_positive_float, default=120.0, help="limit per plan and round")
    v.add_argument("--repeats", type=_positive_int,
                   help="interleaved rounds per plan, each keeping its median round (steadier on a shared machine; "
                        f"default {TORCH_REPEATS} for the torch runner, 1 for endpoints)")
    v.add_argument("--layers", type=_positive_int, help="torch runner: layers of the model copy (default: sized to "
                                                        "this machine for plans made for another cluster)")
    v.add_argument("--out", help="folder for verify.json, verify.md and runs.csv (default: plans_dir)")
    v.add_argument("--no-calibrate", action="store_true", help="torch runner: do not run `planner calibrate --quick` "
                                                               "first on an uncalibrated machine")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table")


@contextmanager
def _stage_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A labelled progress bar on stderr (terminals only) fed by calibrate / verify."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True, disable=not (enabled and sys.stderr.isatty()))
    task = bar.add_task("starting", total=None)

    def tick(label: str, done: int, total: int) -> None:
        bar.update(task, description=label, completed=done, total=total)

    with bar:
        yield tick


def _needs_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise PlannerInputError("this command measures with torch, the optional [verify] extra; install it with "
                                "pip install 'llm-planner[verify]'") from None


def cmd_calibrate(a: argparse.Namespace, out: Console) -> int:
    if a.out:  # measuring writes a folder, --from-runs one profile file
        (check_out_file if a.from_runs else check_out_dir)(a.out, "--out")
    if a.from_runs:
        return _learn_from_runs(a, out)
    _needs_torch()
    from planner.calibrate.run import calibrate

    with _stage_bar(not a.json) as tick:
        c = calibrate(quick=a.quick, out=Path(a.out) if a.out else None, devices=a.devices, progress=tick)
    g = c.cluster.groups[0]
    fams = {k: v.model_dump() for k, v in c.profile.fit_error.items()}
    if a.json:
        print(json.dumps({"profile": str(c.profile_path), "cluster": str(c.cluster_path), "kernels": str(c.kernels_dir),
                          "seconds": round(c.seconds, 1), "devices": g.num_devices, "device": g.device.name,
                          "peak_tflops": g.device.peak_tflops, "hbm_gbps": g.device.hbm_gbps,
                          "link": g.scaleup.model_dump(exclude={"sources"}), "fit_error": fams,
                          "runner_overhead": c.profile.engines.get("vllm", None) and
                          c.profile.engines["vllm"].model_dump()}, indent=2, default=str))
        return 0
    t = Table(title=f"{c.cluster.description} ({c.seconds:.0f} s)")
    for col in ("op family", "rows", "fit MdAPE %", "leave-out MdAPE %"):
        t.add_column(col, justify="left" if col == "op family" else "right")
    for name, e in c.profile.fit_error.items():
        t.add_row(name, str(e.rows), _fmt(e.train_mdape), _fmt(e.leaveout_mdape))
    out.print(t)
    tune = c.profile.engines.get("vllm")
    out.print(f"device {g.device.name} x{g.num_devices}: {g.device.flops('bf16') / 1e9:,.1f} GFLOP/s peak (bf16), "
              f"{g.device.hbm_gbps:,.2f} GB/s memory; link {g.scaleup.name} {g.scaleup.gbps:,.3f} GB/s, "
              f"{g.scaleup.latency_us:,.1f} us")
    if tune is not None:
        out.print(f"runner overhead {tune.iteration_overhead_ms:.3f} ms per iteration + {tune.per_seq_overhead_us:.1f} "
                  f"us per sequence (iteration times fitted within {c.overhead_error_pct:.1f}% median)")
    for path in (c.profile_path, c.cluster_path, c.kernels_dir):
        out.print(f"wrote {path}", style="dim")
    return 0


def _learn_from_runs(a: argparse.Namespace, out: Console) -> int:
    from planner.calibrate.from_runs import fit_runs

    f = fit_runs(a.from_runs, a.out, a.profile, a.in_place)
    errors = {"before": f.before, "heldout": f.heldout, "after": f.after}
    if a.json:
        print(json.dumps({"profile": str(f.path) if f.path else None, "kept": f.kept, "reason": f.reason,
                          "device": f.device, "runs": len(f.rows), "started_from": f.base,
                          **{f"{k}_mdape": {"ttft_ms": v[0], "tpot_ms": v[1]} for k, v in errors.items()}},
                         indent=2))
        return 0
    t = Table(title=f"learning from {len(f.rows)} runs ({f.device}): median absolute error %")
    for col in ("metric", "current profile", "learned, held out", "learned, on its own runs"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for i, name in enumerate(("TTFT", "TPOT")):
        t.add_row(name, _fmt(f.before[i]), _fmt(f.heldout[i]), _fmt(f.after[i]))
    out.print(t)
    out.print(f.reason)
    if f.path is not None:
        out.print(f"wrote {f.path}" + ("" if a.in_place else f"; plan with --profile {f.path}"), style="dim")
    return 0


def cmd_verify(a: argparse.Namespace, out: Console) -> int:
    from planner.verify.report import METRICS, verify

    if a.runner == "torch":
        _needs_torch()
    check_out_dir(a.out or a.plans_dir, "--out")
    endpoints = [u.strip() for e in a.endpoint for u in e.split(",") if u.strip()]
    if a.runner == "torch" and a.no_calibrate:
        _say_if_uncalibrated(LOCAL)
    with _stage_bar(not a.json) as tick:
        rep = verify(a.plans_dir, a.top, a.runner, endpoints, a.served_model, a.requests, a.time_limit_s, a.layers,
                     progress=tick, repeats=a.repeats or (TORCH_REPEATS if a.runner == "torch" else 1),
                     calibrate_first=not a.no_calibrate)
    written = rep.save(Path(a.out or a.plans_dir))
    if a.json:
        print(json.dumps(rep.as_dict(), indent=2))
        return 0
    t = Table(title=f"{rep.request['model']} on {rep.request['cluster']}: predicted vs measured ({rep.runner} runner, "
                    f"{rep.seconds:.0f} s)")
    for col in ("#", "plan", "TTFT ms pred", "meas", "err %", "TPOT ms pred", "meas", "err %", "tok/s pred", "meas",
                "err %", "meas score", "notes"):
        t.add_column(col, justify="left" if col in ("plan", "notes") else "right")
    for r in rep.rows:
        cells = [str(r.run.rank), r.run.label]
        for k in METRICS:
            cells += [_fmt(r.run.predicted[k], 2), _fmt(getattr(r.measured, k), 2), _fmt(r.error(k))]
        note = r.measured.error or "; ".join([*r.run.notes, *(f"{v} {k}" for k, v in r.measured.failures.items())])
        t.add_row(*cells, _fmt(r.measured_score, 2), note)
    out.print(t)
    out.print(f"median error: TTFT {_fmt(rep.median_error('ttft_ms'))}%, TPOT {_fmt(rep.median_error('tpot_ms'))}%, "
              f"throughput {_fmt(rep.median_error('output_tok_s'))}%; predicted order "
              f"{[r.run.rank for r in rep.rows]}, measured {rep.measured_order}: "
              f"{rep.verdict()} (Kendall tau {_fmt(rep.tau, 2)})")
    for pair in rep.pairs:
        out.print(f"  {pair.describe()}")
    for path in written.values():
        out.print(f"wrote {path}", style="dim")
    return 0


COMMANDS["calibrate"] = cmd_calibrate
COMMANDS["verify"] = cmd_verify


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2) and --help (exit 0) end here
        return int(exc.code or 0)
    out = Console(width=160)
    try:
        return COMMANDS[args.command](args, out)
    except InfeasibleError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_INFEASIBLE
    except PlannerInputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug, not the user's input: one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        hint = "the traceback is above" if args.debug else "rerun with --debug for the traceback"
        sys.stderr.write(f"error: internal error ({type(exc).__name__}: {first}); {hint}\n")
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
