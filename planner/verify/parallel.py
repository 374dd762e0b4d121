"""The plan's layout as torch.distributed process groups, and the collectives the model calls.

Ranks are laid out replica-major: replica r, pipeline stage s and rank g inside the stage's
`tp x attention_dp` group sit at `(r * pp + s) * G + g`. Tensor parallelism all-reduces the
attention and MLP outputs in bf16 (what the cost model counts); expert parallelism dispatches and
combines (token, expert) rows with all-to-all; pipeline stages exchange activations with
point-to-point sends; replicas never talk. gloo on CPUs (tensor-parallel all-reduce through shared
memory, planner.verify.shm), NCCL on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from costmodel.instance import stage_layers
from costmodel.layout import Layout
from planner.verify.kernels import STORE
from planner.verify.launch import RUN_DIR_ENV
from planner.verify.shm import ShmGroup
from planner.verify.shm import available as shm_available

if TYPE_CHECKING:
    from planner.verify.model import Block, Shard


@dataclass(frozen=True)
class Mesh:
    """Where one process sits in the plan's layout."""

    rank: int
    layout: Layout

    @property
    def group_size(self) -> int:
        return self.layout.tp * self.layout.attention_dp

    @property
    def world(self) -> int:
        return self.layout.total_devices

    @property
    def replica(self) -> int:
        return self.rank // (self.layout.pp * self.group_size)

    @property
    def stage(self) -> int:
        return self.rank // self.group_size % self.layout.pp

    @property
    def g(self) -> int:
        return self.rank % self.group_size

    @property
    def tp_rank(self) -> int:
        return self.g % self.layout.tp

    @property
    def adp_rank(self) -> int:
        return self.g // self.layout.tp

    def at(self, stage: int, g: int | None = None) -> int:
        """Global rank of rank `g` (default: this one's) of `stage` in this replica."""
        return (self.replica * self.layout.pp + stage) * self.group_size + (self.g if g is None else g)

    def stage_ranks(self, replica: int, stage: int) -> list[int]:
        base = (replica * self.layout.pp + stage) * self.group_size
        return list(range(base, base + self.group_size))

    def shard(self, num_layers: int) -> Shard:
        from planner.verify.model import Shard

        lay = self.layout
        bounds = list(accumulate(stage_layers(num_layers, lay.pp), initial=0))  # as the cost model splits them
        ep_rank = self.g // (self.group_size // lay.ep)
        return Shard(tp=lay.tp, tp_rank=self.tp_rank, layers=(bounds[self.stage], bounds[self.stage + 1]),
                     first=self.stage == 0, last=self.stage == lay.pp - 1, ep=lay.ep, ep_rank=ep_rank,
                     moe_tp=lay.moe_tp, moe_tp_rank=self.g % lay.moe_tp)


