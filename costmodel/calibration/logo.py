"""Leave-one-group-out (LOGO) accuracy: every measured group predicted by a fit that never saw it.

A group is one (model, system, engine, precision) of the silicon file's agg rows. For each group that
the engine tuning is fitted on (`ship.SYSTEMS`), the group's engine is refitted exactly as
`costmodel.calibration.ship` fits it, with that group alone held out, and the group is predicted with
the result. The kernel fits need no refit: they come from the per-kernel tables in `ops/`, never from
serving rows, so holding a serving group out leaves them as shipped. An engine that borrows kernel
multipliers (`ship.BORROW`) takes them from its donor fitted on all the donor's rows (the held-out
group is not the donor's). Groups on systems outside `ship.SYSTEMS` (B200, GB200) or of the catalog's
newer families are never fitted on; they are predicted with the shipped profiles.

Fits are cached as JSON under `.cache/logo/` in the repository root (gitignored), keyed by the group,
the fit's sample size and a digest of the code and data the fit depends on, so a rerun with nothing
changed costs only the predictions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from costmodel.calibration import ship
from costmodel.calibration.engine_fit import fit_engine
from costmodel.calibration.profile import EngineTuning, Profile, profile_for, shipped
from costmodel.calibration.silicon import AS_MEASURED, SYSTEMS, Row, predict
from costmodel.catalog import model as load_model
from hardware.catalog import cluster as load_cluster

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "logo"
# what a fit reads: the cost model's code and data, the hardware catalog, the serving rows
DIGESTED = ("costmodel", "hardware")
SAMPLE = 80  # rows per engine in the joint fit, as ship.py fits the shipped profiles


def code_digest(extra: Iterable[Path] = ()) -> str:
    """sha256 over every .py/.json/.yaml file under `DIGESTED` and `extra` files: a change to any
    of them may move a fit, so it invalidates the cached ones."""
    h = hashlib.sha256()
    files = sorted(p for d in DIGESTED for p in (ROOT / d).rglob("*")
                   if p.suffix in (".py", ".json", ".yaml") and "__pycache__" not in p.parts)
    for p in [*files, *extra]:
        h.update(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def kernel_profiles() -> dict[str, Profile]:
    """The shipped kernel fits without their engine tuning, by device: the base every engine fit starts from."""
    return {dev: shipped()[dev].model_copy(update={"engines": {}}) for _, dev in ship.SYSTEMS.values()}


def _device_of(r: Row) -> str:
    return ship.SYSTEMS[r.system][1]


def is_fitted(r: Row) -> bool:
    """Whether engine tunings are fitted on `r`'s group: a system of `ship.SYSTEMS` and a family of
    `ship.FAMILIES` (the catalog's newer families are predicted, never fitted on)."""
    return r.system in ship.SYSTEMS and load_model(r.model).family in ship.FAMILIES


def fitted_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows engine tunings are fitted on (`is_fitted`)."""
    return [r for r in rows if is_fitted(r)]


def fit_without(engine: str, rows: Sequence[Row], held: tuple[str, ...], sample: int = SAMPLE,
                donors: dict[str, EngineTuning] | None = None) -> EngineTuning:
    """`engine`'s tuning fitted as ship.py fits it (pins, borrowed kernel multipliers) without `held`."""
    fixed = dict(ship.PINNED.get(engine, {}))
    if engine in ship.BORROW:
        donor = (donors or {})[ship.BORROW[engine]]
        fixed |= {k: getattr(donor, k) for k in ship.BORROWED}
    return fit_engine(engine, fitted_rows(rows), kernel_profiles(), _device_of, held, sample=sample,
                      fixed=fixed).tuning


class FitCache:
    """Engine tunings fitted without one group (or none: key "*"), on disk under `folder/digest/`."""

    def __init__(self, digest: str, folder: Path = CACHE, sample: int = SAMPLE):
        self.folder = folder / digest
        self.sample = sample

    def _path(self, engine: str, held: str) -> Path:
        key = hashlib.sha256(f"{engine}|{held}|{self.sample}".encode()).hexdigest()[:20]
        return self.folder / f"{engine}-{key}.json"

    def get(self, engine: str, held: str) -> EngineTuning | None:
        p = self._path(engine, held)
        return EngineTuning.model_validate_json(p.read_text()) if p.exists() else None

    def put(self, engine: str, held: str, tuning: EngineTuning) -> None:
        p = self._path(engine, held)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(tuning.model_dump_json())
        tmp.replace(p)


ALL = "*"  # the cache key of a fit with no group held out


def tuning_without(engine: str, held: str, rows: Sequence[Row], cache: FitCache) -> EngineTuning:
    """`engine`'s tuning fitted without group `held` (ALL: on every row), from the cache or fitted now."""
    got = cache.get(engine, held)
    if got is not None:
        return got
    donors = {}
    if engine in ship.BORROW:
        donor = ship.BORROW[engine]
        donors[donor] = tuning_without(donor, ALL, rows, cache)
    tuning = fit_without(engine, rows, () if held == ALL else (held,), cache.sample, donors)
    cache.put(engine, held, tuning)
    return tuning


def fit_jobs(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(engine, held-out group) of every fit LOGO needs: donors (fitted on all their rows) first."""
    groups = sorted({(r.backend, r.group) for r in fitted_rows(rows)})
    donors = sorted({ship.BORROW[e] for e, _ in groups if e in ship.BORROW})
    return [(d, ALL) for d in donors] + groups


@dataclass(frozen=True)
class Prediction:
    row: Row
    ttft_ms: float
    tpot_ms: float
    fitted: bool  # whether engine tunings are fitted on this row's group (`is_fitted`)

    @property
    def tok_s_per_device(self) -> float:
        return closed_loop_tok_s_per_device(self.row, self.ttft_ms, self.tpot_ms)


def profile_with(row: Row, engine: str, tuning: EngineTuning) -> Profile:
    base = profile_for(load_cluster(SYSTEMS[row.system]).groups[0].device.name)
    return base.model_copy(update={"engines": {**base.engines, engine: tuning}})


def predict_logo(rows: Sequence[Row], train: Sequence[Row], cache: FitCache,
                 kv: str = AS_MEASURED) -> list[Prediction]:
    """Every row of `rows` predicted by its group's tuning fitted on `train` without that group (fitting
    what the cache lacks)."""
    out = []
    tunings: dict[str, EngineTuning] = {}
    for r in rows:
        if is_fitted(r):
            if r.group not in tunings:
                tunings[r.group] = tuning_without(r.backend, r.group, train, cache)
            e = predict(r, kv, profile_with(r, r.backend, tunings[r.group]))
        else:
            e = predict(r, kv)
        out.append(Prediction(r, e.ttft_ms, e.tpot_ms, is_fitted(r)))
    return out


def predict_shipped(rows: Sequence[Row], kv: str = AS_MEASURED) -> list[Prediction]:
    """Every row predicted with the shipped profiles (the fitted-set figure)."""
    return [Prediction(r, e.ttft_ms, e.tpot_ms, is_fitted(r)) for r in rows for e in [predict(r, kv)]]


def closed_loop_tok_s_per_device(r: Row, ttft_ms: float, tpot_ms: float) -> float:
    """A closed loop's output tokens/s per device from its latencies (measured or predicted alike): each of
    the row's `concurrency` clients finishes `osl` tokens every TTFT + (osl - 1) x TPOT."""
    return r.concurrency * r.osl / ((ttft_ms + (r.osl - 1) * tpot_ms) * 1e-3) / r.layout.instance_devices


def pair_agreement(preds: Sequence[Prediction], min_gap: float = 0.0) -> dict[str, tuple[int, int]]:
    """Over pairs of rows with the same group and load (isl, osl, clients) but different layouts, how
    many the prediction orders as measured, by TPOT and by output tok/s per device: {metric: (agree,
    pairs)}. Pairs whose measured values differ by less than `min_gap` (relative) are left out."""
    by: dict[tuple, list[Prediction]] = {}
    for p in preds:
        r = p.row
        by.setdefault((r.group, r.isl, r.osl, r.concurrency), []).append(p)
    out = {"tpot": [0, 0], "tok_s_per_device": [0, 0]}
    for members in by.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if a.row.layout == b.row.layout:
                    continue
                for key, ma, mb, pa, pb in (
                        ("tpot", a.row.tpot_ms, b.row.tpot_ms, a.tpot_ms, b.tpot_ms),
                        ("tok_s_per_device", closed_loop_tok_s_per_device(a.row, a.row.ttft_ms, a.row.tpot_ms),
                         closed_loop_tok_s_per_device(b.row, b.row.ttft_ms, b.row.tpot_ms),
                         a.tok_s_per_device, b.tok_s_per_device)):
                    if abs(ma - mb) < min_gap * max(ma, mb):
                        continue
                    out[key][1] += 1
                    out[key][0] += (ma < mb) == (pa < pb)
    return {k: (v[0], v[1]) for k, v in out.items()}


