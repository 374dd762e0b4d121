"""The measure-and-learn loop on this machine, as a user runs it: plan -> verify (which calibrates an
unmeasured machine first) -> calibrate --from-runs -> plan with what was learned -> verify, closed and
open loop, on tiny-llama with real torch runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodel.calibration.silicon import load_rows
from hardware.local import profile_path
from planner.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("torch")
    monkeypatch.setenv("LLM_PLANNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLM_PLANNER_LOCAL_DEVICES", "2")
    return tmp_path


def _plan(out: Path, load: list[str], *extra: str) -> None:
    assert main(["plan", "--model", "tiny-llama", "--cluster", "local", "--isl", "16", "--osl", "6", *load,
                 "--modes", "agg", "--out", str(out), "--json", *extra]) == 0  # verify runs aggregated plans


def _verify(plans: Path) -> dict:
    assert main(["verify", str(plans), "--top", "2", "--requests", "2", "--repeats", "1", "--json"]) == 0
    return json.loads((plans / "verify.json").read_text())


def test_plan_verify_learn_plan_verify(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for loop, load in (("closed", ["--concurrency", "4"]), ("open", ["--rate", "4"])):
        first, second = home / f"{loop}-1", home / f"{loop}-2"
        _plan(first, load)
        calibrated = profile_path().is_file()
        rep = _verify(first)
        if not calibrated:  # the first verify measured this machine before running anything
            assert profile_path().is_file() and any("ran `planner calibrate --quick` first" in n for n in rep["notes"])
            assert all(any("predicted again with cpu:measured-here" in n for n in p["notes"]) for p in rep["plans"])
        rows = load_rows(first / "runs.csv")
        assert len(rows) == len(rep["plans"]) == 2 and {r.backend for r in rows} == {"torch"}
        assert all((r.rate_rps == 4.0) == (loop == "open") for r in rows)  # the arrival rate of open-loop runs
        capsys.readouterr()
        assert main(["calibrate", "--from-runs", str(first / "runs.csv"), "--json"]) == 0
        learned = json.loads(capsys.readouterr().out)
        now = learned["heldout_mdape"] if learned["kept"] else learned["before_mdape"]
        assert all(now[k] <= learned["before_mdape"][k] for k in ("ttft_ms", "tpot_ms")), learned
        _plan(second, load, *(["--profile", learned["profile"]] if learned["kept"] else []))
        again = _verify(second)
        assert len(load_rows(second / "runs.csv")) == len(again["plans"]) == 2
        assert all(p["measured"]["tpot_ms"] > 0 for p in again["plans"])
