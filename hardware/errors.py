"""Typed errors: bad input (one sentence naming the field and fix) and internal errors (NaN results)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


class PlannerInputError(ValueError):
    """A user input (name, file, field) is wrong; the message says which and how to fix it."""


class UnknownNameError(PlannerInputError, KeyError):
    """A catalog name that does not exist; the message suggests the closest one."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class InternalError(RuntimeError):
    """A computed figure came out NaN: a bug in the planner, never a feasible answer or the user's input."""


def check_finite(values: Mapping[str, Any], what: str) -> None:
    """Raise InternalError if any number in `values` (nested mappings included) is NaN; infinity is a
    legitimate answer (an unstable queue, an SLO nothing meets) and passes."""
    for key, v in values.items():
        if isinstance(v, Mapping):
            check_finite(v, f"{what}.{key}")
        elif isinstance(v, (float, np.floating)) and math.isnan(v):
            raise InternalError(f"{what}.{key} is NaN")
