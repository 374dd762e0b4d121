"""The torch runner's own per-iteration overhead, fitted from its iteration log.

Each logged iteration's wall time minus what the freshly fitted kernels predict for its batch
(zero engine overhead) is the runner's scheduling, embedding, sampling and launch cost; it is
fitted as `iteration_overhead_ms + running x per_seq_overhead_us` (non-negative least squares).
On the local cluster the runner is the engine, so this tuning applies to every engine name there.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from costmodel.calibration.profile import EngineTuning, Profile
from costmodel.engines import ENGINES
from costmodel.engines import engine as load_engine
from costmodel.instance import Instance
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.ops import Batch
from costmodel.precision import precision
from hardware.specs import NodeGroup


def kernel_step_s(model: ModelSpec, group: NodeGroup, profile: Profile, log: np.ndarray, isl: int) -> np.ndarray:
    """Predicted seconds of each logged iteration (decode, prefill tokens, prompts, context sum, s)
    from the kernel fits alone."""
    bare = load_engine("vllm").model_copy(update={"iteration_overhead_ms": 0.0, "per_seq_overhead_us": 0.0,
                                                  "eager_kernel_overhead_us": 0.0})
    inst = Instance(model, Layout(), precision("bf16"), group, profile.model_copy(update={"engines": {}}), bare)
    dec, pre, prompts, ctx = (log[:, i] for i in range(4))
    batch = Batch(decode_seqs=dec, decode_ctx=ctx / np.maximum(dec, 1.0), prefill_tokens=pre,
                  prefill_span=np.full_like(pre, isl / 2), prefill_seqs=prompts)
    return np.asarray(inst.step_s(batch), dtype=float)


def fit_overhead(model: ModelSpec, group: NodeGroup, profile: Profile, rows: list[tuple[int, int, int, int, float]],
                 isl: int) -> tuple[EngineTuning, float]:
    """The runner's overhead as an EngineTuning, and the median |error| (%) of the iteration times it leaves."""
    log = np.asarray(rows, dtype=float)
    kernels = kernel_step_s(model, group, profile, log, isl)
    running = log[:, 0] + log[:, 2]
    design = np.column_stack([np.ones_like(running), running])
    (fixed, per_seq), _ = nnls(design, log[:, 4] - kernels)
    pred = kernels + fixed + per_seq * running
    err = float(np.median(np.abs(pred - log[:, 4]) / log[:, 4]) * 100.0)
    tuning = EngineTuning(
        iteration_overhead_ms=float(fixed * 1e3), per_seq_overhead_us=float(per_seq * 1e6),
        closed_loop_wave=0.0, ttft_overhead_ms=0.0,
        fitted_on=(f"planner calibrate: {len(rows)} iterations of the torch runner serving a {model.num_layers}-layer "
                   f"calibration Llama on this machine, minus the fitted kernels; median iteration error {err:.1f}%. "
                   "Its clients start staggered (no closed-loop waves) and it has no HTTP front end (no TTFT "
                   "overhead)."))
    return tuning, err


def for_every_engine(profile: Profile, tuning: EngineTuning) -> Profile:
    """The runner stands in for whichever engine a local plan names."""
    return profile.model_copy(update={"engines": {**profile.engines, **dict.fromkeys(ENGINES, tuning)}})
