"""Write an engine version's flag record (planner/emit/flags/<engine>-<version>.yaml) from its own parsers.

Run it where the released engine package is importable (a scratch venv with the wheel installed
`--no-deps` plus the few modules its argument code imports is enough; no GPU, no CUDA libraries):

    python -m planner.emit.tools.record_flags vllm 0.34.0 planner/emit/flags/vllm-0.34.0.yaml

It builds each command's real `argparse` parser the way the engine's entry point does and writes every
option it accepts: the option strings, the value type (found by calling the parser's own `type`
callable on sample values), choices, nargs, and whether the help calls it deprecated. A new engine
release is a rerun of this script and a new data file. The committed records were made so (docs/deploy.md):

    python -m venv --system-site-packages /tmp/rec && /tmp/rec/bin/pip install --no-deps vllm==0.34.0 \
        vllm-router==0.1.17 sglang==0.5.23 sglang-router==0.3.2 ai-dynamo==1.6.1 ai-dynamo-runtime==1.6.1
    # then each module the import chain names as missing (psutil, pyzmq, fastapi, msgspec, ...), and
    VLLM_TARGET_DEVICE=cpu /tmp/rec/bin/python -m planner.emit.tools.record_flags vllm 0.34.0 FILE
    # dynamo with vllm==0.31.0 installed (ai-dynamo 1.6.1 pins it), vllm-ascend with vllm==0.23.0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Reader:
    """How to build one command's parser: `module:function(parser)` that adds the arguments."""

    command: str  # the words a launch script writes, e.g. `vllm serve`
    builder: str  # `module:callable`; called with a fresh parser (or `parser_class`) and must add options
    source: str  # where in the released package the parser is defined
    # `argparse:ArgumentParser` etc.; None: `builder` is an entry point that builds its own parser and parses
    # argv, and the parser is taken at that parse call
    parser_class: str | None = "argparse:ArgumentParser"
    extra_choices: tuple[tuple[str, str, str], ...] = ()  # (flag, choice, source) a platform plugin adds
    # (flag, `module:attr` list of values, source): choices the parser checks in its converter, not argparse
    choices_from: tuple[tuple[str, str, str], ...] = ()
    # packages imported at module level by code beside the parser (image datasets) that need a matching
    # CUDA build to import; stood in for by empty modules, since building the parser never calls them
    placeholders: tuple[str, ...] = ()
    # `module:Class` of the platform to build under where the release cannot infer one without a GPU
    platform: str | None = None


VLLM_QUANT = ("--quantization", "vllm.model_executor.layers.quantization:QUANTIZATION_METHODS",
              "vllm/model_executor/layers/quantization/__init__.py QUANTIZATION_METHODS (checked by EngineArgs)")
READERS: dict[str, tuple[str, tuple[Reader, ...]]] = {
    # engine: (distributions on the package index whose installed versions the record names, commands)
    "vllm": ("vllm", (
        Reader("vllm serve", "vllm.entrypoints.common.cli_args:make_arg_parser",
               "vllm/entrypoints/common/cli_args.py make_arg_parser (EngineArgs.add_cli_args + frontend args)",
               "vllm.utils.argparse_utils:FlexibleArgumentParser", choices_from=(VLLM_QUANT,)),
        Reader("vllm bench serve", "vllm.benchmarks.serve:add_cli_args", "vllm/benchmarks/serve.py add_cli_args",
               "vllm.utils.argparse_utils:FlexibleArgumentParser"),
    )),
    "vllm-router": ("vllm-router", (
        Reader("vllm-router", "vllm_router.router_args:RouterArgs.add_cli_args",
               "vllm_router/router_args.py RouterArgs.add_cli_args (console script vllm-router)"),
    )),
    "sglang": ("sglang", (
        Reader("python3 -m sglang.launch_server", "sglang.srt.server_args:ServerArgs.add_cli_args",
               "sglang/srt/server_args.py ServerArgs.add_cli_args"),
        Reader("python3 -m sglang.benchmark.serving", "sglang.benchmark.serving:cli_main",
               "sglang/benchmark/serving.py cli_main (sglang.bench_serving is deprecated in its favour)", None,
               placeholders=("torchvision",)),
    )),
    "sglang-router": ("sglang-router", (
        Reader("python3 -m sglang_router.launch_router", "sglang_router.router_args:RouterArgs.add_cli_args",
               "sglang_router/router_args.py RouterArgs.add_cli_args"),
    )),
    "dynamo": ("ai-dynamo ai-dynamo-runtime vllm", (  # ai-dynamo 1.6.1's `vllm` extra pins vllm==0.31.0
        Reader("python3 -m dynamo.frontend", "dynamo.frontend.main:parse_args", "dynamo/frontend/main.py parse_args",
               None),
        Reader("python3 -m dynamo.vllm", "dynamo.vllm.args:_parse_cli_args",
               "dynamo/vllm/args.py _parse_cli_args (Dynamo's groups + vLLM's AsyncEngineArgs.add_cli_args)", None),
    )),
    "vllm-ascend": ("vllm", (  # the plugin keeps vLLM's CLI; install the vLLM release it pairs with
        Reader("vllm serve", "vllm.entrypoints.openai.cli_args:make_arg_parser",
               "vllm/entrypoints/openai/cli_args.py make_arg_parser, with the vllm-ascend platform plugin",
               "vllm.utils.argparse_utils:FlexibleArgumentParser", choices_from=(VLLM_QUANT,),
               platform="vllm.platforms.cpu:CpuPlatform",
               extra_choices=(("--quantization", "ascend",
                               "vllm_ascend/platform.py NPUPlatform.pre_register_and_update appends "
                               "ASCEND_QUANTIZATION_METHOD = 'ascend' (vllm_ascend/utils.py) to --quantization's "
                               "choices (vllm-ascend sdist on PyPI)"),)),
        Reader("vllm bench serve", "vllm.benchmarks.serve:add_cli_args", "vllm/benchmarks/serve.py add_cli_args",
               "vllm.utils.argparse_utils:FlexibleArgumentParser"),
    )),
}


