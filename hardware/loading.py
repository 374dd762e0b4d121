"""Reading spec files and turning validation failures into one clear sentence."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hardware.errors import PlannerInputError, UnknownNameError

M = TypeVar("M", bound=BaseModel)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON file into a dict, or raise one sentence naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PlannerInputError(f"cannot read {p}: {exc.strerror}; check the path") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        where = getattr(exc, "problem_mark", None) or getattr(exc, "lineno", None)
        raise PlannerInputError(
            f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}"
            f"{f' (near {where})' if where else ''}; fix the syntax"
        ) from None
    if not isinstance(data, dict):
        raise PlannerInputError(f"{p} must hold a mapping of fields, not {type(data).__name__}")
    return data


def validation_sentence(exc: ValidationError, what: str) -> str:
    """The first validation error as 'what: field: problem'."""
    err = exc.errors()[0]
    field = ".".join(str(x) for x in err["loc"]) or "(root)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif err["type"] == "missing":
        msg = "required field is missing; add it"
    return f"{what}: field '{field}': {msg}"


def build(model: type[M], data: Any, what: str) -> M:
    """Validate `data` as `model`, raising PlannerInputError with one clear sentence."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PlannerInputError(validation_sentence(exc, what)) from None


def unknown(kind: str, name: str, known: list[str], hint: str = "") -> UnknownNameError:
    """An UnknownNameError that suggests the closest known name."""
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.4)
    suggestion = f"; did you mean '{close[0]}'?" if close else ""
    extra = f" ({hint})" if hint else ""
    return UnknownNameError(f"unknown {kind} '{name}'{suggestion}{extra}")


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
