"""Scheduler settings of one simulated engine instance (defaults come from the engine's constants)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from costmodel.engines import Engine
from hardware.loading import Checked

Policy = Literal["chunked", "whole", "prefill_first"]


class SchedulerConfig(Checked):
    """Continuous-batching knobs; any left out take the engine's defaults (`resolve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy | None = Field(
        default=None,
        description="chunked: decodes first, prompt chunks fill the token budget (vLLM V1, SGLang, Sarathi); "
                    "whole: decodes first, then whole prompts that fit the budget (TensorRT-LLM without chunked "
                    "context); prefill_first: an iteration prefills whole prompts and pauses decodes whenever a "
                    "waiting request can start (vLLM V0). Default: chunked if the engine chunks, else whole.")
    chunked_prefill_tokens: int | None = Field(
        default=None, ge=1, description="Token budget per iteration (decode tokens + prompt tokens); "
                                        "default the engine's max_num_batched_tokens.")
    max_num_seqs: int | None = Field(default=None, ge=1, description="Cap on running sequences per instance.")
    block_size: int = Field(default=16, ge=1, description="Tokens per KV-cache block (vLLM's default 16).")
    kv_blocks: int | None = Field(
        default=None, ge=1, description="KV-cache blocks per instance; default from the memory model.")
    router: Literal["round_robin", "least_loaded"] = Field(
        default="round_robin", description="How arrivals are spread over the dp replicas.")

    @model_validator(mode="after")
    def _budget_covers_decodes(self) -> SchedulerConfig:
        if self.chunked_prefill_tokens and self.max_num_seqs and self.chunked_prefill_tokens < self.max_num_seqs:
            raise ValueError("chunked_prefill_tokens must be at least max_num_seqs (every running sequence "
                             "decodes one token per iteration)")
        return self

    def resolve(self, engine: Engine) -> SchedulerConfig:
        """A copy with every default filled from `engine`."""
        budget = self.chunked_prefill_tokens or engine.max_num_batched_tokens
        seqs = min(self.max_num_seqs or engine.max_num_seqs, budget)
        policy = self.policy or ("chunked" if engine.chunked_prefill else "whole")
        return self.model_copy(update={"policy": policy, "chunked_prefill_tokens": budget, "max_num_seqs": seqs})
