"""Fast per-iteration time: a table of `Instance.step_s` that one simulated iteration reads in ~1 us.

Calling `step_s` per iteration costs ~0.2 ms, too slow for tens of thousands of iterations. The
table is built with a few vectorised `step_s` calls and rests on how an iteration's time depends on
its batch (what the roofline ops in `costmodel.ops` do; `build` checks it numerically):

- decode attention adds to the rest and depends only on the decode batch `B` and the mean context
  `C / B`: so the time is the time at a reference context plus `B` times a function of (`B`,
  mean context), tabulated per integer `B` over a grid of contexts (sliding windows, efficiency
  ramps in bytes and extent make it non-linear);
- prefill attention likewise: the reference time plus `P` prompt tokens times a function of (`P`,
  mean span `A / P`), the keys each prompt token attends to, tabulated on a grid of both;
- the number of prompt chunks `S` (rows of the LM head, per-sequence overhead) is close to linear;
- in `B` and the tokens `T = B + P` it is not (GEMM efficiency with rows, roofline knees,
  collectives, the CUDA-graph limit): every integer `B` gets a row of nodes over `T` (every
  integer to 128, then 3% apart, plus the CUDA-graph edge), and an iteration interpolates linearly
  in `T` between two nodes of its row. Decode-only iterations (`P = 0`) read their own exact row.

`build` checks the table against `step_s` on random batches and records the largest relative
error; above `TOLERANCE` the simulator calls `step_s` for every iteration instead.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from costmodel.instance import Instance
from costmodel.ops import Batch

TOLERANCE = 0.01  # largest relative error accepted before falling back to exact step_s
CTX_REF = 1024.0  # reference mean decode context of the nodes
SPAN_REF = 1024.0  # reference mean prefill span of the nodes
P_RATIO = 1.15  # prompt-token grid spacing of the span function
LEN_RATIO = 1.05  # context and span grid spacing above 64
DENSE_T = 128  # every integer token count up to here is a node
RATIO = 1.03  # node spacing above DENSE_T
CHUNK = 50_000  # nodes per vectorised step_s call (bounds temporary memory)
CHECKS = 2000


def _nodes(t_max: float, extra: tuple[int, ...]) -> np.ndarray:
    nodes = set(range(1, min(DENSE_T, int(t_max)) + 1))
    x = float(DENSE_T)
    while x < t_max:
        x = max(x * RATIO, x + 1)
        nodes.add(round(x))
    nodes.update(e for e in extra if 1 <= e <= t_max)
    nodes.add(int(np.ceil(t_max)))
    return np.array(sorted(nodes), dtype=float)


@dataclass(frozen=True)
class StepTable:
    """Iteration time of one micro-batch pass for (B, C, P, A, S); see the module docstring."""

    inst: Instance
    b_max: int
    t_max: float
    t_grid: list[float]
    dec_base: list[float]  # decode-only time per B at mean context CTX_REF
    base: list[float]  # (b_max + 1) x len(t_grid), row-major; at CTX_REF, SPAN_REF and S = 0
    slope_s: list[float]
    len_grid: list[float]
    ctx_extra: list[list[float]]  # per B, per mean context: seconds per decoding sequence, less at CTX_REF
    p_grid: list[float]
    span_extra: list[float]  # p_grid x len_grid, row-major: seconds per prompt token, less at SPAN_REF
    max_rel_err: float

    @property
    def exact(self) -> bool:
        """True when the table failed its check and every iteration calls step_s."""
        return self.max_rel_err > TOLERANCE

    def step_s(self, b: int, c: float, p: float, a: float, s: float) -> float:
        if self.exact or b > self.b_max or b + p > self.t_max:
            return self.pass_s(b, c, p, a, s)
        dec = b * self._along(self.ctx_extra[b], c / b) if b else 0.0
        if p == 0:
            return self.dec_base[b] + dec
        t = b + p
        g = self.t_grid
        j = bisect_right(g, t) - 1
        lo = g[j] if g[j] >= b + 1 else b + 1.0
        n = len(g)
        i = b * n + j
        v = self.base[i] + self.slope_s[i] * s
        if t != lo and j + 1 < n:
            i += 1
            v += (self.base[i] + self.slope_s[i] * s - v) * (t - lo) / (g[j + 1] - lo)
        return v + dec + p * self._span(p, a / p)

    def _along(self, e: list[float], x: float, offset: int = 0) -> float:
        """Piecewise-linear in x over `len_grid` (values at e[offset:]), extrapolated past its end."""
        g = self.len_grid
        k = bisect_right(g, x) - 1
        if k < 0:
            k = 0
        elif k + 1 >= len(g):
            k = len(g) - 2
        lo = e[offset + k]
        return lo + (e[offset + k + 1] - lo) * (x - g[k]) / (g[k + 1] - g[k])

    def _span(self, p: float, span: float) -> float:
        """Bilinear in (prompt tokens, mean span)."""
        pg = self.p_grid
        j = bisect_right(pg, p) - 1
        if j + 1 >= len(pg):
            j = len(pg) - 2
        n = len(self.len_grid)
        lo = self._along(self.span_extra, span, j * n)
        hi = self._along(self.span_extra, span, (j + 1) * n)
        return lo + (hi - lo) * (p - pg[j]) / (pg[j + 1] - pg[j])

    def decode_run_s(self, b: int, c0: float, k: int) -> np.ndarray:
        """Times of `k` decode-only iterations of `b` sequences, the first at total context `c0`
        (each iteration adds `b` tokens of context)."""
        c = c0 + b * np.arange(k, dtype=float)
        if self.exact or b > self.b_max:
            return np.asarray(self.pass_s(np.full(k, float(b)), c, np.zeros(k), np.zeros(k), np.zeros(k)))
        return self.dec_base[b] + b * np.interp(c / b, self.len_grid, self.ctx_extra[b])

    def pass_s(self, b: float | np.ndarray, c: float | np.ndarray, p: float | np.ndarray,
               a: float | np.ndarray, s: float | np.ndarray) -> float | np.ndarray:
        """Exact: `step_s` of the batch (see `pass_batch`)."""
        return exact_pass_s(self.inst, b, c, p, a, s)


def pass_batch(inst: Instance, b: float | np.ndarray, c: float | np.ndarray, p: float | np.ndarray,
               a: float | np.ndarray, s: float | np.ndarray) -> Batch:
    """The `Batch` whose `step_s` is one pass of this micro-batch through all stages.

    `step_s` splits its batch into `pp` micro-batches; one virtual engine's micro-batch is one of
    them, so it is `step_s` of `pp` times the micro-batch."""
    pp = inst.layout.pp
    bb = np.maximum(b, 1e-12)
    pb = np.maximum(p, 1e-12)
    return Batch(decode_seqs=pp * b, decode_ctx=np.where(b > 0, c / bb, 0.0), prefill_tokens=pp * p,
                 prefill_span=np.where(p > 0, a / pb, 0.0), prefill_seqs=pp * s)


def exact_pass_s(inst: Instance, b: float | np.ndarray, c: float | np.ndarray, p: float | np.ndarray,
                 a: float | np.ndarray, s: float | np.ndarray) -> float | np.ndarray:
    out = inst.step_s(pass_batch(inst, b, c, p, a, s))
    return float(out) if np.ndim(out) == 0 else out


def _eval(inst: Instance, b: np.ndarray, c: np.ndarray, p: np.ndarray, a: np.ndarray, s: np.ndarray) -> np.ndarray:
    out = np.empty(len(b))
    for i in range(0, len(b), CHUNK):
        k = slice(i, i + CHUNK)
        out[k] = np.broadcast_to(exact_pass_s(inst, b[k], c[k], p[k], a[k], s[k]), out[k].shape)
    return out


def _geometric(limit: float, ratio: float) -> np.ndarray:
    nodes = {1.0}
    x = 1.0
    while x < limit:
        x = max(x * ratio, x + 1)
        nodes.add(float(round(x)))
    return np.array(sorted(nodes))


def _lengths(limit: float) -> np.ndarray:
    nodes = set(range(1, 65))
    x = 64.0
    while x < limit:
        x *= LEN_RATIO
        nodes.add(round(x))
    return np.array(sorted(nodes), dtype=float)


def build(inst: Instance, b_max: int, t_max: float, len_max: float = 131072.0, seed: int = 0) -> StepTable:
    """The table for decode batches up to `b_max`, iterations of up to `t_max` tokens and contexts
    and spans up to `len_max` (extrapolated beyond), checked against `step_s`."""
    b_max = max(int(b_max), 1)
    t_max = float(max(t_max, b_max + 1))
    eng = inst.engine
    grid = _nodes(t_max, (eng.cuda_graph_max_batch, eng.cuda_graph_max_batch + 1))
    n = len(grid)
    bd = np.arange(b_max + 1, dtype=float)
    z = np.zeros_like(bd)
    dec_base = _eval(inst, bd, bd * CTX_REF, z, z, z)
    # mixed nodes: row B, token count max(T_j, B + 1), so prompt tokens P >= 1
    bb = np.repeat(bd, n)
    tt = np.maximum(np.tile(grid, b_max + 1), bb + 1)
    pp_ = tt - bb
    c1, a1 = bb * CTX_REF, pp_ * SPAN_REF
    one = np.ones_like(bb)
    s2 = np.minimum(2.0, pp_)
    ref = _eval(inst, bb, c1, pp_, a1, one)
    ks = np.where(s2 > 1, _eval(inst, bb, c1, pp_, a1, s2) - ref, 0.0)
    lengths = _lengths(max(len_max, t_max))
    nl = len(lengths)
    # decode attention per B (rows) and mean context (columns), relative to CTX_REF
    rb = np.repeat(bd[1:], nl)
    rl = np.tile(lengths, b_max)
    zr = np.zeros_like(rb)
    at_ctx = _eval(inst, rb, rb * rl, zr, zr, zr).reshape(b_max, nl)
    ctx_extra = np.vstack([np.zeros(nl), (at_ctx - dec_base[1:, None]) / bd[1:, None]])
    # prefill attention per prompt tokens (rows) and mean span (columns), relative to SPAN_REF
    pg = _geometric(t_max, P_RATIO)
    rp = np.repeat(pg, nl)
    rs = np.tile(lengths, len(pg))
    zp = np.zeros_like(rp)
    at_span = _eval(inst, zp, zp, rp, rp * rs, zp + 1).reshape(len(pg), nl)
    at_ref = _eval(inst, np.zeros_like(pg), np.zeros_like(pg), pg, pg * SPAN_REF, np.ones_like(pg))
    span_extra = (at_span - at_ref[:, None]) / pg[:, None]
    table = StepTable(inst, b_max, t_max, grid.tolist(), dec_base.tolist(), (ref - ks).tolist(), ks.tolist(),
                      lengths.tolist(), ctx_extra.tolist(), pg.tolist(), span_extra.ravel().tolist(), 0.0)
    err = check(table, seed)
    return StepTable(**{**table.__dict__, "max_rel_err": err})


def check(table: StepTable, seed: int = 0, samples: int = CHECKS) -> float:
    """Largest relative error of the table against exact `step_s` on random batches in its domain."""
    rng = np.random.default_rng(seed)
    b = rng.integers(0, table.b_max + 1, samples)
    room = np.maximum(table.t_max - b, 0)
    p = np.where(rng.random(samples) < 0.3, 0, np.floor(np.exp(rng.uniform(0, np.log(np.maximum(room, 1)),
                                                                            samples))))
    p = np.minimum(p, room)
    ctx = rng.uniform(1, 16384, samples)
    c = b * ctx
    span_mean = rng.uniform(1, 16384, samples)
    a = np.where(p > 0, p * np.maximum(span_mean, p / 2), 0.0)
    s = np.where(p > 0, np.minimum(p, rng.integers(1, 9, samples)), 0)
    keep = (b + p) > 0
    b, c, p, a, s = b[keep], c[keep], p[keep], a[keep], s[keep]
    exact = np.asarray(exact_pass_s(table.inst, b.astype(float), c, p, a, s.astype(float)))
    fast = np.array([table.step_s(int(bi), ci, pi, ai, si) for bi, ci, pi, ai, si in
                     zip(b.tolist(), c.tolist(), p.tolist(), a.tolist(), s.tolist(), strict=True)])
    return float(np.max(np.abs(fast - exact) / exact))
