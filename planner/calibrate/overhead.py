"""The torch runner as an engine: its kernels' speed inside a forward pass and its own overhead,
fitted from the iteration logs of it serving the calibration Llamas (`measure.serving_models`).

The kernel fits come from kernels timed one at a time, their operands rotated so they come cold from
memory as in a served model. Inside the runner a layer's kernels also run between small ops the
fits do not cover (norms, RoPE, KV-cache writes, masks: each a few microseconds of dispatch), its
attention gathers every sequence's cache over the batch's longest context, and the iteration adds
scheduling, embedding and sampling. Like a real engine's end-to-end tuning
(`costmodel.calibration.engine_fit`), the fit finds the runner's multiplier on decode-attention time and on
the kernels' fixed latency (which carries the small ops' dispatch, layer by layer) and its overhead
per iteration and per running sequence, by least squares on log(predicted / measured) mean
iteration time of each one-replica-per-rank run: a TPOT is a mean iteration time, slow iterations
included, so means are what the fit holds. The compute- and memory-side scales stay 1: freed, they
let the fit trade the LM head's memory time for per-iteration overhead, which matches the
calibration models within 3% and misses tiny-llama's TPOT by 25-35%, where kept they miss it by
3-13% (one measured session, `planner calibrate` then the three tiny-llama layouts). Serving models
of one, two and three layers with 16k and 32k vocabularies, at two prompt lengths, make layer,
attention, per-sequence and iteration costs separable. On the local cluster the runner is the
engine, so this tuning applies to every engine name there.

The tensor-parallel runs then give the all-reduce as the runner meets it inside a forward pass:
the ranks drift apart between collectives (a rank whose core is busier, or whose memory traffic
collides with its peer's, makes the other wait), so the part of their time the tuned profile leaves
unexplained is added, per collective, to the all-reduce's fixed latency. The pipelined runs give the
stage-to-stage hand-over alike (`fit_runner_send_recv`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from costmodel.calibration.profile import EngineTuning, FitError, Profile
from costmodel.engines import ENGINES
from costmodel.engines import engine as load_engine
from costmodel.instance import Instance
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.ops import Batch
from costmodel.precision import precision
from hardware.specs import NodeGroup

Log = Sequence[tuple[int, int, int, int, float]]  # decode seqs, prefill tokens, prompts, context sum, seconds
# (name, initial, lower, upper) of the fitted runner parameters
# (compute and memory scales stay 1: see the module doc)
PARAMS = (("decode_attention_scale", 1.0, 0.2, 5.0), ("fixed_scale", 1.0, 0.0, 100.0),
          ("iteration_overhead_ms", 1.0, 0.0, 50.0), ("per_seq_overhead_us", 10.0, 0.0, 2000.0))
LOSS_SCALE = 0.1  # soft-L1 knee on log ratios: iterations more than ~10% off weigh less
HAND_OVER_MAX_US = 50_000.0  # bound of the fitted extra per stage-to-stage send


@dataclass(frozen=True)
class RunnerFit:
    tuning: EngineTuning
    error_pct: float  # median |error| of the runs' mean iteration time, one replica per rank
    ratios: list[float]  # measured / predicted mean iteration time of each run


Run = tuple[ModelSpec, int, Log]  # the served model, its prompt length, the run's iterations


def _batch(log: np.ndarray, isl: int) -> Batch:
    dec, pre, prompts, ctx = (log[:, i] for i in range(4))
    return Batch(decode_seqs=dec, decode_ctx=ctx / np.maximum(dec, 1.0), prefill_tokens=pre,
                 prefill_span=np.full_like(pre, isl / 2), prefill_seqs=prompts)


def step_s(model: ModelSpec, layout: Layout, group: NodeGroup, profile: Profile, log: np.ndarray, isl: int,
           tuning: EngineTuning | None = None) -> np.ndarray:
    """Predicted seconds of each logged iteration, with `tuning` as the engine's (none: kernels alone)."""
    bare = load_engine("vllm").model_copy(update={"iteration_overhead_ms": 0.0, "per_seq_overhead_us": 0.0,
                                                  "eager_kernel_overhead_us": 0.0})
    prof = profile.model_copy(update={"engines": {"vllm": tuning} if tuning else {}})
    inst = Instance(model, layout, precision("bf16"), group, prof, bare)
    return np.asarray(inst.step_s(_batch(log, isl)), dtype=float) * np.ones(len(log))


