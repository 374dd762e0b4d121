"""Check emitted command lines and config keys against the flags recorded from each engine's source.

`flags/<engine>-<version>.yaml` lists, per command (`vllm serve`, `trtllm-serve`, ...), the flags it accepts
with their value types and where they were read: the newer records every option of the released
package's own parsers (written by planner/emit/tools/record_flags.py; a flag's source is then its
command's), the older ones the flags the emitters wrote, read by hand from source files. Emitters run these
checks before writing, and the tests run them on every emitted file, so a typo, a flag the pinned
version lacks or a value of the wrong form (`--kv-cache-dtype fp8` on SGLang, `--tp-size two`) fails.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

FLAGS_DIR = Path(__file__).parent / "flags"
TYPES = ("int", "float", "str", "flag", "bool_optional", "choice", "json", "bool")
_INT = re.compile(r"^-?\d+$")
_SHELL_VALUE = re.compile(r"^\$(\{[A-Za-z_][A-Za-z0-9_:#%*/-]*\}|[A-Za-z_][A-Za-z0-9_]*|\(\(.+\)\))$")
_ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Flag:
    name: str
    type: str
    source: str
    choices: tuple[str, ...] = ()
    nargs: int | str = 1  # values one occurrence takes: argparse's N, "+", "*" or "?"
    deprecated: bool = False  # the engine's help calls it deprecated: emitters must not write it


@dataclass(frozen=True)
class Command:
    """One command line (its leading words, e.g. `vllm serve`) and the flags it accepts."""

    name: str
    words: tuple[str, ...]
    positional: tuple[str, ...]  # names; `name?` optional, `name*` any number
    flags: dict[str, Flag]
    source: str


@dataclass(frozen=True)
class Spec:
    engine: str
    version: str
    commands: dict[str, Command]
    configs: dict[str, dict[str, Flag]]


def _flags(raw: dict[str, Any], where: str, source: str = "") -> dict[str, Flag]:
    """Flags by every name they answer to (aliases too); `source` is the command's, for flags without one."""
    out = {}
    for name, f in (raw or {}).items():
        if f["type"] not in TYPES:
            raise ValueError(f"{where}: flag {name} has unknown type {f['type']!r}; use one of {TYPES}")
        if not (f.get("source") or source):
            raise ValueError(f"{where}: flag {name} has no source file")
        nargs = f.get("nargs", 1)
        flag = Flag(name, f["type"], f.get("source") or source, tuple(str(c) for c in f.get("choices", ())),
                    nargs if nargs in ("+", "*", "?") else int(nargs), bool(f.get("deprecated")))
        for alias in (name, *f.get("aliases", ())):
            out[alias] = flag
    return out


def spec(files: str | list[str] | tuple[str, ...]) -> Spec:
    """The recorded flags of one pinned engine version (`vllm-0.11.yaml`), or of several records together
    (an engine and the router its deployments run): the first names the engine and version."""
    names = (files,) if isinstance(files, str) else tuple(files)
    parts = [_spec(n) for n in names]
    return Spec(parts[0].engine, parts[0].version, {k: v for p in parts for k, v in p.commands.items()},
                {k: v for p in parts for k, v in p.configs.items()})


@cache
def _spec(filename: str) -> Spec:
    raw = yaml.safe_load((FLAGS_DIR / filename).read_text())
    commands = {}
    for name, c in raw["commands"].items():
        flags = _flags(c.get("flags"), f"{filename} {name}", c.get("source", ""))
        inherit = c.get("inherit")
        if inherit:
            base = _spec(inherit["file"]).commands[inherit["command"]].flags
            flags = {**{k: v for k, v in base.items() if k not in set(inherit.get("exclude", []))}, **flags}
        commands[name] = Command(name, tuple(name.split()), tuple(c.get("positional", [])), flags, c["source"])
    configs = {name: _flags(c["keys"], f"{filename} {name}") for name, c in (raw.get("configs") or {}).items()}
    return Spec(raw["engine"], str(raw["version"]), commands, configs)


def _value_error(flag: Flag, value: str) -> str | None:
    """Why `value` is not a valid value of `flag`, or None."""
    runtime = bool(_SHELL_VALUE.match(value))
    if flag.type == "int":
        return None if _INT.match(value) or runtime else f"{flag.name} takes a whole number, got {value!r}"
    if flag.type == "float":
        if runtime:
            return None
        try:
            float(value)
        except ValueError:
            return f"{flag.name} takes a number, got {value!r}"
        return None
    if flag.type == "choice":
        return None if value in flag.choices else f"{flag.name} takes one of {list(flag.choices)}, got {value!r}"
    if flag.type == "json":
        try:
            return None if isinstance(json.loads(value), dict) else f"{flag.name} takes a JSON object"
        except json.JSONDecodeError:
            return f"{flag.name} takes a JSON object, got {value!r}"
    if flag.type == "str":
        return f"{flag.name} needs a value" if value.startswith("--") else None
    return None


