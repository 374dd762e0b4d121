"""Real measured runs of plans: the torch runner (this machine's devices), the endpoint runner
(deployed OpenAI-compatible servers), and the predicted-vs-measured report (`planner verify`).

Modules that need torch (the `[verify]` extra) import it themselves; importing this package does not.
"""
