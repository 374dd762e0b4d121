"""`planner calibrate`: measure this machine, write the kernel CSVs, fit and save its profile.

1. `measure_worker` runs in one process per local device (`planner.verify.launch`).
2. The ranks' timings (median over ranks per shape) are written in the AIConfigurator per-kernel
   columns `costmodel.calibration.kernels` reads: gemm.csv, context_attention.csv,
   generation_attention.csv, moe.csv, nccl.csv; plus send_recv.csv (Vidur columns), memory.csv and
   serving.csv (the runner's iteration logs).
3. The machine is described from what was measured (peak = the best GEMM rate of the sweep, memory
   bandwidth = a large copy, link = the send/recv fit) as `--cluster local`.
4. `fit_profile(group, kernels_dir, trust="measured-here")` fits the efficiencies; the send/recv fit,
   the runner's own tuning and its in-pass all-reduce (`planner.calibrate.overhead`) and their error
   band are added; all of it is saved in one folder: the cache `--cluster local` reads, or `--out`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

from costmodel.calibration.fit import fit_profile, save_profile
from costmodel.calibration.profile import CommFit, FitError, Profile
from costmodel.models import ModelSpec
from hardware import local
from hardware.catalog import accelerator as catalog_accelerator
from hardware.catalog import resolve
from hardware.errors import PlannerInputError
from hardware.loading import write_atomic
from hardware.specs import Cluster, Link, NodeGroup
from planner.calibrate.measure import SERVING_SHAPES, Job, measure_worker, serving_models, steps
from planner.calibrate.overhead import (
    error_band,
    fit_runner,
    fit_runner_all_reduce,
    fit_runner_send_recv,
    for_every_engine,
)
from planner.calibrate.sweep import Sweep, for_device
from planner.verify.launch import launch

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Calibration:
    profile: Profile
    profile_path: Path
    cluster: Cluster
    cluster_path: Path
    kernels_dir: Path
    seconds: float
    overhead_error_pct: float


def _median_rows(per_rank: list[list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """Shape columns from rank 0, timing = the median over ranks of the same row."""
    return [(*rows[0][:-1], statistics.median(r[-1] for r in rows)) for rows in zip(*per_rank, strict=True)]


def _write(path: Path, header: Sequence[str], rows: list[Sequence[Any]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    return write_atomic(path, "\n".join(lines) + "\n")


def write_kernels(folder: Path, results: list[dict[str, Any]], device_name: str, backend: str) -> None:
    """The measurements as per-kernel CSVs (latency in ms), AIConfigurator columns."""
    import torch

    head = ["framework", "version", "device", "op_name", "kernel_source"]
    lead = ["torch", torch.__version__, device_name.replace(",", " ")]
    gemm = _median_rows([r["gemm"] for r in results])
    _write(folder / "gemm.csv", [*head, "gemm_dtype", "m", "n", "k", "latency"],
           [[*lead, "gemm", "planner.verify.kernels.linear", "bfloat16", m, n, k, t * 1e3] for m, n, k, t in gemm])
    attn = [*head, "batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "beam_width", "attn_dtype",
            "kv_cache_dtype", "step", "window_size", "latency"]
    ctx = _median_rows([r["context"] for r in results])
    _write(folder / "context_attention.csv", attn,
           [[*lead, "context_attention", "planner.verify.kernels.prefill_attention", b, s, h, kv, d, 1, "bfloat16",
             "bfloat16", 0, 0, t * 1e3] for b, s, h, kv, d, t in ctx])
    gen = _median_rows([r["generation"] for r in results])
    _write(folder / "generation_attention.csv", attn,
           [[*lead, "generation_attention", "planner.verify.kernels.decode_attention", b, c, h, kv, d, 1, "bfloat16",
             "bfloat16", 0, 0, t * 1e3] for b, c, h, kv, d, t in gen])
    moe = _median_rows([r["moe"] for r in results])
    _write(folder / "moe.csv", [*head, "moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
                                "moe_tp_size", "moe_ep_size", "distribution", "latency"],
           [[*lead, "moe", "planner.verify.model.run_experts", "bfloat16", tok, h, i, k, e, 1, 1, "balanced",
             t * 1e3] for tok, h, i, k, e, t in moe])
    world = len(results)
    if world > 1:
        coll = _median_rows([[(op, size, t) for op, size, t in r["collectives"]] for r in results])
        how = results[0].get("all_reduce_by") or backend  # the runner's TP all-reduce: shared memory on CPUs
        _write(folder / "nccl.csv", [*head, "nccl_dtype", "num_gpus", "message_size", "latency"],
               [[*lead, op, how if op == "all_reduce" else backend, "half", world, size, t * 1e3]
                for op, size, t in coll if op != "send_recv"])
        p2p = [(size, t) for op, size, t in results[0]["collectives"] if op == "send_recv"]
        _write(folder / "send_recv.csv", ["size", "num_workers", "devices_per_node", "time_stats.send_recv.median"],
               [[size, 2, world, t * 1e3] for size, t in p2p])
    _write(folder / "memory.csv", ["device", "rank", "copy_bytes", "gbps"],
           [[lead[2], i, r.get("copy_bytes", ""), r["copy_gbps"]] for i, r in enumerate(results)])
    # the runner's iteration logs, kept so its tuning can be refitted or inspected without re-measuring
    _write(folder / "serving.csv", ["mode", "rank", "run", "layers", "vocab", "isl", "decode_seqs", "prefill_tokens",
                                    "prompts", "context_sum", "seconds"],
           [[mode, rank, k, *SERVING_SHAPES[i], isl, *it] for rank, r in enumerate(results)
            for mode, logs in r["serving"].items() for k, (i, isl, log) in enumerate(logs) for it in log])


def _line(size: np.ndarray, sec: np.ndarray) -> tuple[float, float]:
    """Latency (us) and bandwidth (GB/s) of t = latency + bytes / bandwidth, fitted on log time."""
    sol = least_squares(lambda x: np.log((x[0] * 1e-6 + size / (x[1] * 1e9)) / sec), [float(sec.min() * 1e6), 1.0],
                        bounds=([0.0, 1e-4], [1e6, 1e4]), loss="soft_l1", f_scale=0.1)
    return float(sol.x[0]), float(sol.x[1])


def fit_link(folder: Path) -> tuple[float, float, FitError] | None:
    """Bandwidth (GB/s) and latency (us) of point-to-point sends over send_recv.csv, with its
    train and leave-one-out median errors."""
    p = folder / "send_recv.csv"
    if not p.exists():
        return None
    rows = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2)
    size, sec = rows[:, 0], rows[:, 3] * 1e-3
    lat, gbps = _line(size, sec)
    train = np.abs(lat * 1e-6 + size / (gbps * 1e9) - sec) / sec
    held = []
    for i in range(len(sec)):
        rest = np.arange(len(sec)) != i
        if rest.sum() >= 3:
            la, bw = _line(size[rest], sec[rest])
            held.append(abs(la * 1e-6 + size[i] / (bw * 1e9) - sec[i]) / sec[i])
    leave = float(np.median(held) * 100) if held else float(np.median(train) * 100)
    return gbps, lat, FitError(rows=len(sec), train_mdape=float(np.median(train) * 100), leaveout_mdape=leave,
                               source=p.name)


def describe(results: list[dict[str, Any]], folder: Path, device: str, gpu_names: list[str]) -> Cluster:
    """This machine as a Cluster from what was measured."""
    world = len(results)
    gemm = _median_rows([r["gemm"] for r in results])
    peak = max(2.0 * m * n * k / t for m, n, k, t in gemm) / 1e12
    gbps = statistics.median(r["copy_gbps"] for r in results)
    link = fit_link(folder)
    if link is not None and link[0] > gbps:  # sizes too small to see the bandwidth: no faster than a memory copy
        link = (gbps, link[1], link[2])
    when = date.today().isoformat()
    if device == "cuda":
        acc = catalog_accelerator(local.gpu_accelerator_name(gpu_names[0]))
        base = local.gpu_cluster(gpu_names)
        up = base.groups[0].scaleup if link is None else Link(
            name="measured-p2p", gbps=round(link[0], 3), latency_us=round(link[1], 2),
            sources={"gbps": f"measured on this machine by planner calibrate ({when}): send/recv fit",
                     "latency_us": f"measured on this machine by planner calibrate ({when}): send/recv fit"})
        group = base.groups[0].model_copy(update={"accelerator": acc, "scaleup": up})
        return Cluster(name=local.LOCAL, description=f"this machine: {world} x {gpu_names[0]} (measured {when})",
                       groups=[group])
    busy = f"with all {world} worker process(es) busy"
    acc = local.cpu_accelerator(world, peak_tflops=peak, gbps=gbps,
                                measured=f"{when}: best bf16-weight GEMM of the sweep, {peak * 1e3:.1f} GFLOP/s, "
                                         f"{busy}",
                                measured_gbps=f"{when}: copy of {results[0]['copy_bytes'] / 2**20:.0f} MiB "
                                              f"(read + write), median over ranks, {busy}")
    up = local.loopback_link(round(link[0], 4), round(link[1], 2), f"{when}: send/recv between worker processes") \
        if link else local.loopback_link()
    return local.cpu_cluster(world, acc, up, description=f"this machine ({local.cpu_name()}): {world} CPU worker "
                                                          f"process(es), {local.threads_per_device(world)} "
                                                          f"thread(s) each, measured by planner calibrate {when}")


def save_cluster(cluster: Cluster, path: Path) -> Path:
    data = json.loads(cluster.model_dump_json(exclude_defaults=True))
    return write_atomic(path, yaml.safe_dump(data, sort_keys=False, width=120))


def calibrate(quick: bool = False, out: Path | None = None, devices: int | None = None,
              progress: Progress | None = None, timeout_s: float = 900.0) -> Calibration:
    """Measure this machine and write what was measured into the folder `out`: `profile.json`,
    `cluster.yaml` and `kernels/*.csv`, nothing elsewhere. Without `out`, that folder is the cache
    `--cluster local` reads (`hardware.local.state_dir()`, `$LLM_PLANNER_HOME/local`)."""
    if out is not None and out.suffix in (".json", ".yaml", ".yml", ".csv"):
        raise PlannerInputError(f"--out {out}: give a folder; calibrate writes profile.json, cluster.yaml and "
                                "kernels/ into it")
    import time

    started = time.monotonic()
    gpus = local.gpu_names()
    device = "cuda" if gpus else "cpu"
    world = len(gpus) if gpus else local.cpu_devices(devices)
    sweep: Sweep = for_device(device, quick)
    total = steps(sweep, world) + 1
    home = out or local.state_dir()
    folder = home / "kernels"
    folder.mkdir(parents=True, exist_ok=True)

    def on_progress(rank: int, msg: tuple[Any, ...]) -> None:
        if progress is not None:
            progress(f"measuring {msg[0]}", int(msg[1]), total)

    results = launch(measure_worker, world, Job(sweep, device), timeout_s=timeout_s,
                     threads=1 if device == "cuda" else local.threads_per_device(world), device=device,
                     on_progress=on_progress)
    for r in results:
        r["copy_bytes"] = sweep.copy_bytes
    write_kernels(folder, results, gpus[0] if gpus else local.cpu_name(), "nccl" if device == "cuda" else "gloo")
    if progress is not None:
        progress("fitting", total - 1, total)
    cluster = resolve(describe(results, folder, device, gpus))
    group: NodeGroup = cluster.groups[0]
    profile = fit_profile(group, folder, None, trust="measured-here",
                          source=f"measured on this machine by planner calibrate{' --quick' if quick else ''} "
                                 f"{date.today().isoformat()}: {local.cpu_name() if not gpus else gpus[0]}, "
                                 f"{world} worker process(es); kernel CSVs in {folder}")
    link = fit_link(folder)
    if link is not None:  # the link itself is the send/recv fit: no further efficiency or latency on top
        profile = profile.model_copy(update={
            "comm": {**profile.comm, "send_recv": CommFit(eff=1.0, alpha_us=0.0)},
            "fit_error": {**profile.fit_error, "comm.send_recv": link[2]}})
    models = serving_models()

    def runs(mode: str) -> list[tuple[ModelSpec, int, list[tuple[int, int, int, int, float]]]]:
        # every rank's log of one run together (tensor-parallel ranks log the same iterations twice)
        return [(models[i], isl, [tuple(x) for r in results for x in r["serving"][mode][k][2]])
                for k, (i, isl, _) in enumerate(results[0]["serving"][mode])]

    runner = fit_runner(runs("dp"), group, profile)
    profile = for_every_engine(profile, runner.tuning)
    ratios = list(runner.ratios)
    if "tp" in results[0]["serving"]:
        profile, tp_ratios = fit_runner_all_reduce(runs("tp"), group, profile, world)
        ratios += tp_ratios
    if "pp" in results[0]["serving"]:
        profile, pp_ratios = fit_runner_send_recv(runs("pp"), group, profile, world)
        ratios += pp_ratios
    # the spread of the runner's measured / predicted speed over the calibration runs, as every local
    # prediction's uncertainty band (plan explanations say when two plans are closer than it)
    profile = for_every_engine(profile, runner.tuning.model_copy(update={"error_band": error_band(ratios)}))
    target = home / local.PROFILE_FILE
    save_profile(profile, target)
    cpath = save_cluster(cluster, home / local.CLUSTER_FILE)
    if progress is not None:
        progress("done", total, total)
    return Calibration(profile, target, cluster, cpath, folder, time.monotonic() - started, runner.error_pct)
