"""Workloads for the simulator: length distributions, arrival processes, closed loops and traces.

`SimWorkload` is what `simulate` takes. It is `Workload` widened: `isl`/`osl` may be a
distribution, arrivals may be Poisson, gamma (bursty, with a coefficient of variation) or
evenly spaced, and requests may come from a trace file. `draw` turns it into concrete request
lengths and unit-rate arrival times (common random numbers: the same seed at another rate gives
the same requests, only spaced differently, which keeps a goodput bisection monotone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from costmodel.traces import TRACE_FORMATS, Trace, read_trace
from costmodel.workload import Workload
from hardware.loading import Checked


class LengthDist(Checked):
    """Token counts per request: fixed, uniform, lognormal or empirical, clipped to [min, max]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dist: Literal["fixed", "uniform", "lognormal", "empirical"] = Field(description="Distribution family.")
    value: int | None = Field(default=None, ge=1, description="fixed: the length.")
    low: int | None = Field(default=None, ge=1, description="uniform: smallest length (inclusive).")
    high: int | None = Field(default=None, ge=1, description="uniform: largest length (inclusive).")
    mean: float | None = Field(default=None, gt=0, description="lognormal: mean length (before clipping).")
    sigma: float | None = Field(default=None, gt=0, description="lognormal: std-dev of log length.")
    values: tuple[int, ...] | None = Field(default=None, description="empirical: observed lengths.")
    weights: tuple[float, ...] | None = Field(default=None, description="empirical: weight of each value.")
    min: int = Field(default=1, ge=1, description="Clip samples below this.")
    max: int | None = Field(default=None, ge=1, description="Clip samples above this.")

    @model_validator(mode="after")
    def _params(self) -> LengthDist:
        need = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("mean", "sigma"),
                "empirical": ("values",)}[self.dist]
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.dist} length needs '{name}'")
        if self.dist == "uniform" and self.low > self.high:  # type: ignore[operator]
            raise ValueError("uniform 'low' must not exceed 'high'")
        if self.dist == "empirical":
            if not self.values or min(self.values) < 1:
                raise ValueError("empirical 'values' must be a non-empty list of lengths >= 1")
            if self.weights is not None and (len(self.weights) != len(self.values) or min(self.weights) < 0
                                             or sum(self.weights) <= 0):
                raise ValueError("empirical 'weights' must be non-negative, one per value, not all zero")
        if self.max is not None and self.max < self.min:
            raise ValueError("'max' must not be below 'min'")
        return self

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.dist == "fixed":
            out = np.full(n, float(self.value))
        elif self.dist == "uniform":
            out = rng.integers(self.low, self.high + 1, size=n).astype(float)  # type: ignore[operator]
        elif self.dist == "lognormal":
            mu = math.log(self.mean) - self.sigma**2 / 2  # type: ignore[arg-type,operator]
            out = np.rint(rng.lognormal(mu, self.sigma, size=n))
        else:
            p = None if self.weights is None else np.asarray(self.weights) / sum(self.weights)
            out = rng.choice(np.asarray(self.values, dtype=float), size=n, p=p)
        return np.clip(out, self.min, self.max if self.max is not None else None).astype(np.int64)

    def mean_tokens(self) -> float:
        """Mean before clipping (exact for fixed, uniform, empirical; lognormal's stated mean)."""
        if self.dist == "fixed":
            return float(self.value)  # type: ignore[arg-type]
        if self.dist == "uniform":
            return (self.low + self.high) / 2  # type: ignore[operator]
        if self.dist == "lognormal":
            return float(self.mean)  # type: ignore[arg-type]
        w = np.ones(len(self.values)) if self.weights is None else np.asarray(self.weights)  # type: ignore[arg-type]
        return float(np.average(self.values, weights=w))


Length = int | LengthDist


def as_dist(length: Length) -> LengthDist:
    return length if isinstance(length, LengthDist) else LengthDist(dist="fixed", value=length)


