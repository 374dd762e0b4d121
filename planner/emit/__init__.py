"""Deployment configs for real engines, one folder per plan: launch command(s), manifests, bench.sh, README.

    paths = emit(result, "vllm", "plans/", top=3)   # plans/vllm/plan-1/{launch.sh,bench.sh,README.md}, ...

Templates live in `templates/` (one file per engine version) and every flag they may write is recorded,
with the source file it was read from, in `flags/`; emitted files are checked against it before writing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hardware.errors import PlannerInputError
from planner.emit import ascend, dynamo, k8s, sglang, trtllm, vllm
from planner.emit.deployment import Deployment, deployment
from planner.emit.staging import staged
from planner.result import write_atomic

if TYPE_CHECKING:
    from planner.result import PlanResult

EMITTERS: dict[str, Callable[[Deployment, Path], list[Path]]] = {
    "vllm": vllm.emit, "sglang": sglang.emit, "trtllm": trtllm.emit, "dynamo": dynamo.emit, "k8s": k8s.emit,
    "ascend": ascend.emit,
}
TARGETS = tuple(EMITTERS)
# The engine whose constants (memory fraction, batch limits) a target's files use.
ENGINE_OF = {"vllm": "vllm", "sglang": "sglang", "trtllm": "trtllm", "dynamo": "vllm", "ascend": "vllm"}


def parse_targets(text: str) -> list[str]:
    """`vllm,k8s` -> ['vllm', 'k8s'], rejecting unknown names in one sentence."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in EMITTERS]
    if bad or not names:
        raise PlannerInputError(f"--emit: unknown target {', '.join(bad) or '(none)'}; use a comma list of "
                                f"{', '.join(TARGETS)}")
    return names


def emit(result: PlanResult, target: str, out_dir: str | Path, top: int = 1) -> list[Path]:
    """Write `out_dir/<target>/plan-<rank>/` for each of the `top` best plans; return the written paths.

    A plan the target cannot express (say, vLLM with experts over part of the TP group, or any plan of an
    NVIDIA cluster for `ascend`) is skipped and listed with the reason in `<target>/SKIPPED.md`, so one
    target never stops the others. The folder is built aside and renamed into place (planner.emit.staging).
    """
    if target not in EMITTERS:
        raise PlannerInputError(f"emit target '{target}' is unknown; use one of {', '.join(TARGETS)}")
    if top < 1:
        raise PlannerInputError(f"top={top}: emit at least 1 plan")
    if not result.plans:
        raise PlannerInputError("no feasible plan to emit; relax the objectives or add devices")
    final = Path(out_dir) / target
    with staged(final) as stage:
        paths: list[Path] = []
        skipped: list[str] = []
        for plan in result.plans[:top]:
            engine = ENGINE_OF.get(target, result.request.get("engine", "vllm"))
            try:
                dep = deployment(plan, result.request, engine)
                paths += EMITTERS[target](dep, stage / f"plan-{plan.rank}")
            except PlannerInputError as exc:
                skipped.append(f"- {exc}")
        if skipped:
            text = f"# Plans not emitted for {target}\n\n" + "\n".join(skipped) + "\n"
            paths.append(write_atomic(stage / "SKIPPED.md", text))
    return [final / p.relative_to(stage) for p in paths]
