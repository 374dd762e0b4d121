"""`planner calibrate --quick` measures this machine and yields a usable profile that round-trips."""

from __future__ import annotations

import json
import time
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
    folder = tmp_path / "elsewhere" / "local"
    assert main(["calibrate", "--quick", "--out", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["devices"] == 2 and out["device"] == "cpu" and out["seconds"] > 0
    assert not (tmp_path / "local").exists()  # every file under --out, none in the cache
    assert {p.name for p in folder.iterdir()} == {"profile.json", "cluster.yaml", "kernels"}
    monkeypatch.setenv("LLM_PLANNER_HOME", str(folder.parent))  # that folder as the cache `--cluster local` reads

    prof = profile_for("cpu", profile_path())
    assert prof.trust == "measured-here" and prof.device == "cpu" and "planner calibrate --quick" in prof.source
    assert {"gemm.bf16", "context_attention.bf16", "generation_attention.bf16", "moe.bf16",
            "comm.all_to_all", "comm.send_recv", "comm.all_reduce_in_runner", "comm.send_recv_in_runner"
            } <= set(prof.fit_error)
    assert all(e.rows > 0 for e in prof.fit_error.values())
    tune = prof.engines["vllm"]
    assert tune.iteration_overhead_ms is not None and "torch runner" in tune.fitted_on
    again = tmp_path / "again.json"  # round trip
    save_profile(prof, again)
    assert profile_for("cpu", again) == prof

    here = cluster("local")  # the measured machine, sourced as such, saying where it was read from
    assert here.description.endswith(f"(read from {cluster_path()})")
    acc = here.groups[0].device
    assert cluster_path().is_file() and "measured on this machine" in acc.sources["peak_tflops"]
    assert "measured on this machine" in here.groups[0].scaleup.sources["gbps"] and not here.missing_sources()
    after = estimate("tiny-llama", "local", workload=workload)
    # the measured profile is the one `--cluster local` uses (with the runner's overhead tuning active)
    assert after.profile.startswith("cpu:") and after.tpot_ms > 0 and after.tpot_ms != before.tpot_ms

    kernels = folder / "kernels"
    for name, cols in AIC_COLUMNS.items():
        df = pd.read_csv(kernels / name)
        assert cols <= set(df.columns) and len(df) > 0 and (df["latency"] > 0).all(), name
    fits = fit_kernels(kernels, acc, here.groups[0].scaleup.gbps, 50.0)  # the files read back as kernel data
    logs = pd.read_csv(kernels / "serving.csv")  # the runner's iterations, every mode and rank
    assert set(logs["mode"]) == {"dp", "tp", "pp"} and set(logs["rank"]) == {0, 1} and (logs["seconds"] > 0).all()
    assert set(logs[logs["mode"] == "pp"]["layers"]) == {2, 3}  # pipelined: the models with a layer per stage
    assert "bf16" in fits.gemm and "bf16" in fits.attn_decode and "all_to_all" in fits.comm


def test_calibrate_out_names_a_folder(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")  # without it, calibrate says first that it measures with torch
    assert main(["calibrate", "--quick", "--out", "mine.json"]) == 2
    assert "give a folder" in capsys.readouterr().err


def test_from_runs_rejects_a_file_without_the_silicon_columns(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "runs.csv"
    bad.write_text("model,ttft\nx,1\n")
    code = main(["calibrate", "--from-runs", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "column 'model_path' is missing" in err[0]


# ---- fitting the runner from its own iterations (synthetic logs made by the cost model itself) ---------
def _runs(group, profile, tuning, layout=None):
    """Iteration logs (decode, prefill tokens, prompts, context sum, seconds) of the serving models at several
    batches and both prompt lengths, timed by the cost model with `tuning` as the engine."""
    pytest.importorskip("torch")  # planner.calibrate.measure holds the serving models beside torch code
    import numpy as np

    from costmodel.layout import Layout
    from planner.calibrate.measure import serving_models
    from planner.calibrate.overhead import step_s

    out = []
    for m in serving_models():
        for isl in (32, 96):
            for b in (1, 16):
                dec = np.full(8, float(b))
                log = np.column_stack([dec, np.zeros(8), np.zeros(8), dec * (isl + 12), np.zeros(8)])
                log[:, 4] = step_s(m, layout or Layout(), group, profile, log, isl, tuning)
                out.append((m, isl, [tuple(r) for r in log]))
    return out


def test_fit_runner_recovers_the_runner_tuning_that_timed_its_iterations() -> None:
    from costmodel.calibration.profile import EngineTuning
    from planner.calibrate.overhead import error_band, fit_runner

    group = cluster("dgx-h100").groups[0]
    base = profile_for("h100-sxm").model_copy(update={"engines": {}})
    truth = EngineTuning(decode_attention_scale=1.6, fixed_scale=3.0, iteration_overhead_ms=0.8,
                         per_seq_overhead_us=120.0)
    fit = fit_runner(_runs(group, base, truth), group, base)
    t = fit.tuning
    assert t.decode_attention_scale == pytest.approx(1.6, rel=0.05) and t.fixed_scale == pytest.approx(3.0, rel=0.05)
    assert t.iteration_overhead_ms == pytest.approx(0.8, rel=0.05)
    assert t.per_seq_overhead_us == pytest.approx(120, rel=0.05)
    assert t.compute_scale == t.memory_scale == 1.0  # held: see planner.calibrate.overhead
    assert t.resubmit_wait_iterations == 0.0  # its clients resubmit inside the scheduler (planner.verify.scheduler)
    assert t.eager_kernel_overhead_us == 0.0  # fitted without a launch cost per kernel, so predicted without one
    assert fit.error_pct < 1.0 and all(r == pytest.approx(1.0, abs=0.01) for r in fit.ratios)
    assert error_band([0.8, 0.9, 1.0, 1.1, 1.5])["tpot_ms"] == (pytest.approx(0.84), pytest.approx(1.34))


def test_tensor_parallel_runs_give_the_all_reduce_wait_inside_a_pass() -> None:
    from costmodel.calibration.profile import EngineTuning
    from costmodel.layout import Layout
    from planner.calibrate.overhead import fit_runner_all_reduce, for_every_engine, with_comm_latency

    group = cluster("dgx-h100").groups[0]
    tuning = EngineTuning(iteration_overhead_ms=0.5, per_seq_overhead_us=20.0)
    base = for_every_engine(profile_for("h100-sxm").model_copy(update={"engines": {}}), tuning)
    ar = base.comm_fit("all_reduce")
    slower = with_comm_latency(base, "all_reduce", 250.0)  # every all-reduce waits 250 us more than measured alone
    runs = _runs(group, slower, tuning, Layout(tp=2))
    fitted, ratios = fit_runner_all_reduce(runs, group, base, 2)
    assert fitted.comm_fit("all_reduce").alpha_us - ar.alpha_us == pytest.approx(250.0, rel=0.01)
    assert all(r == pytest.approx(1.0, abs=0.01) for r in ratios) and "comm.all_reduce_in_runner" in fitted.fit_error


# ---- small kernel-fit cases that CPU calibration meets ------------------------------------------------
def test_pipelined_runs_give_the_stage_hand_over_inside_the_runner() -> None:
    import numpy as np

    from costmodel.calibration.profile import EngineTuning
    from costmodel.layout import Layout
    from planner.calibrate.overhead import fit_runner_send_recv, for_every_engine, with_comm_latency

    group = cluster("dgx-h100").groups[0]
    # stages this even (little scheduler overhead on the first) put the pass, sends and all, on the critical path
    tuning = EngineTuning(iteration_overhead_ms=0.02, per_seq_overhead_us=1.0)
    base = for_every_engine(profile_for("h100-sxm").model_copy(update={"engines": {}}), tuning)
    sr = base.comm_fit("send_recv")
    slower = with_comm_latency(base, "send_recv", 400.0)  # every hand-over between stages costs 400 us more
    runs = [(m, isl, [(*(np.array(r[:4]) / 2), r[4]) for r in log])  # logged per micro-batch group: half the batch
            for m, isl, log in _runs(group, slower, tuning, Layout(pp=2)) if m.num_layers >= 2]
    fitted, ratios = fit_runner_send_recv(runs, group, base, 2)
    assert fitted.comm_fit("send_recv").alpha_us - sr.alpha_us == pytest.approx(400.0, rel=0.01)
    assert all(r == pytest.approx(1.0, abs=0.01) for r in ratios) and "comm.send_recv_in_runner" in fitted.fit_error


def test_a_family_with_few_rows_still_gets_a_held_out_error() -> None:
    import numpy as np

    from costmodel.calibration.kernels import MIN_ROWS, Shapes, fit_family

    rng = np.random.default_rng(0)
    m = rng.uniform(1, 512, 18)
    flops, nbytes = 2 * m * 1024 * 1024, 2.0 * 1024 * 1024 + m * 4096
    seconds = np.maximum(flops / 50e9, nbytes / 10e9) * rng.uniform(0.95, 1.05, 18) + 20e-6
    _, err = fit_family(Shapes(flops, nbytes, m * 1024, seconds), 80e9, 10e9)
    assert err.rows < MIN_ROWS + 5 and np.isfinite(err.leaveout_mdape) and err.leaveout_mdape >= 0


def test_a_slow_host_link_fits_inside_the_collective_bounds() -> None:
    import numpy as np

    from costmodel.calibration.kernels import fit_collective

    size = np.array([2.0**p for p in range(10, 22)])
    n = np.full_like(size, 2.0)
    seconds = 2 * 400e-6 + size / 3e9 + 30e-6  # all-reduce over 2 ranks: 400 us per step, as loopback TCP
    fit, err = fit_collective(size, n, seconds, "all_reduce", 3.0, 400.0)
    assert fit.step_us == pytest.approx(400.0, rel=0.1) and err.train_mdape < 5.0


def test_timed_rounds_make_the_calls_one_timed_call_says_fill_the_round() -> None:
    """A GPU queues launched calls, so a round that called until `min_s` had passed queued far more work
    than `min_s`: each round's count is now fixed from one synchronised call before the rounds."""
    torch = pytest.importorskip("torch")
    from planner.calibrate.measure import timed

    made: list[int] = []

    def call(i: int) -> None:
        made.append(i)
        time.sleep(0.002)

    per_call = timed(call, reps=3, dev=torch.device("cpu"), min_s=0.01)
    assert made == list(range(len(made)))  # a warm-up call, a sizing call, then the rounds, each index once
    rounds = len(made) - 2
    assert rounds % 3 == 0 and 1 <= rounds // 3 <= 5  # 10 ms of 2+ ms calls, the same count every round
    assert 0.002 <= per_call < 0.01
