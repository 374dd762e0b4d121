"""Reports of a `plan` run: `report.html` (self-contained, inline SVG), PNG fronts and `summary.md`.

    from planner.report import write_report
    write_report("plans/")            # reads plans/plans.json, writes next to it
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardware.loading import write_atomic
from planner.report import html, summary
from planner.report.data import FRONTS, EnergyRatio, ReportData, load
from planner.report.png import write_pngs
from planner.result import PlanResult

__all__ = ["FRONTS", "EnergyRatio", "ReportData", "load", "write_report"]


def write_report(source: PlanResult | Mapping[str, Any] | str | Path,
                 out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.html, summary.md and front_*.png for `source` into `out_dir`.

    `source` is a PlanResult, its dict, a plans.json or the folder holding one; `out_dir`
    defaults to that folder. Returns the written paths by name.
    """
    data = load(source)
    if out_dir is None:
        if not isinstance(source, (str, Path)):
            raise TypeError("out_dir is required when the source is not a plans folder")
        path = Path(source)
        out_dir = path if path.is_dir() else path.parent
    out = Path(out_dir)
    written = {"report.html": write_atomic(out / "report.html", html.render(data)),
               "summary.md": write_atomic(out / "summary.md", summary.render(data))}
    written.update(write_pngs(data, out))
    return written
