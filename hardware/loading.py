"""Reading spec files and turning validation failures into one clear sentence."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from hardware.errors import PlannerInputError, UnknownNameError

M = TypeVar("M", bound=BaseModel)


class Checked(BaseModel):
    """A spec whose numbers are numbers: pydantic's lax mode would read `true` as 1 and let NaN and
    infinity through every bound; inputs at the edge (files, dicts, flags) get neither."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                info = cls.model_fields.get(name)
                if isinstance(value, bool) and info is not None and not _takes_bool(info.annotation):
                    raise ValueError(f"'{name}' is {str(value).lower()}, a boolean; give a number")
        return data


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or bool in get_args(annotation) or annotation is Any


def read_text(path: str | Path, what: str = "") -> str:
    """A text file's contents, or one sentence naming the file (missing, a folder, not UTF-8 text)."""
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlannerInputError(f"{label} is not UTF-8 text (undecodable byte at offset {exc.start}); "
                                "give the text file itself, not a binary or compressed one") from None
    except OSError as exc:
        raise PlannerInputError(f"cannot read {label}: {exc.strerror}; check the path") from None


def read_mapping(path: str | Path, what: str = "") -> dict[str, Any]:
    """Parse a YAML or JSON file into a dict, or raise one sentence naming the file (`what` says its role)."""
    p = Path(path)
    text = read_text(p, what)
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
    field = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif err["type"] == "missing":
        msg = "required field is missing; add it"
    return f"{what}: field '{field}': {msg}" if field else f"{what}: {msg}"


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


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, what: str, path: Path) -> None:
    """Create and drop a temp file in `folder`: the one check that holds for root and read-only mounts."""
    if not folder.is_dir():
        raise PlannerInputError(f"{what} {path}: {folder} is a file, not a folder; choose a path under a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PlannerInputError(f"{what} {path}: cannot write in {folder} ({exc.strerror}); "
                                "choose a writable folder") from None


def check_out_dir(path: str | Path, what: str) -> Path:
    """`path` is a folder we can write into, or can be created as one; checked before any work is done."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PlannerInputError(f"{what} {p} is an existing file; give a folder (new or existing) instead")
    _probe(_nearest_existing(p), what, p)
    return p


def check_out_file(path: str | Path, what: str) -> Path:
    """`path` can be written as a file (it is not a folder, and its folder is writable or can be made)."""
    p = Path(path)
    if p.is_dir():
        raise PlannerInputError(f"{what} {p} is a folder; give a file path, e.g. {p / 'out.json'}")
    _probe(_nearest_existing(p.parent), what, p)
    return p


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
