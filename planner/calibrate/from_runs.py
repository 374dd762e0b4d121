"""`planner calibrate --from-runs FILE [FILE ...]`: learn engine constants from the user's own runs,
and keep what was learned only where it predicts runs it was not fitted on better.

FILE has the silicon CSV columns (`costmodel.calibration.silicon`), e.g. the `runs.csv` that
`planner verify` writes (closed- and open-loop runs alike). Per engine, `fit_engine` fits an
`EngineTuning` on top of the device's current profile. Before anything is kept, the runs are split
into folds (one run each, up to three folds): each fold is predicted by a tuning fitted on the other
runs, and the update is kept only if that held-out error of TTFT and TPOT is below the current
profile's on the same runs, neither getting worse. A few runs can be explained by overheads that do
not carry over to the next plan (a fit on the two rows of one verify made TTFT worse on those very
rows, and TPOT 9.8% -> 15.7% on the next), which is what the held-out check catches. The learned
profile is written as a new file beside the one it started from (unless `in_place`), and its tuning
names the runs it learned from.
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from costmodel.calibration import silicon
from costmodel.calibration.engine_fit import EngineFit, fit_engine
from costmodel.calibration.fit import save_profile
from costmodel.calibration.profile import EngineTuning, Profile, profile_for
from costmodel.calibration.silicon import Row, ape, load_rows, predict
from costmodel.engines import ENGINES
from hardware import local
from hardware.catalog import cluster as load_cluster
from hardware.errors import PlannerInputError
from planner.calibrate.state import uncalibrated

MAX_FOLDS = 3  # each fold is one more fit (seconds on a small machine)
# `planner calibrate` fitted the torch runner's kernel multipliers and per-sequence cost on thousands of its
# own iterations; a few verified plans cannot pin them down, so runs on this machine refit the overheads only
RUNNER_PINNED = ("compute_scale", "memory_scale", "moe_scale", "attention_scale", "decode_attention_scale",
                 "fixed_scale", "per_seq_overhead_us", "resubmit_wait_iterations", "eager_kernel_overhead_us")


@dataclass(frozen=True)
class RunsFit:
    device: str
    profile: Profile  # the learned profile (the starting one when the update was not kept)
    base: str  # where the starting profile came from
    path: Path | None  # where the learned profile was written (None: not kept, nothing written)
    rows: list[Row]
    fits: list[EngineFit]
    kept: bool
    reason: str
    before: tuple[float, float]  # TTFT, TPOT MdAPE of the starting profile on every run
    heldout: tuple[float, float]  # the same runs, each predicted by a tuning fitted without it
    after: tuple[float, float]  # the learned tuning on every run (the runs it was fitted on)


def why_empty(path: Path) -> str:
    """One sentence on why a runs file holds nothing to learn from."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return ("it holds a header and no runs: the verify that wrote it measured no successful run (its verify.md "
                "says why)")
    modes = ", ".join(f"{m or 'empty'} ({n})" for m, n in Counter(r.get("mode", "") for r in rows).items())
    return f"its {len(rows)} row(s) are of mode {modes}; --from-runs learns from aggregated runs (mode agg)"


def _load(paths: Sequence[str | Path]) -> tuple[list[Row], str]:
    """Every run of `paths`, each as the engine it is predicted as, and which lines of which file they are."""
    rows: list[Row] = []
    names = []
    for p in paths:
        got = load_rows(p)
        if not got:
            raise PlannerInputError(f"{p}: no run to learn from: {why_empty(Path(p))}")
        bad = [r for r in got if not (r.ttft_ms > 0 and r.tpot_ms > 0)]
        if bad:
            raise PlannerInputError(f"{p} line {bad[0].line}: silicon_ttft_ms and silicon_tpot_ms must be positive "
                                    "measured milliseconds; fix or remove the row")
        # the engine each run is predicted as: a runner that stands in for an engine (the torch runner for the
        # plan's engine) is tuned in that engine's place
        rows += [replace(r, backend=r.engine or r.backend, engine="") for r in got]
        names.append(f"{p} lines {', '.join(str(r.line) for r in got)}")
    return rows, "; ".join(names)


def _mdape(rows: Sequence[Row], prof: Profile) -> tuple[float, float]:
    errs = [(ape(e.ttft_ms, r.ttft_ms), ape(e.tpot_ms, r.tpot_ms)) for r in rows for e in [predict(r, profile=prof)]]
    return statistics.median(a for a, _ in errs), statistics.median(b for _, b in errs)


def _learn(rows: Sequence[Row], base: Profile, device: str, pinned: dict[str, float] | None,
           every_engine: bool, note: str = "") -> tuple[Profile, list[EngineFit]]:
    """`base` with each engine's tuning fitted on `rows` (on `local`, the runner's tuning stands in for every
    engine, as `planner calibrate` sets it); `note` says where they came from."""
    fits, tuned = [], base
    for engine in sorted({r.backend for r in rows}):
        fit = fit_engine(engine, rows, {device: tuned}, lambda r: device, sample=len(rows), fixed=pinned)
        tuning = fit.tuning.model_copy(update={"fitted_on": note or fit.tuning.fitted_on})
        slots = ENGINES if every_engine else (engine,)
        tuned = tuned.model_copy(update={"engines": {**tuned.engines, **dict.fromkeys(slots, tuning)}})
        fits.append(fit)
    return tuned, fits


