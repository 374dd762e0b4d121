"""Fit per-engine tuning (in-engine kernel speed, step overheads, closed-loop TTFT) to measured runs.

Rows are end-to-end aggregated closed-loop measurements (`silicon.Row`). For each engine we fit
an `EngineTuning` by least squares on log(predicted / measured) TPOT and TTFT, holding whole
groups (model x system x engine x precision) out of the fit so the reported held-out error says
how well the tuning transfers to a model or system it never saw.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from costmodel.calibration.profile import EngineTuning, Profile
from costmodel.calibration.silicon import Row, ape, predict

# (name, initial, lower, upper): the tuning's free parameters
PARAMS = (
    ("compute_scale", 1.0, 0.3, 3.0),
    ("memory_scale", 1.0, 0.3, 3.0),
    ("moe_scale", 1.0, 0.1, 3.0),
    ("fixed_scale", 1.0, 0.0, 3.0),
    ("iteration_overhead_ms", 2.0, 0.0, 20.0),
    ("per_seq_overhead_us", 5.0, 0.0, 100.0),
    ("closed_loop_wave", 0.3, 0.0, 1.0),
    ("ttft_overhead_ms", 5.0, 0.0, 200.0),
)
TTFT_WEIGHT = 0.5  # measured TTFT is the noisier of the two (closed-loop waves, warm-up)


def tuning_from(x: Sequence[float], fitted_on: str = "") -> EngineTuning:
    return EngineTuning(**{name: float(v) for (name, *_), v in zip(PARAMS, x, strict=True)}, fitted_on=fitted_on)


def _tuned(profiles: dict[str, Profile], engine: str, t: EngineTuning) -> dict[str, Profile]:
    return {dev: p.model_copy(update={"engines": {**p.engines, engine: t}}) for dev, p in profiles.items()}


def residuals(rows: Sequence[Row], profiles: Callable[[Row], Profile], kv: str = "auto") -> np.ndarray:
    out = []
    for r in rows:
        e = predict(r, kv, profiles(r))
        tpot = e.tpot_ms if math.isfinite(e.tpot_ms) else 1e6
        ttft = e.ttft_ms if math.isfinite(e.ttft_ms) else 1e7
        out += [math.log(tpot / r.tpot_ms), TTFT_WEIGHT * math.log(ttft / r.ttft_ms)]
    return np.asarray(out)


@dataclass(frozen=True)
class EngineFit:
    engine: str
    tuning: EngineTuning
    train_rows: int
    heldout_groups: tuple[str, ...]
    train_mdape: tuple[float, float]  # TTFT, TPOT
    heldout_mdape: tuple[float, float]


def mdape(rows: Sequence[Row], profiles: Callable[[Row], Profile], kv: str = "auto") -> tuple[float, float]:
    if not rows:
        return (math.nan, math.nan)
    errs = [(ape(e.ttft_ms, r.ttft_ms), ape(e.tpot_ms, r.tpot_ms)) for r in rows for e in [predict(r, kv, profiles(r))]]
    return statistics.median(x for x, _ in errs), statistics.median(y for _, y in errs)


def fit_engine(engine: str, rows: Sequence[Row], base: dict[str, Profile], device_of: Callable[[Row], str],
               heldout: Sequence[str] = (), sample: int = 160, seed: int = 0, kv: str = "auto") -> EngineFit:
    """Fit `engine`'s tuning on its rows outside the `heldout` groups (a seeded sample of them)."""
    mine = [r for r in rows if r.backend == engine]
    train = [r for r in mine if r.group not in heldout]
    test = [r for r in mine if r.group in heldout]
    rng = np.random.default_rng(seed)
    fit_rows = [train[i] for i in sorted(rng.choice(len(train), min(sample, len(train)), replace=False))]

    def profiles_for(t: EngineTuning) -> Callable[[Row], Profile]:
        tuned = _tuned(base, engine, t)
        return lambda r: tuned[device_of(r)]

    x0 = np.array([p[1] for p in PARAMS])
    lo, hi = np.array([p[2] for p in PARAMS]), np.array([p[3] for p in PARAMS])
    sol = least_squares(lambda x: residuals(fit_rows, profiles_for(tuning_from(x)), kv), x0, bounds=(lo, hi),
                        loss="soft_l1", f_scale=0.2, diff_step=0.02, max_nfev=60)
    final = profiles_for(tuning_from(sol.x))
    train_err, test_err = mdape(train, final, kv), mdape(test, final, kv)
    note = (f"{len(train)} rows of {engine} (H100/H200 agg, visible silicon file); held out "
            f"{', '.join(heldout) or 'none'}: TTFT/TPOT MdAPE {test_err[0]:.1f}%/{test_err[1]:.1f}%")
    return EngineFit(engine, tuning_from(sol.x, note), len(train), tuple(heldout), train_err, test_err)
