"""llm-planner: find the best way to serve an LLM on a cluster.

    from planner import estimate, plan, simulate, goodput
"""

from costmodel.estimate import Estimate
from costmodel.layout import Layout
from costmodel.workload import SLO, Workload
from hardware.errors import PlannerInputError, UnknownNameError
from planner.api import InfeasibleError, estimate, goodput, plan, simulate
from planner.result import Plan, PlanResult

__all__ = ["SLO", "Estimate", "InfeasibleError", "Layout", "Plan", "PlanResult", "PlannerInputError",
           "UnknownNameError", "Workload", "estimate", "goodput", "plan", "simulate"]
