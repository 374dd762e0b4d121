"""The iteration-level loop: continuous batching on every replica, in event-time order.

Each replica is `pp` virtual engines (vLLM's pipeline-parallel scheme): each schedules its own
micro-batch, and a micro-batch's pass takes `step_s` of the instance at `pp` times its size, the
stages staggered so a new pass enters the first stage every pass/pp. With `pp = 1` a replica is
one engine. Per iteration an engine:

1. allocates one KV slot per decoding sequence (a new block when its context crosses a block
   edge); when blocks run out it preempts the most recently admitted running request (vLLM V1:
   its blocks are freed and it is recomputed later from its prompt and the tokens it already has);
2. fills the token budget with prompt work by its policy (`SchedulerConfig.policy`);
3. takes its time from the step table and emits a token for every decoding sequence and every
   prompt that finished prefilling.

Decoding sequences are kept as aggregates (count, total context, how many sit at each offset
within a block, completions keyed by decode step), so an iteration costs the same at batch 1 or
512. work stretch of decode-only iterations with no arrival, completion or preemption in it is
advanced in one vectorised jump.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from costmodel.simulator.config import SchedulerConfig
from costmodel.simulator.steptable import StepTable

INF = math.inf
JUMP_MIN = 4  # decode-only iterations worth a vectorised jump
ITERATION_COLUMNS = ("engine", "start_s", "dur_s", "decode_seqs", "prefill_tokens", "prefill_chunks", "waiting",
                     "running", "kv_blocks_used")


@dataclass
class Log:
    """Everything a run records: per request, per iteration, ITL samples, preemptions."""

    arrival: list[float]
    isl: list[int]
    osl: list[int]
    first: list[float]
    finish: list[float]
    gen: list[int]
    emit0: list[float]  # time of the token that started the current decode run
    last_emit: list[float]  # time of the last token before a preemption
    preempts: list[int]
    replica: list[int]
    rejected: list[bool]
    # one row per iteration: ITERATION_COLUMNS; jumps add whole blocks of rows
    it_rows: list[tuple[float, ...]] = field(default_factory=list)
    it_blocks: list[np.ndarray] = field(default_factory=list)
    itl_gap: list[float] = field(default_factory=list)
    itl_w: list[int] = field(default_factory=list)
    itl_blocks: list[tuple[np.ndarray, int]] = field(default_factory=list)
    preemptions: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # t, rid, eng, free, need

    def iterations(self) -> dict[str, np.ndarray]:
        """Every iteration in start order, one array per column."""
        parts = [np.asarray(self.it_rows, dtype=float).reshape(-1, len(ITERATION_COLUMNS)), *self.it_blocks]
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
        rows = rows[np.argsort(rows[:, 1], kind="stable")]
        return {name: rows[:, i] if name in ("start_s", "dur_s") else rows[:, i].astype(np.int64)
                for i, name in enumerate(ITERATION_COLUMNS)}

    def itl(self) -> tuple[np.ndarray, np.ndarray]:
        """Inter-token gaps (s) and how many tokens saw each."""
        gaps = [np.asarray(self.itl_gap, dtype=float)] + [g for g, _ in self.itl_blocks]
        weights = [np.asarray(self.itl_w, dtype=np.int64)] + [np.full(len(g), w, dtype=np.int64)
                                                               for g, w in self.itl_blocks]
        return np.concatenate(gaps), np.concatenate(weights)

    @classmethod
    def empty(cls, n: int) -> Log:
        nan = math.nan
        return cls([nan] * n, [0] * n, [0] * n, [nan] * n, [nan] * n, [0] * n, [nan] * n, [nan] * n, [0] * n,
                   [-1] * n, [False] * n)


class Engine:
    """One scheduler: a replica, or one pipeline virtual engine of it."""

    def __init__(self, eid: int, rep: int, sched: SchedulerConfig, blocks: int, max_seqs: int, table: StepTable,
                 log: Log, sim: Simulation, jumps: bool):
        self.eid, self.rep = eid, rep
        self.budget = int(sched.chunked_prefill_tokens or 1)
        self.max_seqs = max_seqs
        self.bs = sched.block_size
        self.policy = sched.policy
        self.blocks = blocks
        self.free = blocks
        self.table, self.log, self.sim = table, log, sim
        self.jumps = jumps
        self.waiting: deque[int] = deque()
        self.prefill: list[list[int]] = []  # [rid, tokens done, tokens to prefill]
        self.running: dict[int, None] = {}  # admission order, for choosing preemption victims
        self.dec: dict[int, tuple[int, int, int, int, int]] = {}  # rid -> (j0, ctx0, key, fin_step, gen0)
        self.nb = 0
        self.ctx = 0
        self.phase = [0] * self.bs
        self.fin: dict[int, list[int]] = {}
        self.fin_heap: list[int] = []
        self.ds = 0  # decode steps run
        self.joins: dict[float, int] = {}  # emit time -> sequences that joined decode since the last step
        self.last_dec_end = 0.0
        self.ready = 0.0
        self.unfinished = 0
        self.scheduled = False

    # ---- helpers ---------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.bs)

    def _preempt(self, t: float, need: int) -> int:
        """Preempt the latest-admitted running request; 1 if it needed a block this decode step."""
        rid = next(reversed(self.running))
        del self.running[rid]
        log = self.log
        log.preemptions.append((t, rid, self.eid, self.free, need))
        needer = 0
        d = self.dec.pop(rid, None)
        if d is not None:
            j0, ctx0, key, fin_j, gen0 = d
            steps = self.ds - j0
            ctx = ctx0 + steps
            self.nb -= 1
            self.ctx -= ctx
            self.phase[key] -= 1
            done = self.fin[fin_j]
            done.remove(rid)
            if not done:
                del self.fin[fin_j]
            freed = self._blocks(ctx)
            log.gen[rid] = gen0 + steps
            if steps == 0:
                self.joins[log.emit0[rid]] -= 1
                log.last_emit[rid] = log.emit0[rid]
            else:
                log.last_emit[rid] = self.last_dec_end
            needer = 1 if key == (-self.ds) % self.bs else 0
        else:
            for i in range(len(self.prefill) - 1, -1, -1):
                if self.prefill[i][0] == rid:
                    freed = self._blocks(self.prefill.pop(i)[1])
                    break
        self.free += freed
        self.waiting.appendleft(rid)
        log.preempts[rid] += 1
        return needer

    def _target(self, rid: int) -> int:
        """Tokens to prefill: the prompt, plus what was generated before a preemption (recompute)."""
        return self.log.isl[rid] + self.log.gen[rid]

    def _head_can_start(self) -> bool:
        rid = self.waiting[0]
        return len(self.running) < self.max_seqs and self._blocks(self._target(rid)) <= self.free

    # ---- one iteration ---------------------------------------------------------------------
    def iterate(self, t: float, next_arrival: float) -> float | None:
        """Run one iteration starting at `t` (or a jump of several); its end time, None if idle."""
        if (self.jumps and self.nb and not self.waiting and not self.prefill and not self.joins
                and self.fin_heap):
            end = self._jump(t, next_arrival)
            if end is not None:
                return end
        log = self.log
        bs = self.bs
        decode = self.policy != "prefill_first" or not self.waiting or not self._head_can_start()
        nb = self.nb
        if decode and nb:
            need = self.phase[(-self.ds) % bs]
            while need > self.free:
                need -= self._preempt(t, need)
            self.free -= need
            nb = self.nb
        budget = self.budget - (nb if decode else 0)
        pt = 0
        work = 0.0
        chunks = 0
        completed: list[list[int]] = []
        stalled = False
        if self.prefill:  # chunked: running prompts continue first, in admission order
            i = 0
            while i < len(self.prefill) and budget > 0:
                e = self.prefill[i]
                done, target = e[1], e[2]
                c = min(target - done, budget)
                extra = self._blocks(done + c) - self._blocks(done)
                if extra > self.free:
                    if (decode and nb) or pt:
                        stalled = True  # wait for this iteration's work to finish and free blocks
                        break
                    # nothing else can run: free blocks from the latest prompts (vLLM V1 preempts)
                    while extra > self.free and next(reversed(self.running)) != e[0]:
                        self._preempt(t, extra)
                    if extra > self.free:
                        self._preempt(t, extra)
                        break
                self.free -= extra
                e[1] = done + c
                pt += c
                work += c * (done + c / 2)
                chunks += 1
                budget -= c
                if e[1] == target:
                    completed.append(e)
                i += 1
        policy = self.policy
        # as vLLM V1: no new request starts while a running one could not get its blocks
        while not stalled and self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            rid = self.waiting[0]
            target = self._target(rid)
            if policy == "chunked":
                c = min(target, budget)
            elif target <= budget or (pt == 0 and target > self.budget):
                c = target  # whole prompts; one longer than the whole budget runs as the only prefill
            else:
                break
            blocks = self._blocks(c)
            if blocks > self.free:
                break
            self.waiting.popleft()
            self.free -= blocks
            self.running[rid] = None
            e = [rid, c, target]
            pt += c
            work += c * c / 2
            chunks += 1
            budget -= c
            if c == target:
                completed.append(e)
            else:
                self.prefill.append(e)
        if not (decode and nb) and not pt:
            return None
        dur = self.table.step_s(nb if decode else 0, self.ctx if decode else 0, pt, work, chunks)
        end = t + dur
        log.it_rows.append((self.eid, t, dur, nb if decode else 0, pt, chunks, len(self.waiting), len(self.running),
                            self.blocks - self.free))
        if decode:
            self._decode_done(end, nb)
        if completed:
            if len(completed) < len(self.prefill) + len(completed) or self.prefill:
                self.prefill = [e for e in self.prefill if e[1] < e[2]]
            for e in completed:
                self._prefill_done(e[0], e[2], end)
        return end

    def _decode_done(self, end: float, nb: int) -> None:
        log = self.log
        if nb:
            joined = 0
            for et, n in self.joins.items():
                if n:
                    log.itl_gap.append(end - et)
                    log.itl_w.append(n)
                    joined += n
            if joined < nb:
                log.itl_gap.append(end - self.last_dec_end)
                log.itl_w.append(nb - joined)
        self.joins.clear()
        self.last_dec_end = end
        j = self.ds
        self.ds = j + 1
        self.ctx += nb
        done = self.fin.pop(j, None)
        if done is None:
            return
        heap = self.fin_heap
        while heap and heap[0] <= j:
            heapq.heappop(heap)
        for rid in done:
            j0, ctx0, key, _, _ = self.dec.pop(rid)
            ctx = ctx0 + (j - j0) + 1
            self.ctx -= ctx
            self.nb -= 1
            self.phase[key] -= 1
            self.free += self._blocks(ctx)
            del self.running[rid]
            log.gen[rid] = log.osl[rid]
            self.sim.finished(self, rid, end)

    def _prefill_done(self, rid: int, target: int, end: float) -> None:
        log = self.log
        g = log.gen[rid] + 1
        log.gen[rid] = g
        if g == 1:
            log.first[rid] = end
            self.sim.first_token(rid, end)
        else:  # resumed after a preemption: the gap since its last token is one inter-token latency
            log.itl_gap.append(end - log.last_emit[rid])
            log.itl_w.append(1)
        rem = log.osl[rid] - g
        if rem <= 0:
            self.free += self._blocks(target)
            del self.running[rid]
            self.sim.finished(self, rid, end)
            return
        j0 = self.ds
        key = (target - j0) % self.bs
        fin_j = j0 + rem - 1
        self.dec[rid] = (j0, target, key, fin_j, g)
        self.nb += 1
        self.ctx += target
        self.phase[key] += 1
        lst = self.fin.get(fin_j)
        if lst is None:
            self.fin[fin_j] = [rid]
            heapq.heappush(self.fin_heap, fin_j)
        else:
            lst.append(rid)
        log.emit0[rid] = end
        self.joins[end] = self.joins.get(end, 0) + 1

    def _jump(self, t: float, next_arrival: float) -> float | None:
        """Decode-only iterations up to the next completion step, arrival or block shortage, at once."""
        heap = self.fin_heap
        while heap and heap[0] not in self.fin:
            heapq.heappop(heap)
        if not heap:
            return None
        k = heap[0] - self.ds  # iterations strictly before the next completion
        if k < JUMP_MIN:
            return None
        nb, bs = self.nb, self.bs
        first = self.table.step_s(nb, float(self.ctx), 0, 0.0, 0)
        room = (next_arrival - t) / first  # iterations until the next arrival, at most (steps only grow)
        if room < JUMP_MIN:
            return None
        if room < k:
            k = int(room) + 1
        d = self.table.decode_run_s(nb, float(self.ctx), k)
        ends = t + np.cumsum(d)
        if ends[-1] - d[-1] >= next_arrival:
            k = int(np.searchsorted(ends - d, next_arrival, side="left"))  # iterations that start before it
        if self.free < nb * (k // bs + 1):  # blocks may run short: stop before the first shortage
            need = np.asarray(self.phase)[(-(self.ds + np.arange(k))) % bs]
            k = min(k, int(np.searchsorted(np.cumsum(need), self.free, side="right")))
        if k < JUMP_MIN:
            return None
        d, ends = d[:k], ends[:k]
        need_total = sum(self.phase) * (k // bs) + sum(self.phase[(-(self.ds + i)) % bs] for i in range(k % bs))
        kv0 = self.blocks - self.free
        block = np.empty((k, len(ITERATION_COLUMNS)))
        block[:, 0] = self.eid
        block[:, 1] = ends - d
        block[:, 2] = d
        block[:, 3] = nb
        block[:, 4:7] = 0
        block[:, 7] = len(self.running)
        # KV in use rises by the sequences crossing a block edge at each step
        block[:, 8] = kv0 + np.cumsum(np.asarray(self.phase)[(-(self.ds + np.arange(k))) % bs])
        self.log.it_blocks.append(block)
        gaps = d.copy()
        gaps[0] = ends[0] - self.last_dec_end
        self.log.itl_blocks.append((gaps, nb))
        self.free -= need_total
        self.ds += k
        self.ctx += nb * k
        end = float(ends[-1])
        self.last_dec_end = end
        return end


class Simulation:
    """Replicas behind a router, driven in event-time order until every request is done."""

    def __init__(self, table: StepTable, sched: SchedulerConfig, kv_blocks: int, replicas: int, pp: int,
                 isl: np.ndarray, osl: np.ndarray, arrival_s: np.ndarray | None, concurrency: int | None,
                 slo_s: dict[str, float] | None = None, fail_limit: int | None = None,
                 progress: Callable[[int, int], None] | None = None, jumps: bool = True,
                 tokens: np.ndarray | None = None):
        n = len(isl)
        self.n = n
        self.log = Log.empty(n)
        self.log.isl[:] = isl.tolist()
        self.log.osl[:] = osl.tolist()
        # output tokens per request where a decode step emits more than one (speculative decoding):
        # `osl` then counts the steps it is scheduled for (costmodel.simulator.run.decode_steps)
        self.tokens = (osl if tokens is None else tokens).tolist()
        self.pp = pp
        self.replicas = replicas
        per_engine_blocks = kv_blocks // pp
        seqs = max(1, -(-int(sched.max_num_seqs or 1) // pp))
        self.engines = [Engine(r * pp + v, r, sched, per_engine_blocks, seqs, table, self.log, self,
                               jumps and pp == 1)
                        for r in range(replicas) for v in range(pp)]
        self.bs = sched.block_size
        self.router = sched.router
        self.rr = 0
        self.outstanding = [0] * replicas
        self.pending: list[tuple[float, int]] = []  # (finish time, replica) not yet seen by the router
        self.stage_free = [0.0] * replicas
        self.arrival_s = arrival_s
        self.concurrency = concurrency
        self.next_rid = 0
        self.closed: list[tuple[float, int]] = []
        self.done = 0
        self.slo = slo_s or {}
        self.fail_limit = fail_limit
        self.failures = 0
        self.failed = [False] * n
        self.aborted = False
        self.progress = progress
        self.progress_every = max(1, n // 100)

    # ---- callbacks from engines ------------------------------------------------------------
    def _fail(self, rid: int) -> None:
        if not self.failed[rid]:
            self.failed[rid] = True
            self.failures += 1
            if self.fail_limit is not None and self.failures > self.fail_limit:
                self.aborted = True

    def first_token(self, rid: int, t: float) -> None:
        lim = self.slo.get("ttft_s")
        if lim is not None and t - self.log.arrival[rid] > lim:
            self._fail(rid)

    def finished(self, eng: Engine, rid: int, t: float) -> None:
        log = self.log
        log.finish[rid] = t
        eng.unfinished -= 1
        self._settle(rid, t, eng.rep)
        if self.slo:
            osl = self.tokens[rid]
            tpot = (t - log.first[rid]) / (osl - 1) if osl > 1 else 0.0
            if tpot > self.slo.get("tpot_s", INF) or t - log.arrival[rid] > self.slo.get("e2e_s", INF):
                self._fail(rid)

    def _settle(self, rid: int, t: float, rep: int) -> None:
        """work request left the system at `t`: tell the router, the client and the progress bar."""
        if rep < 0:
            pass  # refused at the door: the router never counted it
        elif self.router == "least_loaded" and self.replicas > 1:
            heapq.heappush(self.pending, (t, rep))
        else:
            self.outstanding[rep] -= 1
        if self.concurrency is not None and self.next_rid < self.n:
            heapq.heappush(self.closed, (t, self.next_rid))
            self.next_rid += 1
        self.done += 1
        if self.progress is not None and (self.done % self.progress_every == 0 or self.done == self.n):
            self.progress(self.done, self.n)

    # ---- arrivals and routing --------------------------------------------------------------
    def _route(self, rid: int, t: float) -> Engine | None:
        log = self.log
        log.arrival[rid] = t
        if self._blocks(log.isl[rid] + log.osl[rid] - 1) > self.engines[0].blocks:
            log.rejected[rid] = True  # longer than the KV cache can ever hold: the engine refuses it
            self._fail(rid)
            self._settle(rid, t, -1)
            return None
        if self.router == "least_loaded" and self.replicas > 1:
            while self.pending and self.pending[0][0] <= t:
                self.outstanding[heapq.heappop(self.pending)[1]] -= 1
            rep = min(range(self.replicas), key=self.outstanding.__getitem__)
        else:
            rep = self.rr % self.replicas
            self.rr += 1
        self.outstanding[rep] += 1
        log.replica[rid] = rep
        group = self.engines[rep * self.pp:(rep + 1) * self.pp]
        eng = min(group, key=lambda e: e.unfinished) if self.pp > 1 else group[0]
        eng.unfinished += 1
        eng.waiting.append(rid)
        return eng

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.bs)

    def run(self) -> Log:
        arr = self.arrival_s
        if arr is not None:
            times = arr.tolist()
            self.next_rid = self.n
        else:
            first = min(self.concurrency or 1, self.n)
            self.closed = [(0.0, i) for i in range(first)]
            self.next_rid = first
            times = []
        ai = 0
        n_open = len(times)
        eh: list[tuple[float, int]] = []
        engines = self.engines
        pp = self.pp
        while not self.aborted:
            if ai < n_open:
                ta = times[ai]
            elif self.closed:
                ta = self.closed[0][0]
            else:
                ta = INF
            te = eh[0][0] if eh else INF
            if ta == INF and te == INF:
                break
            if ta <= te:
                if ai < n_open:
                    rid = ai
                    ai += 1
                else:
                    rid = heapq.heappop(self.closed)[1]
                eng = self._route(rid, ta)
                if eng is not None and not eng.scheduled:
                    eng.scheduled = True
                    heapq.heappush(eh, (max(ta, eng.ready, self.stage_free[eng.rep]), eng.eid))
                continue
            t, eid = heapq.heappop(eh)
            eng = engines[eid]
            sf = self.stage_free[eng.rep]
            if sf > t:
                heapq.heappush(eh, (sf, eid))
                continue
            nxt = times[ai] if ai < n_open else (self.closed[0][0] if self.closed else INF)
            end = eng.iterate(t, nxt)
            if end is None:
                eng.scheduled = False
                continue
            eng.ready = end
            self.stage_free[eng.rep] = t + (end - t) / pp
            if eng.has_work():
                heapq.heappush(eh, (end, eid))
            else:
                eng.scheduled = False
        if not self.aborted and self.done < self.n:
            stuck = sum(len(e.waiting) for e in engines)
            raise RuntimeError(f"simulation stalled with {self.n - self.done} requests unfinished "
                               f"({stuck} waiting); this is a simulator bug")
        return self.log