def _tuning(x: Sequence[float], fitted_on: str = "") -> EngineTuning:
    # eager_kernel_overhead_us 0: the fit is on the runner's whole iterations with no launch cost per kernel
    # (`step_s`), its dispatch carried by fixed_scale at every batch size, so predictions add none either
    return EngineTuning(**{name: float(v) for (name, *_), v in zip(PARAMS, x, strict=True)},
                        closed_loop_wave=0.0, resubmit_wait_iterations=0.0, ttft_overhead_ms=0.0,
                        eager_kernel_overhead_us=0.0, fitted_on=fitted_on)


Arrays = list[tuple[ModelSpec, int, np.ndarray]]


def _arrays(runs: Sequence[Run]) -> Arrays:
    return [(m, isl, np.asarray(log, dtype=float)) for m, isl, log in runs if len(log)]


def _ratios(runs: Arrays, layout: Layout, group: NodeGroup, profile: Profile,
            tuning: EngineTuning | None) -> np.ndarray:
    """Measured / predicted mean iteration time of each run: TPOT is a mean iteration time, so the fit
    holds means (a slow iteration, another process's time slice in it, counts as it does in a TPOT)."""
    return np.array([log[:, 4].mean() / step_s(m, layout, group, profile, log, isl, tuning).mean()
                     for m, isl, log in runs])


def fit_runner(runs: Sequence[Run], group: NodeGroup, profile: Profile) -> RunnerFit:
    """The runner's EngineTuning from one-replica-per-rank runs of the serving models (see module doc)."""
    arr = _arrays(runs)

    def residual(x: np.ndarray) -> np.ndarray:
        return np.log(_ratios(arr, Layout(), group, profile, _tuning(x)))

    x0 = np.array([p[1] for p in PARAMS])
    lo, hi = np.array([p[2] for p in PARAMS]), np.array([p[3] for p in PARAMS])
    sol = least_squares(residual, x0, bounds=(lo, hi), loss="soft_l1", f_scale=LOSS_SCALE)
    tuning = _tuning(sol.x)
    ratios = _ratios(arr, Layout(), group, profile, tuning)
    err = float(np.median(np.abs(1.0 / ratios - 1.0)) * 100.0)
    iterations = sum(len(log) for _, _, log in arr)
    shapes = ", ".join(dict.fromkeys(f"{m.num_layers} layer(s)/{m.vocab_size} vocab" for m, _, _ in arr))
    note = (f"planner calibrate: {len(arr)} runs ({iterations} iterations) of the torch runner serving calibration "
            f"Llamas ({shapes}) on this machine, one replica per rank; median error of a run's mean iteration time "
            f"{err:.1f}%. Its clients start staggered (no closed-loop waves), resubmit inside its scheduler (a new "
            "prompt runs in the very next iteration) and it has no HTTP front end (no TTFT overhead).")
    return RunnerFit(tuning.model_copy(update={"fitted_on": note}), err, [float(r) for r in ratios])


def with_comm_latency(profile: Profile, op: str, extra_us: float) -> Profile:
    """The profile with `extra_us` more fixed latency on every `op` collective (a wait the runner meets
    that the kernel measurement alone did not)."""
    fit = profile.comm_fit(op)
    return profile.model_copy(update={"comm": {**profile.comm, op: fit.model_copy(
        update={"alpha_us": fit.alpha_us + extra_us})}})


def _noted(tuned: Profile, key: str, runs: Arrays, layout: Layout, group: NodeGroup, source: str,
           tuning: EngineTuning | None) -> tuple[Profile, list[float]]:
    """The tuned profile with its fit error recorded under `key` (the runs are all it was fitted on, so the
    leave-out figure repeats the fit error), and the measured / predicted ratio of each run."""
    ratios = _ratios(runs, layout, group, tuned, tuning)
    err = float(np.median(np.abs(1.0 / ratios - 1.0)) * 100.0)
    note = FitError(rows=len(runs), train_mdape=err, leaveout_mdape=err, source=source)
    return tuned.model_copy(update={"fit_error": {**tuned.fit_error, key: note}}), [float(r) for r in ratios]