class Comm:
    """The collectives of one rank; built after `init_process_group` by every rank in the same order."""

    def __init__(self, mesh: Mesh, device: torch.device) -> None:
        self.mesh, self.device = mesh, device
        lay = mesh.layout
        self.group = None
        for r in range(lay.dp):  # every rank must create every group, in the same order
            for s in range(lay.pp):
                ranks = mesh.stage_ranks(r, s)
                g = dist.new_group(ranks) if len(ranks) > 1 else None
                if mesh.rank in ranks:
                    self.group = g
        self.size = mesh.group_size
        self._pending: list[tuple[dist.Work, torch.Tensor]] = []
        self.shm: ShmGroup | None = None
        folder = os.environ.get(RUN_DIR_ENV)
        if self.size > 1 and device.type == "cpu" and folder and shm_available():
            self.shm = ShmGroup(mesh.stage_ranks(mesh.replica, mesh.stage), mesh.rank, folder, self.group)

    # ---- tensor parallel ----------------------------------------------------------------
    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:  # group None would mean the whole world
            return x
        y = x.to(STORE)
        if self.shm is not None and self.shm.fits(y):
            return self.shm.all_reduce(y, x.dtype)
        dist.all_reduce(y, group=self.group)
        return y.to(x.dtype)

    def tp_all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x) if self.mesh.layout.tp > 1 else x

    def argmax(self, logits: torch.Tensor, vocab_start: int) -> torch.Tensor:
        """Greedy token over the vocabulary split across tp ranks."""
        best, idx = logits.float().max(dim=-1)
        if self.mesh.layout.tp == 1:
            return idx + vocab_start
        mine = torch.stack([best.double(), (idx + vocab_start).double()])
        if self.shm is not None and self.shm.fits(mine):
            parts = self.shm.all_gather(mine)
        else:
            parts = [torch.empty_like(mine) for _ in range(self.size)]
            dist.all_gather(parts, mine, group=self.group)
        both = torch.stack(parts)  # [tp, 2, n]
        pick = both[:, 0].argmax(dim=0)
        return both[:, 1].gather(0, pick[None])[0].long()

    # ---- experts ------------------------------------------------------------------------
    def gather_rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every group rank's rows of `x` (row counts may differ: padded to the largest)."""
        n = torch.tensor([x.shape[0]], dtype=torch.long, device=self.device)
        counts = [torch.empty_like(n) for _ in range(self.size)]
        dist.all_gather(counts, n, group=self.group)
        sizes = [int(c) for c in counts]
        pad = x.new_zeros(max(sizes), *x.shape[1:])
        pad[:x.shape[0]] = x
        parts = [torch.empty_like(pad) for _ in range(self.size)]
        dist.all_gather(parts, pad, group=self.group)
        return [p[:s] for p, s in zip(parts, sizes, strict=True)]

    def all_to_all_rows(self, x: torch.Tensor, send: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Send `send[r]` consecutive rows of `x` to group rank r; returns the rows received and their counts."""
        counts = torch.tensor(send, dtype=torch.long, device=self.device)
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.group)
        got = recv.tolist()
        out = x.new_empty(sum(got), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=got, input_split_sizes=send, group=self.group)
        return out, got

    def moe(self, blk: Block, h: torch.Tensor) -> torch.Tensor:
        """A MoE layer's output for this rank's tokens `h` [T, hidden]."""
        from planner.verify.model import mlp, route, run_experts

        lay = self.mesh.layout
        adp = lay.attention_dp
        weights, experts = route(h, blk.router, blk.top_k)
        if lay.ep == 1:  # every expert sliced over the group: gather tokens, reduce the partial sums
            if adp > 1:
                xs = self.gather_rows(torch.cat([h, experts.to(h.dtype), weights], dim=1))
                allx = torch.cat(xs)
                hid = h.shape[1]
                x_all = allx[:, :hid]
                e_all = allx[:, hid:hid + blk.top_k].long()
                w_all = allx[:, hid + blk.top_k:]
            else:
                x_all, e_all, w_all = h, experts, weights
            y = run_experts(x_all, e_all, w_all, blk.experts_gate_up, blk.experts_down, blk.local_experts)
            if blk.shared_gate_up is not None and blk.shared_down is not None:
                y = y + mlp(x_all, blk.shared_gate_up, blk.shared_down)
            y = self._all_reduce(y)
            if adp > 1:
                start = sum(x.shape[0] for x in xs[:self.mesh.g])
                y = y[start:start + h.shape[0]]
            return y
        return self._expert_parallel(blk, h, weights, experts)

    def _expert_parallel(self, blk: Block, h: torch.Tensor, weights: torch.Tensor,
                         experts: torch.Tensor) -> torch.Tensor:
        """Dispatch each (token, expert) row to the rank holding the expert, compute, combine back."""
        from planner.verify.model import mlp, run_experts

        lay = self.mesh.layout
        replicated = lay.attention_dp == 1  # tp ranks hold the same tokens: each dispatches its slice
        every = torch.arange(h.shape[0], device=h.device)
        own = torch.tensor_split(every, self.size)[self.mesh.g] if replicated else every
        k = blk.top_k
        rows = own.repeat_interleave(k)
        ex = experts[own].reshape(-1)
        wt = weights[own].reshape(-1)
        dest = ex // blk.local_experts
        order = torch.argsort(dest, stable=True)
        send = torch.bincount(dest, minlength=self.size).tolist()
        local_id = (ex % blk.local_experts).to(STORE)  # exact in bf16 up to 256 local experts
        payload = torch.cat([h[rows[order]].to(STORE), local_id[order, None]], dim=1)
        got, counts = self.all_to_all_rows(payload, send)
        hid = h.shape[1]
        x = got[:, :hid].to(h.dtype)
        ids = got[:, hid].long()[:, None]
        y = run_experts(x, ids, torch.ones_like(ids, dtype=h.dtype), blk.experts_gate_up, blk.experts_down,
                        blk.local_experts)
        back, _ = self.all_to_all_rows(y.to(STORE), counts)
        out = torch.zeros(own.shape[0], hid, dtype=h.dtype, device=h.device)
        local_row = torch.arange(own.shape[0], device=h.device).repeat_interleave(k)[order]
        out.index_add_(0, local_row, back.to(h.dtype) * wt[order, None])
        if replicated and self.size > 1:
            out = torch.cat(self.gather_rows(out))
            if blk.shared_gate_up is not None and blk.shared_down is not None:
                out = out + self.tp_all_reduce(mlp(h, blk.shared_gate_up, blk.shared_down))
        elif blk.shared_gate_up is not None and blk.shared_down is not None:
            out = out + mlp(h, blk.shared_gate_up, blk.shared_down)
        return out

    # ---- control ------------------------------------------------------------------------
    def any_busy(self, busy: bool) -> bool:
        """Whether any rank of the group still has work (attention-DP ranks step together)."""
        flag = torch.tensor([1 if busy else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def share(self, value: int) -> int:
        """tp rank 0's `value` on every tp rank (open-loop arrivals must be admitted alike)."""
        if self.mesh.layout.tp == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.broadcast(t, src=self.mesh.at(self.mesh.stage, self.mesh.g - self.mesh.tp_rank), group=self.group)
        return int(t.item())

    # ---- pipeline -----------------------------------------------------------------------
    def send(self, tensors: list[torch.Tensor], dst: int) -> None:
        """Non-blocking sends; the tensors are kept alive until their send completes (`flush`)."""
        for t in tensors:
            buf = t.to(self.device).contiguous()
            self._pending.append((dist.isend(buf, dst), buf))

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(t, src)
        return t

    def flush(self) -> None:
        """Forget the sends that have completed."""
        left = []
        for work, buf in self._pending:
            if work.is_completed():
                work.wait()
            else:
                left.append((work, buf))
        self._pending = left

    def drain(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending = []
