"""Plan spaces and search strategies behind one interface."""

from searches import exhaustive as _exhaustive  # noqa: F401  (registers the strategy)
from searches.base import STRATEGIES, Budget, Evaluated, rank, search
from searches.space import Space

__all__ = ["STRATEGIES", "Budget", "Evaluated", "Space", "rank", "search"]
