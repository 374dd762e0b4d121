"""`--cluster local`: the machine this command runs on, as a Cluster.

Its visible GPUs (catalog specs matched by name), or on a CPU-only machine a number of CPU worker
processes, each one "device" with its share of the cores. Until `planner calibrate` has measured
the machine, the numbers are conservative estimates and their sources say so; calibrate writes the
measured cluster (`cluster.yaml`) and profile (`profile.json`) under the local state folder
(`$LLM_PLANNER_HOME/local`, default `~/.cache/llm-planner/local`), and both are used from then on.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path

from hardware.errors import PlannerInputError
from hardware.loading import build, read_mapping
from hardware.specs import Accelerator, Cluster, Link, NodeGroup

LOCAL = "local"
MAX_CPU_DEVICES = 8  # more worker processes than this only split the same memory bus finer
CPU_FLOP_PER_CYCLE = 16  # fp32 FLOP per cycle per core from one 256-bit FMA pipe: a floor for AVX2 and up
CPU_GBPS_PER_CORE = 5.0
GPU_NAMES = (  # torch.cuda device-name fragment -> catalog accelerator (first match wins)
    ("GH200", "h200-sxm"), ("H200", "h200-sxm"), ("H100 PCIe", "h100-pcie"), ("H100", "h100-sxm"),
    ("A100-SXM4-40GB", "a100-sxm-40gb"), ("A100 80GB PCIe", "a100-pcie-80gb"), ("A100", "a100-sxm-80gb"),
    ("GB200", "gb200"), ("B200", "b200"), ("MI300X", "mi300x"),
)


def state_dir() -> Path:
    """Where `planner calibrate` keeps what it measured about this machine."""
    home = os.environ.get("LLM_PLANNER_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "llm-planner") / LOCAL


PROFILE_FILE, CLUSTER_FILE = "profile.json", "cluster.yaml"


def cluster_path() -> Path:
    return state_dir() / CLUSTER_FILE


def profile_path() -> Path:
    return state_dir() / PROFILE_FILE


def calibrated_profile(cluster: Cluster) -> Path | None:
    """The measured profile to use for `cluster` when it is this machine and has been calibrated."""
    p = profile_path()
    return p if cluster.name == LOCAL and p.is_file() else None


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_devices(devices: int | None = None) -> int:
    """How many CPU worker processes stand for devices: `devices`, $LLM_PLANNER_LOCAL_DEVICES, or
    one per core up to MAX_CPU_DEVICES."""
    text = os.environ.get("LLM_PLANNER_LOCAL_DEVICES")
    n = devices if devices is not None else (int(text) if text and text.isdigit() else None)
    if n is None:
        return max(1, min(cpu_cores(), MAX_CPU_DEVICES))
    if n < 1:
        raise PlannerInputError(f"local devices={n} must be at least 1; set LLM_PLANNER_LOCAL_DEVICES to e.g. 2")
    return n


def threads_per_device(devices: int) -> int:
    return max(1, cpu_cores() // devices)


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _ram_gib() -> float:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if m:
            return int(m[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def cpu_name() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine()


def cpu_accelerator(devices: int, peak_tflops: float | None = None, gbps: float | None = None,
                    measured: str = "", measured_gbps: str = "") -> Accelerator:
    """One CPU worker process as a device: estimated figures, or the measured ones when given."""
    info = _cpuinfo()
    threads = threads_per_device(devices)
    mhz = float(info.get("cpu MHz") or 2000.0)
    vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(info.get("vendor_id", ""), platform.machine())
    est = "estimated, not measured (run `planner calibrate`)"
    flops_src = (measured and f"measured on this machine by planner calibrate: {measured}") or (
        f"{est}: {threads} core(s) x {mhz:.0f} MHz (/proc/cpuinfo) x {CPU_FLOP_PER_CYCLE} fp32 FLOP/cycle; "
        "bf16 plans run as fp32 math on CPUs without bf16 FMA units")
    peak = peak_tflops or threads * mhz * 1e6 * CPU_FLOP_PER_CYCLE / 1e12
    bw = gbps or CPU_GBPS_PER_CORE * threads
    bw_src = (measured_gbps and f"measured on this machine by planner calibrate: {measured_gbps}") or (
        f"{est}: {CPU_GBPS_PER_CORE:g} GB/s of DRAM bandwidth per core, a conservative floor")
    return Accelerator(
        name="cpu", vendor=vendor, peak_tflops={"bf16": peak, "fp32": peak},
        hbm_gib=round(0.8 * _ram_gib() / devices, 2), hbm_gbps=round(bw, 3),
        tdp_w=5.0 * threads, idle_w=1.0 * threads, scaleup_gbps=round(bw, 3),
        sources={
            "peak_tflops": flops_src,
            "hbm_gib": f"80% of this machine's RAM (/proc/meminfo MemTotal) shared by {devices} worker processes",
            "hbm_gbps": bw_src,
            "tdp_w": "uncertain: about 5 W per server core at full load (e.g. AMD EPYC 7763: 280 W / 64 cores = "
                     "4.4 W); not measured",
            "idle_w": "uncertain: about 1 W per idle server core; not measured",
            "scaleup_gbps": "worker processes exchange tensors through host memory; taken equal to hbm_gbps",
        },
    )


def loopback_link(gbps: float = 1.0, latency_us: float = 100.0, measured: str = "") -> Link:
    src = (f"measured on this machine by planner calibrate: {measured}" if measured else
           "estimated, not measured (run `planner calibrate`): torch.distributed gloo over TCP loopback")
    return Link(name="gloo-loopback", gbps=gbps, latency_us=latency_us, sources={"gbps": src, "latency_us": src})


def cpu_cluster(devices: int | None = None, accelerator: Accelerator | None = None, link: Link | None = None,
                description: str = "") -> Cluster:
    """This CPU-only machine as `devices` worker processes on one node."""
    n = cpu_devices(devices)
    acc = accelerator or cpu_accelerator(n)
    up = link or loopback_link()
    return Cluster(
        name=LOCAL,
        description=description or f"this machine ({cpu_name()}): {n} CPU worker processes, "
                                   f"{threads_per_device(n)} thread(s) each (estimated; run `planner calibrate`)",
        groups=[NodeGroup(accelerator=acc, num_nodes=1, devices_per_node=n, nodes_per_domain=1, scaleup=up,
                          scaleout=up, sources={
                              "num_nodes": "this machine",
                              "devices_per_node": f"{n} worker processes on {cpu_cores()} core(s)",
                              "nodes_per_domain": "one machine is one domain",
                          })],
    )


def gpu_names() -> list[str]:
    """Names of the visible CUDA devices; empty without a driver or without torch (the [verify] extra)."""
    if not (shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists()):
        return []
    try:
        import torch  # the optional [verify] extra
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def gpu_accelerator_name(device_name: str) -> str:
    for fragment, name in GPU_NAMES:
        if fragment.lower() in device_name.lower():
            return name
    raise PlannerInputError(f"local GPU '{device_name}' is not in the accelerator catalog; describe this machine "
                            "in a cluster YAML and pass its path as --cluster")


def gpu_cluster(names: list[str]) -> Cluster:
    """The visible GPUs as one node; the link is assumed from the catalog until calibrated."""
    from hardware.catalog import clusters  # catalog imports this module

    acc = gpu_accelerator_name(names[0])
    same = next((c for c in clusters().values() if c.groups[0].device.name == acc), None)
    up = same.groups[0].scaleup if same else loopback_link()
    out = same.groups[0].scaleout if same else up
    return Cluster(name=LOCAL, description=f"this machine: {len(names)} x {names[0]} (link assumed from the catalog "
                                           f"entry {same.name if same else 'none'}; run `planner calibrate`)",
                   groups=[NodeGroup(accelerator=acc, num_nodes=1, devices_per_node=len(names), nodes_per_domain=1,
                                     scaleup=up, scaleout=out, sources={
                                         "num_nodes": "this machine",
                                         "devices_per_node": "torch.cuda.device_count() on this machine",
                                         "nodes_per_domain": "one machine is one domain"})])


def local_cluster() -> Cluster:
    """The measured description when `planner calibrate` wrote one, else an estimate of this machine."""
    p = cluster_path()
    if p.is_file():
        measured = build(Cluster, read_mapping(p), f"local cluster file {p}")
        return measured.model_copy(update={"description": f"{measured.description} (read from {p})"})
    names = gpu_names()
    est = gpu_cluster(names) if names else cpu_cluster()
    return est.model_copy(update={"description": f"{est.description}; no measurement at {p}"})
