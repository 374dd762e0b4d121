"""Workloads (request lengths and load) and service-level objectives."""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from hardware.errors import PlannerInputError
from hardware.loading import Checked


class Workload(Checked):
    """Fixed-length requests under a closed loop (`concurrency`) or an open loop (`rate_rps`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    isl: int = Field(ge=1, description="Input (prompt) tokens per request.")
    osl: int = Field(ge=1, description="Output tokens per request.")
    concurrency: int | None = Field(default=None, ge=1, description="Closed-loop clients.")
    rate_rps: float | None = Field(default=None, gt=0, description="Open-loop arrivals per second.")

    @model_validator(mode="after")
    def _one_load(self) -> Workload:
        if (self.concurrency is None) == (self.rate_rps is None):
            raise ValueError("give exactly one of 'concurrency' (closed loop) or 'rate_rps' (open loop)")
        return self

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    def per_replica(self, replicas: int) -> Workload:
        """The share one of `replicas` identical instances sees behind a balanced router."""
        if self.concurrency is not None:
            return self.model_copy(update={"concurrency": max(1, -(-self.concurrency // replicas))})
        return self.model_copy(update={"rate_rps": self.rate_rps / replicas})


class SLO(Checked):
    """Latency objectives; every one given must hold (mean values, as the benchmarks report)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_ms: float | None = Field(default=None, gt=0, description="Mean time to first token.")
    tpot_ms: float | None = Field(default=None, gt=0, description="Mean time per output token.")
    min_output_tok_s: float | None = Field(default=None, gt=0, description="Floor on throughput.")

    def violations(self, ttft_ms: float, tpot_ms: float, output_tok_s: float) -> dict[str, float]:
        """Objective -> ratio of achieved to allowed (>1 means violated)."""
        out = {}
        if self.ttft_ms is not None and ttft_ms > self.ttft_ms:
            out["ttft_ms"] = ttft_ms / self.ttft_ms
        if self.tpot_ms is not None and tpot_ms > self.tpot_ms:
            out["tpot_ms"] = tpot_ms / self.tpot_ms
        if self.min_output_tok_s is not None and output_tok_s < self.min_output_tok_s:
            out["min_output_tok_s"] = self.min_output_tok_s / max(output_tok_s, 1e-9)
        return out


def check_context(model: str, max_context: int | None, isl: int, osl: int) -> None:
    """A request longer than the model's context would be costed as if the model took it."""
    if max_context is not None and isl + osl > max_context:
        raise PlannerInputError(
            f"workload: isl + osl = {isl + osl:,} tokens exceeds the {max_context:,}-token context of {model} "
            "(max_position_embeddings in its config); shorten the requests or use a longer-context model")
