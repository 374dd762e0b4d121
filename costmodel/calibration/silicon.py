"""End-to-end serving measurements in the AIConfigurator silicon CSV format, and predictions of them.

The same columns serve `planner calibrate --from-runs` for a user's own measurements: `model_path`,
`system`, `backend`, `precision`, `mode`, `isl`, `osl`, `batch_size` (closed-loop concurrency),
`tp_size`, `pp_size`, `attention_dp_size`, `moe_ep_size`, `silicon_ttft_ms`, `silicon_tpot_ms`. Two
optional columns widen it to the runs `planner verify` writes: `request_rate_rps` (an open-loop run's
arrival rate per instance, `batch_size` then left empty) and `engine` (the engine a run is predicted
as when `backend` names a runner that stands in for it, as the torch runner does for the plan's engine).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from costmodel.calibration.profile import Profile, profile_for
from costmodel.catalog import model as load_model
from costmodel.engines import engine as load_engine
from costmodel.estimate import Estimate, build_instance, estimate_instance
from costmodel.layout import Layout, check_layout
from costmodel.precision import precision as load_precision
from costmodel.workload import Workload
from hardware.catalog import cluster as load_cluster
from hardware.errors import PlannerInputError, UnknownNameError
from hardware.loading import read_text, validation_sentence

# silicon `system` -> catalog cluster whose node group has that device; `local` is the machine the
# command runs on (runs that `planner verify` measured here)
SYSTEMS = {"h100_sxm": "dgx-h100", "h200_sxm": "hgx-h200", "b200_sxm": "dgx-b200", "gb200": "gb200-nvl72",
           "a100_sxm": "dgx-a100", "local": "local"}
PRECISION = {"": "bf16", "bf16": "bf16", "fp8": "fp8", "fp4": "fp4", "int4": "int4"}
REQUIRED = ("model_path", "system", "backend", "precision", "mode", "isl", "osl", "batch_size", "tp_size",
            "pp_size", "silicon_ttft_ms", "silicon_tpot_ms")


@dataclass(frozen=True)
class Row:
    """One measured aggregated (prefill and decode on one instance) run: closed loop (`concurrency`
    clients) or, with `rate_rps`, open loop."""

    line: int
    model: str
    system: str
    backend: str
    precision: str
    isl: int
    osl: int
    concurrency: int
    layout: Layout
    ttft_ms: float
    tpot_ms: float
    rate_rps: float | None = None  # open loop: arrivals per second per instance
    engine: str = ""  # the engine it is predicted as ("" = backend)

    @property
    def workload(self) -> Workload:
        if self.rate_rps is not None:
            return Workload(isl=self.isl, osl=self.osl, rate_rps=self.rate_rps)
        return Workload(isl=self.isl, osl=self.osl, concurrency=self.concurrency)

    @property
    def group(self) -> str:
        return f"{self.model}|{self.system}|{self.backend}|{self.precision or 'bf16'}"


def _int(v: str | None, default: int = 1) -> int:
    """An integer column; empty (and 0 for degrees, as dense rows write moe_ep_size) -> default."""
    return int(float(v)) if v not in (None, "") and float(v) != 0 else default


def load_rows(path: str | Path, mode: str = "agg") -> list[Row]:
    """Rows of `mode` from a silicon-format CSV; a malformed row raises naming its line."""
    p = Path(path)
    with io.StringIO(read_text(p, "runs CSV"), newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise PlannerInputError(f"{p}: column '{missing[0]}' is missing; runs need the silicon CSV columns")
        out = []
        for i, r in enumerate(reader, start=2):
            if r["mode"] != mode:
                continue
            try:
                lay = Layout(tp=_int(r["tp_size"]), pp=_int(r["pp_size"]),
                             attention_dp=_int(r.get("attention_dp_size")), ep=_int(r.get("moe_ep_size")))
                rate = r.get("request_rate_rps") or None
                out.append(Row(i, r["model_path"], r["system"], r["backend"], r["precision"] or "",
                               _int(r["isl"]), _int(r["osl"]), _int(r["batch_size"]), lay,
                               float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"]),
                               float(rate) if rate is not None else None, r.get("engine") or ""))
            except ValidationError as exc:
                raise PlannerInputError(validation_sentence(exc, f"{p} line {i}")) from None
            except (ValueError, TypeError) as exc:
                raise PlannerInputError(f"{p} line {i}: {exc}; fix or remove the row") from None
    return out


def supported(row: Row) -> bool:
    """Whether the catalog knows the row's model, system and precision, and the layout is valid and fits
    on the system's catalog cluster. Instances larger than that (the file's db-dump rows with
    tp_size 16 or 64 on 8-GPU systems) would span a fabric the file does not describe; their
    measured speeds match one-node layouts, so their columns may count something else, and no
    prediction is made for them."""
    if row.system not in SYSTEMS or row.precision not in PRECISION:
        return False
    if row.layout.instance_devices > load_cluster(SYSTEMS[row.system]).groups[0].num_devices:
        return False
    try:
        check_layout(load_model(row.model), row.layout)
    except (UnknownNameError, PlannerInputError):
        return False
    return True


AS_MEASURED = "measured"


def kv_for(row: Row, kv_cache_dtype: str = AS_MEASURED) -> str:
    """The KV-cache dtype a row is predicted with. `AS_MEASURED`: FP8 rows keep their KV cache in FP8,
    every other row in 16-bit. The file's FP8 rows run concurrencies whose KV cache fits an instance only
    in FP8 and show no queueing (TensorRT-LLM Qwen3-32B on one H100: 128 clients of 2,048 + 128 tokens
    need 69 GB of bf16 KV beside 33 GB of weights, and measured TTFT 1.6 s with TPOT 184 ms, twice the
    64-client step), while its bf16 rows that overflow queue for 19-59 s. Any other value is used for
    every row ("auto" = 16-bit, "fp8")."""
    if kv_cache_dtype != AS_MEASURED:
        return kv_cache_dtype
    return "fp8" if row.precision == "fp8" else "auto"


def predict(row: Row, kv_cache_dtype: str = AS_MEASURED, profile: Profile | None = None) -> Estimate:
    """The estimate for a measured row's model, system, layout, precision, engine and load."""
    group = load_cluster(SYSTEMS[row.system]).groups[0]
    inst = build_instance(load_model(row.model), row.layout,
                          load_precision(PRECISION[row.precision], kv_for(row, kv_cache_dtype)), group,
                          profile or profile_for(group.device.name), load_engine(row.engine or row.backend))
    return estimate_instance(inst, row.workload)


