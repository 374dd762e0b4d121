"""Fit the roofline efficiencies of each op family to measured kernel latencies.

Every family keeps the analytic form of `costmodel.ops` (FLOPs and bytes from the shape,
`RooflineFit` for the efficiency), so a fit extrapolates to shapes and devices never measured.
Parameters are fitted on log(predicted / measured) with a robust loss; the leave-out error is the
median APE over 5 folds each held out of its own fit.

Input files use the AIConfigurator per-kernel format (see shared/data/README.md): `gemm`,
`context_attention`, `generation_attention`, `moe`, `nccl`, `custom_allreduce` CSVs (optionally
gzipped), latencies in milliseconds; `planner calibrate` writes the same columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from costmodel.calibration.profile import CommFit, FitError, RooflineFit
from costmodel.ops import ROUTED_PASSES, experts_touched
from hardware.specs import Accelerator

DTYPES = {"bfloat16": "bf16", "float16": "bf16", "half": "bf16", "fp8": "fp8", "fp8_block": "fp8_block",
          "int4_wo": "int4", "int8": "int8", "nvfp4": "fp4"}
# Not fitted: the h200 `w4a16_mxfp4` MoE rows do not shrink with EP (8 tokens take 223 us at EP 1
# to 4), unlike every other dtype, so they do not describe per-rank work; gpt-oss on Hopper falls
# back to the 16-bit MoE fit with 4-bit weight bytes.
BYTES = {"bf16": 2.0, "fp8": 1.0, "fp8_block": 1.0, "int4": 0.5, "int8": 1.0, "fp4": 0.5}
PEAK_DTYPE = {"bf16": "bf16", "fp8": "fp8", "fp8_block": "fp8", "int4": "bf16", "int8": "int8", "fp4": "fp4"}
FOLDS = 5
MIN_ROWS = 20
FIT_PARAMS = 7  # free parameters of a roofline family fit (see _from_vector)
ITEM_PARAMS = 2  # and of a family with work items: cost per item, items half-point
STEP_US_MAX = 1e5  # bound on a collective's fitted per-step latency (us)


@dataclass(frozen=True)
class Shapes:
    """What a roofline family needs per row: FLOPs, bytes, extent m, depth k, measured seconds, and
    work items (decode attention's sequence x KV head streams; 0 = the family has none)."""

    flops: np.ndarray
    bytes: np.ndarray
    m: np.ndarray
    seconds: np.ndarray
    k: np.ndarray | float = 0.0
    items: np.ndarray | float = 0.0


def roofline_s(fit: RooflineFit, s: Shapes, peak: float, bw: float) -> np.ndarray:
    return np.asarray(fit.time_s(s.flops, s.bytes, peak, bw, s.m, s.k, s.items))


def _from_vector(x: np.ndarray, shape_dependent: bool, depth: bool) -> RooflineFit:
    # half-points are searched on a log10 scale: they span orders of magnitude; a vector longer
    # than FIT_PARAMS carries the work-item terms
    items = len(x) > FIT_PARAMS
    return RooflineFit(compute_eff=float(x[0]), m_half=float(10 ** x[1]) if shape_dependent else 0.0,
                       mem_eff=float(x[2]), t0_us=float(x[3]), bytes_half=float(10 ** x[4]),
                       k_half=float(10 ** x[5]) if depth else 0.0,
                       m_power=float(x[6]) if shape_dependent else 1.0,
                       item_ns=float(x[7]) if items else 0.0, items_half=float(10 ** x[8]) if items else 0.0)


def _has_items(s: Shapes) -> bool:
    return isinstance(s.items, np.ndarray)


def _solve(s: Shapes, peak: float, bw: float, shape_dependent: bool) -> RooflineFit:
    depth = isinstance(s.k, np.ndarray)

    def residual(x: np.ndarray) -> np.ndarray:
        return np.log(roofline_s(_from_vector(x, shape_dependent, depth), s, peak, bw) / s.seconds)

    x0 = [0.7, 3.0, 0.8, 5.0, 5.0, 1.0, 1.0]
    lo = [0.02, 0.0, 0.02, 0.0, 0.0, -3.0, 0.3]
    hi = [1.5, 12.0, 1.5, 500.0, 10.0, 5.0, 4.0]
    if _has_items(s):  # ns per item (the measured vLLM kernels: ~20), log10 of the items half-point
        x0, lo, hi = [*x0, 20.0, 0.5], [*lo, 0.0, -2.0], [*hi, 1000.0, 5.0]
    sol = least_squares(residual, np.array(x0), bounds=(np.array(lo), np.array(hi)), loss="soft_l1", f_scale=0.1,
                        max_nfev=400)
    return _from_vector(sol.x, shape_dependent, depth)


def mdape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.median(np.abs(pred - meas) / meas) * 100.0)


