"""A target folder written whole or not at all: build it in a hidden sibling, then rename it into place.

A run killed mid-write leaves no partial `<target>/` (the old folder, if any, stays as it was); the hidden
`.<target>.<pid>.*.tmp` it leaves behind (a SIGKILL runs no cleanup) is removed by the next emit into
the same folder once that process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUFFIX = ".tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def leftovers(final: Path) -> list[Path]:
    """Hidden staging folders of `final` whose emitting process has ended."""
    out = []
    for p in final.parent.glob(f".{final.name}.*{SUFFIX}"):
        pid = p.name[len(final.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(p)
    return sorted(out)


@contextmanager
def staged(final: Path) -> Iterator[Path]:
    """Yield an empty folder to build `final` in; on success it replaces `final` by renames only."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for old in leftovers(final):
        shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}.", suffix=SUFFIX))
    try:
        yield stage
        if final.exists():
            previous = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}.", suffix=SUFFIX))
            os.replace(final, previous / final.name)
            os.replace(stage, final)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
