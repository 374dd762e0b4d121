"""The torch runner: run one plan's layout for real on this machine's devices and measure it."""

from __future__ import annotations

import math

from costmodel.engines import engine as load_engine
from hardware import local
from planner.verify.engine import RunSpec, serve_worker
from planner.verify.launch import RunError, launch
from planner.verify.measured import Measured, Timed, failed, summarize
from planner.verify.sizing import LocalRun

CLIENT_KEY = 100_000  # request ids are client * CLIENT_KEY + n (planner.verify.scheduler)
OPEN_LOOP_SECONDS = 10.0  # arrivals an open-loop round offers, at the planned rate (verify runs 5 rounds)


def device_kind() -> str:
    return "cuda" if local.gpu_names() else "cpu"


def run_spec(run: LocalRun, requests: int | None = None, seed: int = 0) -> RunSpec:
    """`requests`: per client in a closed loop (default 4), in all in an open loop (default: the
    arrivals of OPEN_LOOP_SECONDS at the planned rate, at most 200)."""
    eng = load_engine(run.engine)
    wl = run.workload
    if wl.rate_rps is not None:
        requests = requests or max(2, min(200, math.ceil(wl.rate_rps * OPEN_LOOP_SECONDS)))
    requests = requests or 4
    return RunSpec(model=run.spec.model_dump(), layout=run.layout.model_dump(), isl=wl.isl, osl=wl.osl,
                   concurrency=wl.concurrency, rate_rps=wl.rate_rps, requests=requests,
                   max_num_seqs=eng.max_num_seqs, max_num_batched_tokens=eng.max_num_batched_tokens, seed=seed,
                   device=device_kind())


def run_torch(run: LocalRun, requests: int | None = None, time_limit_s: float = 120.0, seed: int = 0) -> Measured:
    """Serve `run`'s workload with its layout in `layout.total_devices` processes; never raises for a
    failed run (the failure is the measurement)."""
    spec = run_spec(run, requests, seed)
    world = run.layout.total_devices
    device = spec.device
    threads = 1 if device == "cuda" else local.threads_per_device(local.local_cluster().num_devices)
    try:
        out = launch(serve_worker, world, spec, timeout_s=time_limit_s, threads=threads, device=device)
    except RunError as exc:
        return failed(str(exc))
    reqs = [Timed(r["rid"] // CLIENT_KEY, r["submit"], tuple(r["tokens"])) for o in out for r in o["requests"]]
    return summarize(reqs, closed_loop=run.workload.concurrency is not None)
