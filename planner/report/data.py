"""What a report is drawn from: the plans of one `plan` run, its fronts, and the energy ratio."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.errors import PlannerInputError
from planner.pareto import front
from planner.result import PlanResult


@dataclass(frozen=True)
class FrontSpec:
    """One two-metric front a report shows."""

    key: str
    x: str
    y: str
    title: str
    x_label: str
    y_label: str


FRONTS: tuple[FrontSpec, ...] = (
    FrontSpec("energy_tpot", "tpot_ms", "energy_j_per_token", "Energy per token vs TPOT",
              "TPOT (ms)", "energy per output token (J)"),
    FrontSpec("energy_ttft", "ttft_ms", "energy_j_per_token", "Energy per token vs TTFT",
              "TTFT (ms)", "energy per output token (J)"),
    FrontSpec("throughput_interactivity", "tok_s_per_user", "output_tok_s_per_device",
              "Throughput per device vs tokens/s per user", "tokens/s per user (1000 / TPOT)",
              "output tokens/s per device"),
    FrontSpec("cost_tpot", "tpot_ms", "cost_per_mtok", "Cost vs TPOT", "TPOT (ms)", "cost per million output tokens"),
)


@dataclass(frozen=True)
class EnergyRatio:
    """The two ends of the energy-vs-TPOT front."""

    latency_optimal: dict[str, Any]
    energy_optimal: dict[str, Any]

    @property
    def ratio(self) -> float:
        """Energy per token of the latency-optimal plan over the energy-optimal one's."""
        lo = self.energy_optimal["metrics"]["energy_j_per_token"]
        return self.latency_optimal["metrics"]["energy_j_per_token"] / lo

    @property
    def saving(self) -> float:
        """Share of energy per token the energy-optimal plan saves against the latency-optimal one."""
        return 1.0 - 1.0 / self.ratio


@dataclass(frozen=True)
class ReportData:
    request: dict[str, Any]
    search: dict[str, Any]
    plans: list[dict[str, Any]]
    rejected: list[dict[str, Any]]

    def has(self, spec: FrontSpec) -> bool:
        """Whether the plans carry both metrics of `spec` (plans.json files from before energy lack some)."""
        return bool(self.plans) and all(
            isinstance(p.get("metrics", {}).get(k), (int, float)) for p in self.plans for k in (spec.x, spec.y))

    def front(self, spec: FrontSpec) -> list[dict[str, Any]]:
        return front(self.plans, spec.x, spec.y) if self.has(spec) else []

    def energy_ratio(self) -> EnergyRatio | None:
        pts = self.front(FRONTS[0])
        if not pts:
            return None
        fastest = min(pts, key=lambda p: p["metrics"]["tpot_ms"])
        thriftiest = min(pts, key=lambda p: p["metrics"]["energy_j_per_token"])
        return EnergyRatio(fastest, thriftiest)

    def spotlight(self, limit: int = 6) -> list[dict[str, Any]]:
        """The plans worth drawing: the best three and both ends of the energy front."""
        ratio = self.energy_ratio()
        picks = self.plans[:3] + ([ratio.latency_optimal, ratio.energy_optimal] if ratio else [])
        out: list[dict[str, Any]] = []
        for p in picks:
            if all(p is not q for q in out):
                out.append(p)
        return out[:limit]


def load(source: PlanResult | Mapping[str, Any] | str | Path) -> ReportData:
    """Report data from a PlanResult, its dict, a plans.json file or the folder holding one."""
    if isinstance(source, PlanResult):
        raw: Mapping[str, Any] = source.as_dict()
    elif isinstance(source, Mapping):
        raw = source
    else:
        raw = _read(Path(source))
    plans = raw.get("plans")
    if not isinstance(plans, list):
        raise PlannerInputError("plans: the plans file has no 'plans' list; write it with `planner plan ... --out DIR`")
    return ReportData(request=dict(raw.get("request") or {}), search=dict(raw.get("search") or {}),
                      plans=[_clean(p) for p in plans], rejected=[_clean(p) for p in raw.get("rejected") or []])


def _read(path: Path) -> Mapping[str, Any]:
    file = path / "plans.json" if path.is_dir() else path
    if not file.is_file():
        raise PlannerInputError(f"plans_dir: {path} holds no plans.json; run `planner plan ... --out {path}` first")
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or bytes that are not UTF-8
        raise PlannerInputError(f"plans_dir: {file} is not a readable plans.json ({exc}); write it again with "
                                "`planner plan ... --out DIR`") from None
    if not isinstance(raw, Mapping):
        raise PlannerInputError(f"plans_dir: {file} does not hold a plans object; write it again with `planner plan`")
    return raw


def _clean(plan: Mapping[str, Any]) -> dict[str, Any]:
    """A plan dict with null (infinite) metrics dropped, so every metric left is a finite number."""
    out = dict(plan)
    metrics = plan.get("metrics") or {}
    out["metrics"] = {k: float(v) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return out
