"""The self-contained HTML report: inline CSS and SVG only, nothing fetched from anywhere."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from html import escape
from typing import Any

from planner.report import svg
from planner.report.data import FRONTS, ReportData

TOP_ROWS = 60

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222;
       background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px 0; }
.sub { color: #555; margin: 0 0 12px 0; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fff; }
.headline { font-size: 16px; background: #f3f7fb; border-left: 4px solid #1f77b4; padding: 10px 14px; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border-bottom: 1px solid #eee; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f6f6f6; position: sticky; top: 0; }
td.l, th.l { text-align: left; }
tr.front td { background: #fff4f4; }
.plan { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 12px 0; }
.note { color: #666; font-size: 12px; }
"""

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("ttft_ms", "TTFT ms", 0), ("tpot_ms", "TPOT ms", 1), ("output_tok_s", "tok/s", 0),
    ("output_tok_s_per_device", "tok/s/dev", 0), ("tok_s_per_user", "tok/s/user", 1),
    ("energy_j_per_token", "J/token", 3), ("power_w", "power kW", 1), ("cost_per_mtok", "$/M tok", 3),
)


def _num(v: Any, digits: int) -> str:
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else "-"


def _request_line(req: Mapping[str, Any]) -> str:
    wl = req.get("workload", {})
    load = f"{wl['concurrency']} clients" if "concurrency" in wl else f"{wl.get('rate_rps', '?')} req/s"
    slo = ", ".join(f"{k} {v:g}" for k, v in (req.get("slo") or {}).items()) or "no latency objective"
    caps = ", ".join(svg.cap_label(c) for c in req.get("power_caps", [None]))
    return (f"{req.get('model', '?')} on {req.get('cluster', '?')} ({req.get('devices', '?')} devices), "
            f"{req.get('precision', '?')}, {req.get('engine', '?')}; ISL {wl.get('isl', '?')} / OSL "
            f"{wl.get('osl', '?')}, {load}; SLO: {slo}; power caps: {caps}; "
            f"${req.get('usd_per_device_hour', 1.0):g} per device-hour")


def _headline(data: ReportData) -> str:
    ratio = data.energy_ratio()
    if ratio is None:
        return '<p class="headline">These plans carry no energy metrics; re-run `planner plan` to get fronts.</p>'
    fast, thrifty = ratio.latency_optimal, ratio.energy_optimal
    return (f'<p class="headline">On the energy-vs-TPOT front, the latency-optimal plan '
            f"<b>{escape(fast['label'])}</b> (TPOT {fast['metrics']['tpot_ms']:.1f} ms) uses "
            f"<b>{fast['metrics']['energy_j_per_token']:.3f} J</b> per output token; the energy-optimal plan "
            f"<b>{escape(thrifty['label'])}</b> (TPOT {thrifty['metrics']['tpot_ms']:.1f} ms) uses "
            f"<b>{thrifty['metrics']['energy_j_per_token']:.3f} J</b>: a ratio of <b>{ratio.ratio:.2f}x</b> "
            f"({ratio.saving:.0%} less energy).</p>")


def _table(data: ReportData) -> str:
    fronts = {id(p): [s.title for s in FRONTS if any(p is q for q in data.front(s))] for p in data.plans}
    head = ("<tr><th>#</th><th class='l'>plan</th><th>devices</th><th>cap</th>"
            + "".join(f"<th>{escape(t)}</th>" for _, t, _ in COLUMNS) + "<th>score</th><th class='l'>fronts</th></tr>")
    rows = []
    for p in data.plans[:TOP_ROWS]:
        m = p["metrics"]
        cells = "".join(f"<td>{_num(m.get(k) / 1e3 if k == 'power_w' and k in m else m.get(k), d)}</td>"
                        for k, _, d in COLUMNS)
        marks = fronts[id(p)]
        rows.append(f"<tr class='{'front' if marks else ''}' title='{escape(p.get('why', ''), quote=True)}'>"
                    f"<td>{p.get('rank', '')}</td><td class='l'>{escape(p.get('label', ''))}</td>"
                    f"<td>{p.get('devices', '')}</td><td>{escape(svg.cap_label(p.get('power_cap_w')))}</td>{cells}"
                    f"<td>{_num(p.get('score'), 3)}</td><td class='l'>{escape('; '.join(marks))}</td></tr>")
    more = (f"<p class='note'>{len(data.plans) - TOP_ROWS} more plans in plans.json.</p>"
            if len(data.plans) > TOP_ROWS else "")
    return f"<table>{head}{''.join(rows)}</table>{more}"