def fit_runner_all_reduce(runs: Sequence[Run], group: NodeGroup, profile: Profile,
                          tp: int) -> tuple[Profile, list[float]]:
    """The all-reduce as the runner meets it inside a forward pass, from runs served tensor-parallel over
    `tp` ranks (see module doc): the profile with the extra latency per all-reduce, and the measured /
    predicted mean iteration time of each run afterwards."""
    arr = _arrays(runs)
    tuning = profile.engines.get("vllm")
    resid = sum(float((log[:, 4] - step_s(m, Layout(tp=tp), group, profile, log, isl, tuning)).sum())
                for m, isl, log in arr)
    # per iteration the model has two all-reduces a layer; the runner also gathers the sampler's vocabulary
    # shards, a wait the cost model does not count apart, so the all-reduces carry it
    calls = sum(len(log) * 2.0 * m.num_layers for m, _, log in arr)
    # a synchronous step waits for whichever rank was held up, so the mean wait is part of what every
    # tensor-parallel iteration costs
    extra = max(0.0, resid / calls)
    return _noted(with_comm_latency(profile, "all_reduce", extra * 1e6), "comm.all_reduce_in_runner", arr,
                  Layout(tp=tp), group,
                  f"{len(arr)} tensor-parallel runs of the torch runner (tp={tp}): +{extra * 1e6:.0f} us per "
                  "all-reduce over the kernel measurement; error of each run's mean iteration time (no "
                  "held-out runs: the leave-out figure repeats the fit error)", tuning)


def fit_runner_send_recv(runs: Sequence[Run], group: NodeGroup, profile: Profile,
                         pp: int) -> tuple[Profile, list[float]]:
    """The hand-over between pipeline stages as the runner meets it, from runs served pipelined over `pp`
    ranks (see module doc): the profile with the extra latency per stage-to-stage send, and the measured /
    predicted mean round of each run afterwards.

    A logged round is one micro-batch group's step, from its previous tokens coming back to these: every
    stage ran it once, and ran the other groups' steps between. The cost model's step is that round for
    the batch of all `pp` groups together (`Instance.step_s`), so it is predicted at `pp` times the logged
    group's batch. What the model leaves unexplained is each stage's own work around its layers (the
    later stages receive, unpack and, at the last, sample; the model gives the scheduler's overhead to the
    first stage only), the tokens' way back to the first stage, and the wait of a stage that sleeps in a
    gloo receive until its peer's message lands; it is added to each of the `pp - 1` sends of a round, as
    much as makes the runs' predicted time their measured time."""
    arr = [(m, isl, np.column_stack([log[:, :4] * pp, log[:, 4:]])) for m, isl, log in _arrays(runs)]
    tuning = profile.engines.get("vllm")
    lay = Layout(pp=pp)
    measured = sum(float(log[:, 4].sum()) for _, _, log in arr)

    def short_s(us: float) -> float:  # measured less predicted time over every round
        prof = with_comm_latency(profile, "send_recv", us)
        return measured - sum(float(step_s(m, lay, group, prof, log, isl, tuning).sum()) for m, isl, log in arr)

    # a round is the longer of one micro-batch's pass (sends included) and pp turns of the slowest stage, so
    # the extra shows only once the pass is the longer: solved for (bisection; predicted time only grows with
    # it), not divided out
    lo, hi = 0.0, HAND_OVER_MAX_US
    if short_s(lo) <= 0:
        hi = 0.0
    for _ in range(40 if hi > 0 else 0):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if short_s(mid) > 0 else (lo, mid)
    return _noted(with_comm_latency(profile, "send_recv", hi), "comm.send_recv_in_runner", arr, lay, group,
                  f"{len(arr)} pipelined runs of the torch runner (pp={pp}): +{hi:.0f} us per "
                  "stage-to-stage send over the send/recv measurement; error of each run's mean round (no "
                  "held-out runs: the leave-out figure repeats the fit error)", tuning)


def error_band(ratios: Sequence[float]) -> dict[str, tuple[float, float]]:
    """p10/p90 of measured / predicted mean iteration time over the calibration runs: how far a local
    prediction's truth falls, 80% of the time (TPOT is a mean iteration time; TTFT is taken alike)."""
    lo, hi = (round(float(v), 3) for v in np.percentile(np.asarray(ratios), [10, 90]))
    return {"ttft_ms": (lo, hi), "tpot_ms": (lo, hi)}


def for_every_engine(profile: Profile, tuning: EngineTuning) -> Profile:
    """The runner stands in for whichever engine a local plan names."""
    return profile.model_copy(update={"engines": {**profile.engines, **dict.fromkeys(ENGINES, tuning)}})
