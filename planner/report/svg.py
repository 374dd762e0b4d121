"""Inline SVG charts for the HTML report: scatter with front, cluster layout, bars. No scripts, no links.

Every mark carries a `<title>` child, which browsers show on hover.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f")
FRONT_COLOR = "#d62728"


def cap_label(cap: float | None) -> str:
    return "uncapped" if cap is None else f"{cap:g} W cap"


def cap_colors(plans: Sequence[Mapping[str, Any]]) -> dict[float | None, str]:
    """One colour per power cap (uncapped first, then caps from high to low)."""
    caps = sorted({p.get("power_cap_w") for p in plans}, key=lambda c: -math.inf if c is None else -c)
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(caps)}


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1-2-5 steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2g}"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def _text(x: float, y: float, s: str, size: int = 11, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}>'
            f"{escape(s)}</text>")


def scatter(plans: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]], x: str, y: str,
            title: str, x_label: str, y_label: str, width: int = 560, height: int = 380) -> str:
    """All plans as dots coloured by power cap; the front's plans ringed and joined by a step line."""
    left, right, top, bottom = 70, 16, 34, 48
    pts = [(p["metrics"][x], p["metrics"][y], p) for p in plans if x in p["metrics"] and y in p["metrics"]]
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f"<title>{escape(title)}</title>", '<rect width="100%" height="100%" fill="#fff"/>',
           _text(width / 2, 20, title, 14, extra='font-weight="bold"')]
    if not pts:
        out += [_text(width / 2, height / 2, "no plan carries these metrics"), "</svg>"]
        return "\n".join(out)
    xt = nice_ticks(min(v for v, _, _ in pts), max(v for v, _, _ in pts))
    yt = nice_ticks(min(v for _, v, _ in pts), max(v for _, v, _ in pts))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / ((x1 - x0) or 1.0) * pw

    def sy(v: float) -> float:
        return top + ph - (v - y0) / ((y1 - y0) or 1.0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in xt:
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(_text(sx(t), top + ph + 15, fmt(t), 10))
    for t in yt:
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(_text(left - 6, sy(t) + 3, fmt(t), 10, anchor="end"))
    out.append(_text(left + pw / 2, height - 10, x_label, 11))
    out.append(_text(16, top + ph / 2, y_label, 11, extra=f'transform="rotate(-90 16 {top + ph / 2:.1f})"'))
    colors = cap_colors(plans)
    on_front = {id(p) for p in front}
    ordered = sorted(front, key=lambda p: p["metrics"][x])
    if len(ordered) > 1:
        path = " ".join(f"{sx(p['metrics'][x]):.1f},{sy(p['metrics'][y]):.1f}" for p in ordered)
        out.append(f'<polyline points="{path}" fill="none" stroke="{FRONT_COLOR}" stroke-width="1.5" '
                   f'stroke-dasharray="4 3"><title>Pareto front: {len(ordered)} plans</title></polyline>')
    for vx, vy, p in sorted(pts, key=lambda t: id(t[2]) in on_front):
        ring = id(p) in on_front
        tip = (f"#{p.get('rank', '?')} {p.get('label', '')}\n{x} = {fmt(vx)}\n{y} = {fmt(vy)}"
               + ("\non the Pareto front" if ring else ""))
        stroke = f' stroke="{FRONT_COLOR}" stroke-width="2"' if ring else ' stroke="#fff" stroke-width="0.5"'
        out.append(f'<circle cx="{sx(vx):.1f}" cy="{sy(vy):.1f}" r="{6 if ring else 4}" '
                   f'fill="{colors.get(p.get("power_cap_w"), "#777")}" fill-opacity="0.85"{stroke}>'
                   f"<title>{escape(tip)}</title></circle>")
    lx = left + 8
    for cap, color in colors.items():
        out.append(f'<circle cx="{lx + 5}" cy="{top + 10}" r="4" fill="{color}"/>')
        out.append(_text(lx + 12, top + 14, cap_label(cap), 10, anchor="start"))
        lx += 16 + 6.5 * len(cap_label(cap))
    out.append("</svg>")
    return "\n".join(out)


def device_roles(layout: Mapping[str, int], replicas: int, devices: int) -> list[dict[str, int] | None]:
    """Role of each of `devices` devices: replicas packed in order, each instance stage-major,
    then attention-DP rank, then TP rank (TP contiguous, as the planner costs it)."""
    tp, adp, pp, ep = (int(layout.get(k, 1)) for k in ("tp", "attention_dp", "pp", "ep"))
    group = tp * adp
    size = group * pp
    roles: list[dict[str, int] | None] = []
    for d in range(devices):
        r = d // size
        if r >= replicas:
            roles.append(None)
            continue
        j = d % size
        within = j % group
        roles.append({"replica": r, "stage": j // group, "adp": within // tp, "tp": within % tp,
                      "ep": within // (group // ep) if ep > 1 else 0})
    return roles


def placed_roles(plan: Mapping[str, Any], group: int, devices: int) -> list[dict[str, int] | None]:
    """Role of each device of node group `group` from a pool plan's concrete placement: instances
    numbered in placement order, each laid out stage-major with its own pool's layout."""
    pools = {p["role"]: p.get("layout_fields", {}) for p in plan.get("pools", ())}
    roles: list[dict[str, int] | None] = [None] * devices
    for r, inst in enumerate(x for x in plan["placement"] if int(x.get("group", 0)) == group):
        lay = pools.get(inst["role"], plan.get("layout", {}))
        within = device_roles(lay, 1, len(inst["devices"]))
        for d, role in zip(inst["devices"], within, strict=True):
            if 0 <= d < devices and role is not None:
                roles[d] = {**role, "replica": r}
    return roles


def cluster_layout(shape: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> str:
    """The plan's instances drawn onto its node group's devices, node by node."""
    group = next((g for g in shape if g.get("accelerator") == plan.get("device")), shape[0] if shape else None)
    if group is None:
        return "<p>(cluster shape unknown: plans.json predates it)</p>"
    per_node, nodes = int(group["devices_per_node"]), int(group["num_nodes"])
    layout = plan.get("layout", {})
    roles = (placed_roles(plan, shape.index(group), per_node * nodes) if plan.get("placement")
             else device_roles(layout, int(plan.get("replicas", 1)), per_node * nodes))
    cell, gap, pad = 30, 4, 8
    per_row = max(1, min(nodes, 4 if per_node <= 8 else 2))
    node_w = pad * 2 + per_node * (cell + gap) - gap
    node_h = pad * 2 + 14 + cell
    rows = -(-nodes // per_row)
    width, height = per_row * (node_w + 10) + 10, rows * (node_h + 10) + 10
    pp = int(layout.get("pp", 1))
    out = [f'<svg class="layout" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f"<title>{escape(str(plan.get('label', '')))} on {nodes} x {per_node} {escape(str(group['accelerator']))}"
           "</title>", '<rect width="100%" height="100%" fill="#fff"/>']
    domain = int(group.get("nodes_per_domain", 1))
    for n in range(nodes):
        nx, ny = 10 + (n % per_row) * (node_w + 10), 10 + (n // per_row) * (node_h + 10)
        out.append(f'<rect x="{nx}" y="{ny}" width="{node_w}" height="{node_h}" rx="6" fill="#f6f6f6" '
                   f'stroke="#aaa"><title>node {n} (scale-up domain {n // domain})</title></rect>')
        out.append(_text(nx + pad, ny + pad + 9, f"node {n}", 10, anchor="start"))
        for k in range(per_node):
            d = n * per_node + k
            role = roles[d]
            cx, cy = nx + pad + k * (cell + gap), ny + pad + 14
            if role is None:
                out.append(f'<rect x="{cx}" y="{cy}" width="{cell}" height="{cell}" rx="3" fill="#ddd">'
                           f"<title>device {d}: unused by this plan</title></rect>")
                continue
            shade = 1.0 - 0.5 * role["stage"] / max(pp - 1, 1)
            tip = (f"device {d} (node {n}, slot {k}): replica {role['replica']}, pipeline stage {role['stage']}, "
                   f"TP rank {role['tp']}" + (f", attention-DP rank {role['adp']}" if layout.get("attention_dp", 1) > 1
                                             else "") + (f", EP rank {role['ep']}" if layout.get("ep", 1) > 1 else ""))
            color = PALETTE[role["replica"] % len(PALETTE)]
            out.append(f'<rect x="{cx}" y="{cy}" width="{cell}" height="{cell}" rx="3" fill="{color}" '
                       f'fill-opacity="{shade:.2f}"><title>{escape(tip)}</title></rect>')
            out.append(_text(cx + cell / 2, cy + 13, f"r{role['replica']}", 9, extra='fill="#fff"'))
            out.append(_text(cx + cell / 2, cy + 25, f"s{role['stage']}t{role['tp']}", 8, extra='fill="#fff"'))
    out.append("</svg>")
    return "\n".join(out)


def hbars(values: Mapping[str, float], title: str, unit: str, width: int = 520) -> str:
    """Horizontal bars, largest first, each with its share of the total on hover."""
    items = sorted(((k, float(v)) for k, v in values.items() if v and v > 0), key=lambda kv: -kv[1])
    total = sum(v for _, v in items) or 1.0
    bar_h, label_w = 16, 150
    height = 28 + len(items) * (bar_h + 4) + 6
    top = max((v for _, v in items), default=1.0)
    out = [f'<svg class="bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f"<title>{escape(title)}</title>", '<rect width="100%" height="100%" fill="#fff"/>',
           _text(8, 16, f"{title} (total {fmt(total)} {unit})", 12, anchor="start", extra='font-weight="bold"')]
    span = width - label_w - 70
    for i, (name, v) in enumerate(items):
        y = 26 + i * (bar_h + 4)
        w = max(1.0, v / top * span)
        out.append(_text(label_w - 6, y + 12, name, 10, anchor="end"))
        out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4c78a8">'
                   f"<title>{escape(f'{name}: {fmt(v)} {unit} ({v / total:.1%})')}</title></rect>")
        out.append(_text(label_w + w + 4, y + 12, f"{fmt(v)}", 10, anchor="start"))
    out.append("</svg>")
    return "\n".join(out)


MEMORY_PARTS = (("weights", "#4c78a8"), ("activations", "#f58518"), ("reserve", "#b279a2"), ("kv_cache", "#54a24b"))


def memory_bar(memory: Mapping[str, float], width: int = 520) -> str:
    """Per-device memory as one stacked bar against the device's HBM."""
    hbm = float(memory.get("hbm") or sum(float(memory.get(k, 0.0)) for k, _ in MEMORY_PARTS) or 1.0)
    span, x = width - 20, 10.0
    out = [f'<svg class="bars" width="{width}" height="64" viewBox="0 0 {width} 64" role="img">',
           "<title>memory per device</title>", '<rect width="100%" height="100%" fill="#fff"/>',
           _text(10, 14, f"memory per device (GiB of {fmt(hbm)} HBM)", 12, anchor="start", extra='font-weight="bold"'),
           f'<rect x="10" y="22" width="{span}" height="22" fill="#eee" stroke="#aaa"/>']
    for key, color in MEMORY_PARTS:
        v = float(memory.get(key, 0.0))
        if v <= 0:
            continue
        w = v / hbm * span
        out.append(f'<rect x="{x:.1f}" y="22" width="{w:.1f}" height="22" fill="{color}">'
                   f"<title>{escape(f'{key}: {fmt(v)} GiB ({v / hbm:.0%} of HBM)')}</title></rect>")
        if w > 40:
            out.append(_text(x + w / 2, 37, key, 10, extra='fill="#fff"'))
        x += w
    out.append("</svg>")
    return "\n".join(out)