def check_argv(argv: list[str], command: Command) -> list[str]:
    """Errors in one command's argv (starting at its leading words); empty when every flag is known."""
    errors: list[str] = []
    args = argv[len(command.words):]
    positional = 0
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            positional += 1
            i += 1
            continue
        name, eq, inline = tok.partition("=")
        flag = command.flags.get(name)
        if flag is None and name.startswith("--no-"):
            neg = command.flags.get("--" + name[5:])
            flag = neg if neg and neg.type == "bool_optional" else None
            if flag is not None:
                if eq:
                    errors.append(f"{name} takes no value")
                i += 1
                continue
        if flag is None:
            errors.append(f"`{command.name}` has no flag {name} in the recorded {command.source}")
            i += 1
            continue
        if flag.deprecated:
            errors.append(f"{name} is deprecated in the recorded {command.source}")
        if flag.type in ("flag", "bool_optional"):
            if eq:
                errors.append(f"{name} is a switch and takes no value, got {inline!r}")
            i += 1
            continue
        if flag.nargs != 1 and not eq:
            values = _values(args[i + 1:], flag.nargs)
            if values is None:
                errors.append(f"{name} takes {flag.nargs} value(s)")
                values = []
            errors += [e for v in values if (e := _value_error(flag, v))]
            i += 1 + len(values)
            continue
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(args):
            value = args[i + 1]
            i += 2
        else:
            errors.append(f"{name} needs a value")
            break
        err = _value_error(flag, value)
        if err:
            errors.append(err)
    required = sum(1 for p in command.positional if p[-1] not in "?*")
    most = math.inf if any(p.endswith("*") for p in command.positional) else len(command.positional)
    if not required <= positional <= most:
        errors.append(f"`{command.name}` takes {required}..{most} positional argument(s), got {positional}")
    return errors


def _values(rest: list[str], nargs: int | str) -> list[str] | None:
    """The values a flag with `nargs` takes from the words after it, or None when too few follow."""
    free = next((k for k, t in enumerate(rest) if t.startswith("--")), len(rest))
    if isinstance(nargs, int):
        return rest[:nargs] if free >= nargs else None
    if nargs == "?":
        return rest[:min(free, 1)]
    return rest[:free] if free or nargs == "*" else None


def _logical_lines(script: str) -> Iterator[str]:
    buf = ""
    for line in script.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield buf + line
        buf = ""
    if buf:
        yield buf


def _split_commands(tokens: list[str]) -> Iterator[list[str]]:
    """Shell tokens cut at `&&`, `||`, `;`, `|` and `&`, less leading `exec` and VAR=value words."""
    part: list[str] = []
    for tok in [*tokens, ";"]:
        if tok in ("&&", "||", ";", "|", "&"):
            while part and (part[0] == "exec" or _ENV_ASSIGN.match(part[0])):
                part = part[1:]
            if part:
                yield part
            part = []
        else:
            part.append(tok)


def commands_in_script(script: str) -> list[list[str]]:
    """Every simple command in a shell script, as argv lists."""
    out = []
    for line in _logical_lines(script):
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError as exc:
            raise ValueError(f"cannot parse shell line {line!r}: {exc}") from exc
        out += list(_split_commands(tokens))
    return out


def check_commands(argvs: Iterable[list[str]], sp: Spec) -> tuple[list[str], int]:
    """Errors in every argv that starts with one of `sp`'s commands, and how many were checked."""
    errors, checked = [], 0
    by_len = sorted(sp.commands.values(), key=lambda c: -len(c.words))
    for argv in argvs:
        for cmd in by_len:
            if tuple(argv[:len(cmd.words)]) == cmd.words:
                checked += 1
                errors += [f"{' '.join(argv[:4])} ...: {e}" for e in check_argv(argv, cmd)]
                break
    return errors, checked


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def check_config(config: dict[str, Any], keys: dict[str, Flag]) -> list[str]:
    """Errors in a YAML config (nested keys dotted) against the recorded keys and value types."""
    errors = []
    for key, value in _flatten(config):
        flag = keys.get(key)
        if flag is None:
            errors.append(f"config key {key} is not among the recorded keys")
            continue
        ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "str": isinstance(value, str), "choice": str(value) in flag.choices}.get(flag.type, False)
        if not ok:
            errors.append(f"config key {key} takes a {flag.type}"
                          f"{' in ' + str(list(flag.choices)) if flag.choices else ''}, got {value!r}")
    return errors


def container_argvs(manifest: dict[str, Any]) -> list[list[str]]:
    """Command lines of every container in a Kubernetes object (`sh -c SCRIPT` is parsed as a script)."""
    out: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "image" in node and ("command" in node or "args" in node):
                argv = [*node.get("command", []), *node.get("args", [])]
                if len(argv) >= 3 and argv[0] in ("/bin/sh", "sh", "/bin/bash", "bash") and argv[1] == "-c":
                    out.extend(commands_in_script(argv[2]))
                else:
                    out.append(argv)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(manifest)
    return out
