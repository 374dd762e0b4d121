"""Every bad input issue 17 found, one test each: a PlannerInputError naming the field and the fix (the CLI
prints one line and exits 2), never a traceback, a NaN or a silent accept; and the CLI's exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hardware.errors import InternalError, PlannerInputError, check_finite
from planner import InfeasibleError, estimate, plan, simulate
from planner.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
WL = {"isl": 128, "osl": 64, "concurrency": 8}
BINARY = bytes(range(256)) * 8  # not UTF-8 from byte 128 on
TINY_PLAN = ["plan", "--model", "tiny-llama", "--cluster", "dgx-h100", "--isl", "64", "--osl", "16",
             "--concurrency", "4", "--budget-s", "5"]


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [x for x in capsys.readouterr().err.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ---- files read as text: binary content names the file, never UnicodeDecodeError --------------------
@pytest.mark.parametrize("role, suffix, call", [
    ("model file", "config.json", lambda p: estimate(p, "dgx-h100", workload=WL)),
    ("cluster file", "cluster.yaml", lambda p: estimate("tiny-llama", p, workload=WL)),
    ("profile", "profile.json", lambda p: estimate("tiny-llama", "dgx-h100", workload=WL, profile=p)),
    ("trace", "trace.csv", lambda p: simulate("tiny-llama", "dgx-h100", workload={"trace": str(p)})),
    ("trace", "trace.jsonl", lambda p: simulate("tiny-llama", "dgx-h100", workload={"trace": str(p)})),
])
def test_a_binary_file_is_named_as_not_text(tmp_path: Path, role: str, suffix: str, call) -> None:
    f = tmp_path / suffix
    f.write_bytes(BINARY)
    with pytest.raises(PlannerInputError, match=rf"{role}.*{f.name}.*not .*text"):
        call(f)


def test_a_binary_runs_csv_and_plans_json_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_bytes(BINARY)
    assert main(["calibrate", "--from-runs", str(runs)]) == 2
    assert "runs CSV" in (err := one_line(capsys)) and "not UTF-8 text" in err
    (tmp_path / "plans.json").write_bytes(BINARY)
    assert main(["report", str(tmp_path)]) == 2
    assert "plans.json is not a readable plans.json" in one_line(capsys)


def test_a_profile_without_its_device_and_source_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "profile.json"
    empty.write_text("{}")
    with pytest.raises(PlannerInputError, match=r"profile .*field 'device' is missing"):
        estimate("tiny-llama", "dgx-h100", workload=WL, profile=empty)


# ---- output paths: checked before any work -----------------------------------------------------------
def test_out_paths_are_checked_before_the_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    # an objective nothing meets would exit 3 after the search; the bad --out exits 2 before it
    hopeless = [*TINY_PLAN, "--tpot-ms", "0.001"]
    assert main([*hopeless, "--out", str(a_file)]) == 2
    assert "--out" in (err := one_line(capsys)) and "existing file" in err
    assert main([*hopeless, "--out", str(a_file / "below")]) == 2
    assert "is a file, not a folder" in one_line(capsys)
    assert main(["report", str(tmp_path), "--out", str(a_file)]) == 2
    assert "existing file" in one_line(capsys)
    assert main(["simulate", "--model", "tiny-llama", "--cluster", "dgx-h100", "--isl", "32", "--osl", "8",
                 "--concurrency", "2", "--num-requests", "4", "--chrome-trace", str(tmp_path)]) == 2
    assert "--chrome-trace" in (err := one_line(capsys)) and "is a folder" in err
    assert main([*TINY_PLAN, "--jobs", "0"]) == 2
    assert "--jobs" in one_line(capsys)


@pytest.mark.skipif(sys.platform != "linux", reason="/proc is Linux's")
def test_an_unwritable_out_folder_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY_PLAN, "--out", "/proc/planner-out"]) == 2  # even root cannot create files in /proc
    assert "cannot write in /proc" in one_line(capsys)


# ---- None, booleans, NaN, negative and beyond-context values ------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"precision": 8}, "precision=8 is not a precision name"),  # None is the checkpoint's own precision
    ({"engine": None}, "engine=None"),
    ({"kv_cache_dtype": None}, "kv_cache_dtype=None"),
    ({"max_num_batched_tokens": -100}, "max_num_batched_tokens=-100"),
    ({"max_num_seqs": True}, "max_num_seqs=True"),
    ({"layout": {"tp": True}}, "'tp' is true, a boolean"),
    ({"workload": {**WL, "isl": True}}, "'isl' is true, a boolean"),
    ({"workload": {"isl": 128, "osl": 64, "rate_rps": math.inf}}, "rate_rps.*finite"),
    ({"workload": {"isl": 128, "osl": 64, "rate_rps": math.nan}}, "rate_rps.*finite"),
    ({"workload": {**WL, "isl": -5}}, "isl.*greater than or equal to 1"),
    ({"workload": {"isl": 500_000, "osl": 64, "concurrency": 1}}, r"500,064 tokens exceeds the 131,072-token"),
])
def test_estimate_refuses(kwargs: dict, match: str) -> None:
    args = {"workload": WL, **kwargs}
    with pytest.raises(PlannerInputError, match=match):
        estimate("llama-3.1-8b", "dgx-h100", **args)


@pytest.mark.parametrize("kwargs, match", [
    ({"budget_s": math.nan}, "budget_s=nan"),
    ({"budget_s": -1.0}, "budget_s=-1.0"),
    ({"n_jobs": 0}, "n_jobs=0"),
    ({"slo": {"ttft_ms": math.inf}}, "ttft_ms.*finite"),
])
def test_plan_refuses(kwargs: dict, match: str) -> None:
    with pytest.raises(PlannerInputError, match=match):
        plan("tiny-llama", "dgx-h100", **{"workload": WL, **kwargs})


def test_one_output_token_leaves_disaggregation_nothing_to_do() -> None:
    one = {"isl": 64, "osl": 1, "concurrency": 4}
    assert {p.mode for p in plan("tiny-llama", "dgx-h100", workload=one, modes=("agg", "disagg"), budget_s=60).plans} \
        == {"agg"}
    with pytest.raises(InfeasibleError, match="one output token leave a decode pool nothing to do"):
        plan("tiny-llama", "dgx-h100", workload=one, modes=("disagg",), budget_s=60)


def test_a_simulated_request_beyond_the_context_is_refused() -> None:
    with pytest.raises(PlannerInputError, match="context of tiny-llama"):
        simulate("tiny-llama", "dgx-h100", workload={"isl": {"dist": "uniform", "low": 100, "high": 4000}, "osl": 8,
                                                     "concurrency": 2, "num_requests": 50})


def test_a_boolean_where_a_config_has_a_count_is_named(tmp_path: Path) -> None:
    cfg = json.loads((ROOT / "costmodel" / "data" / "models" / "tiny-llama.json").read_text())
    with pytest.raises(PlannerInputError, match="field 'num_hidden_layers' is true, a boolean"):
        estimate({**cfg, "num_hidden_layers": True}, "dgx-h100", workload=WL)
    with pytest.raises(PlannerInputError, match="field 'hidden_size' is nan"):
        estimate({**cfg, "hidden_size": math.nan}, "dgx-h100", workload=WL)


# ---- precisions a device has no math for ------------------------------------------------------------
@pytest.mark.parametrize("cluster, prec, device", [("dgx-a100", "fp8", "a100-sxm-80gb"),
                                                   ("atlas-800t-a2", "fp8", "ascend-910b"),
                                                   ("dgx-h100", "fp4", "h100-sxm")])
def test_a_precision_the_device_lacks_is_refused(cluster: str, prec: str, device: str) -> None:
    with pytest.raises(PlannerInputError, match=rf"'{prec}' needs {prec} math, which {device} does not have"):
        estimate("llama-3.1-8b", cluster, workload=WL, precision=prec)
    with pytest.raises(PlannerInputError, match=f"which {device} does not have"):
        plan("llama-3.1-8b", cluster, workload=WL, precision=prec, budget_s=5)


def test_the_precisions_a_device_has_are_costed() -> None:
    for cluster, prec in (("dgx-a100", "int8"), ("dgx-h100", "fp8"), ("dgx-b200", "fp4"), ("dgx-a100", "int4")):
        assert estimate("llama-3.1-8b", cluster, workload=WL, precision=prec).fits


# ---- one and two output tokens: defined, finite, and TPOT not a constraint for one -------------------
@pytest.mark.parametrize("osl", [1, 2])
@pytest.mark.parametrize("load", [{"concurrency": 8}, {"rate_rps": 5.0}])
def test_one_and_two_output_tokens_are_finite(osl: int, load: dict) -> None:
    wl = {"isl": 128, "osl": osl, **load}
    e = estimate("llama-3.1-8b", "dgx-h100", workload=wl)
    assert all(math.isfinite(v) and v > 0 for v in (e.ttft_ms, e.tpot_ms, e.output_tok_s))
    assert any("TPOT is undefined" in n for n in e.notes) == (osl == 1)
    r = plan("llama-3.1-8b", "dgx-h100", workload=wl, slo={"ttft_ms": 1000, "tpot_ms": 0.001}, budget_s=5) \
        if osl == 1 else plan("llama-3.1-8b", "dgx-h100", workload=wl, slo={"ttft_ms": 1000}, budget_s=5)
    assert all(math.isfinite(r.best.metrics[k]) for k in ("ttft_ms", "tpot_ms", "output_tok_s"))
    if osl == 1:  # a TPOT nothing could meet binds nothing: no token follows the first
        assert r.request["notes"] and "tpot_ms objective does not apply" in r.request["notes"][0]
    s = simulate("llama-3.1-8b", "dgx-h100", workload={**wl, "num_requests": 40})
    assert s.completed.all() and math.isfinite(s.ttft_ms.p50) and s.tpot_ms.count == (40 if osl == 2 else 0)


def test_nan_is_an_internal_error_and_infinity_an_answer() -> None:
    check_finite({"ttft_ms": math.inf, "memory": {"kv_cache": 3.0}}, "estimate")
    with pytest.raises(InternalError, match=r"estimate\.memory\.kv_cache is NaN"):
        check_finite({"ttft_ms": 1.0, "memory": {"kv_cache": math.nan}}, "estimate")
    assert not issubclass(InternalError, PlannerInputError)  # the CLI exits 1 for it, not 2


# ---- exit codes -------------------------------------------------------------------------------------
def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "planner.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_exit_codes_as_subprocesses(tmp_path: Path) -> None:
    ok = _cli("estimate", "--model", "tiny-llama", "--cluster", "dgx-h100", "--isl", "64", "--osl", "8",
              "--concurrency", "2", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["fits"]
    bad = _cli("estimate", "--model", "tiny-llama", "--cluster", "dgx-a100", "--isl", "64", "--osl", "8",
               "--concurrency", "2", "--precision", "fp8")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "a100" in bad.stderr
    usage = _cli("estimate", "--model", "tiny-llama")
    assert usage.returncode == 2 and usage.stderr.startswith("error: ")
    none = _cli("plan", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--isl", "128", "--osl", "128",
                "--rate", "1", "--tpot-ms", "1", "--budget-s", "10", "--out", str(tmp_path))
    assert none.returncode == 3 and none.stderr.count("\n") == 1 and "no layout" in none.stderr
    assert (tmp_path / "plans.json").is_file()  # what bound each layout is kept
    helped = _cli("--help")
    assert helped.returncode == 0 and "3 infeasible" in helped.stdout and "1 internal error" in helped.stdout


def test_an_internal_error_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_: object) -> int:  # stands for any bug below the CLI
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setitem(COMMANDS, "models", broken)
    assert main(["models"]) == 1
    err = one_line(capsys)
    assert "internal error (ZeroDivisionError: float division by zero)" in err and "--debug" in err
    assert main(["models", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(InfeasibleError):  # and a typed infeasible stays a PlannerInputError for API callers
        plan("llama-3.1-70b", "dgx-h100", workload={"isl": 128, "osl": 128, "rate_rps": 1}, slo={"tpot_ms": 1})


def test_what_a_device_lacks_is_sourced_in_its_catalog_entry() -> None:
    """Precision support is the catalog's data: a low precision missing from a device's peaks is said so in
    the source of those peaks, not assumed."""
    from hardware.catalog import accelerators

    for acc in accelerators().values():
        for dtype in ("fp8", "fp4"):
            if dtype not in acc.peak_tflops:
                assert f"no {dtype.upper()}" in acc.sources["peak_tflops"], (acc.name, dtype)


@pytest.mark.parametrize("osl", [1, 2])
def test_no_steady_iteration_time_is_unstable_not_a_crash(osl: int) -> None:
    """The property suite's find: when the closed-loop capacity has no fixed point, osl=2 divided 0 by 0
    (ZeroDivisionError) and osl=1 multiplied infinity by 0 (NaN requests/s)."""
    e = estimate("mixtral-8x7b", "dgx-a100", layout={"tp": 1}, workload={"isl": 165, "osl": osl, "rate_rps": 1.0},
                 precision="int4", engine="trtllm")
    assert not math.isnan(e.requests_per_s) and (e.stable or (e.output_tok_s == 0 and math.isinf(e.ttft_ms)))
