"""Plans and plan results: ranked layouts with predicted metrics, explanations, atomic output."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costmodel.layout import Layout
from hardware.errors import PlannerInputError


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

    @property
    def devices(self) -> int:
        return self.layout.instance_devices * self.replicas

    def label(self) -> str:
        return f"{self.layout.model_copy(update={'dp': 1}).label()} x{self.replicas} on {self.device}"

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
                "detail": self.detail, "why": self.why, "label": self.label()}


@dataclass(frozen=True)
class PlanResult:
    """Feasible plans ranked best first, the rejected ones, and how the search went."""

    request: dict[str, Any]
    plans: list[Plan]
    rejected: list[Plan] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Plan:
        if not self.plans:
            raise PlannerInputError("no feasible plan; see `rejected` for what binds")
        return self.plans[0]

    def as_dict(self) -> dict[str, Any]:
        return {"request": self.request, "search": self.search,
                "plans": [p.as_dict() for p in self.plans],
                "rejected": [p.as_dict() for p in self.rejected]}

    def save(self, out_dir: str | Path) -> Path:
        """Write `plans.json` in `out_dir` atomically (temp file + rename)."""
        return write_atomic(Path(out_dir) / "plans.json", json.dumps(self.as_dict(), indent=2) + "\n")


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
