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
