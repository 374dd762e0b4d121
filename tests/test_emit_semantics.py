"""Engine semantics of emitted values: max-model-len with headroom under the model's context, batch caps in
each engine's unit, and bench.sh run (with a stand-in benchmark binary) against the ENDPOINT it is given."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from planner import plan
from planner.emit import argcheck
from planner.emit.deployment import deployment
from planner.emit.trtllm import options as trtllm_options
from planner.emit.vllm import options as vllm_options


@pytest.fixture(scope="module")
def dense():
    return plan("llama-3.1-8b", "dgx-h100", workload={"isl": 1024, "osl": 256, "concurrency": 64}, budget_s=5)


def _dep(result, **wl):
    req = {**result.request, "workload": {**result.request["workload"], **wl}}
    return deployment(result.plans[0], req, "vllm")


def test_max_model_len_has_headroom_and_never_exceeds_the_context(dense):
    d = _dep(dense)
    assert d.max_model_len == 1536 and d.max_model_len >= 1.1 * (1024 + 256)  # rounded up to 256
    assert d.context == 131072  # Llama-3.1's max_position_embeddings
    near = _dep(dense, isl=128000, osl=2000)
    assert near.max_model_len == 131072  # 1.1 x 130,000 would pass the context: capped at it
    assert vllm_options(d, d.pool, "vllm")["max_model_len"] == 1536


def test_batch_caps_are_converted_to_each_engines_unit(dense):
    d = _dep(dense)
    p = dataclasses.replace(d.pool, tp=1, attention_dp=4, max_num_seqs=250)
    assert vllm_options(d, p, "vllm")["max_num_seqs"] == 63  # vLLM: per data-parallel rank, rounded up
    assert trtllm_options(d, p)["max_batch_size"] == 63  # trtllm-serve: per rank
    assert vllm_options(d, d.pool, "vllm")["max_num_seqs"] == d.pool.max_num_seqs  # one rank: unchanged


def _stand_in(bin_dir: Path, name: str, log: Path) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {log}\n')
    script.chmod(0o755)


def test_trtllm_bench_honours_endpoint(dense, tmp_path):
    dense.emit("trtllm", tmp_path)
    bench = tmp_path / "trtllm" / "plan-1" / "bench.sh"
    log = tmp_path / "argv.txt"
    _stand_in(tmp_path / "bin", "python3", log)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "ENDPOINT": "http://lb.example:9000/v1"}
    subprocess.run(["bash", str(bench)], cwd=tmp_path, env=env, check=True)
    argv = log.read_text().split("\n")
    assert argv[argv.index("--host") + 1] == "lb.example" and argv[argv.index("--port") + 1] == "9000"
    sp = argcheck.spec("trtllm-1.1.yaml")
    assert argcheck.check_commands([["python3", *argv[:-1]]], sp) == ([], 1)  # what ran parses in the record
