"""Cluster topology as a networkx graph, and which link tier a group of devices spans.

Devices hang off one switch per scale-up domain (edge tier `scaleup`); domain switches hang off
one spine (edge tier `scaleout`). A group's slowest tier is the worst edge on the paths between
its members, which for this two-level tree is `scaleout` exactly when it spans two domains.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from hardware.specs import Cluster, Link, NodeGroup

Device = tuple[int, int]  # (group index, device index within the group)


def graph(cluster: Cluster) -> nx.Graph:
    """Devices, domain switches and a spine, with `tier`, `gbps` and `latency_us` on edges."""
    g = nx.Graph(name=cluster.name)
    g.add_node("spine", kind="spine")
    for gi, grp in enumerate(cluster.groups):
        for dom in range(grp.num_domains):
            sw = f"g{gi}.domain{dom}"
            g.add_node(sw, kind="switch", group=gi)
            g.add_edge(sw, "spine", tier="scaleout", gbps=grp.scaleout.gbps,
                       latency_us=grp.scaleout.latency_us)
        for d in range(grp.num_devices):
            node = d // grp.devices_per_node
            dev = (gi, d)
            g.add_node(dev, kind="device", group=gi, node=node, accelerator=grp.device.name)
            g.add_edge(dev, f"g{gi}.domain{d // grp.domain_size}", tier="scaleup",
                       gbps=grp.scaleup.gbps, latency_us=grp.scaleup.latency_us)
    return g


def domain_of(group: NodeGroup, device: int) -> int:
    return device // group.domain_size


def spanned_tier(cluster: Cluster, devices: Iterable[Device]) -> Link:
    """The slowest link any two of `devices` talk over."""
    devs = list(devices)
    groups = {gi for gi, _ in devs}
    if len(groups) > 1:
        return min((cluster.groups[gi].scaleout for gi in groups), key=lambda link: link.gbps)
    grp = cluster.groups[devs[0][0]]
    domains = {domain_of(grp, d) for _, d in devs}
    return grp.scaleup if len(domains) == 1 else grp.scaleout


def contiguous_tier(group: NodeGroup, size: int) -> Link:
    """The tier a block of `size` consecutive devices spans when packed from a domain boundary."""
    return group.scaleup if size <= group.domain_size else group.scaleout


def tiers_table(cluster: Cluster) -> list[dict[str, object]]:
    """One row per (group, tier) for `planner clusters`."""
    rows: list[dict[str, object]] = []
    for grp in cluster.groups:
        for tier, link in (("scaleup", grp.scaleup), ("scaleout", grp.scaleout)):
            rows.append({"accelerator": grp.device.name, "tier": tier, "link": link.name,
                         "gbps": link.gbps, "latency_us": link.latency_us})
    return rows
