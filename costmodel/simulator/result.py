"""What a simulation returns: per-request latencies, percentiles, attainment, the iteration timeline."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hardware.errors import PlannerInputError
from hardware.loading import write_atomic

OBJECTIVES = ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms")


@dataclass(frozen=True)
class Percentiles:
    """Summary of one latency, in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    max: float
    count: int

    @classmethod
    def of(cls, values_ms: np.ndarray, weights: np.ndarray | None = None, empty: float = 0.0) -> Percentiles:
        """The summary of `values_ms`; with none (count 0), every figure is `empty`, never NaN: infinity for
        a latency no request reached, 0 for one that is undefined (TPOT of one-token outputs)."""
        v = np.asarray(values_ms, dtype=float)
        if weights is not None:
            w = np.asarray(weights, dtype=float)
            keep = w > 0
            v, w = v[keep], w[keep]
        if v.size == 0:
            return cls(empty, empty, empty, empty, empty, 0)
        if weights is None:
            p50, p90, p99 = np.percentile(v, [50, 90, 99])
            return cls(float(p50), float(p90), float(p99), float(v.mean()), float(v.max()), int(v.size))
        order = np.argsort(v, kind="stable")
        v, w = v[order], w[order]
        cum = np.cumsum(w)
        total = cum[-1]
        # inverted CDF: the smallest value whose cumulative weight reaches q of the total
        p50, p90, p99 = (float(v[np.searchsorted(cum, q * total)]) for q in (0.5, 0.9, 0.99))
        return cls(p50, p90, p99, float(np.average(v, weights=w)), float(v[-1]), int(total))

    def as_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float)
                                                                                  else v))
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SimResult:
    """One simulated run. Times are seconds from the first arrival; latencies in ms."""

    model: str
    device: str
    layout: str
    engine: str
    scheduler: dict[str, Any]
    replicas: int
    pipeline_engines: int  # virtual engines per replica (the pp degree)
    kv_blocks: int
    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    isl: np.ndarray
    osl: np.ndarray
    preemptions_per_request: np.ndarray
    replica: np.ndarray
    rejected: np.ndarray
    iterations: dict[str, np.ndarray]
    itl_samples: tuple[np.ndarray, np.ndarray]  # (gap seconds, how many tokens saw it)
    preemption_events: tuple[tuple[float, int, int, int, int], ...]  # (t, request, engine, free, needed blocks)
    step_table_error: float
    stopped_early: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    # ---- per request -----------------------------------------------------------------------
    @property
    def num_requests(self) -> int:
        return len(self.arrival_s)

    @cached_property
    def completed(self) -> np.ndarray:
        return np.isfinite(self.finish_s)

    @cached_property
    def ttft_each_ms(self) -> np.ndarray:
        return (self.first_token_s - self.arrival_s) * 1e3

    @cached_property
    def tpot_each_ms(self) -> np.ndarray:
        """Per request (finish - first token) / (output tokens - 1); NaN for one-token outputs (undefined:
        `tpot_ms` leaves them out, and with only those it is 0 with count 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.osl > 1, (self.finish_s - self.first_token_s) / (self.osl - 1) * 1e3, np.nan)

    @cached_property
    def e2e_each_ms(self) -> np.ndarray:
        return (self.finish_s - self.arrival_s) * 1e3

    @cached_property
    def ttft_ms(self) -> Percentiles:
        return Percentiles.of(self.ttft_each_ms[self.completed], empty=math.inf)

    @cached_property
    def tpot_ms(self) -> Percentiles:
        v = self.tpot_each_ms[self.completed]
        return Percentiles.of(v[np.isfinite(v)])

    @cached_property
    def e2e_ms(self) -> Percentiles:
        return Percentiles.of(self.e2e_each_ms[self.completed], empty=math.inf)

    @cached_property
    def itl_ms(self) -> Percentiles:
        """Every gap between two tokens of one request (weighted by the requests that saw it)."""
        gaps, weights = self.itl_samples
        return Percentiles.of(gaps * 1e3, weights)

    # ---- whole run -------------------------------------------------------------------------
    @cached_property
    def duration_s(self) -> float:
        """First arrival to last completion."""
        done = self.finish_s[self.completed]
        return float(done.max() - self.arrival_s.min()) if done.size else 0.0

    @property
    def output_tok_s(self) -> float:
        d = self.duration_s
        return float(self.osl[self.completed].sum() / d) if d > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        d = self.duration_s
        return float(self.completed.sum() / d) if d > 0 else 0.0

    @property
    def preemptions(self) -> int:
        return len(self.preemption_events)

    def meets(self, slo: dict[str, float]) -> np.ndarray:
        """Per request: True when it completed and met every objective in `slo` (DistServe's joint
        definition). Objectives: ttft_ms, tpot_ms, e2e_ms (per-request values)."""
        ok = self.completed.copy()
        for key, limit in slo.items():
            if limit is None:
                continue
            if key not in ("ttft_ms", "tpot_ms", "e2e_ms"):
                raise PlannerInputError(f"slo.{key} is not a per-request objective; use ttft_ms, tpot_ms or e2e_ms")
            if not (isinstance(limit, int | float) and limit > 0):
                raise PlannerInputError(f"slo.{key} must be a positive number of milliseconds, not {limit!r}")
            v = {"ttft_ms": self.ttft_each_ms, "tpot_ms": self.tpot_each_ms, "e2e_ms": self.e2e_each_ms}[key]
            with np.errstate(invalid="ignore"):
                ok &= np.where(np.isnan(v) & self.completed, True, v <= limit) if key == "tpot_ms" else v <= limit
        return ok

    def attainment(self, slo: dict[str, float]) -> float:
        """Share of all requests (refused and unfinished ones count as misses) meeting every objective."""
        return float(self.meets(slo).mean()) if self.num_requests else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model, "device": self.device, "layout": self.layout, "engine": self.engine,
            "replicas": self.replicas, "scheduler": self.scheduler, "kv_blocks": self.kv_blocks,
            "requests": self.num_requests, "completed": int(self.completed.sum()),
            "rejected": int(self.rejected.sum()), "preemptions": self.preemptions,
            "iterations": len(self.iterations["start_s"]), "duration_s": round(self.duration_s, 4),
            "output_tok_s": round(self.output_tok_s, 2), "requests_per_s": round(self.requests_per_s, 4),
            "ttft_ms": self.ttft_ms.as_dict(), "tpot_ms": self.tpot_ms.as_dict(), "itl_ms": self.itl_ms.as_dict(),
            "e2e_ms": self.e2e_ms.as_dict(), "step_table_max_rel_err": self.step_table_error,
            "stopped_early": self.stopped_early, "notes": list(self.notes),
        }

    # ---- timeline --------------------------------------------------------------------------
    def chrome_trace(self, max_iterations: int | None = None) -> dict[str, Any]:
        """The iteration timeline as Chrome trace JSON (chrome://tracing, ui.perfetto.dev): one
        process per replica, one thread per pipeline virtual engine, one slice per iteration, and
        counters for the running batch, the queue and KV blocks in use."""
        it = self.iterations
        n = len(it["start_s"]) if max_iterations is None else min(max_iterations, len(it["start_s"]))
        events: list[dict[str, Any]] = []
        engines_per_replica = self.pipeline_engines
        for r in range(self.replicas):
            events.append({"name": "process_name", "ph": "M", "pid": r, "args": {"name": f"replica {r}"}})
        rows = zip(it["engine"][:n].tolist(), it["start_s"][:n].tolist(), it["dur_s"][:n].tolist(),
                   it["decode_seqs"][:n].tolist(), it["prefill_tokens"][:n].tolist(),
                   it["prefill_chunks"][:n].tolist(), it["waiting"][:n].tolist(), it["running"][:n].tolist(),
                   it["kv_blocks_used"][:n].tolist(), strict=True)
        for eng, start, dur, dec, pre, chunks, wait, run, kv in rows:
            pid, tid = divmod(eng, engines_per_replica)
            name = "mixed" if dec and pre else ("prefill" if pre else "decode")
            ts = round(start * 1e6, 3)
            events.append({"name": name, "cat": "iteration", "ph": "X", "pid": pid, "tid": tid, "ts": ts,
                           "dur": round(dur * 1e6, 3),
                           "args": {"decode_seqs": dec, "prefill_tokens": pre, "prefill_chunks": chunks}})
            events.append({"name": "batch", "ph": "C", "pid": pid, "ts": ts,
                           "args": {"running": run, "waiting": wait}})
            events.append({"name": "kv_blocks_used", "ph": "C", "pid": pid, "ts": ts, "args": {"blocks": kv}})
        for t, rid, eng, free, need in self.preemption_events:
            events.append({"name": "preempt", "ph": "i", "s": "p", "pid": eng // engines_per_replica,
                           "ts": round(t * 1e6, 3), "args": {"request": rid, "free_blocks": free, "needed": need}})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"model": self.model, "device": self.device, "layout": self.layout,
                              "engine": self.engine, "iterations_shown": n}}

    def save_chrome_trace(self, path: str | Path, max_iterations: int | None = None) -> Path:
        """Write `chrome_trace()` as JSON to `path` atomically; open it in ui.perfetto.dev."""
        return write_atomic(Path(path), json.dumps(self.chrome_trace(max_iterations), separators=(",", ":")))
