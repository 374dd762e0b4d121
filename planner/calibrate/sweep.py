"""What `planner calibrate` measures: shapes per op family, sized for the device kind.

The CPU sweep spans the shapes a small model served on a few cores runs (widths 256-4096, a
32k vocabulary, tens to hundreds of tokens); the GPU sweep spans serving shapes of catalog
models. `quick` keeps enough rows per family for its fit (`kernels.MIN_ROWS`) and little else.
GEMM shapes keep n, k >= 256, the envelope `costmodel.calibration.kernels` fits on.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product


@dataclass(frozen=True)
class Sweep:
    gemm: list[tuple[int, int, int]]  # m, n, k
    context: list[tuple[int, int, int, int, int]]  # batch, isl, heads, kv heads, head dim
    generation: list[tuple[int, int, int, int, int]]  # batch, context, heads, kv heads, head dim
    moe: list[tuple[int, int, int, int, int]]  # tokens, hidden, expert width, top-k, experts
    collective_bytes: list[int]
    copy_bytes: int
    reps: int
    min_round_s: float  # each timing round lasts at least this long (see measure.timed)
    rotate_bytes: int  # operands are rotated through copies totalling at least this (beyond the caches)
    collective_calls: int  # calls per timing round of a collective (the same on every rank)
    overhead_clients: tuple[int, ...]  # closed-loop clients of the runner-overhead runs
    serving_lengths: tuple[tuple[int, int], ...] = ((32, 24), (96, 32))  # (isl, osl) of those runs: two context
    # lengths, so per-sequence and attention costs part in the fit (planner.calibrate.overhead)


HEADS = [(8, 4, 32), (8, 8, 64), (16, 4, 64), (32, 8, 128)]


def cpu(quick: bool) -> Sweep:
    ms = [1, 4, 16, 64, 256] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    nks = [(256, 256), (768, 256), (1376, 256), (256, 688), (512, 512), (2048, 512), (4096, 256), (8192, 256)]
    if not quick:
        nks += [(512, 256), (1024, 1024), (4096, 1024), (1024, 4096), (3072, 1024), (16000, 256), (32000, 256),
                (2048, 2048)]
    # >= 32 rows per fitted family: the fit's 5-fold leave-out needs 20 rows outside each fold
    ctx = list(product([1, 4], [16, 32, 64, 256] if quick else [16, 32, 64, 128, 256, 512], HEADS))
    gen = list(product([1, 4, 16] if quick else [1, 2, 4, 8, 16, 32], [16, 64, 256, 1024], HEADS[:3]))
    moe_cfg = [(256, 512, 2, 8), (512, 1024, 2, 8), (256, 256, 4, 16), (512, 512, 4, 16)]
    tokens = [1, 2, 4, 8, 16, 32, 64, 128] + ([] if quick else [256, 512])
    moe = [(t, h, i, k, e) for t in tokens for h, i, k, e in moe_cfg]
    sizes = [2**p for p in range(10, 21, 3)] + [2**20] if quick else [2**p for p in range(8, 25)]
    return Sweep(
        gemm=[(m, n, k) for m in ms for n, k in nks],
        context=[(b, s, h, kv, d) for b, s, (h, kv, d) in ctx],
        generation=[(b, c, h, kv, d) for b, c, (h, kv, d) in gen],
        moe=moe, collective_bytes=sizes, copy_bytes=(64 if quick else 256) * 2**20, reps=3 if quick else 5,
        min_round_s=0.003 if quick else 0.02, rotate_bytes=64 * 2**20, collective_calls=2 if quick else 4,
        overhead_clients=(2, 8) if quick else (1, 4, 16),
        serving_lengths=((32, 16),) if quick else ((32, 24), (96, 32)),
    )


def gpu(quick: bool) -> Sweep:
    ms = [1, 16, 128, 1024, 8192] if quick else [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    nks = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336), (8192, 8192), (10240, 8192),
           (57344, 8192), (8192, 28672), (128256, 4096)]
    heads = [(32, 8, 128), (64, 8, 128), (8, 1, 128), (16, 2, 128)]
    ctx = list(product([1, 8], [128, 512, 2048, 8192] if quick else [64, 128, 256, 512, 1024, 2048, 4096, 8192],
                       heads))
    gen = list(product([1, 16, 128] if quick else [1, 4, 16, 64, 128, 256],
                       [128, 1024, 8192] if quick else [128, 512, 1024, 4096, 8192, 16384], heads))
    moe_cfg = [(4096, 14336, 2, 8), (4096, 1536, 8, 128), (2048, 768, 8, 128), (7168, 2048, 8, 256)]
    moe = [(t, h, i, k, e) for t in ([1, 16, 128, 1024, 8192] if quick else [1, 4, 16, 64, 256, 1024, 4096, 8192])
           for h, i, k, e in moe_cfg]
    sizes = [2**p for p in range(10, 27, 2)] if quick else [2**p for p in range(8, 29)]
    return Sweep(gemm=[(m, n, k) for m in ms for n, k in nks],
                 context=[(b, s, h, kv, d) for b, s, (h, kv, d) in ctx],
                 generation=[(b, c, h, kv, d) for b, c, (h, kv, d) in gen],
                 moe=moe, collective_bytes=sizes, copy_bytes=2**30, reps=5 if quick else 20,
                 min_round_s=0.002 if quick else 0.01, rotate_bytes=256 * 2**20, collective_calls=4,
                 overhead_clients=(4, 32) if quick else (4, 16, 64))


def for_device(device: str, quick: bool) -> Sweep:
    return gpu(quick) if device == "cuda" else cpu(quick)
