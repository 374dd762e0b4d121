"""`planner calibrate`: measure this machine's kernels and collectives and fit its profile, or fit
engine constants to end-to-end runs (`--from-runs`). The measuring side needs torch (the `[verify]`
extra) and imports it itself.
"""