def _heldout(rows: Sequence[Row], base: Profile, device: str, pinned: dict[str, float] | None,
             every_engine: bool) -> tuple[float, float]:
    """TTFT and TPOT MdAPE of every run predicted by a tuning fitted on the other folds."""
    folds = min(len(rows), MAX_FOLDS)
    errs = []
    for k in range(folds):
        test = [r for i, r in enumerate(rows) if i % folds == k]
        train = [r for i, r in enumerate(rows) if i % folds != k]
        tuned, _ = _learn(train, base, device, pinned, every_engine)
        errs += [(ape(e.ttft_ms, r.ttft_ms), ape(e.tpot_ms, r.tpot_ms)) for r in test
                 for e in [predict(r, profile=tuned)]]
    return statistics.median(a for a, _ in errs), statistics.median(b for _, b in errs)


def _target(out: str | Path | None, in_place: bool, base_path: Path | None, is_local: bool, device: str) -> Path:
    if out:
        return Path(out)
    if in_place:
        if base_path is None:
            raise PlannerInputError(f"--in-place: the {device} profile is the shipped or estimated one, not a file of "
                                    "yours; give --out FILE for the learned profile")
        return base_path
    folder = base_path.parent if base_path is not None else (local.state_dir() if is_local else None)
    if folder is None:
        raise PlannerInputError(f"--from-runs on {device} runs: give --out FILE for the learned profile (then pass "
                                "it as --profile)")
    stem = base_path.stem.split(".learned")[0] if base_path is not None else "profile"
    n, path = 1, folder / f"{stem}.learned.json"
    while path.exists():
        n += 1
        path = folder / f"{stem}.learned-{n}.json"
    return path


def fit_runs(paths: str | Path | Sequence[str | Path], out: str | Path | None = None,
             profile: str | Path | None = None, in_place: bool = False) -> RunsFit:
    """Learn from the runs at `paths` (see module doc); writes the learned profile when it is kept."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows, names = _load(paths)
    unknown = sorted({r.system for r in rows} - set(silicon.SYSTEMS))
    if unknown:
        raise PlannerInputError(f"{paths[0]}: system '{unknown[0]}' is unknown; use one of "
                                f"{', '.join(silicon.SYSTEMS)}")
    devices = {load_cluster(silicon.SYSTEMS[s]).groups[0].device.name for s in {r.system for r in rows}}
    if len(devices) > 1:
        raise PlannerInputError(f"{paths[0]}: runs on several device kinds ({', '.join(sorted(devices))}); "
                                "learn from one device's runs at a time")
    device = next(iter(devices))
    is_local = any(r.system == local.LOCAL for r in rows)
    bad = [r for r in rows if not silicon.supported(r)]
    if bad:
        raise PlannerInputError(f"{paths[0]} line {bad[0].line}: model '{bad[0].model}' with that layout is not in "
                                "the catalog; use catalog model names or HF ids")
    if len(rows) < 2:
        raise PlannerInputError(f"{paths[0]}: 1 run; learning needs at least 2, so that one can be held out of the "
                                "fit to check it (verify more plans: --top 2)")
    base_path = Path(profile) if profile else (local.profile_path() if is_local and local.profile_path().is_file()
                                               else None)
    base = profile_for(device, base_path)
    if is_local and base_path is None:
        base = uncalibrated(base)
    target = _target(out, in_place, base_path, is_local, device)  # refused before any fitting, not after
    pinned = None
    if is_local:
        was = base.engines.get("vllm") or EngineTuning()
        pinned = {k: v for k in RUNNER_PINNED if (v := getattr(was, k)) is not None} | {"closed_loop_wave": 0.0}
    before = _mdape(rows, base)
    heldout = _heldout(rows, base, device, pinned, is_local)
    kept = heldout[0] <= before[0] and heldout[1] <= before[1] and sum(heldout) < sum(before)
    change = (f"held-out TTFT / TPOT MdAPE {before[0]:.1f}% / {before[1]:.1f}% with the current profile, "
              f"{heldout[0]:.1f}% / {heldout[1]:.1f}% learned")
    note = f"planner calibrate --from-runs: {len(rows)} runs ({names}); {change}"
    tuned, fits = _learn(rows, base, device, pinned, is_local, note)
    after = _mdape(rows, tuned)
    if not kept:
        return RunsFit(device, base, base.source, None, rows, fits, False,
                       f"not kept ({change}): the current profile stays", before, heldout, after)
    tuned = tuned.model_copy(update={"source": f"{base.source}; engine constants learned from {len(rows)} runs "
                                               f"({names})"})
    save_profile(tuned, target)
    return RunsFit(device, tuned, str(base_path or base.source), target, rows, fits, True, f"kept ({change})",
                   before, heldout, after)
