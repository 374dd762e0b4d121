"""Plan spaces and search strategies behind one interface."""

from searches import cpsat as _cpsat  # noqa: F401  (registers the allocators)
from searches import exhaustive as _exhaustive  # noqa: F401  (registers the strategy)
from searches import heuristic as _heuristic  # noqa: F401
from searches import lp as _lp  # noqa: F401
from searches.allocate import ALLOCATORS, Solved, allocate
from searches.base import STRATEGIES, Budget, Evaluated, rank, search
from searches.space import Space

__all__ = ["ALLOCATORS", "STRATEGIES", "Budget", "Evaluated", "Solved", "Space", "allocate", "rank", "search"]