def _rejected(data: ReportData) -> str:
    if not data.rejected:
        return "<p>None: every evaluated layout met the request.</p>"
    counts = Counter(p.get("binding", "?") for p in data.rejected)
    items = "".join(f"<li>{escape(p.get('label', ''))}: {escape(p.get('binding', ''))} - "
                    f"{escape(p.get('detail', ''))}</li>" for p in data.rejected[:20])
    summary = ", ".join(f"{n} by {escape(k)}" for k, n in counts.most_common())
    return f"<p>{len(data.rejected)} layouts rejected ({summary}). They are on no front.</p><ul>{items}</ul>"


def _plan_detail(data: ReportData, p: Mapping[str, Any]) -> str:
    m = p["metrics"]
    parts = [f"<div class='plan'><h3>#{p.get('rank', '?')} {escape(p.get('label', ''))}</h3>",
             f"<p class='note'>{escape(p.get('why', ''))}</p>",
             f"<p>TTFT {_num(m.get('ttft_ms'), 0)} ms, TPOT {_num(m.get('tpot_ms'), 1)} ms, "
             f"{_num(m.get('output_tok_s'), 0)} tok/s, {_num(m.get('energy_j_per_token'), 3)} J/token, "
             f"{_num(m.get('device_power_w'), 0)} W per device, plan power {_num(m.get('power_w', 0) / 1e3, 2)} kW</p>",
             "<div class='grid'>", f"<div class='card'>{svg.cluster_layout(data.request.get('cluster_shape', []), p)}"
             "<p class='note'>Colour = replica; shade = pipeline stage (s); t = TP rank; hover a device.</p></div>"]
    if p.get("breakdown_ms"):
        parts.append(f"<div class='card'>{svg.hbars(p['breakdown_ms'], 'time per iteration by op', 'ms')}</div>")
    if p.get("memory_gib"):
        parts.append(f"<div class='card'>{svg.memory_bar(p['memory_gib'])}</div>")
    parts.append("</div></div>")
    return "".join(parts)


def render(data: ReportData) -> str:
    """The whole report page."""
    req = data.request
    charts = "".join(
        f"<div class='card'>{svg.scatter(data.plans, data.front(s), s.x, s.y, s.title, s.x_label, s.y_label)}</div>"
        for s in FRONTS if data.has(s))
    details = "".join(_plan_detail(data, p) for p in data.spotlight())
    title = f"llm-planner report: {req.get('model', '')} on {req.get('cluster', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="sub">{escape(_request_line(req))}</p>
<p class="sub">{data.search.get('feasible', len(data.plans))} feasible of {data.search.get('evaluated', '?')} evaluated
plans in {data.search.get('seconds', '?')} s, ranked by {escape(str(data.search.get('objective', 'score')))}.</p>
{_headline(data)}
<h2>Pareto fronts</h2>
<p class="note">Every feasible plan is a dot (colour = power cap); ringed dots joined by the dashed line are
non-dominated on the two metrics. Hover a dot for the plan.</p>
<div class="grid">{charts or '<p>No plan carries energy metrics.</p>'}</div>
<h2>Ranked plans</h2>
{_table(data)}
<h2>Rejected layouts</h2>
{_rejected(data)}
<h2>Plans in detail</h2>
<p class="note">The best plans and both ends of the energy front: where each device sits, where an
iteration's time goes, and what fills each device's memory.</p>
{details or '<p>No feasible plan.</p>'}
</body></html>
"""
