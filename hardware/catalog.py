"""The built-in hardware catalog (data files) and lookups by name, `xN` suffix or YAML path."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from hardware.loading import build, read_mapping, unknown
from hardware.specs import Accelerator, Cluster, NodeGroup

DATA = Path(__file__).parent / "data"
_SUFFIX = re.compile(r"^(?P<base>.+?)x(?P<n>[1-9][0-9]*)$")


def _load_folder(folder: str, kind: type[Accelerator] | type[Cluster]) -> dict[str, Any]:
    specs = (build(kind, read_mapping(f), f"catalog file {f.name}") for f in sorted((DATA / folder).glob("*.yaml")))
    return {s.name: s for s in specs}


@cache
def accelerators() -> dict[str, Accelerator]:
    """Every catalog accelerator by name."""
    return _load_folder("accelerators", Accelerator)


@cache
def _raw_clusters() -> dict[str, Cluster]:
    return _load_folder("clusters", Cluster)


def accelerator(name: str) -> Accelerator:
    """A catalog accelerator by (case-insensitive) name."""
    key = name.strip().lower()
    found = accelerators().get(key)
    if found is None:
        raise unknown("accelerator", name, list(accelerators()), "see `planner clusters`")
    return found


def resolve(cluster: Cluster) -> Cluster:
    """Replace accelerator names in node groups by their catalog specs."""
    groups = [
        g if isinstance(g.accelerator, Accelerator)
        else g.model_copy(update={"accelerator": accelerator(g.accelerator)})
        for g in cluster.groups
    ]
    return cluster.model_copy(update={"groups": groups})


def clusters() -> dict[str, Cluster]:
    """Every catalog cluster by name, accelerators resolved."""
    return {k: resolve(c) for k, c in _raw_clusters().items()}


def cluster(ref: str | Path | Cluster) -> Cluster:
    """A cluster from a catalog name (with optional `xN`), a YAML/JSON path, or a spec."""
    if isinstance(ref, Cluster):
        return resolve(ref)
    text = str(ref).strip()
    if text.lower() == "local":  # this machine: measured by `planner calibrate`, else estimated
        from hardware.local import local_cluster

        return resolve(local_cluster())
    if text.endswith((".yaml", ".yml", ".json")) or Path(text).is_file():
        return resolve(build(Cluster, read_mapping(text, "cluster file"), f"cluster file {text}"))
    key = text.lower()
    raw = _raw_clusters()
    if key in raw:
        return resolve(raw[key])
    m = _SUFFIX.match(key)
    if m and m["base"] in raw:
        return resolve(raw[m["base"]].scaled(int(m["n"])))
    raise unknown("cluster", text, list(raw), "or give a cluster YAML path; see `planner clusters`")


def single_group(c: Cluster) -> NodeGroup:
    """The only node group of a homogeneous cluster."""
    if len(c.groups) != 1:
        raise ValueError(f"cluster {c.name} is mixed; pick one of its groups")
    return c.groups[0]
