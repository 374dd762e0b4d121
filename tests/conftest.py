"""Shared fixtures: paths to the measured data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SILICON = SHARED / "serving" / "aiconfigurator_silicon_visible.csv"


@pytest.fixture
def silicon_csv() -> Path:
    if not SILICON.exists():
        pytest.skip("shared/data is not beside this checkout")
    return SILICON
