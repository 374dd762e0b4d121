"""Every launch script of one-node and two-node disaggregated plans, run with stand-in engine binaries that
record their arguments and environment: each instance runs on exactly the devices the plan's placement
gives it, and no two processes on a node share a device or a port."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from planner import plan
from planner.emit import argcheck

STAND_IN = """#!/usr/bin/env python3
import json, os, sys
out = os.environ["RECORD_DIR"]
n = len(os.listdir(out))
env = {k: v for k, v in os.environ.items() if k.startswith(("CUDA_", "VLLM_"))}
json.dump({"argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]], "env": env}, open(f"{out}/{n}.json", "w"))
"""


@pytest.fixture(scope="module", params=[("dgx-h100", 30.0), ("dgx-h100x2", 60.0)], ids=["one-node", "two-node"])
def disagg(request):
    cluster, rate = request.param
    return plan("llama-3.1-8b", cluster, slo={"ttft_ms": 1000, "tpot_ms": 30},
                workload={"isl": 2000, "osl": 200, "rate_rps": rate}, modes=("disagg",), budget_s=5)


def _run(script: Path, replica: int, bin_dir: Path, records: Path, python: str) -> dict:
    records.mkdir(exist_ok=True)
    before = set(records.iterdir())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD_DIR": str(records),
           "REPLICA": str(replica), "HOST_IP": "10.0.0.9", "MODEL": "m"}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    (new,) = set(records.iterdir()) - before
    return json.loads(new.read_text())


@pytest.mark.parametrize("target", ["vllm", "sglang"])
def test_every_process_runs_where_the_placement_puts_it(disagg, tmp_path, target):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("vllm", "python3"):
        (bin_dir / name).write_text(STAND_IN.replace("#!/usr/bin/env python3", f"#!{os.sys.executable}"))
        (bin_dir / name).chmod(0o755)
    best = disagg.plans[0]
    assert best.mode == "disagg" and best.placement
    disagg.emit(target, tmp_path, top=1)
    folder = tmp_path / target / "plan-1"
    flags = next(f for f in ("vllm-0.11.yaml", "sglang-0.5.yaml") if f in (folder / "README.md").read_text())
    sp = argcheck.spec(flags)
    dpn = 8
    seen_devices: set[tuple[int, int]] = set()
    seen_ports: set[tuple[int, int]] = set()
    for role in ("prefill", "decode"):
        placed = [p for p in best.placement if p["role"] == role]
        for r, want in enumerate(placed):
            rec = _run(folder / f"launch-{role}.sh", r, bin_dir, tmp_path / "records", "python3")
            assert argcheck.check_commands([rec["argv"]], sp) == ([], 1)  # what ran parses in the record
            node = want["devices"][0] // dpn
            devices = [int(x) for x in rec["env"]["CUDA_VISIBLE_DEVICES"].split(",")]
            assert devices == [x % dpn for x in want["devices"]]  # exactly the plan's devices
            assert not seen_devices & {(node, x) for x in devices}
            seen_devices |= {(node, x) for x in devices}
            argv = rec["argv"]
            ports = [int(argv[argv.index("--port") + 1])]
            if target == "vllm":
                ports.append(int(rec["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"]))
                assert rec["env"]["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "10.0.0.9"
            elif role == "prefill":
                ports.append(int(argv[argv.index("--disaggregation-bootstrap-port") + 1]))
            assert not seen_ports & {(node, x) for x in ports}, f"{role} {r} reuses a port on node {node}"
            seen_ports |= {(node, x) for x in ports}
    readme = (folder / "README.md").read_text()
    assert "| prefill 0 |" in readme and "| decode 0 |" in readme  # the placement table