class SimWorkload(Checked):
    """Requests for the simulator: lengths, and a closed loop, an open-loop rate, or a trace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    isl: LengthDist | None = Field(default=None, description="Input tokens: a number or a distribution.")
    osl: LengthDist | None = Field(default=None, description="Output tokens: a number or a distribution.")
    concurrency: int | None = Field(default=None, ge=1, description="Closed-loop clients (zero think time).")
    rate_rps: float | None = Field(default=None, gt=0, description="Open-loop mean arrival rate.")
    num_requests: int | None = Field(default=None, ge=1,
                                     description="Requests to simulate (default 1000, or the whole trace).")
    arrival: Literal["poisson", "gamma", "constant"] = Field(
        default="poisson", description="Open-loop arrival process.")
    cv: float = Field(default=1.0, gt=0, description="gamma: coefficient of variation of the gaps (>1 is bursty).")
    trace: str | None = Field(default=None, description="Trace file to replay (BurstGPT, Azure or Mooncake).")
    trace_format: Literal["burstgpt", "azure", "mooncake"] | None = Field(
        default=None, description="Trace format; guessed from the file when omitted.")

    @field_validator("isl", "osl", mode="before")
    @classmethod
    def _number_is_fixed(cls, v: Any) -> Any:
        """A plain token count means a fixed length (so errors name the distribution's fields)."""
        if isinstance(v, int | float) and not isinstance(v, bool):
            return {"dist": "fixed", "value": v}
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SimWorkload:
        if self.concurrency is not None and self.rate_rps is not None:
            raise ValueError("give 'concurrency' (closed loop) or 'rate_rps' (open loop), not both")
        if self.trace is None:
            if self.concurrency is None and self.rate_rps is None:
                raise ValueError("give 'concurrency', 'rate_rps' or a 'trace'")
            if self.isl is None or self.osl is None:
                raise ValueError("give 'isl' and 'osl' (numbers or distributions) or a 'trace'")
        if self.arrival == "gamma" and self.concurrency is not None:
            raise ValueError("'arrival' applies to open loops; a closed loop sends on completion")
        return self

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    def with_rate(self, rate_rps: float) -> SimWorkload:
        return self.model_copy(update={"rate_rps": rate_rps, "concurrency": None})

    @classmethod
    def from_workload(cls, wl: Workload, num_requests: int | None = None) -> SimWorkload:
        return cls(isl=wl.isl, osl=wl.osl, concurrency=wl.concurrency, rate_rps=wl.rate_rps,
                   num_requests=num_requests)


@dataclass(frozen=True)
class Draw:
    """Concrete requests: lengths, and arrival times at `base_rate_rps` (None for a closed loop)."""

    isl: np.ndarray
    osl: np.ndarray
    arrival_s: np.ndarray | None
    base_rate_rps: float
    concurrency: int | None
    trace: Trace | None = None

    @property
    def n(self) -> int:
        return len(self.isl)

    def arrivals_at(self, rate_rps: float | None) -> np.ndarray | None:
        """Arrival times rescaled to `rate_rps` (the drawn ones when None)."""
        if self.arrival_s is None or rate_rps is None:
            return self.arrival_s
        return self.arrival_s * (self.base_rate_rps / rate_rps)


def unit_gaps(n: int, process: str, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Inter-arrival gaps with mean 1 s: Poisson (exponential), gamma with `cv`, or constant."""
    if process == "constant":
        return np.ones(n)
    if process == "poisson":
        return rng.exponential(1.0, size=n)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / shape, size=n)


def draw(wl: SimWorkload, seed: int = 0) -> Draw:
    """The requests `wl` describes, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    if wl.trace is not None:
        tr = read_trace(Path(wl.trace), wl.trace_format)
        n = min(wl.num_requests or tr.n, tr.n)
        isl = as_dist(wl.isl).sample(n, rng) if wl.isl is not None else tr.isl[:n].copy()
        osl = as_dist(wl.osl).sample(n, rng) if wl.osl is not None else tr.osl[:n].copy()
        times = tr.arrival_s[:n] - tr.arrival_s[0]
        span = times[-1] if n > 1 else 0.0
        base = (n - 1) / span if span > 0 else 1.0
        if wl.concurrency is not None:
            return Draw(isl, osl, None, base, wl.concurrency, tr)
        if wl.rate_rps is None:  # replay the trace's own timing
            return Draw(isl, osl, times, base, None, tr)
        return Draw(isl, osl, times * (base / wl.rate_rps), wl.rate_rps, None, tr)
    n = wl.num_requests or 1000
    isl = as_dist(wl.isl).sample(n, rng)  # type: ignore[arg-type]
    osl = as_dist(wl.osl).sample(n, rng)  # type: ignore[arg-type]
    if wl.concurrency is not None:
        return Draw(isl, osl, None, 1.0, wl.concurrency)
    gaps = unit_gaps(n, wl.arrival, wl.cv, rng)
    gaps[0] = 0.0  # the first request opens the run
    return Draw(isl, osl, np.cumsum(gaps) / wl.rate_rps, wl.rate_rps, None)  # type: ignore[operator]


__all__ = ["TRACE_FORMATS", "Draw", "LengthDist", "SimWorkload", "as_dist", "draw", "unit_gaps"]
