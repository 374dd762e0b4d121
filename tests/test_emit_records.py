"""The flag records: the recorder reads an argparse parser faithfully, and every record loads into a
checker that accepts what the parser accepts and rejects what it rejects."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from planner.emit import argcheck
from planner.emit.tools.record_flags import flags_of, positionals

RECORDS = sorted(p.name for p in argcheck.FLAGS_DIR.glob("*.yaml"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int)
    p.add_argument("--mem", type=float)
    p.add_argument("--mode", choices=["prefill", "decode"])
    p.add_argument("--dtype", type=str, metavar=["auto", "fp8"])  # vLLM lists choices as the metavar
    p.add_argument("--fast", action="store_true")
    p.add_argument("--chunked", action=argparse.BooleanOptionalAction)
    p.add_argument("--kv-config", type=lambda s: json.loads(s) if s.startswith("{") else int("x"))
    p.add_argument("--prefill", nargs="+")
    p.add_argument("--old", action="store_true", help="Deprecated: use --fast.")
    return p


def _command(parser: argparse.ArgumentParser) -> argcheck.Command:
    raw = {"source": "test parser", "positional": positionals(parser), "flags": flags_of(parser)}
    text = yaml.safe_dump(raw, default_flow_style=None)  # the record goes through YAML as it would on disk
    loaded = yaml.safe_load(text)
    return argcheck.Command("serve", ("serve",), tuple(loaded["positional"]),
                            argcheck._flags(loaded["flags"], "test", "test parser"), "test parser")


def test_the_recorder_reads_types_choices_nargs_aliases_and_deprecation():
    f = flags_of(_parser())
    assert f["--tp-size"] == {"type": "int", "aliases": ["--tensor-parallel-size"]}
    assert f["--mem"] == {"type": "float"} and f["--fast"] == {"type": "flag"}
    assert f["--mode"] == {"type": "choice", "choices": ["decode", "prefill"]}
    assert f["--dtype"] == {"type": "choice", "choices": ["auto", "fp8"]}
    assert f["--chunked"] == {"type": "bool_optional"} and f["--kv-config"] == {"type": "json"}
    assert f["--prefill"] == {"type": "str", "nargs": "+"} and f["--old"]["deprecated"] is True
    assert positionals(_parser()) == ["model?"]


@pytest.mark.parametrize("argv", [
    ["serve", "m", "--tp-size", "2", "--mem", "0.9", "--mode", "decode", "--dtype", "fp8", "--fast", "--no-chunked",
     "--kv-config", '{"a": 1}', "--prefill", "http://p:1", "8998"],
    ["serve", "--tensor-parallel-size", "4", "--chunked"],
])
def test_the_checker_accepts_what_the_parser_accepts(argv):
    _parser().parse_args(argv[1:])
    assert argcheck.check_argv(argv, _command(_parser())) == []


@pytest.mark.parametrize("argv", [
    ["serve", "--tp-size", "two"], ["serve", "--mode", "both"],
    ["serve", "--fast=1"], ["serve", "--kv-config", "x"], ["serve", "--prefill"], ["serve", "--tp-sise", "2"],
    ["serve", "a", "b"],
])
def test_the_checker_rejects_what_the_parser_rejects(argv):
    with pytest.raises(SystemExit):
        _parser().parse_args(argv[1:])
    assert argcheck.check_argv(argv, _command(_parser()))


def test_metavar_choices_are_checked_as_the_engine_checks_them_later():
    assert argcheck.check_argv(["serve", "--dtype", "fp4"], _command(_parser()))  # vLLM's config rejects it


def test_deprecated_flags_are_refused_in_emitted_commands():
    assert argcheck.check_argv(["serve", "--old"], _command(_parser())) == ["--old is deprecated in the recorded "
                                                                          "test parser"]


@pytest.mark.parametrize("name", RECORDS)
def test_every_record_loads_names_its_release_and_rejects_a_typo(name):
    sp = argcheck.spec(name)
    raw = yaml.safe_load((argcheck.FLAGS_DIR / name).read_text())
    assert raw.get("read_from") or raw.get("commit")  # the newer cite the released packages, the older a commit
    if raw.get("read_from"):
        assert raw["version"] in name and "PyPI" in raw["read_from"]
    for cmd in sp.commands.values():
        assert cmd.flags and all(f.source for f in cmd.flags.values())
        assert argcheck.check_argv([*cmd.words, "--no-such-flag-here"], cmd)
