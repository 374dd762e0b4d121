"""What every emitter shares: template loading and rendering, the common files, checked atomic writes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from hardware.errors import PlannerInputError
from planner.emit import argcheck, placement
from planner.emit.deployment import Deployment, Pool
from planner.result import write_atomic

TEMPLATES = Path(__file__).parent / "templates"
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


@cache
def template(filename: str) -> dict[str, Any]:
    """One engine version's template file, merged over the file it `extends`."""
    raw = yaml.safe_load((TEMPLATES / filename).read_text())
    if raw.get("extends"):
        raw = {**template(raw["extends"]), **raw}
    return raw


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated dicts out in full: manifests read by people and kubectl, not YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(objs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objs, Dumper=_NoAliasDumper, sort_keys=False, width=1000)


def render(text: str, **ctx: Any) -> str:
    return _ENV.from_string(text).render(**ctx)


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Fragments:
    """An engine's rendered launch command for the head node and the other nodes, and its benchmark."""

    serve: str
    serve_worker: str
    bench: str


def load_text(d: Deployment) -> str:
    return f"{d.concurrency} concurrent clients" if d.concurrency else f"{d.rate_rps:g} requests/s (Poisson)"


def predicted(d: Deployment) -> list[tuple[str, str]]:
    m = d.metrics
    rows = [("TTFT (mean)", f"{fmt(m.get('ttft_ms', 0.0), 0)} ms"), ("TPOT (mean)", f"{fmt(m.get('tpot_ms', 0.0))} ms"),
            ("output tokens/s (all replicas)", fmt(m.get("output_tok_s", 0.0), 0)),
            ("requests/s", fmt(m.get("requests_per_s", 0.0), 2)),
            ("goodput (requests/s meeting the SLO)", fmt(m.get("goodput_rps", 0.0), 2)),
            ("mean decode batch per instance", fmt(m.get("decode_batch", 0.0))),
            ("weights per device", f"{fmt(m.get('weights_gib', 0.0), 2)} GiB"),
            ("KV cache per device", f"{fmt(m.get('kv_cache_gib', 0.0), 2)} GiB")]
    return rows


def common_files(d: Deployment, p: Pool, frags: Fragments, tpl: dict[str, Any], *, title: str, engine_title: str,
                 nodes: int, env: dict[str, str], notes: list[str], bench_tool: str,
                 slot_env: dict[str, str] | None = None, port_kinds: tuple[str, ...] = ()) -> dict[str, str]:
    """launch.sh, bench.sh and README.md rendered from templates/common.yaml; `slot_env` is exported per
    replica after its devices and ports are set, and README.md tables the `port_kinds` of every instance."""
    common = template("common.yaml")
    if nodes > 1:
        how = f"NODE_RANK=0 HEAD_IP=<head address> bash launch.sh   # on the head node\n" \
              f"NODE_RANK=1 HEAD_IP=<head address> bash launch.sh   # on each other node, ranks 1..{nodes - 1}"
    else:
        how = f"REPLICA=0 bash launch.sh   # and REPLICA=1..{p.replicas - 1} for the other replicas" \
            if p.replicas > 1 else "bash launch.sh"
    slo = ", ".join(f"{k} <= {v:g}" for k, v in d.slo.items())
    ctx = {"d": d, "p": p, "title": title, "engine_title": engine_title, "nodes": nodes, "env": env,
           "slots": placement.slots(d)[p.role], "slot_env": slot_env or {},
           "placement_table": placement.readme_table(d, port_kinds) if nodes == 1 and port_kinds else "",
           "port": tpl["port"], "serve": frags.serve,
           "serve_worker": frags.serve_worker,
           "bench": frags.bench, "notes": notes, "predicted": predicted(d), "load": load_text(d), "slo_text": slo,
           "launch_how": how, "flags_file": tpl["flags"], "bench_tool": bench_tool}
    return {name: render(text, **ctx) for name, text in common.items()}


def check_files(files: dict[str, str], flags_file: str) -> None:
    """Raise if any command line or config key in `files` is not in the recorded flags (emit-time guard)."""
    sp = argcheck.spec(flags_file)
    errors: list[str] = []
    for name, text in files.items():
        if name.endswith(".sh"):
            errors += [f"{name}: {e}" for e in argcheck.check_commands(argcheck.commands_in_script(text), sp)[0]]
        elif name.endswith((".yaml", ".yml")):
            docs = [doc for doc in yaml.safe_load_all(text) if doc]
            if name in sp.configs:
                errors += [f"{name}: {e}" for doc in docs for e in argcheck.check_config(doc, sp.configs[name])]
            else:
                argvs = [a for doc in docs for a in argcheck.container_argvs(doc)]
                errors += [f"{name}: {e}" for e in argcheck.check_commands(argvs, sp)[0]]
    if errors:
        raise RuntimeError("emitted files break the recorded engine flags:\n" + "\n".join(errors))


def write_files(out: Path, files: dict[str, str], flags_file: str) -> list[Path]:
    check_files(files, flags_file)
    paths = []
    for name, text in files.items():
        path = write_atomic(out / name, text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        paths.append(path)
    return paths


# A prefill pool listens this far above the engine's port, so both pools can share a node's address space.
PREFILL_PORT_OFFSET = 100


def pool_template(tpl: dict[str, Any], p: Pool) -> dict[str, Any]:
    """`tpl` with the pool's port: the engine's own for decode and aggregated pools, offset for prefill."""
    return {**tpl, "port": int(tpl["port"]) + PREFILL_PORT_OFFSET} if p.role == "prefill" else tpl


def pool_rows(d: Deployment) -> str:
    """A Markdown list of the plan's pools: role, instances and layout."""
    return "\n".join(f"- {p.role}: {p.replicas} instance(s) of tensor-parallel {p.tp}"
                     f"{f' x attention-data-parallel {p.attention_dp}' if p.attention_dp > 1 else ''}"
                     f"{f' x pipeline {p.pp}' if p.pp > 1 else ''}, {p.instance_devices} device(s) each"
                     for p in d.pools)


def disagg_files(d: Deployment, per_pool: dict[str, dict[str, str]], launch_how: str,
                 notes: list[str]) -> dict[str, str]:
    """One folder for a prefill/decode plan: launch-<role>.sh per pool, the decode pool's bench.sh (pointed at
    the router), and the decode pool's README with both pools and the launch order."""
    files = {f"launch-{role}.sh": f["launch.sh"] for role, f in per_pool.items() if "launch.sh" in f}
    dec = per_pool["decode"]
    files["bench.sh"] = dec["bench.sh"]
    head, _, rest = dec["README.md"].partition("## Launch\n\n```\n")
    tail = rest.split("```", 1)[1]
    rows = pool_rows(d)
    extra = "".join(f"\n\nNote: {n}" for n in notes)
    files["README.md"] = (f"{head}## Prefill/decode pools\n\n{rows}\n\nThe prefill pool runs whole prompts and ships "
                          f"their KV cache to the decode pool, which generates the answers.\n\n## Launch\n\n```\n"
                          f"{launch_how}\n```{tail.rstrip()}{extra}\n")
    return files


def unsupported(d: Deployment, engine: str, why: str, fix: str) -> PlannerInputError:
    return PlannerInputError(f"plan #{d.rank} ({d.label}) cannot run on {engine}: {why}; {fix}")
