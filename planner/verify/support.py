"""What the torch runner implements, checked without importing torch."""

from __future__ import annotations

from costmodel.layout import Layout
from costmodel.models import ModelSpec
from hardware.errors import PlannerInputError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")


def supported(spec: ModelSpec) -> None:
    """Raise one sentence when the runner cannot build `spec`."""
    if spec.family not in FAMILIES or spec.mla or spec.attention_sinks or spec.sliding_layers:
        raise PlannerInputError(
            f"model {spec.name}: the torch runner builds {', '.join(FAMILIES)} (GQA, SwiGLU, top-k MoE), not "
            f"{spec.family}; verify it with --runner endpoint against a real engine")


def check_runnable(layout: Layout) -> None:
    """The layouts this runner implements, or one sentence saying what it does not."""
    if layout.sp > 1:
        raise PlannerInputError(f"layout.sp={layout.sp}: the torch runner does not split prompts over ranks; "
                                "verify sp plans with --runner endpoint")
    if layout.attention_dp > 1 and layout.tp > 1:
        raise PlannerInputError(f"layout tp={layout.tp} with attention_dp={layout.attention_dp}: the torch runner "
                                "runs attention data parallelism with tp=1 only")
    if layout.attention_dp > 1 and layout.pp > 1:
        raise PlannerInputError(f"layout attention_dp={layout.attention_dp} with pp={layout.pp}: the torch runner "
                                "does not pipeline attention-DP ranks")
    if layout.ep not in (1, layout.tp * layout.attention_dp):
        raise PlannerInputError(f"layout.ep={layout.ep}: the torch runner splits experts over the whole "
                                f"tp x attention_dp group ({layout.tp * layout.attention_dp}) or not at all")
