"""Where every instance of a deployment runs: its node, its node-local devices and its ports.

The plan's `placement` lists, per instance, the devices (cluster-group indices) the search gave it;
plans without one (the exhaustive search's aggregated plans) are packed as `searches.placement.place`
packs small instances: in order, an instance that fits a node never split over two. Ports come from one
table per node shared by both pools, so two instances on a node never share a device or a port.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.emit.deployment import Deployment

# First port of each kind on a node; each instance on the node takes the next one of each kind it uses.
PORT_BASES = {
    "http": 8000,  # the OpenAI-compatible server
    # vLLM NixlConnector handshake listener: VLLM_NIXL_SIDE_CHANNEL_PORT + data-parallel index
    # (vllm/distributed/kv_transfer/kv_connector/v1/nixl/base_scheduler.py; default 5600 in vllm/envs.py)
    "nixl": 5600,
    "bootstrap": 8998,  # SGLang prefill bootstrap server (ServerArgs.disaggregation_bootstrap_port default)
}


@dataclass(frozen=True)
class Slot:
    """One single-node instance: where it runs and what it listens on."""

    role: str
    index: int  # within its pool (REPLICA in the launch script)
    node: int
    devices: tuple[int, ...]  # node-local, engine units
    ports: dict[str, int]


def _packed(d: Deployment) -> list[tuple[str, tuple[int, ...]]]:
    out, nxt, dpn = [], 0, d.devices_per_node
    for p in d.pools:
        for _ in range(p.replicas):
            if nxt % dpn and (p.instance_devices > dpn or nxt % dpn + p.instance_devices > dpn):
                nxt += dpn - nxt % dpn
            out.append((p.role, tuple(range(nxt, nxt + p.instance_devices))))
            nxt += p.instance_devices
    return out


def slots(d: Deployment) -> dict[str, list[Slot]]:
    """Per pool role, its instances in order (only single-node ones; spanning instances run by node rank).
    An instance's NIXL block is as wide as its data-parallel ranks, since each listens on its own port."""
    dpn = d.devices_per_node
    table: dict[int, dict[str, int]] = {}
    out: dict[str, list[Slot]] = {p.role: [] for p in d.pools}
    width = {p.role: p.attention_dp for p in d.pools}
    for role, devs in d.placement or _packed(d):
        nodes = {x // dpn for x in devs}
        if len(nodes) > 1:
            continue
        node = nodes.pop()
        ports = table.setdefault(node, dict(PORT_BASES))
        mine = {k: ports[k] for k in PORT_BASES}
        ports["http"] += 1
        ports["bootstrap"] += 1
        ports["nixl"] += width[role]
        out[role].append(Slot(role, len(out[role]), node, tuple(x % dpn for x in devs), mine))
    return out


def readme_table(d: Deployment, kinds: tuple[str, ...]) -> str:
    """Markdown: every single-node instance, its node, devices and ports."""
    rows = [f"| instance | node | {d.visible_devices_env} | " + " | ".join(f"{k} port" for k in kinds) + " |",
            "|---|---|---|" + "---|" * len(kinds)]
    for role_slots in slots(d).values():
        for s in role_slots:
            rows.append(f"| {s.role} {s.index} | {s.node} | {','.join(map(str, s.devices))} | "
                        + " | ".join(str(s.ports[k]) for k in kinds) + " |")
    return "\n".join(rows)
