"""The allocation problem every solver shares, its value function, and concrete device placement.

A `Problem` is a cluster shape (node groups split into scale-up domains of whole nodes), a table of
candidate instance `Config`s (a role, a device group, a layout, the per-instance goodput the cost
model gives it under the SLO, its power), a mode and a goal. An `Allocation` says how many
instances of each config sit in each domain, and how many prefill instances ship their KV cache
inside their own domain (over the scale-up link) rather than over the scale-out network.

Placement rules, the same in every solver:
- an instance no larger than a node sits inside one node (instance sizes divide the node, so any
  multiset whose devices fit the nodes packs: first-fit decreasing leaves no holes);
- a larger instance that fits a scale-up domain takes whole nodes inside one domain;
- an instance larger than a domain is cut into chunks of whole nodes, each holding whole TP
  groups (`tp x attention_dp` devices), and the chunks may sit in different domains (its
  pipeline then runs over the scale-out network, as the cost model assumes for it);
- a config's instances only use devices of its own group (device types stay apart).

Modes: `agg` has one pool per device group (one layout each); `disagg` has one prefill pool and one
decode pool (one layout each, on any group). Goodput of a disaggregated allocation is rate matched:
prefill output shipped inside a domain is served by that domain's decode instances, the rest by any.
Rates are integers in units of `UNIT_RPS` so that every solver optimises exactly the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from costmodel.layout import Layout
from hardware.specs import Cluster, NodeGroup

UNIT_RPS = 1e-4  # rates are integers in these units
MODES = ("agg", "disagg")
GOALS = ("goodput", "devices", "energy", "cost")

Key = tuple[int, int]  # (config index, domain index within the config's group)


@dataclass(frozen=True)
class GroupShape:
    """One device group as the solvers see it: nodes, domains and a price."""

    device: str
    num_nodes: int
    devices_per_node: int
    nodes_per_domain: int
    price_per_device_hour: float = 1.0

    @classmethod
    def of(cls, group: NodeGroup, price_per_device_hour: float = 1.0) -> GroupShape:
        return cls(group.device.name, group.num_nodes, group.devices_per_node, group.nodes_per_domain,
                   price_per_device_hour)

    @property
    def domain_nodes(self) -> int:
        return min(self.nodes_per_domain, self.num_nodes)

    @property
    def num_domains(self) -> int:
        return self.num_nodes // self.domain_nodes

    @property
    def domain_devices(self) -> int:
        return self.domain_nodes * self.devices_per_node

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.devices_per_node

    def domain_of(self, device: int) -> int:
        return device // self.domain_devices


def shapes(cluster: Cluster, prices: dict[str, float] | None = None) -> tuple[GroupShape, ...]:
    return tuple(GroupShape.of(g, (prices or {}).get(g.device.name, 1.0)) for g in cluster.groups)


@dataclass(frozen=True)
class Config:
    """A candidate instance: role, group, layout and what the cost model says one instance carries."""

    role: str  # agg | prefill | decode
    group: int
    layout: Layout
    rate: int  # per-instance goodput in UNIT_RPS (prefill: KV shipped inside the domain)
    rate_out: int  # prefill: KV shipped over the scale-out network; otherwise equal to rate
    power_w: float = 0.0
    binding: str = ""
    detail: str = ""
    tag: str = ""  # e.g. the power cap the capacity was computed at
    metrics: dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    @property
    def devices(self) -> int:
        return self.layout.instance_devices

    @property
    def unit(self) -> int:
        """Devices of one TP (and attention-DP / EP) group, which must share a scale-up domain."""
        return self.layout.tp * self.layout.attention_dp

    def label(self) -> str:
        cap = f"@{self.tag}" if self.tag else ""
        return f"{self.role}:{self.layout.model_copy(update={'dp': 1}).label()}{cap}"


def kind(c: Config, g: GroupShape) -> str:
    """small (inside a node), node (whole nodes in one domain) or cross (chunks over domains)."""
    if c.devices <= g.devices_per_node and g.devices_per_node % c.devices == 0:
        return "small"
    if c.devices <= g.domain_devices:
        return "node"
    return "cross"


def nodes_of(c: Config, g: GroupShape) -> int:
    """Whole nodes a node-kind instance takes, or one chunk of a cross-kind instance takes."""
    if kind(c, g) == "cross":
        return -(-max(c.unit, g.devices_per_node) // g.devices_per_node)
    return -(-c.devices // g.devices_per_node)


def chunks_of(c: Config, g: GroupShape) -> int:
    """Chunks one cross-kind instance is cut into."""
    return c.devices // (nodes_of(c, g) * g.devices_per_node)


def placeable(c: Config, g: GroupShape) -> bool:
    """Whether the rules can place `c` on `g` at all (whole TP groups per chunk, chunks fit a domain)."""
    if c.devices > g.num_devices or c.unit > g.domain_devices:
        return False
    if kind(c, g) != "cross":
        return True
    chunk = nodes_of(c, g) * g.devices_per_node
    return c.devices % chunk == 0 and chunk % c.unit == 0 and nodes_of(c, g) <= g.domain_nodes


@dataclass(frozen=True)
class Goal:
    """Maximise goodput, or minimise devices / energy / cost subject to goodput >= target (UNIT_RPS)."""

    kind: str = "goodput"
    target: int = 0


@dataclass(frozen=True)
class Problem:
    groups: tuple[GroupShape, ...]
    configs: tuple[Config, ...]
    mode: str = "agg"
    goal: Goal = Goal()

    def pool(self, i: int) -> tuple[str, int]:
        """Configs of one pool exclude each other: agg pools are per group, disagg pools per role."""
        c = self.configs[i]
        return (c.role, c.group) if c.role == "agg" else (c.role, -1)

    def pools(self) -> dict[tuple[str, int], list[int]]:
        out: dict[tuple[str, int], list[int]] = {}
        for i in range(len(self.configs)):
            out.setdefault(self.pool(i), []).append(i)
        return out

    def shape(self, i: int) -> GroupShape:
        return self.groups[self.configs[i].group]

    def kind(self, i: int) -> str:
        return kind(self.configs[i], self.shape(i))

    @property
    def total_devices(self) -> int:
        return sum(g.num_devices for g in self.groups)

    @property
    def max_goodput(self) -> int:
        """An upper bound on any allocation's goodput (for lexicographic weights)."""
        per_device = max((max(c.rate, c.rate_out) / c.devices for c in self.configs), default=0.0)
        return int(per_device * self.total_devices) + 1

    def price_milli(self, i: int) -> int:
        return round(self.shape(i).price_per_device_hour * 1000) * self.configs[i].devices


