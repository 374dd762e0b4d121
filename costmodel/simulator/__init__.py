"""Iteration-level serving simulator: continuous batching, chunked prefill, KV blocks, preemption."""

from costmodel.simulator.config import SchedulerConfig
from costmodel.simulator.goodput import Goodput, find_goodput
from costmodel.simulator.result import Percentiles, SimResult
from costmodel.simulator.run import Setup, run, setup
from costmodel.simulator.steptable import StepTable

__all__ = ["Goodput", "Percentiles", "SchedulerConfig", "Setup", "SimResult", "StepTable", "find_goodput", "run",
           "setup"]
