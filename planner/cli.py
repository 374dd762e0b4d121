"""The `planner` command line: estimate, plan, report, models, clusters.

Bad input prints one line (`error: ...`) to stderr and exits 2; nothing feasible also exits 2
after saying what binds. Output files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from costmodel import catalog as model_catalog
from costmodel.engines import ENGINES
from costmodel.precision import KV_DTYPES, PRECISIONS
from hardware import catalog as hw_catalog
from hardware.errors import PlannerInputError
from hardware.topology import tiers_table
from planner.api import InfeasibleError, estimate, plan
from planner.emit import parse_targets
from planner.report import write_report
from planner.result import PlanResult

EXIT_BAD_INPUT = 2


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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="catalog name, HF id, or path to a HF config.json")
    p.add_argument("--cluster", required=True, help="catalog name (optionally xN, e.g. dgx-h100x4) or YAML path")
    p.add_argument("--isl", type=_positive_int, required=True, help="input tokens per request")
    p.add_argument("--osl", type=_positive_int, required=True, help="output tokens per request")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=_positive_int, help="closed-loop clients")
    load.add_argument("--rate", type=_positive_float, help="open-loop arrivals per second")
    p.add_argument("--precision", default="bf16", choices=PRECISIONS, help="weights and GEMM precision")
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_DTYPES,
                   help="KV cache dtype (auto = 16-bit; fp8 must be asked for)")
    p.add_argument("--engine", default="vllm", choices=ENGINES, help="serving engine whose overheads apply")
    p.add_argument("--profile", help="calibration profile (JSON) to use instead of the shipped one")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _workload(a: argparse.Namespace) -> dict[str, Any]:
    wl: dict[str, Any] = {"isl": a.isl, "osl": a.osl}
    wl["concurrency" if a.concurrency else "rate_rps"] = a.concurrency or a.rate
    return wl


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="planner", description="Find the best way to serve an LLM on a cluster.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    e = sub.add_parser("estimate", help="predict one layout")
    _common(e)
    for k in ("tp", "pp", "dp", "ep", "attention-dp", "sp"):
        e.add_argument(f"--{k}", type=_positive_int, default=1, help=f"{k} degree")
    p = sub.add_parser("plan", help="search every layout and rank them")
    _common(p)
    p.add_argument("--ttft-ms", type=_positive_float, help="mean TTFT objective")
    p.add_argument("--tpot-ms", type=_positive_float, help="mean TPOT objective")
    p.add_argument("--budget-s", type=_positive_float, default=60.0, help="search time budget")
    p.add_argument("--jobs", type=int, default=1, help="parallel workers for candidate evaluation")
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
    return ap


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, float):
        return "inf" if not math.isfinite(v) else f"{v:,.{digits}f}"
    return str(v)


def cmd_estimate(a: argparse.Namespace, out: Console) -> int:
    layout = {"tp": a.tp, "pp": a.pp, "dp": a.dp, "ep": a.ep, "attention_dp": a.attention_dp, "sp": a.sp}
    e = estimate(a.model, a.cluster, layout=layout, workload=_workload(a), precision=a.precision,
                 engine=a.engine, kv_cache_dtype=a.kv_cache_dtype, profile=a.profile)
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
        t.add_row(str(p.rank), p.layout.model_copy(update={"dp": 1}).label(), str(p.replicas), str(p.devices),
                  "-" if p.power_cap_w is None else f"{p.power_cap_w:g}",
                  _fmt(m["ttft_ms"], 0), _fmt(m["tpot_ms"]), _fmt(m["output_tok_s"], 0),
                  _fmt(m["goodput_rps"], 2), _fmt(m.get("energy_j_per_token", math.nan), 3), f"{p.score:.4g}")
    return t


def cmd_plan(a: argparse.Namespace, out: Console) -> int:
    slo = {k: v for k, v in (("ttft_ms", a.ttft_ms), ("tpot_ms", a.tpot_ms)) if v}
    targets = parse_targets(a.emit) if a.emit else []
    if targets and not a.out:
        raise PlannerInputError("--emit writes deployment files under --out; give --out FOLDER")
    try:
        with _progress(not a.json) as tick:
            r = plan(a.model, a.cluster, slo=slo, workload=_workload(a), precision=a.precision, engine=a.engine,
                     kv_cache_dtype=a.kv_cache_dtype, profile=a.profile, budget_s=a.budget_s, n_jobs=a.jobs,
                     power_caps=a.power_caps, usd_per_device_hour=a.usd_per_device_hour, progress=tick)
    except InfeasibleError as exc:
        if a.out:
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
    return 0


def cmd_models(a: argparse.Namespace, out: Console) -> int:
    rows = []
    for short, raw in model_catalog.entries().items():
        m = model_catalog.by_name(short)
        rows.append({"name": short, "hf_id": raw["_catalog"]["hf_id"], "family": m.family,
                     "params_b": round(m.total_params / 1e9, 2), "active_b": round(m.active_params / 1e9, 2),
                     "kv_bytes_per_token_bf16": int(m.kv_elems_per_token() * 2)})
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(title="model catalog")
    for col in ("name", "hf_id", "family", "params_b", "active_b", "kv_bytes_per_token_bf16"):
        t.add_column(col, justify="right" if col.endswith(("_b", "bf16")) else "left")
    for r in rows:
        t.add_row(*(str(r[c]) for c in ("name", "hf_id", "family", "params_b", "active_b",
                                        "kv_bytes_per_token_bf16")))
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
    written = write_report(a.plans_dir, a.out)
    for path in written.values():
        out.print(f"wrote {path}", style="dim")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "estimate": cmd_estimate, "plan": cmd_plan, "models": cmd_models, "clusters": cmd_clusters,
}
COMMANDS["report"] = cmd_report


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2) and --help (exit 0) end here
        return int(exc.code or 0)
    out = Console(width=160)
    try:
        return COMMANDS[args.command](args, out)
    except PlannerInputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
