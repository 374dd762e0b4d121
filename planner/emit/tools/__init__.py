"""Tools a person runs where an engine is installed (not imported by the planner itself)."""