def _resolve(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _accepts(convert: Callable[[str], Any], text: str) -> Any:
    try:
        return convert(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError, json.JSONDecodeError):
        return None
    except Exception:  # an engine's converter may raise its own error type; a rejection all the same
        return None


def value_type(action: argparse.Action) -> str:
    """The record's type of one option: what the parser's own converter accepts decides it."""
    if action.nargs == 0:
        return "bool_optional" if isinstance(action, argparse.BooleanOptionalAction) else "flag"
    if action.choices is not None or isinstance(action.metavar, list):
        return "choice"
    convert = action.type
    if convert is None or convert is str:
        return "str"
    if _accepts(convert, "7") is not None and _accepts(convert, "7.5") is None:
        return "int"
    if isinstance(_accepts(convert, "7.5"), float):
        return "float"
    if _accepts(convert, "{}") is not None and _accepts(convert, "x") is None:
        return "json"
    return "str"


def _nargs(action: argparse.Action) -> int | str | None:
    if action.nargs in (None, 0, 1) or isinstance(action, argparse.BooleanOptionalAction):
        return None
    return action.nargs if isinstance(action.nargs, (int, str)) else None


def flags_of(parser: argparse.ArgumentParser, extra: tuple[tuple[str, str, str], ...] = (),
             choices_from: tuple[tuple[str, str, str], ...] = ()) -> dict[str, Any]:
    """Every long option of `parser` as a record entry (aliases share one entry under the first name)."""
    out: dict[str, Any] = {}
    # groups may hold actions another parser parses (Dynamo hands unknown flags to vLLM's parser)
    grouped = [a for g in parser._action_groups for a in g._group_actions]
    for action in dict.fromkeys([*parser._actions, *grouped]):
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            longs = [s for s in longs if not s.startswith("--no-")]
        entry: dict[str, Any] = {"type": value_type(action)}
        if entry["type"] == "choice":  # vLLM lists them as the metavar to keep its help short
            entry["choices"] = sorted({str(c) for c in (action.choices or action.metavar)})
        if (n := _nargs(action)) is not None:
            entry["nargs"] = n
        if len(longs) > 1:
            entry["aliases"] = longs[1:]
        if "deprecat" in str(action.help or "").lower() or getattr(action, "deprecated", False):
            entry["deprecated"] = True
        out[longs[0]] = entry
    for flag, values, source in choices_from:
        out[flag] |= {"type": "choice", "choices": sorted(str(v) for v in _resolve(values)), "source": source}
    for flag, choice, source in extra:
        out[flag]["choices"] = sorted({*out[flag]["choices"], choice})
        out[flag]["source"] = source
    return out


class _Placeholder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules under the given package names; any attribute is a do-nothing class."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> Any:
        return None

    def exec_module(self, module: Any) -> None:
        module.__path__ = []
        module.__version__ = "0"
        module.__file__ = f"<placeholder for {module.__name__}>"
        module.__getattr__ = lambda name: type(name, (), {})


class _CapturedError(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _capture(entry: Callable[..., Any]) -> argparse.ArgumentParser:
    """The parser an entry point builds, taken when it first parses (so nothing after that runs)."""
    def grab(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _CapturedError(self)

    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_known_args = grab  # type: ignore[method-assign]
    try:
        entry([]) if _takes_argv(entry) else entry()
    except _CapturedError as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved  # type: ignore[method-assign]
    raise RuntimeError(f"{entry} returned without parsing arguments")


def _takes_argv(entry: Callable[..., Any]) -> bool:
    import inspect

    return bool(inspect.signature(entry).parameters)


def positionals(parser: argparse.ArgumentParser) -> list[str]:
    """Positional arguments in order; `name?` is optional, `name*` takes any number."""
    return [a.dest + (a.nargs if a.nargs in ("?", "*") else "") for a in parser._actions if not a.option_strings]


def record(engine: str, version: str) -> dict[str, Any]:
    dists, readers = READERS[engine]
    installed = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in dists.split())
    commands = {}
    for r in readers:
        if r.platform:  # vllm.platforms keeps the resolved platform in _current_platform
            importlib.import_module("vllm.platforms")._current_platform = _resolve(r.platform)()
        if r.placeholders:
            sys.meta_path.insert(0, _Placeholder(r.placeholders))
        if r.parser_class is None:
            parser = _capture(_resolve(r.builder))
        else:
            parser = _resolve(r.parser_class)()
            built = _resolve(r.builder)(parser)
            parser = built if isinstance(built, argparse.ArgumentParser) else parser
        commands[r.command] = {"source": r.source, "positional": positionals(parser),
                               "flags": flags_of(parser, r.extra_choices, r.choices_from)}
    return {"engine": engine, "version": version,
            "read_from": f"{installed} (released packages from PyPI), by planner/emit/tools/record_flags.py",
            "commands": commands}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("engine", choices=sorted(READERS))
    ap.add_argument("version", help="the version the record is named for, e.g. 0.34.0")
    ap.add_argument("out", help="the YAML file to write (engines log to stdout while they import)")
    a = ap.parse_args(argv)
    rec = record(a.engine, a.version)
    head = (f"# {a.engine} {a.version}: every option of the commands the emitters write, read from the\n"
            f"# engine's own argument parsers by planner/emit/tools/record_flags.py (do not edit by hand).\n")
    Path(a.out).write_text(head + yaml.safe_dump(rec, sort_keys=False, width=1000, default_flow_style=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
