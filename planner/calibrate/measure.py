"""The measuring side of `planner calibrate`, run in every worker process at once.

Each rank times the torch runner's own kernels (`planner.verify.kernels`: bf16-stored weights, the
device's compute dtype) on the sweep's shapes, all ranks together behind a barrier so that every
"device" is busy as in a serving run; then collectives across the ranks (all-reduce, all-gather,
all-to-all, send/recv ping-pong) and the runner itself, serving small calibration models. Every kernel
and collective number is the fastest of `reps` timed rounds after a warm-up call (see `timed`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from costmodel.families import from_hf_config
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from planner.calibrate.sweep import Sweep
from planner.verify.engine import RunSpec, Server
from planner.verify.kernels import STORE, compute_dtype, decode_attention, linear, prefill_attention
from planner.verify.model import route, run_experts
from planner.verify.parallel import Comm, Mesh

# Small Llamas unlike the catalog's tiny models, served to learn how the runner's iterations relate to
# its kernels (the kernels' speed inside a forward pass, and the per-iteration and per-sequence work
# around them: scheduling, embedding, sampling, KV writes). Depth and vocabulary vary apart (one to
# three layers; 16k and 32k vocabularies, as Llama-2 and Mistral have), so the cost of layers, of the
# LM head and of the iteration separate in the fit; the 8-16 MB LM head of each streams through the
# caches every iteration, as a served model's weights do, so its layers do not run from a warm cache.
SERVING_LLAMA = {"model_type": "llama", "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 4,
                 "intermediate_size": 512, "tie_word_embeddings": True}
SERVING_SHAPES = ((1, 32768), (3, 16384), (2, 32768))  # (layers, vocabulary)
MAX_COPIES = 1024
MAX_CALLS = 1000  # per timing round: a call of a few microseconds needs no more to fill one


def serving_models() -> list[ModelSpec]:
    return [from_hf_config({**SERVING_LLAMA, "num_hidden_layers": n, "vocab_size": v}, name=f"calibration-llama-{n}l")
            for n, v in SERVING_SHAPES]


@dataclass(frozen=True)
class Job:
    sweep: Sweep
    device: str  # "cpu" | "cuda"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[int], Any], reps: int, dev: torch.device, min_s: float = 0.0, calls: int = 1) -> float:
    """The fastest of `reps` rounds, in mean seconds per call of `fn(i)`; each round makes as many calls
    (with i = 0, 1, 2, ...) as one timed call says fill `min_s`, or `calls` (collectives: every rank must
    make the same calls), after one warm-up call.

    A round averages over many calls and over a rotation through weight copies (`fn(i)` picks copy
    i), so weights come from memory rather than a warm cache, as they do in a whole model. Other
    processes on a shared machine only ever add time, so the fastest round is the device's own
    speed (`planner verify` keeps the best of its rounds too). The count is fixed before a round
    instead of calling until `min_s` has passed, because a GPU runs calls after they are launched:
    launching for 10 ms queued about a thousand calls, and the full H200 sweep's large GEMMs took
    15-28 s a shape instead of a fraction of a second.
    """
    fn(0)
    _sync(dev)
    if min_s > 0:
        t = time.perf_counter()
        fn(1)
        _sync(dev)
        calls = max(1, min(MAX_CALLS, math.ceil(min_s / max(time.perf_counter() - t, 1e-9))))
    out, i = [], 2
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(calls):
            fn(i)
            i += 1
        _sync(dev)
        out.append((time.perf_counter() - t) / calls)
    return min(out)


def copies(nbytes: float, sweep: Sweep) -> int:
    """How many copies of a `nbytes` operand to rotate through so they cannot all stay in cache: together
    at least `sweep.rotate_bytes`, beyond the last-level cache. Small operands need many (a 128 KiB
    weight, 512): in a served model the rest of the model evicts them between calls, and timed warm
    they would read as faster than any serving iteration runs them."""
    return int(min(MAX_COPIES, max(1, -(-sweep.rotate_bytes // max(int(nbytes), 1)))))


def _together(world: int) -> None:
    if world > 1:
        dist.barrier()


def _kernels(job: Job, world: int, dev: torch.device, tick: Callable[[str], None]) -> dict[str, list[Any]]:
    s, cdt, reps = job.sweep, compute_dtype(dev), job.sweep.reps
    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = cdt) -> torch.Tensor:
        # drawn where they are used: a GPU sweep's operands (a 22 GB expert stack) drawn on one CPU
        # thread took minutes per shape
        return torch.randn(*shape, generator=gen, device=dev, dtype=dtype)

    out: dict[str, list[Any]] = {"gemm": [], "context": [], "generation": [], "moe": []}
    wait = s.min_round_s
    for m, n, k in s.gemm:
        x = randn(m, k)
        w = randn(n, k, dtype=STORE)
        ws = [w] + [w.clone() for _ in range(copies(n * k * 2, s) - 1)]
        _together(world)
        out["gemm"].append((m, n, k, timed(lambda i, x=x, ws=ws: linear(x, ws[i % len(ws)]), reps, dev, wait)))
        del ws
        tick("GEMM")
    for b, isl, h, kv, d in s.context:
        q, kk, vv = randn(isl, h, d), randn(isl, kv, d), randn(isl, kv, d)

        def prefill(i: int, b: int = b, q: torch.Tensor = q, kk: torch.Tensor = kk, vv: torch.Tensor = vv) -> None:
            for _ in range(b):  # the runner attends prompt by prompt
                prefill_attention(q, kk, vv)

        _together(world)
        out["context"].append((b, isl, h, kv, d, timed(prefill, reps, dev, wait)))
        tick("prefill attention")
    for b, ctx, h, kv, d in s.generation:
        kc0, vc0 = randn(b, kv, ctx, d, dtype=STORE), randn(b, kv, ctx, d, dtype=STORE)
        caches = [(kc0, vc0)] + [(kc0.clone(), vc0.clone()) for _ in range(copies(b * kv * ctx * d * 4, s) - 1)]
        q, slots = randn(b, h, d), torch.arange(b, device=dev)
        lens = torch.full((b,), ctx, dtype=torch.long, device=dev)

        def decode(i: int, q: torch.Tensor = q, caches: list[tuple[torch.Tensor, torch.Tensor]] = caches,
                   slots: torch.Tensor = slots, lens: torch.Tensor = lens, ctx: int = ctx) -> None:
            kc, vc = caches[i % len(caches)]
            decode_attention(q, kc[slots, :, :ctx], vc[slots, :, :ctx], lens)  # gather from the cache, as served

        _together(world)
        out["generation"].append((b, ctx, h, kv, d, timed(decode, reps, dev, wait)))
        del caches
        tick("decode attention")
    for t, h, i, k, e in s.moe:
        x = randn(t, h)
        gu0, dn0 = randn(e, 2 * i, h, dtype=STORE), randn(e, h, i, dtype=STORE)
        experts = [(gu0, dn0)] + [(gu0.clone(), dn0.clone()) for _ in range(copies(e * 3 * h * i * 2, s) - 1)]
        weights, chosen = route(x, randn(e, h, dtype=STORE), k)

        def moe(j: int, x: torch.Tensor = x, chosen: torch.Tensor = chosen, weights: torch.Tensor = weights,
                experts: list[tuple[torch.Tensor, torch.Tensor]] = experts, e: int = e) -> None:
            gu, dn = experts[j % len(experts)]
            run_experts(x, chosen, weights, gu, dn, e)

        _together(world)
        out["moe"].append((t, h, i, k, e, timed(moe, reps, dev, wait)))
        del experts
        tick("MoE experts")
    return out


def _copy_gbps(job: Job, world: int, dev: torch.device) -> float:
    n = job.sweep.copy_bytes // 4
    src, dst = torch.ones(n, device=dev), torch.empty(n, device=dev)
    _together(world)
    return 2 * n * 4 / timed(lambda i: dst.copy_(src), job.sweep.reps, dev) / 1e9  # read + write


def _collectives(job: Job, rank: int, world: int, dev: torch.device,
                 tick: Callable[[str], None]) -> tuple[list[tuple[str, int, float]], str]:
    """Timings of each collective by message size, and how the runner's all-reduce is done."""
    out = []
    reps = max(job.sweep.reps, 5)
    comm = Comm(Mesh(rank, Layout(tp=world)), dev)  # the runner's tensor-parallel all-reduce, as it runs
    how = "shm" if comm.shm is not None else ("nccl" if dev.type == "cuda" else "gloo")
    for size in job.sweep.collective_bytes:
        elems = max(size // 2 // world * world, world)  # bf16, divisible by the group
        buf = torch.ones(elems, dtype=STORE, device=dev)
        act = torch.ones(elems, dtype=compute_dtype(dev), device=dev)
        shard = torch.ones(elems // world, dtype=STORE, device=dev)
        parts = [torch.empty_like(shard) for _ in range(world)]
        a2a = torch.empty_like(buf)
        nbytes = elems * 2
        for op, fn in (("all_reduce", lambda i, act=act: comm.tp_all_reduce(act)),
                       ("all_gather", lambda i, parts=parts, shard=shard: dist.all_gather(parts, shard)),
                       ("alltoall", lambda i, a2a=a2a, buf=buf: dist.all_to_all_single(a2a, buf))):
            _together(world)
            out.append((op, nbytes, timed(fn, reps, dev, calls=job.sweep.collective_calls)))

        def ping(i: int, buf: torch.Tensor = buf) -> None:  # rank 0 <-> 1; half the round trip is one send
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)

        _together(world)
        out.append(("send_recv", nbytes, timed(ping, reps, dev, calls=job.sweep.collective_calls) / 2))
        tick("collectives")
    return out, how


Log = list[tuple[int, int, int, int, float]]


def _serving(job: Job, rank: int, world: int) -> dict[str, list[tuple[int, int, Log]]]:
    """Per-iteration logs of the runner serving the calibration Llamas, one (model index, isl, log) per
    run: "dp", one replica per rank (the runner's own speed and overhead), "tp", tensor-parallel over
    every rank (its all-reduce as it runs inside a forward pass, waits for the slower rank included),
    and "pp", pipelined over every rank, the models with a layer per stage (the hand-over between
    stages as it runs: activations sent on, tokens sent back, each stage's own work around its layers;
    logged per micro-batch group's round)."""
    models = serving_models()
    modes = [("dp", {"dp": world}, world)]
    if world > 1 and all(m.num_heads % world == 0 and m.num_kv_heads % world == 0 for m in models):
        modes.append(("tp", {"tp": world}, 1))
    if world > 1:
        modes.append(("pp", {"pp": world}, world))  # clients split over the pp micro-batch groups
    logs: dict[str, list[tuple[int, int, Log]]] = {}
    for mode, layout, per in modes:
        runs = [(i, RunSpec(model=spec.model_dump(), layout=layout, isl=isl, osl=osl, concurrency=clients * per,
                            requests=3, device=job.device))
                for i, spec in enumerate(models) if spec.num_layers >= layout.get("pp", 1)
                for isl, osl in job.sweep.serving_lengths for clients in job.sweep.overhead_clients]
        # every run once unlogged first: on a GPU a kernel's first calls at a new shape (library heuristics,
        # lazy module loads) make iterations of 40-70 ms among ~1 ms ones, for every batch shape the runs
        # reach (a warm-up at one shape left the others cold; measured on an H200). No served model pays
        # that in its steady state, and it raised the runner's fitted overhead per iteration 2.6x.
        for _, run in runs:
            Server(replace(run, requests=1), rank, world).serve()
        logs[mode] = []
        for i, run in runs:
            server = Server(run, rank, world)
            server.serve()
            logs[mode].append((i, run.isl, server.log[len(server.log) // 4:]))  # past the staggered start
    return logs


def measure_worker(rank: int, world: int, job: Job, progress: Callable[..., None]) -> dict[str, Any]:
    """Everything one rank measures (see planner.calibrate.run for how the ranks are combined)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if job.device == "cuda" else torch.device("cpu")
    count = 0

    def tick(label: str) -> None:
        nonlocal count
        count += 1
        if rank == 0:
            progress(label, count)

    with torch.inference_mode():
        result: dict[str, Any] = {"copy_gbps": _copy_gbps(job, world, dev)}
        tick("memory bandwidth")
        result.update(_kernels(job, world, dev, tick))
        result["collectives"], result["all_reduce_by"] = _collectives(job, rank, world, dev, tick) \
            if world > 1 else ([], "")
    result["serving"] = _serving(job, rank, world)
    tick("runner overhead")
    return result


def steps(s: Sweep, world: int) -> int:
    """How many ticks `measure_worker` reports, for the progress bar."""
    return 2 + len(s.gemm) + len(s.context) + len(s.generation) + len(s.moe) + (
        len(s.collective_bytes) if world > 1 else 0)