@dataclass(frozen=True)
class Allocation:
    """Instances per (config, domain) - chunks for cross-kind configs - and, for cross-kind configs,
    the instance count; `local` counts prefill instances shipping KV inside their domain."""

    counts: dict[Key, int] = field(default_factory=dict)
    cross: dict[int, int] = field(default_factory=dict)
    local: dict[Key, int] = field(default_factory=dict)

    def instances(self, problem: Problem) -> dict[int, int]:
        out: dict[int, int] = {}
        for (i, _), n in self.counts.items():
            if problem.kind(i) != "cross" and n:
                out[i] = out.get(i, 0) + n
        for i, n in self.cross.items():
            if n:
                out[i] = out.get(i, 0) + n
        return out

    def chosen(self, problem: Problem) -> frozenset[int]:
        return frozenset(self.instances(problem))


@dataclass(frozen=True)
class Value:
    feasible: bool
    goodput: int  # UNIT_RPS
    devices: int
    power_w: float
    cost_milli: int  # thousandths of a USD per hour
    objective: int  # larger is better, the same integer every solver optimises
    reason: str = ""
    prefill: int = 0  # prefill pool's capacity (disagg), UNIT_RPS
    decode: int = 0


def objective_value(problem: Problem, goodput: int, devices: int, power: int, cost: int) -> int:
    """The single integer every strategy maximises: the goal first, goodput or devices as tie-break."""
    kind_ = problem.goal.kind
    if kind_ == "goodput":
        return goodput * (problem.total_devices + 1) - devices
    weight = problem.max_goodput + 1
    primary = {"devices": devices, "energy": power, "cost": cost}[kind_]
    return -(primary * weight - goodput)


