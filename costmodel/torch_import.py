"""A user's own torch module as a ModelSpec: traced with torch.fx, read off the op graph.

`plan(module, cluster, slo)` accepts a `torch.nn.Module` whose `forward(input_ids)` runs a
decoder-only transformer (or `(module, example_input_or_shape)`). The module is traced with
`torch.fx.symbolic_trace` and run once on the example tokens (`ShapeProp`) to learn every node's
shape; then each `scaled_dot_product_attention` is one layer: the linears feeding its query, key
and value give the heads and KV heads, the linear after it the output projection, and the linears
up to the next layer the MLP (a linear feeding `topk` is a MoE router; 3-D weight stacks are
routed experts). The embedding gives width and vocabulary; a final linear with the vocabulary as
output is the LM head (tied when it reads the embedding's weight). The derived spec must account
for every parameter of the module, or the trace is refused with the difference named.

torch is the optional `[verify]` extra and is imported only here, when a module is given.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from costmodel.models import ModelSpec, MoESpec
from hardware.errors import PlannerInputError

Node = torch.fx.Node
DEFAULT_EXAMPLE = (1, 16)
MATMULS = {torch.matmul, torch.bmm, torch.mm, operator.matmul}


def _shape(n: Any) -> tuple[int, ...] | None:
    meta = getattr(n, "meta", {}).get("tensor_meta") if isinstance(n, Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is(n: Node, *names: str) -> bool:
    return n.op in ("call_function", "call_method") and getattr(n.target, "__name__", n.target) in names


@dataclass
class Traced:
    """A traced module: its graph with shapes, and the nodes that matter for the spec."""

    gm: torch.fx.GraphModule
    example: torch.Tensor
    linears: list[Node] = field(default_factory=list)
    attention: list[Node] = field(default_factory=list)
    embedding: Node | None = None

    def weight_shape(self, lin: Node) -> tuple[int, ...]:
        """[out, in] of a linear node (functional or nn.Linear), or [E, out, in] for an expert stack."""
        if lin.op == "call_module":
            return tuple(self.gm.get_submodule(str(lin.target)).weight.shape)
        shape = _shape(lin.args[1])
        if shape is None:
            raise PlannerInputError(f"traced module: the weight of {lin.name} has no known shape")
        return shape

    def root_param(self, n: Any) -> str | None:
        """The parameter a weight argument reads (through slicing and dtype casts), if any."""
        while isinstance(n, Node):
            if n.op == "get_attr":
                return str(n.target)
            if n.op == "call_module":
                return f"{n.target}.weight"
            if n.op in ("call_function", "call_method") and n.args:
                n = n.args[0]
                continue
            return None
        return None


def trace(module: torch.nn.Module, example: torch.Tensor | tuple[int, ...] | None = None) -> Traced:
    """fx-trace `module` and propagate the shapes of one forward pass on `example` token ids."""
    if not isinstance(example, torch.Tensor):
        shape = tuple(example) if example is not None else getattr(module, "example_input_shape", DEFAULT_EXAMPLE)
        vocab = next((m.num_embeddings for m in module.modules() if isinstance(m, torch.nn.Embedding)), 2)
        example = torch.arange(math.prod(shape)).reshape(shape) % max(vocab, 2)
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:
        raise PlannerInputError(f"model: torch.fx could not trace {type(module).__name__} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:120]}); give its HF config.json instead") from None
    with torch.inference_mode():
        ShapeProp(gm).propagate(example)
    t = Traced(gm, example)
    for n in gm.graph.nodes:
        if (n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), torch.nn.Linear)) or \
                _is(n, "linear"):
            t.linears.append(n)
        elif _is(n, "scaled_dot_product_attention"):
            t.attention.append(n)
        elif t.embedding is None and (_is(n, "embedding") or (
                n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), torch.nn.Embedding))):
            t.embedding = n
    if not t.attention or t.embedding is None:
        raise PlannerInputError(f"model: traced {type(module).__name__} has no token embedding and "
                                "scaled_dot_product_attention; the tracer reads decoder-only transformers")
    return t


def _nearest(start: Iterable[Any], linears: set[Node], forward: bool) -> list[Node]:
    """The linears first met walking the graph from `start` (backward through inputs, or forward)."""
    seen: set[Node] = set()
    todo = [n for n in start if isinstance(n, Node)]
    found: list[Node] = []
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in linears:
            found.append(n)
            continue
        if forward:
            todo.extend(n.users)
        else:
            todo.extend(a for a in n.all_input_nodes if a.op not in ("get_attr", "placeholder"))
    return found


def from_module(module: torch.nn.Module, example: torch.Tensor | tuple[int, ...] | None = None,
                name: str = "") -> ModelSpec:
    """The ModelSpec of a traced decoder-only transformer module."""
    return spec_of(trace(module, example), module, name)


def spec_of(t: Traced, module: torch.nn.Module, name: str = "") -> ModelSpec:
    """Read the ModelSpec off a traced module (see the module doc)."""
    order = {n: i for i, n in enumerate(t.gm.graph.nodes)}
    lins = set(t.linears)
    emb = t.weight_shape(t.embedding) if t.embedding.op == "call_module" else _shape(t.embedding.args[1])
    assert emb is not None
    vocab, hidden = emb
    q_shape = _shape(t.attention[0].args[0])
    assert q_shape is not None
    heads, head_dim = q_shape[-3], q_shape[-1]
    qkv = _nearest(t.attention[0].args[:3], lins, forward=False)
    qkv_out = sum(t.weight_shape(n)[-2] for n in qkv)
    kv_heads = (qkv_out // head_dim - heads) // 2
    head = max(t.linears, key=lambda n: order[n])
    if t.weight_shape(head)[-2] != vocab:
        raise PlannerInputError(f"model: the last linear of {type(module).__name__} has "
                                f"{t.weight_shape(head)[-2]} outputs, not the vocabulary ({vocab})")
    tied = t.root_param(head if head.op == "call_module" else head.args[1]) == t.root_param(
        t.embedding if t.embedding.op == "call_module" else t.embedding.args[1])
    # layer i's MLP: the linears after its output projection and before layer i+1's QKV (or the LM head)
    starts = [min(order[n] for n in _nearest(a.args[:3], lins, forward=False)) for a in t.attention[1:]]
    starts.append(order[head])
    blocks = []
    for att, end in zip(t.attention, starts, strict=True):
        o = min(order[n] for n in _nearest([att], lins, forward=True))
        mlp = [n for n in t.linears if o < order[n] < end]
        topk = [n for n in t.gm.graph.nodes if _is(n, "topk") and o < order[n] < end]
        blocks.append((mlp, topk))

    def down_width(linears: list[Node]) -> int:
        return next(t.weight_shape(n)[-1] for n in linears if t.weight_shape(n)[-2] == hidden)

    dense = [i for i, (_, topk) in enumerate(blocks) if not topk]
    if dense and dense != list(range(len(dense))):
        raise PlannerInputError(f"model: {type(module).__name__} mixes dense and MoE layers other than leading "
                                "dense ones; give its HF config.json instead")
    moe = None
    if len(dense) < len(blocks):
        mlp, topk = blocks[len(dense)]
        n_exp = (_shape(topk[0].args[0]) or (0,))[-1]
        router = next(n for n in mlp if t.weight_shape(n)[-2] == n_exp)
        experts = [n for n in mlp if isinstance(n.args[1], Node) and _is(n.args[1], "getitem")
                   and len(_shape(n.args[1].args[0]) or ()) == 3]
        if not experts:
            raise PlannerInputError(f"model: {type(module).__name__} routes tokens (topk) but its experts are "
                                    "not stacked [experts, out, in] weights the tracer can read")
        width = down_width(experts)
        shared = [n for n in mlp if n is not router and n not in experts]
        k = int(topk[0].args[1] if len(topk[0].args) > 1 else topk[0].kwargs["k"])
        moe = MoESpec(num_experts=n_exp, top_k=k, intermediate_size=width, num_shared_experts=1 if shared else 0,
                      shared_intermediate_size=down_width(shared) if shared else 0, first_dense_layers=len(dense))
    intermediate = down_width(blocks[0][0]) if dense else (moe.intermediate_size if moe else 4 * hidden)
    norms = [n for n in t.gm.graph.nodes if _is(n, "rms_norm", "layer_norm")]
    qk_norm = len(norms) == 4 * len(t.attention) + 1
    qkv_bias = any(_is(u, "add") for n in qkv for u in n.users) or any(
        n.op == "call_module" and t.gm.get_submodule(str(n.target)).bias is not None for n in qkv)
    family = ("qwen3_moe" if qk_norm else "qwen2_moe" if moe.num_shared_experts else "mixtral") if moe else \
        ("qwen3" if qk_norm else "qwen2" if qkv_bias else "llama")
    spec = ModelSpec(name=name or type(module).__name__, family=family, hidden_size=hidden,
                     num_layers=len(t.attention), num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                     intermediate_size=intermediate, vocab_size=vocab, tie_embeddings=tied, qkv_bias=qkv_bias,
                     qk_norm=qk_norm, moe=moe)
    params = sum(p.numel() for p in module.parameters())
    if params != spec.total_params:
        raise PlannerInputError(f"model: traced {type(module).__name__} has {params:,} parameters but the spec read "
                                f"from its graph accounts for {spec.total_params:,}; give its HF config.json instead")
    return spec


def matmul_flops(t: Traced) -> float:
    """FLOPs of the matrix products of the traced forward pass (linears, matmuls, attention).

    Causal attention over T keys is counted at its mean (T + 1) / 2 keys per query, as the cost
    model's prefill attention does; elementwise work is not counted (the cost model gives it none).
    """
    total = 0.0
    for n in t.gm.graph.nodes:
        out = _shape(n)
        if out is None:
            continue
        if n in t.linears:
            total += 2.0 * math.prod(out) * t.weight_shape(n)[-1]
        elif n in t.attention:
            q, k = _shape(n.args[0]), _shape(n.args[1])
            assert q is not None and k is not None
            causal = bool(n.kwargs.get("is_causal", False))
            keys = (k[-2] + 1) / 2 if causal and q[-2] == k[-2] else k[-2]
            total += 4.0 * math.prod(q[:-1]) * keys * q[-1]
        elif n.op == "call_function" and n.target in MATMULS:
            a = _shape(n.args[0])
            assert a is not None
            total += 2.0 * math.prod(out) * a[-1]
    return total
