"""One serving instance (a model on a layout on a device kind) and its iteration time.

An iteration runs every layer once for the batch: per-op roofline times, the TP/EP collectives
on the tier the group spans, PP point-to-point sends, the LM head, and the engine's per-step
overhead. With `pp` stages the batch is split into `pp` micro-batches that keep every stage busy
(vLLM's virtual engines), so a sequence advances once per round of all `pp` micro-batches. That
round takes the longer of one micro-batch's pass through every stage (its latency, sends
included) and `pp` times the slowest stage at batch/pp (each stage serves all `pp` micro-batches
per round). Stages are unequal: layers split as vLLM splits them (`stage_layers`), the first stage
also pays the scheduler's per-step overhead, and the last also runs the LM head, which for a small
model with a large vocabulary makes it the slowest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property, reduce

import numpy as np

from costmodel import comm, moe, sp
from costmodel.calibration.profile import CommFit, Profile
from costmodel.energy import capped_op_time_s
from costmodel.engines import Engine
from costmodel.layout import Layout
from costmodel.models import LayerSpec, ModelSpec
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
from costmodel.speculative import tokens_per_step
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

    @property
    def tokens_per_step(self) -> float:
        """Tokens a decoding sequence emits per step (more than 1 with speculative decoding / MTP)."""
        return tokens_per_step(self.engine.speculation)

    def _verified(self, b: Batch) -> Batch:
        """`b` as a speculative engine runs it: every decoding sequence verifies its drafts too."""
        spec = self.engine.speculation
        return b if spec is None else replace(b, decode_queries=1.0 + spec.draft_tokens)

    def _draft_s(self, b: Batch) -> Num:
        """The drafter's share of a speculative step: per draft token, `draft_layers` layers of the kind of
        the model's last layer (an MTP module's, `ModelSpec.mtp_params`) and the shared LM head over one
        token per decoding sequence."""
        spec = self.engine.speculation
        if spec is None or not spec.draft_layers:
            return 0.0 * np.asarray(b.decode_seqs)
        one = Batch(decode_seqs=b.decode_seqs, decode_ctx=b.decode_ctx)
        layers = self._layers(one)
        layer, _ = layers[self.model.layer_list[-1]]
        per_token = spec.draft_layers * sum(layer.values()) + self._op_s(lm_head_op(self.model, self.layout,
                                                                                    self.prec, one))
        return np.where(np.asarray(b.decode_seqs) > 0, spec.draft_tokens * per_token, 0.0)

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
    def _ops(self, b: Batch, layer: LayerSpec) -> list[Op]:
        ops = attention_ops(self.model, self.layout, self.prec, b, layer)
        if layer.ffn == "moe":
            ops += moe_ops(self.model, self.layout, self.prec, b, self.routed_skew, self.redundant_experts)
        elif layer.ffn == "dense":
            ops += dense_mlp_ops(self.model, self.layout, self.prec, b)
        ops.append(elementwise_op(self.model, self.layout, b))
        return ops

    def _fit(self, kind: str, link: Link) -> CommFit:
        """The profile's fit for `kind`; across scale-up domains, the scale-out efficiency."""
        fit = self.profile.comm_fit(kind)
        if link is self.group.scaleup:
            return fit
        return CommFit(eff=self.profile.scaleout_eff, alpha_us=fit.alpha_us)

    def _comm(self, b: Batch, layer: LayerSpec) -> dict[str, Num]:
        lay = self.layout
        act = self.prec.act_bytes * self.model.hidden_size
        tokens_dev = b.tokens / lay.attention_dp
        out: dict[str, Num] = {}
        if lay.tp > 1 and layer.attention != "none":
            out["tp_allreduce_attn"] = comm.all_reduce_s(tokens_dev * act, lay.tp, self.tp_link,
                                                           self._fit("all_reduce", self.tp_link))
        if layer.ffn != "moe":
            if lay.tp > 1 and layer.ffn == "dense":
                out["tp_allreduce_mlp"] = comm.all_reduce_s(tokens_dev * act, lay.tp, self.tp_link,
                                                           self._fit("all_reduce", self.tp_link))
            return out
        group = lay.tp * lay.attention_dp
        if lay.ep > 1:
            # dispatch + combine: each token's hidden state to (and back from) its top-k experts
            out.update(moe.dispatch_combine_s(self.model, lay, self.prec, b, self.group,
                                              self.profile.comm_fit("all_to_all"), self.routed_skew))
            if lay.moe_tp > 1:
                out["moe_tp_allreduce"] = comm.all_reduce_s(tokens_dev * act, lay.moe_tp, self.ep_link,
                                                                self._fit("all_reduce", self.ep_link))
        elif lay.attention_dp == 1 and lay.tp > 1:
            # MoE-TP on tensor-parallel attention: every rank already holds every token, so the
            # expert slices' partial sums meet in one all-reduce, as a dense MLP's do
            out["moe_tp_allreduce"] = comm.all_reduce_s(tokens_dev * act, lay.tp, self.tp_link,
                                                        self._fit("all_reduce", self.tp_link))
        elif group > 1:
            # MoE-TP over attention-DP ranks: gather every rank's tokens, reduce-scatter back
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
        # a speculative verify step is captured per sequence count (SGLang's and vLLM's graphs for
        # target verification hold batch x (1 + drafts) tokens), so sequences, not tokens, decide
        in_graph = np.asarray(b.decode_seqs + b.prefill_tokens) / adp <= eng.cuda_graph_max_batch
        if not eng.graphs_cover_prefill:
            in_graph = in_graph & (np.asarray(b.prefill_tokens) == 0)
        per_kernel = np.where(in_graph, 0.0, eng.eager_kernel_overhead_us * 1e-6)
        running = (b.decode_seqs + b.prefill_seqs) / adp
        return eng.iteration_overhead_ms * 1e-3 + running * eng.per_seq_overhead_us * 1e-6 + per_kernel * kernels

    def _layers(self, b: Batch) -> dict[LayerSpec, tuple[dict[str, Num], int]]:
        """Per layer kind of the model (`ModelSpec.layer_kinds`): seconds per component of one layer
        for batch `b`, and the kernels one layer launches."""
        m = self.model
        mb = self.micro_batches
        part = b.split(mb) if mb > 1 else b  # what each pass of a two-batch-overlap schedule runs
        out: dict[LayerSpec, tuple[dict[str, Num], int]] = {}
        for kind, count in m.layer_kinds:
            ops = self._ops(part, kind)
            times: dict[str, Num] = {}
            for op in ops:
                times[op.name] = times.get(op.name, 0.0) + mb * self._op_s(op)
            per_part = self._comm(part, kind)
            per_part.update(sp.layer_comm_s(self, part, times.get("attn_prefill", 0.0) / mb))
            comms = {name: mb * t for name, t in per_part.items()}
            if mb > 1:
                comms = moe.exposed_comm(sum(times.values()), comms, mb, count)
            layer: dict[str, Num] = {}
            for name, t in (*times.items(), *comms.items()):
                layer[name] = layer.get(name, 0.0) + t
            out[kind] = (layer, len(ops) * mb)
        return out

    def _send_s(self, b: Batch) -> Num:
        """One stage-to-stage send of batch `b`'s activations."""
        m, prec = self.model, self.prec
        return comm.send_recv_s(b.tokens / self.layout.attention_dp * prec.act_bytes * m.hidden_size,
                                self.pp_link, self._fit("send_recv", self.pp_link))

    # ---- public --------------------------------------------------------------------------
    def breakdown(self, b: Batch) -> dict[str, Num]:
        """Seconds per component for one full forward pass of batch `b` (all stages), a speculative
        engine's drafts and their verification included."""
        m = self.model
        b = self._verified(b)
        layers = self._layers(b)
        counts = dict(m.layer_kinds)
        out: dict[str, Num] = {}
        kernels = 0
        for kind, (layer, launched) in layers.items():
            kernels += counts[kind] * launched
            for name, t in layer.items():
                out[name] = out.get(name, 0.0) + counts[kind] * t
        out["lm_head"] = self._op_s(lm_head_op(m, self.layout, self.prec, b))
        if self.layout.pp > 1:
            out["pp_send"] = (self.layout.pp - 1) * self._send_s(b)
        out["engine_overhead"] = self._overhead_s(b, kernels)
        if self.engine.speculation is not None:
            out["spec_draft"] = self._draft_s(b)
        return out

    def stages_s(self, b: Batch) -> list[Num]:
        """Busy seconds of each pipeline stage for one pass of batch `b`, sends left out (they cross
        the link between stages): its layers (`stage_layers`, each stage's own layer kinds), plus the
        scheduler's per-step overhead on the first stage and the LM head on the last.
        They sum to `breakdown(b)` less the sends; a speculative engine drafts on the last stage."""
        m = self.model
        b = self._verified(b)
        layers = self._layers(b)
        sched = self._overhead_s(b, 0)  # the scheduler's share: once per step, where the batch enters
        out: list[Num] = []
        start = 0
        for i, n in enumerate(stage_layers(m.num_layers, self.layout.pp)):
            t: Num = sched if i == 0 else 0.0
            for kind, count in Counter(m.layer_list[start:start + n]).items():
                layer, launched = layers[kind]
                t = t + count * sum(layer.values())
                t = t + self._overhead_s(b, count * launched) - sched  # this stage's own launches
            out.append(t)
            start += n
        out[-1] = out[-1] + self._op_s(lm_head_op(m, self.layout, self.prec, b)) + self._draft_s(b)
        return out

    def step_s(self, b: Batch) -> Num:
        """Wall time of one iteration for batch `b`. With pp>1: one round of the `pp` micro-batches of
        b/pp, in which every sequence advances once - the longer of one micro-batch's pass through all
        stages and `pp` times the slowest stage (see the module doc)."""
        pp = self.layout.pp
        if pp == 1:
            return sum(self.breakdown(b).values())
        mb = self._verified(b).split(pp)
        stages = self.stages_s(mb)
        full = sum(stages) + (pp - 1) * self._send_s(mb)
        return np.maximum(full, pp * reduce(np.maximum, stages))

    def prefill_s(self, isl: int, seqs: float = 1.0) -> Num:
        """Latency of prefilling `seqs` whole prompts of `isl` tokens together, through every stage."""
        b = Batch(prefill_tokens=seqs * isl, prefill_span=isl / 2, prefill_seqs=seqs)
        return sum(self.breakdown(b).values())

    def decode_s(self, seqs: Num, ctx: Num) -> Num:
        return self.step_s(Batch(decode_seqs=seqs, decode_ctx=ctx))


def stage_layers(num_layers: int, pp: int) -> list[int]:
    """Decoder layers of each of `pp` pipeline stages, as vLLM splits them (get_pp_indices in
    vllm/distributed/utils.py): an even share each, and the remainder one apiece to the stages before
    the last, from the second-to-last backwards, because the last also runs the LM head."""
    base, extra = divmod(num_layers, pp)
    out = [base] * pp
    for i in range(2, extra + 2):
        out[-i] += 1
    return out