def _subset(s: Shapes, idx: np.ndarray) -> Shapes:
    k = s.k[idx] if isinstance(s.k, np.ndarray) else s.k
    items = s.items[idx] if _has_items(s) else s.items
    return Shapes(s.flops[idx], s.bytes[idx], s.m[idx], s.seconds[idx], k, items)


def fit_family(s: Shapes, peak: float, bw: float, shape_dependent: bool = True, seed: int = 0,
               source: str = "") -> tuple[RooflineFit, FitError]:
    """Fit on all rows; report train error and 5-fold leave-out error."""
    fit = _solve(s, peak, bw, shape_dependent)
    train = mdape(roofline_s(fit, s, peak, bw), s.seconds)
    folds = np.random.default_rng(seed).integers(0, FOLDS, len(s.seconds))
    held: list[np.ndarray] = []
    for k in range(FOLDS):
        test, rest = folds == k, folds != k
        if test.sum() == 0 or rest.sum() < MIN_ROWS:
            continue
        part = _solve(_subset(s, rest), peak, bw, shape_dependent)
        test_s = _subset(s, test)
        held.append(np.abs(roofline_s(part, test_s, peak, bw) - test_s.seconds) / test_s.seconds)
    n = len(s.seconds)
    params = FIT_PARAMS + (ITEM_PARAMS if _has_items(s) else 0)
    if not held and n > params:  # too few rows for folds that leave MIN_ROWS to fit: leave one out at a time
        for i in range(n):
            rest = np.arange(n) != i
            part = _solve(_subset(s, rest), peak, bw, shape_dependent)
            test_s = _subset(s, ~rest)
            held.append(np.abs(roofline_s(part, test_s, peak, bw) - test_s.seconds) / test_s.seconds)
    if not held:  # a saved profile cannot hold NaN: state the train error, and say so
        return fit, FitError(rows=n, train_mdape=train, leaveout_mdape=train,
                             source=f"{source} (too few rows to hold any out: train error)")
    leave = float(np.median(np.concatenate(held)) * 100.0)
    return fit, FitError(rows=n, train_mdape=train, leaveout_mdape=leave, source=source)


# ---- per-family shape extraction ------------------------------------------------------------

def gemm_shapes(df: pd.DataFrame, dtype: str) -> Shapes:
    wb = BYTES[dtype]
    m, n, k = (df[c].to_numpy(float) for c in ("m", "n", "k"))
    seconds = df["latency"].to_numpy(float) * 1e-3
    return Shapes(2 * m * n * k, n * k * wb + m * (n + k) * 2.0, m * n, seconds, k)


def _keys(isl: np.ndarray, window: np.ndarray) -> np.ndarray:
    return np.where(window > 0, np.minimum(isl, window), isl)


def context_attention_shapes(df: pd.DataFrame) -> Shapes:
    b, s, h, kv, d = (df[c].to_numpy(float) for c in ("batch_size", "isl", "num_heads", "num_key_value_heads",
                                                      "head_dim"))
    span = _keys(s, df["window_size"].to_numpy(float)) / 2  # causal: mean keys per query
    flops = 4.0 * b * s * span * h * d
    return Shapes(flops, b * s * (h + 2 * kv) * d * 2.0 * 2, 2 * span, df["latency"].to_numpy(float) * 1e-3)


def generation_attention_shapes(df: pd.DataFrame) -> Shapes:
    """Decode attention: the KV read plus Q in and O out; its work items are (sequence x KV head)."""
    b, h, kv, d = (df[c].to_numpy(float) for c in ("batch_size", "num_heads", "num_key_value_heads", "head_dim"))
    ctx = _keys(df["step"].to_numpy(float) + df["isl"].to_numpy(float), df["window_size"].to_numpy(float))
    kvb = df["kv_cache_dtype"].map(lambda x: BYTES[DTYPES[x]]).to_numpy(float)
    return Shapes(4.0 * b * ctx * h * d, b * ctx * 2 * kv * d * kvb + b * h * d * 2 * 2, np.ones_like(b),
                  df["latency"].to_numpy(float) * 1e-3, items=b * kv)


