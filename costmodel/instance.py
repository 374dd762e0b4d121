"""One serving instance (a model on a layout on a device kind) and its iteration time.

An iteration runs every layer once for the batch: per-op roofline times, the TP/EP collectives
on the tier the group spans, PP point-to-point sends, the LM head, and the engine's per-step
overhead. With `pp` stages the batch is split into `pp` micro-batches that keep every stage busy,
so one token of one sequence takes the full pipeline latency at batch/pp.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from costmodel import comm, moe, sp
from costmodel.calibration.profile import CommFit, Profile
from costmodel.energy import capped_op_time_s
from costmodel.engines import Engine
from costmodel.layout import Layout
from costmodel.models import ModelSpec
from costmodel.ops import (
    Batch,
    Num,
    Op,
    attention_ops,
    dense_mlp_ops,
    elementwise_op,
    lm_head_op,
    moe_ops,
    op_time_s,
)
from costmodel.precision import Precision
from hardware.errors import PlannerInputError
from hardware.specs import Accelerator, Link, NodeGroup
from hardware.topology import contiguous_tier


@dataclass(frozen=True)
class Instance:
    model: ModelSpec
    layout: Layout
    prec: Precision
    group: NodeGroup
    profile: Profile
    engine: Engine
    moe_skew: float | None = None  # busiest/mean expert load; None = the profile's measured skew (costmodel.moe)
    power_cap_w: float | None = None  # board power limit; None = the default limit (TDP) profiles were fit at
    redundant_experts: int = 0  # extra routed-expert copies per MoE layer balanced by EPLB (costs memory)
    micro_batches: int = 1  # >1: micro-batches alternate so communication hides behind compute
    sp_method: str = "auto"  # context parallelism with layout.sp > 1: ring, ulysses or the cheaper (costmodel.sp)

    def __post_init__(self) -> None:
        # the profile may carry end-to-end tuning for this engine: activate it once, here, so
        # every path that builds an Instance (estimate, plan, simulate) sees the same numbers
        tuning = self.profile.engines.get(self.engine.name)
        if tuning is not None:
            object.__setattr__(self, "engine", self.engine.model_copy(update=tuning.engine_updates()))
            object.__setattr__(self, "profile", self.profile.for_engine(self.engine.name))
        if self.moe_skew is None:
            object.__setattr__(self, "moe_skew", moe.default_skew(self.profile))
        if self.micro_batches < 1:
            raise PlannerInputError(f"micro_batches={self.micro_batches} must be 1 (no overlap) or more")
        if self.redundant_experts < 0:
            raise PlannerInputError(f"redundant_experts={self.redundant_experts} must be 0 or more extra expert copies")

    @property
    def acc(self) -> Accelerator:
        return self.group.device

    def _op_s(self, op: Op) -> Num:
        if self.power_cap_w is None:
            return op_time_s(op, self.acc, self.prec, self.profile)
        return capped_op_time_s(op, self.acc, self.prec, self.profile, self.power_cap_w)

    @cached_property
    def tp_link(self) -> Link:
        return contiguous_tier(self.group, self.layout.tp)

    @cached_property
    def ep_link(self) -> Link:
        return contiguous_tier(self.group, self.layout.tp * self.layout.attention_dp)

    @cached_property
    def routed_skew(self) -> float:
        """Busiest EP rank's load over the mean, after EPLB when redundant experts are given."""
        return moe.effective_skew(self.model, self.layout, float(self.moe_skew or 1.0), self.redundant_experts)

    @cached_property
    def pp_link(self) -> Link:
        return contiguous_tier(self.group, self.layout.instance_devices)

    # ---- per-layer pieces ----------------------------------------------------------------
    def _ops(self, b: Batch, moe_layer: bool) -> list[Op]:
        ops = attention_ops(self.model, self.layout, self.prec, b)
        if moe_layer:
            ops += moe_ops(self.model, self.layout, self.prec, b, self.routed_skew, self.redundant_experts)
        else:
            ops += dense_mlp_ops(self.model, self.layout, self.prec, b)
        ops.append(elementwise_op(self.model, self.layout, b))
        return ops

    def _fit(self, kind: str, link: Link) -> CommFit:
        """The profile's fit for `kind`; across scale-up domains, the scale-out efficiency."""
        fit = self.profile.comm_fit(kind)
        if link is self.group.scaleup:
            return fit
        return CommFit(eff=self.profile.scaleout_eff, alpha_us=fit.alpha_us)

    def _comm(self, b: Batch, moe_layer: bool) -> dict[str, Num]:
        lay = self.layout
        act = self.prec.act_bytes * self.model.hidden_size
        tokens_dev = b.tokens / lay.attention_dp
        out: dict[str, Num] = {}
        if lay.tp > 1:
            out["tp_allreduce_attn"] = comm.all_reduce_s(tokens_dev * act, lay.tp, self.tp_link,
                                                           self._fit("all_reduce", self.tp_link))
        if not moe_layer:
            if lay.tp > 1:
                out["tp_allreduce_mlp"] = comm.all_reduce_s(tokens_dev * act, lay.tp, self.tp_link,
                                                           self._fit("all_reduce", self.tp_link))
            return out
        group = lay.tp * lay.attention_dp
        if lay.ep > 1:
            # dispatch + combine: each token's hidden state to (and back from) its top-k experts
            out.update(moe.dispatch_combine_s(self.model, lay, self.prec, b, self.ep_link,
                                              self._fit("all_to_all", self.ep_link), self.routed_skew))
            if lay.moe_tp > 1:
                out["moe_tp_allreduce"] = comm.all_reduce_s(tokens_dev * act, lay.moe_tp, self.ep_link,
                                                                self._fit("all_reduce", self.ep_link))
        elif group > 1:
            # pure MoE-TP over the whole group: gather every rank's tokens, reduce-scatter back
            fit = self._fit("all_gather", self.ep_link)
            out["moe_allgather"] = comm.all_gather_s(tokens_dev * act, group, self.ep_link, fit)
            out["moe_reducescatter"] = comm.all_gather_s(tokens_dev * act, group, self.ep_link, fit)
        return out

    def _overhead_s(self, b: Batch, kernels: int) -> Num:
        eng = self.engine
        # vLLM V1 and SGLang capture graphs by token count (mixed batches included);
        # TensorRT-LLM replays graphs for generation-only batches. Attention-DP ranks each run their
        # own scheduler and graphs over their own share of the batch, in parallel.
        adp = self.layout.attention_dp
        in_graph = np.asarray(b.tokens) / adp <= eng.cuda_graph_max_batch
        if not eng.graphs_cover_prefill:
            in_graph = in_graph & (np.asarray(b.prefill_tokens) == 0)
        per_kernel = np.where(in_graph, 0.0, eng.eager_kernel_overhead_us * 1e-6)
        running = (b.decode_seqs + b.prefill_seqs) / adp
        return eng.iteration_overhead_ms * 1e-3 + running * eng.per_seq_overhead_us * 1e-6 + per_kernel * kernels

    # ---- public --------------------------------------------------------------------------
    def breakdown(self, b: Batch) -> dict[str, Num]:
        """Seconds per component for one full forward pass of batch `b` (all stages)."""
        prec = self.prec
        m = self.model
        out: dict[str, Num] = {}
        kernels = 0
        mb = self.micro_batches
        part = moe.micro_batch(b, mb) if mb > 1 else b
        for moe_layer, count in ((False, m.dense_layers), (True, m.moe_layers)):
            if not count:
                continue
            ops = self._ops(part, moe_layer)
            kernels += count * len(ops) * mb
            times: dict[str, Num] = {}
            for op in ops:
                times[op.name] = times.get(op.name, 0.0) + mb * self._op_s(op)
            per_part = self._comm(part, moe_layer)
            per_part.update(sp.layer_comm_s(self, part, times.get("attn_prefill", 0.0) / mb))
            comms = {name: mb * t for name, t in per_part.items()}
            if mb > 1:
                comms = moe.exposed_comm(sum(times.values()), comms, mb)
            for name, t in (*times.items(), *comms.items()):
                out[name] = out.get(name, 0.0) + count * t
        out["lm_head"] = self._op_s(lm_head_op(m, self.layout, prec, b))
        if self.layout.pp > 1:
            sends = comm.send_recv_s(b.tokens / self.layout.attention_dp * prec.act_bytes * m.hidden_size,
                                     self.pp_link, self._fit("send_recv", self.pp_link))
            out["pp_send"] = (self.layout.pp - 1) * sends
        out["engine_overhead"] = self._overhead_s(b, kernels)
        return out

    def step_s(self, b: Batch) -> Num:
        """Wall time of one iteration for batch `b` (with pp>1: one micro-batch of b/pp per stage,
        the pipeline full, so a sequence advances once per full-model pass at b/pp)."""
        pp = self.layout.pp
        if pp > 1:
            b = Batch(b.decode_seqs / pp, b.decode_ctx, b.prefill_tokens / pp, b.prefill_span, b.prefill_seqs / pp)
        return sum(self.breakdown(b).values())

    def prefill_s(self, isl: int, seqs: float = 1.0) -> Num:
        """Latency of prefilling `seqs` whole prompts of `isl` tokens together, through every stage."""
        b = Batch(prefill_tokens=seqs * isl, prefill_span=isl / 2, prefill_seqs=seqs)
        return sum(self.breakdown(b).values())

    def decode_s(self, seqs: Num, ctx: Num) -> Num:
        return self.step_s(Batch(decode_seqs=seqs, decode_ctx=ctx))
