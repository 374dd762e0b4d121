"""`summary.md`: the request, the headline energy ratio, the best plans and each front as tables."""

from __future__ import annotations

from typing import Any

from planner.report.data import FRONTS, ReportData
from planner.report.html import _request_line
from planner.report.svg import cap_label, fmt


def _row(p: dict[str, Any], keys: tuple[str, ...]) -> str:
    m = p["metrics"]
    return "| " + " | ".join([str(p.get("rank", "")), p.get("label", "")] + [fmt(m[k]) if k in m else "-"
                                                                          for k in keys]) + " |"


def render(data: ReportData, top: int = 10) -> str:
    lines = [f"# {data.request.get('model', '')} on {data.request.get('cluster', '')}", "",
             _request_line(data.request), "",
             f"{data.search.get('feasible', len(data.plans))} feasible of {data.search.get('evaluated', '?')} "
             f"evaluated plans ({len(data.rejected)} rejected; rejected plans are on no front).", ""]
    ratio = data.energy_ratio()
    if ratio is not None:
        fast, thrifty = ratio.latency_optimal, ratio.energy_optimal
        lines += ["## Energy: latency-optimal vs energy-optimal", "",
                  f"- latency-optimal on the energy/TPOT front: {fast['label']}, TPOT "
                  f"{fast['metrics']['tpot_ms']:.1f} ms, {fast['metrics']['energy_j_per_token']:.3f} J/token",
                  f"- energy-optimal on the front: {thrifty['label']}, TPOT {thrifty['metrics']['tpot_ms']:.1f} ms, "
                  f"{thrifty['metrics']['energy_j_per_token']:.3f} J/token",
                  f"- energy ratio (latency-optimal / energy-optimal): **{ratio.ratio:.2f}x**, "
                  f"{ratio.saving:.0%} less energy per token", ""]
    keys = ("ttft_ms", "tpot_ms", "output_tok_s", "energy_j_per_token", "power_w", "cost_per_mtok")
    header = "| # | plan | " + " | ".join(keys) + " |"
    rule = "|" + "---|" * (len(keys) + 2)
    lines += [f"## Top {min(top, len(data.plans))} plans", "", header, rule]
    lines += [_row(p, keys) for p in data.plans[:top]]
    for spec in FRONTS:
        pts = data.front(spec)
        if not pts:
            continue
        lines += ["", f"## Front: {spec.title} ({len(pts)} plans)", "",
                  f"| # | plan | {spec.x} | {spec.y} | cap |", "|---|---|---|---|---|"]
        lines += [f"| {p.get('rank', '')} | {p.get('label', '')} | {fmt(p['metrics'][spec.x])} | "
                  f"{fmt(p['metrics'][spec.y])} | {cap_label(p.get('power_cap_w'))} |" for p in pts]
    return "\n".join(lines) + "\n"
