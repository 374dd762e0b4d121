"""The built-in model catalog: HF config.json files with a `_catalog` block naming their source;
beyond it, config.json paths and Hugging Face ids already in the local HF cache (read offline)."""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

from costmodel.families import from_hf_config
from costmodel.models import ModelSpec
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
def by_name(short: str, vision: bool = True) -> ModelSpec:
    raw = entries()[short]
    meta = raw["_catalog"]
    return from_hf_config(raw, name=short, hf_id=meta["hf_id"], where=f"catalog model {short}", vision=vision,
                          quant=meta.get("hf_quant_config"))


def hf_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub keeps downloaded repos: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    dirs = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_HOME") and str(Path(os.environ["HF_HOME"]) / "hub")]
    return [Path(d) for d in dirs if d] + [Path.home() / ".cache" / "huggingface" / "hub"]


def cached_config(hf_id: str) -> Path | None:
    """config.json of `hf_id` ('org/name') in the local HF cache: the snapshot refs/main names, else the
    newest snapshot holding one; None when no cache has it."""
    if hf_id.count("/") != 1:
        return None
    for hub in hf_cache_dirs():
        repo = hub / f"models--{hf_id.replace('/', '--')}"
        ref = repo / "refs" / "main"
        snaps = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
        snaps += sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True) \
            if (repo / "snapshots").is_dir() else []
        found = next((d / "config.json" for d in snaps if (d / "config.json").is_file()), None)
        if found:
            return found
    return None


def from_file(path: Path, name: str, hf_id: str = "", vision: bool = True) -> ModelSpec:
    """A config.json on disk, with the ModelOpt hf_quant_config.json beside it when there is one."""
    quant = path.parent / "hf_quant_config.json"
    return from_hf_config(read_mapping(path, "model file"), name=name, hf_id=hf_id, where=f"model file {path}",
                          vision=vision, quant=read_mapping(quant, "quant config") if quant.is_file() else None)


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


def model(ref: str | Path | dict[str, Any] | ModelSpec | Any, vision: bool = True) -> ModelSpec:
    """A ModelSpec from a catalog name or HF id (any case), an HF id in the local HF cache, a
    config.json path, a dict, or a torch module (optionally `(module, example_input_or_shape)`,
    traced by costmodel.torch_import). `vision=False` leaves a multimodal checkpoint's tower out."""
    if isinstance(ref, ModelSpec):
        return ref
    if isinstance(ref, dict):
        return from_hf_config(ref, where="model config", vision=vision)
    module = _torch_module(ref)
    if module is not None:  # a torch.nn.Module, or (module, example input or its shape): traced
        from costmodel.torch_import import from_module

        return from_module(*module)
    text = str(ref).strip()
    if not text:
        raise PlannerInputError("model: the name is empty; give a catalog name or a config.json path")
    short = _index().get(text.lower())
    if short:
        return by_name(short, vision)
    p = Path(text)
    if p.is_dir():
        p = p / "config.json"
    if p.suffix == ".json" or p.is_file():
        return from_file(p, (p.parent.name if p.name == "config.json" else p.stem) or p.stem, vision=vision)
    cached = cached_config(text)
    if cached:
        return from_file(cached, text.split("/")[-1], hf_id=text, vision=vision)
    raise unknown("model", text, list(_index()), "or give a path to a HF config.json, or an HF id whose config is "
                  "in the local Hugging Face cache; see `planner models`")
