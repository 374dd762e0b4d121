"""The built-in model catalog: HF config.json files with a `_catalog` block naming their source."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any

from costmodel.models import ModelSpec, from_hf_config
from hardware.errors import PlannerInputError
from hardware.loading import read_mapping, unknown

DATA = Path(__file__).parent / "data" / "models"


@cache
def entries() -> dict[str, dict[str, Any]]:
    """Catalog entries by short name: the raw config with its `_catalog` block."""
    out = {}
    for f in sorted(DATA.glob("*.json")):
        raw = read_mapping(f)
        out[raw["_catalog"]["name"].lower()] = raw
    return out


@cache
def _index() -> dict[str, str]:
    """Lower-case short name, HF id and aliases -> short name."""
    idx: dict[str, str] = {}
    for short, raw in entries().items():
        meta = raw["_catalog"]
        for key in [short, meta["hf_id"], *meta.get("aliases", [])]:
            idx[key.lower()] = short
    return idx


@cache
def by_name(short: str) -> ModelSpec:
    raw = entries()[short]
    meta = raw["_catalog"]
    return from_hf_config(raw, name=short, hf_id=meta["hf_id"], where=f"catalog model {short}")


def _torch_module(ref: Any) -> tuple[Any, Any] | None:
    """(module, example) when `ref` is a torch module or a (module, example) pair; torch is only
    looked at when the caller has imported it (a module cannot exist otherwise)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if isinstance(ref, torch.nn.Module):
        return ref, None
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], torch.nn.Module):
        return ref[0], ref[1]
    return None


def model(ref: str | Path | dict[str, Any] | ModelSpec | Any) -> ModelSpec:
    """A ModelSpec from a catalog name or HF id (any case), a config.json path, a dict, or a torch
    module (optionally `(module, example_input_or_shape)`, traced by costmodel.torch_import)."""
    if isinstance(ref, ModelSpec):
        return ref
    if isinstance(ref, dict):
        return from_hf_config(ref, where="model config")
    module = _torch_module(ref)
    if module is not None:  # a torch.nn.Module, or (module, example input or its shape): traced
        from costmodel.torch_import import from_module

        return from_module(*module)
    text = str(ref).strip()
    if not text:
        raise PlannerInputError("model: the name is empty; give a catalog name or a config.json path")
    short = _index().get(text.lower())
    if short:
        return by_name(short)
    p = Path(text)
    if p.is_dir():
        p = p / "config.json"
    if p.suffix == ".json" or p.is_file():
        return from_hf_config(read_mapping(p), name=p.parent.name or p.stem, where=f"model file {p}")
    raise unknown("model", text, list(_index()), "or give a path to a HF config.json; see `planner models`")
