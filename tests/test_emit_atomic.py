"""Emit writes each target folder whole or not at all: a failure or a kill mid-write leaves the previous
folder (or none) and, once the next emit has run, no hidden staging folder or .tmp file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from planner import plan
from planner.cli import main
from planner.emit import base


@pytest.fixture(scope="module")
def result():
    return plan("llama-3.1-8b", "dgx-h100", workload={"isl": 512, "osl": 128, "concurrency": 16}, budget_s=5)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failure_mid_write_leaves_the_previous_folder_and_no_temp_files(result, tmp_path, monkeypatch):
    result.emit("vllm", tmp_path, top=2)
    before = _tree(tmp_path / "vllm")
    real = base.write_atomic
    calls = []

    def fail_on_third(path, text):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(path, text)

    monkeypatch.setattr(base, "write_atomic", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        result.emit("vllm", tmp_path, top=2)
    assert len(calls) == 3  # it did fail part-way through the plan-1 folder
    assert _tree(tmp_path / "vllm") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vllm"]  # no staging folder, no .tmp


def test_a_first_emit_that_fails_leaves_no_folder(result, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "write_atomic", lambda path, text: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        result.emit("sglang", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_emit_leaves_no_partial_folder_and_the_next_run_sweeps_its_staging(tmp_path):
    out = tmp_path / "out"
    # a child that emits and is SIGKILLed while its second file is being written
    child = textwrap.dedent(f"""
        import os, signal, sys
        from planner import plan
        from planner.emit import base
        r = plan("llama-3.1-8b", "dgx-h100", workload={{"isl": 512, "osl": 128, "concurrency": 16}}, budget_s=5)
        real, n = base.write_atomic, [0]
        def write(path, text):
            n[0] += 1
            if n[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, text)
        base.write_atomic = write
        r.emit("vllm", {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).parents[1], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "vllm").exists()  # never a partial target folder
    assert [p.name.startswith(".vllm.") for p in out.iterdir()] == [True]  # only the hidden staging folder
    args = ["plan", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "512", "--osl", "128",
            "--concurrency", "16", "--budget-s", "5", "--out", str(out), "--emit", "vllm", "--emit-top", "1"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plans.json", "vllm"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert os.access(out / "vllm" / "plan-1" / "launch.sh", os.X_OK)


def test_cli_skips_targets_that_cannot_express_a_plan_and_writes_the_rest(tmp_path):
    # trtllm cannot express disaggregated plans and ascend needs Ascend NPUs: both go to SKIPPED.md
    args = ["plan", "--model", "llama-3.1-8b", "--cluster", "dgx-h100", "--isl", "2000", "--osl", "200",
            "--rate", "30", "--ttft-ms", "1000", "--tpot-ms", "30", "--modes", "disagg", "--out", str(tmp_path),
            "--emit", "trtllm,ascend,vllm", "--emit-top", "1"]
    assert main(args) == 0
    assert "cannot run on trtllm" in (tmp_path / "trtllm" / "SKIPPED.md").read_text()
    assert "ascend emits for huawei devices" in (tmp_path / "ascend" / "SKIPPED.md").read_text()
    assert (tmp_path / "vllm" / "plan-1" / "README.md").exists() and (tmp_path / "plans.json").exists()
