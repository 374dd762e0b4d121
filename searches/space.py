"""The plan space: every instance layout a node group can host, with structural pruning.

TP stays inside a scale-up domain unless `cross_domain_tp` is set; TP divides the attention
heads; PP divides into at most one stage per layer; EP divides the experts and the
`tp x attention_dp` group; an instance fits in the group. Memory pruning happens in the
objective, where the precision and engine are known.

On a supernode (a scale-up domain of many nodes: CloudMatrix384, GB200 NVL72) a MoE model's space
is pruned to what wide-EP deployments run (DeepSeek's EP144/EP320, CloudMatrix-Infer's EP320):
attention TP inside one node and attention-DP with experts over the whole group (DEP, ep =
tp x attention_dp), which keeps a 384-device domain to about a hundred layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodel.layout import Layout
from costmodel.models import ModelSpec
from hardware.specs import NodeGroup


def powers_of_two(limit: int) -> list[int]:
    out, x = [], 1
    while x <= limit:
        out.append(x)
        x *= 2
    return out


@dataclass(frozen=True)
class Space:
    """Candidate layouts of one instance of `model` on `group` (dp is decided per plan)."""

    model: ModelSpec
    group: NodeGroup
    cross_domain_tp: bool = False
    max_pp: int = 16

    @property
    def wide_ep(self) -> bool:
        """MoE on a multi-node scale-up domain: prune to node-local attention TP with DEP."""
        return self.model.is_moe and self.group.nodes_per_domain > 1 and self.group.num_nodes > 1

    def layouts(self) -> list[Layout]:
        m, g = self.model, self.group
        tp_limit = g.num_devices if self.cross_domain_tp else min(g.domain_size, g.num_devices)
        out = []
        for tp in powers_of_two(tp_limit):
            if m.num_heads % tp or (self.wide_ep and tp > g.devices_per_node):
                continue
            adps = powers_of_two(tp_limit // tp) if m.is_moe else [1]
            for adp in adps:
                group = tp * adp
                if group > tp_limit:
                    continue
                eps = [e for e in powers_of_two(group) if m.moe and m.moe.num_experts % e == 0] if m.is_moe else [1]
                if self.wide_ep:
                    eps = [e for e in eps if e == group]
                for ep in eps:
                    if m.moe and m.moe.intermediate_size % (group // ep):
                        continue
                    for pp in powers_of_two(min(self.max_pp, m.num_layers)):
                        if group * pp > g.num_devices:
                            break
                        out.append(Layout(tp=tp, pp=pp, ep=ep, attention_dp=adp))
        return out

    def size(self) -> int:
        return len(self.layouts())

    def knobs(self) -> list[tuple[int, int]]:
        """(redundant experts, micro-batches) settings to search: none for a dense model or a single-node
        domain; on a wide-EP domain also an eighth and a quarter of the experts as redundant slots
        (DeepSeek's 256 + 32 over EP144, CloudMatrix-Infer's 256 + 64 over EP320), each with two
        micro-batches overlapping dispatch/combine with compute."""
        if not self.wide_ep or self.model.moe is None:
            return [(0, 1)]
        e = self.model.moe.num_experts
        return [(0, 1), *((r, 2) for r in (e // 8, e // 4) if r)]

    def redundant_layouts(self, redundant: int) -> list[Layout]:
        """Wide-EP layouts for `redundant` extra expert slots: one pipeline stage, EP = tp x attention-DP
        over whole nodes (eight or more), EP any divisor of the slots (experts + redundant) the domain
        holds: EP72/96/144/288 with 256 + 32, EP64/80/160/320 with 256 + 64."""
        m, g = self.model, self.group
        assert m.moe is not None
        slots = m.moe.num_experts + redundant
        out = []
        # EPLB pays off at large EP: from eight nodes up (smaller groups keep the plain variant)
        for ep in range(8 * g.devices_per_node, min(g.domain_size, g.num_devices) + 1, g.devices_per_node):
            if slots % ep:
                continue
            for tp in powers_of_two(g.devices_per_node):
                if m.num_heads % tp or ep % tp:
                    continue
                out.append(Layout(tp=tp, ep=ep, attention_dp=ep // tp))
        return out
