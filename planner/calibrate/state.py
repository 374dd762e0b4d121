"""Whether `--cluster local` has been measured on this machine, and what an unmeasured one is worth.

Until `planner calibrate` has run, `local` is an estimate (`hardware.local`: a floor of FLOP/s and
bandwidth per core, or a GPU's catalog datasheet) and its profile spec defaults or a profile fitted
for the public engines, not the torch runner. Such predictions are off by far more than a fitted
profile's error band: on this project's 2-core CPU machine (2026-12-08, shared with other jobs)
uncalibrated `local` predicted tiny-llama's TPOT 8-21x and its TTFT 10-16x slower than `planner
verify` measured (`benchmarks/verify_loop.py`, two runs); on an
H100 the torch runner's decode attention ran 4.9x slower than the shipped H100 profile predicts
(docs/verify.md). So an uncalibrated local profile carries the band UNCALIBRATED_BAND, wide enough
for both, and every command that predicts for `local` says in one line that it is uncalibrated.
This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from costmodel.calibration.profile import Profile, profile_for
from hardware import local
from hardware.specs import Cluster

# p10/p90 of measured / predicted for an unmeasured local device: 0.04 below the 0.049-0.13 measured on
# this CPU, 5 above the torch runner's 4.9x on an H100 (module doc)
UNCALIBRATED_BAND = {"ttft_ms": (0.04, 5.0), "tpot_ms": (0.04, 5.0)}


def uncalibrated(profile: Profile) -> Profile:
    """`profile` as the prediction of an unmeasured local device: its error band, and every engine's,
    widened to UNCALIBRATED_BAND, and its source saying so."""
    engines = {k: t.model_copy(update={"error_band": dict(UNCALIBRATED_BAND)}) for k, t in profile.engines.items()}
    return profile.model_copy(update={
        "error_band": dict(UNCALIBRATED_BAND), "engines": engines,
        "source": f"{profile.source}; not measured on this machine (run `planner calibrate`)"})


def note(cluster: Cluster) -> str | None:
    """One line saying `cluster` is this machine unmeasured (None when it is measured or not `local`)."""
    if cluster.name != local.LOCAL or local.profile_path().is_file():
        return None
    lo, hi = UNCALIBRATED_BAND["tpot_ms"]
    return (f"`local` has not been measured on this machine (no {local.profile_path()}): its predictions are "
            f"estimates, true within x{lo:g}-x{hi:g}; run `planner calibrate --quick` (about 35 s) to measure it")


def profile_of(cluster: Cluster, path: str | Path | None = None) -> Profile:
    """The profile predictions for `cluster` use: the one at `path`, else for `local` what `planner
    calibrate` measured here (`uncalibrated` when nothing was), else the device's shipped one."""
    device = cluster.groups[0].device.name
    if path is not None:
        return profile_for(device, path)
    measured = local.calibrated_profile(cluster)
    if cluster.name == local.LOCAL and measured is None:
        return uncalibrated(profile_for(device))
    return profile_for(device, measured)
