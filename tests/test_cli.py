import json

import pytest

from planner.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--tp", "4",
                       "--isl", "1024", "--osl", "1024", "--concurrency", "64", "--precision", "fp8", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["fits"] and data["layout"]["tp"] == 4 and data["ttft_ms"] > 0 and data["tpot_ms"] > 0
    assert set(data["memory_gib"]) >= {"weights", "kv_cache", "activations", "reserve"}


def test_estimate_table(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "llama-3.1-8b", "--cluster", "dgx-h100",
                       "--isl", "128", "--osl", "128", "--rate", "2")
    assert code == 0 and "TPOT ms" in out


def test_plan_writes_plans_json(capsys, tmp_path):
    out_dir = tmp_path / "plans"
    code, out, _ = run(capsys, "plan", "--model", "llama-3.1-70b", "--cluster", "dgx-h100x2", "--ttft-ms", "1000",
                       "--tpot-ms", "50", "--isl", "2048", "--osl", "256", "--rate", "5", "--precision", "fp8",
                       "--out", str(out_dir))
    assert code == 0, out
    data = json.loads((out_dir / "plans.json").read_text())
    assert data["plans"][0]["rank"] == 1 and data["request"]["cluster"] == "dgx-h100x2"
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_models_and_clusters(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["deepseek-v3"]["params_b"] == pytest.approx(671, rel=0.01)
    code, out, _ = run(capsys, "clusters")
    assert code == 0 and "cloudmatrix384" in out and "384" in out


@pytest.mark.parametrize("argv, match", [
    (["estimate", "--model", "llama-3.1-7b", "--cluster", "dgx-h100", "--isl", "1", "--osl", "1",
      "--concurrency", "1"], "did you mean 'llama-3.1-70b'"),
    (["estimate", "--model", "llama-3.1-70b", "--cluster", "dgx-h1000", "--isl", "1", "--osl", "1",
      "--concurrency", "1"], "unknown cluster"),
    (["estimate", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--tp", "3", "--isl", "1", "--osl", "1",
      "--concurrency", "1"], "does not divide"),
    (["estimate", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--isl", "0", "--osl", "1",
      "--concurrency", "1"], "must be at least 1"),
    (["estimate", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--isl", "-5", "--osl", "1",
      "--concurrency", "1"], "must be at least 1"),
    (["plan", "--model", "llama-3.1-70b", "--cluster", "dgx-h100", "--isl", "128", "--osl", "128"],
     "one of the arguments"),
    (["estimate", "--model", "/nonexistent/config.json", "--cluster", "dgx-h100", "--isl", "1", "--osl", "1",
      "--concurrency", "1"], "cannot read"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, match):
    code, _, err = run(capsys, *argv)
    lines = [x for x in err.strip().splitlines() if x]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]


def test_malformed_cluster_yaml(capsys, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("name: x\ngroups: [{accelerator: h100-sxm}]\n")
    code, _, err = run(capsys, "estimate", "--model", "llama-3.1-8b", "--cluster", str(bad), "--isl", "1",
                       "--osl", "1", "--concurrency", "1")
    assert code == 2 and "required field is missing" in err and len(err.strip().splitlines()) == 1
