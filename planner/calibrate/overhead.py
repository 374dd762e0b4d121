"""The torch runner's own per-iteration overhead, fitted from its iteration log.

Each logged iteration's wall time minus what the freshly fitted kernels predict for its batch
(zero engine overhead) is the runner's scheduling, embedding, sampling and launch cost; it is
fitted as `iteration_overhead_ms + running x per_seq_overhead_us` (non-negative least squares on
the lower quartile at each batch size, so another process's time slices do not count as overhead).
On the local cluster the runner is the engine, so this tuning applies to every engine name there.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from costmodel.calibration.profile import EngineTuning, FitError, Profile
from costmodel.engines import ENGINES
from costmodel.engines import engine as load_engine
from costmodel.instance import Instance
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.ops import Batch
from costmodel.precision import precision
from hardware.specs import NodeGroup

QUANTILE = 0.25

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
    resid = log[:, 4] - kernels
    # per running count, a low quantile of the residual: other processes only ever add time
    levels = np.unique(running)
    low = np.array([np.quantile(resid[running == n], QUANTILE) for n in levels])
    weight = np.sqrt([np.sum(running == n) for n in levels])
    design = np.column_stack([np.ones_like(levels), levels]) * weight[:, None]
    (fixed, per_seq), _ = nnls(design, low * weight)
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


def fit_runner_all_reduce(model: ModelSpec, group: NodeGroup, profile: Profile,
                          rows: list[tuple[int, int, int, int, float]], isl: int, tp: int) -> tuple[Profile, float]:
    """The all-reduce as the runner meets it inside a forward pass (ranks drift apart between calls,
    and on a shared machine wait for each other), from iterations served tensor-parallel over `tp`
    ranks: the part of their time the profile (overhead included) leaves unexplained, per collective,
    is added to the all-reduce's fixed latency. Returns the profile and the median iteration error (%)."""
    log = np.asarray(rows, dtype=float)
    inst = Instance(model, Layout(tp=tp), precision("bf16"), group, profile, load_engine("vllm"))
    dec, pre, prompts, ctx = (log[:, i] for i in range(4))
    batch = Batch(decode_seqs=dec, decode_ctx=ctx / np.maximum(dec, 1.0), prefill_tokens=pre,
                  prefill_span=np.full_like(pre, isl / 2), prefill_seqs=prompts)
    pred = np.asarray(inst.step_s(batch), dtype=float)
    running = dec + prompts
    resid = log[:, 4] - pred
    levels = np.unique(running)
    # the median, not a low quantile: a synchronous step waits for whichever rank was held up, so
    # the typical wait is part of what every tensor-parallel iteration costs
    mid = np.array([np.median(resid[running == n]) for n in levels])
    extra = max(0.0, float(np.average(mid, weights=[np.sum(running == n) for n in levels])))
    calls = 2 * model.num_layers + 1  # two all-reduces per layer, and the sampler's gather
    fit = profile.comm_fit("all_reduce")
    tuned = fit.model_copy(update={"alpha_us": fit.alpha_us + extra / calls * 1e6})
    err = float(np.median(np.abs(pred + extra - log[:, 4]) / log[:, 4]) * 100.0)
    note = FitError(rows=len(log), train_mdape=err, leaveout_mdape=err,
                    source=f"{len(log)} tensor-parallel iterations of the torch runner (tp={tp}): "
                           f"+{extra / calls * 1e6:.0f} us per all-reduce over the kernel measurement (no held-out "
                           "rows: the leave-out figure repeats the fit error)")
    return profile.model_copy(update={"comm": {**profile.comm, "all_reduce": tuned},
                                      "fit_error": {**profile.fit_error, "comm.all_reduce_in_runner": note}}), err


def for_every_engine(profile: Profile, tuning: EngineTuning) -> Profile:
    """The runner stands in for whichever engine a local plan names."""
    return profile.model_copy(update={"engines": {**profile.engines, **dict.fromkeys(ENGINES, tuning)}})
