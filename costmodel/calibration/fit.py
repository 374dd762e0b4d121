"""Build a calibration profile from measured kernels and collectives, and save it.

`fit_profile` fits every op family found in a kernel folder (see `kernels.py`) and, when given,
the cross-node collectives of a network CSV (Vidur format: `size` bytes, `num_workers`,
`devices_per_node`, median time in ms); the result is a versioned `Profile` carrying its fit errors.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from costmodel.calibration.kernels import BYTES, DTYPES, fit_collective, fit_kernels
from costmodel.calibration.profile import FitError, Profile
from costmodel.catalog import model as load_model
from costmodel.layout import Layout
from costmodel.ops import Batch, attention_ops, op_time_s
from costmodel.precision import Precision
from hardware.loading import write_atomic
from hardware.specs import Accelerator, NodeGroup


def fit_scaleout(path: Path, group: NodeGroup) -> tuple[float, FitError]:
    """Bandwidth share of the scale-out link for all-reduces that cross nodes (Vidur CSV)."""
    df = pd.read_csv(path)
    cross = df[df["num_workers"] > df["devices_per_node"]]
    time_col = next(c for c in df.columns if c.endswith(".median"))
    fit, err = fit_collective(cross["size"].to_numpy(float), cross["num_workers"].to_numpy(float),
                              cross[time_col].to_numpy(float) * 1e-3, "all_reduce", group.scaleout.gbps,
                              group.scaleout.latency_us, path.name)
    return fit.eff, err


MLA_FILES = {"mla_decode": "mla_generation_module", "mla_prefill": "mla_context_module"}


def _mla_rows(df: pd.DataFrame, family: str) -> list[tuple[Layout, Precision, Batch, float]]:
    """(layout, precision, batch, seconds) per measured DeepSeek MLA module row."""
    out = []
    for r in df.itertuples():
        if r.kv_cache_dtype not in DTYPES or r.gemm_type not in DTYPES:
            continue
        weights = DTYPES[r.gemm_type]
        kv = DTYPES[r.kv_cache_dtype]
        prec = Precision(weights=weights, gemm=weights, kv=kv, weight_bytes=BYTES[weights], kv_bytes=BYTES[kv])
        if family == "mla_decode":
            batch = Batch(decode_seqs=float(r.batch_size), decode_ctx=float(r.step + r.isl))
        else:
            batch = Batch(prefill_tokens=float(r.batch_size * r.isl), prefill_span=r.isl / 2,
                          prefill_seqs=float(r.batch_size))
        out.append((Layout(tp=128 // int(r.num_heads)), prec, batch, r.latency * 1e-3))
    return out


def _module_residual(x: np.ndarray, core: np.ndarray, rest: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.log((rest + x[0] * core + x[1] * 1e-6) / meas)


def fit_mla(folder: Path, profile: Profile,
            acc: Accelerator) -> tuple[dict[str, float], dict[str, float], dict[str, FitError]]:
    """Scale and extra fixed latency of MLA core attention so whole measured MLA modules
    (projections + attention + the small kernels between them) match.

    The projections are GEMMs the GEMM fit already prices; the module's core attention op gets a
    multiplier s and an additive latency t (its glue kernels: RoPE, cache writes, layout copies),
    fitted by robust least squares on log(predicted / measured)."""
    model = load_model("deepseek-v3")
    scales: dict[str, float] = {}
    extra: dict[str, float] = {}
    errors: dict[str, FitError] = {}
    for family, name in MLA_FILES.items():
        path = next((p for p in (folder / f"{name}.csv.gz", folder / f"{name}.csv") if p.exists()), None)
        if path is None:
            continue
        core, rest, meas = [], [], []
        for lay, prec, batch, seconds in _mla_rows(pd.read_csv(path), family):
            times = {op.name: float(op_time_s(op, acc, prec, profile)) for op in attention_ops(model, lay, prec, batch)
                     if op.family == family or not op.family}
            key = "attn_decode" if family == "mla_decode" else "attn_prefill"
            core.append(times.pop(key))
            rest.append(sum(times.values()))
            meas.append(seconds)
        c, r, m = np.array(core), np.array(rest), np.array(meas)
        sol = least_squares(_module_residual, [1.0, 10.0], args=(c, r, m), bounds=([0.05, 0.0], [20.0, 2000.0]),
                            loss="soft_l1", f_scale=0.1)
        scale, extra_us = float(sol.x[0]), float(sol.x[1])
        before = np.median(np.abs(r + c - m) / m) * 100
        after = np.median(np.abs(r + scale * c + extra_us * 1e-6 - m) / m) * 100
        scales[family], extra[family] = scale, extra_us
        errors[name] = FitError(rows=len(m), train_mdape=float(after), leaveout_mdape=float(after),
                                source=f"{path.name}; unscaled MdAPE {before:.1f}%")
    return scales, extra, errors


# the error keys (FitError) of each kernel table: "<family>.<dtype>"
FAMILY_OF = {"gemm": "gemm", "attn_prefill": "context_attention", "attn_decode": "generation_attention",
             "moe": "moe"}


def fit_profile(group: NodeGroup, kernels: Path | None, network: Path | None = None, source: str = "",
                trust: str = "fitted", borrow: dict[str, tuple[Profile, str]] | None = None) -> Profile:
    """A profile for `group`'s device: defaults, overridden by whatever the data supports. `borrow` takes
    whole kernel tables (`FAMILY_OF` keys) from another device's profile instead of this device's rows,
    with the reason, for data that cannot describe the kernel (see `costmodel.calibration.ship`)."""
    base = Profile()
    update: dict[str, object] = {"device": group.device.name, "trust": trust}
    errors: dict[str, FitError] = {}
    if kernels is not None:
        k = fit_kernels(kernels, group.device, group.scaleup.gbps, group.scaleup.latency_us)
        for name in ("gemm", "attn_prefill", "attn_decode", "moe", "comm"):
            table = getattr(k, name)
            if table:
                update[name] = {**getattr(base, name), **table}
        update["moe_skew"] = k.moe_skew
        errors.update(k.errors)
    for name, (donor, why) in (borrow or {}).items():
        # before the MLA fit, whose module scales are measured against the tables in use
        update[name] = getattr(donor, name)
        family = FAMILY_OF[name]
        errors = {key: e for key, e in errors.items() if not key.startswith(f"{family}.")}
        errors.update({key: e.model_copy(update={"source": f"{donor.device}'s fit of its {e.source}, borrowed: {why}"})
                       for key, e in donor.fit_error.items() if key.startswith(f"{family}.")})
    if network is not None:
        update["scaleout_eff"], errors["comm.scaleout_all_reduce"] = fit_scaleout(network, group)
    if kernels is not None:
        scales, extra_us, mla_errors = fit_mla(kernels, base.model_copy(update=update), group.device)
        update["family_scale"], update["family_t0_us"] = scales, extra_us
        errors.update(mla_errors)
    update["fit_error"] = errors
    update["source"] = source or f"fitted {date.today().isoformat()} from {kernels}, {network}"
    return base.model_copy(update=update)


def save_profile(profile: Profile, path: Path) -> Path:
    data = json.loads(profile.model_dump_json())
    return write_atomic(path, json.dumps(data, indent=1, default=_finite) + "\n")


def _finite(v: object) -> object:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