def moe_shapes(df: pd.DataFrame, dtype: str) -> Shapes:
    t, h, i, k, e, mtp, ep = (df[c].to_numpy(float) for c in ("num_tokens", "hidden_size", "inter_size", "topk",
                                                              "num_experts", "moe_tp_size", "moe_ep_size"))
    width = i / mtp
    pairs = t * k / ep
    touched = np.minimum(e / ep, experts_touched(t, k, e) / ep)
    touched = np.maximum(touched, 1.0)
    flops = 2.0 * pairs * 3 * h * width
    nbytes = (touched * 3 * h * width * BYTES[dtype] + pairs * (2 * h + 3 * width) * 2.0
              + ROUTED_PASSES * t * k * h * 2.0)
    return Shapes(flops, nbytes, pairs / touched * 2 * width, df["latency"].to_numpy(float) * 1e-3,
                  h.astype(float))


def moe_skew(df: pd.DataFrame) -> dict[str, float]:
    """Median latency ratio of each skewed routing distribution to balanced, same shape."""
    keys = ["moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
            "moe_ep_size"]
    base = df[df["distribution"] == "balanced"].groupby(keys)["latency"].median()
    out = {"balanced": 1.0}
    for dist in sorted(set(df["distribution"]) - {"balanced"}):
        other = df[df["distribution"] == dist].groupby(keys)["latency"].median()
        ratio = (other / base).dropna()
        ratio = ratio[ratio.index.get_level_values("moe_ep_size") > 1]  # skew only matters across ranks
        if len(ratio):
            out[dist] = round(float(ratio.median()), 4)
    return out


# ---- collectives ----------------------------------------------------------------------------

COLLECTIVE_BYTES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    # bytes crossing one device's link, per the formulas in costmodel.comm, for message size s
    "all_reduce": lambda s, n: 2 * (n - 1) / n * s,
    "all_gather": lambda s, n: (n - 1) / n * s,
    "reduce_scatter": lambda s, n: (n - 1) / n * s,
    "alltoall": lambda s, n: (n - 1) / n * s,
}


