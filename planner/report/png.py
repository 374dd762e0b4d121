"""PNG charts of the fronts with matplotlib (bare Figure objects: no pyplot state, no display needed)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

from planner.report import svg
from planner.report.data import FRONTS, FrontSpec, ReportData


def front_figure(data: ReportData, spec: FrontSpec) -> Figure:
    """All plans coloured by power cap, the front ringed and joined."""
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.subplots()
    colors = svg.cap_colors(data.plans)
    for cap, color in colors.items():
        pts = [p for p in data.plans if p.get("power_cap_w") == cap]
        ax.scatter([p["metrics"][spec.x] for p in pts], [p["metrics"][spec.y] for p in pts], s=22, color=color,
                   alpha=0.8, label=svg.cap_label(cap), zorder=2)
    front = sorted(data.front(spec), key=lambda p: p["metrics"][spec.x])
    ax.plot([p["metrics"][spec.x] for p in front], [p["metrics"][spec.y] for p in front], "--", color=svg.FRONT_COLOR,
            lw=1.2, zorder=3, label=f"Pareto front ({len(front)})")
    ax.scatter([p["metrics"][spec.x] for p in front], [p["metrics"][spec.y] for p in front], s=70,
               facecolors="none", edgecolors=svg.FRONT_COLOR, linewidths=1.5, zorder=4)
    ax.set_xlabel(spec.x_label)
    ax.set_ylabel(spec.y_label)
    ax.set_title(f"{spec.title}\n{data.request.get('model', '')} on {data.request.get('cluster', '')}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Save `fig` to `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_pngs(data: ReportData, out_dir: Path) -> dict[str, Path]:
    """One PNG per front the plans carry metrics for, named `front_<key>.png`."""
    return {f"front_{s.key}": save_png(front_figure(data, s), out_dir / f"front_{s.key}.png")
            for s in FRONTS if data.has(s)}
