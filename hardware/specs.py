"""Hardware specs: accelerators, links, node groups and clusters.

Every spec is a pydantic model that rejects unknown keys (a typo in a user's YAML is an error,
not a silently ignored field) and round-trips through YAML/JSON. Built-in catalog entries carry a
`sources` map from field name to citation; `missing_sources()` lists numeric fields without one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from hardware.loading import Checked

Dtype = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4", "fp4"]
Tier = Literal["scaleup", "scaleout"]


class Spec(Checked):
    """Base for every spec: strict keys, immutable, JSON-Schema exportable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, str] = Field(
        default_factory=dict, description="Field name -> citation for the number in that field."
    )

    def missing_sources(self) -> list[str]:
        """Numeric fields given explicitly (recursively, dotted) that have no citation."""
        missing: list[str] = []
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if isinstance(value, Spec):
                missing += [f"{name}.{m}" for m in value.missing_sources()]
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, Spec):
                        missing += [f"{name}[{i}].{m}" for m in item.missing_sources()]
            elif (isinstance(value, (int, float, dict)) and not isinstance(value, bool)
                  and name != "sources" and value != {} and name not in self.sources):
                missing.append(name)
        return missing


class Accelerator(Spec):
    """One device: peak dense throughput per dtype, HBM, power, scale-up link."""

    name: str = Field(description="Catalog key, e.g. 'h100-sxm'.")
    vendor: str = Field(description="Maker, e.g. 'nvidia', 'huawei', 'amd'.")
    peak_tflops: dict[Dtype, float] = Field(
        description="Dense (no sparsity) peak TFLOP/s (TOP/s for integer types) per dtype."
    )
    hbm_gib: float = Field(gt=0, description="Device memory in GiB usable by the framework.")
    hbm_gbps: float = Field(gt=0, description="Peak device-memory bandwidth in GB/s.")
    tdp_w: float = Field(gt=0, description="Board power limit (TDP) in watts.")
    idle_w: float = Field(gt=0, description="Loaded-idle board power in watts.")
    scaleup_gbps: float = Field(
        gt=0, description="Scale-up (NVLink/HCCS/UB/Infinity Fabric) bandwidth per direction, GB/s."
    )
    dies: int = Field(default=1, ge=1, description="Compute dies per package; engines count dies.")

    @field_validator("peak_tflops")
    @classmethod
    def _positive_peaks(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, x in v.items() if x <= 0]
        if bad:
            raise ValueError(f"peak_tflops[{bad[0]}] must be positive")
        if "bf16" not in v:
            raise ValueError("peak_tflops needs at least a 'bf16' entry")
        return v

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gib * 2**30

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s for `dtype`, falling back to bf16 when the device has no faster path."""
        return self.peak_tflops.get(dtype, self.peak_tflops["bf16"]) * 1e12  # type: ignore[call-overload]


class Link(Spec):
    """One interconnect tier as seen by one device."""

    name: str = Field(description="Technology, e.g. 'nvlink4', 'ib-ndr400', 'hccs', 'ub'.")
    gbps: float = Field(gt=0, description="Bandwidth per device per direction, GB/s.")
    latency_us: float = Field(ge=0, description="One-hop latency (alpha) in microseconds.")


class NodeGroup(Spec):
    """`num_nodes` identical nodes; `nodes_per_domain` of them share one scale-up domain."""

    accelerator: str | Accelerator = Field(description="Catalog name or an inline accelerator.")
    num_nodes: int = Field(ge=1, description="How many nodes of this kind.")
    devices_per_node: int = Field(ge=1, description="Accelerators per node (per host).")
    nodes_per_domain: int = Field(
        default=1, ge=1, description="Nodes in one scale-up domain (NVL72: 18 trays of 4 GPUs)."
    )
    scaleup: Link = Field(description="The link inside a scale-up domain.")
    scaleout: Link = Field(description="The network between scale-up domains.")

    @property
    def device(self) -> Accelerator:
        """The resolved accelerator; catalog loading replaces names with specs."""
        if isinstance(self.accelerator, str):
            raise TypeError(f"accelerator {self.accelerator!r} is unresolved; load via the catalog")
        return self.accelerator

    @property
    def domain_size(self) -> int:
        return self.devices_per_node * self.nodes_per_domain

    @property
    def num_devices(self) -> int:
        return self.devices_per_node * self.num_nodes

    @property
    def num_domains(self) -> int:
        return -(-self.num_nodes // self.nodes_per_domain)

    @model_validator(mode="after")
    def _nodes_fill_domains(self) -> NodeGroup:
        if self.num_nodes > self.nodes_per_domain and self.num_nodes % self.nodes_per_domain:
            raise ValueError(
                f"num_nodes ({self.num_nodes}) must be a multiple of nodes_per_domain "
                f"({self.nodes_per_domain}) once it spans more than one domain"
            )
        return self


class Cluster(Spec):
    """A cluster: one or more node groups (several for a mixed fleet)."""

    name: str = Field(description="Catalog key, e.g. 'dgx-h100'.")
    description: str = Field(default="", description="One line for `planner clusters`.")
    groups: list[NodeGroup] = Field(min_length=1, description="Node groups, one per device kind.")

    @property
    def num_devices(self) -> int:
        return sum(g.num_devices for g in self.groups)

    def scaled(self, factor: int) -> Cluster:
        """The same cluster with every group's node count multiplied (the `xN` suffix)."""
        groups = [g.model_copy(update={"num_nodes": g.num_nodes * factor}) for g in self.groups]
        return self.model_copy(update={"name": f"{self.name}x{factor}", "groups": groups})
