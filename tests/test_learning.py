"""`planner calibrate --from-runs`: learning engine constants from runs, kept only when runs held out of the
fit are predicted better. The runs here are made by the cost model itself with a known tuning, so what is
learned can be checked against what made them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from costmodel.calibration.profile import EngineTuning, profile_for
from costmodel.calibration.silicon import Row, load_rows, predict
from costmodel.layout import Layout
from planner.calibrate.state import uncalibrated
from planner.cli import main
from planner.verify.report import RUN_COLUMNS, SILICON

LAYOUTS = (Layout(), Layout(tp=2), Layout(pp=2))
LOADS = ({"concurrency": 2}, {"concurrency": 8}, {"rate_rps": 2.0})
TRUTH = EngineTuning(iteration_overhead_ms=6.0, per_seq_overhead_us=40.0, closed_loop_wave=0.0, ttft_overhead_ms=4.0)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLM_PLANNER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLM_PLANNER_LOCAL_DEVICES", "2")
    return tmp_path


def _write(path: Path, tuning: EngineTuning | None, wobble: tuple[float, ...] = (1.0,)) -> Path:
    """Runs of tiny-llama on `local` as verify writes them, timed by the uncalibrated local profile with
    `tuning` as the torch runner's (None: as it is), each measurement scaled by the next `wobble` factor."""
    base = uncalibrated(profile_for("cpu"))
    prof = base if tuning is None else base.model_copy(update={"engines": {"vllm": tuning}})
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow((*SILICON, *RUN_COLUMNS))
        for i, (lay, load) in enumerate((lay, load) for lay in LAYOUTS for load in LOADS):
            row = Row(0, "tiny-llama", "local", "vllm", "", 32, 8, load.get("concurrency", 1), lay, 1.0, 1.0,
                      load.get("rate_rps"))
            e = predict(row, profile=prof)
            f = wobble[i % len(wobble)]
            w.writerow(["tiny-llama", "local", "torch", "", "agg", 32, 8, load.get("concurrency", ""), lay.tp, lay.pp,
                        1, 1, e.ttft_ms * f, e.tpot_ms * f, load.get("rate_rps", ""), "vllm",
                        *[""] * (len(RUN_COLUMNS) - 2)])
    return path


def test_learning_recovers_the_overheads_that_made_the_runs(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _write(home / "runs.csv", TRUTH)
    rows = load_rows(runs)  # closed and open loop both read back
    assert len(rows) == 9 and sum(r.rate_rps is not None for r in rows) == 3 and {r.engine for r in rows} == {"vllm"}
    assert main(["calibrate", "--from-runs", str(runs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kept"] and out["runs"] == 9
    before, held = out["before_mdape"], out["heldout_mdape"]
    assert held["tpot_ms"] < before["tpot_ms"] and held["ttft_ms"] <= before["ttft_ms"]
    assert held["tpot_ms"] < 3.0  # the runs are exactly what some tuning predicts: held out, it is found again
    path = Path(out["profile"])
    assert path.name == "profile.learned.json" and path.parent == home / "home" / "local"  # a new file
    learned = profile_for("cpu", path)
    tune = learned.engines["vllm"]
    assert learned.engines["sglang"] == tune  # the runner stands in for every engine on `local`
    assert abs(tune.iteration_overhead_ms - TRUTH.iteration_overhead_ms) < 1.0
    assert f"{runs} lines 2, 3, 4, 5, 6, 7, 8, 9, 10" in tune.fitted_on  # which runs it learned from
    assert main(["calibrate", "--from-runs", str(runs), "--json"]) == 0  # again: a new file, not overwritten
    assert Path(json.loads(capsys.readouterr().out)["profile"]).name == "profile.learned-2.json"


def test_runs_the_profile_already_explains_teach_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _write(home / "runs.csv", None, wobble=(1.3, 0.8, 1.1, 0.9, 1.25))  # noise about the current profile
    assert main(["calibrate", "--from-runs", str(runs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    before, held = out["before_mdape"], out["heldout_mdape"]
    improved = held["ttft_ms"] <= before["ttft_ms"] and held["tpot_ms"] <= before["tpot_ms"] and \
        held["ttft_ms"] + held["tpot_ms"] < before["ttft_ms"] + before["tpot_ms"]
    assert out["kept"] == improved
    if not out["kept"]:
        assert out["profile"] is None and not (home / "home" / "local").exists()  # nothing written


@pytest.mark.parametrize("text, why", [
    (",".join((*SILICON, *RUN_COLUMNS)) + "\n", "holds a header and no runs"),
    (",".join(SILICON) + "\n" + "tiny-llama,local,torch,,disagg,32,8,2,1,1,1,1,3.0,2.0\n", "of mode disagg (1)"),
    (",".join(SILICON) + "\n" + "tiny-llama,local,torch,,agg,32,8,2,1,1,1,1,3.0,2.0\n", "learning needs at least 2"),
    (",".join(SILICON) + "\n" + "tiny-llama,local,torch,,agg,32,8,2,1,1,1,1,0,2.0\n", "must be positive"),
])
def test_a_file_with_nothing_to_learn_says_why(home: Path, capsys: pytest.CaptureFixture[str], text: str,
                                               why: str) -> None:
    runs = home / "runs.csv"
    runs.write_text(text)
    assert main(["calibrate", "--from-runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0], err


def test_in_place_needs_a_profile_file_of_yours(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _write(home / "runs.csv", TRUTH)
    assert main(["calibrate", "--from-runs", str(runs), "--in-place"]) == 2
    assert "--in-place" in capsys.readouterr().err