def fit_collective(size: np.ndarray, n: np.ndarray, seconds: np.ndarray, kind: str, link_gbps: float,
                   link_latency_us: float, source: str = "") -> tuple[CommFit, FitError]:
    """Fit eff, per-step latency and alpha of t = steps x step_us + bytes / (bw x eff) + alpha."""
    moved = COLLECTIVE_BYTES[kind](size, n)
    steps = 2 * (n - 1) if kind == "all_reduce" else n - 1

    def model(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return steps[idx] * x[2] * 1e-6 + moved[idx] / (link_gbps * 1e9 * x[0]) + x[1] * 1e-6

    # per-step latency: up to STEP_US_MAX, as a loopback or host-memory link between CPU processes
    # measures hundreds of microseconds (an NVLink step is a few)
    start = np.array([0.7, 10.0, min(max(link_latency_us, 0.0), STEP_US_MAX)])

    def solve(idx: np.ndarray) -> np.ndarray:
        return least_squares(lambda x: np.log(model(x, idx) / seconds[idx]), start,
                             bounds=([0.01, 0.0, 0.0], [1.5, 1000.0, STEP_US_MAX]), loss="soft_l1", f_scale=0.1).x

    every = np.arange(len(seconds))
    x = solve(every)
    train = mdape(model(x, every), seconds)
    folds = np.random.default_rng(0).integers(0, FOLDS, len(seconds))
    held = [np.abs(model(solve(every[folds != k]), every[folds == k]) - seconds[folds == k]) / seconds[folds == k]
            for k in range(FOLDS) if (folds == k).any() and (folds != k).sum() >= 4]
    if not held:  # as in fit_family: the train error, said to be one
        leave, source = train, f"{source} (too few rows to hold any out: train error)"
    else:
        leave = float(np.median(np.concatenate(held)) * 100)
    fit = CommFit(eff=float(x[0]), alpha_us=float(x[1]), step_us=float(x[2]))
    return fit, FitError(rows=len(seconds), train_mdape=train, leaveout_mdape=leave, source=source)


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


@dataclass
class KernelFits:
    gemm: dict[str, RooflineFit]
    attn_prefill: dict[str, RooflineFit]
    attn_decode: dict[str, RooflineFit]
    moe: dict[str, RooflineFit]
    comm: dict[str, CommFit]
    moe_skew: dict[str, float]
    errors: dict[str, FitError]


def fit_kernels(folder: Path, acc: Accelerator, scaleup_gbps: float, scaleup_latency_us: float) -> KernelFits:
    """Fit every family whose file exists in `folder` (`<name>.csv` or `<name>.csv.gz`)."""
    def find(name: str) -> Path | None:
        for suffix in (".csv.gz", ".csv"):
            p = folder / f"{name}{suffix}"
            if p.exists():
                return p
        return None

    bw = acc.hbm_gbps * 1e9
    out = KernelFits({}, {}, {}, {}, {}, {"balanced": 1.0}, {})
    if p := find("gemm"):
        df = read(p)
        # Fit on the envelope of serving GEMMs (a sharded projection is at least 256 wide and no
        # deeper than 32k); thin, very deep split-K shapes outside it follow other kernels.
        df = df[(df["n"] >= 256) & (df["k"] >= 256) & (df["k"] <= 32768)]
        for raw, dtype in DTYPES.items():
            rows = df[df["gemm_dtype"] == raw]
            if len(rows) >= MIN_ROWS:
                fit, err = fit_family(gemm_shapes(rows, dtype), acc.flops(PEAK_DTYPE[dtype]), bw, source=p.name)
                out.gemm[dtype], out.errors[f"gemm.{dtype}"] = fit, err
    for name, table, shapes in (("context_attention", out.attn_prefill, context_attention_shapes),
                                ("generation_attention", out.attn_decode, generation_attention_shapes)):
        if p := find(name):
            df = read(p)
            for raw in sorted(set(df["kv_cache_dtype"]) & set(DTYPES)):
                rows = df[df["kv_cache_dtype"] == raw]
                kv = DTYPES[raw]
                fit, err = fit_family(shapes(rows), acc.flops("bf16"), bw,
                                      shape_dependent=name == "context_attention", source=p.name)
                table[kv], out.errors[f"{name}.{kv}"] = fit, err
    if p := find("moe"):
        df = read(p)
        out.moe_skew = moe_skew(df)
        balanced = df[df["distribution"] == "balanced"]
        for raw in sorted(set(balanced["moe_dtype"]) & set(DTYPES)):
            rows = balanced[balanced["moe_dtype"] == raw]
            dtype = DTYPES[raw]
            if len(rows) >= MIN_ROWS:
                fit, err = fit_family(moe_shapes(rows, dtype), acc.flops(PEAK_DTYPE[dtype]), bw, source=p.name)
                out.moe[dtype], out.errors[f"moe.{dtype}"] = fit, err
    collectives = []
    if p := find("custom_allreduce"):  # what engines run for TP all-reduce inside a node
        df = read(p)
        df = df[df["kernel_source"].str.contains("graph")]
        collectives.append(("all_reduce", df, p.name))
    if p := find("nccl"):
        df = read(p)
        df = df[df["nccl_dtype"] == "half"]
        for raw, kind in (("all_gather", "all_gather"), ("alltoall", "all_to_all"),
                          ("all_reduce", "nccl_all_reduce")):
            collectives.append((kind, df[df["op_name"] == raw], p.name))
    for kind, df, src in collectives:
        if len(df) < 4:
            continue
        formula = {"all_to_all": "alltoall", "nccl_all_reduce": "all_reduce"}.get(kind, kind)
        # `message_size` counts elements (it matches apex_plus's bytes at twice the size for
        # half), so bytes = elements x element size
        dtype = df["nccl_dtype"] if "nccl_dtype" in df else df["allreduce_dtype"]
        nbytes = df["message_size"].to_numpy(float) * dtype.map(lambda d: BYTES[DTYPES[d]]).to_numpy(float)
        fit, err = fit_collective(nbytes, df["num_gpus"].to_numpy(float),
                                  df["latency"].to_numpy(float) * 1e-3, formula, scaleup_gbps,
                                  scaleup_latency_us, src)
        out.comm[kind], out.errors[f"comm.{kind}"] = fit, err
    if "all_reduce" not in out.comm and "nccl_all_reduce" in out.comm:
        out.comm["all_reduce"] = out.comm["nccl_all_reduce"]
    return out
