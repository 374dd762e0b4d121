"""Per-engine serving constants (scheduling overhead, CUDA graphs, memory fraction, defaults)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from costmodel.speculative import Speculation
from hardware.errors import PlannerInputError
from hardware.loading import build, read_mapping, unknown

DATA = Path(__file__).parent / "data" / "engines.yaml"


class Engine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    iteration_overhead_ms: float = Field(ge=0, description="Fixed CPU/scheduling time per iteration.")
    per_seq_overhead_us: float = Field(ge=0, description="Extra time per running sequence per iteration.")
    eager_kernel_overhead_us: float = Field(ge=0, description="Launch cost per kernel outside CUDA graphs.")
    cuda_graph_max_batch: int = Field(ge=0, description="Largest decode batch replayed from a CUDA graph.")
    graphs_cover_prefill: bool = Field(description="CUDA graphs also replay batches with prompt tokens.")
    mem_fraction: float = Field(gt=0, le=1, description="Share of HBM the engine may use.")
    reserve_gib: float = Field(ge=0, description="HBM outside weights, activations and KV pool.")
    max_num_seqs: int = Field(ge=1, description="Default cap on running sequences.")
    max_num_batched_tokens: int = Field(ge=1, description="Default token budget per iteration.")
    chunked_prefill: bool = Field(description="Whether prompts are split into budget-sized chunks.")
    closed_loop_wave: float = Field(ge=0, le=1, description="Share of a closed-loop prefill wave waited behind.")
    resubmit_wait_iterations: float = Field(
        ge=0, le=1, description="Mean wait, in iterations, of a closed-loop client's next request for the iteration "
                                "that will prefill it.")
    ttft_overhead_ms: float = Field(ge=0, description="Request handling before the first prefill and after it.")
    speculation: Speculation | None = Field(
        default=None, description="Speculative decoding / MTP as launched (costmodel/speculative.py); None = off.")
    sources: dict[str, str] = Field(default_factory=dict)


ENGINES = ("vllm", "sglang", "trtllm")


@cache
def engines() -> dict[str, Engine]:
    raw = read_mapping(DATA)
    return {k: build(Engine, {"name": k, **v}, f"engine constants {k}") for k, v in raw.items()}


def engine(name: str) -> Engine:
    if not isinstance(name, str):
        raise PlannerInputError(f"engine={name!r} is not an engine name; use one of {', '.join(ENGINES)}")
    key = name.strip().lower().replace("-", "").replace("tensorrtllm", "trtllm")
    if key not in engines():
        raise unknown("engine", name, list(engines()))
    return engines()[key]
