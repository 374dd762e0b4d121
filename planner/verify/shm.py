"""Shared-memory all-reduce and all-gather between the CPU worker processes of one host.

gloo goes through TCP loopback and a helper thread per process, so each small collective costs a
few thread wake-ups: 0.1 ms on an idle machine, milliseconds once other processes share the cores,
which swamps a small model's compute. CPU serving engines use shared memory for tensor-parallel
all-reduce instead (vLLM's CPU backend); so does this runner: each rank copies its tensor into its
slot of a shared buffer, publishes a sequence number, spins until every rank has published, then
reads all slots. Two slot sets alternate, so a rank can start the next call while others still read
this one (a rank only gets two calls ahead once every rank has finished the call before).
x86 keeps stores in order (TSO), so data written before the sequence number is seen before it;
elsewhere (and for tensors larger than MAX_BYTES) the collectives fall back to gloo.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

MAX_BYTES = 4 * 2**20  # per rank and slot
SPINS_BEFORE_YIELD = 200


def available() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and Path("/dev/shm").is_dir()


class ShmGroup:
    """Collectives among `ranks` (global ranks, all on this host); built by every member."""

    def __init__(self, ranks: list[int], rank: int, folder: str, group: dist.ProcessGroup | None) -> None:
        self.n, self.me = len(ranks), ranks.index(rank)
        self.header = 64  # one cache line of sequence numbers per rank, to avoid false sharing
        size = self.header * self.n + 2 * self.n * MAX_BYTES
        path = Path(folder) / f"shm-{'-'.join(map(str, ranks))}"
        if self.me == 0:
            with open(path, "wb") as fh:
                fh.truncate(size)
        dist.barrier(group=group)
        self.buf = torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8)
        self.flags = np.frombuffer(self.buf.numpy(), dtype=np.int64, count=self.header * self.n // 8)
        self.seq = 0
        self._views: dict[tuple[int, torch.dtype, tuple[int, ...]], list[list[torch.Tensor]]] = {}
        dist.barrier(group=group)
        if self.me == 0:
            os.unlink(path)  # the mappings stay; nothing is left behind

    def _slots(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Typed views [parity][rank] of the slots for tensors like `x` (made once: a torch view costs
        microseconds, which adds up over the all-reduces of every layer)."""
        key = (x.numel(), x.dtype, tuple(x.shape))
        views = self._views.get(key)
        if views is None:
            nbytes = x.numel() * x.element_size()
            start = self.header * self.n
            views = [[self.buf[start + (p * self.n + r) * MAX_BYTES:][:nbytes].view(x.dtype).view(x.shape)
                      for r in range(self.n)] for p in range(2)]
            self._views[key] = views
        return views

    def _exchange(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `x` (same shape and dtype on all ranks), read from shared memory."""
        self.seq += 1
        views = self._slots(x)[self.seq % 2]
        views[self.me].copy_(x)
        self.flags[self.me * 8] = self.seq  # published after the data (x86 store order)
        others = [r * 8 for r in range(self.n)]
        spins = 0
        while min(self.flags[i] for i in others) < self.seq:
            spins += 1
            if spins % SPINS_BEFORE_YIELD == 0:
                time.sleep(0)  # let a descheduled peer run on a shared core
        return views

    def fits(self, x: torch.Tensor) -> bool:
        return x.numel() * x.element_size() <= MAX_BYTES

    def all_reduce(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The sum over ranks of `x`, accumulated and returned in `dtype` (default: x's)."""
        parts = self._exchange(x)
        out = parts[0].to(dtype or x.dtype, copy=True)
        for p in parts[1:]:
            out += p
        return out

    def all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [p.clone() for p in self._exchange(x)]
