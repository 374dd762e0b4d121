"""Accelerators, links and clusters: specs, the built-in catalog and topology queries."""

from hardware.catalog import accelerator, accelerators, cluster, clusters
from hardware.errors import PlannerInputError, UnknownNameError
from hardware.specs import Accelerator, Cluster, Link, NodeGroup

__all__ = ["Accelerator", "Cluster", "Link", "NodeGroup", "PlannerInputError",
           "UnknownNameError", "accelerator", "accelerators", "cluster", "clusters"]
