"""`planner verify` with the torch runner: sharded layouts computed for real, the report, and traced modules.

The runs spawn real worker processes joined by torch.distributed (gloo); each serves a few short
requests, so every launch takes seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from costmodel.catalog import model as load_model
from costmodel.layout import Layout
from hardware.errors import PlannerInputError
from planner.cli import main
from planner.verify.measured import Measured, Timed, median_of, summarize
from planner.verify.report import Report, Row, kendall_tau
from planner.verify.scheduler import ClosedLoop, Scheduler


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An uncalibrated machine: `--cluster local` is the estimate of this one."""
    monkeypatch.setenv("LLM_PLANNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLM_PLANNER_LOCAL_DEVICES", "2")
    return tmp_path


# ---- pure pieces ------------------------------------------------------------------------------
def test_kendall_tau() -> None:
    assert kendall_tau([1, 2, 3], [30.0, 20.0, 10.0]) == 1.0
    assert kendall_tau([1, 2, 3], [10.0, 20.0, 30.0]) == -1.0
    assert kendall_tau([1, 2, 3], [30.0, 10.0, 20.0]) == pytest.approx(1 / 3)
    assert math.isnan(kendall_tau([1], [5.0]))


def _serve(s: Scheduler) -> list[tuple[int, list[int]]]:
    """Run `s` to the end, one time unit per iteration; each iteration's decodes and prompt chunk sizes."""
    steps = []
    t = 0.0
    while not s.done:
        s.admit(0, t)
        step = s.next_step()
        s.complete(step, [7] * (len(step.decode) + sum(c.emits for c in step.chunks)), t := t + 1.0)
        steps.append((len(step.decode), [c.n for c in step.chunks]))
    return steps


def test_scheduler_staggers_clients_and_batches_prefill_with_decode() -> None:
    s = Scheduler(isl=4, osl=4, slots=8, budget=64, load=ClosedLoop(clients=2, requests_per_client=2))
    steps = _serve(s)
    assert steps[0] == (0, [4])  # client 0 alone at first
    assert steps[2] == (1, [4])  # client 1 starts osl/2 = 2 iterations later, beside client 0's decode
    assert len(s.finished) == 4 and all(r.generated == 4 for r in s.finished)
    assert {r.rid for r in s.finished} == {0, 1, 100_000, 100_001}  # client * 100000 + n: same prompts anywhere


def test_a_closed_loop_request_is_prefilled_in_the_iteration_after_it_is_sent() -> None:
    """The runner's clients send their next request as an iteration ends and it runs in the very next one: its
    first token comes one iteration after it was sent, which is why the runner's tuning waits no half iteration
    for the next boundary (`resubmit_wait_iterations` 0: TTFT 25-34% over-predicted on this machine before)."""
    s = Scheduler(isl=4, osl=6, slots=8, budget=64, load=ClosedLoop(clients=3, requests_per_client=3))
    _serve(s)
    assert len(s.finished) == 9 and all(r.token_s[0] - r.submit_s == 1.0 for r in s.finished)


def test_summarize_measures_the_steady_window() -> None:
    reqs = [Timed(c, c + 10.0 * n, tuple(c + 10.0 * n + 1 + i for i in range(5))) for c in range(2) for n in range(4)]
    m = summarize(reqs, closed_loop=True)
    # the window opens when both first requests are done (t=6) and closes when client 0 has no more (t=35):
    # each client's first request and client 1's last are left out
    assert m.completed == 8 and m.requests == 5 and m.window_s == pytest.approx(29.0)
    assert m.ttft_ms == pytest.approx(1000.0) and m.tpot_ms == pytest.approx(1000.0)


