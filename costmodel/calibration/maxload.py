"""Published max-load throughput, and the cost model's prediction of it.

Max load: a client feeds requests at an infinite rate (no delay between them), so the engine runs as
many sequences as its KV cache and batch cap admit, all the time; the figure is total output tokens/s.
The model's counterpart is a closed loop with every admissible sequence running
(`costmodel.serving.capacity_rps`).
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodel.calibration.profile import Profile, profile_for
from costmodel.catalog import model as load_model
from costmodel.engines import engine as load_engine
from costmodel.estimate import build_instance, instance_memory
from costmodel.instance import Instance
from costmodel.layout import Layout
from costmodel.precision import precision as load_precision
from costmodel.serving import capacity_rps, max_running
from costmodel.workload import Workload
from hardware.catalog import cluster as load_cluster

TRTLLM_V1 = ("TensorRT-LLM perf overview (v1.0 docs, trtllm-bench, FP8 checkpoints with FP8 KV cache, total output "
             "tok/s at max load), as listed in shared/data/README.md")


@dataclass(frozen=True)
class MaxLoadRow:
    model: str  # catalog name
    cluster: str
    tp: int
    isl: int
    osl: int
    output_tok_s: float
    engine: str = "trtllm"
    precision: str = "fp8"
    kv: str = "fp8"
    source: str = TRTLLM_V1
    note: str = ""


ROWS = (
    MaxLoadRow("llama-3.1-8b", "dgx-h100", 1, 128, 128, 28312.0),
    MaxLoadRow("llama-3.1-8b", "dgx-h100", 1, 1000, 1000, 15220.0),
    # Llama-3.3-70B has Llama-3.1-70B's architecture (same config.json shapes)
    MaxLoadRow("llama-3.1-70b", "dgx-h100", 2, 1000, 1000, 4205.0, note="published for Llama-3.3-70B"),
    MaxLoadRow("llama-3.1-405b", "dgx-h100", 8, 1000, 1000, 2919.0),
)


@dataclass(frozen=True)
class MaxLoadPrediction:
    row: MaxLoadRow
    output_tok_s: float
    running: int  # sequences the instance holds at once (KV cache or batch cap)

    @property
    def ratio(self) -> float:
        return self.output_tok_s / self.row.output_tok_s


def instance_for(row: MaxLoadRow, profile: Profile | None = None) -> Instance:
    """The serving instance of `row`: its model, layout, precision and engine, on `profile` (else the shipped one)."""
    group = load_cluster(row.cluster).groups[0]
    return build_instance(load_model(row.model), Layout(tp=row.tp), load_precision(row.precision, row.kv), group,
                          profile or profile_for(group.device.name), load_engine(row.engine))


def predict_max_load(row: MaxLoadRow, profile: Profile | None = None) -> MaxLoadPrediction:
    """Output tok/s of `row`'s model, layout and lengths with every admissible sequence running."""
    inst = instance_for(row, profile=profile)
    mem = instance_memory(inst, Workload(isl=row.isl, osl=row.osl, concurrency=1), inst.engine.max_num_batched_tokens)
    cap = max_running(inst, mem.kv_tokens, row.isl, row.osl)
    return MaxLoadPrediction(row, capacity_rps(inst, row.isl, row.osl, cap) * row.osl, cap)
