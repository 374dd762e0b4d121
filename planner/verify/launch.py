"""Start N local worker processes joined by torch.distributed, and collect what each returns.

Workers fork from a forkserver that has imported torch once, so a run costs a fork, not an import
(torch takes seconds to import on a small machine), and no worker inherits OpenMP state from a
parent that has already computed. Rendezvous is a file store in a fresh temporary folder, so
concurrent runs never race for a port. Each worker runs ahead of other tenants' processes and, on
a CPU with a core per worker, on cores of its own (`_prioritise`, `_pin`). A worker that raises,
dies or outlives the time limit ends the run: the others are stopped and the error names the rank
and its last traceback line.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

Target = Callable[[int, int, Any, Callable[..., None]], Any]
PRELOAD = ["torch", "torch.distributed", "planner.verify.engine"]
NICE = -20
RUN_DIR_ENV = "PLANNER_RUN_DIR"  # the run's private folder, for shared-memory buffers (planner.verify.shm)


class RunError(RuntimeError):
    """A worker failed or the run outlived its time limit; `detail` holds the worker's traceback."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def _context() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # takes effect when the server first starts
    return ctx


def _prioritise() -> None:
    """Run ahead of other tenants' processes where allowed (benchmark practice, like `nice -n -20`): on a
    shared machine their time slices would otherwise land inside our timings. Threads started later
    (OpenMP, gloo) inherit it; without the privilege the run goes on at normal priority.

    With autogroup scheduling (Linux's default for desktop and many VM kernels) the CPU is shared
    fairly between sessions first and nice only ranks processes inside one session, so a plain
    `nice` loses half a core to any other session's busy process. Each worker therefore starts a
    session of its own (a fresh autogroup, not the caller's shell) and gives that the priority."""
    with contextlib.suppress(OSError):
        os.setsid()
        Path("/proc/self/autogroup").write_text(f"{NICE}\n")
    with contextlib.suppress(OSError):
        os.nice(NICE)


def _die_with_parent() -> None:
    """End this worker when the process that launched it ends. Workers start sessions of their own
    (`_prioritise`) and the forkserver outlives a killed parent, so a `planner calibrate` stopped by a
    time limit left its sweep running on the GPU beside whatever ran next (seen on an H100: a verify
    run beside it measured 4x slow). The parent's sentinel closes when it dies, however it dies."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _pin(rank: int, world: int, threads: int) -> None:
    """Give each CPU worker cores of its own when there are enough (rank r: cores r*threads ..): a
    rank the scheduler moves, or stacks on its peer's core, stalls every collective of the step."""
    cores = sorted(os.sched_getaffinity(0))
    if world * threads <= len(cores):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cores[rank * threads:(rank + 1) * threads])


def _entry(target: Target, rank: int, world: int, arg: Any, init: str, q: Any, threads: int, device: str,
           timeout_s: float) -> None:
    import torch
    import torch.distributed as dist

    try:
        os.environ[RUN_DIR_ENV] = os.path.dirname(init.removeprefix("file://"))
        _die_with_parent()
        _prioritise()
        if device == "cpu":
            _pin(rank, world, threads)
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        if world > 1:
            dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=init, rank=rank,
                                    world_size=world, timeout=timedelta(seconds=timeout_s))

        def progress(*msg: Any) -> None:
            q.put(("progress", rank, msg))

        q.put(("result", rank, target(rank, world, arg, progress)))
    except BaseException:  # every failure goes back to the parent, which reports it
        q.put(("error", rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(target: Target, world: int, arg: Any, timeout_s: float = 120.0, threads: int = 1, device: str = "cpu",
           on_progress: Callable[[int, tuple[Any, ...]], None] | None = None) -> list[Any]:
    """Run `target(rank, world, arg, progress)` in `world` processes; their return values by rank."""
    ctx = _context()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the rendezvous file and shared buffers
    with tempfile.TemporaryDirectory(prefix="planner-run-", dir=shm) as tmp:
        q = ctx.Queue()
        init = f"file://{os.path.join(tmp, 'store')}"
        procs = [ctx.Process(target=_entry, args=(target, r, world, arg, init, q, threads, device, timeout_s),
                             daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        try:
            return _collect(procs, q, world, timeout_s, on_progress)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
            q.close()


def _collect(procs: list[Any], q: Any, world: int, timeout_s: float,
             on_progress: Callable[[int, tuple[Any, ...]], None] | None) -> list[Any]:
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(results) < world:
        try:
            kind, rank, payload = q.get(timeout=0.2)
        except queue.Empty:
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
            if dead:
                raise RunError(f"worker {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
            if time.monotonic() > deadline:
                raise RunError(f"the run took longer than its {timeout_s:g} s limit") from None
            continue
        if kind == "progress":
            if on_progress is not None:
                on_progress(rank, payload)
        elif kind == "error":
            last = payload.strip().splitlines()[-1] if payload.strip() else "unknown error"
            raise RunError(f"worker {rank} failed: {last}", payload)
        else:
            results[rank] = payload
    return [results[r] for r in range(world)]
