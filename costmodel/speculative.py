"""Speculative decoding and multi-token prediction (MTP): what a step verifies and what it yields.

A speculative decode step drafts `draft_tokens` tokens per sequence, one drafter pass each, then
runs the target model once over the sequence's last token plus the drafts (a verify step, which
reads each sequence's KV cache once for all of them: `Batch.decode_queries`). Draft `i` is kept
when it and every draft before it were accepted; with `acceptance` the chance that a draft is
accepted given the ones before it were, a step emits 1 + a + a^2 + ... + a^n tokens per sequence on
average (the verify step always yields one token of its own).

An MTP drafter is the model's own next-token-prediction module: `draft_layers` decoder layers of the
model's kind (DeepSeek-V3 ships one, `num_nextn_predict_layers: 1`) and the shared LM head, run once
per draft token (costmodel/instance.py). `draft_layers=0` is a drafter whose cost is negligible
(n-gram / prompt lookup).

Published acceptance: DeepSeek-V3 technical report (arXiv 2412.19437, sec. 5.4.3): "the acceptance
rate of the second token prediction ranges between 85% and 90%", a 1.8x decode speed-up; the default
takes the low end. CloudMatrix-Infer (arXiv 2506.12708): one MTP token at 70% acceptance, 1.7 tokens
per step.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEEPSEEK_V3_ACCEPTANCE = 0.85  # DeepSeek-V3 report sec. 5.4.3: 85-90% for the second token; the low end
CLOUDMATRIX_ACCEPTANCE = 0.70  # CloudMatrix-Infer (arXiv 2506.12708): one MTP token, 70% accepted


class Speculation(BaseModel):
    """Draft length, acceptance and drafter size of speculative decoding (MTP by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    draft_tokens: int = Field(default=1, ge=1, le=16, description="Tokens drafted per sequence per step.")
    acceptance: float = Field(default=DEEPSEEK_V3_ACCEPTANCE, gt=0, le=1,
                              description="Chance a draft is accepted given the drafts before it were.")
    draft_layers: int = Field(default=1, ge=0, le=8,
                              description="Decoder layers of the model's kind the drafter runs per draft token "
                                          "(an MTP module: 1; 0 = a drafter of negligible cost).")

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens a sequence emits per verify step."""
        return sum(self.acceptance**i for i in range(self.draft_tokens + 1))

    def label(self) -> str:
        return f"{self.draft_tokens} draft x {self.acceptance:.0%} -> {self.tokens_per_step:.2f} tok/step"


def tokens_per_step(spec: Speculation | None) -> float:
    """Tokens a decoding sequence emits per step: 1 without speculation."""
    return 1.0 if spec is None else spec.tokens_per_step
