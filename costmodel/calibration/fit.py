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

from costmodel.calibration.kernels import fit_collective, fit_kernels
from costmodel.calibration.profile import FitError, Profile
from hardware.loading import write_atomic
from hardware.specs import NodeGroup


def fit_scaleout(path: Path, group: NodeGroup) -> tuple[float, FitError]:
    """Bandwidth share of the scale-out link for all-reduces that cross nodes (Vidur CSV)."""
    df = pd.read_csv(path)
    cross = df[df["num_workers"] > df["devices_per_node"]]
    time_col = next(c for c in df.columns if c.endswith(".median"))
    fit, err = fit_collective(cross["size"].to_numpy(float), cross["num_workers"].to_numpy(float),
                              cross[time_col].to_numpy(float) * 1e-3, "all_reduce", group.scaleout.gbps,
                              group.scaleout.latency_us, path.name)
    return fit.eff, err


def fit_profile(group: NodeGroup, kernels: Path | None, network: Path | None = None, source: str = "",
                trust: str = "fitted") -> Profile:
    """A profile for `group`'s device: defaults, overridden by whatever the data supports."""
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
    if network is not None:
        update["scaleout_eff"], errors["comm.scaleout_all_reduce"] = fit_scaleout(network, group)
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
