"""`planner calibrate --quick` measures this machine and yields a usable profile that round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from costmodel.calibration.fit import save_profile
from costmodel.calibration.kernels import fit_kernels
from costmodel.calibration.profile import profile_for
from hardware.catalog import cluster
from hardware.local import cluster_path, profile_path
from planner.api import estimate
from planner.cli import main

AIC_COLUMNS = {  # the columns of ../shared/data/ops/h100_sxm/*.csv.gz that costmodel.calibration.kernels reads
    "gemm.csv": {"gemm_dtype", "m", "n", "k", "latency"},
    "context_attention.csv": {"batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype",
                              "window_size", "latency"},
    "generation_attention.csv": {"batch_size", "isl", "step", "num_heads", "num_key_value_heads", "head_dim",
                                 "kv_cache_dtype", "window_size", "latency"},
    "moe.csv": {"moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
                "moe_ep_size", "distribution", "latency"},
    "nccl.csv": {"op_name", "nccl_dtype", "num_gpus", "message_size", "latency"},
}


def test_quick_calibration_measures_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("LLM_PLANNER_HOME", str(tmp_path))
    monkeypatch.setenv("LLM_PLANNER_LOCAL_DEVICES", "2")
    workload = {"isl": 64, "osl": 16, "concurrency": 4}
    before = estimate("tiny-llama", "local", workload=workload)
    assert before.profile == "*:spec-default"  # nothing measured yet: estimates, and they say so
    assert main(["calibrate", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["devices"] == 2 and out["device"] == "cpu" and out["seconds"] > 0

    prof = profile_for("cpu", profile_path())
    assert prof.trust == "measured-here" and prof.device == "cpu" and "planner calibrate --quick" in prof.source
    assert {"gemm.bf16", "context_attention.bf16", "generation_attention.bf16", "moe.bf16",
            "comm.all_to_all", "comm.send_recv"} <= set(prof.fit_error)
    assert all(e.rows > 0 for e in prof.fit_error.values())
    tune = prof.engines["vllm"]
    assert tune.iteration_overhead_ms is not None and "torch runner" in tune.fitted_on
    again = tmp_path / "again.json"  # round trip
    save_profile(prof, again)
    assert profile_for("cpu", again) == prof

    here = cluster("local")  # the measured machine, sourced as such
    acc = here.groups[0].device
    assert cluster_path().is_file() and "measured on this machine" in acc.sources["peak_tflops"]
    assert "measured on this machine" in here.groups[0].scaleup.sources["gbps"] and not here.missing_sources()
    after = estimate("tiny-llama", "local", workload=workload)
    # the measured profile is the one `--cluster local` uses (with the runner's overhead tuning active)
    assert after.profile.startswith("cpu:") and after.tpot_ms > 0 and after.tpot_ms != before.tpot_ms

    kernels = tmp_path / "local" / "kernels"
    for name, cols in AIC_COLUMNS.items():
        df = pd.read_csv(kernels / name)
        assert cols <= set(df.columns) and len(df) > 0 and (df["latency"] > 0).all(), name
    fits = fit_kernels(kernels, acc, here.groups[0].scaleup.gbps, 50.0)  # the files read back as kernel data
    assert "bf16" in fits.gemm and "bf16" in fits.attn_decode and "all_to_all" in fits.comm


def test_from_runs_rejects_a_file_without_the_silicon_columns(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "runs.csv"
    bad.write_text("model,ttft\nx,1\n")
    code = main(["calibrate", "--from-runs", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "column 'model_path' is missing" in err[0]
