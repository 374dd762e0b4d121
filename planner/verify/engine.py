"""One process of the torch runner: build its shard, serve its share of the workload, time it.

Replicas (dp) serve disjoint client sets; attention-DP ranks each schedule their own clients and
step together through the MoE layers; tensor-parallel ranks run identical schedulers in lock-step;
pipeline stages run `pp` micro-batch groups (vLLM's virtual engines) so every stage is busy:
stage 0 schedules and embeds, each stage sends its activations on, the last samples and returns
the tokens to stage 0. Times are `time.perf_counter()` seconds from a common start barrier, on a
clock that jumps over idle time: when an open loop's scheduler has nothing queued or running it skips
ahead to the next arrival instead of sleeping until it (`Server.now`). Nothing is in flight across a
jump, so every request's latencies are as measured, and rates are over the time a run would have
taken; a run at one request per second measures for the seconds it serves, not the tens it waits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from costmodel.layout import Layout
from costmodel.models import ModelSpec
from planner.verify.kernels import STORE
from planner.verify.model import StepMeta, Transformer
from planner.verify.parallel import Comm, Mesh
from planner.verify.scheduler import ClosedLoop, OpenLoop, Scheduler, Step
from planner.verify.support import check_runnable

STEP, STOP = 1, 0
IDLE_SLEEP_S = 2e-4


@dataclass(frozen=True)
class RunSpec:
    """What every process of one run needs (picklable)."""

    model: dict[str, Any]  # ModelSpec.model_dump()
    layout: dict[str, int]
    isl: int
    osl: int
    concurrency: int | None = None
    rate_rps: float | None = None
    requests: int = 4  # closed loop: per client; open loop: in all
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    seed: int = 0
    device: str = "cpu"

    @property
    def lay(self) -> Layout:
        return Layout(**self.layout)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.model)


def split(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


def _load(spec: RunSpec, replica: int, k: int) -> ClosedLoop | OpenLoop:
    lay = spec.lay
    parts = lay.attention_dp * lay.pp
    if spec.concurrency is not None:
        share = math.ceil(spec.concurrency / lay.dp)  # as Workload.per_replica
        return ClosedLoop(split(share, parts, k), spec.requests)
    assert spec.rate_rps is not None
    n = split(split(spec.requests, lay.dp, replica), parts, k)
    return OpenLoop(spec.rate_rps / lay.dp / parts, n, seed=spec.seed + 7919 * (replica * parts + k))


def loads(spec: RunSpec, mesh: Mesh) -> list[tuple[ClosedLoop | OpenLoop, int]]:
    """The load of each scheduler of this rank (the replica's share, then the attention-DP rank's,
    then one per pipeline micro-batch group), with the global index of its first client."""
    lay = spec.lay
    parts = lay.attention_dp * lay.pp
    order = [(r, k) for r in range(lay.dp) for k in range(parts)]
    base, bases = 0, {}
    for r, k in order:
        bases[r, k] = base
        load = _load(spec, r, k)
        base += load.clients if isinstance(load, ClosedLoop) else load.requests
    mine = [mesh.adp_rank * lay.pp + grp for grp in range(lay.pp)]
    return [(_load(spec, mesh.replica, k), bases[mesh.replica, k]) for k in mine]


def prompt_ids(rid: int, start: int, n: int, vocab: int) -> torch.Tensor:
    """Deterministic prompt tokens of request `rid` (every tp rank must embed the same ones)."""
    pos = torch.arange(start, start + n, dtype=torch.long)
    return (rid * 7919 + pos * 104729 + 17) % vocab


class Server:
    """The serving loop of one process."""

    def __init__(self, spec: RunSpec, rank: int, world: int) -> None:
        self.spec, self.lay = spec, spec.lay
        check_runnable(self.lay)
        self.mesh = Mesh(rank, self.lay)
        self.device = torch.device(spec.device if spec.device == "cpu" else f"cuda:{torch.cuda.current_device()}")
        self.comm = Comm(self.mesh, self.device) if world > 1 else None
        model = spec.spec
        self.vocab = model.vocab_size
        self.model = Transformer(model, self.mesh.shard(model.num_layers), self.device, seed=spec.seed,
                                 max_positions=spec.isl + spec.osl + 1)
        self.scheds: list[Scheduler] = []
        slots = 0
        for load, client_base in loads(spec, self.mesh):
            users = load.clients if isinstance(load, ClosedLoop) else max(load.requests, 1)
            n = max(1, min(spec.max_num_seqs // (self.lay.pp * self.lay.attention_dp), users))
            self.scheds.append(Scheduler(spec.isl, spec.osl, n, spec.max_num_batched_tokens, load,
                                         client_base=client_base, slot_base=slots))
            slots += n
        self.cache = self.model.allocate_cache(slots, spec.isl + spec.osl)
        self.max_emit = max(s_.slots for s_ in self.scheds)  # tokens one micro-batch can return
        # decode, prefill tokens, prompts, context sum, seconds of each iteration (pipelined: of each micro-batch
        # group's round, from its previous step's tokens coming back to this one's)
        self.log: list[tuple[int, int, int, int, float]] = []
        self.skipped = 0.0  # idle seconds jumped over (see the module doc)

    def now(self) -> float:
        return time.perf_counter() + self.skipped

    def _skip_idle(self, scheds: list[Scheduler]) -> bool:
        """Jump the clock to the next arrival when every scheduler is idle until then."""
        nxt = []
        for s in scheds:
            t = s.next_arrival()
            if t is None and not s.done:
                return False  # work in hand, or a closed loop
            if t is not None:
                nxt.append(t)
        gap = min(nxt, default=0.0) - self.now()
        if gap > 0:
            self.skipped += gap
        return True

    # ---- one iteration ---------------------------------------------------------------------
    def _meta(self, step: Step) -> StepMeta:
        dev = self.device
        slots = torch.tensor([r.slot for r in step.decode], dtype=torch.long, device=dev)
        lens = [self.spec.isl + r.generated for r in step.decode]
        return StepMeta(slots, torch.tensor(lens, dtype=torch.long, device=dev), max(lens, default=0),
                        [(c.req.slot, c.start, c.n, c.emits) for c in step.chunks])

    def _ids(self, step: Step) -> torch.Tensor:
        parts = [torch.tensor([r.last_token for r in step.decode], dtype=torch.long)]
        parts += [prompt_ids(c.req.rid, c.start, c.n, self.vocab) for c in step.chunks]
        return torch.cat(parts).to(self.device)

    def _run_local(self, step: Step) -> list[int]:
        meta = self._meta(step)
        x = self.model.run_layers(self.model.embed_tokens(self._ids(step)), meta, self.cache, self.comm)
        return self.model.sample(x, meta, self.comm).tolist()

    def _arrivals(self, sched: Scheduler, now: float) -> int:
        n = sched.due(now)
        return self.comm.share(n) if self.comm is not None else n

    # ---- loops -----------------------------------------------------------------------------
    def serve(self) -> dict[str, Any]:
        if self.comm is not None:
            dist.barrier()
        t0 = self.now()
        for s in self.scheds:
            s.start(t0)
        with torch.inference_mode():
            if self.lay.pp == 1:
                self._serve_single()
            elif self.mesh.stage == 0:
                self._serve_first()
            else:
                self._serve_later()
        if self.comm is not None:
            self.comm.drain()
        lead = self.mesh.stage == 0 and self.mesh.tp_rank == 0
        reqs = [{"rid": r.rid, "submit": r.submit_s - t0, "tokens": [t - t0 for t in r.token_s], "ids": r.token_ids}
                for s in self.scheds for r in s.finished] if lead else []
        return {"rank": self.mesh.rank, "replica": self.mesh.replica, "lead": lead, "requests": reqs,
                "log": self.log if lead else []}

    def _serve_single(self) -> None:
        sched = self.scheds[0]
        lockstep = self.lay.attention_dp > 1  # MoE collectives need every attention-DP rank each iteration
        while True:
            now = self.now()
            sched.admit(self._arrivals(sched, now), now)
            step = sched.next_step()
            busy = not sched.done
            if lockstep:
                assert self.comm is not None
                busy = self.comm.any_busy(busy)
            if not busy:
                return
            if step.empty and not lockstep:
                sched.tick_idle()
                if not self._skip_idle([sched]):
                    time.sleep(IDLE_SLEEP_S)
                continue
            start = self.now()
            tokens = self._run_local(step)
            end = self.now()
            sched.complete(step, tokens, end)
            self._record(step, end - start)

    def _record(self, step: Step, seconds: float) -> None:
        ctx = sum(self.spec.isl + r.generated for r in step.decode)
        prefill = sum(c.n for c in step.chunks)
        self.log.append((len(step.decode), prefill, sum(c.emits for c in step.chunks), ctx, seconds))

    def _serve_first(self) -> None:
        """Stage 0: schedule every micro-batch group, embed, run its layers, send on; take tokens back."""
        comm = self.comm
        assert comm is not None
        nxt, last = self.mesh.at(1), self.mesh.at(self.lay.pp - 1)
        inflight: deque[tuple[int, Step]] = deque()
        done_at: dict[int, float] = {}  # each group's last step completion
        while True:
            sent = False
            for g, sched in enumerate(self.scheds):
                if inflight and inflight[0][0] == g:
                    _, step = inflight.popleft()
                    back = comm.recv((1 + self.max_emit,), torch.long, last).tolist()
                    end = self.now()
                    sched.complete(step, back[1:1 + back[0]], end)
                    if g in done_at:  # a round: from this group's last step to this one, every stage passed
                        self._record(step, end - done_at[g])
                    done_at[g] = end
                now = self.now()
                sched.admit(self._arrivals(sched, now), now)
                step = sched.next_step()
                if step.empty:
                    if not sched.done:
                        sched.tick_idle()
                    continue
                meta = self._meta(step)
                x = self.model.run_layers(self.model.embed_tokens(self._ids(step)), meta, self.cache, comm)
                header = torch.tensor([STEP, meta.n_dec, len(meta.chunks), meta.tokens], dtype=torch.long)
                comm.send([header, pack(meta.pack(), x)], nxt)
                comm.flush()
                inflight.append((g, step))
                sent = True
            if not inflight and all(s.done for s in self.scheds):
                break
            if not sent and not inflight and not self._skip_idle(self.scheds):
                time.sleep(IDLE_SLEEP_S)
        comm.send([torch.tensor([STOP, 0, 0, 0], dtype=torch.long)], nxt)

    def _serve_later(self) -> None:
        """Stages 1..pp-1: receive activations, run this stage's layers, send on (or sample and return)."""
        comm = self.comm
        assert comm is not None
        stage, pp = self.mesh.stage, self.lay.pp
        prev = self.mesh.at(stage - 1)
        first = self.mesh.at(0)
        nxt = self.mesh.at(stage + 1) if stage + 1 < pp else None
        hidden = self.spec.spec.hidden_size
        while True:  # header, then one payload: metadata and activations
            header = comm.recv((4,), torch.long, prev)
            kind, n_dec, n_chunks, tokens = header.tolist()
            if kind == STOP:
                if nxt is not None:
                    comm.send([header], nxt)
                return
            ints = 2 * n_dec + 4 * n_chunks
            payload = comm.recv((ints * 8 + tokens * hidden * 2,), torch.uint8, prev)
            packed, x = unpack(payload, ints, (tokens, hidden))
            meta = StepMeta.unpack(packed, n_dec, n_chunks, self.device)
            x = self.model.run_layers(x.to(self.model.compute), meta, self.cache, comm)
            if nxt is not None:
                comm.send([header, pack(packed, x)], nxt)
            else:
                out = self.model.sample(x, meta, comm).to(torch.long)
                back = torch.zeros(1 + self.max_emit, dtype=torch.long)
                back[0] = out.shape[0]
                back[1:1 + out.shape[0]] = out.cpu()
                comm.send([back], first)
            comm.flush()


def pack(ints: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A step's metadata and activations as one byte message (one send instead of two)."""
    return torch.cat([ints.cpu().view(torch.uint8), x.to(STORE).cpu().contiguous().view(-1).view(torch.uint8)])


def unpack(payload: torch.Tensor, ints: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    payload = payload.cpu()
    return payload[:ints * 8].view(torch.long), payload[ints * 8:].view(STORE).view(shape)


def serve_worker(rank: int, world: int, spec: RunSpec, progress: Callable[..., None]) -> dict[str, Any]:
    """Entry point of one runner process (see planner.verify.launch)."""
    return Server(spec, rank, world).serve()
