"""Collectives on a link tier: alpha-beta costs for ring and tree algorithms.

`size_bytes` is the per-device buffer (the tensor each rank holds); `link.gbps` is one device's
per-direction bandwidth on the tier the group spans; each step pays the link latency, and each
call a fixed latency, both from the calibration fit for that kind of collective. NCCL picks the
faster of ring and tree, so do we.
"""

from __future__ import annotations

import numpy as np

from costmodel.calibration.profile import CommFit
from hardware.specs import Link

Num = float | np.ndarray


def _beta(link: Link, fit: CommFit) -> float:
    return 1.0 / (link.gbps * 1e9 * fit.eff)


def _alpha(link: Link, fit: CommFit) -> float:
    return (link.latency_us if fit.step_us is None else fit.step_us) * 1e-6


def all_reduce_s(size_bytes: Num, n: int, link: Link, fit: CommFit) -> Num:
    """Ring: 2(n-1) steps moving 2(n-1)/n of the buffer; tree: 2 log2(n) steps moving 2x it."""
    if n <= 1:
        return 0.0 * size_bytes
    a, b = _alpha(link, fit), _beta(link, fit)
    ring = 2 * (n - 1) * a + 2 * (n - 1) / n * size_bytes * b
    tree = 2 * np.ceil(np.log2(n)) * a + 2 * size_bytes * b
    return np.minimum(ring, tree) + fit.alpha_us * 1e-6


def all_gather_s(size_bytes: Num, n: int, link: Link, fit: CommFit) -> Num:
    """Each rank ends with n x its `size_bytes` shard (reduce-scatter costs the same)."""
    if n <= 1:
        return 0.0 * size_bytes
    return (n - 1) * (_alpha(link, fit) + size_bytes * _beta(link, fit)) + fit.alpha_us * 1e-6


def all_to_all_s(size_bytes: Num, n: int, link: Link, fit: CommFit) -> Num:
    """Each rank sends (n-1)/n of its `size_bytes` buffer to the others (pairwise exchange)."""
    if n <= 1:
        return 0.0 * size_bytes
    return (n - 1) * _alpha(link, fit) + (n - 1) / n * size_bytes * _beta(link, fit) + fit.alpha_us * 1e-6


def send_recv_s(size_bytes: Num, link: Link, fit: CommFit) -> Num:
    return _alpha(link, fit) + size_bytes * _beta(link, fit) + fit.alpha_us * 1e-6
