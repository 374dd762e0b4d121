"""`planner calibrate --from-runs FILE`: fit engine constants to the user's own end-to-end runs.

FILE has the silicon CSV columns (`costmodel.calibration.silicon`), e.g. the `runs.csv` that
`planner verify` writes. Per engine in it, `fit_engine` fits an `EngineTuning` (in-engine kernel
speed, per-iteration and per-sequence overhead, closed-loop TTFT behaviour) on top of the device's
current profile; the tuned profile is saved, so the next prediction starts from what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from costmodel.calibration import silicon
from costmodel.calibration.engine_fit import EngineFit, fit_engine, mdape_of, ratios
from costmodel.calibration.fit import save_profile
from costmodel.calibration.profile import EngineTuning, Profile, profile_for
from costmodel.calibration.silicon import Row, load_rows
from hardware import local
from hardware.catalog import cluster as load_cluster
from hardware.errors import PlannerInputError


@dataclass(frozen=True)
class RunsFit:
    device: str
    profile: Profile
    path: Path
    fits: list[EngineFit]
    before: dict[str, tuple[float, float]]  # engine -> TTFT, TPOT MdAPE with the profile as it was


def fit_runs(path: str | Path, out: str | Path | None = None, profile: str | Path | None = None) -> RunsFit:
    """Fit every engine found in the runs at `path` and save the tuned profile."""
    rows = load_rows(path)
    if not rows:
        raise PlannerInputError(f"{path}: no aggregated (mode=agg) runs in it; add rows with the silicon columns")
    unknown = sorted({r.system for r in rows} - set(silicon.SYSTEMS))
    if unknown:
        raise PlannerInputError(f"{path}: system '{unknown[0]}' is unknown; use one of {', '.join(silicon.SYSTEMS)}")
    devices = {r.system: load_cluster(silicon.SYSTEMS[r.system]).groups[0].device.name for r in rows}
    if len(set(devices.values())) > 1:
        raise PlannerInputError(f"{path}: runs on several device kinds ({', '.join(sorted(set(devices.values())))}); "
                                "fit one device's runs per file")
    device = next(iter(devices.values()))
    is_local = local.LOCAL in devices
    source = profile or (local.profile_path() if is_local and local.profile_path().is_file() else None)
    base = profile_for(device, source)
    bad = [r for r in rows if not silicon.supported(r)]
    if bad:
        raise PlannerInputError(f"{path} line {bad[0].line}: model '{bad[0].model}' with that layout is not in the "
                                "catalog; use catalog model names or HF ids")

    def device_of(r: Row) -> str:
        return devices[r.system]

    # `planner calibrate` fitted the torch runner's kernel scales on thousands of its own iterations, and
    # its clients start staggered (no closed-loop waves): a few local runs then refit just the overheads.
    fixed = None
    if is_local:
        was = base.engines.get("vllm") or EngineTuning()
        names = ("compute_scale", "memory_scale", "moe_scale", "attention_scale", "decode_attention_scale",
                 "fixed_scale", "per_seq_overhead_us", "resubmit_wait_iterations")
        fixed = {k: v for k in names if (v := getattr(was, k)) is not None} | {"closed_loop_wave": 0.0}
    fits, before = [], {}
    tuned = base
    for engine in sorted({r.backend for r in rows}):
        before[engine] = mdape_of(ratios([r for r in rows if r.backend == engine], lambda r: base))
        fit = fit_engine(engine, rows, {device: tuned}, device_of, sample=len(rows), fixed=fixed)
        tuned = tuned.model_copy(update={"engines": {**tuned.engines, engine: fit.tuning}})
        fits.append(fit)
    target = Path(out) if out else (local.profile_path() if is_local else None)
    if target is None:
        raise PlannerInputError(f"--from-runs on {device} runs: give --out FILE for the tuned profile (then pass it "
                                "as --profile)")
    save_profile(tuned, target)
    return RunsFit(device, tuned, target, fits, before)
