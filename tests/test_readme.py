"""README's test command is the one CI runs, and it needs nothing the dev extra does not install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    """The one-line commands of README's fenced blocks, in order."""
    blocks = re.findall(r"```\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks if "\n" not in b.strip()]


def test_ci_runs_readmes_test_command_as_written() -> None:
    test_command = next(c for c in _commands() if "pytest" in c)
    assert test_command == 'pip install -e ".[dev]" && ruff check . && python -m pytest'
    lines = [x.strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert lines[-1] == test_command  # the last thing CI does, so its exit status is CI's


def test_the_dev_extra_holds_what_the_tests_import_and_torch_stays_optional() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = {re.split(r"[<>=\[ ]", r)[0] for r in project["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "hypothesis", "kubernetes-validate"} <= dev
    assert not any(r.startswith("torch") for r in project["dependencies"])
    assert not any(r.startswith("torch") for r in project["optional-dependencies"]["dev"])