def test_verify_needs_a_plans_folder(torch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no plans.json" in err[0]


# ---- the torch model and its layouts -------------------------------------------------------------
def test_runner_refuses_what_it_does_not_implement(torch) -> None:
    from planner.verify.model import Transformer
    from planner.verify.support import check_runnable

    with pytest.raises(PlannerInputError, match="sp=2"):
        check_runnable(Layout(tp=2, sp=2))
    with pytest.raises(PlannerInputError, match="attention data parallelism with tp=1"):
        check_runnable(Layout(tp=2, attention_dp=2))
    with pytest.raises(PlannerInputError, match="--runner endpoint"):
        Transformer(load_model("deepseek-v3"))


def _tokens(out: list[dict]) -> dict[int, list[int]]:
    return {r["rid"]: r["ids"] for o in out for r in o["requests"]}


@pytest.mark.parametrize("name, layouts", [
    ("tiny-llama", [{"tp": 2}, {"pp": 2}]),
    ("tiny-moe", [{"tp": 2, "ep": 2}, {"attention_dp": 2, "ep": 2}]),
])
def test_sharded_layouts_compute_what_one_process_does(torch, name: str, layouts: list[dict[str, int]]) -> None:
    """Weights are drawn whole and sliced per rank, so a TP / PP / EP run must produce the greedy tokens
    of the single-process run (bf16 all-reduces may flip a near-tie; a wrong shard flips everything)."""
    from planner.verify.engine import RunSpec, Server, serve_worker
    from planner.verify.launch import launch

    spec = {**load_model(name).model_dump(), "vocab_size": 2048}  # a small vocabulary: quick to draw on every rank
    one = RunSpec(model=spec, layout={}, isl=8, osl=4, concurrency=2, requests=1)
    ref = _tokens([Server(one, 0, 1).serve()])
    assert len(ref) == 2 and all(len(t) == 4 for t in ref.values())
    for lay in layouts:
        run = RunSpec(model=spec, layout=lay, isl=8, osl=4, concurrency=2, requests=1)
        got = _tokens(launch(serve_worker, Layout(**lay).total_devices, run, timeout_s=60))
        same = sum(got[k][i] == v[i] for k, v in ref.items() for i in range(4))
        assert set(got) == set(ref) and same >= 7, (lay, got, ref)


def test_plan_then_verify_on_this_machine(torch, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = home / "plans"
    assert main(["plan", "--model", "tiny-llama", "--cluster", "local", "--isl", "16", "--osl", "6",
                 "--concurrency", "4", "--modes", "agg", "--out", str(plans), "--json"]) == 0
    err = capsys.readouterr().err
    assert err.count("has not been measured on this machine") == 1  # uncalibrated, and it says so once
    assert main(["verify", str(plans), "--top", "3", "--requests", "2", "--repeats", "1", "--json",
                 "--no-calibrate"]) == 0
    assert "has not been measured" in capsys.readouterr().err
    rep = json.loads((plans / "verify.json").read_text())
    assert {p["label"].split(" ")[1] for p in rep["plans"]} == {"tp1", "tp2", "tp1-pp2"}  # "2A tp1 on ..."
    for p in rep["plans"]:
        assert p["as_planned"] and p["devices"] == 2, p
        assert p["measured"]["tpot_ms"] > 0 and p["measured"]["output_tok_s"] > 0 and not p["measured"]["error"]
        assert p["error_pct"]["tpot_ms"] is not None and p["measured_score"] > 0
    assert -1.0 <= rep["kendall_tau"] <= 1.0 and sorted(rep["measured_order"]) == [1, 2, 3]
    assert rep["error_band"] == [0.04, 5.0]  # an uncalibrated machine's band, not a fitted profile's
    assert "| # | plan |" in (plans / "verify.md").read_text()

    from costmodel.calibration.silicon import load_rows

    rows = load_rows(plans / "runs.csv")
    assert len(rows) == 3 and {r.system for r in rows} == {"local"} and rows[0].model == "tiny-llama"
    assert {r.backend for r in rows} == {"torch"} and {r.engine for r in rows} == {"vllm"}  # the runner, for vllm


def test_a_plan_for_another_cluster_runs_as_a_scaled_copy(torch, home: Path) -> None:
    from planner.api import plan

    plan("tiny-llama", "dgx-h100", workload={"isl": 16, "osl": 4, "concurrency": 2}, modes=("agg",)).save(home / "p")
    assert main(["verify", str(home / "p"), "--top", "1", "--layers", "2", "--requests", "2", "--repeats", "1",
                 "--json"]) == 0
    row = json.loads((home / "p" / "verify.json").read_text())["plans"][0]
    assert not row["as_planned"] and row["measured"]["tpot_ms"] > 0 and row["devices"] <= 2
    assert any("scaled copy: 2 layers" in n for n in row["notes"])
    assert any("re-made for this machine" in n for n in row["notes"])


# ---- torch modules as models --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-moe"])
def test_tracing_the_runner_module_gives_the_config_graph(torch, name: str) -> None:
    from costmodel.graph import layer_graph
    from costmodel.ops import Batch, lm_head_op
    from costmodel.precision import precision
    from costmodel.torch_import import matmul_flops, spec_of, trace
    from planner.verify.model import Transformer

    spec = load_model(name)
    module = Transformer(spec)
    b, t = 2, 12
    graph = trace(module, (b, t))
    traced = spec_of(graph, module)
    same = {"name", "hf_id", "max_context"}  # a module does not state the context it was trained for
    assert traced.model_dump(exclude=same) == spec.model_dump(exclude=same)
    assert traced.total_params == spec.total_params == sum(p.numel() for p in module.parameters())
    batch = Batch(prefill_tokens=b * t, prefill_span=(t + 1) / 2, prefill_seqs=b)
    prec, lay = precision("bf16"), Layout()
    graph_flops = sum(count * sum(d["flops"] for _, d in layer_graph(spec, lay, prec, batch, moe).nodes(data=True))
                      for moe, count in ((False, spec.dense_layers), (True, spec.moe_layers)) if count)
    graph_flops += float(lm_head_op(spec, lay, prec, batch).flops)
    assert matmul_flops(graph) == pytest.approx(graph_flops, rel=1e-9)


def test_plan_and_estimate_take_a_torch_module(torch) -> None:
    from planner.api import estimate, plan
    from planner.verify.model import Transformer

    module = Transformer(load_model("tiny-llama"))
    e = estimate((module, (1, 8)), "dgx-h100", workload={"isl": 64, "osl": 16, "concurrency": 4})
    same = estimate("tiny-llama", "dgx-h100", workload={"isl": 64, "osl": 16, "concurrency": 4})
    assert e.model == "Transformer" and e.tpot_ms == pytest.approx(same.tpot_ms)
    r = plan(module, "dgx-h100", workload={"isl": 64, "osl": 16, "concurrency": 4})
    assert r.best.metrics["tpot_ms"] > 0 and r.request["model_spec"]["num_layers"] == 4

    class NotATransformer(torch.nn.Module):
        def forward(self, x):
            return x * 2

    with pytest.raises(PlannerInputError, match="no token embedding"):
        estimate(NotATransformer(), "dgx-h100", workload={"isl": 8, "osl": 8, "concurrency": 1})


# ---- measuring on a shared machine ----------------------------------------------------------------
def _round(tok_s: float, tpot_ms: float) -> Measured:
    return Measured(ttft_ms=20.0, tpot_ms=tpot_ms, output_tok_s=tok_s, requests=4, completed=8, window_s=1.0,
                    per_request=((0.02, tpot_ms / 1e3),) * 4)


def test_repeated_rounds_keep_the_median_round_and_every_rounds_rate() -> None:
    rounds = [_round(500.0, 16.0), _round(650.0, 12.3), _round(300.0, 26.0), _round(600.0, 13.3),
              _round(640.0, 12.5)]
    m = median_of(rounds)
    assert m.output_tok_s == 600.0 and m.tpot_ms == 13.3  # the third fastest of five: neither lucky nor unlucky
    assert m.round_tok_s == (500.0, 650.0, 300.0, 600.0, 640.0)
    assert any("median of 5 rounds" in n and "spread 58%" in n for n in m.notes)
    assert median_of([_round(500.0, 16.0), _round(600.0, 13.0)]).output_tok_s == 600.0  # even: the upper middle
    failed_round = Measured(math.nan, math.nan, 0.0, 0, 0, 0.0, error="worker 1 exited")
    m = median_of([failed_round, _round(500.0, 16.0)])
    assert m.ok and any("1 of 2 rounds failed: worker 1 exited" in n for n in m.notes)


def _row(rank: int, predicted_score: float, rounds: list[float]) -> Row:
    from costmodel.workload import SLO, Workload
    from planner.verify.sizing import LocalRun

    run = LocalRun(rank=rank, label=f"plan {rank}", spec=load_model("tiny-llama"), layout=Layout(tp=2),
                   workload=Workload(isl=64, osl=64, concurrency=8), slo=SLO(), precision="bf16", engine="vllm",
                   predicted={"ttft_ms": 20.0, "tpot_ms": 12.0, "output_tok_s": predicted_score * 2},
                   predicted_score=predicted_score, as_planned=True)
    return Row(run, median_of([_round(t, 8000.0 / t) for t in rounds]), 2)


def test_a_swap_inside_the_error_band_is_told_apart_from_a_miss() -> None:
    band = (0.9, 1.2)  # p10/p90 of measured / predicted: a pair predicted less than 33% apart is uncertain
    rows = [_row(1, 330.0, [600, 610, 620]), _row(2, 310.0, [630, 640, 650]), _row(3, 200.0, [400, 420, 410])]
    rep = Report({"model": "tiny-llama", "cluster": "local"}, "torch", rows, 1.0, band=band)
    assert rep.measured_order == [2, 1, 3] and not rep.order_held and rep.order_held_beyond_band
    assert rep.verdict().startswith("did not hold, within band: only #1/#2 swapped")
    first = rep.pairs[0]
    assert first.within_band and not first.held and not first.rounds_overlap
    text = first.describe()
    assert "#1 over #2: predicted 6% ahead" in text and "swapped, within the calibration's" in text
    assert not rep.pairs[1].within_band and rep.pairs[1].held  # #1 over #3, 65% apart
    swapped = [_row(1, 330.0, [400, 410, 420]), _row(2, 310.0, [630, 640, 650]), _row(3, 200.0, [600, 610, 620])]
    miss = Report({"model": "tiny-llama", "cluster": "local"}, "torch", swapped, 1.0, band=band)
    assert not miss.order_held_beyond_band and miss.verdict() == "did not hold"
    assert "| 1 | plan 1 |" in miss.markdown() and "- #1 over #3: predicted 65% ahead" in miss.markdown()
    assert json.loads(json.dumps(miss.as_dict()))["pairs"][1] == {"better": 1, "worse": 3, "predicted_gap_pct": 65.0,
                                                                  "held": False, "within_band": False,
                                                                  "rounds_overlap": False}


def _where_am_i(rank: int, world: int, arg: None, progress) -> tuple[list[int], int, int]:
    import os

    return sorted(os.sched_getaffinity(0)), os.getsid(0), os.nice(0)


def test_workers_run_in_sessions_of_their_own_on_cores_of_their_own(torch) -> None:
    """Each worker leads a session (its own autogroup: nice then counts against other sessions' processes)
    at raised priority where allowed, and with a core per worker on a machine that has them."""
    import os

    from planner.verify.launch import launch

    out = launch(_where_am_i, 2, None, timeout_s=60)
    sessions = {sid for _, sid, _ in out}
    assert len(sessions) == 2 and os.getsid(0) not in sessions
    if len(os.sched_getaffinity(0)) >= 2:
        assert [len(cores) for cores, _, _ in out] == [1, 1] and out[0][0] != out[1][0]
    if os.geteuid() == 0:
        assert all(nice == -20 for _, _, nice in out)


def _sleep_and_tell(rank: int, world: int, folder: str, progress) -> None:
    import os
    import time

    (Path(folder) / f"{rank}.pid").write_text(str(os.getpid()))
    time.sleep(300)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between the open and the read
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_end_when_the_planner_is_killed(torch, tmp_path: Path) -> None:
    """A planner killed hard (a time limit, a user) takes its workers with it: they lead sessions of their
    own and the forkserver outlives its parent, so an orphaned calibration sweep once ran on beside the
    next verify run on an H100."""
    import os
    import subprocess
    import sys
    import time

    code = ("from planner.verify.launch import launch; from test_verify import _sleep_and_tell; "
            f"launch(_sleep_and_tell, 2, {str(tmp_path)!r}, timeout_s=600)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(p) for p in pids)


def test_pipeline_stages_split_layers_as_the_cost_model_does(torch) -> None:
    from costmodel.instance import stage_layers
    from planner.verify.parallel import Mesh

    for layers, pp in ((4, 2), (5, 2), (22, 4)):
        spans = [Mesh(rank, Layout(pp=pp)).shard(layers).layers for rank in range(pp)]
        assert [b - a for a, b in spans] == stage_layers(layers, pp) and spans[-1][1] == layers


# ---- the demo command ----------------------------------------------------------------------------
def test_plan_without_workload_flags_uses_the_documented_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from planner.cli import PLAN_WORKLOAD

    assert main(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100", "--json"]) == 0
    out = capsys.readouterr()
    assert out.err.strip() == "no workload flags given: using the defaults --isl 64 --osl 64 --concurrency 8"
    assert json.loads(out.out)["request"]["workload"] == PLAN_WORKLOAD
    # some workload flags: the others are required, as before
    assert main(["plan", "--model", "tiny-llama", "--cluster", "dgx-h100", "--rate", "2", "--osl", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the following arguments are required: --isl; give them")
    assert main(["estimate", "--model", "tiny-llama", "--cluster", "dgx-h100"]) == 2  # estimate still asks
    assert "required: --isl, --osl" in capsys.readouterr().err