def node_use(problem: Problem, alloc: Allocation) -> dict[tuple[int, int], int]:
    """Nodes used per (group, domain)."""
    small: dict[tuple[int, int], int] = {}
    whole: dict[tuple[int, int], int] = {}
    for (i, k), n in alloc.counts.items():
        c, g = problem.configs[i], problem.shape(i)
        key = (c.group, k)
        if problem.kind(i) == "small":
            small[key] = small.get(key, 0) + n * c.devices
        else:
            whole[key] = whole.get(key, 0) + n * nodes_of(c, g)
    out = dict(whole)
    for key, devs in small.items():
        out[key] = out.get(key, 0) + -(-devs // problem.groups[key[0]].devices_per_node)
    return out


def _check(problem: Problem, alloc: Allocation) -> str:
    """'' when the allocation obeys every rule, else what breaks."""
    for (i, k), n in alloc.counts.items():
        if n < 0 or not 0 <= k < problem.shape(i).num_domains:
            return f"config {i} has {n} instances in domain {k}"
    for (gi, k), used in node_use(problem, alloc).items():
        if used > problem.groups[gi].domain_nodes:
            return f"domain {k} of group {gi} needs {used} nodes of {problem.groups[gi].domain_nodes}"
    for i in range(len(problem.configs)):
        if problem.kind(i) == "cross":
            chunks = sum(n for (j, _), n in alloc.counts.items() if j == i)
            if chunks != alloc.cross.get(i, 0) * chunks_of(problem.configs[i], problem.shape(i)):
                return f"config {i}: {chunks} chunks for {alloc.cross.get(i, 0)} instances"
        elif alloc.cross.get(i, 0):
            return f"config {i} fits a domain but has cross-domain instances"
    for (i, k), n in alloc.local.items():
        if n and (problem.configs[i].role != "prefill" or problem.kind(i) == "cross"
                  or n > alloc.counts.get((i, k), 0) or n < 0):
            return f"config {i} ships KV locally from {n} instances in domain {k}"
    pools: dict[tuple[str, int], int] = {}
    for i in alloc.instances(problem):
        pools[problem.pool(i)] = pools.get(problem.pool(i), 0) + 1
        if problem.configs[i].role not in (("agg",) if problem.mode == "agg" else ("prefill", "decode")):
            return f"config {i} ({problem.configs[i].role}) is not part of a {problem.mode} plan"
    if any(v > 1 for v in pools.values()):
        return "a pool mixes layouts"
    return ""


def goodput_parts(problem: Problem, alloc: Allocation) -> tuple[int, int, int]:
    """(goodput, prefill capacity, decode capacity) in UNIT_RPS, rate matched for disagg."""
    inst = alloc.instances(problem)
    cfg = problem.configs
    if problem.mode == "agg":
        total = sum(cfg[i].rate * n for i, n in inst.items())
        return total, 0, 0
    decode_at: dict[tuple[int, int], int] = {}
    for (i, k), n in alloc.counts.items():
        if cfg[i].role == "decode" and problem.kind(i) != "cross":
            decode_at[(cfg[i].group, k)] = decode_at.get((cfg[i].group, k), 0) + cfg[i].rate * n
    decode_total = sum(cfg[i].rate * n for i, n in inst.items() if cfg[i].role == "decode")
    local_at: dict[tuple[int, int], int] = {}
    shipped_local = 0
    for (i, k), n in alloc.local.items():
        local_at[(cfg[i].group, k)] = local_at.get((cfg[i].group, k), 0) + cfg[i].rate * n
        shipped_local += n if n else 0
    local_flow = sum(min(v, decode_at.get(key, 0)) for key, v in local_at.items())
    out_cap = 0
    for i, n in inst.items():
        if cfg[i].role == "prefill":
            here = sum(m for (j, _), m in alloc.local.items() if j == i)
            out_cap += cfg[i].rate_out * (n - here)
    prefill_total = sum(local_at.values()) + out_cap
    return min(local_flow + out_cap, decode_total), prefill_total, decode_total


def evaluate(problem: Problem, alloc: Allocation) -> Value:
    """Feasibility, goodput, devices, power, cost and the objective of `alloc` (independent of any solver)."""
    bad = _check(problem, alloc)
    inst = alloc.instances(problem)
    devices = sum(problem.configs[i].devices * n for i, n in inst.items())
    power = sum(round(problem.configs[i].power_w) * n for i, n in inst.items())
    cost = sum(problem.price_milli(i) * n for i, n in inst.items())
    goodput, pre, dec = goodput_parts(problem, alloc) if not bad else (0, 0, 0)
    if not bad and goodput <= 0:
        bad = "the allocation carries nothing (no instances, or a disaggregated plan missing a pool)"
    if not bad and goodput < problem.goal.target:
        bad = f"goodput {goodput * UNIT_RPS:.3f} req/s is below the target {problem.goal.target * UNIT_RPS:.3f}"
    obj = objective_value(problem, goodput, devices, power, cost)
    return Value(not bad, goodput, devices, float(power), cost, obj if not bad else -(2**62), bad, pre, dec)


def best_local(problem: Problem, alloc: Allocation) -> Allocation:
    """The same instances with the prefill local/remote split that maximises goodput.

    Per domain the goodput is increasing in local senders while the domain's decode capacity
    absorbs them and decreasing after (a local sender's spare output cannot leave the domain), so
    the best count is one of the two integers around decode capacity / rate, checked exactly.
    """
    if problem.mode != "disagg":
        return alloc
    cfg = problem.configs
    local: dict[Key, int] = {}
    decode_at: dict[tuple[int, int], int] = {}
    for (i, k), n in alloc.counts.items():
        if cfg[i].role == "decode" and problem.kind(i) != "cross":
            decode_at[(cfg[i].group, k)] = decode_at.get((cfg[i].group, k), 0) + cfg[i].rate * n
    for (i, k), n in alloc.counts.items():
        c = cfg[i]
        if c.role != "prefill" or problem.kind(i) == "cross" or not n:
            continue
        cap = decode_at.get((c.group, k), 0)
        if cap <= 0 or c.rate <= c.rate_out:
            best = 0  # shipping locally gains nothing and would tie the instance to this domain
        else:
            lo = min(n, cap // c.rate)
            options = {lo, min(n, lo + 1)}
            best = max(options, key=lambda u, c=c, cap=cap, n=n: (min(u * c.rate, cap) + (n - u) * c.rate_out, -u))
        if best:
            local[(i, k)] = best
    return Allocation(dict(alloc.counts), dict(alloc.cross), local)


# ---- concrete placement ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Placed:
    """One instance on concrete devices (group-local indices), TP groups in consecutive runs."""

    config: int
    group: int
    devices: tuple[int, ...]
    local_kv: bool = False


def place(problem: Problem, alloc: Allocation) -> list[Placed]:
    """Concrete devices for every instance of a feasible allocation (deterministic)."""
    out: list[Placed] = []
    chunks: dict[int, list[tuple[int, ...]]] = {}
    for gi, g in enumerate(problem.groups):
        dpn = g.devices_per_node
        for k in range(g.num_domains):
            nxt = k * g.domain_nodes  # next free node of this domain
            items = sorted(((i, n) for (i, kk), n in alloc.counts.items()
                            if kk == k and n and problem.configs[i].group == gi), key=lambda t: t[0])
            for i, n in items:
                if problem.kind(i) == "cross":
                    size = nodes_of(problem.configs[i], g)
                    for _ in range(n):
                        chunks.setdefault(i, []).append(tuple(range(nxt * dpn, (nxt + size) * dpn)))
                        nxt += size
            for i, n in items:
                if problem.kind(i) == "node":
                    c = problem.configs[i]
                    local = alloc.local.get((i, k), 0)
                    for j in range(n):
                        out.append(Placed(i, gi, tuple(range(nxt * dpn, nxt * dpn + c.devices)), j < local))
                        nxt += nodes_of(c, g)
            small = sorted(((i, n) for i, n in items if problem.kind(i) == "small"),
                           key=lambda t: (-problem.configs[t[0]].devices, t[0]))
            offset = 0
            for i, n in small:
                size, local = problem.configs[i].devices, alloc.local.get((i, k), 0)
                for j in range(n):
                    if offset + size > dpn:
                        nxt, offset = nxt + 1, 0
                    start = nxt * dpn + offset
                    out.append(Placed(i, gi, tuple(range(start, start + size)), j < local))
                    offset += size
    for i, parts in sorted(chunks.items()):
        per = chunks_of(problem.configs[i], problem.shape(i))
        for j in range(len(parts) // per):
            devs = tuple(d for part in parts[j * per:(j + 1) * per] for d in part)
            out.append(Placed(i, problem.configs[i].group, devs))
    return out


def placement_violations(problem: Problem, alloc: Allocation, placed: Iterable[Placed]) -> list[str]:
    """Every broken placement rule (empty when the placement is valid)."""
    bad: list[str] = []
    seen: dict[tuple[int, int], int] = {}
    counts: dict[int, int] = {}
    for p in placed:
        c, g = problem.configs[p.config], problem.groups[p.group]
        counts[p.config] = counts.get(p.config, 0) + 1
        if p.group != c.group:
            bad.append(f"{c.label()} placed on {g.device}, not its device type")
        if len(p.devices) != c.devices or len(set(p.devices)) != c.devices:
            bad.append(f"{c.label()} got {len(p.devices)} devices for {c.devices}")
        for d in p.devices:
            if not 0 <= d < g.num_devices:
                bad.append(f"{c.label()} uses device {d} outside group {p.group}")
            if (p.group, d) in seen:
                bad.append(f"device {d} of group {p.group} is used twice")
            seen[(p.group, d)] = p.config
        for s in range(0, len(p.devices), c.unit):
            if len({g.domain_of(d) for d in p.devices[s:s + c.unit]}) > 1:
                bad.append(f"{c.label()} splits a TP group across scale-up domains")
        if c.devices > g.devices_per_node:
            nodes = {d // g.devices_per_node for d in p.devices}
            if len(nodes) * g.devices_per_node != len(p.devices) and c.devices % g.devices_per_node == 0:
                bad.append(f"{c.label()} spans nodes without taking them whole")
        else:
            if len({d // g.devices_per_node for d in p.devices}) > 1:
                bad.append(f"{c.label()} fits a node but spans several")
        if kind(c, g) != "cross" and len({g.domain_of(d) for d in p.devices}) > 1:
            bad.append(f"{c.label()} fits a domain but spans several")
    if counts != alloc.instances(problem):
        bad.append("placed instance counts differ from the allocation")
    return bad


def describe(problem: Problem, alloc: Allocation) -> str:
    """`3 x prefill:tp4 + 2 x decode:tp8` (instances per config, in config order)."""
    parts = [f"{n} x {problem.configs[i].label()}" for i, n in sorted(alloc.instances(problem).items())]
    return " + ".join(parts) if parts else "nothing"


def scaled(rate_rps: float) -> int:
    """A rate in UNIT_RPS (rounded down, so an integer plan never claims more than the cost model)."""
    return max(math.floor(rate_rps / UNIT_RPS + 1e-9), 0) if math.isfinite(rate_rps) else 0
