"""The op graph of one decoder layer as a networkx DiGraph (nodes carry FLOPs and bytes).

Nodes are the ops `costmodel.ops` costs, in data-flow order, plus the residual joins; the
graph is what reports draw and what a traced torch module is compared against.
"""

from __future__ import annotations

import networkx as nx

from costmodel.layout import Layout
from costmodel.models import LayerSpec, ModelSpec
from costmodel.ops import Batch, attention_ops, dense_mlp_ops, elementwise_op, moe_ops
from costmodel.precision import Precision


def layer_graph(model: ModelSpec, layout: Layout, prec: Precision, batch: Batch,
                layer: LayerSpec | bool) -> nx.DiGraph:
    """One layer's per-device ops for `batch`: its token mixer, then its MLP or MoE block; `layer`
    is a layer kind of the model, or True / False for its first MoE / non-MoE layer."""
    if isinstance(layer, bool):
        layer = model.kind_of(layer)
    mlp = {"moe": moe_ops, "dense": dense_mlp_ops}.get(layer.ffn)
    g = nx.DiGraph(layer=layer.ffn if layer.attention == "full" else f"{layer.attention}+{layer.ffn}",
                   model=model.name)
    g.add_node("input", kind="io", flops=0.0, bytes=0.0)
    prev = "input"
    blocks = [
        ("attention", attention_ops(model, layout, prec, batch, layer)),
        ("mlp", mlp(model, layout, prec, batch) if mlp else []),
    ]
    for block, ops in blocks:
        block_in = prev
        for op in ops:
            g.add_node(op.name, kind=op.kind, block=block, flops=float(op.flops), bytes=float(op.bytes))
            g.add_edge(prev, op.name)
            prev = op.name
        join = f"{block}_residual"
        g.add_node(join, kind="residual", flops=0.0, bytes=0.0)
        g.add_edge(prev, join)
        g.add_edge(block_in, join)
        prev = join
    ew = elementwise_op(model, layout, batch)
    g.add_node(ew.name, kind=ew.kind, block="layer", flops=0.0, bytes=float(ew.bytes))
    g.add_edge(prev, ew.name)
    return g