def ape(predicted: float, measured: float) -> float:
    """Absolute percentage error; an infinite prediction counts as 100%+ off (capped at 10x)."""
    if not math.isfinite(predicted):
        return 1000.0
    return min(abs(predicted - measured) / measured * 100.0, 1000.0)


@dataclass(frozen=True)
class GroupError:
    group: str
    rows: int
    ttft_mape: float
    tpot_mape: float


Apes = dict[str, list[tuple[float, float]]]  # group -> (TTFT, TPOT) absolute percentage error of each row


def group_apes(rows: Iterable[Row], kv_cache_dtype: str = AS_MEASURED) -> Apes:
    """Each row's TTFT and TPOT absolute percentage error, by group (one prediction per row)."""
    per: Apes = {}
    for r in rows:
        e = predict(r, kv_cache_dtype)
        per.setdefault(r.group, []).append((ape(e.ttft_ms, r.ttft_ms), ape(e.tpot_ms, r.tpot_ms)))
    return per


def pooled(label: str, apes: Apes, groups: Collection[str] | None = None) -> GroupError:
    """Median TTFT and TPOT error over the rows of `groups` (all of `apes` when None) together."""
    every = [x for g, v in apes.items() if groups is None or g in groups for x in v]
    return GroupError(label, len(every), statistics.median(x for x, _ in every) if every else math.nan,
                      statistics.median(y for _, y in every) if every else math.nan)
