"""Plans and plan results: ranked layouts with predicted metrics, explanations, atomic output."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costmodel.layout import Layout
from hardware.errors import PlannerInputError
from hardware.loading import write_atomic
from planner.pareto import front as pareto_front


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4) if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class Plan:
    """One deployment: an instance layout, how many replicas, and what it is predicted to do."""

    layout: Layout
    replicas: int
    device: str
    metrics: dict[str, float]
    score: float
    feasible: bool = True
    binding: str = ""
    detail: str = ""
    rank: int = 0
    why: str = ""
    power_cap_w: float | None = None  # board power limit of every device; None = default (TDP)
    breakdown_ms: dict[str, float] = field(default_factory=dict)  # per-op time of one iteration
    memory_gib: dict[str, float] = field(default_factory=dict)  # per-device memory
    # pool plans (plan(modes=..., search=...)): agg, or disagg with `layout`/`replicas`/`device` the decode pool
    mode: str = "agg"
    prefill_layout: Layout | None = None
    prefill_instances: int = 0
    prefill_device: str = ""
    pools: tuple[dict[str, Any], ...] = ()  # role, device, layout, instances, devices, rate_rps, binding
    placement: tuple[dict[str, Any], ...] = ()  # per instance: role, device, group, devices, local_kv

    @property
    def devices(self) -> int:
        if self.pools:
            return sum(int(p["devices"]) for p in self.pools)
        return self.layout.instance_devices * self.replicas

    @property
    def decode_layout(self) -> Layout | None:
        return self.layout if self.mode == "disagg" else None

    @property
    def decode_instances(self) -> int:
        return self.replicas if self.mode == "disagg" else 0

    def label(self) -> str:
        cap = f" @{self.power_cap_w:g}W" if self.power_cap_w is not None else ""
        if self.pools:
            return " + ".join(f"{p['instances']}{'PDA'[('prefill', 'decode', 'agg').index(p['role'])]} "
                              f"{p['layout']} on {p['device']}" for p in self.pools) + cap
        return f"{self.layout.model_copy(update={'dp': 1}).label()} x{self.replicas} on {self.device}{cap}"

    def explain(self) -> str:
        """Why this plan ranks where it does (or why it was rejected)."""
        m = self.metrics
        head = (f"#{self.rank} {self.label()} ({self.devices} devices): "
                f"TTFT {m.get('ttft_ms', math.nan):.0f} ms, TPOT {m.get('tpot_ms', math.nan):.1f} ms, "
                f"{m.get('output_tok_s', 0.0):.0f} output tok/s, goodput {m.get('goodput_rps', 0.0):.2f} req/s, "
                f"score {self.score:.4g}")
        if not self.feasible:
            return f"{head}. Rejected: {self.binding} binds - {self.detail}."
        return f"{head}. {self.why}" if self.why else head

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "layout": self.layout.model_dump(), "replicas": self.replicas,
                "devices": self.devices, "device": self.device, "score": _finite(self.score),
                "feasible": self.feasible, "metrics": _finite(self.metrics), "binding": self.binding,
                "detail": self.detail, "why": self.why, "label": self.label(), "power_cap_w": self.power_cap_w,
                "breakdown_ms": _finite(self.breakdown_ms), "memory_gib": _finite(self.memory_gib),
                "mode": self.mode, "prefill_layout": self.prefill_layout.model_dump() if self.prefill_layout else None,
                "prefill_instances": self.prefill_instances, "prefill_device": self.prefill_device,
                "pools": [_finite(p) for p in self.pools], "placement": list(self.placement)}


@dataclass(frozen=True)
class PlanResult:
    """Feasible plans ranked best first, the rejected ones, and how the search went."""

    request: dict[str, Any]
    plans: list[Plan]
    rejected: list[Plan] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)
    # every capacity row the search evaluated: role, device, layout, per-instance rate and what binds it
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> Plan:
        if not self.plans:
            raise PlannerInputError("no feasible plan; see `rejected` for what binds")
        return self.plans[0]

    @property
    def pareto(self) -> list[Plan]:
        """Feasible plans on the front of energy per output token against TPOT (both lower is better)."""
        return self.front("tpot_ms", "energy_j_per_token")

    def front(self, x: str, y: str) -> list[Plan]:
        """Feasible plans not dominated on metrics `x` and `y` (sense per `planner.pareto.HIGHER_IS_BETTER`)."""
        return pareto_front(self.plans, x, y)

    def as_dict(self) -> dict[str, Any]:
        return {"request": self.request, "search": self.search,
                "plans": [p.as_dict() for p in self.plans],
                "rejected": [p.as_dict() for p in self.rejected],
                "candidates": [_finite(c) for c in self.candidates]}

    def save(self, out_dir: str | Path) -> Path:
        """Write `plans.json` in `out_dir` atomically (temp file + rename)."""
        return write_atomic(Path(out_dir) / "plans.json", json.dumps(self.as_dict(), indent=2) + "\n")

    def emit(self, engine: str, out_dir: str | Path, top: int = 1) -> list[Path]:
        """Deployment files of the `top` best plans for `engine` (vllm, sglang, trtllm, dynamo, k8s,
        ascend) under `out_dir/<engine>/plan-<rank>/`; returns the written paths (see planner.emit)."""
        from planner.emit import emit  # planner.emit imports this module

        return emit(self, engine, out_dir, top)
